//! The command line: clap arguments, parsed and validated once, then turned into the plain
//! settings the library takes (one file per subcommand). Errors are printed as one
//! `tl: error:` line; clap's name the flag, the library's name the file or value.
mod attack;
mod audit;
mod backbones;
mod bench;
mod cache;
mod compare;
mod dream;
mod eval;
mod explain;
mod export;
mod extract;
mod predict;
mod report;
mod train;
mod tune;
mod values;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use tl::backbone_store::{BackboneStore, StoreSettings, Weights};
use tl::eval::Report;
use tl::runtime::{Runtime, RuntimeSettings};

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
    #[arg(long, global = true, default_value = "auto", env = "TL_DEVICE", value_parser = values::device)]
    pub device: tl::device::DeviceChoice,
    /// CPU threads for libtorch and for decoding (default: all cores).
    #[arg(long, global = true, env = "TL_THREADS", value_parser = values::threads)]
    pub threads: Option<usize>,
    /// Threads decoding and resizing images while the backbone runs (default: half the
    /// threads on CPU, at low priority; all of them with CUDA). With ONNX Runtime, setting
    /// it replaces the default layout (up to 4 workers that each decode and run their own
    /// batches) by one session fed by this many decoders.
    #[arg(long, global = true, env = "TL_DECODE_THREADS", value_parser = values::threads)]
    pub decode_threads: Option<usize>,
    /// Engine for frozen feature extraction: auto (on the CPU, for a backbone with an ONNX
    /// export: OpenVINO when the precision is bf16, else ONNX Runtime; else libtorch), torch,
    /// onnx or openvino.
    #[arg(long, global = true, env = "TL_ENGINE", value_enum, default_value_t = values::EngineArg::Auto)]
    pub engine: values::EngineArg,
    /// Precision of frozen feature extraction: auto (bf16 on a CPU with native bf16 —
    /// avx512_bf16 or AMX — through OpenVINO; fp32 elsewhere), fp32, or bf16 (OpenVINO on
    /// the CPU, autocast on CUDA). bf16 and fp32 features are cached apart.
    #[arg(long, global = true, env = "TL_PRECISION", value_enum, default_value_t = values::PrecisionArg::Auto)]
    pub precision: values::PrecisionArg,
    /// JPEG decoding before the resize: draft (scaled by 1/2, 1/4 or 1/8 in the DCT while
    /// the image stays at least the resize on both sides, as Pillow's
    /// `Image.draft('RGB', (resize, resize))`; only photos of twice the resize or more are
    /// affected) or full.
    #[arg(long, global = true, env = "TL_DECODE", value_enum, default_value_t = values::DecodeArg::Draft)]
    pub decode: values::DecodeArg,
    /// Folder of exported backbones (NAME.json + TorchScript files), searched first; then
    /// ./backbones when it exists, then the per-user store ($TL_HOME/backbones, default
    /// ~/.local/share/tl/backbones), where torchvision classifiers are exported on first use.
    #[arg(long, global = true, env = "TL_BACKBONES")]
    pub backbones_dir: Option<PathBuf>,
    /// Weights for a backbone exported on first use (and `tl backbones add`): `imagenet`
    /// (a file for it in $TL_HOME/weights, else torchvision's download), `none` (random:
    /// shapes and speed only) or a torchvision state_dict file.
    #[arg(
        long,
        global = true,
        env = "TL_WEIGHTS",
        value_name = "imagenet|none|FILE"
    )]
    pub weights: Option<String>,
    /// tl's per-user folder: exported backbones and handed-over weights [default: ~/.local/share/tl].
    #[arg(long, global = true, env = "TL_HOME", hide_short_help = true)]
    pub home: Option<PathBuf>,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// ONNX Runtime extraction workers (0: one session fed by the decoder threads); for
    /// benchmarks.
    #[arg(long, global = true, env = "TL_EXTRACT_WORKERS", hide = true)]
    pub extract_workers: Option<usize>,
    /// Images per engine call of an extraction worker [default: 4]; for benchmarks.
    #[arg(long, global = true, env = "TL_ENGINE_BATCH", hide = true)]
    pub engine_batch: Option<usize>,
    /// Nice level of the decoder threads [default: 5 on CPU, 0 with CUDA]; for benchmarks.
    #[arg(
        long,
        global = true,
        env = "TL_DECODE_NICE",
        hide = true,
        allow_hyphen_values = true
    )]
    pub decode_nice: Option<i32>,
    /// Say where extraction's time goes; for benchmarks.
    #[arg(long, global = true, env = "TL_DEBUG_TIMING", hide = true)]
    pub debug_timing: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show libtorch, CUDA/cuDNN, threads and where backbones and the cache are.
    #[command(after_help = "Example:\n  tl doctor")]
    Doctor(DoctorArgs),
    /// Train a head on frozen backbone features of a folder dataset.
    #[command(
        after_help = "Examples:\n  tl train --backbone mobilenet_v2 data/PetImages --val-split 0.2\n  tl train --backbone vgg16 data/oxford-pets --epochs 50 --hidden 512 --out runs/pets"
    )]
    Train(train::TrainArgs),
    /// Choose `tl train`'s settings by cross-validation on cached features (head settings,
    /// class balancing, views, fine-tuning) within a time budget, then train the run.
    #[command(
        after_help = "Examples:\n  tl tune --backbone mobilenet_v2 data/PetImages --budget 10m --out runs/tuned\n  tl tune --backbone mobilenet_v2 data/pets --folds 3 --no-finetune --views-to-try 1"
    )]
    Tune(tune::TuneArgs),
    /// The K-fold cross-validated balanced accuracy of given `tl train` settings on the
    /// training images (near-duplicates kept in one fold); nothing is written.
    #[command(
        after_help = "Examples:\n  tl cv --backbone mobilenet_v2 data/PetImages --folds 5\n  tl cv --backbone mobilenet_v2 data/PetImages --hidden 512 --views 4"
    )]
    Cv(tune::CvArgs),
    /// Find what is wrong in a dataset before training: unreadable files, exact and near
    /// duplicates, train/validation leaks, likely label errors, outliers, imbalance.
    #[command(
        after_help = "Examples:\n  tl audit --backbone mobilenet_v2 data/PetImages --html audit.html --review review.csv\n  tl audit data/PetImages --run runs/pets --json      # leaks across the run's split\n  tl train --backbone mobilenet_v2 data/PetImages --review review.csv   # apply the decisions"
    )]
    Audit(audit::AuditArgs),
    /// Fill the feature cache without training: the whole dataset, or one shard of it on each
    /// of many workers (Slurm array, Kubernetes Indexed Job); then `tl train` finds it cached.
    #[command(
        after_help = "Examples:\n  tl extract --backbone mobilenet_v2 data/PetImages\n  tl extract --backbone mobilenet_v2 data/PetImages --shard 0/4 --cache-dir /shared/tl-cache\n  sbatch --array=0-15 configs/slurm/extract.sbatch   # SLURM_ARRAY_TASK_ID picks the shard"
    )]
    Extract(extract::ExtractArgs),
    /// Look after the feature cache: what it holds, whether it is intact, what can go.
    #[command(
        after_help = "Examples:\n  tl cache stats\n  tl cache verify --cache-dir /shared/tl-cache\n  tl cache gc --unused-since 2026-01-01 --dry-run"
    )]
    Cache(cache::CacheCommand),
    /// Measure a trained run on a labelled folder.
    #[command(
        after_help = "Examples:\n  tl eval runs/20260101-120000-mobilenet_v2 data/PetImages\n  tl eval runs/pets data/oxford-pets --split val --json"
    )]
    Eval(eval::EvalArgs),
    /// Classify images with a trained run (or a backbone's ImageNet classifier).
    #[command(
        after_help = "Examples:\n  tl predict runs/pets photo.jpg more_photos/\n  tl predict --backbone mobilenet_v2 cat.png --top-k 5 --json"
    )]
    Predict(predict::PredictArgs),
    /// Optimise an image from noise until the network sees a class ("what does it think a cat looks like?").
    #[command(
        after_help = "Examples:\n  tl dream --backbone mobilenet_v2 --class 'Siamese cat' -o siamese.png\n  tl dream --run runs/catsdogs --class cat --save-every 32 -o cat.png"
    )]
    Dream(dream::DreamArgs),
    /// Measure a backbone alone on ready tensors, and the machine's matrix-multiply rate.
    #[command(
        after_help = "Example:\n  tl bench --backbone resnet50 --batch-size 32 --batches 5 --json"
    )]
    Bench(bench::BenchArgs),
    /// Perturb images imperceptibly so the network sees a target class.
    #[command(
        after_help = "Examples:\n  tl attack dog.jpg --backbone mobilenet_v2 --target tabby --eps 4/255 -o dog_as_tabby.png\n  tl attack dogs/ --run runs/catsdogs --target cat --eps 1/255,2/255,4/255 -o adversarial/"
    )]
    Attack(attack::AttackArgs),
    /// Where a run looked when it scored a class (CAM / Grad-CAM heat maps over the photo),
    /// or what a layer sees in a photo (`--maps`: its feature maps).
    #[command(
        after_help = "Examples:\n  tl explain --run runs/pets cat.jpg -o explained/\n  tl explain --run runs/pets cat.jpg --class dog,cat --method gradcam -o explained/\n  tl explain --backbone vgg16 cat.jpg --maps --layer features.4 -o maps/"
    )]
    Explain(explain::ExplainArgs),
    /// Write a trained run as one TorchScript (or ONNX) file with a JSON sidecar, for use without tl.
    #[command(
        after_help = "Examples:\n  tl export runs/pets -o pets.pt\n  tl export runs/pets -o pets.onnx --format onnx --python .venv/bin/python\n\nThe model takes [N,3,H,W] float32 RGB in [0,1], resized and centre-cropped as the sidecar\nsays (normalisation is inside), and returns softmax probabilities in the sidecar's class order\nand, for runs that judge unknown images, a second output: the unknown score (unknown above\nthe sidecar's threshold)."
    )]
    Export(export::ExportArgs),
    /// Write a run's self-contained HTML report: learning curves, confusion matrix, worst images.
    #[command(
        after_help = "Examples:\n  tl report runs/pets\n  tl report runs/pets -o pets.html --include dreams/"
    )]
    Report(report::ReportArgs),
    /// Train the same head on several backbones (same split, shared cache) and compare them.
    #[command(
        after_help = "Example:\n  tl compare --backbones mobilenet_v2,resnet50,vgg16 data/PetImages --val-split 0.2 --out runs/compare"
    )]
    Compare(compare::CompareArgs),
    /// The exported backbones: list, add (export a torchvision classifier), remove, verify.
    #[command(
        after_help = "Examples:\n  tl backbones list\n  tl backbones add vgg16                       # ImageNet weights, downloaded once (528 MB)\n  tl backbones add resnet50 --weights resnet50-11ad3fa6.pth\n  tl backbones verify"
    )]
    Backbones(backbones::BackbonesCommand),
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `--cache-dir` / `--no-cache`, shared by train and eval.
#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// Feature cache folder (default: $TL_CACHE_DIR or the XDG cache dir, ~/.cache/tl).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the feature cache.
    #[arg(long)]
    pub no_cache: bool,
}

