//! Feature extraction: each file is read once, hashed, looked up in the cache and — on a
//! miss — decoded from the same bytes, in parallel, while the backbone runs on the previous
//! batch.
//!
//! A producer thread walks the files a batch at a time on a rayon pool and stays at most two
//! batches ahead (a bounded channel), so memory does not grow with the dataset; libtorch runs
//! on the calling thread. The backbone is loaded as soon as the first miss is seen (while
//! that batch decodes), and never when everything is cached. A cache that cannot be written
//! costs a warning, not the extraction.
use super::backbone::BackboneSpec;
use super::cache::FeatureCache;
use super::engine::FrozenModel;
use crate::data::preprocess::PreprocessConfig;
use crate::error::{Result, SkipReason, TlError};
use crate::progress;
use batch::{check_dim, decode_into_batch, decode_pool, lookup_chunk, Chunk};
pub use batch::{decode_files, DecodedBatch};
pub use options::{ExtractOptions, ExtractStats, Extracted};
use std::path::PathBuf;
use std::time::Instant;
use workers::workers;

mod batch;
mod options;
mod workers;

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
            features: vec![Err(SkipReason::Preprocess("not computed".into())); paths.len()],
            keys: vec![None; paths.len()],
            dim: expected_dim.unwrap_or(0),
            stats: ExtractStats {
                engine: spec.engine,
                precision: spec.precision,
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
        Some(n) => {
            let job = workers::Job {
                paths,
                spec,
                cache,
                opts,
                cfg: collect.cfg,
                expected_dim,
            };
            workers(n, job, &mut |chunk, computed| {
                collect.record(chunk);
                let n = chunk.decoded.indices.len();
                if let Some(d) = computed.len().checked_div(n) {
                    collect.computed(&chunk.decoded.indices, computed, d);
                }
            })?
        }
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
