//! The traced TorchScript file → the exported model, in a Python process (the script is
//! embedded in the binary; Python runs isolated, `-I`, so no module of the working folder
//! or the user's site is imported): ONNX by PyTorch's own exporter, checked in onnxruntime
//! when it is installed there; and, for a model with an unknown score, TorchScript whose
//! forward returns the tuple (probabilities, unknown_score) — tch traces one output only.
use crate::error::{Result, TlError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;

const SCRIPT: &str = include_str!("to_onnx.py");

/// Largest difference allowed between ONNX Runtime's probabilities and TorchScript's.
pub const TOLERANCE: f64 = 1e-4;

/// What the conversion reported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OnnxCheck {
    pub torch: String,
    /// ONNX only.
    pub opset: Option<u32>,
    /// Version of the onnxruntime that checked the model (None: not installed, unchecked).
    pub onnxruntime: Option<String>,
    pub max_abs_diff: Option<f64>,
}

/// Convert the traced `torchscript` into `out` (`onnx`: ONNX, else TorchScript) with
/// `python`; the input side is `crop`; `judged_classes`: the trace returns `[N, C+1]`
/// (probabilities, then the unknown score) for these C classes, split into two outputs.
pub fn convert(
    python: &Path,
    torchscript: &Path,
    out: &Path,
    crop: u32,
    judged_classes: Option<usize>,
    onnx: bool,
) -> Result<OnnxCheck> {
    let mut cmd = Command::new(python);
    // The child dies with tl (a killed export must not go on writing its file).
    #[cfg(target_os = "linux")]
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let out = cmd
        .arg("-I")
        .arg("-c")
        .arg(SCRIPT)
        .arg(torchscript)
        .arg(out)
        .arg(crop.to_string())
        .arg(judged_classes.unwrap_or(0).to_string())
        .arg(if onnx { "onnx" } else { "torchscript" })
        .output()
        .map_err(|e| {
            TlError::invalid(format!(
                "cannot run Python '{}' ({e}); ONNX export and models with an unknown score use PyTorch: pass --python or set TL_PYTHON (scripts/setup.sh makes .venv/bin/python), or export with --no-unknown",
                python.display()
            ))
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let why = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        return Err(TlError::invalid(format!(
            "export failed in Python '{}': {}",
            python.display(),
            why.trim()
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    let check: OnnxCheck = serde_json::from_str(line)
        .map_err(|e| TlError::invalid(format!("the export script printed no report ({e})")))?;
    if let Some(diff) = check.max_abs_diff {
        if diff.is_nan() || diff > TOLERANCE {
            return Err(TlError::invalid(format!(
                "the written model's outputs differ from the traced one's by {diff:.2e} (limit {TOLERANCE:.0e})"
            )));
        }
    }
    Ok(check)
}
