//! `tl dream`: the input image that makes the network see a class — or that excites one
//! channel of an inner layer (lucent's channel objective).
//!
//! Gradient ascent on the image (kept in [0, 1], normalised inside the graph) of
//! `score − tv·TV(x) − l2·mean((x−½)²)`, with Adam, where the score is the target class's
//! logit and/or log-probability, or the mean activation of a channel. TV is the mean
//! absolute difference between neighbouring pixels, so its weight does not depend on image
//! size. `--batch K` optimises K images together and subtracts a diversity term: the mean
//! cosine similarity between the images' Gram matrices at one layer (lucent's diversity).
//! Each step but the last few (`polish`) sees the image through a random jitter, scale and
//! rotation, which keeps the result from being a fragile adversarial pattern; the score reported at the end is that
//! of the saved 8-bit PNG, re-loaded and classified with no transforms at all.
use super::classes;
use super::classifier::{Classifier, NetworkChoice};
use crate::data::decode::decode_rgb;
use crate::data::preprocess::{self, normalize_tensor};
use crate::error::{Result, TlError};
use crate::eval::{format_top, ClassProb, Report};
use crate::features::backbone::{BackboneSpec, LayerNet};
use crate::progress;
use crate::run::Run;
use crate::runtime::Runtime;
use crate::util::{refuse_overwrite, FilePath, SplitMix64};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

/// The largest image side `tl dream` makes: memory grows with its square (a 2048-pixel
/// dream through MobileNetV2 needs several GB for the gradients).
pub const MAX_DREAM_SIZE: u32 = 2048;
/// The most images one `--batch` makes (memory grows with it, as with the size).
pub const MAX_BATCH: usize = 16;

#[derive(Clone, Debug, Serialize)]
pub struct DreamConfig {
    pub steps: usize,
    pub lr: f64,
    pub tv: f64,
    pub l2: f64,
    pub size: u32,
    pub seed: u64,
    pub init: Option<FilePath>,
    pub transforms: bool,
    /// The last steps, without the random transforms (the saved image is scored as is).
    pub polish: usize,
    pub save_every: Option<usize>,
    pub param: Parametrization,
    pub objective: Objective,
    /// Images optimised together (`--batch`).
    pub batch: usize,
    /// Weight of the similarity penalty between them.
    pub diversity: f64,
}

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

impl DreamConfig {
    /// Every number in range; the error names the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(TlError::invalid("the number of steps must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TlError::invalid(format!(
                "learning rate {} must be a positive number",
                self.lr
            )));
        }
        for (what, v) in [("TV weight", self.tv), ("grey-distance weight", self.l2)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(TlError::invalid(format!(
                    "{what} {v} must be a number >= 0"
                )));
            }
        }
        if self.polish > self.steps {
            return Err(TlError::invalid(format!(
                "--polish {} is more than the {} steps",
                self.polish, self.steps
            )));
        }
        if !(self.diversity.is_finite() && self.diversity >= 0.0) {
            return Err(TlError::invalid(format!(
                "diversity weight {} must be a number >= 0",
                self.diversity
            )));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(TlError::invalid(format!(
                "--batch {} must be between 1 and {MAX_BATCH}",
                self.batch
            )));
        }
        if self.batch > 1 && self.save_every.is_some() {
            return Err(TlError::invalid(
                "--save-every makes a strip of one image; use it without --batch",
            ));
        }
        if !(16..=MAX_DREAM_SIZE).contains(&self.size) {
            return Err(TlError::invalid(format!(
                "image size {} must be between 16 and {MAX_DREAM_SIZE} pixels",
                self.size
            )));
        }
        Ok(())
    }
}

/// Mean absolute difference between vertically and horizontally adjacent pixels.
pub fn total_variation(x: &Tensor) -> Tensor {
    let h = x.size()[2];
    let w = x.size()[3];
    let dy = (x.narrow(2, 1, h - 1) - x.narrow(2, 0, h - 1))
        .abs()
        .mean(Kind::Float);
    let dx = (x.narrow(3, 1, w - 1) - x.narrow(3, 0, w - 1))
        .abs()
        .mean(Kind::Float);
    dy + dx
}

