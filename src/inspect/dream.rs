//! `tl dream`: the input image that makes the network see a class — or that excites one
//! channel of an inner layer (lucent's channel objective).
//!
//! Gradient ascent on the image (kept in [0, 1], normalised inside the graph) of
//! `score − tv·TV(x) − l2·mean((x−½)²)`, with Adam, where the score is the target class's
//! logit and/or log-probability, or the mean activation of a channel. TV is the mean
//! absolute difference between neighbouring pixels, so its weight does not depend on image
//! size. `--batch K` optimises K images together and subtracts a diversity term: the mean
//! cosine similarity between the images' Gram matrices at one layer (lucent's diversity).
//! Each step but the last few (`polish`) sees the image through a random jitter, scale and
//! rotation, which keeps the result from being a fragile adversarial pattern; the score reported at the end is that
//! of the saved 8-bit PNG, re-loaded and classified with no transforms at all.
use super::classifier::Classifier;
use crate::data::decode::decode_rgb;
use crate::data::preprocess::{self, normalize_tensor};
use crate::error::{Result, TlError};
use crate::features::backbone::LayerNet;
use crate::progress;
use crate::util::{FilePath, SplitMix64};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

/// The largest image side `tl dream` makes: memory grows with its square (a 2048-pixel
/// dream through MobileNetV2 needs several GB for the gradients).
pub const MAX_DREAM_SIZE: u32 = 2048;
/// The most images one `--batch` makes (memory grows with it, as with the size).
pub const MAX_BATCH: usize = 16;

#[derive(Clone, Debug, Serialize)]
pub struct DreamConfig {
    pub steps: usize,
    pub lr: f64,
    pub tv: f64,
    pub l2: f64,
    /// Image side in pixels; None: the network's crop size.
    pub size: Option<u32>,
    pub seed: u64,
    pub init: Option<FilePath>,
    pub transforms: bool,
    /// The last steps, without the random transforms (the saved image is scored as is).
    pub polish: usize,
    pub save_every: Option<usize>,
    pub param: Parametrization,
    pub objective: Objective,
    /// Images optimised together (`--batch`).
    pub batch: usize,
    /// Weight of the similarity penalty between them.
    pub diversity: f64,
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
        if self.polish > self.steps {
            return Err(TlError::invalid(format!(
                "--polish {} is more than the {} steps",
                self.polish, self.steps
            )));
        }
        if !(self.diversity.is_finite() && self.diversity >= 0.0) {
            return Err(TlError::invalid(format!(
                "diversity weight {} must be a number >= 0",
                self.diversity
            )));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(TlError::invalid(format!(
                "--batch {} must be between 1 and {MAX_BATCH}",
                self.batch
            )));
        }
        if self.batch > 1 && self.save_every.is_some() {
            return Err(TlError::invalid(
                "--save-every makes a strip of one image; use it without --batch",
            ));
        }
        if let Some(size) = self.size.filter(|s| !(16..=MAX_DREAM_SIZE).contains(s)) {
            return Err(TlError::invalid(format!(
                "image size {size} must be between 16 and {MAX_DREAM_SIZE} pixels"
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
        .expand([x.size()[0], 2, 3], false)
        .contiguous()
        .to_device(x.device());
    let grid = Tensor::affine_grid_generator(&theta, x.size(), false);
    // mode 0 = bilinear, padding 2 = reflection
    rolled.grid_sampler(&grid, 0, 2, false)
}

/// How the optimised variables become an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parametrization {
    /// Pixels directly, clamped to [0, 1] after each step.
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
        batch: i64,
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
                Tensor::rand([batch, 3, side, side], (Kind::Float, Device::Cpu)).to_device(device)
                    * 0.2
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
                Tensor::randn(
                    [batch, 3, side, side / 2 + 1, 2],
                    (Kind::Float, Device::Cpu),
                )
                .to_device(device)
                    * 0.01
            }
        };
        // One photo for several images: the same start, made different by a little noise
        // (identical images would give the diversity term no gradient).
        let start = if init.is_some() && batch > 1 {
            let many = start.repeat([batch, 1, 1, 1, 1][..start.dim()].to_vec());
            let noise = Tensor::randn(many.size(), (Kind::Float, Device::Cpu)).to_device(device);
            many + noise * 0.02
        } else {
            start
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

/// What a dream is optimised for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// A class of the classifier.
    Class(usize),
    /// The mean activation of channel `channel` of layer `layer` (indices into the layers).
    Channel { layer: usize, channel: i64 },
}

/// The networks a dream looks through: the classifier, and every block's output when the
/// goal is a channel or the images must differ.
pub struct DreamNet<'a> {
    pub classifier: &'a Classifier,
    pub layers: Option<&'a LayerNet>,
    /// The layer whose Gram matrices the diversity term compares (with `--batch`).
    pub diversity_layer: Option<usize>,
}

impl DreamNet<'_> {
    fn layers(&self) -> Result<&LayerNet> {
        self.layers
            .ok_or_else(|| TlError::invalid("this dream needs the backbone's layers file"))
    }
}

/// The target class's score, summed over the batch.
fn class_score(logits: &Tensor, target: i64, objective: Objective) -> Tensor {
    let logit = || logits.select(1, target);
    let logprob = || logits.log_softmax(-1, Kind::Float).select(1, target);
    match objective {
        Objective::Logit => logit().sum(Kind::Float),
        Objective::Logprob => logprob().sum(Kind::Float),
        Objective::Both => (logit() + logprob()).sum(Kind::Float),
    }
}

