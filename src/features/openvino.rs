//! OpenVINO as an inference-only engine for the frozen feature extractor on the CPU
//! (`--engine openvino`; `auto`'s choice where the CPU computes bf16 natively). It runs the
//! backbone's ONNX export, the file ONNX Runtime runs. The C library comes from the
//! `openvino` wheel in the project's `.venv` (path baked in at build time, like libtorch's
//! rpath and ONNX Runtime's) or from `$TL_OPENVINO`, loaded once at first use through the
//! `openvino` crate's runtime linking.
//!
//! Precision: OpenVINO's `INFERENCE_PRECISION_HINT`, `bf16` or `f32`. On a 2-core AMD EPYC
//! with avx512_bf16, MobileNetV2 batch 32 ran 381.6 img/s in bf16 against 195.0 in f32 and
//! 101.5 for libtorch fp32 (BENCHMARKS.md §21); on CPUs without native bf16 OpenVINO would
//! emulate it, so `--precision auto` means f32 there and `auto` keeps ONNX Runtime.
use crate::error::{Result, TlError, Unavailable};
use openvino::{Core, DeviceType, ElementType, InferRequest, RwPropertyKey, Shape, Tensor};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The library found in the `.venv` when `tl` was built (build.rs).
const BUILT_WITH: Option<&str> = option_env!("TL_OPENVINO_LIB");

/// Inference precision of the frozen extractor (`--precision`, resolved).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl Precision {
    /// As reports and cache folders name it.
    pub fn label(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), read once from
/// `/proc/cpuinfo`: where it does not, bf16 would be emulated and slower than fp32.
pub fn cpu_has_native_bf16() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|text| cpu_flags_have_bf16(&text))
            .unwrap_or(false)
    })
}

/// The `flags` line of `/proc/cpuinfo` names avx512_bf16 or amx_bf16.
pub fn cpu_flags_have_bf16(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| {
            l.split_whitespace()
                .any(|f| f == "avx512_bf16" || f == "amx_bf16")
        })
}

/// The loaded OpenVINO C library.
#[derive(Clone, Debug)]
pub struct OvLibrary {
    pub path: PathBuf,
    pub version: String,
}

static LOADED: OnceLock<std::result::Result<OvLibrary, Unavailable>> = OnceLock::new();

/// Where the library is looked for: `$TL_OPENVINO` (the process settings), else the
/// build-time path.
pub fn library_path() -> Option<PathBuf> {
    crate::runtime::process_settings()
        .openvino
        .clone()
        .or_else(|| BUILT_WITH.map(PathBuf::from))
}

/// OpenVINO, loaded on first call; `Err` says in one line why it is not available.
pub fn library() -> std::result::Result<&'static OvLibrary, Unavailable> {
    LOADED.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> std::result::Result<OvLibrary, Unavailable> {
    let path = library_path().ok_or_else(|| Unavailable(
        "no OpenVINO library known (this tl was built without the openvino wheel; set TL_OPENVINO=/path/to/libopenvino_c.so)".into(),
    ))?;
    if !path.is_file() {
        return Err(Unavailable(format!(
            "OpenVINO library {} not found",
            path.display()
        )));
    }
    let loaded = std::panic::catch_unwind(|| {
        openvino_sys::library::load_from(&path)?;
        Ok::<_, String>(openvino::version().build_number)
    });
    match loaded {
        Ok(Ok(version)) => Ok(OvLibrary { path, version }),
        Ok(Err(e)) => Err(Unavailable(format!(
            "OpenVINO {} cannot be loaded: {e}",
            path.display()
        ))),
        Err(_) => Err(Unavailable(format!(
            "OpenVINO {} cannot be loaded: the library panicked while loading",
            path.display()
        ))),
    }
}

/// `<feature cache root>/openvino`, when it can be made.
fn model_cache_dir() -> Option<String> {
    let dir = crate::features::cache::default_root().join("openvino");
    std::fs::create_dir_all(&dir).ok()?;
    dir.to_str().map(str::to_string)
}

fn ov_error(path: &Path, what: &str, e: impl std::fmt::Display) -> TlError {
    let text = e.to_string();
    TlError::corrupt(path, format!("{what}: {}", crate::error::first_line(&text)))
}

/// An ONNX model compiled for the CPU: `[N,3,H,W]` float → `[N, ...]` float.
pub struct OpenVinoModel {
    request: InferRequest,
    /// The input tensor of the last batch shape, reused while the shape stays: a fresh
    /// 19 MB tensor per batch of 32 cost its page faults every time.
    input: Option<(Vec<i64>, Tensor)>,
    pub path: PathBuf,
    pub precision: Precision,
}

