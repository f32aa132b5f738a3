//! Stage 1 of the data path: which labelled files a dataset holds (`dataset`), how each
//! file becomes pixels (`decode`) and how pixels become the backbone's input (`preprocess`,
//! with Pillow's resampling in `resample`).
pub mod augment;
pub mod dataset;
pub mod decode;
pub mod jpeg;
pub mod jpeg_eighth;
pub mod preprocess;
pub mod resample;
pub mod review;
pub mod shard;

pub use augment::View;
pub use dataset::{expand_inputs, Dataset, IgnoredFile, Layout, Sample};
pub use preprocess::PreprocessConfig;
