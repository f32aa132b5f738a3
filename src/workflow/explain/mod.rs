//! `tl explain`: for each photo, where a run looked when it scored a class (a heat map laid
//! over the photo, and the raw map), or what one layer of the backbone makes of the photo
//! (`--maps`: a grid of its feature maps, strongest first).
//!
//! Files written per image `NAME` into the output folder: `NAME.CLASS.png` (the overlay, at
//! the photo's own resolution) and `NAME.CLASS.safetensors` (`map`: float32 `[crop, crop]`,
//! the raw signed map in the coordinates of the crop the network saw — the overlay shows its
//! positive part, scaled to its maximum; `crop`: float32 `[x, y,
//! width, height]`, that crop's place in the photo's pixels; the method, layer and class in
//! the header's metadata); with `--maps`, `NAME.maps.LAYER.png`.
use super::SkippedFile;
pub(crate) use net::loss_maps;
use net::{load_run, map_net, Loaded};

mod net;
use crate::data::decode::decode_rgb;
use crate::data::preprocess::{resized_tensor, save_image};
use crate::error::{Result, SkipReason, TlError};
use crate::eval::{ClassProb, Report};
use crate::features::backbone::BackboneSpec;
use crate::inspect::explain::{MapNet, Method, MethodChoice};
use crate::inspect::heatmap::{self, CropBox};
use crate::inspect::NetworkChoice;
use crate::run::Run;
use crate::runtime::Runtime;
use crate::util::{refuse_overwrite, FilePath};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug)]
pub struct ExplainSettings {
    /// A run (class maps and feature maps) or a backbone (feature maps only).
    pub network: NetworkChoice,
    pub images: Vec<PathBuf>,
    /// Classes by name or index; empty: the predicted class of each image.
    pub classes: Vec<String>,
    pub method: MethodChoice,
    /// The layer (names as `tl dream --list-layers`); None: the last one that has a map.
    pub layer: Option<String>,
    /// The output folder (made if missing).
    pub out: PathBuf,
    pub force: bool,
    /// Draw the layer's feature maps instead of class maps.
    pub maps: bool,
    /// Feature maps in the grid.
    pub channels: usize,
}

