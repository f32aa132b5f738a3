//! `--engine openvino`, `--precision` and `--decode`: OpenVINO in fp32 computes ONNX
//! Runtime's features and in bf16 features close to them, cached apart from fp32; the run
//! records engine, precision and decode mode; bf16 where it cannot run is a one-line error
//! (libtorch or ONNX Runtime on the CPU) or a note and fp32 (`auto` without OpenVINO);
//! `auto` means bf16 exactly where the CPU has native bf16; `tl predict` warns when it
//! decodes otherwise than the run, and the export's sidecar states the decoding.
mod common;
use common::{color_dataset, read_json, tiny, Tl};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

fn train_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend([
        "train".into(),
        "-b".into(),
        tiny().display().to_string(),
        data.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "-q".into(),
        "--epochs".into(),
        "3".into(),
        "--json".into(),
    ]);
    args
}

fn features(path: &Path) -> Tensor {
    let t: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect();
    Tensor::cat(&[&t["train_x"], &t["val_x"]], 0)
}

fn worst_cosine(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    Tensor::cosine_similarity(a, b, 1, 1e-12)
        .min()
        .double_value(&[])
}

#[test]
fn openvino_fp32_matches_onnx_runtime_and_bf16_is_close_and_cached_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let tl = Tl::new();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue", "green"], 8, 31);
    let run = |name: &str, flags: &[&str], extra: &[&str]| {
        let saved = tmp.path().join(format!("{name}.safetensors"));
        let mut args = train_args(&data, &tmp.path().join(name), flags);
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--save-features".into(), saved.display().to_string()]);
        let report: serde_json::Value = serde_json::from_str(&tl.ok(&args)).unwrap();
        (report["extraction"].clone(), features(&saved))
    };
    let (ort, ort_x) = run("ort", &["--engine", "onnx", "--precision", "fp32"], &[]);
    assert_eq!(
        (ort["engine"].as_str(), ort["computed"].as_u64()),
        (Some("onnx"), Some(24))
    );
    let (ov, ov_x) = run(
        "ov32",
        &["--engine", "openvino", "--precision", "fp32"],
        &["--no-cache"],
    );
    assert_eq!(
        (ov["engine"].as_str(), ov["precision"].as_str()),
        (Some("openvino"), Some("fp32"))
    );
    let fp32 = worst_cosine(&ort_x, &ov_x);
    assert!(
        fp32 >= 0.9999,
        "OpenVINO f32 vs ONNX Runtime: worst cosine {fp32}"
    );
    if !tl::features::openvino::cpu_has_native_bf16() {
        let (bf, _) = run(
            "bf16",
            &["--engine", "openvino", "--precision", "bf16"],
            &[],
        );
        assert_eq!(bf["precision"], "fp32", "no native bf16: fp32");
        return common::skip(
            "openvino_fp32_matches_onnx_runtime_and_bf16_is_close_and_cached_apart (bf16 part)",
            "this CPU has no native bf16 (avx512_bf16 or AMX)",
            common::Lacks::Machine,
        );
    }
    // bf16: computed again (nothing taken from the fp32 entries), then cached.
    let (bf, bf_x) = run(
        "bf16",
        &["--engine", "openvino", "--precision", "bf16"],
        &[],
    );
    assert_eq!(
        (bf["precision"].as_str(), bf["computed"].as_u64()),
        (Some("bf16"), Some(24))
    );
    let bf16 = worst_cosine(&ort_x, &bf_x);
    assert!(
        (0.99..1.0).contains(&bf16),
        "bf16 vs fp32: worst cosine {bf16}"
    );
    let (again, _) = run(
        "bf16b",
        &["--engine", "openvino", "--precision", "bf16"],
        &[],
    );
    assert_eq!(
        (again["cached"].as_u64(), again["computed"].as_u64()),
        (Some(24), Some(0))
    );
    let config = read_json(&tmp.path().join("bf16/config.json"));
    assert_eq!(config["extract"]["engine"], "openvino");
    assert_eq!(config["extract"]["precision"], "bf16");
    eprintln!("worst cosine to ONNX Runtime: OpenVINO f32 {fp32:.6}, bf16 {bf16:.6}");
}

