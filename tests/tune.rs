//! `tl cv` and `tl tune` (issue #29) on the tiny fixture backbone and generated images:
//! every training image is in exactly one fold, planted copies are never split across folds,
//! the same seed gives the same folds and the same choice, the validation side is never
//! used by the search, a budget too small still ends in a run with the defaults and a note,
//! and bad settings fail cleanly.
mod common;
use common::{clean_dataset, read_json, tiny, Tl};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The tiny network's features of two different flat-colour images are at cosine ≤ 0.9986,
/// a resized copy at 0.999996 (tests/audit.rs): copies are grouped above this.
const NEAR: &str = "0.9999";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// train/{red,blue} (16 each, plus a resized, recompressed copy and a byte copy) and
/// val/{red,blue}; the planted pairs.
fn dataset(root: &Path) -> Vec<(PathBuf, PathBuf)> {
    let train = root.join("train");
    clean_dataset(&train, 3);
    clean_dataset(&root.join("val"), 4);
    let red = train.join("red");
    let src = image::open(red.join("red_3.jpg")).unwrap().to_rgb8();
    let small = image::imageops::resize(
        &src,
        src.width() * 9 / 10,
        src.height() * 9 / 10,
        image::imageops::FilterType::Lanczos3,
    );
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 60)
        .encode_image(&small)
        .unwrap();
    std::fs::write(red.join("near.jpg"), jpeg).unwrap();
    let blue = train.join("blue");
    std::fs::copy(blue.join("blue_5.jpg"), blue.join("copy.jpg")).unwrap();
    vec![
        (red.join("red_3.jpg"), red.join("near.jpg")),
        (blue.join("blue_5.jpg"), blue.join("copy.jpg")),
    ]
}

fn cv(tl: &Tl, data: &Path, seed: &str) -> Value {
    let out = tl.ok(&[
        "cv",
        "--backbone",
        s(&tiny()),
        s(data),
        "--folds",
        "4",
        "--near-duplicate",
        NEAR,
        "--seed",
        seed,
        "--json",
        "-q",
    ]);
    serde_json::from_str(&out).unwrap()
}

/// `class/file` of an image path.
fn short(p: &Path) -> String {
    format!(
        "{}/{}",
        p.parent().unwrap().file_name().unwrap().to_string_lossy(),
        p.file_name().unwrap().to_string_lossy()
    )
}

