//! `tl backbones list|add|remove|verify`: the exported backbones, wherever they are found.
use crate::backbone_store::{sidecar_files, BackboneStore, Weights};
use crate::error::{Result, TlError};
use crate::eval::Report;
use crate::features::BackboneSpec;
use crate::util::text::human_bytes;
use crate::util::FilePath;
use serde::Serialize;
use std::path::Path;

/// One exported backbone.
#[derive(Clone, Debug, Serialize)]
pub struct BackboneEntry {
    pub name: String,
    pub architecture: String,
    pub feature_dim: i64,
    /// `real` or `random`.
    pub weights: String,
    /// Where the weights came from: `imagenet (URL)`, a file, `none`.
    pub weights_source: String,
    pub files: usize,
    pub bytes: u64,
    pub onnx: bool,
    pub sidecar: FilePath,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackboneList {
    pub search: Vec<FilePath>,
    pub store: FilePath,
    pub backbones: Vec<BackboneEntry>,
    /// Sidecars that could not be read, and why.
    pub unreadable: Vec<(FilePath, String)>,
}

impl Report for BackboneList {
    fn render_text(&self) -> String {
        if self.backbones.is_empty() {
            return format!(
                "no backbones exported (searched {}); `tl backbones add mobilenet_v2` exports one\n",
                self.search.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        let mut s = format!(
            "{:<18} {:<18} {:>7}  {:<7} {:>5} {:>9}  {:<4}  {}\n",
            "name", "architecture", "dim", "weights", "files", "size", "onnx", "where"
        );
        for b in &self.backbones {
            s += &format!(
                "{:<18} {:<18} {:>7}  {:<7} {:>5} {:>9}  {:<4}  {} ({})\n",
                b.name,
                b.architecture,
                b.feature_dim,
                b.weights,
                b.files,
                human_bytes(b.bytes),
                if b.onnx { "yes" } else { "no" },
                b.sidecar,
                b.weights_source
            );
        }
        s
    }
    fn notes(&self) -> Vec<String> {
        self.unreadable
            .iter()
            .map(|(p, why)| format!("warning: {p}: {why}"))
            .collect()
    }
}

pub fn list(store: &BackboneStore) -> BackboneList {
    let mut out = BackboneList {
        search: store.search.iter().cloned().map(FilePath).collect(),
        store: FilePath(store.store.clone()),
        backbones: Vec::new(),
        unreadable: Vec::new(),
    };
    for (name, sidecar) in store.all() {
        match entry(&name, &sidecar) {
            Ok(e) => out.backbones.push(e),
            Err(e) => out.unreadable.push((FilePath(sidecar), e.to_string())),
        }
    }
    out
}

fn entry(name: &str, sidecar: &Path) -> Result<BackboneEntry> {
    let spec = BackboneSpec::from_sidecar(sidecar)?;
    let side = spec
        .sidecar
        .as_ref()
        .ok_or_else(|| TlError::corrupt(sidecar, "not a tl backbone sidecar"))?;
    let raw: serde_json::Value = crate::util::read_json(sidecar)?;
    let w = &raw["weights"];
    let source = match w["source"].as_str() {
        Some("imagenet") => format!("imagenet {}", w["url"].as_str().unwrap_or("")),
        Some("file") => format!("file {}", w["file"].as_str().unwrap_or("?")),
        Some(other) => other.to_string(),
        None => "unknown".into(),
    };
    let files = sidecar_files(sidecar)?;
    let bytes = files
        .iter()
        .chain(std::iter::once(&(sidecar.to_path_buf(), None)))
        .filter_map(|(p, _)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    Ok(BackboneEntry {
        name: name.to_string(),
        architecture: side.architecture.clone(),
        feature_dim: side.feature_dim,
        weights: if side.pretrained() { "real" } else { "random" }.into(),
        weights_source: source.trim().to_string(),
        files: files.len() + 1,
        bytes,
        onnx: side.onnx.features.is_some(),
        sidecar: FilePath(sidecar.to_path_buf()),
    })
}

/// What `tl backbones add` did.
#[derive(Clone, Debug, Serialize)]
pub struct Added {
    pub backbone: BackboneEntry,
    /// false: it was there already (use --force to export again).
    pub exported: bool,
}

impl Report for Added {
    fn render_text(&self) -> String {
        let b = &self.backbone;
        format!(
            "{} {} -> {} ({} features, {} weights, {} files, {})\n",
            if self.exported {
                "exported"
            } else {
                "already exported:"
            },
            b.name,
            b.sidecar,
            b.feature_dim,
            b.weights,
            b.files,
            human_bytes(b.bytes)
        )
    }
    fn notes(&self) -> Vec<String> {
        match self.backbone.weights.as_str() {
            "random" => vec![format!(
                "warning: '{}' has random weights: for shapes and speed only, not for accuracy",
                self.backbone.name
            )],
            _ => Vec::new(),
        }
    }
}

/// Export `name` into the store (`weights` None: ImageNet).
pub fn add(
    store: &BackboneStore,
    name: &str,
    weights: Option<Weights>,
    force: bool,
) -> Result<Added> {
    let was_there = store.store.join(format!("{name}.json")).is_file();
    if let Some(Weights::File(p)) = &weights {
        if !p.is_file() {
            return Err(TlError::not_found(p, "weights file not found"));
        }
    }
    let weights = weights.unwrap_or(Weights::ImageNet);
    if !was_there || force {
        store.announce(name, &weights);
    }
    let (sidecar, exported) = store.export(name, &weights, force)?;
    Ok(Added {
        backbone: entry(name, &sidecar)?,
        exported,
    })
}

/// What `tl backbones remove` deleted.
#[derive(Clone, Debug, Serialize)]
pub struct Removed {
    pub name: String,
    pub files: Vec<FilePath>,
    pub bytes: u64,
}

impl Report for Removed {
    fn render_text(&self) -> String {
        format!(
            "removed {} ({} files, {})\n",
            self.name,
            self.files.len(),
            human_bytes(self.bytes)
        )
    }
}

/// Delete the store's export of `name`: the files its sidecar names, then the sidecar.
/// Backbones in other folders (`--backbones-dir`, ./backbones) are the user's and left alone.
pub fn remove(store: &BackboneStore, name: &str) -> Result<Removed> {
    let sidecar = store.store.join(format!("{name}.json"));
    if !sidecar.is_file() {
        let elsewhere = store
            .find(name)
            .map(|p| {
                format!(
                    " (it is in {}, which tl does not manage: delete it there yourself)",
                    p.display()
                )
            })
            .unwrap_or_default();
        return Err(TlError::invalid(format!(
            "backbone '{name}' is not in the store {}{elsewhere}",
            store.store.display()
        )));
    }
    let mut files: Vec<std::path::PathBuf> = sidecar_files(&sidecar)?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    // The sidecar first: a half-removed backbone is then absent, never half there.
    files.insert(0, sidecar);
    let mut removed = Removed {
        name: name.to_string(),
        files: Vec::new(),
        bytes: 0,
    };
    for f in files {
        let Ok(meta) = std::fs::symlink_metadata(&f) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        std::fs::remove_file(&f).map_err(|e| TlError::io(&f, e))?;
        removed.bytes += meta.len();
        removed.files.push(FilePath(f));
    }
    Ok(removed)
}

/// One file whose bytes are not what its sidecar recorded (or that is missing).
#[derive(Clone, Debug, Serialize)]
pub struct Damaged {
    pub backbone: String,
    pub file: FilePath,
    pub problem: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    pub backbones: usize,
    pub files: usize,
    pub damaged: Vec<Damaged>,
}

impl Report for Verified {
    fn render_text(&self) -> String {
        let mut s = format!(
            "{} backbone(s), {} file(s) checked: {} problem(s)\n",
            self.backbones,
            self.files,
            self.damaged.len()
        );
        for d in &self.damaged {
            s += &format!("  {} {}: {}\n", d.backbone, d.file, d.problem);
        }
        s
    }
}

/// sha256 of every file of every backbone against its sidecar.
pub fn verify(store: &BackboneStore) -> Result<Verified> {
    let mut v = Verified {
        backbones: 0,
        files: 0,
        damaged: Vec::new(),
    };
    for (name, sidecar) in store.all() {
        v.backbones += 1;
        let files = match sidecar_files(&sidecar) {
            Ok(f) => f,
            Err(e) => {
                v.damaged.push(Damaged {
                    backbone: name.clone(),
                    file: FilePath(sidecar.clone()),
                    problem: e.to_string(),
                });
                continue;
            }
        };
        for (file, want) in files {
            v.files += 1;
            let problem = match (crate::util::sha256_file(&file), want) {
                (Err(e), _) => Some(format!("cannot be read: {e}")),
                (Ok(got), Some(want)) if got != want => Some(format!(
                    "sha256 {}… differs from the sidecar's {}… (damaged or replaced)",
                    &got[..12],
                    want.get(..12).unwrap_or(&want)
                )),
                _ => None,
            };
            if let Some(problem) = problem {
                v.damaged.push(Damaged {
                    backbone: name.clone(),
                    file: FilePath(file),
                    problem,
                });
            }
        }
    }
    Ok(v)
}
