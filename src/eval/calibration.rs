//! How far probabilities can be trusted: expected calibration error (15 equal-width bins of
//! the top probability, as Guo et al. 2017), negative log-likelihood, Brier score, the
//! reliability diagram's bins; and how well a score separates unknown images from known
//! ones (AUROC).
use serde::{Deserialize, Serialize};

/// Bins of the expected calibration error and the reliability diagram.
pub const ECE_BINS: usize = 15;

/// One bin of the reliability diagram: images whose top probability fell in `[lo, hi)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub images: usize,
    /// Mean top probability of the bin's images.
    pub confidence: f64,
    /// Share of them classified correctly.
    pub accuracy: f64,
}

/// Calibration figures of one set of probabilities.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Expected calibration error, 15 bins.
    pub ece: f64,
    /// Mean negative log-likelihood of the true class.
    pub nll: f64,
    /// Mean over images of Σ_k (p_k − [k = true])².
    pub brier: f64,
    pub bins: Vec<ReliabilityBin>,
}

impl Calibration {
    /// Figures for `probs` (one row per image) against `labels`.
    pub fn measure(probs: &[Vec<f32>], labels: &[usize]) -> Calibration {
        let n = probs.len().min(labels.len());
        let mut bins: Vec<ReliabilityBin> = (0..ECE_BINS)
            .map(|b| ReliabilityBin {
                lo: b as f64 / ECE_BINS as f64,
                hi: (b + 1) as f64 / ECE_BINS as f64,
                images: 0,
                confidence: 0.0,
                accuracy: 0.0,
            })
            .collect();
        let (mut nll, mut brier) = (0.0, 0.0);
        for (p, &y) in probs.iter().zip(labels).take(n) {
            let pred = crate::eval::argmax(p);
            let conf = p.get(pred).copied().unwrap_or(0.0) as f64;
            let b = ((conf * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
            bins[b].images += 1;
            bins[b].confidence += conf;
            bins[b].accuracy += f64::from(u8::from(pred == y));
            nll -= (p.get(y).copied().unwrap_or(0.0) as f64).max(1e-12).ln();
            brier += p
                .iter()
                .enumerate()
                .map(|(k, &pk)| (pk as f64 - f64::from(u8::from(k == y))).powi(2))
                .sum::<f64>();
        }
        let mut ece = 0.0;
        for bin in &mut bins {
            if bin.images > 0 {
                bin.confidence /= bin.images as f64;
                bin.accuracy /= bin.images as f64;
                ece += bin.images as f64 / n.max(1) as f64 * (bin.accuracy - bin.confidence).abs();
            }
        }
        let n = n.max(1) as f64;
        Calibration {
            ece,
            nll: nll / n,
            brier: brier / n,
            bins,
        }
    }
}

/// Area under the ROC curve of `score` as a detector of unknown images: the probability
/// that an unknown image scores above a known one (ties count half).
pub fn auroc(known: &[f32], unknown: &[f32]) -> Option<f64> {
    if known.is_empty() || unknown.is_empty() {
        return None;
    }
    let mut all: Vec<(f32, bool)> = known
        .iter()
        .map(|&s| (s, false))
        .chain(unknown.iter().map(|&s| (s, true)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mann–Whitney U with mid-ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += all[i..=j].iter().filter(|x| x.1).count() as f64 * mid;
        i = j + 1;
    }
    let (nk, nu) = (known.len() as f64, unknown.len() as f64);
    Some((rank_sum - nu * (nu + 1.0) / 2.0) / (nk * nu))
}

/// A histogram of scores over `[lo, hi]` in `bins` equal bins (values outside are clamped).
pub fn histogram(scores: &[f32], lo: f64, hi: f64, bins: usize) -> Vec<usize> {
    let mut counts = vec![0; bins.max(1)];
    let width = (hi - lo).max(1e-12) / counts.len() as f64;
    for &s in scores {
        let b = (((s as f64 - lo) / width).floor().max(0.0) as usize).min(counts.len() - 1);
        counts[b] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_figures_by_hand() {
        // (probabilities, labels, ece, nll, brier)
        type Case = (Vec<Vec<f32>>, Vec<usize>, f64, f64, f64);
        let cases: Vec<Case> = vec![
            // Certain and right.
            (vec![vec![1.0, 0.0]], vec![0], 0.0, 0.0, 0.0),
            // 0.8 confident, right 1 time in 2: |0.5 − 0.8| = 0.3.
            (
                vec![vec![0.8, 0.2], vec![0.8, 0.2]],
                vec![0, 1],
                0.3,
                -(0.8f64.ln() + 0.2f64.ln()) / 2.0,
                (0.04 + 0.04 + 0.64 + 0.64) / 2.0,
            ),
            // Two bins: 0.6 right (gap 0.4), 0.9 wrong (gap 0.9); ECE = (0.4 + 0.9)/2.
            (
                vec![vec![0.6, 0.4], vec![0.1, 0.9]],
                vec![0, 0],
                0.65,
                -(0.6f64.ln() + 0.1f64.ln()) / 2.0,
                (0.16 + 0.16 + 0.81 + 0.81) / 2.0,
            ),
        ];
        for (probs, labels, ece, nll, brier) in cases {
            let c = Calibration::measure(&probs, &labels);
            assert!((c.ece - ece).abs() < 1e-6, "ece {} vs {ece}", c.ece);
            assert!((c.nll - nll).abs() < 1e-6, "nll {} vs {nll}", c.nll);
            assert!(
                (c.brier - brier).abs() < 1e-6,
                "brier {} vs {brier}",
                c.brier
            );
            assert_eq!(c.bins.len(), ECE_BINS);
            assert_eq!(c.bins.iter().map(|b| b.images).sum::<usize>(), labels.len());
        }
    }

    #[test]
    fn auroc_by_hand() {
        // (known, unknown, auroc)
        let cases: &[(&[f32], &[f32], f64)] = &[
            (&[0.1, 0.2], &[0.3, 0.4], 1.0),
            (&[0.3, 0.4], &[0.1, 0.2], 0.0),
            (&[0.1, 0.3], &[0.2, 0.4], 0.75),
            (&[0.5, 0.5], &[0.5], 0.5),
        ];
        for (k, u, want) in cases {
            assert_eq!(auroc(k, u), Some(*want), "{k:?} {u:?}");
        }
        assert_eq!(auroc(&[], &[0.1]), None);
    }

    #[test]
    fn histogram_clamps_to_its_range() {
        assert_eq!(
            histogram(&[0.0, 0.1, 0.5, 0.99, 1.0, 7.0, -1.0], 0.0, 1.0, 4),
            vec![3, 0, 1, 3]
        );
    }
}
