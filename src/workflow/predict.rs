//! `tl predict`: classify images with a trained run or a backbone's ImageNet classifier.
use super::SkippedFile;
use crate::data::View;
use crate::error::{Result, TlError};
use crate::eval::{ClassProb, Report};
use crate::features::extract::decode_files;
use crate::inspect::classifier::{UnknownChoice, UnknownRule};
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
    /// Answer `unknown` for images unlike the run's training images.
    pub unknown: UnknownChoice,
}

/// What `class` says for an image judged unlike the training images.
pub const UNKNOWN_CLASS: &str = "unknown";

#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    pub path: FilePath,
    /// The most probable class, or `unknown`.
    pub class: String,
    /// The most probable class's probability (also when `class` is `unknown`).
    pub probability: f64,
    /// The classifier's own most probable classes.
    pub top: Vec<ClassProb>,
    /// Judged unlike the training images (None: no judgement).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<bool>,
    /// Distance to the training images' features, and the threshold it is compared with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_threshold: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PredictReport {
    pub network: String,
    /// How unknown was judged (None: it was not).
    pub unknown: Option<UnknownRule>,
    pub predictions: Vec<Prediction>,
    pub skipped: Vec<SkippedFile>,
    pub warnings: Vec<String>,
}

impl Report for PredictReport {
    /// One line per image: `path<TAB>class p<TAB>(next p, …)`, or
    /// `path<TAB>unknown (nearest: dog 0.97, distance 0.41 > 0.28)`.
    fn render_text(&self) -> String {
        let mut s = String::new();
        for p in &self.predictions {
            // Control characters are escaped where every report is printed (the CLI).
            let path = &p.path;
            if p.unknown == Some(true) {
                let best = p.top.first();
                s += &format!(
                    "{path}\t{UNKNOWN_CLASS} (nearest: {} {:.3}, distance {:.3} > {:.3})\n",
                    best.map_or("?", |b| b.class.as_str()),
                    p.probability,
                    p.unknown_score.unwrap_or(f64::NAN),
                    p.unknown_threshold.unwrap_or(f64::NAN)
                );
                continue;
            }
            let rest: Vec<String> = p
                .top
                .iter()
                .skip(1)
                .map(|c| format!("{} {:.3}", c.class, c.probability))
                .collect();
            s += &format!("{path}\t{} {:.3}", p.class, p.probability);
            if !rest.is_empty() {
                s += &format!("\t({})", rest.join(", "));
            }
            s.push('\n');
        }
        s
    }
    fn notes(&self) -> Vec<String> {
        let mut notes = crate::eval::warning_lines(&self.warnings);
        notes.extend(self.skipped.iter().map(|s| format!("skipped: {s}")));
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
    if let Some(a) = s.unknown.accept {
        crate::head::unknown::check_accept(a)?;
    }
    let classifier = Classifier::load_for_inference(&s.network, rt, s.unknown)?;
    let mut saved = SavedInputs::default();
    let files = crate::data::expand_inputs(&s.inputs)?;
    let mut report = PredictReport {
        network: classifier.description.clone(),
        unknown: classifier.unknown,
        predictions: Vec::new(),
        skipped: Vec::new(),
        warnings: classifier.warning.iter().cloned().collect(),
    };
    if s.unknown.enabled && classifier.unknown.is_none() {
        report.warnings.extend(no_judge_note(&s.network));
    }
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
        // The unknown score is the plain view's, as the threshold was set.
        let (mut probs, scores) = answer_rows(&classifier, &x)?;
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
        for (n, (row, &i)) in probs.iter().zip(&batch.indices).enumerate() {
            let score = scores.as_ref().and_then(|v| v.get(n)).copied();
            report
                .predictions
                .extend(prediction(&classifier, &chunk[i], row, score, s.top_k));
        }
    }
    if report.predictions.is_empty() {
        let why: Vec<String> = report.skipped.iter().map(|s| s.to_string()).collect();
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

/// Per image: probabilities; and the unknown scores, with a judge.
type Answered = (Vec<Vec<f32>>, Option<Vec<f32>>);

/// Probabilities and unknown scores of a normalised batch, as numbers.
fn answer_rows(classifier: &Classifier, x: &Tensor) -> Result<Answered> {
    let answer = tch::no_grad(|| classifier.answer(&x.to_device(classifier.device)))?;
    let probs = crate::util::tensors::rows(&answer.probabilities)?;
    let scores = match answer.unknown_scores {
        Some(t) => Some(
            Vec::<f32>::try_from(&t.to_device(tch::Device::Cpu).to_kind(tch::Kind::Float))
                .map_err(|e| TlError::torch("reading unknown scores", e))?,
        ),
        None => None,
    };
    Ok((probs, scores))
}

/// One image's answer: its top classes, and `unknown` when its score is above the threshold.
fn prediction(
    classifier: &Classifier,
    path: &std::path::Path,
    probs: &[f32],
    score: Option<f32>,
    top_k: usize,
) -> Option<Prediction> {
    let top = classifier.top(probs, top_k);
    let best = top.first()?.clone();
    let judged = classifier
        .unknown
        .zip(score)
        .map(|(rule, score)| (score as f64, rule.threshold));
    let unknown = judged.map(|(score, threshold)| score > threshold);
    Some(Prediction {
        path: FilePath(path.to_path_buf()),
        class: if unknown == Some(true) {
            UNKNOWN_CLASS.into()
        } else {
            best.class
        },
        probability: best.probability,
        top,
        unknown,
        unknown_score: judged.map(|j| j.0),
        unknown_threshold: judged.map(|j| j.1),
    })
}

/// Why a trained run or an exported model gives no unknown judgement (None: not expected).
fn no_judge_note(network: &NetworkChoice) -> Option<String> {
    match network {
        NetworkChoice::Run(dir) => Some(format!(
            "run {} was trained before tl judged unknown images: every image gets one of its classes (re-train to get `unknown` answers)",
            dir.display()
        )),
        NetworkChoice::Exported(path) => Some(format!(
            "model {} was exported without an unknown score: every image gets one of its classes",
            path.display()
        )),
        NetworkChoice::Backbone(_) => None,
    }
}

/// `--save-inputs`: what the network was given and what it answered, batch by batch.
#[derive(Default)]
struct SavedInputs {
    inputs: Vec<Tensor>,
    probabilities: Vec<Tensor>,
}

impl SavedInputs {
    fn add(&mut self, x: &Tensor, probs: &[Vec<f32>], cfg: &crate::data::PreprocessConfig) {
        // Back on the 1/255 grid the 8-bit pixels came from, as ToTensor's `div(255)` puts
        // them (undoing the normalisation alone leaves last-bit differences).
        let unit = crate::data::preprocess::denormalize_tensor(x, cfg);
        self.inputs.push((unit * 255.0).round() / 255.0);
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
