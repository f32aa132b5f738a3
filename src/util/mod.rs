//! Small helpers shared by every stage: files written atomically, paths that survive JSON,
//! tensors to plain data, numbers and hashes as text, a seeded RNG.
pub mod fs;
pub mod guard;
pub mod path;
pub mod tensors;
pub mod text;

pub use fs::{read_json, refuse_overwrite, sha256_file, write_atomic, write_json_atomic};
pub use path::FilePath;
pub use text::{hex, human_duration, parse_fraction, SplitMix64};
