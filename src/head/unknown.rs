//! "None of these": how unlike the training images an image's features are, and the
//! threshold above which `tl predict` answers `unknown`.
//!
//! The score is the cosine distance to the training features: `1 − mean cosine similarity
//! of the k nearest reference rows` (deep k-nearest neighbours, Sun et al. 2022), with
//! k = 1. Measured against the alternatives on MobileNetV2 features of a cats-vs-dogs run
//! and 151 photos of other ImageNet classes (`scripts/bench/unknown_methods.py`, BENCHMARKS):
//! the softmax probability a head gives today, the energy score and the Mahalanobis
//! distance all separate worse; see the table there.
//!
//! The references are the training images' plain-view features, L2-normalised, at most
//! [`MAX_REFERENCE_BYTES`] of them in float16 (a seeded sample when there are more: 6,553
//! rows of a 1280-d backbone, 16.8 MB; 334 of VGG16's 25,088-d features). The threshold is not stored as one number: the sorted
//! scores of the validation images are, so that any acceptance (`--accept 0.95`: 95 % of
//! validation images accepted) gives its threshold without retraining. A run without
//! validation images scores each reference against the others (leave-one-out).
//!
//! On disk (`unknown.safetensors` in the run folder): `references` `[M, D]` float16,
//! `calibration_scores` `[V]` float32 sorted ascending; `k` lives in config.json.
use crate::error::{Result, TlError, TorchContext};
use crate::features::rows::Rows;
use crate::util::text::SplitMix64;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The largest reference set kept (float16 bytes).
pub const MAX_REFERENCE_BYTES: usize = 16 * 1024 * 1024;

/// The most validation images scored to set the threshold (a seeded sample when there are
/// more): the cost is images × references × dim, and 4,096 place a 95 % threshold within
/// about ±0.4 % of its share.
pub const MAX_CALIBRATION_ROWS: usize = 4096;

/// Above the highest calibration score when all of them are accepted.
const THRESHOLD_MARGIN: f64 = 1e-4;

pub struct UnknownJudge {
    /// L2-normalised reference features `[M, D]`, float32 on the device.
    references: Tensor,
    k: i64,
    /// Scores of the calibration images (validation, or leave-one-out), ascending.
    calibration: Vec<f32>,
}

/// The share of calibration images accepted must be a fraction strictly inside (0, 1].
pub fn check_accept(accept: f64) -> Result<()> {
    if accept.is_finite() && accept > 0.0 && accept <= 1.0 {
        Ok(())
    } else {
        Err(TlError::invalid(format!(
            "--accept {accept} must be a share of known images in (0, 1], e.g. 0.95"
        )))
    }
}

/// Which of `n` rows become references under the byte budget for `dim`-wide rows: all of
/// them, or a seeded sample (sorted).
pub fn reference_rows(n: usize, dim: usize, seed: u64) -> Vec<i64> {
    let cap = (MAX_REFERENCE_BYTES / (2 * dim.max(1))).max(1);
    sample_rows(n, cap, seed ^ 0x0075_6e6b_6e6f_776e)
}

/// All of `0..n`, or a seeded sample of `cap` of them (sorted).
fn sample_rows(n: usize, cap: usize, seed: u64) -> Vec<i64> {
    let mut idx: Vec<i64> = (0..n as i64).collect();
    if n > cap {
        SplitMix64::new(seed).shuffle(&mut idx);
        idx.truncate(cap);
        idx.sort_unstable();
    }
    idx
}

fn normalized(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float);
    let norm = x
        .square()
        .sum_dim_intlist(&[1i64][..], true, Kind::Float)
        .sqrt()
        .clamp_min(1e-12);
    x / norm
}

impl UnknownJudge {
    /// A judge from reference features `[M, D]` (any scale) and the calibration images'
    /// features; without any, each reference is scored against the others.
    pub fn fit(references: &Tensor, calibration: Option<&Tensor>, k: i64) -> Result<UnknownJudge> {
        let m = references.size().first().copied().unwrap_or(0);
        if m == 0 {
            return Err(TlError::invalid(
                "unknown detection needs at least one training image",
            ));
        }
        // Rounded to float16 now, as they are stored: the calibration scores are then
        // exactly what a loaded judge computes.
        let references = tch::no_grad(|| {
            normalized(references)
                .to_kind(Kind::Half)
                .to_kind(Kind::Float)
        });
        let mut judge = UnknownJudge {
            references,
            k: k.max(1),
            calibration: Vec::new(),
        };
        let scores = match calibration {
            Some(x) if x.size()[0] > 0 => judge.scores(x)?,
            _ => judge.leave_one_out()?,
        };
        judge.set_calibration(scores);
        Ok(judge)
    }

