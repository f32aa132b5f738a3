//! `tl export` (TorchScript) and `tl predict` with the exported file, on the tiny fixture
//! backbone; bad input is a one-line error and nothing half-written is left behind.
//! (Python/ONNX Runtime equivalence: scripts/tests/test_model_export.py.)
mod common;
use common::{color_dataset, fixtures, read_json, tiny, walk, Tl};
use std::path::Path;

fn trained_run(tl: &Tl, root: &Path, backbone: &Path) -> std::path::PathBuf {
    let data = root.join("data");
    color_dataset(&data, &["red", "blue", "green"], 6, 3);
    let run = root.join("run");
    tl.ok(&[
        "train",
        "-b",
        backbone.to_str().unwrap(),
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "-q",
        "--epochs",
        "20",
        "--val-split",
        "0.5",
    ]);
    run
}

fn predictions(tl: &Tl, network: &Path, images: &Path) -> Vec<(String, f64)> {
    let out = tl.ok(&[
        "predict",
        network.to_str().unwrap(),
        images.to_str().unwrap(),
        "--json",
        "-q",
        "--precision", // as the exported file computes
        "fp32",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
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
}

#[test]
fn exported_model_predicts_as_the_run_and_states_its_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let tl = Tl::new();
    let run = trained_run(&tl, tmp.path(), &tiny());
    let model = tmp.path().join("out").join("model.pt");
    let report = tl.ok(&[
        "export",
        run.to_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["classes"], 3);
    let sidecar = read_json(&tmp.path().join("out").join("model.pt.json"));
    assert_eq!(sidecar["format"], "tl-model/1");
    assert_eq!(sidecar["classes"], read_json(&run.join("classes.json")));
    assert_eq!(sidecar["input"]["crop"], 224);
    assert_eq!(sidecar["input"]["resize"], 256);
    assert_eq!(sidecar["sha256"], tl::util::sha256_file(&model).unwrap());
    assert_eq!(sidecar["source"]["backbone"], "tiny");

    let images = tmp.path().join("data");
    let by_run = predictions(&tl, &run, &images);
    let by_model = predictions(&tl, &model, &images);
    assert_eq!(by_run.len(), 18);
    for ((c1, p1), (c2, p2)) in by_run.iter().zip(&by_model) {
        assert_eq!(c1, c2);
        assert!((p1 - p2).abs() < 1e-5, "{p1} vs {p2}");
    }
    // The model's bytes are checked against the sidecar.
    let mut bytes = std::fs::read(&model).unwrap();
    bytes.extend_from_slice(b"x");
    std::fs::write(&model, bytes).unwrap();
    let err = tl.fails(&["predict", model.to_str().unwrap(), images.to_str().unwrap()]);
    assert!(
        err.contains("differs from the sha256 in its sidecar"),
        "{err}"
    );
}

#[test]
fn export_never_overwrites_unasked_and_leaves_nothing_half_written() {
    let tmp = tempfile::tempdir().unwrap();
    let tl = Tl::new();
    let run = trained_run(&tl, tmp.path(), &tiny());
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let model = out.join("model.pt");
    std::fs::write(&model, b"the user's file").unwrap();
    let err = tl.fails(&[
        "export",
        run.to_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(err.contains("already exists (pass --force"), "{err}");
    assert_eq!(std::fs::read(&model).unwrap(), b"the user's file");
    assert_eq!(walk(&out), vec![model.clone()], "nothing else written");
    tl.ok(&[
        "export",
        run.to_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
        "--force",
        "-q",
    ]);
    assert_eq!(walk(&out).len(), 2);
}

#[test]
fn exporting_a_run_whose_backbone_changed_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let tl = Tl::new();
    let backbones = tmp.path().join("backbones");
    std::fs::create_dir(&backbones).unwrap();
    for f in ["tiny.json", "tiny.features.pt", "tiny.classifier.pt"] {
        std::fs::copy(fixtures().join("backbones").join(f), backbones.join(f)).unwrap();
    }
    let run = trained_run(&tl, tmp.path(), &backbones.join("tiny.json"));
    let features = backbones.join("tiny.features.pt");
    let mut bytes = std::fs::read(&features).unwrap();
    bytes.extend_from_slice(b"changed");
    std::fs::write(&features, bytes).unwrap();
    let out = tmp.path().join("out");
    let err = tl.fails(&[
        "export",
        run.to_str().unwrap(),
        "-o",
        out.join("m.pt").to_str().unwrap(),
    ]);
    assert!(
        err.contains("backbone changed since this run was trained"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");
}
