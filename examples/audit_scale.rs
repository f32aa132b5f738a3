//! `tl audit`'s analysis at scale, on a synthetic feature cache (scripts/bench/run.sh audit-scale):
//!
//! ```text
//! audit_scale write ROOT N [DIM]   N synthetic entries, published as `tl extract` does
//! audit_scale audit ROOT N [DIM]   read every entry back and audit them
//! audit_scale neighbors ROOT N [DIM]  the neighbour search alone
//! ```
//! Rows: 10 classes, each a random centre plus a point of a shared 32-dimensional subspace
//! plus a little noise (features of real photos vary in far fewer directions than they have:
//! with isotropic noise "nearest" means nothing and no index can find it); every 100th row is
//! a near-copy of the row before it (noise 0.01), every 100th row (offset 50) has a flipped
//! label. The audit
//! phase prints one JSON line: seconds per step, peak RSS (VmHWM), and how many planted
//! near-copies and flips were found.
mod common;
use common::peak_rss_mib;
use std::path::Path;
use std::time::Instant;
use tl::audit::{AuditConfig, Images};
use tl::data::PreprocessConfig;
use tl::features::cache::{FeatureCache, Lookup};
use tl::head::{OptimizerKind, Schedule, TrainConfig};

const SHA: &str = "a0d17a0d17a0d17a0d17a0d17a0d17a0d17a0d17a0d17a0d17a0d17a0d17a0d1";
const CLASSES: usize = 10;

fn key(i: usize) -> String {
    blake3::hash(&(i as u64).to_le_bytes()).to_hex()[..32].to_string()
}

fn noise(seed: u64, dim: usize) -> impl Iterator<Item = f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..dim).map(move |_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    })
}

fn is_copy(i: usize) -> bool {
    i % 100 == 1
}

fn is_flip(i: usize) -> bool {
    i % 100 == 50
}

/// The class an image truly shows.
fn class(i: usize) -> usize {
    let base = if is_copy(i) { i - 1 } else { i };
    base % CLASSES
}

/// The label it is given.
fn label(i: usize) -> usize {
    if is_flip(i) {
        (class(i) + 1) % CLASSES
    } else {
        class(i)
    }
}

const LATENT: usize = 32;

fn row(i: usize, dim: usize) -> Vec<f32> {
    if is_copy(i) {
        let base = row(i - 1, dim);
        return base
            .iter()
            .zip(noise(i as u64 + 7, dim))
            .map(|(b, n)| b + 0.01 * n)
            .collect();
    }
    let mut v: Vec<f32> = noise(1_000_003 + class(i) as u64, dim)
        .map(|c| 0.6 * c)
        .collect();
    for (l, z) in noise(i as u64 + 11, LATENT).enumerate() {
        for (x, b) in v.iter_mut().zip(noise(2_000_003 + l as u64, dim)) {
            *x += z * b;
        }
    }
    for (x, n) in v.iter_mut().zip(noise(i as u64 + 13, dim)) {
        *x += 0.1 * n;
    }
    v
}

fn open(root: &Path) -> FeatureCache {
    FeatureCache::open(root, SHA, &PreprocessConfig::default(), "", None).expect("open cache")
}

fn write(root: &Path, n: usize, dim: usize) {
    let t = Instant::now();
    let cache = open(root);
    for i in 0..n {
        cache.put(&key(i), &row(i, dim)).expect("put");
    }
    cache.flush().expect("flush");
    println!(
        "{{\"phase\":\"write\",\"entries\":{n},\"seconds\":{:.1}}}",
        t.elapsed().as_secs_f64()
    );
}

