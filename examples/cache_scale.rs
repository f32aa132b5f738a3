//! The feature cache at scale, without images (scripts/bench/run.sh cache-scale):
//!
//! ```text
//! cache_scale write ROOT N [DIM]   N synthetic entries, published as `tl extract` does
//! cache_scale read  ROOT N [DIM]   open the cache, look every entry up and load it
//! cache_scale train ROOT N [DIM]   one head-training epoch streamed from the cache
//! ```
//! Each phase is its own process and prints one JSON line with its time and peak RSS.
//! The rows are two classes whose mean differs in a few features (plus noise), so the
//! epoch has something to learn and its accuracy says the rows arrived intact.
mod common;
use common::peak_rss_mib;
use std::path::Path;
use std::time::Instant;
use tl::data::PreprocessConfig;
use tl::features::cache::{FeatureCache, Lookup};
use tl::head::{train_head, HeadConfig, OptimizerKind, Schedule, StreamedRows, TrainConfig};

const SHA: &str = "5ca1e5ca1e5ca1e5ca1e5ca1e5ca1e5ca1e5ca1e5ca1e5ca1e5ca1e5ca1e5ca1";

fn key(i: usize) -> String {
    blake3::hash(&(i as u64).to_le_bytes()).to_hex()[..32].to_string()
}

fn label(i: usize) -> i64 {
    (i % 2) as i64
}

/// Entry `i`: noise in [-1, 1), plus ±0.5 on the first 16 features by class.
fn row(i: usize, dim: usize) -> Vec<f32> {
    let mut state = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let sign = if label(i) == 1 { 0.5 } else { -0.5 };
    (0..dim)
        .map(|j| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            if j < 16 {
                noise + sign
            } else {
                noise
            }
        })
        .collect()
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
    let s = t.elapsed().as_secs_f64();
    println!(
        "{{\"phase\":\"write\",\"entries\":{n},\"seconds\":{s:.3},\"entries_per_second\":{:.0},\"peak_rss_mib\":{:.0}}}",
        n as f64 / s,
        peak_rss_mib()
    );
}

fn read(root: &Path, n: usize, dim: usize) {
    let t = Instant::now();
    let cache = open(root);
    let open_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut checksum = 0f64;
    for i in 0..n {
        match cache.get(&key(i), Some(dim)) {
            Lookup::Hit(v) => checksum += v[0] as f64,
            other => panic!("entry {i}: {other:?}"),
        }
    }
    let s = t.elapsed().as_secs_f64();
    assert!(checksum.is_finite());
    println!(
        "{{\"phase\":\"read\",\"entries\":{n},\"open_seconds\":{open_s:.3},\"seconds\":{s:.3},\"entries_per_second\":{:.0},\"peak_rss_mib\":{:.0}}}",
        n as f64 / s,
        peak_rss_mib()
    );
}

fn train(root: &Path, n: usize, dim: usize) {
    let t = Instant::now();
    let cache = open(root);
    let entries = (0..n)
        .map(|i| (cache.locate(&key(i)).expect("entry missing"), label(i)))
        .collect();
    let rows = StreamedRows::new(cache, entries, dim).expect("rows");
    let index_s = t.elapsed().as_secs_f64();
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 1024,
        lr: 1e-3,
        optimizer: OptimizerKind::Adamw,
        momentum: 0.9,
        weight_decay: 0.0,
        label_smoothing: 0.0,
        l2: 0.0,
        schedule: Schedule::Constant,
        patience: 0,
        seed: 0,
        balance: Default::default(),
    };
    let head = HeadConfig {
        hidden: 0,
        dropout: 0.0,
        in_dim: dim as i64,
        num_classes: 2,
        standardize: true,
    };
    let t = Instant::now();
    let out = train_head(head, &cfg, &rows, None, tch::Device::Cpu, false).expect("train");
    let s = t.elapsed().as_secs_f64();
    println!(
        "{{\"phase\":\"train\",\"entries\":{n},\"index_seconds\":{index_s:.3},\"epoch_seconds\":{s:.3},\"train_accuracy\":{:.4},\"peak_rss_mib\":{:.0}}}",
        out.history[0].train_accuracy,
        peak_rss_mib()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: cache_scale write|read|train ROOT N [DIM]";
    let (phase, root, n) = match args.as_slice() {
        [_, p, r, n, ..] => (p.as_str(), Path::new(r), n.parse::<usize>().expect(usage)),
        _ => panic!("{usage}"),
    };
    let dim = args.get(4).map_or(1280, |d| d.parse().expect(usage));
    match phase {
        "write" => write(root, n, dim),
        "read" => read(root, n, dim),
        "train" => train(root, n, dim),
        _ => panic!("{usage}"),
    }
}