fn folds_by_name(r: &Value) -> BTreeMap<String, u64> {
    r["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let p = PathBuf::from(a["path"].as_str().unwrap());
            (short(&p), a["fold"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn cv_puts_every_training_image_in_one_fold_and_keeps_copies_together() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let planted = dataset(&data);
    let r = cv(&tl, &data, "0");
    let folds = folds_by_name(&r);
    // Exactly the training images, each once (the validation side is not there).
    let listed = r["assignments"].as_array().unwrap().len();
    let expected: BTreeSet<String> = ["red", "blue"]
        .iter()
        .flat_map(|c| {
            std::fs::read_dir(data.join("train").join(c))
                .unwrap()
                .map(move |e| format!("{c}/{}", e.unwrap().file_name().to_string_lossy()))
        })
        .collect();
    assert_eq!(listed, expected.len(), "an image listed twice");
    assert_eq!(folds.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(r["images"], 34);
    for (a, b) in &planted {
        assert_eq!(folds[&short(a)], folds[&short(b)], "{a:?} and {b:?} split");
    }
    assert_eq!(
        r["grouped_images"], 4,
        "the two planted pairs, nothing else"
    );
    // Stratified: every fold has both classes and 8 groups (8 images, or 9-10 with copies).
    for fold in 1..=4u64 {
        let of: Vec<&String> = folds
            .iter()
            .filter(|(_, &f)| f == fold)
            .map(|(n, _)| n)
            .collect();
        assert!((8..=10).contains(&of.len()), "fold {fold}: {of:?}");
        assert!(
            of.iter().any(|n| n.starts_with("red/")) && of.iter().any(|n| n.starts_with("blue/"))
        );
    }
    assert_eq!(r["fold_scores"].as_array().unwrap().len(), 4);
    let mean = r["mean"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&mean), "{r}");
    // Same seed, same folds and scores; another seed, other folds.
    let again = cv(&tl, &data, "0");
    assert_eq!(folds, folds_by_name(&again));
    assert_eq!(r["fold_scores"], again["fold_scores"]);
    assert_ne!(folds, folds_by_name(&cv(&tl, &data, "1")));
}

#[test]
fn cv_refuses_folds_a_grouping_leaves_empty() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    // At the default 0.93 the tiny network's features are all alike: one group.
    let err = tl.fails(&["cv", "--backbone", s(&tiny()), s(&data), "--folds", "4"]);
    assert!(
        err.contains("has no image") && err.contains("--near-duplicate"),
        "{err}"
    );
    let err = tl.fails(&["cv", "--backbone", s(&tiny()), s(&data), "--folds", "1"]);
    assert!(err.contains("--folds 1"), "{err}");
}

fn tune(tl: &Tl, data: &Path, out: &Path, extra: &[&str]) -> Value {
    let backbone = tiny();
    let mut args = vec![
        "tune",
        "--backbone",
        s(&backbone),
        s(data),
        "--folds",
        "3",
        "--near-duplicate",
        NEAR,
        "--views-to-try",
        "2",
        "--out",
        s(out),
        "-q",
    ];
    args.extend_from_slice(extra);
    tl.ok(&args);
    read_json(&out.join("report.json"))
}

#[test]
fn tune_writes_a_run_with_its_trials_and_the_same_seed_chooses_the_same() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let a = tune(&tl, &data, &tmp.path().join("a"), &[]);
    let t = &a["tuning"];
    let trials = t["trials"].as_array().unwrap();
    // The default first; 36 head settings, then two with views, one fine-tuned (the tiny
    // backbone is exported with its cuts).
    assert_eq!(trials[0]["trial"]["l2_scale"], 1.0);
    assert_eq!(trials[0]["trial"]["hidden"], 0);
    assert_eq!(trials.len(), 39, "{t}");
    assert!(
        trials[36..38].iter().all(|x| x["trial"]["views"] == 2),
        "{t}"
    );
    assert_eq!(trials[38]["trial"]["finetune"], true, "{t}");
    let chosen = &trials[t["chosen"].as_u64().unwrap() as usize];
    assert_eq!(
        chosen["scores"].as_array().unwrap().len(),
        3,
        "picked from full CV"
    );
    // The run was trained with the chosen settings, and reports on the untouched val side.
    let config = read_json(&tmp.path().join("a/config.json"));
    assert_eq!(config["head"]["hidden"], chosen["trial"]["hidden"]);
    assert_eq!(config["views"], chosen["trial"]["views"]);
    assert_eq!(config["data"]["val_images"], 32);
    assert!(a["validation"]["accuracy"].as_f64().is_some());
    // Same seed: the same trials, scores and choice.
    let b = tune(&tl, &data, &tmp.path().join("b"), &[]);
    assert_eq!(without_seconds(&a), without_seconds(&b));
    assert_eq!(a["tuning"]["chosen"], b["tuning"]["chosen"]);
}

/// The trials with their settings and scores (the seconds differ run to run).
fn without_seconds(report: &Value) -> Vec<Value> {
    let mut trials = report["tuning"]["trials"].as_array().unwrap().clone();
    for t in &mut trials {
        t["seconds"] = Value::Null;
    }
    trials
}

#[test]
fn a_budget_too_small_keeps_the_defaults_and_says_so() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let r = tune(&tl, &data, &tmp.path().join("r"), &["--budget", "0.01s"]);
    let t = &r["tuning"];
    assert_eq!(t["chosen"], 0, "{t}");
    let notes = t["notes"].to_string();
    assert!(notes.contains("budget"), "{notes}");
    assert!(tmp.path().join("r/head.safetensors").is_file());
}

#[test]
fn tune_refuses_settings_it_chooses_itself() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let err = tl.fails(&["tune", "--backbone", s(&tiny()), s(&data), "--views", "4"]);
    assert!(err.contains("chooses --views"), "{err}");
    let err = tl.fails(&["tune", "--backbone", s(&tiny()), s(&data), "--budget", "0"]);
    assert!(err.contains("--budget"), "{err}");
}
