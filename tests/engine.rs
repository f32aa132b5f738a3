//! `--engine`: ONNX Runtime and libtorch compute the same features from the tiny fixture's
//! two exports; the cache keeps them apart; without ONNX Runtime, `auto` says so in one line
//! and uses libtorch, and `onnx` is a one-line error.
mod common;
use common::{color_dataset, fixtures, read_json, tiny, Tl};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

fn train(tl: &Tl, engine: &str, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--engine".to_string(),
        engine.to_string(),
        "train".into(),
        "-b".into(),
        tiny().display().to_string(),
        data.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "-q".into(),
        "--epochs".into(),
        "5".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    tl.run(&args)
}

fn features(path: &Path) -> Tensor {
    let t: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect();
    Tensor::cat(&[&t["train_x"], &t["val_x"]], 0)
}

#[test]
fn onnx_runtime_and_libtorch_give_the_same_features_cached_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let tl = Tl::new();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue", "green"], 8, 21);
    let mut computed = Vec::new();
    for engine in ["onnx", "torch"] {
        let out = tmp.path().join(engine);
        let saved = tmp.path().join(format!("{engine}.safetensors"));
        let o = train(
            &tl,
            engine,
            &data,
            &out,
            &["--save-features", saved.to_str().unwrap(), "--json"],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["extraction"]["engine"], engine);
        assert_eq!(
            read_json(&out.join("config.json"))["extract"]["engine"],
            engine
        );
        computed.push(report["extraction"]["computed"].as_u64().unwrap());
    }
    // Same images, same cache folder: the second engine found nothing of the first's.
    assert_eq!(computed, vec![24, 24]);
    let (a, b) = (
        features(&tmp.path().join("onnx.safetensors")),
        features(&tmp.path().join("torch.safetensors")),
    );
    assert_eq!(a.size(), b.size());
    let cos = Tensor::cosine_similarity(&a, &b, 1, 1e-12);
    let worst = cos.min().double_value(&[]);
    assert!(worst >= 0.9999, "worst cosine {worst}");
}

#[test]
fn without_onnx_runtime_auto_falls_back_and_onnx_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let tl = Tl::new();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue"], 4, 22);
    let missing = tmp.path().join("libonnxruntime.so");
    let run = |engine: &str, out: &str| {
        tl.cmd()
            .env("TL_ONNXRUNTIME", &missing)
            .env("TL_PRECISION", "fp32") // else `auto` takes OpenVINO on a bf16 CPU
            .args(["--engine", engine, "train", "-b", tiny().to_str().unwrap()])
            .arg(&data)
            .args([
                "--out",
                tmp.path().join(out).to_str().unwrap(),
                "-q",
                "--epochs",
                "3",
            ])
            .output()
            .unwrap()
    };
    let o = run("auto", "auto");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let notes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("extracting with libtorch"))
        .collect();
    assert_eq!(notes.len(), 1, "{stderr}");
    assert!(
        notes[0].contains("libonnxruntime.so") && notes[0].contains("not found"),
        "{stderr}"
    );
    assert_eq!(
        read_json(&tmp.path().join("auto/config.json"))["extract"]["engine"],
        "torch"
    );

    let o = run("onnx", "onnx");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    common::assert_clean_error(&stderr);
    assert!(stderr.contains("not found"), "{stderr}");
    assert!(!tmp.path().join("onnx").exists());
}

#[test]
fn a_backbone_without_an_onnx_export() {
    let tmp = tempfile::tempdir().unwrap();
    let tl = Tl::new();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue"], 4, 23);
    let raw = fixtures().join("backbones/raw.pt");
    let args = |engine: &'static str, out: &str| -> Vec<String> {
        vec![
            "--engine".into(),
            engine.into(),
            "train".into(),
            "-b".into(),
            raw.display().to_string(),
            data.display().to_string(),
            "--out".into(),
            tmp.path().join(out).display().to_string(),
            "-q".into(),
        ]
    };
    let err = tl.fails(&args("onnx", "a"));
    assert!(
        err.contains("has no ONNX export") && err.contains("--engine torch"),
        "{err}"
    );
    // `auto`: libtorch, the only engine for it, without a note about a missing export.
    let o = tl.run(&args("auto", "b"));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && !stderr.contains("ONNX export"),
        "{stderr}"
    );
    assert_eq!(
        read_json(&tmp.path().join("b/config.json"))["extract"]["engine"],
        "torch"
    );
}

