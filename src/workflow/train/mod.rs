//! `tl train`: dataset → features (cached) → head → evaluation → run folder, one function
//! per step: `settings` (checked before any image is read), `inputs` (dataset, features of
//! every view, rows), here the fitting and the run's records, `report`.
mod inputs;
pub(crate) mod page;
mod report;
mod settings;
pub mod tuning;

pub use super::calibrate::{CalibrationSummary, UnknownSettings, UnknownSummary};
pub use super::finetune::{FinetuneSettings, FinetuneSummary};
use super::{FeatureSet, Gathered};
use crate::data::{Dataset, Sample};
use crate::error::Result;
use crate::eval::{ClassCount, ClassificationReport};
use crate::features::cut::BackboneCut;
use crate::features::{self, BackboneSpec, Extracted};
use crate::head::{
    self, train::evaluate, Head, HeadConfig, Rows, TensorRows, TrainConfig, TrainOutcome,
};
use crate::run::{self, BackboneRecord, DataRecord, DatasetSplit, ExtractRecord, RunConfig};
use crate::runtime::Runtime;
use crate::util::FilePath;
pub(crate) use inputs::{inputs, prepare_dataset, save_features, Inputs, Prepared};
pub use report::{extraction_line, Timing, TrainReport};
pub use settings::{
    imbalance_ratio, BalanceChoice, TrainSettings, ValidationChoice, IMBALANCE_RATIO, L2,
};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The head on `f`'s training rows, early-stopped on its validation rows.
pub(crate) fn fit(
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
    let config = s.head_config(f.train_len(), &f.train_counts(n_classes));
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
        onnx_bf16_sha256: spec
            .sidecar
            .as_ref()
            .and_then(|x| x.onnx.features_bf16.as_ref())
            .map(|f| f.sha256.clone()),
    }
}

/// The exact files of each side, with their content keys.
fn split_record(dataset: &Dataset, ex: &Extracted) -> DatasetSplit {
    let n_train = dataset.train.len();
    let entries = |samples: &[Sample], keys: &[Option<String>]| {
        samples
            .iter()
            .zip(keys)
            .filter_map(|(s, k)| {
                k.as_ref()
                    .map(|k| DatasetSplit::entry(&dataset.root, &s.path, k))
            })
            .collect()
    };
    DatasetSplit {
        train: entries(&dataset.train, &ex.keys[..n_train]),
        val: entries(&dataset.val, &ex.keys[n_train..]),
    }
}

