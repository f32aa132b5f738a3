//! `tl cache stats|verify|gc` flags.
use super::emit;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tl::workflow::cache::GcSettings;

#[derive(Args, Debug)]
pub struct CacheCommand {
    #[command(subcommand)]
    pub action: CacheAction,
}

/// The cache folder (shared by the subcommands).
#[derive(Args, Debug)]
pub struct RootArgs {
    /// Feature cache folder (default: $TL_CACHE_DIR or the XDG cache dir, ~/.cache/tl).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

impl RootArgs {
    fn root(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(tl::features::cache::default_root)
    }
}

#[derive(Subcommand, Debug)]
pub enum CacheAction {
    /// Namespaces (backbone × preprocessing × view), entries, size, last use.
    Stats(RootArgs),
    /// Read every entry and check it; exit 1 if any is damaged.
    Verify(RootArgs),
    /// Drop namespaces whose backbone file is gone or changed (or unused since a date),
    /// temporary files of killed writers, and merge small segments.
    Gc(GcArgs),
}

#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pub root: RootArgs,
    /// Also drop namespaces not used since this date (YYYY-MM-DD, local time).
    #[arg(long, value_name = "DATE", value_parser = super::values::date)]
    pub unused_since: Option<std::time::SystemTime>,
    /// Say what would be removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also drop namespaces whose backbone file is not found on this machine (by default
    /// they are kept and listed: the file may be on a disk not mounted here).
    #[arg(long)]
    pub drop_missing_backbones: bool,
}

pub fn run(cmd: &CacheCommand) -> anyhow::Result<()> {
    match &cmd.action {
        CacheAction::Stats(a) => emit(&tl::workflow::cache::inspect(&a.root(), false)?, a.json),
        CacheAction::Verify(a) => {
            let report = tl::workflow::cache::inspect(&a.root(), true)?;
            emit(&report, a.json)?;
            if report.problems > 0 {
                anyhow::bail!(
                    "{} damaged entr{} or segment(s) (listed above); `tl cache gc` merges the good ones, runs recompute the rest",
                    report.problems,
                    if report.problems == 1 { "y" } else { "ies" }
                );
            }
            Ok(())
        }
        CacheAction::Gc(a) => {
            let settings = GcSettings {
                root: a.root.root(),
                unused_since: a.unused_since,
                dry_run: a.dry_run,
                drop_missing_backbones: a.drop_missing_backbones,
            };
            emit(&tl::workflow::cache::gc(&settings)?, a.root.json)
        }
    }
}
