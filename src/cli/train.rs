//! `tl train` flags → `TrainSettings`.
use super::{emit, values, CacheArgs};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use tl::head::{Balance, Optimisation, OptimizerKind, Schedule};
use tl::workflow::train::BalanceChoice;

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BalanceArg {
    Auto,
    None,
    Weights,
    Sampler,
    Logit,
}
use tl::runtime::Runtime;
use tl::workflow::train::{FinetuneSettings, TrainSettings, ValidationChoice, L2};

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum OptimizerArg {
    Adam,
    Adamw,
    Sgd,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ScheduleArg {
    Constant,
    Cosine,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset folder: class-per-folder, train/+val/ folders, or Oxford-IIIT Pets (images/ + annotations/).
    pub data: PathBuf,
    /// Backbone: a name exported in the backbones folder, a sidecar .json, or a TorchScript file.
    #[arg(long, short)]
    pub backbone: String,
    #[command(flatten)]
    pub options: TrainOptions,
}

/// Everything of `tl train` but the data and the backbone (shared with `tl compare`).
#[derive(Args, Debug)]
pub struct TrainOptions {
    /// Fraction of each class held out for validation (ignored when the layout defines a split).
    #[arg(long, default_value = "0.2", value_parser = values::open_fraction)]
    pub val_split: f64,
    /// An explicit validation folder (class-per-folder, same classes).
    #[arg(long)]
    pub val_dir: Option<PathBuf>,
    /// Seed for the split, the head's initialisation and the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "100", value_parser = values::at_least_one)]
    pub epochs: usize,
    /// Head training batch size.
    #[arg(long, default_value = "64", value_parser = values::at_least_one)]
    pub head_batch_size: usize,
    /// Feature-extraction batch size.
    #[arg(long, default_value = "32", value_parser = values::at_least_one)]
    pub batch_size: usize,
    /// Mixed-precision feature extraction on CUDA (autocast); ignored on CPU.
    #[arg(long)]
    pub amp: bool,
    #[arg(long, default_value = "0.01", value_parser = values::learning_rate)]
    pub lr: f64,
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adamw)]
    pub optimizer: OptimizerArg,
    /// SGD momentum.
    #[arg(long, default_value = "0.9", value_parser = values::unit_interval)]
    pub momentum: f64,
    /// Decoupled weight decay (AdamW) or L2 in the update (Adam, SGD).
    #[arg(long, default_value = "0", value_parser = values::non_negative)]
    pub weight_decay: f64,
    /// L2 penalty on the head's weights added to the loss (l2/2·‖W‖²), as in L2-regularised
    /// logistic regression; `auto` is 1/(training images), scikit-learn's C=1.
    #[arg(long, default_value = "auto", value_parser = values::l2)]
    pub l2: L2,
    /// Unequal classes: `logit` trains with log(n_k/N) added to each class's logit (a rare
    /// class then needs less evidence at prediction), `weights` weighs each class's loss by
    /// N/(K·n_k), `sampler` draws each epoch's rows class-balanced, `none` treats every image
    /// alike; `auto` (the default) is `logit` when the largest class has 3× the images of the
    /// smallest and `none` otherwise (BENCHMARKS.md §19: +16 points of recall on rare breeds).
    #[arg(long, value_enum, default_value_t = BalanceArg::Auto)]
    pub balance: BalanceArg,
    /// Standardise features (training-set mean/std, stored with the head) before the head.
    #[arg(long)]
    pub standardize: bool,
    #[arg(long, default_value = "0", value_parser = values::unit_interval)]
    pub label_smoothing: f64,
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    pub schedule: ScheduleArg,
    /// Stop after this many epochs without validation-loss improvement (0: never).
    #[arg(long, default_value_t = 10)]
    pub patience: usize,
    /// Width of one hidden layer (0: a linear head).
    #[arg(long, default_value_t = 0)]
    pub hidden: u32,
    /// Dropout after the hidden layer.
    #[arg(long, default_value = "0.2", value_parser = values::unit_interval)]
    pub dropout: f64,
    /// Run folder to write (default: runs/<timestamp>-<backbone>).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Write into an existing, non-empty --out folder; overwrite --save-features.
    #[arg(long)]
    pub force: bool,
    /// Also save the features and labels used (train_x, train_y, val_x, val_y) to this
    /// safetensors file, e.g. to compare with another classifier.
    #[arg(long)]
    pub save_features: Option<PathBuf>,
    /// Views per training image, each computed once and cached: the eval transform plus
    /// K-1 seeded augmented ones (random crop of 80-100 % of the area, flip, mild colour jitter).
    #[arg(long, default_value = "1", value_parser = values::at_least_one)]
    pub views: usize,
    /// After the head, fine-tune the backbone's last N blocks with it (or `all`); the frozen
    /// part's output is cached, so an epoch runs only the top. The backbone must be exported
    /// with that cut (scripts/export_backbones.py --cuts).
    /// `--finetune` alone trains the last block (MobileNetV2: the final 1×1 conv).
    #[arg(long, value_parser = values::unfreeze, num_args = 0..=1, default_missing_value = "1", value_name = "N|all")]
    pub finetune: Option<tl::features::Unfreeze>,
    /// Learning rate of the fine-tuning stage (Adam, cosine schedule) [default: --lr / 100].
    #[arg(long, value_parser = values::learning_rate)]
    pub finetune_lr: Option<f64>,
    /// Epochs of the fine-tuning stage.
    #[arg(long, default_value = "10", value_parser = values::at_least_one)]
    pub finetune_epochs: usize,
    /// Batch size of the fine-tuning stage.
    #[arg(long, default_value = "32", value_parser = values::at_least_one)]
    pub finetune_batch_size: usize,
    /// Stop fine-tuning after this many epochs without validation-loss improvement (0: never).
    #[arg(long, default_value_t = 3)]
    pub finetune_patience: usize,
    /// Keep a class that has no (readable) image instead of refusing to train.
    #[arg(long)]
    pub allow_empty_classes: bool,
    /// Print the report as JSON (report.json's content).
    #[arg(long)]
    pub json: bool,
    /// Train the head on features read from the cache a mini-batch at a time, instead of
    /// holding them all in memory: for datasets whose features do not fit (memory stays
    /// bounded; each epoch reads the cache). Not with --finetune, --views or --no-cache.
    #[arg(long)]
    pub stream: bool,
    /// Share of the validation images the "unknown" judge accepts as like the training
    /// images; its threshold is set there (`tl predict --accept` changes it later).
    #[arg(long, default_value = "0.95", value_parser = values::accept)]
    pub accept: f64,
    /// Apply the decisions of a `tl audit --review` file: `exclude` leaves a file out,
    /// `relabel:<class>` trains it under that class (report.json lists both; no file is
    /// touched).
    #[arg(long, value_name = "FILE.csv")]
    pub review: Option<PathBuf>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