impl CacheArgs {
    fn settings(&self) -> tl::features::CacheSettings {
        tl::features::CacheSettings {
            dir: self.cache_dir.clone(),
            enabled: !self.no_cache,
        }
    }
}

/// `--run` or `--backbone`, exactly one (dream, attack).
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct NetworkArgs {
    /// A trained run (backbone + head; classes from the run).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// A backbone's ImageNet classifier (classes from its sidecar).
    #[arg(long, short)]
    pub backbone: Option<String>,
}

impl NetworkArgs {
    fn choice(&self) -> anyhow::Result<tl::inspect::NetworkChoice> {
        use tl::inspect::NetworkChoice;
        match (&self.run, &self.backbone) {
            (Some(run), None) => Ok(NetworkChoice::Run(run.clone())),
            (None, Some(name)) => Ok(NetworkChoice::Backbone(name.clone())),
            _ => anyhow::bail!("give either --run RUN_DIR or --backbone NAME"),
        }
    }
}

/// Print a report: its notes to stderr, then JSON or text to stdout.
fn emit<R: Report>(report: &R, json: bool) -> anyhow::Result<()> {
    // Class and file names come from the user's folders: shown as text, control characters
    // and bidirectional overrides in them are escaped (JSON escapes them itself).
    use tl::util::text::terminal_safe;
    for note in report.notes() {
        eprintln!("{}", terminal_safe(&note));
    }
    if json {
        println!(
            "{}",
            tl::util::fs::to_json_pretty(report).map_err(anyhow::Error::msg)?
        );
    } else {
        print!("{}", terminal_safe(&report.render_text()));
    }
    Ok(())
}

