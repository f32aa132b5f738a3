//! Where and how `tl` computes: the device, CPU threads, decoder threads, the backbones
//! folder and whether progress bars are drawn. Made once from plain settings (the CLI's
//! global flags) and handed to every stage.
use crate::backbone_store::BackboneStore;
use crate::device::DeviceChoice;
use crate::error::Result;
use std::path::PathBuf;
use tch::Device;

/// Which library runs the frozen feature extractor (`--engine`). Training, fine-tuning,
/// dreams, attacks and CUDA always use libtorch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// On the CPU, for a backbone with an ONNX export: OpenVINO when the precision is bf16
    /// (see [`PrecisionChoice`]) and it loads, else ONNX Runtime when it loads; else libtorch.
    #[default]
    Auto,
    Torch,
    Onnx,
    #[serde(rename = "openvino")]
    OpenVino,
}

impl EngineChoice {
    /// The `--engine` value.
    pub fn flag(self) -> &'static str {
        match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Torch => "torch",
            EngineChoice::Onnx => "onnx",
            EngineChoice::OpenVino => "openvino",
        }
    }
}

/// The precision of frozen feature extraction (`--precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionChoice {
    /// bf16 on a CPU with native bf16 (avx512_bf16 or AMX) where OpenVINO runs the backbone;
    /// fp32 otherwise (and on CUDA).
    #[default]
    Auto,
    Fp32,
    /// OpenVINO in bf16 on the CPU; autocast on CUDA.
    Bf16,
}

/// Settings for the parts of the library that run without a [`Runtime`] at hand (the
/// feature cache's default folder and flush limits, where ONNX Runtime is): the binary reads
/// them once from the environment (`TL_CACHE_DIR`, `TL_CACHE_SEGMENT_ENTRIES`,
/// `TL_CACHE_SEGMENT_SECONDS`, `TL_ONNXRUNTIME`) and sets them before anything runs. A
/// program using the library may set them; unset, the defaults hold.
#[derive(Clone, Debug, Default)]
pub struct ProcessSettings {
    /// The feature cache's default folder (None: the user's cache folder, `~/.cache/tl`).
    pub cache_dir: Option<PathBuf>,
    /// Entries per published cache segment (None: 4096).
    pub cache_segment_entries: Option<usize>,
    /// The longest computed entries wait before they are published (None: 15 s).
    pub cache_segment_seconds: Option<u64>,
    /// The ONNX Runtime library (None: the one `tl` was built with).
    pub onnxruntime: Option<PathBuf>,
    /// The OpenVINO C library, `libopenvino_c.so` (None: the one `tl` was built with).
    pub openvino: Option<PathBuf>,
    /// The libjpeg(-turbo) library JPEGs are decoded with (None: Pillow's, found when `tl`
    /// was built).
    pub libjpeg: Option<PathBuf>,
    /// How large JPEGs are decoded (`--decode`).
    pub decode: DecodeMode,
    /// Leave 1/8-scale JPEGs to libjpeg instead of [`crate::data::jpeg_eighth`]
    /// (`TL_JPEG_EIGHTH=off`; the same pixels, for benchmarks).
    pub libjpeg_only: bool,
}

/// How JPEGs are decoded before the resize (`--decode`, `TL_DECODE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeMode {
    /// Every pixel, as `Image.open(f).convert('RGB')`.
    Full,
    /// Scaled by 1/2, 1/4 or 1/8 in the DCT while the image stays at least the resize on
    /// both sides, as Pillow's `Image.draft('RGB', (resize, resize))`: 5-10x less work on
    /// phone photos; images under twice the resize are decoded in full either way.
    #[default]
    Draft,
}

impl DecodeMode {
    /// What files written before `--decode` existed used.
    pub fn before_draft() -> DecodeMode {
        DecodeMode::Full
    }

    pub fn label(self) -> &'static str {
        match self {
            DecodeMode::Full => "full",
            DecodeMode::Draft => "draft",
        }
    }
}

static PROCESS: std::sync::OnceLock<ProcessSettings> = std::sync::OnceLock::new();

/// Set the process settings; the first call wins (false: they were set already).
pub fn set_process_settings(settings: ProcessSettings) -> bool {
    PROCESS.set(settings).is_ok()
}

/// The process settings ([`ProcessSettings::default`] unless set).
pub fn process_settings() -> &'static ProcessSettings {
    PROCESS.get_or_init(ProcessSettings::default)
}

#[derive(Clone, Debug)]
pub struct RuntimeSettings {
    pub device: DeviceChoice,
    pub engine: EngineChoice,
    pub precision: PrecisionChoice,
    /// CPU threads for libtorch and decoding (None: all cores).
    pub threads: Option<usize>,
    /// Decoder threads (None: half the threads on CPU, all of them with CUDA).
    pub decode_threads: Option<usize>,
    pub backbones: BackboneStore,
    pub progress: bool,
    /// ONNX Runtime extraction workers (`TL_EXTRACT_WORKERS`; None: the default layout;
    /// Some(0): one session fed by decoder threads). For benchmarks.
    pub extract_workers: Option<usize>,
    /// Images per engine call in the worker layout (`TL_ENGINE_BATCH`; None:
    /// [`DEFAULT_ENGINE_BATCH`]). For benchmarks.
    pub engine_batch: Option<usize>,
    /// Nice level of the decoder threads (`TL_DECODE_NICE`; None: 5 on CPU, 0 with CUDA).
    pub decode_nice: Option<i32>,
    /// Report where extraction's time goes (`TL_DEBUG_TIMING`).
    pub debug_timing: bool,
}

