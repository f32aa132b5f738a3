//! Backbones: exported TorchScript files plus their JSON sidecar.
//!
//! `--backbone NAME` looks for `NAME.json` in the backbones folder; a path may name the
//! sidecar, the `.features.pt` file, or any TorchScript image model (then ImageNet
//! preprocessing is assumed and the feature size is read off the first batch).
use crate::backbone_store::BackboneStore;
use crate::data::PreprocessConfig;
use crate::error::{IoContext, Result, TlError, TorchContext};
pub use crate::features::openvino::Precision;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{CModule, Device};

pub use super::sidecar::{
    Bf16File, CutPoint, LayersFile, LinearFile, OnnxExports, OnnxFile, Sidecar, SIDECAR_FORMAT,
};

/// The library that runs a frozen feature extractor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Torch,
    Onnx,
    #[serde(rename = "openvino")]
    OpenVino,
}

impl Engine {
    pub fn label(self) -> &'static str {
        match self {
            Engine::Torch => "libtorch",
            Engine::Onnx => "ONNX Runtime",
            Engine::OpenVino => "OpenVINO",
        }
    }

    /// The engine and, when it is not fp32, the precision: "OpenVINO bf16".
    pub fn label_with(self, precision: Precision) -> String {
        match precision {
            Precision::Fp32 => self.label().to_string(),
            p => format!("{} {}", self.label(), p.label()),
        }
    }
}

/// Where a backbone's files are, and what its sidecar says.
#[derive(Clone, Debug)]
pub struct BackboneSpec {
    pub name: String,
    pub sidecar_path: Option<PathBuf>,
    pub sidecar: Option<Sidecar>,
    pub features_path: PathBuf,
    pub classifier_path: Option<PathBuf>,
    /// sha256 of `features_path`, computed (and checked against the sidecar) on first use,
    /// so that the backbone file is hashed once per process however often it is asked for.
    pub features_hash: std::sync::OnceLock<String>,
    /// Dimensions of the module's output: 2 for features, 4 for a fine-tuning trunk.
    pub output_rank: usize,
    /// Which library runs `features_path` (see [`BackboneSpec::for_engine`]).
    pub engine: Engine,
    /// The precision it runs in (bf16: OpenVINO on the CPU, autocast on CUDA).
    pub precision: Precision,
}

pub use crate::backbone_store::list;

fn is_torchscript_name(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("pt" | "pth" | "ts" | "torchscript" | "jit")
    )
}

impl BackboneSpec {
    /// Resolve `--backbone`: a sidecar or TorchScript file, or a name in the store's folders
    /// (a known torchvision classifier is exported into the store on first use).
    pub fn resolve(spec: &str, store: &BackboneStore) -> Result<BackboneSpec> {
        let as_path = Path::new(spec);
        if as_path.extension().is_some_and(|e| e == "json") {
            return Self::from_sidecar(as_path);
        }
        if is_torchscript_name(as_path) || as_path.is_file() {
            if !as_path.exists() {
                return Err(TlError::not_found(as_path, "backbone file not found"));
            }
            let file_name = as_path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let stem = file_name
                .strip_suffix(".features.pt")
                .or_else(|| file_name.strip_suffix(".classifier.pt"))
                .map(str::to_string)
                .or_else(|| as_path.file_stem().map(|s| s.to_string_lossy().to_string()))
                .unwrap_or_default();
            let sidecar = as_path.with_file_name(format!("{stem}.json"));
            if sidecar.is_file() {
                let resolved = Self::from_sidecar(&sidecar)?;
                // Only the sidecar's own feature extractor is described by it; any other
                // model next to it (e.g. its .classifier.pt) is taken as a plain TorchScript model.
                if resolved.features_path.file_name() == as_path.file_name() {
                    return Ok(resolved);
                }
            }
            return Ok(BackboneSpec::raw(&stem, as_path));
        }
        if let Some(sidecar) = store.find(spec) {
            return Self::from_sidecar(&sidecar);
        }
        if store.can_export(spec) {
            let weights = store.first_use_weights();
            store.announce(spec, &weights);
            let (sidecar, _) = store.export(spec, &weights, false)?;
            return Self::from_sidecar(&sidecar);
        }
        let available: Vec<String> = store.all().into_iter().map(|(n, _)| n).collect();
        let folders: Vec<String> = store
            .search
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let hint = if available.is_empty() {
            format!("nothing exported in {}", folders.join(", "))
        } else {
            format!("available: {}", available.join(", "))
        };
        Err(TlError::invalid(format!(
            "backbone '{spec}' not found ({hint}); torchvision classifiers (vgg16, resnet50, mobilenet_v2, …) are exported on first use, other TorchScript models are passed as a file"
        )))
    }

