//! A run folder: everything `eval`, `predict`, `dream` and `attack` need from a training run.
//!
//! ```text
//! config.json      every setting, the seed, the backbone's path and sha256
//! classes.json     class names in label order
//! head.safetensors head weights (with the feature standardisation statistics)
//! metrics.jsonl    one line per epoch
//! report.json      final metrics, extraction statistics, skipped files
//! ```
use crate::backbone::BackboneSpec;
use crate::error::{Result, TlError};
use crate::head::HeadConfig;
use crate::preprocess::PreprocessConfig;
use crate::train::TrainConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CONFIG: &str = "config.json";
pub const CLASSES: &str = "classes.json";
pub const HEAD: &str = "head.safetensors";
pub const METRICS: &str = "metrics.jsonl";
pub const REPORT: &str = "report.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackboneRecord {
    /// What the user passed to `--backbone`.
    pub spec: String,
    pub name: String,
    pub architecture: String,
    pub sidecar: Option<PathBuf>,
    pub features_file: PathBuf,
    pub features_sha256: String,
    pub feature_dim: i64,
    pub pretrained: Option<bool>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataRecord {
    pub root: PathBuf,
    pub layout: crate::data::Layout,
    pub val_split: Option<f64>,
    pub val_dir: Option<PathBuf>,
    pub train_images: usize,
    pub val_images: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExtractRecord {
    pub batch_size: usize,
    pub threads: usize,
    pub device: String,
    pub cache_dir: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub tl_version: String,
    pub created_at: String,
    pub seed: u64,
    pub backbone: BackboneRecord,
    pub preprocess: PreprocessConfig,
    pub data: DataRecord,
    pub head: HeadConfig,
    pub train: TrainConfig,
    pub extract: ExtractRecord,
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
            return Err(TlError::file(dir, "run folder not found"));
        }
        let config_path = dir.join(CONFIG);
        if !config_path.is_file() {
            return Err(TlError::file(dir, "not a tl run folder (no config.json)"));
        }
        let config: RunConfig = crate::util::read_json(&config_path)?;
        let classes: Vec<String> = crate::util::read_json(&dir.join(CLASSES))?;
        if classes.len() as i64 != config.head.num_classes {
            return Err(TlError::file(
                dir.join(CLASSES),
                format!(
                    "{} classes but the head has {}",
                    classes.len(),
                    config.head.num_classes
                ),
            ));
        }
        if !dir.join(HEAD).is_file() {
            return Err(TlError::file(
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

    /// The backbone the run was trained on, checked to be byte-for-byte the same file.
    pub fn backbone(&self) -> Result<(BackboneSpec, String)> {
        let rec = &self.config.backbone;
        let spec = match &rec.sidecar {
            Some(sidecar) if sidecar.is_file() => {
                let mut s = BackboneSpec::from_sidecar(sidecar)?;
                s.features_path = rec.features_file.clone();
                s
            }
            _ => BackboneSpec {
                name: rec.name.clone(),
                sidecar_path: None,
                sidecar: None,
                features_path: rec.features_file.clone(),
                classifier_path: None,
                features_hash: Default::default(),
            },
        };
        if !spec.features_path.is_file() {
            return Err(TlError::file(
                &spec.features_path,
                "the run's backbone file is missing (moved or deleted since training?)",
            ));
        }
        // Compared with the run's record first: "changed since training" is the useful
        // message here (the file was checked against its sidecar when the run was trained).
        let hash = crate::util::sha256_file(&spec.features_path)?;
        if hash != rec.features_sha256 {
            return Err(TlError::file(
                &spec.features_path,
                format!("backbone changed since this run was trained (sha256 {}… now, {}… at training); re-train or restore the file", &hash[..12], &rec.features_sha256[..12]),
            ));
        }
        let _ = spec.features_hash.set(hash.clone());
        Ok((spec, hash))
    }
}

/// A new, empty run folder: `--out DIR` (refused if it exists and is not empty, unless
/// `force`), or `runs/<timestamp>-<backbone>`.
pub fn create_dir(out: Option<&Path>, backbone_name: &str, force: bool) -> Result<PathBuf> {
    let dir = match out {
        Some(d) => {
            if d.exists() {
                let non_empty = std::fs::read_dir(d)
                    .map(|mut r| r.next().is_some())
                    .unwrap_or(true);
                if non_empty && !force {
                    return Err(TlError::file(
                        d,
                        "output folder exists and is not empty (pass --force to write into it)",
                    ));
                }
            }
            d.to_path_buf()
        }
        None => {
            let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
            let base = PathBuf::from("runs").join(format!("{stamp}-{backbone_name}"));
            let mut dir = base.clone();
            let mut n = 1;
            while dir.exists() {
                n += 1;
                dir = PathBuf::from(format!("{}-{n}", base.display()));
            }
            dir
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| TlError::file(&dir, e.to_string()))?;
    Ok(dir)
}
