//! `tl train --finetune` and `--views` on the tiny fixture backbone (made splittable by
//! scripts/export_backbones.py: cuts 1, 2 and all of its 3 blocks).
mod common;
use common::{color_dataset, fixtures, read_json, tiny, Tl};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

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
        "--epochs",
        "15",
        "--finetune-epochs",
        "4",
        "--finetune-lr",
        "0.01",
    ];
    args.extend_from_slice(extra);
    tl.ok(&args);
    read_json(&out.join("report.json"))
}

fn tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// The parameters of a TorchScript top as exported, named as `tl` saves them.
fn exported_top(file: &str) -> BTreeMap<String, Tensor> {
    let module = tch::CModule::load(fixtures().join("backbones").join(file)).unwrap();
    module
        .named_parameters()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.replace('.', "_"), v.contiguous()))
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn sha256(path: &Path) -> String {
    tl::util::sha256_file(path).unwrap()
}

#[test]
fn finetuning_changes_the_top_and_never_the_trunk() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue"], 8, 1);
    let trunk = fixtures().join("backbones/tiny.trunk1.pt");
    let trunk_before = sha256(&trunk);
    let tl = Tl::new();
    let run = tmp.path().join("run");
    let report = train(&tl, &data, &run, &["--finetune", "1", "--val-split", "0.5"]);
    assert_eq!(report["finetune"]["blocks"], 1);
    assert_eq!(sha256(&trunk), trunk_before, "the trunk file was written");

    let config = read_json(&run.join("config.json"));
    let rec = &config["finetune"];
    assert_eq!(rec["trunk_sha256"], trunk_before);
    assert_eq!(rec["unfreeze"], serde_json::json!({"blocks": 1}));
    let tuned = tensors(&run.join("finetuned.safetensors"));
    let exported = exported_top("tiny.top1.pt");
    // Exactly the top's parameters are saved (the trunk's are not trainable at all)...
    assert_eq!(
        tuned.keys().collect::<Vec<_>>(),
        exported.keys().collect::<Vec<_>>()
    );
    // ...and training moved them.
    let moved = tuned
        .iter()
        .map(|(k, v)| max_diff(v, &exported[k]))
        .fold(0.0, f64::max);
    assert!(moved > 1e-4, "fine-tuning left the top unchanged ({moved})");
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(lines
        .lines()
        .any(|l| l.contains("\"stage\":\"finetune\"") && l.contains("images_per_second")));
}

#[test]
fn same_seed_gives_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue", "green"], 6, 2);
    let tl = Tl::new();
    let args = ["--finetune", "2", "--views", "2", "--seed", "5"];
    train(&tl, &data, &tmp.path().join("a"), &args);
    train(&tl, &data, &tmp.path().join("b"), &args);
    for file in ["finetuned.safetensors", "head.safetensors"] {
        let a = std::fs::read(tmp.path().join("a").join(file)).unwrap();
        let b = std::fs::read(tmp.path().join("b").join(file)).unwrap();
        assert!(a == b, "{file} differs between two runs with the same seed");
    }
    let c = tmp.path().join("c");
    train(
        &tl,
        &data,
        &c,
        &["--finetune", "2", "--views", "2", "--seed", "6"],
    );
    assert_ne!(
        std::fs::read(tmp.path().join("a/finetuned.safetensors")).unwrap(),
        std::fs::read(c.join("finetuned.safetensors")).unwrap()
    );
}

