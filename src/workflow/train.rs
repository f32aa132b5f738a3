//! `tl train`: dataset → features (cached) → head → evaluation → run folder, one function
//! per step.
pub use super::calibrate::{CalibrationSummary, UnknownSettings, UnknownSummary};
pub use super::finetune::{FinetuneSettings, FinetuneSummary};
use super::{gather, skipped_notes, tensor_2d, FeatureSet, Gathered, SkippedFile, Streamed};
use crate::data::View;
use crate::data::{Dataset, IgnoredFile, Sample};
use crate::error::{Result, TlError};
use crate::eval::{ClassCount, ClassificationReport, Report};
use crate::features::split::{CachedRows, SplitSpec, TrainableTop};
use crate::features::{
    self, BackboneSpec, CacheSettings, ExtractOptions, ExtractStats, Extracted, FeatureCache,
};
use crate::head::{
    self, train::evaluate, Head, HeadConfig, Rows, Split, StreamedRows, TrainConfig, TrainOutcome,
};
use crate::run::{self, BackboneRecord, DataRecord, ExtractRecord, RunConfig, SplitRecord};
use crate::runtime::Runtime;
use crate::util::{human_duration, refuse_overwrite, FilePath};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Tensor};

/// The L2 penalty of the head: `Auto` is 1/(training images), scikit-learn's C=1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum L2 {
    Auto,
    Fixed(f64),
}

/// How the validation images are chosen when the layout does not say.
#[derive(Clone, Debug, PartialEq)]
pub enum ValidationChoice {
    /// A stratified fraction drawn with the seed.
    Fraction(f64),
    /// Another class-per-folder dataset with the same classes.
    Folder(PathBuf),
}

#[derive(Clone, Debug)]
pub struct TrainSettings {
    pub data: PathBuf,
    pub backbone: String,
    pub validation: ValidationChoice,
    pub seed: u64,
    pub hidden: i64,
    pub dropout: f64,
    pub standardize: bool,
    /// Head training; its `l2` and `seed` are replaced by `l2` and `seed` above.
    pub training: TrainConfig,
    pub l2: L2,
    /// Feature-extraction batch size.
    pub batch_size: usize,
    pub amp: bool,
    /// None: `runs/<timestamp>-<backbone>`.
    pub out: Option<PathBuf>,
    pub force: bool,
    pub save_features: Option<PathBuf>,
    pub cache: CacheSettings,
    /// Keep classes that have no readable image (otherwise an error).
    pub allow_empty_classes: bool,
    /// Views per training image: the eval transform plus `views - 1` seeded augmented ones.
    pub views: usize,
    /// Fine-tune the top of the backbone after the head (None: the head only).
    pub finetune: Option<FinetuneSettings>,
    /// Train the head on rows read from the feature cache a mini-batch at a time instead of
    /// holding every feature in memory (for datasets whose features do not fit).
    pub stream: bool,
    /// The "unknown" judge's acceptance on the validation images.
    pub unknown: UnknownSettings,
    /// A review file from `tl audit --review`: its decisions (exclude, relabel) applied.
    pub review: Option<PathBuf>,
}

