//! Fine-tuning: the backbone's top blocks and the head trained together, after the head
//! alone (`train`). Adam with a small learning rate on a cosine schedule, label smoothing
//! and the head's L2 penalty as in the first stage, early stopping on validation loss with
//! the best epoch's weights of both kept — where "epoch 0", the head alone, competes too. The top stays in eval mode throughout, so
//! BatchNorm uses (and keeps) its running statistics.
use super::epochs::{run_epochs, EpochPlan, EpochRunner};
use super::model::Head;
use super::train::{correct_count, EpochMetrics, Schedule};
use crate::error::{Result, TlError};
use crate::features::cut::TrainableTop;
use crate::features::rows::Rows;
use crate::progress;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Reduction, Tensor};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Learning rate of the top blocks and the head in this stage.
    pub lr: f64,
    pub label_smoothing: f64,
    /// The head's L2 penalty (as in the first stage).
    pub l2: f64,
    /// Epochs without validation-loss improvement before stopping; 0 disables.
    pub patience: usize,
    pub seed: u64,
}

impl FinetuneConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(TlError::invalid(
                "fine-tuning needs at least 1 epoch and a batch size of at least 1",
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TlError::invalid(format!(
                "fine-tuning learning rate {} is out of range",
                self.lr
            )));
        }
        Ok(())
    }
}

pub struct FinetuneOutcome {
    pub history: Vec<EpochMetrics>,
    pub best_epoch: usize,
    pub stopped_early: bool,
}

fn adam(vs: &nn::VarStore, lr: f64) -> Result<nn::Optimizer> {
    nn::Adam::default()
        .build(vs, lr)
        .map_err(|e| TlError::torch("optimizer", e))
}

/// Loss and accuracy of top + head on labelled `rows`, without gradients.
pub fn evaluate_rows(
    top: &TrainableTop,
    head: &Head,
    rows: &dyn Rows,
    batch: usize,
) -> Result<(f64, f64)> {
    tch::no_grad(|| {
        let n = rows.len();
        let (mut loss, mut correct) = (0.0, 0i64);
        for start in (0..n).step_by(batch.max(1)) {
            let idx: Vec<i64> = (start as i64..(start + batch).min(n) as i64).collect();
            let (x, y) = rows.batch(&idx, top.vs.device())?;
            let logits = head.forward(&top.forward(&x)?);
            loss += logits
                .cross_entropy_loss::<Tensor>(&y, None, Reduction::Sum, -100, 0.0)
                .double_value(&[]);
            correct += correct_count(&logits, &y);
        }
        Ok((loss / n.max(1) as f64, correct as f64 / n.max(1) as f64))
    })
}

/// The optimisers and the configuration of one fine-tuning run.
struct Trainer<'a> {
    top: &'a TrainableTop,
    head: &'a Head,
    cfg: &'a FinetuneConfig,
    opt_top: nn::Optimizer,
    opt_head: nn::Optimizer,
    train: &'a dyn Rows,
    val: Option<&'a dyn Rows>,
    show_progress: bool,
}

impl EpochRunner for Trainer<'_> {
    fn train(&mut self, epoch: usize, order: &[i64], lr: f64) -> Result<(f64, f64)> {
        self.opt_top.set_lr(lr);
        self.opt_head.set_lr(lr);
        let label = format!("tune {epoch}/{}", self.cfg.epochs);
        let bar = progress::bar(order.len() as u64, &label, self.show_progress);
        let out = self.epoch(self.train, order, &bar);
        bar.finish_and_clear();
        out
    }

    fn validate(&mut self) -> Result<Option<(f64, f64)>> {
        match self.val {
            Some(v) if !v.is_empty() => {
                evaluate_rows(self.top, self.head, v, self.cfg.batch_size.max(64)).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn stores(&self) -> Vec<&nn::VarStore> {
        vec![&self.top.vs, &self.head.vs]
    }

    /// One line per epoch (the progress bar is gone by then).
    fn finished(&mut self, m: &EpochMetrics) {
        if self.show_progress {
            let rate = m.images_per_second.unwrap_or(0.0);
            progress::say(&format!(
                "fine-tune epoch {}: {} ({rate:.1} img/s)",
                m.epoch,
                m.summary()
            ));
        }
    }
}

impl Trainer<'_> {
    /// One pass over the training rows in `order`: (mean loss, accuracy).
    fn epoch(
        &mut self,
        train: &dyn Rows,
        order: &[i64],
        bar: &indicatif::ProgressBar,
    ) -> Result<(f64, f64)> {
        let (mut loss_sum, mut correct) = (0.0, 0i64);
        for idx in order.chunks(self.cfg.batch_size) {
            let (x, y) = train.batch(idx, self.top.vs.device())?;
            let logits = self.head.forward_t(&self.top.forward(&x)?, true);
            let ce = logits.cross_entropy_loss::<Tensor>(
                &y,
                None,
                Reduction::Mean,
                -100,
                self.cfg.label_smoothing,
            );
            let loss = &ce + self.head.weight_norm_sq() * (self.cfg.l2 / 2.0);
            self.opt_top.zero_grad();
            self.opt_head.zero_grad();
            loss.backward();
            self.opt_top.step();
            self.opt_head.step();
            loss_sum += ce.double_value(&[]) * idx.len() as f64;
            correct += correct_count(&logits, &y);
            bar.inc(idx.len() as u64);
        }
        let n = order.len().max(1) as f64;
        Ok((loss_sum / n, correct as f64 / n))
    }
}

/// Train `top` and `head` together; both end with the best epoch's weights, frozen.
pub fn finetune(
    top: &mut TrainableTop,
    head: &mut Head,
    cfg: &FinetuneConfig,
    train: &dyn Rows,
    val: Option<&dyn Rows>,
    show_progress: bool,
) -> Result<FinetuneOutcome> {
    cfg.validate()?;
    if train.is_empty() {
        return Err(TlError::invalid("no training images left"));
    }
    tch::manual_seed(cfg.seed as i64);
    top.vs.unfreeze();
    head.vs.unfreeze();
    let plan = EpochPlan {
        stage: "finetune",
        epochs: cfg.epochs,
        rows: train.len(),
        lr: cfg.lr,
        schedule: Schedule::Cosine,
        patience: cfg.patience,
        shuffle_seed: cfg.seed ^ 0x5EED_F1E7,
        epoch_zero: true,
        rate: true,
        row_weights: None,
    };
    let mut trainer = Trainer {
        opt_top: adam(&top.vs, cfg.lr)?,
        opt_head: adam(&head.vs, cfg.lr)?,
        top,
        head,
        cfg,
        train,
        val,
        show_progress,
    };
    let ran = run_epochs(&mut trainer, &plan)?;
    drop(trainer);
    top.vs.freeze();
    head.vs.freeze();
    if !head.is_finite() {
        return Err(TlError::invalid(format!(
            "fine-tuning diverged (learning rate {}); try a smaller --finetune-lr",
            cfg.lr
        )));
    }
    Ok(FinetuneOutcome {
        history: ran.history,
        best_epoch: ran.best_epoch,
        stopped_early: ran.stopped_early,
    })
}
