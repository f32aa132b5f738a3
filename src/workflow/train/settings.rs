//! `tl train`'s settings, and everything that can be checked before any image is read.
use crate::error::{Result, TlError};
use crate::features::CacheSettings;
use crate::head::{self, Balance, Optimisation, TrainConfig};
use crate::run::{self};
use crate::util::refuse_overwrite;
use crate::workflow::calibrate::UnknownSettings;
use crate::workflow::finetune::FinetuneSettings;
use std::path::PathBuf;

/// The L2 penalty of the head: `Auto` is 1/(training images), scikit-learn's C=1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum L2 {
    Auto,
    Fixed(f64),
}

/// `--balance`: how unequal classes are treated; `Auto` adjusts the logits in training
/// (`Balance::Logit`) when the largest class has at least `IMBALANCE_RATIO` (3) times the
/// images of the smallest, and leaves the loss alone otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalanceChoice {
    Auto,
    Fixed(Balance),
}

/// Largest / smallest class from which `--balance auto` adjusts the logits (and reports lead
/// with balanced accuracy).
pub const IMBALANCE_RATIO: f64 = 3.0;

/// Largest / smallest number of images over the classes that have any (1 for none).
pub fn imbalance_ratio(counts: &[usize]) -> f64 {
    let present = counts.iter().filter(|&&c| c > 0);
    let (lo, hi) = present.fold((usize::MAX, 0), |(lo, hi), &c| (lo.min(c), hi.max(c)));
    if hi == 0 {
        1.0
    } else {
        hi as f64 / lo as f64
    }
}

/// How the validation images are chosen when the layout does not say.
#[derive(Clone, Debug, PartialEq)]
pub enum ValidationChoice {
    /// A stratified fraction drawn with the seed.
    Fraction(f64),
    /// Another class-per-folder dataset with the same classes.
    Folder(PathBuf),
}

#[derive(Clone, Debug)]
pub struct TrainSettings {
    pub data: PathBuf,
    pub backbone: String,
    pub validation: ValidationChoice,
    pub seed: u64,
    pub hidden: i64,
    pub dropout: f64,
    pub standardize: bool,
    /// How the head is optimised (its penalty is `l2`, its seed `seed`).
    pub training: Optimisation,
    pub l2: L2,
    pub balance: BalanceChoice,
    /// Feature-extraction batch size.
    pub batch_size: usize,
    pub amp: bool,
    /// None: `runs/<timestamp>-<backbone>`.
    pub out: Option<PathBuf>,
    pub force: bool,
    pub save_features: Option<PathBuf>,
    pub cache: CacheSettings,
    /// Keep classes that have no readable image (otherwise an error).
    pub allow_empty_classes: bool,
    /// Views per training image: the eval transform plus `views - 1` seeded augmented ones.
    pub views: usize,
    /// Fine-tune the top of the backbone after the head (None: the head only).
    pub finetune: Option<FinetuneSettings>,
    /// Train the head on rows read from the feature cache a mini-batch at a time instead of
    /// holding every feature in memory (for datasets whose features do not fit).
    pub stream: bool,
    /// The "unknown" judge's acceptance on the validation images.
    pub unknown: UnknownSettings,
    /// A review file from `tl audit --review`: its decisions (exclude, relabel) applied.
    pub review: Option<PathBuf>,
    /// Set by `tl tune`: how these settings were chosen (recorded in the report).
    pub tuning: Option<super::tuning::Tuning>,
}

impl TrainSettings {
    /// Everything that can be checked before any image is read.
    pub fn validate(&self) -> Result<()> {
        self.head_config(1, &[]).validate()?;
        crate::head::unknown::check_accept(self.unknown.accept)?;
        if let ValidationChoice::Fraction(f) = self.validation {
            if !(f > 0.0 && f < 1.0) {
                return Err(TlError::invalid(format!(
                    "the validation fraction must be in (0, 1), got {f}"
                )));
            }
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(TlError::invalid(format!(
                "dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        if self.views == 0 || self.views > 64 {
            return Err(TlError::invalid(format!(
                "--views {} must be between 1 and 64",
                self.views
            )));
        }
        if let Some(f) = &self.finetune {
            self.finetune_config(f, 1.0).validate()?;
        }
        if self.stream {
            self.check_streamable()?;
        }
        if self.hidden < 0 || self.batch_size == 0 {
            return Err(TlError::invalid(
                "the hidden width must be >= 0 and the batch size >= 1",
            ));
        }
        if let Some(out) = &self.out {
            run::check_destination(out, self.force)?;
        }
        if let Some(path) = &self.save_features {
            refuse_overwrite(path, self.force)?;
            if path.is_dir() {
                return Err(TlError::bad_path(
                    path,
                    "is a folder; give a file name (e.g. features.safetensors)",
                ));
            }
        }
        Ok(())
    }

    /// `--stream` reads the features from the cache: it needs the cache, and the steps that
    /// want every feature in memory are refused.
    fn check_streamable(&self) -> Result<()> {
        let clash = if !self.cache.enabled {
            Some("--no-cache")
        } else if self.finetune.is_some() {
            Some("--finetune")
        } else if self.views > 1 {
            Some("--views above 1")
        } else if self.save_features.is_some() {
            Some("--save-features")
        } else {
            None
        };
        match clash {
            Some(flag) => Err(TlError::invalid(format!(
                "--stream trains from the feature cache and cannot be combined with {flag}"
            ))),
            None => Ok(()),
        }
    }
}

impl TrainSettings {
    /// The head's configuration for `training_rows` rows (every view): the automatic
    /// penalty is 1/rows, scikit-learn's C=1 on the (enlarged) training set.
    pub fn head_config(&self, training_rows: usize, class_counts: &[usize]) -> TrainConfig {
        let l2 = match self.l2 {
            L2::Auto => 1.0 / training_rows.max(1) as f64,
            L2::Fixed(v) => v,
        };
        let mut config = self.training.config(l2, self.seed);
        config.balance = match self.balance {
            BalanceChoice::Fixed(b) => b,
            BalanceChoice::Auto if imbalance_ratio(class_counts) >= IMBALANCE_RATIO => {
                Balance::Logit
            }
            BalanceChoice::Auto => Balance::None,
        };
        config
    }

    /// The fine-tuning stage's configuration (`l2` as the head's).
    pub(crate) fn finetune_config(&self, f: &FinetuneSettings, l2: f64) -> head::FinetuneConfig {
        head::FinetuneConfig {
            epochs: f.epochs,
            batch_size: f.batch_size,
            lr: f.lr.unwrap_or(self.training.lr / 100.0),
            label_smoothing: self.training.label_smoothing,
            l2,
            patience: f.patience,
            seed: self.seed,
        }
    }
}
