//! `tl explain` on the tiny fixture backbone (pooled, so CAM is exact for a linear head):
//! map shapes and crop coordinates, CAM = Grad-CAM, classes by name and index, feature-map
//! grids, and the failures (bad layer, unreadable images, outputs that exist).
mod common;
use common::{assert_clean_error, color_dataset, tiny, Tl};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A trained linear-head run on three colour classes, and a photo of 300×200 pixels.
struct Setup {
    tmp: tempfile::TempDir,
    run: PathBuf,
    photo: PathBuf,
}

fn setup(tl: &Tl) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_dataset(&data, &["blue", "green", "red"], 8, 5);
    let run = tmp.path().join("run");
    tl.ok(&[
        "train",
        "--backbone",
        s(&tiny()),
        s(&data),
        "--out",
        s(&run),
        "-q",
        "--epochs",
        "5",
    ]);
    let photo = tmp.path().join("wide.png");
    let img = image::RgbImage::from_fn(300, 200, |x, y| {
        image::Rgb([
            (x % 256) as u8,
            (y % 256) as u8,
            if x < 150 { 200 } else { 20 },
        ])
    });
    img.save(&photo).unwrap();
    Setup { tmp, run, photo }
}

fn explain_json(tl: &Tl, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["explain", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&tl.ok(&all)).unwrap()
}

fn map_of(path: &str) -> (Tensor, Tensor) {
    let named: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect();
    (named["map"].shallow_clone(), named["crop"].shallow_clone())
}

fn normalised(t: &Tensor) -> Tensor {
    let p = t.relu();
    &p / p.max().clamp_min(1e-30)
}

fn correlation(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (
        a.flatten(0, -1).to_kind(Kind::Double),
        b.flatten(0, -1).to_kind(Kind::Double),
    );
    let (a, b) = (&a - a.mean(Kind::Double), &b - b.mean(Kind::Double));
    let d = (a.square().sum(Kind::Double) * b.square().sum(Kind::Double)).sqrt();
    (a * b).sum(Kind::Double).double_value(&[]) / d.double_value(&[])
}

#[test]
fn maps_are_in_the_crops_coordinates_and_the_overlay_at_the_photos_size() {
    let tl = Tl::new();
    let st = setup(&tl);
    let out = st.tmp.path().join("out");
    let j = explain_json(&tl, &["--run", s(&st.run), s(&st.photo), "-o", s(&out)]);
    let im = &j["images"][0];
    assert_eq!(
        (im["width"].as_u64(), im["height"].as_u64()),
        (Some(300), Some(200))
    );
    // Shorter side to 256: 384×256; centre crop 224 at (80, 16); back in the photo's pixels.
    let crop = &im["crop"];
    let expected = [62.5, 12.5, 175.0, 175.0];
    for (k, e) in ["x", "y", "width", "height"].iter().zip(expected) {
        assert!((crop[k].as_f64().unwrap() - e).abs() < 1e-9, "{k}: {crop}");
    }
    let c = &im["classes"][0];
    assert_eq!(c["method"], "cam");
    assert_eq!(c["layer"], "features.6-7");
    let (map, crop_t) = map_of(c["map"].as_str().unwrap());
    assert_eq!(map.size(), vec![224, 224]);
    let crop_v = Vec::<f32>::try_from(&crop_t).unwrap();
    assert_eq!(crop_v, vec![62.5, 12.5, 175.0, 175.0]);
    let overlay = image::open(c["overlay"].as_str().unwrap()).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (300, 200));
    // The predicted class is the one mapped, with its probability.
    assert_eq!(c["class"], im["top"][0]["class"]);
    assert_eq!(c["probability"], im["top"][0]["probability"]);
}

