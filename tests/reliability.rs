//! The reliability findings of issue #10, each reproduced on generated data: bad file
//! names, misplaced cache entries, splits that drift, empty classes, unwritable caches,
//! outputs that overwrite or leak, non-finite numbers, unbounded sizes, file modes.
mod common;
use common::{color_dataset, read_json, segments, tiny, walk, Tl};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn train_args<'a>(tiny: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--backbone",
        tiny,
        data,
        "--out",
        out,
        "-q",
        "--epochs",
        "3",
    ]
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn non_utf8_file_names_are_carried_into_json() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["chat", "chien"], 6, 21);
    let odd = data
        .join("chat")
        .join(OsString::from_vec(b"chat_\xE9_1.jpg".to_vec()));
    std::fs::copy(data.join("chat/chat_1.jpg"), &odd).unwrap();
    let run = tmp.path().join("run");
    let tiny = tiny();
    tl.ok(&train_args(s(&tiny), s(&data), s(&run)));
    let report = std::fs::read_to_string(run.join("report.json")).unwrap();
    let split = read_json(&run.join("split.json"));
    // chat_<E9>_1.jpg: lossy text for people, the raw bytes for programs.
    assert!(
        split.to_string().contains("636861745fe95f312e6a7067"),
        "raw bytes recorded: {split}"
    );
    assert!(report.contains("\"run\""));
    // eval, predict, attack and dream with --json on such names.
    let eval: serde_json::Value =
        serde_json::from_str(&tl.ok(&["eval", s(&run), s(&data), "--json", "--split", "val"]))
            .unwrap();
    assert!(eval["report"]["images"].as_u64().unwrap() > 0);
    let pred: serde_json::Value = serde_json::from_str(&tl.ok(&[
        std::ffi::OsStr::new("predict"),
        run.as_os_str(),
        odd.as_os_str(),
        "--json".as_ref(),
    ]))
    .unwrap();
    let path = &pred["predictions"][0]["path"];
    assert!(path["bytes_hex"].as_str().unwrap().contains("e9"), "{pred}");
    assert!(
        path["text"].as_str().unwrap().contains('\u{FFFD}'),
        "{pred}"
    );
    let adv = tmp
        .path()
        .join(OsString::from_vec(b"adv_\xFF.png".to_vec()));
    let out = tl.run(&[
        std::ffi::OsStr::new("attack"),
        odd.as_os_str(),
        "--run".as_ref(),
        run.as_os_str(),
        "--untargeted".as_ref(),
        "--steps".as_ref(),
        "2".as_ref(),
        "-o".as_ref(),
        adv.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dream = tmp.path().join(OsString::from_vec(b"\xFF.png".to_vec()));
    let out = tl.run(&[
        std::ffi::OsStr::new("dream"),
        "--backbone".as_ref(),
        "tiny".as_ref(),
        "--class".as_ref(),
        "zebra".as_ref(),
        "--steps".as_ref(),
        "2".as_ref(),
        "--size".as_ref(),
        "32".as_ref(),
        "-o".as_ref(),
        dream.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["output"]["bytes_hex"]
            .as_str()
            .unwrap()
            .ends_with("2fff2e706e67"),
        "{v}"
    );
}

#[test]
fn a_misplaced_cache_entry_is_detected_and_recomputed() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 6, 22);
    let tiny = tiny();
    let f1 = tmp.path().join("f1.safetensors");
    let run1 = tmp.path().join("r1");
    tl.ok(&[
        "train",
        "--backbone",
        s(&tiny),
        s(&data),
        "--out",
        s(&run1),
        "-q",
        "--epochs",
        "2",
        "--save-features",
        s(&f1),
    ]);
    // A (valid) segment of another namespace — the training images' augmented view —
    // copied into this one's folder, under a name that sorts first.
    let plain: Vec<PathBuf> = segments(tl.cache.path());
    assert_eq!(plain.len(), 1);
    tl.ok(&[
        "train",
        "--backbone",
        s(&tiny),
        s(&data),
        "--out",
        s(&tmp.path().join("views")),
        "-q",
        "--epochs",
        "2",
        "--views",
        "2",
    ]);
    let other = segments(tl.cache.path())
        .into_iter()
        .find(|p| p.parent() != plain[0].parent())
        .unwrap();
    std::fs::copy(&other, plain[0].parent().unwrap().join("seg-0.tlseg")).unwrap();
    let f2 = tmp.path().join("f2.safetensors");
    let run2 = tmp.path().join("r2");
    tl.ok(&[
        "train",
        "--backbone",
        s(&tiny),
        s(&data),
        "--out",
        s(&run2),
        "-q",
        "--epochs",
        "2",
        "--save-features",
        s(&f2),
    ]);
    let r2 = read_json(&run2.join("report.json"));
    assert_eq!(r2["extraction"]["computed"], 0, "{r2}");
    let damaged = r2["damaged_cache_entries"].as_array().unwrap();
    assert_eq!(damaged.len(), 1);
    assert!(
        damaged[0].as_str().unwrap().contains("misplaced"),
        "{damaged:?}"
    );
    // The features used are exactly those of the first, clean run.
    assert_eq!(std::fs::read(&f1).unwrap(), std::fs::read(&f2).unwrap());
}

