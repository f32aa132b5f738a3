//! Training the head on cached features: mini-batches shuffled with the run's seed,
//! Adam/AdamW/SGD, label smoothing, cosine or constant learning rate, early stopping on
//! validation loss (the best epoch's weights are kept). A diverging run (a loss or weight
//! that is not a finite number) stops with an error instead of saving garbage.
use super::epochs::{run_epochs, EpochPlan, EpochRunner};
pub use super::epochs::{EpochMetrics, Schedule};
use super::model::{Head, HeadConfig};
use crate::error::{Result, TlError};
use crate::features::rows::Rows;
use crate::progress;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Reduction, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    Adamw,
    Sgd,
}

/// How unequal classes are treated in training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// Every training row counts the same.
    #[default]
    None,
    /// The loss of a row of class k is weighted by N / (K · n_k): each class weighs the same.
    Weights,
    /// Each epoch draws N rows with replacement, a row of class k with probability ∝ 1/n_k.
    Sampler,
    /// Logit-adjusted loss (Menon et al., 2021): training adds log(n_k / N) to class k's
    /// logit before the loss, prediction does not, so a rare class needs less evidence.
    Logit,
}

impl std::fmt::Display for Balance {
    /// The flag value (`--balance none|weights|sampler|logit`), as serde writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Balance::None => "none",
            Balance::Weights => "weights",
            Balance::Sampler => "sampler",
            Balance::Logit => "logit",
        })
    }
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
    /// Unequal classes (runs made before this field: none).
    #[serde(default)]
    pub balance: Balance,
}

/// How the head is optimised, as the user sets it: everything but the L2 penalty and the
/// seed, which the caller resolves (an automatic penalty depends on the number of training
/// rows) when it makes the [`TrainConfig`].
#[derive(Clone, Debug, PartialEq)]
pub struct Optimisation {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub optimizer: OptimizerKind,
    pub momentum: f64,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    pub schedule: Schedule,
    /// Epochs without validation-loss improvement before stopping; 0 disables.
    pub patience: usize,
}

impl Optimisation {
    /// The whole configuration, with the resolved penalty and seed.
    pub fn config(&self, l2: f64, seed: u64) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            optimizer: self.optimizer,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            label_smoothing: self.label_smoothing,
            l2,
            schedule: self.schedule,
            patience: self.patience,
            seed,
            balance: Balance::None,
        }
    }
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
}

pub struct TrainOutcome {
    pub head: Head,
    pub history: Vec<EpochMetrics>,
    pub best_epoch: usize,
    pub stopped_early: bool,
}

