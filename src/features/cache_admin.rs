//! Looking after a feature cache as a whole (`tl cache stats|verify|gc`): what it holds,
//! whether every entry is intact, and dropping what can no longer be used.
//!
//! Everything here is safe beside running extractions: segments are immutable, so
//! compaction writes a new one before it deletes the small ones it merged (a reader that
//! opened those keeps its handles; one that lists afterwards sees the new segment), and a
//! namespace is renamed away before it is deleted.
use super::cache::{
    loose_entry_path, loose_key_hash, namespace_hash, segment_files, NamespaceInfo, LAST_USED_FILE,
    NAMESPACE_FILE,
};
use super::pack::{self, RawKey, Segment};
use crate::error::{IoContext, Result, TlError};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Temporary files older than this belong to a writer that died (a live one renames its
/// file within seconds).
pub const STALE_TEMP: Duration = Duration::from_secs(3600);
/// Segments with fewer entries are merged by `gc`.
pub const SMALL_SEGMENT: usize = 1024;

#[derive(Clone, Debug, Serialize)]
pub struct NamespaceStats {
    pub dir: PathBuf,
    pub info: Option<NamespaceInfo>,
    pub dim: Option<usize>,
    pub segments: usize,
    /// Distinct images with an entry (segments and first-layout files).
    pub entries: usize,
    /// Entries stored more than once (harmless: `gc` merges them away when compacting).
    pub duplicates: usize,
    /// Entries of the first layout (one file per image).
    pub loose_entries: usize,
    pub bytes: u64,
    /// Temporary files left by writers that were killed before publishing.
    pub stale_temp_files: usize,
    pub last_used: Option<String>,
    /// Damaged entries or segments (`verify` reads every entry; `stats` only headers).
    pub problems: Vec<String>,
}

/// Every namespace folder under `<root>/features`.
pub fn namespaces(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("features"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !is_hidden(p))
        .collect();
    dirs.sort();
    dirs
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn info_of(dir: &Path) -> Option<NamespaceInfo> {
    crate::util::fs::read_json(&dir.join(NAMESPACE_FILE)).ok()
}

/// The namespace's hash as its segments record it: `namespace.json`'s, unless every
/// segment header names one other hash, in which case namespace.json was edited or damaged
/// (the next run repairs it) and the segments are trusted, not deleted as misplaced.
fn ns_hash_of(dir: &Path, info: &NamespaceInfo) -> [u8; 32] {
    let from_info = namespace_hash(&info.namespace());
    let headers: HashSet<[u8; 32]> = segment_files(dir)
        .iter()
        .filter_map(|p| pack::header_hash(p))
        .collect();
    match headers.len() {
        1 if !headers.contains(&from_info) => headers.into_iter().next().unwrap_or(from_info),
        _ => from_info,
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// `(path, size)` of first-layout entry files and of temporary files.
fn loose_and_temp(dir: &Path) -> (Vec<(PathBuf, u64)>, Vec<PathBuf>) {
    let (mut loose, mut temp) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tl-") && name.ends_with(".tmp") {
            temp.push(p);
        } else if p.is_dir() && name.len() == 2 {
            for f in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                let fp = f.path();
                let fname = f.file_name().to_string_lossy().into_owned();
                if fname.starts_with(".tl-") && fname.ends_with(".tmp") {
                    temp.push(fp);
                } else if fp.extension().is_some_and(|e| e == "f32") {
                    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    loose.push((fp, size));
                }
            }
        }
    }
    (loose, temp)
}

fn is_stale(p: &Path, now: SystemTime) -> bool {
    modified(p)
        .and_then(|m| now.duration_since(m).ok())
        .is_some_and(|age| age >= STALE_TEMP)
}

/// What one namespace holds; with `verify`, every entry is read and checked.
pub fn namespace_stats(dir: &Path, verify: bool) -> NamespaceStats {
    let info = info_of(dir);
    let mut st = NamespaceStats {
        dir: dir.to_path_buf(),
        info: info.clone(),
        dim: None,
        segments: 0,
        entries: 0,
        duplicates: 0,
        loose_entries: 0,
        bytes: 0,
        stale_temp_files: 0,
        last_used: modified(&dir.join(LAST_USED_FILE))
            .map(|t| chrono::DateTime::<chrono::Local>::from(t).to_rfc3339()),
        problems: Vec::new(),
    };
    let mut seen: HashSet<RawKey> = HashSet::new();
    for path in segment_files(dir) {
        st.bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let Some(info) = &info else {
            st.problems.push(format!(
                "{}: the namespace has no {NAMESPACE_FILE}",
                path.display()
            ));
            continue;
        };
        match Segment::open(&path, &ns_hash_of(dir, info)) {
            Err(why) => st.problems.push(why.to_string()),
            Ok(seg) => {
                st.segments += 1;
                st.dim = Some(seg.dim);
                for (i, key) in seg.keys.iter().enumerate() {
                    if verify {
                        if let Err(why) = seg.read(i) {
                            st.problems.push(format!(
                                "{}: entry {}: {}",
                                path.display(),
                                pack::key_hex(key),
                                why.what()
                            ));
                            continue;
                        }
                    }
                    if !seen.insert(*key) {
                        st.duplicates += 1;
                    }
                }
            }
        }
    }
    let (loose, temp) = loose_and_temp(dir);
    let now = SystemTime::now();
    st.stale_temp_files = temp.iter().filter(|p| is_stale(p, now)).count();
    for (path, size) in &loose {
        st.bytes += size;
        st.loose_entries += 1;
        if verify {
            if let Err(why) = check_loose(dir, path, info.as_ref()) {
                st.problems.push(why.to_string());
                continue;
            }
        }
        if let Some(key) = path
            .file_stem()
            .and_then(|s| pack::parse_key(&s.to_string_lossy()))
        {
            if !seen.insert(key) {
                st.duplicates += 1;
            }
        }
    }
    st.entries = seen.len();
    st
}

/// The features of a first-layout entry file, checked.
fn check_loose(dir: &Path, path: &Path, info: Option<&NamespaceInfo>) -> Result<Vec<f32>> {
    let key = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if loose_entry_path(dir, &key).as_deref() != Some(path) {
        return Err(TlError::corrupt(path, "not where its name says"));
    }
    let info = info
        .ok_or_else(|| TlError::corrupt(dir, format!("the namespace has no {NAMESPACE_FILE}")))?;
    let key_hash = loose_key_hash(&info.namespace(), &key);
    let bytes = std::fs::read(path).with_path(path)?;
    super::cache::decode_entry(&bytes, &key_hash, None)
        .map_err(|why| TlError::corrupt(path, why.to_string()))
}

/// Whether a namespace's backbone is still there, as far as this machine can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackboneState {
    /// A recorded file is there unchanged, or it cannot be told (no record, unreadable).
    Usable,
    /// Every recorded file that is visible has other bytes now: provably unusable.
    Changed(String),
    /// No recorded file is visible here: deleted, or on a disk this machine does not mount.
    Missing(String),
}

