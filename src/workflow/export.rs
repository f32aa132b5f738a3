//! `tl export`: a run as one TorchScript (or ONNX) file plus its JSON sidecar.
use crate::error::{Result, TlError, TorchContext};
use crate::eval::Report;
use crate::export::onnx::{self, OnnxCheck};
use crate::inspect::Classifier;
use crate::model_file::{sidecar_path, ExportedUnknown, ModelFormat, ModelSidecar};
use crate::run::{Run, REPORT};
use crate::util::fs::write_atomic_via;
use crate::util::{refuse_overwrite, write_json_atomic, FilePath};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct ExportSettings {
    pub run: PathBuf,
    pub out: PathBuf,
    pub format: ModelFormat,
    pub force: bool,
    /// The Python (with torch and onnx) that converts to ONNX.
    pub python: PathBuf,
    /// Build the run's unknown judge in (a second output).
    pub unknown: bool,
    /// The unknown judge's acceptance (None: the run's own threshold).
    pub accept: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    pub model: FilePath,
    pub sidecar: FilePath,
    pub format: ModelFormat,
    pub classes: usize,
    pub bytes: u64,
    pub sha256: String,
    /// The conversion's own check against the trace (ONNX, and TorchScript with an unknown
    /// score).
    pub onnx: Option<OnnxCheck>,
    /// The model's second output says unknown above this.
    pub unknown_threshold: Option<f64>,
}

impl Report for ExportReport {
    fn render_text(&self) -> String {
        let check = match &self.onnx {
            Some(OnnxCheck {
                onnxruntime: Some(v),
                max_abs_diff: Some(d),
                ..
            }) => format!("; ONNX Runtime {v} matches TorchScript to {d:.1e}"),
            Some(_) if self.format == ModelFormat::Onnx => {
                "; not checked (onnxruntime is not installed in that Python)".into()
            }
            _ => String::new(),
        };
        format!(
            "exported {} ({}, {} classes{}), sidecar {}{check}\n",
            self.model,
            crate::util::text::human_bytes(self.bytes),
            self.classes,
            match self.unknown_threshold {
                Some(t) => format!(", unknown above {t:.4}"),
                None => String::new(),
            },
            self.sidecar
        )
    }
}

pub fn export(s: &ExportSettings) -> Result<ExportReport> {
    let sidecar = sidecar_path(&s.out);
    refuse_overwrite(&s.out, s.force)?;
    refuse_overwrite(&sidecar, s.force)?;
    let run = Run::open(&s.run)?;
    let mut classifier = Classifier::from_run(&run, tch::Device::Cpu)?;
    if s.unknown {
        classifier.attach_judge(&run, s.accept, tch::Device::Cpu)?;
    }
    let module = crate::export::trace(&classifier)?;
    let save = |path: &Path| {
        module
            .save(path)
            .torch_ctx(|| format!("{}: saving", s.out.display()))
    };
    let judged = classifier.unknown.map(|_| run.classes.len());
    let check = match s.format {
        ModelFormat::TorchScript if judged.is_none() => {
            write_atomic_via(&s.out, save)?;
            None
        }
        _ => {
            // Named with the process id: one left by a killed export is removed next time.
            let tmp_root = std::env::temp_dir();
            crate::util::fs::remove_dead_processes_files(&tmp_root, "tl-export-", "");
            let scratch = tempfile::Builder::new()
                .prefix(&format!("tl-export-{}-", std::process::id()))
                .tempdir_in(&tmp_root)
                .map_err(|e| TlError::invalid(e.to_string()))?;
            let traced = scratch.path().join("model.pt");
            save(&traced)?;
            let mut check = None;
            write_atomic_via(&s.out, |tmp| {
                check = Some(onnx::convert(
                    &s.python,
                    &traced,
                    tmp,
                    run.config.preprocess.crop,
                    judged,
                    s.format == ModelFormat::Onnx,
                )?);
                Ok(())
            })?;
            check
        }
    };
    let sha256 = crate::util::sha256_file(&s.out)?;
    let mut meta = ModelSidecar::new(&run, s.format, &s.out, sha256.clone());
    if let (Some(rule), Some(rec)) = (classifier.unknown, &run.config.unknown) {
        meta.output = "probabilities: [N, classes] float32 softmax probabilities (temperature applied), in the order of `classes`; unknown_score: [N] float32".into();
        meta.unknown = Some(ExportedUnknown {
            output: "unknown_score: [N] float32, 1 - mean cosine similarity of the k nearest training features; unknown when above threshold".into(),
            method: rec.method.clone(),
            k: rec.k,
            threshold: rule.threshold,
            accept: rule.accept,
        });
    }
    meta.source.val_accuracy = crate::util::read_json::<serde_json::Value>(&run.dir.join(REPORT))
        .ok()
        .and_then(|r| r["val_accuracy"].as_f64());
    // The sidecar last: a model without one is removed, never left looking finished.
    if let Err(e) = write_json_atomic(&sidecar, &meta) {
        let _ = std::fs::remove_file(&s.out);
        return Err(e);
    }
    Ok(ExportReport {
        model: FilePath(s.out.clone()),
        sidecar: FilePath(sidecar),
        format: s.format,
        classes: run.classes.len(),
        bytes: std::fs::metadata(&s.out).map(|m| m.len()).unwrap_or(0),
        sha256,
        onnx: check,
        unknown_threshold: classifier.unknown.map(|u| u.threshold),
    })
}
