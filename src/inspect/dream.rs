//! `tl dream`: the input image that makes the network see a class.
//!
//! Gradient ascent on the pixels (kept in [0,1], normalised inside the graph) of
//! `logit[target] − tv·TV(x) − l2·mean((x−½)²)`, with Adam. TV is the mean absolute
//! difference between neighbouring pixels, so its weight does not depend on image size.
//! Each step sees the image through a random jitter, scale and rotation, which keeps the
//! result from being a fragile adversarial pattern; the score reported at the end is that
//! of the saved 8-bit PNG, re-loaded and classified with no transforms at all.
use super::classes;
use super::classifier::{Classifier, NetworkChoice};
use crate::data::decode::decode_rgb;
use crate::data::preprocess::{self, normalize_tensor};
use crate::error::{Result, TlError};
use crate::eval::{format_top, ClassProb, Report};
use crate::progress;
use crate::runtime::Runtime;
use crate::util::{refuse_overwrite, FilePath, SplitMix64};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

/// The largest image side `tl dream` makes: memory grows with its square (a 2048-pixel
/// dream through MobileNetV2 needs several GB for the gradients).
pub const MAX_DREAM_SIZE: u32 = 2048;

#[derive(Clone, Debug, Serialize)]
pub struct DreamConfig {
    pub steps: usize,
    pub lr: f64,
    pub tv: f64,
    pub l2: f64,
    pub size: u32,
    pub seed: u64,
    pub init: Option<FilePath>,
    pub transforms: bool,
    pub save_every: Option<usize>,
    pub param: Parametrization,
    pub objective: Objective,
}

#[derive(Clone, Debug, Serialize)]
pub struct DreamReport {
    pub network: String,
    pub class: String,
    pub index: usize,
    /// Target probability of the saved PNG, re-loaded, with no transforms.
    pub probability: f64,
    pub top5: Vec<ClassProb>,
    pub total_variation: f64,
    pub steps: usize,
    pub seconds: f64,
    pub output: FilePath,
    pub strip: Option<FilePath>,
    pub config: DreamConfig,
    /// Notes for the user (a loosely matched class name, random weights).
    pub warnings: Vec<String>,
}

impl DreamConfig {
    /// Every number in range; the error names the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(TlError::invalid("the number of steps must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TlError::invalid(format!(
                "learning rate {} must be a positive number",
                self.lr
            )));
        }
        for (what, v) in [("TV weight", self.tv), ("grey-distance weight", self.l2)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(TlError::invalid(format!(
                    "{what} {v} must be a number >= 0"
                )));
            }
        }
        if !(16..=MAX_DREAM_SIZE).contains(&self.size) {
            return Err(TlError::invalid(format!(
                "image size {} must be between 16 and {MAX_DREAM_SIZE} pixels",
                self.size
            )));
        }
        Ok(())
    }
}

/// Mean absolute difference between vertically and horizontally adjacent pixels.
pub fn total_variation(x: &Tensor) -> Tensor {
    let h = x.size()[2];
    let w = x.size()[3];
    let dy = (x.narrow(2, 1, h - 1) - x.narrow(2, 0, h - 1))
        .abs()
        .mean(Kind::Float);
    let dx = (x.narrow(3, 1, w - 1) - x.narrow(3, 0, w - 1))
        .abs()
        .mean(Kind::Float);
    dy + dx
}

