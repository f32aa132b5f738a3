//! `tl export` flags → `ExportSettings`.
use super::{emit, values};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use tl::model_file::ModelFormat;
use tl::workflow::export::ExportSettings;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// One TorchScript file: `torch.jit.load(path)(x)` in Python, `torch::jit::load` in C++.
    Torchscript,
    /// ONNX (opset 17, dynamic batch), converted by PyTorch's exporter in Python.
    Onnx,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A run folder written by `tl train`.
    pub run: PathBuf,
    /// The model file to write; its sidecar goes beside it as NAME.pt.json
    /// [default: model.pt, or model.onnx with --format onnx].
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = FormatArg::Torchscript)]
    pub format: FormatArg,
    /// Overwrite the model file and its sidecar if they exist.
    #[arg(long)]
    pub force: bool,
    /// Python with torch (and onnx for --format onnx; onnxruntime there, if installed,
    /// checks the result), for ONNX and for models with an unknown score.
    /// [default: the Python of the environment tl was built against, else python3]
    #[arg(long, env = "TL_PYTHON", default_value_os_t = values::default_python())]
    pub python: PathBuf,
    /// The unknown threshold to build in, as the share of the run's validation images
    /// accepted [default: the run's own].
    #[arg(long, value_parser = values::accept, conflicts_with = "no_unknown")]
    pub accept: Option<f64>,
    /// Leave the unknown score out: the model returns the probabilities alone (and a
    /// TorchScript export needs no Python).
    #[arg(long)]
    pub no_unknown: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ExportArgs) -> anyhow::Result<()> {
    let format = match args.format {
        FormatArg::Torchscript => ModelFormat::TorchScript,
        FormatArg::Onnx => ModelFormat::Onnx,
    };
    let settings = ExportSettings {
        run: args.run.clone(),
        out: args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("model.{}", format.extension()))),
        format,
        force: args.force,
        python: args.python.clone(),
        unknown: !args.no_unknown,
        accept: args.accept,
    };
    emit(&tl::workflow::export::export(&settings)?, args.json)
}
