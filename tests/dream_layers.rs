//! `tl dream --list-layers`, `--layer NAME --channel C` and `--batch K` on the tiny fixture
//! backbone (its layers file comes from scripts/export_backbones.py, like a real export's).
mod common;
use common::Tl;
use serde_json::Value;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Mean activation of every channel of layer `layer` for a PNG, computed without `tl`'s
/// code: pixels / 255, ImageNet mean/std, the layers TorchScript file.
fn independent_channel_means(png: &Path, layer: usize) -> Vec<f64> {
    let x = common::normalized_png(png);
    let model = tch::CModule::load(common::fixtures().join("backbones/tiny.layers.pt")).unwrap();
    let out = tch::no_grad(|| model.forward_is(&[tch::IValue::Tensor(x)])).unwrap();
    let tch::IValue::Tuple(items) = out else {
        panic!("the layers file must return a tuple")
    };
    let tch::IValue::Tensor(acts) = &items[layer] else {
        panic!("not a tensor")
    };
    let means = acts.mean_dim([0i64, 2, 3].as_slice(), false, tch::Kind::Float);
    Vec::<f32>::try_from(&means)
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

#[test]
fn list_layers_shows_the_exported_layers() {
    let tl = Tl::new();
    let r = json(&tl.ok(&["dream", "--backbone", "tiny", "--list-layers", "--json"]));
    let sidecar = common::read_json(&common::fixtures().join("backbones/tiny.json"));
    let names: Vec<&Value> = r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["name"])
        .collect();
    let want: Vec<&Value> = sidecar["layers"]["names"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(names, want);
    let channels: Vec<&Value> = r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["channels"])
        .collect();
    assert_eq!(
        channels,
        sidecar["layers"]["channels"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>()
    );
    // Sizes at the 224 crop: each block halves the side.
    assert_eq!(r["layers"][0]["size"], serde_json::json!([112, 112]));
    let text = tl.ok(&["dream", "--backbone", "tiny", "--list-layers"]);
    assert!(
        text.contains("features.3-5") && text.contains("16 channels"),
        "{text}"
    );
}

fn channel_dream(tl: &Tl, out: &Path, channel: &str, seed: &str) -> Value {
    json(&tl.ok(&[
        "dream",
        "--backbone",
        "tiny",
        "--layer",
        "features.0",
        "--channel",
        channel,
        "--tv",
        "0",
        "--steps",
        "48",
        "--size",
        "96",
        "--seed",
        seed,
        "-o",
        s(out),
        "--force",
        "--json",
    ]))
}

#[test]
fn a_channel_dream_excites_its_channel_most_and_is_deterministic() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut own = Vec::new();
    for (channel, file) in [(1usize, "c1.png"), (2, "c2.png")] {
        let out = tmp.path().join(file);
        let r = channel_dream(&tl, &out, &channel.to_string(), "0");
        let c = &r["channel"];
        assert_eq!(
            c["layer"], "features.0-2",
            "a unique prefix names the layer: {r}"
        );
        assert_eq!(c["channel"], channel as i64);
        assert!(r["probability"].is_null());
        // The report's activation is the saved PNG's, as an independent computation says.
        let means = independent_channel_means(&out, 0);
        let reported = c["activation"].as_f64().unwrap();
        assert!(
            (reported - means[channel]).abs() < 1e-4,
            "{reported} vs {}",
            means[channel]
        );
        let rank = 1 + means.iter().filter(|&&m| m > means[channel]).count();
        assert_eq!(
            rank, 1,
            "channel {channel} should be the layer's most excited: {means:?}"
        );
        assert_eq!(c["rank"], 1);
        own.push(means);
    }
    // Each dream excites its own channel more than the other dream does.
    assert!(own[0][1] > own[1][1] && own[1][2] > own[0][2], "{own:?}");
    // Same seed, same bytes; another seed, another image.
    let again = tmp.path().join("again.png");
    channel_dream(&tl, &again, "1", "0");
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(tmp.path().join("c1.png")).unwrap()
    );
    channel_dream(&tl, &again, "1", "1");
    assert_ne!(
        std::fs::read(&again).unwrap(),
        std::fs::read(tmp.path().join("c1.png")).unwrap()
    );
}

fn batch_dream(tl: &Tl, out: &Path, diversity: &str) -> Value {
    json(&tl.ok(&[
        "dream",
        "--backbone",
        "tiny",
        "--class",
        "zebra",
        "--batch",
        "3",
        "--diversity",
        diversity,
        "--steps",
        "48",
        "--size",
        "96",
        "-o",
        s(out),
        "--force",
        "--json",
    ]))
}

#[test]
fn batch_makes_several_images_that_diversity_pushes_apart() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("zebra.png");
    let diverse = batch_dream(&tl, &out, "10");
    let images = diverse["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    let files: Vec<Vec<u8>> = (1..=3)
        .map(|i| std::fs::read(tmp.path().join(format!("zebra-{i}.png"))).unwrap())
        .collect();
    assert!(!out.exists(), "with --batch the images are numbered");
    assert!(files[0] != files[1] && files[1] != files[2] && files[0] != files[2]);
    for img in images {
        let p = img["probability"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0);
    }
    assert_eq!(diverse["output"], images[0]["output"]);
    // Without the diversity term the same start comes out more alike.
    let alike = batch_dream(&tl, &tmp.path().join("alike.png"), "0");
    let (d, a) = (
        diverse["similarity"].as_f64().unwrap(),
        alike["similarity"].as_f64().unwrap(),
    );
    assert!(d < a - 0.1, "similarity with diversity {d} vs without {a}");
    // Deterministic by seed.
    let again = tmp.path().join("again.png");
    batch_dream(&tl, &again, "10");
    for i in 1..=3 {
        assert_eq!(
            std::fs::read(tmp.path().join(format!("again-{i}.png"))).unwrap(),
            files[i - 1]
        );
    }
}

#[test]
fn layer_and_batch_bad_input() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let err = tl.fails(&[
        "dream",
        "-b",
        "tiny",
        "--layer",
        "nope",
        "--channel",
        "0",
        "-o",
        s(&out),
    ]);
    assert!(
        err.contains("no layer 'nope'") && err.contains("features.3-5"),
        "{err}"
    );
    let err = tl.fails(&[
        "dream",
        "-b",
        "tiny",
        "--layer",
        "features.0",
        "--channel",
        "8",
        "-o",
        s(&out),
    ]);
    assert!(err.contains("channels 0..7"), "{err}");
    let err = tl.fails(&[
        "dream",
        "-b",
        "tiny",
        "--layer",
        "features.0",
        "-o",
        s(&out),
    ]);
    assert!(err.contains("--channel"), "{err}");
    let err = tl.fails(&[
        "dream",
        "-b",
        "tiny",
        "--class",
        "zebra",
        "--batch",
        "2",
        "--save-every",
        "4",
        "-o",
        s(&out),
    ]);
    assert!(err.contains("--save-every"), "{err}");
    // An existing numbered output is not overwritten without --force, and nothing is written.
    std::fs::write(tmp.path().join("x-2.png"), b"mine").unwrap();
    let err = tl.fails(&[
        "dream",
        "-b",
        "tiny",
        "--class",
        "zebra",
        "--batch",
        "2",
        "-o",
        s(&out),
    ]);
    assert!(err.contains("x-2.png"), "{err}");
    assert_eq!(std::fs::read(tmp.path().join("x-2.png")).unwrap(), b"mine");
    assert!(!tmp.path().join("x-1.png").exists());
}
