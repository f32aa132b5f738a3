//! Temperature scaling (Guo et al. 2017): one scalar T, fitted on the validation images'
//! logits by minimising the negative log-likelihood, divides the logits before the softmax.
//! It changes how confident the probabilities are, never which class is on top.
//!
//! The NLL of `softmax(β·z)` is convex in β = 1/T (a log-sum-exp of lines in β minus a
//! line), so a golden-section search over β finds the global minimum without gradients.
use tch::{Kind, Tensor};

/// The range searched: T from 0.05 to 20.
const BETA_RANGE: (f64, f64) = (0.05, 20.0);

/// Mean negative log-likelihood of `labels` under `softmax(logits / temperature)`.
pub fn nll(logits: &Tensor, labels: &Tensor, temperature: f64) -> f64 {
    tch::no_grad(|| {
        (logits.to_kind(Kind::Float) / temperature)
            .log_softmax(-1, Kind::Float)
            .nll_loss(labels)
            .double_value(&[])
    })
}

/// The temperature that minimises the NLL of `labels` (`[N]` int64) given `logits`
/// (`[N, C]`); 1 when there is nothing to fit on.
pub fn fit_temperature(logits: &Tensor, labels: &Tensor) -> f64 {
    if logits.size().first().copied().unwrap_or(0) == 0 {
        return 1.0;
    }
    let f = |beta: f64| nll(logits, labels, 1.0 / beta);
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = BETA_RANGE;
    let (mut c, mut d) = (b - ratio * (b - a), a + ratio * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..80 {
        if fc < fd {
            (b, d, fd) = (d, c, fc);
            c = b - ratio * (b - a);
            fc = f(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + ratio * (b - a);
            fd = f(d);
        }
    }
    let beta = (a + b) / 2.0;
    // A flat NLL (e.g. every logit equal) has no preferred temperature.
    if !beta.is_finite() || (f(beta) - f(1.0)).abs() < 1e-12 {
        return 1.0;
    }
    1.0 / beta
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, 2])
    }

    #[test]
    fn temperatures_follow_over_and_under_confidence() {
        // (logits, labels, expected temperature range)
        let over: Vec<[f32; 2]> = (0..10)
            .map(|i| if i < 7 { [8.0, 0.0] } else { [0.0, 8.0] })
            .collect();
        let under: Vec<[f32; 2]> = (0..10).map(|_| [0.2, 0.0]).collect();
        type Case = (Vec<[f32; 2]>, Vec<i64>, f64, f64);
        let cases: Vec<Case> = vec![
            // 7 right at p≈1 and 3 wrong at p≈1: much softer probabilities fit better.
            (over.clone(), vec![0, 0, 0, 0, 0, 1, 1, 0, 0, 0], 2.0, 20.0),
            // Always right but barely confident: sharper.
            (under, vec![0; 10], 0.0, 0.2),
            // Calibrated already: p = 0.8 for [ln 4, 0] and 8 of 10 right.
            (
                (0..10).map(|_| [4f32.ln(), 0.0]).collect(),
                vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
                0.98,
                1.02,
            ),
        ];
        for (rows, labels, lo, hi) in cases {
            let z = logits(&rows);
            let y = Tensor::from_slice(&labels);
            let t = fit_temperature(&z, &y);
            assert!(t > lo && t < hi, "T {t} not in ({lo}, {hi}) for {rows:?}");
            assert!(nll(&z, &y, t) <= nll(&z, &y, 1.0) + 1e-9);
        }
    }

    #[test]
    fn nothing_to_fit_gives_one() {
        let empty = Tensor::zeros([0, 2], (Kind::Float, tch::Device::Cpu));
        let none = Tensor::zeros([0], (Kind::Int64, tch::Device::Cpu));
        assert_eq!(fit_temperature(&empty, &none), 1.0);
        let flat = logits(&[[1.0, 1.0], [1.0, 1.0]]);
        assert_eq!(fit_temperature(&flat, &Tensor::from_slice(&[0i64, 1])), 1.0);
    }
}
