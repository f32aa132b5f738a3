//! `tl train`: dataset → features (cached) → head → evaluation → run folder, one function
//! per step.
use super::{gather, skipped_notes, tensor_2d, Gathered, SkippedFile};
use crate::data::{Dataset, IgnoredFile, Sample};
use crate::error::{Result, TlError};
use crate::eval::{ClassificationReport, Report};
use crate::features::{self, BackboneSpec, CacheSettings, ExtractOptions, ExtractStats, Extracted};
use crate::head::{self, train::evaluate, HeadConfig, Split, TrainConfig, TrainOutcome};
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
}

#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    pub extract: f64,
    pub train: f64,
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
                total: 0.0,
            },
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
        format!(
            "run: {}\nbest epoch {}/{}{}: train accuracy {:.2}%{val}\ntime: {} total ({} features, {} head)\n",
            self.run,
            self.best_epoch,
            self.epochs_run,
            if self.stopped_early { " (early stop)" } else { "" },
            100.0 * self.train_accuracy,
            human_duration(self.timing_seconds.total),
            human_duration(self.timing_seconds.extract),
            human_duration(self.timing_seconds.train),
        )
    }
}

/// The dataset with its validation side chosen.
struct Prepared {
    dataset: Dataset,
    /// The fraction drawn by `tl`, when it drew one.
    val_split: Option<f64>,
    val_dir: Option<PathBuf>,
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
        ValidationChoice::Fraction(f) if dataset.val.is_empty() => {
            dataset.split(*f, s.seed)?;
            val_split = Some(*f);
        }
        ValidationChoice::Fraction(_) => {}
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
    eprintln!(
        "dataset {} ({:?}): {} classes, {} train / {} val images",
        s.data.display(),
        dataset.layout,
        dataset.classes.len(),
        dataset.train.len(),
        dataset.val.len()
    );
    Ok(Prepared {
        dataset,
        val_split,
        val_dir,
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
        eprintln!("warning: {warning}");
        warnings.push(warning);
        Ok(())
    } else {
        Err(TlError::file(
            data,
            format!("{msg}; add images, remove the folder, or pass --allow-empty-classes"),
        ))
    }
}

/// Features of the training and validation images as tensors, on the device.
struct FeatureSet {
    train: Gathered,
    val: Gathered,
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    dim: usize,
}

fn feature_tensors(dataset: &Dataset, ex: &Extracted, device: Device) -> FeatureSet {
    let n_train = dataset.train.len();
    let train = gather(&dataset.train, &ex.features[..n_train]);
    let val = gather(&dataset.val, &ex.features[n_train..]);
    let d = ex.dim;
    FeatureSet {
        train_x: tensor_2d(&train.x, train.y.len(), d, device),
        train_y: Tensor::from_slice(&train.y).to_device(device),
        val_x: tensor_2d(&val.x, val.y.len(), d, device),
        val_y: Tensor::from_slice(&val.y).to_device(device),
        train,
        val,
        dim: d,
    }
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
        L2::Auto => 1.0 / f.train.y.len() as f64,
        L2::Fixed(v) => v,
    };
    let train = Split {
        x: &f.train_x,
        y: &f.train_y,
    };
    let val = Split {
        x: &f.val_x,
        y: &f.val_y,
    };
    let has_val = !f.val.y.is_empty();
    let outcome = head::train_head(
        head_config.clone(),
        &config,
        &train,
        has_val.then_some(&val),
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

fn extract_features(
    rt: &Runtime,
    s: &TrainSettings,
    spec: &BackboneSpec,
    dataset: &Dataset,
    warnings: &mut Vec<String>,
) -> Result<(Extracted, Option<PathBuf>)> {
    let cache = s.cache.open(spec)?;
    let paths: Vec<PathBuf> = dataset.all().into_iter().map(|x| x.path).collect();
    let opts = ExtractOptions {
        batch_size: s.batch_size,
        decode_threads: rt.decode_threads,
        device: rt.device,
        progress: rt.progress,
        amp: s.amp,
    };
    let ex = features::extract(&paths, spec, &cache, &opts)?;
    eprintln!("{}", extraction_line(&ex));
    for c in &ex.corrupt {
        eprintln!("warning: damaged cache entry recomputed: {c}");
    }
    if let Some(w) = &ex.cache_warning {
        eprintln!("warning: {w}");
        warnings.push(w.clone());
    }
    Ok((ex, cache.dir().map(Path::to_path_buf)))
}

fn validation_report(
    outcome: &TrainOutcome,
    f: &FeatureSet,
    classes: &[String],
) -> Result<Option<ClassificationReport>> {
    if f.val.y.is_empty() {
        return Ok(None);
    }
    let probs = crate::util::tensors::rows(&tch::no_grad(|| {
        outcome.head.forward(&f.val_x).softmax(-1, tch::Kind::Float)
    }))?;
    let labels: Vec<usize> = f.val.y.iter().map(|&y| y as usize).collect();
    Ok(Some(ClassificationReport::compute(
        &probs,
        &labels,
        &f.val.paths,
        classes,
        10,
    )))
}

/// Everything config.json records.
struct RunFacts<'a> {
    spec: &'a BackboneSpec,
    sha: &'a str,
    prepared: &'a Prepared,
    features: &'a FeatureSet,
    cache_dir: Option<PathBuf>,
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
        },
        head,
        train,
        extract: ExtractRecord {
            batch_size: s.batch_size,
            threads: rt.threads,
            device: crate::device::describe(rt.device),
            cache_dir: facts.cache_dir.map(FilePath),
        },
    }
}

