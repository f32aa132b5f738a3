//! End-to-end tests of the `tl` binary on generated data and the tiny fixture backbone.
mod common;
use common::{color_dataset, read_json, tiny, walk, Tl};
use std::path::{Path, PathBuf};

fn train(tl: &Tl, data: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let tiny = tiny();
    let mut args = vec![
        "train",
        "--backbone",
        tiny.to_str().unwrap(),
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "-q",
    ];
    args.extend_from_slice(extra);
    tl.ok(&args);
    read_json(&out.join("report.json"))
}

#[test]
fn doctor_runs_on_cpu() {
    let out = Tl::new().ok(&["doctor"]);
    // The version the library was built against, not a copy of it.
    assert_ne!(tl::LIBTORCH_VERSION, "unknown");
    assert!(
        out.contains(&format!("libtorch: {} (", tl::LIBTORCH_VERSION)),
        "{out}"
    );
    assert!(out.contains("default device: cpu"), "{out}");
    assert!(
        out.contains("  tiny: 32 features, 10 classes, weights: RANDOM"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&Tl::new().ok(&["doctor", "--json"])).unwrap();
    assert_eq!(json["libtorch_version"], tl::LIBTORCH_VERSION);
}

#[test]
fn bench_measures_the_backbone_and_matmul() {
    let tl = Tl::new();
    let json: serde_json::Value = serde_json::from_str(&tl.ok(&[
        "bench",
        "--backbone",
        "tiny",
        "--batch-size",
        "4",
        "--batches",
        "2",
        "--matmul-size",
        "64",
        "--json",
    ]))
    .unwrap();
    assert_eq!(json["backbone"], "tiny");
    assert_eq!(json["device"], "cpu");
    assert_eq!(
        (json["batch_size"].as_u64(), json["batches"].as_u64()),
        (Some(4), Some(2))
    );
    assert!(json["images_per_second"].as_f64().unwrap() > 0.0);
    assert!(json["matmul_gflops"].as_f64().unwrap() > 0.0);
    let text = tl.ok(&[
        "bench",
        "--backbone",
        "tiny",
        "--batches",
        "1",
        "--matmul-size",
        "0",
    ]);
    // `auto`: OpenVINO in bf16 where the CPU has native bf16, else ONNX Runtime in fp32.
    let engine = if tl::features::openvino::cpu_has_native_bf16() {
        "OpenVINO bf16"
    } else {
        "ONNX Runtime"
    };
    let want = format!(" img/s on ready tensors (batch 32, 1 threads, cpu, {engine})");
    assert!(text.starts_with("tiny: ") && text.contains(&want), "{text}");
    assert!(!text.contains("matmul"), "--matmul-size 0 skips it: {text}");
    let err = tl.fails(&["bench", "--backbone", "nonexistent"]);
    assert!(err.contains("backbone 'nonexistent' not found"), "{err}");
}

#[test]
fn unbuilt_nothing_and_help_has_examples() {
    let tl = Tl::new();
    for sub in ["train", "eval", "predict", "dream", "attack"] {
        let out = tl.ok(&[sub, "--help"]);
        assert!(out.contains("Example"), "{sub} --help has no example");
    }
}

/// A run trained on three colour classes (seed 3, a quarter for validation).
struct ColourRun {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    run: PathBuf,
    /// stderr of the training, the data folder written DATA.
    stderr: String,
    stdout: String,
}

fn colour_run(tl: &Tl) -> ColourRun {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["blue", "green", "red"], 16, 1);
    let run = tmp.path().join("run");
    let out = tl
        .cmd()
        .args([
            "train",
            "--backbone",
            tiny().to_str().unwrap(),
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "-q",
            "--val-split",
            "0.25",
            "--seed",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ColourRun {
        stderr: String::from_utf8_lossy(&out.stderr).replace(data.to_str().unwrap(), "DATA"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        _tmp: tmp,
        data,
        run,
    }
}

#[test]
fn train_writes_a_complete_run_and_learns() {
    let tl = Tl::new();
    let ColourRun {
        run,
        stderr,
        stdout,
        ..
    } = &colour_run(&tl);
    // The status lines, compared whole where they hold no timing.
    // Progress first; the report's warnings after the run.
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert_eq!(
        lines[0], "dataset DATA (ImageFolder): 3 classes, 36 train / 12 val images",
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("features: 0 cached, 48 computed ("),
        "{stderr}"
    );
    assert_eq!(
        lines[2],
        "warning: backbone 'tiny' has random weights (exported with --weights none): use it for shapes and speed, not accuracy"
    );
    assert_eq!(
        stdout.lines().next().unwrap(),
        format!("run: {}", run.display())
    );
    let report = read_json(&run.join("report.json"));
    for f in [
        "config.json",
        "classes.json",
        "head.safetensors",
        "metrics.jsonl",
        "report.json",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let config = read_json(&run.join("config.json"));
    assert_eq!(config["seed"], 3);
    assert_eq!(config["backbone"]["feature_dim"], 32);
    assert_eq!(
        config["backbone"]["features_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert_eq!(
        read_json(&run.join("classes.json")),
        serde_json::json!(["blue", "green", "red"])
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().count() >= 1);
    let val_acc = report["val_accuracy"].as_f64().unwrap();
    assert!(
        val_acc >= 0.9,
        "colour classes should be separable, got {val_acc}"
    );
    assert_eq!(report["extraction"]["computed"], 48);
}

#[test]
fn eval_of_the_validation_split_gives_the_runs_own_accuracy() {
    let tl = Tl::new();
    let c = colour_run(&tl);
    let (run, data) = (c.run.to_str().unwrap(), c.data.to_str().unwrap());
    let report = read_json(&c.run.join("report.json"));
    let text = tl.ok(&["eval", run, data]);
    assert!(
        text.contains("confusion matrix") && text.contains("precision"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&tl.ok(&["eval", run, data, "--json", "--split", "val"])).unwrap();
    assert_eq!(json["report"]["images"], 12);
    // Exactly the validation images of training: the same accuracy as report.json.
    assert_eq!(json["report"]["accuracy"], report["val_accuracy"]);
    assert_eq!(json["split_check"]["found"], 12);
    let conf = json["report"]["confusion"].as_array().unwrap();
    let total: u64 = conf
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()))
        .sum();
    assert_eq!(total, 12);
}

#[test]
fn predict_takes_files_and_folders_as_text_and_json() {
    let tl = Tl::new();
    let c = colour_run(&tl);
    let run = c.run.to_str().unwrap();
    let red = c.data.join("red/red_1.jpg");
    let out = tl.ok(&[
        "predict",
        run,
        red.to_str().unwrap(),
        c.data.join("blue").to_str().unwrap(),
    ]);
    assert_eq!(out.lines().count(), 17, "{out}");
    let json: serde_json::Value = serde_json::from_str(&tl.ok(&[
        "predict",
        "--run",
        run,
        red.to_str().unwrap(),
        "--json",
        "-k",
        "2",
    ]))
    .unwrap();
    assert_eq!(json["predictions"][0]["class"], "red");
    assert_eq!(json["predictions"][0]["top"].as_array().unwrap().len(), 2);
}

#[test]
fn an_existing_run_folder_is_not_overwritten_without_force() {
    let tl = Tl::new();
    let c = colour_run(&tl);
    let err = tl.fails(&[
        "train",
        "--backbone",
        tiny().to_str().unwrap(),
        c.data.to_str().unwrap(),
        "--out",
        c.run.to_str().unwrap(),
    ]);
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn same_seed_same_head_and_other_seed_differs() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 10, 2);
    let heads: Vec<Vec<u8>> = ["1", "1", "2"]
        .iter()
        .enumerate()
        .map(|(i, seed)| {
            let run = tmp.path().join(format!("run{i}"));
            train(
                &tl,
                &data,
                &run,
                &["--seed", seed, "--epochs", "5", "--hidden", "8"],
            );
            std::fs::read(run.join("head.safetensors")).unwrap()
        })
        .collect();
    assert_eq!(
        heads[0], heads[1],
        "same seed must give identical head weights"
    );
    assert_ne!(heads[0], heads[2], "another seed should give other weights");
}

#[test]
fn cache_is_reused_extended_and_repaired() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 10, 3);
    let r1 = train(&tl, &data, &tmp.path().join("r1"), &[]);
    assert_eq!(
        (
            r1["extraction"]["cached"].as_u64(),
            r1["extraction"]["computed"].as_u64()
        ),
        (Some(0), Some(20))
    );
    // Other head settings: everything cached.
    let r2 = train(&tl, &data, &tmp.path().join("r2"), &["--lr", "0.01"]);
    assert_eq!(
        (
            r2["extraction"]["cached"].as_u64(),
            r2["extraction"]["computed"].as_u64()
        ),
        (Some(20), Some(0))
    );
    // Two new images: only they are computed.
    let extra = tmp.path().join("extra");
    color_dataset(&extra, &["a"], 2, 99);
    for (i, e) in std::fs::read_dir(extra.join("a")).unwrap().enumerate() {
        let e = e.unwrap().path();
        std::fs::copy(
            &e,
            data.join("a").join(format!(
                "new{i}.{}",
                e.extension().unwrap().to_string_lossy()
            )),
        )
        .unwrap();
    }
    let r3 = train(&tl, &data, &tmp.path().join("r3"), &[]);
    assert_eq!(
        (
            r3["extraction"]["cached"].as_u64(),
            r3["extraction"]["computed"].as_u64()
        ),
        (Some(20), Some(2))
    );
    // Damage one entry: it is detected and recomputed.
    let entry = walk(tl.cache.path())
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "tlseg"))
        .unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&entry, bytes).unwrap();
    let r4 = train(&tl, &data, &tmp.path().join("r4"), &[]);
    assert_eq!(r4["extraction"]["computed"].as_u64(), Some(1));
    assert_eq!(r4["damaged_cache_entries"].as_array().unwrap().len(), 1);
    // --no-cache computes everything and leaves the cache alone.
    let r5 = train(&tl, &data, &tmp.path().join("r5"), &["--no-cache"]);
    assert_eq!(r5["extraction"]["computed"].as_u64(), Some(22));
}

