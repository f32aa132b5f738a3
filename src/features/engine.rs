//! Which library runs the frozen feature extractor, in which precision: libtorch
//! (TorchScript), ONNX Runtime or OpenVINO (both on the backbone's ONNX export). The fp32
//! engines give the same features to within float rounding (tests/engine.rs). OpenVINO in
//! bf16 (the default on CPUs with native bf16) runs the bf16 export where the sidecar lists
//! one: the same network with the weights of the layers that nearest rounding would spoil
//! rounded to bf16 by calibration (scripts/export_backbones.py). On the 1,300 cats_dogs
//! photos its features agree with fp32 to a cosine of 0.9996 on average, against 0.9980 with
//! every weight rounded to the nearest, at the same speed (BENCHMARKS.md §22). The cache keys
//! them apart: a key holds the model file's sha256, and bf16 features have a namespace of
//! their own.
use super::backbone::{BackboneSpec, Engine, LoadedModule, OnnxExports};
use super::onnx::{self, OnnxModel};
use super::openvino::{self, cpu_has_native_bf16, OpenVinoModel, Precision};
use crate::data::PreprocessConfig;
use crate::error::{Result, TlError, TorchContext, Unavailable};
use crate::runtime::{EngineChoice, PrecisionChoice};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Tensor};

/// The fallback from `auto` to libtorch is said once per process.
static FALLBACK_SAID: AtomicBool = AtomicBool::new(false);
/// So is the fallback from `--precision bf16` to fp32.
static BF16_FALLBACK_SAID: AtomicBool = AtomicBool::new(false);

fn say_once(flag: &AtomicBool, line: &str) {
    if !flag.swap(true, Ordering::Relaxed) {
        crate::progress::say(line);
    }
}

impl BackboneSpec {
    /// This backbone as the chosen engine runs it, in the chosen precision: the ONNX export
    /// on OpenVINO or ONNX Runtime, or itself on libtorch. `auto` on the CPU, for a backbone
    /// with an ONNX export: OpenVINO when the precision resolves to bf16 (a CPU with native
    /// bf16) and it loads, else ONNX Runtime when it loads, else libtorch. A bf16 that cannot
    /// be had is a one-line note and fp32.
    pub fn for_engine(
        &self,
        choice: EngineChoice,
        precision: PrecisionChoice,
        device: Device,
    ) -> Result<BackboneSpec> {
        if device != Device::Cpu {
            return match choice {
                EngineChoice::Onnx | EngineChoice::OpenVino => Err(TlError::invalid(format!(
                    "--engine {} runs on the CPU; use --engine torch (or auto) with CUDA",
                    choice.flag()
                ))),
                _ => {
                    let mut spec = self.clone();
                    if precision == PrecisionChoice::Bf16 {
                        spec.precision = Precision::Bf16; // autocast
                    }
                    Ok(spec)
                }
            };
        }
        let onnx_path = self.onnx_export();
        // Emulated bf16 would be slower than fp32: only where the CPU computes it natively.
        let native = cpu_has_native_bf16();
        let bf16 = precision != PrecisionChoice::Fp32 && native;
        let cpu_only = matches!(choice, EngineChoice::Auto | EngineChoice::OpenVino);
        if precision == PrecisionChoice::Bf16 && !native && cpu_only {
            say_once(
                &BF16_FALLBACK_SAID,
                "note: this CPU has no native bf16 (avx512_bf16 or AMX); extracting in fp32",
            );
        }
        match choice {
            EngineChoice::Torch | EngineChoice::Onnx if precision == PrecisionChoice::Bf16 => {
                Err(TlError::invalid(format!(
                    "--precision bf16 on the CPU runs on OpenVINO; use --engine openvino (or auto), or --precision fp32 with --engine {}",
                    choice.flag()
                )))
            }
            EngineChoice::Torch => Ok(self.clone()),
            EngineChoice::OpenVino => {
                let path = self.usable_export(onnx_path, openvino::library().map(|_| ()))?;
                let precision = if bf16 { Precision::Bf16 } else { Precision::Fp32 };
                Ok(self.on_export(Engine::OpenVino, path, precision))
            }
            EngineChoice::Onnx => {
                let path = self.usable_export(onnx_path, onnx::library().map(|_| ()))?;
                Ok(self.on_export(Engine::Onnx, path, Precision::Fp32))
            }
            EngineChoice::Auto => self.auto_engine(onnx_path, bf16, precision),
        }
    }

    /// `--engine auto` on the CPU: OpenVINO for bf16, else ONNX Runtime, else libtorch.
    fn auto_engine(
        &self,
        onnx_path: Option<PathBuf>,
        bf16: bool,
        precision: PrecisionChoice,
    ) -> Result<BackboneSpec> {
        // Without an export (a trunk, a bare TorchScript file) libtorch is the only choice.
        if onnx_path.is_none() {
            return Ok(self.clone());
        }
        if bf16 {
            let ov = openvino::library().map(|_| ());
            match self.usable_export(onnx_path.clone(), ov) {
                Ok(path) => return Ok(self.on_export(Engine::OpenVino, path, Precision::Bf16)),
                Err(why) if precision == PrecisionChoice::Bf16 => {
                    say_once(
                        &BF16_FALLBACK_SAID,
                        &format!("note: {why}; extracting in fp32"),
                    );
                }
                Err(_) => {}
            }
        }
        match self.usable_export(onnx_path, onnx::library().map(|_| ())) {
            Ok(path) => Ok(self.on_export(Engine::Onnx, path, Precision::Fp32)),
            Err(why) => {
                say_once(
                    &FALLBACK_SAID,
                    &format!("note: {why}; extracting with libtorch"),
                );
                Ok(self.clone())
            }
        }
    }

