//! Stage 6: what is wrong in a dataset, read from the features of its images (`tl audit`).
//!
//! Every finding comes from one `[n, d]` matrix of plain-view features (L2-normalised
//! here), the given labels, the files' content keys and, where known, which side of a
//! training/validation split each image is on:
//!
//! - **exact duplicates**: the same content key (blake3 of the file's bytes);
//! - **near-duplicates**: a pair whose cosine similarity is at least
//!   [`AuditConfig::near_duplicate`] among each image's nearest neighbours
//!   ([`neighbors`]); a pair across training and validation is a **leak**;
//! - **label issues** ([`labels`]): out-of-sample probabilities from K linear heads (on the
//!   unit features, centred), each trained on the other folds (folds keep near-duplicate groups whole, so a copy cannot vouch for its
//!   own label), then confident learning (Northcutt et al. 2021): class `j`'s threshold is
//!   the mean probability of `j` over the images labelled `j`; an image is an issue when the
//!   most probable class whose threshold it reaches is not its label; ranked by
//!   `1 − p(given label)`;
//! - **outliers**: `1 −` the mean similarity to the 5 nearest images with other content,
//!   above Tukey's far-out fence (Q3 + 3·IQR of all scores).
//!
//! Measured choices (scripts/bench/audit.py, BENCHMARKS.md §13): near-duplicates at 0.93
//! (planted copies 0.946–0.995, the closest different photos of cats_dogs 0.906); what the
//! heads train on ([`labels::Features`]); which images count as label issues (confident
//! learning alone found 25 of 30 planted flips; adding the out-of-sample mistakes, 27–30).
pub mod labels;
pub mod neighbors;

use crate::error::{Result, TlError};
use crate::head::TrainConfig;
use crate::run::Side;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// How an audit decides; the defaults are the measured ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditConfig {
    /// Cosine similarity at or above which two different files are near-duplicates.
    pub near_duplicate: f64,
    /// Folds of the out-of-sample heads.
    pub folds: usize,
    /// Neighbours whose similarity makes an image's outlier score.
    pub outlier_neighbors: usize,
    /// The fence above which an outlier score is reported: Q3 + `outlier_fence`·IQR.
    pub outlier_fence: f64,
    /// The heads' training (their `l2` is 1/(training images) when `None`).
    pub head: TrainConfig,
    pub l2: Option<f64>,
    pub seed: u64,
}

/// The images of a dataset as an audit sees them.
pub struct Images<'a> {
    /// `[n, d]` features of the readable images (taken: normalised in place).
    pub features: Tensor,
    pub labels: &'a [usize],
    /// Content keys (equal keys: byte-identical files).
    pub keys: &'a [String],
    /// The side of a recorded or given split, where there is one.
    pub sides: &'a [Option<Side>],
    pub classes: &'a [String],
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NearPair {
    pub a: usize,
    pub b: usize,
    pub similarity: f32,
    /// One on each side of the training/validation split.
    pub leak: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LabelIssue {
    pub row: usize,
    pub given: usize,
    pub suggested: usize,
    /// `1 − p(given)`, out of sample.
    pub score: f64,
}

/// Everything found, as row indices into [`Images`].
#[derive(Clone, Debug)]
pub struct Findings {
    /// Groups of byte-identical rows, largest first.
    pub exact_groups: Vec<Vec<usize>>,
    pub near_pairs: Vec<NearPair>,
    pub label_issues: Vec<LabelIssue>,
    /// (row, score), highest first.
    pub outliers: Vec<(usize, f64)>,
    pub outlier_cutoff: f64,
    /// Out-of-sample class probabilities of each row (empty when too few images).
    pub probabilities: Vec<Vec<f32>>,
    pub method: neighbors::Method,
    pub folds: usize,
    /// Seconds spent finding neighbours, and training the out-of-sample heads.
    pub neighbors_seconds: f64,
    pub labels_seconds: f64,
}

impl AuditConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.near_duplicate > 0.0 && self.near_duplicate <= 1.0) {
            return Err(TlError::invalid(format!(
                "the near-duplicate similarity must be in (0, 1], got {}",
                self.near_duplicate
            )));
        }
        if self.folds < 2 || self.folds > 100 {
            return Err(TlError::invalid(format!(
                "--folds {} must be between 2 and 100",
                self.folds
            )));
        }
        if self.outlier_neighbors == 0 || self.outlier_neighbors > 100 {
            return Err(TlError::invalid(
                "the outlier neighbours must be between 1 and 100",
            ));
        }
        if !(self.outlier_fence.is_finite() && self.outlier_fence >= 0.0) {
            return Err(TlError::invalid("the outlier fence must be a number >= 0"));
        }
        self.head.validate()
    }
}