#[test]
fn cam_and_grad_cam_agree_for_a_linear_head_on_a_pooled_backbone() {
    let tl = Tl::new();
    let st = setup(&tl);
    let (a, b) = (st.tmp.path().join("cam"), st.tmp.path().join("gradcam"));
    let mut corr = Vec::new();
    for class in ["blue", "green", "red"] {
        let cam = explain_json(
            &tl,
            &[
                "--run",
                s(&st.run),
                s(&st.photo),
                "--class",
                class,
                "--method",
                "cam",
                "-o",
                s(&a),
            ],
        );
        let grad = explain_json(
            &tl,
            &[
                "--run",
                s(&st.run),
                s(&st.photo),
                "--class",
                class,
                "--method",
                "gradcam",
                "-o",
                s(&b),
            ],
        );
        assert_eq!(grad["images"][0]["classes"][0]["method"], "gradcam");
        let (m1, _) = map_of(cam["images"][0]["classes"][0]["map"].as_str().unwrap());
        let (m2, _) = map_of(grad["images"][0]["classes"][0]["map"].as_str().unwrap());
        let (n1, n2) = (normalised(&m1), normalised(&m2));
        if n1.max().double_value(&[]) == 0.0 {
            continue; // no positive evidence for this class anywhere: nothing to compare
        }
        corr.push(correlation(&n1, &n2));
        let diff = (&n1 - &n2).abs().max().double_value(&[]);
        assert!(diff < 1e-3, "{class}: largest difference {diff}");
    }
    assert!(!corr.is_empty());
    assert!(corr.iter().all(|&c| c >= 0.999), "{corr:?}");
}

#[test]
fn classes_by_name_and_by_index_give_the_same_map() {
    let tl = Tl::new();
    let st = setup(&tl);
    let (a, b) = (
        st.tmp.path().join("by-name"),
        st.tmp.path().join("by-index"),
    );
    let by_name = explain_json(
        &tl,
        &[
            "--run",
            s(&st.run),
            s(&st.photo),
            "--class",
            "green,red",
            "-o",
            s(&a),
        ],
    );
    let by_index = explain_json(
        &tl,
        &[
            "--run",
            s(&st.run),
            s(&st.photo),
            "--class",
            "1",
            "--class",
            "2",
            "-o",
            s(&b),
        ],
    );
    for k in 0..2 {
        let (x, y) = (
            &by_name["images"][0]["classes"][k],
            &by_index["images"][0]["classes"][k],
        );
        assert_eq!(x["class"], y["class"]);
        assert_eq!(x["index"], k as u64 + 1);
        let (m1, _) = map_of(x["map"].as_str().unwrap());
        let (m2, _) = map_of(y["map"].as_str().unwrap());
        assert!(m1.equal(&m2));
    }
    let err = tl.fails(&[
        "explain",
        "--run",
        s(&st.run),
        s(&st.photo),
        "--class",
        "purple",
        "-o",
        s(&a),
    ]);
    assert_clean_error(&err);
    assert!(err.contains("purple"), "{err}");
}

#[test]
fn feature_maps_make_one_grid_strongest_first() {
    let tl = Tl::new();
    let st = setup(&tl);
    let out = st.tmp.path().join("maps");
    let j = explain_json(
        &tl,
        &[
            "--backbone",
            s(&tiny()),
            s(&st.photo),
            "--maps",
            "--layer",
            "features.3-5",
            "--channels",
            "9",
            "-o",
            s(&out),
        ],
    );
    let im = &j["images"][0];
    assert_eq!(im["channels"].as_array().unwrap().len(), 9);
    let grid = image::open(im["grid"].as_str().unwrap()).unwrap();
    // 56×56 maps drawn 56 px a side, 3×3 with 2-px gaps.
    assert_eq!((grid.width(), grid.height()), (3 * 58 + 2, 3 * 58 + 2));
    // An exported model has no layers to map (a folder of photos is no run either).
    let err = tl.fails(&[
        "explain",
        "--run",
        s(&st.photo),
        s(&st.photo),
        "-o",
        s(&out),
    ]);
    assert_clean_error(&err);
}