#[test]
fn eval_split_val_uses_the_recorded_files() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let tiny = tiny();
    // (b) images added after training do not enter the validation set.
    let data = tmp.path().join("data");
    color_dataset(&data, &["cat", "dog"], 10, 23);
    let run = tmp.path().join("run");
    tl.ok(&train_args(s(&tiny), s(&data), s(&run)));
    let report = read_json(&run.join("report.json"));
    let val_images = report["validation"]["images"].as_u64().unwrap();
    let extra = tmp.path().join("extra");
    color_dataset(&extra, &["cat"], 5, 99);
    for e in std::fs::read_dir(extra.join("cat")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(
            &p,
            data.join("cat")
                .join(format!("new_{}", p.file_name().unwrap().to_string_lossy())),
        )
        .unwrap();
    }
    let out = tl.run(&["eval", s(&run), s(&data), "--split", "val", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["report"]["images"].as_u64(), Some(val_images));
    assert_eq!(v["split_check"]["new"].as_array().unwrap().len(), 5);
    assert!(
        stderr(&out).contains("5 image(s) in the folder were in neither"),
        "{}",
        stderr(&out)
    );
    assert_eq!(v["report"]["accuracy"], report["val_accuracy"]);
    // A removed validation image is reported as missing.
    let first_val = read_json(&run.join("split.json"))["val"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(data.join(&first_val)).unwrap();
    let out = tl.run(&["eval", s(&run), s(&data), "--split", "val", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["report"]["images"].as_u64(), Some(val_images - 1));
    assert_eq!(v["split_check"]["missing"][0], first_val.as_str());
    // (a) Oxford-IIIT Pets without annotation files, split by fraction.
    let pets = tmp.path().join("pets");
    std::fs::create_dir_all(pets.join("images")).unwrap();
    let src = tmp.path().join("src");
    color_dataset(&src, &["Bengal", "boxer"], 6, 24);
    for class in ["Bengal", "boxer"] {
        for (i, e) in std::fs::read_dir(src.join(class)).unwrap().enumerate() {
            let img = image::open(e.unwrap().path()).unwrap();
            img.save(pets.join("images").join(format!("{class}_{}.jpg", i + 1)))
                .unwrap();
        }
    }
    let prun = tmp.path().join("prun");
    tl.ok(&[
        "train",
        "--backbone",
        s(&tiny),
        s(&pets),
        "--out",
        s(&prun),
        "-q",
        "--epochs",
        "2",
        "--val-split",
        "0.5",
    ]);
    assert_eq!(
        read_json(&prun.join("config.json"))["data"]["val_split"],
        0.5
    );
    let v: serde_json::Value =
        serde_json::from_str(&tl.ok(&["eval", s(&prun), s(&pets), "--split", "val", "--json"]))
            .unwrap();
    assert_eq!(v["report"]["images"], 6);
}

#[test]
fn empty_classes_are_refused_by_name() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let tiny = tiny();
    let data = tmp.path().join("data");
    color_dataset(&data, &["cat", "dog", "fox"], 6, 25);
    for e in std::fs::read_dir(data.join("dog")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let run = tmp.path().join("run");
    let err = tl.fails(&train_args(s(&tiny), s(&data), s(&run)));
    assert!(err.contains("class(es) with no image files: dog"), "{err}");
    assert!(!run.exists());
    // Only unreadable files in a class.
    std::fs::write(data.join("dog/broken.jpg"), b"not a jpeg").unwrap();
    let err = tl.fails(&train_args(s(&tiny), s(&data), s(&run)));
    assert!(
        err.contains("class(es) with no readable image: dog"),
        "{err}"
    );
    // Kept on request, with a warning.
    let mut args = train_args(s(&tiny), s(&data), s(&run));
    args.push("--allow-empty-classes");
    let out = tl.run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("kept: --allow-empty-classes"));
}

#[test]
fn an_unwritable_cache_warns_once_and_the_run_goes_on() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let tiny = tiny();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 6, 26);
    tl.ok(&train_args(s(&tiny), s(&data), s(&tmp.path().join("r0"))));
    // The namespace folder replaced by a file: nothing can be written there (as root,
    // permissions would not stop a write; this does).
    let ns = segments(tl.cache.path())[0].parent().unwrap().to_path_buf();
    std::fs::remove_dir_all(&ns).unwrap();
    std::fs::write(&ns, b"").unwrap();
    let run = tmp.path().join("run");
    let out = tl.run(&train_args(s(&tiny), s(&data), s(&run)));
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("feature cache not written").count(), 1, "{err}");
    let report = read_json(&run.join("report.json"));
    assert_eq!(report["extraction"]["computed"], 12);
}

