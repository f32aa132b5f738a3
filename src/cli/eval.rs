//! `tl eval` flags → `EvalSettings`.
use super::{emit, values, CacheArgs};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use tl::eval::Report;
use tl::runtime::Runtime;
use tl::workflow::evaluate::{EvalImages, EvalSettings};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    /// Every image in the folder.
    All,
    /// The run's validation images (as recorded at training).
    Val,
    /// The run's training images (as recorded at training).
    Train,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A run folder written by `tl train`.
    pub run: PathBuf,
    /// Labelled dataset folder (same class names as the run).
    pub data: PathBuf,
    #[arg(long, value_enum, default_value_t = SplitArg::All)]
    pub split: SplitArg,
    /// How many of the worst files to list.
    #[arg(long, default_value_t = 10)]
    pub top_losses: usize,
    #[arg(long, default_value = "32", value_parser = values::at_least_one)]
    pub batch_size: usize,
    /// Test-time augmentation: `flip` averages each image with its mirror image.
    #[arg(long, value_enum, default_value_t = values::TtaArg::None)]
    pub tta: values::TtaArg,
    /// Also write the evaluation as a self-contained HTML page (confusion matrix, per-class
    /// figures, worst images).
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Images to add to the --report page (e.g. dreams and attacks), from this folder.
    #[arg(long, requires = "report", value_name = "DIR")]
    pub include: Option<PathBuf>,
    /// Overwrite the --report file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Photos unlike the run's classes (any folder): report how many the run answers
    /// `unknown`, and the AUROC of its unknown score against the evaluated images.
    #[arg(long, value_name = "DIR")]
    pub unknown_dir: Option<PathBuf>,
    /// Judge unknown at the threshold that accepts this share of the run's validation
    /// images (default: the run's own).
    #[arg(long, value_parser = values::accept)]
    pub accept: Option<f64>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

pub fn run(rt: &Runtime, args: &EvalArgs) -> anyhow::Result<()> {
    let settings = EvalSettings {
        run: args.run.clone(),
        data: args.data.clone(),
        split: match args.split {
            SplitArg::All => EvalImages::All,
            SplitArg::Val => EvalImages::Val,
            SplitArg::Train => EvalImages::Train,
        },
        top_losses: args.top_losses,
        batch_size: args.batch_size,
        cache: args.cache.settings(),
        tta: args.tta.setting(),
        unknown_dir: args.unknown_dir.clone(),
        accept: args.accept,
    };
    if let Some(path) = &args.report {
        tl::util::refuse_overwrite(path, args.force)?;
    }
    let report = tl::workflow::evaluate::evaluate(rt, &settings)?;
    emit(&report, args.json)?;
    if let Some(path) = &args.report {
        let written = tl::workflow::report::write_eval_page(
            &report,
            path,
            args.include.as_deref(),
            args.force,
        )?;
        eprint!("{}", written.render_text());
    }
    Ok(())
}
