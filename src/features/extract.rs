//! Feature extraction: each file is read once, hashed, looked up in the cache and — on a
//! miss — decoded from the same bytes, in parallel, while the backbone runs on the previous
//! batch.
//!
//! A producer thread walks the files a batch at a time on a rayon pool and stays at most two
//! batches ahead (a bounded channel), so memory does not grow with the dataset; libtorch runs
//! on the calling thread. The backbone is loaded as soon as the first miss is seen (while
//! that batch decodes), and never when everything is cached. A cache that cannot be written
//! costs a warning, not the extraction.
use super::backbone::{BackboneSpec, Engine};
use super::cache::{content_key, FeatureCache, Lookup};
use super::engine::FrozenModel;
use crate::data::preprocess::PreprocessConfig;
use crate::data::View;
use crate::error::{Result, TlError};
use crate::progress;
use crate::runtime::Runtime;
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
    /// Which view of each image (the cache passed in must be that view's).
    pub view: View,
    /// Compute threads of the ONNX Runtime engine (libtorch's are set process-wide).
    pub threads: usize,
    /// Return the features (train, eval); `false` only fills the cache (`tl extract`), so
    /// memory does not grow with the number of images.
    pub keep_features: bool,
}

impl ExtractOptions {
    /// The runtime's settings for extracting with `spec` (already on its engine: see
    /// [`BackboneSpec::for_engine`]): beside ONNX Runtime, whose idle threads sleep, as many
    /// decoders as compute threads; beside libtorch, the runtime's default.
    pub fn new(
        rt: &Runtime,
        spec: &BackboneSpec,
        batch_size: usize,
        amp: bool,
        view: View,
    ) -> Self {
        ExtractOptions {
            batch_size,
            decode_threads: match spec.engine {
                Engine::Torch => rt.decode_threads,
                Engine::Onnx => rt.onnx_decode_threads,
            },
            device: rt.device,
            progress: rt.progress,
            amp,
            view,
            threads: rt.threads,
            keep_features: true,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ExtractStats {
    /// The library that ran the backbone.
    pub engine: super::backbone::Engine,
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
    /// The content key of each input that could be read.
    pub keys: Vec<Option<String>>,
    pub dim: usize,
    pub stats: ExtractStats,
    /// Damaged or misplaced cache entries that were recomputed.
    pub corrupt: Vec<String>,
    /// Set when the cache could not be written (the run went on without caching).
    pub cache_warning: Option<String>,
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

/// Decode and preprocess `items` (index, bytes) in parallel on the current rayon pool, each
/// straight into its slot of one buffer; failures are listed, the buffer closes their gaps.
fn decode_into_batch(
    items: Vec<(usize, Vec<u8>)>,
    paths: &[PathBuf],
    cfg: &PreprocessConfig,
    view: View,
) -> DecodedBatch {
    let numel = cfg.numel();
    let mut data = vec![0f32; items.len() * numel];
    let results: Vec<std::result::Result<(), String>> = data
        .par_chunks_mut(numel)
        .zip(items.par_iter())
        .map(|(slot, (i, bytes))| {
            crate::data::augment::load_view_into(bytes, &paths[*i], cfg, view, slot)
                .map_err(|e| e.to_string())
        })
        .collect();
    let mut batch = DecodedBatch {
        indices: Vec::with_capacity(items.len()),
        data: Vec::new(),
        failures: Vec::new(),
    };
    let mut kept = 0;
    for (j, (r, (i, _))) in results.into_iter().zip(&items).enumerate() {
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
    data.truncate(kept * numel);
    batch.data = data;
    batch
}

/// Read and decode `paths` (for `predict`): the batch of those that could be read.
pub fn decode_files(paths: &[PathBuf], cfg: &PreprocessConfig, view: View) -> DecodedBatch {
    let mut failures = Vec::new();
    let mut items = Vec::new();
    for (i, r) in paths
        .par_iter()
        .map(|p| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())))
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
struct Chunk {
    /// (index, key, cached features)
    hits: Vec<(usize, String, Vec<f32>)>,
    /// (index, why): unreadable files
    unreadable: Vec<(usize, String)>,
    corrupt: Vec<String>,
    /// Keys of the misses, by index.
    miss_keys: Vec<(usize, String)>,
    decoded: DecodedBatch,
}

fn lookup_chunk(
    indices: std::ops::Range<usize>,
    paths: &[PathBuf],
    cache: &FeatureCache,
    expected_dim: Option<usize>,
) -> (Chunk, Vec<(usize, Vec<u8>)>) {
    enum Found {
        Hit(String, Vec<f32>),
        Miss(String, Vec<u8>, Option<String>),
        Unreadable(String),
    }
    let found: Vec<Found> = indices
        .clone()
        .into_par_iter()
        .map(|i| match std::fs::read(&paths[i]) {
            Err(e) => Found::Unreadable(format!("{}: {e}", paths[i].display())),
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

/// Accumulates results as chunks and computed batches come in.
struct Collector<'a> {
    out: Extracted,
    cfg: PreprocessConfig,
    /// The sidecar's feature size, if there is a sidecar.
    expected_dim: Option<usize>,
    cache: &'a FeatureCache,
    cache_ok: bool,
    /// [`ExtractOptions::keep_features`]
    keep: bool,
    bar: indicatif::ProgressBar,
}

impl Collector<'_> {
    /// Record a chunk's hits and failures, and run the backbone on its misses (loading it
    /// if that has not happened yet). Returns the seconds spent in the backbone.
    fn chunk(
        &mut self,
        chunk: &mut Chunk,
        module: &mut Option<FrozenModel>,
        spec: &BackboneSpec,
        opts: &ExtractOptions,
    ) -> Result<f64> {
        self.record(chunk);
        let batch = &chunk.decoded;
        if batch.indices.is_empty() {
            return Ok(0.0);
        }
        let m = match module {
            Some(m) => m,
            None => module.insert(spec.load_frozen(opts.device, opts.threads, false)?),
        };
        let t_fwd = Instant::now();
        let n = batch.indices.len();
        let out = m.run(&batch.data, n, &self.cfg, opts.device, opts.amp)?;
        let seconds = t_fwd.elapsed().as_secs_f64();
        let d = out.len() / batch.indices.len();
        check_dim(m, d, self.expected_dim)?;
        self.computed(&batch.indices, &out, d);
        self.bar.inc(batch.indices.len() as u64);
        Ok(seconds)
    }

    fn record(&mut self, chunk: &mut Chunk) {
        let done = chunk.hits.len() + chunk.unreadable.len() + chunk.decoded.failures.len();
        self.bar.inc(done as u64);
        for (i, key, v) in chunk.hits.drain(..) {
            self.out.keys[i] = Some(key);
            if self.out.dim == 0 {
                self.out.dim = v.len();
            }
            self.out.features[i] = Ok(if self.keep { v } else { Vec::new() });
            self.out.stats.cached += 1;
        }
        for (i, why) in chunk.unreadable.drain(..) {
            self.out.features[i] = Err(why);
            self.out.stats.failed += 1;
        }
        for (i, key) in chunk.miss_keys.drain(..) {
            self.out.keys[i] = Some(key);
        }
        for (i, why) in std::mem::take(&mut chunk.decoded.failures) {
            self.out.features[i] = Err(why);
            self.out.stats.failed += 1;
        }
        self.out.corrupt.append(&mut chunk.corrupt);
    }

    fn computed(&mut self, indices: &[usize], out: &[f32], d: usize) {
        self.out.dim = d;
        for (&i, row) in indices.iter().zip(out.chunks_exact(d)) {
            if self.cache_ok {
                if let Some(key) = &self.out.keys[i] {
                    if let Err(e) = self.cache.put(key, row) {
                        // One warning, then no more attempts: the features are still used.
                        self.out.cache_warning = Some(format!(
                            "feature cache not written, continuing without it: {e}"
                        ));
                        self.cache_ok = false;
                    }
                }
            }
            // Copied out only when the caller keeps features (the cache took its own copy).
            self.out.features[i] = Ok(if self.keep { row.to_vec() } else { Vec::new() });
            self.out.stats.computed += 1;
        }
    }
}

/// Features for `paths`, from the cache where possible.
pub fn extract(
    paths: &[PathBuf],
    spec: &BackboneSpec,
    cache: &FeatureCache,
    opts: &ExtractOptions,
) -> Result<Extracted> {
    let start = Instant::now();
    let expected_dim = spec.sidecar.as_ref().map(|s| s.feature_dim as usize);
    let pool = decode_pool(opts)?;
    let mut collect = Collector {
        cfg: spec.preprocess(),
        expected_dim,
        out: Extracted {
            features: vec![Err("not computed".into()); paths.len()],
            keys: vec![None; paths.len()],
            dim: expected_dim.unwrap_or(0),
            stats: ExtractStats {
                engine: spec.engine,
                images: paths.len(),
                ..Default::default()
            },
            corrupt: Vec::new(),
            cache_warning: None,
        },
        cache,
        cache_ok: cache.dir().is_some(),
        keep: opts.keep_features,
        bar: progress::bar(paths.len() as u64, "extract", opts.progress),
    };
    collect.out.corrupt.extend(cache.problems().iter().cloned());
    let first_compute = pipeline(paths, spec, cache, opts, &pool, &mut collect)?;
    collect.bar.finish_and_clear();
    if collect.cache_ok {
        if let Err(e) = cache.flush() {
            collect.out.cache_warning = Some(format!(
                "feature cache not written, continuing without it: {e}"
            ));
        }
    }
    let mut out = collect.out;
    out.stats.corrupt_cache_entries = out.corrupt.len();
    if let Some(t) = first_compute {
        out.stats.compute_seconds = t.elapsed().as_secs_f64();
        if out.stats.compute_seconds > 0.0 {
            out.stats.images_per_second = out.stats.computed as f64 / out.stats.compute_seconds;
        }
    }
    if out.dim == 0 {
        out.dim = out
            .features
            .iter()
            .find_map(|f| f.as_ref().ok().map(Vec::len))
            .unwrap_or(0);
    }
    out.stats.seconds = start.elapsed().as_secs_f64();
    Ok(out)
}

/// The producer (read, hash, look up, decode on the pool) and the consumer (the backbone,
/// on this thread). Returns when the first miss was seen, if one was.
fn pipeline(
    paths: &[PathBuf],
    spec: &BackboneSpec,
    cache: &FeatureCache,
    opts: &ExtractOptions,
    pool: &rayon::ThreadPool,
    collect: &mut Collector,
) -> Result<Option<Instant>> {
    let (cfg, expected_dim) = (collect.cfg, collect.expected_dim);
    let batch_size = opts.batch_size.max(1);
    let (tx, rx) = crossbeam_channel::bounded::<Chunk>(2);
    // Tells the consumer to load the backbone while the first misses decode.
    let (need_tx, need_rx) = crossbeam_channel::bounded::<()>(1);
    let (mut fwd, mut wait) = (0f64, 0f64);
    let mut first_compute: Option<Instant> = None;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for start in (0..paths.len()).step_by(batch_size) {
                let chunk_indices = start..(start + batch_size).min(paths.len());
                let (mut chunk, to_decode) =
                    pool.install(|| lookup_chunk(chunk_indices, paths, cache, expected_dim));
                if !to_decode.is_empty() {
                    let _ = need_tx.try_send(());
                    chunk.decoded =
                        pool.install(|| decode_into_batch(to_decode, paths, &cfg, opts.view));
                }
                if tx.send(chunk).is_err() {
                    break; // the consumer stopped on an error
                }
            }
        });
        // Owned here, so that an early error drops them and unblocks the producer.
        let (rx, mut need_rx) = (rx, need_rx);
        let mut module: Option<FrozenModel> = None;
        let mut t_wait = Instant::now();
        loop {
            crossbeam_channel::select! {
                recv(need_rx) -> msg => {
                    // Once is enough (and a closed channel must not be selected again).
                    need_rx = crossbeam_channel::never();
                    first_compute.get_or_insert_with(Instant::now);
                    if msg.is_ok() && module.is_none() {
                        module = Some(spec.load_frozen(opts.device, opts.threads, false)?);
                    }
                }
                recv(rx) -> msg => {
                    let Ok(mut chunk) = msg else { break };
                    wait += t_wait.elapsed().as_secs_f64();
                    if !chunk.decoded.indices.is_empty() {
                        first_compute.get_or_insert_with(Instant::now);
                    }
                    fwd += collect.chunk(&mut chunk, &mut module, spec, opts)?;
                    t_wait = Instant::now();
                }
            }
        }
        Ok::<(), TlError>(())
    })?;
    if std::env::var_os("TL_DEBUG_TIMING").is_some() {
        eprintln!("extract timing: waiting for decoded batches {wait:.2}s, backbone {fwd:.2}s");
    }
    Ok(first_compute)
}

fn check_dim(module: &FrozenModel, d: usize, expected: Option<usize>) -> Result<()> {
    match expected {
        Some(e) if e != d => Err(TlError::file(
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
fn decode_pool(opts: &ExtractOptions) -> Result<rayon::ThreadPool> {
    let default_nice = if opts.device == Device::Cpu { 5 } else { 0 };
    let nice = std::env::var("TL_DECODE_NICE")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(default_nice);
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
