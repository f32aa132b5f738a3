//! JPEGs at 1/8 scale without libjpeg: the draft decode of large photos, bit for bit what
//! libjpeg-turbo makes of them (tests/jpeg_eighth.rs), in less time.
//!
//! At 1/8 libjpeg-turbo needs of each luma block only its DC coefficient (`jpeg_idct_1x1`:
//! the block's mean) and of 4:2:0 chroma a 2x2 reduced IDCT (it scales chroma up in the
//! IDCT rather than upsampling it); yet it Huffman-decodes every AC coefficient one symbol at
//! a time, which is most of its time on a phone photo. Here the byte stuffing is removed
//! first, and the AC coefficients that are not needed are skipped several symbols per table
//! lookup (codes and their extra bits together). Everything after the entropy decoding is
//! libjpeg-turbo's integer arithmetic (jidctred.c, jdcolor.c), and upsampling is the plain
//! replication libjpeg uses at 1/8, where fancy upsampling is off.
//!
//! Decoded here: sequential Huffman, 8-bit, one interleaved scan of three YCbCr components
//! whose sampling needs a 1x1 or 2x2 IDCT and whole-number replication (4:4:4, 4:2:2, 4:2:0,
//! 4:4:0), with or without restart markers. Anything else — progressive, arithmetic coding,
//! grayscale, CMYK, RGB, a bad Huffman code, entropy data that ends early, restart markers
//! out of order, more than one scan — returns `None`, and libjpeg decodes the file and
//! reports what it finds.
use entropy::{Bits, Huffman};
pub use header::frame_size;
use header::{parse, unstuff};
use image::RgbImage;

mod entropy;
mod header;

/// libjpeg's `IDCT_range_limit` indexed by `x & RANGE_MASK`.
fn idct_limit(x: i32) -> u8 {
    match x & 1023 {
        v @ 0..=127 => (v + 128) as u8,
        128..=511 => 255,
        512..=895 => 0,
        v => (v - 896) as u8,
    }
}

/// A dequantised coefficient of at most 2048 in magnitude. Valid data stays within about
/// 1160 (an 8-bit block's DCT coefficients are at most ~1024, plus half a quantisation
/// step); damaged data can go far beyond, where libjpeg-turbo's SIMD IDCT (16-bit products,
/// 16-bit workspace) and its C code — this module's model — part ways. There libjpeg
/// decodes (tests/jpeg_eighth.rs found such a file).
#[inline(always)]
fn in_simd_range(dequantised: i32) -> Option<i32> {
    (dequantised.abs() <= 2048).then_some(dequantised)
}

/// `jpeg_idct_2x2` (jidctred.c, 8-bit: CONST_BITS 13, PASS1_BITS 2) into `out` (row-major).
fn idct_2x2(block: &[i16; 64], q: &[i32; 64], out: &mut [u8; 4]) -> Option<()> {
    for row in [0usize, 1, 3, 5, 7] {
        for col in [0usize, 1, 3, 5, 7] {
            in_simd_range(block[8 * row + col] as i32 * q[8 * row + col])?;
        }
    }
    let deq = |i: usize| block[i] as i64 * q[i] as i64;
    let odd =
        |c1: i64, c3: i64, c5: i64, c7: i64| c7 * -5906 + c5 * 6967 + c3 * -10426 + c1 * 29692;
    let descale = |x: i64, n: u32| (x + (1 << (n - 1))) >> n;
    let mut ws = [[0i64; 2]; 8]; // [column][row]
    for col in [0usize, 1, 3, 5, 7] {
        let at = |row: usize| col + 8 * row;
        if block[at(1)] == 0 && block[at(3)] == 0 && block[at(5)] == 0 && block[at(7)] == 0 {
            let dc = deq(at(0)) << 2;
            ws[col] = [dc, dc];
            continue;
        }
        let even = deq(at(0)) << 15;
        let o = odd(deq(at(1)), deq(at(3)), deq(at(5)), deq(at(7)));
        ws[col] = [descale(even + o, 13), descale(even - o, 13)];
    }
    for row in 0..2 {
        let w = |c: usize| ws[c][row];
        let even = w(0) << 15;
        let o = odd(w(1), w(3), w(5), w(7));
        out[row * 2] = idct_limit(descale(even + o, 20) as i32);
        out[row * 2 + 1] = idct_limit(descale(even - o, 20) as i32);
    }
    Some(())
}