/// Random jitter (roll), scale and rotation, differentiable with respect to `x`.
fn random_transform(x: &Tensor, rng: &mut SplitMix64) -> Tensor {
    let mut uniform = |lo: f64, hi: f64| rng.uniform(lo, hi);
    let side = x.size()[2] as f64;
    let max_shift = (side / 16.0).round().max(1.0);
    let dy = uniform(-max_shift, max_shift + 1.0).floor() as i64;
    let dx = uniform(-max_shift, max_shift + 1.0).floor() as i64;
    let scale = uniform(0.9, 1.1);
    let angle = uniform(-10.0, 10.0).to_radians();
    let rolled = x.roll([dy, dx], [2, 3]);
    let (c, s) = (angle.cos() / scale, angle.sin() / scale);
    let theta = Tensor::from_slice(&[c as f32, -s as f32, 0.0, s as f32, c as f32, 0.0])
        .view([1, 2, 3])
        .expand([x.size()[0], 2, 3], false)
        .contiguous()
        .to_device(x.device());
    let grid = Tensor::affine_grid_generator(&theta, x.size(), false);
    // mode 0 = bilinear, padding 2 = reflection
    rolled.grid_sampler(&grid, 0, 2, false)
}

/// How the optimised variables become an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parametrization {
    /// Pixels directly, clamped to [0, 1] after each step.
    Pixel,
    /// A 1/f-scaled Fourier spectrum with decorrelated colour and a sigmoid (as in lucid/lucent):
    /// gradient steps favour low frequencies, so images form faster and look more natural.
    Fourier,
}

/// Square root of the colour covariance of ImageNet photos (lucid's `color_correlation_svd_sqrt`).
const COLOR_CORRELATION: [[f32; 3]; 3] =
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]];

struct ImageParam {
    kind: Parametrization,
    var: Tensor,
    side: i64,
    /// `[1,1,S,S/2+1,1]` spectrum scale (Fourier only).
    scale: Tensor,
    /// `[3,3]` colour mixing, transposed, normalised (Fourier only).
    color_t: Tensor,
}

impl ImageParam {
    fn new(
        kind: Parametrization,
        vs: &nn::VarStore,
        init: Option<&Tensor>,
        side: i64,
        batch: i64,
    ) -> ImageParam {
        let device = vs.device();
        let fy = Tensor::fft_fftfreq(side, 1.0, (Kind::Float, Device::Cpu)).view([side, 1]);
        let fx = Tensor::fft_fftfreq(side, 1.0, (Kind::Float, Device::Cpu))
            .narrow(0, 0, side / 2 + 1)
            .view([1, side / 2 + 1]);
        let freqs = (&fy * &fy + &fx * &fx).sqrt();
        let scale = freqs
            .clamp_min(1.0 / side as f64)
            .reciprocal()
            .view([1, 1, side, side / 2 + 1, 1])
            .to_device(device);
        let c = Tensor::from_slice(&COLOR_CORRELATION.concat()).view([3, 3]);
        let max_norm = c
            .square()
            .sum_dim_intlist([0i64].as_slice(), false, Kind::Float)
            .sqrt()
            .max();
        let color_t = (c / max_norm)
            .transpose(0, 1)
            .contiguous()
            .to_device(device);
        let start = match (kind, init) {
            (Parametrization::Pixel, Some(x)) => x.to_device(device),
            (Parametrization::Pixel, None) => {
                Tensor::rand([batch, 3, side, side], (Kind::Float, Device::Cpu)).to_device(device)
                    * 0.2
                    + 0.4
            }
            (Parametrization::Fourier, Some(x)) => {
                // Invert sigmoid, colour mixing and the scaled inverse FFT.
                let x = x.to_device(device).clamp(0.01, 0.99);
                let logit: Tensor = (&x / (x.ones_like() - &x)).log();
                let unmixed = logit
                    .permute([0, 2, 3, 1])
                    .matmul(&color_t.inverse())
                    .permute([0, 3, 1, 2])
                    * 4.0;
                unmixed
                    .fft_rfft2(Some([side, side].as_slice()), [2i64, 3].as_slice(), "ortho")
                    .view_as_real()
                    / &scale
            }
            (Parametrization::Fourier, None) => {
                Tensor::randn(
                    [batch, 3, side, side / 2 + 1, 2],
                    (Kind::Float, Device::Cpu),
                )
                .to_device(device)
                    * 0.01
            }
        };
        // One photo for several images: the same start, made different by a little noise
        // (identical images would give the diversity term no gradient).
        let start = if init.is_some() && batch > 1 {
            let many = start.repeat([batch, 1, 1, 1, 1][..start.dim()].to_vec());
            let noise = Tensor::randn(many.size(), (Kind::Float, Device::Cpu)).to_device(device);
            many + noise * 0.02
        } else {
            start
        };
        let var = vs.root().var_copy("image", &start);
        ImageParam {
            kind,
            var,
            side,
            scale,
            color_t,
        }
    }

