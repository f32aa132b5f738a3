//! report.html of a run: the page `tl train` writes and `tl report` rewrites from the
//! run's files.
use super::TrainReport;
use crate::error::Result;
use crate::head::EpochMetrics;
use crate::html::charts::ScoreHistogram;
use crate::html::{GalleryImage, HeatPair, ReportPage};
use crate::run::RunConfig;
use std::path::Path;

/// The page of a training run, from its config, report and per-epoch metrics.
pub(crate) fn run_page(
    dir: &Path,
    config: &RunConfig,
    results: &TrainReport,
    metrics: &[EpochMetrics],
    gallery: Vec<GalleryImage>,
    heat: Vec<Option<HeatPair>>,
) -> Result<String> {
    let mut facts = vec![
        ("run".to_string(), dir.display().to_string()),
        ("trained".into(), config.created_at.clone()),
        ("backbone".into(), backbone_fact(config)),
        (
            "data".into(),
            format!("{} ({:?} layout)", config.data.root, config.data.layout),
        ),
        (
            "images".into(),
            format!(
                "{} train / {} validation",
                config.data.train_images, config.data.val_images
            ),
        ),
        ("head".into(), head_fact(config, results)),
        ("seed".into(), config.seed.to_string()),
    ];
    if config.views > 1 {
        facts.push(("views per training image".into(), config.views.to_string()));
    }
    if let Some(f) = &config.finetune {
        facts.push((
            "fine-tuning".into(),
            format!(
                "last {} block(s) from {}, lr {:e}, best epoch {}",
                f.blocks, f.first_block, f.config.lr, f.best_epoch
            ),
        ));
    }
    let val_images = results.validation.as_ref().map_or(0, |r| r.images);
    ReportPage {
        title: format!(
            "tl run: {}",
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        facts,
        classes: results.classes.clone(),
        skipped: results
            .skipped
            .iter()
            .map(|s| (s.path.to_string(), s.reason.to_string()))
            .collect(),
        ignored: results.ignored_files.len(),
        curves: metrics,
        results: results.validation.as_ref(),
        results_on: format!("validation ({val_images} images)"),
        gallery,
        config: crate::util::fs::to_json_pretty(config).ok(),
        calibration: results
            .calibration
            .as_ref()
            .map(|c| (&c.before, &c.after, c.temperature)),
        unknown: results.unknown.as_ref().map(run_histogram),
        heat,
    }
    .render()
}

/// The validation images' unknown scores as training recorded them.
fn run_histogram(u: &crate::workflow::calibrate::UnknownSummary) -> (ScoreHistogram, String) {
    let histogram = ScoreHistogram {
        max: u.histogram_max,
        threshold: u.threshold,
        known: u.histogram.clone(),
        known_label: format!("{} images", u.calibrated_on),
        other: None,
    };
    let sentence = format!(
        "An image is answered unknown when its features are further than {:.4} (1 − cosine similarity) from every one of {} training images' features: {:.1}% of the {} {} images are accepted.",
        u.threshold,
        u.references,
        100.0 * (1.0 - u.calibration_rejected),
        u.calibration_images,
        u.calibrated_on
    );
    (histogram, sentence)
}

fn backbone_fact(config: &RunConfig) -> String {
    let b = &config.backbone;
    let weights = match b.pretrained {
        Some(true) => "pretrained",
        Some(false) => "random weights",
        None => "weights unknown",
    };
    format!(
        "{} ({}, {weights}), {} features",
        b.name, b.architecture, b.feature_dim
    )
}

fn head_fact(config: &RunConfig, results: &TrainReport) -> String {
    let h = &config.head;
    let shape = if h.hidden > 0 {
        format!(
            "{} → {} → {} (dropout {})",
            h.in_dim, h.hidden, h.num_classes, h.dropout
        )
    } else {
        format!("linear {} → {}", h.in_dim, h.num_classes)
    };
    format!(
        "{shape}; {} lr {}, best epoch {} of {}",
        format!("{:?}", config.train.optimizer).to_lowercase(),
        config.train.lr,
        results.best_epoch,
        results.epochs_run
    )
}
