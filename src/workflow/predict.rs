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

#[derive(Clone, Debug)]
pub struct PredictSettings {
    pub network: NetworkChoice,
    /// Images and folders (searched recursively).
    pub inputs: Vec<PathBuf>,
    pub top_k: usize,
    pub batch_size: usize,
    pub tta: super::evaluate::Tta,
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
    let classifier = Classifier::load(&s.network, rt)?;
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
        let mut probs = classifier.probabilities(&batch.tensor(&classifier.preprocess))?;
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
    Ok(report)
}