/// Random jitter (roll), scale and rotation, differentiable with respect to `x`.
fn random_transform(x: &Tensor, rng: &mut SplitMix64) -> Tensor {
    let mut uniform = |lo: f64, hi: f64| rng.uniform(lo, hi);
    let side = x.size()[2] as f64;
    let max_shift = (side / 16.0).round().max(1.0);
    let dy = uniform(-max_shift, max_shift + 1.0).floor() as i64;
    let dx = uniform(-max_shift, max_shift + 1.0).floor() as i64;
    let scale = uniform(0.9, 1.1);
    let angle = uniform(-10.0, 10.0).to_radians();
    let rolled = x.roll([dy, dx], [2, 3]);
    let (c, s) = (angle.cos() / scale, angle.sin() / scale);
    let theta = Tensor::from_slice(&[c as f32, -s as f32, 0.0, s as f32, c as f32, 0.0])
        .view([1, 2, 3])
        .to_device(x.device());
    let grid = Tensor::affine_grid_generator(&theta, x.size(), false);
    // mode 0 = bilinear, padding 2 = reflection
    rolled.grid_sampler(&grid, 0, 2, false)
}

/// How the optimised variables become an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parametrization {
    /// Pixels directly, clamped to [0,1] after each step.
    Pixel,
    /// A 1/f-scaled Fourier spectrum with decorrelated colour and a sigmoid (as in lucid/lucent):
    /// gradient steps favour low frequencies, so images form faster and look more natural.
    Fourier,
}

/// Square root of the colour covariance of ImageNet photos (lucid's `color_correlation_svd_sqrt`).
const COLOR_CORRELATION: [[f32; 3]; 3] =
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]];

struct ImageParam {
    kind: Parametrization,
    var: Tensor,
    side: i64,
    /// `[1,1,S,S/2+1,1]` spectrum scale (Fourier only).
    scale: Tensor,
    /// `[3,3]` colour mixing, transposed, normalised (Fourier only).
    color_t: Tensor,
}

impl ImageParam {
    fn new(
        kind: Parametrization,
        vs: &nn::VarStore,
        init: Option<&Tensor>,
        side: i64,
    ) -> ImageParam {
        let device = vs.device();
        let fy = Tensor::fft_fftfreq(side, 1.0, (Kind::Float, Device::Cpu)).view([side, 1]);
        let fx = Tensor::fft_fftfreq(side, 1.0, (Kind::Float, Device::Cpu))
            .narrow(0, 0, side / 2 + 1)
            .view([1, side / 2 + 1]);
        let freqs = (&fy * &fy + &fx * &fx).sqrt();
        let scale = freqs
            .clamp_min(1.0 / side as f64)
            .reciprocal()
            .view([1, 1, side, side / 2 + 1, 1])
            .to_device(device);
        let c = Tensor::from_slice(&COLOR_CORRELATION.concat()).view([3, 3]);
        let max_norm = c
            .square()
            .sum_dim_intlist([0i64].as_slice(), false, Kind::Float)
            .sqrt()
            .max();
        let color_t = (c / max_norm)
            .transpose(0, 1)
            .contiguous()
            .to_device(device);
        let start = match (kind, init) {
            (Parametrization::Pixel, Some(x)) => x.to_device(device),
            (Parametrization::Pixel, None) => {
                Tensor::rand([1, 3, side, side], (Kind::Float, Device::Cpu)).to_device(device) * 0.2
                    + 0.4
            }
            (Parametrization::Fourier, Some(x)) => {
                // Invert sigmoid, colour mixing and the scaled inverse FFT.
                let x = x.to_device(device).clamp(0.01, 0.99);
                let logit: Tensor = (&x / (x.ones_like() - &x)).log();
                let unmixed = logit
                    .permute([0, 2, 3, 1])
                    .matmul(&color_t.inverse())
                    .permute([0, 3, 1, 2])
                    * 4.0;
                unmixed
                    .fft_rfft2(Some([side, side].as_slice()), [2i64, 3].as_slice(), "ortho")
                    .view_as_real()
                    / &scale
            }
            (Parametrization::Fourier, None) => {
                Tensor::randn([1, 3, side, side / 2 + 1, 2], (Kind::Float, Device::Cpu))
                    .to_device(device)
                    * 0.01
            }
        };
        let var = vs.root().var_copy("image", &start);
        ImageParam {
            kind,
            var,
            side,
            scale,
            color_t,
        }
    }

