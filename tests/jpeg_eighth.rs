//! The DC-path JPEG decoder (src/data/jpeg_eighth.rs) against libjpeg-turbo at 1/8: the
//! same pixels, byte for byte, or `None` (libjpeg decodes) — never different pixels.
mod common;
use std::path::{Path, PathBuf};
use std::process::Command;
use tl::data::jpeg::decode_libjpeg_scaled;
use tl::data::jpeg_eighth;

/// Whether Pillow's libjpeg is there to compare with (else `test` is skipped).
fn libjpeg(test: &str) -> bool {
    let there = tl::data::jpeg::available();
    if !there {
        let why = "no libjpeg-turbo found (the .venv's Pillow; TL_LIBJPEG)";
        common::skip(test, why, common::Lacks::Machine);
    }
    there
}

/// (decoded here, left to libjpeg); panics on the first difference.
fn compare(paths: &[PathBuf]) -> (usize, usize) {
    let (mut same, mut left) = (0, 0);
    for p in paths {
        let bytes = std::fs::read(p).unwrap();
        let Some(Ok(want)) = decode_libjpeg_scaled(&bytes, 8) else {
            assert!(
                jpeg_eighth::decode(&bytes).is_none(),
                "{}: libjpeg refuses it",
                p.display()
            );
            continue;
        };
        match jpeg_eighth::decode(&bytes) {
            Some(got) => {
                assert_eq!(got.dimensions(), want.dimensions(), "{}", p.display());
                if got.as_raw() != want.as_raw() {
                    let diff = got
                        .as_raw()
                        .iter()
                        .zip(want.as_raw())
                        .filter(|(a, b)| a != b)
                        .count();
                    panic!(
                        "{}: {diff} of {} bytes differ",
                        p.display(),
                        want.as_raw().len()
                    );
                }
                same += 1;
            }
            None => left += 1,
        }
    }
    (same, left)
}

#[test]
fn real_photos_decode_to_libjpegs_pixels() {
    let test = "real_photos_decode_to_libjpegs_pixels";
    if !libjpeg(test) {
        return;
    }
    let Some(data) = common::shared_data() else {
        let why = "../shared/data not present; checked on generated files only";
        common::skip(test, why, common::Lacks::SharedData);
        return;
    };
    let paths = common::walk(&data);
    let (same, left) = compare(&paths);
    eprintln!(
        "{} files: {same} identical to libjpeg at 1/8, {left} left to libjpeg",
        paths.len()
    );
    assert!(same > paths.len() * 9 / 10);
}

/// Decode times of the 4000x3000 photos in `$TL_LARGE` (scripts/bench/cpu.py makes them):
/// `cargo test --release --test jpeg_eighth timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_on_large() {
    let dir = std::env::var("TL_LARGE").unwrap();
    let paths: Vec<_> = common::walk(Path::new(&dir))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    let bytes: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    for round in 0..3 {
        let t = std::time::Instant::now();
        for b in &bytes {
            decode_libjpeg_scaled(b, 8).unwrap().unwrap();
        }
        let lib = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        for b in &bytes {
            jpeg_eighth::decode(b).unwrap();
        }
        let me = t.elapsed().as_secs_f64();
        eprintln!(
            "round {round}: libjpeg {:.2} ms/photo, eighth {:.2} ms/photo ({:.2}x)",
            lib * 1e3 / bytes.len() as f64,
            me * 1e3 / bytes.len() as f64,
            lib / me
        );
    }
}

