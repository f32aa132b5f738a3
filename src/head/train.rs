//! Training the head on cached features: mini-batches shuffled with the run's seed,
//! Adam/AdamW/SGD, label smoothing, cosine or constant learning rate, early stopping on
//! validation loss (the best epoch's weights are kept). A diverging run (a loss or weight
//! that is not a finite number) stops with an error instead of saving garbage.
use super::model::{Head, HeadConfig};
use super::rows::Rows;
use crate::error::{Result, TlError};
use crate::progress;
use crate::util::SplitMix64;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Reduction, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Cosine,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub optimizer: OptimizerKind,
    pub momentum: f64,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    /// L2 penalty on the head's weights (not biases), added to the mean loss as
    /// `l2/2·‖W‖²`: the objective of L2-regularised logistic regression.
    pub l2: f64,
    pub schedule: Schedule,
    /// Epochs without validation-loss improvement before stopping; 0 disables.
    pub patience: usize,
    pub seed: u64,
}

impl TrainConfig {
    /// Every number finite and in range; the error names the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(TlError::invalid("the number of epochs must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(TlError::invalid("the head's batch size must be at least 1"));
        }
        let checks = [
            ("learning rate", self.lr, self.lr > 0.0),
            (
                "momentum",
                self.momentum,
                (0.0..1.0).contains(&self.momentum),
            ),
            ("weight decay", self.weight_decay, self.weight_decay >= 0.0),
            (
                "label smoothing",
                self.label_smoothing,
                (0.0..1.0).contains(&self.label_smoothing),
            ),
            ("L2 penalty", self.l2, self.l2 >= 0.0),
        ];
        for (what, value, ok) in checks {
            if !value.is_finite() || !ok {
                return Err(TlError::invalid(format!("{what} {value} is out of range")));
            }
        }
        Ok(())
    }

    /// The learning rate of an epoch (1-based).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let t = (epoch - 1) as f64 / self.epochs as f64;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// "head" (the head on frozen features) or "finetune" (top blocks and head).
    #[serde(default = "head_stage")]
    pub stage: String,
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub seconds: f64,
    /// Training images (views) per second, for fine-tuning epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_second: Option<f64>,
}

fn head_stage() -> String {
    "head".into()
}

impl EpochMetrics {
    /// `loss 0.1234 acc 0.950 | val loss 0.2345 acc 0.900`
    pub fn summary(&self) -> String {
        let train = format!("loss {:.4} acc {:.3}", self.train_loss, self.train_accuracy);
        match (self.val_loss, self.val_accuracy) {
            (Some(l), Some(a)) => format!("{train} | val loss {l:.4} acc {a:.3}"),
            _ => train,
        }
    }
}

pub struct TrainOutcome {
    pub head: Head,
    pub history: Vec<EpochMetrics>,
    pub best_epoch: usize,
    pub stopped_early: bool,
}

pub use super::rows::Split;

/// Loss and accuracy of `head` on `rows`, in evaluation mode.
pub fn evaluate(head: &Head, rows: &dyn Rows, batch: i64) -> Result<(f64, f64)> {
    tch::no_grad(|| {
        let n = rows.len() as i64;
        let (mut loss, mut correct) = (0.0, 0i64);
        let order: Vec<i64> = (0..n).collect();
        for idx in order.chunks(batch.max(1) as usize) {
            let (x, y) = rows.batch(idx, head.device())?;
            let logits = head.forward(&x);
            loss += logits
                .cross_entropy_loss::<Tensor>(&y, None, Reduction::Sum, -100, 0.0)
                .double_value(&[]);
            correct += correct_count(&logits, &y);
        }
        Ok((loss / n.max(1) as f64, correct as f64 / n.max(1) as f64))
    })
}

pub(crate) fn correct_count(logits: &Tensor, y: &Tensor) -> i64 {
    tch::no_grad(|| {
        logits
            .argmax(1, false)
            .eq_tensor(y)
            .sum(Kind::Int64)
            .int64_value(&[])
    })
}

fn build_optimizer(head: &Head, cfg: &TrainConfig) -> Result<nn::Optimizer> {
    match cfg.optimizer {
        OptimizerKind::Adam => nn::Adam {
            wd: cfg.weight_decay,
            ..Default::default()
        }
        .build(&head.vs, cfg.lr),
        OptimizerKind::Adamw => nn::AdamW {
            wd: cfg.weight_decay,
            ..Default::default()
        }
        .build(&head.vs, cfg.lr),
        OptimizerKind::Sgd => nn::Sgd {
            momentum: cfg.momentum,
            wd: cfg.weight_decay,
            ..Default::default()
        }
        .build(&head.vs, cfg.lr),
    }
    .map_err(|e| TlError::torch("optimizer", e))
}

/// One pass over the training set in the order `order`: (mean loss, accuracy).
fn run_epoch(
    head: &Head,
    opt: &mut nn::Optimizer,
    cfg: &TrainConfig,
    train: &dyn Rows,
    order: &[i64],
) -> Result<(f64, f64)> {
    let n = order.len();
    let (mut loss_sum, mut correct) = (0.0, 0i64);
    for idx in order.chunks(cfg.batch_size.max(1)) {
        let (x, y) = train.batch(idx, head.device())?;
        let logits = head.forward_t(&x, true);
        let ce = logits.cross_entropy_loss::<Tensor>(
            &y,
            None,
            Reduction::Mean,
            -100,
            cfg.label_smoothing,
        );
        let loss = if cfg.l2 > 0.0 {
            &ce + head.weight_norm_sq() * (cfg.l2 / 2.0)
        } else {
            ce.shallow_clone()
        };
        opt.backward_step(&loss);
        loss_sum += ce.double_value(&[]) * idx.len() as f64;
        correct += correct_count(&logits, &y);
    }
    Ok((loss_sum / n as f64, correct as f64 / n as f64))
}