/// One class's map of one image.
#[derive(Clone, Debug, Serialize)]
pub struct ExplainedClass {
    pub class: String,
    pub index: usize,
    /// The calibrated probability of the class.
    pub probability: f64,
    pub method: Method,
    pub layer: String,
    /// The library that computed the layer's activations (CAM runs on ONNX Runtime where the
    /// backbone has `NAME.last_layer.onnx` and the engine is auto or onnx on the CPU).
    pub engine: crate::features::Engine,
    pub overlay: FilePath,
    pub map: FilePath,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExplainedImage {
    pub path: FilePath,
    pub width: u32,
    pub height: u32,
    /// Where the network's crop lies in the photo (its pixels).
    pub crop: CropBox,
    /// The most probable classes.
    pub top: Vec<ClassProb>,
    pub classes: Vec<ExplainedClass>,
    /// `--maps`: the grid of feature maps, and the channels in it (strongest first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grid: Option<FilePath>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExplainReport {
    pub network: String,
    pub images: Vec<ExplainedImage>,
    pub skipped: Vec<SkippedFile>,
    pub warnings: Vec<String>,
}

impl Report for ExplainReport {
    fn render_text(&self) -> String {
        let mut s = String::new();
        for im in &self.images {
            let top = im
                .top
                .iter()
                .map(|c| format!("{} {:.3}", c.class, c.probability))
                .collect::<Vec<_>>()
                .join(", ");
            match top.is_empty() {
                true => s += &format!("{}\n", im.path),
                false => s += &format!("{}  ({top})\n", im.path),
            }
            for c in &im.classes {
                let method = c.method.label();
                let engine = match c.engine {
                    crate::features::Engine::Torch => String::new(),
                    other => format!(" ({})", other.label()),
                };
                s += &format!(
                    "  {} p={:.3}: {method} at {}{engine} -> {}\n",
                    c.class, c.probability, c.layer, c.overlay
                );
            }
            if let Some(g) = &im.grid {
                s += &format!("  {} feature maps -> {g}\n", im.channels.len());
            }
        }
        s
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = crate::eval::warning_lines(&self.warnings);
        notes.extend(self.skipped.iter().map(|s| format!("skipped: {s}")));
        notes
    }
}

pub fn explain(rt: &Runtime, s: &ExplainSettings) -> Result<ExplainReport> {
    if s.images.is_empty() {
        return Err(TlError::invalid("give at least one image"));
    }
    if s.out.exists() && !s.out.is_dir() {
        return Err(TlError::bad_path(&s.out, "exists and is not a folder"));
    }
    let files = crate::data::expand_inputs(&s.images)?;
    let loaded = load(rt, s)?;
    std::fs::create_dir_all(&s.out).map_err(|e| TlError::io(&s.out, e))?;
    let mut report = ExplainReport {
        network: loaded.description.clone(),
        images: Vec::new(),
        skipped: Vec::new(),
        warnings: loaded.warning.iter().cloned().collect(),
    };
    let names = super::output_stems(&files);
    for (path, stem) in files.iter().zip(&names) {
        match explain_one(&loaded, s, path, stem, rt.device) {
            Ok(done) => report.images.push(done),
            Err(e @ TlError::Decode { .. }) | Err(e @ TlError::Io { .. })
                if e.path() == Some(path.as_path()) =>
            {
                report.skipped.push(SkippedFile {
                    path: FilePath(path.clone()),
                    reason: SkipReason::of(&e),
                })
            }
            Err(e) => return Err(e),
        }
    }
    if report.images.is_empty() {
        let why: Vec<String> = report.skipped.iter().map(|s| s.to_string()).collect();
        return Err(TlError::invalid(format!(
            "no image could be explained: {}",
            why.join("; ")
        )));
    }
    Ok(report)
}

fn load(rt: &Runtime, s: &ExplainSettings) -> Result<Loaded> {
    let device = rt.device;
    match &s.network {
        NetworkChoice::Run(dir) => {
            let onnx_threads = match (rt.engine, device) {
                (crate::runtime::EngineChoice::Torch, _) | (_, Device::Cuda(_)) => None,
                _ => Some(rt.threads),
            };
            load_run(&Run::open(dir)?, s.maps, device, onnx_threads)
        }
        NetworkChoice::Backbone(name) => {
            let spec = BackboneSpec::resolve(name, &rt.backbones)?;
            match s.maps {
                true => Ok(Loaded {
                    description: format!("backbone {}", spec.name),
                    preprocess: spec.preprocess(),
                    classes: spec.class_names().to_vec(),
                    run: None,
                    layers: Some(spec.load_layers(device)?),
                    cut: None,
                    last_onnx: None,
                    warning: spec.weights_warning(),
                }),
                false => net::load_backbone(&spec, device),
            }
        }
        NetworkChoice::Exported(path) => Err(TlError::invalid(format!(
            "{}: an exported model has no layers to explain; use the run it was exported from",
            path.display()
        ))),
    }
}

/// A name safe in a file name: letters, digits, `-`, `_`, `.`; anything else `_`.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn explain_one(
    l: &Loaded,
    s: &ExplainSettings,
    path: &Path,
    stem: &str,
    device: Device,
) -> Result<ExplainedImage> {
    let img = decode_rgb(path)?;
    let x = resized_tensor(&img, &l.preprocess).to_device(device);
    let probs = match &l.run {
        Some((head, features)) => tch::no_grad(|| -> Result<Vec<f32>> {
            let p = head.probabilities(&features.forward(&x)?).get(0);
            Vec::<f32>::try_from(&p.to_kind(Kind::Float))
                .map_err(|e| TlError::torch("probabilities", e))
        })?,
        None => Vec::new(),
    };
    let mut done = ExplainedImage {
        path: FilePath(path.to_path_buf()),
        width: img.width(),
        height: img.height(),
        crop: CropBox::of(img.width(), img.height(), &l.preprocess),
        top: top_classes(&probs, &l.classes, 3),
        classes: Vec::new(),
        grid: None,
        channels: Vec::new(),
    };
    if s.maps {
        let (grid, channels) = feature_grid(l, s, &x, stem)?;
        done.grid = Some(grid);
        done.channels = channels;
        return Ok(done);
    }
    let classes = wanted_classes(s, &l.classes, &probs)?;
    // One map net per image: whether the backbone is pooled is checked once.
    let at = map_net(l, &x, s.layer.as_deref())?;
    for class in classes {
        let probability = probs[class] as f64;
        done.classes
            .push(class_map(l, s, (&img, &x), &at, stem, class, probability)?);
    }
    Ok(done)
}

