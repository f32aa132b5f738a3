//! "None of these" and calibrated probabilities (issue #24), on the tiny fixture backbone:
//! the threshold accepts the requested share of validation images (checked against an
//! independent computation), `tl predict` answers unknown / `--no-unknown` / `--accept`,
//! temperature scaling keeps the argmax, old runs still predict, bad values are refused,
//! exported models and fine-tuned, `--views` and `--stream` runs agree with the run.
mod common;
use common::{assert_clean_error, color_dataset, read_json, tiny, Tl};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Red and blue images to train on; green and yellow ones unlike them.
fn data(root: &Path) -> (PathBuf, PathBuf) {
    let known = root.join("known");
    color_dataset(&known, &["red", "blue"], 16, 1);
    let all = root.join("all");
    color_dataset(&all, &["red", "blue", "green", "yellow"], 6, 2);
    let other = root.join("other");
    std::fs::create_dir_all(&other).unwrap();
    for c in ["green", "yellow"] {
        std::fs::rename(all.join(c), other.join(c)).unwrap();
    }
    (known, other)
}

fn train(tl: &Tl, data: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let tiny = tiny();
    let mut args = vec![
        "train",
        "--backbone",
        tiny.to_str().unwrap(),
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--val-split",
        "0.5",
        "-q",
    ];
    args.extend_from_slice(extra);
    tl.ok(&args);
    read_json(&out.join("report.json"))
}

