//! Likely label errors: out-of-sample probabilities from K-fold heads, then confident
//! learning. In-sample probabilities would be the wrong input (cleanlab's point): a head
//! that has seen an image with a wrong label has partly learnt that label.
use super::{AuditConfig, Images, LabelIssue, NearPair};
use crate::error::Result;
use crate::head::{self, HeadConfig, Rows};
use crate::util::SplitMix64;
use tch::{Device, Kind, Tensor};

/// Mini-batches per epoch of a fold's head at most (the batch grows above 12,800 images).
pub const MAX_STEPS_PER_EPOCH: usize = 200;

/// Optimiser steps of a fold's head at most (fewer epochs above 3,200 images per fold).
pub const MAX_STEPS: usize = 5_000;

/// Connected groups of byte-identical and near-duplicate rows (a row alone is its own
/// group), as a group id per row.
pub fn groups(n: usize, exact: &[Vec<usize>], near: &[NearPair]) -> Vec<usize> {
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut join = |a: usize, b: usize| {
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    };
    for g in exact {
        for w in g.windows(2) {
            join(w[0], w[1]);
        }
    }
    for p in near {
        join(p.a, p.b);
    }
    (0..n).map(|i| root(&mut parent, i)).collect()
}

/// The fold of each row: groups in a seeded order, sorted by their first row's label, dealt
/// round-robin (so each class spreads evenly over the folds and a group stays whole).
pub fn assign_folds(group: &[usize], labels: &[usize], folds: usize, seed: u64) -> Vec<usize> {
    let mut ids: Vec<usize> = group.to_vec();
    ids.sort_unstable();
    ids.dedup();
    SplitMix64::new(seed).shuffle(&mut ids);
    ids.sort_by_key(|&g| labels[g]);
    let mut fold_of_group = std::collections::HashMap::new();
    for (i, g) in ids.into_iter().enumerate() {
        fold_of_group.insert(g, i % folds);
    }
    group.iter().map(|g| fold_of_group[g]).collect()
}

/// What the heads see: the unit rows centred on their mean and scaled to unit length again,
/// a batch at a time (no second copy of the features). Measured on the planted benchmark
/// (scripts/bench/audit.py, seeds 0-2, flips among the top 30 label issues): centred unit
/// rows 27/27/28, unit rows 27/27/28, the features as extracted 23/22/22 (`tl train`'s
/// L2 = 1/n regularises too little at their scale, and the heads learn the flips), standardised
/// 19-22. Centring also lets a backbone whose features share one large component (the tiny
/// test network: cosine 0.99+ between any two images) separate its classes.
pub struct Features<'a> {
    pub unit: &'a Tensor,
    /// `[1, d]` mean of the unit rows.
    pub centre: Tensor,
}

impl<'a> Features<'a> {
    pub fn new(unit: &'a Tensor) -> Self {
        let centre = tch::no_grad(|| unit.mean_dim(0, true, Kind::Float));
        Features { unit, centre }
    }

    fn rows(&self, idx: &Tensor) -> Tensor {
        let c = self.unit.index_select(0, idx) - &self.centre;
        &c / c.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12)
    }
}

/// Each row's class probabilities from the head trained without its fold.
pub fn out_of_sample(
    x: &Features,
    images: &Images,
    group: &[usize],
    folds: usize,
    cfg: &AuditConfig,
    device: Device,
    progress: bool,
) -> Result<Vec<Vec<f32>>> {
    let fold = assign_folds(group, images.labels, folds, cfg.seed);
    let n_classes = images.classes.len();
    let mut probabilities = vec![Vec::new(); images.labels.len()];
    let bar = crate::progress::bar(folds as u64, "folds", progress);
    let y_all = Tensor::from_slice(&images.labels.iter().map(|&l| l as i64).collect::<Vec<_>>());
    for f in 0..folds {
        let (inside, held): (Vec<i64>, Vec<i64>) =
            (0..images.labels.len() as i64).partition(|&i| fold[i as usize] != f);
        if inside.is_empty() || held.is_empty() {
            bar.inc(1);
            continue;
        }
        let mut train = cfg.head.clone();
        train.seed = cfg.seed.wrapping_add(f as u64);
        train.l2 = cfg.l2.unwrap_or(1.0 / inside.len() as f64);
        // At most 200 steps an epoch and 5,000 in all: 100,000 images cost about what
        // 12,800 do (the heads of small datasets train exactly as `tl train`'s).
        train.batch_size = train
            .batch_size
            .max(inside.len().div_ceil(MAX_STEPS_PER_EPOCH));
        let steps_per_epoch = inside.len().div_ceil(train.batch_size);
        train.epochs = train.epochs.min(MAX_STEPS.div_ceil(steps_per_epoch)).max(1);
        let config = HeadConfig {
            hidden: 0,
            dropout: 0.0,
            in_dim: x.unit.size()[1],
            num_classes: n_classes as i64,
            standardize: false,
        };
        let rows = Subset {
            x,
            y: &y_all,
            rows: inside,
        };
        let outcome = head::train_head(config, &train, &rows, None, device, false)?;
        for chunk in held.chunks(4096) {
            let held_x = x.rows(&Tensor::from_slice(chunk)).to_device(device);
            let p = tch::no_grad(|| outcome.head.probabilities(&held_x)).to_kind(Kind::Float);
            for (&i, row) in chunk.iter().zip(crate::util::tensors::rows(&p)?) {
                probabilities[i as usize] = row;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(probabilities)
}

/// Some rows of `x` and `y`, without copying them.
struct Subset<'a> {
    x: &'a Features<'a>,
    y: &'a Tensor,
    rows: Vec<i64>,
}

impl Rows for Subset<'_> {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn inputs(&self, idx: &[i64], device: Device) -> Result<Tensor> {
        Ok(self.x.rows(&self.global(idx)).to_device(device))
    }

    fn labels(&self, idx: &[i64], device: Device) -> Option<Tensor> {
        Some(self.y.index_select(0, &self.global(idx)).to_device(device))
    }
}