#[test]
fn broken_files_are_skipped_reported_and_kept() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 8, 4);
    let broken = common::fixtures().join("broken");
    for e in std::fs::read_dir(&broken).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, data.join("a").join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(data.join("b/Thumbs.db"), b"junk").unwrap();
    let report = train(&tl, &data, &tmp.path().join("run"), &[]);
    let skipped: Vec<String> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["path"].as_str().unwrap(),
                s["reason"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    for (name, why) in [
        ("truncated.jpg", "truncated"),
        ("zero.jpg", "empty"),
        ("text.jpg", "not an image"),
    ] {
        assert!(
            skipped.iter().any(|s| s.contains(name) && s.contains(why)),
            "{name}: {skipped:?}"
        );
    }
    // Readable oddities (PNG named .jpg, CMYK, 16-bit, grayscale, alpha) are used.
    assert_eq!(report["extraction"]["computed"].as_u64(), Some(16 + 5));
    assert!(report["ignored_files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["path"].as_str().unwrap().ends_with("Thumbs.db")));
    for name in ["truncated.jpg", "zero.jpg", "text.jpg"] {
        assert!(
            data.join("a").join(name).exists(),
            "{name} must not be deleted"
        );
    }
}

#[test]
fn dataset_layouts() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    // Oxford-IIIT Pets with annotation lists.
    let pets = tmp.path().join("pets");
    let src = tmp.path().join("src");
    color_dataset(&src, &["Abyssinian", "american_bulldog"], 6, 5);
    std::fs::create_dir_all(pets.join("images")).unwrap();
    std::fs::create_dir_all(pets.join("annotations")).unwrap();
    let (mut trainval, mut test) = (String::new(), String::new());
    for class in ["Abyssinian", "american_bulldog"] {
        for i in 0..6 {
            let from = ["jpg", "png"]
                .iter()
                .map(|e| src.join(class).join(format!("{class}_{i}.{e}")))
                .find(|p| p.exists())
                .unwrap();
            let to = pets.join("images").join(format!("{class}_{}.jpg", i + 1));
            let img = image::open(&from).unwrap();
            img.save_with_format(&to, image::ImageFormat::Jpeg).unwrap();
            let line = format!("{class}_{} 1 1 1\n", i + 1);
            if i < 4 {
                trainval.push_str(&line)
            } else {
                test.push_str(&line)
            }
        }
    }
    std::fs::write(pets.join("annotations/trainval.txt"), trainval).unwrap();
    std::fs::write(pets.join("annotations/test.txt"), test).unwrap();
    let run = tmp.path().join("pets_run");
    train(&tl, &pets, &run, &[]);
    let config = read_json(&run.join("config.json"));
    assert_eq!(config["data"]["layout"], "oxford-pets");
    assert_eq!(
        (
            config["data"]["train_images"].as_u64(),
            config["data"]["val_images"].as_u64()
        ),
        (Some(8), Some(4))
    );
    assert_eq!(
        read_json(&run.join("classes.json")),
        serde_json::json!(["Abyssinian", "american_bulldog"])
    );
    // Without annotations: classes from the file names, split by --val-split.
    std::fs::remove_dir_all(pets.join("annotations")).unwrap();
    let run2 = tmp.path().join("pets_run2");
    train(&tl, &pets, &run2, &["--val-split", "0.5"]);
    let config = read_json(&run2.join("config.json"));
    assert_eq!(
        (
            config["data"]["train_images"].as_u64(),
            config["data"]["val_images"].as_u64()
        ),
        (Some(6), Some(6))
    );

    // train/ + val/ folders, and a Kaggle-style wrapper folder.
    let tv = tmp.path().join("tv");
    color_dataset(&tv.join("train"), &["x", "y"], 6, 6);
    color_dataset(&tv.join("val"), &["x", "y"], 3, 7);
    let run3 = tmp.path().join("tv_run");
    train(&tl, &tv, &run3, &[]);
    let config = read_json(&run3.join("config.json"));
    assert_eq!(config["data"]["layout"], "train-val");
    assert_eq!(
        (
            config["data"]["train_images"].as_u64(),
            config["data"]["val_images"].as_u64()
        ),
        (Some(12), Some(6))
    );
    let kaggle = tmp.path().join("kagglecatsanddogs");
    color_dataset(&kaggle.join("PetImages"), &["Cat", "Dog"], 5, 8);
    let run4 = tmp.path().join("kaggle_run");
    train(&tl, &kaggle, &run4, &[]);
    assert_eq!(
        read_json(&run4.join("classes.json")),
        serde_json::json!(["Cat", "Dog"])
    );
    // --val-dir
    let run5 = tmp.path().join("valdir_run");
    train(
        &tl,
        &tv.join("train"),
        &run5,
        &["--val-dir", tv.join("val").to_str().unwrap()],
    );
    assert_eq!(
        read_json(&run5.join("config.json"))["data"]["val_images"].as_u64(),
        Some(6)
    );
}

#[test]
fn stratified_split_is_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    color_dataset(tmp.path(), &["a", "b", "c"], 10, 9);
    let split = |seed| {
        let mut d = tl::data::Dataset::open(tmp.path(), None).unwrap();
        d.split(0.3, seed).unwrap();
        d
    };
    let (a, b, c) = (split(1), split(1), split(2));
    assert_eq!(a.val, b.val);
    assert_ne!(a.val, c.val);
    let mut counts = [0; 3];
    for s in &a.val {
        counts[s.label] += 1;
    }
    assert_eq!(counts, [3, 3, 3]);
}

