//! The search of `tl tune`, as pure logic: the grid of head settings, successive halving
//! over folds, and the one-standard-error pick.
use crate::head::Balance;
pub use crate::workflow::train::tuning::{Scored, Trial};

/// The head settings searched on the plain features: penalty × learning rate × label
/// smoothing × linear or hidden (× no balancing or logit adjustment when the classes are
/// imbalanced). The default comes first.
pub fn head_grid(imbalanced: bool) -> Vec<Trial> {
    let default = Trial::default_for(imbalanced);
    let balances: &[Balance] = if imbalanced {
        &[Balance::Logit, Balance::None]
    } else {
        &[Balance::None]
    };
    let mut grid = vec![default.clone()];
    for &hidden in &[0, 512] {
        for &l2_scale in &[1.0, 0.1, 10.0] {
            for &lr in &[0.01, 0.003, 0.03] {
                for &label_smoothing in &[0.0, 0.1] {
                    for &balance in balances {
                        let t = Trial {
                            l2_scale,
                            lr,
                            label_smoothing,
                            hidden,
                            balance,
                            ..default.clone()
                        };
                        if t != default {
                            grid.push(t);
                        }
                    }
                }
            }
        }
    }
    grid
}

/// The folds each rung of successive halving runs: half of them (at least one), then all.
/// (A first rung of one fold — about 50 images on pets — dropped settings that were better
/// on held-out photos by chance.)
pub fn rungs(folds: usize) -> Vec<usize> {
    let mut r = vec![(folds / 2).max(1), folds];
    r.dedup();
    r
}

/// The trials that go on to the next rung: the best third by mean score (ties: lower mean
/// loss, then earlier in the grid), at least `floor`, and always trial 0 (the default, so
/// that the final table compares against it).
pub fn survivors(scored: &[Scored], alive: &[usize], floor: usize) -> Vec<usize> {
    let mut ranked = alive.to_vec();
    ranked.sort_by(|&a, &b| {
        let (x, y) = (&scored[a], &scored[b]);
        y.mean()
            .total_cmp(&x.mean())
            .then(x.mean_loss().total_cmp(&y.mean_loss()))
            .then(a.cmp(&b))
    });
    let keep = alive.len().div_ceil(3).max(floor).min(alive.len());
    let mut out: Vec<usize> = ranked[..keep].to_vec();
    if alive.contains(&0) && !out.contains(&0) {
        out.push(0);
    }
    out.sort_unstable();
    out
}