#[test]
fn outputs_are_never_overwritten_or_left_half_written() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let tiny = tiny();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 6, 27);
    let precious = tmp.path().join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let r1 = tmp.path().join("r1");
    let mut args = train_args(s(&tiny), s(&data), s(&r1));
    args.extend(["--save-features", s(&precious)]);
    let err = tl.fails(&args);
    assert!(
        err.contains("precious.txt") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    let dir = tmp.path().join("featdir");
    std::fs::create_dir(&dir).unwrap();
    let r2 = tmp.path().join("r2");
    let mut args = train_args(s(&tiny), s(&data), s(&r2));
    args.extend(["--save-features", s(&dir), "--force"]);
    let err = tl.fails(&args);
    assert!(err.contains("is a folder"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A write that fails half way (a file-size limit: EFBIG, as a full disk gives ENOSPC)
    // leaves no run folder and no temporary file, and says so in words.
    let outdir = tmp.path().join("limited");
    std::fs::create_dir(&outdir).unwrap();
    // Non-image files make report.json (which lists them) larger than the limit, while
    // config.json, written first, stays under it.
    for i in 0..30 {
        std::fs::write(data.join(format!("a/notes_{i}.txt")), b"x").unwrap();
    }
    let run = outdir.join("run");
    let mut cmd = tl.cmd();
    cmd.args(train_args(s(&tiny), s(&data), s(&run)));
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 2500,
                rlim_max: 2500,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    common::assert_clean_error(&err);
    assert!(err.contains("too large") && !err.contains("Os {"), "{err}");
    assert_eq!(
        std::fs::read_dir(&outdir).unwrap().count(),
        0,
        "nothing may be left behind"
    );
    // The re-run needs no --force.
    tl.ok(&train_args(s(&tiny), s(&data), s(&run)));
}

#[test]
fn non_finite_numbers_are_refused() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let tiny = tiny();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 6, 28);
    let d = s(&data);
    for (flag, value) in [
        ("--lr", "inf"),
        ("--lr", "NaN"),
        ("--lr", "-1"),
        ("--epochs", "0"),
        ("--val-split", "1.5"),
        ("--weight-decay", "-inf"),
    ] {
        let run = tmp.path().join("never");
        let mut args = train_args(s(&tiny), d, s(&run));
        let flag_value = format!("{flag}={value}");
        args.push(&flag_value);
        let out = tl.run(&args);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = stderr(&out);
        common::assert_clean_error(&err);
        assert!(err.contains(flag), "{flag} {value}: {err}");
        // Refused before any image was read: the cache is untouched.
        assert!(
            walk(tl.cache.path()).is_empty(),
            "{flag} {value} extracted features first"
        );
    }
    for (flag, value) in [
        ("--lr", "inf"),
        ("--tv", "NaN"),
        ("--size", "20000"),
        ("--steps", "0"),
    ] {
        let flag_value = format!("{flag}={value}");
        let err = tl.fails(&[
            "dream",
            "--backbone",
            "tiny",
            "--class",
            "zebra",
            "-o",
            s(&tmp.path().join("x.png")),
            &flag_value,
        ]);
        assert!(err.contains(flag), "{err}");
    }
    // A learning rate so large that training diverges: an error, no run folder.
    let run = tmp.path().join("diverged");
    let mut args = train_args(s(&tiny), d, s(&run));
    args.extend(["--lr", "1e30", "--epochs", "5"]);
    let err = tl.fails(&args);
    assert!(err.contains("diverged"), "{err}");
    assert!(!run.exists());
    // A head file with a NaN weight is refused by predict and eval.
    let run = tmp.path().join("run");
    tl.ok(&train_args(s(&tiny), d, s(&run)));
    let head = run.join("head.safetensors");
    let bytes = std::fs::read(&head).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().to_vec(), v.shape().to_vec()))
        .collect();
    let w = tensors.iter_mut().find(|t| t.0 == "fc.weight").unwrap();
    w.1[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(&head, safetensors::serialize(views, &None).unwrap()).unwrap();
    let img = data.join("a/a_1.jpg");
    let err = tl.fails(&["predict", s(&run), s(&img)]);
    assert!(
        err.contains("head.safetensors") && err.contains("NaN"),
        "{err}"
    );
    let err = tl.fails(&["eval", s(&run), d]);
    assert!(err.contains("NaN"), "{err}");
}

