//! `tl predict`: classify images with a trained run or a backbone's ImageNet classifier.
use super::SkippedFile;
use crate::data::View;
use crate::error::{Result, TlError};
use crate::eval::{ClassProb, Report};
use crate::features::extract::decode_files;
use crate::inspect::{Classifier, NetworkChoice};
use crate::runtime::Runtime;
use crate::util::FilePath;
use serde::Serialize;
use std::path::PathBuf;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct PredictSettings {
    pub network: NetworkChoice,
    /// Images and folders (searched recursively).
    pub inputs: Vec<PathBuf>,
    pub top_k: usize,
    pub batch_size: usize,
    pub tta: super::evaluate::Tta,
    /// Write the inputs (pixels in [0, 1]) and probabilities here (safetensors).
    pub save_inputs: Option<PathBuf>,
    pub force: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    pub path: FilePath,
    pub class: String,
    pub probability: f64,
    pub top: Vec<ClassProb>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PredictReport {
    pub network: String,
    pub predictions: Vec<Prediction>,
    pub skipped: Vec<SkippedFile>,
    pub warnings: Vec<String>,
}

impl Report for PredictReport {
    /// One line per image: `path<TAB>class p<TAB>(next p, …)`.
    fn render_text(&self) -> String {
        let mut s = String::new();
        for p in &self.predictions {
            let rest: Vec<String> = p
                .top
                .iter()
                .skip(1)
                .map(|c| format!("{} {:.3}", c.class, c.probability))
                .collect();
            s += &format!("{}\t{} {:.3}", p.path, p.class, p.probability);
            if !rest.is_empty() {
                s += &format!("\t({})", rest.join(", "));
            }
            s.push('\n');
        }
        s
    }
    fn notes(&self) -> Vec<String> {
        let mut notes = crate::eval::warning_lines(&self.warnings);
        notes.extend(
            self.skipped
                .iter()
                .map(|s| format!("skipped: {}", s.reason)),
        );
        notes
    }
}

pub fn predict(rt: &Runtime, s: &PredictSettings) -> Result<PredictReport> {
    if s.top_k == 0 || s.batch_size == 0 {
        return Err(TlError::invalid(
            "top-k and the batch size must be at least 1",
        ));
    }
    if let Some(path) = &s.save_inputs {
        if s.tta != super::evaluate::Tta::None {
            return Err(TlError::invalid(
                "--save-inputs records single-view predictions; leave out --tta",
            ));
        }
        crate::util::refuse_overwrite(path, s.force)?;
    }
    let classifier = Classifier::load_for_inference(&s.network, rt)?;
    let mut saved = SavedInputs::default();
    let files = crate::data::expand_inputs(&s.inputs)?;
    let mut report = PredictReport {
        network: classifier.description.clone(),
        predictions: Vec::new(),
        skipped: Vec::new(),
        warnings: classifier.warning.iter().cloned().collect(),
    };
    for chunk in files.chunks(s.batch_size) {
        let batch = decode_files(chunk, &classifier.preprocess, View::Center);
        report
            .skipped
            .extend(batch.failures.iter().map(|(i, e)| SkippedFile {
                path: FilePath(chunk[*i].clone()),
                reason: e.clone(),
            }));
        if batch.indices.is_empty() {
            continue;
        }
        let x = batch.tensor(&classifier.preprocess);
        let mut probs = classifier.probabilities(&x)?;
        for view in s.tta.views().into_iter().skip(1) {
            // The same files, read again: any that changed in between are left out.
            let other = decode_files(chunk, &classifier.preprocess, view);
            if other.indices != batch.indices {
                return Err(TlError::invalid(
                    "an image changed while it was being classified; run again",
                ));
            }
            let more = classifier.probabilities(&other.tensor(&classifier.preprocess))?;
            for (p, q) in probs.iter_mut().zip(more) {
                p.iter_mut().zip(q).for_each(|(a, b)| *a = (*a + b) / 2.0);
            }
        }
        if s.save_inputs.is_some() {
            saved.add(&x, &probs, &classifier.preprocess);
        }
        for (row, &i) in probs.iter().zip(&batch.indices) {
            let top = classifier.top(row, s.top_k);
            let Some(best) = top.first() else { continue };
            report.predictions.push(Prediction {
                path: FilePath(chunk[i].clone()),
                class: best.class.clone(),
                probability: best.probability,
                top: top.clone(),
            });
        }
    }
    if report.predictions.is_empty() {
        let why: Vec<&str> = report.skipped.iter().map(|s| s.reason.as_str()).collect();
        return Err(TlError::invalid(format!(
            "no image could be read: {}",
            why.join("; ")
        )));
    }
    if let Some(path) = &s.save_inputs {
        saved.write(path)?;
    }
    Ok(report)
}

/// `--save-inputs`: what the network was given and what it answered, batch by batch.
#[derive(Default)]
struct SavedInputs {
    inputs: Vec<Tensor>,
    probabilities: Vec<Tensor>,
}

impl SavedInputs {
    fn add(&mut self, x: &Tensor, probs: &[Vec<f32>], cfg: &crate::data::PreprocessConfig) {
        self.inputs
            .push(crate::data::preprocess::denormalize_tensor(x, cfg));
        let flat: Vec<f32> = probs.iter().flatten().copied().collect();
        self.probabilities
            .push(Tensor::from_slice(&flat).view([probs.len() as i64, -1]));
    }

    fn write(&self, path: &std::path::Path) -> Result<()> {
        let named = [
            ("inputs".to_string(), Tensor::cat(&self.inputs, 0)),
            (
                "probabilities".to_string(),
                Tensor::cat(&self.probabilities, 0),
            ),
        ];
        let bytes = crate::util::tensors::to_safetensors(&named)?;
        crate::util::write_atomic(path, &bytes)
    }
}