impl TrainOptions {
    pub fn settings(&self, data: &std::path::Path, backbone: &str) -> TrainSettings {
        TrainSettings {
            data: data.to_path_buf(),
            backbone: backbone.to_string(),
            validation: match &self.val_dir {
                Some(dir) => ValidationChoice::Folder(dir.clone()),
                None => ValidationChoice::Fraction(self.val_split),
            },
            seed: self.seed,
            hidden: self.hidden as i64,
            dropout: self.dropout,
            standardize: self.standardize,
            training: Optimisation {
                epochs: self.epochs,
                batch_size: self.head_batch_size,
                lr: self.lr,
                optimizer: match self.optimizer {
                    OptimizerArg::Adam => OptimizerKind::Adam,
                    OptimizerArg::Adamw => OptimizerKind::Adamw,
                    OptimizerArg::Sgd => OptimizerKind::Sgd,
                },
                momentum: self.momentum,
                weight_decay: self.weight_decay,
                label_smoothing: self.label_smoothing,
                schedule: match self.schedule {
                    ScheduleArg::Constant => Schedule::Constant,
                    ScheduleArg::Cosine => Schedule::Cosine,
                },
                patience: self.patience,
            },
            l2: self.l2,
            balance: match self.balance {
                BalanceArg::Auto => BalanceChoice::Auto,
                BalanceArg::None => BalanceChoice::Fixed(Balance::None),
                BalanceArg::Weights => BalanceChoice::Fixed(Balance::Weights),
                BalanceArg::Sampler => BalanceChoice::Fixed(Balance::Sampler),
                BalanceArg::Logit => BalanceChoice::Fixed(Balance::Logit),
            },
            batch_size: self.batch_size,
            amp: self.amp,
            out: self.out.clone(),
            force: self.force,
            save_features: self.save_features.clone(),
            cache: self.cache.settings(),
            allow_empty_classes: self.allow_empty_classes,
            views: self.views,
            finetune: self.finetune.map(|unfreeze| FinetuneSettings {
                unfreeze,
                lr: self.finetune_lr,
                epochs: self.finetune_epochs,
                batch_size: self.finetune_batch_size,
                patience: self.finetune_patience,
            }),
            stream: self.stream,
            unknown: tl::workflow::train::UnknownSettings {
                accept: self.accept,
                ..Default::default()
            },
            review: self.review.clone(),
            tuning: None,
        }
    }
}

pub fn run(rt: &Runtime, args: &TrainArgs) -> anyhow::Result<()> {
    let settings = args.options.settings(&args.data, &args.backbone);
    let report = tl::workflow::train::train(rt, &settings)?;
    emit(&report, args.options.json)
}
