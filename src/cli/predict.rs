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
    /// RUN_DIR (or a model written by `tl export`) then images and folders; with --run,
    /// --model or --backbone, only images and folders.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The trained run to use.
    #[arg(long, conflicts_with_all = ["backbone", "model"])]
    pub run: Option<PathBuf>,
    /// A TorchScript model written by `tl export` (NAME.pt with NAME.pt.json beside it).
    #[arg(long, conflicts_with = "backbone")]
    pub model: Option<PathBuf>,
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
    /// Also write the model inputs ([N,3,H,W] float32 in [0, 1], as an exported model takes
    /// them) and the probabilities, in the order of the predictions, to this safetensors file.
    #[arg(long)]
    pub save_inputs: Option<PathBuf>,
    /// Overwrite the --save-inputs file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Never answer `unknown`: every image gets one of the run's classes.
    #[arg(long)]
    pub no_unknown: bool,
    /// Answer `unknown` at the threshold that accepts this share of the run's validation
    /// images (default: the share the run was trained with, usually 0.95).
    #[arg(long, value_parser = values::accept, conflicts_with = "no_unknown")]
    pub accept: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

impl PredictArgs {
    fn settings(&self) -> anyhow::Result<PredictSettings> {
        let (network, inputs) = match (&self.run, &self.model, &self.backbone) {
            (Some(run), _, _) => (NetworkChoice::Run(run.clone()), self.paths.clone()),
            (None, Some(model), _) => (NetworkChoice::Exported(model.clone()), self.paths.clone()),
            (None, None, Some(name)) => (NetworkChoice::Backbone(name.clone()), self.paths.clone()),
            (None, None, None) => {
                let first = &self.paths[0];
                let model_file = first.extension().is_some_and(|e| e == "pt" || e == "onnx");
                let network = if first.is_file() || model_file {
                    NetworkChoice::Exported(first.clone())
                } else {
                    NetworkChoice::Run(first.clone())
                };
                (network, self.paths[1..].to_vec())
            }
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
            save_inputs: self.save_inputs.clone(),
            force: self.force,
            unknown: tl::inspect::classifier::UnknownChoice {
                enabled: !self.no_unknown,
                accept: self.accept,
            },
        })
    }
}

pub fn run(rt: &Runtime, args: &PredictArgs) -> anyhow::Result<()> {
    emit(
        &tl::workflow::predict::predict(rt, &args.settings()?)?,
        args.json,
    )
}
