//! The backbone's JSON sidecar (`NAME.json`, written by scripts/export_backbones.py): the
//! architecture, preprocessing, class names and weights' provenance, and the files of the
//! export with their sha256 — TorchScript, fine-tuning cuts, layers, the classifier's last
//! layer, and the ONNX files (features, classifier, last layer, the bf16 export).
use crate::data::PreprocessConfig;
use serde::{Deserialize, Serialize};
pub const SIDECAR_FORMAT: &str = "tl-backbone/1";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sidecar {
    pub format: String,
    pub name: String,
    pub architecture: String,
    pub feature_dim: i64,
    #[serde(default)]
    pub num_classes: i64,
    pub resize_size: u32,
    pub crop_size: u32,
    #[serde(default = "default_interpolation")]
    pub interpolation: String,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    #[serde(default)]
    pub class_names: Vec<String>,
    #[serde(default)]
    pub weights: serde_json::Value,
    pub features_file: String,
    #[serde(default)]
    pub features_sha256: Option<String>,
    #[serde(default)]
    pub classifier_file: Option<String>,
    #[serde(default)]
    pub classifier_sha256: Option<String>,
    /// The blocks `--finetune` counts, bottom to top (empty: exported without cuts).
    #[serde(default)]
    pub blocks: Vec<String>,
    #[serde(default)]
    pub cuts: Vec<CutPoint>,
    /// The same networks as ONNX (`--engine onnx`); absent in older exports.
    #[serde(default)]
    pub onnx: OnnxExports,
    /// Every block's output (`tl dream --layer`); absent in older exports.
    #[serde(default)]
    pub layers: Option<LayersFile>,
    /// `NAME.linear.safetensors`: the classifier's last layer (features → logits); absent in
    /// older exports.
    #[serde(default)]
    pub linear: Option<LinearFile>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinearFile {
    pub file: String,
    pub sha256: String,
}

/// `NAME.layers.pt`: normalised images → the output of every block, bottom to top.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayersFile {
    pub file: String,
    pub sha256: String,
    pub names: Vec<String>,
    pub channels: Vec<i64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OnnxExports {
    pub features: Option<OnnxFile>,
    pub classifier: Option<OnnxFile>,
    /// The last block's output `[N,C,h,w]` (`tl explain`'s CAM); absent in older exports.
    #[serde(default)]
    pub last_layer: Option<OnnxFile>,
    /// The feature extractor OpenVINO runs in bf16: `NAME.features.bf16.onnx`, the weights of
    /// the layers that rounding to the nearest bf16 would spoil rounded by calibration
    /// instead (scripts/export_backbones.py), or `features` itself when no layer needs it.
    /// Absent in older exports: their bf16 runs round every weight to the nearest.
    #[serde(default)]
    pub features_bf16: Option<Bf16File>,
}

impl OnnxExports {
    /// The recorded sha256 of the export called `file` (the features or their bf16 file).
    pub fn sha256_of(&self, file: &str) -> Option<&str> {
        let bf16 = self.features_bf16.as_ref().map(|f| (&f.file, &f.sha256));
        let plain = self.features.as_ref().map(|f| (&f.file, &f.sha256));
        [bf16, plain]
            .into_iter()
            .flatten()
            .find(|(name, _)| name.as_str() == file)
            .map(|(_, sha)| sha.as_str())
    }
}

/// `NAME.features.bf16.onnx` (see [`OnnxExports::features_bf16`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bf16File {
    pub file: String,
    pub sha256: String,
    /// The layers whose weights were rounded by calibration (ONNX node names).
    #[serde(default)]
    pub rerounded: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OnnxFile {
    pub file: String,
    pub sha256: String,
    #[serde(default)]
    pub opset: u32,
}

/// Where the backbone was split for fine-tuning: a frozen trunk (absent when every block
/// is trainable) and a trainable top of the last `blocks` blocks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CutPoint {
    pub blocks: usize,
    #[serde(default)]
    pub first_block: String,
    pub top_file: String,
    #[serde(default)]
    pub top_sha256: Option<String>,
    #[serde(default)]
    pub top_parameters: i64,
    #[serde(default)]
    pub trunk_file: Option<String>,
    #[serde(default)]
    pub trunk_sha256: Option<String>,
    /// The trunk's output per image, `[channels, height, width]`, for the crop size.
    #[serde(default)]
    pub trunk_shape: Vec<i64>,
}

fn default_interpolation() -> String {
    "bilinear".into()
}

impl Sidecar {
    pub fn pretrained(&self) -> bool {
        self.weights
            .get("pretrained")
            .and_then(|v| v.as_bool())
            .unwrap_or(true)
    }
    pub fn preprocess(&self) -> PreprocessConfig {
        PreprocessConfig {
            resize: self.resize_size,
            crop: self.crop_size,
            mean: self.mean,
            std: self.std,
        }
    }
}