pub use crate::features::rows::TensorRows;

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
    shape: &LossShape,
) -> Result<(f64, f64)> {
    let n = order.len();
    let (mut loss_sum, mut correct) = (0.0, 0i64);
    for idx in order.chunks(cfg.batch_size.max(1)) {
        let (x, y) = train.batch(idx, head.device())?;
        let logits = head.forward_t(&x, true);
        let adjusted = match &shape.logit_offsets {
            Some(offsets) => &logits + offsets,
            None => logits.shallow_clone(),
        };
        let ce = adjusted.cross_entropy_loss::<Tensor>(
            &y,
            shape.class_weights.as_ref().map(Tensor::shallow_clone),
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

/// The head's epochs: its optimiser over in-memory or streamed rows.
struct HeadEpochs<'a> {
    head: &'a Head,
    opt: nn::Optimizer,
    cfg: &'a TrainConfig,
    train: &'a dyn Rows,
    val: Option<&'a dyn Rows>,
    bar: indicatif::ProgressBar,
    loss_shape: LossShape,
}

/// What `balance` changes in the training loss (neither: plain cross-entropy).
#[derive(Default)]
struct LossShape {
    /// `Balance::Weights`: the loss weight of each class.
    class_weights: Option<Tensor>,
    /// `Balance::Logit`: log prior of each class, added to the logits in training only.
    logit_offsets: Option<Tensor>,
}

impl EpochRunner for HeadEpochs<'_> {
    fn train(&mut self, _epoch: usize, order: &[i64], lr: f64) -> Result<(f64, f64)> {
        self.opt.set_lr(lr);
        run_epoch(
            self.head,
            &mut self.opt,
            self.cfg,
            self.train,
            order,
            &self.loss_shape,
        )
    }

    fn validate(&mut self) -> Result<Option<(f64, f64)>> {
        match self.val {
            Some(v) if !v.is_empty() => evaluate(self.head, v, 4096).map(Some),
            _ => Ok(None),
        }
    }

    fn stores(&self) -> Vec<&nn::VarStore> {
        vec![&self.head.vs]
    }

    fn finished(&mut self, m: &EpochMetrics) {
        self.bar.set_message(m.summary());
        self.bar.inc(1);
    }
}

/// The label of every training row.
fn row_labels(train: &dyn Rows) -> Result<Vec<i64>> {
    let all: Vec<i64> = (0..train.len() as i64).collect();
    let mut out = Vec::with_capacity(all.len());
    for chunk in all.chunks(65536) {
        let y = train
            .labels(chunk, Device::Cpu)
            .ok_or_else(|| TlError::invalid("training rows without labels"))?;
        out.extend(Vec::<i64>::try_from(&y).map_err(|e| TlError::torch("labels", e))?);
    }
    Ok(out)
}

/// What `balance` changes: the loss (class weights or logit offsets), or each row's chance
/// of being drawn.
fn balancing(
    balance: Balance,
    train: &dyn Rows,
    classes: usize,
    device: Device,
) -> Result<(LossShape, Option<Vec<f64>>)> {
    if balance == Balance::None {
        return Ok((LossShape::default(), None));
    }
    let labels = row_labels(train)?;
    let mut counts = vec![0usize; classes];
    for &y in &labels {
        if let Some(c) = counts.get_mut(y as usize) {
            *c += 1;
        }
    }
    let weights = balanced_weights(&counts);
    let per_class = |v: &[f64]| Tensor::from_slice(v).to_kind(Kind::Float).to_device(device);
    Ok(match balance {
        Balance::Weights => (
            LossShape {
                class_weights: Some(per_class(&weights)),
                ..Default::default()
            },
            None,
        ),
        Balance::Logit => (
            LossShape {
                logit_offsets: Some(per_class(&log_priors(&counts))),
                ..Default::default()
            },
            None,
        ),
        Balance::None | Balance::Sampler => (
            LossShape::default(),
            Some(labels.iter().map(|&y| weights[y as usize]).collect()),
        ),
    })
}

/// log(n_k / N) for each class; an absent class gets the log prior of one image, so that
/// its offset stays finite (it has no rows to be trained on either way).
pub fn log_priors(counts: &[usize]) -> Vec<f64> {
    let n = counts.iter().sum::<usize>().max(1) as f64;
    counts.iter().map(|&c| (c.max(1) as f64 / n).ln()).collect()
}

/// N / (K · n_k) for each class present (K: classes present); 0 for absent classes.
pub fn balanced_weights(counts: &[usize]) -> Vec<f64> {
    let present = counts.iter().filter(|&&c| c > 0).count().max(1) as f64;
    let n: usize = counts.iter().sum();
    counts
        .iter()
        .map(|&c| {
            if c > 0 {
                n as f64 / (present * c as f64)
            } else {
                0.0
            }
        })
        .collect()
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
    let n = train.len();
    if n == 0 {
        return Err(TlError::invalid("no training images left"));
    }
    tch::manual_seed(cfg.seed as i64);
    let mut head = Head::new(head_config, device)?;
    if head.config.standardize {
        let (mean, std) = train.moments(device)?;
        head.set_moments(&mean, &std);
    }
    let (loss_shape, row_weights) =
        balancing(cfg.balance, train, head.config.num_classes as usize, device)?;
    let plan = EpochPlan {
        stage: "head",
        epochs: cfg.epochs,
        rows: n,
        lr: cfg.lr,
        schedule: cfg.schedule,
        patience: cfg.patience,
        shuffle_seed: cfg.seed,
        epoch_zero: false,
        rate: false,
        row_weights,
    };
    let mut runner = HeadEpochs {
        opt: build_optimizer(&head, cfg)?,
        head: &head,
        cfg,
        train,
        val,
        bar: progress::bar(cfg.epochs as u64, "train", show_progress),
        loss_shape,
    };
    let ran = run_epochs(&mut runner, &plan)?;
    runner.bar.finish_and_clear();
    drop(runner);
    if !head.is_finite() {
        return Err(TlError::invalid(format!(
            "training diverged: the head's weights are not finite (learning rate {}); try a smaller one",
            cfg.lr
        )));
    }
    head.vs.freeze();
    Ok(TrainOutcome {
        head,
        history: ran.history,
        best_epoch: ran.best_epoch,
        stopped_early: ran.stopped_early,
    })
}

#[cfg(test)]
mod tests {
    use super::{
        balanced_weights, log_priors, train_head, Balance, OptimizerKind, Schedule, TrainConfig,
    };
    use crate::features::rows::TensorRows;
    use crate::head::HeadConfig;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn log_priors_are_the_log_class_shares() {
        let cases: [(&[usize], &[f64]); 3] = [
            (
                &[10, 10],
                &[-std::f64::consts::LN_2, -std::f64::consts::LN_2],
            ),
            (&[30, 10], &[(0.75f64).ln(), (0.25f64).ln()]),
            // An absent class counts as one image, so its offset stays finite.
            (&[8, 0], &[(1.0f64).ln(), (1.0f64 / 8.0).ln()]),
        ];
        for (counts, expected) in cases {
            let p = log_priors(counts);
            for (a, b) in p.iter().zip(expected) {
                assert!((a - b).abs() < 1e-12, "{counts:?}: {p:?}");
            }
        }
    }

    /// Recall of class 1 (the rare one) on balanced test rows, for a head trained on two
    /// overlapping Gaussians with 10 times more rows of class 0.
    fn rare_recall(balance: Balance) -> f64 {
        tch::manual_seed(7);
        let (common, rare) = (400, 40);
        let x0 = Tensor::randn([common, 2], (Kind::Float, Device::Cpu));
        let x1 = Tensor::randn([rare, 2], (Kind::Float, Device::Cpu)) + 1.5;
        let x = Tensor::cat(&[x0, x1], 0);
        let y = Tensor::cat(
            &[
                Tensor::zeros([common], (Kind::Int64, Device::Cpu)),
                Tensor::ones([rare], (Kind::Int64, Device::Cpu)),
            ],
            0,
        );
        let head = HeadConfig {
            hidden: 0,
            dropout: 0.0,
            in_dim: 2,
            num_classes: 2,
            standardize: false,
        };
        let cfg = TrainConfig {
            epochs: 30,
            batch_size: 32,
            lr: 0.05,
            optimizer: OptimizerKind::Adamw,
            momentum: 0.9,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            l2: 1.0 / 440.0,
            schedule: Schedule::Cosine,
            patience: 0,
            seed: 0,
            balance,
        };
        let rows = TensorRows { x: &x, y: &y };
        let out = train_head(head, &cfg, &rows, None, Device::Cpu, false).unwrap();
        let test = Tensor::randn([1000, 2], (Kind::Float, Device::Cpu)) + 1.5;
        let said = out.head.forward(&test).argmax(1, false);
        said.eq(1)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
    }

    #[test]
    fn every_balance_raises_the_rare_class_recall() {
        let none = rare_recall(Balance::None);
        for balance in [Balance::Logit, Balance::Weights, Balance::Sampler] {
            let recall = rare_recall(balance);
            assert!(
                recall > none + 0.1,
                "{balance:?}: rare recall {recall:.3}, none {none:.3}"
            );
        }
    }

    #[test]
    fn balanced_weights_give_every_present_class_the_same_total() {
        let cases: [(&[usize], &[f64]); 4] = [
            (&[10, 10], &[1.0, 1.0]),
            (&[30, 10], &[40.0 / 60.0, 2.0]),
            (&[8, 2, 0], &[10.0 / 16.0, 2.5, 0.0]),
            (&[0, 0], &[0.0, 0.0]),
        ];
        for (counts, expected) in cases {
            let w = balanced_weights(counts);
            for (a, b) in w.iter().zip(expected.iter()) {
                assert!((a - b).abs() < 1e-12, "{counts:?}: {w:?}");
            }
            // n_k · w_k is the same for every class present: N / K.
            let totals: Vec<f64> = counts
                .iter()
                .zip(&w)
                .filter(|(&c, _)| c > 0)
                .map(|(&c, &x)| c as f64 * x)
                .collect();
            assert!(totals.windows(2).all(|t| (t[0] - t[1]).abs() < 1e-9));
        }
    }
}
