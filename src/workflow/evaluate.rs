//! `tl eval`: a trained run on a labelled folder — every image, or exactly the training or
//! validation files the run recorded (found again by content, so a renamed file still
//! counts and an added one does not slip into the validation set).
use super::{gather, skipped_notes, SkippedFile};
use crate::data::{Dataset, Sample, View};
use crate::error::{Result, TlError};
use crate::eval::calibration::{auroc, Calibration};
use crate::eval::{ClassificationReport, Report};
use crate::features::split::{CachedRows, TrainableTop};
use crate::features::{self, BackboneSpec, CacheSettings, ExtractOptions, ExtractStats};
use crate::head::{Head, UnknownJudge};
use crate::run::{Run, SplitMatch};
use crate::runtime::Runtime;
use crate::util::FilePath;
use serde::Serialize;
use std::path::PathBuf;
use tch::Tensor;

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
    pub tta: Tta,
    /// Images unlike the run's classes (any folder, searched recursively): how many of
    /// them the run answers `unknown`, and the AUROC against the evaluated images.
    pub unknown_dir: Option<PathBuf>,
    /// Judge unknown at this share of the run's validation images (None: the run's own).
    pub accept: Option<f64>,
}

/// Test-time augmentation: average the class probabilities of several views of each image.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tta {
    None,
    /// The image and its mirror image.
    Flip,
}

