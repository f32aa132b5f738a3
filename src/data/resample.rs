//! Pillow's antialiased bilinear resampling of 8-bit RGB, bit for bit: its 22-bit fixed-point
//! coefficients, its rounding after each of the two separable passes and its choice of which
//! pass goes first. Only the rows and columns that survive a crop are computed.
//!
//! Each pass has a portable version and, on x86-64 CPUs with AVX2 (chosen at run time), a
//! vector one that computes exactly the same integers: products of 8-bit pixels and 22-bit
//! coefficients summed in 32-bit lanes, never rounded until the final shift. The horizontal
//! pass was 80 % of the resampling time (BENCHMARKS.md §5); tests compare the two versions
//! on many sizes.

/// Pillow's bilinear filter coefficients for output positions `first..first+count` of a
/// resize from `in_size` to `out_size`: for each, the first input index and its weights.
pub fn bilinear_coeffs(
    in_size: u32,
    out_size: u32,
    first: u32,
    count: u32,
) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support is 1.0
    (first..first + count)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let mut weights: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) * ss).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            (xmin as usize, weights)
        })
        .collect()
}

const PRECISION_BITS: u32 = 32 - 8 - 2;
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Fixed-point coefficients of one axis, for a run of output positions.
struct FixedCoeffs {
    /// First input index of each output.
    start: Vec<usize>,
    /// Number of (non-padding) coefficients of each output.
    len: Vec<usize>,
    /// Coefficients per output in `k` (the largest `len`, zero-padded).
    ksize: usize,
    k: Vec<i32>,
}