    /// A TorchScript feature extractor without a sidecar (ImageNet preprocessing assumed).
    pub fn raw(name: &str, features_path: &Path) -> BackboneSpec {
        BackboneSpec {
            name: name.to_string(),
            sidecar_path: None,
            sidecar: None,
            features_path: features_path.to_path_buf(),
            classifier_path: None,
            features_hash: Default::default(),
            output_rank: 2,
            engine: Engine::Torch,
            precision: Precision::Fp32,
        }
    }

    pub fn from_sidecar(path: &Path) -> Result<BackboneSpec> {
        if !path.is_file() {
            return Err(TlError::not_found(path, "backbone sidecar not found"));
        }
        let text = std::fs::read_to_string(path).with_path(path)?;
        let sidecar: Sidecar = serde_json::from_str(&text)
            .map_err(|e| TlError::corrupt(path, format!("not a tl backbone sidecar: {e}")))?;
        if sidecar.format != SIDECAR_FORMAT {
            return Err(TlError::corrupt(
                path,
                format!(
                    "unsupported sidecar format '{}' (expected {SIDECAR_FORMAT})",
                    sidecar.format
                ),
            ));
        }
        if sidecar.crop_size == 0 || sidecar.resize_size < sidecar.crop_size {
            return Err(TlError::corrupt(
                path,
                format!(
                    "resize_size {} must be >= crop_size {} > 0",
                    sidecar.resize_size, sidecar.crop_size
                ),
            ));
        }
        if sidecar.std.iter().any(|s| *s <= 0.0) {
            return Err(TlError::corrupt(path, "std must be positive"));
        }
        if sidecar.num_classes > 0 && sidecar.class_names.len() as i64 != sidecar.num_classes {
            return Err(TlError::corrupt(
                path,
                format!(
                    "num_classes {} but {} class names",
                    sidecar.num_classes,
                    sidecar.class_names.len()
                ),
            ));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let features_path = dir.join(&sidecar.features_file);
        let classifier_path = sidecar.classifier_file.as_ref().map(|f| dir.join(f));
        Ok(BackboneSpec {
            name: sidecar.name.clone(),
            sidecar_path: Some(path.to_path_buf()),
            sidecar: Some(sidecar),
            features_path,
            classifier_path,
            features_hash: Default::default(),
            output_rank: 2,
            engine: Engine::Torch,
            precision: Precision::Fp32,
        })
    }

    /// Whether extraction on CUDA runs under autocast: `--amp`, or `--precision bf16`.
    pub fn autocast(&self, amp: bool) -> bool {
        amp || self.precision == Precision::Bf16
    }

    pub fn preprocess(&self) -> PreprocessConfig {
        self.sidecar
            .as_ref()
            .map(|s| s.preprocess())
            .unwrap_or_default()
    }

    pub fn class_names(&self) -> &[String] {
        self.sidecar
            .as_ref()
            .map(|s| s.class_names.as_slice())
            .unwrap_or(&[])
    }

    /// A warning to print when the weights are not pretrained (or unknown).
    pub fn weights_warning(&self) -> Option<String> {
        match &self.sidecar {
            Some(s) if !s.pretrained() => Some(format!(
                "backbone '{}' has random weights (exported with --weights none): use it for shapes and speed, not accuracy",
                s.name
            )),
            None => Some(format!(
                "{}: no sidecar found; assuming ImageNet preprocessing (resize 256, crop 224, ImageNet mean/std)",
                self.features_path.display()
            )),
            _ => None,
        }
    }

    /// sha256 of the feature extractor, checked against the sidecar's record.
    pub fn verified_features_hash(&self) -> Result<String> {
        if let Some(hash) = self.features_hash.get() {
            return Ok(hash.clone());
        }
        let expected = self.sidecar.as_ref().and_then(|s| match self.engine {
            Engine::Torch => s.features_sha256.as_deref(),
            Engine::Onnx | Engine::OpenVino => {
                let file = self.features_path.file_name()?.to_str()?;
                s.onnx.sha256_of(file)
            }
        });
        let hash = verified_hash(&self.features_path, expected, self.sidecar_path.as_deref())?;
        Ok(self.features_hash.get_or_init(|| hash).clone())
    }

    pub fn load_features(&self, device: Device) -> Result<LoadedModule> {
        self.verified_features_hash()?;
        let module = load_module(&self.features_path, device)?;
        Ok(LoadedModule {
            module,
            path: self.features_path.clone(),
            output_rank: self.output_rank,
        })
    }

    pub fn load_classifier(&self, device: Device) -> Result<LoadedModule> {
        let path = self.classifier_path.as_ref().ok_or_else(|| {
            TlError::invalid(format!(
                "backbone '{}' has no ImageNet classifier file in its sidecar; use --run with a trained head, or re-export it",
                self.name
            ))
        })?;
        let expected = self
            .sidecar
            .as_ref()
            .and_then(|s| s.classifier_sha256.as_deref());
        verified_hash(path, expected, self.sidecar_path.as_deref())?;
        let module = load_module(path, device)?;
        Ok(LoadedModule {
            module,
            path: path.clone(),
            output_rank: 2,
        })
    }
}

impl BackboneSpec {
    /// The classifier's last layer (`weight` `[classes, features]`, `bias` `[classes]`),
    /// checked against the sidecar; None if the export has none.
    pub fn linear_layer(&self) -> Result<Option<(tch::Tensor, tch::Tensor)>> {
        let rec = self.sidecar.as_ref().and_then(|s| s.linear.as_ref());
        let (Some(rec), Some(sidecar)) = (rec, self.sidecar_path.as_deref()) else {
            return Ok(None);
        };
        let path = crate::util::fs::parent_dir(sidecar).join(&rec.file);
        verified_hash(&path, Some(&rec.sha256), Some(sidecar))?;
        let named: std::collections::HashMap<String, tch::Tensor> =
            tch::Tensor::read_safetensors(&path)
                .map_err(|e| TlError::corrupt(&path, crate::error::torch_message(&e)))?
                .into_iter()
                .collect();
        match (named.get("weight"), named.get("bias")) {
            (Some(w), Some(b)) => Ok(Some((w.shallow_clone(), b.shallow_clone()))),
            _ => Err(TlError::corrupt(&path, "needs tensors 'weight' and 'bias'")),
        }
    }