pub fn train(rt: &Runtime, s: &TrainSettings) -> Result<TrainReport> {
    let started = Instant::now();
    s.validate()?;
    let mut warnings = Vec::new();
    let spec = BackboneSpec::resolve(&s.backbone, &rt.backbones)?;
    if let Some(w) = spec.weights_warning() {
        eprintln!("warning: {w}");
        warnings.push(w);
    }
    let prepared = prepare_dataset(s, &mut warnings)?;
    let dataset = &prepared.dataset;
    let sha = spec.verified_features_hash()?;
    let (ex, cache_dir) = extract_features(rt, s, &spec, dataset, &mut warnings)?;
    let f = feature_tensors(dataset, &ex, rt.device);
    let skipped = check_readable(s, dataset, &f, &mut warnings)?;
    if let Some(path) = &s.save_features {
        save_features(path, &f)?;
    }

    let t_train = Instant::now();
    let (head_config, train_config, outcome) = fit(s, rt, &f, dataset.classes.len())?;
    let train_seconds = t_train.elapsed().as_secs_f64();
    let validation = validation_report(&outcome, &f, &dataset.classes)?;
    let train_split = Split {
        x: &f.train_x,
        y: &f.train_y,
    };
    let (_, train_accuracy) = evaluate(&outcome.head, &train_split, 4096);

    let dest = s
        .out
        .clone()
        .unwrap_or_else(|| run::default_dir(&spec.name));
    let facts = RunFacts {
        spec: &spec,
        sha: &sha,
        prepared: &prepared,
        features: &f,
        cache_dir,
    };
    let config = run_config(rt, s, facts, head_config, train_config);
    let report = TrainReport {
        run: FilePath(dest.clone()),
        validation,
        extraction: ex.stats.clone(),
        damaged_cache_entries: ex.corrupt.clone(),
        skipped,
        ignored_files: dataset.ignored.clone(),
        warnings,
        timing_seconds: Timing {
            extract: ex.stats.seconds,
            train: train_seconds,
            total: started.elapsed().as_secs_f64(),
        },
        ..TrainReport::from_outcome(&outcome, train_accuracy)
    };
    let contents = run::RunContents {
        config: &config,
        classes: &dataset.classes,
        head: &outcome.head,
        split: &split_record(dataset, &ex),
        metrics: &outcome.history,
        report: &report,
    };
    run::write(&dest, s.force, &contents)?;
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
        eprintln!("{line}");
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
        "features: {} cached, {} computed{}, {} unreadable, {} in {}",
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
        human_duration(st.seconds)
    )
}
