//! A seeded mutation fuzzer over the image decoding and preprocessing path: valid images
//! in six formats, mutated (bit flips, overwritten and inserted bytes, truncation, repeated
//! chunks, absurd header fields), must each decode to an image or fail with an error —
//! never panic, never allocate without bound (a third of the cases with JPEG draft scaling by
//! 1/2, a third by 1/8). `TL_FUZZ_CASES` sets the count (default
//! 50,000); it runs in CI in a few seconds.
use std::io::Cursor;
use std::path::Path;
use tl::data::decode::{caught_panics, decode_rgb_bytes_draft};
use tl::data::preprocess::{preprocess_into, PreprocessConfig};
use tl::util::SplitMix64;

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let img = image::RgbImage::from_fn(48, 36, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 7) as u8, ((x * y) % 256) as u8])
    });
    let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(30, 20, |x, y| {
        image::Rgba([x as u8 * 8, y as u8 * 12, 200, (x + y) as u8 * 4])
    }));
    let mut out = Vec::new();
    for (name, format, dynamic) in [
        (
            "jpeg",
            image::ImageFormat::Jpeg,
            image::DynamicImage::ImageRgb8(img.clone()),
        ),
        ("png", image::ImageFormat::Png, rgba.clone()),
        ("gif", image::ImageFormat::Gif, rgba.clone()),
        (
            "bmp",
            image::ImageFormat::Bmp,
            image::DynamicImage::ImageRgb8(img.clone()),
        ),
        (
            "webp",
            image::ImageFormat::WebP,
            image::DynamicImage::ImageRgb8(img.clone()),
        ),
        (
            "tiff",
            image::ImageFormat::Tiff,
            image::DynamicImage::ImageRgb8(img.clone()),
        ),
    ] {
        let mut bytes = Vec::new();
        dynamic
            .write_to(&mut Cursor::new(&mut bytes), format)
            .unwrap();
        out.push((name, bytes));
    }
    out
}

fn mutate(seed: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    let mut b = seed.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if b.is_empty() {
            b.push(0);
        }
        let n = b.len() as u64;
        let at = rng.below(n) as usize;
        match rng.below(7) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = rng.next_u64() as u8,
            2 => b.truncate(at.max(1)),
            3 => {
                let extra: Vec<u8> = (0..1 + rng.below(16))
                    .map(|_| rng.next_u64() as u8)
                    .collect();
                b.splice(at..at, extra);
            }
            4 => {
                // Repeat a chunk (e.g. a PNG or TIFF block).
                let len = (rng.below(64) as usize).min(b.len() - at);
                let chunk = b[at..at + len].to_vec();
                b.splice(at..at, chunk);
            }
            5 => {
                // Header fields: sizes and counts near the start set to huge values.
                let at = (rng.below(64) as usize).min(b.len() - 1);
                for i in at..(at + 4).min(b.len()) {
                    b[i] = 0xFF;
                }
            }
            _ => {
                let len = (rng.below(32) as usize).min(b.len() - at);
                b.drain(at..at + len);
            }
        }
    }
    b
}

#[test]
fn mutated_images_never_panic() {
    let cases: usize = std::env::var("TL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let cfg = PreprocessConfig {
        resize: 64,
        crop: 56,
        ..Default::default()
    };
    let seeds = seeds();
    let mut rng = SplitMix64::new(0xF022);
    let mut out = vec![0f32; cfg.numel()];
    let (mut decoded, mut refused, mut escaped) = (0usize, 0usize, 0usize);
    let start = std::time::Instant::now();
    for i in 0..cases {
        let (name, seed) = &seeds[i % seeds.len()];
        let input = mutate(seed, &mut rng);
        let path = Path::new(name);
        let result = std::panic::catch_unwind(|| {
            // Draft side 16 scales the 48x36 JPEG by 1/2; side 4 by 1/8 (src/data/jpeg_eighth).
            let draft = [None, Some(16), Some(4)][i % 3];
            match decode_rgb_bytes_draft(&input, path, draft) {
                Ok(img) => {
                    preprocess_into(&img, &cfg, &mut out.clone());
                    true
                }
                Err(e) => {
                    assert!(
                        e.to_string().starts_with(name),
                        "error must name the file: {e}"
                    );
                    false
                }
            }
        });
        match result {
            Ok(true) => decoded += 1,
            Ok(false) => refused += 1,
            Err(_) => escaped += 1,
        }
    }
    out.clear();
    eprintln!(
        "fuzz: {cases} mutated inputs in {:.1}s: {decoded} decoded, {refused} refused with an error, {escaped} panics escaped, {} decoder panics caught",
        start.elapsed().as_secs_f64(),
        caught_panics()
    );
    assert_eq!(escaped, 0, "panics reached the caller");
    assert_eq!(
        caught_panics(),
        0,
        "a decoder panicked (caught by the guard, but it must not)"
    );
    assert!(
        decoded > 0 && refused > 0,
        "the mutations should both keep and break images"
    );
}