#[test]
fn bf16_where_it_cannot_run_is_an_error_or_a_note() {
    let tmp = tempfile::tempdir().unwrap();
    let tl = Tl::new();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue"], 4, 32);
    for engine in ["torch", "onnx"] {
        let out = tmp.path().join(engine);
        let err = tl.fails(&train_args(
            &data,
            &out,
            &["--engine", engine, "--precision", "bf16"],
        ));
        assert!(
            err.contains("--precision bf16 on the CPU runs on OpenVINO"),
            "{err}"
        );
        assert!(!out.exists());
    }
    let missing = tmp.path().join("libopenvino_c.so");
    let run = |flags: &[&str], out: &str| {
        tl.cmd()
            .env("TL_OPENVINO", &missing)
            .args(train_args(&data, &tmp.path().join(out), flags))
            .output()
            .unwrap()
    };
    let o = run(&["--engine", "openvino"], "ov");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    common::assert_clean_error(&stderr);
    assert!(
        stderr.contains("libopenvino_c.so") && stderr.contains("not found"),
        "{stderr}"
    );
    // Asked for bf16 with `auto`: one note (no OpenVINO, or no native bf16), then ONNX
    // Runtime in fp32.
    let o = run(&["--precision", "bf16"], "auto-bf16");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let notes = stderr
        .lines()
        .filter(|l| l.contains("extracting in fp32"))
        .count();
    assert_eq!(notes, 1, "{stderr}");
    let config = read_json(&tmp.path().join("auto-bf16/config.json"));
    assert_eq!(
        (
            config["extract"]["engine"].as_str(),
            config["extract"]["precision"].as_str()
        ),
        (Some("onnx"), Some("fp32"))
    );
    // `auto` precision without OpenVINO: fp32 without a word.
    let o = run(&[], "auto");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !stderr.contains("fp32"), "{stderr}");
}

#[test]
fn auto_means_bf16_exactly_where_the_cpu_has_native_bf16() {
    let tmp = tempfile::tempdir().unwrap();
    let tl = Tl::new();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue"], 4, 33);
    let out = tmp.path().join("run");
    tl.ok(&train_args(&data, &out, &[]));
    let extract = &read_json(&out.join("config.json"))["extract"];
    let want = if tl::features::openvino::cpu_has_native_bf16() {
        ("openvino", "bf16")
    } else {
        ("onnx", "fp32")
    };
    assert_eq!(
        (extract["engine"].as_str(), extract["precision"].as_str()),
        (Some(want.0), Some(want.1))
    );
    let doctor = tl.ok(&["doctor"]);
    let line = if want.1 == "bf16" {
        "CPU native bf16: yes"
    } else {
        "CPU native bf16: no"
    };
    assert!(
        doctor.contains(line) && doctor.contains("OpenVINO: 20"),
        "{doctor}"
    );
}