    /// `NAME.last_layer.onnx`, checked against its sidecar, if the export has one.
    pub fn last_layer_onnx(&self) -> Result<Option<PathBuf>> {
        let rec = self
            .sidecar
            .as_ref()
            .and_then(|s| s.onnx.last_layer.as_ref());
        let (Some(rec), Some(sidecar)) = (rec, self.sidecar_path.as_deref()) else {
            return Ok(None);
        };
        let path = crate::util::fs::parent_dir(sidecar).join(&rec.file);
        verified_hash(&path, Some(&rec.sha256), Some(sidecar))?;
        Ok(Some(path))
    }

    /// The network that returns every block's output (for channel visualisation).
    pub fn load_layers(&self, device: Device) -> Result<LayerNet> {
        let record = self.sidecar.as_ref().and_then(|s| s.layers.as_ref());
        let (Some(record), Some(sidecar)) = (record, self.sidecar_path.as_deref()) else {
            return Err(TlError::invalid(format!(
                "backbone '{}' was exported without its layers file; re-export it with scripts/export_backbones.py",
                self.name
            )));
        };
        let path = crate::util::fs::parent_dir(sidecar).join(&record.file);
        verified_hash(&path, Some(&record.sha256), Some(sidecar))?;
        Ok(LayerNet {
            module: load_module(&path, device)?,
            path,
            names: record.names.clone(),
            channels: record.channels.clone(),
        })
    }
}

/// A backbone's blocks, run in order, every output kept.
pub struct LayerNet {
    pub module: CModule,
    pub path: PathBuf,
    pub names: Vec<String>,
    pub channels: Vec<i64>,
}

impl LayerNet {
    /// `[N,C,H,W]` activations of every block for normalised images `x`.
    pub fn forward(&self, x: &tch::Tensor) -> Result<Vec<tch::Tensor>> {
        let out = self
            .module
            .forward_is(&[tch::IValue::Tensor(x.shallow_clone())])
            .torch_ctx(|| format!("{}: forward", self.path.display()))?;
        let items = match out {
            tch::IValue::Tuple(items) | tch::IValue::GenericList(items) => items,
            _ => Vec::new(),
        };
        let tensors: Vec<tch::Tensor> = items
            .into_iter()
            .filter_map(|v| match v {
                tch::IValue::Tensor(t) => Some(t),
                _ => None,
            })
            .collect();
        if tensors.len() != self.names.len() || tensors.iter().any(|t| t.dim() != 4) {
            return Err(TlError::corrupt(
                &self.path,
                format!(
                    "returned {} activations; its sidecar lists {} layers of [N,C,H,W]",
                    tensors.len(),
                    self.names.len()
                ),
            ));
        }
        Ok(tensors)
    }

