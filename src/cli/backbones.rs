//! `tl backbones` flags → the store's list, add, remove and verify.
use super::emit;
use clap::{Args, Subcommand};
use tl::runtime::Runtime;

#[derive(Args, Debug)]
pub struct BackbonesCommand {
    #[command(subcommand)]
    pub action: BackbonesAction,
}

#[derive(Subcommand, Debug)]
pub enum BackbonesAction {
    /// The exported backbones: name, architecture, feature size, weights, files, ONNX.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Export a torchvision classifier into the per-user store (weights: the global
    /// `--weights imagenet|none|FILE`, default imagenet).
    Add {
        /// torchvision model name (vgg16, resnet50, mobilenet_v2, efficientnet_b0, …).
        name: String,
        /// Export again over an existing export.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete a backbone from the per-user store (its files and sidecar).
    Remove {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Check every file of every backbone against the sha256 in its sidecar (exit 1 on a problem).
    Verify {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(rt: &Runtime, args: &BackbonesCommand) -> anyhow::Result<()> {
    let store = &rt.backbones;
    match &args.action {
        BackbonesAction::List { json } => emit(&tl::workflow::backbones::list(store), *json),
        BackbonesAction::Add { name, force, json } => emit(
            &tl::workflow::backbones::add(store, name, store.weights.clone(), *force)?,
            *json,
        ),
        BackbonesAction::Remove { name, json } => {
            emit(&tl::workflow::backbones::remove(store, name)?, *json)
        }
        BackbonesAction::Verify { json } => {
            let verified = tl::workflow::backbones::verify(store)?;
            emit(&verified, *json)?;
            if !verified.damaged.is_empty() {
                anyhow::bail!(
                    "{} backbone file(s) damaged or missing (listed above); re-export with `tl backbones add NAME --force`",
                    verified.damaged.len()
                );
            }
            Ok(())
        }
    }
}