/// (score, epoch, weights of each var store) of the best epoch so far.
type Snapshot = (f64, usize, Vec<Vec<(String, Tensor)>>);

/// Keeps the weights of the best epoch (lowest validation loss; without validation data,
/// the last epoch) and says when to stop.
pub(crate) struct EarlyStopping {
    patience: usize,
    best: Option<Snapshot>,
    since_best: usize,
}

impl EarlyStopping {
    pub(crate) fn new(patience: usize) -> Self {
        EarlyStopping {
            patience,
            best: None,
            since_best: 0,
        }
    }

    /// Record an epoch; true when training should stop.
    pub(crate) fn update(
        &mut self,
        stores: &[&nn::VarStore],
        epoch: usize,
        val_loss: Option<f64>,
    ) -> bool {
        let score = val_loss.unwrap_or(-(epoch as f64));
        if self.best.as_ref().is_none_or(|(b, _, _)| score < *b - 1e-7) {
            let snapshot = stores
                .iter()
                .map(|vs| {
                    vs.variables()
                        .into_iter()
                        .map(|(k, v)| (k, v.detach().copy()))
                        .collect()
                })
                .collect();
            self.best = Some((score, epoch, snapshot));
            self.since_best = 0;
            return false;
        }
        self.since_best += 1;
        self.patience > 0 && val_loss.is_some() && self.since_best >= self.patience
    }

    /// Put the best epoch's weights back; returns that epoch.
    pub(crate) fn restore(self, stores: &[&nn::VarStore]) -> usize {
        let Some((_, best_epoch, snapshots)) = self.best else {
            return 0;
        };
        tch::no_grad(|| {
            for (vs, snapshot) in stores.iter().zip(&snapshots) {
                let vars = vs.variables();
                for (name, value) in snapshot {
                    if let Some(var) = vars.get(name) {
                        let mut var = var.shallow_clone();
                        var.copy_(value);
                    }
                }
            }
        });
        best_epoch
    }
}

pub(crate) fn check_finite(
    epoch: usize,
    train_loss: f64,
    val_loss: Option<f64>,
    lr: f64,
) -> Result<()> {
    if !train_loss.is_finite() || val_loss.is_some_and(|l| !l.is_finite()) {
        return Err(TlError::invalid(format!(
            "training diverged at epoch {epoch} (loss {train_loss}) with learning rate {lr}; try a smaller one"
        )));
    }
    Ok(())
}

pub fn train_head(
    head_config: HeadConfig,
    cfg: &TrainConfig,
    train: &dyn Rows,
    val: Option<&dyn Rows>,
    device: Device,
    show_progress: bool,
) -> Result<TrainOutcome> {
    cfg.validate()?;
    let n = train.len() as i64;
    if n == 0 {
        return Err(TlError::invalid("no training images left"));
    }
    tch::manual_seed(cfg.seed as i64);
    let mut head = Head::new(head_config, device)?;
    if head.config.standardize {
        let (mean, std) = train.moments(device)?;
        head.set_moments(&mean, &std);
    }
    let mut opt = build_optimizer(&head, cfg)?;
    let mut rng = SplitMix64::new(cfg.seed);
    let mut order: Vec<i64> = (0..n).collect();
    let mut history = Vec::new();
    let mut stopper = EarlyStopping::new(cfg.patience);
    let mut stopped_early = false;
    let bar = progress::bar(cfg.epochs as u64, "train", show_progress);
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        let lr = cfg.lr_at(epoch);
        opt.set_lr(lr);
        rng.shuffle(&mut order);
        let (train_loss, train_accuracy) = run_epoch(&head, &mut opt, cfg, train, &order)?;
        let (val_loss, val_accuracy) = match val {
            Some(v) if !v.is_empty() => {
                let (l, a) = evaluate(&head, v, 4096)?;
                (Some(l), Some(a))
            }
            _ => (None, None),
        };
        check_finite(epoch, train_loss, val_loss, cfg.lr)?;
        let m = EpochMetrics {
            stage: head_stage(),
            epoch,
            lr,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            seconds: t0.elapsed().as_secs_f64(),
            images_per_second: None,
        };
        bar.set_message(match (val_loss, val_accuracy) {
            (Some(l), Some(a)) => {
                format!("loss {train_loss:.4} acc {train_accuracy:.3} | val loss {l:.4} acc {a:.3}")
            }
            _ => format!("loss {train_loss:.4} acc {train_accuracy:.3}"),
        });
        bar.inc(1);
        history.push(m);
        if stopper.update(&[&head.vs], epoch, val_loss) {
            stopped_early = true;
            break;
        }
    }
    bar.finish_and_clear();
    let best_epoch = stopper.restore(&[&head.vs]);
    if !head.is_finite() {
        return Err(TlError::invalid(format!(
            "training diverged: the head's weights are not finite (learning rate {}); try a smaller one",
            cfg.lr
        )));
    }
    head.vs.freeze();
    Ok(TrainOutcome {
        head,
        history,
        best_epoch,
        stopped_early,
    })
}
