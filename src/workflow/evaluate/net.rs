//! The run's network over the images: cached features (or trunk outputs) through the
//! head, one view at a time, each image's outputs or why it was skipped.
use super::settings::EvalSettings;
use crate::data::View;
use crate::error::{PerImage, Result, SkipReason};
use crate::features::cut::TrainableTop;
use crate::features::{self, BackboneSpec, ExtractOptions, ExtractStats};
use crate::head::CachedRows;
use crate::head::{Head, UnknownJudge};
use crate::run::Run;
use crate::runtime::Runtime;
use std::path::PathBuf;
use tch::Tensor;

/// Per image: a flat row of numbers, or why it could not be used.
pub(super) type Rows = Vec<PerImage<Vec<f32>>>;

/// Per image, summed over the views: probabilities at T = 1, then at the run's T; then the
/// plain view's unknown score (as the threshold was set); and the plain view's extraction
/// figures.
pub(super) fn summed_views(
    rt: &Runtime,
    s: &EvalSettings,
    net: &EvalNet,
    paths: &[PathBuf],
    warnings: &mut Vec<String>,
) -> Result<(Rows, ExtractStats)> {
    let temperature = net.head().temperature();
    let mut per_image: Rows = Vec::new();
    let mut stats = ExtractStats::default();
    for view in s.tta.views() {
        let (outs, st) = view_outputs(rt, s, net, paths, view, warnings)?;
        let first = per_image.is_empty();
        let outs: Vec<_> = outs
            .into_iter()
            .map(|r| {
                r.map(|o| {
                    let mut row = o.flat(temperature);
                    if !first {
                        // Only the first (plain) view's score counts.
                        if let Some(score) = row.last_mut() {
                            *score = 0.0;
                        }
                    }
                    row
                })
            })
            .collect();
        if view == View::Center {
            stats = st;
        }
        per_image = if per_image.is_empty() {
            outs
        } else {
            per_image
                .into_iter()
                .zip(outs)
                .map(|(a, b)| add(a, b))
                .collect()
        };
    }
    Ok((per_image, stats))
}

/// The sum of two views' outputs (an image is usable only if both are).
pub(super) fn add(a: PerImage<Vec<f32>>, b: PerImage<Vec<f32>>) -> PerImage<Vec<f32>> {
    let (a, b) = (a?, b?);
    Ok(a.iter().zip(&b).map(|(x, y)| x + y).collect())
}

pub(super) fn mean(sum: &[f32], n: f32) -> Vec<f32> {
    sum.iter().map(|v| v / n).collect()
}

/// A run's network, split the way its cache is: what is extracted (and cached), then what
/// runs on the extracted rows.
pub(super) struct EvalNet {
    pub(super) kind: NetKind,
    pub(super) head: Head,
    /// The run's unknown judge and threshold (None: run made before it).
    pub(super) judge: Option<(UnknownJudge, f64)>,
}

pub(super) enum NetKind {
    /// Frozen backbone features (cached), then the head.
    Frozen { spec: BackboneSpec },
    /// Cached trunk outputs, then the fine-tuned top and the head.
    Trunk {
        trunk: BackboneSpec,
        top: TrainableTop,
    },
    /// Everything fine-tuned: images straight into the top.
    All {
        top: TrainableTop,
        preprocess: crate::data::PreprocessConfig,
    },
}

/// One image's outputs for one view.
pub(super) struct ImageOutput {
    pub(super) logits: Vec<f32>,
    pub(super) score: f32,
}

impl ImageOutput {
    /// Probabilities at T = 1 and at `temperature`, then the score: one flat row.
    pub(super) fn flat(&self, temperature: f64) -> Vec<f32> {
        let softmax = |t: f32| {
            let m = self
                .logits
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = self.logits.iter().map(|z| ((z - m) / t).exp()).collect();
            let sum: f32 = e.iter().sum();
            e.into_iter().map(move |v| v / sum)
        };
        softmax(1.0)
            .chain(softmax(temperature as f32))
            .chain(std::iter::once(self.score))
            .collect()
    }
}

