//! Pictures of maps: a class map laid over the photo at the photo's own resolution, and a
//! grid of one layer's feature maps. Colours come from perceptually uniform maps (inferno
//! for heat over photos, viridis for feature maps; the `colorous` crate's, as matplotlib's):
//! equal steps in value look like equal steps in colour, and both read in greyscale.
use crate::data::preprocess::{crop_offset, resized_size, PreprocessConfig};
use crate::error::{Result, TorchContext};
use image::{Rgb, RgbImage};
use tch::Tensor;

/// Where the network's crop lies in the original image, in its pixels: the image is resized
/// (shorter side to `resize`) and centre-cropped to `crop`, as `tl` feeds it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CropBox {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

impl CropBox {
    pub fn of(width: u32, height: u32, cfg: &PreprocessConfig) -> CropBox {
        let (rw, rh) = resized_size(width, height, cfg.resize);
        let (sx, sy) = (width as f64 / rw as f64, height as f64 / rh as f64);
        CropBox {
            x: crop_offset(rw, cfg.crop) as f64 * sx,
            y: crop_offset(rh, cfg.crop) as f64 * sy,
            width: cfg.crop as f64 * sx,
            height: cfg.crop as f64 * sy,
        }
    }
}

fn colour(map: colorous::Gradient, v: f32) -> [u8; 3] {
    let c = map.eval_continuous(v.clamp(0.0, 1.0) as f64);
    [c.r, c.g, c.b]
}

/// Bilinear sample of a row-major `side × side` map at (u, v) in pixel-centre coordinates.
fn sample(values: &[f32], side: usize, u: f64, v: f64) -> f32 {
    let clamp = |t: f64| t.clamp(0.0, (side - 1) as f64);
    let (u, v) = (clamp(u), clamp(v));
    let (x0, y0) = (u.floor() as usize, v.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(side - 1), (y0 + 1).min(side - 1));
    let (fx, fy) = ((u - x0 as f64) as f32, (v - y0 as f64) as f32);
    let at = |x: usize, y: usize| values[y * side + x];
    let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
    let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// `img` with the normalised map `[S, S]` (in the crop's coordinates, values in [0, 1])
/// laid over the crop in inferno at opacity `alpha`; outside the crop (what the network
/// did not see) the photo is dimmed.
pub fn overlay(
    img: &RgbImage,
    map: &Tensor,
    cfg: &PreprocessConfig,
    alpha: f32,
) -> Result<RgbImage> {
    let side = map.size()[0] as usize;
    let values =
        Vec::<f32>::try_from(&map.flatten(0, -1)).torch_ctx(|| "heat map values".into())?;
    let b = CropBox::of(img.width(), img.height(), cfg);
    let scale = side as f64 / b.width.max(1e-9);
    let mut out = img.clone();
    for (x, y, px) in out.enumerate_pixels_mut() {
        let u = (x as f64 + 0.5 - b.x) * scale - 0.5;
        let v = (y as f64 + 0.5 - b.y) * (side as f64 / b.height.max(1e-9)) - 0.5;
        let inside = u >= -0.5 && v >= -0.5 && u < side as f64 - 0.5 && v < side as f64 - 0.5;
        let Rgb(p) = *px;
        *px = if inside {
            let c = colour(colorous::INFERNO, sample(&values, side, u, v));
            Rgb(std::array::from_fn(|i| {
                (p[i] as f32 * (1.0 - alpha) + c[i] as f32 * alpha).round() as u8
            }))
        } else {
            Rgb(p.map(|v| v / 2))
        };
    }
    Ok(out)
}

/// One layer's feature maps `[n, h, w]` as a grid (columns ⌈√n⌉), each map scaled to its
/// own [min, max] and drawn in viridis, `tile` pixels a side (nearest neighbour: one
/// activation, one block), 2-pixel white gaps.
pub fn grid(maps: &Tensor, tile: u32) -> Result<RgbImage> {
    let (n, h, w) = (
        maps.size()[0] as usize,
        maps.size()[1] as usize,
        maps.size()[2] as usize,
    );
    let cols = (n as f64).sqrt().ceil().max(1.0) as u32;
    let rows = (n as u32).div_ceil(cols).max(1);
    let gap = 2;
    let mut out = RgbImage::from_pixel(
        cols * (tile + gap) + gap,
        rows * (tile + gap) + gap,
        Rgb([255, 255, 255]),
    );
    let values = Vec::<f32>::try_from(&maps.flatten(0, -1)).torch_ctx(|| "feature maps".into())?;
    for (k, m) in values.chunks(h * w).enumerate() {
        let (lo, hi) = m
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let range = (hi - lo).max(1e-12);
        let (x0, y0) = (
            gap + (k as u32 % cols) * (tile + gap),
            gap + (k as u32 / cols) * (tile + gap),
        );
        for ty in 0..tile {
            for tx in 0..tile {
                let (sx, sy) = (
                    (tx as usize * w) / tile as usize,
                    (ty as usize * h) / tile as usize,
                );
                let v = (m[sy * w + sx] - lo) / range;
                out.put_pixel(x0 + tx, y0 + ty, Rgb(colour(colorous::VIRIDIS, v)));
            }
        }
    }
    Ok(out)
}
