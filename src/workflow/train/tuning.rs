//! What `tl tune` records in the run it trains (report.json `tuning`, report.html): each
//! trial's settings and its cross-validated scores, and which one was chosen.
use crate::head::Balance;
use serde::{Deserialize, Serialize};

/// How the run's settings were chosen by `tl tune`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    /// Folds of the cross-validation over the training images.
    pub folds: usize,
    /// Training images that share their fold with a near-duplicate or a copy.
    pub grouped_images: usize,
    /// Every trial, in the order they were run (the default first).
    pub trials: Vec<Scored>,
    /// The trial whose settings the run was trained with.
    pub chosen: usize,
    pub budget_seconds: f64,
    /// Extraction and cross-validation, before the run itself.
    pub search_seconds: f64,
    /// What the search left out, and why (e.g. fine-tuning over the budget).
    pub notes: Vec<String>,
}

/// What a trial changes in `tl train`'s settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// The L2 penalty as a multiple of `tl train`'s automatic one, 1/(training rows).
    pub l2_scale: f64,
    pub lr: f64,
    pub label_smoothing: f64,
    /// 0: a linear head.
    pub hidden: i64,
    pub balance: Balance,
    pub views: usize,
    /// Fine-tune the backbone's last block after the head (`--finetune 1`).
    pub finetune: bool,
}

impl Trial {
    /// `tl train`'s defaults for these classes (`--balance auto` resolved).
    pub fn default_for(imbalanced: bool) -> Trial {
        Trial {
            l2_scale: 1.0,
            lr: 0.01,
            label_smoothing: 0.0,
            hidden: 0,
            balance: if imbalanced {
                Balance::Logit
            } else {
                Balance::None
            },
            views: 1,
            finetune: false,
        }
    }

    /// What the setting costs to train and to run, for the one-standard-error rule:
    /// fine-tuning, then more views, then a hidden layer. (Penalty, learning rate and
    /// smoothing cost nothing: among equal costs the better score wins. Ranking a stronger
    /// penalty as "simpler" was tried first: on pets it picked ×10 penalties whose held-out
    /// loss was 40 % worse, BENCHMARKS.md §20.)
    pub fn cost(&self) -> (bool, usize, bool) {
        (self.finetune, self.views, self.hidden > 0)
    }

    /// The flags of `tl train` that give this trial (the defaults left out).
    pub fn flags(&self) -> String {
        let mut out = Vec::new();
        if self.l2_scale != 1.0 {
            out.push(format!("--l2 {}×auto", self.l2_scale));
        }
        if self.lr != 0.01 {
            out.push(format!("--lr {}", self.lr));
        }
        if self.label_smoothing > 0.0 {
            out.push(format!("--label-smoothing {}", self.label_smoothing));
        }
        if self.hidden > 0 {
            out.push(format!("--hidden {}", self.hidden));
        }
        out.push(format!("--balance {}", self.balance));
        if self.views > 1 {
            out.push(format!("--views {}", self.views));
        }
        if self.finetune {
            out.push("--finetune 1".into());
        }
        out.join(" ")
    }
}

/// A trial's scores on the folds it has run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub trial: Trial,
    /// Balanced accuracy on each held-out fold run so far (fold 0, 1, …).
    pub scores: Vec<f64>,
    /// Mean cross-entropy on each held-out fold.
    pub losses: Vec<f64>,
    pub seconds: f64,
}

impl Scored {
    pub fn new(trial: Trial) -> Scored {
        Scored {
            trial,
            scores: Vec::new(),
            losses: Vec::new(),
            seconds: 0.0,
        }
    }

    pub fn mean(&self) -> f64 {
        mean(&self.scores)
    }

    pub fn mean_loss(&self) -> f64 {
        mean(&self.losses)
    }

    /// Sample standard deviation over the folds (0 with one fold).
    pub fn std(&self) -> f64 {
        sample_std(&self.scores)
    }

    /// Standard error of the mean score.
    pub fn se(&self) -> f64 {
        standard_error(&self.scores)
    }
}

/// The mean (NaN for none).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Sample standard deviation (0 with fewer than two values).
pub fn sample_std(v: &[f64]) -> f64 {
    let n = v.len();
    if n < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|s| (s - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
}

/// Standard error of the mean.
pub fn standard_error(v: &[f64]) -> f64 {
    sample_std(v) / (v.len().max(1) as f64).sqrt()
}

impl Tuning {
    /// The trials, most folds first, then the best mean.
    pub fn ranked(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.trials.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&self.trials[a], &self.trials[b]);
            y.scores
                .len()
                .cmp(&x.scores.len())
                .then(y.mean().total_cmp(&x.mean()))
                .then(a.cmp(&b))
        });
        order
    }

    /// The trial table, best mean first, the chosen one marked.
    pub fn render_text(&self) -> String {
        let order = self.ranked();
        let mut out = format!(
            "tuned: {} trials, {}-fold cross-validation of the training images ({} kept with a near-duplicate), {:.0} s of a {:.0} s budget; picked: the cheapest within one standard error of the best\n\
             {:<3} {:>5} {:>17} {:>8} {:>7}  settings\n",
            self.trials.len(),
            self.folds,
            self.grouped_images,
            self.search_seconds,
            self.budget_seconds,
            "",
            "folds",
            "balanced accuracy",
            "loss",
            "seconds"
        );
        for (shown, &i) in order.iter().enumerate() {
            let t = &self.trials[i];
            if shown >= 12 && i != self.chosen && i != 0 {
                continue;
            }
            let mark = if i == self.chosen { "->" } else { "" };
            out.push_str(&format!(
                "{mark:<3} {:>5} {:>10.2}% ± {:<4} {:>8.4} {:>7.1}  {}{}\n",
                t.scores.len(),
                100.0 * t.mean(),
                // One fold has no spread to show.
                if t.scores.len() > 1 {
                    format!("{:.2}", 100.0 * t.std())
                } else {
                    "-".into()
                },
                t.mean_loss(),
                t.seconds,
                t.trial.flags(),
                if i == 0 { " (defaults)" } else { "" }
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out
    }
}