    fn image(&self) -> Tensor {
        match self.kind {
            Parametrization::Pixel => self.var.shallow_clone(),
            Parametrization::Fourier => {
                let spectrum = (&self.var * &self.scale).contiguous().view_as_complex();
                let raw = spectrum.fft_irfft2(
                    Some([self.side, self.side].as_slice()),
                    [2i64, 3].as_slice(),
                    "ortho",
                ) / 4.0;
                raw.permute([0, 2, 3, 1])
                    .matmul(&self.color_t)
                    .permute([0, 3, 1, 2])
                    .sigmoid()
            }
        }
    }

    fn after_step(&self) {
        if self.kind == Parametrization::Pixel {
            tch::no_grad(|| {
                let mut v = self.var.shallow_clone();
                let _ = v.clamp_(0.0, 1.0);
            });
        }
    }
}

/// What the optimisation pushes up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// The target's logit.
    Logit,
    /// The target's log-probability (its logit minus the log-sum-exp of all): also pushes
    /// similar classes down, e.g. 'tiger cat' when dreaming 'tabby'.
    Logprob,
    /// Both summed: the log-probability wins the margin over similar classes, then (once
    /// it saturates) the logit keeps improving the image.
    Both,
}

/// What a dream is optimised for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// A class of the classifier.
    Class(usize),
    /// The mean activation of channel `channel` of layer `layer` (indices into the layers).
    Channel { layer: usize, channel: i64 },
}

/// The networks a dream looks through: the classifier, and every block's output when the
/// goal is a channel or the images must differ.
pub struct DreamNet<'a> {
    pub classifier: &'a Classifier,
    pub layers: Option<&'a LayerNet>,
    /// The layer whose Gram matrices the diversity term compares (with `--batch`).
    pub diversity_layer: Option<usize>,
}

impl DreamNet<'_> {
    fn layers(&self) -> Result<&LayerNet> {
        self.layers
            .ok_or_else(|| TlError::invalid("this dream needs the backbone's layers file"))
    }
}

/// The target class's score, summed over the batch.
fn class_score(logits: &Tensor, target: i64, objective: Objective) -> Tensor {
    let logit = || logits.select(1, target);
    let logprob = || logits.log_softmax(-1, Kind::Float).select(1, target);
    match objective {
        Objective::Logit => logit().sum(Kind::Float),
        Objective::Logprob => logprob().sum(Kind::Float),
        Objective::Both => (logit() + logprob()).sum(Kind::Float),
    }
}

/// Mean cosine similarity between the Gram matrices of different images' activations
/// `[K,C,H,W]`: 1 when the images excite the layer's channels alike (lucent's diversity
/// objective, averaged over the pairs).
pub fn gram_similarity(acts: &Tensor) -> Tensor {
    let (k, c) = (acts.size()[0], acts.size()[1]);
    let flat = acts.reshape([k, c, -1]);
    let grams = flat.matmul(&flat.transpose(1, 2)).reshape([k, -1]);
    let norm = grams
        .norm_scalaropt_dim(2, [1i64].as_slice(), true)
        .clamp_min(1e-12);
    let g = grams / norm;
    let sim = g.matmul(&g.transpose(0, 1));
    (sim.sum(Kind::Float) - sim.trace()) / ((k * (k - 1)).max(1) as f64)
}

/// The score of a batch of normalised images `x`: the goal summed over the images, minus
/// the weighted similarity between them.
fn score(net: &DreamNet, goal: Goal, cfg: &DreamConfig, x: &Tensor) -> Result<Tensor> {
    let diverse = cfg.batch > 1 && cfg.diversity > 0.0;
    let needs_layers = matches!(goal, Goal::Channel { .. }) || diverse;
    let acts = if needs_layers {
        net.layers()?.forward(x)?
    } else {
        Vec::new()
    };
    let mut total = match goal {
        Goal::Class(t) => class_score(&net.classifier.logits(x)?, t as i64, cfg.objective),
        Goal::Channel { layer, channel } => acts[layer]
            .select(1, channel)
            .mean_dim([1i64, 2].as_slice(), false, Kind::Float)
            .sum(Kind::Float),
    };
    if let (true, Some(l)) = (diverse, net.diversity_layer) {
        total -= gram_similarity(&acts[l]) * (cfg.diversity * cfg.batch as f64);
    }
    Ok(total)
}