impl Tta {
    pub fn views(self) -> Vec<View> {
        match self {
            Tta::None => vec![View::Center],
            Tta::Flip => vec![View::Center, View::Flip],
        }
    }
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
        return Err(nothing_selected(&run, s));
    }
    let paths: Vec<PathBuf> = samples.iter().map(|x| x.path.clone()).collect();
    if let Some(a) = s.accept {
        crate::head::unknown::check_accept(a)?;
    }
    let net = EvalNet::load(&run, spec, rt, s.accept)?;
    if net.judge.is_none() && s.unknown_dir.is_some() {
        return Err(TlError::file(
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
        return Err(TlError::file(&s.data, "no readable images to evaluate"));
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
        (Some(dir), EvalSplit::Val) => format!(
            "; the run's validation images came from {}: evaluate that folder",
            dir
        ),
        _ => String::new(),
    };
    TlError::file(
        &s.data,
        format!("none of the run's images of that split are in this folder{hint}"),
    )
}

/// Per image: a flat row of numbers, or why it could not be used.
type Rows = Vec<std::result::Result<Vec<f32>, String>>;

/// Per image, summed over the views: probabilities at T = 1, then at the run's T; then the
/// plain view's unknown score (as the threshold was set); and the plain view's extraction
/// figures.
fn summed_views(
    rt: &Runtime,
    s: &EvalSettings,
    net: &EvalNet,
    paths: &[PathBuf],
    warnings: &mut Vec<String>,
) -> Result<(Rows, ExtractStats)> {
    let temperature = net.head().temperature();
    let mut per_image: Rows = Vec::new();
    let mut stats = ExtractStats::default();
    for view in s.tta.views() {
        let (outs, st) = view_outputs(rt, s, net, paths, view, warnings)?;
        let first = per_image.is_empty();
        let outs: Vec<_> = outs
            .into_iter()
            .map(|r| {
                r.map(|o| {
                    let mut row = o.flat(temperature);
                    if !first {
                        // Only the first (plain) view's score counts.
                        if let Some(score) = row.last_mut() {
                            *score = 0.0;
                        }
                    }
                    row
                })
            })
            .collect();
        if view == View::Center {
            stats = st;
        }
        per_image = if per_image.is_empty() {
            outs
        } else {
            per_image
                .into_iter()
                .zip(outs)
                .map(|(a, b)| add(a, b))
                .collect()
        };
    }
    Ok((per_image, stats))
}

/// The sum of two views' outputs (an image is usable only if both are).
fn add(
    a: std::result::Result<Vec<f32>, String>,
    b: std::result::Result<Vec<f32>, String>,
) -> std::result::Result<Vec<f32>, String> {
    let (a, b) = (a?, b?);
    Ok(a.iter().zip(&b).map(|(x, y)| x + y).collect())
}

fn mean(sum: &[f32], n: f32) -> Vec<f32> {
    sum.iter().map(|v| v / n).collect()
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
        return Err(TlError::file(dir, "no readable image to judge"));
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

/// A run's network, split the way its cache is: what is extracted (and cached), then what
/// runs on the extracted rows.
struct EvalNet {
    kind: NetKind,
    head: Head,
    /// The run's unknown judge and threshold (None: run made before it).
    judge: Option<(UnknownJudge, f64)>,
}

enum NetKind {
    /// Frozen backbone features (cached), then the head.
    Frozen { spec: BackboneSpec },
    /// Cached trunk outputs, then the fine-tuned top and the head.
    Trunk {
        trunk: BackboneSpec,
        top: TrainableTop,
    },
    /// Everything fine-tuned: images straight into the top.
    All {
        top: TrainableTop,
        preprocess: crate::data::PreprocessConfig,
    },
}

/// One image's outputs for one view.
struct ImageOutput {
    logits: Vec<f32>,
    score: f32,
}

impl ImageOutput {
    /// Probabilities at T = 1 and at `temperature`, then the score: one flat row.
    fn flat(&self, temperature: f64) -> Vec<f32> {
        let softmax = |t: f32| {
            let m = self
                .logits
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = self.logits.iter().map(|z| ((z - m) / t).exp()).collect();
            let sum: f32 = e.iter().sum();
            e.into_iter().map(move |v| v / sum)
        };
        softmax(1.0)
            .chain(softmax(temperature as f32))
            .chain(std::iter::once(self.score))
            .collect()
    }
}

impl EvalNet {
    /// The run's network; a frozen backbone on the runtime's engine.
    fn load(run: &Run, spec: BackboneSpec, rt: &Runtime, accept: Option<f64>) -> Result<EvalNet> {
        let device = rt.device;
        let head = run.load_head(device)?;
        let judge = run.load_judge(accept, device)?;
        let kind = match run.split_spec()? {
            None => NetKind::Frozen {
                spec: run.on_engine(spec, rt.engine, device)?,
            },
            Some(split) => {
                let top = run.load_top(&split, device)?;
                match split.trunk {
                    Some(trunk) => NetKind::Trunk { trunk, top },
                    None => NetKind::All {
                        top,
                        preprocess: run.config.preprocess,
                    },
                }
            }
        };
        Ok(EvalNet { kind, head, judge })
    }

    fn head(&self) -> &Head {
        &self.head
    }

    /// Logits and unknown scores (0 without a judge) of the head's input features.
    fn outputs(&self, features: &Tensor) -> Result<Vec<ImageOutput>> {
        let logits = crate::util::tensors::rows(&tch::no_grad(|| self.head.forward(features)))?;
        let scores = match &self.judge {
            Some((judge, _)) => judge.scores(features)?,
            None => vec![0.0; logits.len()],
        };
        Ok(logits
            .into_iter()
            .zip(scores)
            .map(|(logits, score)| ImageOutput { logits, score })
            .collect())
    }
}

/// Per image: its outputs, or why it could not be used.
type PerImage = Vec<std::result::Result<ImageOutput, String>>;

/// Outputs of one view of every image (or why an image could not be used).
fn view_outputs(
    rt: &Runtime,
    s: &EvalSettings,
    net: &EvalNet,
    paths: &[PathBuf],
    view: View,
    warnings: &mut Vec<String>,
) -> Result<(PerImage, ExtractStats)> {
    let (spec, top) = match &net.kind {
        NetKind::Frozen { spec } => (spec, None),
        NetKind::Trunk { trunk, top } => (trunk, Some(top)),
        NetKind::All { top, preprocess } => {
            return Ok((
                decoded_outputs(s, top, net, preprocess, paths, view, rt.device)?,
                ExtractStats::default(),
            ))
        }
    };
    let cache = s.cache.open_view(spec, view)?;
    let opts = ExtractOptions::new(rt, spec, s.batch_size, false, view);
    let ex = features::extract(paths, spec, &cache, &opts)?;
    if let Some(w) = &ex.cache_warning {
        if !warnings.contains(w) {
            warnings.push(w.clone());
        }
    }
    let ok: Vec<usize> = (0..paths.len())
        .filter(|&i| ex.features[i].is_ok())
        .collect();
    let mut flat = Vec::with_capacity(ok.len() * ex.dim);
    for &i in &ok {
        if let Ok(v) = &ex.features[i] {
            flat.extend_from_slice(v);
        }
    }
    let x = super::tensor_2d(&flat, ok.len(), ex.dim, rt.device);
    let x = match top {
        Some(top) => top.features_of(&CachedRows(x), s.batch_size.max(64))?,
        None => x,
    };
    let outputs = net.outputs(&x)?;
    let mut out: PerImage = ex
        .features
        .iter()
        .map(|r| match r {
            Ok(_) => Err(String::new()),
            Err(why) => Err(why.clone()),
        })
        .collect();
    for (&i, o) in ok.iter().zip(outputs) {
        out[i] = Ok(o);
    }
    Ok((out, ex.stats))
}

/// Outputs with every block fine-tuned: nothing is cached, images are decoded per batch.
fn decoded_outputs(
    s: &EvalSettings,
    top: &TrainableTop,
    net: &EvalNet,
    preprocess: &crate::data::PreprocessConfig,
    paths: &[PathBuf],
    view: View,
    device: tch::Device,
) -> Result<PerImage> {
    let mut out: PerImage = (0..paths.len()).map(|_| Err(String::new())).collect();
    for (c, chunk) in paths.chunks(s.batch_size.max(1)).enumerate() {
        let batch = features::extract::decode_files(chunk, preprocess, view);
        for (i, why) in &batch.failures {
            out[c * s.batch_size + i] = Err(why.clone());
        }
        if batch.indices.is_empty() {
            continue;
        }
        let x = batch.tensor(preprocess).to_device(device);
        let features = tch::no_grad(|| top.forward(&x))?;
        for (o, &i) in net.outputs(&features)?.into_iter().zip(&batch.indices) {
            out[c * s.batch_size + i] = Ok(o);
        }
    }
    Ok(out)
}
