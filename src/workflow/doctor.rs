//! `tl doctor`: what this installation can do — libtorch, CUDA, threads, backbones, cache.
use crate::eval::Report;
use crate::features::{onnx, openvino, BackboneSpec};
use crate::runtime::{EngineChoice, PrecisionChoice, Runtime};
use crate::util::FilePath;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct BackboneStatus {
    pub name: String,
    /// "1280 features, 1000 classes, weights: pretrained", or the error.
    pub status: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct DoctorReport {
    pub tl_version: String,
    pub libtorch_version: String,
    pub libtorch_dir: String,
    pub cuda_devices: Vec<String>,
    pub cudnn: Option<String>,
    pub libtorch_cuda_loaded: bool,
    /// ONNX Runtime: "1.32.0 (/path/libonnxruntime.so.1.32.0)", or why it is not available.
    pub onnxruntime: std::result::Result<String, crate::error::Unavailable>,
    /// OpenVINO: "2026.4.1-… (/path/libopenvino_c.so.2641)", or why it is not available.
    pub openvino: std::result::Result<String, crate::error::Unavailable>,
    /// The CPU computes bf16 natively (avx512_bf16 or AMX): `--precision auto` means bf16.
    pub native_bf16: bool,
    /// What decodes JPEGs, and how (`--decode`).
    pub jpeg_decoder: String,
    /// `--engine` and what it means for frozen extraction here.
    pub engine: String,
    pub default_device: String,
    pub threads: usize,
    pub torch_threads: i32,
    pub mkl: bool,
    pub mkldnn: bool,
    /// Folders searched for backbones, in order.
    pub backbones_search: Vec<FilePath>,
    /// The per-user store (first uses and `tl backbones add` export here).
    pub backbones_store: FilePath,
    /// Weights files handed over for exports.
    pub weights_dir: FilePath,
    pub backbones: Vec<BackboneStatus>,
    pub cache_dir: FilePath,
}

impl Report for DoctorReport {
    fn render_text(&self) -> String {
        let mut s = format!("tl {}\n", self.tl_version);
        s += &format!(
            "libtorch: {} ({})\n",
            self.libtorch_version, self.libtorch_dir
        );
        if self.cuda_devices.is_empty() {
            s += "CUDA: not available\n";
        } else {
            s += &format!("CUDA: available, {} device(s)\n", self.cuda_devices.len());
            for (i, name) in self.cuda_devices.iter().enumerate() {
                s += &format!("  cuda:{i}: {name}\n");
            }
            s += &format!(
                "cuDNN: {}\n",
                self.cudnn.as_deref().unwrap_or("not available")
            );
        }
        s += &format!(
            "libtorch_cuda loaded: {}\n",
            if self.libtorch_cuda_loaded {
                "yes (GPU builds of libtorch can use CUDA when a driver is present)"
            } else {
                "no (CPU-only libtorch)"
            }
        );
        s += &match &self.onnxruntime {
            Ok(v) => format!("ONNX Runtime: {v}\n"),
            Err(why) => format!("ONNX Runtime: not available ({why})\n"),
        };
        s += &match &self.openvino {
            Ok(v) => format!("OpenVINO: {v}\n"),
            Err(why) => format!("OpenVINO: not available ({why})\n"),
        };
        s += &format!(
            "CPU native bf16: {}\n",
            if self.native_bf16 { "yes" } else { "no" }
        );
        s += &format!("JPEG decoder: {}\n", self.jpeg_decoder);
        s += &format!("engine: {}\n", self.engine);
        s += &format!("default device: {}\n", self.default_device);
        s += &format!(
            "threads: {} (libtorch intra-op {}), MKL: {}, mkldnn: {}\n",
            self.threads, self.torch_threads, self.mkl, self.mkldnn
        );
        let search: Vec<String> = self
            .backbones_search
            .iter()
            .map(|p| p.to_string())
            .collect();
        s += &format!(
            "backbones: searched in {}; exported on first use into {} (weights handed over in {})\n",
            search.join(", "),
            self.backbones_store,
            self.weights_dir
        );
        if self.backbones.is_empty() {
            s += "  (none exported yet; `tl backbones add mobilenet_v2` or a first `tl train --backbone NAME` exports one)\n";
        }
        for b in &self.backbones {
            s += &format!("  {}: {}\n", b.name, b.status);
        }
        s += &format!("feature cache: {}\n", self.cache_dir);
        s
    }
}

fn gpu_names(count: usize) -> Vec<String> {
    let from_smi: Vec<String> = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    (0..count)
        .map(|i| {
            from_smi
                .get(i)
                .cloned()
                .unwrap_or_else(|| "(name unknown)".into())
        })
        .collect()
}

fn backbone_status(sidecar: &std::path::Path) -> String {
    match BackboneSpec::from_sidecar(sidecar) {
        Ok(spec) => match &spec.sidecar {
            Some(s) => format!(
                "{} features, {} classes, weights: {}, ONNX export: {}",
                s.feature_dim,
                s.num_classes,
                if s.pretrained() {
                    "pretrained"
                } else {
                    "RANDOM (shapes/speed only)"
                },
                if s.onnx.features.is_some() {
                    "yes"
                } else {
                    "no"
                }
            ),
            None => "no sidecar".into(),
        },
        Err(e) => e.to_string(),
    }
}

fn engine_line(rt: &Runtime) -> String {
    let onnx_ok = onnx::library().is_ok();
    let openvino_ok = openvino::library().is_ok();
    let bf16 = match rt.precision {
        PrecisionChoice::Bf16 => true,
        PrecisionChoice::Fp32 => false,
        PrecisionChoice::Auto => openvino::cpu_has_native_bf16(),
    };
    let precision = if bf16 { "bf16" } else { "fp32" };
    // What runs frozen extraction, and whether an engine with its own layout may be it.
    let (what, onnx) = match (rt.engine, rt.device == tch::Device::Cpu, onnx_ok) {
        (EngineChoice::Torch, _, _) => ("libtorch".to_string(), false),
        (_, false, _) => (
            "libtorch (ONNX Runtime and OpenVINO run on the CPU only)".to_string(),
            false,
        ),
        (EngineChoice::Auto, true, _) if bf16 && openvino_ok => (
            "OpenVINO bf16 for backbones with an ONNX export, else libtorch".to_string(),
            true,
        ),
        (EngineChoice::Auto, true, true) => (
            "ONNX Runtime for backbones with an ONNX export, else libtorch".to_string(),
            true,
        ),
        (EngineChoice::Auto, true, false) => {
            ("libtorch (ONNX Runtime not available)".to_string(), false)
        }
        (EngineChoice::Onnx, true, _) => ("ONNX Runtime".to_string(), true),
        (EngineChoice::OpenVino, true, _) => (format!("OpenVINO {precision}"), true),
    };
    let choice = rt.engine.flag();
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let layout = match (onnx, rt.onnx_workers) {
        (false, _) => String::new(),
        (true, Some(n)) => format!(
            " ({} decoding and running their own batches, {} each)",
            count(n, "worker"),
            count((rt.threads / n).max(1), "thread")
        ),
        (true, None) => format!(
            " (one session of {} fed by {})",
            count(rt.threads, "thread"),
            count(rt.onnx_decode_threads, "decoder")
        ),
    };
    format!("{choice} → frozen extraction with {what}{layout}")
}

pub fn doctor(rt: &Runtime) -> DoctorReport {
    let count = if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    };
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    DoctorReport {
        tl_version: env!("CARGO_PKG_VERSION").into(),
        libtorch_version: crate::LIBTORCH_VERSION.into(),
        libtorch_dir: option_env!("TL_LIBTORCH_LIB")
            .unwrap_or("location unknown")
            .into(),
        cuda_devices: gpu_names(count),
        cudnn: (count > 0 && tch::Cuda::cudnn_is_available())
            .then(|| format!("available (version {})", tch::utils::version_cudnn())),
        libtorch_cuda_loaded: maps.contains("libtorch_cuda.so"),
        onnxruntime: onnx::library().map(|l| format!("{} ({})", l.version, l.path.display())),
        openvino: openvino::library().map(|l| format!("{} ({})", l.version, l.path.display())),
        native_bf16: openvino::cpu_has_native_bf16(),
        jpeg_decoder: crate::data::jpeg::describe(),
        engine: engine_line(rt),
        default_device: crate::device::describe(rt.device),
        threads: rt.threads,
        torch_threads: tch::get_num_threads(),
        mkl: tch::utils::has_mkl(),
        mkldnn: tch::utils::has_mkldnn(),
        backbones_search: rt.backbones.search.iter().cloned().map(FilePath).collect(),
        backbones_store: FilePath(rt.backbones.store.clone()),
        weights_dir: FilePath(rt.backbones.weights_dir.clone()),
        backbones: rt
            .backbones
            .all()
            .into_iter()
            .map(|(name, sidecar)| BackboneStatus {
                status: backbone_status(&sidecar),
                name,
            })
            .collect(),
        cache_dir: FilePath(crate::features::cache::default_root()),
    }
}
