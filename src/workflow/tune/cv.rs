//! Cross-validation on cached features: stratified folds over the training images that keep
//! near-duplicate groups whole, and one trial trained on every fold but one (its head, and
//! its fine-tuned top) and scored on that one, exactly as `tl train` trains it.
use super::search::Trial;
use crate::audit;
use crate::error::{Result, TlError};
use crate::features::cut::BackboneCut;
use crate::features::BackboneSpec;
use crate::head::TensorRows;
use crate::runtime::Runtime;
use crate::workflow::finetune::{stage_two, Context, FinetuneSettings};
use crate::workflow::train::{fit, validation_report, BalanceChoice, Inputs, TrainSettings, L2};
use crate::workflow::{FeatureSet, Gathered};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::Tensor;

/// The fold of each training image (its index in `FeatureSet::train`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Folds {
    pub of_image: Vec<usize>,
    pub k: usize,
    /// Images that share their group with another (copies kept in one fold).
    pub grouped_images: usize,
}

/// Stratified folds of the training images, near-duplicates (cosine ≥ `near_duplicate` on
/// the plain features; `tl audit`'s measured 0.93 by default) and byte-identical files in
/// one fold. A fold left empty (too few images, or a backbone whose features are all alike
/// grouping everything) is an error that says which.
pub(crate) fn make_folds(
    features: &FeatureSet,
    keys: &[String],
    k: usize,
    seed: u64,
    near_duplicate: f64,
) -> Result<Folds> {
    let n = features.train.y.len();
    let plain = features
        .train_x
        .narrow(0, 0, n as i64)
        .to_device(tch::Device::Cpu);
    let group = audit::duplicate_groups(&plain, keys, near_duplicate)?;
    let mut size: HashMap<usize, usize> = HashMap::new();
    for &g in &group {
        *size.entry(g).or_default() += 1;
    }
    let labels: Vec<usize> = features.train.y.iter().map(|&y| y as usize).collect();
    let of_image = audit::labels::assign_folds(&group, &labels, k, seed);
    if let Some(empty) = (0..k).find(|f| !of_image.contains(f)) {
        let largest = size.values().copied().max().unwrap_or(0);
        return Err(TlError::invalid(format!(
            "fold {} of {k} has no image: {n} training images in {} groups (the largest, {largest} images alike at cosine >= {near_duplicate}); use fewer --folds, or a higher --near-duplicate if these are not copies",
            empty + 1,
            size.len()
        )));
    }
    Ok(Folds {
        of_image,
        k,
        grouped_images: group.iter().filter(|g| size[g] > 1).count(),
    })
}

/// The content key of each readable training image of `inputs`.
pub(crate) fn train_keys(inputs: &Inputs, train_paths: &[PathBuf]) -> Result<Vec<String>> {
    let plain = &inputs.views.plain;
    let by_path: HashMap<&PathBuf, &String> = train_paths
        .iter()
        .zip(&plain.keys)
        .filter_map(|(p, k)| k.as_ref().map(|k| (p, k)))
        .collect();
    inputs
        .features
        .train
        .paths
        .iter()
        .map(|p| {
            by_path
                .get(p)
                .map(|k| (*k).clone())
                .ok_or_else(|| TlError::corrupt(p, "no content key after extraction"))
        })
        .collect()
}

/// The image of each training row (rows of every view point back at their image).
pub(crate) fn row_images(f: &FeatureSet) -> Result<Vec<usize>> {
    let index: HashMap<&PathBuf, usize> = f
        .train
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p, i))
        .collect();
    f.train_rows
        .iter()
        .map(|(p, _)| {
            index
                .get(p)
                .copied()
                .ok_or_else(|| TlError::corrupt(p, "a training row without its image"))
        })
        .collect()
}

