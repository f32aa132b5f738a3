//! Scale-out: `tl extract` shards filling one cache at once, a killed shard re-run to
//! completion, `tl cache stats|verify|gc`, and the head trained on rows streamed from the
//! cache.
mod common;
use common::{color_dataset, read_json, segments, tiny, Tl};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn train(tl: &Tl, data: &Path, out: &Path, extra: &[&str]) -> Value {
    let tiny = tiny();
    let mut args = vec![
        "train",
        "--backbone",
        s(&tiny),
        s(data),
        "--out",
        s(out),
        "-q",
        "--epochs",
        "5",
    ];
    args.extend_from_slice(extra);
    tl.ok(&args);
    read_json(&out.join("report.json"))
}

#[test]
fn shards_fill_one_cache_at_once_and_train_finds_every_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b", "c"], 14, 31);
    let tl = Tl::new();
    let tiny = tiny();
    let children: Vec<_> = (0..4)
        .map(|k| {
            tl.cmd()
                .args(["extract", "--backbone", s(&tiny), s(&data), "--json"])
                .args(["--shard", &format!("{k}/4")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut total = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = json(&String::from_utf8_lossy(&out.stdout));
        let st = &r["extraction"];
        assert_eq!(st["computed"], r["shard_images"], "{r}");
        assert_eq!(r["dataset_images"], 42);
        total += r["shard_images"].as_u64().unwrap();
    }
    assert_eq!(total, 42, "the shards must cover the dataset exactly once");
    // Nothing to do without a cache; a shard that does not exist.
    let err = tl.fails(&["extract", "--backbone", s(&tiny), s(&data), "--no-cache"]);
    assert!(err.contains("--no-cache"), "{err}");
    let err = tl.fails(&[
        "extract",
        "--backbone",
        s(&tiny),
        s(&data),
        "--shard",
        "4/4",
    ]);
    assert!(err.contains("4/4"), "{err}");
    // A finished shard does nothing when re-run.
    let again = json(&tl.ok(&[
        "extract",
        "--backbone",
        s(&tiny),
        s(&data),
        "--shard",
        "2/4",
        "--json",
    ]));
    assert_eq!(again["extraction"]["computed"], 0);
    assert_eq!(again["extraction"]["cached"], again["shard_images"]);
    let sharded = train(&tl, &data, &tmp.path().join("r1"), &[]);
    assert_eq!(sharded["extraction"]["cached"], 42, "{sharded}");
    assert_eq!(sharded["extraction"]["computed"], 0);
    let verify = json(&tl.ok(&["cache", "verify", "--json"]));
    assert_eq!(
        (
            &verify["entries"],
            &verify["problems"],
            &verify["duplicates"]
        ),
        (&Value::from(42), &Value::from(0), &Value::from(0)),
        "{verify}"
    );
    // The same run from one process, on a fresh cache, sees the same accuracy.
    let single = train(&Tl::new(), &data, &tmp.path().join("r2"), &[]);
    assert_eq!(single["extraction"]["computed"], 42);
    assert_eq!(
        sharded["validation"]["accuracy"], single["validation"]["accuracy"],
        "{sharded} vs {single}"
    );
}

/// Noisy 400×300 JPEGs: slow enough to decode that a kill lands half way.
fn noisy_dataset(dir: &Path, per_class: usize) {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for class in ["x", "y"] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..per_class {
            let img = image::RgbImage::from_fn(400, 300, |_, _| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
            });
            img.save(dir.join(class).join(format!("{i}.jpg"))).unwrap();
        }
    }
}

#[test]
fn a_shard_killed_half_way_completes_on_re_run_with_nothing_lost_or_duplicated() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    noisy_dataset(&data, 120);
    let tl = Tl::new();
    let tiny = tiny();
    let args = [
        "extract",
        "--backbone",
        s(&tiny),
        s(&data),
        "--shard",
        "0/1",
        "--batch-size",
        "4",
        "--json",
    ];
    let mut child = tl
        .cmd()
        .args(args)
        .env("TL_CACHE_SEGMENT_ENTRIES", "8")
        .env("TL_DECODE_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while segments(tl.cache.path()).len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no segment published"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the extraction finished before it could be killed; the test needs slower images"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let published: usize = segments(tl.cache.path()).len();
    let rerun = json(&tl.ok(&args));
    let st = &rerun["extraction"];
    let (cached, computed) = (
        st["cached"].as_u64().unwrap(),
        st["computed"].as_u64().unwrap(),
    );
    assert_eq!(cached + computed, 240, "{rerun}");
    assert!(cached == 8 * published as u64 && computed > 0, "{rerun}");
    let verify = json(&tl.ok(&["cache", "verify", "--json"]));
    assert_eq!(
        (
            &verify["entries"],
            &verify["problems"],
            &verify["duplicates"]
        ),
        (&Value::from(240), &Value::from(0), &Value::from(0)),
        "{verify}"
    );
}

