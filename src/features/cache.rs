//! On-disk feature cache: the frozen backbone runs once per image.
//!
//! Entries live under `<root>/features/<backbone sha256>-<preprocessing fingerprint>/`,
//! one file per image, named by the blake3 hash of the image file's bytes — so renaming or
//! moving a photo keeps its entry, editing it makes a new one, and a different backbone or
//! preprocessing never sees another's features. Each entry records the hash of its full key
//! (namespace + image) and a checksum of its payload: a damaged entry, or one copied or
//! renamed into another's place, is reported and recomputed, never trusted.
use crate::data::PreprocessConfig;
use crate::error::{IoContext, Result, TlError};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"TLF2";
/// Entries of the first format carry no key; they are treated as misses and replaced.
const OLD_MAGIC: &[u8; 4] = b"TLF1";
const HEADER: usize = 4 + 4 + 32 + 32;

pub fn default_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("TL_CACHE_DIR") {
        return PathBuf::from(dir);
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
pub fn file_keys(paths: &[PathBuf]) -> Vec<std::result::Result<String, String>> {
    paths
        .par_iter()
        .map(|p| file_key(p).map_err(|e| e.to_string()))
        .collect()
}

#[derive(Debug)]
pub enum Lookup {
    Hit(Vec<f32>),
    Miss,
    /// The entry exists but is damaged or belongs elsewhere; the reason says how.
    Corrupt(String),
}

#[derive(Clone, Debug)]
pub struct FeatureCache {
    dir: Option<PathBuf>,
    /// Everything besides the image that its features depend on.
    namespace: String,
}

impl FeatureCache {
    /// A cache namespace for one backbone (by content hash) and one preprocessing.
    /// `view` is the view's cache tag ("" for the plain eval transform).
    pub fn open(
        root: &Path,
        backbone_sha256: &str,
        preprocess: &PreprocessConfig,
        view: &str,
    ) -> Result<FeatureCache> {
        let suffix = if view.is_empty() {
            String::new()
        } else {
            format!("-{view}")
        };
        let namespace = format!("{backbone_sha256}-{}{suffix}", preprocess.fingerprint());
        let dir = root.join("features").join(format!(
            "{}-{}{suffix}",
            &backbone_sha256[..16.min(backbone_sha256.len())],
            preprocess.fingerprint()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| TlError::file(&dir, format!("cannot create cache folder: {e}")))?;
        Ok(FeatureCache {
            dir: Some(dir),
            namespace,
        })
    }

    /// A cache that stores nothing (`--no-cache`).
    pub fn disabled() -> FeatureCache {
        FeatureCache {
            dir: None,
            namespace: String::new(),
        }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn entry_path(&self, key: &str) -> Option<PathBuf> {
        let shard = key.get(..2)?;
        self.dir
            .as_ref()
            .map(|d| d.join(shard).join(format!("{key}.f32")))
    }

    fn key_hash(&self, key: &str) -> [u8; 32] {
        *blake3::hash(format!("{}/{key}", self.namespace).as_bytes()).as_bytes()
    }

    pub fn get(&self, key: &str, expected_dim: Option<usize>) -> Lookup {
        let Some(path) = self.entry_path(key) else {
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
        match decode_entry(&bytes, &self.key_hash(key), expected_dim) {
            Ok(v) => Lookup::Hit(v),
            Err(why) => Lookup::Corrupt(format!("{}: {why}", path.display())),
        }
    }

    /// Store one entry; an error means the cache cannot be written (read-only, full disk).
    pub fn put(&self, key: &str, features: &[f32]) -> Result<()> {
        let Some(path) = self.entry_path(key) else {
            return Ok(());
        };
        let entry = encode_entry(features, &self.key_hash(key));
        crate::util::fs::write_atomic_with(&path, &entry, false)
    }
}

pub fn encode_entry(features: &[f32], key_hash: &[u8; 32]) -> Vec<u8> {
    let payload: Vec<u8> = features.iter().flat_map(|f| f.to_le_bytes()).collect();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(features.len() as u32).to_le_bytes());
    out.extend_from_slice(key_hash);
    out.extend_from_slice(blake3::hash(&payload).as_bytes());
    out.extend_from_slice(&payload);
    out
}

pub fn decode_entry(
    bytes: &[u8],
    key_hash: &[u8; 32],
    expected_dim: Option<usize>,
) -> std::result::Result<Vec<f32>, String> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err("not a feature-cache entry".into());
    }
    let dim = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if &bytes[8..40] != key_hash {
        return Err("entry belongs to another image, backbone or preprocessing (misplaced)".into());
    }
    let payload = &bytes[HEADER..];
    if payload.len() != dim * 4 {
        return Err(format!(
            "truncated ({} of {} bytes)",
            payload.len(),
            dim * 4
        ));
    }
    if let Some(d) = expected_dim {
        if d != dim {
            return Err(format!("holds {dim} features, expected {d}"));
        }
    }
    if blake3::hash(payload).as_bytes() != &bytes[40..HEADER] {
        return Err("checksum mismatch".into());
    }
    Ok(payload
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_corruption_and_misplacement() {
        let feats = vec![1.0f32, -2.5, 3.25];
        let key = [7u8; 32];
        let enc = encode_entry(&feats, &key);
        assert_eq!(decode_entry(&enc, &key, Some(3)).unwrap(), feats);
        assert!(decode_entry(&enc, &key, Some(4)).is_err());
        assert!(decode_entry(&enc, &[8u8; 32], Some(3))
            .unwrap_err()
            .contains("misplaced"));
        let mut flipped = enc.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decode_entry(&flipped, &key, None)
            .unwrap_err()
            .contains("checksum"));
        assert!(decode_entry(&enc[..enc.len() - 1], &key, None)
            .unwrap_err()
            .contains("truncated"));
        assert!(decode_entry(b"nonsense", &key, None).is_err());
    }
}