fn top_classes(probs: &[f32], classes: &[String], k: usize) -> Vec<ClassProb> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order
        .into_iter()
        .take(k)
        .map(|i| ClassProb {
            class: classes.get(i).cloned().unwrap_or_else(|| i.to_string()),
            index: i,
            probability: probs[i] as f64,
        })
        .collect()
}

/// The classes asked for (by name or index), or the predicted one.
fn wanted_classes(s: &ExplainSettings, classes: &[String], probs: &[f32]) -> Result<Vec<usize>> {
    if s.classes.is_empty() {
        let best = (0..probs.len())
            .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
            .ok_or_else(|| TlError::invalid("the run gave no probabilities"))?;
        return Ok(vec![best]);
    }
    s.classes
        .iter()
        .map(|q| crate::inspect::classes::resolve(q, classes).map(|r| r.index))
        .collect()
}

fn class_map(
    l: &Loaded,
    s: &ExplainSettings,
    (img, x): (&image::RgbImage, &Tensor),
    (net, layer): &(MapNet, usize),
    stem: &str,
    class: usize,
    probability: f64,
) -> Result<ExplainedClass> {
    let m = net.class_map(x, class, s.method, *layer)?;
    let name = l
        .classes
        .get(class)
        .cloned()
        .unwrap_or_else(|| class.to_string());
    let overlay = s.out.join(format!("{stem}.{}.png", file_safe(&name)));
    let map_file = s
        .out
        .join(format!("{stem}.{}.safetensors", file_safe(&name)));
    for f in [&overlay, &map_file] {
        refuse_overwrite(f, s.force)?;
    }
    let (raw, picture) = net::rendered(l, img, &m)?;
    save_image(&picture, &overlay)?;
    let crop = CropBox::of(img.width(), img.height(), &l.preprocess);
    let meta = std::collections::HashMap::from([
        (
            "method".to_string(),
            format!("{:?}", m.method).to_lowercase(),
        ),
        ("layer".to_string(), m.layer.clone()),
        ("class".to_string(), name.clone()),
        (
            "image".to_string(),
            img.width().to_string() + "x" + &img.height().to_string(),
        ),
    ]);
    let crop_t =
        Tensor::from_slice(&[crop.x, crop.y, crop.width, crop.height]).to_kind(Kind::Float);
    let bytes = crate::util::tensors::to_safetensors_with(
        &[
            ("map".into(), raw.to_kind(Kind::Float)),
            ("crop".into(), crop_t),
        ],
        Some(meta),
    )?;
    crate::util::write_atomic(&map_file, &bytes)?;
    Ok(ExplainedClass {
        class: name,
        index: class,
        probability,
        method: m.method,
        layer: m.layer,
        engine: m.engine,
        overlay: FilePath(overlay),
        map: FilePath(map_file),
    })
}

/// The grid of the layer's strongest feature maps for this image.
fn feature_grid(
    l: &Loaded,
    s: &ExplainSettings,
    x: &Tensor,
    stem: &str,
) -> Result<(FilePath, Vec<i64>)> {
    let layers = l
        .layers
        .as_ref()
        .ok_or_else(|| TlError::invalid("this backbone has no layer file"))?;
    let index = match &s.layer {
        Some(name) => layers.index_of(name)?,
        None => layers.names.len() / 2,
    };
    let acts = tch::no_grad(|| layers.forward(x))?;
    let a = acts[index].to_device(Device::Cpu);
    let order = crate::inspect::explain::strongest_channels(&a, s.channels.max(1))?;
    let idx: Vec<i64> = order.iter().map(|(c, _)| *c).collect();
    let maps = a.get(0).index_select(0, &Tensor::from_slice(&idx));
    let h = a.size()[2].max(1) as u32;
    let tile = if h >= 64 {
        h.min(128)
    } else {
        h * (64 / h).max(1)
    };
    let out = s.out.join(format!(
        "{stem}.maps.{}.png",
        file_safe(&layers.names[index])
    ));
    refuse_overwrite(&out, s.force)?;
    save_image(&heatmap::grid(&maps, tile)?, &out)?;
    Ok((FilePath(out), idx))
}
