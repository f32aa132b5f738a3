//! The library's error type. Every variant renders as one line that names the file (or
//! setting) and what is wrong with it; libtorch's multi-line C++ traces are cut off.
//! Callers branch on the variant (and on [`TlError::path`]), never on the text.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TlError {
    /// The operating system refused to read, write, create or rename `path`.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file or folder the user named (or a run points to) does not exist.
    #[error("{}: {what}", path.display())]
    NotFound { path: PathBuf, what: String },
    /// The file exists but its content is malformed or inconsistent (bad JSON, a sidecar
    /// that does not match, a damaged cache segment, an incomplete run).
    #[error("{}: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    /// The path exists but is the wrong kind of thing for this use (a folder where a file
    /// is needed, an output that exists without `--force`, a dataset without images).
    #[error("{}: {what}", path.display())]
    BadPath { path: PathBuf, what: String },
    /// An image file that cannot be decoded: one skipped image, not a failed run.
    #[error("{}: {reason}", path.display())]
    Decode { path: PathBuf, reason: SkipReason },
    /// A flag, setting or combination of them that cannot work.
    #[error("{0}")]
    InvalidInput(String),
    /// An optional engine (ONNX Runtime) cannot be used on this machine.
    #[error("{0}")]
    Unavailable(#[from] Unavailable),
    /// libtorch refused an operation.
    #[error("{context}: {msg}")]
    Torch { context: String, msg: String },
    /// Another error, told about what it happened to (an input image, a guarded step).
    #[error("{context}: {source}")]
    Context {
        context: String,
        source: Box<TlError>,
    },
}

/// Why an optional library cannot be used, in one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Why one image was skipped. Per-image failures cost that image, never the run; reports
/// list them with this reason (`kind` in JSON, the text beside it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    /// The file could not be read (permissions, vanished, an I/O error).
    #[error("cannot be read: {0}")]
    Unreadable(String),
    #[error("empty file (0 bytes)")]
    Empty,
    #[error("not an image (unrecognised content)")]
    NotAnImage,
    #[error("truncated JPEG (no end-of-image marker)")]
    TruncatedJpeg,
    #[error("image has zero width or height")]
    ZeroSize,
    /// The decoder refused the content (damaged data, an unsupported variant, too large).
    #[error("cannot decode {0}")]
    Undecodable(String),
    /// A decoder panicked on the file (caught; counted by `decode::caught_panics`).
    #[error("the image decoder failed on this file (damaged?)")]
    DecoderFailed,
    /// Decoded, but the image could not be turned into the network's input.
    #[error("{0}")]
    Preprocess(String),
}

