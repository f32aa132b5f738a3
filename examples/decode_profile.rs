//! Where the CPU time of preparing one photo goes (decode, resize + crop, normalise), on
//! the first N images of a folder, one thread: `decode_profile DIR [N]`. The resize is timed
//! with the kernels `tl` picks for this CPU and with the portable ones.
use std::time::Instant;
use tl::data::decode::decode_rgb_bytes;
use tl::data::preprocess::{
    crop_offset, normalize_into, resize_crop_u8, resized_size, PreprocessConfig,
};
use tl::data::resample::{resample_crop_with, Kernels};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("usage: decode_profile DIR [N]"));
    let n: usize = args.get(2).map_or(300, |v| v.parse().expect("N"));
    let mut files: Vec<_> = walk(&dir);
    files.sort();
    files.truncate(n);
    let bytes: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let cfg = PreprocessConfig::default();
    let (mut t_dec, mut t_res, mut t_norm, mut t_portable) = (0.0, 0.0, 0.0, 0.0);
    let mut out = vec![0f32; cfg.numel()];
    let mut pixels = 0u64;
    for (b, p) in bytes.iter().zip(&files) {
        let t = Instant::now();
        let img = decode_rgb_bytes(b, p).unwrap();
        t_dec += t.elapsed().as_secs_f64();
        pixels += (img.width() * img.height()) as u64;
        let t = Instant::now();
        let crop = resize_crop_u8(&img, cfg.resize, cfg.crop);
        t_res += t.elapsed().as_secs_f64();
        let t = Instant::now();
        normalize_into(&crop, &cfg, &mut out);
        t_norm += t.elapsed().as_secs_f64();
        let (w, h) = img.dimensions();
        let (rw, rh) = resized_size(w, h, cfg.resize);
        let offset = (crop_offset(rw, cfg.crop), crop_offset(rh, cfg.crop));
        let t = Instant::now();
        let portable = resample_crop_with(
            Kernels::Portable,
            img.as_raw(),
            (w, h),
            (rw, rh),
            offset,
            cfg.crop,
        );
        t_portable += t.elapsed().as_secs_f64();
        assert!(portable == crop, "{}: the kernels differ", p.display());
    }
    let k = 1000.0 / files.len() as f64;
    println!(
        "{} images, mean {:.0} kpixels: decode {:.2} ms, resize+crop {:.2} ms ({:?}; portable {:.2} ms), normalise {:.2} ms per image",
        files.len(),
        pixels as f64 / files.len() as f64 / 1000.0,
        t_dec * k,
        t_res * k,
        Kernels::best(),
        t_portable * k,
        t_norm * k
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
