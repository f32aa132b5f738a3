//! Paths in JSON. A file name need not be UTF-8 (`chat_<0xE9>_1.jpg`), and serde refuses
//! such a `PathBuf`. [`FilePath`] writes a UTF-8 path as a plain string and any other as
//! `{"text": <lossy text>, "bytes_hex": <the raw bytes>}`, which reads back to the same path.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FilePath(pub PathBuf);

impl FilePath {
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for FilePath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for FilePath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl From<PathBuf> for FilePath {
    fn from(p: PathBuf) -> Self {
        FilePath(p)
    }
}

impl From<&Path> for FilePath {
    fn from(p: &Path) -> Self {
        FilePath(p.to_path_buf())
    }
}

impl std::fmt::Display for FilePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Text(String),
    Raw { text: String, bytes_hex: String },
}

impl Serialize for FilePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.to_str() {
            Some(text) => s.serialize_str(text),
            None => Repr::Raw {
                text: self.0.to_string_lossy().into_owned(),
                bytes_hex: super::text::hex(&raw_bytes(&self.0)),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for FilePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(FilePath(PathBuf::from(t))),
            Repr::Raw { bytes_hex, .. } => {
                let bytes = unhex(&bytes_hex).ok_or_else(|| {
                    serde::de::Error::custom(format!("bad bytes_hex in path: {bytes_hex}"))
                })?;
                Ok(FilePath(from_raw_bytes(bytes)))
            }
        }
    }
}

#[cfg(unix)]
fn raw_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

#[cfg(not(unix))]
fn raw_bytes(p: &Path) -> Vec<u8> {
    p.to_string_lossy().as_bytes().to_vec()
}

#[cfg(unix)]
fn from_raw_bytes(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

#[cfg(not(unix))]
fn from_raw_bytes(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_paths_are_plain_strings_and_others_round_trip() {
        let plain = FilePath(PathBuf::from("data/cat/1.jpg"));
        assert_eq!(serde_json::to_string(&plain).unwrap(), "\"data/cat/1.jpg\"");
        #[cfg(unix)]
        {
            let odd = FilePath(from_raw_bytes(b"chat_\xE9_1.jpg".to_vec()));
            let json = serde_json::to_string(&odd).unwrap();
            assert!(
                json.contains("\"text\":\"chat_\u{FFFD}_1.jpg\"") && json.contains("e9"),
                "{json}"
            );
            let back: FilePath = serde_json::from_str(&json).unwrap();
            assert_eq!(back, odd);
        }
        let back: FilePath = serde_json::from_str("\"a/b.png\"").unwrap();
        assert_eq!(back.0, PathBuf::from("a/b.png"));
    }
}
