//! Stage 7: the commands as library calls. Each takes plain settings (no command-line
//! types), runs the stages above in order and returns a typed report.
pub mod attack;
pub mod audit;
pub mod backbones;
pub mod bench;
pub mod cache;
pub mod calibrate;
pub mod compare;
pub mod doctor;
pub mod dream;
pub mod evaluate;
pub mod explain;
pub mod export;
pub mod extract;
pub mod finetune;
pub mod predict;
pub mod report;
pub mod train;
pub mod tune;

use crate::data::Sample;
use crate::error::{PerImage, SkipReason};
use crate::util::FilePath;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tch::{Device, Tensor};

/// Features (or trunk outputs) of the training and validation images as tensors, on the
/// device. The training rows hold every view: first the plain one of each image, then each
/// augmented view in turn; `train` and `val` describe the plain view.
pub(crate) struct FeatureSet {
    pub train: Gathered,
    pub val: Gathered,
    pub train_x: Tensor,
    pub train_y: Tensor,
    pub val_x: Tensor,
    pub val_y: Tensor,
    pub dim: usize,
    /// The image and view of each training row.
    pub train_rows: Vec<(PathBuf, crate::data::View)>,
    /// With `--stream`: the rows stay in the feature cache (the tensors above are empty).
    pub streamed: Option<Streamed>,
}

/// Training and validation rows read from the feature cache a mini-batch at a time.
pub(crate) struct Streamed {
    pub train: crate::head::StreamedRows,
    pub val: crate::head::StreamedRows,
}

impl FeatureSet {
    /// The training rows, wherever they are.
    pub fn train_source(&self) -> Box<dyn crate::head::Rows + '_> {
        match &self.streamed {
            Some(s) => Box::new(&s.train),
            None => Box::new(crate::head::TensorRows {
                x: &self.train_x,
                y: &self.train_y,
            }),
        }
    }

    pub fn val_source(&self) -> Box<dyn crate::head::Rows + '_> {
        match &self.streamed {
            Some(s) => Box::new(&s.val),
            None => Box::new(crate::head::TensorRows {
                x: &self.val_x,
                y: &self.val_y,
            }),
        }
    }

    /// Readable training images of each of `classes` classes (the plain view).
    pub fn train_counts(&self, classes: usize) -> Vec<usize> {
        let mut counts = vec![0usize; classes];
        for &y in &self.train.y {
            if let Some(c) = counts.get_mut(y as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// Training rows (every view).
    pub fn train_len(&self) -> usize {
        match &self.streamed {
            Some(s) => crate::head::Rows::len(&s.train),
            None => self.train_y.size()[0] as usize,
        }
    }
}

/// A file that could not be used, and why. In JSON: `{path, kind, reason}` — the
/// reason's stable name and its text.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(into = "SkippedRecord", from = "SkippedRecord")]
pub struct SkippedFile {
    pub path: FilePath,
    pub reason: SkipReason,
}

#[derive(Serialize, Deserialize)]
struct SkippedRecord {
    path: FilePath,
    kind: String,
    reason: String,
}

impl From<SkippedFile> for SkippedRecord {
    fn from(s: SkippedFile) -> Self {
        SkippedRecord {
            path: s.path,
            kind: s.reason.kind().to_string(),
            reason: s.reason.to_string(),
        }
    }
}

impl From<SkippedRecord> for SkippedFile {
    fn from(r: SkippedRecord) -> Self {
        SkippedFile {
            path: r.path,
            reason: SkipReason::from_report(&r.kind, &r.reason),
        }
    }
}

impl std::fmt::Display for SkippedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Usable extraction results as flat arrays: features, labels and paths, plus what was skipped.
#[derive(Clone)]
pub(crate) struct Gathered {
    pub x: Vec<f32>,
    pub y: Vec<i64>,
    pub paths: Vec<PathBuf>,
    pub skipped: Vec<SkippedFile>,
}

pub(crate) fn gather(samples: &[Sample], features: &[PerImage<Vec<f32>>]) -> Gathered {
    let mut g = Gathered {
        x: Vec::new(),
        y: Vec::new(),
        paths: Vec::new(),
        skipped: Vec::new(),
    };
    for (s, f) in samples.iter().zip(features) {
        match f {
            Ok(v) => {
                g.x.extend_from_slice(v);
                g.y.push(s.label as i64);
                g.paths.push(s.path.clone());
            }
            Err(why) => g.skipped.push(SkippedFile {
                path: FilePath(s.path.clone()),
                reason: why.clone(),
            }),
        }
    }
    g
}

pub(crate) fn tensor_2d(xs: &[f32], n: usize, d: usize, device: Device) -> Tensor {
    Tensor::from_slice(xs)
        .view([n as i64, d as i64])
        .to_device(device)
}

/// Lines for stderr about skipped and ignored files.
pub(crate) fn skipped_notes(skipped: &[SkippedFile], ignored: usize) -> Vec<String> {
    let mut notes = Vec::new();
    if !skipped.is_empty() {
        notes.push(format!(
            "skipped {} unreadable image(s) (listed in report.json):",
            skipped.len()
        ));
        for s in skipped.iter().take(10) {
            notes.push(format!("  {s}"));
        }
        if skipped.len() > 10 {
            notes.push(format!("  … and {} more", skipped.len() - 10));
        }
    }
    if ignored > 0 {
        notes.push(format!(
            "ignored {ignored} file(s) that are not images or not part of the layout (listed in report.json)"
        ));
    }
    notes
}

/// File stems for the inputs, numbered where two share one.
pub(crate) fn output_stems(inputs: &[PathBuf]) -> Vec<String> {
    let mut seen = std::collections::HashMap::new();
    inputs
        .iter()
        .map(|p| {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "image".into());
            let n = seen.entry(stem.clone()).or_insert(0usize);
            *n += 1;
            if *n == 1 {
                stem
            } else {
                format!("{stem}-{n}")
            }
        })
        .collect()
}
