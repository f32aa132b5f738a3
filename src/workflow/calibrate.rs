//! The last step of `tl train`, after the head (and any fine-tuning): temperature scaling
//! fitted on the validation images, and the "unknown" judge (reference features of the
//! training images, its threshold set on the validation images). Both are cheap: one pass
//! of the head over the validation rows and a matrix product against the references.
use super::finetune::Tuned;
use super::FeatureSet;
use crate::error::Result;
use crate::eval::calibration::{histogram, Calibration};
use crate::features::cut::DecodedRows;
use crate::head::{temperature, unknown, CachedRows, Head, Rows, TensorRows, UnknownJudge};
use crate::run::{CalibrationRecord, UnknownRecord, UNKNOWN};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

/// How the run judges "unlike the training images".
#[derive(Clone, Debug)]
pub struct UnknownSettings {
    /// Share of validation images accepted as known (the threshold follows).
    pub accept: f64,
    /// Nearest references averaged in the score.
    pub k: i64,
}

impl Default for UnknownSettings {
    fn default() -> Self {
        UnknownSettings { accept: 0.95, k: 1 }
    }
}

/// Temperature scaling's effect on the validation images.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CalibrationSummary {
    pub temperature: f64,
    pub images: usize,
    pub before: Calibration,
    pub after: Calibration,
}

/// The unknown judge as trained, and the validation scores' histogram for report.html.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnknownSummary {
    pub method: String,
    pub k: i64,
    pub accept: f64,
    pub threshold: f64,
    pub references: usize,
    pub calibrated_on: String,
    pub calibration_images: usize,
    /// Share of the calibration images above the threshold.
    pub calibration_rejected: f64,
    /// Bytes of unknown.safetensors' tensors.
    pub stored_bytes: usize,
    /// Calibration scores in `histogram_bins` equal bins over [0, `histogram_max`].
    pub histogram_max: f64,
    pub histogram: Vec<usize>,
}

pub(super) struct Calibrated {
    pub judge: UnknownJudge,
    pub unknown: UnknownRecord,
    pub calibration: CalibrationRecord,
    pub unknown_summary: UnknownSummary,
    pub calibration_summary: Option<CalibrationSummary>,
    pub seconds: f64,
}

/// Where the head's input rows are after training: the features in memory or streamed, or
/// (fine-tuned runs) recomputed through the tuned top.
pub(super) struct HeadInputs<'a> {
    pub features: &'a FeatureSet,
    /// Cached trunk outputs (fine-tuning with a trunk).
    pub trunk_rows: Option<&'a FeatureSet>,
    pub tuned: Option<&'a Tuned>,
    pub preprocess: crate::data::PreprocessConfig,
}