/// Neighbours looked at per image: enough for the outlier score after skipping copies.
fn neighbours_wanted(cfg: &AuditConfig) -> usize {
    cfg.outlier_neighbors + 5
}

pub fn audit(
    mut images: Images,
    cfg: &AuditConfig,
    device: Device,
    progress: bool,
) -> Result<Findings> {
    cfg.validate()?;
    let n = images.labels.len();
    let x = std::mem::replace(&mut images.features, Tensor::new());
    let x = normalise(x);
    let t = std::time::Instant::now();
    let near = neighbors::nearest(&x, neighbours_wanted(cfg))?;
    let neighbors_seconds = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let images = &images;
    let exact_groups = exact_groups(images.keys);
    let near_pairs = near_pairs(&near, images.keys, images.sides, cfg.near_duplicate);
    let (outliers, outlier_cutoff) = outliers(&near, images.keys, cfg);
    let groups = labels::groups(n, &exact_groups, &near_pairs);
    let (probabilities, folds) = if n >= 2 * cfg.folds.min(n) && n >= 4 {
        let folds = cfg.folds.min(n / 2);
        let features = labels::Features::new(&x);
        let p = labels::out_of_sample(&features, images, &groups, folds, cfg, device, progress)?;
        (p, folds)
    } else {
        (Vec::new(), 0)
    };
    let label_issues =
        labels::confident_learning(&probabilities, images.labels, images.classes.len());
    Ok(Findings {
        exact_groups,
        near_pairs,
        label_issues,
        outliers,
        outlier_cutoff,
        probabilities,
        method: near.method,
        folds,
        neighbors_seconds,
        labels_seconds: t.elapsed().as_secs_f64(),
    })
}

/// Groups of byte-identical and near-duplicate rows of `x` (cosine similarity at or above
/// `threshold` among each row's nearest neighbours), as a group id per row: folds built on
/// them keep a photo and its resized or recompressed copy on one side.
pub fn duplicate_groups(x: &Tensor, keys: &[String], threshold: f64) -> Result<Vec<usize>> {
    let n = keys.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let unit = normalise(x.to_kind(Kind::Float).copy());
    let near = neighbors::nearest(&unit, 5.min(n - 1).max(1))?;
    let pairs = near_pairs(&near, keys, &vec![None; n], threshold);
    Ok(labels::groups(n, &exact_groups(keys), &pairs))
}

/// `[n, d]` float rows filled 4,096 at a time into one tensor (allocated untouched, so
/// pages count as they are filled): rows read one by one are never held twice over.
pub fn matrix(n: usize, d: usize, rows: impl Iterator<Item = Vec<f32>>) -> Tensor {
    let mut out = Tensor::empty([n as i64, d as i64], (Kind::Float, Device::Cpu));
    let mut buffer: Vec<f32> = Vec::with_capacity(4096 * d);
    let mut filled = 0i64;
    let mut flush = |buffer: &mut Vec<f32>, out: &mut Tensor| {
        let rows = (buffer.len() / d.max(1)) as i64;
        if rows > 0 {
            out.narrow(0, filled, rows)
                .copy_(&Tensor::from_slice(buffer).view([rows, d as i64]));
            filled += rows;
        }
        buffer.clear();
    };
    for row in rows.take(n) {
        buffer.extend_from_slice(&row);
        if buffer.len() >= 4096 * d {
            flush(&mut buffer, &mut out);
        }
    }
    flush(&mut buffer, &mut out);
    out
}

