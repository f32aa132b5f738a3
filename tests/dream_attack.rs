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
    // The reported probability is that of the saved file: rescore it independently.
    assert_eq!(ra["class"], "espresso");
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
    assert!(
        summary[1]["success_rate"].as_f64().unwrap()
            >= summary[0]["success_rate"].as_f64().unwrap()
    );
    let outcomes = r["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 6);
    assert!(outcomes.iter().any(|o| o["skipped"]
        .as_str()
        .is_some_and(|s| s.contains("broken.jpg"))));
    assert!(
        out.join("eps-16_255").join("a.png").is_file()
            || outcomes.iter().any(
                |o| o["input"].as_str().unwrap().ends_with("a.png") && o["skipped"].is_string()
            )
    );
    let text = tl.ok(&[
        "attack",
        dir.to_str().unwrap(),
        "--backbone",
        "tiny",
        "--target",
        "zebra",
        "--eps",
        "2/255,8/255",
        "--steps",
        "5",
        "-o",
        tmp.path().join("out2").to_str().unwrap(),
    ]);
    assert!(
        text.contains("success") && text.contains("2/255") && text.contains("8/255"),
        "{text}"
    );
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
    // --init: starts from the photo (centre-cropped to the dream size), for both parametrisations.
    for param in ["fourier", "pixel"] {
        let out = tmp.path().join(format!("init-{param}.png"));
        let r = dream_json(
            &tl,
            &out,
            &[
                "--init",
                photo.to_str().unwrap(),
                "--steps",
                "5",
                "--param",
                param,
            ],
        );
        assert_eq!(png(&out).dimensions(), (64, 64));
        assert!(r["probability"].as_f64().unwrap() > 0.0);
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
