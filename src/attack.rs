//! `tl attack`: targeted (or untargeted) projected gradient descent on the user's image,
//! at its own resolution, through the exact resize/crop/normalise path of `tl predict`.
//!
//! Pixels stay in [0,1]; the perturbation is kept on the 8-bit grid during the attack
//! (rounded towards zero, with a straight-through gradient), so the saved lossless file is
//! exactly the image that was optimised and never exceeds the budget. Success is judged
//! by re-loading the saved file and classifying it as `tl predict` does.
use crate::classes;
use crate::cli::{AttackArgs, Norm};
use crate::commands::Context;
use crate::error::{Result, TlError};
use crate::model::Classifier;
use crate::preprocess::{self, normalize_tensor, ResizeMatrices};
use crate::progress;
use crate::util::parse_fraction;
use image::RgbImage;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Reduction, Tensor};

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
pub struct Top {
    pub class: String,
    pub probability: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AttackOutcome {
    pub input: PathBuf,
    pub output: Option<PathBuf>,
    pub eps: f64,
    pub success: bool,
    /// Why the image was not attacked, if it was not.
    pub skipped: Option<String>,
    pub original_class: String,
    pub adversarial_class: String,
    pub original_top5: Vec<Top>,
    pub adversarial_top5: Vec<Top>,
    /// Probability of the target (targeted) or of the original class (untargeted).
    pub prob_before: f64,
    pub prob_after: f64,
    pub linf: f64,
    pub l2: f64,
    pub psnr_db: f64,
    pub steps: usize,
    pub seconds: f64,
}

/// Probabilities of an 8-bit image through the `tl predict` path.
pub fn predict_probs(classifier: &Classifier, img: &RgbImage) -> Result<Vec<f32>> {
    let cfg = &classifier.preprocess;
    let mut buf = vec![0f32; cfg.numel()];
    preprocess::preprocess_into(img, cfg, &mut buf);
    let x = Tensor::from_slice(&buf).view([1, 3, cfg.crop as i64, cfg.crop as i64]);
    Ok(classifier.probabilities(&x)?.remove(0))
}

fn top5(classifier: &Classifier, probs: &[f32]) -> Vec<Top> {
    crate::report::top_k(probs, 5)
        .into_iter()
        .map(|i| Top {
            class: classifier.classes[i].clone(),
            probability: probs[i] as f64,
        })
        .collect()
}

/// Did the attack reach its goal on these probabilities?
fn reached(probs: &[f32], original: usize, target: Option<usize>) -> bool {
    let pred = crate::report::argmax(probs);
    match target {
        Some(t) => pred == t,
        None => pred != original,
    }
}

/// Put a perturbation on the 8-bit grid without leaving the budget or the [0,1] range.
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
        let r = match cfg.norm {
            Norm::Linf => (Tensor::rand_like(&x0) * 2.0 - 1.0) * cfg.eps,
            Norm::L2 => {
                let g = Tensor::randn_like(&x0);
                &g / g.square().sum(Kind::Float).sqrt() * (cfg.eps * 0.5)
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
        let lg =
            Vec::<f32>::try_from(logits.get(0).detach().to_device(Device::Cpu)).unwrap_or_default();
        // How far the attack is from its goal, in logits: target over the best other class,
        // or the best other class over the original one.
        let best_except = |skip: usize| {
            lg.iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, v)| *v)
                .fold(f32::MIN, f32::max)
        };
        let winner_margin = match cfg.target {
            Some(t) => lg[t] - best_except(t),
            None => best_except(original) - lg[original],
        };
        let hit = winner_margin >= margin as f32;
        bar.set_message(format!("margin {winner_margin:+.2}"));
        if hit {
            // Check on the 8-bit image through the predict path before stopping.
            let candidate = preprocess::unit_tensor_to_image(&(&x0 + quantize(&delta, cfg)));
            if reached(
                &predict_probs(classifier, &candidate)?,
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
    let final_image = preprocess::unit_tensor_to_image(&(&x0 + quantize(&delta, cfg)));
    Ok((final_image, used))
}

/// Perturbation statistics in [0,1] pixel units.
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
    RgbImage::from_raw(a.width(), a.height(), data).expect("same size")
}

fn parse_eps_list(text: &str, norm: Norm) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let v = parse_fraction(part).map_err(|e| TlError::invalid(format!("--eps: {e}")))?;
        if v <= 0.0 || (norm == Norm::Linf && v > 1.0) {
            return Err(TlError::invalid(format!("--eps must be in (0, 1] for L-inf (pixel units; e.g. 4/255) and > 0 for L2, got {}", part.trim())));
        }
        out.push(v);
    }
    Ok(out)
}

fn output_names(inputs: &[PathBuf]) -> Vec<String> {
    let mut seen = std::collections::HashMap::new();
    inputs
        .iter()
        .map(|p| {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "image".into());
            let n = seen.entry(stem.clone()).or_insert(0usize);
            *n += 1;
            if *n == 1 {
                format!("{stem}.png")
            } else {
                format!("{stem}-{n}.png")
            }
        })
        .collect()
}

