//! What the unknown judge and the temperature cost next to the head, on synthetic features
//! (BENCHMARKS "Unknown images and calibration"):
//!
//! ```text
//! unknown_cost IMAGES [DIM] [CLASSES]
//! ```
//! IMAGES rows split 80/20 as `tl train`'s default `--val-split 0.2`; the head trains with
//! `tl train`'s defaults (AdamW, lr 0.01, batch 64, cosine, early stopping after 10 epochs);
//! then the same calls `tl train` makes afterwards: the temperature fitted on the validation
//! logits, and the judge (references sampled to the byte budget, validation scores). Prints
//! one JSON line: seconds of each, the judge's bytes.
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use tl::head::{
    temperature, train_head, unknown, HeadConfig, OptimizerKind, Schedule, TensorRows, TrainConfig,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: i64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (n, dim, classes) = (arg(1, 100_000), arg(2, 1280), arg(3, 10));
    tch::set_num_threads(2);
    tch::manual_seed(0);
    // Class means apart in every feature, plus unit noise: a head has something to learn.
    let labels = Tensor::randint(classes, [n], (Kind::Int64, Device::Cpu));
    let means = Tensor::randn([classes, dim], (Kind::Float, Device::Cpu)) * 0.3;
    let x = (means.index_select(0, &labels) + Tensor::randn([n, dim], (Kind::Float, Device::Cpu)))
        .relu();
    let n_val = n / 5;
    let (val_x, train_x) = (x.narrow(0, 0, n_val), x.narrow(0, n_val, n - n_val));
    let (val_y, train_y) = (
        labels.narrow(0, 0, n_val),
        labels.narrow(0, n_val, n - n_val),
    );
    let (train, val) = (
        TensorRows {
            x: &train_x,
            y: &train_y,
        },
        TensorRows {
            x: &val_x,
            y: &val_y,
        },
    );
    let config = TrainConfig {
        epochs: 100,
        batch_size: 64,
        lr: 0.01,
        optimizer: OptimizerKind::Adamw,
        momentum: 0.9,
        weight_decay: 0.0,
        label_smoothing: 0.0,
        l2: 1.0 / (n - n_val) as f64,
        schedule: Schedule::Cosine,
        patience: 10,
        seed: 0,
        balance: Default::default(),
    };
    let head_config = HeadConfig {
        hidden: 0,
        dropout: 0.2,
        in_dim: dim,
        num_classes: classes,
        standardize: true,
    };
    let t0 = Instant::now();
    let outcome =
        train_head(head_config, &config, &train, Some(&val), Device::Cpu, false).expect("head");
    let head_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let logits = tch::no_grad(|| outcome.head.forward(&val_x));
    let t = temperature::fit_temperature(&logits, &val_y);
    let temperature_seconds = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let judge =
        unknown::fit_on_rows(&train, (n - n_val) as usize, &val, 1, 0, Device::Cpu).expect("judge");
    let threshold = judge.threshold(0.95);
    let judge_seconds = t2.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "images": n, "dim": dim, "classes": classes,
            "epochs": outcome.history.len(),
            "head_seconds": head_seconds,
            "temperature_seconds": temperature_seconds, "temperature": t,
            "judge_seconds": judge_seconds, "threshold": threshold,
            "references": judge.references(), "judge_bytes": judge.stored_bytes(),
            "calibration_share_of_head": (temperature_seconds + judge_seconds) / head_seconds,
        })
    );
}