/// The state of a namespace's backbone files (see [`BackboneState`]); a namespace.json
/// that its own segments contradict proves nothing.
pub fn backbone_state(dir: &Path, info: &NamespaceInfo) -> BackboneState {
    if info.backbone_files.is_empty() || ns_hash_of(dir, info) != namespace_hash(&info.namespace())
    {
        return BackboneState::Usable;
    }
    let (mut missing, mut changed) = (Vec::new(), Vec::new());
    for file in &info.backbone_files {
        if !file.is_file() {
            missing.push(format!("{} not found", file.display()));
            continue;
        }
        match crate::util::fs::sha256_file(file) {
            Ok(sha) if sha != info.backbone_sha256 => {
                changed.push(format!("{} has changed since", file.display()))
            }
            // Still there (or unreadable now: kept, to be safe).
            _ => return BackboneState::Usable,
        }
    }
    if changed.is_empty() {
        BackboneState::Missing(format!("backbone file {}", missing.join("; ")))
    } else {
        changed.extend(missing);
        BackboneState::Changed(format!("backbone file {}", changed.join("; ")))
    }
}

/// Delete a namespace: renamed out of sight first, so no reader sees half of it.
pub fn remove_namespace(dir: &Path) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trash =
        crate::util::fs::parent_dir(dir).join(format!(".trash-{name}-{}", std::process::id()));
    std::fs::rename(dir, &trash).with_path(dir)?;
    std::fs::remove_dir_all(&trash).with_path(&trash)
}

