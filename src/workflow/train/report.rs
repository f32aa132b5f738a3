//! What `tl train` did: the run's report.json, and its text.
use crate::data::IgnoredFile;
use crate::eval::{ClassCount, ClassificationReport, Report};
use crate::features::{ExtractStats, Extracted};
use crate::util::{human_duration, FilePath};
use crate::workflow::calibrate::{CalibrationSummary, UnknownSummary};
use crate::workflow::finetune::FinetuneSummary;
use crate::workflow::SkippedFile;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Timing {
    pub extract: f64,
    pub train: f64,
    /// Fine-tuning the top blocks (0 without `--finetune`).
    pub finetune: f64,
    /// Temperature scaling and the unknown judge.
    #[serde(default)]
    pub calibrate: f64,
    pub total: f64,
}

/// What `tl train` did; also the run's report.json, read back by `tl report` (fields that
/// runs made by older versions lack take their defaults).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainReport {
    pub run: FilePath,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub stopped_early: bool,
    pub train_accuracy: f64,
    pub val_accuracy: Option<f64>,
    pub val_loss: Option<f64>,
    pub validation: Option<ClassificationReport>,
    pub extraction: ExtractStats,
    pub damaged_cache_entries: Vec<String>,
    pub skipped: Vec<SkippedFile>,
    pub ignored_files: Vec<IgnoredFile>,
    pub warnings: Vec<String>,
    pub timing_seconds: Timing,
    /// Views per training image.
    pub views: usize,
    pub finetune: Option<FinetuneSummary>,
    /// Usable images per class on each side.
    pub classes: Vec<ClassCount>,
    /// Temperature scaling on the validation images (None without any).
    pub calibration: Option<CalibrationSummary>,
    /// How "unknown" is judged.
    pub unknown: Option<UnknownSummary>,
    /// How unequal classes were treated in training.
    pub balance: crate::head::Balance,
    /// What the review file changed (files excluded, relabelled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<crate::data::review::Applied>,
    /// How `tl tune` chose the settings (runs trained by `tl tune` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tuning: Option<super::tuning::Tuning>,
}

impl TrainReport {
    /// ", val accuracy … on N images" (balanced accuracy first when the classes are unequal).
    fn validation_line(&self) -> String {
        match &self.validation {
            Some(r) if self.imbalanced() => format!(
                ", val balanced accuracy {:.2}%, macro-F1 {:.4} (accuracy {:.2}%) on {} images; classes imbalanced, --balance {}",
                100.0 * r.mean_class_accuracy,
                r.macro_f1(),
                100.0 * r.accuracy,
                r.images,
                self.balance
            ),
            Some(r) => format!(
                ", val accuracy {:.2}% (mean per-class {:.2}%) on {} images",
                100.0 * r.accuracy,
                100.0 * r.mean_class_accuracy,
                r.images
            ),
            None => String::new(),
        }
    }

    /// Whether the training classes are imbalanced (largest ≥ 3× the smallest).
    pub fn imbalanced(&self) -> bool {
        let counts: Vec<usize> = self.classes.iter().filter_map(|c| c.train).collect();
        super::settings::imbalance_ratio(&counts) >= super::settings::IMBALANCE_RATIO
    }
}

impl Report for TrainReport {
    /// Warnings, damaged cache entries that were recomputed, and the skipped files.
    fn notes(&self) -> Vec<String> {
        let mut notes = crate::eval::warning_lines(&self.warnings);
        notes.extend(
            self.damaged_cache_entries
                .iter()
                .map(|c| format!("warning: damaged cache entry recomputed: {c}")),
        );
        notes.extend(crate::workflow::skipped_notes(
            &self.skipped,
            self.ignored_files.len(),
        ));
        notes
    }

    fn render_text(&self) -> String {
        let val = self.validation_line();
        let tuned = match &self.finetune {
            Some(f) => format!(
                "fine-tuned the top {} block(s) from {}: best epoch {}/{}{}{}, {:.1} img/s\n",
                f.blocks,
                f.first_block,
                if f.best_epoch == 0 {
                    "0 (none beat the head alone: kept as it was)".to_string()
                } else {
                    f.best_epoch.to_string()
                },
                f.epochs_run,
                if f.stopped_early { " (early stop)" } else { "" },
                f.head_only_val_accuracy
                    .map(|a| format!(", head alone {:.2}% val accuracy", 100.0 * a))
                    .unwrap_or_default(),
                f.images_per_second
            ),
            None => String::new(),
        };
        let t = &self.timing_seconds;
        let tune_time = if self.finetune.is_some() {
            format!(", {} fine-tuning", human_duration(t.finetune))
        } else {
            String::new()
        };
        let calibrated = match &self.calibration {
            Some(c) => format!(
                "calibration: temperature {:.3}, ECE {:.4} -> {:.4}, NLL {:.4} -> {:.4} on {} validation images\n",
                c.temperature, c.before.ece, c.after.ece, c.before.nll, c.after.nll, c.images
            ),
            None => String::new(),
        };
        let unknown = match &self.unknown {
            Some(u) => format!(
                "unknown: above distance {:.4} (accepts {:.1}% of {} {} images; {} reference features, {})\n",
                u.threshold,
                100.0 * (1.0 - u.calibration_rejected),
                u.calibration_images,
                u.calibrated_on,
                u.references,
                crate::util::text::human_bytes(u.stored_bytes as u64)
            ),
            None => String::new(),
        };
        let review = match &self.review {
            Some(r) => format!(
                "review: {} excluded, {} relabelled by {}\n",
                r.excluded.len(),
                r.relabelled.len(),
                r.file
            ),
            None => String::new(),
        };
        let search = self
            .tuning
            .as_ref()
            .map(|t| t.render_text())
            .unwrap_or_default();
        format!(
            "{search}run: {}\nbest epoch {}/{}{}: train accuracy {:.2}%{val}\n{review}{tuned}{calibrated}{unknown}time: {} total ({} features, {} head{tune_time})\n",
            self.run,
            self.best_epoch,
            self.epochs_run,
            if self.stopped_early { " (early stop)" } else { "" },
            100.0 * self.train_accuracy,
            human_duration(t.total),
            human_duration(t.extract),
            human_duration(t.train),
        )
    }
}

/// `features: 0 cached, 1300 computed (52.9 img/s), 0 unreadable, dim 1280 in 24.6s`
pub fn extraction_line(ex: &Extracted) -> String {
    let st = &ex.stats;
    format!(
        "features: {} cached, {} computed{}, {} unreadable, {} in {}{}",
        st.cached,
        st.computed,
        if st.computed > 0 {
            format!(" ({:.1} img/s)", st.images_per_second)
        } else {
            String::new()
        },
        st.failed,
        if ex.dim > 0 {
            format!("dim {}", ex.dim)
        } else {
            "no features".into()
        },
        human_duration(st.seconds),
        if st.computed > 0 {
            format!(" ({})", st.engine.label_with(st.precision))
        } else {
            String::new()
        }
    )
}