fn runtime(g: &GlobalArgs) -> anyhow::Result<Runtime> {
    Ok(Runtime::new(&RuntimeSettings {
        device: g.device,
        engine: g.engine.setting(),
        precision: g.precision.setting(),
        threads: g.threads,
        decode_threads: g.decode_threads,
        backbones: BackboneStore::new(&StoreSettings {
            explicit: g.backbones_dir.clone(),
            home: g.home.clone(),
            python: std::env::var_os("TL_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(values::default_python),
            weights: g.weights.as_deref().map(Weights::parse),
            show_progress: !g.quiet,
        }),
        progress: !g.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        extract_workers: g.extract_workers,
        engine_batch: g.engine_batch,
        decode_nice: g.decode_nice,
        debug_timing: g.debug_timing,
    })?)
}

/// The `TL_*` variables the library's process-wide parts use, read once.
fn process_settings(g: &GlobalArgs) -> tl::runtime::ProcessSettings {
    let path = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let number = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse().ok());
    tl::runtime::ProcessSettings {
        cache_dir: path("TL_CACHE_DIR"),
        cache_segment_entries: number("TL_CACHE_SEGMENT_ENTRIES").map(|n: u64| n as usize),
        cache_segment_seconds: number("TL_CACHE_SEGMENT_SECONDS"),
        onnxruntime: path("TL_ONNXRUNTIME"),
        openvino: path("TL_OPENVINO"),
        libjpeg: path("TL_LIBJPEG"),
        decode: g.decode.setting(),
        libjpeg_only: std::env::var("TL_JPEG_EIGHTH").is_ok_and(|v| v == "off"),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // The library's running commentary, on stderr (file and class names escaped).
    tl::progress::set_sink(|line| eprintln!("{}", tl::util::text::terminal_safe(line)));
    tl::runtime::set_process_settings(process_settings(&cli.global));
    let rt = runtime(&cli.global)?;
    match &cli.command {
        Command::Doctor(a) => emit(&tl::workflow::doctor::doctor(&rt), a.json),
        Command::Train(a) => train::run(&rt, a),
        Command::Tune(a) => tune::run_tune(&rt, a),
        Command::Cv(a) => tune::run_cv(&rt, a),
        Command::Audit(a) => audit::run(&rt, a),
        Command::Extract(a) => extract::run(&rt, a),
        Command::Cache(a) => cache::run(a),
        Command::Eval(a) => eval::run(&rt, a),
        Command::Predict(a) => predict::run(&rt, a),
        Command::Dream(a) => dream::run(&rt, a),
        Command::Attack(a) => attack::run(&rt, a),
        Command::Explain(a) => explain::run(&rt, a),
        Command::Bench(a) => bench::run(&rt, a),
        Command::Export(a) => export::run(a),
        Command::Report(a) => report::run(a),
        Command::Compare(a) => compare::run(&rt, a),
        Command::Backbones(a) => backbones::run(&rt, a),
    }
}

/// clap's error as one line: its first paragraph, without the `error:` prefix.
fn one_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let paragraph: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    paragraph
        .join(" ")
        .trim_start_matches("error:")
        .trim()
        .to_string()
}

/// Parse, run, print; the process exit code (2 for a bad command line, 1 for a failure).
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                err.exit();
            }
            eprintln!("tl: error: {}", one_line(&err));
            return 2;
        }
    };
    match run(cli) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("tl: error: {err:#}");
            1
        }
    }
}