#[test]
fn bad_backbones_give_one_line_errors() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 3, 10);
    let d = data.to_str().unwrap();
    let err = tl.fails(&["train", "--backbone", "nonexistent", d]);
    assert!(
        err.contains("backbone 'nonexistent' not found") && err.contains("tiny"),
        "{err}"
    );
    let err = tl.fails(&[
        "train",
        "--backbone",
        tmp.path().join("missing.pt").to_str().unwrap(),
        d,
    ]);
    assert!(
        err.contains("missing.pt") && err.contains("not found"),
        "{err}"
    );
    let fake = tmp.path().join("fake.pt");
    std::fs::write(&fake, "definitely not torchscript").unwrap();
    let err = tl.fails(&["train", "--backbone", fake.to_str().unwrap(), d]);
    assert!(
        err.contains("fake.pt") && err.contains("not a TorchScript file"),
        "{err}"
    );
    // A sidecar that does not match its model file.
    let bb = tmp.path().join("bb");
    std::fs::create_dir(&bb).unwrap();
    let src = common::fixtures().join("backbones");
    for f in ["tiny.json", "tiny.features.pt", "tiny.classifier.pt"] {
        std::fs::copy(src.join(f), bb.join(f)).unwrap();
    }
    std::fs::copy(src.join("tiny.classifier.pt"), bb.join("tiny.features.pt")).unwrap();
    let err = tl.fails(&[
        "train",
        "--backbone",
        bb.join("tiny.json").to_str().unwrap(),
        d,
    ]);
    assert!(err.contains("does not match its sidecar"), "{err}");
    std::fs::write(bb.join("tiny.json"), "{\"format\": 3}").unwrap();
    let err = tl.fails(&[
        "train",
        "--backbone",
        bb.join("tiny.json").to_str().unwrap(),
        d,
    ]);
    assert!(
        err.contains("tiny.json") && err.contains("sidecar"),
        "{err}"
    );
    // Bad data folder, bad device.
    let err = tl.fails(&[
        "train",
        "--backbone",
        "tiny",
        tmp.path().join("nope").to_str().unwrap(),
    ]);
    assert!(err.contains("dataset folder not found"), "{err}");
    let err = tl.fails(&["--device", "cuda:3", "train", "--backbone", "tiny", d]);
    assert!(err.contains("cuda"), "{err}");
}

