//! On-disk feature cache: the frozen backbone runs once per image.
//!
//! Each namespace (one backbone file by content hash, one preprocessing, one view) is a
//! folder `<root>/features/<backbone sha256>-<preprocessing fingerprint>[-view]/` holding
//! immutable segment files ([`super::pack`]): a writer gathers entries in memory and
//! publishes them a few thousand at a time with one rename, so many processes on many
//! machines can fill one cache on a shared filesystem without locks, a killed writer leaves
//! at most a temporary file (never a torn entry), and a million entries are a few hundred
//! files. An entry is keyed by the blake3 hash of the image file's bytes — renaming or
//! moving a photo keeps it, editing the photo makes a new one — and carries a checksum over
//! namespace, key and payload: a damaged entry, or a segment copied into another namespace,
//! is reported and recomputed, never trusted. Entries of the first layout (one `.f32` file
//! per image under a two-letter folder) are still read.
use super::loose::OLD_MAGIC;
pub use super::loose::{decode_entry, encode_entry, loose_entry_path, loose_key_hash, EntryDamage};
use super::pack::{self, parse_key, RawKey, Segment};
use crate::data::PreprocessConfig;
use crate::error::{IoContext, Result, TlError};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn default_root() -> PathBuf {
    if let Some(dir) = &crate::runtime::process_settings().cache_dir {
        return dir.clone();
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("tl")
}

/// The content key of an image file.
pub fn content_key(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..32].to_string()
}

pub fn file_key(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_path(path)?;
    Ok(content_key(&bytes))
}

/// Content keys of many files, in parallel on the current rayon pool.
pub fn file_keys(paths: &[PathBuf]) -> Vec<crate::error::PerImage<String>> {
    paths
        .par_iter()
        .map(|p| file_key(p).map_err(|e| crate::error::SkipReason::of(&e)))
        .collect()
}

#[derive(Debug)]
pub enum Lookup {
    Hit(Vec<f32>),
    Miss,
    /// The entry exists but is damaged or belongs elsewhere; the reason says how.
    Corrupt(String),
}

/// Where an entry lives: its segment (an index into the cache's list) and record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub segment: u32,
    pub record: u32,
}

/// What a namespace folder records about itself (`namespace.json`), for `tl cache`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NamespaceInfo {
    pub backbone_sha256: String,
    /// The backbone files (same content) the features were computed from, for `tl cache
    /// gc`: the namespace is dropped once none of them is left unchanged.
    pub backbone_files: Vec<PathBuf>,
    pub preprocess: String,
    pub view: String,
}

/// Entries not yet published, and when the oldest of them was computed.
#[derive(Default)]
struct Pending {
    entries: Vec<(RawKey, Vec<f32>)>,
    since: Option<Instant>,
}

struct Store {
    dir: PathBuf,
    ns_hash: [u8; 32],
    /// Hash of the namespace for entries of the first layout (one file per image).
    namespace: String,
    segments: Vec<Segment>,
    segment_paths: Vec<PathBuf>,
    index: HashMap<RawKey, Location>,
    /// Older copies of entries (newest first), read when the newest is damaged: a damaged
    /// copy in a segment named in the future (another host's clock) must not shadow a good
    /// one forever.
    older: HashMap<RawKey, Vec<Location>>,
    /// Segments that could not be used, and why (reported once, then recomputed).
    problems: Vec<String>,
    pending: Mutex<Pending>,
    flush_entries: usize,
    flush_after: Duration,
}

#[derive(Clone)]
pub struct FeatureCache {
    store: Option<Arc<Store>>,
}

impl std::fmt::Debug for FeatureCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FeatureCache({:?})", self.dir())
    }
}

/// Entries per published segment, and the longest computed entries wait before they are
/// published (`ProcessSettings`): what a killed writer can lose.
fn flush_limits() -> (usize, Duration) {
    let p = crate::runtime::process_settings();
    (
        p.cache_segment_entries.filter(|&n| n > 0).unwrap_or(4096),
        Duration::from_secs(p.cache_segment_seconds.filter(|&s| s > 0).unwrap_or(15)),
    )
}

impl NamespaceInfo {
    fn view_suffix(&self) -> String {
        if self.view.is_empty() {
            String::new()
        } else {
            format!("-{}", self.view)
        }
    }

    /// Everything besides the image that its features depend on, as one name.
    pub fn namespace(&self) -> String {
        format!(
            "{}-{}{}",
            self.backbone_sha256,
            self.preprocess,
            self.view_suffix()
        )
    }
}

pub fn namespace_hash(namespace: &str) -> [u8; 32] {
    *blake3::hash(namespace.as_bytes()).as_bytes()
}

/// The segment files of a namespace folder, sorted by name.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == pack::EXTENSION))
        .collect();
    files.sort();
    files
}

/// A name no other writer picks: time, process and a random part.
pub(crate) fn segment_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let salt =
        blake3::hash(format!("{nanos}-{}-{:?}", std::process::id(), Instant::now()).as_bytes());
    format!(
        "seg-{nanos:020}-{}-{}.{}",
        std::process::id(),
        &salt.to_hex()[..8],
        pack::EXTENSION
    )
}

