//! The ONNX Runtime layout of extraction: worker threads, each with its own session, take
//! chunks of files in turn; the calling thread collects their results and alone writes the
//! cache.
use super::batch::{check_dim, decode_into, lookup_chunk, Chunk, DecodedBatch};
use super::options::ExtractOptions;
use crate::data::preprocess::PreprocessConfig;
use crate::error::{Result, TlError};
use crate::features::backbone::BackboneSpec;
use crate::features::cache::FeatureCache;
use crate::features::engine::FrozenModel;
use std::path::PathBuf;
use std::time::Instant;

/// The files and how to extract them.
pub(super) struct Job<'a> {
    pub paths: &'a [PathBuf],
    pub spec: &'a BackboneSpec,
    pub cache: &'a FeatureCache,
    pub opts: &'a ExtractOptions,
    pub cfg: PreprocessConfig,
    pub expected_dim: Option<usize>,
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
pub(super) fn workers(
    count: usize,
    job: Job,
    on_done: &mut dyn FnMut(&mut Chunk, &[f32]),
) -> Result<Option<Instant>> {
    let Job {
        paths,
        spec,
        cache,
        opts,
        cfg,
        expected_dim,
    } = job;
    let shared = Shared {
        paths,
        spec,
        cache,
        opts,
        cfg,
        expected_dim,
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
                on_done(&mut done.chunk, &done.computed);
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
    let (paths, opts) = (shared.paths, shared.opts);
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
    let m = match module {
        Some(m) => m,
        None => module.insert(shared.spec.load_frozen(
            opts.device,
            shared.session_threads,
            false,
        )?),
    };
    // The chunk goes through the engine a few images at a time, each part decoded just
    // before it runs: see `ExtractOptions::engine_batch`.
    let mut scratch = Vec::new();
    for part in to_decode.chunks(opts.engine_batch.max(1)) {
        let (decoded, computed, seconds) = decode_and_run(shared, part, own, m, &mut scratch)?;
        let d = &mut done.chunk.decoded;
        d.indices.extend(decoded.indices);
        d.failures.extend(decoded.failures);
        done.computed.extend(computed);
        done.forward_seconds += seconds;
    }
    Ok(done)
}

/// Decode `part` and run the backbone on what decoded: the kept images, their features
/// (`indices` order) and the seconds spent in the backbone.
fn decode_and_run(
    shared: &Shared,
    part: &[(usize, Vec<u8>)],
    own: &rayon::ThreadPool,
    m: &mut FrozenModel,
    scratch: &mut Vec<f32>,
) -> Result<(DecodedBatch, Vec<f32>, f64)> {
    let (paths, opts, cfg) = (shared.paths, shared.opts, &shared.cfg);
    let (items, numel) = (part.len(), cfg.numel());
    // OpenVINO: decoded straight into its input tensor (no copy of the batch).
    let (decoded, in_tensor) = match m.input_buffer(items, cfg) {
        Some(buf) => {
            let buf = buf?;
            let decoded = own.install(|| decode_into(part, paths, cfg, opts.view, buf));
            // A failure leaves a shorter batch: run that one by copy.
            let whole = decoded.indices.len() == items;
            if !whole {
                scratch.clear();
                scratch.extend_from_slice(&buf[..decoded.indices.len() * numel]);
            }
            (decoded, whole)
        }
        None => {
            scratch.resize(items * numel, 0.0);
            let decoded = own.install(|| decode_into(part, paths, cfg, opts.view, scratch));
            (decoded, false)
        }
    };
    let n = decoded.indices.len();
    if n == 0 {
        return Ok((decoded, Vec::new(), 0.0));
    }
    let t = Instant::now();
    let computed = if in_tensor {
        m.run_input(n)?
    } else {
        m.run(&scratch[..n * numel], n, cfg, opts.device, opts.amp)?
    };
    let seconds = t.elapsed().as_secs_f64();
    check_dim(m, computed.len() / n, shared.expected_dim)?;
    Ok((decoded, computed, seconds))
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
