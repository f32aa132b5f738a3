//! Reliability, round 2 (issue #23): run folders and outputs. Each test reproduces a finding
//! that lost data or gave a wrong result with no error, on the tiny fixture backbone.
mod common;
use common::{assert_clean_error, color_dataset, read_json, tiny, Tl};
use std::path::{Path, PathBuf};
use std::process::Stdio;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn train_cmd(tl: &Tl, data: &Path, extra: &[&str]) -> std::process::Command {
    let tiny = tiny();
    let mut c = tl.cmd();
    c.args([
        "train",
        "--backbone",
        s(&tiny),
        s(data),
        "-q",
        "--epochs",
        "3",
    ])
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

/// #23.1: runs started in the same second without --out each get a folder of their own.
#[test]
fn concurrent_runs_without_out_never_share_a_folder() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 6, 31);
    // Features cached first, so that the runs finish within the same second.
    let status = train_cmd(&tl, &data, &["--out", s(&tmp.path().join("warm"))])
        .status()
        .unwrap();
    assert!(status.success());
    let seeds = ["0", "1", "2", "3", "4", "5"];
    let children: Vec<_> = seeds
        .iter()
        .map(|seed| {
            let mut c = train_cmd(&tl, &data, &["--seed", seed]);
            c.current_dir(tmp.path());
            c.spawn().unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let runs: Vec<PathBuf> = std::fs::read_dir(tmp.path().join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(runs.len(), seeds.len(), "{runs:?}");
    let mut got: Vec<u64> = runs
        .iter()
        .map(|r| read_json(&r.join("config.json"))["seed"].as_u64().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
    for r in &runs {
        assert_eq!(
            read_json(&r.join("report.json"))["run"],
            s(r.strip_prefix(tmp.path()).unwrap())
        );
    }
}

/// #23.1: two `--out RUN --force` trainings at once leave one whole run, never a mix.
#[test]
fn concurrent_forced_runs_into_one_folder_leave_one_whole_run() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("data-a"), tmp.path().join("data-b"));
    color_dataset(&a, &["red", "blue"], 6, 32);
    color_dataset(&b, &["green", "yellow", "pink"], 6, 33);
    let run = tmp.path().join("run");
    for trial in 0..4 {
        let children: Vec<_> = [&a, &b]
            .iter()
            .map(|d| {
                train_cmd(&tl, d, &["--out", s(&run), "--force"])
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "trial {trial}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Every file from the same run: the classes agree across config, classes, split, report.
        let classes: Vec<String> =
            serde_json::from_value(read_json(&run.join("classes.json"))).unwrap();
        let config = read_json(&run.join("config.json"));
        assert_eq!(
            config["head"]["num_classes"].as_u64().unwrap() as usize,
            classes.len()
        );
        let root = PathBuf::from(config["data"]["root"].as_str().unwrap());
        let want = if classes.len() == 2 { &a } else { &b };
        assert_eq!(root, std::fs::canonicalize(want).unwrap(), "trial {trial}");
        let split = read_json(&run.join("split.json"));
        for e in split["train"].as_array().unwrap() {
            let class = Path::new(e["path"].as_str().unwrap())
                .iter()
                .next()
                .unwrap();
            assert!(
                classes.iter().any(|c| c.as_str() == class),
                "trial {trial}: {e}"
            );
        }
        let report = read_json(&run.join("report.json"));
        let counted: Vec<&str> = report["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["class"].as_str().unwrap())
            .collect();
        assert_eq!(
            counted,
            classes.iter().map(String::as_str).collect::<Vec<_>>()
        );
        // The head is this run's: eval reproduces the recorded validation accuracy.
        let eval: serde_json::Value =
            serde_json::from_str(&tl.ok(&["eval", s(&run), s(want), "--split", "val", "--json"]))
                .unwrap();
        assert_eq!(
            eval["report"]["accuracy"], report["validation"]["accuracy"],
            "trial {trial}"
        );
    }
    let leftovers: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// #23.6: --force replaces a run completely (no stale fine-tuned weights), never a folder
/// that is not a run, and never a device or FIFO.
#[test]
fn force_replaces_only_whole_runs_and_regular_files() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 6, 34);
    let run = tmp.path().join("run");
    let ok = |extra: &[&str]| {
        let out = train_cmd(&tl, &data, extra).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&[
        "--out",
        s(&run),
        "--finetune",
        "1",
        "--finetune-epochs",
        "1",
    ]);
    assert!(run.join("finetuned.safetensors").is_file());
    ok(&["--out", s(&run), "--force"]);
    assert!(
        !run.join("finetuned.safetensors").exists(),
        "a stale fine-tuned top was left"
    );
    tl.ok(&["predict", s(&run), s(&data.join("a/a_1.jpg"))]);

    // A folder that is not a run: refused even with --force, its files untouched.
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("config.json"), "{\"my\": \"settings\"}").unwrap();
    std::fs::write(mine.join("report.html"), "mine").unwrap();
    let out = train_cmd(&tl, &data, &["--out", s(&mine), "--force"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_clean_error(&err);
    assert!(err.contains("not a tl run"), "{err}");
    assert_eq!(
        std::fs::read_to_string(mine.join("config.json")).unwrap(),
        "{\"my\": \"settings\"}"
    );
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 2);

    // A FIFO (and, as root, a character device) as an output file: refused with --force.
    let fifo = tmp.path().join("model.pt");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let mut targets = vec![fifo.clone()];
    let dev = tmp.path().join("null-copy");
    let cd = std::ffi::CString::new(s(&dev)).unwrap();
    if unsafe { libc::mknod(cd.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } == 0 {
        targets.push(dev.clone());
    } else {
        common::skip(
            "force_replaces_only_whole_runs_and_regular_files (device part)",
            "mknod needs root; the FIFO case stands for devices",
            common::Lacks::Machine,
        );
    }
    let link = tmp.path().join("to-fifo.html");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    targets.push(link);
    let image = data.join("a/a_1.jpg");
    for t in &targets {
        for cmd in [
            vec!["export", s(&run), "-o", s(t), "--force", "--no-unknown"],
            vec!["report", s(&run), "-o", s(t), "--force"],
            vec!["eval", s(&run), s(&data), "--report", s(t), "--force"],
            vec![
                "predict",
                s(&run),
                s(&image),
                "--save-inputs",
                s(t),
                "--force",
            ],
        ] {
            let err = tl.fails(&cmd);
            assert_clean_error(&err);
            assert!(err.contains("not a regular file"), "{cmd:?}: {err}");
        }
        use std::os::unix::fs::FileTypeExt;
        let ft = std::fs::metadata(t).unwrap().file_type();
        assert!(
            ft.is_fifo() || ft.is_char_device(),
            "{} was replaced",
            t.display()
        );
    }
    let out = train_cmd(
        &tl,
        &data,
        &[
            "--out",
            s(&tmp.path().join("r2")),
            "--save-features",
            s(&fifo),
            "--force",
        ],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
}
