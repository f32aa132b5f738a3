//! Training the head on cached features: mini-batches shuffled with the run's seed,
//! Adam/AdamW/SGD, label smoothing, cosine or constant learning rate, early stopping on
//! validation loss (the best epoch's weights are kept).
use crate::error::{Result, TlError};
use crate::head::{Head, HeadConfig};
use crate::progress;
use crate::util::SplitMix64;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Reduction, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub seconds: f64,
}

pub struct TrainOutcome {
    pub head: Head,
    pub history: Vec<EpochMetrics>,
    pub best_epoch: usize,
    pub stopped_early: bool,
}

pub struct Split<'a> {
    pub x: &'a Tensor,
    pub y: &'a Tensor,
}

/// Loss and accuracy of `head` on a split, in evaluation mode.
pub fn evaluate(head: &Head, split: &Split, batch: i64) -> (f64, f64) {
    tch::no_grad(|| {
        let n = split.x.size()[0];
        let (mut loss, mut correct) = (0.0, 0i64);
        let mut start = 0;
        while start < n {
            let len = batch.min(n - start);
            let x = split.x.narrow(0, start, len);
            let y = split.y.narrow(0, start, len);
            let logits = head.forward(&x);
            loss += logits
                .cross_entropy_loss::<Tensor>(&y, None, Reduction::Sum, -100, 0.0)
                .double_value(&[]);
            correct += logits
                .argmax(1, false)
                .eq_tensor(&y)
                .sum(Kind::Int64)
                .int64_value(&[]);
            start += len;
        }
        (loss / n as f64, correct as f64 / n as f64)
    })
}

pub fn train_head(
    head_config: HeadConfig,
    cfg: &TrainConfig,
    train: &Split,
    val: Option<&Split>,
    device: Device,
    show_progress: bool,
) -> Result<TrainOutcome> {
    if cfg.epochs == 0 || cfg.batch_size == 0 || cfg.lr <= 0.0 {
        return Err(TlError::invalid(
            "epochs, batch size and learning rate must be positive",
        ));
    }
    if !(0.0..1.0).contains(&cfg.label_smoothing) {
        return Err(TlError::invalid("--label-smoothing must be in [0, 1)"));
    }
    let n = train.x.size()[0];
    if n == 0 {
        return Err(TlError::invalid("no training images left"));
    }
    tch::manual_seed(cfg.seed as i64);
    let mut head = Head::new(head_config, device)?;
    head.set_statistics(train.x);
    let mut opt = match cfg.optimizer {
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
    .map_err(|e| TlError::torch("optimizer", e))?;

    let mut rng = SplitMix64::new(cfg.seed);
    let mut order: Vec<i64> = (0..n).collect();
    let mut history = Vec::new();
    // (score, epoch, weights) of the best epoch so far.
    type Snapshot = (f64, usize, Vec<(String, Tensor)>);
    let mut best: Option<Snapshot> = None;
    let mut since_best = 0;
    let mut stopped_early = false;
    let bar = progress::bar(cfg.epochs as u64, "train", show_progress);
    let bs = cfg.batch_size as i64;
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        let lr = match cfg.schedule {
            Schedule::Constant => cfg.lr,
            Schedule::Cosine => {
                cfg.lr
                    * 0.5
                    * (1.0 + (std::f64::consts::PI * (epoch - 1) as f64 / cfg.epochs as f64).cos())
            }
        };
        opt.set_lr(lr);
        rng.shuffle(&mut order);
        let perm = Tensor::from_slice(&order).to_device(device);
        let (mut loss_sum, mut correct) = (0.0, 0i64);
        let mut start = 0;
        while start < n {
            let len = bs.min(n - start);
            let idx = perm.narrow(0, start, len);
            let x = train.x.index_select(0, &idx);
            let y = train.y.index_select(0, &idx);
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
            loss_sum += ce.double_value(&[]) * len as f64;
            correct += tch::no_grad(|| {
                logits
                    .argmax(1, false)
                    .eq_tensor(&y)
                    .sum(Kind::Int64)
                    .int64_value(&[])
            });
            start += len;
        }
        let (val_loss, val_acc) = match val {
            Some(v) if v.x.size()[0] > 0 => {
                let (l, a) = evaluate(&head, v, 4096);
                (Some(l), Some(a))
            }
            _ => (None, None),
        };
        let m = EpochMetrics {
            epoch,
            lr,
            train_loss: loss_sum / n as f64,
            train_accuracy: correct as f64 / n as f64,
            val_loss,
            val_accuracy: val_acc,
            seconds: t0.elapsed().as_secs_f64(),
        };
        bar.set_message(match (m.val_loss, m.val_accuracy) {
            (Some(l), Some(a)) => format!(
                "loss {:.4} acc {:.3} | val loss {l:.4} acc {a:.3}",
                m.train_loss, m.train_accuracy
            ),
            _ => format!("loss {:.4} acc {:.3}", m.train_loss, m.train_accuracy),
        });
        bar.inc(1);
        history.push(m);

        // Early stopping on validation loss; without validation data, the last epoch wins.
        let score = val_loss.unwrap_or(-(epoch as f64));
        if best.as_ref().is_none_or(|(b, _, _)| score < *b - 1e-7) {
            let snapshot = head
                .vs
                .variables()
                .into_iter()
                .map(|(k, v)| (k, v.detach().copy()))
                .collect();
            best = Some((score, epoch, snapshot));
            since_best = 0;
        } else {
            since_best += 1;
            if cfg.patience > 0 && val_loss.is_some() && since_best >= cfg.patience {
                stopped_early = true;
                break;
            }
        }
    }
    bar.finish_and_clear();
    let (_, best_epoch, snapshot) = best.expect("at least one epoch ran");
    tch::no_grad(|| {
        let vars = head.vs.variables();
        for (name, value) in &snapshot {
            if let Some(var) = vars.get(name) {
                let mut var = var.shallow_clone();
                var.copy_(value);
            }
        }
    });
    head.vs.freeze();
    Ok(TrainOutcome {
        head,
        history,
        best_epoch,
        stopped_early,
    })
}