pub(super) fn calibrate(
    s: &UnknownSettings,
    seed: u64,
    head: &mut Head,
    inputs: &HeadInputs,
    device: Device,
) -> Result<Calibrated> {
    let t0 = std::time::Instant::now();
    let f = inputs.features;
    let tuned_val;
    let val: Box<dyn Rows + '_> = match inputs.tuned {
        Some(t) => {
            tuned_val = TensorRows {
                x: &t.val_features,
                y: &f.val_y,
            };
            Box::new(&tuned_val)
        }
        None => f.val_source(),
    };
    let calibration_summary = fit_temperature(head, val.as_ref(), device)?;
    let judge = fit_judge(s, seed, inputs, val.as_ref(), device)?;
    let (unknown, unknown_summary) = unknown_record(s, &judge, f.train.y.len(), !val.is_empty());
    Ok(Calibrated {
        calibration: CalibrationRecord {
            temperature: head.temperature(),
            images: calibration_summary.as_ref().map_or(0, |c| c.images),
        },
        judge,
        unknown,
        unknown_summary,
        calibration_summary,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The "unknown" judge: its references are the training rows (through the tuned top for
/// fine-tuned runs), its threshold set on `val`.
fn fit_judge(
    s: &UnknownSettings,
    seed: u64,
    inputs: &HeadInputs,
    val: &dyn Rows,
    device: Device,
) -> Result<UnknownJudge> {
    let f = inputs.features;
    match inputs.tuned {
        None => unknown::fit_on_rows(&*f.train_source(), f.train.y.len(), val, s.k, seed, device),
        Some(t) => {
            let refs = tuned_references(inputs, t, seed)?;
            let tuned_val = TensorRows {
                x: &t.val_features,
                y: &f.val_y,
            };
            let refs_rows = TensorRows {
                x: &refs,
                y: &f.train_y,
            };
            unknown::fit_on_rows(
                &refs_rows,
                refs.size()[0] as usize,
                &tuned_val,
                s.k,
                seed,
                device,
            )
        }
    }
}

/// What config.json and report.json say about the judge.
fn unknown_record(
    s: &UnknownSettings,
    judge: &UnknownJudge,
    training_images: usize,
    on_val: bool,
) -> (UnknownRecord, UnknownSummary) {
    let threshold = judge.threshold(s.accept);
    let scores = judge.calibration_scores();
    let histogram_max = scores
        .last()
        .map(|&m| (m as f64 * 1.5).max(threshold * 1.5))
        .unwrap_or(1.0)
        .clamp(1e-3, 2.0);
    let unknown = UnknownRecord {
        method: "knn-cosine".into(),
        k: judge.k(),
        accept: s.accept,
        threshold,
        references: judge.references(),
        training_images,
        calibrated_on: if on_val {
            "validation".into()
        } else {
            "training (leave-one-out)".into()
        },
        calibration_images: scores.len(),
        file: UNKNOWN.into(),
    };
    let summary = UnknownSummary {
        method: unknown.method.clone(),
        k: unknown.k,
        accept: s.accept,
        threshold,
        references: unknown.references,
        calibrated_on: unknown.calibrated_on.clone(),
        calibration_images: unknown.calibration_images,
        calibration_rejected: judge.calibration_rejected(threshold),
        stored_bytes: judge.stored_bytes(),
        histogram_max,
        histogram: histogram(scores, 0.0, histogram_max, 30),
    };
    (unknown, summary)
}

/// Fit and set the head's temperature on the validation rows; None without any.
fn fit_temperature(
    head: &mut Head,
    val: &dyn Rows,
    device: Device,
) -> Result<Option<CalibrationSummary>> {
    if val.is_empty() {
        return Ok(None);
    }
    let mut logits = Vec::new();
    let mut labels = Vec::new();
    let idx: Vec<i64> = (0..val.len() as i64).collect();
    for chunk in idx.chunks(4096) {
        let (x, y) = val.batch(chunk, device)?;
        logits.push(tch::no_grad(|| head.forward(&x)));
        labels.push(y);
    }
    let (logits, labels) = (Tensor::cat(&logits, 0), Tensor::cat(&labels, 0));
    let t = temperature::fit_temperature(&logits, &labels);
    let ys: Vec<usize> = Vec::<i64>::try_from(&labels.to_device(Device::Cpu))
        .unwrap_or_default()
        .into_iter()
        .map(|y| y as usize)
        .collect();
    let probs =
        |temp: f64| crate::util::tensors::rows(&(&logits / temp).softmax(-1, tch::Kind::Float));
    let before = Calibration::measure(&probs(1.0)?, &ys);
    let after = Calibration::measure(&probs(t)?, &ys);
    head.set_temperature(t)?;
    Ok(Some(CalibrationSummary {
        temperature: t,
        images: ys.len(),
        before,
        after,
    }))
}

/// The plain-view training features through the fine-tuned top, for the sampled references.
fn tuned_references(inputs: &HeadInputs, t: &Tuned, seed: u64) -> Result<Tensor> {
    let f = inputs.features;
    let n = f.train.y.len();
    let dim = t.val_features.size().get(1).copied().unwrap_or(1) as usize;
    let idx = unknown::reference_rows(n, dim, seed);
    let source: Box<dyn Rows> = match inputs.trunk_rows {
        Some(rows) => {
            let i = Tensor::from_slice(&idx).to_device(rows.train_x.device());
            Box::new(CachedRows(rows.train_x.index_select(0, &i)))
        }
        None => Box::new(DecodedRows {
            items: idx
                .iter()
                .map(|&i| f.train_rows[i as usize].clone())
                .collect(),
            preprocess: inputs.preprocess,
        }),
    };
    t.top.features_of(source.as_ref(), 64)
}