#[test]
fn decode_mode_is_recorded_warned_about_and_stated_in_the_export() {
    let tmp = tempfile::tempdir().unwrap();
    let tl = Tl::new();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue"], 4, 34);
    let (full, draft) = (tmp.path().join("full"), tmp.path().join("draft"));
    tl.ok(&train_args(&data, &full, &["--decode", "full"]));
    tl.ok(&train_args(&data, &draft, &[]));
    assert_eq!(
        read_json(&full.join("config.json"))["extract"]["decode"],
        "full"
    );
    assert_eq!(
        read_json(&draft.join("config.json"))["extract"]["decode"],
        "draft"
    );
    let image = common::walk(&data).into_iter().next().unwrap();
    let predict = |run: &Path, flags: &[&str]| {
        let mut c = tl.cmd();
        c.args(flags).arg("predict").arg(run).arg(&image);
        let o = c.output().unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let warned = predict(&full, &[]);
    assert!(
        warned.contains("trained with --decode full, this uses --decode draft"),
        "{warned}"
    );
    assert!(!predict(&full, &["--decode", "full"]).contains("--decode"));
    assert!(!predict(&draft, &[]).contains("--decode"));
    for (run, decode, draft_line) in [(&full, "full", false), (&draft, "draft", true)] {
        let model = tmp.path().join(format!("{decode}.pt"));
        tl.ok(&[
            "export".as_ref(),
            run.as_os_str(),
            "-o".as_ref(),
            model.as_os_str(),
        ]);
        let input = &read_json(&tmp.path().join(format!("{decode}.pt.json")))["input"];
        assert_eq!(input["decode"], decode);
        let python = input["python"].as_str().unwrap();
        assert_eq!(
            python.contains("im.draft('RGB', (256, 256))"),
            draft_line,
            "{python}"
        );
        assert!(
            python.contains("T.Resize(256), T.CenterCrop(224)"),
            "{python}"
        );
    }
}

/// `tiny` exported into `dir` with its bf16 export's weights rounded by calibration in every
/// layer (`--bf16-layers`): a `NAME.features.bf16.onnx` apart from `NAME.features.onnx`.
fn export_tiny_with_bf16_file(dir: &Path) -> serde_json::Value {
    let status = std::process::Command::new(common::python())
        .arg(common::root().join("scripts/export_backbones.py"))
        .args([
            "tiny",
            "--weights",
            "none",
            "--cuts",
            "none",
            "--bf16-layers",
            "0,1,2",
        ])
        .arg("--out")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    read_json(&dir.join("tiny.json"))
}

#[test]
fn openvino_bf16_runs_the_bf16_export_and_the_run_pins_it() {
    let tmp = tempfile::tempdir().unwrap();
    let tl = Tl::new();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue", "green"], 8, 34);
    let store = tmp.path().join("bb");
    let sidecar = export_tiny_with_bf16_file(&store);
    let bf16 = &sidecar["onnx"]["features_bf16"];
    assert_eq!(bf16["file"], "tiny.features.bf16.onnx");
    assert_eq!(bf16["rerounded_index"], serde_json::json!([0, 1, 2]));
    assert_ne!(bf16["sha256"], sidecar["onnx"]["features"]["sha256"]);
    let backbone = store.join("tiny.json").display().to_string();
    let run = |name: &str, flags: &[&str]| {
        let out = tmp.path().join(name);
        let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        args.extend(["train", "-b", &backbone, "-q", "--epochs", "2", "--json"].map(String::from));
        args.extend([
            data.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ]);
        let report: serde_json::Value = serde_json::from_str(&tl.ok(&args)).unwrap();
        (
            report["extraction"].clone(),
            read_json(&out.join("config.json")),
        )
    };
    let (_, config) = run("fp32", &["--precision", "fp32"]);
    // Every run of an export with a bf16 file pins it, whatever engine it ran.
    assert_eq!(config["backbone"]["onnx_bf16_sha256"], bf16["sha256"]);
    if !tl::features::openvino::cpu_has_native_bf16() {
        return common::skip(
            "openvino_bf16_runs_the_bf16_export_and_the_run_pins_it (bf16 part)",
            "this CPU has no native bf16 (avx512_bf16 or AMX)",
            common::Lacks::Machine,
        );
    }
    let flags = ["--engine", "openvino", "--precision", "bf16"];
    let (ex, config) = run("bf16", &flags);
    assert_eq!(
        (ex["precision"].as_str(), ex["computed"].as_u64()),
        (Some("bf16"), Some(24))
    );
    assert_eq!(config["extract"]["engine"], "openvino");
    // Without the bf16 file in the sidecar, bf16 runs the plain export: other weights, so
    // other features, cached apart (all 24 computed again).
    let mut plain = sidecar.clone();
    plain["onnx"]
        .as_object_mut()
        .unwrap()
        .remove("features_bf16");
    std::fs::write(store.join("tiny.json"), plain.to_string()).unwrap();
    let (ex, _) = run("bf16-plain", &flags);
    assert_eq!(
        (ex["precision"].as_str(), ex["computed"].as_u64()),
        (Some("bf16"), Some(24))
    );
    std::fs::write(store.join("tiny.json"), sidecar.to_string()).unwrap();
    let (ex, _) = run("bf16-again", &flags);
    assert_eq!(
        (ex["cached"].as_u64(), ex["computed"].as_u64()),
        (Some(24), Some(0))
    );
    // A bf16 file that changed after training is refused by name.
    let predict = |run: &str| {
        let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        args.extend(["predict".into(), tmp.path().join(run).display().to_string()]);
        args.push(data.join("red").display().to_string());
        args
    };
    tl.ok(&predict("bf16"));
    let path = store.join("tiny.features.bf16.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.push(0);
    std::fs::write(&path, bytes).unwrap();
    let err = tl.fails(&predict("bf16"));
    common::assert_clean_error(&err);
    assert!(err.contains("tiny.features.bf16.onnx"), "{err}");
    eprintln!("{err}");
}
