//! `tl dream` flags → `DreamSettings`.
use super::values::{BadValue, Parsed};
use super::{emit, values, NetworkArgs};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use tl::inspect::dream::{DreamConfig, Objective, Parametrization, MAX_DREAM_SIZE};
use tl::runtime::Runtime;
use tl::util::FilePath;
use tl::workflow::dream::{DreamSettings, Target};

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ParamArg {
    /// Pixels directly, clamped to [0, 1] after each step.
    Pixel,
    /// A 1/f-scaled Fourier spectrum with decorrelated colour and a sigmoid (lucid/lucent).
    Fourier,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ObjectiveArg {
    /// The target's logit.
    Logit,
    /// The target's log-probability (also pushes similar classes down).
    Logprob,
    /// Logit + log-probability: the margin over similar classes, then a logit that keeps rising.
    Both,
}

fn size(s: &str) -> Parsed<u32> {
    let v = values::at_least_one(s)?;
    if (16..=MAX_DREAM_SIZE as usize).contains(&v) {
        Ok(v as u32)
    } else {
        Err(BadValue(format!(
            "must be between 16 and {MAX_DREAM_SIZE} pixels (memory grows with its square)"
        )))
    }
}

#[derive(Args, Debug)]
pub struct DreamArgs {
    /// Class name (exact, case-insensitive, or a unique substring) or index.
    #[arg(long, short, required_unless_present_any = ["layer", "list_layers"], conflicts_with = "layer")]
    pub class: Option<String>,
    /// Visualise a channel of this inner layer instead of a class (names: --list-layers).
    #[arg(long, requires = "channel")]
    pub layer: Option<String>,
    /// The channel of --layer whose mean activation is maximised.
    #[arg(long, requires = "layer", conflicts_with = "class")]
    pub channel: Option<i64>,
    /// List the layers (and their channels) that --layer can name, then stop.
    #[arg(long)]
    pub list_layers: bool,
    /// Make K different images at once (<out>-1.png … <out>-K.png), kept apart by a
    /// diversity term.
    #[arg(long, default_value = "1", value_parser = values::at_least_one)]
    pub batch: usize,
    /// Weight of the penalty on the images' similarity (the cosine between their Gram
    /// matrices at --diversity-layer) with --batch.
    #[arg(long, default_value = "10", value_parser = values::weight)]
    pub diversity: f64,
    /// The layer whose Gram matrices the diversity term compares [default: the channel's
    /// layer, or the middle layer for a class].
    #[arg(long)]
    pub diversity_layer: Option<String>,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Output PNG.
    #[arg(long, short, default_value = "dream.png")]
    pub out: PathBuf,
    #[arg(long, default_value = "256", value_parser = values::at_least_one)]
    pub steps: usize,
    /// Adam learning rate on the image parameters.
    #[arg(long, default_value = "0.1", value_parser = values::learning_rate)]
    pub lr: f64,
    /// Total-variation weight (TV is the mean absolute difference of neighbouring pixels).
    #[arg(long, default_value = "10", value_parser = values::weight)]
    pub tv: f64,
    /// Penalty on the mean squared distance from mid-grey (0: none; it washes the colours
    /// out, and dreams transfer to other networks far better without it: BENCHMARKS §16).
    #[arg(long, default_value = "0", value_parser = values::weight)]
    pub l2: f64,
    /// Image side in pixels, 16 to 2048 (default: the backbone's crop size).
    #[arg(long, value_parser = size)]
    pub size: Option<u32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start from this photo instead of noise.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Turn off the random jitter/scale/rotation applied at each step.
    #[arg(long)]
    pub no_transforms: bool,
    /// The last N steps without the random transforms, so that the image as saved (and
    /// scored) wins its class's margin [default: steps / 8].
    #[arg(long, value_name = "N")]
    pub polish: Option<usize>,
    /// How the image is parametrised.
    #[arg(long, value_enum, default_value_t = ParamArg::Fourier)]
    pub param: ParamArg,
    /// What is maximised: the target's logit, its log-probability, or both summed.
    #[arg(long, value_enum, default_value_t = ObjectiveArg::Both)]
    pub objective: ObjectiveArg,
    /// Also write a strip of frames every K steps (<out>-strip.png).
    #[arg(long, value_parser = values::at_least_one)]
    pub save_every: Option<usize>,
    /// Overwrite the output files if they exist.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(rt: &Runtime, args: &DreamArgs) -> anyhow::Result<()> {
    if args.list_layers {
        let report = tl::workflow::dream::list_layers(rt, &args.network.choice()?)?;
        return emit(&report, args.json);
    }
    let target = match (&args.class, &args.layer, args.channel) {
        (_, Some(layer), Some(channel)) => Target::Channel {
            layer: layer.clone(),
            channel,
        },
        (Some(class), _, _) => Target::Class(class.clone()),
        _ => anyhow::bail!("give --class NAME, or --layer NAME --channel C"),
    };
    let settings = DreamSettings {
        network: args.network.choice()?,
        target,
        diversity_layer: args.diversity_layer.clone(),
        out: args.out.clone(),
        force: args.force,
        config: DreamConfig {
            steps: args.steps,
            lr: args.lr,
            tv: args.tv,
            l2: args.l2,
            size: args.size,
            seed: args.seed,
            init: args.init.clone().map(FilePath),
            transforms: !args.no_transforms,
            polish: args.polish.unwrap_or(args.steps / 8),
            save_every: args.save_every,
            param: match args.param {
                ParamArg::Pixel => Parametrization::Pixel,
                ParamArg::Fourier => Parametrization::Fourier,
            },
            objective: match args.objective {
                ObjectiveArg::Logit => Objective::Logit,
                ObjectiveArg::Logprob => Objective::Logprob,
                ObjectiveArg::Both => Objective::Both,
            },
            batch: args.batch,
            diversity: args.diversity,
        },
    };
    emit(&tl::workflow::dream::run(rt, &settings)?, args.json)
}