    /// References and sorted calibration scores as they were saved.
    fn from_parts(references: Tensor, calibration: Vec<f32>, k: i64) -> UnknownJudge {
        let mut judge = UnknownJudge {
            references,
            k: k.max(1),
            calibration: Vec::new(),
        };
        judge.set_calibration(calibration);
        judge
    }

    fn set_calibration(&mut self, mut scores: Vec<f32>) {
        scores.retain(|s| s.is_finite());
        scores.sort_by(f32::total_cmp);
        self.calibration = scores;
    }

    /// `1 − mean cosine similarity of the k nearest references`, `[N]`; traceable (the
    /// exported model computes it with the same operations).
    pub fn score(&self, features: &Tensor) -> Tensor {
        let refs = self.references.to_device(features.device());
        let sims = normalized(features).matmul(&refs.tr());
        let k = self.k.min(refs.size()[0]);
        let (top, _) = sims.topk(k, 1, true, true);
        1.0 - top.mean_dim(&[1i64][..], false, Kind::Float)
    }

    /// [`UnknownJudge::score`] as numbers.
    pub fn scores(&self, features: &Tensor) -> Result<Vec<f32>> {
        let n = features.size()[0];
        let mut out = Vec::with_capacity(n as usize);
        for start in (0..n).step_by(4096) {
            let part = features.narrow(0, start, (n - start).min(4096));
            let s = tch::no_grad(|| self.score(&part)).to_device(Device::Cpu);
            out.extend(Vec::<f32>::try_from(&s).torch_ctx(|| "unknown scores".into())?);
        }
        Ok(out)
    }

    /// Each reference against the others (its own similarity, 1, left out).
    fn leave_one_out(&self) -> Result<Vec<f32>> {
        let m = self.references.size()[0];
        if m < 2 {
            return Ok(vec![0.0]);
        }
        let mut out = Vec::with_capacity(m as usize);
        for start in (0..m).step_by(2048) {
            let part = self.references.narrow(0, start, (m - start).min(2048));
            let s = tch::no_grad(|| {
                let sims = part.matmul(&self.references.tr());
                let k = self.k.min(m - 1);
                let (top, _) = sims.topk(k + 1, 1, true, true);
                1.0 - top
                    .narrow(1, 1, k)
                    .mean_dim(&[1i64][..], false, Kind::Float)
            });
            out.extend(Vec::<f32>::try_from(&s).torch_ctx(|| "unknown scores".into())?);
        }
        Ok(out)
    }

    /// A threshold that accepts the smallest share of the calibration images that is at
    /// least `accept`: halfway between the last accepted score and the next, so that an image
    /// scored again (another batch size, another engine: the last digits change) falls on
    /// the same side.
    pub fn threshold(&self, accept: f64) -> f64 {
        let n = self.calibration.len();
        if n == 0 {
            return f64::INFINITY;
        }
        let i = ((accept * n as f64).ceil() as usize).clamp(1, n) - 1;
        let last = self.calibration[i] as f64;
        match self.calibration.get(i + 1) {
            Some(&next) => (last + next as f64) / 2.0,
            None => last + THRESHOLD_MARGIN,
        }
    }

    /// The share of calibration images whose score is above `threshold`.
    pub fn calibration_rejected(&self, threshold: f64) -> f64 {
        let n = self.calibration.len().max(1);
        self.calibration
            .iter()
            .filter(|&&s| s as f64 > threshold)
            .count() as f64
            / n as f64
    }

    pub fn calibration_scores(&self) -> &[f32] {
        &self.calibration
    }

    pub fn references(&self) -> usize {
        self.references.size()[0] as usize
    }

    pub fn k(&self) -> i64 {
        self.k
    }

    /// Bytes of the saved file's tensors.
    pub fn stored_bytes(&self) -> usize {
        self.references.numel() * 2 + self.calibration.len() * 4
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let calibration = Tensor::from_slice(&self.calibration);
        let named = [
            (
                "references".to_string(),
                self.references.to_kind(Kind::Half),
            ),
            ("calibration_scores".to_string(), calibration),
        ];
        let bytes = crate::util::tensors::to_safetensors(&named)?;
        crate::util::write_atomic(path, &bytes)
    }

