//! One batch of files: read, hashed and looked up in the cache; the misses decoded into one
//! buffer for the backbone.
use super::options::ExtractOptions;
use crate::data::preprocess::PreprocessConfig;
use crate::data::View;
use crate::error::{PerImage, Result, SkipReason, TlError};
use crate::features::cache::{content_key, FeatureCache, Lookup};
use crate::features::engine::FrozenModel;
use rayon::prelude::*;
use std::path::PathBuf;
use tch::{Device, Tensor};

/// Preprocessed images ready for the backbone, and the ones that could not be read.
pub struct DecodedBatch {
    /// Indices (into the caller's path list) of the images in `data`, in order.
    pub indices: Vec<usize>,
    /// `indices.len()` normalised CHW images, back to back.
    pub data: Vec<f32>,
    pub failures: Vec<(usize, SkipReason)>,
}

impl DecodedBatch {
    /// `[n, 3, crop, crop]`
    pub fn tensor(&self, cfg: &PreprocessConfig) -> Tensor {
        let side = cfg.crop as i64;
        Tensor::from_slice(&self.data).view([self.indices.len() as i64, 3, side, side])
    }
}

/// Decode and preprocess `items` (index, bytes) in parallel on the current rayon pool, each
/// straight into its slot of one buffer; failures are listed, the buffer closes their gaps.
pub(super) fn decode_into_batch(
    items: Vec<(usize, Vec<u8>)>,
    paths: &[PathBuf],
    cfg: &PreprocessConfig,
    view: View,
) -> DecodedBatch {
    let mut data = vec![0f32; items.len() * cfg.numel()];
    let mut batch = decode_into(&items, paths, cfg, view, &mut data);
    data.truncate(batch.indices.len() * cfg.numel());
    batch.data = data;
    batch
}

/// [`decode_into_batch`] into `data` (`items.len()` slots, e.g. an engine's input tensor):
/// the kept images fill its first `indices.len()` slots; `data` is left out of the result.
pub(super) fn decode_into(
    items: &[(usize, Vec<u8>)],
    paths: &[PathBuf],
    cfg: &PreprocessConfig,
    view: View,
    data: &mut [f32],
) -> DecodedBatch {
    let numel = cfg.numel();
    let results: Vec<PerImage<()>> = data
        .par_chunks_mut(numel)
        .zip(items.par_iter())
        .map(|(slot, (i, bytes))| {
            crate::data::augment::load_view_into(bytes, &paths[*i], cfg, view, slot)
                .map_err(|e| SkipReason::of(&e))
        })
        .collect();
    let mut batch = DecodedBatch {
        indices: Vec::with_capacity(items.len()),
        data: Vec::new(),
        failures: Vec::new(),
    };
    let mut kept = 0;
    for (j, (r, (i, _))) in results.into_iter().zip(items).enumerate() {
        match r {
            Ok(()) => {
                if kept != j {
                    data.copy_within(j * numel..(j + 1) * numel, kept * numel);
                }
                kept += 1;
                batch.indices.push(*i);
            }
            Err(e) => batch.failures.push((*i, e)),
        }
    }
    batch
}

/// Read and decode `paths` (for `predict`): the batch of those that could be read.
pub fn decode_files(paths: &[PathBuf], cfg: &PreprocessConfig, view: View) -> DecodedBatch {
    let mut failures = Vec::new();
    let mut items = Vec::new();
    for (i, r) in paths
        .par_iter()
        .map(|p| std::fs::read(p).map_err(|e| SkipReason::Unreadable(e.to_string())))
        .collect::<Vec<_>>()
        .into_iter()
        .enumerate()
    {
        match r {
            Ok(bytes) => items.push((i, bytes)),
            Err(e) => failures.push((i, e)),
        }
    }
    let mut batch = decode_into_batch(items, paths, cfg, view);
    batch.failures.extend(failures);
    batch.failures.sort_by_key(|f| f.0);
    batch
}

/// What the producer learnt about one batch's worth of files.
pub(super) struct Chunk {
    /// (index, key, cached features)
    pub(super) hits: Vec<(usize, String, Vec<f32>)>,
    /// (index, why): unreadable files
    pub(super) unreadable: Vec<(usize, SkipReason)>,
    pub(super) corrupt: Vec<String>,
    /// Keys of the misses, by index.
    pub(super) miss_keys: Vec<(usize, String)>,
    pub(super) decoded: DecodedBatch,
}

pub(super) fn lookup_chunk(
    indices: std::ops::Range<usize>,
    paths: &[PathBuf],
    cache: &FeatureCache,
    expected_dim: Option<usize>,
) -> (Chunk, Vec<(usize, Vec<u8>)>) {
    enum Found {
        Hit(String, Vec<f32>),
        Miss(String, Vec<u8>, Option<String>),
        Unreadable(SkipReason),
    }
    let found: Vec<Found> = indices
        .clone()
        .into_par_iter()
        .map(|i| match std::fs::read(&paths[i]) {
            Err(e) => Found::Unreadable(SkipReason::Unreadable(e.to_string())),
            Ok(bytes) => {
                let key = content_key(&bytes);
                match cache.get(&key, expected_dim) {
                    Lookup::Hit(v) => Found::Hit(key, v),
                    Lookup::Miss => Found::Miss(key, bytes, None),
                    Lookup::Corrupt(why) => Found::Miss(key, bytes, Some(why)),
                }
            }
        })
        .collect();
    let mut chunk = Chunk {
        hits: Vec::new(),
        unreadable: Vec::new(),
        corrupt: Vec::new(),
        miss_keys: Vec::new(),
        decoded: DecodedBatch {
            indices: Vec::new(),
            data: Vec::new(),
            failures: Vec::new(),
        },
    };
    let mut to_decode = Vec::new();
    for (i, f) in indices.zip(found) {
        match f {
            Found::Hit(key, v) => chunk.hits.push((i, key, v)),
            Found::Unreadable(why) => chunk.unreadable.push((i, why)),
            Found::Miss(key, bytes, corrupt) => {
                chunk.corrupt.extend(corrupt);
                chunk.miss_keys.push((i, key));
                to_decode.push((i, bytes));
            }
        }
    }
    (chunk, to_decode)
}

pub(super) fn check_dim(module: &FrozenModel, d: usize, expected: Option<usize>) -> Result<()> {
    match expected {
        Some(e) if e != d => Err(TlError::corrupt(
            module.path(),
            format!("outputs {d} features per image but its sidecar says feature_dim {e}"),
        )),
        _ => Ok(()),
    }
}

/// The decoder threads. On CPU, decoding competes with libtorch's OpenMP threads, whose
/// barriers stall when one of them is pre-empted: decode at a lower priority (nice 5;
/// measured against 0, 10 and 19 in BENCHMARKS.md) so that it mostly fills their idle time
/// yet keeps up.
pub(super) fn decode_pool(opts: &ExtractOptions) -> Result<rayon::ThreadPool> {
    let default_nice = if opts.device == Device::Cpu { 5 } else { 0 };
    let nice = opts.decode_nice.unwrap_or(default_nice);
    rayon::ThreadPoolBuilder::new()
        .num_threads(opts.decode_threads.max(1))
        .start_handler(move |_| lower_priority(nice))
        .build()
        .map_err(|e| TlError::invalid(format!("cannot start decode threads: {e}")))
}

/// Lower this thread's scheduling priority (Linux: nice is per thread), so that decoding
/// yields to libtorch's compute threads instead of stalling their barriers.
fn lower_priority(nice: i32) {
    if nice > 0 {
        #[cfg(target_os = "linux")]
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice);
        }
    }
}
