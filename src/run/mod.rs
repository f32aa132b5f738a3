//! Stage 5: a run folder, everything `eval`, `predict`, `dream` and `attack` need from a
//! training run.
//!
//! ```text
//! config.json      every setting, the seed, the backbone's path and sha256
//! classes.json     class names in label order
//! head.safetensors head weights (with the feature standardisation statistics)
//! finetuned.safetensors  the fine-tuned top blocks (`--finetune` runs only)
//! split.json       the exact training and validation files (path and content hash)
//! metrics.jsonl    one line per epoch
//! report.json      final metrics, extraction statistics, skipped and ignored files
//! report.html      the same as a page: curves, confusion matrix, worst images (`tl report`)
//! unknown.safetensors  reference features and calibration scores of the "unknown" judge
//! ```
//!
//! A run is written into a hidden staging folder beside its destination and moved into
//! place only when every file is complete: an error, a full disk or an interrupt leaves
//! no half-written run behind.
mod config;
use crate::error::{Result, TlError};
use crate::features::cut::{BackboneCut, FeatureNet, TrainableTop};
use crate::features::BackboneSpec;
use crate::head::{EpochMetrics, Head, UnknownJudge};
use crate::util::fs::{to_json_pretty, StagedDir};
use crate::util::{write_atomic, write_json_atomic, FilePath};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const CONFIG: &str = "config.json";
pub const CLASSES: &str = "classes.json";
pub const HEAD: &str = "head.safetensors";
pub const FINETUNED: &str = "finetuned.safetensors";
pub const SPLIT: &str = "split.json";
pub const METRICS: &str = "metrics.jsonl";
pub const REPORT: &str = "report.json";
pub const REPORT_HTML: &str = "report.html";
pub const UNKNOWN: &str = "unknown.safetensors";

pub use config::*;

/// One image of the recorded split: where it was and what it held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitEntry {
    /// Relative to the dataset folder when inside it.
    pub path: FilePath,
    /// blake3 content key (as in the feature cache).
    pub key: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DatasetSplit {
    pub train: Vec<SplitEntry>,
    pub val: Vec<SplitEntry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Train,
    Val,
}

/// How the files of a folder today map onto the recorded split.
#[derive(Clone, Debug, Default)]
pub struct SplitMatch {
    /// Indices (into the files given) on each side.
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    /// Files in neither recorded list (added since training).
    pub new: Vec<usize>,
    /// Recorded files not found (removed or edited since training).
    pub missing_train: Vec<FilePath>,
    pub missing_val: Vec<FilePath>,
}

impl DatasetSplit {
    pub fn entry(root: &Path, path: &Path, key: &str) -> SplitEntry {
        SplitEntry {
            path: FilePath(path.strip_prefix(root).unwrap_or(path).to_path_buf()),
            key: key.to_string(),
        }
    }

    /// Match files (path relative to `root`, content key) against the record: by path and
    /// content first, then by content alone (a file moved or renamed).
    pub fn locate(&self, root: &Path, files: &[(PathBuf, Option<String>)]) -> SplitMatch {
        let mut by_entry: HashMap<(&Path, &str), Side> = HashMap::new();
        let mut by_key: HashMap<&str, Vec<Side>> = HashMap::new();
        for (side, list) in [(Side::Train, &self.train), (Side::Val, &self.val)] {
            for e in list {
                by_entry.insert((e.path.as_path(), e.key.as_str()), side);
                by_key.entry(e.key.as_str()).or_default().push(side);
            }
        }
        let mut seen: std::collections::HashSet<&str> = Default::default();
        let mut m = SplitMatch::default();
        for (i, (path, key)) in files.iter().enumerate() {
            let Some(key) = key.as_deref() else {
                m.new.push(i);
                continue;
            };
            let rel = path.strip_prefix(root).unwrap_or(path);
            let side = by_entry.get(&(rel, key)).copied().or_else(|| {
                by_key
                    .get(key)
                    .filter(|sides| sides.iter().all(|s| *s == sides[0]))
                    .map(|sides| sides[0])
            });
            match side {
                Some(Side::Train) => m.train.push(i),
                Some(Side::Val) => m.val.push(i),
                None => m.new.push(i),
            }
            if side.is_some() {
                seen.insert(key);
            }
        }
        for e in &self.train {
            if !seen.contains(e.key.as_str()) {
                m.missing_train.push(e.path.clone());
            }
        }
        for e in &self.val {
            if !seen.contains(e.key.as_str()) {
                m.missing_val.push(e.path.clone());
            }
        }
        m
    }
}