/// JPEGs written by Pillow into `dir`: `yes-*` must be decoded here, `no-*` left to libjpeg.
const GENERATE: &str = r#"
import io, sys, numpy as np
from PIL import Image
out = sys.argv[1]
rng = np.random.default_rng(7)
def picture(w, h, kind):
    y, x = np.mgrid[0:h, 0:w]
    if kind == "noise":
        a = rng.integers(0, 256, (h, w, 3))
    elif kind == "smooth":
        a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(w + h - 2, 1)], -1)
    else:  # edges and texture: large AC coefficients, long codes
        a = np.stack([((x // 3 + y // 5) % 2) * 255, (x * y) % 256, rng.integers(0, 64, (h, w)) + (x % 7) * 20], -1)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
sizes = [(8, 8), (17, 9), (100, 75), (333, 251), (640, 480), (1203, 797)]
n = 0
for w, h in sizes:
    for kind in ("noise", "smooth", "texture"):
        im = picture(w, h, kind)
        for q in (5, 50, 90, 100):
            for sub in (0, 1, 2):
                extra = [{}, {"optimize": True}, {"restart_marker_blocks": 3}, {"restart_marker_rows": 1}][n % 4]
                try:
                    im.save(f"{out}/yes-{n:04d}.jpg", quality=q, subsampling=sub, **extra)
                except OSError:  # Pillow cannot optimise the tables of some noise images
                    im.save(f"{out}/yes-{n:04d}.jpg", quality=q, subsampling=sub)
                n += 1
        im.save(f"{out}/no-{n:04d}-progressive.jpg", quality=80, progressive=True); n += 1
        im.convert("L").save(f"{out}/no-{n:04d}-gray.jpg", quality=80); n += 1
        im.convert("CMYK").save(f"{out}/no-{n:04d}-cmyk.jpg", quality=80); n += 1
"#;

fn generated(name: &str) -> Vec<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tl-jpeg-eighth-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new(common::python())
        .args(["-c", GENERATE])
        .arg(&dir)
        .status()
        .expect("running the project's Python");
    assert!(status.success());
    common::walk(&dir)
}

#[test]
fn generated_jpegs_decode_to_libjpegs_pixels_or_are_left_to_it() {
    if !libjpeg("generated_jpegs_decode_to_libjpegs_pixels_or_are_left_to_it") {
        return;
    }
    let paths = generated("generated");
    let (yes, no): (Vec<_>, Vec<_>) = paths
        .iter()
        .cloned()
        .partition(|p| p.file_name().unwrap().to_str().unwrap().starts_with("yes"));
    let (same, left) = compare(&yes);
    assert_eq!(
        (same, left),
        (yes.len(), 0),
        "every baseline YCbCr file is decoded here"
    );
    let (same, left) = compare(&no);
    assert_eq!(
        (same, left),
        (0, no.len()),
        "progressive, gray and CMYK files go to libjpeg"
    );
    std::fs::remove_dir_all(paths[0].parent().unwrap()).unwrap();
}

/// Damaged files: never a panic, and never pixels other than libjpeg's — where this
/// decoder returns an image, libjpeg accepts the file and makes the same image.
#[test]
fn damaged_jpegs_decode_as_libjpeg_does_or_are_left_to_it() {
    if !libjpeg("damaged_jpegs_decode_as_libjpeg_does_or_are_left_to_it") {
        return;
    }
    let paths = generated("damaged");
    let seeds: Vec<Vec<u8>> = paths
        .iter()
        .filter(|p| {
            p.to_str().unwrap().contains("yes-") && std::fs::metadata(p).unwrap().len() < 60_000
        })
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let cases: usize = std::env::var("TL_FUZZ_CASES").map_or(6000, |v| v.parse().unwrap());
    let seed: u64 = std::env::var("TL_FUZZ_SEED").map_or(11, |v| v.parse().unwrap());
    let mut rng = tl::util::SplitMix64::new(seed);
    let (mut decoded, mut left) = (0, 0);
    for case in 0..cases {
        let mut b = seeds[case % seeds.len()].clone();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(b.len() as u64) as usize;
            match rng.below(3) {
                0 => b[i] ^= 1 << rng.below(8),
                1 => b[i] = rng.below(256) as u8,
                _ => b.truncate(i.max(2)),
            }
        }
        match jpeg_eighth::decode(&b) {
            None => left += 1,
            Some(got) => {
                let want = decode_libjpeg_scaled(&b, 8).unwrap();
                let want = want.unwrap_or_else(|e| {
                    panic!("case {case}: libjpeg refuses ({e}) what was decoded here")
                });
                assert!(got == want, "case {case}: pixels differ from libjpeg's");
                decoded += 1;
            }
        }
    }
    eprintln!("{cases} damaged files: {decoded} decoded (same as libjpeg), {left} left to libjpeg");
    assert!(decoded > 100 && left > 100);
    std::fs::remove_dir_all(paths[0].parent().unwrap()).unwrap();
}