fn eps_label(eps: f64) -> String {
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

pub fn run(ctx: &Context, args: &AttackArgs) -> Result<()> {
    let classifier = crate::commands::load_network(
        ctx,
        args.network.run.as_deref(),
        args.network.backbone.as_deref(),
    )?;
    let target = match (&args.target, args.untargeted) {
        (Some(t), false) => {
            let r = classes::resolve(t, &classifier.classes)?;
            if let Some(note) = &r.note {
                eprintln!("note: {note}");
            }
            Some(r.index)
        }
        (None, true) => None,
        (Some(_), true) => return Err(TlError::invalid("give --target or --untargeted, not both")),
        (None, false) => {
            return Err(TlError::invalid(
                "which class should the network see? give --target NAME (or --untargeted)",
            ))
        }
    };
    let eps_list = parse_eps_list(&args.eps, args.norm)?;
    if args.steps == 0 {
        return Err(TlError::invalid("--steps must be positive"));
    }
    let inputs = crate::data::expand_inputs(&args.images)?;
    let sweep = eps_list.len() > 1;
    let many = inputs.len() > 1 || sweep;
    if many && args.out.extension().is_some() && !args.out.is_dir() {
        return Err(TlError::file(
            &args.out,
            "several images or eps values need an output folder, not a file name",
        ));
    }
    if !many && args.out.exists() && !args.force {
        return Err(TlError::file(
            &args.out,
            "already exists (pass --force to overwrite)",
        ));
    }
    if args.diff.is_some() && many {
        return Err(TlError::invalid("--diff takes one image and one eps"));
    }
    let names = output_names(&inputs);
    let overall = progress::bar(
        (inputs.len() * eps_list.len()) as u64,
        "attack",
        ctx.progress,
    );
    let mut outcomes: Vec<AttackOutcome> = Vec::new();
    for &eps in &eps_list {
        let alpha = match &args.alpha {
            Some(a) => parse_fraction(a).map_err(|e| TlError::invalid(format!("--alpha: {e}")))?,
            None => match args.norm {
                Norm::Linf => eps / 4.0,
                Norm::L2 => eps / 5.0,
            },
        };
        if alpha <= 0.0 {
            return Err(TlError::invalid("--alpha must be positive"));
        }
        for (path, name) in inputs.iter().zip(&names) {
            let out_path = if !many {
                args.out.clone()
            } else if sweep {
                args.out
                    .join(format!("eps-{}", eps_label(eps).replace('/', "_")))
                    .join(name)
            } else {
                args.out.join(name)
            };
            let outcome = attack_one(
                &classifier,
                path,
                &out_path,
                eps,
                alpha,
                target,
                args,
                ctx,
                many,
            )?;
            if !args.json {
                print_line(&outcome, many);
            }
            outcomes.push(outcome);
            overall.inc(1);
        }
    }
    overall.finish_and_clear();
    let summaries: Vec<serde_json::Value> = eps_list
        .iter()
        .map(|&eps| summary(&outcomes, eps))
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "network": classifier.description, "outcomes": outcomes, "summary": summaries })).unwrap());
    } else if many {
        println!(
            "\n{:>10}  {:>8}  {:>9}  {:>12}  {:>8}",
            "eps", "success", "attacked", "median steps", "mean L2"
        );
        for s in &summaries {
            let steps = s["median_steps"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into());
            println!(
                "{:>10}  {:>7.1}%  {:>9}  {:>12}  {:>8.3}",
                s["eps_label"].as_str().unwrap_or(""),
                s["success_rate"].as_f64().unwrap_or(0.0) * 100.0,
                s["attacked"].as_u64().unwrap_or(0),
                steps,
                s["mean_l2"].as_f64().unwrap_or(0.0)
            );
        }
    }
    if outcomes.iter().all(|o| o.skipped.is_some()) {
        return Err(TlError::invalid("no image could be attacked"));
    }
    Ok(())
}

fn summary(outcomes: &[AttackOutcome], eps: f64) -> serde_json::Value {
    let attacked: Vec<&AttackOutcome> = outcomes
        .iter()
        .filter(|o| o.eps == eps && o.skipped.is_none())
        .collect();
    let ok: Vec<&&AttackOutcome> = attacked.iter().filter(|o| o.success).collect();
    let mut steps: Vec<usize> = ok.iter().map(|o| o.steps).collect();
    steps.sort();
    let mut seconds: Vec<f64> = attacked.iter().map(|o| o.seconds).collect();
    seconds.sort_by(f64::total_cmp);
    serde_json::json!({
        "eps": eps,
        "eps_label": eps_label(eps),
        "attacked": attacked.len(),
        "succeeded": ok.len(),
        "success_rate": if attacked.is_empty() { 0.0 } else { ok.len() as f64 / attacked.len() as f64 },
        "median_steps": steps.get(steps.len() / 2).copied(),
        "mean_l2": if attacked.is_empty() { 0.0 } else { attacked.iter().map(|o| o.l2).sum::<f64>() / attacked.len() as f64 },
        "median_seconds": seconds.get(seconds.len() / 2).copied(),
    })
}

