//! `tl report` flags → `ReportSettings`.
use super::emit;
use clap::Args;
use std::path::PathBuf;
use tl::workflow::report::ReportSettings;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A run folder written by `tl train`.
    pub run: PathBuf,
    /// Where to write the page [default: report.html in the run folder, rewritten from the
    /// run's files].
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Images to add to the page (e.g. dreams and attacks), from this folder.
    #[arg(long, value_name = "DIR")]
    pub include: Option<PathBuf>,
    /// Overwrite the -o file if it exists.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let settings = ReportSettings {
        run: args.run.clone(),
        out: args.out.clone(),
        include: args.include.clone(),
        force: args.force,
    };
    emit(&tl::workflow::report::report(&settings)?, args.json)
}