/// Namespaces a killed `tl cache gc` had renamed away (`.trash-NS-PID`) but not finished
/// deleting: removed (their process is gone); returns (folders, bytes).
pub fn remove_abandoned_trash(root: &Path, dry_run: bool) -> (usize, u64) {
    let mut done = (0, 0);
    for entry in std::fs::read_dir(root.join("features"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(".trash-")
            .and_then(|rest| rest.rsplit('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() as i32 || crate::util::fs::process_alive(pid) {
            continue;
        }
        let bytes = folder_bytes(&entry.path());
        if dry_run || std::fs::remove_dir_all(entry.path()).is_ok() {
            done = (done.0 + 1, done.1 + bytes);
        }
    }
    done
}

fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Stale temporary files of a namespace, removed; returns how many.
pub fn remove_stale_temp(dir: &Path, dry_run: bool) -> usize {
    let now = SystemTime::now();
    let (_, temp) = loose_and_temp(dir);
    temp.iter()
        .filter(|p| is_stale(p, now))
        .filter(|p| dry_run || std::fs::remove_file(p).is_ok())
        .count()
}

/// What compacting a namespace did (or would do).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compaction {
    /// Small segments and first-layout files merged into one new segment.
    pub files_merged: usize,
    /// Entries in the new segment.
    pub entries: usize,
    /// Segments that cannot be used (damaged, truncated, or another namespace's), removed.
    pub damaged_removed: usize,
    /// A segment with a damaged record was rewritten with its good ones.
    pub repaired: bool,
    /// Bytes no longer on disk (removed files less the new segment).
    pub freed_bytes: u64,
}

/// Valid, distinct entries of the small segments and first-layout files of a namespace,
/// and the files they came from; segment files that cannot be used are listed apart.
type Gathered = (Vec<(RawKey, Vec<f32>)>, Vec<PathBuf>, Vec<PathBuf>, bool);

fn gather_small(dir: &Path, info: &NamespaceInfo, ns: &[u8; 32]) -> Gathered {
    let (mut entries, mut merged, mut damaged) = (Vec::new(), Vec::new(), Vec::new());
    let mut repair = false;
    let mut seen: HashSet<RawKey> = HashSet::new();
    // Newest first, so that a recomputed entry wins over an older copy.
    for path in segment_files(dir).into_iter().rev() {
        let seg = match Segment::open(&path, ns) {
            Ok(seg) => seg,
            // A regular file this user cannot open (another user's, mode 600) is not proof
            // of damage: kept.
            Err(_) if is_unopenable_file(&path) => continue,
            Err(_) if path.symlink_metadata().is_ok_and(|m| !m.is_dir()) => {
                damaged.push(path);
                continue;
            }
            Err(_) => continue,
        };
        // A large segment is left alone unless a record in it is damaged: then it is
        // rewritten with its good records (which means reading it all: gc's price).
        if seg.keys.len() >= SMALL_SEGMENT && (0..seg.keys.len()).all(|i| seg.read(i).is_ok()) {
            continue;
        }
        for (i, key) in seg.keys.iter().enumerate() {
            match seg.read(i) {
                Ok(v) => {
                    if seen.insert(*key) {
                        entries.push((*key, v));
                    }
                }
                Err(_) => repair = true,
            }
        }
        merged.push(path);
    }
    for (path, _) in loose_and_temp(dir).0 {
        let key = path
            .file_stem()
            .and_then(|s| pack::parse_key(&s.to_string_lossy()));
        if let (Ok(v), Some(key)) = (check_loose(dir, &path, Some(info)), key) {
            if seen.insert(key) {
                entries.push((key, v));
            }
        }
        merged.push(path);
    }
    (entries, merged, damaged, repair)
}

/// A regular file that cannot be opened for reading (permissions, I/O errors).
fn is_unopenable_file(path: &Path) -> bool {
    path.metadata().is_ok_and(|m| m.is_file()) && std::fs::File::open(path).is_err()
}

/// Merge the small segments and first-layout files of a namespace into one segment (valid,
/// distinct entries only), and remove segment files that cannot be used.
pub fn compact(dir: &Path, dry_run: bool) -> Result<Compaction> {
    let Some(info) = info_of(dir) else {
        return Ok(Compaction::default());
    };
    // Read from every segment header once: gathering and writing use the same hash.
    let ns = ns_hash_of(dir, &info);
    let (entries, merged, damaged, repair) = gather_small(dir, &info, &ns);
    let mut out = Compaction {
        damaged_removed: damaged.len(),
        repaired: repair,
        ..Default::default()
    };
    let size = |p: &PathBuf| std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0);
    out.freed_bytes = damaged.iter().map(size).sum();
    if !dry_run {
        for path in &damaged {
            std::fs::remove_file(path).with_path(path)?;
        }
    }
    if merged.len() < 2 && !repair {
        return Ok(out);
    }
    out.files_merged = merged.len();
    out.entries = entries.len();
    if dry_run {
        return Ok(out);
    }
    let mut written = 0u64;
    let dims: HashSet<usize> = entries.iter().map(|(_, v)| v.len()).collect();
    for dim in dims {
        let same: Vec<(RawKey, Vec<f32>)> = entries
            .iter()
            .filter(|(_, v)| v.len() == dim)
            .cloned()
            .collect();
        let bytes = pack::encode(&ns, dim, &same);
        written += bytes.len() as u64;
        crate::util::fs::write_atomic(&dir.join(super::cache::segment_name()), &bytes)?;
    }
    let merged_bytes: u64 = merged.iter().map(size).sum();
    for path in &merged {
        std::fs::remove_file(path).with_path(path)?;
    }
    out.freed_bytes += merged_bytes.saturating_sub(written);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::PreprocessConfig;
    use crate::features::cache::{encode_entry, FeatureCache, Lookup};

    /// A cache of the first layout (one file per image) is read, verified and packed by gc.
    #[test]
    fn first_layout_entries_are_read_verified_and_packed() {
        let root = tempfile::tempdir().unwrap();
        let sha = "cd".repeat(32);
        let pre = PreprocessConfig::default();
        let cache = FeatureCache::open(root.path(), &sha, &pre, "", None).unwrap();
        let dir = cache.dir().unwrap().to_path_buf();
        let namespace = format!("{sha}-{}", pre.fingerprint());
        let keys: Vec<String> = (0..3).map(|i| format!("{i:0>32}")).collect();
        for (i, key) in keys.iter().enumerate() {
            let path = loose_entry_path(&dir, key).unwrap();
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let hash = loose_key_hash(&namespace, key);
            std::fs::write(&path, encode_entry(&[i as f32, 1.0], &hash)).unwrap();
        }
        let cache = cache.reopen();
        assert!(matches!(cache.get(&keys[1], Some(2)), Lookup::Hit(v) if v == vec![1.0, 1.0]));
        let st = namespace_stats(&dir, true);
        assert_eq!((st.entries, st.loose_entries, st.problems.len()), (3, 3, 0));
        let c = compact(&dir, false).unwrap();
        assert_eq!((c.files_merged, c.entries, c.damaged_removed), (3, 3, 0));
        let st = namespace_stats(&dir, true);
        assert_eq!((st.entries, st.loose_entries, st.segments), (3, 0, 1));
        let cache = cache.reopen();
        assert!(matches!(cache.get(&keys[2], Some(2)), Lookup::Hit(v) if v == vec![2.0, 1.0]));
    }
}
