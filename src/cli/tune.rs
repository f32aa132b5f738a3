//! `tl tune` and `tl cv` flags → `TuneSettings` / `CvSettings` (every `tl train` option is
//! shared; `tl tune` chooses the head settings, views and fine-tuning itself).
use super::train::TrainOptions;
use super::{emit, values};
use clap::Args;
use std::path::PathBuf;
use tl::features::Unfreeze;
use tl::runtime::Runtime;
use tl::workflow::train::FinetuneSettings;
use tl::workflow::tune::{CvSettings, TuneSettings};

#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Dataset folder (as for `tl train`; its validation side is left out of the search and
    /// reported on by the final run).
    pub data: PathBuf,
    /// Backbone: a name exported in the backbones folder, a sidecar .json, or a TorchScript file.
    #[arg(long, short)]
    pub backbone: String,
    /// Time for the whole search and the final run (e.g. 90s, 10m, 1h); costly options
    /// (views, fine-tuning) are tried only when their estimated time fits.
    #[arg(long, default_value = "10m", value_parser = values::duration)]
    pub budget: f64,
    /// Folds of the cross-validation over the training images.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Views per training image to try on the best head settings (1: none).
    #[arg(long, default_value = "4", value_parser = values::at_least_one)]
    pub views_to_try: usize,
    /// Do not try fine-tuning the backbone's last block.
    #[arg(long)]
    pub no_finetune: bool,
    /// Cosine similarity of features from which two training images count as copies and
    /// share a fold (`tl audit`'s measured threshold).
    #[arg(long, default_value = "0.93", value_parser = values::unit_interval)]
    pub near_duplicate: f64,
    #[command(flatten)]
    pub options: TrainOptions,
}

#[derive(Args, Debug)]
pub struct CvArgs {
    /// Dataset folder (as for `tl train`; only its training side is cross-validated).
    pub data: PathBuf,
    /// Backbone: a name exported in the backbones folder, a sidecar .json, or a TorchScript file.
    #[arg(long, short)]
    pub backbone: String,
    /// Folds of the cross-validation.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Cosine similarity of features from which two training images count as copies and
    /// share a fold (`tl audit`'s measured threshold).
    #[arg(long, default_value = "0.93", value_parser = values::unit_interval)]
    pub near_duplicate: f64,
    #[command(flatten)]
    pub options: TrainOptions,
}

pub fn run_tune(rt: &Runtime, args: &TuneArgs) -> anyhow::Result<()> {
    let o = &args.options;
    let settings = TuneSettings {
        train: o.settings(&args.data, &args.backbone),
        folds: args.folds,
        budget_seconds: args.budget,
        views: args.views_to_try,
        // The --finetune-* flags say how a fine-tuned trial fine-tunes.
        finetune: (!args.no_finetune).then_some(FinetuneSettings {
            unfreeze: Unfreeze::Blocks(1),
            lr: o.finetune_lr,
            epochs: o.finetune_epochs,
            batch_size: o.finetune_batch_size,
            patience: o.finetune_patience,
        }),
        near_duplicate: args.near_duplicate,
    };
    let report = tl::workflow::tune::tune(rt, &settings)?;
    emit(&report, args.options.json)
}

pub fn run_cv(rt: &Runtime, args: &CvArgs) -> anyhow::Result<()> {
    let settings = CvSettings {
        train: args.options.settings(&args.data, &args.backbone),
        folds: args.folds,
        near_duplicate: args.near_duplicate,
    };
    let report = tl::workflow::tune::cross_validate(rt, &settings)?;
    emit(&report, args.options.json)
}
