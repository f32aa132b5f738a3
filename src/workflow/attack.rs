//! `tl attack` as a command: its settings, the run over the inputs, the report; the
//! algorithm is `crate::inspect::attack`.
use crate::data::decode::decode_rgb;
use crate::data::preprocess;
use crate::error::{Result, TlError};
use crate::eval::{argmax, format_top, Report};
use crate::inspect::attack::{
    attack_image, diff_image, distortion, eps_label, reached, AttackConfig, AttackOutcome, Goal,
    Norm, ATTACK_BYTES_PER_PIXEL,
};
use crate::inspect::classes;
use crate::inspect::classifier::{Classifier, NetworkChoice};
use crate::progress;
use crate::runtime::Runtime;
use crate::util::{refuse_overwrite, FilePath};
use image::RgbImage;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `tl attack` is asked to do.
#[derive(Clone, Debug)]
pub struct AttackSettings {
    pub network: NetworkChoice,
    pub images: Vec<PathBuf>,
    pub goal: Goal,
    /// Output file (one image, one budget) or folder.
    pub out: PathBuf,
    /// Budgets in [0, 1] pixel units; several make a sweep.
    pub eps: Vec<f64>,
    /// Step size; None: eps/4 (L-inf) or eps/5 (L2).
    pub alpha: Option<f64>,
    pub steps: usize,
    pub norm: Norm,
    pub margin: f64,
    pub random_start: bool,
    pub seed: u64,
    pub diff: Option<PathBuf>,
    pub force: bool,
    /// Larger images are refused (the attack runs at the image's own resolution).
    pub max_pixels: u64,
}

impl AttackSettings {
    /// The attack of one image at one budget.
    fn config(&self, eps: f64, target: Option<usize>) -> AttackConfig {
        AttackConfig {
            norm: self.norm,
            eps,
            alpha: self.alpha.unwrap_or(match self.norm {
                Norm::Linf => eps / 4.0,
                Norm::L2 => eps / 5.0,
            }),
            steps: self.steps,
            margin: self.margin,
            random_start: self.random_start,
            seed: self.seed,
            target,
        }
    }

    /// Every number in range; the error names the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.eps.is_empty() {
            return Err(TlError::invalid("no perturbation budget given"));
        }
        for &e in &self.eps {
            if !(e.is_finite() && e > 0.0) || (self.norm == Norm::Linf && e > 1.0) {
                return Err(TlError::invalid(format!(
                    "budget {e} must be in (0, 1] for L-inf (pixel units; e.g. 4/255) and > 0 for L2"
                )));
            }
        }
        if let Some(a) = self.alpha {
            if !(a.is_finite() && a > 0.0) {
                return Err(TlError::invalid(format!("step size {a} must be positive")));
            }
        }
        if self.steps == 0 {
            return Err(TlError::invalid("the number of steps must be at least 1"));
        }
        if !(self.margin.is_finite() && self.margin >= 0.0) {
            return Err(TlError::invalid(format!(
                "margin {} must be >= 0",
                self.margin
            )));
        }
        Ok(())
    }
}

/// Success at one budget over all images.
#[derive(Clone, Debug, Serialize)]
pub struct EpsSummary {
    pub eps: f64,
    pub eps_label: String,
    pub attacked: usize,
    pub succeeded: usize,
    pub success_rate: f64,
    pub median_steps: Option<usize>,
    pub mean_l2: f64,
    pub median_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AttackReport {
    pub network: String,
    pub outcomes: Vec<AttackOutcome>,
    pub summary: Vec<EpsSummary>,
    pub warnings: Vec<String>,
    /// One line per image and a summary table (several images or budgets).
    #[serde(skip)]
    pub many: bool,
}

/// Output file names for the inputs: their stems (numbered where two share one) as PNG.
fn output_names(inputs: &[PathBuf]) -> Vec<String> {
    super::output_stems(inputs)
        .into_iter()
        .map(|stem| format!("{stem}.png"))
        .collect()
}

/// Everything one image's attack needs besides the image and its budget.
struct Job<'a> {
    classifier: &'a Classifier,
    settings: &'a AttackSettings,
    target: Option<usize>,
    many: bool,
    progress: bool,
}

