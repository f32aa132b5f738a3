//! `tl`: transfer learning on images with frozen TorchScript backbones.
//!
//! Data flows one way: `data` lists labelled files → `preprocess` decodes and transforms
//! them → `backbone` computes features (stored by `cache`, driven by `extract`) → `head`
//! is trained by `train` → `report` measures it, `run` stores it. `model` wraps a run or a
//! backbone's ImageNet classifier as one differentiable network for `dream` and `attack`.
pub mod attack;
pub mod backbone;
pub mod cache;
pub mod classes;
pub mod cli;
pub mod commands;
pub mod data;
pub mod device;
pub mod dream;
pub mod error;
pub mod extract;
pub mod head;
pub mod model;
pub mod preprocess;
pub mod progress;
pub mod report;
pub mod run;
pub mod train;
pub mod util;

pub use error::{Result, TlError};

/// The libtorch version this binary was built against.
pub const LIBTORCH_VERSION: &str = match option_env!("TL_LIBTORCH_VERSION") {
    Some(v) => v,
    None => "unknown",
};