/// Images per engine call in the worker layout. A worker decodes this many images and runs
/// them at once instead of a whole batch of 32: the activations of 4 images stay in the
/// caches, those of 32 do not (MobileNetV2 bf16: 96 MB of them at 32). Two one-thread
/// workers on 2 cores (Zen 5, backbone only, medians of 5): OpenVINO bf16 751 img/s at 4
/// against 514-556 at 32, OpenVINO f32 353 vs 305, ONNX Runtime 346 vs 264; 1 and 2 are
/// slower than 4 again (633, 714). BENCHMARKS.md §22c.
pub const DEFAULT_ENGINE_BATCH: usize = 4;

#[derive(Clone, Debug)]
pub struct Runtime {
    pub device: Device,
    pub engine: EngineChoice,
    pub precision: PrecisionChoice,
    pub threads: usize,
    pub decode_threads: usize,
    /// Decoder threads beside ONNX Runtime, whose idle threads sleep instead of spinning:
    /// as many as the compute threads (cold extraction of cats_dogs 77 img/s vs 74 with half).
    pub onnx_decode_threads: usize,
    /// Extraction workers on ONNX Runtime, each reading and decoding its own batches and
    /// running them on its own session of `threads / workers` compute threads: one per
    /// thread up to 4 (each session holds its own weights and activations). `None`: one
    /// session fed by decoder threads, the layout when `--decode-threads` is set.
    /// `TL_EXTRACT_WORKERS` overrides it (0: `None`; for benchmarks). Cold extraction of cats_dogs on 2 cores: 86.7 img/s with 2 workers
    /// against 83.8 with one session and 2 decoders (BENCHMARKS.md §5).
    pub onnx_workers: Option<usize>,
    /// Where backbones are looked up, and exported on first use.
    pub backbones: BackboneStore,
    pub progress: bool,
    /// [`RuntimeSettings::engine_batch`], resolved.
    pub engine_batch: usize,
    /// [`RuntimeSettings::decode_nice`]
    pub decode_nice: Option<i32>,
    /// [`RuntimeSettings::debug_timing`]
    pub debug_timing: bool,
}

impl Runtime {
    pub fn new(s: &RuntimeSettings) -> Result<Runtime> {
        let threads = s
            .threads
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .max(1);
        tch::set_num_threads(threads as i32);
        let device = s.device.resolve()?;
        // On CPU the backbone needs the cores; one low-priority decoder per two cores keeps
        // up with it (measured in BENCHMARKS.md). On a GPU, decoding is the bottleneck.
        let default_decoders = if device == Device::Cpu {
            (threads / 2).max(1)
        } else {
            threads
        };
        Ok(Runtime {
            device,
            engine: s.engine,
            precision: s.precision,
            threads,
            decode_threads: s.decode_threads.unwrap_or(default_decoders).max(1),
            onnx_decode_threads: s.decode_threads.unwrap_or(threads).max(1),
            onnx_workers: match s.extract_workers {
                Some(0) => None,
                Some(n) => Some(n.min(threads)),
                None if s.decode_threads.is_some() => None,
                None => Some(threads.min(4)),
            },
            backbones: s.backbones.clone(),
            progress: s.progress,
            engine_batch: s.engine_batch.unwrap_or(DEFAULT_ENGINE_BATCH).max(1),
            decode_nice: s.decode_nice,
            debug_timing: s.debug_timing,
        })
    }

    /// A CPU runtime for library users and tests: all cores, no progress bars, backbones
    /// from one folder (nothing exported on first use).
    pub fn cpu(backbones: impl Into<PathBuf>) -> Result<Runtime> {
        Runtime::new(&RuntimeSettings {
            device: DeviceChoice::Cpu,
            engine: EngineChoice::Auto,
            precision: PrecisionChoice::Auto,
            threads: None,
            decode_threads: None,
            backbones: BackboneStore::folder(backbones),
            progress: false,
            extract_workers: None,
            engine_batch: None,
            decode_nice: None,
            debug_timing: false,
        })
    }
}

/// Bytes of memory the kernel says are available now (Linux), to refuse work that cannot fit
/// before libtorch tries to allocate it.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Flush denormal floats to zero (x86 FTZ and DAZ) on this thread and on every thread it
/// starts later, libtorch's compute threads included; call it first thing. Fine-tuning with a
/// small learning rate otherwise fills Adam's moment estimates with denormals, which x86 CPUs
/// process many times slower (PyTorch's `torch.set_flush_denormal(True)`).
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    #[allow(deprecated)]
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}
