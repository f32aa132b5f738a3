//! On-disk feature cache: the frozen backbone runs once per image.
//!
//! Entries live under `<root>/features/<backbone sha256>-<preprocessing fingerprint>/`,
//! one file per image, named by the blake3 hash of the image file's bytes — so renaming or
//! moving a photo keeps its entry, editing it makes a new one, and a different backbone or
//! preprocessing never sees another's features. Each entry carries a checksum of its
//! payload; a damaged entry is reported and recomputed, never trusted.
use crate::error::{IoContext, Result, TlError};
use crate::preprocess::PreprocessConfig;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"TLF1";
const HEADER: usize = 4 + 4 + 32;

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

#[derive(Debug)]
pub enum Lookup {
    Hit(Vec<f32>),
    Miss,
    /// The entry exists but is damaged; the reason says how.
    Corrupt(String),
}

#[derive(Clone, Debug)]
pub struct FeatureCache {
    dir: Option<PathBuf>,
}

impl FeatureCache {
    /// A cache namespace for one backbone (by content hash) and one preprocessing.
    pub fn open(
        root: &Path,
        backbone_sha256: &str,
        preprocess: &PreprocessConfig,
    ) -> Result<FeatureCache> {
        let dir = root.join("features").join(format!(
            "{}-{}",
            &backbone_sha256[..16.min(backbone_sha256.len())],
            preprocess.fingerprint()
        ));
        std::fs::create_dir_all(&dir).with_path(&dir)?;
        Ok(FeatureCache { dir: Some(dir) })
    }

    /// A cache that stores nothing (`--no-cache`).
    pub fn disabled() -> FeatureCache {
        FeatureCache { dir: None }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn entry_path(&self, key: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(&key[..2]).join(format!("{key}.f32")))
    }

    pub fn get(&self, key: &str, expected_dim: Option<usize>) -> Lookup {
        let Some(path) = self.entry_path(key) else {
            return Lookup::Miss;
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Corrupt(format!("{}: {e}", path.display())),
        };
        match decode_entry(&bytes, expected_dim) {
            Ok(v) => Lookup::Hit(v),
            Err(why) => Lookup::Corrupt(format!("{}: {why}", path.display())),
        }
    }

    pub fn put(&self, key: &str, features: &[f32]) -> Result<()> {
        let Some(path) = self.entry_path(key) else {
            return Ok(());
        };
        crate::util::write_atomic_with(&path, &encode_entry(features), false)
    }
}

pub fn encode_entry(features: &[f32]) -> Vec<u8> {
    let payload: Vec<u8> = features.iter().flat_map(|f| f.to_le_bytes()).collect();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(features.len() as u32).to_le_bytes());
    out.extend_from_slice(blake3::hash(&payload).as_bytes());
    out.extend_from_slice(&payload);
    out
}

pub fn decode_entry(
    bytes: &[u8],
    expected_dim: Option<usize>,
) -> std::result::Result<Vec<f32>, String> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err("not a feature-cache entry".into());
    }
    let dim = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
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
    if blake3::hash(payload).as_bytes() != &bytes[8..HEADER] {
        return Err("checksum mismatch".into());
    }
    Ok(payload
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

impl std::fmt::Display for FeatureCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.dir {
            Some(d) => write!(f, "{}", d.display()),
            None => write!(f, "(disabled)"),
        }
    }
}

/// Fail early with a clear message when the cache root cannot be used.
pub fn check_root(root: &Path) -> Result<()> {
    std::fs::create_dir_all(root)
        .map_err(|e| TlError::file(root, format!("cannot create cache folder: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption() {
        let feats = vec![1.0f32, -2.5, 3.25];
        let enc = encode_entry(&feats);
        assert_eq!(decode_entry(&enc, Some(3)).unwrap(), feats);
        assert!(decode_entry(&enc, Some(4)).is_err());
        let mut flipped = enc.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decode_entry(&flipped, None)
            .unwrap_err()
            .contains("checksum"));
        assert!(decode_entry(&enc[..enc.len() - 1], None)
            .unwrap_err()
            .contains("truncated"));
        assert!(decode_entry(b"nonsense", None).is_err());
    }
}
