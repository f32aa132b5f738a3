//! Segment files of the feature cache: many entries of one namespace packed into one
//! immutable file, published by a single rename (so readers never see a torn one).
//!
//! ```text
//! header   64 bytes: "TLS1", dim u32, count u32, reserved u32, namespace hash [32], reserved [16]
//! keys     count × 16 bytes   the images' content keys
//! sums     count × 32 bytes   blake3(namespace hash ‖ key ‖ payload): damage or misplacement
//! payloads count × dim × 4    little-endian f32
//! ```
//! Records have a fixed size, so the keys block is the whole index: opening a segment reads
//! 16 bytes per entry, and an entry is one positioned read.
use crate::error::{IoContext, Result, TlError};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const MAGIC: &[u8; 4] = b"TLS1";
pub const HEADER: u64 = 64;
pub const KEY: usize = 16;
const SUM: usize = 32;
pub const EXTENSION: &str = "tlseg";

/// A content key as raw bytes (the 32 hex characters of [`super::cache::content_key`]).
pub type RawKey = [u8; KEY];

pub fn parse_key(hex: &str) -> Option<RawKey> {
    if hex.len() != 2 * KEY {
        return None;
    }
    let mut out = [0u8; KEY];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn key_hex(key: &RawKey) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn record_sum(ns_hash: &[u8; 32], key: &RawKey, payload: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(ns_hash);
    h.update(key);
    h.update(payload);
    *h.finalize().as_bytes()
}

/// The bytes of a segment holding `entries` (all of `dim` features).
pub fn encode(ns_hash: &[u8; 32], dim: usize, entries: &[(RawKey, Vec<f32>)]) -> Vec<u8> {
    let n = entries.len();
    let mut out = Vec::with_capacity(HEADER as usize + n * (KEY + SUM + dim * 4));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(dim as u32).to_le_bytes());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(ns_hash);
    out.extend_from_slice(&[0u8; 16]);
    for (key, _) in entries {
        out.extend_from_slice(key);
    }
    let payloads: Vec<Vec<u8>> = entries
        .iter()
        .map(|(_, v)| v.iter().flat_map(|f| f.to_le_bytes()).collect())
        .collect();
    for ((key, _), payload) in entries.iter().zip(&payloads) {
        out.extend_from_slice(&record_sum(ns_hash, key, payload));
    }
    for payload in &payloads {
        out.extend_from_slice(payload);
    }
    out
}

/// An opened segment: its keys, and where its records are.
#[derive(Debug)]
pub struct Segment {
    path: std::path::PathBuf,
    /// Kept open while fewer than [`open_budget`] are (a million images make ~800 segments;
    /// `ulimit -n` is often 1024); beyond, each read opens the file for itself.
    file: Option<File>,
    pub dim: usize,
    pub keys: Vec<RawKey>,
    ns_hash: [u8; 32],
}

/// Segment files held open at once by this process: a quarter of the descriptor limit, at
/// most 256 (the rest is for images, libraries, ONNX Runtime).
pub fn open_budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
        let soft = if ok { lim.rlim_cur as usize } else { 1024 };
        (soft / 4).clamp(8, 256)
    })
}

