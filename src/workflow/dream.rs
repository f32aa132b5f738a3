//! `tl dream` as a command: its settings, the run over the inputs, the report; the
//! algorithm is `crate::inspect::dream`.
use crate::data::decode::decode_rgb;
use crate::data::preprocess::{self, normalize_tensor};
use crate::error::{Result, TlError};
use crate::eval::{format_top, ClassProb, Report};
use crate::features::backbone::{BackboneSpec, LayerNet};
use crate::inspect::classes;
use crate::inspect::classifier::{Classifier, NetworkChoice};
use crate::inspect::dream::{
    dream, gram_similarity, image_path, strip_path, total_variation, DreamConfig, DreamNet, Goal,
};
use crate::run::Run;
use crate::runtime::Runtime;
use crate::util::{refuse_overwrite, FilePath};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug, Serialize)]
pub struct DreamReport {
    pub network: String,
    /// The class dreamt of, or `<layer> channel <C>`.
    pub class: String,
    /// The class or channel index.
    pub index: usize,
    /// Target probability of the (first) saved PNG, re-loaded, with no transforms (class
    /// dreams).
    pub probability: Option<f64>,
    pub top5: Vec<ClassProb>,
    pub total_variation: f64,
    pub steps: usize,
    pub seconds: f64,
    pub output: FilePath,
    pub strip: Option<FilePath>,
    pub config: DreamConfig,
    /// Notes for the user (a loosely matched class name, random weights).
    pub warnings: Vec<String>,
    /// The channel's activation on the (first) saved PNG (channel dreams).
    pub channel: Option<ChannelScore>,
    /// Mean pairwise Gram similarity of the saved images (`--batch` with diversity).
    pub similarity: Option<f64>,
    /// Every saved image, scored (one without `--batch`).
    pub images: Vec<DreamImage>,
}

/// What to dream of, as the user named it.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Class name (exact, case-insensitive, or a unique substring) or index.
    Class(String),
    /// A layer name (exact or a unique prefix; `--list-layers`) and a channel index.
    Channel { layer: String, channel: i64 },
}

/// What `tl dream` is asked to do.
#[derive(Clone, Debug)]
pub struct DreamSettings {
    pub network: NetworkChoice,
    pub target: Target,
    pub out: PathBuf,
    pub force: bool,
    /// The layer the diversity term compares (None: the channel's layer, or the middle one).
    pub diversity_layer: Option<String>,
    /// The optimisation.
    pub config: DreamConfig,
}

impl DreamSettings {
    fn needs_layers(&self) -> bool {
        matches!(self.target, Target::Channel { .. })
            || (self.config.batch > 1 && self.config.diversity > 0.0)
    }
}

/// The layers of the network a dream looks at (a backbone's, or a run's backbone's).
pub fn load_layers(choice: &NetworkChoice, rt: &Runtime) -> Result<LayerNet> {
    match choice {
        NetworkChoice::Backbone(name) => {
            BackboneSpec::resolve(name, &rt.backbones)?.load_layers(rt.device)
        }
        NetworkChoice::Run(dir) => {
            let run = Run::open(dir)?;
            if run.config.finetune.is_some() {
                return Err(TlError::corrupt(
                    dir,
                    "this run fine-tuned its backbone's top; layers are those of the exported backbone: use --backbone",
                ));
            }
            run.backbone()?.load_layers(rt.device)
        }
        NetworkChoice::Exported(path) => Err(TlError::corrupt(
            path,
            "an exported model has no layer outputs; use --backbone or --run",
        )),
    }
}

/// The goal and the diversity layer, from the names the user gave.
fn resolve_goal(
    settings: &DreamSettings,
    classifier: &Classifier,
    layers: Option<&LayerNet>,
    warnings: &mut Vec<String>,
) -> Result<(Goal, Option<usize>)> {
    let goal = match (&settings.target, layers) {
        (Target::Class(name), _) => {
            let t = classes::resolve(name, &classifier.classes)?;
            warnings.extend(t.note.clone());
            Goal::Class(t.index)
        }
        (Target::Channel { layer, channel }, Some(net)) => {
            let l = net.index_of(layer)?;
            if !(0..net.channels[l]).contains(channel) {
                return Err(TlError::invalid(format!(
                    "layer {} has channels 0..{}; got {channel}",
                    net.names[l],
                    net.channels[l] - 1
                )));
            }
            Goal::Channel {
                layer: l,
                channel: *channel,
            }
        }
        (Target::Channel { .. }, None) => return Err(TlError::invalid("no layers loaded")),
    };
    let diversity_layer = match (layers, &settings.diversity_layer, goal) {
        (None, _, _) => None,
        (Some(net), Some(name), _) => Some(net.index_of(name)?),
        (Some(_), None, Goal::Channel { layer, .. }) => Some(layer),
        (Some(net), None, Goal::Class(_)) => Some(net.names.len() / 2),
    };
    Ok((goal, diversity_layer))
}