#[allow(clippy::too_many_arguments)]
fn attack_one(
    classifier: &Classifier,
    path: &Path,
    out_path: &Path,
    eps: f64,
    alpha: f64,
    target: Option<usize>,
    args: &AttackArgs,
    ctx: &Context,
    many: bool,
) -> Result<AttackOutcome> {
    let start = Instant::now();
    let mut outcome = AttackOutcome {
        input: path.to_path_buf(),
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
    };
    let img = match preprocess::decode_rgb(path) {
        Ok(img) => img,
        Err(e) if many => {
            outcome.skipped = Some(e.to_string());
            return Ok(outcome);
        }
        Err(e) => return Err(e),
    };
    let before = predict_probs(classifier, &img)?;
    let original = crate::report::argmax(&before);
    outcome.original_class = classifier.classes[original].clone();
    outcome.original_top5 = top5(classifier, &before);
    let watched = target.unwrap_or(original);
    outcome.prob_before = before[watched] as f64;
    if target == Some(original) {
        let why = format!(
            "{}: already classified as '{}' (p={:.3}); nothing to attack",
            path.display(),
            outcome.original_class,
            before[original]
        );
        if many {
            outcome.skipped = Some(why);
            return Ok(outcome);
        }
        return Err(TlError::invalid(why));
    }
    if out_path.exists() && !args.force {
        return Err(TlError::file(
            out_path,
            "already exists (pass --force to overwrite)",
        ));
    }
    let cfg = AttackConfig {
        norm: args.norm,
        eps,
        alpha,
        steps: args.steps,
        margin: args.margin,
        random_start: !args.no_random_start,
        seed: args.seed,
        target,
    };
    let bar = progress::bar(args.steps as u64, "steps", ctx.progress && !many);
    let (adv, steps) = attack_image(classifier, &img, original, &cfg, &bar)?;
    bar.finish_and_clear();
    preprocess::save_image(&adv, out_path)?;
    // The saved file is what counts: re-load it and classify it as `tl predict` does.
    let reloaded = preprocess::decode_rgb(out_path)?;
    let after = predict_probs(classifier, &reloaded)?;
    let (linf, l2, psnr) = distortion(&img, &reloaded);
    outcome.output = Some(out_path.to_path_buf());
    outcome.success = reached(&after, original, target);
    outcome.adversarial_class = classifier.classes[crate::report::argmax(&after)].clone();
    outcome.adversarial_top5 = top5(classifier, &after);
    outcome.prob_after = after[watched] as f64;
    outcome.linf = linf;
    outcome.l2 = l2;
    outcome.psnr_db = psnr;
    outcome.steps = steps;
    outcome.seconds = start.elapsed().as_secs_f64();
    if let Some(diff) = &args.diff {
        if diff.exists() && !args.force {
            return Err(TlError::file(
                diff,
                "already exists (pass --force to overwrite)",
            ));
        }
        preprocess::save_image(&diff_image(&img, &reloaded), diff)?;
    }
    Ok(outcome)
}

fn print_line(o: &AttackOutcome, many: bool) {
    if let Some(why) = &o.skipped {
        println!("{}: skipped: {why}", o.input.display());
        return;
    }
    let fmt_top = |t: &[Top]| {
        t.iter()
            .map(|c| format!("{} {:.3}", c.class, c.probability))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if many {
        println!(
            "{}  {}  {} -> {}  p {:.3} -> {:.3}  Linf {:.1}/255  L2 {:.3}  PSNR {:.1} dB  {} steps",
            if o.success { "OK  " } else { "FAIL" },
            o.input.display(),
            o.original_class,
            o.adversarial_class,
            o.prob_before,
            o.prob_after,
            o.linf * 255.0,
            o.l2,
            o.psnr_db,
            o.steps
        );
    } else {
        println!("input:        {}", o.input.display());
        println!("original:     {}", fmt_top(&o.original_top5));
        println!("adversarial:  {}", fmt_top(&o.adversarial_top5));
        println!("target p:     {:.4} -> {:.4}", o.prob_before, o.prob_after);
        println!(
            "perturbation: Linf {:.4} ({:.1}/255), L2 {:.4}, PSNR {:.1} dB",
            o.linf,
            o.linf * 255.0,
            o.l2,
            o.psnr_db
        );
        println!(
            "steps:        {} in {:.1}s (eps {})",
            o.steps,
            o.seconds,
            eps_label(o.eps)
        );
        println!(
            "result:       {} — saved {} is classified as '{}'",
            if o.success { "SUCCESS" } else { "FAILED" },
            o.output
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            o.adversarial_class
        );
    }
}
