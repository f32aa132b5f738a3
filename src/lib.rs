//! `tl`: transfer learning on images with frozen TorchScript backbones.
//!
//! The modules follow the data path, and none imports from a later stage
//! (`tests/architecture.rs` checks it):
//!
//! 0. `error`, `util`, `device`, `runtime`, `progress`, `backbone_store` — shared ground
//! 1. `data` — dataset layouts and splits, decoding, preprocessing
//! 2. `features` — backbone, feature cache, extraction
//! 3. `head` — the trainable head and its training
//! 4. `eval` — metrics and the report trait
//! 5. `run`, `model_file` — the run folder; an exported model and its sidecar
//! 6. `inspect`, `export`, `html`, `audit` — the network as one function: dreams and attacks;
//!    exporting it; HTML reports with charts; what is wrong in a dataset
//! 7. `workflow` — the commands as library calls with typed reports
//!
//! Command-line parsing lives in the binary (`src/cli/`), which turns flags into the plain
//! settings structs these modules take.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod audit;
pub mod backbone_store;
pub mod device;
pub mod error;
pub mod progress;
pub mod runtime;
pub mod util;

pub mod data;
pub mod eval;
pub mod export;
pub mod features;
pub mod head;
pub mod html;
pub mod inspect;
pub mod model_file;
pub mod run;
pub mod workflow;

pub use error::{Result, TlError};

/// The libtorch version this binary was built against.
pub const LIBTORCH_VERSION: &str = match option_env!("TL_LIBTORCH_VERSION") {
    Some(v) => v,
    None => "unknown",
};
