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
        tables: results.tuning.iter().map(trial_table).collect(),
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

/// `tl tune`'s trials as a table, best mean first (the chosen one in bold).
fn trial_table(t: &crate::workflow::train::tuning::Tuning) -> crate::html::page::Table {
    let order = t.ranked();
    crate::html::page::Table {
        title: "Tuning".into(),
        note: format!(
            "{} trials, {}-fold cross-validation of the training images ({} kept in one fold with a near-duplicate); the chosen settings (bold) are the cheapest within one standard error of the best. {:.0} s of a {:.0} s budget.{}",
            t.trials.len(),
            t.folds,
            t.grouped_images,
            t.search_seconds,
            t.budget_seconds,
            t.notes.iter().map(|n| format!(" {n}.")).collect::<String>()
        ),
        header: ["settings", "folds", "balanced accuracy", "± std", "loss", "seconds"]
            .map(String::from)
            .to_vec(),
        rows: order
            .iter()
            .map(|&i| {
                let x = &t.trials[i];
                vec![
                    format!("{}{}", x.trial.flags(), if i == 0 { " (defaults)" } else { "" }),
                    x.scores.len().to_string(),
                    format!("{:.2}%", 100.0 * x.mean()),
                    format!("{:.2}", 100.0 * x.std()),
                    format!("{:.4}", x.mean_loss()),
                    format!("{:.1}", x.seconds),
                ]
            })
            .collect(),
        marked: order.iter().position(|&i| i == t.chosen).into_iter().collect(),
    }
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