fn json(tl: &Tl, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&tl.ok(args)).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Scores by hand: 1 − the largest cosine similarity to any training row (the unit-length
/// training rows stored in float16, as the run keeps them).
fn knn_scores(train: &Tensor, x: &Tensor) -> Vec<f64> {
    let unit = |t: &Tensor| t / t.norm_scalaropt_dim(2, [1i64], true);
    let refs = unit(train).to_kind(Kind::Half).to_kind(Kind::Float);
    let sims = unit(x).matmul(&refs.tr());
    let best = sims.amax([1i64], false);
    let dist: Tensor = 1.0 - best;
    Vec::<f64>::try_from(dist.to_kind(Kind::Double)).unwrap()
}

#[test]
fn the_threshold_accepts_the_requested_share_of_validation_images() {
    let tmp = tempfile::tempdir().unwrap();
    let (known, _) = data(tmp.path());
    let tl = Tl::new();
    for accept in ["0.75", "0.9", "1"] {
        let run = tmp.path().join(format!("run-{accept}"));
        let features = tmp.path().join(format!("features-{accept}.safetensors"));
        train(
            &tl,
            &known,
            &run,
            &["--accept", accept, "--save-features", s(&features)],
        );
        let config = read_json(&run.join("config.json"));
        let threshold = config["unknown"]["threshold"].as_f64().unwrap();
        let t: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&features)
            .unwrap()
            .into_iter()
            .collect();
        let scores = knn_scores(&t["train_x"], &t["val_x"]);
        let n = scores.len();
        let accepted = scores.iter().filter(|&&v| v <= threshold).count();
        let want = (accept.parse::<f64>().unwrap() * n as f64).ceil() as usize;
        assert_eq!(accepted, want, "accept {accept}: {scores:?} vs {threshold}");
        // tl eval agrees image by image, and says how many it rejects.
        let eval = json(
            &tl,
            &["eval", s(&run), s(&known), "--split", "val", "--json"],
        );
        assert_eq!(
            eval["unknown"]["rejected"].as_u64().unwrap() as usize,
            n - want
        );
        let mut got: Vec<f64> = eval["unknown"]["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let mut want_scores = scores.clone();
        got.sort_by(f64::total_cmp);
        want_scores.sort_by(f64::total_cmp);
        for (a, b) in got.iter().zip(&want_scores) {
            assert!((a - b).abs() < 1e-5, "{got:?} vs {want_scores:?}");
        }
    }
}

#[test]
fn predict_answers_unknown_for_images_unlike_the_training_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let (known, other) = data(tmp.path());
    let tl = Tl::new();
    let run = tmp.path().join("run");
    train(&tl, &known, &run, &[]);
    let green = other.join("green/green_1.jpg");
    let red = known.join("red/red_1.jpg");
    let out = json(&tl, &["predict", s(&run), s(&green), s(&red), "--json"]);
    let threshold = out["unknown"]["threshold"].as_f64().unwrap();
    let p = &out["predictions"];
    assert_eq!(p[0]["class"], "unknown");
    assert_eq!(p[0]["unknown"], true);
    assert!(p[0]["unknown_score"].as_f64().unwrap() > threshold);
    assert_eq!(p[0]["unknown_threshold"].as_f64().unwrap(), threshold);
    // The classifier's own answer stays beside it.
    assert_eq!(p[0]["top"][0]["probability"], p[0]["probability"]);
    assert!(["red", "blue"].contains(&p[0]["top"][0]["class"].as_str().unwrap()));
    assert_eq!(p[1]["class"], "red");
    assert_eq!(p[1]["unknown"], false);

    // The text line says what it is nearest to and by how much.
    let text = tl.ok(&["predict", s(&run), s(&green)]);
    let line = format!(
        "{}\tunknown (nearest: {} {:.3}, distance {:.3} > {:.3})\n",
        green.display(),
        p[0]["top"][0]["class"].as_str().unwrap(),
        p[0]["probability"].as_f64().unwrap(),
        p[0]["unknown_score"].as_f64().unwrap(),
        threshold
    );
    assert_eq!(text, line);

    // --no-unknown: every image gets a class, and no judgement is reported.
    let plain = json(
        &tl,
        &["predict", s(&run), s(&green), "--no-unknown", "--json"],
    );
    assert_eq!(plain["predictions"][0]["class"], p[0]["top"][0]["class"]);
    assert!(plain["predictions"][0].get("unknown").is_none());
    assert!(plain["unknown"].is_null());

    // --accept 1 accepts every validation image: the threshold can only move up.
    let all = json(
        &tl,
        &["predict", s(&run), s(&green), "--accept", "1", "--json"],
    );
    assert!(all["unknown"]["threshold"].as_f64().unwrap() >= threshold);
    assert_eq!(all["unknown"]["accept"], 1.0);

    // Folders of other images: all of them unknown, and eval measures it.
    let eval = json(
        &tl,
        &[
            "eval",
            s(&run),
            s(&known),
            "--split",
            "val",
            "--unknown-dir",
            s(&other),
            "--json",
        ],
    );
    let o = &eval["unknown"]["other"];
    assert_eq!(o["images"], 12);
    assert_eq!(o["rejected"], 12);
    assert_eq!(o["auroc"], 1.0);
}

#[test]
fn temperature_scaling_keeps_the_argmax_and_does_not_raise_the_nll() {
    let tmp = tempfile::tempdir().unwrap();
    let known = tmp.path().join("known");
    // Overlapping colours (4 classes, few images): the head is neither perfect nor certain.
    color_dataset(&known, &["a", "b", "c", "d"], 10, 5);
    let tl = Tl::new();
    let run = tmp.path().join("run");
    let report = train(&tl, &known, &run, &["--epochs", "3"]);
    let c = &report["calibration"];
    let t = c["temperature"].as_f64().unwrap();
    assert!(t > 0.0 && t.is_finite());
    assert!(c["after"]["nll"].as_f64().unwrap() <= c["before"]["nll"].as_f64().unwrap() + 1e-9);
    assert_eq!(
        read_json(&run.join("config.json"))["calibration"]["temperature"].as_f64(),
        Some(t)
    );
    // Same answers at T = 1 (the best epoch's accuracy) and at T.
    assert_eq!(report["validation"]["accuracy"], report["val_accuracy"]);
    let eval = json(
        &tl,
        &["eval", s(&run), s(&known), "--split", "val", "--json"],
    );
    assert_eq!(eval["report"]["accuracy"], report["val_accuracy"]);
    assert_eq!(eval["calibration"]["temperature"].as_f64(), Some(t));
    for k in ["ece", "nll", "brier"] {
        let (a, b) = (
            eval["calibration"]["after"][k].as_f64().unwrap(),
            c["after"][k].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-6, "{k}: {a} vs {b}");
    }
}