/// A trained run, loaded from its folder.
pub struct Run {
    pub dir: PathBuf,
    pub config: RunConfig,
    pub classes: Vec<String>,
}

impl Run {
    pub fn open(dir: &Path) -> Result<Run> {
        if !dir.is_dir() {
            return Err(TlError::not_found(dir, "run folder not found"));
        }
        let config_path = dir.join(CONFIG);
        if !config_path.is_file() {
            return Err(TlError::corrupt(
                dir,
                "not a tl run folder (no config.json)",
            ));
        }
        let config: RunConfig = crate::util::read_json(&config_path)?;
        config
            .preprocess
            .validate()
            .map_err(|why| TlError::corrupt(&config_path, format!("preprocess: {why}")))?;
        if let Some(c) = &config.calibration {
            if !(c.temperature.is_finite() && c.temperature > 0.0) {
                return Err(TlError::corrupt(
                    &config_path,
                    "calibration.temperature must be a positive number",
                ));
            }
        }
        let classes: Vec<String> = crate::util::read_json(&dir.join(CLASSES))?;
        let distinct: std::collections::HashSet<&String> = classes.iter().collect();
        if distinct.len() != classes.len() {
            return Err(TlError::corrupt(
                dir.join(CLASSES),
                "names a class twice (edited since training?)",
            ));
        }
        if classes.len() as i64 != config.head.num_classes {
            return Err(TlError::corrupt(
                dir.join(CLASSES),
                format!(
                    "{} classes but the head has {}",
                    classes.len(),
                    config.head.num_classes
                ),
            ));
        }
        if config.finetune.is_some() && !dir.join(FINETUNED).is_file() {
            return Err(TlError::corrupt(
                dir.join(FINETUNED),
                "fine-tuned weights missing (training did not finish?)",
            ));
        }
        if !dir.join(HEAD).is_file() {
            return Err(TlError::corrupt(
                dir.join(HEAD),
                "head weights missing (training did not finish?)",
            ));
        }
        Ok(Run {
            dir: dir.to_path_buf(),
            config,
            classes,
        })
    }

    pub fn head_path(&self) -> PathBuf {
        self.dir.join(HEAD)
    }

    /// The head, with the run's temperature.
    pub fn load_head(&self, device: tch::Device) -> Result<Head> {
        let mut head = Head::load(self.config.head.clone(), &self.head_path(), device)?;
        if let Some(c) = &self.config.calibration {
            head.set_temperature(c.temperature)
                .map_err(|e| TlError::context(self.dir.join(CONFIG).display().to_string(), e))?;
        }
        Ok(head)
    }

    /// The "unknown" judge and its threshold at `accept` (None: the run's own), or None for
    /// runs made before it.
    pub fn load_judge(
        &self,
        accept: Option<f64>,
        device: tch::Device,
    ) -> Result<Option<(UnknownJudge, f64)>> {
        let Some(rec) = &self.config.unknown else {
            return Ok(None);
        };
        let config = self.dir.join(CONFIG);
        crate::head::unknown::check_accept(rec.accept)
            .map_err(|e| TlError::context(config.display().to_string(), e))?;
        let path = self.dir.join(UNKNOWN);
        if !path.is_file() {
            return Err(TlError::corrupt(
                &path,
                "missing: config.json records an unknown judge (restore the file, or predict with --no-unknown)",
            ));
        }
        let judge = UnknownJudge::load(&path, rec.k, self.config.head.in_dim, device)?;
        let threshold = match accept {
            Some(a) => judge.threshold(a),
            None => rec.threshold,
        };
        if !threshold.is_finite() {
            return Err(TlError::corrupt(
                &config,
                "the unknown threshold is not a number",
            ));
        }
        Ok(Some((judge, threshold)))
    }

    /// The run's split of the backbone, its files checked against the run's record.
    pub fn split_spec(&self) -> Result<Option<BackboneCut>> {
        let Some(rec) = &self.config.finetune else {
            return Ok(None);
        };
        let split = BackboneCut::resolve(&self.backbone()?, rec.unfreeze)?;
        let changed = |path: &Path, now: &str, then: &str| {
            TlError::corrupt(
                path,
                format!(
                    "changed since this run was trained (sha256 {}… now, {}… at training); re-train or restore the file",
                    &now[..12.min(now.len())],
                    &then[..12.min(then.len())]
                ),
            )
        };
        let top_hash = crate::util::sha256_file(&split.top_path)?;
        if top_hash != rec.top_sha256 {
            return Err(changed(&split.top_path, &top_hash, &rec.top_sha256));
        }
        if let (Some(trunk), Some(then)) = (&split.trunk, &rec.trunk_sha256) {
            let now = crate::util::sha256_file(&trunk.features_path)?;
            if &now != then {
                return Err(changed(&trunk.features_path, &now, then));
            }
            let _ = trunk.features_hash.set(now);
        }
        Ok(Some(split))
    }