/// Rows scaled to unit length, in place (a second copy of 100,000 features is 0.5 GB).
fn normalise(x: Tensor) -> Tensor {
    let mut x = x.to_kind(Kind::Float);
    let norm = x.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
    let _ = x.g_div_(&norm);
    x
}

/// Rows sharing a content key, groups largest first (then by first row).
pub fn exact_groups(keys: &[String]) -> Vec<Vec<usize>> {
    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        by_key.entry(k.as_str()).or_default().push(i);
    }
    let mut groups: Vec<Vec<usize>> = by_key.into_values().filter(|g| g.len() > 1).collect();
    groups.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
    groups
}

/// Pairs of different files at or above `threshold`, most similar first; a leaking pair
/// is written training image first.
fn near_pairs(
    near: &neighbors::Neighbors,
    keys: &[String],
    sides: &[Option<Side>],
    threshold: f64,
) -> Vec<NearPair> {
    let mut seen = std::collections::HashSet::new();
    let mut pairs = Vec::new();
    for i in 0..near.len() {
        for (j, s) in near.of(i) {
            if (s as f64) < threshold {
                break;
            }
            if keys[i] == keys[j] || !seen.insert((i.min(j), i.max(j))) {
                continue;
            }
            let (a, b) = (i.min(j), i.max(j));
            let leak = matches!(
                (sides[a], sides[b]),
                (Some(x), Some(y)) if x != y
            );
            let (a, b) = if leak && sides[a] == Some(Side::Val) {
                (b, a)
            } else {
                (a, b)
            };
            pairs.push(NearPair {
                a,
                b,
                similarity: s,
                leak,
            });
        }
    }
    pairs.sort_by(|p, q| {
        q.similarity
            .total_cmp(&p.similarity)
            .then((p.a, p.b).cmp(&(q.a, q.b)))
    });
    pairs
}

/// Outlier scores above the fence, highest first, and the fence.
fn outliers(
    near: &neighbors::Neighbors,
    keys: &[String],
    cfg: &AuditConfig,
) -> (Vec<(usize, f64)>, f64) {
    let scores: Vec<f64> = (0..near.len())
        .map(|i| {
            let sims: Vec<f64> = near
                .of(i)
                .filter(|&(j, _)| keys[j] != keys[i])
                .take(cfg.outlier_neighbors)
                .map(|(_, s)| s as f64)
                .collect();
            if sims.is_empty() {
                0.0
            } else {
                1.0 - sims.iter().sum::<f64>() / sims.len() as f64
            }
        })
        .collect();
    let cutoff = tukey_fence(&scores, cfg.outlier_fence);
    let mut out: Vec<(usize, f64)> = scores
        .iter()
        .enumerate()
        .filter(|(_, &s)| s > cutoff)
        .map(|(i, &s)| (i, s))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    (out, cutoff)
}

/// Q3 + `k`·IQR (quartiles by linear interpolation); +∞ with fewer than 4 scores.
pub fn tukey_fence(scores: &[f64], k: f64) -> f64 {
    if scores.len() < 4 {
        return f64::INFINITY;
    }
    let mut s = scores.to_vec();
    s.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let at = p * (s.len() - 1) as f64;
        let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
        s[lo] + (s[hi] - s[lo]) * (at - lo as f64)
    };
    let (q1, q3) = (q(0.25), q(0.75));
    q3 + k * (q3 - q1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tukey_fence_table() {
        let cases: &[(&[f64], f64, f64)] = &[
            (&[1.0, 2.0, 3.0, 4.0, 5.0], 3.0, 4.0 + 3.0 * 2.0),
            (&[0.0, 0.0, 0.0, 0.0], 3.0, 0.0),
            (&[5.0, 1.0, 4.0, 2.0, 3.0], 0.0, 4.0),
            (&[1.0, 2.0, 3.0], 3.0, f64::INFINITY),
        ];
        for (scores, k, want) in cases {
            assert_eq!(tukey_fence(scores, *k), *want, "{scores:?} k={k}");
        }
    }

    #[test]
    fn exact_groups_are_largest_first() {
        let keys: Vec<String> = ["a", "b", "a", "c", "b", "b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(exact_groups(&keys), vec![vec![1, 4, 5], vec![0, 2]]);
    }
}
