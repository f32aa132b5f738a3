//! `tl extract` flags (and the scheduler's environment) → `ExtractSettings`.
use super::{emit, values, CacheArgs};
use clap::Args;
use std::path::PathBuf;
use tl::data::shard::Shard;
use tl::runtime::Runtime;
use tl::workflow::extract::ExtractSettings;

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// Dataset folder (any layout `tl train` reads).
    pub data: PathBuf,
    /// Backbone: a name exported in the backbones folder, a sidecar .json, or a TorchScript file.
    #[arg(long, short)]
    pub backbone: String,
    /// This worker's shard, K/N with K counted from 0 [default: from SLURM_ARRAY_TASK_ID or
    /// JOB_COMPLETION_INDEX, else the whole dataset].
    #[arg(long, value_name = "K/N", value_parser = values::shard)]
    pub shard: Option<Shard>,
    /// Number of shards, with the index from the scheduler (Kubernetes: JOB_COMPLETION_INDEX;
    /// Slurm: overrides SLURM_ARRAY_TASK_COUNT).
    #[arg(long, value_name = "N", value_parser = values::at_least_one)]
    pub shards: Option<usize>,
    /// Feature-extraction batch size.
    #[arg(long, default_value = "32", value_parser = values::at_least_one)]
    pub batch_size: usize,
    /// Mixed-precision extraction on CUDA (autocast); ignored on CPU.
    #[arg(long)]
    pub amp: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Print which images this shard holds (with --json, the list); extract nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(rt: &Runtime, args: &ExtractArgs) -> anyhow::Result<()> {
    let (shard, shard_source) =
        Shard::resolve(args.shard, args.shards, |name| std::env::var(name).ok())?;
    let settings = ExtractSettings {
        data: args.data.clone(),
        backbone: args.backbone.clone(),
        shard,
        shard_source,
        batch_size: args.batch_size,
        amp: args.amp,
        cache: args.cache.settings(),
        dry_run: args.dry_run,
    };
    emit(&tl::workflow::extract::extract(rt, &settings)?, args.json)
}