/// Mean cosine similarity between the Gram matrices of different images' activations
/// `[K,C,H,W]`: 1 when the images excite the layer's channels alike (lucent's diversity
/// objective, averaged over the pairs).
pub fn gram_similarity(acts: &Tensor) -> Tensor {
    let (k, c) = (acts.size()[0], acts.size()[1]);
    let flat = acts.reshape([k, c, -1]);
    let grams = flat.matmul(&flat.transpose(1, 2)).reshape([k, -1]);
    let norm = grams
        .norm_scalaropt_dim(2, [1i64].as_slice(), true)
        .clamp_min(1e-12);
    let g = grams / norm;
    let sim = g.matmul(&g.transpose(0, 1));
    (sim.sum(Kind::Float) - sim.trace()) / ((k * (k - 1)).max(1) as f64)
}

/// The score of a batch of normalised images `x`: the goal summed over the images, minus
/// the weighted similarity between them.
pub(crate) fn score(net: &DreamNet, goal: Goal, cfg: &DreamConfig, x: &Tensor) -> Result<Tensor> {
    let diverse = cfg.batch > 1 && cfg.diversity > 0.0;
    let needs_layers = matches!(goal, Goal::Channel { .. }) || diverse;
    let acts = if needs_layers {
        net.layers()?.forward(x)?
    } else {
        Vec::new()
    };
    let mut total = match goal {
        Goal::Class(t) => class_score(&net.classifier.logits(x)?, t as i64, cfg.objective),
        Goal::Channel { layer, channel } => acts[layer]
            .select(1, channel)
            .mean_dim([1i64, 2].as_slice(), false, Kind::Float)
            .sum(Kind::Float),
    };
    if let (true, Some(l)) = (diverse, net.diversity_layer) {
        total -= gram_similarity(&acts[l]) * (cfg.diversity * cfg.batch as f64);
    }
    Ok(total)
}

/// `--init`: the photo, resized and centre-cropped to the dream's side, as `[1,3,S,S]`.
fn init_image(cfg: &DreamConfig, side: u32) -> Result<Option<Tensor>> {
    let Some(path) = &cfg.init else {
        return Ok(None);
    };
    let img = decode_rgb(path)?;
    let crop = preprocess::resize_crop_u8(&img, side, side);
    let img = image::RgbImage::from_raw(side, side, crop)
        .ok_or_else(|| TlError::corrupt(path, "cannot crop this image"))?;
    Ok(Some(preprocess::image_to_unit_tensor(&img)))
}

/// Optimise `cfg.batch` images for `goal`. Returns the final images `[K,3,S,S]` in [0, 1]
/// and the frames saved along the way.
pub fn dream(
    net: &DreamNet,
    goal: Goal,
    cfg: &DreamConfig,
    show_progress: bool,
) -> Result<(Tensor, Vec<Tensor>)> {
    cfg.validate()?;
    let device = net.classifier.device;
    let preprocess = net.classifier.preprocess;
    tch::manual_seed(cfg.seed as i64);
    let mut rng = SplitMix64::new(cfg.seed);
    let side = cfg.size.unwrap_or(preprocess.crop);
    let init = init_image(cfg, side)?;
    let vs = nn::VarStore::new(device);
    let param = ImageParam::new(cfg.param, &vs, init.as_ref(), side as i64, cfg.batch as i64);
    let mut opt = nn::Adam::default()
        .build(&vs, cfg.lr)
        .map_err(|e| TlError::torch("optimizer", e))?;
    let bar = progress::bar(cfg.steps as u64, "dream", show_progress);
    let mut frames = Vec::new();
    // Penalties are per image: scaled by the batch, as the score is summed over it.
    let per_image = cfg.batch as f64;
    for step in 1..=cfg.steps {
        let image = param.image();
        // The last `polish` steps see the image as it will be saved: no transform.
        let seen = if cfg.transforms && step + cfg.polish <= cfg.steps {
            random_transform(&image, &mut rng)
        } else {
            image.shallow_clone()
        };
        let score = score(net, goal, cfg, &normalize_tensor(&seen, &preprocess))?;
        let tv = total_variation(&image);
        let mut objective = &score - &tv * (cfg.tv * per_image);
        if cfg.l2 > 0.0 {
            objective -= (&image - 0.5).square().mean(Kind::Float) * (cfg.l2 * per_image);
        }
        opt.zero_grad();
        (-objective).backward();
        opt.step();
        param.after_step();
        if show_progress && (step % 8 == 0 || step == cfg.steps) {
            let s = score.double_value(&[]) / per_image;
            bar.set_message(format!("score {s:.3} tv={:.4}", tv.double_value(&[])));
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

/// The output's file name without its extension ("dream" when it has none).
fn out_stem(out: &Path) -> String {
    out.file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "dream".into())
}

pub fn strip_path(out: &Path) -> PathBuf {
    out.with_file_name(format!("{}-strip.png", out_stem(out)))
}

/// Where image `i` (0-based) of `k` goes: `out` itself for one image, else `<stem>-<i+1>.<ext>`.
pub fn image_path(out: &Path, i: usize, k: usize) -> PathBuf {
    if k <= 1 {
        return out.to_path_buf();
    }
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().to_string())
        .unwrap_or_else(|| "png".into());
    out.with_file_name(format!("{}-{}.{ext}", out_stem(out), i + 1))
}
