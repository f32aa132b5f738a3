//! Are `tl explain`'s maps faithful? On validation photos of a trained run (never trained
//! on), grey out (0.5) the 20 % of the network's crop with the highest heat, the 20 % with
//! the lowest, and 5 random masks of 16×16 patches covering 20 %, and measure how much each
//! lowers the score: the predicted class's log-probability margin over the runner-up (so
//! that saturated probabilities still compare). Also: CAM against Grad-CAM on the first 20
//! photos (correlation after normalisation).
//!
//!   cargo run --release --example explain_faithfulness -- RUN DATA [N] [--method cam|gradcam]
//!
//! DATA is the folder the run was trained from (its split.json's paths are relative to it).
//! Prints one JSON object.
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};
use tl::data::decode::decode_rgb;
use tl::data::preprocess::{normalize_tensor, resized_tensor};
use tl::inspect::explain::{correlation, normalised, to_crop, MapNet, MethodChoice};
use tl::run::Run;
use tl::util::SplitMix64;

const SHARE: f64 = 0.2;
const PATCH: i64 = 16;

/// The margin of `class` over the best other class, in log-probability (= logits).
fn margin(logits: &Tensor, class: i64) -> f64 {
    let l = Vec::<f32>::try_from(&logits.get(0)).unwrap();
    let best_other = l
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as i64 != class)
        .map(|(_, &v)| v)
        .fold(f32::NEG_INFINITY, f32::max);
    (l[class as usize] - best_other) as f64
}

/// `unit` (`[1,3,S,S]` in [0,1]) with the pixels of `mask` (`[S,S]` bool) set to 0.5.
fn greyed(unit: &Tensor, mask: &Tensor) -> Tensor {
    unit.where_self(
        &mask.logical_not().unsqueeze(0).unsqueeze(0),
        &Tensor::from(0.5f32),
    )
}

/// The pixels whose heat ranks in the top (or bottom) `share`.
fn by_heat(heat: &Tensor, top: bool) -> Tensor {
    let flat = heat.flatten(0, -1);
    let n = flat.size()[0];
    let k = (n as f64 * SHARE).round() as i64;
    let (_, idx) = flat.topk(k, 0, top, false);
    let mask = Tensor::zeros([n], (Kind::Bool, Device::Cpu));
    let mask = mask.index_fill(0, &idx, 1);
    mask.view_as(heat)
}

/// Random 16×16 patches covering `share` of the crop.
fn random_patches(side: i64, rng: &mut SplitMix64) -> Tensor {
    let per = side / PATCH;
    let mut cells: Vec<i64> = (0..per * per).collect();
    rng.shuffle(&mut cells);
    let k = ((per * per) as f64 * SHARE).round() as usize;
    let mut mask = vec![false; (side * side) as usize];
    for &c in &cells[..k] {
        let (cy, cx) = (c / per, c % per);
        for y in cy * PATCH..(cy + 1) * PATCH {
            for x in cx * PATCH..(cx + 1) * PATCH {
                mask[(y * side + x) as usize] = true;
            }
        }
    }
    Tensor::from_slice(&mask).view([side, side])
}

fn main() -> tl::error::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = Run::open(&PathBuf::from(&args[0]))?;
    let data = PathBuf::from(&args[1]);
    let n: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(100);
    let method = match args
        .iter()
        .position(|a| a == "--method")
        .map(|i| args[i + 1].as_str())
    {
        Some("gradcam") => MethodChoice::GradCam,
        Some("cam") => MethodChoice::Cam,
        _ => MethodChoice::Auto,
    };
    let device = Device::Cpu;
    let spec = run.backbone()?;
    let layers = spec.load_layers(device)?;
    let head = run.load_head(device)?;
    let features = run.feature_net(device)?;
    let cfg = run.config.preprocess;
    let net = MapNet::Pooled {
        layers: &layers,
        head: &head,
        last_onnx: None,
    };
    let last = layers.names.len() - 1;
    let val = run.split()?.map(|s| s.val).unwrap_or_default();
    // An even spread over the validation side (both classes), in its recorded order.
    let step = (val.len() / n.max(1)).max(1);
    let chosen: Vec<PathBuf> = val
        .iter()
        .step_by(step)
        .take(n)
        .map(|e| data.join(&e.path.0))
        .collect();
    let side = cfg.crop as i64;
    let mut rng = SplitMix64::new(0);
    let (mut beats_low, mut beats_random, mut correlations) = (0usize, 0usize, Vec::new());
    let mut drops = Vec::new();
    let score = |unit: &Tensor, class: i64| -> tl::error::Result<f64> {
        let x = normalize_tensor(unit, &cfg);
        tch::no_grad(|| -> tl::error::Result<f64> {
            Ok(margin(&head.forward(&features.forward(&x)?), class))
        })
    };
    for path in &chosen {
        let img = decode_rgb(path)?;
        let x = resized_tensor(&img, &cfg);
        let unit = tl::data::preprocess::denormalize_tensor(&x, &cfg);
        let logits = tch::no_grad(|| -> tl::error::Result<Tensor> {
            Ok(head.forward(&features.forward(&x)?))
        })?;
        let class = logits.get(0).argmax(0, false).int64_value(&[]);
        let base = margin(&logits, class);
        let m = net.class_map(&x, class as usize, method, last)?;
        let heat = to_crop(&m.map, side);
        if correlations.len() < 20 {
            let other = match m.method {
                tl::inspect::explain::Method::Cam => MethodChoice::GradCam,
                tl::inspect::explain::Method::GradCam => MethodChoice::Cam,
            };
            if let Ok(o) = net.class_map(&x, class as usize, other, last) {
                correlations.push(correlation(&normalised(&m.map), &normalised(&o.map)));
            }
        }
        let top = base - score(&greyed(&unit, &by_heat(&heat, true)), class)?;
        let low = base - score(&greyed(&unit, &by_heat(&heat, false)), class)?;
        let mut random = 0.0;
        for _ in 0..5 {
            random += base - score(&greyed(&unit, &random_patches(side, &mut rng)), class)?;
        }
        random /= 5.0;
        beats_low += (top > low) as usize;
        beats_random += (top > random) as usize;
        drops.push((top, low, random));
    }
    let k = chosen.len().max(1) as f64;
    let mean = |f: fn(&(f64, f64, f64)) -> f64| drops.iter().map(f).sum::<f64>() / k;
    let min_corr = correlations.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{}",
        serde_json::json!({
            "run": args[0],
            "photos": chosen.len(),
            "method": format!("{method:?}"),
            "top_beats_bottom": beats_low,
            "top_beats_bottom_share": beats_low as f64 / k,
            "top_beats_random": beats_random,
            "top_beats_random_share": beats_random as f64 / k,
            "mean_drop_top": mean(|d| d.0),
            "mean_drop_bottom": mean(|d| d.1),
            "mean_drop_random": mean(|d| d.2),
            "cam_vs_gradcam_photos": correlations.len(),
            "cam_vs_gradcam_min_correlation": min_corr,
        })
    );
    Ok(())
}