#[test]
fn bad_layers_unreadable_images_and_existing_outputs_are_clean_errors() {
    let tl = Tl::new();
    let st = setup(&tl);
    let out = st.tmp.path().join("out");
    let err = tl.fails(&[
        "explain",
        "--run",
        s(&st.run),
        s(&st.photo),
        "--layer",
        "nope",
        "-o",
        s(&out),
    ]);
    assert_clean_error(&err);
    assert!(
        err.contains("nope") && err.contains("features.6-7"),
        "{err}"
    );
    let err = tl.fails(&[
        "explain",
        "--run",
        s(&st.run),
        s(&st.photo),
        "--layer",
        "features.3-5",
        "--method",
        "cam",
        "-o",
        s(&out),
    ]);
    assert!(err.contains("gradcam"), "{err}");
    // One broken image among good ones: skipped and said; all broken: an error.
    let broken = st.tmp.path().join("broken.jpg");
    std::fs::write(&broken, b"\xFF\xD8\xFF\xE0 not really").unwrap();
    let j = explain_json(
        &tl,
        &["--run", s(&st.run), s(&st.photo), s(&broken), "-o", s(&out)],
    );
    assert_eq!(j["images"].as_array().unwrap().len(), 1);
    assert_eq!(j["skipped"][0]["path"], s(&broken));
    let err = tl.fails(&["explain", "--run", s(&st.run), s(&broken), "-o", s(&out)]);
    assert!(err.contains("broken.jpg"), "{err}");
    // The outputs exist now: not replaced without --force, and left as they were.
    let overlay = out.join("wide.").to_string_lossy().to_string();
    let files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let err = tl.fails(&["explain", "--run", s(&st.run), s(&st.photo), "-o", s(&out)]);
    assert!(err.contains("--force") && err.contains(&overlay), "{err}");
    let after: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert_eq!(before, after);
    tl.ok(&[
        "explain",
        "--run",
        s(&st.run),
        s(&st.photo),
        "-o",
        s(&out),
        "--force",
    ]);
}

#[test]
fn cam_on_onnx_runtime_agrees_with_libtorch() {
    let tl = Tl::new();
    let st = setup(&tl);
    let (a, b) = (st.tmp.path().join("onnx"), st.tmp.path().join("torch"));
    let on_onnx = explain_json(
        &tl,
        &[
            "--engine",
            "onnx",
            "--run",
            s(&st.run),
            s(&st.photo),
            "--class",
            "0,1,2",
            "-o",
            s(&a),
        ],
    );
    let on_torch = explain_json(
        &tl,
        &[
            "--engine",
            "torch",
            "--run",
            s(&st.run),
            s(&st.photo),
            "--class",
            "0,1,2",
            "-o",
            s(&b),
        ],
    );
    for k in 0..3 {
        let (x, y) = (
            &on_onnx["images"][0]["classes"][k],
            &on_torch["images"][0]["classes"][k],
        );
        assert_eq!(
            (x["engine"].as_str(), y["engine"].as_str()),
            (Some("onnx"), Some("torch"))
        );
        let (m1, _) = map_of(x["map"].as_str().unwrap());
        let (m2, _) = map_of(y["map"].as_str().unwrap());
        let scale = m2.abs().max().double_value(&[]).max(1.0);
        let diff = (&m1 - &m2).abs().max().double_value(&[]);
        assert!(diff <= 1e-4 * scale, "class {k}: {diff} (scale {scale})");
    }
}

#[test]
fn a_backbones_imagenet_classifier_is_mapped_through_its_own_last_layer() {
    let tl = Tl::new();
    let st = setup(&tl);
    let out = st.tmp.path().join("imagenet");
    let j = explain_json(
        &tl,
        &["--backbone", s(&tiny()), s(&st.photo), "-o", s(&out)],
    );
    let predicted: serde_json::Value = serde_json::from_str(&tl.ok(&[
        "predict",
        "--backbone",
        s(&tiny()),
        s(&st.photo),
        "--json",
    ]))
    .unwrap();
    let (im, p) = (&j["images"][0], &predicted["predictions"][0]);
    // The same classifier: the same top class and probability as `tl predict --backbone`.
    assert_eq!(im["top"][0]["class"], p["class"]);
    let (a, b) = (
        im["top"][0]["probability"].as_f64().unwrap(),
        p["probability"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    let c = &im["classes"][0];
    assert_eq!(c["class"], p["class"]);
    assert_eq!(c["method"], "cam");
}