/// Dream, save the PNG(s) (and the strip of frames), then re-load each saved file and
/// score it as is: those scores are the report's.
pub fn run(rt: &Runtime, settings: &DreamSettings) -> Result<DreamReport> {
    let classifier = Classifier::load(&settings.network, rt)?;
    let layers = if settings.needs_layers() {
        Some(load_layers(&settings.network, rt)?)
    } else if settings.config.batch > 1 {
        // Only to report how alike the images came out, when the layers are there.
        load_layers(&settings.network, rt).ok()
    } else {
        None
    };
    let mut warnings: Vec<String> = classifier.warning.iter().cloned().collect();
    let (goal, diversity_layer) =
        resolve_goal(settings, &classifier, layers.as_ref(), &mut warnings)?;
    // The side resolved, so that the report says which it was.
    let side = settings.config.size.unwrap_or(classifier.preprocess.crop);
    let cfg = DreamConfig {
        size: Some(side),
        ..settings.config.clone()
    };
    cfg.validate()?;
    let outputs: Vec<PathBuf> = (0..cfg.batch)
        .map(|i| image_path(&settings.out, i, cfg.batch))
        .collect();
    for out in &outputs {
        refuse_overwrite(out, settings.force)?;
    }
    let strip = cfg.save_every.map(|_| strip_path(&settings.out));
    if let Some(s) = &strip {
        refuse_overwrite(s, settings.force)?;
    }
    let net = DreamNet {
        classifier: &classifier,
        layers: layers.as_ref(),
        diversity_layer,
    };
    let start = Instant::now();
    let (images, frames) =
        crate::util::guard::catch_torch_panic(&format!("dream at {side}x{side} pixels"), || {
            dream(&net, goal, &cfg, rt.progress)
        })?;
    let seconds = start.elapsed().as_secs_f64();
    save_outputs(&images, frames, &outputs, strip.as_deref(), &cfg)?;
    // The saved files are what count: each re-loaded once, then scored as is.
    let saved = outputs
        .iter()
        .map(|out| decode_rgb(out).map(|img| preprocess::image_to_unit_tensor(&img)))
        .collect::<Result<Vec<Tensor>>>()?;
    let scored = outputs
        .iter()
        .zip(&saved)
        .map(|(out, unit)| score_saved(&net, goal, out, unit))
        .collect::<Result<Vec<DreamImage>>>()?;
    let similarity = match (layers.as_ref(), diversity_layer, scored.len() > 1) {
        (Some(l), Some(d), true) => Some(saved_similarity(&classifier, l, d, &saved)?),
        _ => None,
    };
    let (class, index) = describe_goal(goal, &classifier, layers.as_ref());
    let first = &scored[0];
    Ok(DreamReport {
        network: classifier.description.clone(),
        class,
        index,
        probability: first.probability,
        top5: first.top5.clone(),
        total_variation: first.total_variation,
        steps: cfg.steps,
        seconds,
        output: first.output.clone(),
        strip: strip.map(FilePath),
        channel: first.channel.clone(),
        similarity,
        images: scored,
        config: cfg,
        warnings,
    })
}

/// (what the dream is of, its class or channel index), for the report.
fn describe_goal(
    goal: Goal,
    classifier: &Classifier,
    layers: Option<&LayerNet>,
) -> (String, usize) {
    match (goal, layers) {
        (Goal::Class(t), _) => (classifier.classes[t].clone(), t),
        (Goal::Channel { layer, channel }, Some(l)) => (
            format!("{} channel {channel}", l.names[layer]),
            channel as usize,
        ),
        (Goal::Channel { channel, .. }, None) => (format!("channel {channel}"), channel as usize),
    }
}

fn save_outputs(
    images: &Tensor,
    mut frames: Vec<Tensor>,
    outputs: &[PathBuf],
    strip: Option<&Path>,
    cfg: &DreamConfig,
) -> Result<()> {
    for (i, out) in outputs.iter().enumerate() {
        let one = images.narrow(0, i as i64, 1);
        preprocess::save_image(&preprocess::unit_tensor_to_image(&one)?, out)?;
    }
    if let Some(strip_path) = strip {
        if frames.is_empty() || !cfg.steps.is_multiple_of(cfg.save_every.unwrap_or(1).max(1)) {
            frames.push(images.shallow_clone());
        }
        let strip = Tensor::cat(&frames, 3);
        preprocess::save_image(&preprocess::unit_tensor_to_image(&strip)?, strip_path)?;
    }
    Ok(())
}

