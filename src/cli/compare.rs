//! `tl compare` flags → `CompareSettings`.
use super::emit;
use super::train::TrainOptions;
use clap::Args;
use std::path::PathBuf;
use tl::runtime::Runtime;
use tl::workflow::compare::CompareSettings;

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Dataset folder (as for `tl train`).
    pub data: PathBuf,
    /// Backbones to compare, comma-separated (names, sidecar .json files or TorchScript files).
    #[arg(long, required = true, value_delimiter = ',')]
    pub backbones: Vec<String>,
    /// Everything of `tl train`; --out is the folder for the runs and compare.html
    /// [default: runs/compare-<timestamp>].
    #[command(flatten)]
    pub options: TrainOptions,
}

pub fn run(rt: &Runtime, args: &CompareArgs) -> anyhow::Result<()> {
    let mut train = args.options.settings(&args.data, "");
    let out = match train.out.take() {
        Some(out) => out,
        None => tl::run::reserve_default_dir("compare")?,
    };
    let settings = CompareSettings {
        train,
        backbones: args.backbones.clone(),
        out,
    };
    emit(
        &tl::workflow::compare::compare(rt, &settings)?,
        args.options.json,
    )
}