impl Subset<'_> {
    /// Rows of `x` and `y` for rows `idx` of the subset.
    fn global(&self, idx: &[i64]) -> Tensor {
        let global: Vec<i64> = idx.iter().map(|&i| self.rows[i as usize]).collect();
        Tensor::from_slice(&global)
    }
}

/// Confident learning on out-of-sample probabilities: the issues, most suspicious first.
pub fn confident_learning(
    probabilities: &[Vec<f32>],
    labels: &[usize],
    n_classes: usize,
) -> Vec<LabelIssue> {
    let mut sum = vec![0.0f64; n_classes];
    let mut count = vec![0usize; n_classes];
    for (p, &y) in probabilities.iter().zip(labels) {
        if let Some(&py) = p.get(y) {
            sum[y] += py as f64;
            count[y] += 1;
        }
    }
    // A class nobody is labelled with has no threshold: nothing is confidently in it.
    let threshold: Vec<f64> = (0..n_classes)
        .map(|k| {
            if count[k] > 0 {
                sum[k] / count[k] as f64
            } else {
                f64::INFINITY
            }
        })
        .collect();
    let argmax = |p: &[f32]| (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a)));
    let mut issues: Vec<LabelIssue> = probabilities
        .iter()
        .zip(labels)
        .enumerate()
        .filter(|(_, (p, _))| p.len() == n_classes)
        .filter_map(|(row, (p, &given))| {
            // Confidently another class; failing that, simply predicted as another one (a
            // flip the thresholds miss still ranks by its score).
            let confident = (0..n_classes)
                .filter(|&k| p[k] as f64 >= threshold[k])
                .max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a)));
            let suggested = confident
                .filter(|&k| k != given)
                .or(argmax(p).filter(|&k| k != given))?;
            Some(LabelIssue {
                row,
                given,
                suggested,
                score: 1.0 - p[given] as f64,
            })
        })
        .collect();
    issues.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row)));
    issues
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confident_learning_table() {
        // Thresholds: class 0 mean of p0 over rows labelled 0; class 1 likewise.
        // (probabilities, labels, expected (row, suggested) in rank order)
        type Case<'a> = (&'a [[f32; 2]], &'a [usize], &'a [(usize, usize)]);
        let cases: &[Case] = &[
            // A clear flip: row 2 is labelled 0 but confidently 1.
            (
                &[[0.9, 0.1], [0.8, 0.2], [0.05, 0.95], [0.1, 0.9], [0.2, 0.8]],
                &[0, 0, 0, 1, 1],
                &[(2, 1)],
            ),
            // Nothing reaches another class's threshold: no issue.
            (
                &[[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.1, 0.9]],
                &[0, 0, 1, 1],
                &[],
            ),
            // Two flips, ranked by p(given): row 0 (0.02) before row 3 (0.1).
            (
                &[
                    [0.02, 0.98],
                    [0.9, 0.1],
                    [0.95, 0.05],
                    [0.9, 0.1],
                    [0.2, 0.8],
                    [0.1, 0.9],
                ],
                &[0, 0, 0, 1, 1, 1],
                &[(0, 1), (3, 0)],
            ),
        ];
        for (probs, labels, want) in cases {
            let p: Vec<Vec<f32>> = probs.iter().map(|r| r.to_vec()).collect();
            let got: Vec<(usize, usize)> = confident_learning(&p, labels, 2)
                .iter()
                .map(|i| (i.row, i.suggested))
                .collect();
            assert_eq!(&got, want, "{probs:?} {labels:?}");
        }
    }

    #[test]
    fn folds_keep_groups_whole_and_spread_classes() {
        let labels: Vec<usize> = (0..40).map(|i| i % 2).collect();
        let near = [NearPair {
            a: 0,
            b: 2,
            similarity: 0.99,
            leak: false,
        }];
        let exact = vec![vec![4, 6, 8]];
        let g = groups(40, &exact, &near);
        let fold = assign_folds(&g, &labels, 4, 7);
        assert_eq!(fold[0], fold[2]);
        assert_eq!((fold[4], fold[4]), (fold[6], fold[8]));
        for f in 0..4 {
            let per_class: Vec<usize> = (0..2)
                .map(|c| (0..40).filter(|&i| fold[i] == f && labels[i] == c).count())
                .collect();
            assert!(
                per_class.iter().all(|&k| (3..=7).contains(&k)),
                "fold {f}: {per_class:?}"
            );
        }
        assert_eq!(
            fold,
            assign_folds(&g, &labels, 4, 7),
            "same seed, same folds"
        );
    }
}
