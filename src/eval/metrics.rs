//! Classification metrics and their text rendering: accuracy, mean per-class accuracy,
//! per-class precision/recall/F1, the confusion matrix and the worst files.
use crate::util::FilePath;
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::PathBuf;

/// A class and its probability: the one top-k entry of every report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassProb {
    pub class: String,
    pub index: usize,
    pub probability: f64,
}

/// The `k` most probable classes, most probable first.
pub fn top_classes(probs: &[f32], classes: &[String], k: usize) -> Vec<ClassProb> {
    top_k(probs, k)
        .into_iter()
        .map(|i| ClassProb {
            class: classes.get(i).cloned().unwrap_or_else(|| i.to_string()),
            index: i,
            probability: probs[i] as f64,
        })
        .collect()
}

/// `a 0.912, b 0.051, …`
pub fn format_top(top: &[ClassProb]) -> String {
    top.iter()
        .map(|c| format!("{} {:.3}", c.class, c.probability))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Usable images of one class on each side (None: not known for that side).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCount {
    pub class: String,
    pub train: Option<usize>,
    pub val: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopLoss {
    pub path: FilePath,
    pub true_class: String,
    pub predicted: String,
    pub prob_true: f64,
    pub prob_predicted: f64,
    pub loss: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassificationReport {
    pub images: usize,
    pub accuracy: f64,
    pub mean_class_accuracy: f64,
    pub loss: f64,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`; left out of JSON above [`FULL_CONFUSION_CLASSES`]
    /// classes (2,000 classes would be 4 million numbers: `confused_pairs` says it all).
    #[serde(default, skip_serializing_if = "too_many_classes")]
    pub confusion: Vec<Vec<usize>>,
    /// Every (true, predicted) pair with mistakes, most first (at most 1,000).
    #[serde(default)]
    pub confused_pairs: Vec<ConfusedPair>,
    pub top_losses: Vec<TopLoss>,
}

/// Above this many classes reports show the most confused pairs, not the whole matrix.
pub const FULL_CONFUSION_CLASSES: usize = 50;

fn too_many_classes(confusion: &[Vec<usize>]) -> bool {
    confusion.len() > FULL_CONFUSION_CLASSES
}

/// Images of `true_class` predicted as `predicted`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfusedPair {
    pub true_class: String,
    pub predicted: String,
    pub count: usize,
}

/// The off-diagonal cells with mistakes, most first (ties in class order).
fn confused_pairs(confusion: &[Vec<usize>], per_class: &[ClassMetrics]) -> Vec<ConfusedPair> {
    let mut pairs: Vec<(usize, usize, usize)> = confusion
        .iter()
        .enumerate()
        .flat_map(|(t, row)| {
            row.iter()
                .enumerate()
                .filter(move |&(p, &n)| p != t && n > 0)
                .map(move |(p, &n)| (t, p, n))
        })
        .collect();
    pairs.sort_by_key(|&(t, p, n)| (std::cmp::Reverse(n), t, p));
    pairs
        .into_iter()
        .take(1000)
        .map(|(t, p, count)| ConfusedPair {
            true_class: per_class[t].class.clone(),
            predicted: per_class[p].class.clone(),
            count,
        })
        .collect()
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl ClassificationReport {
    /// `probs[i]` are the class probabilities of image `i`, `labels[i]` its true class.
    pub fn compute(
        probs: &[Vec<f32>],
        labels: &[usize],
        paths: &[PathBuf],
        classes: &[String],
        top_k_losses: usize,
    ) -> ClassificationReport {
        let k = classes.len();
        let mut confusion = vec![vec![0usize; k]; k];
        let mut losses = Vec::with_capacity(probs.len());
        let mut total_loss = 0.0;
        for (i, p) in probs.iter().enumerate() {
            let pred = argmax(p);
            confusion[labels[i]][pred] += 1;
            let pt = (p[labels[i]] as f64).max(1e-12);
            total_loss += -pt.ln();
            losses.push((i, -pt.ln(), pred));
        }
        let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
        let per_class: Vec<ClassMetrics> = (0..k)
            .map(|c| {
                let tp = confusion[c][c];
                let support: usize = confusion[c].iter().sum();
                let predicted: usize = (0..k).map(|t| confusion[t][c]).sum();
                let precision = ratio(tp, predicted);
                let recall = ratio(tp, support);
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                ClassMetrics {
                    class: classes[c].clone(),
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect();
        let present: Vec<&ClassMetrics> = per_class.iter().filter(|m| m.support > 0).collect();
        let mean_class_accuracy = if present.is_empty() {
            0.0
        } else {
            present.iter().map(|m| m.recall).sum::<f64>() / present.len() as f64
        };
        losses.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top_losses = losses
            .iter()
            .take(top_k_losses)
            .map(|&(i, loss, pred)| TopLoss {
                path: FilePath(paths[i].clone()),
                true_class: classes[labels[i]].clone(),
                predicted: classes[pred].clone(),
                prob_true: probs[i][labels[i]] as f64,
                prob_predicted: probs[i][pred] as f64,
                loss,
            })
            .collect();
        ClassificationReport {
            images: probs.len(),
            accuracy: ratio(correct, probs.len()),
            mean_class_accuracy,
            loss: if probs.is_empty() {
                0.0
            } else {
                total_loss / probs.len() as f64
            },
            confused_pairs: confused_pairs(&confusion, &per_class),
            per_class,
            confusion,
            top_losses,
        }
    }

    /// The mean over classes of F1.
    pub fn macro_f1(&self) -> f64 {
        let n = self.per_class.len().max(1) as f64;
        self.per_class.iter().map(|c| c.f1).sum::<f64>() / n
    }

    /// Whether the largest class has at least 3× the images of the smallest (then balanced
    /// accuracy — the mean per-class accuracy — and macro-F1 lead the figures).
    pub fn imbalanced(&self) -> bool {
        let supports = self.per_class.iter().map(|c| c.support).filter(|&s| s > 0);
        let (lo, hi) = supports.fold((usize::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
        hi > 0 && hi as f64 >= 3.0 * lo as f64
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        if self.imbalanced() {
            let _ = writeln!(
                s,
                "images: {}   balanced accuracy: {:.2}%   macro-F1: {:.4}   accuracy: {:.2}%   loss: {:.4} (imbalanced classes)",
                self.images,
                100.0 * self.mean_class_accuracy,
                self.macro_f1(),
                100.0 * self.accuracy,
                self.loss
            );
        } else {
            let _ = writeln!(
                s,
                "images: {}   accuracy: {:.2}%   mean per-class accuracy: {:.2}%   loss: {:.4}",
                self.images,
                100.0 * self.accuracy,
                100.0 * self.mean_class_accuracy,
                self.loss
            );
        }
        let width = self
            .per_class
            .iter()
            .map(|m| m.class.len())
            .max()
            .unwrap_or(5)
            .clamp(5, 28);
        let _ = writeln!(
            s,
            "\n{:<width$}  precision  recall     f1  support",
            "class"
        );
        for m in &self.per_class {
            let _ = writeln!(
                s,
                "{:<width$}  {:>9.3}  {:>6.3}  {:>5.3}  {:>7}",
                truncate(&m.class, width),
                m.precision,
                m.recall,
                m.f1,
                m.support
            );
        }
        self.render_confusion(&mut s, width);
        if !self.top_losses.is_empty() {
            let _ = writeln!(s, "\ntop losses");
            for t in &self.top_losses {
                let _ = writeln!(
                    s,
                    "  {:.3}  {}  (true {} p={:.3}, predicted {} p={:.3})",
                    t.loss,
                    t.path.display(),
                    t.true_class,
                    t.prob_true,
                    t.predicted,
                    t.prob_predicted
                );
            }
        }
        s
    }

    /// The confusion matrix (up to 12 classes) or the most confused pairs.
    fn render_confusion(&self, s: &mut String, width: usize) {
        let k = self.per_class.len();
        if k <= 12 {
            let _ = writeln!(s, "\nconfusion matrix (rows: true, columns: predicted)");
            let cw = self
                .confusion
                .iter()
                .flatten()
                .max()
                .map(|m| m.to_string().len())
                .unwrap_or(1)
                .max(6);
            let _ = write!(s, "{:<width$}", "");
            for m in &self.per_class {
                let _ = write!(s, " {:>cw$}", truncate(&m.class, cw));
            }
            let _ = writeln!(s);
            for (t, row) in self.confusion.iter().enumerate() {
                let _ = write!(s, "{:<width$}", truncate(&self.per_class[t].class, width));
                for v in row {
                    let _ = write!(s, " {v:>cw$}");
                }
                let _ = writeln!(s);
            }
        } else {
            let _ = writeln!(s, "\nmost confused pairs (true -> predicted: count)");
            let mut pairs: Vec<(usize, usize, usize)> = (0..k)
                .flat_map(|t| (0..k).filter(move |&p| p != t).map(move |p| (t, p)))
                .map(|(t, p)| (t, p, self.confusion[t][p]))
                .filter(|x| x.2 > 0)
                .collect();
            pairs.sort_by_key(|p| std::cmp::Reverse(p.2));
            for (t, p, c) in pairs.iter().take(10) {
                let _ = writeln!(
                    s,
                    "  {} -> {}: {c}",
                    self.per_class[*t].class, self.per_class[*p].class
                );
            }
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n.saturating_sub(1)).collect::<String>() + "…"
    }
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// Indices of the `k` largest values, largest first.
pub fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn metrics_on_a_known_confusion() {
        let classes = vec!["cat".to_string(), "dog".to_string()];
        // 3 cats (2 right), 1 dog (right)
        let probs = vec![
            vec![0.9, 0.1],
            vec![0.8, 0.2],
            vec![0.3, 0.7],
            vec![0.4, 0.6],
        ];
        let labels = vec![0, 0, 0, 1];
        let paths: Vec<PathBuf> = (0..4).map(|i| PathBuf::from(format!("{i}.jpg"))).collect();
        let r = ClassificationReport::compute(&probs, &labels, &paths, &classes, 2);
        assert_eq!(r.confusion, vec![vec![2, 1], vec![0, 1]]);
        assert!((r.accuracy - 0.75).abs() < 1e-12);
        assert!((r.mean_class_accuracy - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        assert!((r.per_class[1].precision - 0.5).abs() < 1e-12);
        assert_eq!(r.top_losses[0].path.0, PathBuf::from("2.jpg"));
        // The whole rendering, compared as text (it is stable: no paths, no timings).
        let expected = "\
images: 4   balanced accuracy: 83.33%   macro-F1: 0.7333   accuracy: 75.00%   loss: 0.5108 (imbalanced classes)

class  precision  recall     f1  support
cat        1.000   0.667  0.800        3
dog        0.500   1.000  0.667        1

confusion matrix (rows: true, columns: predicted)
         cat    dog
cat        2      1
dog        0      1

top losses
  1.204  2.jpg  (true cat p=0.300, predicted dog p=0.700)
  0.511  3.jpg  (true dog p=0.600, predicted dog p=0.600)
";
        assert_eq!(r.render(), expected);
        let top = top_classes(&probs[2], &classes, 1);
        assert_eq!(format_top(&top), "dog 0.700");
    }
}
