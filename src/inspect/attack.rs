//! `tl attack`: targeted (or untargeted) projected gradient descent on the user's image,
//! at its own resolution, through the exact resize/crop/normalise path of `tl predict`.
//!
//! Pixels stay in [0, 1]; the perturbation is kept on the 8-bit grid during the attack
//! (rounded towards zero, with a straight-through gradient), so the saved lossless file is
//! exactly the image that was optimised and never exceeds the budget. Success is judged
//! by re-loading the saved file and classifying it as `tl predict` does.
use super::classifier::Classifier;
use crate::data::preprocess::{self, normalize_tensor, ResizeMatrices};
use crate::error::{Result, TorchContext};
use crate::eval::{argmax, ClassProb};
use crate::util::FilePath;
use image::RgbImage;
use serde::Serialize;
use std::path::Path;
use tch::{Device, Kind, Reduction, Tensor};

/// Memory an attack takes per pixel of the input image (float copies of the image, the
/// perturbation, their gradients and the resize products); used to refuse images that
/// cannot fit before allocating. Measured: a 4000x3000 PNG peaked 1.04 GB above a 400x300
/// one (87 B/px); issue #10 saw 10 GB for 10000x10000 (100 B/px).
pub const ATTACK_BYTES_PER_PIXEL: u64 = 100;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    Linf,
    L2,
}

/// Reach a class, or just leave the current one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Goal {
    Targeted(String),
    Untargeted,
}

/// The default bound on an attacked image: 50 megapixels, about 5 GB at
/// [`ATTACK_BYTES_PER_PIXEL`].
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;

#[derive(Clone, Debug, Serialize)]
pub struct AttackConfig {
    pub norm: Norm,
    pub eps: f64,
    pub alpha: f64,
    pub steps: usize,
    pub margin: f64,
    pub random_start: bool,
    pub seed: u64,
    /// Class to reach (targeted) or None (untargeted: leave the original class).
    pub target: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AttackOutcome {
    pub input: FilePath,
    pub output: Option<FilePath>,
    pub eps: f64,
    pub success: bool,
    /// Why the image was not attacked, if it was not.
    pub skipped: Option<String>,
    pub original_class: String,
    pub adversarial_class: String,
    pub original_top5: Vec<ClassProb>,
    pub adversarial_top5: Vec<ClassProb>,
    /// Probability of the target (targeted) or of the original class (untargeted).
    pub prob_before: f64,
    pub prob_after: f64,
    pub linf: f64,
    pub l2: f64,
    pub psnr_db: f64,
    pub steps: usize,
    pub seconds: f64,
}

impl AttackOutcome {
    pub(crate) fn new(input: &Path, eps: f64) -> Self {
        AttackOutcome {
            input: FilePath(input.to_path_buf()),
            output: None,
            eps,
            success: false,
            skipped: None,
            original_class: String::new(),
            adversarial_class: String::new(),
            original_top5: vec![],
            adversarial_top5: vec![],
            prob_before: 0.0,
            prob_after: 0.0,
            linf: 0.0,
            l2: 0.0,
            psnr_db: f64::INFINITY,
            steps: 0,
            seconds: 0.0,
        }
    }
}

/// Did the attack reach its goal on these probabilities?
pub(crate) fn reached(probs: &[f32], original: usize, target: Option<usize>) -> bool {
    let pred = argmax(probs);
    match target {
        Some(t) => pred == t,
        None => pred != original,
    }
}

/// Put a perturbation on the 8-bit grid without leaving the budget or the [0, 1] range.
/// L-inf: rounded towards zero, where values within float error of a grid step (e.g.
/// eps = 4/255 exactly) count as reaching it, capped at the largest step inside the budget.
/// L2: rounded to nearest, shrunk until the rounded perturbation is inside the ball.
fn quantize(delta: &Tensor, cfg: &AttackConfig) -> Tensor {
    let scaled = delta * 255.0;
    match cfg.norm {
        Norm::Linf => {
            let k = (cfg.eps * 255.0 + 1e-6).floor();
            let q = (scaled.abs() + 1e-4).floor().clamp_max(k) * scaled.sign();
            q / 255.0
        }
        Norm::L2 => {
            // Rounding to nearest keeps the changes of at least half a level (truncation
            // would zero the many small ones an L2 step spreads over a large image); shrink
            // until the rounded perturbation is inside the ball, then fall back to truncation.
            let mut factor = 1.0;
            for _ in 0..8 {
                let q = (&scaled * factor).round() / 255.0;
                let norm = q.square().sum(Kind::Float).sqrt().double_value(&[]);
                if norm <= cfg.eps {
                    return q;
                }
                factor *= 0.98 * cfg.eps / norm;
            }
            (scaled * factor).trunc() / 255.0
        }
    }
}

fn project(delta: &Tensor, x0: &Tensor, cfg: &AttackConfig) -> Tensor {
    let d = match cfg.norm {
        Norm::Linf => delta.clamp(-cfg.eps, cfg.eps),
        Norm::L2 => {
            let norm = delta.square().sum(Kind::Float).sqrt().clamp_min(1e-12);
            let factor = (norm.reciprocal() * cfg.eps).clamp_max(1.0);
            delta * factor
        }
    };
    (x0 + d).clamp(0.0, 1.0) - x0
}

/// How far the attack is from its goal, in logits: the target over the best other class,
/// or the best other class over the original one.
fn goal_margin(logits: &[f32], original: usize, target: Option<usize>) -> f32 {
    let best_except = |skip: usize| {
        logits
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, v)| *v)
            .fold(f32::MIN, f32::max)
    };
    match target {
        Some(t) => logits[t] - best_except(t),
        None => best_except(original) - logits[original],
    }
}

