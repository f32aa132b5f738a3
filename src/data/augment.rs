//! Views of an image for training with augmentation and for test-time augmentation.
//!
//! `Center` is the eval transform; `Flip` its mirror image; `Augmented(k)` a seeded random
//! view: a random crop covering 80–100 % of the eval crop's area with aspect ratio 3/4–4/3,
//! taken anywhere in the resized image, mirrored half of the time, with mild colour jitter
//! (brightness, contrast and saturation each ×0.9–1.1, torchvision's ColorJitter order).
//! The randomness comes from the image's bytes and `k` alone, so a view is the same every
//! time it is made and its backbone output can be cached like the plain features.
use super::preprocess::{normalize_into, resample_crop_u8, resized_size, PreprocessConfig};
use crate::error::Result;
use crate::util::SplitMix64;
use image::RgbImage;
use serde::Serialize;
use std::path::Path;

/// Bumped whenever the augmented views change numerically (cache entries are keyed by it).
pub const AUGMENT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    Center,
    Flip,
    Augmented(u32),
}

impl View {
    /// The training views of `--views k`: the plain one first, then `k - 1` augmented ones.
    pub fn training(k: usize) -> Vec<View> {
        std::iter::once(View::Center)
            .chain((1..k as u32).map(View::Augmented))
            .collect()
    }

    /// What sets this view apart in cache names ("" for the plain view, so that its
    /// entries are the ones `tl` has always written).
    pub fn cache_tag(&self) -> String {
        match self {
            View::Center => String::new(),
            View::Flip => "flip".into(),
            View::Augmented(k) => format!("aug{k}-a{AUGMENT_VERSION}"),
        }
    }
}

/// The seed of augmented view `index` of the image with these bytes.
pub fn view_seed(bytes: &[u8], index: u32) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(bytes);
    hasher.update(&index.to_le_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// Mirror an interleaved RGB square of side `side` left to right, in place.
pub fn mirror(hwc: &mut [u8], side: usize) {
    for row in hwc.chunks_exact_mut(side * 3) {
        for x in 0..side / 2 {
            let (a, b) = (x * 3, (side - 1 - x) * 3);
            for c in 0..3 {
                row.swap(a + c, b + c);
            }
        }
    }
}

/// Where the random crop lies: the resized image's size and the crop's offset.
fn random_geometry(
    width: u32,
    height: u32,
    cfg: &PreprocessConfig,
    rng: &mut SplitMix64,
) -> ((u32, u32), (u32, u32)) {
    let area = rng.uniform(0.8, 1.0);
    let aspect = rng.uniform((0.75f64).ln(), (4.0f64 / 3.0).ln()).exp();
    // Zooming in by 1/sqrt(area) makes the crop cover `area` of what the eval crop covers.
    let short = (cfg.resize as f64 / area.sqrt()).round() as u32;
    let (bw, bh) = resized_size(width, height, short);
    let rw = ((bw as f64 * aspect.sqrt()).round() as u32).max(cfg.crop);
    let rh = ((bh as f64 / aspect.sqrt()).round() as u32).max(cfg.crop);
    let left = rng.below((rw - cfg.crop + 1) as u64) as u32;
    let top = rng.below((rh - cfg.crop + 1) as u64) as u32;
    ((rw, rh), (left, top))
}

/// One seeded augmented view of `img`, normalised, into `out` (CHW).
pub fn augmented_into(img: &RgbImage, cfg: &PreprocessConfig, seed: u64, out: &mut [f32]) {
    let mut rng = SplitMix64::new(seed);
    let (resized, offset) = random_geometry(img.width(), img.height(), cfg, &mut rng);
    let mut crop = resample_crop_u8(img, resized, offset, cfg.crop);
    if rng.next_u64() & 1 == 1 {
        mirror(&mut crop, cfg.crop as usize);
    }
    let jitter = [0; 3].map(|_| rng.uniform(0.9, 1.1) as f32);
    color_jitter(&mut crop, jitter);
    normalize_into(&crop, cfg, out);
}

/// Brightness, contrast and saturation factors applied in that order, as torchvision's
/// functional ops do on 8-bit images (blend with black, the mean grey, the pixel's grey).
fn color_jitter(hwc: &mut [u8], [brightness, contrast, saturation]: [f32; 3]) {
    let grey = |p: &[f32]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let mut px: Vec<f32> = hwc
        .iter()
        .map(|&v| (v as f32 * brightness).clamp(0.0, 255.0))
        .collect();
    let mean = px.chunks_exact(3).map(grey).sum::<f32>() / (px.len() / 3).max(1) as f32;
    for v in px.iter_mut() {
        *v = (mean + contrast * (*v - mean)).clamp(0.0, 255.0);
    }
    for p in px.chunks_exact_mut(3) {
        let g = grey(p);
        for v in p.iter_mut() {
            *v = (g + saturation * (*v - g)).clamp(0.0, 255.0);
        }
    }
    for (dst, v) in hwc.iter_mut().zip(px) {
        *dst = v.round() as u8;
    }
}

/// Decode a file's bytes and make one view of it (see [`View`]) into `out`.
pub fn load_view_into(
    bytes: &[u8],
    path: &Path,
    cfg: &PreprocessConfig,
    view: View,
    out: &mut [f32],
) -> Result<()> {
    // The eval transform and its mirror may draft (`--decode`); random crops see every pixel.
    let draft = match view {
        View::Augmented(_) => None,
        View::Center | View::Flip => super::preprocess::draft_side(cfg),
    };
    let img = super::decode::decode_rgb_bytes_draft(bytes, path, draft)?;
    match view {
        View::Center => super::preprocess::preprocess_into(&img, cfg, out),
        View::Flip => {
            let mut crop = super::preprocess::resize_crop_u8(&img, cfg.resize, cfg.crop);
            mirror(&mut crop, cfg.crop as usize);
            normalize_into(&crop, cfg, out);
        }
        View::Augmented(index) => {
            let seed = view_seed(bytes, index);
            augmented_into(&img, cfg, seed, out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        })
    }

    #[test]
    fn views_are_deterministic_distinct_and_in_range() {
        let cfg = PreprocessConfig::default();
        let img = gradient(320, 240);
        let make = |seed| {
            let mut out = vec![0f32; cfg.numel()];
            augmented_into(&img, &cfg, seed, &mut out);
            out
        };
        assert_eq!(make(1), make(1));
        assert_ne!(make(1), make(2));
        for seed in 0..50 {
            let mut rng = SplitMix64::new(seed);
            let ((rw, rh), (l, t)) = random_geometry(320, 240, &cfg, &mut rng);
            assert!(l + cfg.crop <= rw && t + cfg.crop <= rh);
        }
        assert_ne!(view_seed(b"a", 1), view_seed(b"a", 2));
    }

    #[test]
    fn mirror_twice_is_identity_and_flips_columns() {
        let mut px: Vec<u8> = (0..2 * 2 * 3).map(|v| v as u8).collect();
        let orig = px.clone();
        mirror(&mut px, 2);
        assert_eq!(&px[0..3], &orig[3..6]);
        mirror(&mut px, 2);
        assert_eq!(px, orig);
    }

    #[test]
    fn neutral_jitter_changes_nothing() {
        let mut px: Vec<u8> = (0..=255).collect::<Vec<u8>>().repeat(3);
        let orig = px.clone();
        color_jitter(&mut px, [1.0, 1.0, 1.0]);
        assert_eq!(px, orig);
    }
}
