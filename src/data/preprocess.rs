//! Image decoding and the eval transform: Resize(shorter side) + CenterCrop + Normalize.
//!
//! The resize reproduces Pillow's antialiased bilinear filter (the one torchvision's
//! `Resize` uses on PIL images) including its 22-bit fixed-point arithmetic and its
//! rounding between the horizontal and vertical passes; with JPEGs decoded by Pillow's own
//! libjpeg-turbo ([`super::jpeg`]) the input equals torchvision's eval transform byte for
//! byte. Only the rows and columns that survive the centre crop are computed (the passes
//! themselves are in [`super::resample`]).
//!
//! The same coefficients, in floating point, give dense resize matrices for the
//! differentiable path used by `tl attack` (see [`ResizeMatrices`]).
pub use super::resample::bilinear_coeffs;
use crate::error::{Result, TlError, TorchContext};
use crate::runtime::DecodeMode;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    /// Shorter side after resizing.
    pub resize: u32,
    /// Side of the centre crop.
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            resize: 256,
            crop: 224,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

/// Bumped whenever preprocessing changes numerically, so that cached features are not reused.
pub const PREPROCESS_VERSION: u32 = 2;

/// The largest resize and crop side accepted from a file (a 4096² crop is already 200 MB a
/// batch of 1000; the networks here take 224).
pub const MAX_SIDE: u32 = 4096;

impl PreprocessConfig {
    /// Sizes in 1..=4096 (crop ≤ resize is not required), finite means, positive finite
    /// standard deviations: a file edited by hand (crop 0, std 0, a negative std) otherwise
    /// panics, allocates without bound or answers NaN.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("resize", self.resize), ("crop", self.crop)] {
            if v == 0 || v > MAX_SIDE {
                return Err(TlError::invalid(format!(
                    "{name} {v} must be between 1 and {MAX_SIDE}"
                )));
            }
        }
        if !self.mean.iter().all(|m| m.is_finite()) {
            return Err(TlError::invalid(format!(
                "mean {:?} must be finite numbers",
                self.mean
            )));
        }
        if !self.std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(TlError::invalid(format!(
                "std {:?} must be positive numbers",
                self.std
            )));
        }
        Ok(())
    }

    /// A short stable identifier of everything that changes the numbers.
    pub fn fingerprint(&self) -> String {
        let text = format!(
            "v{PREPROCESS_VERSION};resize={};crop={};mean={:?};std={:?};pil-bilinear;{}{}",
            self.resize,
            self.crop,
            self.mean,
            self.std,
            super::jpeg::fingerprint_tag(),
            match crate::runtime::process_settings().decode {
                DecodeMode::Full => "",
                DecodeMode::Draft => ";draft",
            }
        );
        crate::util::hex(&blake3::hash(text.as_bytes()).as_bytes()[..6])
    }
    pub fn numel(&self) -> usize {
        3 * (self.crop as usize) * (self.crop as usize)
    }
}

/// torchvision's `Resize(int)` output size: shorter side to `size`, the other truncated.
pub fn resized_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = ((size as u64 * long as u64) as f64 / short as f64) as u32;
    if width <= height {
        (size, new_long.max(1))
    } else {
        (new_long.max(1), size)
    }
}

/// torchvision's `center_crop` offset: Python's round(), which rounds half to even.
pub fn crop_offset(size: u32, crop: u32) -> u32 {
    ((size as f64 - crop as f64) / 2.0)
        .round_ties_even()
        .max(0.0) as u32
}

/// Resize (Pillow bilinear, antialiased), centre-crop and normalise `img` into `out`
/// (CHW, `3 * crop * crop` floats).
pub fn preprocess_into(img: &RgbImage, cfg: &PreprocessConfig, out: &mut [f32]) {
    let crop_u8 = resize_crop_u8(img, cfg.resize, cfg.crop);
    normalize_into(&crop_u8, cfg, out);
}

/// The resized and cropped image, 8-bit RGB, interleaved (HWC), `crop * crop * 3` bytes.
///
/// Two separable passes with 8-bit rounding in between, in Pillow's order: horizontal
/// first, except when the height shrinks by more than twice as many pixels as the width —
/// then vertical first (Pillow 13, python-pillow/Pillow#9549; the version torchvision 0.28
/// installs). The order changes the rounding of the intermediate image, so it must match.
pub fn resize_crop_u8(img: &RgbImage, resize: u32, crop: u32) -> Vec<u8> {
    let (w, h) = img.dimensions();
    let (rw, rh) = resized_size(w, h, resize);
    let (left, top) = (crop_offset(rw, crop), crop_offset(rh, crop));
    resample_crop_u8(img, (rw, rh), (left, top), crop)
}

