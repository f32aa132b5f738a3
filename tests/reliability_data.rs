//! Reliability, round 2 (issue #23): what is read — dataset folders with loops and special
//! files, the pinned ONNX export — and what `tl cache gc` may delete. Each test reproduces a
//! finding on the tiny fixture backbone and fails on the code before its fix.
mod common;
use common::{assert_clean_error, color_dataset, read_json, segments, tiny, Tl};
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

/// #23.2 and #23.14: a link back up the tree is not walked (each photo once, under its own
/// class); a FIFO named like an image and a link to /dev/zero are never opened.
#[test]
fn links_loops_and_special_files_in_the_data_are_listed_once_or_skipped() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["cat", "dog"], 10, 35);
    std::os::unix::fs::symlink("..", data.join("cat/up")).unwrap();
    std::os::unix::fs::symlink(data.join("dog"), data.join("cat/dogs-again")).unwrap();
    std::os::unix::fs::symlink(data.join("dog/dog_1.jpg"), data.join("cat/alias.jpg")).unwrap();
    let fifo = std::ffi::CString::new(s(&data.join("dog/x.jpg"))).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::os::unix::fs::symlink("/dev/zero", data.join("dog/zero.png")).unwrap();
    let run = tmp.path().join("run");
    let tiny = tiny();
    let mut cmd = tl.cmd();
    cmd.args([
        "train",
        "--backbone",
        s(&tiny),
        s(&data),
        "--out",
        s(&run),
        "-q",
    ]);
    // A hang (reading a FIFO) must fail the test rather than stall it.
    let out = common::output_within(&mut cmd, 60);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = read_json(&run.join("report.json"));
    let counts: Vec<(String, u64)> = report["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let n = c["train"].as_u64().unwrap() + c["val"].as_u64().unwrap();
            (c["class"].as_str().unwrap().to_string(), n)
        })
        .collect();
    assert_eq!(counts, vec![("cat".into(), 10), ("dog".into(), 10)]);
    let ignored: Vec<String> = report["ignored_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{} {}",
                i["path"].as_str().unwrap(),
                i["reason"].as_str().unwrap()
            )
        })
        .collect();
    for (name, why) in [
        ("cat/up", "already listed"),
        ("cat/dogs-again", "already listed"),
        ("cat/alias.jpg", "same file"),
        ("dog/x.jpg", "not a regular file"),
        ("dog/zero.png", "not a regular file"),
    ] {
        assert!(
            ignored.iter().any(|l| l.contains(name) && l.contains(why)),
            "{name}: {ignored:?}"
        );
    }
    // Named on the command line, a FIFO is refused at once, not read.
    let err = tl.fails(&["predict", s(&run), s(&data.join("dog/x.jpg"))]);
    assert_clean_error(&err);
    assert!(err.contains("not a regular file"), "{err}");
}

/// #23.4: the ONNX export that computed a run's features is pinned like the `.pt`.
#[test]
fn a_run_refuses_a_replaced_onnx_export() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let backbones = tmp.path().join("backbones");
    common::copy_tiny_backbone(&backbones);
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 6, 36);
    let run = tmp.path().join("run");
    let sidecar = backbones.join("tiny.json");
    tl.ok(&[
        "train",
        "--backbone",
        s(&sidecar),
        s(&data),
        "--out",
        s(&run),
        "-q",
    ]);
    let config = read_json(&run.join("config.json"));
    // ONNX Runtime, or OpenVINO where the CPU has native bf16: both run the ONNX export.
    let engine = match tl::features::openvino::cpu_has_native_bf16() {
        true => "openvino",
        false => "onnx",
    };
    assert_eq!(config["extract"]["engine"], engine);
    assert!(config["backbone"]["onnx_sha256"].is_string());
    tl.ok(&["eval", s(&run), s(&data)]);
    // Another ONNX file in its place, the sidecar's sha256 updated to match it.
    let onnx = backbones.join("tiny.features.onnx");
    std::fs::copy(backbones.join("tiny.classifier.onnx"), &onnx).unwrap();
    let mut side = read_json(&sidecar);
    let sha: serde_json::Value = tl::util::sha256_file(&onnx).unwrap().into();
    side["onnx"]["features"]["sha256"] = sha.clone();
    // tiny needs no bf16 rounding by calibration: its bf16 export is this same file.
    assert_eq!(side["onnx"]["features_bf16"]["file"], "tiny.features.onnx");
    side["onnx"]["features_bf16"]["sha256"] = sha;
    std::fs::write(&sidecar, serde_json::to_string_pretty(&side).unwrap()).unwrap();
    for cmd in [
        vec!["eval", s(&run), s(&data)],
        vec!["predict", s(&run), s(&data.join("a/a_1.jpg"))],
    ] {
        let err = tl.fails(&cmd);
        assert_clean_error(&err);
        assert!(
            err.contains("ONNX export changed since this run was trained"),
            "{cmd:?}: {err}"
        );
    }
    // libtorch does not use that file: the run still works there.
    tl.ok(&["--engine", "torch", "eval", s(&run), s(&data)]);
}