#[test]
fn raw_torchscript_backbone_without_sidecar_trains() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 6, 11);
    let raw = common::fixtures().join("backbones/raw.pt");
    let out = tl
        .cmd()
        .args([
            "train",
            "--backbone",
            raw.to_str().unwrap(),
            data.to_str().unwrap(),
            "--out",
            tmp.path().join("run").to_str().unwrap(),
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sidecar"));
}

#[test]
fn a_changed_backbone_invalidates_the_run() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 4, 12);
    let bb = tmp.path().join("bb");
    std::fs::create_dir(&bb).unwrap();
    for f in ["tiny.json", "tiny.features.pt", "tiny.classifier.pt"] {
        std::fs::copy(common::fixtures().join("backbones").join(f), bb.join(f)).unwrap();
    }
    let run = tmp.path().join("run");
    tl.ok(&[
        "train",
        "--backbone",
        bb.join("tiny.json").to_str().unwrap(),
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "-q",
        "--epochs",
        "2",
    ]);
    std::fs::write(bb.join("tiny.features.pt"), b"changed").unwrap();
    let err = tl.fails(&["eval", run.to_str().unwrap(), data.to_str().unwrap()]);
    assert!(
        err.contains("backbone changed since this run was trained"),
        "{err}"
    );
    std::fs::remove_file(bb.join("tiny.features.pt")).unwrap();
    let err = tl.fails(&["predict", run.to_str().unwrap(), data.to_str().unwrap()]);
    assert!(err.contains("missing"), "{err}");
    let err = tl.fails(&["eval", tmp.path().to_str().unwrap(), data.to_str().unwrap()]);
    assert!(err.contains("not a tl run folder"), "{err}");
}