/// `--init`: the photo, resized and centre-cropped to the dream's side, as `[1,3,S,S]`.
fn init_image(cfg: &DreamConfig) -> Result<Option<Tensor>> {
    let Some(path) = &cfg.init else {
        return Ok(None);
    };
    let img = decode_rgb(path)?;
    let crop = preprocess::resize_crop_u8(&img, cfg.size, cfg.size);
    let img = image::RgbImage::from_raw(cfg.size, cfg.size, crop)
        .ok_or_else(|| TlError::file(path, "cannot crop this image"))?;
    Ok(Some(preprocess::image_to_unit_tensor(&img)))
}

/// Optimise `cfg.batch` images for `goal`. Returns the final images `[K,3,S,S]` in [0, 1]
/// and the frames saved along the way.
pub fn dream(
    net: &DreamNet,
    goal: Goal,
    cfg: &DreamConfig,
    show_progress: bool,
) -> Result<(Tensor, Vec<Tensor>)> {
    cfg.validate()?;
    let device = net.classifier.device;
    let preprocess = net.classifier.preprocess;
    tch::manual_seed(cfg.seed as i64);
    let mut rng = SplitMix64::new(cfg.seed);
    let init = init_image(cfg)?;
    let vs = nn::VarStore::new(device);
    let param = ImageParam::new(
        cfg.param,
        &vs,
        init.as_ref(),
        cfg.size as i64,
        cfg.batch as i64,
    );
    let mut opt = nn::Adam::default()
        .build(&vs, cfg.lr)
        .map_err(|e| TlError::torch("optimizer", e))?;
    let bar = progress::bar(cfg.steps as u64, "dream", show_progress);
    let mut frames = Vec::new();
    // Penalties are per image: scaled by the batch, as the score is summed over it.
    let per_image = cfg.batch as f64;
    for step in 1..=cfg.steps {
        let image = param.image();
        // The last `polish` steps see the image as it will be saved: no transform.
        let seen = if cfg.transforms && step + cfg.polish <= cfg.steps {
            random_transform(&image, &mut rng)
        } else {
            image.shallow_clone()
        };
        let score = score(net, goal, cfg, &normalize_tensor(&seen, &preprocess))?;
        let tv = total_variation(&image);
        let mut objective = &score - &tv * (cfg.tv * per_image);
        if cfg.l2 > 0.0 {
            objective -= (&image - 0.5).square().mean(Kind::Float) * (cfg.l2 * per_image);
        }
        opt.zero_grad();
        (-objective).backward();
        opt.step();
        param.after_step();
        if show_progress && (step % 8 == 0 || step == cfg.steps) {
            let s = score.double_value(&[]) / per_image;
            bar.set_message(format!("score {s:.3} tv={:.4}", tv.double_value(&[])));
        }
        if cfg.save_every.is_some_and(|k| k > 0 && step % k == 0) {
            frames.push(tch::no_grad(|| param.image()).to_device(Device::Cpu));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let image = tch::no_grad(|| param.image()).to_device(Device::Cpu);
    Ok((image, frames))
}

/// The output's file name without its extension ("dream" when it has none).
fn out_stem(out: &Path) -> String {
    out.file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "dream".into())
}

pub fn strip_path(out: &Path) -> PathBuf {
    out.with_file_name(format!("{}-strip.png", out_stem(out)))
}

/// Where image `i` (0-based) of `k` goes: `out` itself for one image, else `<stem>-<i+1>.<ext>`.
pub fn image_path(out: &Path, i: usize, k: usize) -> PathBuf {
    if k <= 1 {
        return out.to_path_buf();
    }
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().to_string())
        .unwrap_or_else(|| "png".into());
    out.with_file_name(format!("{}-{}.{ext}", out_stem(out), i + 1))
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
    /// Image side; None: the network's crop size.
    pub size: Option<u32>,
    /// The layer the diversity term compares (None: the channel's layer, or the middle one).
    pub diversity_layer: Option<String>,
    /// The optimisation (its `size` is replaced by the resolved one).
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
                return Err(TlError::file(
                    dir,
                    "this run fine-tuned its backbone's top; layers are those of the exported backbone: use --backbone",
                ));
            }
            run.backbone()?.load_layers(rt.device)
        }
        NetworkChoice::Exported(path) => Err(TlError::file(
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
    let mut cfg = settings.config.clone();
    cfg.size = settings.size.unwrap_or(classifier.preprocess.crop);
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
    let (images, frames) = crate::util::guard::catch_torch_panic(
        &format!("dream at {0}x{0} pixels", cfg.size),
        || dream(&net, goal, &cfg, rt.progress),
    )?;
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