#[test]
fn sizes_are_bounded_with_clear_messages() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let err = tl.fails(&[
        "dream",
        "--backbone",
        "tiny",
        "--class",
        "zebra",
        "--size",
        "20000",
        "-o",
        s(&tmp.path().join("d.png")),
    ]);
    assert!(err.contains("--size") && err.contains("2048"), "{err}");
    let big = tmp.path().join("big.png");
    image::RgbImage::from_pixel(3000, 2000, image::Rgb([90, 120, 200]))
        .save(&big)
        .unwrap();
    let err = tl.fails(&[
        "attack",
        s(&big),
        "--backbone",
        "tiny",
        "--target",
        "zebra",
        "--max-pixels",
        "1000000",
        "-o",
        s(&tmp.path().join("a.png")),
    ]);
    assert!(
        err.contains("big.png") && err.contains("3000x2000") && err.contains("downscale"),
        "{err}"
    );
}

#[test]
fn outputs_get_the_usual_permissions() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let tiny = tiny();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 4, 29);
    let run = tmp.path().join("run");
    tl.ok(&train_args(s(&tiny), s(&data), s(&run)));
    let umask = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Umask:")
                .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        })
        .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for f in [
        "config.json",
        "classes.json",
        "head.safetensors",
        "split.json",
        "metrics.jsonl",
        "report.json",
    ] {
        assert_eq!(mode(&run.join(f)), 0o666 & !umask, "{f}");
    }
    assert_eq!(mode(&run), 0o777 & !umask, "run folder");
    let entry = walk(tl.cache.path())
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "tlseg"))
        .unwrap();
    assert_eq!(mode(&entry), 0o666 & !umask, "cache entry");
    let png = tmp.path().join("d.png");
    tl.ok(&[
        "dream",
        "--backbone",
        "tiny",
        "--class",
        "zebra",
        "--steps",
        "1",
        "--size",
        "32",
        "-o",
        s(&png),
    ]);
    assert_eq!(mode(&png), 0o666 & !umask, "dream PNG");
}

#[test]
fn smaller_findings() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let tiny = tiny();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 4, 30);
    let img = data.join("a/a_1.jpg");
    // Zero counts are refused, naming the flag.
    for (flag, args) in [
        ("--threads", vec!["--threads", "0", "doctor"]),
        (
            "--top-k",
            vec!["predict", "--backbone", "tiny", s(&img), "--top-k", "0"],
        ),
        (
            "--batch-size",
            vec![
                "predict",
                "--backbone",
                "tiny",
                s(&img),
                "--batch-size",
                "0",
            ],
        ),
        (
            "--batch-size",
            vec!["train", "--backbone", "tiny", s(&data), "--batch-size", "0"],
        ),
    ] {
        let out = tl.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        common::assert_clean_error(&err);
        assert!(err.contains(flag), "{err}");
    }
    // Two wrapper folders above the classes.
    let outer = tmp.path().join("outer");
    color_dataset(&outer.join("kaggle/PetImages"), &["Cat", "Dog"], 4, 31);
    let run = tmp.path().join("wrapped");
    tl.ok(&train_args(s(&tiny), s(&outer), s(&run)));
    assert_eq!(
        read_json(&run.join("classes.json")),
        serde_json::json!(["Cat", "Dog"])
    );
    // Hidden files and Oxford images missing from the annotation lists are listed.
    let pets = tmp.path().join("pets");
    std::fs::create_dir_all(pets.join("images")).unwrap();
    std::fs::create_dir_all(pets.join("annotations")).unwrap();
    for (i, e) in std::fs::read_dir(data.join("a")).unwrap().enumerate() {
        let im = image::open(e.unwrap().path()).unwrap();
        im.save(pets.join("images").join(format!("Bengal_{}.jpg", i + 1)))
            .unwrap();
        im.save(pets.join("images").join(format!("boxer_{}.jpg", i + 1)))
            .unwrap();
    }
    std::fs::write(pets.join("images/.DS_Store"), b"junk").unwrap();
    std::fs::write(
        pets.join("annotations/trainval.txt"),
        "Bengal_1 1\nBengal_2 1\nboxer_1 2\nboxer_2 2\n",
    )
    .unwrap();
    std::fs::write(pets.join("annotations/test.txt"), "Bengal_3 1\nboxer_3 2\n").unwrap();
    let prun = tmp.path().join("prun");
    tl.ok(&train_args(s(&tiny), s(&pets), s(&prun)));
    let ignored: Vec<String> = read_json(&prun.join("report.json"))["ignored_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{} {}",
                f["path"].as_str().unwrap(),
                f["reason"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        ignored
            .iter()
            .any(|f| f.contains(".DS_Store") && f.contains("hidden")),
        "{ignored:?}"
    );
    assert!(
        ignored
            .iter()
            .any(|f| f.contains("Bengal_4.jpg") && f.contains("not listed")),
        "{ignored:?}"
    );
    assert!(
        ignored.iter().any(|f| f.contains("boxer_4.jpg")),
        "{ignored:?}"
    );
}

