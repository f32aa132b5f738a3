//! Small helpers shared by several modules: atomic writes, hashing, a seeded RNG.
use crate::error::{IoContext, Result, TlError};
use serde::Serialize;
use std::io::{Read, Write};
use std::path::Path;

/// Write `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash never leaves a half-written file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, bytes, true)
}

/// As [`write_atomic`]; `durable` also flushes the data to disk before the rename (skipped
/// for cache entries, which carry their own checksum and are cheap to recompute).
pub fn write_atomic_with(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_path(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tl-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_path(dir)?;
    tmp.write_all(bytes).with_path(path)?;
    if durable {
        tmp.as_file().sync_data().ok();
    }
    tmp.persist(path)
        .map_err(|e| TlError::file(path, e.error.to_string()))?;
    Ok(())
}

pub fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut text =
        serde_json::to_string_pretty(value).map_err(|e| TlError::file(path, e.to_string()))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_path(path)?;
    serde_json::from_str(&text).map_err(|e| TlError::file(path, format!("invalid JSON: {e}")))
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).with_path(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_path(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SplitMix64: a tiny, fully specified generator, so that shuffles and splits made with a
/// seed stay the same across crate upgrades and platforms.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Parse a number that may be written as a fraction, e.g. `4/255` or `0.0157`.
pub fn parse_fraction(text: &str) -> std::result::Result<f64, String> {
    let text = text.trim();
    let value = if let Some((num, den)) = text.split_once('/') {
        let num: f64 = num
            .trim()
            .parse()
            .map_err(|_| format!("'{text}' is not a number or fraction"))?;
        let den: f64 = den
            .trim()
            .parse()
            .map_err(|_| format!("'{text}' is not a number or fraction"))?;
        if den == 0.0 {
            return Err(format!("'{text}' divides by zero"));
        }
        num / den
    } else {
        text.parse()
            .map_err(|_| format!("'{text}' is not a number or fraction"))?
    };
    if !value.is_finite() {
        return Err(format!("'{text}' is not finite"));
    }
    Ok(value)
}

/// Seconds as a short human string.
pub fn human_duration(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_parse() {
        assert!((parse_fraction("4/255").unwrap() - 4.0 / 255.0).abs() < 1e-12);
        assert_eq!(parse_fraction("0.5").unwrap(), 0.5);
        assert!(parse_fraction("1/0").is_err());
        assert!(parse_fraction("abc").is_err());
    }

    #[test]
    fn splitmix_is_stable() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut v: Vec<u32> = (0..100).collect();
        SplitMix64::new(1).shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_json_atomic(&path, &vec![1, 2, 3]).unwrap();
        let back: Vec<i32> = read_json(&path).unwrap();
        assert_eq!(back, vec![1, 2, 3]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }
}