impl TrainSettings {
    /// Everything that can be checked before any image is read.
    pub fn validate(&self) -> Result<()> {
        let mut training = self.training.clone();
        training.l2 = match self.l2 {
            L2::Auto => 0.0,
            L2::Fixed(v) => v,
        };
        training.validate()?;
        crate::head::unknown::check_accept(self.unknown.accept)?;
        if let ValidationChoice::Fraction(f) = self.validation {
            if !(f > 0.0 && f < 1.0) {
                return Err(TlError::invalid(format!(
                    "the validation fraction must be in (0, 1), got {f}"
                )));
            }
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(TlError::invalid(format!(
                "dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        if self.views == 0 || self.views > 64 {
            return Err(TlError::invalid(format!(
                "--views {} must be between 1 and 64",
                self.views
            )));
        }
        if let Some(f) = &self.finetune {
            self.finetune_config(f, 1.0).validate()?;
        }
        if self.stream {
            self.check_streamable()?;
        }
        if self.hidden < 0 || self.batch_size == 0 {
            return Err(TlError::invalid(
                "the hidden width must be >= 0 and the batch size >= 1",
            ));
        }
        if let Some(out) = &self.out {
            run::check_destination(out, self.force)?;
        }
        if let Some(path) = &self.save_features {
            refuse_overwrite(path, self.force)?;
            if path.is_dir() {
                return Err(TlError::file(
                    path,
                    "is a folder; give a file name (e.g. features.safetensors)",
                ));
            }
        }
        Ok(())
    }

    /// `--stream` reads the features from the cache: it needs the cache, and the steps that
    /// want every feature in memory are refused.
    fn check_streamable(&self) -> Result<()> {
        let clash = if !self.cache.enabled {
            Some("--no-cache")
        } else if self.finetune.is_some() {
            Some("--finetune")
        } else if self.views > 1 {
            Some("--views above 1")
        } else if self.save_features.is_some() {
            Some("--save-features")
        } else {
            None
        };
        match clash {
            Some(flag) => Err(TlError::invalid(format!(
                "--stream trains from the feature cache and cannot be combined with {flag}"
            ))),
            None => Ok(()),
        }
    }
}

impl TrainSettings {
    /// The fine-tuning stage's configuration (`l2` as the head's).
    pub(super) fn finetune_config(&self, f: &FinetuneSettings, l2: f64) -> head::FinetuneConfig {
        head::FinetuneConfig {
            epochs: f.epochs,
            batch_size: f.batch_size,
            lr: f.lr.unwrap_or(self.training.lr / 100.0),
            label_smoothing: self.training.label_smoothing,
            l2,
            patience: f.patience,
            seed: self.seed,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
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

/// What `tl train` did; also the run's report.json.
#[derive(Clone, Debug, Serialize)]
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
    /// What the review file changed (files excluded, relabelled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<crate::data::review::Applied>,
}

impl TrainReport {
    /// The epoch figures of a finished training (the rest is filled in by the caller).
    fn from_outcome(outcome: &TrainOutcome, train_accuracy: f64) -> TrainReport {
        let best = outcome.history.get(outcome.best_epoch.saturating_sub(1));
        TrainReport {
            run: FilePath::default(),
            best_epoch: outcome.best_epoch,
            epochs_run: outcome.history.len(),
            stopped_early: outcome.stopped_early,
            train_accuracy,
            val_accuracy: best.and_then(|m| m.val_accuracy),
            val_loss: best.and_then(|m| m.val_loss),
            validation: None,
            extraction: ExtractStats::default(),
            damaged_cache_entries: Vec::new(),
            skipped: Vec::new(),
            ignored_files: Vec::new(),
            warnings: Vec::new(),
            timing_seconds: Timing {
                extract: 0.0,
                train: 0.0,
                finetune: 0.0,
                calibrate: 0.0,
                total: 0.0,
            },
            views: 1,
            finetune: None,
            classes: Vec::new(),
            calibration: None,
            unknown: None,
            review: None,
        }
    }
}

impl Report for TrainReport {
    fn render_text(&self) -> String {
        let val = match &self.validation {
            Some(r) => format!(
                ", val accuracy {:.2}% (mean per-class {:.2}%) on {} images",
                100.0 * r.accuracy,
                100.0 * r.mean_class_accuracy,
                r.images
            ),
            None => String::new(),
        };
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
        format!(
            "run: {}\nbest epoch {}/{}{}: train accuracy {:.2}%{val}\n{review}{tuned}{calibrated}{unknown}time: {} total ({} features, {} head{tune_time})\n",
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

/// The dataset with its validation side chosen.
struct Prepared {
    dataset: Dataset,
    /// The fraction drawn by `tl`, when it drew one.
    val_split: Option<f64>,
    val_dir: Option<PathBuf>,
    /// The review's decisions, applied before the split.
    review: Option<(crate::data::review::Applied, String)>,
}

/// Apply the review file's decisions to the listed files (before any split).
fn apply_review(
    s: &TrainSettings,
    dataset: &mut Dataset,
    warnings: &mut Vec<String>,
) -> Result<Option<(crate::data::review::Applied, String)>> {
    let Some(file) = &s.review else {
        return Ok(None);
    };
    let sha256 = crate::util::fs::sha256_file(file)?;
    let review = crate::data::review::Review::read(file)?;
    let applied = crate::data::review::apply(dataset, &s.data, &review, file)?;
    if !applied.not_found.is_empty() {
        let w = format!(
            "{} decided file(s) in {} are not in the dataset (moved or deleted?), e.g. {}",
            applied.not_found.len(),
            file.display(),
            applied.not_found[0]
        );
        crate::progress::say(&format!("warning: {w}"));
        warnings.push(w);
    }
    Ok(Some((applied, sha256)))
}

fn prepare_dataset(s: &TrainSettings, warnings: &mut Vec<String>) -> Result<Prepared> {
    let mut dataset = Dataset::open(&s.data, None)?;
    let (mut val_split, mut val_dir) = (None, None);
    match &s.validation {
        ValidationChoice::Folder(dir) => {
            let val = Dataset::open(dir, Some(&dataset.classes))?;
            dataset.train.extend(std::mem::take(&mut dataset.val));
            dataset.val = val.all();
            dataset.ignored.extend(val.ignored);
            val_dir = Some(dir.clone());
        }
        ValidationChoice::Fraction(_) => {}
    }
    let review = apply_review(s, &mut dataset, warnings)?;
    match &s.validation {
        ValidationChoice::Fraction(f) if dataset.val.is_empty() => {
            dataset.split(*f, s.seed)?;
            val_split = Some(*f);
        }
        _ => {}
    }
    let n_classes = dataset.classes.len();
    if n_classes < 2 {
        return Err(TlError::file(
            &s.data,
            format!(
                "found {n_classes} class ({}) in {}; a classifier needs at least 2 (pass the folder that holds one folder per class)",
                dataset.classes.join(", "),
                dataset.root.display()
            ),
        ));
    }
    check_empty_classes(
        &s.data,
        &dataset.empty_classes(),
        "no image files",
        s.allow_empty_classes,
        warnings,
    )?;
    crate::progress::say(&format!(
        "dataset {} ({:?}): {} classes, {} train / {} val images",
        s.data.display(),
        dataset.layout,
        dataset.classes.len(),
        dataset.train.len(),
        dataset.val.len()
    ));
    Ok(Prepared {
        dataset,
        val_split,
        val_dir,
        review,
    })
}

fn check_empty_classes(
    data: &Path,
    empty: &[String],
    what: &str,
    allow: bool,
    warnings: &mut Vec<String>,
) -> Result<()> {
    if empty.is_empty() {
        return Ok(());
    }
    let msg = format!("class(es) with {what}: {}", empty.join(", "));
    if allow {
        let warning = format!("{msg} (kept: --allow-empty-classes)");
        crate::progress::say(&format!("warning: {warning}"));
        warnings.push(warning);
        Ok(())
    } else {
        Err(TlError::file(
            data,
            format!("{msg}; add images, remove the folder, or pass --allow-empty-classes"),
        ))
    }
}

fn feature_tensors(
    dataset: &Dataset,
    ex: &Extracted,
    extra: &[Extracted],
    device: Device,
) -> FeatureSet {
    let n_train = dataset.train.len();
    let mut train = gather(&dataset.train, &ex.features[..n_train]);
    let mut val = gather(&dataset.val, &ex.features[n_train..]);
    let d = ex.dim;
    let mut xs = std::mem::take(&mut train.x);
    let mut ys = train.y.clone();
    let mut train_rows: Vec<(PathBuf, View)> = train
        .paths
        .iter()
        .map(|p| (p.clone(), View::Center))
        .collect();
    for (view, ex) in View::training(extra.len() + 1)
        .into_iter()
        .skip(1)
        .zip(extra)
    {
        let g = gather(&dataset.train, &ex.features);
        xs.extend_from_slice(&g.x);
        ys.extend_from_slice(&g.y);
        train_rows.extend(g.paths.into_iter().map(|p| (p, view)));
    }
    let val_x = tensor_2d(&std::mem::take(&mut val.x), val.y.len(), d, device);
    FeatureSet {
        train_x: tensor_2d(&xs, ys.len(), d, device),
        train_y: Tensor::from_slice(&ys).to_device(device),
        val_x,
        val_y: Tensor::from_slice(&val.y).to_device(device),
        train,
        val,
        dim: d,
        train_rows,
        streamed: None,
    }
}

/// The plain view's rows left in the cache (`--stream`): labels and paths here, features
/// read a mini-batch at a time. `cache` is reopened, so it sees what extraction published.
fn streamed_features(
    dataset: &Dataset,
    ex: &Extracted,
    cache: &FeatureCache,
    device: Device,
) -> Result<FeatureSet> {
    let cache = cache.reopen();
    let n_train = dataset.train.len();
    let rows = |samples: &[Sample], range: std::ops::Range<usize>| -> Result<StreamedRows> {
        let mut entries = Vec::new();
        for (sample, i) in samples.iter().zip(range) {
            if ex.features[i].is_err() {
                continue;
            }
            let loc = ex.keys[i].as_deref().and_then(|k| cache.locate(k));
            let loc = loc.ok_or_else(|| {
                TlError::file(
                    &sample.path,
                    "its features are not in the cache after extraction (is the cache writable? see `tl cache verify`)",
                )
            })?;
            entries.push((loc, sample.label as i64));
        }
        StreamedRows::new(cache.clone(), entries, ex.dim)
    };
    let streamed = Streamed {
        train: rows(&dataset.train, 0..n_train)?,
        val: rows(&dataset.val, n_train..ex.features.len())?,
    };
    let train = gather(&dataset.train, &ex.features[..n_train]);
    let val = gather(&dataset.val, &ex.features[n_train..]);
    let empty = || Tensor::zeros([0, ex.dim as i64], (tch::Kind::Float, device));
    Ok(FeatureSet {
        train_rows: train
            .paths
            .iter()
            .map(|p| (p.clone(), View::Center))
            .collect(),
        train_x: empty(),
        train_y: Tensor::from_slice(&train.y).to_device(device),
        val_x: empty(),
        val_y: Tensor::from_slice(&val.y).to_device(device),
        train,
        val,
        dim: ex.dim,
        streamed: Some(streamed),
    })
}

/// The features of `rows` (trunk outputs) through the top as exported, for the head.
fn through_top(rows: &FeatureSet, top: &TrainableTop) -> Result<FeatureSet> {
    let through = |x: &Tensor| top.features_of(&CachedRows(x.shallow_clone()), 256);
    let train_x = through(&rows.train_x)?;
    Ok(FeatureSet {
        train: rows.train.clone(),
        val: rows.val.clone(),
        dim: train_x.size().get(1).copied().unwrap_or(0) as usize,
        val_x: through(&rows.val_x)?,
        train_x,
        train_y: rows.train_y.shallow_clone(),
        val_y: rows.val_y.shallow_clone(),
        train_rows: rows.train_rows.clone(),
        streamed: None,
    })
}

fn save_features(path: &Path, f: &FeatureSet) -> Result<()> {
    let named = [
        ("train_x", &f.train_x),
        ("train_y", &f.train_y),
        ("val_x", &f.val_x),
        ("val_y", &f.val_y),
    ]
    .map(|(n, t)| (n.to_string(), t.shallow_clone()));
    let bytes = crate::util::tensors::to_safetensors(&named)?;
    crate::util::write_atomic(path, &bytes)
}

fn fit(
    s: &TrainSettings,
    rt: &Runtime,
    f: &FeatureSet,
    n_classes: usize,
) -> Result<(HeadConfig, TrainConfig, TrainOutcome)> {
    let head_config = HeadConfig {
        hidden: s.hidden,
        dropout: s.dropout,
        in_dim: f.dim as i64,
        num_classes: n_classes as i64,
        standardize: s.standardize,
    };
    let mut config = s.training.clone();
    config.seed = s.seed;
    config.l2 = match s.l2 {
        // Per training row: with augmented views, C=1 on the enlarged set.
        L2::Auto => 1.0 / f.train_len().max(1) as f64,
        L2::Fixed(v) => v,
    };
    let (train, val) = (f.train_source(), f.val_source());
    let has_val = !f.val.y.is_empty();
    let outcome = head::train_head(
        head_config.clone(),
        &config,
        &*train,
        has_val.then_some(&*val),
        rt.device,
        rt.progress,
    )?;
    Ok((head_config, config, outcome))
}

fn backbone_record(
    s: &TrainSettings,
    spec: &BackboneSpec,
    sha: &str,
    dim: usize,
) -> BackboneRecord {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or(p.to_path_buf());
    BackboneRecord {
        spec: s.backbone.clone(),
        name: spec.name.clone(),
        architecture: spec
            .sidecar
            .as_ref()
            .map(|x| x.architecture.clone())
            .unwrap_or_else(|| "torchscript".into()),
        sidecar: spec.sidecar_path.as_deref().map(|p| FilePath(canonical(p))),
        features_file: FilePath(canonical(&spec.features_path)),
        features_sha256: sha.to_string(),
        feature_dim: dim as i64,
        pretrained: spec.sidecar.as_ref().map(|x| x.pretrained()),
        onnx_sha256: spec
            .sidecar
            .as_ref()
            .and_then(|x| x.onnx.features.as_ref())
            .map(|f| f.sha256.clone()),
    }
}

/// The exact files of each side, with their content keys.
fn split_record(dataset: &Dataset, ex: &Extracted) -> SplitRecord {
    let n_train = dataset.train.len();
    let entries = |samples: &[Sample], keys: &[Option<String>]| {
        samples
            .iter()
            .zip(keys)
            .filter_map(|(s, k)| {
                k.as_ref()
                    .map(|k| SplitRecord::entry(&dataset.root, &s.path, k))
            })
            .collect()
    };
    SplitRecord {
        train: entries(&dataset.train, &ex.keys[..n_train]),
        val: entries(&dataset.val, &ex.keys[n_train..]),
    }
}

/// One view of `paths` through `spec` (the backbone, or a fine-tuning trunk, on its
/// engine), cached.
fn extract_view(
    rt: &Runtime,
    s: &TrainSettings,
    spec: &BackboneSpec,
    paths: &[PathBuf],
    view: View,
    warnings: &mut Vec<String>,
) -> Result<(Extracted, FeatureCache)> {
    let cache = s.cache.open_view(spec, view)?;
    let mut opts = ExtractOptions::new(rt, spec, s.batch_size, s.amp, view);
    opts.keep_features = !s.stream;
    let ex = features::extract(paths, spec, &cache, &opts)?;
    let label = match view {
        View::Center => String::new(),
        other => format!("view {} ", other.cache_tag()),
    };
    crate::progress::say(&format!("{label}{}", extraction_line(&ex)));
    for c in &ex.corrupt {
        crate::progress::say(&format!("warning: damaged cache entry recomputed: {c}"));
    }
    if let Some(w) = &ex.cache_warning {
        if !warnings.contains(w) {
            crate::progress::say(&format!("warning: {w}"));
            warnings.push(w.clone());
        }
    }
    Ok((ex, cache))
}

/// The plain view of every image, and the augmented views of the training images.
struct AllViews {
    plain: Extracted,
    augmented: Vec<Extracted>,
    cache_dir: Option<PathBuf>,
    plain_cache: FeatureCache,
}

fn extract_views(
    rt: &Runtime,
    s: &TrainSettings,
    spec: &BackboneSpec,
    dataset: &Dataset,
    warnings: &mut Vec<String>,
) -> Result<AllViews> {
    // Resolved once: the ONNX file is hashed once, however many views there are.
    let spec = &spec.for_engine(rt.engine, rt.device)?;
    let paths: Vec<PathBuf> = dataset.all().into_iter().map(|x| x.path).collect();
    let (plain, plain_cache) = extract_view(rt, s, spec, &paths, View::Center, warnings)?;
    let train_paths: Vec<PathBuf> = dataset.train.iter().map(|x| x.path.clone()).collect();
    let mut augmented = Vec::new();
    for view in View::training(s.views).into_iter().skip(1) {
        augmented.push(extract_view(rt, s, spec, &train_paths, view, warnings)?.0);
    }
    Ok(AllViews {
        plain,
        augmented,
        cache_dir: plain_cache.dir().map(Path::to_path_buf),
        plain_cache,
    })
}

pub(super) fn validation_report(
    head: &Head,
    val_rows: &dyn Rows,
    val: &Gathered,
    classes: &[String],
) -> Result<Option<ClassificationReport>> {
    if val.y.is_empty() {
        return Ok(None);
    }
    let order: Vec<i64> = (0..val_rows.len() as i64).collect();
    let mut probs = Vec::with_capacity(order.len());
    // Rows in memory in one batch (as always); streamed ones a few thousand at a time.
    let batch = if val_rows.len() > 4096 {
        4096
    } else {
        order.len().max(1)
    };
    for idx in order.chunks(batch) {
        let (x, _) = val_rows.batch(idx, head.device())?;
        probs.extend(crate::util::tensors::rows(&tch::no_grad(|| {
            head.probabilities(&x)
        }))?);
    }
    let labels: Vec<usize> = val.y.iter().map(|&y| y as usize).collect();
    Ok(Some(ClassificationReport::compute(
        &probs, &labels, &val.paths, classes, 10,
    )))
}

/// Everything config.json records.
struct RunFacts<'a> {
    spec: &'a BackboneSpec,
    sha: &'a str,
    prepared: &'a Prepared,
    features: &'a FeatureSet,
    cache_dir: Option<PathBuf>,
    finetune: Option<run::FinetuneRecord>,
    engine: features::Engine,
    calibrated: Option<&'a super::calibrate::Calibrated>,
}

fn run_config(
    rt: &Runtime,
    s: &TrainSettings,
    facts: RunFacts,
    head: HeadConfig,
    train: TrainConfig,
) -> RunConfig {
    let f = facts.features;
    RunConfig {
        tl_version: env!("CARGO_PKG_VERSION").into(),
        created_at: chrono::Local::now().to_rfc3339(),
        seed: s.seed,
        backbone: backbone_record(s, facts.spec, facts.sha, f.dim),
        preprocess: facts.spec.preprocess(),
        data: DataRecord {
            root: FilePath(std::fs::canonicalize(&s.data).unwrap_or(s.data.clone())),
            layout: facts.prepared.dataset.layout,
            val_split: facts.prepared.val_split,
            val_dir: facts.prepared.val_dir.clone().map(FilePath),
            train_images: f.train.y.len(),
            val_images: f.val.y.len(),
            review: facts
                .prepared
                .review
                .as_ref()
                .map(|(a, sha)| run::ReviewRecord {
                    file: FilePath(std::fs::canonicalize(&a.file.0).unwrap_or(a.file.0.clone())),
                    sha256: sha.clone(),
                    excluded: a.excluded.len(),
                    relabelled: a.relabelled.len(),
                }),
        },
        head,
        train,
        extract: ExtractRecord {
            batch_size: s.batch_size,
            threads: rt.threads,
            device: crate::device::describe(rt.device),
            cache_dir: facts.cache_dir.map(FilePath),
            engine: facts.engine,
            stream: s.stream,
        },
        views: s.views,
        finetune: facts.finetune,
        calibration: facts.calibrated.map(|c| c.calibration.clone()),
        unknown: facts.calibrated.map(|c| c.unknown.clone()),
    }
}

/// The extracted rows, the features the head trains on, and the top to fine-tune.
struct Inputs {
    views: AllViews,
    /// Cached trunk outputs (fine-tuning with a trunk).
    rows: Option<FeatureSet>,
    features: FeatureSet,
    top: Option<TrainableTop>,
    skipped: Vec<SkippedFile>,
}

fn inputs(
    rt: &Runtime,
    s: &TrainSettings,
    spec: &BackboneSpec,
    split: Option<&SplitSpec>,
    dataset: &Dataset,
    warnings: &mut Vec<String>,
) -> Result<Inputs> {
    // With a trunk, its outputs are what is cached; the head's features come from the top.
    let trunk = split.and_then(|x| x.trunk.as_ref());
    let views = extract_views(rt, s, trunk.unwrap_or(spec), dataset, warnings)?;
    let rows = if s.stream {
        streamed_features(dataset, &views.plain, &views.plain_cache, rt.device)?
    } else {
        feature_tensors(dataset, &views.plain, &views.augmented, rt.device)
    };
    let skipped = check_readable(s, dataset, &rows, warnings)?;
    let top = split.map(|x| x.load_top(rt.device)).transpose()?;
    let (rows, features) = match (&top, trunk) {
        (Some(t), Some(_)) => {
            let features = through_top(&rows, t)?;
            (Some(rows), features)
        }
        _ => (None, rows),
    };
    Ok(Inputs {
        views,
        rows,
        features,
        top,
        skipped,
    })
}

/// The head, and the fine-tuned top when there is one.
struct Trained {
    head_config: HeadConfig,
    train_config: TrainConfig,
    outcome: TrainOutcome,
    validation: Option<ClassificationReport>,
    train_accuracy: f64,
    train_seconds: f64,
    /// The second stage, and the head-only validation accuracy before it.
    tuned: Option<(super::finetune::Tuned, Option<f64>)>,
    /// The temperature (set on the head) and the unknown judge.
    calibrated: Option<super::calibrate::Calibrated>,
}

fn fit_and_tune(
    rt: &Runtime,
    s: &TrainSettings,
    spec: &BackboneSpec,
    split: Option<&SplitSpec>,
    inputs: &mut Inputs,
    classes: &[String],
) -> Result<Trained> {
    let f = &inputs.features;
    let t_train = Instant::now();
    let (head_config, train_config, mut outcome) = fit(s, rt, f, classes.len())?;
    let train_seconds = t_train.elapsed().as_secs_f64();
    let head_only_report = validation_report(&outcome.head, &*f.val_source(), &f.val, classes)?;
    let (_, mut train_accuracy) = evaluate(&outcome.head, &*f.train_source(), 4096)?;
    let mut tuned = None;
    if let (Some(fs), Some(sp), Some(top)) = (&s.finetune, split, inputs.top.take()) {
        let ctx = super::finetune::Context {
            rt,
            cfg: s.finetune_config(fs, train_config.l2),
            unfreeze: fs.unfreeze,
            split: sp,
            features: f,
            rows: inputs.rows.as_ref(),
            preprocess: spec.preprocess(),
        };
        let t = super::finetune::stage_two(&ctx, top, &mut outcome.head)?;
        let head_only = head_only_report.as_ref().map(|r| r.accuracy);
        train_accuracy = t.train_accuracy().unwrap_or(train_accuracy);
        tuned = Some((t, head_only));
    }
    let head_inputs = super::calibrate::HeadInputs {
        features: f,
        trunk_rows: inputs.rows.as_ref(),
        tuned: tuned.as_ref().map(|(t, _)| t),
        preprocess: spec.preprocess(),
    };
    let calibrated = super::calibrate::calibrate(
        &s.unknown,
        s.seed,
        &mut outcome.head,
        &head_inputs,
        rt.device,
    )?;
    // The validation figures as the run will predict: with its temperature.
    let validation = match &tuned {
        Some((t, _)) => {
            let tuned_val = Split {
                x: &t.val_features,
                y: &f.val_y,
            };
            validation_report(&outcome.head, &tuned_val, &f.val, classes)?
        }
        None => validation_report(&outcome.head, &*f.val_source(), &f.val, classes)?,
    };
    Ok(Trained {
        head_config,
        train_config,
        outcome,
        validation,
        train_accuracy,
        train_seconds,
        tuned,
        calibrated: Some(calibrated),
    })
}

/// The report of a finished training (`run` and the totals filled in by the caller).
fn report(
    t: &Trained,
    inputs: &mut Inputs,
    dataset: &Dataset,
    s: &TrainSettings,
    warnings: Vec<String>,
) -> TrainReport {
    let ex = &inputs.views.plain;
    let mut report = TrainReport {
        validation: t.validation.clone(),
        extraction: ex.stats.clone(),
        damaged_cache_entries: ex.corrupt.clone(),
        skipped: std::mem::take(&mut inputs.skipped),
        ignored_files: dataset.ignored.clone(),
        warnings,
        views: s.views,
        classes: class_counts(&dataset.classes, &inputs.features),
        ..TrainReport::from_outcome(&t.outcome, t.train_accuracy)
    };
    if let Some(c) = &t.calibrated {
        report.calibration = c.calibration_summary.clone();
        report.unknown = Some(c.unknown_summary.clone());
        report.timing_seconds.calibrate = c.seconds;
    }
    if let Some((tuned, head_only)) = &t.tuned {
        report.finetune = Some(tuned.summary(*head_only));
        report.val_accuracy = report.validation.as_ref().map(|r| r.accuracy);
        report.val_loss = tuned.best_val_loss().or(report.val_loss);
        report.timing_seconds.finetune = tuned.seconds;
    }
    report.timing_seconds.extract = ex.stats.seconds
        + inputs
            .views
            .augmented
            .iter()
            .map(|e| e.stats.seconds)
            .sum::<f64>();
    report.timing_seconds.train = t.train_seconds;
    report
}

/// report.html; a page that cannot be made costs a warning, not the run.
fn run_html(
    dest: &Path,
    config: &RunConfig,
    report: &TrainReport,
    metrics: &[head::EpochMetrics],
) -> Option<String> {
    let page = serde_json::to_value(report)
        .and_then(serde_json::from_value)
        .map_err(|e| TlError::invalid(e.to_string()))
        .and_then(|results| super::report::run_page(dest, config, &results, metrics, Vec::new()));
    match page {
        Ok(html) => Some(html),
        Err(e) => {
            crate::progress::say(&format!("warning: report.html not written: {e}"));
            None
        }
    }
}

fn class_counts(classes: &[String], f: &FeatureSet) -> Vec<ClassCount> {
    let count = |ys: &[i64], k: usize| ys.iter().filter(|&&y| y as usize == k).count();
    classes
        .iter()
        .enumerate()
        .map(|(k, c)| ClassCount {
            class: c.clone(),
            train: Some(count(&f.train.y, k)),
            val: Some(count(&f.val.y, k)),
        })
        .collect()
}

pub fn train(rt: &Runtime, s: &TrainSettings) -> Result<TrainReport> {
    let started = Instant::now();
    s.validate()?;
    let mut warnings = Vec::new();
    let spec = BackboneSpec::resolve(&s.backbone, &rt.backbones)?;
    if let Some(w) = spec.weights_warning() {
        crate::progress::say(&format!("warning: {w}"));
        warnings.push(w);
    }
    let split = match &s.finetune {
        Some(f) => Some(SplitSpec::resolve(&spec, f.unfreeze)?),
        None => None,
    };
    let prepared = prepare_dataset(s, &mut warnings)?;
    let dataset = &prepared.dataset;
    let sha = spec.verified_features_hash()?;
    let mut inputs = inputs(rt, s, &spec, split.as_ref(), dataset, &mut warnings)?;
    if let Some(path) = &s.save_features {
        save_features(path, &inputs.features)?;
    }
    let trained = fit_and_tune(rt, s, &spec, split.as_ref(), &mut inputs, &dataset.classes)?;
    let finetune = match (&trained.tuned, &split) {
        (Some((t, _)), Some(sp)) => Some(super::finetune::record(sp, t)?),
        _ => None,
    };
    let facts = RunFacts {
        spec: &spec,
        sha: &sha,
        prepared: &prepared,
        features: &inputs.features,
        cache_dir: inputs.views.cache_dir.clone(),
        finetune,
        engine: inputs.views.plain.stats.engine,
        calibrated: trained.calibrated.as_ref(),
    };
    let config = run_config(
        rt,
        s,
        facts,
        trained.head_config.clone(),
        trained.train_config.clone(),
    );
    let reserved = s.out.is_none();
    let dest = match &s.out {
        Some(out) => out.clone(),
        None => run::reserve_default_dir(&spec.name)?,
    };
    let mut report = report(&trained, &mut inputs, dataset, s, warnings);
    report.review = prepared.review.as_ref().map(|(a, _)| a.clone());
    report.run = FilePath(dest.clone());
    report.timing_seconds.total = started.elapsed().as_secs_f64();
    let mut metrics = trained.outcome.history.clone();
    if let Some((t, _)) = &trained.tuned {
        metrics.extend(t.outcome.history.iter().cloned());
    }
    let html = run_html(&dest, &config, &report, &metrics);
    let contents = run::RunContents {
        config: &config,
        classes: &dataset.classes,
        head: &trained.outcome.head,
        split: &split_record(dataset, &inputs.views.plain),
        metrics: &metrics,
        report: &report,
        top: trained.tuned.as_ref().map(|(t, _)| &t.top),
        html: html.as_deref(),
        judge: trained.calibrated.as_ref().map(|c| &c.judge),
    };
    if let Err(e) = run::write(&dest, s.force, &contents) {
        if reserved {
            let _ = std::fs::remove_dir(&dest);
        }
        return Err(e);
    }
    Ok(report)
}

/// Report unreadable files; refuse when nothing (or a class) is left.
fn check_readable(
    s: &TrainSettings,
    dataset: &Dataset,
    f: &FeatureSet,
    warnings: &mut Vec<String>,
) -> Result<Vec<SkippedFile>> {
    let mut skipped = f.train.skipped.clone();
    skipped.extend(f.val.skipped.iter().cloned());
    for line in skipped_notes(&skipped, dataset.ignored.len()) {
        crate::progress::say(&line);
    }
    if f.train.y.is_empty() {
        return Err(TlError::file(&s.data, "no readable training images"));
    }
    let unreadable = classes_without_readable_images(dataset, f);
    check_empty_classes(
        &s.data,
        &unreadable,
        "no readable image",
        s.allow_empty_classes,
        warnings,
    )?;
    Ok(skipped)
}

fn classes_without_readable_images(dataset: &Dataset, f: &FeatureSet) -> Vec<String> {
    let mut seen = vec![false; dataset.classes.len()];
    for &y in f.train.y.iter().chain(&f.val.y) {
        seen[y as usize] = true;
    }
    let listed: std::collections::HashSet<usize> = dataset
        .train
        .iter()
        .chain(&dataset.val)
        .map(|s| s.label)
        .collect();
    dataset
        .classes
        .iter()
        .enumerate()
        .filter(|(i, _)| !seen[*i] && listed.contains(i))
        .map(|(_, c)| c.clone())
        .collect()
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
            format!(" ({})", st.engine.label())
        } else {
            String::new()
        }
    )
}
