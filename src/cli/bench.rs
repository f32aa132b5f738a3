//! `tl bench` flags → `BenchSettings`.
use super::{emit, values};
use clap::Args;
use tl::runtime::Runtime;
use tl::workflow::bench::BenchSettings;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, short)]
    pub backbone: String,
    #[arg(long, default_value = "32", value_parser = values::at_least_one)]
    pub batch_size: usize,
    /// Timed batches (after two warm-up batches).
    #[arg(long, default_value = "5", value_parser = values::at_least_one)]
    pub batches: usize,
    /// Mixed precision (autocast) on CUDA.
    #[arg(long)]
    pub amp: bool,
    /// Side of the square matrices for the matmul measurement (0 skips it).
    #[arg(long, default_value_t = 2048)]
    pub matmul_size: u32,
    #[arg(long)]
    pub json: bool,
}

pub fn run(rt: &Runtime, args: &BenchArgs) -> anyhow::Result<()> {
    let settings = BenchSettings {
        backbone: args.backbone.clone(),
        batch_size: args.batch_size as i64,
        batches: args.batches,
        amp: args.amp,
        matmul_size: args.matmul_size as i64,
    };
    emit(&tl::workflow::bench::bench(rt, &settings)?, args.json)
}
