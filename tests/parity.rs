//! Preprocessing and TorchScript parity with PyTorch (references from scripts/make_fixtures.py).
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
        eprintln!("SKIPPED part: ../shared/data/cats_dogs not present; parity checked on generated images only");
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
    for (i, file) in files.iter().enumerate() {
        let img = tl::data::decode::decode_rgb(std::path::Path::new(file)).unwrap();
        let ours = preprocess::resize_crop_u8(&img, cfg.resize, cfg.crop);
        let ours = Tensor::from_slice(&ours)
            .view([224, 224, 3])
            .permute([2, 0, 1])
            .to_kind(Kind::Float)
            / 255.0;
        let mad = (&ours - pixels.get(i as i64))
            .abs()
            .mean(Kind::Float)
            .double_value(&[]);
        assert!(
            mad <= 2.0 / 255.0,
            "{file}: mean abs difference {mad} > 2/255"
        );
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
    eprintln!("parity over {} images ({real} real photos): worst mean abs diff {:.3}/255, worst feature cosine {worst_cos:.5}", files.len(), worst_mad * 255.0);
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
fn generated_pil_geometry_matches_for_odd_sizes() {
    // A crop offset that Python rounds half-to-even: (341 - 224) / 2 = 58.5 -> 58.
    assert_eq!(preprocess::crop_offset(341, 224), 58);
    assert_eq!(preprocess::resized_size(257, 1000, 256), (256, 996));
}