#[test]
fn doctor_names_the_engine() {
    let out = Tl::new().ok(&["doctor"]);
    assert!(out.contains("ONNX Runtime: 1."), "{out}");
    assert!(out.contains("engine: auto"), "{out}");
    let out = Tl::new().ok(&["--engine", "onnx", "--threads", "2", "doctor"]);
    assert!(
        out.contains("(2 workers decoding and running their own batches, 1 thread each)"),
        "{out}"
    );
    let out = Tl::new().ok(&["--engine", "onnx", "--decode-threads", "3", "doctor"]);
    assert!(
        out.contains("(one session of 1 thread fed by 3 decoders)"),
        "{out}"
    );
}

#[test]
fn predict_of_a_frozen_run_gives_the_same_answers_on_both_engines() {
    let tmp = tempfile::tempdir().unwrap();
    let tl = Tl::new();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue", "green"], 5, 24);
    let run = tmp.path().join("run");
    let o = train(&tl, "auto", &data, &run, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let predict = |engine: &str| -> serde_json::Value {
        let out = tl.ok(&[
            "--engine",
            engine,
            "predict",
            run.to_str().unwrap(),
            data.to_str().unwrap(),
            "--json",
            "-q",
        ]);
        serde_json::from_str(&out).unwrap()
    };
    let (onnx, torch) = (predict("onnx"), predict("torch"));
    assert!(
        onnx["network"].as_str().unwrap().contains("ONNX Runtime"),
        "{}",
        onnx["network"]
    );
    assert!(!torch["network"].as_str().unwrap().contains("ONNX Runtime"));
    let rows = |v: &serde_json::Value| -> Vec<(String, f64)> {
        v["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["class"].as_str().unwrap().to_string(),
                    p["probability"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (a, b) = (rows(&onnx), rows(&torch));
    assert_eq!(a.len(), 15);
    for ((c1, p1), (c2, p2)) in a.iter().zip(&b) {
        assert_eq!(c1, c2);
        assert!((p1 - p2).abs() < 1e-4, "{p1} vs {p2}");
    }
}

/// ONNX Runtime's extraction layouts — workers that each decode and run their own batches (the
/// default: one per thread), and one session fed by decoder threads (`--decode-threads`) —
/// compute the same features; an error in a worker (here a sidecar whose feature size the
/// model does not produce) ends the run with one line naming the model.
#[test]
fn extraction_layouts_give_the_same_features_and_a_worker_error_ends_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let tl = Tl::new();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue", "green"], 13, 25);
    let layouts: [(&str, &str, &[&str], u64); 4] = [
        ("two", "2", &[], 2),
        ("three", "3", &[], 3),
        ("decoders", "2", &["--decode-threads", "2"], 0),
        ("one", "1", &[], 1),
    ];
    let mut runs = Vec::new();
    for (name, threads, extra, workers) in layouts {
        let out = tmp.path().join(name);
        let saved = tmp.path().join(format!("{name}.safetensors"));
        let mut args = vec![
            "--threads",
            threads,
            "--engine",
            "onnx",
            "train",
            "-b",
            "tiny",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "-q",
            "--no-cache",
            "--batch-size",
            "4",
            "--save-features",
            saved.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = tl
            .cmd()
            .env_remove("TL_THREADS")
            .args(&args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["extraction"]["workers"], workers, "{name}");
        assert_eq!(report["extraction"]["computed"], 39, "{name}");
        runs.push((name, features(&saved), report["val_accuracy"].clone()));
    }
    let (_, reference, accuracy) = &runs[0];
    for (name, f, acc) in &runs[1..] {
        assert_eq!(f.size(), reference.size(), "{name}");
        let worst = Tensor::cosine_similarity(f, reference, 1, 1e-12)
            .min()
            .double_value(&[]);
        assert!(worst >= 0.99999, "{name}: worst cosine {worst}");
        assert_eq!(acc, accuracy, "{name}");
    }

    // A sidecar that promises 33 features of a model that gives 32.
    let dir = tmp.path().join("backbones");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(fixtures().join("backbones")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let mut sidecar = read_json(&dir.join("tiny.json"));
    assert_eq!(sidecar["feature_dim"], 32);
    sidecar["feature_dim"] = 33.into();
    std::fs::write(dir.join("tiny.json"), sidecar.to_string()).unwrap();
    let o = tl
        .cmd()
        .env("TL_THREADS", "2")
        .args([
            "--engine",
            "onnx",
            "train",
            "-b",
            dir.join("tiny.json").to_str().unwrap(),
            data.to_str().unwrap(),
            "--out",
            tmp.path().join("bad").to_str().unwrap(),
            "-q",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    common::assert_clean_error(&stderr);
    assert!(
        stderr.contains("tiny.features.onnx")
            && stderr.contains("outputs 32 features per image but its sidecar says feature_dim 33"),
        "{stderr}"
    );
    assert!(
        !tmp.path().join("bad").exists(),
        "a failed run left its folder"
    );
}
