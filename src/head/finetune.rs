//! Fine-tuning: the backbone's top blocks and the head trained together, after the head
//! alone (`train`). Adam with a small learning rate on a cosine schedule, label smoothing
//! and the head's L2 penalty as in the first stage, early stopping on validation loss with
//! the best epoch's weights of both kept — where "epoch 0", the head alone, competes too. The top stays in eval mode throughout, so
//! BatchNorm uses (and keeps) its running statistics.
use super::model::Head;
use super::train::{check_finite, correct_count, EarlyStopping, EpochMetrics};
use crate::error::{Result, TlError};
use crate::features::split::{RowSource, TrainableTop};
use crate::progress;
use crate::util::SplitMix64;
use serde::{Deserialize, Serialize};
use std::time::Instant;
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

    fn lr_at(&self, epoch: usize) -> f64 {
        let t = (epoch - 1) as f64 / self.epochs as f64;
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// Rows and their labels.
pub struct RowSplit<'a> {
    pub rows: &'a dyn RowSource,
    pub y: &'a Tensor,
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

/// Loss and accuracy of top + head on a split, without gradients.
pub fn evaluate_rows(
    top: &TrainableTop,
    head: &Head,
    split: &RowSplit,
    batch: usize,
) -> Result<(f64, f64)> {
    tch::no_grad(|| {
        let n = split.rows.len();
        let (mut loss, mut correct) = (0.0, 0i64);
        for start in (0..n).step_by(batch.max(1)) {
            let idx: Vec<i64> = (start as i64..(start + batch).min(n) as i64).collect();
            let logits = head.forward(&top.forward(&split.rows.batch(&idx)?)?);
            let y = split.y.narrow(0, start as i64, idx.len() as i64);
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
}

impl Trainer<'_> {
    /// One pass over the training rows in `order`: (mean loss, accuracy).
    fn epoch(
        &mut self,
        train: &RowSplit,
        order: &[i64],
        bar: &indicatif::ProgressBar,
    ) -> Result<(f64, f64)> {
        let (mut loss_sum, mut correct) = (0.0, 0i64);
        for idx in order.chunks(self.cfg.batch_size) {
            let x = train.rows.batch(idx)?;
            let y = train
                .y
                .index_select(0, &Tensor::from_slice(idx).to_device(train.y.device()));
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

/// One line per fine-tuning epoch on stderr (the progress bar is gone by then).
fn print_epoch(m: &EpochMetrics, show: bool) {
    if show {
        let rate = m.images_per_second.unwrap_or(0.0);
        crate::progress::say(&format!(
            "fine-tune epoch {}: {} ({rate:.1} img/s)",
            m.epoch,
            m.summary()
        ));
    }
}

/// Validation loss and accuracy, when there are validation images.
fn validation(
    t: &Trainer,
    val: Option<&RowSplit>,
    cfg: &FinetuneConfig,
) -> Result<(Option<f64>, Option<f64>)> {
    match val {
        Some(v) if !v.rows.is_empty() => {
            let (l, a) = evaluate_rows(t.top, t.head, v, cfg.batch_size.max(64))?;
            Ok((Some(l), Some(a)))
        }
        _ => Ok((None, None)),
    }
}

/// Train `top` and `head` together; both end with the best epoch's weights, frozen.
pub fn finetune(
    top: &mut TrainableTop,
    head: &mut Head,
    cfg: &FinetuneConfig,
    train: &RowSplit,
    val: Option<&RowSplit>,
    show_progress: bool,
) -> Result<FinetuneOutcome> {
    cfg.validate()?;
    if train.rows.is_empty() {
        return Err(TlError::invalid("no training images left"));
    }
    tch::manual_seed(cfg.seed as i64);
    top.vs.unfreeze();
    head.vs.unfreeze();
    let mut trainer = Trainer {
        opt_top: adam(&top.vs, cfg.lr)?,
        opt_head: adam(&head.vs, cfg.lr)?,
        top,
        head,
        cfg,
    };
    let mut rng = SplitMix64::new(cfg.seed ^ 0x5EED_F1E7);
    let mut order: Vec<i64> = (0..train.rows.len() as i64).collect();
    let (mut history, mut stopped_early) = (Vec::new(), false);
    let mut stopper = EarlyStopping::new(cfg.patience);
    // Epoch 0 is the head alone: if no fine-tuning epoch beats its validation loss, the
    // network is left as it was.
    if let (Some(loss), _) = validation(&trainer, val, cfg)? {
        stopper.update(&[&trainer.top.vs, &trainer.head.vs], 0, Some(loss));
    }
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        let lr = cfg.lr_at(epoch);
        trainer.opt_top.set_lr(lr);
        trainer.opt_head.set_lr(lr);
        rng.shuffle(&mut order);
        let label = format!("tune {epoch}/{}", cfg.epochs);
        let bar = progress::bar(order.len() as u64, &label, show_progress);
        let (train_loss, train_accuracy) = trainer.epoch(train, &order, &bar)?;
        let train_seconds = t0.elapsed().as_secs_f64();
        let (val_loss, val_accuracy) = validation(&trainer, val, cfg)?;
        bar.finish_and_clear();
        check_finite(epoch, train_loss, val_loss, cfg.lr)?;
        let m = EpochMetrics {
            stage: "finetune".into(),
            epoch,
            lr,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            seconds: t0.elapsed().as_secs_f64(),
            images_per_second: Some(order.len() as f64 / train_seconds.max(1e-9)),
        };
        print_epoch(&m, show_progress);
        history.push(m);
        if stopper.update(&[&trainer.top.vs, &trainer.head.vs], epoch, val_loss) {
            stopped_early = true;
            break;
        }
    }
    let best_epoch = stopper.restore(&[&top.vs, &head.vs]);
    top.vs.freeze();
    head.vs.freeze();
    if !head.is_finite() {
        return Err(TlError::invalid(format!(
            "fine-tuning diverged (learning rate {}); try a smaller --finetune-lr",
            cfg.lr
        )));
    }
    Ok(FinetuneOutcome {
        history,
        best_epoch,
        stopped_early,
    })
}
