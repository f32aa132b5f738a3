//! `tl eval`: a trained run on a labelled folder — every image, or exactly the training or
//! validation files the run recorded (found again by content, so a renamed file still
//! counts and an added one does not slip into the validation set).
use super::{gather, skipped_notes, SkippedFile};
use net::{mean, summed_views, view_outputs, EvalNet};
pub use settings::{EvalImages, EvalSettings, Tta};

mod net;
mod settings;

use crate::data::{Dataset, Sample, View};
use crate::error::{Result, TlError};
use crate::eval::calibration::{auroc, Calibration};
use crate::eval::{ClassificationReport, Report};
use crate::features::{self, ExtractStats};
use crate::run::{Run, SplitMatch};
use crate::runtime::Runtime;
use crate::util::FilePath;
use serde::Serialize;
use std::path::PathBuf;

/// How the folder compared with the run's recorded split.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SplitCheck {
    /// Images of the chosen side found in the folder.
    pub found: usize,
    /// Recorded images of the chosen side not found (removed or edited).
    pub missing: Vec<FilePath>,
    /// Images in the folder that are in neither recorded list (left out).
    pub new: Vec<FilePath>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub run: FilePath,
    pub data: FilePath,
    pub split: EvalImages,
    pub tta: Tta,
    pub report: ClassificationReport,
    pub skipped: Vec<SkippedFile>,
    pub extraction: ExtractStats,
    pub split_check: Option<SplitCheck>,
    /// The probabilities before and after the run's temperature (None: run made before it).
    pub calibration: Option<EvalCalibration>,
    /// How many images the run answers `unknown` (None: run made before it).
    pub unknown: Option<EvalUnknown>,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalCalibration {
    pub temperature: f64,
    pub before: Calibration,
    pub after: Calibration,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalUnknown {
    pub threshold: f64,
    /// Evaluated images answered `unknown`, and the share.
    pub rejected: usize,
    pub rejected_share: f64,
    /// Accuracy on the images accepted as known.
    pub accepted_accuracy: Option<f64>,
    /// Unknown scores of the evaluated images (for the page's histogram).
    pub scores: Vec<f32>,
    /// With `--unknown-dir`.
    pub other: Option<OtherImages>,
}

/// The `--unknown-dir` images.
#[derive(Clone, Debug, Serialize)]
pub struct OtherImages {
    pub dir: FilePath,
    pub images: usize,
    pub rejected: usize,
    pub rejected_share: f64,
    /// Of the unknown score as a detector of these images against the evaluated ones.
    pub auroc: Option<f64>,
    pub scores: Vec<f32>,
    pub skipped: Vec<SkippedFile>,
}

impl Report for EvalReport {
    fn render_text(&self) -> String {
        let mut text = self.report.render();
        if let Some(c) = &self.calibration {
            text += &format!(
                "calibration (temperature {:.3}): ECE {:.4} -> {:.4}, NLL {:.4} -> {:.4}, Brier {:.4} -> {:.4}\n",
                c.temperature, c.before.ece, c.after.ece, c.before.nll, c.after.nll, c.before.brier, c.after.brier
            );
        }
        if let Some(u) = &self.unknown {
            text += &format!(
                "unknown: {} of {} images ({:.1}%) above distance {:.4}{}\n",
                u.rejected,
                self.report.images,
                100.0 * u.rejected_share,
                u.threshold,
                u.accepted_accuracy
                    .map(|a| format!("; accuracy on the accepted ones {:.2}%", 100.0 * a))
                    .unwrap_or_default()
            );
            if let Some(o) = &u.other {
                text += &format!(
                    "unknown images in {}: {} of {} ({:.1}%) answered unknown{}\n",
                    o.dir,
                    o.rejected,
                    o.images,
                    100.0 * o.rejected_share,
                    o.auroc
                        .map(|a| format!(", AUROC {a:.4} against the evaluated images"))
                        .unwrap_or_default()
                );
            }
        }
        text
    }
    fn notes(&self) -> Vec<String> {
        let mut notes = crate::eval::warning_lines(&self.warnings);
        notes.extend(skipped_notes(&self.skipped, 0));
        notes
    }
}

/// The images of the chosen side, and how the folder matched the record.
fn select(
    run: &Run,
    dataset: &Dataset,
    split: EvalImages,
    warnings: &mut Vec<String>,
) -> Result<(Vec<Sample>, Option<SplitCheck>)> {
    let all = dataset.all();
    if split == EvalImages::All {
        return Ok((all, None));
    }
    let Some(record) = run.split()? else {
        return legacy_split(run, dataset, split, warnings).map(|s| (s, None));
    };
    let paths: Vec<PathBuf> = all.iter().map(|s| s.path.clone()).collect();
    let keys = features::cache::file_keys(&paths);
    let files: Vec<(PathBuf, Option<String>)> = paths
        .iter()
        .cloned()
        .zip(keys.into_iter().map(|k| k.ok()))
        .collect();
    let m: SplitMatch = record.locate(&dataset.root, &files);
    let (chosen, missing) = match split {
        EvalImages::Val => (m.val, m.missing_val),
        _ => (m.train, m.missing_train),
    };
    let check = SplitCheck {
        found: chosen.len(),
        missing,
        new: m.new.iter().map(|&i| FilePath(paths[i].clone())).collect(),
    };
    let side = if split == EvalImages::Val {
        "validation"
    } else {
        "training"
    };
    if !check.missing.is_empty() {
        warnings.push(format!(
            "{} of the run's {side} images are not in {} (removed or edited since training), e.g. {}",
            check.missing.len(),
            dataset.root.display(),
            check.missing[0]
        ));
    }
    if !check.new.is_empty() {
        warnings.push(format!(
            "{} image(s) in the folder were in neither the training nor the validation set of the run (added since training) and are left out, e.g. {}",
            check.new.len(),
            check.new[0]
        ));
    }
    Ok((
        chosen.into_iter().map(|i| all[i].clone()).collect(),
        Some(check),
    ))
}

/// Runs made before split.json existed: draw the split again from the recorded fraction.
fn legacy_split(
    run: &Run,
    dataset: &Dataset,
    split: EvalImages,
    warnings: &mut Vec<String>,
) -> Result<Vec<Sample>> {
    let mut dataset = dataset.clone();
    if dataset.val.is_empty() {
        let frac = run.config.data.val_split.ok_or_else(|| {
            TlError::corrupt(
                &run.dir,
                "this run records no split (made by an older tl); evaluate every image instead (--split all)",
            )
        })?;
        dataset.split(frac, run.config.seed)?;
    }
    warnings.push(
        "this run has no split.json (made by an older tl): the split was drawn again from the folder, which is only right if no file was added or removed".into(),
    );
    Ok(if split == EvalImages::Val {
        dataset.val
    } else {
        dataset.train
    })
}

pub fn evaluate(rt: &Runtime, s: &EvalSettings) -> Result<EvalReport> {
    let run = Run::open(&s.run)?;
    let spec = run.backbone()?;
    let dataset = Dataset::open(&s.data, Some(&run.classes))?;
    let mut warnings = Vec::new();
    let (samples, split_check) = select(&run, &dataset, s.split, &mut warnings)?;
    if samples.is_empty() {
        return Err(nothing_selected(&run, s));
    }
    let paths: Vec<PathBuf> = samples.iter().map(|x| x.path.clone()).collect();
    if let Some(a) = s.accept {
        crate::head::unknown::check_accept(a)?;
    }
    let net = EvalNet::load(&run, spec, rt, s.accept)?;
    if net.judge.is_none() && s.unknown_dir.is_some() {
        return Err(TlError::corrupt(
            &s.run,
            "this run has no unknown judge (trained before tl had one); re-train to use --unknown-dir",
        ));
    }
    let c = run.classes.len();
    let temperature = net.head().temperature();
    let views = s.tta.views();
    let (per_image, stats) = summed_views(rt, s, &net, &paths, &mut warnings)?;
    let g = gather(&samples, &per_image);
    if g.y.is_empty() {
        return Err(TlError::bad_path(&s.data, "no readable images to evaluate"));
    }
    let n_views = views.len() as f32;
    let rows: Vec<&[f32]> = g.x.chunks(2 * c + 1).collect();
    let raw: Vec<Vec<f32>> = rows.iter().map(|r| mean(&r[..c], n_views)).collect();
    let probs: Vec<Vec<f32>> = rows.iter().map(|r| mean(&r[c..2 * c], n_views)).collect();
    let labels: Vec<usize> = g.y.iter().map(|&y| y as usize).collect();
    let report =
        ClassificationReport::compute(&probs, &labels, &g.paths, &run.classes, s.top_losses);
    let calibration = run.config.calibration.as_ref().map(|_| EvalCalibration {
        temperature,
        before: Calibration::measure(&raw, &labels),
        after: Calibration::measure(&probs, &labels),
    });
    let unknown = match &net.judge {
        Some((_, threshold)) => {
            let scores = rows.iter().map(|r| r[2 * c]).collect();
            let judged = Judged {
                threshold: *threshold,
                scores,
                probs: &probs,
                labels: &labels,
            };
            Some(unknown_summary(rt, s, &net, judged, &mut warnings)?)
        }
        None => None,
    };
    Ok(EvalReport {
        run: FilePath(s.run.clone()),
        data: FilePath(s.data.clone()),
        split: s.split,
        tta: s.tta,
        report,
        skipped: g.skipped,
        extraction: stats,
        split_check,
        calibration,
        unknown,
        warnings,
    })
}

fn nothing_selected(run: &Run, s: &EvalSettings) -> TlError {
    let hint = match (&run.config.data.val_dir, s.split) {
        (Some(dir), EvalImages::Val) => format!(
            "; the run's validation images came from {}: evaluate that folder",
            dir
        ),
        _ => String::new(),
    };
    TlError::corrupt(
        &s.data,
        format!("none of the run's images of that split are in this folder{hint}"),
    )
}

/// The evaluated images' unknown scores against the threshold.
struct Judged<'a> {
    threshold: f64,
    scores: Vec<f32>,
    probs: &'a [Vec<f32>],
    labels: &'a [usize],
}

