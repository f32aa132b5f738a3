//! The dataset with its validation side, the features of every view (cached), and the
//! rows the head trains on.
use super::report::extraction_line;
use super::settings::{TrainSettings, ValidationChoice};
use crate::data::View;
use crate::data::{Dataset, Sample};
use crate::error::{Result, TlError};
use crate::features::cut::{BackboneCut, TrainableTop};
use crate::features::{self, BackboneSpec, ExtractOptions, Extracted, FeatureCache};
use crate::head::CachedRows;
use crate::head::StreamedRows;
use crate::runtime::Runtime;
use crate::workflow::{gather, tensor_2d, FeatureSet, SkippedFile, Streamed};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The dataset with its validation side chosen.
pub(crate) struct Prepared {
    pub(crate) dataset: Dataset,
    /// The fraction drawn by `tl`, when it drew one.
    pub(crate) val_split: Option<f64>,
    pub(crate) val_dir: Option<PathBuf>,
    /// The review's decisions, applied before the split.
    pub(crate) review: Option<(crate::data::review::Applied, String)>,
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
    // Read once: the decisions applied are the bytes the recorded sha256 is of.
    let bytes = std::fs::read(file).map_err(|e| TlError::io(file, e))?;
    let sha256 = {
        use sha2::{Digest, Sha256};
        crate::util::text::hex(&Sha256::digest(&bytes))
    };
    let review = crate::data::review::Review::parse(file, &bytes)?;
    let applied = crate::data::review::apply(dataset, &s.data, &review, file)?;
    if !applied.not_found.is_empty() {
        let w = format!(
            "{} decided file(s) in {} are not in the dataset (moved or deleted?), e.g. {}",
            applied.not_found.len(),
            file.display(),
            applied.not_found[0]
        );
        warnings.push(w);
    }
    Ok(Some((applied, sha256)))
}

pub(crate) fn prepare_dataset(s: &TrainSettings, warnings: &mut Vec<String>) -> Result<Prepared> {
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
        return Err(TlError::corrupt(
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
        warnings.push(format!("{msg} (kept: --allow-empty-classes)"));
        Ok(())
    } else {
        Err(TlError::corrupt(
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
                TlError::corrupt(
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

pub(crate) fn save_features(path: &Path, f: &FeatureSet) -> Result<()> {
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
    if let Some(w) = &ex.cache_warning {
        if !warnings.contains(w) {
            warnings.push(w.clone());
        }
    }
    Ok((ex, cache))
}

/// The plain view of every image, and the augmented views of the training images.
pub(crate) struct AllViews {
    pub(crate) plain: Extracted,
    pub(crate) augmented: Vec<Extracted>,
    pub(crate) cache_dir: Option<PathBuf>,
    pub(crate) plain_cache: FeatureCache,
}

fn extract_views(
    rt: &Runtime,
    s: &TrainSettings,
    spec: &BackboneSpec,
    dataset: &Dataset,
    warnings: &mut Vec<String>,
) -> Result<AllViews> {
    // Resolved once: the ONNX file is hashed once, however many views there are.
    let spec = &spec.for_engine(rt.engine, rt.precision, rt.device)?;
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

/// The extracted rows, the features the head trains on, and the top to fine-tune.
pub(crate) struct Inputs {
    pub(crate) views: AllViews,
    /// Cached trunk outputs (fine-tuning with a trunk).
    pub(crate) rows: Option<FeatureSet>,
    pub(crate) features: FeatureSet,
    pub(crate) top: Option<TrainableTop>,
    pub(crate) skipped: Vec<SkippedFile>,
}

pub(crate) fn inputs(
    rt: &Runtime,
    s: &TrainSettings,
    spec: &BackboneSpec,
    split: Option<&BackboneCut>,
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

/// Report unreadable files; refuse when nothing (or a class) is left.
fn check_readable(
    s: &TrainSettings,
    dataset: &Dataset,
    f: &FeatureSet,
    warnings: &mut Vec<String>,
) -> Result<Vec<SkippedFile>> {
    let mut skipped = f.train.skipped.clone();
    skipped.extend(f.val.skipped.iter().cloned());
    if f.train.y.is_empty() {
        return Err(TlError::bad_path(&s.data, "no readable training images"));
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