impl SkipReason {
    /// The stable name of the reason, as written in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            SkipReason::Unreadable(_) => "unreadable",
            SkipReason::Empty => "empty",
            SkipReason::NotAnImage => "not_an_image",
            SkipReason::TruncatedJpeg => "truncated_jpeg",
            SkipReason::ZeroSize => "zero_size",
            SkipReason::Undecodable(_) => "undecodable",
            SkipReason::DecoderFailed => "decoder_failed",
            SkipReason::Preprocess(_) => "preprocess",
        }
    }

    /// The reason back from its report form (`kind`, text).
    pub fn from_report(kind: &str, text: &str) -> SkipReason {
        let detail = |prefix: &str| text.strip_prefix(prefix).unwrap_or(text).to_string();
        match kind {
            "unreadable" => SkipReason::Unreadable(detail("cannot be read: ")),
            "empty" => SkipReason::Empty,
            "not_an_image" => SkipReason::NotAnImage,
            "truncated_jpeg" => SkipReason::TruncatedJpeg,
            "zero_size" => SkipReason::ZeroSize,
            "undecodable" => SkipReason::Undecodable(detail("cannot decode ")),
            "decoder_failed" => SkipReason::DecoderFailed,
            _ => SkipReason::Preprocess(text.to_string()),
        }
    }

    /// What an error means for one image: its decode reason, an I/O failure, or (any other
    /// error) a preprocessing failure described by its text without the path.
    pub fn of(err: &TlError) -> SkipReason {
        match err {
            TlError::Decode { reason, .. } => reason.clone(),
            TlError::Io { source, .. } => SkipReason::Unreadable(source.to_string()),
            TlError::NotFound { what, .. } => SkipReason::Unreadable(what.clone()),
            TlError::Context { source, .. } => SkipReason::of(source),
            TlError::Corrupt { what, .. } | TlError::BadPath { what, .. } => {
                SkipReason::Preprocess(what.clone())
            }
            other => SkipReason::Preprocess(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, TlError>;

/// One image's result: the value, or why the image was skipped.
pub type PerImage<T> = std::result::Result<T, SkipReason>;

impl TlError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        TlError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn not_found(path: impl AsRef<Path>, what: impl Into<String>) -> Self {
        TlError::NotFound {
            path: path.as_ref().to_path_buf(),
            what: what.into(),
        }
    }
    pub fn corrupt(path: impl AsRef<Path>, what: impl Into<String>) -> Self {
        TlError::Corrupt {
            path: path.as_ref().to_path_buf(),
            what: what.into(),
        }
    }
    pub fn bad_path(path: impl AsRef<Path>, what: impl Into<String>) -> Self {
        TlError::BadPath {
            path: path.as_ref().to_path_buf(),
            what: what.into(),
        }
    }
    pub fn decode(path: impl AsRef<Path>, reason: SkipReason) -> Self {
        TlError::Decode {
            path: path.as_ref().to_path_buf(),
            reason,
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        TlError::InvalidInput(msg.into())
    }
    pub fn torch(context: impl Into<String>, err: tch::TchError) -> Self {
        TlError::Torch {
            context: context.into(),
            msg: torch_message(&err),
        }
    }
    /// `err`, told about `context` (rendered "context: err").
    pub fn context(context: impl Into<String>, err: TlError) -> Self {
        TlError::Context {
            context: context.into(),
            source: Box::new(err),
        }
    }

    /// The file or folder the error is about, if it names one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            TlError::Io { path, .. }
            | TlError::NotFound { path, .. }
            | TlError::Corrupt { path, .. }
            | TlError::BadPath { path, .. }
            | TlError::Decode { path, .. } => Some(path),
            TlError::Context { source, .. } => source.path(),
            _ => None,
        }
    }

    /// The path inside the error, for re-pointing it (a staged file → its destination).
    pub fn path_mut(&mut self) -> Option<&mut PathBuf> {
        match self {
            TlError::Io { path, .. }
            | TlError::NotFound { path, .. }
            | TlError::Corrupt { path, .. }
            | TlError::BadPath { path, .. }
            | TlError::Decode { path, .. } => Some(path),
            TlError::Context { source, .. } => source.path_mut(),
            _ => None,
        }
    }

    /// What is wrong, without the path the error names (its whole text if it names none).
    pub fn what(&self) -> String {
        match self {
            TlError::Io { source, .. } => source.to_string(),
            TlError::NotFound { what, .. }
            | TlError::Corrupt { what, .. }
            | TlError::BadPath { what, .. } => what.clone(),
            TlError::Decode { reason, .. } => reason.to_string(),
            other => other.to_string(),
        }
    }

    /// The error, naming `path` if it does not name a file already.
    pub fn about(self, path: &Path) -> Self {
        if self.path().is_some() {
            self
        } else {
            TlError::context(path.display().to_string(), self)
        }
    }
}

/// The first meaningful line of a libtorch error, without the C++ backtrace.
pub fn torch_message(err: &tch::TchError) -> String {
    first_line(&err.to_string())
}

/// One line from a libtorch message (also one carried by a panic): an allocation failure
/// as "not enough memory (… GB requested)", a TorchScript interpreter failure as its
/// `RuntimeError`, anything else as its first meaningful line.
pub fn first_line(text: &str) -> String {
    let text = text.trim_start_matches("called `Result::unwrap()` on an `Err` value: ");
    if let Some(i) = text.find("you tried to allocate ") {
        let digits: String = text[i + 22..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if let Ok(n) = digits.parse::<f64>() {
            let size = if n >= 1e9 {
                format!("{:.1} GB", n / 1e9)
            } else {
                format!("{:.0} MB", n / 1e6)
            };
            return format!(
                "not enough memory ({size} requested in one allocation); try a smaller size"
            );
        }
    }
    if text.contains("DefaultCPUAllocator") || text.contains("CUDA out of memory") {
        return "not enough memory; try a smaller size".into();
    }
    if text.contains("failed in the TorchScript interpreter") {
        if let Some(line) = text
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("RuntimeError: "))
        {
            return line.to_string();
        }
    }
    let text = text.split("Exception raised from").next().unwrap_or(text);
    let line = text
        .lines()
        .map(|l| l.trim().trim_start_matches("Internal torch error:").trim())
        .find(|l| !l.is_empty())
        .unwrap_or("unknown libtorch error");
    // Keep the first sentence; libtorch appends paragraphs of advice.
    let line = line.split(". ").next().unwrap_or(line);
    line.trim_start_matches("Torch(\"")
        .trim_end_matches("\")")
        .to_string()
}

/// Attach a path to an I/O error.
pub trait IoContext<T> {
    fn with_path(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn with_path(self, path: &Path) -> Result<T> {
        self.map_err(|e| TlError::io(path, e))
    }
}

/// Attach a context string to a libtorch error.
pub trait TorchContext<T> {
    fn torch_ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> TorchContext<T> for std::result::Result<T, tch::TchError> {
    fn torch_ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| TlError::torch(context(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_reasons_survive_their_report_form() {
        let reasons = [
            SkipReason::Unreadable("Permission denied (os error 13)".into()),
            SkipReason::Empty,
            SkipReason::NotAnImage,
            SkipReason::TruncatedJpeg,
            SkipReason::ZeroSize,
            SkipReason::Undecodable("Png: invalid signature".into()),
            SkipReason::DecoderFailed,
            SkipReason::Preprocess("cannot crop this image".into()),
        ];
        for r in reasons {
            assert_eq!(SkipReason::from_report(r.kind(), &r.to_string()), r);
        }
    }

    #[test]
    fn errors_say_which_file_by_variant_not_by_text() {
        let p = Path::new("data/cat/1.jpg");
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let cases: Vec<(TlError, Option<&Path>, SkipReason)> = vec![
            (
                TlError::decode(p, SkipReason::TruncatedJpeg),
                Some(p),
                SkipReason::TruncatedJpeg,
            ),
            (
                TlError::io(p, io),
                Some(p),
                SkipReason::Unreadable("permission denied".into()),
            ),
            (
                TlError::invalid("--lr must be positive"),
                None,
                SkipReason::Preprocess("--lr must be positive".into()),
            ),
            (
                TlError::context("decoding", TlError::corrupt(p, "bad")),
                Some(p),
                SkipReason::Preprocess("bad".into()),
            ),
        ];
        for (err, path, reason) in cases {
            assert_eq!(err.path(), path, "{err}");
            assert_eq!(SkipReason::of(&err), reason, "{err}");
        }
        // `about` names the file once: added where missing, never twice.
        let named = TlError::corrupt(p, "bad").about(Path::new("other.jpg"));
        assert_eq!(named.to_string(), "data/cat/1.jpg: bad");
        let unnamed = TlError::invalid("no target").about(p);
        assert_eq!(unnamed.to_string(), "data/cat/1.jpg: no target");
        assert_eq!(unnamed.path(), None, "the context is text, not a path");
    }
}