#[test]
fn cache_gc_drops_gone_backbones_and_stale_files_and_merges_small_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b"], 8, 41);
    let tl = Tl::new();
    // A copy of the tiny backbone that will be deleted.
    let gone = tmp.path().join("gone");
    std::fs::create_dir_all(&gone).unwrap();
    for e in std::fs::read_dir(tiny().parent().unwrap()).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("tiny.")
        {
            std::fs::copy(&p, gone.join(p.file_name().unwrap())).unwrap();
        }
    }
    for k in 0..3 {
        let shard = format!("{k}/3");
        tl.ok(&[
            "extract",
            "-q",
            "--backbone",
            s(&tiny()),
            s(&data),
            "--shard",
            &shard,
        ]);
    }
    let ns = segments(tl.cache.path())[0].parent().unwrap().to_path_buf();
    tl.ok(&[
        "extract",
        "-q",
        "--engine",
        "torch",
        "--backbone",
        s(&gone.join("tiny.json")),
        s(&data),
    ]);
    let before = json(&tl.ok(&["cache", "stats", "--json"]));
    assert_eq!(
        before["namespaces"].as_array().unwrap().len(),
        2,
        "{before}"
    );
    // A writer killed before publishing left a temporary file two hours ago.
    let temp = ns.join(".tl-dead.tmp");
    std::fs::write(&temp, b"partial").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&temp)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    std::fs::remove_dir_all(&gone).unwrap();
    // Not found is not proof of gone (another machine's disk): kept unless asked.
    let kept = json(&tl.ok(&["cache", "gc", "--dry-run", "--json"]));
    assert_eq!(kept["removed"].as_array().unwrap().len(), 0, "{kept}");
    assert_eq!(kept["kept"].as_array().unwrap().len(), 1, "{kept}");
    let dry = json(&tl.ok(&[
        "cache",
        "gc",
        "--dry-run",
        "--drop-missing-backbones",
        "--json",
    ]));
    assert_eq!(dry["removed"].as_array().unwrap().len(), 1, "{dry}");
    assert!(temp.exists(), "--dry-run must change nothing");
    let gc = json(&tl.ok(&["cache", "gc", "--drop-missing-backbones", "--json"]));
    let removed = gc["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{gc}");
    assert!(removed[0]["reason"].as_str().unwrap().contains("not found"));
    assert_eq!(gc["stale_temp_files"], 1);
    assert!(!temp.exists());
    assert_eq!(gc["compacted"][0]["files_merged"], 3, "{gc}");
    let after = json(&tl.ok(&["cache", "verify", "--json"]));
    assert_eq!(after["namespaces"].as_array().unwrap().len(), 1);
    assert_eq!(after["namespaces"][0]["segments"], 1);
    assert_eq!(
        (&after["entries"], &after["problems"]),
        (&Value::from(16), &Value::from(0))
    );
    // Everything is still found by training.
    let r = train(&tl, &data, &tmp.path().join("r"), &[]);
    assert_eq!(r["extraction"]["cached"], 16, "{r}");
    // A damaged entry: verify names it and fails.
    let seg = segments(tl.cache.path())[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();
    let err = tl.fails(&["cache", "verify"]);
    assert!(
        err.contains("checksum mismatch") && err.contains(s(&seg)),
        "{err}"
    );
    // Training recomputes it once; the new copy wins from then on.
    let r = train(&tl, &data, &tmp.path().join("r2"), &[]);
    assert_eq!(r["extraction"]["computed"], 1, "{r}");
    let r = train(&tl, &data, &tmp.path().join("r3"), &[]);
    assert_eq!(r["extraction"]["computed"], 0, "healed: {r}");
    assert_eq!(r["damaged_cache_entries"].as_array().unwrap().len(), 0);
    // gc merges the damaged segment's good entries with the new one; a segment copied in
    // from elsewhere (here: garbage) is removed.
    std::fs::write(ns.join("seg-9-junk.tlseg"), b"not a segment").unwrap();
    let gc = json(&tl.ok(&["cache", "gc", "--json"]));
    assert_eq!(gc["damaged_segments"], 1, "{gc}");
    assert_eq!(gc["compacted"][0]["entries"], 16, "{gc}");
    let clean = json(&tl.ok(&["cache", "verify", "--json"]));
    assert_eq!(
        (&clean["entries"], &clean["problems"], &clean["duplicates"]),
        (&Value::from(16), &Value::from(0), &Value::from(0)),
        "{clean}"
    );
}