/// The one-standard-error rule over the trials that ran every fold: the best mean score,
/// then the cheapest trial whose mean is within one standard error of it (ties: the higher
/// mean, the lower loss, then earlier). None when no trial ran every fold.
pub fn pick(scored: &[Scored], folds: usize) -> Option<usize> {
    let full: Vec<usize> = (0..scored.len())
        .filter(|&i| scored[i].scores.len() == folds)
        .collect();
    let best = *full.iter().max_by(|&&a, &&b| {
        scored[a]
            .mean()
            .total_cmp(&scored[b].mean())
            .then(scored[b].mean_loss().total_cmp(&scored[a].mean_loss()))
            .then(b.cmp(&a))
    })?;
    let bar = scored[best].mean() - scored[best].se();
    full.into_iter()
        .filter(|&i| scored[i].mean() >= bar - 1e-12)
        .min_by(|&a, &b| {
            let (x, y) = (scored[a].trial.cost(), scored[b].trial.cost());
            x.cmp(&y)
                .then(scored[b].mean().total_cmp(&scored[a].mean()))
                .then(scored[a].mean_loss().total_cmp(&scored[b].mean_loss()))
                .then(a.cmp(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(l2_scale: f64, hidden: i64, views: usize) -> Trial {
        Trial {
            l2_scale,
            hidden,
            views,
            ..Trial::default_for(false)
        }
    }

    fn scored(t: Trial, scores: &[f64]) -> Scored {
        Scored {
            losses: vec![0.1; scores.len()],
            scores: scores.to_vec(),
            ..Scored::new(t)
        }
    }

    #[test]
    fn rungs_table() {
        let cases: &[(usize, &[usize])] =
            &[(2, &[1, 2]), (3, &[1, 3]), (5, &[2, 5]), (10, &[5, 10])];
        for (folds, want) in cases {
            assert_eq!(rungs(*folds), *want, "{folds} folds");
        }
    }

    #[test]
    fn the_grid_starts_with_the_default_and_has_no_repeats() {
        for imbalanced in [false, true] {
            let g = head_grid(imbalanced);
            assert_eq!(g[0], Trial::default_for(imbalanced));
            assert_eq!(g.len(), if imbalanced { 72 } else { 36 });
            for (i, a) in g.iter().enumerate() {
                assert!(g[i + 1..].iter().all(|b| a != b), "{a:?} twice");
            }
        }
    }

    #[test]
    fn survivors_keep_the_best_third_and_the_default() {
        let s: Vec<Scored> = [0.5, 0.9, 0.8, 0.7, 0.95, 0.6]
            .iter()
            .map(|&m| scored(trial(1.0, 0, 1), &[m]))
            .collect();
        let all: Vec<usize> = (0..6).collect();
        assert_eq!(survivors(&s, &all, 1), vec![0, 1, 4]);
        assert_eq!(survivors(&s, &all, 3), vec![0, 1, 2, 4]);
        assert_eq!(survivors(&s, &[1, 2, 3], 1), vec![1]);
    }

    #[test]
    fn pick_takes_the_cheapest_within_one_standard_error() {
        // (the trials with their fold scores, the folds, the pick)
        let cases: Vec<(Vec<Scored>, usize, Option<usize>)> = vec![
            // The best is clearly better: it is picked.
            (
                vec![
                    scored(trial(1.0, 0, 1), &[0.80, 0.80, 0.80]),
                    scored(trial(1.0, 0, 4), &[0.90, 0.91, 0.89]),
                ],
                3,
                Some(1),
            ),
            // Within one SE of the best (0.9 ± 0.0577): the cheaper one (no views).
            (
                vec![
                    scored(trial(1.0, 0, 1), &[0.85, 0.85, 0.85]),
                    scored(trial(1.0, 0, 4), &[0.80, 0.90, 1.00]),
                ],
                3,
                Some(0),
            ),
            // Equal costs: the higher mean, however strong the penalty.
            (
                vec![
                    scored(trial(1.0, 0, 1), &[0.90, 0.92]),
                    scored(trial(10.0, 0, 1), &[0.90, 0.90]),
                ],
                2,
                Some(0),
            ),
            // Equal costs and means: the lower loss.
            (
                vec![
                    scored(trial(1.0, 0, 1), &[0.90, 0.90]),
                    Scored {
                        losses: vec![0.05, 0.05],
                        ..scored(trial(10.0, 0, 1), &[0.90, 0.90])
                    },
                ],
                2,
                Some(1),
            ),
            // A hidden layer costs more than any penalty: within one SE, linear wins.
            (
                vec![
                    scored(trial(1.0, 512, 1), &[0.92, 0.90, 0.88]),
                    scored(trial(10.0, 0, 1), &[0.89, 0.89, 0.89]),
                ],
                3,
                Some(1),
            ),
            // A trial that did not run every fold is not a candidate.
            (
                vec![
                    scored(trial(1.0, 0, 1), &[0.80, 0.80, 0.80]),
                    scored(trial(10.0, 0, 1), &[0.99]),
                ],
                3,
                Some(0),
            ),
            (vec![scored(trial(1.0, 0, 1), &[0.8])], 2, None),
        ];
        for (i, (s, folds, want)) in cases.iter().enumerate() {
            assert_eq!(pick(s, *folds), *want, "case {i}");
        }
    }
}