/// How one scan component is decoded and where its samples go.
struct Plan<'a> {
    dc: &'a Huffman,
    ac: &'a Huffman,
    /// The AC skipping table where only the DC coefficient is needed (1x1 IDCT).
    skip: Option<&'a [u32]>,
    quant: &'a [i32; 64],
    /// Frame component index (the plane it fills).
    plane: usize,
    h: usize,
    v: usize,
    /// IDCT output size: 1 or 2.
    size: usize,
    /// Plane width in samples.
    width: usize,
}

/// Decode a JPEG at 1/8 scale (`ceil(w/8) x ceil(h/8)`), as libjpeg-turbo with
/// `scale_denom = 8` and RGB output; `None` where libjpeg should decode it.
pub fn decode(bytes: &[u8]) -> Option<RgbImage> {
    let hdr = parse(bytes)?;
    let comps = &hdr.components;
    let max_h = comps.iter().map(|c| c.h).max()?;
    let max_v = comps.iter().map(|c| c.v).max()?;
    if comps.iter().map(|c| c.h * c.v).sum::<usize>() > 10 {
        return None;
    }
    let (mcus_x, mcus_y) = (
        hdr.width.div_ceil(8 * max_h),
        hdr.height.div_ceil(8 * max_v),
    );
    // Per component: IDCT size (jdmaster.c scales chroma up in the IDCT where it can) and
    // the replication that brings it to full size (jdsample.c).
    let mut sizes = [0usize; 3];
    let mut expand = [(0usize, 0usize); 3];
    for (c, comp) in comps.iter().enumerate() {
        let mut s = 1;
        while s < 8 && max_h % (comp.h * s * 2) == 0 && max_v % (comp.v * s * 2) == 0 {
            s *= 2;
        }
        let (hi, vi) = (comp.h * s, comp.v * s);
        if s > 2 || max_h % hi != 0 || max_v % vi != 0 {
            return None;
        }
        sizes[c] = s;
        expand[c] = (max_h / hi, max_v / vi);
    }
    let widths = [0, 1, 2].map(|c| mcus_x * comps[c].h * sizes[c]);
    let mut skips: [Option<Vec<u32>>; 4] = [None, None, None, None];
    for &c in &hdr.scan {
        let ac = comps[c].ac;
        if sizes[c] == 1 && skips[ac].is_none() {
            skips[ac] = Some(hdr.ac[ac].as_ref()?.skip_table());
        }
    }
    let mut plans = Vec::with_capacity(3);
    for &c in &hdr.scan {
        let comp = &comps[c];
        plans.push(Plan {
            dc: hdr.dc[comp.dc].as_ref()?,
            ac: hdr.ac[comp.ac].as_ref()?,
            skip: (sizes[c] == 1).then(|| skips[comp.ac].as_deref()).flatten(),
            quant: hdr.quant[comp.quant].as_ref()?,
            plane: c,
            h: comp.h,
            v: comp.v,
            size: sizes[c],
            width: widths[c],
        });
    }
    let total = mcus_x * mcus_y;
    let interval = if hdr.restart_interval > 0 {
        hdr.restart_interval
    } else {
        total
    };
    let (data, segments) = unstuff(bytes, hdr.data_start, total.div_ceil(interval))?;
    let mut planes: Vec<Vec<u8>> = (0..3)
        .map(|c| vec![0u8; widths[c] * mcus_y * comps[c].v * sizes[c]])
        .collect();
    for (i, seg) in segments.iter().enumerate() {
        let mcus = i * interval..((i + 1) * interval).min(total);
        let start = Bits::new(&data, seg.start);
        let bits = decode_interval(start, &plans, mcus, mcus_x, &mut planes)?;
        if bits.consumed_since(seg.start) > seg.len() * 8 {
            return None; // libjpeg would pad with zeros and warn: let it
        }
    }
    Some(to_rgb(
        &planes,
        widths,
        expand,
        hdr.width.div_ceil(8),
        hdr.height.div_ceil(8),
    ))
}

