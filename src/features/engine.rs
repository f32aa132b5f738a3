//! Which library runs the frozen feature extractor: libtorch (TorchScript) or ONNX Runtime
//! (the backbone's ONNX export). Both give the same features to within float rounding
//! (tests/engine.rs); the cache keys them apart, since a key holds the model file's sha256.
use super::backbone::{BackboneSpec, Engine, LoadedModule};
use super::onnx::{self, OnnxModel};
use crate::data::PreprocessConfig;
use crate::error::{Result, TlError, TorchContext};
use crate::runtime::EngineChoice;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Tensor};

/// The fallback from `auto` to libtorch is said once per process.
static FALLBACK_SAID: AtomicBool = AtomicBool::new(false);

impl BackboneSpec {
    /// This backbone as the chosen engine runs it: the ONNX export with `onnx`, or with
    /// `auto` on the CPU when the backbone has one and ONNX Runtime loads; else itself.
    pub fn for_engine(&self, choice: EngineChoice, device: Device) -> Result<BackboneSpec> {
        let onnx_file = self
            .sidecar
            .as_ref()
            .filter(|_| self.output_rank == 2)
            .and_then(|s| s.onnx.features.as_ref());
        let sidecar_dir = self
            .sidecar_path
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        let onnx_path = onnx_file.map(|f| sidecar_dir.join(&f.file));
        match (choice, onnx_path) {
            (EngineChoice::Torch, _) => Ok(self.clone()),
            (EngineChoice::Auto, None) => Ok(self.clone()),
            (EngineChoice::Auto, Some(_)) if device != Device::Cpu => Ok(self.clone()),
            (EngineChoice::Onnx, _) if device != Device::Cpu => Err(TlError::invalid(
                "--engine onnx runs on the CPU; use --engine torch (or auto) with CUDA",
            )),
            (EngineChoice::Onnx, None) => Err(TlError::invalid(format!(
                "backbone '{}' has no ONNX export in its sidecar; re-export it with scripts/export_backbones.py {} --force, or use --engine torch",
                self.name, self.name
            ))),
            (choice, Some(path)) => {
                let usable = if path.is_file() {
                    onnx::library().map(|_| ()).map_err(TlError::from)
                } else {
                    Err(TlError::not_found(
                        &path,
                        "ONNX export listed in the sidecar but not found",
                    ))
                };
                match usable {
                    Ok(()) => Ok(self.as_onnx(path)),
                    Err(why) if choice == EngineChoice::Auto => {
                        if !FALLBACK_SAID.swap(true, Ordering::Relaxed) {
                            crate::progress::say(&format!("note: {why}; extracting with libtorch"));
                        }
                        Ok(self.clone())
                    }
                    Err(why) => Err(why),
                }
            }
        }
    }

    fn as_onnx(&self, path: std::path::PathBuf) -> BackboneSpec {
        let mut spec = self.clone();
        spec.features_path = path;
        spec.classifier_path = None;
        spec.features_hash = Default::default();
        spec.engine = Engine::Onnx;
        spec
    }

    /// The frozen feature extractor, on the engine this spec names; `alone`: nothing else
    /// runs beside it (no decoders), so ONNX Runtime's threads may spin while they wait.
    pub fn load_frozen(&self, device: Device, threads: usize, alone: bool) -> Result<FrozenModel> {
        match self.engine {
            Engine::Torch => Ok(FrozenModel::Torch(self.load_features(device)?)),
            Engine::Onnx => {
                self.verified_features_hash()?;
                let model = OnnxModel::load(&self.features_path, threads, alone)?;
                Ok(FrozenModel::Onnx(model))
            }
        }
    }
}

/// A loaded frozen feature extractor.
pub enum FrozenModel {
    Torch(LoadedModule),
    Onnx(OnnxModel),
}

impl FrozenModel {
    pub fn path(&self) -> &Path {
        match self {
            FrozenModel::Torch(m) => &m.path,
            FrozenModel::Onnx(m) => &m.path,
        }
    }

    /// Features of `n` preprocessed images (`data`: `[n,3,crop,crop]` back to back), flat.
    pub fn run(
        &mut self,
        data: &[f32],
        n: usize,
        cfg: &PreprocessConfig,
        device: Device,
        amp: bool,
    ) -> Result<Vec<f32>> {
        let side = cfg.crop as usize;
        match self {
            FrozenModel::Torch(m) => {
                let input = Tensor::from_slice(data)
                    .view([n as i64, 3, side as i64, side as i64])
                    .to_device(device);
                let out =
                    tch::no_grad(|| tch::autocast(amp && device.is_cuda(), || m.forward(&input)))?;
                let out = out
                    .to_device(Device::Cpu)
                    .to_kind(tch::Kind::Float)
                    .contiguous()
                    .view([-1]);
                Vec::<f32>::try_from(&out).torch_ctx(|| "reading features".into())
            }
            FrozenModel::Onnx(m) => {
                let (shape, values) = m.run(data, [n, 3, side, side])?;
                if shape.len() != 2 || shape[0] != n {
                    return Err(TlError::corrupt(
                        &m.path,
                        format!("model output has shape {shape:?}; expected [batch, features]"),
                    ));
                }
                Ok(values)
            }
        }
    }
}
