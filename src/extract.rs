//! Feature extraction: cache look-up, then parallel decoding overlapped with batched
//! backbone inference for the misses.
//!
//! Decoding runs on a rayon pool in a producer thread that stays at most two batches
//! ahead (a bounded channel), so memory does not grow with the dataset; libtorch runs on
//! the calling thread. The backbone is only loaded when something is not cached.
use crate::backbone::{BackboneSpec, LoadedModule};
use crate::cache::{FeatureCache, Lookup};
use crate::error::{Result, TlError, TorchContext};
use crate::preprocess::{self, PreprocessConfig};
use crate::progress;
use rayon::prelude::*;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Tensor};

#[derive(Clone, Debug)]
pub struct ExtractOptions {
    pub batch_size: usize,
    pub decode_threads: usize,
    pub device: Device,
    pub progress: bool,
    /// Mixed precision (autocast) on CUDA; no effect on CPU.
    pub amp: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ExtractStats {
    pub images: usize,
    pub cached: usize,
    pub computed: usize,
    pub failed: usize,
    pub corrupt_cache_entries: usize,
    pub seconds: f64,
    pub compute_seconds: f64,
    /// Images per second over the computed (not cached) images.
    pub images_per_second: f64,
}

pub struct Extracted {
    /// One entry per input path: the features, or why the image could not be used.
    pub features: Vec<std::result::Result<Vec<f32>, String>>,
    pub dim: usize,
    pub stats: ExtractStats,
    pub corrupt: Vec<String>,
}

/// Preprocessed images ready for the backbone, and the ones that could not be read.
pub struct DecodedBatch {
    /// Indices (into the caller's path list) of the images in `data`, in order.
    pub indices: Vec<usize>,
    /// `indices.len()` normalised CHW images, back to back.
    pub data: Vec<f32>,
    pub failures: Vec<(usize, String)>,
}

impl DecodedBatch {
    /// `[n, 3, crop, crop]`
    pub fn tensor(&self, cfg: &PreprocessConfig) -> Tensor {
        let side = cfg.crop as i64;
        Tensor::from_slice(&self.data).view([self.indices.len() as i64, 3, side, side])
    }
}

/// Decode and preprocess `paths[i]` for each `i` in `indices`, in parallel on the current
/// rayon pool, each straight into its slot of one buffer.
pub fn decode_batch(paths: &[PathBuf], indices: &[usize], cfg: &PreprocessConfig) -> DecodedBatch {
    let numel = cfg.numel();
    let mut data = vec![0f32; indices.len() * numel];
    let results: Vec<std::result::Result<(), String>> = data
        .par_chunks_mut(numel)
        .zip(indices.par_iter())
        .map(|(slot, &i)| preprocess::load_into(&paths[i], cfg, slot).map_err(|e| e.to_string()))
        .collect();
    let mut batch = DecodedBatch {
        indices: Vec::with_capacity(indices.len()),
        data: Vec::new(),
        failures: Vec::new(),
    };
    let mut kept = 0;
    for (j, (r, &i)) in results.into_iter().zip(indices).enumerate() {
        match r {
            Ok(()) => {
                // Close the gaps left by failures (rare), keeping the buffer.
                if kept != j {
                    data.copy_within(j * numel..(j + 1) * numel, kept * numel);
                }
                kept += 1;
                batch.indices.push(i);
            }
            Err(e) => batch.failures.push((i, e)),
        }
    }
    data.truncate(kept * numel);
    batch.data = data;
    batch
}

/// Features for `paths`, from the cache where possible.
pub fn extract(
    paths: &[PathBuf],
    spec: &BackboneSpec,
    cache: &FeatureCache,
    opts: &ExtractOptions,
) -> Result<Extracted> {
    let start = Instant::now();
    let cfg = spec.preprocess();
    let expected_dim = spec.sidecar.as_ref().map(|s| s.feature_dim as usize);

    // 1. Content keys and cache look-ups, in parallel.
    // On CPU, decoding competes with libtorch's OpenMP threads, whose barriers stall when
    // one of them is pre-empted: decode at a lower priority (nice 5; measured against 0, 10
    // and 19 in BENCHMARKS.md) so that it mostly fills their idle time yet keeps up.
    let default_nice = if opts.device == Device::Cpu { 5 } else { 0 };
    let nice = std::env::var("TL_DECODE_NICE")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(default_nice);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.decode_threads.max(1))
        .start_handler(move |_| lower_priority(nice))
        .build()
        .map_err(|e| TlError::invalid(format!("cannot start decode threads: {e}")))?;
    let lookups: Vec<(std::result::Result<String, String>, Lookup)> = pool.install(|| {
        paths
            .par_iter()
            .map(|p| match crate::cache::file_key(p) {
                Ok(key) => {
                    let lookup = cache.get(&key, expected_dim);
                    (Ok(key), lookup)
                }
                Err(e) => (Err(e.to_string()), Lookup::Miss),
            })
            .collect()
    });