/// Resize `img` to `resized` (width, height; each at least `crop`) with Pillow's filter and
/// cut the `crop`-sided square at `offset` (left, top): the eval transform's core, also
/// used by the augmented views.
pub fn resample_crop_u8(
    img: &RgbImage,
    resized: (u32, u32),
    offset: (u32, u32),
    crop: u32,
) -> Vec<u8> {
    let out = super::resample::resample_crop(img.as_raw(), img.dimensions(), resized, offset, crop);
    // A crop larger than the resized image is zero-padded by torchvision; we only allow
    // crop <= resize, so the output is always crop x crop.
    debug_assert_eq!(out.len(), (crop * crop * 3) as usize);
    out
}

/// HWC u8 -> normalised CHW f32, in torchvision's order of operations.
pub fn normalize_into(hwc: &[u8], cfg: &PreprocessConfig, out: &mut [f32]) {
    let plane = (cfg.crop * cfg.crop) as usize;
    assert_eq!(out.len(), 3 * plane);
    assert_eq!(hwc.len(), 3 * plane);
    for c in 0..3 {
        let (mean, std) = (cfg.mean[c], cfg.std[c]);
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (i, d) in dst.iter_mut().enumerate() {
            *d = (hwc[i * 3 + c] as f32 / 255.0 - mean) / std;
        }
    }
}

/// The side a JPEG may be drafted down to before the eval transform: the resize under
/// `--decode draft`, none under `--decode full`.
pub fn draft_side(cfg: &PreprocessConfig) -> Option<u32> {
    match crate::runtime::process_settings().decode {
        DecodeMode::Full => None,
        DecodeMode::Draft => Some(cfg.resize),
    }
}

/// The eval transform of one image as a `[1,3,crop,crop]` tensor: what `tl predict` feeds
/// the network.
pub fn resized_tensor(img: &RgbImage, cfg: &PreprocessConfig) -> Tensor {
    let mut buf = vec![0f32; cfg.numel()];
    preprocess_into(img, cfg, &mut buf);
    Tensor::from_slice(&buf).view([1, 3, cfg.crop as i64, cfg.crop as i64])
}

/// `[1,3,H,W]` float tensor in [0, 1] from an RGB image.
pub fn image_to_unit_tensor(img: &RgbImage) -> Tensor {
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw())
        .view([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .to_kind(Kind::Float)
        / 255.0
}

/// 8-bit image from a `[1,3,H,W]` or `[3,H,W]` tensor in [0, 1] (rounded to nearest).
pub fn unit_tensor_to_image(t: &Tensor) -> Result<RgbImage> {
    let t = if t.dim() == 4 {
        t.squeeze_dim(0)
    } else {
        t.shallow_clone()
    };
    let (h, w) = (t.size()[1], t.size()[2]);
    let bytes = (t.to_device(Device::Cpu).clamp(0.0, 1.0) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .permute([1, 2, 0])
        .contiguous();
    let data: Vec<u8> =
        Vec::<u8>::try_from(bytes.view([-1])).torch_ctx(|| "reading image pixels".into())?;
    RgbImage::from_raw(w as u32, h as u32, data)
        .ok_or_else(|| TlError::invalid(format!("image tensor of shape {:?}", t.size())))
}

/// Save an RGB image as PNG, atomically; the format follows the extension (PNG if none).
pub fn save_image(img: &RgbImage, path: &Path) -> Result<()> {
    let format = image::ImageFormat::from_path(path).unwrap_or(image::ImageFormat::Png);
    if !matches!(
        format,
        image::ImageFormat::Png | image::ImageFormat::Bmp | image::ImageFormat::Tiff
    ) {
        return Err(TlError::corrupt(
            path,
            "output must be a lossless format (.png, .bmp or .tiff)",
        ));
    }
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), format)
        .map_err(|e| TlError::corrupt(path, format!("cannot encode the image: {e}")))?;
    crate::util::write_atomic(path, &bytes)
}

/// Dense resize-and-crop matrices with Pillow's coefficients (in floating point), for the
/// differentiable path: `crop = Rh · image · Rwᵀ`, per channel.
pub struct ResizeMatrices {
    /// `[crop, H]`
    pub rows: Tensor,
    /// `[W, crop]` (already transposed)
    pub cols_t: Tensor,
}

