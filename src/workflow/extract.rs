//! `tl extract`: fill the feature cache for a dataset (or one shard of it) without
//! training — on many machines at once under a scheduler, then `tl train` on one.
use super::train::extraction_line;
use super::SkippedFile;
use crate::data::shard::{Shard, ShardSource};
use crate::data::{Dataset, Sample, View};
use crate::error::{Result, TlError};
use crate::eval::Report;
use crate::features::{self, BackboneSpec, CacheSettings, ExtractOptions, ExtractStats};
use crate::runtime::Runtime;
use crate::util::{human_duration, FilePath};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct ExtractSettings {
    pub data: PathBuf,
    pub backbone: String,
    pub shard: Shard,
    pub shard_source: ShardSource,
    pub batch_size: usize,
    pub amp: bool,
    pub cache: CacheSettings,
    /// List this shard's images; extract nothing.
    pub dry_run: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExtractReport {
    pub data: FilePath,
    pub backbone: String,
    pub shard: Shard,
    pub shard_source: ShardSource,
    /// Images in the whole dataset, and in this shard.
    pub dataset_images: usize,
    pub shard_images: usize,
    pub dry_run: bool,
    /// This shard's files, relative to the dataset folder (with `--dry-run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<String>>,
    pub extraction: Option<ExtractStats>,
    pub cache_dir: Option<FilePath>,
    pub dim: usize,
    pub skipped: Vec<SkippedFile>,
    pub damaged_cache_entries: Vec<String>,
    pub warnings: Vec<String>,
}

impl Report for ExtractReport {
    /// One line per shard: `shard 1/4 (slurm): 325 of 1300 images: 0 cached, 325 computed …`
    fn render_text(&self) -> String {
        let head = format!(
            "shard {}{}: {} of {} images",
            self.shard,
            match self.shard_source {
                ShardSource::Whole | ShardSource::Flag => String::new(),
                ShardSource::Slurm => " (slurm)".into(),
                ShardSource::Kubernetes => " (kubernetes)".into(),
            },
            self.shard_images,
            self.dataset_images
        );
        let Some(st) = &self.extraction else {
            return format!("{head} (dry run: nothing extracted)\n");
        };
        format!(
            "{head}: {} cached, {} computed{}, {} unreadable in {}{}\n",
            st.cached,
            st.computed,
            if st.computed > 0 {
                format!(
                    " ({:.1} img/s, {})",
                    st.images_per_second,
                    st.engine.label_with(st.precision)
                )
            } else {
                String::new()
            },
            st.failed,
            human_duration(st.seconds),
            match &self.cache_dir {
                Some(d) => format!(" → {}", d.0.display()),
                None => " (no cache: nothing kept)".into(),
            }
        )
    }

    fn notes(&self) -> Vec<String> {
        // extract writes no report.json: the list is in its --json output.
        let mut notes: Vec<String> = super::skipped_notes(&self.skipped, 0)
            .into_iter()
            .map(|l| l.replace("listed in report.json", "listed by --json"))
            .collect();
        notes.extend(
            self.damaged_cache_entries
                .iter()
                .map(|c| format!("warning: damaged cache entry recomputed: {c}")),
        );
        notes.extend(crate::eval::warning_lines(&self.warnings));
        notes
    }
}

/// A sample's path relative to the dataset's root (what decides its shard).
fn relative<'a>(dataset: &Dataset, sample: &'a Sample) -> &'a Path {
    sample
        .path
        .strip_prefix(&dataset.root)
        .unwrap_or(&sample.path)
}

/// This shard's samples, in the dataset's order.
fn shard_samples(dataset: &Dataset, shard: Shard) -> Vec<Sample> {
    dataset
        .all()
        .into_iter()
        .filter(|s| shard.holds(relative(dataset, s)))
        .collect()
}

pub fn extract(rt: &Runtime, s: &ExtractSettings) -> Result<ExtractReport> {
    if s.batch_size == 0 {
        return Err(TlError::invalid("the batch size must be at least 1"));
    }
    if !s.cache.enabled && !s.dry_run {
        return Err(TlError::invalid(
            "tl extract fills the feature cache; with --no-cache it would compute features and keep none",
        ));
    }
    let spec = BackboneSpec::resolve(&s.backbone, &rt.backbones)?;
    let dataset = Dataset::open(&s.data, None)?;
    let mine = shard_samples(&dataset, s.shard);
    let mut report = ExtractReport {
        data: FilePath(s.data.clone()),
        backbone: spec.name.clone(),
        shard: s.shard,
        shard_source: s.shard_source,
        dataset_images: dataset.train.len() + dataset.val.len(),
        shard_images: mine.len(),
        dry_run: s.dry_run,
        files: None,
        extraction: None,
        cache_dir: None,
        dim: 0,
        skipped: Vec::new(),
        damaged_cache_entries: Vec::new(),
        warnings: spec.weights_warning().into_iter().collect(),
    };
    if s.dry_run {
        let files = mine.iter().map(|s| relative(&dataset, s).to_string_lossy());
        report.files = Some(files.map(|f| f.into_owned()).collect());
        return Ok(report);
    }
    let spec = spec.for_engine(rt.engine, rt.precision, rt.device)?;
    let cache = s.cache.open_view(&spec, View::Center)?;
    let mut opts = ExtractOptions::new(rt, &spec, s.batch_size, s.amp, View::Center);
    opts.keep_features = false;
    let paths: Vec<PathBuf> = mine.iter().map(|s| s.path.clone()).collect();
    let ex = features::extract(&paths, &spec, &cache, &opts)?;
    if rt.progress {
        crate::progress::say(&extraction_line(&ex));
    }
    report.skipped = super::gather(&mine, &ex.features).skipped;
    // `tl extract` exists to fill the cache: one that could not be written is a failure
    // (a Slurm task must not be marked COMPLETED with nothing kept).
    if let Some(why) = &ex.cache_warning {
        return Err(TlError::invalid(format!(
            "{why}; nothing was kept, so this extraction did not do its job"
        )));
    }
    report.damaged_cache_entries = ex.corrupt;
    report.cache_dir = cache.dir().map(|d| FilePath(d.to_path_buf()));
    report.dim = ex.dim;
    report.extraction = Some(ex.stats);
    Ok(report)
}
