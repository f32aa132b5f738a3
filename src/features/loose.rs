//! The first layout of the feature cache, still read (and written by tests and gc's
//! repairs): one file per entry, `<namespace>/<first two hex digits>/<key>.f32`, holding
//! `TLF2`, the feature count (u32 LE), the hash of namespace and key, the payload's blake3
//! hash and the features (f32 LE). Files of the older `TLF1` format carry no key and are
//! treated as misses.
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"TLF2";
/// Entries of the first format carry no key; they are treated as misses and replaced.
pub(crate) const OLD_MAGIC: &[u8; 4] = b"TLF1";
const HEADER: usize = 4 + 4 + 32 + 32;

/// What an entry of the first layout records as its key: the hash of namespace and image.
pub fn loose_key_hash(namespace: &str, key: &str) -> [u8; 32] {
    *blake3::hash(format!("{namespace}/{key}").as_bytes()).as_bytes()
}

pub fn loose_entry_path(dir: &Path, key: &str) -> Option<PathBuf> {
    let shard = key.get(..2)?;
    Some(dir.join(shard).join(format!("{key}.f32")))
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

/// Why a cache entry of the first layout cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryDamage {
    #[error("not a feature-cache entry")]
    NotAnEntry,
    #[error("entry belongs to another image, backbone or preprocessing (misplaced)")]
    Misplaced,
    #[error("truncated ({bytes} of {expected} bytes)")]
    Truncated { bytes: usize, expected: usize },
    #[error("holds {dim} features, expected {expected}")]
    WrongSize { dim: usize, expected: usize },
    #[error("checksum mismatch")]
    Checksum,
}

pub fn decode_entry(
    bytes: &[u8],
    key_hash: &[u8; 32],
    expected_dim: Option<usize>,
) -> std::result::Result<Vec<f32>, EntryDamage> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(EntryDamage::NotAnEntry);
    }
    let dim = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if &bytes[8..40] != key_hash {
        return Err(EntryDamage::Misplaced);
    }
    let payload = &bytes[HEADER..];
    if payload.len() != dim * 4 {
        return Err(EntryDamage::Truncated {
            bytes: payload.len(),
            expected: dim * 4,
        });
    }
    if let Some(d) = expected_dim {
        if d != dim {
            return Err(EntryDamage::WrongSize { dim, expected: d });
        }
    }
    if blake3::hash(payload).as_bytes() != &bytes[40..HEADER] {
        return Err(EntryDamage::Checksum);
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
        assert_eq!(
            decode_entry(&enc, &key, Some(4)),
            Err(EntryDamage::WrongSize {
                dim: 3,
                expected: 4
            })
        );
        assert_eq!(
            decode_entry(&enc, &[8u8; 32], Some(3)),
            Err(EntryDamage::Misplaced)
        );
        let mut flipped = enc.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            decode_entry(&flipped, &key, None),
            Err(EntryDamage::Checksum)
        );
        assert_eq!(
            decode_entry(&enc[..enc.len() - 1], &key, None),
            Err(EntryDamage::Truncated {
                bytes: 11,
                expected: 12
            })
        );
        assert_eq!(
            decode_entry(b"nonsense", &key, None),
            Err(EntryDamage::NotAnEntry)
        );
    }
}