    fn image(&self) -> Tensor {
        match self.kind {
            Parametrization::Pixel => self.var.shallow_clone(),
            Parametrization::Fourier => {
                let spectrum = (&self.var * &self.scale).contiguous().view_as_complex();
                let raw = spectrum.fft_irfft2(
                    Some([self.side, self.side].as_slice()),
                    [2i64, 3].as_slice(),
                    "ortho",
                ) / 4.0;
                raw.permute([0, 2, 3, 1])
                    .matmul(&self.color_t)
                    .permute([0, 3, 1, 2])
                    .sigmoid()
            }
        }
    }

    fn after_step(&self) {
        if self.kind == Parametrization::Pixel {
            tch::no_grad(|| {
                let mut v = self.var.shallow_clone();
                let _ = v.clamp_(0.0, 1.0);
            });
        }
    }
}

/// What the optimisation pushes up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// The target's logit.
    Logit,
    /// The target's log-probability (its logit minus the log-sum-exp of all): also pushes
    /// similar classes down, e.g. 'tiger cat' when dreaming 'tabby'.
    Logprob,
    /// Both summed: the log-probability wins the margin over similar classes, then (once
    /// it saturates) the logit keeps improving the image.
    Both,
}

/// Optimise an image for class `target`. Returns the final image `[1,3,S,S]` in [0,1] and
/// the frames saved along the way.
pub fn dream(
    classifier: &Classifier,
    target: usize,
    cfg: &DreamConfig,
    show_progress: bool,
) -> Result<(Tensor, Vec<Tensor>)> {
    cfg.validate()?;
    let device = classifier.device;
    let s = cfg.size as i64;
    tch::manual_seed(cfg.seed as i64);
    let mut rng = SplitMix64::new(cfg.seed);
    let init = match &cfg.init {
        Some(path) => {
            let img = decode_rgb(path)?;
            let crop = preprocess::resize_crop_u8(&img, cfg.size, cfg.size);
            let img = image::RgbImage::from_raw(cfg.size, cfg.size, crop)
                .ok_or_else(|| TlError::file(path, "cannot crop this image"))?;
            Some(preprocess::image_to_unit_tensor(&img))
        }
        None => None,
    };
    let vs = nn::VarStore::new(device);
    let param = ImageParam::new(cfg.param, &vs, init.as_ref(), s);
    let mut opt = nn::Adam::default()
        .build(&vs, cfg.lr)
        .map_err(|e| TlError::torch("optimizer", e))?;
    let bar = progress::bar(cfg.steps as u64, "dream", show_progress);
    let mut frames = Vec::new();
    for step in 1..=cfg.steps {
        let image = param.image();
        let seen = if cfg.transforms {
            random_transform(&image, &mut rng)
        } else {
            image.shallow_clone()
        };
        let logits = classifier.logits(&normalize_tensor(&seen, &classifier.preprocess))?;
        let score = match cfg.objective {
            Objective::Logit => logits.get(0).get(target as i64),
            Objective::Logprob => logits
                .log_softmax(-1, Kind::Float)
                .get(0)
                .get(target as i64),
            Objective::Both => {
                let t = target as i64;
                logits.get(0).get(t) + logits.log_softmax(-1, Kind::Float).get(0).get(t)
            }
        };
        let tv = total_variation(&image);
        let mut objective = &score - &tv * cfg.tv;
        if cfg.l2 > 0.0 {
            objective -= (&image - 0.5).square().mean(Kind::Float) * cfg.l2;
        }
        opt.zero_grad();
        (-objective).backward();
        opt.step();
        param.after_step();
        if show_progress && (step % 8 == 0 || step == cfg.steps) {
            let p = tch::no_grad(|| {
                logits
                    .softmax(-1, Kind::Float)
                    .double_value(&[0, target as i64])
            });
            bar.set_message(format!("p(seen)={p:.3} tv={:.4}", tv.double_value(&[])));
        }
        if cfg.save_every.is_some_and(|k| k > 0 && step % k == 0) {
            frames.push(tch::no_grad(|| param.image()).to_device(Device::Cpu));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let image = tch::no_grad(|| param.image()).to_device(Device::Cpu);
    Ok((image, frames))
}

pub fn strip_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "dream".into());
    out.with_file_name(format!("{stem}-strip.png"))
}

