//! Stage 3: the trainable head on top of frozen features (`model`) and its training on
//! cached features (`train`); its temperature (`temperature`) and the judge of images unlike
//! the training ones (`unknown`).
pub mod epochs;
pub mod finetune;
pub mod model;
pub mod temperature;
pub mod train;
pub mod unknown;

pub use crate::features::rows::{CachedRows, Labelled, Rows, StreamedRows, TensorRows};
pub use finetune::{finetune, FinetuneConfig, FinetuneOutcome};
pub use model::{Head, HeadConfig};
pub use train::{
    train_head, Balance, EpochMetrics, Optimisation, OptimizerKind, Schedule, TrainConfig,
    TrainOutcome,
};
pub use unknown::UnknownJudge;
