//! `tl dream` and `tl attack` on the tiny fixture backbone.
mod common;
use common::{color_dataset, Tl};
use std::path::Path;

fn png(path: &Path) -> image::RgbImage {
    image::open(path).unwrap().into_rgb8()
}

fn tv(img: &image::RgbImage) -> f64 {
    let t = tl::data::preprocess::image_to_unit_tensor(img);
    tl::inspect::dream::total_variation(&t).double_value(&[])
}

/// p(class) of a PNG under the tiny ImageNet classifier, computed without `tl`'s code:
/// pixels / 255, ImageNet mean/std, the TorchScript file, softmax.
fn independent_score(png_path: &Path, class: i64) -> f64 {
    let x = common::normalized_png(png_path);
    let model =
        tch::CModule::load(common::fixtures().join("backbones/tiny.classifier.pt")).unwrap();
    let logits = tch::no_grad(|| model.forward_ts(&[x])).unwrap();
    logits
        .softmax(-1, tch::Kind::Float)
        .double_value(&[0, class])
}

fn dream_json(tl: &Tl, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "dream",
        "--backbone",
        "tiny",
        "--class",
        "espresso",
        "--size",
        "64",
        "--steps",
        "60",
        "--lr",
        "0.1",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&tl.ok(&args)).unwrap()
}

#[test]
fn dream_reaches_the_class_deterministically_and_tv_smooths() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.png"), tmp.path().join("b.png"));
    let ra = dream_json(&tl, &a, &[]);
    dream_json(&tl, &b, &[]);
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same seed must give the same image, bit for bit"
    );
    let img = png(&a);
    assert_eq!(img.dimensions(), (64, 64));
    // The reported probability is that of the saved file: re-score it independently, with
    // libtorch directly on the classifier file and the PNG as written.
    assert_eq!(ra["class"], "espresso");
    let p_independent = independent_score(&a, ra["index"].as_i64().unwrap());
    assert!(
        (ra["probability"].as_f64().unwrap() - p_independent).abs() < 1e-5,
        "reported {} vs re-scored {p_independent}",
        ra["probability"]
    );
    // Without the random transforms the tiny net is easy to drive to the class.
    let start = dream_json(
        &tl,
        &tmp.path().join("one.png"),
        &["--steps", "1", "--no-transforms"],
    )["probability"]
        .as_f64()
        .unwrap();
    let p = dream_json(&tl, &tmp.path().join("plain.png"), &["--no-transforms"])["probability"]
        .as_f64()
        .unwrap();
    assert!(
        p > 0.5 && p > 5.0 * start,
        "optimisation should raise p(espresso): {start} after 1 step, {p} after 60"
    );
    // With them (the default), it still rises.
    assert!(ra["probability"].as_f64().unwrap() > start);
    assert!((ra["total_variation"].as_f64().unwrap() - tv(&img)).abs() < 1e-4);
    // Other seed, other image.
    let c = tmp.path().join("c.png");
    dream_json(&tl, &c, &["--seed", "5"]);
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
    // TV's effect: a strong penalty gives a much smoother image than none.
    let (smooth, rough) = (tmp.path().join("smooth.png"), tmp.path().join("rough.png"));
    dream_json(&tl, &smooth, &["--tv", "50", "--param", "pixel"]);
    dream_json(&tl, &rough, &["--tv", "0", "--param", "pixel"]);
    let (ts, tr) = (tv(&png(&smooth)), tv(&png(&rough)));
    assert!(
        ts < 0.5 * tr,
        "TV with penalty {ts} should be far below TV without {tr}"
    );
    // Frames strip.
    let s = tmp.path().join("s.png");
    dream_json(&tl, &s, &["--save-every", "20"]);
    assert_eq!(png(&tmp.path().join("s-strip.png")).dimensions(), (192, 64)); // frames at steps 20, 40, 60
                                                                              // Output exists: refused without --force.
    let err = tl.fails(&[
        "dream",
        "--backbone",
        "tiny",
        "--class",
        "espresso",
        "--steps",
        "1",
        "-o",
        a.to_str().unwrap(),
    ]);
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn total_variation_of_known_images() {
    let flat = image::RgbImage::from_pixel(8, 8, image::Rgb([100, 100, 100]));
    assert_eq!(tv(&flat), 0.0);
    // Vertical stripes of 0 and 255: every horizontal neighbour differs by 1.
    let stripes = image::RgbImage::from_fn(8, 8, |x, _| {
        if x % 2 == 0 {
            image::Rgb([0, 0, 0])
        } else {
            image::Rgb([255, 255, 255])
        }
    });
    assert!((tv(&stripes) - 1.0).abs() < 1e-6);
}