fn fixed_coeffs(in_size: u32, out_size: u32, first: u32, count: u32) -> FixedCoeffs {
    let coeffs = bilinear_coeffs(in_size, out_size, first, count);
    let ksize = coeffs
        .iter()
        .map(|(_, w)| w.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut k = vec![0i32; ksize * coeffs.len()];
    let mut start = Vec::with_capacity(coeffs.len());
    let mut len = Vec::with_capacity(coeffs.len());
    for (i, (s, w)) in coeffs.iter().enumerate() {
        start.push(*s);
        len.push(w.len());
        for (j, v) in w.iter().enumerate() {
            let scaled = v * (1u32 << PRECISION_BITS) as f64;
            k[i * ksize + j] = (if *v < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32;
        }
    }
    FixedCoeffs {
        start,
        len,
        ksize,
        k,
    }
}

impl FixedCoeffs {
    /// The input indices `[first, last)` the coefficients read.
    fn span(&self) -> (usize, usize) {
        let first = self.start.iter().copied().min().unwrap_or(0);
        let last = self
            .start
            .iter()
            .zip(&self.len)
            .map(|(s, l)| s + l)
            .max()
            .unwrap_or(0);
        (first, last)
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Interleaved RGB rows `first_row..` of an image `width` pixels wide.
struct Plane<'a> {
    data: &'a [u8],
    width: usize,
    first_row: usize,
}

/// Which implementation of the passes to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernels {
    /// The fastest this CPU runs.
    pub fn best() -> Kernels {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            return Kernels::Avx2;
        }
        Kernels::Portable
    }
}

/// Resize `src` (interleaved RGB, `size` = width, height) to `resized` with Pillow's filter
/// and cut the `crop`-sided square at `offset` (left, top; the square is clipped to the
/// resized image): `crop.min(rw) * crop.min(rh) * 3` bytes.
pub fn resample_crop(
    src: &[u8],
    size: (u32, u32),
    resized: (u32, u32),
    offset: (u32, u32),
    crop: u32,
) -> Vec<u8> {
    resample_crop_with(Kernels::best(), src, size, resized, offset, crop)
}

/// [`resample_crop`] with the given kernels (tests compare them).
pub fn resample_crop_with(
    kernels: Kernels,
    src: &[u8],
    size: (u32, u32),
    resized: (u32, u32),
    offset: (u32, u32),
    crop: u32,
) -> Vec<u8> {
    let (w, h) = size;
    let (rw, rh) = resized;
    let (left, top) = offset;
    assert_eq!(src.len(), (w * h * 3) as usize, "image buffer size");
    let (cw, ch) = (crop.min(rw), crop.min(rh));
    let horiz = fixed_coeffs(w, rw, left, cw);
    let vert = fixed_coeffs(h, rh, top, ch);
    // Pillow 13 (python-pillow/Pillow#9549, the version torchvision 0.28 installs) goes
    // vertical first when the height shrinks by more than twice as many pixels as the
    // width; the order changes the rounding of the intermediate image, so it must match.
    let shrink_h = h as i64 - rh as i64;
    let vertical_first = shrink_h > 0 && shrink_h > 2 * (w as i64 - rw as i64);
    let src = Plane {
        data: src,
        width: w as usize,
        first_row: 0,
    };
    if vertical_first {
        // Only the columns the horizontal pass reads.
        let (c0, c1) = horiz.span();
        let temp = vertical_pass(kernels, &src, &vert, c0, c1);
        let temp = Plane {
            data: &temp,
            width: c1 - c0,
            first_row: 0,
        };
        horizontal_pass(kernels, &temp, &horiz, c0, 0, ch as usize)
    } else {
        // Only the rows the vertical pass reads.
        let (r0, r1) = vert.span();
        let temp = horizontal_pass(kernels, &src, &horiz, 0, r0, r1);
        let temp = Plane {
            data: &temp,
            width: cw as usize,
            first_row: r0,
        };
        vertical_pass(kernels, &temp, &vert, 0, cw as usize)
    }
}

/// Resample each row `r0..r1` of `src` horizontally; input column `c` is `c - col_offset`
/// in `src`.
fn horizontal_pass(
    kernels: Kernels,
    src: &Plane,
    horiz: &FixedCoeffs,
    col_offset: usize,
    r0: usize,
    r1: usize,
) -> Vec<u8> {
    let out_w = horiz.start.len();
    let mut out = vec![0u8; (r1 - r0) * out_w * 3];
    match kernels {
        Kernels::Portable => horizontal_portable(src, horiz, col_offset, r0, r1, &mut out),
        // SAFETY: `Kernels::Avx2` is only chosen (or accepted by tests) on a CPU with AVX2.
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx2 => unsafe { avx2::horizontal(src, horiz, col_offset, r0, r1, &mut out) },
    }
    out
}

fn horizontal_portable(
    src: &Plane,
    horiz: &FixedCoeffs,
    col_offset: usize,
    r0: usize,
    r1: usize,
    out: &mut [u8],
) {
    let out_w = horiz.start.len();
    let stride = src.width * 3;
    for (ti, y) in (r0..r1).enumerate() {
        let row = &src.data[(y - src.first_row) * stride..(y - src.first_row + 1) * stride];
        let dst = &mut out[ti * out_w * 3..(ti + 1) * out_w * 3];
        for xx in 0..out_w {
            let k = &horiz.k[xx * horiz.ksize..xx * horiz.ksize + horiz.len[xx]];
            let base = (horiz.start[xx] - col_offset) * 3;
            let (mut r, mut g, mut b) = (HALF, HALF, HALF);
            for (j, &kv) in k.iter().enumerate() {
                let p = base + j * 3;
                r += row[p] as i32 * kv;
                g += row[p + 1] as i32 * kv;
                b += row[p + 2] as i32 * kv;
            }
            dst[xx * 3] = clip8(r);
            dst[xx * 3 + 1] = clip8(g);
            dst[xx * 3 + 2] = clip8(b);
        }
    }
}

/// Resample columns `c0..c1` of `src` vertically, one output row per coefficient row.
fn vertical_pass(
    kernels: Kernels,
    src: &Plane,
    vert: &FixedCoeffs,
    c0: usize,
    c1: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; vert.start.len() * (c1 - c0) * 3];
    match kernels {
        Kernels::Portable => vertical_portable(src, vert, c0, c1, &mut out),
        // SAFETY: as in `horizontal_pass`.
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx2 => unsafe { avx2::vertical(src, vert, c0, c1, &mut out) },
    }
    out
}