pub fn run(rt: &Runtime, settings: &AttackSettings) -> Result<AttackReport> {
    settings.validate()?;
    let classifier = Classifier::load(&settings.network, rt)?;
    let mut warnings: Vec<String> = classifier.warning.iter().cloned().collect();
    let target = match &settings.goal {
        Goal::Targeted(name) => {
            let r = classes::resolve(name, &classifier.classes)?;
            warnings.extend(r.note.clone());
            Some(r.index)
        }
        Goal::Untargeted => None,
    };
    let inputs = crate::data::expand_inputs(&settings.images)?;
    let sweep = settings.eps.len() > 1;
    let many = inputs.len() > 1 || sweep;
    let out = &settings.out;
    check_outputs(settings, many)?;
    let job = Job {
        classifier: &classifier,
        settings,
        target,
        many,
        progress: rt.progress,
    };
    let names = output_names(&inputs);
    let overall = progress::bar(
        (inputs.len() * settings.eps.len()) as u64,
        "attack",
        rt.progress,
    );
    let mut outcomes: Vec<AttackOutcome> = Vec::new();
    for &eps in &settings.eps {
        for (path, name) in inputs.iter().zip(&names) {
            let out_path = if !many {
                out.clone()
            } else if sweep {
                out.join(format!("eps-{}", eps_label(eps).replace('/', "_")))
                    .join(name)
            } else {
                out.join(name)
            };
            // Say which image, unless the error already names a file.
            let outcome = attack_one(&job, path, &out_path, eps).map_err(|e| e.about(path))?;
            outcomes.push(outcome);
            overall.inc(1);
        }
    }
    overall.finish_and_clear();
    if outcomes.iter().all(|o| o.skipped.is_some()) {
        let reasons: Vec<&str> = outcomes
            .iter()
            .filter_map(|o| o.skipped.as_deref())
            .collect();
        return Err(TlError::invalid(format!(
            "no image could be attacked: {}",
            reasons.join("; ")
        )));
    }
    let summary = settings
        .eps
        .iter()
        .map(|&e| summarise(&outcomes, e))
        .collect();
    Ok(AttackReport {
        network: classifier.description.clone(),
        outcomes,
        summary,
        warnings,
        many,
    })
}

/// One image and one budget write a file; more need a folder.
fn check_outputs(settings: &AttackSettings, many: bool) -> Result<()> {
    let out = &settings.out;
    if many && out.extension().is_some() && !out.is_dir() {
        return Err(TlError::bad_path(
            out,
            "several images or budgets need an output folder, not a file name",
        ));
    }
    if !many {
        refuse_overwrite(out, settings.force)?;
    }
    if settings.diff.is_some() && many {
        return Err(TlError::invalid(
            "the amplified difference image takes one image and one budget",
        ));
    }
    Ok(())
}

fn summarise(outcomes: &[AttackOutcome], eps: f64) -> EpsSummary {
    let attacked: Vec<&AttackOutcome> = outcomes
        .iter()
        .filter(|o| o.eps == eps && o.skipped.is_none())
        .collect();
    let ok: Vec<&&AttackOutcome> = attacked.iter().filter(|o| o.success).collect();
    let mut steps: Vec<usize> = ok.iter().map(|o| o.steps).collect();
    steps.sort();
    let mut seconds: Vec<f64> = attacked.iter().map(|o| o.seconds).collect();
    seconds.sort_by(f64::total_cmp);
    let n = attacked.len();
    EpsSummary {
        eps,
        eps_label: eps_label(eps),
        attacked: n,
        succeeded: ok.len(),
        success_rate: if n == 0 {
            0.0
        } else {
            ok.len() as f64 / n as f64
        },
        median_steps: steps.get(steps.len() / 2).copied(),
        mean_l2: if n == 0 {
            0.0
        } else {
            attacked.iter().map(|o| o.l2).sum::<f64>() / n as f64
        },
        median_seconds: seconds.get(seconds.len() / 2).copied(),
    }
}

/// Refuse an image over the pixel bound, or whose attack cannot fit in memory, before
/// libtorch tries.
fn check_memory(path: &Path, img: &RgbImage, max_pixels: u64) -> Result<()> {
    let pixels = img.width() as u64 * img.height() as u64;
    if pixels > max_pixels {
        return Err(TlError::corrupt(
            path,
            format!(
                "{}x{} pixels ({:.1} MP) is over the bound of {:.1} MP: the attack runs at the image's own resolution (about {:.1} GB here); downscale it or raise the bound",
                img.width(),
                img.height(),
                pixels as f64 / 1e6,
                max_pixels as f64 / 1e6,
                (pixels * ATTACK_BYTES_PER_PIXEL) as f64 / 1e9
            ),
        ));
    }
    let need = pixels * ATTACK_BYTES_PER_PIXEL;
    if let Some(available) = crate::runtime::available_memory() {
        if need > available {
            return Err(TlError::corrupt(
                path,
                format!(
                    "{}x{} pixels: attacking it at full resolution needs about {:.1} GB, {:.1} GB available; downscale it first",
                    img.width(),
                    img.height(),
                    need as f64 / 1e9,
                    available as f64 / 1e9
                ),
            ));
        }
    }
    Ok(())
}