/// #23.5 and #23.18: gc deletes only what is provably unusable; a backbone that is merely
/// not visible here keeps its namespace; a future --unused-since is refused.
#[test]
fn gc_keeps_what_it_cannot_prove_unusable() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("mnt/backbones");
    common::copy_tiny_backbone(&elsewhere);
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 6, 37);
    tl.ok(&[
        "extract",
        "-q",
        "--backbone",
        s(&elsewhere.join("tiny.json")),
        s(&data),
    ]);
    let ns = segments(tl.cache.path())[0].parent().unwrap().to_path_buf();
    // The disk holding the backbone is not mounted on this node.
    std::fs::rename(tmp.path().join("mnt"), tmp.path().join("unmounted")).unwrap();
    let gc = json(&tl.ok(&["cache", "gc", "--json"]));
    assert_eq!(gc["removed"].as_array().unwrap().len(), 0, "{gc}");
    assert_eq!(gc["kept"].as_array().unwrap().len(), 1, "{gc}");
    assert!(ns.is_dir());
    let text = tl.ok(&["cache", "gc"]);
    assert!(
        text.contains("kept") && text.contains("--drop-missing-backbones"),
        "{text}"
    );
    // Mounted again: everything is still there and used.
    std::fs::rename(tmp.path().join("unmounted"), tmp.path().join("mnt")).unwrap();
    let again = tl.ok(&[
        "extract",
        "--backbone",
        s(&elsewhere.join("tiny.json")),
        s(&data),
        "--json",
    ]);
    assert_eq!(json(&again)["extraction"]["computed"], 0, "{again}");
    // A date in the future would call a run in progress unused.
    let err = tl.fails(&["cache", "gc", "--unused-since", "2099-01-01"]);
    assert!(err.contains("in the future"), "{err}");
    assert!(ns.is_dir());
}

/// #23.8: control characters and bidirectional overrides in class names are escaped in text
/// output (train's notes, eval's tables, predict's lines), kept exact in JSON.
#[test]
fn hostile_class_names_are_escaped_in_text_output() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let hostile = "red\u{1b}[31m\u{7}\u{202e}gpj";
    color_dataset(&data, &[hostile, "blue"], 6, 38);
    let run = tmp.path().join("run");
    let tiny = tiny();
    let out = tl
        .cmd()
        .args(["train", "--backbone", s(&tiny), s(&data), "--out", s(&run)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let image = data.join(hostile).join(format!("{hostile}_1.jpg"));
    for text in [
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        tl.ok(&["eval", s(&run), s(&data)]),
        tl.ok(&["predict", s(&run), s(&image), "--no-unknown"]),
    ] {
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\u{202e}'),
            "{text:?}"
        );
    }
    let eval = tl.ok(&["eval", s(&run), s(&data)]);
    assert!(eval.contains("red\\u{1b}[31m\\u{7}\\u{202e}gpj"), "{eval}");
    let json: serde_json::Value =
        serde_json::from_str(&tl.ok(&["predict", s(&run), s(&image), "--json", "--no-unknown"]))
            .unwrap();
    assert_eq!(json["predictions"][0]["class"], hostile);
}