    /// The run's fine-tuned top, weights loaded and frozen.
    pub fn load_top(&self, split: &BackboneCut, device: tch::Device) -> Result<TrainableTop> {
        let mut top = split.load_top(device)?;
        top.load_weights(&self.dir.join(FINETUNED))?;
        top.vs.freeze();
        Ok(top)
    }

    /// Images to features as this run computes them (frozen backbone, or trunk + fine-tuned top).
    pub fn feature_net(&self, device: tch::Device) -> Result<FeatureNet> {
        match self.split_spec()? {
            None => Ok(FeatureNet::Frozen(self.backbone()?.load_features(device)?)),
            Some(split) => {
                let trunk = match &split.trunk {
                    Some(t) => Some(t.load_features(device)?),
                    None => None,
                };
                let top = self.load_top(&split, device)?;
                Ok(FeatureNet::Cut { trunk, top })
            }
        }
    }

    /// The run's backbone (from [`Run::backbone`]) on the engine `choice` picks, its ONNX
    /// export (when that is the engine) checked against the one recorded at training.
    pub fn on_engine(
        &self,
        backbone: BackboneSpec,
        choice: crate::runtime::EngineChoice,
        precision: crate::runtime::PrecisionChoice,
        device: tch::Device,
    ) -> Result<BackboneSpec> {
        let spec = backbone.for_engine(choice, precision, device)?;
        let on_export = spec.engine != crate::features::Engine::Torch;
        let rec = &self.config.backbone;
        // The bf16 export is pinned by its own hash; runs made before it by the export it
        // was made from.
        let pinned = match (spec.runs_bf16_export(), &rec.onnx_bf16_sha256) {
            (true, Some(then)) => Some((spec.verified_features_hash()?, then)),
            (true, None) => spec
                .sidecar
                .as_ref()
                .and_then(|s| s.onnx.features.as_ref())
                .map(|f| f.sha256.clone())
                .zip(rec.onnx_sha256.as_ref()),
            (false, _) if on_export => rec
                .onnx_sha256
                .as_ref()
                .map(|then| spec.verified_features_hash().map(|now| (now, then)))
                .transpose()?,
            (false, _) => None,
        };
        if let Some((now, then)) = pinned {
            if &now != then {
                return Err(TlError::corrupt(
                    &spec.features_path,
                    format!(
                        "ONNX export changed since this run was trained {}; restore it, re-train, or use --engine torch",
                        hashes(&now, then)
                    ),
                ));
            }
        }
        Ok(spec)
    }

    /// The recorded training/validation files (runs of older versions have none).
    pub fn split(&self) -> Result<Option<DatasetSplit>> {
        let path = self.dir.join(SPLIT);
        if !path.is_file() {
            return Ok(None);
        }
        crate::util::read_json(&path).map(Some)
    }

    /// The backbone the run was trained on, checked to be byte-for-byte the same file.
    pub fn backbone(&self) -> Result<BackboneSpec> {
        let rec = &self.config.backbone;
        let spec = match &rec.sidecar {
            Some(sidecar) if sidecar.is_file() => {
                let mut s = BackboneSpec::from_sidecar(sidecar)?;
                // The file config.json names must be the sidecar's feature extractor (not,
                // say, its classifier with the sha256 edited to match).
                if let Some(sha) = s.sidecar.as_ref().and_then(|x| x.features_sha256.as_ref()) {
                    if sha != &rec.features_sha256 {
                        return Err(TlError::corrupt(
                            self.dir.join(CONFIG),
                            format!(
                                "backbone.features_sha256 is not the feature extractor's in {} (edited since training?)",
                                sidecar
                            ),
                        ));
                    }
                }
                s.features_path = rec.features_file.0.clone();
                s
            }
            _ => BackboneSpec::raw(&rec.name, &rec.features_file),
        };
        if !spec.features_path.is_file() {
            return Err(TlError::corrupt(
                &spec.features_path,
                "the run's backbone file is missing (moved or deleted since training?)",
            ));
        }
        // Compared with the run's record first: "changed since training" is the useful
        // message here (the file was checked against its sidecar when the run was trained).
        let hash = crate::util::sha256_file(&spec.features_path)?;
        if hash != rec.features_sha256 {
            return Err(TlError::corrupt(
                &spec.features_path,
                format!(
                    "backbone changed since this run was trained {}; re-train or restore the file",
                    hashes(&hash, &rec.features_sha256)
                ),
            ));
        }
        let _ = spec.features_hash.set(hash);
        // One source of preprocessing: what config.json records (and predict and export
        // use) must be what the backbone's sidecar says (what extraction uses).
        if spec.sidecar.is_some() && spec.preprocess() != self.config.preprocess {
            return Err(TlError::corrupt(
                self.dir.join(CONFIG),
                format!(
                    "preprocess {:?} differs from the backbone sidecar's {:?} (edited since training?)",
                    self.config.preprocess,
                    spec.preprocess()
                ),
            ));
        }
        Ok(spec)
    }
}