    /// The ONNX export the sidecar lists (feature extractors only).
    fn onnx_export(&self) -> Option<PathBuf> {
        self.sidecar_export(|x| x.features.as_ref().map(|f| f.file.as_str()))
    }

    /// The bf16 export the sidecar lists (feature extractors only).
    fn bf16_export(&self) -> Option<PathBuf> {
        self.sidecar_export(|x| x.features_bf16.as_ref().map(|f| f.file.as_str()))
    }

    /// The export file `pick` names in the sidecar, beside the sidecar.
    fn sidecar_export(&self, pick: impl Fn(&OnnxExports) -> Option<&str>) -> Option<PathBuf> {
        let file = self
            .sidecar
            .as_ref()
            .filter(|_| self.output_rank == 2)
            .and_then(|s| pick(&s.onnx))?;
        let sidecar_dir = self
            .sidecar_path
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        Some(sidecar_dir.join(file))
    }

    /// The ONNX export, when it is there and the engine's library loads; else why not.
    fn usable_export(
        &self,
        onnx_path: Option<PathBuf>,
        library: std::result::Result<(), Unavailable>,
    ) -> Result<PathBuf> {
        let path = onnx_path.ok_or_else(|| TlError::invalid(format!(
            "backbone '{}' has no ONNX export in its sidecar; re-export it with scripts/export_backbones.py {} --force, or use --engine torch",
            self.name, self.name
        )))?;
        if !path.is_file() {
            return Err(TlError::not_found(
                &path,
                "ONNX export listed in the sidecar but not found",
            ));
        }
        library?;
        Ok(path)
    }

    /// Whether this spec runs the bf16 export (OpenVINO in bf16, where the sidecar has one).
    pub fn runs_bf16_export(&self) -> bool {
        self.engine == Engine::OpenVino
            && self.precision == Precision::Bf16
            && self.bf16_export().as_deref() == Some(self.features_path.as_path())
    }

    /// This backbone as its ONNX export `path` (its bf16 export for OpenVINO in bf16), run by
    /// `engine` in `precision`.
    fn on_export(&self, engine: Engine, path: PathBuf, precision: Precision) -> BackboneSpec {
        let path = match (engine, precision) {
            (Engine::OpenVino, Precision::Bf16) => self.bf16_export().unwrap_or(path),
            _ => path,
        };
        let mut spec = self.clone();
        spec.features_path = path;
        spec.classifier_path = None;
        spec.features_hash = Default::default();
        spec.engine = engine;
        spec.precision = precision;
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
            Engine::OpenVino => {
                self.verified_features_hash()?;
                let path = &self.features_path;
                let model = OpenVinoModel::load(path, threads, self.precision, alone)?;
                Ok(FrozenModel::OpenVino(model))
            }
        }
    }
}

/// A loaded frozen feature extractor.
pub enum FrozenModel {
    Torch(LoadedModule),
    Onnx(OnnxModel),
    OpenVino(OpenVinoModel),
}

impl FrozenModel {
    pub fn path(&self) -> &Path {
        match self {
            FrozenModel::Torch(m) => &m.path,
            FrozenModel::Onnx(m) => &m.path,
            FrozenModel::OpenVino(m) => &m.path,
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
                features_only(&m.path, n, shape, values)
            }
            FrozenModel::OpenVino(m) => {
                let (shape, values) = m.run(data, [n, 3, side, side])?;
                features_only(&m.path, n, shape, values)
            }
        }
    }
}

impl FrozenModel {
    /// For an engine whose input is filled in place (OpenVINO), the buffer of a batch of `n`
    /// images; `None`: the engine takes its input by copy ([`FrozenModel::run`]).
    pub fn input_buffer(&mut self, n: usize, cfg: &PreprocessConfig) -> Option<Result<&mut [f32]>> {
        let side = cfg.crop as usize;
        match self {
            FrozenModel::OpenVino(m) => Some(m.input_buffer([n, 3, side, side])),
            _ => None,
        }
    }

    /// Features of the `n` images written into [`FrozenModel::input_buffer`].
    pub fn run_input(&mut self, n: usize) -> Result<Vec<f32>> {
        match self {
            FrozenModel::OpenVino(m) => {
                let (shape, values) = m.run_input()?;
                features_only(&m.path, n, shape, values)
            }
            _ => Err(TlError::invalid("this engine takes its input by copy")),
        }
    }
}

/// An engine's output, refused unless it is `[n, features]`.
fn features_only(path: &Path, n: usize, shape: Vec<usize>, values: Vec<f32>) -> Result<Vec<f32>> {
    if shape.len() != 2 || shape[0] != n {
        return Err(TlError::corrupt(
            path,
            format!("model output has shape {shape:?}; expected [batch, features]"),
        ));
    }
    Ok(values)
}