impl OpenVinoModel {
    /// Compile `path` for the CPU with `threads` inference threads, the latency hint (one
    /// stream: each worker has its own model) and `precision`. `pinning`: bind the threads
    /// to cores, only when nothing else (decoders) runs beside them.
    pub fn load(
        path: &Path,
        threads: usize,
        precision: Precision,
        pinning: bool,
    ) -> Result<OpenVinoModel> {
        library()?;
        let fail = |what: &str, e: openvino::InferenceError| ov_error(path, what, e);
        let mut core = Core::new().map_err(|e| ov_error(path, "cannot start OpenVINO", e))?;
        let hint = match precision {
            Precision::Fp32 => "f32",
            Precision::Bf16 => "bf16",
        };
        let threads = threads.max(1).to_string();
        let settings = [
            (RwPropertyKey::HintPerformanceMode, "LATENCY"),
            (RwPropertyKey::InferenceNumThreads, threads.as_str()),
            (RwPropertyKey::HintInferencePrecision, hint),
            (
                RwPropertyKey::HintEnableCpuPinning,
                if pinning { "YES" } else { "NO" },
            ),
        ];
        core.set_properties(&DeviceType::CPU, settings)
            .map_err(|e| fail("settings", e))?;
        let file = path
            .to_str()
            .ok_or_else(|| TlError::invalid(format!("{}: path is not UTF-8", path.display())))?;
        let model = core
            .read_model_from_file(file, "")
            .map_err(|e| fail("cannot read ONNX model", e))?;
        // OpenVINO's own cache of compiled models (keyed by the model, its settings and
        // OpenVINO's version; a damaged entry is recompiled): MobileNetV2 loads in ~35 ms
        // instead of ~100 ms, which counts on short runs. Without it, compiled afresh.
        // OpenVINO guards its cache within a process only: an flock on the folder keeps
        // concurrent `tl` processes (shards) from reading an entry another one is writing.
        let cached = model_cache_dir().and_then(|dir| {
            let _lock = crate::util::fs::FileLock::exclusive(Path::new(&dir)).ok()?;
            core.set_property(&DeviceType::CPU, &RwPropertyKey::CacheDir, &dir)
                .and_then(|_| core.compile_model(&model, DeviceType::CPU))
                .ok()
        });
        let mut compiled = match cached {
            Some(c) => c,
            None => {
                let _ = core.set_property(&DeviceType::CPU, &RwPropertyKey::CacheDir, "");
                core.compile_model(&model, DeviceType::CPU)
                    .map_err(|e| fail("cannot compile the model", e))?
            }
        };
        let request = compiled
            .create_infer_request()
            .map_err(|e| fail("cannot make an inference request", e))?;
        Ok(OpenVinoModel {
            request,
            input: None,
            path: path.to_path_buf(),
            precision,
        })
    }

    /// Run one batch; returns the output's shape and values (always f32).
    pub fn run(&mut self, data: &[f32], shape: [usize; 4]) -> Result<(Vec<usize>, Vec<f32>)> {
        self.input_buffer(shape)?.copy_from_slice(data);
        self.run_input()
    }

    /// The input tensor for a batch of `shape`, to be filled in place (decoders write into
    /// it: no copy of the batch) before [`Self::run_input`].
    pub fn input_buffer(&mut self, shape: [usize; 4]) -> Result<&mut [f32]> {
        let path = self.path.clone();
        let fail = |what: &str, e: openvino::InferenceError| ov_error(&path, what, e);
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        if self.input.as_ref().is_none_or(|(d, _)| *d != dims) {
            let shape = Shape::new(&dims).map_err(|e| fail("input shape", e))?;
            let tensor = Tensor::new(ElementType::F32, &shape).map_err(|e| fail("input", e))?;
            self.input = Some((dims, tensor));
        }
        let Some((_, input)) = self.input.as_mut() else {
            return Err(TlError::invalid("no input tensor"));
        };
        input.get_data_mut::<f32>().map_err(|e| fail("input", e))
    }

    /// Run the batch in the input tensor.
    pub fn run_input(&mut self) -> Result<(Vec<usize>, Vec<f32>)> {
        let path = self.path.clone();
        let fail = |what: &str, e: openvino::InferenceError| ov_error(&path, what, e);
        let Some((_, input)) = self.input.as_ref() else {
            return Err(TlError::invalid("no input tensor"));
        };
        self.request
            .set_input_tensor(input)
            .map_err(|e| fail("input", e))?;
        self.request.infer().map_err(|e| fail("forward", e))?;
        let output = self
            .request
            .get_output_tensor()
            .map_err(|e| fail("output", e))?;
        let out_shape = output.get_shape().map_err(|e| fail("output", e))?;
        let dims = out_shape
            .get_dimensions()
            .iter()
            .map(|&d| d.max(0) as usize)
            .collect();
        let values = output
            .get_data::<f32>()
            .map_err(|e| fail("output", e))?
            .to_vec();
        Ok((dims, values))
    }
}

#[cfg(test)]
mod tests {
    use super::cpu_flags_have_bf16;

    #[test]
    fn native_bf16_is_read_from_the_flags_line() {
        for (text, want) in [
            (
                "flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n",
                true,
            ),
            ("flags\t\t: fpu avx2 amx_tile amx_bf16\n", true),
            ("flags\t\t: fpu avx2 avx512f avx512_vnni\n", false),
            (
                "model name : avx512_bf16 in a name\nflags : fpu avx2\n",
                false,
            ),
            ("", false),
        ] {
            assert_eq!(cpu_flags_have_bf16(text), want, "{text:?}");
        }
    }
}
