//! What `tl eval` is asked to do.
use crate::data::View;
use crate::features::CacheSettings;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalImages {
    /// Every image in the folder.
    All,
    /// The run's validation images.
    Val,
    /// The run's training images.
    Train,
}

#[derive(Clone, Debug)]
pub struct EvalSettings {
    pub run: PathBuf,
    pub data: PathBuf,
    pub split: EvalImages,
    pub top_losses: usize,
    pub batch_size: usize,
    pub cache: CacheSettings,
    pub tta: Tta,
    /// Images unlike the run's classes (any folder, searched recursively): how many of
    /// them the run answers `unknown`, and the AUROC against the evaluated images.
    pub unknown_dir: Option<PathBuf>,
    /// Judge unknown at this share of the run's validation images (None: the run's own).
    pub accept: Option<f64>,
}

/// Test-time augmentation: average the class probabilities of several views of each image.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tta {
    None,
    /// The image and its mirror image.
    Flip,
}

impl Tta {
    pub fn views(self) -> Vec<View> {
        match self {
            Tta::None => vec![View::Center],
            Tta::Flip => vec![View::Center, View::Flip],
        }
    }
}
