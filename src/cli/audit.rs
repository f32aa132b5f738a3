//! `tl audit` flags → `AuditSettings`.
use super::{emit, values, CacheArgs};
use clap::Args;
use std::path::PathBuf;
use tl::audit::AuditConfig;
use tl::head::{OptimizerKind, Schedule, TrainConfig};
use tl::runtime::Runtime;
use tl::workflow::audit::AuditSettings;

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Dataset folder (any layout `tl train` reads).
    pub data: PathBuf,
    /// Backbone whose features the audit compares [default: the --run's].
    #[arg(long, short)]
    pub backbone: Option<String>,
    /// A run trained on this folder: its recorded split says which images were validation
    /// (near-duplicates across it are leaks).
    #[arg(long, value_name = "RUN")]
    pub run: Option<PathBuf>,
    /// Validation images in another folder (same classes): leaks are judged against them.
    #[arg(long, value_name = "DIR", conflicts_with = "run")]
    pub val_dir: Option<PathBuf>,
    /// Cosine similarity of features at or above which two files are near-duplicates (0.93:
    /// resized and recompressed copies of photos sit above 0.94, the closest different photos
    /// of Kaggle's cats and dogs at 0.91 with MobileNetV2; BENCHMARKS.md §13).
    #[arg(long, default_value = "0.93", value_parser = values::unit_interval)]
    pub near_duplicate: f64,
    /// Folds of the out-of-sample heads that judge the labels.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Epochs of each fold's head.
    #[arg(long, default_value = "100", value_parser = values::at_least_one)]
    pub epochs: usize,
    /// Seed of the folds and the heads.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write (or update: decisions kept, new findings appended) a review file: one row per
    /// finding, with a `decision` column for keep, exclude or relabel:<class>.
    #[arg(long, value_name = "FILE.csv")]
    pub review: Option<PathBuf>,
    /// Write an HTML page with thumbnails of each finding.
    #[arg(long, value_name = "FILE.html")]
    pub html: Option<PathBuf>,
    /// Overwrite the --html page if it exists.
    #[arg(long)]
    pub force: bool,
    /// Findings of each kind in the text summary.
    #[arg(long, default_value_t = 10)]
    pub show: usize,
    /// Above this many images, read the features back from the cache into one tensor rather
    /// than keep extraction's copy as well (bounded memory; 100,000 × 1,280 floats = 0.5 GB).
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub stream_above: usize,
    /// Feature-extraction batch size.
    #[arg(long, default_value = "32", value_parser = values::at_least_one)]
    pub batch_size: usize,
    /// Mixed-precision extraction on CUDA (autocast); ignored on CPU.
    #[arg(long)]
    pub amp: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[arg(long)]
    pub json: bool,
}

impl AuditArgs {
    fn settings(&self) -> AuditSettings {
        AuditSettings {
            data: self.data.clone(),
            backbone: self.backbone.clone(),
            run: self.run.clone(),
            val_dir: self.val_dir.clone(),
            config: AuditConfig {
                near_duplicate: self.near_duplicate,
                folds: self.folds,
                outlier_neighbors: 5,
                outlier_fence: 3.0,
                // `tl train`'s defaults: a linear head, C = 1.
                head: TrainConfig {
                    epochs: self.epochs,
                    batch_size: 64,
                    lr: 0.01,
                    optimizer: OptimizerKind::Adamw,
                    momentum: 0.9,
                    weight_decay: 0.0,
                    label_smoothing: 0.0,
                    l2: 0.0,
                    schedule: Schedule::Cosine,
                    patience: 0,
                    seed: self.seed,
                    balance: Default::default(),
                },
                l2: None,
                seed: self.seed,
            },
            batch_size: self.batch_size,
            amp: self.amp,
            cache: self.cache.settings(),
            review: self.review.clone(),
            html: self.html.clone(),
            force: self.force,
            show: self.show,
            stream_above: self.stream_above,
        }
    }
}

pub fn run(rt: &Runtime, args: &AuditArgs) -> anyhow::Result<()> {
    emit(
        &tl::workflow::audit::audit(rt, &args.settings())?,
        args.json,
    )
}
