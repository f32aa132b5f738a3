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
    /// `Some(n)`: n workers, each reading, decoding and running its own batches on its own
    /// session of `threads / n` threads (ONNX Runtime; see `workers` in this file). `None`: one
    /// backbone on the calling thread, fed by `decode_threads` decoders.
    pub workers: Option<usize>,
    /// [`crate::runtime::RuntimeSettings::decode_nice`]
    pub decode_nice: Option<i32>,
    /// [`crate::runtime::RuntimeSettings::debug_timing`]
    pub debug_timing: bool,
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
            workers: match spec.engine {
                Engine::Torch => None,
                Engine::Onnx => rt.onnx_workers,
            },
            decode_nice: rt.decode_nice,
            debug_timing: rt.debug_timing,
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
    /// Extraction workers that each decoded and ran their own batches; 0: one backbone fed
    /// by decoder threads.
    pub workers: usize,
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

    /// Record (and cache) the features `out` of the images `indices`, `d` per image.
    fn computed(&mut self, indices: &[usize], out: &[f32], d: usize) {
        self.bar.inc(indices.len() as u64);
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
    let worker_count = opts.workers.map(|n| n.max(1));
    let mut collect = Collector {
        cfg: spec.preprocess(),
        expected_dim,
        out: Extracted {
            features: vec![Err("not computed".into()); paths.len()],
            keys: vec![None; paths.len()],
            dim: expected_dim.unwrap_or(0),
            stats: ExtractStats {
                engine: spec.engine,
                workers: worker_count.unwrap_or(0),
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
    let first_compute = match worker_count {
        Some(n) => workers(n, paths, spec, cache, opts, &mut collect)?,
        None => pipeline(paths, spec, cache, opts, &decode_pool(opts)?, &mut collect)?,
    };
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
    if opts.debug_timing {
        crate::progress::say(&format!(
            "extract timing: waiting for decoded batches {wait:.2}s, backbone {fwd:.2}s"
        ));
    }
    Ok(first_compute)
}

/// What one worker made of one chunk: its lookups and decodes, and the features of its
/// misses (`indices` order).
struct Done {
    chunk: Chunk,
    computed: Vec<f32>,
    forward_seconds: f64,
}

/// The ONNX Runtime layout: `count` threads, each with its own session, take chunks of
/// files in turn and read, look up, decode and run them one after another. On 2 cores two
/// one-thread workers keep both cores busy without the stalls of a two-thread session whose
/// threads wait for each other while a decoder holds one of the cores. Results come back to
/// this thread, which alone writes the cache. Returns when the first miss was seen, if one
/// was.
fn workers(
    count: usize,
    paths: &[PathBuf],
    spec: &BackboneSpec,
    cache: &FeatureCache,
    opts: &ExtractOptions,
    collect: &mut Collector,
) -> Result<Option<Instant>> {
    let shared = Shared {
        paths,
        spec,
        cache,
        opts,
        cfg: collect.cfg,
        expected_dim: collect.expected_dim,
        queue: ChunkQueue::new(paths.len(), opts.batch_size.max(1), count),
        first_compute: std::sync::OnceLock::new(),
        stop: std::sync::atomic::AtomicBool::new(false),
        session_threads: (opts.threads / count).max(1),
    };
    let (tx, rx) = crossbeam_channel::bounded::<Result<Done>>(count);
    let mut fwd = 0f64;
    std::thread::scope(|scope| {
        for _ in 0..count {
            let (tx, shared) = (tx.clone(), &shared);
            scope.spawn(move || worker(shared, tx));
        }
        drop(tx);
        let rx = rx; // owned here: an early return drops it and the workers stop
        for done in rx.iter() {
            let result = done.map(|mut done| {
                collect.record(&mut done.chunk);
                let n = done.chunk.decoded.indices.len();
                if let Some(d) = done.computed.len().checked_div(n) {
                    collect.computed(&done.chunk.decoded.indices, &done.computed, d);
                }
                fwd += done.forward_seconds;
            });
            if let Err(e) = result {
                shared
                    .stop
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok::<(), TlError>(())
    })?;
    if opts.debug_timing {
        crate::progress::say(&format!(
            "extract timing: {count} workers, backbone {fwd:.2}s"
        ));
    }
    Ok(shared.first_compute.into_inner())
}

/// What the workers share.
struct Shared<'a> {
    paths: &'a [PathBuf],
    spec: &'a BackboneSpec,
    cache: &'a FeatureCache,
    opts: &'a ExtractOptions,
    cfg: PreprocessConfig,
    expected_dim: Option<usize>,
    queue: ChunkQueue,
    first_compute: std::sync::OnceLock<Instant>,
    /// Set when the collector stopped on an error.
    stop: std::sync::atomic::AtomicBool,
    session_threads: usize,
}

/// One worker: chunks until there are none left, an error, or the collector stops.
fn worker(shared: &Shared, tx: crossbeam_channel::Sender<Result<Done>>) {
    let mut module: Option<FrozenModel> = None;
    // The lookup and decode helpers run on a rayon pool: this worker's own, of one thread.
    let own = match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(pool) => pool,
        Err(e) => {
            let why = format!("cannot start an extraction worker: {e}");
            let _ = tx.send(Err(TlError::invalid(why)));
            return;
        }
    };
    while let Some(range) = shared.queue.next() {
        if shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let done = work_on(shared, range, &own, &mut module);
        let failed = done.is_err();
        if tx.send(done).is_err() || failed {
            break;
        }
    }
}

/// Read, look up, decode and run one chunk (loading the session at the first miss).
fn work_on(
    shared: &Shared,
    range: std::ops::Range<usize>,
    own: &rayon::ThreadPool,
    module: &mut Option<FrozenModel>,
) -> Result<Done> {
    let (paths, opts, cfg) = (shared.paths, shared.opts, &shared.cfg);
    let (chunk, to_decode) =
        own.install(|| lookup_chunk(range, paths, shared.cache, shared.expected_dim));
    let mut done = Done {
        chunk,
        computed: Vec::new(),
        forward_seconds: 0.0,
    };
    if to_decode.is_empty() {
        return Ok(done);
    }
    shared.first_compute.get_or_init(Instant::now);
    let decoded = own.install(|| decode_into_batch(to_decode, paths, cfg, opts.view));
    let n = decoded.indices.len();
    if n > 0 {
        let m = match module {
            Some(m) => m,
            None => module.insert(shared.spec.load_frozen(
                opts.device,
                shared.session_threads,
                false,
            )?),
        };
        let t = Instant::now();
        done.computed = m.run(&decoded.data, n, cfg, opts.device, opts.amp)?;
        done.forward_seconds = t.elapsed().as_secs_f64();
        check_dim(m, done.computed.len() / n, shared.expected_dim)?;
    }
    done.chunk.decoded = decoded;
    Ok(done)
}

/// Hands out ranges of file indices: whole batches while there are plenty, then smaller ones
/// so that the workers finish together instead of one waiting on the other's last batch.
struct ChunkQueue {
    next: std::sync::Mutex<usize>,
    len: usize,
    batch: usize,
    workers: usize,
}

impl ChunkQueue {
    fn new(len: usize, batch: usize, workers: usize) -> Self {
        ChunkQueue {
            next: std::sync::Mutex::new(0),
            len,
            batch,
            workers: workers.max(1),
        }
    }

    fn next(&self) -> Option<std::ops::Range<usize>> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let left = self.len - *next;
        if left == 0 {
            return None;
        }
        let size = self.batch.min(left.div_ceil(self.workers).max(4)).min(left);
        let range = *next..*next + size;
        *next += size;
        Some(range)
    }
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

#[cfg(test)]
mod tests {
    use super::ChunkQueue;

    #[test]
    fn chunk_queue_hands_out_every_index_once_and_shrinks_at_the_end() {
        for (len, batch, workers) in [(1300, 32, 2), (7, 32, 2), (100, 8, 3), (1, 4, 4), (0, 8, 2)]
        {
            let queue = ChunkQueue::new(len, batch, workers);
            let ranges: Vec<_> = std::iter::from_fn(|| queue.next()).collect();
            let mut expected_start = 0;
            for r in &ranges {
                assert_eq!(
                    r.start, expected_start,
                    "{len}/{batch}/{workers}: {ranges:?}"
                );
                assert!(!r.is_empty() && r.len() <= batch, "{ranges:?}");
                expected_start = r.end;
            }
            assert_eq!(expected_start, len);
        }
        // 1300 in batches of 32 for 2 workers: whole batches, then halving tails.
        let queue = ChunkQueue::new(1300, 32, 2);
        let sizes: Vec<usize> = std::iter::from_fn(|| queue.next())
            .map(|r| r.len())
            .collect();
        assert_eq!(sizes[..39], [32; 39]);
        assert_eq!(sizes[39..], [26, 13, 7, 4, 2]);
    }
}
