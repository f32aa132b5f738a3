//! ONNX from the traced TorchScript file, by PyTorch's own exporter in a Python process
//! (the script is embedded in the binary); when onnxruntime is installed there, the ONNX
//! model is run against the TorchScript one before it is accepted.
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
    pub opset: u32,
    /// Version of the onnxruntime that checked the model (None: not installed, unchecked).
    pub onnxruntime: Option<String>,
    pub max_abs_diff: Option<f64>,
}

/// Convert `torchscript` into `onnx` with `python`; the input side is `crop`.
pub fn convert(python: &Path, torchscript: &Path, onnx: &Path, crop: u32) -> Result<OnnxCheck> {
    let out = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(torchscript)
        .arg(onnx)
        .arg(crop.to_string())
        .output()
        .map_err(|e| {
            TlError::invalid(format!(
                "cannot run Python '{}' ({e}); ONNX export uses PyTorch's exporter: pass --python or set TL_PYTHON (scripts/setup.sh makes .venv/bin/python)",
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
            "ONNX export failed in Python '{}': {}",
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
        .map_err(|e| TlError::invalid(format!("the ONNX export script printed no report ({e})")))?;
    if let Some(diff) = check.max_abs_diff {
        if diff.is_nan() || diff > TOLERANCE {
            return Err(TlError::invalid(format!(
                "ONNX Runtime's probabilities differ from TorchScript's by {diff:.2e} (limit {TOLERANCE:.0e})"
            )));
        }
    }
    Ok(check)
}
