//! Stage 2: from preprocessed images to feature vectors. `backbone` finds and loads the
//! frozen TorchScript network, `cache` stores one checksummed entry per image and backbone
//! (packed into segment files by `pack`; `loose` reads the first one-file-per-entry layout),
//! `extract` drives both over a list of files. `rows` is the one interface training reads
//! rows through; `cut` is a backbone cut into a frozen trunk and a trainable top.
pub mod backbone;
pub mod cache;
pub mod cache_admin;
pub mod cut;
pub mod engine;
pub mod extract;
pub mod loose;
pub mod onnx;
pub mod openvino;
pub mod pack;
pub mod rows;
pub mod sidecar;

pub use crate::data::View;
pub use backbone::{BackboneSpec, Engine, Precision};
pub use cache::FeatureCache;
pub use cut::{BackboneCut, FeatureNet, TrainableTop, Unfreeze};
pub use engine::FrozenModel;
pub use extract::{extract, ExtractOptions, ExtractStats, Extracted};

/// The cache for `--cache-dir`/`--no-cache` settings, for one backbone and its preprocessing.
#[derive(Clone, Debug, Default)]
pub struct CacheSettings {
    /// None: `$TL_CACHE_DIR` or the user's cache folder.
    pub dir: Option<std::path::PathBuf>,
    pub enabled: bool,
}

impl CacheSettings {
    pub fn open(&self, spec: &BackboneSpec) -> crate::Result<FeatureCache> {
        self.open_view(spec, View::Center)
    }

    /// The cache of one view (see [`View`]) of the images.
    pub fn open_view(&self, spec: &BackboneSpec, view: View) -> crate::Result<FeatureCache> {
        if !self.enabled {
            return Ok(FeatureCache::disabled());
        }
        let root = self.dir.clone().unwrap_or_else(cache::default_root);
        // bf16 features never mix with fp32 ones: they get their own namespace.
        let tag = match spec.precision {
            Precision::Fp32 => view.cache_tag(),
            Precision::Bf16 => match view.cache_tag() {
                plain if plain.is_empty() => "bf16".to_string(),
                tag => format!("{tag}-bf16"),
            },
        };
        FeatureCache::open(
            &root,
            &spec.verified_features_hash()?,
            &spec.preprocess(),
            &tag,
            Some(&spec.features_path),
        )
    }
}
