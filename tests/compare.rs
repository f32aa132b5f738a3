//! `tl compare`: one run per backbone on the same split, a table, JSON and a page.
mod common;
use common::{color_dataset, fixtures, Tl};

#[test]
fn compare_trains_each_backbone_on_the_same_split_and_writes_the_page() {
    let tmp = tempfile::tempdir().unwrap();
    let tl = Tl::new();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue", "green"], 6, 11);
    let out = tmp.path().join("cmp");
    let backbones = format!(
        "{},{}",
        fixtures().join("backbones/tiny.json").display(),
        fixtures().join("backbones/raw.pt").display()
    );
    let args = [
        "compare",
        "--backbones",
        &backbones,
        data.to_str().unwrap(),
        "--val-split",
        "0.5",
        "--epochs",
        "10",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ];
    let text = tl.ok(&args);
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with("backbone")
            && header.contains("val accuracy")
            && header.contains("feature dim"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("tiny ")) && text.lines().any(|l| l.starts_with("raw ")),
        "{text}"
    );

    let mut again: Vec<&str> = args.to_vec();
    again.push("--json");
    let err = tl.fails(&again);
    assert!(err.contains("not empty (pass --force"), "{err}");
    again.push("--force");
    let report: serde_json::Value = serde_json::from_str(&tl.ok(&again)).unwrap();
    assert_eq!(report["same_split"], true);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        let run = std::path::PathBuf::from(row["run"].as_str().unwrap());
        assert!(run.join("report.html").is_file() && run.join("head.safetensors").is_file());
        assert_eq!(row["feature_dim"], 32);
        assert!(row["backbone_bytes"].as_u64().unwrap() > 0);
    }
    let page = std::fs::read_to_string(out.join("compare.html")).unwrap();
    assert!(page.contains("<svg") && page.contains(">tiny<") && page.contains(">raw<"));
}

#[test]
fn an_unknown_backbone_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let tl = Tl::new();
    let data = tmp.path().join("data");
    color_dataset(&data, &["red", "blue"], 4, 12);
    let out = tmp.path().join("cmp");
    let backbones = format!(
        "{},no_such_net",
        fixtures().join("backbones/tiny.json").display()
    );
    let err = tl.fails(&[
        "compare",
        "--backbones",
        &backbones,
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("no_such_net"), "{err}");
    assert!(!out.exists(), "nothing written");
}
