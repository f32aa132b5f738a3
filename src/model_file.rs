//! Stage 5: an exported model file (`tl export`) and the JSON sidecar beside it, which states
//! the input contract, the classes and where the model came from; loading checks that the
//! model's bytes are the ones the sidecar describes.
use crate::data::PreprocessConfig;
use crate::error::{Result, TlError};
use crate::run::Run;
use crate::runtime::DecodeMode;
use crate::util::FilePath;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "tl-model/1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    TorchScript,
    Onnx,
}

impl ModelFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ModelFormat::TorchScript => "pt",
            ModelFormat::Onnx => "onnx",
        }
    }
}

/// What the model takes: decoded RGB, resized and cropped as `tl` does, scaled to [0, 1].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputContract {
    /// `[N, 3, crop, crop]`, float32, RGB, values in [0, 1].
    pub shape: [Option<i64>; 4],
    pub layout: String,
    /// The shorter side is resized to `resize` (bilinear, antialiased), then the centre
    /// `crop`×`crop` square is taken.
    pub resize: u32,
    pub crop: u32,
    pub interpolation: String,
    /// Applied inside the model (listed so that nobody applies them twice).
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub normalized_inside: bool,
    /// How JPEGs were decoded before the resize: `draft` is Pillow's
    /// `Image.draft('RGB', (resize, resize))` (DCT scaling of large photos), `full` every
    /// pixel. (Absent in sidecars written before `--decode`: full.)
    #[serde(default = "DecodeMode::before_draft")]
    pub decode: DecodeMode,
    /// The same in Python, as torchvision users write it: inputs equal to `tl`'s byte for
    /// byte (Pillow's libjpeg-turbo and resampling).
    #[serde(default)]
    pub python: String,
}

impl InputContract {
    pub fn new(p: &PreprocessConfig, decode: DecodeMode) -> InputContract {
        let side = p.crop as i64;
        let draft = match decode {
            DecodeMode::Draft => format!("im.draft('RGB', ({0}, {0})); ", p.resize),
            DecodeMode::Full => String::new(),
        };
        InputContract {
            decode,
            python: format!(
                "im = PIL.Image.open(path); {draft}x = T.Compose([T.Resize({}), T.CenterCrop({}), T.ToTensor()])(im.convert('RGB')).unsqueeze(0)",
                p.resize, p.crop
            ),
            shape: [None, Some(3), Some(side), Some(side)],
            layout: "NCHW, RGB, float32 in [0, 1]".into(),
            resize: p.resize,
            crop: p.crop,
            interpolation: "bilinear, antialiased (Pillow's, as torchvision's Resize on PIL images)".into(),
            mean: p.mean,
            std: p.std,
            normalized_inside: true,
        }
    }

    pub fn preprocess(&self) -> PreprocessConfig {
        PreprocessConfig {
            resize: self.resize,
            crop: self.crop,
            mean: self.mean,
            std: self.std,
        }
    }
}

/// Where the model came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportSource {
    pub run: FilePath,
    pub backbone: String,
    pub backbone_sha256: String,
    /// Blocks of the backbone that were fine-tuned (none: frozen backbone).
    pub finetuned_blocks: Option<usize>,
    pub trained_at: String,
    pub val_accuracy: Option<f64>,
}

/// The JSON file beside an exported model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelSidecar {
    pub format: String,
    pub model_file: String,
    pub model_format: ModelFormat,
    pub sha256: String,
    pub classes: Vec<String>,
    pub input: InputContract,
    /// `[N, classes]` float32 softmax probabilities, classes in the order of `classes`.
    pub output: String,
    pub source: ExportSource,
    pub tl_version: String,
    pub exported_at: String,
    /// The temperature the logits are divided by inside the model (1: none).
    #[serde(default = "one")]
    pub temperature: f64,
    /// Present when the model also returns an unknown score (a second output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<ExportedUnknown>,
}

fn one() -> f64 {
    1.0
}

/// How to read the model's second output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportedUnknown {
    /// `unknown_score`: `[N]` float32, 1 − cosine similarity to the nearest training image's
    /// features.
    pub output: String,
    pub method: String,
    pub k: i64,
    /// An image is unknown when its score is above this.
    pub threshold: f64,
    /// The share of the run's validation images accepted at that threshold.
    pub accept: f64,
}

/// `model.pt` → `model.pt.json` (a TorchScript and an ONNX export can sit side by side).
pub fn sidecar_path(model: &Path) -> PathBuf {
    let mut name = model.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

impl ModelSidecar {
    pub fn new(run: &Run, format: ModelFormat, model_file: &Path, sha256: String) -> Self {
        ModelSidecar {
            format: FORMAT.into(),
            model_file: model_file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            model_format: format,
            sha256,
            classes: run.classes.clone(),
            input: InputContract::new(&run.config.preprocess, run.config.extract.decode),
            output: "[N, classes] float32 softmax probabilities, in the order of `classes`".into(),
            source: ExportSource {
                run: FilePath(run.dir.clone()),
                backbone: run.config.backbone.name.clone(),
                backbone_sha256: run.config.backbone.features_sha256.clone(),
                finetuned_blocks: run.config.finetune.as_ref().map(|f| f.blocks),
                trained_at: run.config.created_at.clone(),
                val_accuracy: None,
            },
            tl_version: env!("CARGO_PKG_VERSION").into(),
            exported_at: chrono::Local::now().to_rfc3339(),
            temperature: run
                .config
                .calibration
                .as_ref()
                .map_or(1.0, |c| c.temperature),
            unknown: None,
        }
    }

    /// The sidecar of `model`, checked: our format, the model file it names, same bytes.
    pub fn load(model: &Path) -> Result<ModelSidecar> {
        let path = sidecar_path(model);
        if !path.is_file() {
            return Err(TlError::corrupt(
                &path,
                "no sidecar beside the model (`tl export` writes NAME.pt and NAME.pt.json)",
            ));
        }
        let s: ModelSidecar = crate::util::read_json(&path)?;
        s.input
            .preprocess()
            .validate()
            .map_err(|why| TlError::corrupt(&path, format!("input: {why}")))?;
        if !(s.temperature.is_finite() && s.temperature > 0.0) {
            return Err(TlError::corrupt(
                &path,
                "temperature must be a positive number",
            ));
        }
        if let Some(u) = &s.unknown {
            if !u.threshold.is_finite() {
                return Err(TlError::corrupt(
                    &path,
                    "the unknown threshold is not a number",
                ));
            }
        }
        if s.format != FORMAT {
            return Err(TlError::corrupt(
                &path,
                format!("format '{}' is not '{FORMAT}'", s.format),
            ));
        }
        // The name may differ (the pair was renamed together); the bytes may not.
        let hash = crate::util::sha256_file(model)?;
        if hash != s.sha256 {
            return Err(TlError::corrupt(
                model,
                "differs from the sha256 in its sidecar (changed or damaged since export)",
            ));
        }
        Ok(s)
    }
}