#[test]
fn dream_class_resolution_and_bad_input() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let o = out.to_str().unwrap();
    let err = tl.fails(&["dream", "--backbone", "tiny", "--class", "cat", "-o", o]);
    assert!(
        err.contains("ambiguous") && err.contains("tiger cat") && err.contains("Siamese cat"),
        "{err}"
    );
    let err = tl.fails(&["dream", "--backbone", "tiny", "--class", "zebar", "-o", o]);
    assert!(
        err.contains("unknown class 'zebar'") && err.contains("zebra"),
        "{err}"
    );
    // By index and by loose name.
    let r: serde_json::Value = serde_json::from_str(&tl.ok(&[
        "dream",
        "--backbone",
        "tiny",
        "--class",
        "8",
        "--steps",
        "2",
        "--size",
        "32",
        "-o",
        o,
        "--json",
    ]))
    .unwrap();
    assert_eq!(r["class"], "zebra");
    let r: serde_json::Value = serde_json::from_str(&tl.ok(&[
        "dream",
        "--backbone",
        "tiny",
        "--class",
        "siamese",
        "--steps",
        "2",
        "--size",
        "32",
        "-o",
        o,
        "--json",
        "--force",
    ]))
    .unwrap();
    assert_eq!(r["class"], "Siamese cat");
    // A run folder whose head file is missing.
    let data = tmp.path().join("data");
    color_dataset(&data, &["cat", "dog"], 4, 1);
    let run = tmp.path().join("run");
    tl.ok(&[
        "train",
        "--backbone",
        "tiny",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "-q",
        "--epochs",
        "2",
    ]);
    let r: serde_json::Value = serde_json::from_str(&tl.ok(&[
        "dream",
        "--run",
        run.to_str().unwrap(),
        "--class",
        "cat",
        "--steps",
        "30",
        "--size",
        "48",
        "-o",
        tmp.path().join("cat.png").to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(r["class"], "cat");
    std::fs::remove_file(run.join("head.safetensors")).unwrap();
    let err = tl.fails(&[
        "dream",
        "--run",
        run.to_str().unwrap(),
        "--class",
        "cat",
        "-o",
        tmp.path().join("y.png").to_str().unwrap(),
    ]);
    assert!(
        err.contains("head.safetensors") && err.contains("missing"),
        "{err}"
    );
    let err = tl.fails(&["dream", "--class", "cat", "-o", o]);
    assert!(err.contains("--run") && err.contains("--backbone"), "{err}");
}

/// A photo-like test image for attacks (not square, not the crop size).
fn test_photo(path: &Path) {
    let img = image::RgbImage::from_fn(150, 110, |x, y| {
        let v = ((x as f32 / 9.0).sin() * 60.0 + (y as f32 / 7.0).cos() * 50.0 + 128.0) as u8;
        image::Rgb([v, 255 - v, ((x * y) % 255) as u8])
    });
    img.save(path).unwrap();
}

fn attack_json(tl: &Tl, input: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "attack",
        input.to_str().unwrap(),
        "--backbone",
        "tiny",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&tl.ok(&args)).unwrap()
}

fn current_class(tl: &Tl, img: &Path) -> String {
    let p: serde_json::Value = serde_json::from_str(&tl.ok(&[
        "predict",
        "--backbone",
        "tiny",
        img.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    p["predictions"][0]["class"].as_str().unwrap().to_string()
}

#[test]
fn attack_respects_the_budget_and_is_judged_on_the_saved_file() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("photo.png");
    test_photo(&input);
    let original = png(&input);
    let current = current_class(&tl, &input);
    let target = if current == "zebra" {
        "goldfish"
    } else {
        "zebra"
    };
    for (norm, eps) in [("linf", "8/255"), ("l2", "1.5")] {
        let out = tmp.path().join(format!("adv-{norm}.png"));
        let r = attack_json(
            &tl,
            &input,
            &out,
            &[
                "--target", target, "--norm", norm, "--eps", eps, "--steps", "30",
            ],
        );
        let o = &r["outcomes"][0];
        let adv = png(&out);
        assert_eq!(
            adv.dimensions(),
            original.dimensions(),
            "the perturbation is made at the image's own resolution"
        );
        let (linf, l2, _) = tl::inspect::attack::distortion(&original, &adv);
        let eps_v = tl::util::parse_fraction(eps).unwrap();
        match norm {
            "linf" => assert!(linf <= eps_v + 1e-9, "Linf {linf} > {eps_v}"),
            _ => assert!(l2 <= eps_v + 1e-9, "L2 {l2} > {eps_v}"),
        }
        assert!(
            (o["linf"].as_f64().unwrap() - linf).abs() < 1e-9
                && (o["l2"].as_f64().unwrap() - l2).abs() < 1e-9
        );
        // Success is what `tl predict` says about the saved file.
        let predicted = current_class(&tl, &out);
        assert_eq!(
            o["success"].as_bool().unwrap(),
            predicted == target,
            "{norm}: report {o} vs predict {predicted}"
        );
        assert_eq!(o["adversarial_class"].as_str().unwrap(), predicted);
    }
    // Generous budget: succeeds and stops early.
    let out = tmp.path().join("early.png");
    let r = attack_json(
        &tl,
        &input,
        &out,
        &["--target", target, "--eps", "64/255", "--steps", "200"],
    );
    let o = &r["outcomes"][0];
    assert!(o["success"].as_bool().unwrap(), "{o}");
    assert!(o["steps"].as_u64().unwrap() < 200, "should stop early: {o}");
    assert_eq!(current_class(&tl, &out), target);
    // --diff writes the amplified perturbation.
    let diff = tmp.path().join("diff.png");
    attack_json(
        &tl,
        &input,
        &tmp.path().join("d.png"),
        &[
            "--target",
            target,
            "--eps",
            "8/255",
            "--steps",
            "5",
            "--diff",
            diff.to_str().unwrap(),
        ],
    );
    assert_eq!(png(&diff).dimensions(), original.dimensions());
}

#[test]
fn attack_sweep_and_many_images() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).unwrap();
    test_photo(&dir.join("a.png"));
    let img = image::RgbImage::from_fn(90, 130, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 2) as u8, 128])
    });
    img.save(dir.join("b.png")).unwrap();
    std::fs::write(dir.join("broken.jpg"), b"nope").unwrap();
    let out = tmp.path().join("out");
    let r = attack_json(
        &tl,
        &dir,
        &out,
        &[
            "--target",
            "zebra",
            "--eps",
            "1/255,16/255",
            "--steps",
            "10",
        ],
    );
    let summary = r["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 2);
    assert_eq!(summary[0]["eps_label"], "1/255");
    assert_eq!(summary[1]["eps_label"], "16/255");
    let outcomes = r["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 6, "3 files x 2 budgets");
    for (i, s) in summary.iter().enumerate() {
        let eps = s["eps"].as_f64().unwrap();
        let mine: Vec<&serde_json::Value> = outcomes
            .iter()
            .filter(|o| o["eps"].as_f64() == Some(eps))
            .collect();
        assert_eq!(mine.len(), 3);
        let broken = mine
            .iter()
            .find(|o| o["input"].as_str().unwrap().ends_with("broken.jpg"))
            .unwrap();
        assert!(broken["skipped"].as_str().unwrap().contains("broken.jpg"));
        let attacked: Vec<&&serde_json::Value> =
            mine.iter().filter(|o| o["skipped"].is_null()).collect();
        let mut succeeded = 0;
        for o in &attacked {
            // Every attacked image was written, into the budget's folder, and its verdict
            // is what `tl predict` says of the file.
            let file = Path::new(o["output"].as_str().unwrap());
            assert!(file.is_file(), "{}", file.display());
            let label = if i == 0 { "eps-1_255" } else { "eps-16_255" };
            assert!(
                file.parent().unwrap().ends_with(label),
                "{}",
                file.display()
            );
            let zebra = current_class(&tl, file) == "zebra";
            assert_eq!(o["success"].as_bool().unwrap(), zebra, "{o}");
            succeeded += zebra as u64;
        }
        assert_eq!(s["attacked"].as_u64(), Some(attacked.len() as u64));
        assert_eq!(s["succeeded"].as_u64(), Some(succeeded));
        let rate = succeeded as f64 / attacked.len().max(1) as f64;
        assert!((s["success_rate"].as_f64().unwrap() - rate).abs() < 1e-12);
    }
    assert!(
        summary[1]["success_rate"].as_f64().unwrap()
            >= summary[0]["success_rate"].as_f64().unwrap(),
        "a larger budget cannot do worse: {summary:?}"
    );
    // The text table states the same figures (same seed, same attack).
    let text = tl.ok(&[
        "attack",
        dir.to_str().unwrap(),
        "--backbone",
        "tiny",
        "--target",
        "zebra",
        "--eps",
        "1/255,16/255",
        "--steps",
        "10",
        "-o",
        tmp.path().join("out2").to_str().unwrap(),
    ]);
    for s in summary {
        let row = format!(
            "{:>10}  {:>7.1}%  {:>9}",
            s["eps_label"].as_str().unwrap(),
            s["success_rate"].as_f64().unwrap() * 100.0,
            s["attacked"].as_u64().unwrap()
        );
        assert!(text.contains(&row), "missing row '{row}' in:\n{text}");
    }
    assert_eq!(text.matches("broken.jpg: skipped").count(), 2, "{text}");
}

#[test]
fn attack_bad_input() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("photo.png");
    test_photo(&input);
    let i = input.to_str().unwrap();
    let o = tmp.path().join("o.png");
    let o = o.to_str().unwrap();
    let err = tl.fails(&[
        "attack",
        i,
        "--backbone",
        "tiny",
        "--target",
        "unicorn",
        "-o",
        o,
    ]);
    assert!(err.contains("unknown class 'unicorn'"), "{err}");
    let current = current_class(&tl, &input);
    let err = tl.fails(&[
        "attack",
        i,
        "--backbone",
        "tiny",
        "--target",
        &current,
        "-o",
        o,
    ]);
    assert!(err.contains("already classified"), "{err}");
    let bad = tmp.path().join("bad.jpg");
    std::fs::write(&bad, b"not an image").unwrap();
    let err = tl.fails(&[
        "attack",
        bad.to_str().unwrap(),
        "--backbone",
        "tiny",
        "--target",
        "zebra",
        "-o",
        o,
    ]);
    assert!(
        err.contains("bad.jpg") && err.contains("not an image"),
        "{err}"
    );
    for eps in ["0", "-1/255", "abc", "2"] {
        let flag = format!("--eps={eps}");
        let err = tl.fails(&[
            "attack",
            i,
            "--backbone",
            "tiny",
            "--target",
            "zebra",
            &flag,
            "-o",
            o,
        ]);
        assert!(err.contains("--eps"), "{eps}: {err}");
    }
    let err = tl.fails(&["attack", i, "--backbone", "tiny", "-o", o]);
    assert!(err.contains("--target"), "{err}");
    let err = tl.fails(&[
        "attack",
        tmp.path().join("missing.jpg").to_str().unwrap(),
        "--backbone",
        "tiny",
        "--target",
        "zebra",
        "-o",
        o,
    ]);
    assert!(err.contains("missing.jpg"), "{err}");
}

