//! `tl eval`: a trained run on a labelled folder — every image, or exactly the training or
//! validation files the run recorded (found again by content, so a renamed file still
//! counts and an added one does not slip into the validation set).
use super::{gather, skipped_notes, SkippedFile};
use crate::data::{Dataset, Sample, View};
use crate::error::{Result, TlError};
use crate::eval::{ClassificationReport, Report};
use crate::features::split::{CachedRows, TrainableTop};
use crate::features::{self, BackboneSpec, CacheSettings, ExtractOptions, ExtractStats};
use crate::head::Head;
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
    let paths: Vec<PathBuf> = samples.iter().map(|x| x.path.clone()).collect();
    let net = EvalNet::load(&run, spec, rt)?;
    let mut per_image: Vec<std::result::Result<Vec<f32>, String>> = Vec::new();
    let mut stats = ExtractStats::default();
    for view in s.tta.views() {
        let (probs, st) = view_probabilities(rt, s, &net, &paths, view, &mut warnings)?;
        if view == View::Center {
            stats = st;
        }
        per_image = if per_image.is_empty() {
            probs
        } else {
            per_image
                .into_iter()
                .zip(probs)
                .map(|(a, b)| average(a, b))
                .collect()
        };
    }
    let g = gather(&samples, &per_image);
    if g.y.is_empty() {
        return Err(TlError::file(&s.data, "no readable images to evaluate"));
    }
    let probs: Vec<Vec<f32>> = g.x.chunks(run.classes.len()).map(<[f32]>::to_vec).collect();
    let labels: Vec<usize> = g.y.iter().map(|&y| y as usize).collect();
    let report =
        ClassificationReport::compute(&probs, &labels, &g.paths, &run.classes, s.top_losses);
    Ok(EvalReport {
        run: FilePath(s.run.clone()),
        data: FilePath(s.data.clone()),
        split: s.split,
        tta: s.tta,
        report,
        skipped: g.skipped,
        extraction: stats,
        split_check,
        warnings,
    })
}

/// The running mean of two views' probabilities (an image is usable only if both are).
fn average(
    a: std::result::Result<Vec<f32>, String>,
    b: std::result::Result<Vec<f32>, String>,
) -> std::result::Result<Vec<f32>, String> {
    let (a, b) = (a?, b?);
    Ok(a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect())
}

/// A run's network, split the way its cache is: what is extracted (and cached), then what
/// runs on the extracted rows.
enum EvalNet {
    /// Frozen backbone features (cached), then the head.
    Frozen { spec: BackboneSpec, head: Head },
    /// Cached trunk outputs, then the fine-tuned top and the head.
    Trunk {
        trunk: BackboneSpec,
        top: TrainableTop,
        head: Head,
    },
    /// Everything fine-tuned: images straight into the top.
    All {
        top: TrainableTop,
        head: Head,
        preprocess: crate::data::PreprocessConfig,
    },
}

impl EvalNet {
    /// The run's network; a frozen backbone on the runtime's engine.
    fn load(run: &Run, spec: BackboneSpec, rt: &Runtime) -> Result<EvalNet> {
        let device = rt.device;
        let head = run.load_head(device)?;
        let Some(split) = run.split_spec()? else {
            let spec = spec.for_engine(rt.engine, device)?;
            return Ok(EvalNet::Frozen { spec, head });
        };
        let top = run.load_top(&split, device)?;
        Ok(match split.trunk {
            Some(trunk) => EvalNet::Trunk { trunk, top, head },
            None => EvalNet::All {
                top,
                head,
                preprocess: run.config.preprocess,
            },
        })
    }

    fn head(&self) -> &Head {
        match self {
            EvalNet::Frozen { head, .. }
            | EvalNet::Trunk { head, .. }
            | EvalNet::All { head, .. } => head,
        }
    }
}

/// Per image: its class probabilities, or why it could not be used.
type PerImage = Vec<std::result::Result<Vec<f32>, String>>;

/// Class probabilities of one view of every image (or why an image could not be used).
fn view_probabilities(
    rt: &Runtime,
    s: &EvalSettings,
    net: &EvalNet,
    paths: &[PathBuf],
    view: View,
    warnings: &mut Vec<String>,
) -> Result<(PerImage, ExtractStats)> {
    let (spec, top) = match net {
        EvalNet::Frozen { spec, .. } => (spec, None),
        EvalNet::Trunk { trunk, top, .. } => (trunk, Some(top)),
        EvalNet::All {
            top, preprocess, ..
        } => {
            return Ok((
                decoded_probabilities(s, top, net.head(), preprocess, paths, view, rt.device)?,
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
    let probs = crate::util::tensors::rows(&tch::no_grad(|| {
        net.head().forward(&x).softmax(-1, tch::Kind::Float)
    }))?;
    let mut out = ex
        .features
        .iter()
        .map(|r| r.clone().map(|_| Vec::new()))
        .collect::<Vec<_>>();
    for (&i, p) in ok.iter().zip(probs) {
        out[i] = Ok(p);
    }
    Ok((out, ex.stats))
}

/// Probabilities with every block fine-tuned: nothing is cached, images are decoded per batch.
fn decoded_probabilities(
    s: &EvalSettings,
    top: &TrainableTop,
    head: &Head,
    preprocess: &crate::data::PreprocessConfig,
    paths: &[PathBuf],
    view: View,
    device: tch::Device,
) -> Result<Vec<std::result::Result<Vec<f32>, String>>> {
    let mut out: Vec<std::result::Result<Vec<f32>, String>> = vec![Err(String::new()); paths.len()];
    for (c, chunk) in paths.chunks(s.batch_size.max(1)).enumerate() {
        let batch = features::extract::decode_files(chunk, preprocess, view);
        for (i, why) in &batch.failures {
            out[c * s.batch_size + i] = Err(why.clone());
        }
        if batch.indices.is_empty() {
            continue;
        }
        let x = batch.tensor(preprocess).to_device(device);
        let probs = tch::no_grad(|| -> Result<Tensor> {
            Ok(head
                .forward(&top.forward(&x)?)
                .softmax(-1, tch::Kind::Float))
        })?;
        for (p, &i) in crate::util::tensors::rows(&probs)?
            .into_iter()
            .zip(&batch.indices)
        {
            out[c * s.batch_size + i] = Ok(p);
        }
    }
    Ok(out)
}