fn attack_one(job: &Job, path: &Path, out_path: &Path, eps: f64) -> Result<AttackOutcome> {
    let (classifier, settings, target) = (job.classifier, job.settings, job.target);
    let start = Instant::now();
    let mut outcome = AttackOutcome::new(path, eps);
    // With several images, one that cannot be used is skipped and reported; alone, it fails.
    let skip = |outcome: &mut AttackOutcome, e: TlError| -> Result<()> {
        if job.many {
            outcome.skipped = Some(e.to_string());
            Ok(())
        } else {
            Err(e)
        }
    };
    let checked =
        decode_rgb(path).and_then(|img| check_memory(path, &img, settings.max_pixels).map(|_| img));
    let img = match checked {
        Ok(img) => img,
        Err(e) => {
            skip(&mut outcome, e)?;
            return Ok(outcome);
        }
    };
    let before = classifier.classify_resized(&img)?;
    let original = argmax(&before);
    outcome.original_class = classifier.classes[original].clone();
    outcome.original_top5 = classifier.top(&before, 5);
    let watched = target.unwrap_or(original);
    outcome.prob_before = before[watched] as f64;
    if target == Some(original) {
        let why = TlError::corrupt(
            path,
            format!(
                "already classified as '{}' (p={:.3}); nothing to attack",
                outcome.original_class, before[original]
            ),
        );
        skip(&mut outcome, why)?;
        return Ok(outcome);
    }
    refuse_overwrite(out_path, settings.force)?;
    if let Some(diff) = &settings.diff {
        refuse_overwrite(diff, settings.force)?;
    }
    let cfg = settings.config(eps, target);
    let bar = progress::bar(settings.steps as u64, "steps", job.progress && !job.many);
    let (adv, steps) =
        crate::util::guard::catch_torch_panic(&format!("{}: attack", path.display()), || {
            attack_image(classifier, &img, original, &cfg, &bar)
        })?;
    bar.finish_and_clear();
    preprocess::save_image(&adv, out_path)?;
    // The saved file is what counts: re-load it and classify it as `tl predict` does.
    let reloaded = decode_rgb(out_path)?;
    let after = classifier.classify_resized(&reloaded)?;
    let (linf, l2, psnr) = distortion(&img, &reloaded);
    outcome.output = Some(FilePath(out_path.to_path_buf()));
    outcome.success = reached(&after, original, target);
    outcome.adversarial_class = classifier.classes[argmax(&after)].clone();
    outcome.adversarial_top5 = classifier.top(&after, 5);
    outcome.prob_after = after[watched] as f64;
    outcome.linf = linf;
    outcome.l2 = l2;
    outcome.psnr_db = psnr;
    outcome.steps = steps;
    outcome.seconds = start.elapsed().as_secs_f64();
    if let Some(diff) = &settings.diff {
        preprocess::save_image(&diff_image(&img, &reloaded), diff)?;
    }
    Ok(outcome)
}

impl Report for AttackReport {
    fn notes(&self) -> Vec<String> {
        crate::eval::warning_lines(&self.warnings)
    }

    fn render_text(&self) -> String {
        let mut s = String::new();
        for o in &self.outcomes {
            s += &render_outcome(o, self.many);
        }
        if self.many {
            s += &format!(
                "\n{:>10}  {:>8}  {:>9}  {:>12}  {:>8}\n",
                "eps", "success", "attacked", "median steps", "mean L2"
            );
            for e in &self.summary {
                let steps = e
                    .median_steps
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into());
                s += &format!(
                    "{:>10}  {:>7.1}%  {:>9}  {:>12}  {:>8.3}\n",
                    e.eps_label,
                    e.success_rate * 100.0,
                    e.attacked,
                    steps,
                    e.mean_l2
                );
            }
        }
        s
    }
}

fn render_outcome(o: &AttackOutcome, many: bool) -> String {
    if let Some(why) = &o.skipped {
        return format!("{}: skipped: {why}\n", o.input);
    }
    if many {
        return format!(
            "{}  {}  {} -> {}  p {:.3} -> {:.3}  Linf {:.1}/255  L2 {:.3}  PSNR {:.1} dB  {} steps\n",
            if o.success { "OK  " } else { "FAIL" },
            o.input,
            o.original_class,
            o.adversarial_class,
            o.prob_before,
            o.prob_after,
            o.linf * 255.0,
            o.l2,
            o.psnr_db,
            o.steps
        );
    }
    let output = o.output.as_ref().map(|p| p.to_string()).unwrap_or_default();
    format!(
        "input:        {}\noriginal:     {}\nadversarial:  {}\ntarget p:     {:.4} -> {:.4}\n\
perturbation: Linf {:.4} ({:.1}/255), L2 {:.4}, PSNR {:.1} dB\n\
steps:        {} in {:.1}s (eps {})\n\
result:       {} — saved {} is classified as '{}'\n",
        o.input,
        format_top(&o.original_top5),
        format_top(&o.adversarial_top5),
        o.prob_before,
        o.prob_after,
        o.linf,
        o.linf * 255.0,
        o.l2,
        o.psnr_db,
        o.steps,
        o.seconds,
        eps_label(o.eps),
        if o.success { "SUCCESS" } else { "FAILED" },
        output,
        o.adversarial_class
    )
}
