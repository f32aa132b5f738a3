//! What extraction is asked to do, and what it returns.
use crate::data::View;
use crate::error::PerImage;
use crate::features::backbone::{BackboneSpec, Engine, Precision};
use crate::runtime::Runtime;
use serde::Serialize;
use tch::Device;

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
    /// Images per engine call in the worker layout ([`crate::runtime::Runtime::engine_batch`]):
    /// a worker decodes a few images and runs them while their pixels are still in cache.
    pub engine_batch: usize,
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
                Engine::Onnx | Engine::OpenVino => rt.onnx_decode_threads,
            },
            device: rt.device,
            progress: rt.progress,
            amp: spec.autocast(amp),
            view,
            threads: rt.threads,
            keep_features: true,
            workers: match spec.engine {
                Engine::Torch => None,
                Engine::Onnx | Engine::OpenVino => rt.onnx_workers,
            },
            engine_batch: rt.engine_batch,
            decode_nice: rt.decode_nice,
            debug_timing: rt.debug_timing,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ExtractStats {
    /// The library that ran the backbone.
    pub engine: Engine,
    /// The precision it ran in.
    pub precision: Precision,
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
    pub features: Vec<PerImage<Vec<f32>>>,
    /// The content key of each input that could be read.
    pub keys: Vec<Option<String>>,
    pub dim: usize,
    pub stats: ExtractStats,
    /// Damaged or misplaced cache entries that were recomputed.
    pub corrupt: Vec<String>,
    /// Set when the cache could not be written (the run went on without caching).
    pub cache_warning: Option<String>,
}