impl ResizeMatrices {
    pub fn new(width: u32, height: u32, cfg: &PreprocessConfig, device: Device) -> ResizeMatrices {
        let (rw, rh) = resized_size(width, height, cfg.resize);
        let (left, top) = (crop_offset(rw, cfg.crop), crop_offset(rh, cfg.crop));
        let dense = |in_size: u32, out: u32, first: u32| {
            let coeffs = bilinear_coeffs(in_size, out, first, cfg.crop.min(out));
            let mut m = vec![0f32; coeffs.len() * in_size as usize];
            for (i, (s, w)) in coeffs.iter().enumerate() {
                for (j, v) in w.iter().enumerate() {
                    m[i * in_size as usize + s + j] = *v as f32;
                }
            }
            Tensor::from_slice(&m)
                .view([coeffs.len() as i64, in_size as i64])
                .to_device(device)
        };
        let rows = dense(height, rh, top);
        let cols_t = dense(width, rw, left).transpose(0, 1).contiguous();
        ResizeMatrices { rows, cols_t }
    }

    /// `[1,1,H,W]`: 1 where a pixel reaches the crop (has a non-zero resize weight), else
    /// 0. Pixels outside it are never seen by the network.
    pub fn seen_mask(&self) -> Tensor {
        let rows = self.rows.ne(0.0).any_dim(0, false).to_kind(Kind::Float); // [H]
        let cols = self.cols_t.ne(0.0).any_dim(1, false).to_kind(Kind::Float); // [W]
        (rows.unsqueeze(1) * cols.unsqueeze(0))
            .unsqueeze(0)
            .unsqueeze(0)
    }

    /// `[N,3,H,W]` in [0, 1] -> `[N,3,crop,crop]` in [0, 1].
    pub fn apply(&self, x: &Tensor) -> Tensor {
        self.rows.matmul(&x.matmul(&self.cols_t))
    }
}

/// Normalise `[N,3,H,W]` pixels in [0, 1] with the backbone's mean/std (inside the graph).
pub fn normalize_tensor(x: &Tensor, cfg: &PreprocessConfig) -> Tensor {
    let (mean, std) = mean_std(cfg, x.device());
    (x - mean) / std
}

/// Pixels in [0, 1] back from normalised `[N,3,H,W]` input.
pub fn denormalize_tensor(x: &Tensor, cfg: &PreprocessConfig) -> Tensor {
    let (mean, std) = mean_std(cfg, x.device());
    x * std + mean
}

fn mean_std(cfg: &PreprocessConfig, device: Device) -> (Tensor, Tensor) {
    let column = |v: &[f32; 3]| Tensor::from_slice(v).view([1, 3, 1, 1]).to_device(device);
    (column(&cfg.mean), column(&cfg.std))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_sizes() {
        assert_eq!(resized_size(500, 375, 256), (341, 256));
        assert_eq!(resized_size(375, 500, 256), (256, 341));
        assert_eq!(resized_size(256, 256, 256), (256, 256));
        assert_eq!(crop_offset(341, 224), 58); // (341-224)/2 = 58.5 rounds to even
        assert_eq!(crop_offset(343, 224), 60); // 59.5 -> 60
        assert_eq!(crop_offset(256, 224), 16);
    }

    #[test]
    fn coefficients_sum_to_one_and_identity_is_exact() {
        for (i, o) in [(500, 341), (100, 256), (375, 256), (7, 3)] {
            for (_, w) in bilinear_coeffs(i, o, 0, o) {
                assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            }
        }
        let img = RgbImage::from_fn(224, 224, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
        });
        let out = resize_crop_u8(&img, 224, 224);
        assert_eq!(out, img.as_raw().clone());
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(640, 480, image::Rgb([10, 128, 250]));
        let out = resize_crop_u8(&img, 256, 224);
        assert_eq!(out.len(), 224 * 224 * 3);
        assert!(out.chunks(3).all(|p| p == [10, 128, 250]));
    }

    #[test]
    fn dense_matrices_match_fixed_point_path() {
        let img = RgbImage::from_fn(97, 61, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 4) as u8, ((x + y) * 3 % 256) as u8])
        });
        let cfg = PreprocessConfig {
            resize: 40,
            crop: 32,
            ..Default::default()
        };
        let fixed = resize_crop_u8(&img, cfg.resize, cfg.crop);
        let m = ResizeMatrices::new(97, 61, &cfg, Device::Cpu);
        let dense = m.apply(&image_to_unit_tensor(&img)) * 255.0;
        let fixed_t = Tensor::from_slice(&fixed)
            .view([32, 32, 3])
            .permute([2, 0, 1])
            .unsqueeze(0)
            .to_kind(Kind::Float);
        let diff = (dense - fixed_t).abs().max().double_value(&[]);
        assert!(diff <= 1.01, "max difference {diff}");
    }
}