/// One saved image, re-loaded: the classifier's view of it and, for a channel goal, the
/// channel's activation and its rank among the layer's channels.
#[derive(Clone, Debug, Serialize)]
pub struct DreamImage {
    pub output: FilePath,
    /// The target class's probability (class dreams).
    pub probability: Option<f64>,
    pub top5: Vec<ClassProb>,
    pub channel: Option<ChannelScore>,
    pub total_variation: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChannelScore {
    pub layer: String,
    pub channel: i64,
    /// The channel's mean activation over the saved image.
    pub activation: f64,
    /// 1 when no other channel of the layer is excited more by the image.
    pub rank: usize,
    pub channels: i64,
}

/// `unit`: the saved file `out`, re-loaded, as a `[1,3,H,W]` tensor in [0, 1].
fn score_saved(net: &DreamNet, goal: Goal, out: &Path, unit: &Tensor) -> Result<DreamImage> {
    let probs = net.classifier.classify_unit(unit)?;
    let tv = total_variation(unit).double_value(&[]);
    let channel = match (goal, net.layers) {
        (Goal::Channel { layer, channel }, Some(l)) => {
            let x = normalize_tensor(
                &unit.to_device(net.classifier.device),
                &net.classifier.preprocess,
            );
            let means = tch::no_grad(|| -> Result<Tensor> {
                let acts = l.forward(&x)?;
                Ok(acts[layer]
                    .mean_dim([0i64, 2, 3].as_slice(), false, Kind::Float)
                    .to_device(Device::Cpu))
            })?;
            let means: Vec<f32> =
                Vec::<f32>::try_from(&means).map_err(|e| TlError::torch("activations", e))?;
            let own = means[channel as usize];
            Some(ChannelScore {
                layer: l.names[layer].clone(),
                channel,
                activation: own as f64,
                rank: 1 + means.iter().filter(|&&m| m > own).count(),
                channels: l.channels[layer],
            })
        }
        _ => None,
    };
    Ok(DreamImage {
        output: FilePath(out.to_path_buf()),
        probability: match goal {
            Goal::Class(t) => Some(probs[t] as f64),
            Goal::Channel { .. } => None,
        },
        top5: net.classifier.top(&probs, 5),
        channel,
        total_variation: tv,
    })
}

/// Mean pairwise Gram similarity of the saved images at `layer`.
fn saved_similarity(
    classifier: &Classifier,
    layers: &LayerNet,
    layer: usize,
    saved: &[Tensor],
) -> Result<f64> {
    let x = normalize_tensor(
        &Tensor::cat(saved, 0).to_device(classifier.device),
        &classifier.preprocess,
    );
    tch::no_grad(|| Ok(gram_similarity(&layers.forward(&x)?[layer]).double_value(&[])))
}

/// The layers a dream can target (`tl dream --list-layers`).
#[derive(Clone, Debug, Serialize)]
pub struct LayersReport {
    pub network: String,
    pub layers: Vec<LayerInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerInfo {
    pub name: String,
    pub channels: i64,
    /// `[height, width]` of its output for the network's crop size.
    pub size: Vec<i64>,
}

pub fn list_layers(rt: &Runtime, network: &NetworkChoice) -> Result<LayersReport> {
    let layers = load_layers(network, rt)?;
    let classifier = Classifier::load(network, rt)?;
    let side = classifier.preprocess.crop as i64;
    let x = Tensor::zeros([1, 3, side, side], (Kind::Float, rt.device));
    let acts = tch::no_grad(|| layers.forward(&x))?;
    Ok(LayersReport {
        network: classifier.description.clone(),
        layers: layers
            .names
            .iter()
            .zip(&acts)
            .map(|(name, a)| LayerInfo {
                name: name.clone(),
                channels: a.size()[1],
                size: a.size()[2..].to_vec(),
            })
            .collect(),
    })
}

impl Report for LayersReport {
    fn render_text(&self) -> String {
        let mut s = format!(
            "layers of {} (for --layer NAME --channel C):\n",
            self.network
        );
        for l in &self.layers {
            s += &format!(
                "  {:<16} {:>5} channels  {}×{}\n",
                l.name,
                l.channels,
                l.size.first().copied().unwrap_or(0),
                l.size.get(1).copied().unwrap_or(0)
            );
        }
        s
    }
}

impl Report for DreamReport {
    fn notes(&self) -> Vec<String> {
        crate::eval::warning_lines(&self.warnings)
    }

    fn render_text(&self) -> String {
        let mut s = format!(
            "dream of '{}' ({}) with {}: {}\n",
            self.class, self.index, self.network, self.output
        );
        for img in &self.images {
            let what = match (&img.channel, img.probability) {
                (Some(c), _) => format!(
                    "channel activation {:.4} (rank {} of {} in {})",
                    c.activation, c.rank, c.channels, c.layer
                ),
                (None, Some(p)) => format!("p({}) = {p:.4}", self.class),
                (None, None) => String::new(),
            };
            s += &format!(
                "saved PNG {} re-scored: {what}   TV = {:.4}\n  top-5: {}\n",
                img.output,
                img.total_variation,
                format_top(&img.top5)
            );
        }
        if let Some(sim) = self.similarity {
            s += &format!("similarity between the images (Gram cosine): {sim:.3}\n");
        }
        s += &format!("{} steps in {:.1}s\n", self.steps, self.seconds);
        if let Some(strip) = &self.strip {
            s += &format!("frames: {strip}\n");
        }
        s
    }
}
