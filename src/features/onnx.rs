//! ONNX Runtime as an inference-only engine for the frozen feature extractor on the CPU
//! (`--engine onnx`, the default there when it is available). The shared library comes from
//! the onnxruntime wheel in the project's `.venv` (path baked in at build time, like
//! libtorch's rpath) or from `$TL_ONNXRUNTIME`; it is loaded once, at first use.
use crate::error::{Result, TlError, Unavailable};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The library found next to torch when `tl` was built (build.rs).
const BUILT_WITH: Option<&str> = option_env!("TL_ONNXRUNTIME_LIB");

/// The loaded ONNX Runtime library.
pub struct OrtLibrary {
    pub path: PathBuf,
    pub version: String,
    env: ort::environment::Environment,
}

static LOADED: OnceLock<std::result::Result<OrtLibrary, Unavailable>> = OnceLock::new();

/// Where the library is looked for: the process settings' (`$TL_ONNXRUNTIME`), else the
/// build-time path.
pub fn library_path() -> Option<PathBuf> {
    crate::runtime::process_settings()
        .onnxruntime
        .clone()
        .or_else(|| BUILT_WITH.map(PathBuf::from))
}

/// ONNX Runtime, loaded on first call; `Err` says in one line why it is not available.
pub fn library() -> std::result::Result<&'static OrtLibrary, Unavailable> {
    LOADED.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> std::result::Result<OrtLibrary, Unavailable> {
    let path = library_path().ok_or_else(|| Unavailable(
        "no ONNX Runtime library known (this tl was built without the onnxruntime wheel; set TL_ONNXRUNTIME=/path/to/libonnxruntime.so)".into(),
    ))?;
    if !path.is_file() {
        return Err(Unavailable(format!(
            "ONNX Runtime library {} not found",
            path.display()
        )));
    }
    // ort asserts on a library that is not ONNX Runtime; a panic must not end the run.
    let env = std::panic::catch_unwind(|| {
        ort::init_from(&path)
            .map_err(|e| e.to_string())?
            .with_name("tl")
            .build()
            .map_err(|e| e.to_string())
    })
    .map_err(|_| "the library panicked while loading".to_string())
    .and_then(|r| r)
    .map_err(|e| {
        Unavailable(format!(
            "ONNX Runtime {} cannot be loaded: {e}",
            path.display()
        ))
    })?;
    Ok(OrtLibrary {
        version: version_of(&path),
        path,
        env,
    })
}

/// `libonnxruntime.so.1.32.0` → `1.32.0`.
fn version_of(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split(".so.").nth(1))
        .unwrap_or("unknown")
        .to_string()
}

/// An ONNX model in an ONNX Runtime session: `[N,3,H,W]` float → `[N, ...]` float.
pub struct OnnxModel {
    session: Session,
    pub path: PathBuf,
}

fn ort_error(path: &Path, what: &str, e: impl std::fmt::Display) -> TlError {
    let text = e.to_string();
    TlError::corrupt(path, format!("{what}: {}", crate::error::first_line(&text)))
}

impl OnnxModel {
    /// Load with `threads` intra-op threads and full graph optimisation. `spinning`: idle
    /// compute threads busy-wait for work (ONNX Runtime's default). Off while decoders share
    /// the cores: cold extraction of cats_dogs ran at 68-72 img/s without, 62 with it.
    pub fn load(path: &Path, threads: usize, spinning: bool) -> Result<OnnxModel> {
        let lib = library()?;
        let fail = |e| ort_error(path, "cannot load ONNX model", e);
        let session = Session::builder(&lib.env)
            .map_err(fail)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| fail(e.into()))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| fail(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| fail(e.into()))?
            .with_intra_op_spinning(spinning)
            .map_err(|e| fail(e.into()))?
            .commit_from_file(path)
            .map_err(fail)?;
        Ok(OnnxModel {
            session,
            path: path.to_path_buf(),
        })
    }

    /// Run one batch; returns the output's shape and values.
    pub fn run(&mut self, data: &[f32], shape: [usize; 4]) -> Result<(Vec<usize>, Vec<f32>)> {
        let path = self.path.clone();
        let input =
            TensorRef::from_array_view((shape, data)).map_err(|e| ort_error(&path, "input", e))?;
        let outputs = self
            .session
            .run(ort::inputs![input])
            .map_err(|e| ort_error(&path, "forward", e))?;
        let (out_shape, values) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| ort_error(&path, "output", e))?;
        let dims = out_shape.iter().map(|&d| d.max(0) as usize).collect();
        Ok((dims, values.to_vec()))
    }
}