    /// The index of layer `name` (exact, or a unique prefix), or an error listing them.
    pub fn index_of(&self, name: &str) -> Result<usize> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Ok(i);
        }
        let matches: Vec<usize> = (0..self.names.len())
            .filter(|&i| self.names[i].starts_with(name))
            .collect();
        match matches.as_slice() {
            [i] => Ok(*i),
            _ => Err(TlError::invalid(format!(
                "no layer '{name}'; the layers are: {}",
                self.names.join(", ")
            ))),
        }
    }
}

pub(crate) fn verified_hash(
    path: &Path,
    expected: Option<&str>,
    sidecar: Option<&Path>,
) -> Result<String> {
    if !path.is_file() {
        return Err(TlError::not_found(path, "backbone file not found"));
    }
    let hash = crate::util::sha256_file(path)?;
    if let Some(expected) = expected {
        if expected != hash {
            let side = sidecar.map(|p| p.display().to_string()).unwrap_or_default();
            return Err(TlError::corrupt(
                path,
                format!(
                    "does not match its sidecar {side} (sha256 {}… vs {}…); re-export the backbone",
                    &hash[..12],
                    &expected[..expected.len().min(12)]
                ),
            ));
        }
    }
    Ok(hash)
}

/// Load a TorchScript file, turning libtorch's messages into a one-line error.
pub fn load_module(path: &Path, device: Device) -> Result<CModule> {
    let meta = std::fs::metadata(path).with_path(path)?;
    if meta.len() == 0 {
        return Err(TlError::corrupt(
            path,
            "empty file, not a TorchScript model",
        ));
    }
    std::fs::File::open(path).with_path(path)?;
    let mut module = CModule::load_on_device(path, device).map_err(|e| {
        let msg = crate::error::torch_message(&e);
        let hint = if msg.contains("zip archive")
            || msg.contains("PytorchStreamReader")
            || msg.contains("constants.pkl")
        {
            "not a TorchScript file".to_string()
        } else {
            format!("cannot load TorchScript model: {msg}")
        };
        TlError::corrupt(path, hint)
    })?;
    module
        .f_set_eval()
        .torch_ctx(|| format!("{}: set_eval", path.display()))?;
    Ok(module)
}

pub struct LoadedModule {
    pub module: CModule,
    pub path: PathBuf,
    pub output_rank: usize,
}

impl LoadedModule {
    pub fn forward(&self, x: &tch::Tensor) -> Result<tch::Tensor> {
        let out = self
            .module
            .forward_ts(&[x])
            .torch_ctx(|| format!("{}: forward", self.path.display()))?;
        if out.dim() != self.output_rank {
            let expected = if self.output_rank == 2 {
                "[batch, features]"
            } else {
                "[batch, channels, height, width]"
            };
            return Err(TlError::corrupt(
                &self.path,
                format!(
                    "model output has shape {:?}; expected {expected}",
                    out.size()
                ),
            ));
        }
        Ok(out)
    }
}