fn predict_probability(tl: &Tl, run: &Path, image: &Path) -> f64 {
    let out = tl.ok(&[
        "predict",
        run.to_str().unwrap(),
        image.to_str().unwrap(),
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["predictions"][0]["top"][0]["probability"]
        .as_f64()
        .unwrap()
}

#[test]
fn eval_and_predict_use_the_finetuned_top() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue"], 8, 3);
    let tl = Tl::new();
    let run = tmp.path().join("run");
    let report = train(&tl, &data, &run, &["--finetune", "1", "--val-split", "0.5"]);
    // eval recomputes exactly what training reported for the fine-tuned network.
    let eval: serde_json::Value = serde_json::from_str(&tl.ok(&[
        "eval",
        run.to_str().unwrap(),
        data.to_str().unwrap(),
        "--split",
        "val",
        "--json",
    ]))
    .unwrap();
    let (trained, evaluated) = (
        report["validation"]["loss"].as_f64().unwrap(),
        eval["report"]["loss"].as_f64().unwrap(),
    );
    assert!(
        (trained - evaluated).abs() < 1e-4,
        "{trained} vs {evaluated}"
    );

    let out = tl.ok(&[
        "predict",
        run.to_str().unwrap(),
        data.join("red").to_str().unwrap(),
        "--json",
    ]);
    assert!(out.contains("1 top block(s) fine-tuned"), "{out}");
    // dream and attack go through the same network.
    let dream = tmp.path().join("dream.png");
    tl.ok(&[
        "dream",
        "--run",
        run.to_str().unwrap(),
        "--class",
        "red",
        "--steps",
        "2",
        "--size",
        "64",
        "-o",
        dream.to_str().unwrap(),
    ]);
    assert!(dream.is_file());
    let image = common::walk(&data.join("blue"))[0].clone();
    let adv = tmp.path().join("adv.png");
    tl.ok(&[
        "attack",
        image.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
        "--target",
        "red",
        "--steps",
        "2",
        "-o",
        adv.to_str().unwrap(),
    ]);
    assert!(adv.is_file());

    // Put the exported (untuned) top back: predictions must change.
    let image = common::walk(&data.join("red"))[0].clone();
    let tuned_p = predict_probability(&tl, &run, &image);
    let exported: Vec<(String, Tensor)> = exported_top("tiny.top1.pt").into_iter().collect();
    Tensor::write_safetensors(&exported, run.join("finetuned.safetensors")).unwrap();
    let untuned_p = predict_probability(&tl, &run, &image);
    assert!(
        (tuned_p - untuned_p).abs() > 1e-6,
        "predict ignores the fine-tuned weights ({tuned_p} both ways)"
    );

    // Test-time flip averages two views: a different number, still a probability.
    let tta: serde_json::Value = serde_json::from_str(&tl.ok(&[
        "eval",
        run.to_str().unwrap(),
        data.to_str().unwrap(),
        "--split",
        "val",
        "--tta",
        "flip",
        "--json",
    ]))
    .unwrap();
    assert_eq!(tta["tta"], "flip");
    assert_ne!(tta["report"]["loss"], eval["report"]["loss"]);
}

#[test]
fn finetune_all_trains_every_block_without_a_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue"], 6, 4);
    let tl = Tl::new();
    let run = tmp.path().join("run");
    let report = train(
        &tl,
        &data,
        &run,
        &["--finetune", "all", "--val-split", "0.5"],
    );
    assert_eq!(report["finetune"]["unfreeze"], "all");
    assert_eq!(report["finetune"]["blocks"], 3);
    let config = read_json(&run.join("config.json"));
    assert!(config["finetune"]["trunk_file"].is_null());
    let tuned = tensors(&run.join("finetuned.safetensors"));
    assert_eq!(tuned.len(), exported_top("tiny.topall.pt").len());
    let eval = tl.ok(&[
        "eval",
        run.to_str().unwrap(),
        data.to_str().unwrap(),
        "--split",
        "val",
    ]);
    assert!(eval.contains("accuracy"), "{eval}");
}

#[test]
fn views_are_cached_and_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue"], 5, 5);
    let tl = Tl::new();
    let first = train(&tl, &data, &tmp.path().join("a"), &["--views", "3"]);
    assert_eq!(first["views"], 3);
    let out = tl.run(&[
        "train",
        "--backbone",
        tiny().to_str().unwrap(),
        data.to_str().unwrap(),
        "--out",
        tmp.path().join("b").to_str().unwrap(),
        "--views",
        "3",
        "-q",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The plain view of all 10 images and both augmented views of the 8 training images.
    assert!(
        stderr.contains("features: 10 cached, 0 computed"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("features: 8 cached, 0 computed").count(),
        2,
        "{stderr}"
    );
    assert_eq!(read_json(&tmp.path().join("b/config.json"))["views"], 3);
}

#[test]
fn a_cut_that_was_not_exported_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue"], 3, 6);
    let err = Tl::new().fails(&[
        "train",
        "--backbone",
        tiny().to_str().unwrap(),
        data.to_str().unwrap(),
        "--out",
        tmp.path().join("run").to_str().unwrap(),
        "--finetune",
        "3",
    ]);
    assert!(err.contains("tiny.json"), "{err}");
    assert!(err.contains("exported: 1, 2, all"), "{err}");
    assert!(err.contains("--cuts 3"), "{err}");
    assert!(!tmp.path().join("run").exists());
}

#[cfg(unix)]
#[test]
fn an_interrupted_finetune_leaves_no_run_folder() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue"], 10, 7);
    let tl = Tl::new();
    let run = tmp.path().join("run");
    let mut child = tl
        .cmd()
        .args([
            "train",
            "--backbone",
            tiny().to_str().unwrap(),
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--finetune",
            "all",
            "--finetune-epochs",
            "1000",
            "--finetune-patience",
            "0",
            "--epochs",
            "3",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut saw = false;
    for line in BufReader::new(stderr).lines() {
        if line.unwrap().contains("fine-tuning the top") {
            saw = true;
            break;
        }
    }
    assert!(saw, "fine-tuning never started");
    std::thread::sleep(std::time::Duration::from_millis(300));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(!run.exists(), "an interrupted run left {}", run.display());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n != "data")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