fn unknown_summary(
    rt: &Runtime,
    s: &EvalSettings,
    net: &EvalNet,
    judged: Judged,
    warnings: &mut Vec<String>,
) -> Result<EvalUnknown> {
    let Judged {
        threshold,
        scores,
        probs,
        labels,
    } = judged;
    let accepted: Vec<usize> = (0..scores.len())
        .filter(|&i| scores[i] as f64 <= threshold)
        .collect();
    let right = accepted
        .iter()
        .filter(|&&i| crate::eval::argmax(&probs[i]) == labels[i])
        .count();
    let rejected = scores.len() - accepted.len();
    let other = match &s.unknown_dir {
        Some(dir) => Some(other_images(rt, s, net, dir, threshold, &scores, warnings)?),
        None => None,
    };
    Ok(EvalUnknown {
        threshold,
        rejected,
        rejected_share: rejected as f64 / scores.len().max(1) as f64,
        accepted_accuracy: (!accepted.is_empty()).then(|| right as f64 / accepted.len() as f64),
        scores,
        other,
    })
}

/// The `--unknown-dir` images through the run: how many are answered unknown.
fn other_images(
    rt: &Runtime,
    s: &EvalSettings,
    net: &EvalNet,
    dir: &std::path::Path,
    threshold: f64,
    known: &[f32],
    warnings: &mut Vec<String>,
) -> Result<OtherImages> {
    let files = crate::data::expand_inputs(&[dir.to_path_buf()])?;
    let (outs, _) = view_outputs(rt, s, net, &files, View::Center, warnings)?;
    let mut scores = Vec::new();
    let mut skipped = Vec::new();
    for (path, o) in files.iter().zip(outs) {
        match o {
            Ok(o) => scores.push(o.score),
            Err(reason) => skipped.push(SkippedFile {
                path: FilePath(path.clone()),
                reason,
            }),
        }
    }
    if scores.is_empty() {
        return Err(TlError::bad_path(dir, "no readable image to judge"));
    }
    let rejected = scores.iter().filter(|&&v| v as f64 > threshold).count();
    Ok(OtherImages {
        dir: FilePath(dir.to_path_buf()),
        images: scores.len(),
        rejected,
        rejected_share: rejected as f64 / scores.len() as f64,
        auroc: auroc(known, &scores),
        scores,
        skipped,
    })
}