/// Training rows from every fold but `fold` (every view), held-out rows the plain view of
/// `fold`'s images (the first rows of `f`, in image order).
pub(crate) fn fold_set(
    f: &FeatureSet,
    row_image: &[usize],
    folds: &Folds,
    fold: usize,
) -> FeatureSet {
    let inside: Vec<i64> = (0..row_image.len())
        .filter(|&r| folds.of_image[row_image[r]] != fold)
        .map(|r| r as i64)
        .collect();
    let held: Vec<usize> = (0..f.train.y.len())
        .filter(|&i| folds.of_image[i] == fold)
        .collect();
    let held_rows: Vec<i64> = held.iter().map(|&i| i as i64).collect();
    let device = f.train_x.device();
    let pick =
        |t: &Tensor, rows: &[i64]| t.index_select(0, &Tensor::from_slice(rows).to_device(device));
    let plain_in: Vec<usize> = (0..f.train.y.len())
        .filter(|&i| folds.of_image[i] != fold)
        .collect();
    let side = |images: &[usize]| Gathered {
        x: Vec::new(),
        y: images.iter().map(|&i| f.train.y[i]).collect(),
        paths: images.iter().map(|&i| f.train.paths[i].clone()).collect(),
        skipped: Vec::new(),
    };
    FeatureSet {
        train: side(&plain_in),
        val: side(&held),
        train_x: pick(&f.train_x, &inside),
        train_y: pick(&f.train_y, &inside),
        val_x: pick(&f.train_x, &held_rows),
        val_y: pick(&f.train_y, &held_rows),
        dim: f.dim,
        train_rows: inside
            .iter()
            .map(|&r| f.train_rows[r as usize].clone())
            .collect(),
        streamed: None,
    }
}

/// `tl train`'s settings for `trial` on `rows` training rows (the penalty is a multiple of
/// the automatic one, 1/rows; a fine-tuned trial fine-tunes the last block as `finetune`
/// says).
pub(crate) fn settings_for(
    base: &TrainSettings,
    trial: &Trial,
    rows: usize,
    finetune: &FinetuneSettings,
) -> TrainSettings {
    let mut s = base.clone();
    s.l2 = L2::Fixed(trial.l2_scale / rows.max(1) as f64);
    s.training.lr = trial.lr;
    s.training.label_smoothing = trial.label_smoothing;
    s.hidden = trial.hidden;
    s.balance = BalanceChoice::Fixed(trial.balance);
    s.views = trial.views;
    s.finetune = trial.finetune.then(|| FinetuneSettings {
        unfreeze: crate::features::Unfreeze::Blocks(1),
        ..finetune.clone()
    });
    s
}

/// What a tier's trials train on: the features (and, for fine-tuning, the trunk rows and
/// the cut) of the training images.
pub(crate) struct TierInputs<'a> {
    pub rt: &'a Runtime,
    pub base: &'a TrainSettings,
    pub spec: &'a BackboneSpec,
    pub inputs: &'a Inputs,
    pub row_image: Vec<usize>,
    pub cut: Option<&'a BackboneCut>,
    pub classes: &'a [String],
    /// How fine-tuned trials fine-tune.
    pub finetune: &'a FinetuneSettings,
}

/// The settings `trial` or, without one, the base settings (as `tl cv` runs them) trained
/// without fold `fold` and scored on it: (balanced accuracy, loss).
pub(crate) fn run_fold(
    t: &TierInputs,
    trial: Option<&Trial>,
    folds: &Folds,
    fold: usize,
) -> Result<(f64, f64)> {
    let fs = fold_set(&t.inputs.features, &t.row_image, folds, fold);
    if fs.val.y.is_empty() || fs.train.y.is_empty() {
        return Err(TlError::invalid(format!(
            "fold {} of {} is empty: too few training images for that many folds",
            fold + 1,
            folds.k
        )));
    }
    let s = match trial {
        Some(trial) => settings_for(t.base, trial, fs.train_len(), t.finetune),
        None => t.base.clone(),
    };
    let (_, config, mut outcome) = fit(&s, t.rt, &fs, t.classes.len())?;
    let report = match (&s.finetune, t.cut, &t.inputs.rows) {
        (Some(f), Some(cut), Some(trunk)) => {
            let rows = fold_set(trunk, &t.row_image, folds, fold);
            let ctx = Context {
                rt: t.rt,
                cfg: s.finetune_config(f, config.l2),
                unfreeze: f.unfreeze,
                split: cut,
                features: &fs,
                rows: Some(&rows),
                preprocess: t.spec.preprocess(),
                announce: false,
            };
            let tuned = stage_two(&ctx, cut.load_top(t.rt.device)?, &mut outcome.head)?;
            let val = TensorRows {
                x: &tuned.val_features,
                y: &fs.val_y,
            };
            validation_report(&outcome.head, &val, &fs.val, t.classes)?
        }
        _ => validation_report(&outcome.head, &*fs.val_source(), &fs.val, t.classes)?,
    };
    let r = report.ok_or_else(|| TlError::invalid("a fold without held-out images"))?;
    Ok((r.mean_class_accuracy, r.loss))
}

/// Whether the training images' classes are imbalanced (largest ≥ 3× the smallest).
pub(crate) fn imbalanced(f: &FeatureSet, classes: usize) -> bool {
    crate::workflow::train::imbalance_ratio(&f.train_counts(classes))
        >= crate::workflow::train::IMBALANCE_RATIO
}