/// The MCUs of one restart interval into the planes (DC predictions start at 0); the
/// reader comes back where the interval ended. Taken by value: its fields stay in
/// registers through the loop.
fn decode_interval<'a>(
    mut bits: Bits<'a>,
    plans: &[Plan],
    mcus: std::ops::Range<usize>,
    mcus_x: usize,
    planes: &mut [Vec<u8>],
) -> Option<Bits<'a>> {
    let mut preds = [0i32; 3];
    for mcu in mcus {
        let (mx, my) = (mcu % mcus_x, mcu / mcus_x);
        for (p, pred) in plans.iter().zip(preds.iter_mut()) {
            let plane = &mut planes[p.plane];
            for by in 0..p.v {
                for bx in 0..p.h {
                    *pred = pred.wrapping_add(bits.dc(p.dc)?);
                    let dc = *pred as i16;
                    let (x, y) = ((mx * p.h + bx) * p.size, (my * p.v + by) * p.size);
                    if let Some(skip) = p.skip {
                        bits.skip_ac(p.ac, skip)?;
                        // jpeg_idct_1x1
                        plane[y * p.width + x] = idct_limit((dc as i32 * p.quant[0] + 4) >> 3);
                    } else {
                        let mut block = [0i16; 64];
                        block[0] = dc;
                        let mut out = [0u8; 4];
                        if bits.ac(p.ac, &mut block)? {
                            idct_2x2(&block, p.quant, &mut out)?;
                        } else {
                            // What jpeg_idct_2x2 makes of a block without AC terms.
                            let dc = in_simd_range(dc as i32 * p.quant[0])?;
                            out = [idct_limit((dc * 4 + 16) >> 5); 4];
                        }
                        plane[y * p.width + x..][..2].copy_from_slice(&out[..2]);
                        plane[(y + 1) * p.width + x..][..2].copy_from_slice(&out[2..]);
                    }
                }
            }
        }
    }
    Some(bits)
}

/// YCbCr planes to RGB (`ycc_rgb_convert`, jdcolor.c), each plane replicated to full size.
fn to_rgb(
    planes: &[Vec<u8>],
    widths: [usize; 3],
    expand: [(usize, usize); 3],
    width: usize,
    height: usize,
) -> RgbImage {
    let mut rgb = vec![0u8; width * height * 3];
    let mut rows = [vec![0u8; width], vec![0u8; width], vec![0u8; width]];
    for (y, out) in rgb.chunks_exact_mut(width * 3).enumerate() {
        for (c, row) in rows.iter_mut().enumerate() {
            let src = &planes[c][(y / expand[c].1) * widths[c]..];
            match expand[c].0 {
                1 => row.copy_from_slice(&src[..width]),
                e => row
                    .iter_mut()
                    .enumerate()
                    .for_each(|(x, v)| *v = src[x / e]),
            }
        }
        for (px, ((&luma, &cb), &cr)) in out
            .chunks_exact_mut(3)
            .zip(rows[0].iter().zip(&rows[1]).zip(&rows[2]))
        {
            let (luma, cb, cr) = (luma as i32, cb as i32 - 128, cr as i32 - 128);
            let red = (91881 * cr + 32768) >> 16;
            let blue = (116130 * cb + 32768) >> 16;
            let green = (-22554 * cb + 32768 - 46802 * cr) >> 16;
            px[0] = (luma + red).clamp(0, 255) as u8;
            px[1] = (luma + green).clamp(0, 255) as u8;
            px[2] = (luma + blue).clamp(0, 255) as u8;
        }
    }
    RgbImage::from_raw(width as u32, height as u32, rgb).unwrap_or_default()
}
