//! `tl report` and the HTML pages of `tl train` (report.html in the run folder) and
//! `tl eval --report`: the run's files (or an evaluation) as a `ReportPage`.
use super::evaluate::EvalReport;
use super::train::{page::run_page, TrainReport};
use crate::error::{Result, TlError};
use crate::eval::{ClassCount, Report};
use crate::head::EpochMetrics;
use crate::html::charts::ScoreHistogram;
use crate::html::{GalleryImage, HeatPair, ReportPage};
use crate::run::{Run, METRICS, REPORT, REPORT_HTML};
use crate::util::{refuse_overwrite, write_atomic, FilePath};
use serde::Serialize;
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
    let results: TrainReport = crate::util::read_json(&run.dir.join(REPORT))?;
    let metrics = read_metrics(&run.dir.join(METRICS))?;
    let losses = results.validation.as_ref().map(|v| v.top_losses.as_slice());
    let heat = super::explain::loss_maps(&run, losses.unwrap_or_default(), tch::Device::Cpu)
        .unwrap_or_default();
    let html = run_page(
        &run.dir,
        &run.config,
        &results,
        &metrics,
        gallery.clone(),
        heat,
    )?;
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

/// `tl eval --report FILE`: the evaluation's page, written atomically.
pub fn write_eval_page(
    e: &EvalReport,
    out: &Path,
    include: Option<&Path>,
    force: bool,
) -> Result<HtmlWritten> {
    refuse_overwrite(out, force)?;
    let gallery = gallery(include)?;
    let heat = loss_maps_or_none(&e.run, &e.report.top_losses);
    let html = eval_page(e, gallery.clone(), heat)?;
    write_atomic(out, html.as_bytes())?;
    Ok(HtmlWritten {
        path: FilePath(out.to_path_buf()),
        bytes: html.len(),
        included_images: gallery.len(),
    })
}

/// Heat maps of an evaluation's worst images through its run (none if the run cannot be
/// opened or mapped: the page is made without them).
fn loss_maps_or_none(
    run: &Path,
    losses: &[crate::eval::metrics::TopLoss],
) -> Vec<Option<HeatPair>> {
    Run::open(run)
        .and_then(|r| super::explain::loss_maps(&r, losses, tch::Device::Cpu))
        .unwrap_or_default()
}

/// The page of an evaluation (`tl eval --report`).
pub fn eval_page(
    e: &EvalReport,
    gallery: Vec<GalleryImage>,
    heat: Vec<Option<HeatPair>>,
) -> Result<String> {
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
        heat,
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
