//! `tl tune`: `tl train`'s settings chosen by cross-validation on cached features, then the
//! run trained with them; and `tl cv`: the K-fold estimate of given settings.
//!
//! Only the training images take part (the validation side stays untouched until the final
//! run reports on it). Folds are stratified and keep near-duplicate groups whole
//! (`cv::make_folds`). The search runs in tiers of rising cost, each started only when
//! its estimated time fits the budget left:
//! 1. head settings on the plain features ([`search::head_grid`]: penalty, learning rate,
//!    label smoothing, linear or hidden, balancing), by successive halving — every trial on
//!    half the folds, the best third (and the defaults) on all;
//! 2. the two best of those with `--views N` (the augmented views extracted and cached once);
//! 3. the best with `--finetune 1` (the trunk's outputs cached once).
//!
//! The score is balanced accuracy on each held-out fold (the mean recall over classes, so
//! a rare class counts); the pick is the cheapest trial within one standard error of the
//! best ([`search::pick`]). Same seed → same folds, same trials, same choice.
pub(crate) mod cv;
mod report;
pub mod search;

use crate::error::{Result, TlError};
use crate::features::cut::BackboneCut;
use crate::features::{BackboneSpec, Unfreeze};
use crate::runtime::Runtime;
use crate::workflow::finetune::FinetuneSettings;
use crate::workflow::train::tuning::Tuning;
use crate::workflow::train::{self, inputs, prepare_dataset, TrainReport, TrainSettings};
use cv::{Folds, TierInputs};
pub use report::{CvReport, FoldAssignment};
use search::{Scored, Trial};
use std::time::Instant;

/// `tl tune`'s settings: the final run's (`train`; its views and fine-tuning are chosen
/// here), the folds, the time budget and the costly options to consider.
#[derive(Clone, Debug)]
pub struct TuneSettings {
    pub train: TrainSettings,
    pub folds: usize,
    /// Seconds for the search and the final run together.
    pub budget_seconds: f64,
    /// Views per training image to try (1: none).
    pub views: usize,
    /// How to fine-tune the backbone's last block when trying it (its `unfreeze` is always
    /// the last block); None: not tried.
    pub finetune: Option<FinetuneSettings>,
    /// Cosine similarity from which two training images share a fold.
    pub near_duplicate: f64,
}

/// How a fine-tuned trial fine-tunes (`tl train`'s defaults when not tried).
fn finetune_how(s: &TuneSettings) -> FinetuneSettings {
    s.finetune.clone().unwrap_or_default()
}

/// Share of the budget kept for the final run.
const FINAL_RUN_SHARE: f64 = 0.15;

/// Seconds per image assumed for a cold extraction when none was measured (MobileNetV2 on
/// these 2-core CPUs: 100-250 img/s).
const ASSUMED_IMAGE_SECONDS: f64 = 0.01;

/// Images per second assumed for fine-tuning the last block on cached trunk outputs
/// (BENCHMARKS.md §9: 229-366 on MobileNetV2).
const ASSUMED_FINETUNE_RATE: f64 = 200.0;

impl TuneSettings {
    pub fn validate(&self) -> Result<()> {
        check_folds(self.folds, self.near_duplicate)?;
        if !(self.budget_seconds.is_finite() && self.budget_seconds > 0.0) {
            return Err(TlError::invalid("the budget must be a positive duration"));
        }
        if self.train.views != 1 || self.train.finetune.is_some() || self.train.stream {
            return Err(TlError::invalid(
                "tl tune chooses --views and --finetune itself (see --views-to-try, --no-finetune) and holds features in memory (no --stream)",
            ));
        }
        if self.views == 0 || self.views > 64 {
            return Err(TlError::invalid("--views-to-try must be between 1 and 64"));
        }
        self.train.validate()
    }
}

fn check_folds(folds: usize, near_duplicate: f64) -> Result<()> {
    if !(2..=20).contains(&folds) {
        return Err(TlError::invalid(format!(
            "--folds {folds} must be between 2 and 20"
        )));
    }
    if !(near_duplicate > 0.0 && near_duplicate <= 1.0) {
        return Err(TlError::invalid(format!(
            "--near-duplicate {near_duplicate} must be in (0, 1]"
        )));
    }
    Ok(())
}

/// The state of a search: the trials so far, the folds, the clock.
struct Search<'a> {
    rt: &'a Runtime,
    s: &'a TuneSettings,
    started: Instant,
    folds: Folds,
    scored: Vec<Scored>,
    notes: Vec<String>,
    /// Mean seconds of one fold of a head trial on the plain features.
    fold_seconds: f64,
}

