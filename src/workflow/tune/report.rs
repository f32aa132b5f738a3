//! What `tl cv` prints: the K-fold estimate of the given settings.
use crate::eval::Report;
use crate::util::FilePath;
use crate::workflow::train::tuning::{mean, sample_std, standard_error};
use crate::workflow::tune::cv::Folds;
use crate::workflow::FeatureSet;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct CvReport {
    pub data: FilePath,
    pub backbone: String,
    pub folds: usize,
    /// Training images cross-validated (the validation side is left out).
    pub images: usize,
    /// Images that share their fold with a near-duplicate or a copy.
    pub grouped_images: usize,
    /// Balanced accuracy on each held-out fold.
    pub fold_scores: Vec<f64>,
    /// Mean cross-entropy on each held-out fold.
    pub fold_losses: Vec<f64>,
    pub mean: f64,
    /// Sample standard deviation over the folds.
    pub std: f64,
    /// Standard error of the mean.
    pub se: f64,
    pub loss: f64,
    pub seconds: f64,
    /// The fold (1 to K) of each training image.
    pub assignments: Vec<FoldAssignment>,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FoldAssignment {
    pub path: FilePath,
    pub fold: usize,
}

impl CvReport {
    /// The report of `fold_scores` and `fold_losses` (one of each per fold).
    pub(super) fn new(
        data: &std::path::Path,
        backbone: &str,
        folds: &Folds,
        f: &FeatureSet,
        (fold_scores, fold_losses): (Vec<f64>, Vec<f64>),
        started: Instant,
        warnings: Vec<String>,
    ) -> CvReport {
        CvReport {
            data: FilePath(data.to_path_buf()),
            backbone: backbone.to_string(),
            folds: folds.k,
            images: f.train.y.len(),
            grouped_images: folds.grouped_images,
            mean: mean(&fold_scores),
            std: sample_std(&fold_scores),
            se: standard_error(&fold_scores),
            loss: mean(&fold_losses),
            fold_scores,
            fold_losses,
            seconds: started.elapsed().as_secs_f64(),
            assignments: f
                .train
                .paths
                .iter()
                .zip(&folds.of_image)
                .map(|(p, &fold)| FoldAssignment {
                    path: FilePath(p.clone()),
                    fold: fold + 1,
                })
                .collect(),
            warnings,
        }
    }
}

impl Report for CvReport {
    fn render_text(&self) -> String {
        let per_fold: Vec<String> = self
            .fold_scores
            .iter()
            .map(|s| format!("{:.2}", 100.0 * s))
            .collect();
        format!(
            "{}-fold cross-validation on {} training images of {} (validation side left out; {} image(s) kept in one fold with a near-duplicate)\n\
             balanced accuracy {:.2}% ± {:.2} (std; standard error {:.2}), loss {:.4}\n\
             per fold: {}\n\
             took {:.1} s\n",
            self.folds,
            self.images,
            self.data,
            self.grouped_images,
            100.0 * self.mean,
            100.0 * self.std,
            100.0 * self.se,
            self.loss,
            per_fold.join(" "),
            self.seconds
        )
    }

    fn notes(&self) -> Vec<String> {
        crate::eval::warning_lines(&self.warnings)
    }
}