#[test]
fn bad_accept_values_are_refused_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (known, _) = data(tmp.path());
    let tl = Tl::new();
    let run = tmp.path().join("run");
    train(&tl, &known, &run, &[]);
    let image = known.join("red/red_1.jpg");
    let tiny = tiny();
    for bad in ["0", "1.5", "NaN", "-0.1", "inf", "x"] {
        let out = tmp.path().join(format!("bad-{bad}"));
        // `--accept=-0.1`: a value that starts with '-' is still the flag's.
        let flag = format!("--accept={bad}");
        let stderr = tl.fails(&[
            "train",
            "--backbone",
            s(&tiny),
            s(&known),
            "--out",
            s(&out),
            &flag,
        ]);
        assert!(stderr.contains("--accept"), "{stderr}");
        assert!(!out.exists());
        for cmd in [
            vec!["predict", s(&run), s(&image), &flag],
            vec!["eval", s(&run), s(&known), &flag],
        ] {
            let stderr = tl.fails(&cmd);
            assert!(stderr.contains("--accept"), "{cmd:?}: {stderr}");
        }
    }
    let stderr = tl.fails(&[
        "predict",
        s(&run),
        s(&image),
        "--accept",
        "0.9",
        "--no-unknown",
    ]);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn runs_made_before_unknown_detection_still_predict_with_one_note() {
    let tmp = tempfile::tempdir().unwrap();
    let (known, other) = data(tmp.path());
    let tl = Tl::new();
    let run = tmp.path().join("run");
    train(&tl, &known, &run, &[]);
    // What an older tl wrote: no calibration or unknown record, no judge file.
    let config_path = run.join("config.json");
    let mut config = read_json(&config_path);
    let obj = config.as_object_mut().unwrap();
    obj.remove("calibration");
    obj.remove("unknown");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    std::fs::remove_file(run.join("unknown.safetensors")).unwrap();

    let green = other.join("green/green_1.jpg");
    let out = tl
        .cmd()
        .args(["predict", s(&run), s(&green), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let notes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("before tl judged unknown"))
        .collect();
    assert_eq!(notes.len(), 1, "{stderr}");
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(p["predictions"][0]["class"], "unknown");
    assert!(p["predictions"][0].get("unknown").is_none());
    // eval works without the new sections; --unknown-dir says why it cannot.
    let eval = json(&tl, &["eval", s(&run), s(&known), "--json"]);
    assert!(eval["unknown"].is_null() && eval["calibration"].is_null());
    let stderr = tl.fails(&["eval", s(&run), s(&known), "--unknown-dir", s(&other)]);
    assert_clean_error(&stderr);
    assert!(stderr.contains("no unknown judge"), "{stderr}");
    // A run that records a judge whose file is gone is refused, not silently unjudged.
    let run2 = tmp.path().join("run2");
    train(&tl, &known, &run2, &[]);
    std::fs::remove_file(run2.join("unknown.safetensors")).unwrap();
    let stderr = tl.fails(&["predict", s(&run2), s(&green)]);
    assert_clean_error(&stderr);
    assert!(stderr.contains("unknown.safetensors"), "{stderr}");
    tl.ok(&["predict", s(&run2), s(&green), "--no-unknown"]);
}

#[test]
fn exported_models_answer_as_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (known, other) = data(tmp.path());
    let tl = Tl::new();
    let run = tmp.path().join("run");
    train(&tl, &known, &run, &[]);
    let model = tmp.path().join("model.pt");
    tl.ok(&["export", s(&run), "-o", s(&model)]);
    let sidecar = read_json(&tmp.path().join("model.pt.json"));
    let config = read_json(&run.join("config.json"));
    assert_eq!(
        sidecar["unknown"]["threshold"],
        config["unknown"]["threshold"]
    );
    assert_eq!(sidecar["temperature"], config["calibration"]["temperature"]);
    let images = [
        other.join("green/green_1.jpg"),
        other.join("yellow/yellow_3.png"),
        known.join("blue/blue_4.jpg"),
        known.join("red/red_0.png"),
    ];
    let mut args = vec!["predict".to_string(), String::new()];
    args.extend(images.iter().map(|p| s(p).to_string()));
    // fp32, as the exported file computes (tl's own bf16 extraction is a speed setting).
    args.extend(["--json".into(), "--precision".into(), "fp32".into()]);
    let mut answers = |network: &Path| {
        args[1] = s(network).to_string();
        let v: serde_json::Value = serde_json::from_str(&tl.ok(&args)).unwrap();
        v["predictions"].as_array().unwrap().clone()
    };
    let (from_run, from_model) = (answers(&run), answers(&model));
    assert_eq!(from_run.len(), 4);
    for (a, b) in from_run.iter().zip(&from_model) {
        assert_eq!(a["class"], b["class"]);
        assert_eq!(a["unknown"], b["unknown"]);
        let d = |k: &str| (a[k].as_f64().unwrap() - b[k].as_f64().unwrap()).abs();
        assert!(
            d("probability") < 1e-5 && d("unknown_score") < 1e-5,
            "{a} vs {b}"
        );
    }
    // The model returns (probabilities, unknown_score).
    let module = tch::CModule::load(&model).unwrap();
    let out = module
        .forward_is(&[tch::IValue::Tensor(Tensor::rand(
            [3, 3, 32, 32],
            (Kind::Float, tch::Device::Cpu),
        ))])
        .unwrap();
    let tch::IValue::Tuple(parts) = out else {
        panic!("not a tuple: {out:?}")
    };
    assert_eq!(parts.len(), 2);
    // --no-unknown: probabilities alone, no judgement in the sidecar.
    let plain = tmp.path().join("plain.pt");
    tl.ok(&["export", s(&run), "-o", s(&plain), "--no-unknown"]);
    assert!(read_json(&tmp.path().join("plain.pt.json"))
        .get("unknown")
        .is_none());
    let v = json(&tl, &["predict", s(&plain), s(&images[0]), "--json"]);
    assert!(v["predictions"][0].get("unknown").is_none());
}