/// What `tl dream` is asked to do.
#[derive(Clone, Debug)]
pub struct DreamSettings {
    pub network: NetworkChoice,
    /// Class name (exact, case-insensitive, or a unique substring) or index.
    pub class: String,
    pub out: PathBuf,
    pub force: bool,
    /// Image side; None: the network's crop size.
    pub size: Option<u32>,
    /// The optimisation (its `size` is replaced by the resolved one).
    pub config: DreamConfig,
}

/// Dream, save the PNG (and the strip of frames), then re-load the saved file and score
/// it as is: that score is the report's.
pub fn run(rt: &Runtime, settings: &DreamSettings) -> Result<DreamReport> {
    let classifier = Classifier::load(&settings.network, rt)?;
    let mut warnings: Vec<String> = classifier.warning.iter().cloned().collect();
    let target = classes::resolve(&settings.class, &classifier.classes)?;
    warnings.extend(target.note.clone());
    let mut cfg = settings.config.clone();
    cfg.size = settings.size.unwrap_or(classifier.preprocess.crop);
    cfg.validate()?;
    refuse_overwrite(&settings.out, settings.force)?;
    let strip = cfg.save_every.map(|_| strip_path(&settings.out));
    if let Some(s) = &strip {
        refuse_overwrite(s, settings.force)?;
    }
    let start = Instant::now();
    let (image, mut frames) = crate::util::guard::catch_torch_panic(
        &format!("dream at {0}x{0} pixels", cfg.size),
        || dream(&classifier, target.index, &cfg, rt.progress),
    )?;
    let seconds = start.elapsed().as_secs_f64();
    preprocess::save_image(&preprocess::unit_tensor_to_image(&image)?, &settings.out)?;
    if let Some(strip_path) = &strip {
        if frames.is_empty() || !cfg.steps.is_multiple_of(cfg.save_every.unwrap_or(1).max(1)) {
            frames.push(image.shallow_clone());
        }
        let strip = Tensor::cat(&frames, 3);
        preprocess::save_image(&preprocess::unit_tensor_to_image(&strip)?, strip_path)?;
    }

    // The saved file is what counts: re-load it and score it as is.
    let saved = decode_rgb(&settings.out)?;
    let probs = classifier.classify_as_is(&saved)?;
    let tv = total_variation(&preprocess::image_to_unit_tensor(&saved)).double_value(&[]);
    Ok(DreamReport {
        network: classifier.description.clone(),
        class: target.name.clone(),
        index: target.index,
        probability: probs[target.index] as f64,
        top5: classifier.top(&probs, 5),
        total_variation: tv,
        steps: cfg.steps,
        seconds,
        output: FilePath(settings.out.clone()),
        strip: strip.map(FilePath),
        config: cfg,
        warnings,
    })
}

impl Report for DreamReport {
    fn notes(&self) -> Vec<String> {
        crate::eval::warning_lines(&self.warnings)
    }

    fn render_text(&self) -> String {
        let mut s = format!(
            "dream of '{}' ({}) with {}: {}\n",
            self.class, self.index, self.network, self.output
        );
        s += &format!(
            "saved PNG re-scored: p({}) = {:.4}   TV = {:.4}   {} steps in {:.1}s\n",
            self.class, self.probability, self.total_variation, self.steps, self.seconds
        );
        s += &format!("top-5: {}\n", format_top(&self.top5));
        if let Some(strip) = &self.strip {
            s += &format!("frames: {strip}\n");
        }
        s
    }
}
