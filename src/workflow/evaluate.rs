//! `tl eval`: a trained run on a labelled folder — every image, or exactly the training or
//! validation files the run recorded (found again by content, so a renamed file still
//! counts and an added one does not slip into the validation set).
use super::{gather, skipped_notes, tensor_2d, SkippedFile};
use crate::data::{Dataset, Sample};
use crate::error::{Result, TlError};
use crate::eval::{ClassificationReport, Report};
use crate::features::{self, CacheSettings, ExtractOptions, ExtractStats};
use crate::run::{Run, SplitMatch};
use crate::runtime::Runtime;
use crate::util::FilePath;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalSplit {
    /// Every image in the folder.
    All,
    /// The run's validation images.
    Val,
    /// The run's training images.
    Train,
}

#[derive(Clone, Debug)]
pub struct EvalSettings {
    pub run: PathBuf,
    pub data: PathBuf,
    pub split: EvalSplit,
    pub top_losses: usize,
    pub batch_size: usize,
    pub cache: CacheSettings,
}

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
    pub split: EvalSplit,
    pub report: ClassificationReport,
    pub skipped: Vec<SkippedFile>,
    pub extraction: ExtractStats,
    pub split_check: Option<SplitCheck>,
    pub warnings: Vec<String>,
}

impl Report for EvalReport {
    fn render_text(&self) -> String {
        self.report.render()
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
    split: EvalSplit,
    warnings: &mut Vec<String>,
) -> Result<(Vec<Sample>, Option<SplitCheck>)> {
    let all = dataset.all();
    if split == EvalSplit::All {
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
        EvalSplit::Val => (m.val, m.missing_val),
        _ => (m.train, m.missing_train),
    };
    let check = SplitCheck {
        found: chosen.len(),
        missing,
        new: m.new.iter().map(|&i| FilePath(paths[i].clone())).collect(),
    };
    let side = if split == EvalSplit::Val {
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
    split: EvalSplit,
    warnings: &mut Vec<String>,
) -> Result<Vec<Sample>> {
    let mut dataset = dataset.clone();
    if dataset.val.is_empty() {
        let frac = run.config.data.val_split.ok_or_else(|| {
            TlError::file(
                &run.dir,
                "this run records no split (made by an older tl); evaluate every image instead (--split all)",
            )
        })?;
        dataset.split(frac, run.config.seed)?;
    }
    warnings.push(
        "this run has no split.json (made by an older tl): the split was drawn again from the folder, which is only right if no file was added or removed".into(),
    );
    Ok(if split == EvalSplit::Val {
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
        let hint = match (&run.config.data.val_dir, s.split) {
            (Some(dir), EvalSplit::Val) => format!(
                "; the run's validation images came from {}: evaluate that folder",
                dir
            ),
            _ => String::new(),
        };
        return Err(TlError::file(
            &s.data,
            format!("none of the run's images of that split are in this folder{hint}"),
        ));
    }
    let cache = s.cache.open(&spec)?;
    let paths: Vec<PathBuf> = samples.iter().map(|x| x.path.clone()).collect();
    let opts = ExtractOptions {
        batch_size: s.batch_size,
        decode_threads: rt.decode_threads,
        device: rt.device,
        progress: rt.progress,
        amp: false,
    };
    let ex = features::extract(&paths, &spec, &cache, &opts)?;
    warnings.extend(ex.cache_warning.clone());
    let g = gather(&samples, &ex.features);
    if g.y.is_empty() {
        return Err(TlError::file(&s.data, "no readable images to evaluate"));
    }
    let head = run.load_head(rt.device)?;
    let x = tensor_2d(&g.x, g.y.len(), ex.dim, rt.device);
    let probs = crate::util::tensors::rows(&tch::no_grad(|| {
        head.forward(&x).softmax(-1, tch::Kind::Float)
    }))?;
    let labels: Vec<usize> = g.y.iter().map(|&y| y as usize).collect();
    let report =
        ClassificationReport::compute(&probs, &labels, &g.paths, &run.classes, s.top_losses);
    Ok(EvalReport {
        run: FilePath(s.run.clone()),
        data: FilePath(s.data.clone()),
        split: s.split,
        report,
        skipped: g.skipped,
        extraction: ex.stats,
        split_check,
        warnings,
    })
}