    let mut features: Vec<std::result::Result<Vec<f32>, String>> = Vec::with_capacity(paths.len());
    let mut keys: Vec<Option<String>> = Vec::with_capacity(paths.len());
    let mut misses = Vec::new();
    let mut stats = ExtractStats {
        images: paths.len(),
        ..Default::default()
    };
    let mut corrupt = Vec::new();
    for (i, (key, lookup)) in lookups.into_iter().enumerate() {
        match (key, lookup) {
            (Err(e), _) => {
                features.push(Err(e));
                keys.push(None);
                stats.failed += 1;
            }
            (Ok(key), Lookup::Hit(v)) => {
                features.push(Ok(v));
                keys.push(Some(key));
                stats.cached += 1;
            }
            (Ok(key), other) => {
                if let Lookup::Corrupt(why) = other {
                    corrupt.push(why);
                }
                features.push(Err("not computed".into()));
                keys.push(Some(key));
                misses.push(i);
            }
        }
    }
    stats.corrupt_cache_entries = corrupt.len();
    let mut dim = features
        .iter()
        .find_map(|f| f.as_ref().ok().map(Vec::len))
        .or(expected_dim)
        .unwrap_or(0);

    // 2. Compute the misses: decode on the pool while the backbone runs.
    if !misses.is_empty() {
        let compute_start = Instant::now();
        let bar = progress::bar(misses.len() as u64, "extract", opts.progress);
        let (tx, rx) = crossbeam_channel::bounded::<DecodedBatch>(2);
        let batch_size = opts.batch_size.max(1);
        let result: Result<()> = std::thread::scope(|scope| {
            let misses = &misses;
            let pool = &pool;
            scope.spawn(move || {
                for chunk in misses.chunks(batch_size) {
                    let batch = pool.install(|| decode_batch(paths, chunk, &cfg));
                    if tx.send(batch).is_err() {
                        break; // the consumer stopped on an error
                    }
                }
            });
            // Owned here, so that an early error drops it and unblocks the producer.
            let rx = rx;
            // Load the backbone while the first batch is being decoded.
            let module = spec.load_features(opts.device)?;
            let (mut wait, mut fwd, mut put) = (0f64, 0f64, 0f64);
            let mut t_wait = Instant::now();
            for mut batch in rx.iter() {
                wait += t_wait.elapsed().as_secs_f64();
                for (i, why) in std::mem::take(&mut batch.failures) {
                    features[i] = Err(why);
                    stats.failed += 1;
                    bar.inc(1);
                }
                if batch.indices.is_empty() {
                    continue;
                }
                let t_fwd = Instant::now();
                let out = run_batch(&module, &batch.tensor(&cfg), opts.device, opts.amp)?;
                fwd += t_fwd.elapsed().as_secs_f64();
                let t_put = Instant::now();
                let d = out.len() / batch.indices.len();
                if let Some(e) = expected_dim {
                    if e != d {
                        return Err(TlError::file(
                            &module.path,
                            format!("outputs {d} features per image but its sidecar says feature_dim {e}"),
                        ));
                    }
                }
                dim = d;
                for (j, &i) in batch.indices.iter().enumerate() {
                    let v = out[j * d..(j + 1) * d].to_vec();
                    if let Some(key) = &keys[i] {
                        cache.put(key, &v)?;
                    }
                    features[i] = Ok(v);
                    stats.computed += 1;
                }
                put += t_put.elapsed().as_secs_f64();
                bar.inc(batch.indices.len() as u64);
                t_wait = Instant::now();
            }
            if std::env::var_os("TL_DEBUG_TIMING").is_some() {
                eprintln!("extract timing: waiting for decoded batches {wait:.2}s, backbone {fwd:.2}s, storing features {put:.2}s");
            }
            Ok(())
        });
        result?;
        bar.finish_and_clear();
        stats.compute_seconds = compute_start.elapsed().as_secs_f64();
        if stats.compute_seconds > 0.0 {
            stats.images_per_second = stats.computed as f64 / stats.compute_seconds;
        }
    }
    stats.seconds = start.elapsed().as_secs_f64();
    Ok(Extracted {
        features,
        dim,
        stats,
        corrupt,
    })
}

fn run_batch(module: &LoadedModule, input: &Tensor, device: Device, amp: bool) -> Result<Vec<f32>> {
    let input = input.to_device(device);
    let out = tch::no_grad(|| tch::autocast(amp && device.is_cuda(), || module.forward(&input)))?;
    let out = out
        .to_device(Device::Cpu)
        .to_kind(tch::Kind::Float)
        .contiguous()
        .view([-1]);
    Vec::<f32>::try_from(&out).torch_ctx(|| "reading features".into())
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
