//! Preprocessing and TorchScript parity with PyTorch (references from scripts/dev/make_fixtures.py).
mod common;
use tch::{Kind, Tensor};
use tl::data::preprocess::{self, PreprocessConfig};

fn references() -> (
    Vec<String>,
    usize,
    std::collections::HashMap<String, Tensor>,
) {
    let dir = common::fixtures();
    let list = common::read_json(&dir.join("parity.json"));
    let files: Vec<String> = list["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let real = list["real"].as_u64().unwrap() as usize;
    let tensors = Tensor::read_safetensors(dir.join("parity.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    (files, real, tensors)
}

#[test]
fn preprocessing_matches_torchvision_eval_transform() {
    let (files, real, refs) = references();
    if real == 0 {
        common::skip(
            "preprocessing_matches_torchvision_eval_transform (real photos)",
            "../shared/data/cats_dogs not present; parity checked on generated images only",
            common::Lacks::SharedData,
        );
    }
    let cfg = PreprocessConfig::default();
    let pixels = &refs["pixels"];
    let module = tl::features::backbone::load_module(
        &common::fixtures().join("backbones/tiny.features.pt"),
        tch::Device::Cpu,
    )
    .unwrap();
    let want_features = &refs["features"];
    let mut worst_mad: f64 = 0.0;
    let mut worst_cos: f64 = 1.0;
    assert!(
        tl::data::jpeg::available(),
        "Pillow's libjpeg-turbo not found ({}); scripts/setup.sh installs it with torchvision",
        tl::data::jpeg::describe()
    );
    for (i, file) in files.iter().enumerate() {
        let path = std::path::Path::new(file);
        let img = tl::data::decode::decode_rgb(path).unwrap();
        // JPEGs too: Pillow's own libjpeg-turbo, called as Pillow calls it.
        let ours = preprocess::resize_crop_u8(&img, cfg.resize, cfg.crop);
        let differing = count_differing(&ours, &pixels.get(i as i64));
        assert_eq!(
            differing, 0,
            "{file}: {differing} bytes differ from torchvision's input"
        );
        // --decode draft: Image.draft('RGB', (256, 256)) before the same transform.
        let bytes = std::fs::read(path).unwrap();
        let drafted = tl::data::decode::decode_rgb_bytes_draft(&bytes, path, Some(cfg.resize));
        let ours = preprocess::resize_crop_u8(&drafted.unwrap(), cfg.resize, cfg.crop);
        let differing = count_differing(&ours, &refs["pixels_draft"].get(i as i64));
        assert_eq!(
            differing, 0,
            "{file}: {differing} bytes differ from the drafted input"
        );
        let ours = Tensor::from_slice(&ours)
            .view([224, 224, 3])
            .permute([2, 0, 1])
            .to_kind(Kind::Float)
            / 255.0;
        // How far drafting moves the input (zero below twice the resize).
        let mad = (&ours - pixels.get(i as i64))
            .abs()
            .mean(Kind::Float)
            .double_value(&[]);
        worst_mad = worst_mad.max(mad);

        let mut buf = vec![0f32; cfg.numel()];
        preprocess::preprocess_into(&img, &cfg, &mut buf);
        let x = Tensor::from_slice(&buf).view([1, 3, 224, 224]);
        let got = tch::no_grad(|| module.forward_ts(&[x])).unwrap().view([-1]);
        let want = want_features.get(i as i64);
        let cos = Tensor::cosine_similarity(&got, &want, 0, 1e-8).double_value(&[]);
        assert!(
            cos >= 0.995,
            "{file}: feature cosine similarity {cos} < 0.995"
        );
        worst_cos = worst_cos.min(cos);
    }
    eprintln!("parity over {} images ({real} real photos): every input byte equal (full and draft decoding); draft vs full: worst mean abs diff {:.3}/255, worst feature cosine {worst_cos:.5}", files.len(), worst_mad * 255.0);
}

/// Bytes of `ours` (HWC u8) that differ from torchvision's `[3,H,W]` tensor in [0,1].
fn count_differing(ours: &[u8], want: &Tensor) -> usize {
    let want = (want.permute([1, 2, 0]) * 255.0)
        .round()
        .to_kind(Kind::Uint8);
    let want = Vec::<u8>::try_from(want.contiguous().view([-1])).unwrap();
    assert_eq!(ours.len(), want.len());
    ours.iter().zip(&want).filter(|(a, b)| a != b).count()
}

#[test]
fn torchscript_outputs_are_identical_to_python() {
    let (_, _, refs) = references();
    let module = tl::features::backbone::load_module(
        &common::fixtures().join("backbones/tiny.features.pt"),
        tch::Device::Cpu,
    )
    .unwrap();
    let got = tch::no_grad(|| module.forward_ts(&[&refs["probe"]])).unwrap();
    let diff = (&got - &refs["probe_features"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff <= 1e-5, "max difference {diff}");
}

#[test]
fn resize_and_crop_match_pillow_exactly_for_odd_sizes() {
    // PNG inputs, so that the decoders agree byte for byte: what is compared is the
    // geometry (sizes, half-pixel crop offsets) and Pillow's fixed-point filter.
    let dir = common::fixtures().join("geometry");
    let cases = common::read_json(&dir.join("cases.json"));
    let pillow = Tensor::read_safetensors(dir.join("pillow.safetensors")).unwrap();
    let pillow: std::collections::HashMap<String, Tensor> = pillow.into_iter().collect();
    for case in cases.as_array().unwrap() {
        let file = case["file"].as_str().unwrap();
        let (resize, crop) = (
            case["resize"].as_u64().unwrap() as u32,
            case["crop"].as_u64().unwrap() as u32,
        );
        let img = tl::data::decode::decode_rgb(std::path::Path::new(file)).unwrap();
        let ours = preprocess::resize_crop_u8(&img, resize, crop);
        let want = &pillow[case["key"].as_str().unwrap()];
        assert_eq!(want.size(), [crop as i64, crop as i64, 3], "{file}");
        let want = Vec::<u8>::try_from(want.view([-1])).unwrap();
        let differing = ours.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            differing,
            0,
            "{file} ({}x{} -> resize {resize}, crop {crop}): {differing} bytes differ from Pillow",
            img.width(),
            img.height()
        );
    }
}