#[test]
fn the_head_trains_the_same_on_rows_streamed_from_the_cache() {
    use tl::data::PreprocessConfig;
    use tl::features::FeatureCache;
    use tl::head::{
        train_head, HeadConfig, OptimizerKind, Schedule, StreamedRows, TensorRows, TrainConfig,
    };
    let tmp = tempfile::tempdir().unwrap();
    let (n, d) = (300usize, 24usize);
    let mut state = 7u64;
    let mut rows = Vec::new();
    for i in 0..n {
        let v: Vec<f32> = (0..d)
            .map(|j| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                noise
                    + if j < 3 {
                        (i % 3) as f32 * (j as f32 + 1.0) * 0.8
                    } else {
                        0.0
                    }
                    + 2.0
            })
            .collect();
        rows.push(v);
    }
    let labels: Vec<i64> = (0..n).map(|i| (i % 3) as i64).collect();
    let key = |i: usize| blake3::hash(&(i as u64).to_le_bytes()).to_hex()[..32].to_string();
    let sha = "ab".repeat(32);
    // Two writers, so that the rows span two segments.
    for half in [0..n / 2, n / 2..n] {
        let cache =
            FeatureCache::open(tmp.path(), &sha, &PreprocessConfig::default(), "", None).unwrap();
        for i in half {
            cache.put(&key(i), &rows[i]).unwrap();
        }
        cache.flush().unwrap();
    }
    let cache =
        FeatureCache::open(tmp.path(), &sha, &PreprocessConfig::default(), "", None).unwrap();
    assert_eq!(cache.len(), n);
    let entries = (0..n)
        .map(|i| (cache.locate(&key(i)).unwrap(), labels[i]))
        .collect();
    let streamed = StreamedRows::new(cache, entries, d).unwrap();
    let flat: Vec<f32> = rows.concat();
    let x = tch::Tensor::from_slice(&flat).view([n as i64, d as i64]);
    let y = tch::Tensor::from_slice(&labels);
    let memory = TensorRows { x: &x, y: &y };
    let cfg = TrainConfig {
        epochs: 8,
        batch_size: 32,
        lr: 0.01,
        optimizer: OptimizerKind::Adamw,
        momentum: 0.9,
        weight_decay: 0.0,
        label_smoothing: 0.0,
        l2: 1e-3,
        schedule: Schedule::Cosine,
        patience: 0,
        seed: 3,
        balance: Default::default(),
    };
    let head = HeadConfig {
        hidden: 0,
        dropout: 0.0,
        in_dim: d as i64,
        num_classes: 3,
        standardize: true,
    };
    let dev = tch::Device::Cpu;
    let a = train_head(head.clone(), &cfg, &memory, None, dev, false).unwrap();
    let b = train_head(head, &cfg, &streamed, None, dev, false).unwrap();
    for (ea, eb) in a.history.iter().zip(&b.history) {
        assert!(
            (ea.train_loss - eb.train_loss).abs() < 1e-4,
            "{} vs {}",
            ea.train_loss,
            eb.train_loss
        );
        assert_eq!(ea.train_accuracy, eb.train_accuracy);
    }
    let accuracy = a.history.last().unwrap().train_accuracy;
    assert!(accuracy > 0.8, "the rows should be learnable: {accuracy}");
}

#[test]
fn train_stream_reads_rows_from_the_cache_and_matches_in_memory_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["a", "b", "c"], 10, 51);
    let tl = Tl::new();
    let flags = ["--standardize", "--epochs", "15"];
    // Cold cache: extraction publishes, then the head streams what was published.
    let streamed = train(
        &tl,
        &data,
        &tmp.path().join("s"),
        &[&flags[..], &["--stream"]].concat(),
    );
    assert_eq!(streamed["extraction"]["computed"], 30, "{streamed}");
    let memory = train(&tl, &data, &tmp.path().join("m"), &flags);
    assert_eq!(memory["extraction"]["cached"], 30);
    assert_eq!(
        streamed["validation"]["accuracy"],
        memory["validation"]["accuracy"]
    );
    assert_eq!(streamed["best_epoch"], memory["best_epoch"]);
    let (a, b) = (
        streamed["val_loss"].as_f64().unwrap(),
        memory["val_loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    let config = read_json(&tmp.path().join("s/config.json"));
    assert_eq!(config["extract"]["stream"], true);
    for clash in [&["--no-cache"][..], &["--views", "2"], &["--finetune"]] {
        let tiny = tiny();
        let out = tmp.path().join("x");
        let mut args = vec![
            "train",
            "--backbone",
            s(&tiny),
            s(&data),
            "--out",
            s(&out),
            "--stream",
        ];
        args.extend_from_slice(clash);
        let err = tl.fails(&args);
        assert!(err.contains("--stream") && err.contains(clash[0]), "{err}");
        assert!(!out.exists());
    }
}