fn vertical_portable(src: &Plane, vert: &FixedCoeffs, c0: usize, c1: usize, out: &mut [u8]) {
    let stride = src.width * 3;
    let out_stride = (c1 - c0) * 3;
    let mut acc = vec![0i32; out_stride];
    for yy in 0..vert.start.len() {
        acc.iter_mut().for_each(|a| *a = HALF);
        let k = &vert.k[yy * vert.ksize..yy * vert.ksize + vert.len[yy]];
        let base = vert.start[yy] - src.first_row;
        for (j, &kv) in k.iter().enumerate() {
            let row = &src.data[(base + j) * stride + c0 * 3..(base + j) * stride + c1 * 3];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * kv;
            }
        }
        for (o, &a) in out[yy * out_stride..(yy + 1) * out_stride]
            .iter_mut()
            .zip(&acc)
        {
            *o = clip8(a);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::data::resample::{clip8, FixedCoeffs, Plane, HALF, PRECISION_BITS};
    use std::arch::x86_64::*;

    /// Horizontal pass, two taps per step: the two RGB pixels of a tap pair are spread into
    /// eight 32-bit lanes (R G B 0 R G B 0), multiplied by their coefficients and summed;
    /// the two halves are added at the end. Each source row is first copied into a buffer
    /// padded with zeros, so that a pair's 8-byte load never runs past it (padding
    /// coefficients are zero, so whatever they meet adds nothing).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn horizontal(
        src: &Plane,
        horiz: &FixedCoeffs,
        col_offset: usize,
        r0: usize,
        r1: usize,
        out: &mut [u8],
    ) {
        let out_w = horiz.start.len();
        let stride = src.width * 3;
        let pairs = horiz.ksize.div_ceil(2);
        // Coefficients as lanes: for output x, pair p: [k0 k0 k0 k0 k1 k1 k1 k1].
        let mut lanes = vec![0i32; out_w * pairs * 8];
        for x in 0..out_w {
            for j in 0..horiz.len[x] {
                let at = (x * pairs + j / 2) * 8 + (j % 2) * 4;
                lanes[at..at + 4].fill(horiz.k[x * horiz.ksize + j]);
            }
        }
        let mut row = vec![0u8; stride + pairs * 6 + 16];
        let spread = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, -1, -1, -1, -1, -1, -1, -1, -1);
        let half = _mm_set1_epi32(HALF);
        for (ti, y) in (r0..r1).enumerate() {
            let at = (y - src.first_row) * stride;
            row[..stride].copy_from_slice(&src.data[at..at + stride]);
            let dst = &mut out[ti * out_w * 3..(ti + 1) * out_w * 3];
            for x in 0..out_w {
                let base = row.as_ptr().add((horiz.start[x] - col_offset) * 3);
                let k = lanes.as_ptr().add(x * pairs * 8);
                let mut acc = _mm256_setzero_si256();
                for p in 0..pairs {
                    let two = _mm_loadl_epi64(base.add(p * 6) as *const __m128i);
                    let px = _mm256_cvtepu8_epi32(_mm_shuffle_epi8(two, spread));
                    let kk = _mm256_loadu_si256(k.add(p * 8) as *const __m256i);
                    acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(px, kk));
                }
                let sum = _mm_add_epi32(
                    _mm256_castsi256_si128(acc),
                    _mm256_extracti128_si256::<1>(acc),
                );
                let shifted = _mm_srai_epi32::<{ PRECISION_BITS as i32 }>(_mm_add_epi32(sum, half));
                // Signed then unsigned saturation: the clamp to 0..=255 of `clip8`.
                let packed = _mm_packus_epi16(_mm_packs_epi32(shifted, shifted), shifted);
                let rgb = (_mm_cvtsi128_si32(packed) as u32).to_le_bytes();
                dst[x * 3..x * 3 + 3].copy_from_slice(&rgb[..3]);
            }
        }
    }

    /// Vertical pass, eight bytes of a row at a time, the taps summed in registers.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn vertical(
        src: &Plane,
        vert: &FixedCoeffs,
        c0: usize,
        c1: usize,
        out: &mut [u8],
    ) {
        let stride = src.width * 3;
        let out_stride = (c1 - c0) * 3;
        let vector_end = out_stride / 8 * 8;
        let half = _mm256_set1_epi32(HALF);
        for yy in 0..vert.start.len() {
            let k = &vert.k[yy * vert.ksize..yy * vert.ksize + vert.len[yy]];
            let first = (vert.start[yy] - src.first_row) * stride + c0 * 3;
            let dst = &mut out[yy * out_stride..(yy + 1) * out_stride];
            for c in (0..vector_end).step_by(8) {
                let mut acc = half;
                for (j, &kv) in k.iter().enumerate() {
                    let at = first + j * stride + c;
                    debug_assert!(at + 8 <= src.data.len());
                    let px = _mm_loadl_epi64(src.data.as_ptr().add(at) as *const __m128i);
                    let px = _mm256_cvtepu8_epi32(px);
                    acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(px, _mm256_set1_epi32(kv)));
                }
                let shifted = _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(acc);
                let lo = _mm256_castsi256_si128(shifted);
                let hi = _mm256_extracti128_si256::<1>(shifted);
                let words = _mm_packs_epi32(lo, hi);
                let bytes = _mm_packus_epi16(words, words);
                _mm_storel_epi64(dst.as_mut_ptr().add(c) as *mut __m128i, bytes);
            }
            for (c, o) in dst.iter_mut().enumerate().skip(vector_end) {
                let mut acc = HALF;
                for (j, &kv) in k.iter().enumerate() {
                    acc += src.data[first + j * stride + c] as i32 * kv;
                }
                *o = clip8(acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic noise with smooth parts and sharp edges, so rounding differences show.
    fn test_image(w: u32, h: u32, seed: u32) -> Vec<u8> {
        let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..w * h * 3)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let (x, y) = ((i / 3) % w, (i / 3) / w);
                if (x / 7 + y / 5) % 3 == 0 {
                    (state >> 24) as u8
                } else {
                    ((x * 3 + y * 5 + i % 3 * 40) % 256) as u8
                }
            })
            .collect()
    }

    #[test]
    fn vector_kernels_equal_portable_ones_bit_for_bit() {
        let best = Kernels::best();
        if best == Kernels::Portable {
            {
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "skipped: this CPU has no vector kernels");
            };
            return;
        }
        let mut cases = 0;
        // Shrinking in either or both directions (both pass orders), enlarging, the same size,
        // odd sizes and large factors (many taps; odd tap counts).
        for &(w, h) in &[
            (500, 375),
            (375, 500),
            (257, 256),
            (256, 256),
            (224, 224),
            (640, 260),
            (260, 900),
            (1203, 817),
            (100, 80),
            (3001, 300),
            (31, 1400),
        ] {
            for &(rw, rh, crop) in &[
                (256, 256, 224),
                (341, 256, 224),
                (224, 300, 224),
                (97, 33, 20),
            ] {
                let src = test_image(w, h, w * 7 + h);
                let (cw, ch) = (crop.min(rw), crop.min(rh));
                let offset = ((rw - cw) / 2, (rh - ch) / 2);
                let a = resample_crop_with(Kernels::Portable, &src, (w, h), (rw, rh), offset, crop);
                let b = resample_crop_with(best, &src, (w, h), (rw, rh), offset, crop);
                assert_eq!(a.len(), (cw * ch * 3) as usize);
                assert!(a == b, "{w}x{h} -> {rw}x{rh} crop {crop}: kernels differ");
                cases += 1;
            }
        }
        assert_eq!(cases, 44);
    }
}