#[test]
fn dream_from_a_photo_and_untargeted_attack() {
    let tl = Tl::new();
    let tmp = tempfile::tempdir().unwrap();
    let photo = tmp.path().join("photo.png");
    test_photo(&photo);
    // --init: starts from the photo (centre-cropped to the dream size), for both
    // parametrisations: after a few steps the image is still close to the photo, and much
    // closer than a dream from noise.
    let photo_img = tl::data::decode::decode_rgb(&photo).unwrap();
    let target = tl::data::preprocess::resize_crop_u8(&photo_img, 64, 64);
    let distance = |p: &Path| {
        let img = png(p);
        img.as_raw()
            .iter()
            .zip(&target)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / target.len() as f64
    };
    for param in ["fourier", "pixel"] {
        let (init, noise) = (
            tmp.path().join(format!("init-{param}.png")),
            tmp.path().join(format!("noise-{param}.png")),
        );
        let common_args = ["--steps", "5", "--lr", "0.01", "--param", param];
        let mut with_init = common_args.to_vec();
        with_init.extend(["--init", photo.to_str().unwrap()]);
        dream_json(&tl, &init, &with_init);
        dream_json(&tl, &noise, &common_args);
        assert_eq!(png(&init).dimensions(), (64, 64));
        let (d_init, d_noise) = (distance(&init), distance(&noise));
        assert!(
            d_init < 20.0 && d_init < 0.5 * d_noise,
            "{param}: mean distance to the photo {d_init:.1} from --init vs {d_noise:.1} from noise"
        );
    }
    // --untargeted: success means the saved file's class differs from the original one.
    let out = tmp.path().join("untargeted.png");
    let r = attack_json(
        &tl,
        &photo,
        &out,
        &["--untargeted", "--eps", "32/255", "--steps", "100"],
    );
    let o = &r["outcomes"][0];
    let after = current_class(&tl, &out);
    assert_eq!(
        o["success"].as_bool().unwrap(),
        after != o["original_class"].as_str().unwrap(),
        "{o}"
    );
    assert!(
        o["success"].as_bool().unwrap(),
        "a 32/255 budget should move the tiny net: {o}"
    );
    let err = tl.fails(&[
        "attack",
        photo.to_str().unwrap(),
        "--backbone",
        "tiny",
        "--untargeted",
        "--target",
        "zebra",
        "-o",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
}