    pub fn load(path: &Path, k: i64, dim: i64, device: Device) -> Result<UnknownJudge> {
        let bad = |what: String| TlError::corrupt(path, what);
        let named = Tensor::read_safetensors(path)
            .map_err(|e| bad(format!("cannot read: {}", crate::error::torch_message(&e))))?;
        let get = |name: &str| {
            named
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| bad(format!("no tensor '{name}' (damaged file?)")))
        };
        let refs = get("references")?.to_kind(Kind::Float);
        let scores = get("calibration_scores")?.to_kind(Kind::Float);
        let size = refs.size();
        if size.len() != 2 || size[0] == 0 || size[1] != dim || scores.dim() != 1 {
            return Err(bad(format!(
                "references of shape {size:?}, expected [M, {dim}] (damaged file?)"
            )));
        }
        let finite = |t: &Tensor| t.isfinite().all().int64_value(&[]) == 1;
        if !finite(&refs) || !finite(&scores) {
            return Err(bad("holds NaN or infinite values (damaged file?)".into()));
        }
        let scores = Vec::<f32>::try_from(&scores).torch_ctx(|| "unknown scores".into())?;
        Ok(UnknownJudge::from_parts(refs.to_device(device), scores, k))
    }
}

/// Fit a judge on the first `plain_rows` training rows (the plain view of each image,
/// sampled to the byte budget) and the validation rows (at most [`MAX_CALIBRATION_ROWS`]).
pub fn fit_on_rows(
    train: &dyn Rows,
    plain_rows: usize,
    val: &dyn Rows,
    k: i64,
    seed: u64,
    device: Device,
) -> Result<UnknownJudge> {
    let dim = train.batch(&[0], device)?.0.size()[1] as usize;
    let idx = reference_rows(plain_rows.min(train.len()), dim, seed);
    let references = gather_rows(train, &idx, device)?;
    let val_rows = sample_rows(
        val.len(),
        MAX_CALIBRATION_ROWS,
        seed ^ 0x7661_6c69_6461_7465,
    );
    let calibration = if val_rows.is_empty() {
        None
    } else {
        Some(gather_rows(val, &val_rows, device)?)
    };
    UnknownJudge::fit(&references, calibration.as_ref(), k)
}

fn gather_rows(rows: &dyn Rows, idx: &[i64], device: Device) -> Result<Tensor> {
    let mut parts = Vec::new();
    for chunk in idx.chunks(4096) {
        parts.push(rows.batch(chunk, device)?.0);
    }
    Ok(Tensor::cat(&parts, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, 2])
    }

    #[test]
    fn thresholds_accept_the_requested_share() {
        // (calibration scores, accept, threshold, share rejected)
        let cases: &[(&[f32], f64, f64, f64)] = &[
            (&[0.1, 0.2, 0.3, 0.4], 1.0, 0.4001, 0.0),
            (&[0.1, 0.2, 0.3, 0.4], 0.75, 0.35, 0.25),
            (&[0.1, 0.2, 0.3, 0.4], 0.7, 0.35, 0.25),
            (&[0.1, 0.2, 0.3, 0.4], 0.76, 0.4001, 0.0),
            (&[0.4, 0.1, 0.3, 0.2], 0.5, 0.25, 0.5),
            (&[0.5], 0.01, 0.5001, 0.0),
        ];
        for (scores, accept, want, rejected) in cases {
            let judge = UnknownJudge::from_parts(t(&[[1.0, 0.0]]), scores.to_vec(), 1);
            let got = judge.threshold(*accept);
            assert!((got - want).abs() < 1e-6, "{scores:?} @ {accept}: {got}");
            assert_eq!(judge.calibration_rejected(got), *rejected);
        }
    }

    #[test]
    fn scores_are_cosine_distances_to_the_nearest_references() {
        let refs = t(&[[1.0, 0.0], [0.0, 2.0]]);
        let judge = UnknownJudge::fit(&refs, None, 1).unwrap();
        // Scale does not matter; direction does.
        let s = judge
            .scores(&t(&[[5.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]))
            .unwrap();
        let want = [0.0, 1.0 - 0.5f32.sqrt(), 1.0];
        for (a, b) in s.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{s:?}");
        }
        // Leave-one-out: each reference's nearest other one is orthogonal.
        assert_eq!(judge.calibration_scores(), &[1.0, 1.0]);
        let k2 = UnknownJudge::fit(&refs, Some(&t(&[[1.0, 0.0]])), 2).unwrap();
        assert!((k2.calibration_scores()[0] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn the_reference_budget_samples_rows_reproducibly() {
        assert_eq!(reference_rows(5, 1280, 0), vec![0, 1, 2, 3, 4]);
        let cap = MAX_REFERENCE_BYTES / (2 * 1280);
        let a = reference_rows(cap * 3, 1280, 7);
        assert_eq!(a.len(), cap);
        assert_eq!(a, reference_rows(cap * 3, 1280, 7));
        assert_ne!(a, reference_rows(cap * 3, 1280, 8));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn accept_values_outside_the_unit_interval_are_refused() {
        for bad in [0.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(check_accept(bad).is_err(), "{bad}");
        }
        for good in [0.5, 0.95, 1.0] {
            assert!(check_accept(good).is_ok());
        }
    }
}
