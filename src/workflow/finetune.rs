//! The second stage of `tl train --finetune`: the top blocks and the head trained together
//! on cached trunk outputs (or, with `--finetune all`, on images decoded each epoch).
use super::FeatureSet;
use crate::data::{PreprocessConfig, View};
use crate::error::Result;
use crate::features::cut::{BackboneCut, DecodedRows, TrainableTop, Unfreeze};
use crate::head::{self, CachedRows, FinetuneConfig, FinetuneOutcome, Head, Labelled, Rows};
use crate::run::{FinetuneRecord, FINETUNED};
use crate::runtime::Runtime;
use crate::util::FilePath;
use serde::Serialize;
use std::time::Instant;
use tch::Tensor;

/// The second stage of `tl train --finetune`.
#[derive(Clone, Debug)]
pub struct FinetuneSettings {
    pub unfreeze: Unfreeze,
    /// None: the head's learning rate / 100.
    pub lr: Option<f64>,
    pub epochs: usize,
    pub batch_size: usize,
    pub patience: usize,
}

impl Default for FinetuneSettings {
    /// `tl train --finetune`'s defaults: the last block, the head's learning rate / 100,
    /// 10 epochs of 32 images, patience 3.
    fn default() -> Self {
        FinetuneSettings {
            unfreeze: Unfreeze::Blocks(1),
            lr: None,
            epochs: 10,
            batch_size: 32,
            patience: 3,
        }
    }
}

/// What the fine-tuning stage did.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct FinetuneSummary {
    pub unfreeze: Unfreeze,
    pub blocks: usize,
    pub first_block: String,
    /// Validation accuracy of the head alone, before fine-tuning.
    pub head_only_val_accuracy: Option<f64>,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub stopped_early: bool,
    pub median_epoch_seconds: f64,
    pub images_per_second: f64,
}

/// What the second stage needs from the first.
pub(crate) struct Context<'a> {
    pub rt: &'a Runtime,
    pub cfg: FinetuneConfig,
    pub unfreeze: Unfreeze,
    pub split: &'a BackboneCut,
    pub features: &'a FeatureSet,
    /// Cached trunk outputs; None with `--finetune all`.
    pub rows: Option<&'a FeatureSet>,
    pub preprocess: PreprocessConfig,
    /// Say what is being fine-tuned (not for each fold of a cross-validation).
    pub announce: bool,
}

pub(crate) struct Tuned {
    pub top: TrainableTop,
    pub unfreeze: Unfreeze,
    pub blocks: usize,
    pub first_block: String,
    pub outcome: FinetuneOutcome,
    pub config: FinetuneConfig,
    /// Features of the validation images through the fine-tuned top.
    pub val_features: Tensor,
    pub seconds: f64,
}

impl Tuned {
    /// The kept epoch; None when no epoch beat the head alone (epoch 0).
    fn best(&self) -> Option<&crate::head::EpochMetrics> {
        let best = self.outcome.best_epoch;
        (best > 0)
            .then(|| self.outcome.history.get(best - 1))
            .flatten()
    }

    /// Training accuracy of the kept epoch, measured during that epoch.
    pub fn train_accuracy(&self) -> Option<f64> {
        self.best().map(|m| m.train_accuracy)
    }

    pub fn best_val_loss(&self) -> Option<f64> {
        self.best().and_then(|m| m.val_loss)
    }

    pub fn summary(&self, head_only_val_accuracy: Option<f64>) -> FinetuneSummary {
        let mut seconds: Vec<f64> = self.outcome.history.iter().map(|m| m.seconds).collect();
        seconds.sort_by(f64::total_cmp);
        let mut rates: Vec<f64> = self
            .outcome
            .history
            .iter()
            .filter_map(|m| m.images_per_second)
            .collect();
        rates.sort_by(f64::total_cmp);
        let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(0.0);
        FinetuneSummary {
            unfreeze: self.unfreeze,
            blocks: self.blocks,
            first_block: self.first_block.clone(),
            head_only_val_accuracy,
            best_epoch: self.outcome.best_epoch,
            epochs_run: self.outcome.history.len(),
            stopped_early: self.outcome.stopped_early,
            median_epoch_seconds: median(&seconds),
            images_per_second: median(&rates),
        }
    }
}

/// Train the top and the head; `head` ends with the fine-tuned weights.
pub(crate) fn stage_two(ctx: &Context, mut top: TrainableTop, head: &mut Head) -> Result<Tuned> {
    let cfg = ctx.cfg.clone();
    let f = ctx.features;
    let (train_rows, val_rows): (Box<dyn Rows>, Box<dyn Rows>) = match ctx.rows {
        Some(rows) => (
            Box::new(CachedRows(rows.train_x.shallow_clone())),
            Box::new(CachedRows(rows.val_x.shallow_clone())),
        ),
        None => (
            Box::new(DecodedRows {
                items: f.train_rows.clone(),
                preprocess: ctx.preprocess,
            }),
            Box::new(DecodedRows {
                items: f
                    .val
                    .paths
                    .iter()
                    .map(|p| (p.clone(), View::Center))
                    .collect(),
                preprocess: ctx.preprocess,
            }),
        ),
    };
    let train = Labelled {
        rows: train_rows.as_ref(),
        y: &f.train_y,
    };
    let val = Labelled {
        rows: val_rows.as_ref(),
        y: &f.val_y,
    };
    if ctx.announce {
        crate::progress::say(&format!(
            "fine-tuning the top {} block(s) of {} (from {}), learning rate {}",
            ctx.split.cut.blocks, ctx.split.total_blocks, ctx.split.cut.first_block, cfg.lr
        ));
    }
    let t0 = Instant::now();
    let outcome = head::finetune(
        &mut top,
        head,
        &cfg,
        &train,
        (!val_rows.is_empty()).then_some(&val),
        ctx.rt.progress,
    )?;
    let seconds = t0.elapsed().as_secs_f64();
    let val_features = top.features_of(val_rows.as_ref(), cfg.batch_size.max(64))?;
    Ok(Tuned {
        top,
        unfreeze: ctx.unfreeze,
        blocks: ctx.split.cut.blocks,
        first_block: ctx.split.cut.first_block.clone(),
        outcome,
        config: cfg,
        val_features,
        seconds,
    })
}

/// config.json's record of the fine-tuning.
pub(super) fn record(split: &BackboneCut, tuned: &Tuned) -> Result<FinetuneRecord> {
    let canonical = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or(p.to_path_buf());
    let trunk_sha256 = match &split.trunk {
        Some(t) => Some(t.verified_features_hash()?),
        None => None,
    };
    Ok(FinetuneRecord {
        unfreeze: tuned.unfreeze,
        blocks: split.cut.blocks,
        first_block: split.cut.first_block.clone(),
        top_file: FilePath(canonical(&split.top_path)),
        top_sha256: split.verified_top_hash()?,
        trunk_file: split
            .trunk
            .as_ref()
            .map(|t| FilePath(canonical(&t.features_path))),
        trunk_sha256,
        weights: FINETUNED.into(),
        config: tuned.config.clone(),
        best_epoch: tuned.outcome.best_epoch,
    })
}