pub(crate) fn validation_report(
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
    precision: features::Precision,
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
            precision: facts.precision,
            decode: crate::runtime::process_settings().decode,
            stream: s.stream,
        },
        views: s.views,
        finetune: facts.finetune,
        calibration: facts.calibrated.map(|c| c.calibration.clone()),
        unknown: facts.calibrated.map(|c| c.unknown.clone()),
    }
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
    split: Option<&BackboneCut>,
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
            announce: true,
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
            let tuned_val = TensorRows {
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

/// The report of a finished training whose run goes to `dest`, complete in one place.
fn report(
    t: &Trained,
    inputs: &mut Inputs,
    prepared: &Prepared,
    s: &TrainSettings,
    warnings: Vec<String>,
    dest: &Path,
    started: Instant,
) -> TrainReport {
    let ex = &inputs.views.plain;
    let best = t
        .outcome
        .history
        .get(t.outcome.best_epoch.saturating_sub(1));
    let tuned = t.tuned.as_ref();
    let calibrated = t.calibrated.as_ref();
    let augmented: f64 = inputs.views.augmented.iter().map(|e| e.stats.seconds).sum();
    TrainReport {
        run: FilePath(dest.to_path_buf()),
        best_epoch: t.outcome.best_epoch,
        epochs_run: t.outcome.history.len(),
        stopped_early: t.outcome.stopped_early,
        train_accuracy: t.train_accuracy,
        // After fine-tuning, the figures of the tuned network (top + head).
        val_accuracy: match tuned {
            Some(_) => t.validation.as_ref().map(|r| r.accuracy),
            None => best.and_then(|m| m.val_accuracy),
        },
        val_loss: tuned
            .and_then(|(x, _)| x.best_val_loss())
            .or(best.and_then(|m| m.val_loss)),
        validation: t.validation.clone(),
        extraction: ex.stats.clone(),
        damaged_cache_entries: ex.corrupt.clone(),
        skipped: std::mem::take(&mut inputs.skipped),
        ignored_files: prepared.dataset.ignored.clone(),
        warnings,
        timing_seconds: Timing {
            extract: ex.stats.seconds + augmented,
            train: t.train_seconds,
            finetune: tuned.map_or(0.0, |(x, _)| x.seconds),
            calibrate: calibrated.map_or(0.0, |c| c.seconds),
            total: started.elapsed().as_secs_f64(),
        },
        views: s.views,
        finetune: tuned.map(|(x, head_only)| x.summary(*head_only)),
        classes: class_counts(&prepared.dataset.classes, &inputs.features),
        calibration: calibrated.and_then(|c| c.calibration_summary.clone()),
        unknown: calibrated.map(|c| c.unknown_summary.clone()),
        review: prepared.review.as_ref().map(|(a, _)| a.clone()),
        balance: t.train_config.balance,
        tuning: s.tuning.clone(),
    }
}

/// report.html again, now that the run exists to map its worst images through (their heat
/// maps beside them); the page without them stays if that cannot be done.
fn add_heat_maps(
    dest: &Path,
    config: &RunConfig,
    report: &TrainReport,
    metrics: &[head::EpochMetrics],
    device: tch::Device,
) {
    let Some(losses) = report.validation.as_ref().map(|v| &v.top_losses) else {
        return;
    };
    let heat = run::Run::open(dest)
        .and_then(|r| super::explain::loss_maps(&r, losses, device))
        .unwrap_or_default();
    if heat.iter().all(Option::is_none) {
        return;
    }
    if let Ok(html) = page::run_page(dest, config, report, metrics, Vec::new(), heat) {
        let _ = crate::util::write_atomic(&dest.join(run::REPORT_HTML), html.as_bytes());
    }
}

/// report.html; a page that cannot be made costs a warning (in the report), not the run.
fn run_html(
    dest: &Path,
    config: &RunConfig,
    report: &mut TrainReport,
    metrics: &[head::EpochMetrics],
) -> Option<String> {
    match page::run_page(dest, config, report, metrics, Vec::new(), Vec::new()) {
        Ok(html) => Some(html),
        Err(e) => {
            report
                .warnings
                .push(format!("report.html not written: {e}"));
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

/// config.json of the run: what was trained, on what, how.
#[allow(clippy::too_many_arguments)]
fn config_of(
    rt: &Runtime,
    s: &TrainSettings,
    spec: &BackboneSpec,
    sha: &str,
    prepared: &Prepared,
    inputs: &Inputs,
    trained: &Trained,
    split: Option<&BackboneCut>,
) -> Result<RunConfig> {
    let finetune = match (&trained.tuned, split) {
        (Some((t, _)), Some(sp)) => Some(super::finetune::record(sp, t)?),
        _ => None,
    };
    let facts = RunFacts {
        spec,
        sha,
        prepared,
        features: &inputs.features,
        cache_dir: inputs.views.cache_dir.clone(),
        finetune,
        engine: inputs.views.plain.stats.engine,
        precision: inputs.views.plain.stats.precision,
        calibrated: trained.calibrated.as_ref(),
    };
    Ok(run_config(
        rt,
        s,
        facts,
        trained.head_config.clone(),
        trained.train_config.clone(),
    ))
}

pub fn train(rt: &Runtime, s: &TrainSettings) -> Result<TrainReport> {
    let started = Instant::now();
    s.validate()?;
    let mut warnings = Vec::new();
    let spec = BackboneSpec::resolve(&s.backbone, &rt.backbones)?;
    if let Some(w) = spec.weights_warning() {
        warnings.push(w);
    }
    let split = match &s.finetune {
        Some(f) => Some(BackboneCut::resolve(&spec, f.unfreeze)?),
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
    let config = config_of(
        rt,
        s,
        &spec,
        &sha,
        &prepared,
        &inputs,
        &trained,
        split.as_ref(),
    )?;
    let reserved = s.out.is_none();
    let dest = match &s.out {
        Some(out) => out.clone(),
        None => run::reserve_default_dir(&spec.name)?,
    };
    let mut report = report(
        &trained,
        &mut inputs,
        &prepared,
        s,
        warnings,
        &dest,
        started,
    );
    let mut metrics = trained.outcome.history.clone();
    if let Some((t, _)) = &trained.tuned {
        metrics.extend(t.outcome.history.iter().cloned());
    }
    let html = run_html(&dest, &config, &mut report, &metrics);
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
    if html.is_some() {
        add_heat_maps(&dest, &config, &report, &metrics, rt.device);
    }
    Ok(report)
}