impl Store {
    fn open(dir: PathBuf, namespace: String) -> Store {
        let ns_hash = namespace_hash(&namespace);
        let (flush_entries, flush_after) = flush_limits();
        let mut store = Store {
            dir,
            ns_hash,
            namespace,
            segments: Vec::new(),
            segment_paths: Vec::new(),
            index: HashMap::new(),
            older: HashMap::new(),
            problems: Vec::new(),
            pending: Mutex::new(Pending::default()),
            flush_entries,
            flush_after,
        };
        for path in segment_files(&store.dir) {
            match Segment::open(&path, &ns_hash) {
                Ok(seg) => {
                    let segment = store.segments.len() as u32;
                    for (record, key) in seg.keys.iter().enumerate() {
                        let loc = Location {
                            segment,
                            record: record as u32,
                        };
                        // Newest wins: an entry recomputed because an older copy was
                        // damaged supersedes it (names start with the publication time).
                        if let Some(previous) = store.index.insert(*key, loc) {
                            store.older.entry(*key).or_default().insert(0, previous);
                        }
                    }
                    store.segments.push(seg);
                    store.segment_paths.push(path);
                }
                // Removed since it was listed (`tl cache gc` compacting): not a problem.
                Err(why) if !path.exists() => drop(why),
                Err(why) => store.problems.push(why.to_string()),
            }
        }
        store
    }

    /// Publish the pending entries as one segment.
    fn flush(&self, pending: &mut Pending) -> Result<()> {
        pending.since = None;
        if pending.entries.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut pending.entries);
        let dim = entries[0].1.len();
        let bytes = pack::encode(&self.ns_hash, dim, &entries);
        crate::util::fs::write_atomic_with(&self.dir.join(segment_name()), &bytes, false)
    }
}

impl FeatureCache {
    /// A cache namespace for one backbone (by content hash) and one preprocessing.
    /// `view` is the view's cache tag ("" for the plain eval transform); `source` is the
    /// backbone file, recorded for `tl cache gc`.
    pub fn open(
        root: &Path,
        backbone_sha256: &str,
        preprocess: &PreprocessConfig,
        view: &str,
        source: Option<&Path>,
    ) -> Result<FeatureCache> {
        let info = NamespaceInfo {
            backbone_sha256: backbone_sha256.to_string(),
            backbone_files: source
                .map(|p| std::fs::canonicalize(p).unwrap_or(p.to_path_buf()))
                .into_iter()
                .collect(),
            preprocess: preprocess.fingerprint(),
            view: view.to_string(),
        };
        let dir = root.join("features").join(format!(
            "{}-{}{}",
            &backbone_sha256[..16.min(backbone_sha256.len())],
            info.preprocess,
            info.view_suffix()
        ));
        // A folder that cannot be made is found empty; the first write says why, once.
        let _ = std::fs::create_dir_all(&dir);
        // Best effort: a read-only cache is still read (writing is warned about once, later).
        let _ = record_use(&dir, &info);
        Ok(FeatureCache {
            store: Some(Arc::new(Store::open(dir, info.namespace()))),
        })
    }

    /// The same namespace opened again: it sees every segment published since.
    pub fn reopen(&self) -> FeatureCache {
        match &self.store {
            None => FeatureCache::disabled(),
            Some(s) => FeatureCache {
                store: Some(Arc::new(Store::open(s.dir.clone(), s.namespace.clone()))),
            },
        }
    }

    /// A cache that stores nothing (`--no-cache`).
    pub fn disabled() -> FeatureCache {
        FeatureCache { store: None }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.store.as_ref().map(|s| s.dir.as_path())
    }

    /// Segments found damaged or misplaced when the cache was opened.
    pub fn problems(&self) -> &[String] {
        self.store.as_ref().map_or(&[], |s| &s.problems)
    }