impl Search<'_> {
    /// Seconds left for the search (the final run's share kept aside).
    fn left(&self) -> f64 {
        self.s.budget_seconds * (1.0 - FINAL_RUN_SHARE) - self.started.elapsed().as_secs_f64()
    }

    /// Run trial `i`'s folds up to `upto`; false when the budget ran out first.
    fn run(&mut self, tier: &TierInputs, i: usize, upto: usize) -> Result<bool> {
        while self.scored[i].scores.len() < upto {
            if self.left() <= 0.0 {
                return Ok(false);
            }
            let fold = self.scored[i].scores.len();
            let t = Instant::now();
            let trial = self.scored[i].trial.clone();
            let (score, loss) = cv::run_fold(tier, Some(&trial), &self.folds, fold)?;
            let entry = &mut self.scored[i];
            entry.scores.push(score);
            entry.losses.push(loss);
            entry.seconds += t.elapsed().as_secs_f64();
        }
        Ok(true)
    }

    /// Add `trial` and run it on every fold; false when the budget ran out first.
    fn add_and_run(&mut self, tier: &TierInputs, trial: Trial) -> Result<bool> {
        self.scored.push(Scored::new(trial));
        let i = self.scored.len() - 1;
        let k = self.folds.k;
        self.run(tier, i, k)
    }

    /// The best trial so far that ran every fold (by mean score).
    fn best(&self, n: usize) -> Vec<Trial> {
        let mut full: Vec<&Scored> = self
            .scored
            .iter()
            .filter(|x| x.scores.len() == self.folds.k)
            .collect();
        full.sort_by(|a, b| b.mean().total_cmp(&a.mean()));
        full.into_iter().take(n).map(|x| x.trial.clone()).collect()
    }
}

/// Tier 1: the head grid by successive halving over the folds.
fn head_tier(search: &mut Search, tier: &TierInputs, imbalanced: bool) -> Result<()> {
    search.scored = search::head_grid(imbalanced)
        .into_iter()
        .map(Scored::new)
        .collect();
    let mut alive: Vec<usize> = (0..search.scored.len()).collect();
    let rungs = search::rungs(search.folds.k);
    for (r, &upto) in rungs.iter().enumerate() {
        let t = Instant::now();
        for &i in &alive {
            if !search.run(tier, i, upto)? {
                search.notes.push(format!(
                    "the budget ran out during the head search ({} trials on {upto} folds)",
                    alive.len()
                ));
                return Ok(());
            }
        }
        crate::progress::say(&format!(
            "tune: {} head settings on {upto} of {} folds ({:.1} s)",
            alive.len(),
            search.folds.k,
            t.elapsed().as_secs_f64()
        ));
        if r + 1 < rungs.len() {
            alive = search::survivors(&search.scored, &alive, 3);
        }
    }
    let folds_run: usize = search.scored.iter().map(|x| x.scores.len()).sum();
    let seconds: f64 = search.scored.iter().map(|x| x.seconds).sum();
    search.fold_seconds = seconds / folds_run.max(1) as f64;
    Ok(())
}

/// Whether a tier estimated at `seconds` fits; a note when it does not.
fn fits(search: &mut Search, what: &str, seconds: f64) -> bool {
    let left = search.left();
    if seconds <= left {
        return true;
    }
    search.notes.push(format!(
        "{what} not tried: estimated {seconds:.0} s, {:.0} s of the budget left",
        left.max(0.0)
    ));
    false
}

/// Seconds per image of a cold extraction, as measured on the plain view when it computed
/// any image.
fn image_seconds(inputs: &train::Inputs) -> f64 {
    let st = &inputs.views.plain.stats;
    if st.computed > 0 {
        st.seconds / st.computed as f64
    } else {
        ASSUMED_IMAGE_SECONDS
    }
}

