//! `tl cache stats|verify|gc`: the feature cache as a whole.
use crate::error::{Result, TlError};
use crate::eval::Report;
use crate::features::cache_admin::{self, BackboneState, NamespaceStats};
use crate::util::text::human_bytes;
use crate::util::FilePath;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize)]
pub struct CacheReport {
    pub root: FilePath,
    /// Every entry was read and checked (`verify`), not only the headers (`stats`).
    pub verified: bool,
    pub namespaces: Vec<NamespaceStats>,
    pub entries: usize,
    pub bytes: u64,
    pub problems: usize,
    pub duplicates: usize,
    pub stale_temp_files: usize,
}

/// A namespace's backbone, by the file name it was computed from.
fn backbone_label(ns: &NamespaceStats) -> String {
    ns.info
        .as_ref()
        .and_then(|i| i.backbone_files.first())
        .and_then(|f| f.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown backbone".into())
}

fn folder_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Report for CacheReport {
    fn render_text(&self) -> String {
        let mut out = format!(
            "cache {}: {} namespace(s), {} entries, {}\n",
            self.root.0.display(),
            self.namespaces.len(),
            self.entries,
            human_bytes(self.bytes)
        );
        for ns in &self.namespaces {
            out += &format!(
                "  {}  {}{}  {} segment(s), {} entries{}  {}  last used {}\n",
                folder_name(&ns.dir),
                backbone_label(ns),
                ns.dim.map(|d| format!(" (dim {d})")).unwrap_or_default(),
                ns.segments,
                ns.entries,
                if ns.loose_entries > 0 {
                    format!(" ({} in single files)", ns.loose_entries)
                } else {
                    String::new()
                },
                human_bytes(ns.bytes),
                ns.last_used
                    .as_deref()
                    .map_or("never", |t| t.get(..16).unwrap_or(t)),
            );
        }
        if self.verified {
            out += &format!(
                "verify: {} entries read and checked: {} problem(s), {} duplicate(s), {} stale temporary file(s)\n",
                self.entries, self.problems, self.duplicates, self.stale_temp_files
            );
        }
        out
    }

    fn notes(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .flat_map(|n| n.problems.iter().map(|p| format!("damaged: {p}")))
            .collect()
    }
}

/// What the cache at `root` holds; `verify` reads and checks every entry.
pub fn inspect(root: &Path, verify: bool) -> Result<CacheReport> {
    if !root.is_dir() {
        return Err(TlError::bad_path(
            root,
            "no feature cache here (not a folder)",
        ));
    }
    let namespaces: Vec<NamespaceStats> = cache_admin::namespaces(root)
        .iter()
        .map(|d| cache_admin::namespace_stats(d, verify))
        .collect();
    Ok(CacheReport {
        root: FilePath(root.to_path_buf()),
        verified: verify,
        entries: namespaces.iter().map(|n| n.entries).sum(),
        bytes: namespaces.iter().map(|n| n.bytes).sum(),
        problems: namespaces.iter().map(|n| n.problems.len()).sum(),
        duplicates: namespaces.iter().map(|n| n.duplicates).sum(),
        stale_temp_files: namespaces.iter().map(|n| n.stale_temp_files).sum(),
        namespaces,
    })
}

#[derive(Clone, Debug)]
pub struct GcSettings {
    pub root: PathBuf,
    /// Also drop namespaces not used since this time.
    pub unused_since: Option<std::time::SystemTime>,
    pub dry_run: bool,
    /// Also drop namespaces whose backbone file is not found on this machine (otherwise
    /// kept: it may be on a disk this machine does not mount).
    pub drop_missing_backbones: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Removed {
    pub dir: FilePath,
    pub reason: String,
    pub bytes: u64,
    pub entries: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Compacted {
    pub dir: FilePath,
    pub files_merged: usize,
    pub entries: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct GcReport {
    pub root: FilePath,
    pub dry_run: bool,
    pub removed: Vec<Removed>,
    pub compacted: Vec<Compacted>,
    pub stale_temp_files: usize,
    /// Segment files that could not be used (damaged, or another namespace's), removed.
    pub damaged_segments: usize,
    pub freed_bytes: u64,
    /// Namespaces kept though their backbone was not found here, and why.
    pub kept: Vec<Removed>,
    /// Folders a killed gc left half-deleted, removed.
    pub abandoned_trash: usize,
}

impl Report for GcReport {
    fn render_text(&self) -> String {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let mut out = String::new();
        for r in &self.removed {
            out += &format!(
                "{verb} {} ({} entries, {}): {}\n",
                folder_name(&r.dir.0),
                r.entries,
                human_bytes(r.bytes),
                r.reason
            );
        }
        if self.abandoned_trash > 0 {
            out += &format!(
                "{verb} {} folder(s) left half-deleted by a gc that was killed\n",
                self.abandoned_trash
            );
        }
        for k in &self.kept {
            out += &format!(
                "kept {} ({} entries, {}): {} (not mounted here? --drop-missing-backbones removes it)\n",
                folder_name(&k.dir.0),
                k.entries,
                human_bytes(k.bytes),
                k.reason
            );
        }
        for c in &self.compacted {
            out += &format!(
                "{} {}: {} small file(s) → 1 segment of {} entries\n",
                if self.dry_run {
                    "would compact"
                } else {
                    "compacted"
                },
                folder_name(&c.dir.0),
                c.files_merged,
                c.entries
            );
        }
        out += &format!(
            "gc {}: {verb} {} namespace(s), {} stale temporary file(s) and {} unusable segment(s), {} {}{}\n",
            self.root.0.display(),
            self.removed.len(),
            self.stale_temp_files,
            self.damaged_segments,
            if self.dry_run {
                "would compact"
            } else {
                "compacted"
            },
            self.compacted.len(),
            if self.dry_run {
                format!(
                    "; {} would be freed (dry run: nothing changed)",
                    human_bytes(self.freed_bytes)
                )
            } else {
                format!("; {} freed", human_bytes(self.freed_bytes))
            }
        );
        out
    }
}

/// What gc does with a namespace, and why.
enum Verdict {
    Remove(String),
    /// Kept for a reason worth telling (its backbone is not visible here).
    KeepBecause(String),
    Keep,
}

fn verdict(dir: &Path, s: &GcSettings, st: &NamespaceStats) -> Verdict {
    let unused_or = |otherwise: Verdict| match unused(dir, s) {
        Some(unused) => Verdict::Remove(unused),
        None => otherwise,
    };
    match st
        .info
        .as_ref()
        .map(|i| cache_admin::backbone_state(dir, i))
    {
        Some(BackboneState::Changed(reason)) => Verdict::Remove(reason),
        Some(BackboneState::Missing(reason)) if s.drop_missing_backbones => Verdict::Remove(reason),
        Some(BackboneState::Missing(reason)) => unused_or(Verdict::KeepBecause(reason)),
        _ => unused_or(Verdict::Keep),
    }
}

/// `not used since …` when the namespace was last used before `--unused-since`.
fn unused(dir: &Path, s: &GcSettings) -> Option<String> {
    let since = s.unused_since?;
    let last = std::fs::metadata(dir.join(crate::features::cache::LAST_USED_FILE))
        .or_else(|_| std::fs::metadata(dir))
        .and_then(|m| m.modified())
        .ok()?;
    (last < since).then(|| {
        format!(
            "not used since {}",
            chrono::DateTime::<chrono::Local>::from(last).format("%Y-%m-%d %H:%M")
        )
    })
}

/// Drop namespaces whose backbone file is gone or changed (or unused since a date), stale
/// temporary files of killed writers, and merge small segments.
pub fn gc(s: &GcSettings) -> Result<GcReport> {
    if !s.root.is_dir() {
        return Err(TlError::bad_path(
            &s.root,
            "no feature cache here (not a folder)",
        ));
    }
    let mut report = GcReport {
        root: FilePath(s.root.clone()),
        dry_run: s.dry_run,
        removed: Vec::new(),
        compacted: Vec::new(),
        stale_temp_files: 0,
        damaged_segments: 0,
        freed_bytes: 0,
        kept: Vec::new(),
        abandoned_trash: 0,
    };
    // One gc at a time per cache (a second waits, then finds the work done); extraction and
    // training never take this lock.
    let features = s.root.join("features");
    let _lock = match features.is_dir() {
        true => Some(crate::util::fs::FileLock::exclusive(&features)?),
        false => None,
    };
    let (trash, trash_bytes) = cache_admin::remove_abandoned_trash(&s.root, s.dry_run);
    report.abandoned_trash = trash;
    report.freed_bytes += trash_bytes;
    for dir in cache_admin::namespaces(&s.root) {
        let st = cache_admin::namespace_stats(&dir, false);
        let reason = match verdict(&dir, s, &st) {
            Verdict::Remove(reason) => Some(reason),
            Verdict::KeepBecause(kept) => {
                report.kept.push(Removed {
                    dir: FilePath(dir.clone()),
                    reason: kept,
                    bytes: st.bytes,
                    entries: st.entries,
                });
                None
            }
            Verdict::Keep => None,
        };
        if let Some(reason) = reason {
            if !s.dry_run {
                cache_admin::remove_namespace(&dir)?;
            }
            report.freed_bytes += st.bytes;
            report.removed.push(Removed {
                dir: FilePath(dir),
                reason,
                bytes: st.bytes,
                entries: st.entries,
            });
            continue;
        }
        report.stale_temp_files += cache_admin::remove_stale_temp(&dir, s.dry_run);
        let c = cache_admin::compact(&dir, s.dry_run)?;
        report.damaged_segments += c.damaged_removed;
        report.freed_bytes += c.freed_bytes;
        if c.files_merged > 1 || c.repaired {
            report.compacted.push(Compacted {
                dir: FilePath(dir),
                files_merged: c.files_merged,
                entries: c.entries,
            });
        }
    }
    Ok(report)
}