impl EvalNet {
    /// The run's network; a frozen backbone on the runtime's engine.
    pub(super) fn load(
        run: &Run,
        spec: BackboneSpec,
        rt: &Runtime,
        accept: Option<f64>,
    ) -> Result<EvalNet> {
        let device = rt.device;
        let head = run.load_head(device)?;
        let judge = run.load_judge(accept, device)?;
        let kind = match run.split_spec()? {
            None => NetKind::Frozen {
                spec: run.on_engine(spec, rt.engine, rt.precision, device)?,
            },
            Some(split) => {
                let top = run.load_top(&split, device)?;
                match split.trunk {
                    Some(trunk) => NetKind::Trunk { trunk, top },
                    None => NetKind::All {
                        top,
                        preprocess: run.config.preprocess,
                    },
                }
            }
        };
        Ok(EvalNet { kind, head, judge })
    }

    pub(super) fn head(&self) -> &Head {
        &self.head
    }

    /// Logits and unknown scores (0 without a judge) of the head's input features.
    pub(super) fn outputs(&self, features: &Tensor) -> Result<Vec<ImageOutput>> {
        let logits = crate::util::tensors::rows(&tch::no_grad(|| self.head.forward(features)))?;
        let scores = match &self.judge {
            Some((judge, _)) => judge.scores(features)?,
            None => vec![0.0; logits.len()],
        };
        Ok(logits
            .into_iter()
            .zip(scores)
            .map(|(logits, score)| ImageOutput { logits, score })
            .collect())
    }
}

/// Per image: its outputs, or why it could not be used.
pub(super) type Outputs = Vec<PerImage<ImageOutput>>;

/// Outputs of one view of every image (or why an image could not be used).
pub(super) fn view_outputs(
    rt: &Runtime,
    s: &EvalSettings,
    net: &EvalNet,
    paths: &[PathBuf],
    view: View,
    warnings: &mut Vec<String>,
) -> Result<(Outputs, ExtractStats)> {
    let (spec, top) = match &net.kind {
        NetKind::Frozen { spec } => (spec, None),
        NetKind::Trunk { trunk, top } => (trunk, Some(top)),
        NetKind::All { top, preprocess } => {
            return Ok((
                decoded_outputs(s, top, net, preprocess, paths, view, rt.device)?,
                ExtractStats::default(),
            ))
        }
    };
    let cache = s.cache.open_view(spec, view)?;
    let opts = ExtractOptions::new(rt, spec, s.batch_size, false, view);
    let ex = features::extract(paths, spec, &cache, &opts)?;
    if let Some(w) = &ex.cache_warning {
        if !warnings.contains(w) {
            warnings.push(w.clone());
        }
    }
    let ok: Vec<usize> = (0..paths.len())
        .filter(|&i| ex.features[i].is_ok())
        .collect();
    let mut flat = Vec::with_capacity(ok.len() * ex.dim);
    for &i in &ok {
        if let Ok(v) = &ex.features[i] {
            flat.extend_from_slice(v);
        }
    }
    let x = crate::workflow::tensor_2d(&flat, ok.len(), ex.dim, rt.device);
    let x = match top {
        Some(top) => top.features_of(&CachedRows(x), s.batch_size.max(64))?,
        None => x,
    };
    let outputs = net.outputs(&x)?;
    let mut out: Outputs = ex
        .features
        .iter()
        .map(|r| match r {
            // Replaced below by the image's outputs.
            Ok(_) => Err(SkipReason::Preprocess("not computed".into())),
            Err(why) => Err(why.clone()),
        })
        .collect();
    for (&i, o) in ok.iter().zip(outputs) {
        out[i] = Ok(o);
    }
    Ok((out, ex.stats))
}

/// Outputs with every block fine-tuned: nothing is cached, images are decoded per batch.
pub(super) fn decoded_outputs(
    s: &EvalSettings,
    top: &TrainableTop,
    net: &EvalNet,
    preprocess: &crate::data::PreprocessConfig,
    paths: &[PathBuf],
    view: View,
    device: tch::Device,
) -> Result<Outputs> {
    let mut out: Outputs = (0..paths.len())
        .map(|_| Err(SkipReason::Preprocess("not computed".into())))
        .collect();
    for (c, chunk) in paths.chunks(s.batch_size.max(1)).enumerate() {
        let batch = features::extract::decode_files(chunk, preprocess, view);
        for (i, why) in &batch.failures {
            out[c * s.batch_size + i] = Err(why.clone());
        }
        if batch.indices.is_empty() {
            continue;
        }
        let x = batch.tensor(preprocess).to_device(device);
        let features = tch::no_grad(|| top.forward(&x))?;
        for (o, &i) in net.outputs(&features)?.into_iter().zip(&batch.indices) {
            out[c * s.batch_size + i] = Ok(o);
        }
    }
    Ok(out)
}
