//! Image files to 8-bit RGB (JPEGs with Pillow's libjpeg-turbo where it is found: see
//! [`super::jpeg`]). Grayscale, alpha, CMYK and 16-bit images are converted (alpha
//! is dropped, as Pillow's `convert('RGB')` does); truncated, empty and non-image files are
//! errors that name the file. Decoding never panics and never allocates without bound: the
//! decoder's memory limit refuses absurd headers, and a decoder panic on a damaged file is
//! turned into an error.
use crate::error::{IoContext, Result, SkipReason, TlError};
use image::RgbImage;
use std::io::Cursor;
use std::path::Path;

static CAUGHT_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many decoder panics were caught (and turned into errors) in this process.
pub fn caught_panics() -> usize {
    CAUGHT_PANICS.load(std::sync::atomic::Ordering::Relaxed)
}

pub use super::jpeg::MAX_DECODE_BYTES;

/// Decode an image file's bytes (`path` only names it in errors).
pub fn decode_rgb_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    decode_rgb_bytes_draft(bytes, path, None)
}

/// Decode an image file's bytes; `draft`: `Some(side)` lets a JPEG be scaled in the DCT
/// while both sides stay at least `side` (Pillow's `Image.draft('RGB', (side, side))`).
pub fn decode_rgb_bytes_draft(bytes: &[u8], path: &Path, draft: Option<u32>) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(TlError::decode(path, SkipReason::Empty));
    }
    // A damaged file must cost one skipped image, never the run: the image crate's decoders
    // are meant not to panic, but this keeps a bug in one of them from taking `tl` down.
    match std::panic::catch_unwind(|| decode_inner(bytes, path, draft)) {
        Ok(result) => result,
        Err(_) => {
            CAUGHT_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(TlError::decode(path, SkipReason::DecoderFailed))
        }
    }
}

fn decode_inner(bytes: &[u8], path: &Path, draft: Option<u32>) -> Result<RgbImage> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .with_path(path)?;
    let format = reader
        .format()
        .ok_or_else(|| TlError::decode(path, SkipReason::NotAnImage))?;
    if format == image::ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        return Err(TlError::decode(path, SkipReason::TruncatedJpeg));
    }
    // Pillow's own libjpeg-turbo when it is there; a file it refuses goes to the image
    // crate's decoder, which decides (as before libjpeg was used).
    if format == image::ImageFormat::Jpeg {
        if let Some(Ok(img)) = super::jpeg::decode(bytes, draft) {
            return Ok(img);
        }
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| TlError::decode(path, SkipReason::Undecodable(format!("{format:?}: {e}"))))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(TlError::decode(path, SkipReason::ZeroSize));
    }
    Ok(img.into_rgb8())
}

/// A complete JPEG ends with FF D9 (some writers append padding after it).
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_path(path)?;
    decode_rgb_bytes(&bytes, path)
}
