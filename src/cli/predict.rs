//! `tl predict` flags → `PredictSettings`: `RUN_DIR IMAGE...`, or `--run`/`--backbone`
//! with only images.
use super::{emit, values};
use clap::Args;
use std::path::PathBuf;
use tl::inspect::NetworkChoice;
use tl::runtime::Runtime;
use tl::workflow::predict::PredictSettings;

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// RUN_DIR then images and folders; with --run or --backbone, only images and folders.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The trained run to use.
    #[arg(long, conflicts_with = "backbone")]
    pub run: Option<PathBuf>,
    /// Use a backbone's ImageNet classifier instead of a trained run.
    #[arg(long, short)]
    pub backbone: Option<String>,
    #[arg(long, short = 'k', default_value = "3", value_parser = values::at_least_one)]
    pub top_k: usize,
    #[arg(long, default_value = "32", value_parser = values::at_least_one)]
    pub batch_size: usize,
    /// Test-time augmentation: `flip` averages each image with its mirror image.
    #[arg(long, value_enum, default_value_t = values::TtaArg::None)]
    pub tta: values::TtaArg,
    #[arg(long)]
    pub json: bool,
}

impl PredictArgs {
    fn settings(&self) -> anyhow::Result<PredictSettings> {
        let (network, inputs) = match (&self.run, &self.backbone) {
            (Some(run), _) => (NetworkChoice::Run(run.clone()), self.paths.clone()),
            (None, Some(name)) => (NetworkChoice::Backbone(name.clone()), self.paths.clone()),
            (None, None) => (
                NetworkChoice::Run(self.paths[0].clone()),
                self.paths[1..].to_vec(),
            ),
        };
        if inputs.is_empty() {
            anyhow::bail!("no images given (usage: tl predict RUN_DIR IMAGE...)");
        }
        Ok(PredictSettings {
            network,
            inputs,
            top_k: self.top_k,
            batch_size: self.batch_size,
            tta: self.tta.setting(),
        })
    }
}

pub fn run(rt: &Runtime, args: &PredictArgs) -> anyhow::Result<()> {
    emit(
        &tl::workflow::predict::predict(rt, &args.settings()?)?,
        args.json,
    )
}
