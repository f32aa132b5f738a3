//! `tl explain` flags → `ExplainSettings`.
use super::{emit, values, NetworkArgs};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use tl::inspect::explain::MethodChoice;
use tl::runtime::Runtime;
use tl::workflow::explain::ExplainSettings;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// CAM where it is exact (frozen pooled backbone, linear head, last layer), else Grad-CAM.
    Auto,
    /// Class activation map: the head's weights over the last layer's maps.
    Cam,
    /// Gradient-weighted class activation map, at any layer it can reach.
    Gradcam,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Images or folders to explain.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Class(es) to map, by name or index (repeat or separate by commas; default: the
    /// predicted class of each image).
    #[arg(long, short, value_delimiter = ',')]
    pub class: Vec<String>,
    #[arg(long, value_enum, default_value_t = MethodArg::Auto)]
    pub method: MethodArg,
    /// The layer (names as `tl dream --list-layers`; default: the last one with a map, or
    /// the middle one for --maps).
    #[arg(long)]
    pub layer: Option<String>,
    /// Draw the layer's feature maps for the photo (strongest channels first) instead of
    /// class maps; works with --backbone too.
    #[arg(long)]
    pub maps: bool,
    /// Feature maps in the --maps grid.
    #[arg(long, default_value = "64", value_parser = values::at_least_one)]
    pub channels: usize,
    /// Output folder (made if missing).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Replace output files that exist.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(rt: &Runtime, args: &ExplainArgs) -> anyhow::Result<()> {
    let settings = ExplainSettings {
        network: args.network.choice()?,
        images: args.images.clone(),
        classes: args.class.clone(),
        method: match args.method {
            MethodArg::Auto => MethodChoice::Auto,
            MethodArg::Cam => MethodChoice::Cam,
            MethodArg::Gradcam => MethodChoice::GradCam,
        },
        layer: args.layer.clone(),
        out: args.out.clone(),
        force: args.force,
        maps: args.maps,
        channels: args.channels,
    };
    emit(&tl::workflow::explain::explain(rt, &settings)?, args.json)
}
