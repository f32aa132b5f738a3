//! Text and images made fit for a page: HTML escaping, inline JPEG thumbnails.

/// Text made safe for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A JPEG thumbnail (longest side at most `size`) of an image file as a data URI, or why not.
pub fn thumbnail(path: &std::path::Path, size: u32) -> crate::error::Result<String> {
    let img = crate::data::decode::decode_rgb(path)?;
    image_uri(&img, size)
        .map_err(|e| crate::error::TlError::corrupt(path, format!("thumbnail: {e}")))
}

/// A JPEG thumbnail (longest side at most `size`) of an image in memory as a data URI.
pub fn image_uri(img: &image::RgbImage, size: u32) -> Result<String, image::ImageError> {
    use base64::Engine;
    let (w, h) = img.dimensions();
    let scale = (size as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    let small = image::imageops::thumbnail(img, tw, th);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80).encode_image(&small)?;
    Ok(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(jpeg)
    ))
}
