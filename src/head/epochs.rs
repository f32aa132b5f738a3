//! The one epoch loop of head training and fine-tuning: the learning-rate schedule, seeded
//! shuffling, the finite check, each epoch's metrics and early stopping on validation loss
//! with the best epoch's weights put back. What an epoch trains is the caller's
//! ([`EpochRunner`]).
use crate::error::{Result, TlError};
use crate::util::SplitMix64;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{nn, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Cosine,
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

/// The learning rate of `epoch` (1-based) of `epochs`: constant, or cosine from `lr` down
/// towards 0 (the last epoch still learns).
pub fn learning_rate(schedule: Schedule, lr: f64, epoch: usize, epochs: usize) -> f64 {
    match schedule {
        Schedule::Constant => lr,
        Schedule::Cosine => {
            let t = (epoch.max(1) - 1) as f64 / epochs.max(1) as f64;
            lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

/// What one kind of training does in an epoch.
pub trait EpochRunner {
    /// One pass over the training rows in `order` at `lr`: (mean loss, accuracy).
    fn train(&mut self, epoch: usize, order: &[i64], lr: f64) -> Result<(f64, f64)>;
    /// Validation (loss, accuracy); `None` without validation rows.
    fn validate(&mut self) -> Result<Option<(f64, f64)>>;
    /// The weights early stopping keeps and puts back.
    fn stores(&self) -> Vec<&nn::VarStore>;
    /// After each epoch (progress bars, a line per epoch).
    fn finished(&mut self, _m: &EpochMetrics) {}
}

/// How many epochs, at what rate, over how many rows.
#[derive(Clone, Debug)]
pub struct EpochPlan {
    /// "head" or "finetune", recorded in each epoch's metrics.
    pub stage: &'static str,
    pub epochs: usize,
    pub rows: usize,
    pub lr: f64,
    pub schedule: Schedule,
    /// Epochs without improvement before stopping; 0 never stops early.
    pub patience: usize,
    /// The seed of the shuffling.
    pub shuffle_seed: u64,
    /// Validate before the first epoch too: "epoch 0" (the weights as given) competes, so a
    /// training that never beats them leaves them as they were.
    pub epoch_zero: bool,
    /// Record training images per second in the metrics.
    pub rate: bool,
    /// Draw each epoch's rows with replacement, row i with probability ∝ `row_weights[i]`
    /// (class-balanced sampling); None: every row once, shuffled.
    pub row_weights: Option<Vec<f64>>,
}

/// `n` row indices drawn with replacement, row i with probability ∝ `weights[i]`.
fn weighted_draw(weights: &[f64], rng: &mut SplitMix64) -> Vec<i64> {
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut total = 0.0;
    for &w in weights {
        total += w.max(0.0);
        cumulative.push(total);
    }
    (0..weights.len())
        .map(|_| {
            let u = rng.uniform(0.0, total);
            cumulative
                .partition_point(|&c| c <= u)
                .min(weights.len() - 1) as i64
        })
        .collect()
}

pub struct EpochsRun {
    pub history: Vec<EpochMetrics>,
    /// The epoch whose weights were kept (0: the weights as given).
    pub best_epoch: usize,
    pub stopped_early: bool,
}

pub fn run_epochs(runner: &mut dyn EpochRunner, plan: &EpochPlan) -> Result<EpochsRun> {
    let mut rng = SplitMix64::new(plan.shuffle_seed);
    let mut order: Vec<i64> = (0..plan.rows as i64).collect();
    let mut stopper = EarlyStopping::new(plan.patience);
    if plan.epoch_zero {
        if let Some((loss, _)) = runner.validate()? {
            stopper.update(&runner.stores(), 0, Some(loss));
        }
    }
    let (mut history, mut stopped_early) = (Vec::new(), false);
    for epoch in 1..=plan.epochs {
        let t0 = Instant::now();
        let lr = learning_rate(plan.schedule, plan.lr, epoch, plan.epochs);
        match &plan.row_weights {
            Some(w) => order = weighted_draw(w, &mut rng),
            None => rng.shuffle(&mut order),
        }
        let (train_loss, train_accuracy) = runner.train(epoch, &order, lr)?;
        let train_seconds = t0.elapsed().as_secs_f64();
        let val = runner.validate()?;
        let (val_loss, val_accuracy) = (val.map(|v| v.0), val.map(|v| v.1));
        check_finite(epoch, train_loss, val_loss, plan.lr)?;
        let m = EpochMetrics {
            stage: plan.stage.into(),
            epoch,
            lr,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            seconds: t0.elapsed().as_secs_f64(),
            images_per_second: plan
                .rate
                .then(|| order.len() as f64 / train_seconds.max(1e-9)),
        };
        runner.finished(&m);
        history.push(m);
        if stopper.update(&runner.stores(), epoch, val_loss) {
            stopped_early = true;
            break;
        }
    }
    let best_epoch = stopper.restore(&runner.stores());
    Ok(EpochsRun {
        history,
        best_epoch,
        stopped_early,
    })
}

/// A loss that is not a finite number stops training with an error, not garbage weights.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_draws_follow_the_weights_and_never_pick_a_zero() {
        let cases: [(&[f64], [f64; 3]); 3] = [
            (&[1.0, 0.0, 3.0], [0.25, 0.0, 0.75]),
            (&[1.0, 1.0, 1.0], [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]),
            (&[0.0, 2.0, 0.0], [0.0, 1.0, 0.0]),
        ];
        for (weights, expected) in cases {
            let mut rng = SplitMix64::new(7);
            let mut counts = [0usize; 3];
            for _ in 0..2000 {
                for i in weighted_draw(weights, &mut rng) {
                    counts[i as usize] += 1;
                }
            }
            let total: usize = counts.iter().sum();
            assert_eq!(total, 2000 * weights.len());
            for (c, e) in counts.iter().zip(expected) {
                let share = *c as f64 / total as f64;
                assert!((share - e).abs() < 0.02, "{weights:?}: {counts:?}");
                if e == 0.0 {
                    assert_eq!(*c, 0, "{weights:?}");
                }
            }
        }
    }

    #[test]
    fn learning_rate_table() {
        let cases = [
            (Schedule::Constant, 0.1, 1, 10, 0.1),
            (Schedule::Constant, 0.1, 10, 10, 0.1),
            (Schedule::Cosine, 0.1, 1, 10, 0.1),
            (Schedule::Cosine, 0.1, 6, 10, 0.05),
            (
                Schedule::Cosine,
                1.0,
                3,
                4,
                0.5 * (1.0 + (std::f64::consts::PI * 0.5).cos()),
            ),
            (Schedule::Cosine, 1.0, 1, 1, 1.0),
        ];
        for (schedule, lr, epoch, epochs, want) in cases {
            let got = learning_rate(schedule, lr, epoch, epochs);
            assert!(
                (got - want).abs() < 1e-12,
                "{schedule:?} {lr} {epoch}/{epochs}: {got} vs {want}"
            );
        }
    }

    /// burn's early-stopping tests, as a table: validation losses → (best epoch, stopped at).
    #[test]
    fn early_stopping_table() {
        // (patience, validation losses, best epoch, stopped at)
        type Case<'a> = (usize, &'a [Option<f64>], usize, Option<usize>);
        let cases: &[Case] = &[
            // improving all along: the last epoch, never stopped
            (2, &[Some(1.0), Some(0.9), Some(0.8)], 3, None),
            // no improvement for `patience` epochs: stopped, best kept
            (
                2,
                &[Some(1.0), Some(0.5), Some(0.6), Some(0.7), Some(0.4)],
                2,
                Some(4),
            ),
            // patience 0 never stops
            (0, &[Some(1.0), Some(2.0), Some(3.0)], 1, None),
            // a change below 1e-7 is not an improvement
            (1, &[Some(1.0), Some(1.0 - 1e-9)], 1, Some(2)),
            // without validation: the last epoch, never stopped
            (1, &[None, None, None], 3, None),
        ];
        for (patience, losses, best, stop) in cases {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let w = vs.root().zeros("w", &[1]);
            let mut s = EarlyStopping::new(*patience);
            let mut stopped = None;
            for (i, loss) in losses.iter().enumerate() {
                let epoch = i + 1;
                let _ = tch::no_grad(|| w.shallow_clone().fill_(epoch as f64));
                if s.update(&[&vs], epoch, *loss) {
                    stopped = Some(epoch);
                    break;
                }
            }
            assert_eq!(stopped, *stop, "{losses:?} patience {patience}");
            assert_eq!(s.restore(&[&vs]), *best, "{losses:?}");
            assert_eq!(
                w.double_value(&[0]),
                *best as f64,
                "the best epoch's weights are back"
            );
        }
    }
}
