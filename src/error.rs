//! The library's error type. Every variant renders as one line that names the file (or
//! setting) and what is wrong with it; libtorch's multi-line C++ traces are cut off.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TlError {
    /// A file the user gave (or that a run points to) is missing, unreadable or malformed.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A flag, setting or combination of them that cannot work.
    #[error("{0}")]
    Invalid(String),
    /// libtorch refused an operation.
    #[error("{context}: {msg}")]
    Torch { context: String, msg: String },
}

pub type Result<T> = std::result::Result<T, TlError>;

impl TlError {
    pub fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        TlError::File {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        TlError::Invalid(msg.into())
    }
    pub fn torch(context: impl Into<String>, err: tch::TchError) -> Self {
        TlError::Torch {
            context: context.into(),
            msg: torch_message(&err),
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
        self.map_err(|e| TlError::file(path, e.to_string()))
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