fn audit(root: &Path, n: usize, dim: usize) {
    let t = Instant::now();
    let cache = open(root);
    // As `tl audit` reads them above 20,000 images: from the cache into one tensor.
    let rows = (0..n).map(|i| match cache.get(&key(i), Some(dim)) {
        Lookup::Hit(v) => v,
        other => panic!("entry {i}: {other:?}"),
    });
    let features = tl::audit::matrix(n, dim, rows);
    let read_s = t.elapsed().as_secs_f64();
    let labels: Vec<usize> = (0..n).map(label).collect();
    let keys: Vec<String> = (0..n).map(key).collect();
    let sides = vec![None; n];
    let classes: Vec<String> = (0..CLASSES).map(|c| format!("class{c}")).collect();
    let cfg = AuditConfig {
        near_duplicate: 0.93,
        folds: 5,
        outlier_neighbors: 5,
        outlier_fence: 3.0,
        head: TrainConfig {
            epochs: 100,
            batch_size: 64,
            lr: 0.01,
            optimizer: OptimizerKind::Adamw,
            momentum: 0.9,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            l2: 0.0,
            schedule: Schedule::Cosine,
            patience: 0,
            seed: 0,
            balance: Default::default(),
        },
        l2: None,
        seed: 0,
    };
    let images = Images {
        features,
        labels: &labels,
        keys: &keys,
        sides: &sides,
        classes: &classes,
    };
    let t = Instant::now();
    let f = tl::audit::audit(images, &cfg, tch::Device::Cpu, false).expect("audit");
    let audit_s = t.elapsed().as_secs_f64();
    let copies = (0..n).filter(|&i| is_copy(i)).count();
    let found = f
        .near_pairs
        .iter()
        .filter(|p| p.b == p.a + 1 && is_copy(p.b))
        .count();
    let flips = (0..n).filter(|&i| is_flip(i)).count();
    let flagged = f
        .label_issues
        .iter()
        .take(2 * flips)
        .filter(|x| is_flip(x.row))
        .count();
    println!(
        "{{\"phase\":\"audit\",\"entries\":{n},\"read_seconds\":{read_s:.1},\"audit_seconds\":{audit_s:.1},\"neighbors_seconds\":{:.1},\"labels_seconds\":{:.1},\"peak_rss_mib\":{:.0},\"neighbors\":\"{:?}\",\"near_copies\":{copies},\"near_copies_found\":{found},\"pairs_reported\":{},\"flips\":{flips},\"flips_in_top_2x\":{flagged},\"label_issues\":{},\"outliers\":{}}}",
        f.neighbors_seconds,
        f.labels_seconds,
        peak_rss_mib(),
        f.method,
        f.near_pairs.len(),
        f.label_issues.len(),
        f.outliers.len()
    );
}

/// The neighbour search alone (its share of the audit's time).
fn neighbors(root: &Path, n: usize, dim: usize) {
    let cache = open(root);
    let rows = (0..n).map(|i| match cache.get(&key(i), Some(dim)) {
        Lookup::Hit(v) => v,
        other => panic!("entry {i}: {other:?}"),
    });
    let x = tl::audit::matrix(n, dim, rows);
    let x = &x / x.norm_scalaropt_dim(2, [1], true);
    let t = Instant::now();
    let found = tl::audit::neighbors::nearest(&x, 10).expect("neighbours");
    println!(
        "{{\"phase\":\"neighbors\",\"entries\":{n},\"seconds\":{:.1},\"method\":\"{:?}\",\"peak_rss_mib\":{:.0}}}",
        t.elapsed().as_secs_f64(),
        found.method,
        peak_rss_mib()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: audit_scale write|audit|neighbors ROOT N [DIM]";
    let (phase, root, n) = match args.as_slice() {
        [_, p, r, n, ..] => (p.as_str(), Path::new(r), n.parse::<usize>().expect(usage)),
        _ => panic!("{usage}"),
    };
    let dim = args.get(4).map_or(1280, |d| d.parse().expect(usage));
    match phase {
        "write" => write(root, n, dim),
        "audit" => audit(root, n, dim),
        "neighbors" => neighbors(root, n, dim),
        _ => panic!("{usage}"),
    }
}