/// "(sha256 abc… now, def… at training)".
fn hashes(now: &str, then: &str) -> String {
    let short = |h: &str| h.get(..12).unwrap_or(h).to_string();
    format!("(sha256 {}… now, {}… at training)", short(now), short(then))
}

/// `runs/<timestamp>-<backbone>`, numbered if that exists, created empty now: creating a
/// folder is atomic, so two runs started in the same second never get the same one (the
/// run is later renamed over the empty folder).
pub fn reserve_default_dir(backbone_name: &str) -> Result<PathBuf> {
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    let runs = PathBuf::from("runs");
    std::fs::create_dir_all(&runs).map_err(|e| TlError::io(&runs, e))?;
    let base = runs.join(format!("{stamp}-{backbone_name}"));
    for n in 1..10_000 {
        let dir = match n {
            1 => base.clone(),
            n => PathBuf::from(format!("{}-{n}", base.display())),
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(TlError::io(&dir, e)),
        }
    }
    Err(TlError::bad_path(&base, "no free run folder name"))
}

/// Everything a finished training run writes.
pub struct RunContents<'a, R: Serialize> {
    pub config: &'a RunConfig,
    pub classes: &'a [String],
    pub head: &'a Head,
    pub split: &'a DatasetSplit,
    pub metrics: &'a [EpochMetrics],
    pub report: &'a R,
    /// The fine-tuned top (`--finetune` runs).
    pub top: Option<&'a TrainableTop>,
    /// The HTML page of the run (report.html), when it could be made.
    pub html: Option<&'a str>,
    /// The "unknown" judge (config.json records how it decides).
    pub judge: Option<&'a UnknownJudge>,
}

/// Check early (before any work) that a run may be written at `dest`.
pub use crate::util::fs::check_run_destination as check_destination;

/// Write a run into `dest` (see the module comment): all files or none.
pub fn write<R: Serialize>(dest: &Path, force: bool, c: &RunContents<R>) -> Result<PathBuf> {
    let staged = StagedDir::new(dest, force)?;
    match write_files(staged.path(), c) {
        Ok(()) => staged.commit(),
        Err(e) => Err(staged.relocate_error(e)),
    }
}

fn write_files<R: Serialize>(dir: &Path, c: &RunContents<R>) -> Result<()> {
    write_json_atomic(&dir.join(CONFIG), c.config)?;
    write_json_atomic(&dir.join(CLASSES), c.classes)?;
    c.head.save(&dir.join(HEAD))?;
    if let Some(top) = c.top {
        top.save(&dir.join(FINETUNED))?;
    }
    if let Some(judge) = c.judge {
        judge.save(&dir.join(UNKNOWN))?;
    }
    write_json_atomic(&dir.join(SPLIT), c.split)?;
    let metrics: String = (c.metrics.iter())
        .map(|m| serde_json::to_string(m).map(|line| line + "\n"))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| TlError::corrupt(dir.join(METRICS), e.to_string()))?;
    write_atomic(&dir.join(METRICS), metrics.as_bytes())?;
    let report = to_json_pretty(c.report)
        .map_err(|e| TlError::corrupt(dir.join(REPORT), format!("cannot write JSON: {e}")))?;
    write_atomic(&dir.join(REPORT), format!("{report}\n").as_bytes())?;
    if let Some(html) = c.html {
        write_atomic(&dir.join(REPORT_HTML), html.as_bytes())?;
    }
    Ok(())
}
