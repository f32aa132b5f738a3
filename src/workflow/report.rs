//! `tl report` and the HTML pages of `tl train` (report.html in the run folder) and
//! `tl eval --report`: the run's files (or an evaluation) as a `ReportPage`.
use super::evaluate::EvalReport;
use super::SkippedFile;
use crate::error::{Result, TlError};
use crate::eval::{ClassCount, ClassificationReport, Report};
use crate::head::EpochMetrics;
use crate::html::charts::ScoreHistogram;
use crate::html::{GalleryImage, ReportPage};
use crate::run::{Run, RunConfig, METRICS, REPORT, REPORT_HTML};
use crate::util::{refuse_overwrite, write_atomic, FilePath};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct ReportSettings {
    pub run: PathBuf,
    /// None: report.html in the run folder (rewritten: it is made from the run's files).
    pub out: Option<PathBuf>,
    /// Images to add (dreams, attacks).
    pub include: Option<PathBuf>,
    pub force: bool,
}

/// What `tl report` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct HtmlWritten {
    pub path: FilePath,
    pub bytes: usize,
    pub included_images: usize,
}

impl Report for HtmlWritten {
    fn render_text(&self) -> String {
        format!(
            "wrote {} ({}{})\n",
            self.path,
            crate::util::text::human_bytes(self.bytes as u64),
            match self.included_images {
                0 => String::new(),
                n => format!(", {n} included image(s)"),
            }
        )
    }
}

/// The parts of a run's report.json a page shows (older runs may lack some).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct RunResults {
    #[serde(default)]
    pub validation: Option<ClassificationReport>,
    #[serde(default)]
    pub skipped: Vec<SkippedFile>,
    #[serde(default)]
    pub ignored_files: Vec<serde_json::Value>,
    #[serde(default)]
    pub classes: Vec<ClassCount>,
    #[serde(default)]
    pub best_epoch: usize,
    #[serde(default)]
    pub epochs_run: usize,
    #[serde(default)]
    pub calibration: Option<super::calibrate::CalibrationSummary>,
    #[serde(default)]
    pub unknown: Option<super::calibrate::UnknownSummary>,
}

pub fn report(s: &ReportSettings) -> Result<HtmlWritten> {
    let run = Run::open(&s.run)?;
    let out = match &s.out {
        Some(path) => {
            refuse_overwrite(path, s.force)?;
            path.clone()
        }
        None => run.dir.join(REPORT_HTML),
    };
    let gallery = gallery(s.include.as_deref())?;
    let results: RunResults = crate::util::read_json(&run.dir.join(REPORT))?;
    let metrics = read_metrics(&run.dir.join(METRICS))?;
    let html = run_page(&run.dir, &run.config, &results, &metrics, gallery.clone())?;
    write_atomic(&out, html.as_bytes())?;
    Ok(HtmlWritten {
        path: FilePath(out),
        bytes: html.len(),
        included_images: gallery.len(),
    })
}

fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| TlError::corrupt(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// The images of `--include DIR` (any depth), captioned with their path inside it.
pub fn gallery(dir: Option<&Path>) -> Result<Vec<GalleryImage>> {
    let Some(dir) = dir else {
        return Ok(Vec::new());
    };
    if !dir.is_dir() {
        return Err(TlError::bad_path(dir, "--include: not a folder"));
    }
    let files = crate::data::expand_inputs(&[dir.to_path_buf()])?;
    Ok(files
        .into_iter()
        .map(|path| GalleryImage {
            caption: path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .display()
                .to_string(),
            path,
        })
        .collect())
}

/// The page of a training run, from its config, report and per-epoch metrics.
pub(crate) fn run_page(
    dir: &Path,
    config: &RunConfig,
    results: &RunResults,
    metrics: &[EpochMetrics],
    gallery: Vec<GalleryImage>,
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
    }
    .render()
}

/// The validation images' unknown scores as training recorded them.
fn run_histogram(u: &super::calibrate::UnknownSummary) -> (ScoreHistogram, String) {
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

fn head_fact(config: &RunConfig, results: &RunResults) -> String {
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

/// `tl eval --report FILE`: the evaluation's page, written atomically.
pub fn write_eval_page(
    e: &EvalReport,
    out: &Path,
    include: Option<&Path>,
    force: bool,
) -> Result<HtmlWritten> {
    refuse_overwrite(out, force)?;
    let gallery = gallery(include)?;
    let html = eval_page(e, gallery.clone())?;
    write_atomic(out, html.as_bytes())?;
    Ok(HtmlWritten {
        path: FilePath(out.to_path_buf()),
        bytes: html.len(),
        included_images: gallery.len(),
    })
}

/// The page of an evaluation (`tl eval --report`).
pub fn eval_page(e: &EvalReport, gallery: Vec<GalleryImage>) -> Result<String> {
    let r = &e.report;
    let facts = vec![
        ("run".to_string(), e.run.to_string()),
        ("data".into(), e.data.to_string()),
        ("split".into(), format!("{:?}", e.split).to_lowercase()),
        (
            "test-time augmentation".into(),
            format!("{:?}", e.tta).to_lowercase(),
        ),
    ];
    let classes = r
        .per_class
        .iter()
        .map(|c| ClassCount {
            class: c.class.clone(),
            train: None,
            val: Some(c.support),
        })
        .collect();
    ReportPage {
        title: format!("tl eval: {}", e.run),
        facts,
        classes,
        skipped: e
            .skipped
            .iter()
            .map(|s| (s.path.to_string(), s.reason.to_string()))
            .collect(),
        results: Some(r),
        results_on: format!("{} images evaluated", r.images),
        gallery,
        calibration: e
            .calibration
            .as_ref()
            .map(|c| (&c.before, &c.after, c.temperature)),
        unknown: e.unknown.as_ref().map(eval_histogram),
        ..Default::default()
    }
    .render()
}

/// The evaluated images' unknown scores (and `--unknown-dir`'s) against the threshold.
fn eval_histogram(u: &super::evaluate::EvalUnknown) -> (ScoreHistogram, String) {
    let other = u.other.as_ref();
    let top = u
        .scores
        .iter()
        .chain(other.iter().flat_map(|o| o.scores.iter()))
        .fold(0.0f32, |a, &b| a.max(b)) as f64;
    let max = (top * 1.05).max(u.threshold * 1.5).clamp(1e-3, 2.0);
    let bins = |scores: &[f32]| crate::eval::calibration::histogram(scores, 0.0, max, 30);
    let mut sentence = format!(
        "{:.1}% of the evaluated images are answered unknown (threshold {:.4})",
        100.0 * u.rejected_share,
        u.threshold
    );
    if let Some(o) = other {
        sentence += &format!(
            "; {:.1}% of the {} images in {}{}",
            100.0 * o.rejected_share,
            o.images,
            o.dir,
            o.auroc
                .map(|a| format!(" (AUROC {a:.4})"))
                .unwrap_or_default()
        );
    }
    let histogram = ScoreHistogram {
        max,
        threshold: u.threshold,
        known: bins(&u.scores),
        known_label: "evaluated images".into(),
        other: other.map(|o| (bins(&o.scores), format!("{}", o.dir))),
    };
    (histogram, sentence + ".")
}
