//! What config.json records about a run: the backbone, the data, the head, training,
//! extraction (engine, precision, JPEG decoding), calibration, the unknown judge and
//! fine-tuning. Fields added after the first runs have serde defaults that say what older
//! runs did.
use crate::data::{Layout, PreprocessConfig};
use crate::features::cut::Unfreeze;
use crate::head::{FinetuneConfig, HeadConfig, TrainConfig};
use crate::util::FilePath;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackboneRecord {
    /// What the user passed to `--backbone`.
    pub spec: String,
    pub name: String,
    pub architecture: String,
    pub sidecar: Option<FilePath>,
    pub features_file: FilePath,
    pub features_sha256: String,
    pub feature_dim: i64,
    pub pretrained: Option<bool>,
    /// sha256 of the backbone's ONNX export (`NAME.features.onnx`) when it has one: ONNX
    /// Runtime computes the features with that file, so it is pinned like the `.pt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx_sha256: Option<String>,
    /// sha256 of its bf16 export (`NAME.features.bf16.onnx`, OpenVINO's in bf16) when it has
    /// one (runs made before: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx_bf16_sha256: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataRecord {
    pub root: FilePath,
    pub layout: Layout,
    /// The fraction held out when the split was drawn by `tl` (with the run's seed).
    pub val_split: Option<f64>,
    pub val_dir: Option<FilePath>,
    pub train_images: usize,
    pub val_images: usize,
    /// The review file whose decisions were applied (`tl train --review`), and its sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReviewRecord {
    pub file: FilePath,
    pub sha256: String,
    pub excluded: usize,
    pub relabelled: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExtractRecord {
    pub batch_size: usize,
    pub threads: usize,
    pub device: String,
    pub cache_dir: Option<FilePath>,
    /// The library that computed the features (libtorch for runs made before engines).
    #[serde(default)]
    pub engine: crate::features::Engine,
    /// The precision it computed them in (fp32 for runs made before `--precision`).
    #[serde(default)]
    pub precision: crate::features::Precision,
    /// How JPEGs were decoded (full for runs made before `--decode`).
    #[serde(default = "crate::runtime::DecodeMode::before_draft")]
    pub decode: crate::runtime::DecodeMode,
    /// The head was trained on rows streamed from the cache (`--stream`).
    #[serde(default)]
    pub stream: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub tl_version: String,
    pub created_at: String,
    pub seed: u64,
    pub backbone: BackboneRecord,
    pub preprocess: PreprocessConfig,
    pub data: DataRecord,
    pub head: HeadConfig,
    pub train: TrainConfig,
    pub extract: ExtractRecord,
    /// Views per training image (`--views`; 1 = the eval transform only).
    #[serde(default = "one")]
    pub views: usize,
    /// Present when the top of the backbone was fine-tuned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<FinetuneRecord>,
    /// Temperature scaling fitted on the validation images (runs made before it: none, T = 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationRecord>,
    /// The judge of images unlike the training ones (runs made before it: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<UnknownRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CalibrationRecord {
    /// Logits are divided by it before the softmax.
    pub temperature: f64,
    /// The images it was fitted on (the validation images; 0: none, T = 1).
    pub images: usize,
}

/// How `unknown` is decided: see `head::unknown`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnknownRecord {
    /// `knn-cosine`: 1 − mean cosine similarity of the k nearest training features.
    pub method: String,
    pub k: i64,
    /// Share of the calibration images accepted at `threshold`.
    pub accept: f64,
    /// Above it an image is unknown.
    pub threshold: f64,
    /// Training images kept as references, and of how many.
    pub references: usize,
    pub training_images: usize,
    /// `validation`, or `training (leave-one-out)` for runs without validation images.
    pub calibrated_on: String,
    pub calibration_images: usize,
    /// The file in the run folder.
    pub file: String,
}

fn one() -> usize {
    1
}

/// What was fine-tuned, from which files, and how.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinetuneRecord {
    pub unfreeze: Unfreeze,
    /// Trained blocks, and the first of them (bottom-most).
    pub blocks: usize,
    pub first_block: String,
    pub top_file: FilePath,
    pub top_sha256: String,
    pub trunk_file: Option<FilePath>,
    pub trunk_sha256: Option<String>,
    /// The fine-tuned parameters, in the run folder.
    pub weights: String,
    pub config: FinetuneConfig,
    pub best_epoch: usize,
}