/// Attack one decoded image. Returns the adversarial image and the steps used.
pub fn attack_image(
    classifier: &Classifier,
    img: &RgbImage,
    original: usize,
    cfg: &AttackConfig,
    bar: &indicatif::ProgressBar,
) -> Result<(RgbImage, usize)> {
    let device = classifier.device;
    let (w, h) = img.dimensions();
    let x0 = preprocess::image_to_unit_tensor(img).to_device(device);
    let resize = ResizeMatrices::new(w, h, &classifier.preprocess, device);
    tch::manual_seed(cfg.seed as i64);
    let mut delta = if cfg.random_start {
        // Only where the network looks: pixels outside the centre crop get no gradient and
        // noise there would only lower the PSNR.
        let seen = resize.seen_mask();
        let r = match cfg.norm {
            Norm::Linf => (Tensor::rand_like(&x0) * 2.0 - 1.0) * cfg.eps * &seen,
            Norm::L2 => {
                let g = Tensor::randn_like(&x0) * &seen;
                &g / g.square().sum(Kind::Float).sqrt().clamp_min(1e-12) * (cfg.eps * 0.5)
            }
        };
        project(&r, &x0, cfg)
    } else {
        x0.zeros_like()
    };
    let goal = Tensor::from_slice(&[cfg.target.unwrap_or(original) as i64]).to_device(device);
    let mut margin = cfg.margin;
    let mut used = 0;
    for step in 0..cfg.steps {
        let d = delta.detach().set_requires_grad(true);
        // Straight-through quantisation: the forward pass sees the 8-bit image.
        let dq = &d + (quantize(&d, cfg) - &d).detach();
        let x = &x0 + dq;
        let logits =
            classifier.logits(&normalize_tensor(&resize.apply(&x), &classifier.preprocess))?;
        let lg = Vec::<f32>::try_from(logits.get(0).detach().to_device(Device::Cpu))
            .torch_ctx(|| "reading logits".into())?;
        let winner_margin = goal_margin(&lg, original, cfg.target);
        let hit = winner_margin >= margin as f32;
        bar.set_message(format!("margin {winner_margin:+.2}"));
        if hit {
            // Check on the 8-bit image through the predict path before stopping.
            let candidate = preprocess::unit_tensor_to_image(&(&x0 + quantize(&delta, cfg)))?;
            if reached(
                &classifier.classify_resized(&candidate)?,
                original,
                cfg.target,
            ) {
                return Ok((candidate, step));
            }
            // Quantisation or the resize path undid it: ask for a wider margin.
            margin = (margin * 2.0).max(0.5);
        }
        let ce = logits.cross_entropy_loss::<Tensor>(&goal, None, Reduction::Mean, -100, 0.0);
        let loss = if cfg.target.is_some() { ce } else { -ce };
        let grad = Tensor::run_backward(&[&loss], &[&d], false, false).remove(0);
        let stepped = match cfg.norm {
            Norm::Linf => &delta - grad.sign() * cfg.alpha,
            Norm::L2 => {
                let g_norm = grad.square().sum(Kind::Float).sqrt().clamp_min(1e-12);
                &delta - &grad / g_norm * cfg.alpha
            }
        };
        delta = tch::no_grad(|| project(&stepped, &x0, cfg));
        used = step + 1;
    }
    let final_image = preprocess::unit_tensor_to_image(&(&x0 + quantize(&delta, cfg)))?;
    Ok((final_image, used))
}

/// Perturbation statistics in [0, 1] pixel units.
pub fn distortion(a: &RgbImage, b: &RgbImage) -> (f64, f64, f64) {
    let (mut linf, mut sq) = (0f64, 0f64);
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = (*x as f64 - *y as f64) / 255.0;
        linf = linf.max(d.abs());
        sq += d * d;
    }
    let mse = sq / a.as_raw().len() as f64;
    let psnr = if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (1.0 / mse).log10()
    };
    (linf, sq.sqrt(), psnr)
}

/// Perturbation amplified for viewing: grey is zero, full range is the largest change.
pub fn diff_image(a: &RgbImage, b: &RgbImage) -> RgbImage {
    let max = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (*x as i32 - *y as i32).abs())
        .max()
        .unwrap_or(0)
        .max(1) as f32;
    let data = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| {
            (127.5 + 127.5 * (*y as f32 - *x as f32) / max)
                .round()
                .clamp(0.0, 255.0) as u8
        })
        .collect();
    RgbImage::from_raw(a.width(), a.height(), data).unwrap_or_else(|| RgbImage::new(1, 1))
}

pub fn eps_label(eps: f64) -> String {
    let k = eps * 255.0;
    if eps >= 1.0 {
        return format!("{eps}");
    }
    if (k - k.round()).abs() < 1e-6 {
        format!("{}/255", k.round())
    } else {
        format!("{eps:.4}")
    }
}