#[test]
fn finetuned_views_and_streamed_runs_judge_as_they_were_calibrated() {
    let tmp = tempfile::tempdir().unwrap();
    let (known, other) = data(tmp.path());
    let tl = Tl::new();
    let base = train(&tl, &known, &tmp.path().join("plain"), &[]);
    for (name, extra) in [
        (
            "finetuned",
            vec!["--finetune", "1", "--finetune-epochs", "2"],
        ),
        ("views", vec!["--views", "2"]),
        ("stream", vec!["--stream"]),
    ] {
        let run = tmp.path().join(name);
        let report = train(&tl, &known, &run, &extra);
        let u = &report["unknown"];
        // The judge's references are the plain view of each training image.
        assert_eq!(u["references"], base["unknown"]["references"], "{name}");
        // Recomputed by eval from the run's own network: the same share rejected.
        let eval = json(
            &tl,
            &[
                "eval",
                s(&run),
                s(&known),
                "--split",
                "val",
                "--unknown-dir",
                s(&other),
                "--json",
            ],
        );
        assert_eq!(
            eval["unknown"]["rejected_share"].as_f64(),
            u["calibration_rejected"].as_f64(),
            "{name}"
        );
        assert_eq!(eval["unknown"]["other"]["rejected"], 12, "{name}");
    }
    // Streaming computes the same judge as holding the features in memory.
    let streamed = read_json(&tmp.path().join("stream/config.json"));
    let plain = read_json(&tmp.path().join("plain/config.json"));
    let (a, b) = (
        streamed["unknown"]["threshold"].as_f64().unwrap(),
        plain["unknown"]["threshold"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-6, "{a} vs {b}");
}