/// #23.9, #23.12, #23.13: extraction that keeps nothing fails; out-of-range numbers are
/// refused before any work; a file-size limit gives an error, not a killed process.
#[test]
fn extraction_that_keeps_nothing_fails_and_absurd_numbers_are_refused() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 4, 39);
    let tiny = tiny();
    // The cache folder is a file: nothing can be kept.
    let not_a_dir = tmp.path().join("cache-file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let out = tl
        .cmd()
        .args([
            "extract",
            "--backbone",
            s(&tiny),
            s(&data),
            "--cache-dir",
            s(&not_a_dir),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_clean_error(&err);
    assert!(err.contains("nothing was kept"), "{err}");

    let run = tmp.path().join("run");
    for args in [
        vec!["train", "--lr", "3e38"],
        vec!["train", "--finetune", "--finetune-lr", "1e39"],
        vec!["train", "--l2", "1e39"],
        vec!["--threads", "100000", "train"],
        vec!["--decode-threads", "100000", "train"],
    ] {
        let mut full: Vec<&str> = args.clone();
        full.extend(["--backbone", s(&tiny), s(&data), "--out", s(&run)]);
        let out = tl.cmd().args(&full).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_clean_error(&String::from_utf8_lossy(&out.stderr));
    }
    for flag in ["--tv", "--l2", "--lr", "--diversity"] {
        let out = tl
            .cmd()
            .args([
                "dream",
                "--backbone",
                s(&tiny),
                "--class",
                "0",
                flag,
                "1e39",
                "-o",
                s(&tmp.path().join("d.png")),
            ])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!run.exists() && !tmp.path().join("d.png").exists());

    // ulimit -f: the write fails with EFBIG (SIGXFSZ ignored by tl itself), one error line,
    // nothing left in the output folder or the cache.
    let outdir = tmp.path().join("limited");
    std::fs::create_dir(&outdir).unwrap();
    let mut cmd = tl.cmd();
    cmd.args([
        "train",
        "--backbone",
        s(&tiny),
        s(&data),
        "--out",
        s(&outdir.join("run")),
        "--no-cache",
    ]);
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1500,
                rlim_max: 1500,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "killed? {:?}", out.status);
    assert_clean_error(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_dir(&outdir).unwrap().count(), 0);
}

/// #23.11, #23.14, #23.19, #23.20: a forged segment header, a FIFO named like a segment,
/// two gcs at once and a gc killed half way through deleting a namespace.
#[test]
fn the_cache_survives_forged_headers_fifos_and_concurrent_or_killed_gcs() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 6, 40);
    let tiny = tiny();
    tl.ok(&["extract", "-q", "--backbone", s(&tiny), s(&data)]);
    let seg = segments(tl.cache.path())[0].clone();
    let ns = seg.parent().unwrap().to_path_buf();
    // 64 bytes: the right magic and namespace hash, dim 0x7FFFFFF4 and count 0x80000000.
    let mut header = std::fs::read(&seg).unwrap()[..64].to_vec();
    header[4..8].copy_from_slice(&0x7FFF_FFF4u32.to_le_bytes());
    header[8..12].copy_from_slice(&0x8000_0000u32.to_le_bytes());
    let forged = ns.join("seg-forged.tlseg");
    std::fs::write(&forged, &header).unwrap();
    let fifo = std::ffi::CString::new(s(&ns.join("seg-fifo.tlseg"))).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // Each command must finish (a FIFO opened for reading would block forever).
    let run_bounded = |args: &[&str]| common::output_within(tl.cmd().args(args), 60);
    let stats = run_bounded(&["cache", "stats"]);
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let verify = run_bounded(&["cache", "verify"]);
    assert_eq!(verify.status.code(), Some(1), "{:?}", verify.status);
    let text = String::from_utf8_lossy(&verify.stderr);
    assert!(
        text.contains("seg-forged.tlseg") && text.contains("impossible sizes"),
        "{text}"
    );
    assert!(
        text.contains("seg-fifo.tlseg") && text.contains("not a regular file"),
        "{text}"
    );
    let run = tmp.path().join("run");
    let train = run_bounded(&[
        "train",
        "--backbone",
        s(&tiny),
        s(&data),
        "--out",
        s(&run),
        "-q",
        "--json",
    ]);
    assert!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&train.stdout).unwrap();
    assert_eq!(report["extraction"]["computed"], 0);

    // A gc killed after renaming a namespace away: the next gc removes the leftover.
    let trash = ns.parent().unwrap().join(".trash-old-2147483646");
    std::fs::create_dir(&trash).unwrap();
    std::fs::write(trash.join("seg-x.tlseg"), vec![0u8; 4096]).unwrap();
    // Two gcs at once: both succeed.
    let children: Vec<_> = (0..2)
        .map(|_| {
            tl.cmd()
                .args(["cache", "gc", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut trash_removed = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        trash_removed += v["abandoned_trash"].as_u64().unwrap();
    }
    assert_eq!(trash_removed, 1);
    assert!(!trash.exists() && !forged.exists());
    let verify = run_bounded(&["cache", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// #23.7: `tl export --format onnx` runs Python isolated: an onnx.py in the working folder
/// is not imported.
#[test]
fn onnx_export_does_not_import_modules_from_the_working_folder() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 4, 41);
    let run = tmp.path().join("run");
    tl.ok(&[
        "train",
        "--backbone",
        s(&tiny()),
        s(&data),
        "--out",
        s(&run),
        "-q",
    ]);
    let cwd = tmp.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let marker = tmp.path().join("imported");
    std::fs::write(
        cwd.join("onnx.py"),
        format!(
            "open({:?}, 'w').write('x')\nraise ImportError('shadowed')\n",
            s(&marker)
        ),
    )
    .unwrap();
    let out = tl
        .cmd()
        .current_dir(&cwd)
        .args([
            "export",
            s(&run),
            "-o",
            s(&tmp.path().join("m.onnx")),
            "--format",
            "onnx",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !marker.exists(),
        "a module of the working folder was executed"
    );
}

/// #23.10: edited run and model metadata is validated on load: one clear line, never a
/// panic, an unbounded allocation or NaN probabilities.
#[test]
fn edited_preprocessing_in_runs_and_exported_models_is_refused() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 4, 42);
    let run = tmp.path().join("run");
    tl.ok(&[
        "train",
        "--backbone",
        s(&tiny()),
        s(&data),
        "--out",
        s(&run),
        "-q",
    ]);
    let model = tmp.path().join("m.pt");
    tl.ok(&["export", s(&run), "-o", s(&model)]);
    let image = data.join("a/a_1.jpg");
    let config_path = run.join("config.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let sidecar_path = tmp.path().join("m.pt.json");
    let original_sidecar = std::fs::read_to_string(&sidecar_path).unwrap();
    for (key, value, why) in [
        ("crop", serde_json::json!(0), "crop 0"),
        ("crop", serde_json::json!(100000), "crop 100000"),
        ("std", serde_json::json!([0.0, 0.224, 0.225]), "std"),
        ("std", serde_json::json!([-0.229, 0.224, 0.225]), "std"),
    ] {
        let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
        config["preprocess"][key] = value.clone();
        std::fs::write(&config_path, config.to_string()).unwrap();
        for cmd in [
            vec!["predict", s(&run), s(&image)],
            vec!["eval", s(&run), s(&data)],
            vec!["export", s(&run), "-o", s(&tmp.path().join("x.pt"))],
        ] {
            let err = tl.fails(&cmd);
            assert_clean_error(&err);
            assert!(
                err.contains("config.json") && err.contains(why),
                "{cmd:?}: {err}"
            );
        }
        let mut side: serde_json::Value = serde_json::from_str(&original_sidecar).unwrap();
        side["input"][key] = value;
        std::fs::write(&sidecar_path, side.to_string()).unwrap();
        let err = tl.fails(&["predict", s(&model), s(&image)]);
        assert_clean_error(&err);
        assert!(err.contains("m.pt.json") && err.contains(why), "{err}");
    }
    // config.json and the backbone's sidecar must agree (eval used one, predict the other).
    let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
    config["preprocess"]["resize"] = serde_json::json!(40);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = tl.fails(&["eval", s(&run), s(&data)]);
    assert_clean_error(&err);
    assert!(err.contains("differs from the backbone sidecar"), "{err}");
    std::fs::write(&config_path, &original).unwrap();
    tl.ok(&["eval", s(&run), s(&data)]);
    // The features file pointed at the classifier, its sha256 edited to match: refused
    // (export once panicked in a tch unwrap).
    let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
    let classifier = tiny().parent().unwrap().join("tiny.classifier.pt");
    config["backbone"]["features_file"] = s(&classifier).into();
    config["backbone"]["features_sha256"] = tl::util::sha256_file(&classifier).unwrap().into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    for cmd in [
        vec![
            "export",
            s(&run),
            "-o",
            s(&tmp.path().join("y.pt")),
            "--no-unknown",
        ],
        vec!["predict", s(&run), s(&image)],
    ] {
        let err = tl.fails(&cmd);
        assert_clean_error(&err);
        assert!(err.contains("not the feature extractor"), "{cmd:?}: {err}");
    }
}

/// #23.3: a cache of many segments under a low descriptor limit: every entry is found, and
/// running out of descriptors is never called damage.
#[test]
fn many_segments_under_a_low_file_limit_are_all_read() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 150, 43);
    let tiny = tiny();
    let out = tl
        .cmd()
        .env("TL_CACHE_SEGMENT_ENTRIES", "1")
        .args(["extract", "-q", "--backbone", s(&tiny), s(&data)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(segments(tl.cache.path()).len() >= 280);
    let limited = |args: &[&str]| {
        let mut cmd = tl.cmd();
        cmd.args(args);
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 200,
                    rlim_max: 200,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    let run = tmp.path().join("run");
    let out = limited(&[
        "train",
        "--backbone",
        s(&tiny),
        s(&data),
        "--out",
        s(&run),
        "-q",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["extraction"]["cached"], 300,
        "{}",
        report["extraction"]
    );
    assert_eq!(report["extraction"]["failed"], 0);
    let verify = limited(&["cache", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// Flip one byte of the last record's features in a segment file.
fn damage_last_record(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// #23.15: a damaged copy in a segment named in the future (another host's clock) does not
/// shadow the good copy: nothing is recomputed, run after run, and --stream reads it.
#[test]
fn the_newest_valid_copy_wins_over_a_damaged_future_one() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 6, 44);
    let tiny = tiny();
    tl.ok(&["extract", "-q", "--backbone", s(&tiny), s(&data)]);
    let seg = segments(tl.cache.path())[0].clone();
    let future = seg.with_file_name("seg-99999999999999999999-1-ffffffff.tlseg");
    std::fs::copy(&seg, &future).unwrap();
    damage_last_record(&future);
    for round in 0..2 {
        let run = tmp.path().join(format!("run{round}"));
        let report: serde_json::Value = serde_json::from_str(&tl.ok(&[
            "train",
            "--backbone",
            s(&tiny),
            s(&data),
            "--out",
            s(&run),
            "-q",
            "--json",
        ]))
        .unwrap();
        assert_eq!(
            report["extraction"]["computed"], 0,
            "round {round}: {}",
            report["extraction"]
        );
    }
    tl.ok(&[
        "train",
        "--backbone",
        s(&tiny),
        s(&data),
        "--out",
        s(&tmp.path().join("streamed")),
        "-q",
        "--stream",
    ]);
}

/// #23.16: a damaged record in a large segment (≥ 1024 entries): gc rewrites the segment
/// with its good records, after which verify is clean.
#[test]
fn gc_rewrites_a_large_segment_with_a_damaged_record() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 520, 45);
    let tiny = tiny();
    tl.ok(&["extract", "-q", "--backbone", s(&tiny), s(&data)]);
    let segs = segments(tl.cache.path());
    assert_eq!(segs.len(), 1);
    damage_last_record(&segs[0]);
    let out = tl.run(&["cache", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let gc: serde_json::Value = serde_json::from_str(&tl.ok(&["cache", "gc", "--json"])).unwrap();
    assert_eq!(gc["compacted"][0]["entries"], 1039, "{gc}");
    tl.ok(&["cache", "verify"]);
    // The damaged entry is recomputed once, then found.
    let again: serde_json::Value =
        serde_json::from_str(&tl.ok(&["extract", "--backbone", s(&tiny), s(&data), "--json"]))
            .unwrap();
    assert_eq!(again["extraction"]["computed"], 1);
}

/// #23.17: a namespace.json with a wrong preprocessing or sha256: verify and gc trust the
/// segment headers (no valid segment flagged or deleted), and the next run repairs the file.
#[test]
fn an_edited_namespace_file_neither_condemns_its_segments_nor_stays_wrong() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 6, 46);
    let tiny = tiny();
    tl.ok(&["extract", "-q", "--backbone", s(&tiny), s(&data)]);
    let seg = segments(tl.cache.path())[0].clone();
    let ns_file = seg.parent().unwrap().join("namespace.json");
    let original = read_json(&ns_file);
    let mut edited = original.clone();
    edited["preprocess"] = "tampered".into();
    edited["backbone_sha256"] = "0000".into();
    std::fs::write(&ns_file, edited.to_string()).unwrap();
    tl.ok(&["cache", "verify"]);
    let gc: serde_json::Value = serde_json::from_str(&tl.ok(&["cache", "gc", "--json"])).unwrap();
    assert_eq!(gc["damaged_segments"], 0, "{gc}");
    assert!(seg.exists());
    let report: serde_json::Value = serde_json::from_str(&tl.ok(&[
        "train",
        "--backbone",
        s(&tiny),
        s(&data),
        "--out",
        s(&tmp.path().join("run")),
        "-q",
        "--json",
    ]))
    .unwrap();
    assert_eq!(report["extraction"]["computed"], 0);
    let repaired = read_json(&ns_file);
    assert_eq!(repaired["preprocess"], original["preprocess"]);
    assert_eq!(repaired["backbone_sha256"], original["backbone_sha256"]);
}

/// #23.23: many classes: report.json and report.html list the most confused pairs instead
/// of a classes × classes matrix (2,000 classes once made a 204 MB page).
#[test]
fn reports_of_many_classes_stay_small() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let names: Vec<String> = (0..300).map(|i| format!("class{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    color_dataset(&data, &refs, 2, 47);
    let run = tmp.path().join("run");
    tl.ok(&[
        "train",
        "--backbone",
        s(&tiny()),
        s(&data),
        "--out",
        s(&run),
        "-q",
        "--val-split",
        "0.5",
        "--epochs",
        "2",
    ]);
    let json_bytes = std::fs::metadata(run.join("report.json")).unwrap().len();
    let html_bytes = std::fs::metadata(run.join("report.html")).unwrap().len();
    assert!(json_bytes < 400_000, "report.json {json_bytes} bytes");
    assert!(html_bytes < 1_500_000, "report.html {html_bytes} bytes");
    let report = read_json(&run.join("report.json"));
    assert!(report["validation"].get("confusion").is_none());
    let pairs = report["validation"]["confused_pairs"].as_array().unwrap();
    assert!(!pairs.is_empty());
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(html.contains("Most confused pairs") && !html.contains("class=\"cm\""));
    // Few classes: the whole matrix, as before.
    let small = tmp.path().join("small");
    color_dataset(&small, &["a", "b"], 4, 48);
    let run2 = tmp.path().join("run2");
    tl.ok(&[
        "train",
        "--backbone",
        s(&tiny()),
        s(&small),
        "--out",
        s(&run2),
        "-q",
    ]);
    assert!(read_json(&run2.join("report.json"))["validation"]["confusion"].is_array());
}

/// The child processes of `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|st| st.rsplit(')').next().map(str::to_string))
                .and_then(|rest| rest.split_whitespace().nth(1).map(str::to_string))
                == Some(pid.to_string())
        })
        .collect()
}

/// #23.21: `tl export --format onnx` killed while Python converts: the Python child ends
/// with it, and the next export cleans what the killed one left (temporary model file in
/// the output folder, scratch folder in the temp folder).
#[test]
fn a_killed_onnx_export_leaves_no_process_and_its_files_are_cleaned_next_time() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 4, 49);
    let run = tmp.path().join("run");
    tl.ok(&[
        "train",
        "--backbone",
        s(&tiny()),
        s(&data),
        "--out",
        s(&run),
        "-q",
    ]);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let temp_root = tmp.path().join("tmp");
    std::fs::create_dir(&temp_root).unwrap();
    let model = out_dir.join("m.onnx");
    let mut child = tl
        .cmd()
        .env("TMPDIR", &temp_root)
        .args(["export", s(&run), "-o", s(&model), "--format", "onnx"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let python = loop {
        let kids = children_of(child.id());
        if let Some(&k) = kids.first() {
            break k;
        }
        assert!(start.elapsed().as_secs() < 30, "no Python child appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    // Within a second: an orphan would still be importing torch then.
    let gone = (0..20).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let dead = unsafe { libc::kill(python as i32, 0) != 0 };
        let zombie = std::fs::read_to_string(format!("/proc/{python}/stat"))
            .is_ok_and(|st| st.contains(") Z "));
        dead || zombie
    });
    assert!(gone, "the Python child outlived tl");
    tl.cmd()
        .env("TMPDIR", &temp_root)
        .args(["export", s(&run), "-o", s(&model), "--format", "onnx"])
        .output()
        .map(|o| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr)))
        .unwrap();
    let left: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .chain(std::fs::read_dir(&temp_root).unwrap())
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tl-") || n.starts_with("tl-export-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// #23.24, the small ones: a renamed model pair still predicts; duplicate class names and
/// duplicate compare backbones are refused; `--channel` with `--class` is refused; gc counts
/// the bytes of the segments it removes.
#[test]
fn small_findings_of_round_two() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 4, 50);
    let tiny = tiny();
    let run = tmp.path().join("run");
    tl.ok(&[
        "train",
        "--backbone",
        s(&tiny),
        s(&data),
        "--out",
        s(&run),
        "-q",
    ]);
    let model = tmp.path().join("m.pt");
    tl.ok(&["export", s(&run), "-o", s(&model), "--no-unknown"]);
    let renamed = tmp.path().join("renamed.pt");
    std::fs::rename(&model, &renamed).unwrap();
    std::fs::rename(
        tmp.path().join("m.pt.json"),
        tmp.path().join("renamed.pt.json"),
    )
    .unwrap();
    tl.ok(&["predict", s(&renamed), s(&data.join("a/a_1.jpg"))]);

    let classes = run.join("classes.json");
    std::fs::write(&classes, "[\"a\", \"a\"]").unwrap();
    let err = tl.fails(&["predict", s(&run), s(&data.join("a/a_1.jpg"))]);
    assert_clean_error(&err);
    assert!(err.contains("names a class twice"), "{err}");

    let err = tl.fails(&[
        "compare",
        "--backbones",
        &format!("{0},{0}", s(&tiny)),
        s(&data),
        "--out",
        s(&tmp.path().join("cmp")),
    ]);
    assert!(err.contains("twice"), "{err}");
    let err = tl.fails(&[
        "dream",
        "--backbone",
        s(&tiny),
        "--class",
        "0",
        "--channel",
        "1",
        "-o",
        s(&tmp.path().join("d.png")),
    ]);
    assert!(
        err.contains("--channel") || err.contains("--layer"),
        "{err}"
    );

    let seg = segments(tl.cache.path())[0].clone();
    std::fs::write(seg.with_file_name("seg-junk.tlseg"), vec![7u8; 5000]).unwrap();
    let gc: serde_json::Value = serde_json::from_str(&tl.ok(&["cache", "gc", "--json"])).unwrap();
    assert_eq!(gc["damaged_segments"], 1);
    assert!(gc["freed_bytes"].as_u64().unwrap() >= 5000, "{gc}");
}

/// #23.5a: a segment another user wrote with mode 600 is not proof of damage: gc run as a
/// user who cannot read it keeps it (needs root to act as another user; said when skipped).
#[test]
fn gc_keeps_a_segment_it_cannot_read() {
    if unsafe { libc::geteuid() } != 0 || which("setpriv").is_none() {
        common::skip(
            "gc_keeps_a_segment_it_cannot_read",
            "needs root and setpriv to run gc as another user",
            common::Lacks::Machine,
        );
        return;
    }
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 4, 51);
    tl.ok(&["extract", "-q", "--backbone", s(&tiny()), s(&data)]);
    let seg = segments(tl.cache.path())[0].clone();
    // Everything open to everyone, except the segment: root's, mode 600.
    let status = std::process::Command::new("chmod")
        .args(["-R", "a+rwX", s(tl.cache.path())])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::set_permissions(&seg, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_tl"),
            "cache",
            "gc",
            "--json",
        ])
        .env("TL_CACHE_DIR", tl.cache.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(gc["damaged_segments"], 0, "{gc}");
    assert!(seg.exists(), "a segment this user cannot read was deleted");
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}