    /// Published entries (as of opening).
    pub fn len(&self) -> usize {
        self.store.as_ref().map_or(0, |s| s.index.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the entry of `key` is, if a published segment holds it.
    pub fn locate(&self, key: &str) -> Option<Location> {
        let store = self.store.as_ref()?;
        store.index.get(&parse_key(key)?).copied()
    }

    /// The entry at `loc` into `out` (the namespace's feature size).
    pub fn read_into(&self, loc: Location, out: &mut [f32]) -> Result<()> {
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| TlError::invalid("the feature cache is disabled"))?;
        let seg = store
            .segments
            .get(loc.segment as usize)
            .ok_or_else(|| TlError::corrupt(&store.dir, "no such segment"))?;
        let first = seg.read_into(loc.record as usize, out);
        let Err(why) = first else {
            return Ok(());
        };
        // The newest valid copy wins: try the older ones before giving up.
        let key = seg.keys[loc.record as usize];
        for older in store.older.get(&key).into_iter().flatten() {
            if let Some(s) = store.segments.get(older.segment as usize) {
                if s.dim == out.len() && s.read_into(older.record as usize, out).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(TlError::corrupt(
            &store.segment_paths[loc.segment as usize],
            format!("entry {}: {}", pack::key_hex(&key), why.what()),
        ))
    }

    /// The feature size of the entry at `loc`.
    pub fn dim_at(&self, loc: Location) -> Option<usize> {
        let store = self.store.as_ref()?;
        store.segments.get(loc.segment as usize).map(|s| s.dim)
    }

    pub fn get(&self, key: &str, expected_dim: Option<usize>) -> Lookup {
        let Some(store) = &self.store else {
            return Lookup::Miss;
        };
        if let Some(loc) = self.locate(key) {
            let dim = store.segments[loc.segment as usize].dim;
            if let Some(d) = expected_dim.filter(|&d| d != dim) {
                return Lookup::Corrupt(format!(
                    "{}: holds {dim} features, expected {d}",
                    store.segment_paths[loc.segment as usize].display()
                ));
            }
            let mut out = vec![0f32; dim];
            return match self.read_into(loc, &mut out) {
                Ok(()) => Lookup::Hit(out),
                Err(why) => Lookup::Corrupt(why.to_string()),
            };
        }
        store.get_loose(key, expected_dim)
    }

    /// Store one entry: it is published with the next segment. An error means the cache
    /// cannot be written (read-only, full disk).
    pub fn put(&self, key: &str, features: &[f32]) -> Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let raw = parse_key(key)
            .ok_or_else(|| TlError::invalid(format!("'{key}' is not a content key")))?;
        let mut pending = store
            .pending
            .lock()
            .map_err(|_| TlError::invalid("cache lock poisoned"))?;
        if pending
            .entries
            .first()
            .is_some_and(|(_, v)| v.len() != features.len())
        {
            store.flush(&mut pending)?;
        }
        pending.entries.push((raw, features.to_vec()));
        let since = *pending.since.get_or_insert_with(Instant::now);
        if pending.entries.len() >= store.flush_entries || since.elapsed() >= store.flush_after {
            store.flush(&mut pending)?;
        }
        Ok(())
    }

    /// Publish what [`put`](Self::put) gathered. Call at the end of a run: unpublished
    /// entries are lost (and recomputed next time), never half-written.
    pub fn flush(&self) -> Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut pending = store
            .pending
            .lock()
            .map_err(|_| TlError::invalid("cache lock poisoned"))?;
        store.flush(&mut pending)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Ok(pending) = self.pending.get_mut() {
            let mut pending = std::mem::take(pending);
            let _ = self.flush(&mut pending);
        }
    }
}

/// Write `namespace.json` (adding a backbone file not listed yet), and mark the namespace
/// used now (`last-used`'s time). Two writers adding different files at once may keep only
/// one: the cost is that `gc` could drop the namespace early, and it is recomputed.
fn record_use(dir: &Path, info: &NamespaceInfo) -> Result<()> {
    let meta = dir.join(NAMESPACE_FILE);
    let known: Option<NamespaceInfo> = crate::util::fs::read_json(&meta).ok();
    let merged = match known {
        None => Some(info.clone()),
        // Edited or damaged: this run knows what the namespace holds.
        Some(k) if k.namespace() != info.namespace() => {
            let mut fixed = info.clone();
            fixed.backbone_files.extend(
                k.backbone_files
                    .into_iter()
                    .filter(|f| !info.backbone_files.contains(f)),
            );
            Some(fixed)
        }
        Some(mut k) => {
            let new: Vec<PathBuf> = info
                .backbone_files
                .iter()
                .filter(|f| !k.backbone_files.contains(f))
                .cloned()
                .collect();
            (!new.is_empty()).then(|| {
                k.backbone_files.extend(new);
                k
            })
        }
    };
    if let Some(m) = merged {
        crate::util::fs::write_json_atomic(&meta, &m)?;
    }
    let stamp = dir.join(LAST_USED_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&stamp)
        .with_path(&stamp)?;
    file.set_modified(std::time::SystemTime::now())
        .with_path(&stamp)
}

pub const NAMESPACE_FILE: &str = "namespace.json";
pub const LAST_USED_FILE: &str = "last-used";

impl Store {
    /// An entry of the first layout: one file per image.
    fn get_loose(&self, key: &str, expected_dim: Option<usize>) -> Lookup {
        let Some(path) = loose_entry_path(&self.dir, key) else {
            return Lookup::Miss;
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            // A missing entry, or a shard folder that cannot exist (a file in its place).
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Lookup::Miss
            }
            Err(e) => return Lookup::Corrupt(format!("{}: {e}", path.display())),
        };
        if bytes.starts_with(OLD_MAGIC) {
            return Lookup::Miss;
        }
        match decode_entry(&bytes, &loose_key_hash(&self.namespace, key), expected_dim) {
            Ok(v) => Lookup::Hit(v),
            Err(why) => Lookup::Corrupt(format!("{}: {why}", path.display())),
        }
    }
}