#[test]
fn attack_random_start_leaves_unseen_pixels_alone() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    // A wide image: resize 256 / crop 224 sees only a centre band of columns.
    let input = tmp.path().join("wide.png");
    let img = image::RgbImage::from_fn(600, 200, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
    });
    img.save(&input).unwrap();
    let out = tmp.path().join("adv.png");
    tl.ok(&[
        "attack",
        s(&input),
        "--backbone",
        "tiny",
        "--target",
        "zebra",
        "--eps",
        "8/255",
        "--steps",
        "3",
        "-o",
        s(&out),
    ]);
    let adv = image::open(&out).unwrap().into_rgb8();
    let changed_cols: Vec<u32> = (0..600)
        .filter(|&x| (0..200).any(|y| adv.get_pixel(x, y) != img.get_pixel(x, y)))
        .collect();
    assert!(!changed_cols.is_empty(), "the attack changed nothing");
    // Resized to 768x256 and cropped at columns 272..496, which come from source columns
    // 212..388 (plus one pixel of filter support): the outer columns are never seen.
    let (first, last) = (changed_cols[0], changed_cols[changed_cols.len() - 1]);
    assert!(
        first >= 205 && last <= 395,
        "changed columns {first}..{last}"
    );
}

#[test]
fn allocation_failures_are_errors_not_panics() {
    // An address-space limit makes libtorch's allocations fail inside tch's infallible calls.
    const LIMIT: u64 = 3_200_000 * 1024;
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let limited = |args: &[&str]| {
        let mut cmd = tl.cmd();
        cmd.args(args);
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: LIMIT,
                    rlim_max: LIMIT,
                };
                libc::setrlimit(libc::RLIMIT_AS, &lim);
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    if !limited(&["doctor"]).status.success() {
        common::skip(
            "allocation_failures_are_errors_not_panics",
            &format!(
                "libtorch does not load under a {} MB address-space limit here",
                LIMIT >> 20
            ),
            common::Lacks::Machine,
        );
        return;
    }
    let out = limited(&[
        "dream",
        "--backbone",
        "tiny",
        "--class",
        "zebra",
        "--size",
        "2048",
        "--steps",
        "2",
        "-o",
        s(&tmp.path().join("big.png")),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    common::assert_clean_error(&err);
    assert!(
        err.contains("2048x2048") && err.contains("not enough memory"),
        "{err}"
    );
    assert!(!tmp.path().join("big.png").exists());
    let big = tmp.path().join("photo.png");
    image::RgbImage::from_fn(4000, 3000, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
    })
    .save(&big)
    .unwrap();
    let out = limited(&[
        "attack",
        s(&big),
        "--backbone",
        "tiny",
        "--target",
        "zebra",
        "--steps",
        "2",
        "-o",
        s(&tmp.path().join("adv.png")),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    common::assert_clean_error(&err);
    assert!(
        err.contains("photo.png") && err.contains("not enough memory"),
        "{err}"
    );
}