#[test]
fn imbalanced_classes_lead_with_balanced_accuracy_and_balance_is_recorded() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["blue", "green", "red"], 24, 1);
    // Blue keeps 24 images, green and red 6: 4× fewer.
    for class in ["green", "red"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(data.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in &files[6..] {
            std::fs::remove_file(f).unwrap();
        }
    }
    for (balance, run) in [
        ("none", "r-none"),
        ("weights", "r-weights"),
        ("sampler", "r-sampler"),
        ("logit", "r-logit"),
    ] {
        let run = tmp.path().join(run);
        let out = tl.ok(&[
            "train",
            "--backbone",
            tiny().to_str().unwrap(),
            data.to_str().unwrap(),
            "--balance",
            balance,
            "--out",
            run.to_str().unwrap(),
            "-q",
        ]);
        let line = out.lines().nth(1).unwrap();
        assert!(
            line.contains("val balanced accuracy")
                && line.contains("macro-F1")
                && line.contains(&format!("--balance {balance}")),
            "{out}"
        );
        assert_eq!(read_json(&run.join("report.json"))["balance"], balance);
        assert_eq!(
            read_json(&run.join("config.json"))["train"]["balance"],
            balance
        );
    }
    // The default (auto) adjusts the logits when the classes are this unequal.
    let run = tmp.path().join("r-auto");
    tl.ok(&[
        "train",
        "--backbone",
        tiny().to_str().unwrap(),
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(read_json(&run.join("report.json"))["balance"], "logit");
    let err = tl.fails(&[
        "train",
        "--backbone",
        tiny().to_str().unwrap(),
        data.to_str().unwrap(),
        "--balance",
        "equal",
    ]);
    assert!(err.contains("--balance"), "{err}");
}