/// Tier 2: the two best head settings with the augmented views.
fn views_tier(search: &mut Search, tier: &TierInputs, ctx: &mut Extraction) -> Result<()> {
    let s = search.s;
    if s.views <= 1 {
        return Ok(());
    }
    let finalists = search.best(2);
    let n = tier.inputs.features.train.y.len();
    let extract = (s.views - 1) as f64 * n as f64 * image_seconds(tier.inputs);
    let folds = (finalists.len() * search.folds.k) as f64;
    let estimate = extract + folds * search.fold_seconds * s.views as f64;
    if finalists.is_empty() || !fits(search, &format!("--views {}", s.views), estimate) {
        return Ok(());
    }
    let mut with = s.train.clone();
    with.views = s.views;
    let extracted = ctx.inputs(&with, None)?;
    let tier = TierInputs {
        row_image: cv::row_images(&extracted.features)?,
        inputs: &extracted,
        ..*tier
    };
    let t = Instant::now();
    let n = finalists.len();
    for trial in finalists {
        let trial = Trial {
            views: s.views,
            ..trial
        };
        if !search.add_and_run(&tier, trial)? {
            search
                .notes
                .push("the budget ran out during the --views trials".into());
            return Ok(());
        }
    }
    crate::progress::say(&format!(
        "tune: {n} head settings with --views {} on {} folds ({:.1} s)",
        s.views,
        search.folds.k,
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Tier 3: the best head settings with the backbone's last block fine-tuned.
fn finetune_tier(search: &mut Search, tier: &TierInputs, ctx: &mut Extraction) -> Result<()> {
    let s = search.s;
    let Some(how) = &s.finetune else {
        return Ok(());
    };
    let Some(best) = search.best(1).pop() else {
        return Ok(());
    };
    let cut = match BackboneCut::resolve(tier.spec, Unfreeze::Blocks(1)) {
        Ok(cut) if cut.trunk.is_some() => cut,
        Ok(_) => return Ok(()),
        Err(e) => {
            search.notes.push(format!("--finetune 1 not tried: {e}"));
            return Ok(());
        }
    };
    let trial = Trial {
        views: 1,
        finetune: true,
        ..best
    };
    let n = tier.inputs.features.train.y.len() as f64;
    let k = search.folds.k as f64;
    let all_images = n + tier.inputs.features.val.y.len() as f64;
    let epochs = how.epochs as f64;
    let estimate = all_images * image_seconds(tier.inputs)
        + k * epochs * n * (k - 1.0) / k / ASSUMED_FINETUNE_RATE;
    if !fits(search, "--finetune 1", estimate) {
        return Ok(());
    }
    let with = cv::settings_for(&s.train, &trial, 1, how);
    let extracted = ctx.inputs(&with, Some(&cut))?;
    let tier = TierInputs {
        row_image: cv::row_images(&extracted.features)?,
        inputs: &extracted,
        cut: Some(&cut),
        ..*tier
    };
    let t = Instant::now();
    if search.add_and_run(&tier, trial)? {
        crate::progress::say(&format!(
            "tune: the best head settings with --finetune 1 on {} folds ({:.1} s)",
            search.folds.k,
            t.elapsed().as_secs_f64()
        ));
    } else {
        search
            .notes
            .push("the budget ran out during the --finetune 1 trial".into());
    }
    Ok(())
}

/// Extraction of the dataset's features for a tier (cached, so the final run reads them).
struct Extraction<'a> {
    rt: &'a Runtime,
    spec: &'a BackboneSpec,
    dataset: &'a crate::data::Dataset,
    warnings: Vec<String>,
}

impl Extraction<'_> {
    fn inputs(&mut self, s: &TrainSettings, cut: Option<&BackboneCut>) -> Result<train::Inputs> {
        inputs(self.rt, s, self.spec, cut, self.dataset, &mut self.warnings)
    }
}

/// The readable training images' features, their folds, and whether their classes are
/// imbalanced.
fn plain_features(
    ctx: &mut Extraction,
    s: &TrainSettings,
    folds: usize,
    near_duplicate: f64,
) -> Result<(train::Inputs, Folds, bool)> {
    let plain = ctx.inputs(s, None)?;
    let paths: Vec<std::path::PathBuf> = ctx.dataset.train.iter().map(|x| x.path.clone()).collect();
    let keys = cv::train_keys(&plain, &paths)?;
    let folds = cv::make_folds(&plain.features, &keys, folds, s.seed, near_duplicate)?;
    let imbalanced = cv::imbalanced(&plain.features, ctx.dataset.classes.len());
    Ok((plain, folds, imbalanced))
}

/// The backbone and the dataset with its validation side, as `tl train` opens them, and
/// the warnings so far.
fn open(rt: &Runtime, s: &TrainSettings) -> Result<(BackboneSpec, train::Prepared, Vec<String>)> {
    let spec = BackboneSpec::resolve(&s.backbone, &rt.backbones)?;
    let mut warnings = Vec::new();
    let prepared = prepare_dataset(s, &mut warnings)?;
    Ok((spec, prepared, warnings))
}

/// `rt` without progress bars: the heads of a cross-validation train by the dozen.
fn quiet(rt: &Runtime) -> Runtime {
    Runtime {
        progress: false,
        ..rt.clone()
    }
}

pub fn tune(rt: &Runtime, s: &TuneSettings) -> Result<TrainReport> {
    s.validate()?;
    let started = Instant::now();
    let quiet = quiet(rt);
    let (spec, prepared, warnings) = open(rt, &s.train)?;
    let mut ctx = Extraction {
        rt,
        spec: &spec,
        dataset: &prepared.dataset,
        warnings,
    };
    let (plain, folds, imbalanced) = plain_features(&mut ctx, &s.train, s.folds, s.near_duplicate)?;
    let how = finetune_how(s);
    let mut search = Search {
        rt: &quiet,
        s,
        started,
        folds,
        scored: Vec::new(),
        notes: Vec::new(),
        fold_seconds: 0.0,
    };
    let tier = TierInputs {
        rt: search.rt,
        base: &s.train,
        spec: &spec,
        inputs: &plain,
        row_image: cv::row_images(&plain.features)?,
        cut: None,
        classes: &prepared.dataset.classes,
        finetune: &how,
    };
    head_tier(&mut search, &tier, imbalanced)?;
    views_tier(&mut search, &tier, &mut ctx)?;
    finetune_tier(&mut search, &tier, &mut ctx)?;
    let chosen = search::pick(&search.scored, s.folds).unwrap_or_else(|| {
        search
            .notes
            .push("no trial ran every fold within the budget: the defaults were kept".into());
        0
    });
    let trial = search.scored[chosen].trial.clone();
    let images = plain.features.train.y.len();
    drop(tier);
    drop(plain);
    let mut settings = cv::settings_for(&s.train, &trial, images * trial.views, &how);
    settings.tuning = Some(Tuning {
        folds: s.folds,
        grouped_images: search.folds.grouped_images,
        trials: std::mem::take(&mut search.scored),
        chosen,
        budget_seconds: s.budget_seconds,
        search_seconds: started.elapsed().as_secs_f64(),
        notes: std::mem::take(&mut search.notes),
    });
    let mut report = train::train(rt, &settings)?;
    for w in ctx.warnings {
        if !report.warnings.contains(&w) {
            report.warnings.push(w);
        }
    }
    Ok(report)
}

/// `tl cv`'s settings: `tl train`'s, and the folds.
#[derive(Clone, Debug)]
pub struct CvSettings {
    pub train: TrainSettings,
    pub folds: usize,
    /// Cosine similarity from which two training images share a fold.
    pub near_duplicate: f64,
}

/// The K-fold estimate of `s.train` on its training images.
pub fn cross_validate(rt: &Runtime, s: &CvSettings) -> Result<CvReport> {
    check_folds(s.folds, s.near_duplicate)?;
    s.train.validate()?;
    if s.train.stream {
        return Err(TlError::invalid(
            "tl cv holds features in memory (no --stream)",
        ));
    }
    let started = Instant::now();
    let (spec, prepared, warnings) = open(rt, &s.train)?;
    let mut ctx = Extraction {
        rt,
        spec: &spec,
        dataset: &prepared.dataset,
        warnings,
    };
    let plain_settings = TrainSettings {
        views: 1,
        finetune: None,
        ..s.train.clone()
    };
    let (plain, folds, _) = plain_features(&mut ctx, &plain_settings, s.folds, s.near_duplicate)?;
    let cut = match &s.train.finetune {
        Some(f) => Some(BackboneCut::resolve(&spec, f.unfreeze)?),
        None => None,
    };
    if cut.as_ref().is_some_and(|c| c.trunk.is_none()) {
        return Err(TlError::invalid(
            "tl cv fine-tunes on cached trunk outputs: give --finetune N (not all)",
        ));
    }
    let full = if s.train.views > 1 || cut.is_some() {
        Some(ctx.inputs(&s.train, cut.as_ref())?)
    } else {
        None
    };
    let used = full.as_ref().unwrap_or(&plain);
    let quiet = quiet(rt);
    // `tl cv` runs the base settings as they are (their own fine-tuning, if any).
    let how = s.train.finetune.clone().unwrap_or_default();
    let tier = TierInputs {
        rt: &quiet,
        base: &s.train,
        spec: &spec,
        inputs: used,
        row_image: cv::row_images(&used.features)?,
        cut: cut.as_ref(),
        classes: &prepared.dataset.classes,
        finetune: &how,
    };
    let results = (0..folds.k)
        .map(|fold| cv::run_fold(&tier, None, &folds, fold))
        .collect::<Result<Vec<_>>>()?;
    Ok(CvReport::new(
        &s.train.data,
        &s.train.backbone,
        &folds,
        &plain.features,
        results.into_iter().unzip(),
        started,
        ctx.warnings,
    ))
}
