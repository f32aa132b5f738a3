//! `tl attack` flags → `AttackSettings`.
use super::{emit, values, NetworkArgs};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use tl::inspect::attack::{Goal, Norm};
use tl::runtime::Runtime;
use tl::workflow::attack::AttackSettings;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum NormArg {
    Linf,
    L2,
}

#[derive(Args, Debug)]
pub struct AttackArgs {
    /// Images or folders to attack.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Target class (name or index).
    #[arg(
        long,
        short,
        required_unless_present = "untargeted",
        conflicts_with = "untargeted"
    )]
    pub target: Option<String>,
    /// Push away from the current class instead of towards a target.
    #[arg(long)]
    pub untargeted: bool,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Output file (one image) or folder (several images, or a sweep).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Perturbation budget(s) in [0, 1] pixel units: 4/255, 0.0157, or a list 1/255,2/255,4/255.
    #[arg(long, default_value = "4/255", value_delimiter = ',', value_parser = values::positive)]
    pub eps: Vec<f64>,
    /// Step size (default: eps/4 for L-inf, eps/5 for L2).
    #[arg(long, value_parser = values::positive)]
    pub alpha: Option<f64>,
    #[arg(long, default_value = "50", value_parser = values::at_least_one)]
    pub steps: usize,
    #[arg(long, value_enum, default_value_t = NormArg::Linf)]
    pub norm: NormArg,
    /// Logit margin by which the target must win before stopping early.
    #[arg(long, default_value = "1", value_parser = values::non_negative)]
    pub margin: f64,
    /// Start from zero perturbation instead of a random point in the eps-ball.
    #[arg(long)]
    pub no_random_start: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the perturbation, amplified for viewing, to this file (one image only).
    #[arg(long)]
    pub diff: Option<PathBuf>,
    /// Refuse images with more pixels than this (the attack runs at full resolution,
    /// about 100 bytes of memory per pixel).
    #[arg(long, default_value_t = tl::inspect::attack::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Overwrite output files that exist.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(rt: &Runtime, args: &AttackArgs) -> anyhow::Result<()> {
    let norm = match args.norm {
        NormArg::Linf => Norm::Linf,
        NormArg::L2 => Norm::L2,
    };
    if norm == Norm::Linf {
        if let Some(e) = args.eps.iter().find(|&&e| e > 1.0) {
            anyhow::bail!("--eps {e}: an L-inf budget is in [0,1] pixel units (e.g. 4/255)");
        }
    }
    let settings = AttackSettings {
        network: args.network.choice()?,
        images: args.images.clone(),
        goal: match &args.target {
            Some(t) => Goal::Targeted(t.clone()),
            None => Goal::Untargeted,
        },
        out: args.out.clone(),
        eps: args.eps.clone(),
        alpha: args.alpha,
        steps: args.steps,
        norm,
        margin: args.margin,
        random_start: !args.no_random_start,
        seed: args.seed,
        diff: args.diff.clone(),
        force: args.force,
        max_pixels: args.max_pixels,
    };
    emit(&tl::workflow::attack::run(rt, &settings)?, args.json)
}