static OPEN_SEGMENTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for Segment {
    fn drop(&mut self) {
        if self.file.is_some() {
            OPEN_SEGMENTS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// An I/O error in words; running out of file descriptors says so (it is not damage).
fn io_message(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            "too many open files (raise `ulimit -n`); not damage".into()
        }
        _ => e.to_string(),
    }
}

/// The namespace hash in a segment file's header (None: not a readable segment).
pub fn header_hash(path: &Path) -> Option<[u8; 32]> {
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut header = [0u8; HEADER as usize];
    File::open(path).ok()?.read_exact(&mut header).ok()?;
    if &header[..4] != MAGIC {
        return None;
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&header[16..48]);
    Some(hash)
}

impl Segment {
    /// Open and check the header and size; the error says what is wrong.
    pub fn open(path: &Path, ns_hash: &[u8; 32]) -> Result<Segment> {
        let bad = |what: String| TlError::corrupt(path, what);
        // Opening a FIFO would block until a writer comes; a folder cannot be read.
        let meta = std::fs::metadata(path).with_path(path)?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        let mut file = File::open(path).with_path(path)?;
        let mut header = [0u8; HEADER as usize];
        file.read_exact(&mut header)
            .map_err(|_| bad("shorter than a segment header".into()))?;
        if &header[..4] != MAGIC {
            return Err(bad("not a feature-cache segment".into()));
        }
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (dim, count) = (word(4) as usize, word(8) as usize);
        if &header[16..48] != ns_hash {
            return Err(bad(
                "belongs to another backbone or preprocessing (misplaced segment)".into(),
            ));
        }
        // Sizes come from the file: checked, so that a forged header cannot wrap the
        // arithmetic into a match and then a giant allocation.
        let expected = (dim as u64)
            .checked_mul(4)
            .and_then(|d| d.checked_add((KEY + SUM) as u64))
            .and_then(|per| per.checked_mul(count as u64))
            .and_then(|body| body.checked_add(HEADER))
            .ok_or_else(|| {
                bad(format!(
                    "impossible sizes in the header (dim {dim}, count {count})"
                ))
            })?;
        let len = file.metadata().with_path(path)?.len();
        if len != expected {
            return Err(bad(format!(
                "truncated or padded ({len} bytes, expected {expected})"
            )));
        }
        let mut block = vec![0u8; count * KEY];
        file.read_exact(&mut block).with_path(path)?;
        let keys = block
            .chunks_exact(KEY)
            .map(|c| {
                let mut k = [0u8; KEY];
                k.copy_from_slice(c);
                k
            })
            .collect();
        use std::sync::atomic::Ordering;
        let keep = OPEN_SEGMENTS.fetch_add(1, Ordering::Relaxed) < open_budget();
        if !keep {
            OPEN_SEGMENTS.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(Segment {
            path: path.to_path_buf(),
            file: keep.then_some(file),
            dim,
            keys,
            ns_hash: *ns_hash,
        })
    }

    fn count(&self) -> usize {
        self.keys.len()
    }

    /// Read and check record `i` into `out` (`dim` floats).
    pub fn read_into(&self, i: usize, out: &mut [f32]) -> Result<()> {
        let bad = |what: String| TlError::corrupt(&self.path, what);
        let n = self.count();
        if i >= n || out.len() != self.dim {
            return Err(bad(format!("record {i} out of range")));
        }
        let opened;
        let file = match &self.file {
            Some(f) => f,
            None => {
                opened = File::open(&self.path).map_err(|e| bad(io_message(&e)))?;
                &opened
            }
        };
        let mut sum = [0u8; SUM];
        let sums_at = HEADER + (n * KEY + i * SUM) as u64;
        file.read_exact_at(&mut sum, sums_at)
            .map_err(|e| bad(io_message(&e)))?;
        let mut payload = vec![0u8; self.dim * 4];
        let payload_at = HEADER + (n * (KEY + SUM) + i * self.dim * 4) as u64;
        file.read_exact_at(&mut payload, payload_at)
            .map_err(|e| bad(io_message(&e)))?;
        if record_sum(&self.ns_hash, &self.keys[i], &payload) != sum {
            return Err(bad("checksum mismatch".into()));
        }
        for (o, c) in out.iter_mut().zip(payload.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    }

    pub fn read(&self, i: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.dim];
        self.read_into(i, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_damage_and_misplacement() {
        let dir = tempfile::tempdir().unwrap();
        let ns = [3u8; 32];
        let entries = vec![
            ([1u8; 16], vec![1.0f32, -2.0, 3.5]),
            ([2u8; 16], vec![0.0, 0.5, 9.0]),
        ];
        let path = dir.path().join("a.tlseg");
        std::fs::write(&path, encode(&ns, 3, &entries)).unwrap();
        let seg = Segment::open(&path, &ns).unwrap();
        assert_eq!(seg.keys, vec![[1u8; 16], [2u8; 16]]);
        assert_eq!(seg.read(1).unwrap(), entries[1].1);
        let corrupt = |e: TlError| match e {
            TlError::Corrupt { path: p, what } if p == path => what,
            other => panic!("not a Corrupt error about the segment: {other}"),
        };
        assert!(corrupt(Segment::open(&path, &[4u8; 32]).unwrap_err()).contains("misplaced"));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let seg = Segment::open(&path, &ns).unwrap();
        assert_eq!(seg.read(0).unwrap(), entries[0].1);
        assert_eq!(corrupt(seg.read(1).unwrap_err()), "checksum mismatch");
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(corrupt(Segment::open(&path, &ns).unwrap_err()).starts_with("truncated"));
        assert_eq!(parse_key(&key_hex(&[0xab; 16])), Some([0xab; 16]));
        assert_eq!(parse_key("xyz"), None);
    }
}
