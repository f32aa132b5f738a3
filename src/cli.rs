//! Command-line arguments (clap derive). Parsed and validated here, then turned into the
//! plain config structs that the library modules take.
use crate::device::DeviceChoice;
use crate::train::{OptimizerKind, Schedule};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "tl", version, args_override_self = true, about = "Transfer learning on images: frozen TorchScript backbones, cached features, linear heads — and a look inside the network (dreams, adversarial attacks).", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto", env = "TL_DEVICE")]
    pub device: DeviceChoice,
    /// CPU threads for libtorch and for decoding (default: all cores).
    #[arg(long, global = true, env = "TL_THREADS")]
    pub threads: Option<usize>,
    /// Threads decoding and resizing images while the backbone runs (default: half the
    /// threads on CPU, at low priority; all of them with CUDA).
    #[arg(long, global = true, env = "TL_DECODE_THREADS")]
    pub decode_threads: Option<usize>,
    /// Folder holding exported backbones (NAME.json + TorchScript files).
    #[arg(long, global = true, env = "TL_BACKBONES", default_value = "backbones")]
    pub backbones: PathBuf,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show libtorch, CUDA/cuDNN, threads and where backbones and the cache are.
    #[command(after_help = "Example:\n  tl doctor")]
    Doctor,
    /// Train a head on frozen backbone features of a folder dataset.
    #[command(
        after_help = "Examples:\n  tl train --backbone mobilenet_v2 data/PetImages --val-split 0.2\n  tl train --backbone vgg16 data/oxford-pets --epochs 50 --hidden 512 --out runs/pets"
    )]
    Train(TrainArgs),
    /// Measure a trained run on a labelled folder.
    #[command(
        after_help = "Examples:\n  tl eval runs/20260101-120000-mobilenet_v2 data/PetImages\n  tl eval runs/pets data/oxford-pets --split val --json"
    )]
    Eval(EvalArgs),
    /// Classify images with a trained run (or a backbone's ImageNet classifier).
    #[command(
        after_help = "Examples:\n  tl predict runs/pets photo.jpg more_photos/\n  tl predict --backbone mobilenet_v2 cat.png --top-k 5 --json"
    )]
    Predict(PredictArgs),
    /// Optimise an image from noise until the network sees a class ("what does it think a cat looks like?").
    #[command(
        after_help = "Examples:\n  tl dream --backbone mobilenet_v2 --class 'Siamese cat' -o siamese.png\n  tl dream --run runs/catsdogs --class cat --save-every 32 -o cat.png"
    )]
    Dream(DreamArgs),
    /// Measure a backbone alone on ready tensors, and the machine's matrix-multiply rate.
    #[command(
        after_help = "Example:\n  tl bench --backbone resnet50 --batch-size 32 --batches 5 --json"
    )]
    Bench(BenchArgs),
    /// Perturb images imperceptibly so the network sees a target class.
    #[command(
        after_help = "Examples:\n  tl attack dog.jpg --backbone mobilenet_v2 --target tabby --eps 4/255 -o dog_as_tabby.png\n  tl attack dogs/ --run runs/catsdogs --target cat --eps 1/255,2/255,4/255 -o adversarial/"
    )]
    Attack(AttackArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset folder: class-per-folder, train/+val/ folders, or Oxford-IIIT Pets (images/ + annotations/).
    pub data: PathBuf,
    /// Backbone: a name exported in the backbones folder, a sidecar .json, or a TorchScript file.
    #[arg(long, short)]
    pub backbone: String,
    /// Fraction of each class held out for validation (ignored when the layout defines a split).
    #[arg(long, default_value_t = 0.2)]
    pub val_split: f64,
    /// An explicit validation folder (class-per-folder, same classes).
    #[arg(long)]
    pub val_dir: Option<PathBuf>,
    /// Seed for the split, the head's initialisation and the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    /// Head training batch size.
    #[arg(long, default_value_t = 64)]
    pub head_batch_size: usize,
    /// Feature-extraction batch size.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Mixed-precision feature extraction on CUDA (autocast); ignored on CPU.
    #[arg(long)]
    pub amp: bool,
    #[arg(long, default_value_t = 1e-2)]
    pub lr: f64,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adamw)]
    pub optimizer: OptimizerKind,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Decoupled weight decay (AdamW) or L2 in the update (Adam, SGD).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// L2 penalty on the head's weights added to the loss (l2/2·‖W‖²), as in L2-regularised
    /// logistic regression; `auto` is 1/(training images), scikit-learn's C=1.
    #[arg(long, default_value = "auto")]
    pub l2: String,
    /// Standardise features (training-set mean/std, stored with the head) before the head.
    #[arg(long)]
    pub standardize: bool,
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,
    /// Stop after this many epochs without validation-loss improvement (0: never).
    #[arg(long, default_value_t = 10)]
    pub patience: usize,
    /// Width of one hidden layer (0: a linear head).
    #[arg(long, default_value_t = 0)]
    pub hidden: i64,
    /// Dropout after the hidden layer.
    #[arg(long, default_value_t = 0.2)]
    pub dropout: f64,
    /// Run folder to write (default: runs/<timestamp>-<backbone>).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Write into an existing, non-empty --out folder.
    #[arg(long)]
    pub force: bool,
    /// Also save the features and labels used (train_x, train_y, val_x, val_y) to this
    /// safetensors file, e.g. to compare with another classifier.
    #[arg(long)]
    pub save_features: Option<PathBuf>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// Feature cache folder (default: $TL_CACHE_DIR or the XDG cache dir, ~/.cache/tl).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the feature cache.
    #[arg(long)]
    pub no_cache: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum EvalSplit {
    /// Every image in the folder.
    All,
    /// The validation images, split as in training (same seed and fraction).
    Val,
    /// The training images, split as in training.
    Train,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A run folder written by `tl train`.
    pub run: PathBuf,
    /// Labelled dataset folder (same class names as the run).
    pub data: PathBuf,
    #[arg(long, value_enum, default_value_t = EvalSplit::All)]
    pub split: EvalSplit,
    /// How many of the worst files to list.
    #[arg(long, default_value_t = 10)]
    pub top_losses: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// RUN_DIR then images and folders; with --run or --backbone, only images and folders.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The trained run to use.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Use a backbone's ImageNet classifier instead of a trained run.
    #[arg(long, short)]
    pub backbone: Option<String>,
    #[arg(long, short = 'k', default_value_t = 3)]
    pub top_k: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct NetworkArgs {
    /// A trained run (backbone + head; classes from the run).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// A backbone's ImageNet classifier (classes from its sidecar).
    #[arg(long, short)]
    pub backbone: Option<String>,
}

#[derive(Args, Debug)]
pub struct DreamArgs {
    /// Class name (exact, case-insensitive, or a unique substring) or index.
    #[arg(long, short)]
    pub class: String,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Output PNG.
    #[arg(long, short, default_value = "dream.png")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 256)]
    pub steps: usize,
    /// Adam learning rate on the image parameters.
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// Total-variation weight (TV is the mean absolute difference of neighbouring pixels).
    #[arg(long, default_value_t = 10.0)]
    pub tv: f64,
    /// Penalty on the mean squared distance from mid-grey: keeps the low frequencies from
    /// saturating into black and white blobs.
    #[arg(long, default_value_t = 20.0)]
    pub l2: f64,
    /// Image side in pixels (default: the backbone's crop size).
    #[arg(long)]
    pub size: Option<u32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start from this photo instead of noise.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Turn off the random jitter/scale/rotation applied at each step.
    #[arg(long)]
    pub no_transforms: bool,
    /// How the image is parametrised.
    #[arg(long, value_enum, default_value_t = crate::dream::Parametrization::Fourier)]
    pub param: crate::dream::Parametrization,
    /// What is maximised: the target's logit or its log-probability.
    #[arg(long, value_enum, default_value_t = crate::dream::Objective::Logprob)]
    pub objective: crate::dream::Objective,
    /// Also write a strip of frames every K steps (<out>-strip.png).
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Overwrite the output files if they exist.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    Linf,
    L2,
}

#[derive(Args, Debug)]
pub struct AttackArgs {
    /// Images or folders to attack.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Target class (name or index); with --untargeted, the class to move away from is the current one.
    #[arg(long, short)]
    pub target: Option<String>,
    /// Push away from the current class instead of towards a target.
    #[arg(long)]
    pub untargeted: bool,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Output file (one image) or folder (several images, or a sweep).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Perturbation budget(s) in [0,1] pixel units: 4/255, 0.0157, or a list 1/255,2/255,4/255.
    #[arg(long, default_value = "4/255")]
    pub eps: String,
    /// Step size (default: eps/4 for L-inf, eps/5 for L2).
    #[arg(long)]
    pub alpha: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    #[arg(long, value_enum, default_value_t = Norm::Linf)]
    pub norm: Norm,
    /// Logit margin by which the target must win before stopping early.
    #[arg(long, default_value_t = 1.0)]
    pub margin: f64,
    /// Start from zero perturbation instead of a random point in the eps-ball.
    #[arg(long)]
    pub no_random_start: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the perturbation, amplified for viewing, to this file (one image only).
    #[arg(long)]
    pub diff: Option<PathBuf>,
    /// Overwrite output files that exist.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, short)]
    pub backbone: String,
    #[arg(long, default_value_t = 32)]
    pub batch_size: i64,
    /// Timed batches (after two warm-up batches).
    #[arg(long, default_value_t = 5)]
    pub batches: usize,
    /// Mixed precision (autocast) on CUDA.
    #[arg(long)]
    pub amp: bool,
    /// Side of the square matrices for the matmul measurement (0 skips it).
    #[arg(long, default_value_t = 2048)]
    pub matmul_size: i64,
    #[arg(long)]
    pub json: bool,
}
