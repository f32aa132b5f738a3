//! The markers before the scan, and the scan's data without its byte stuffing.
use super::entropy::{Huffman, NATURAL};

/// A frame component and what the scan says of it.
#[derive(Clone, Copy, Default)]
pub(super) struct Component {
    pub(super) id: u8,
    pub(super) h: usize,
    pub(super) v: usize,
    pub(super) quant: usize,
    pub(super) dc: usize,
    pub(super) ac: usize,
}

/// What the markers before the scan say.
pub(super) struct Header {
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) components: Vec<Component>,
    /// Frame component indices in scan order.
    pub(super) scan: Vec<usize>,
    pub(super) quant: [Option<[i32; 64]>; 4],
    pub(super) dc: [Option<Huffman>; 4],
    pub(super) ac: [Option<Huffman>; 4],
    pub(super) restart_interval: usize,
    /// Offset of the entropy-coded data.
    pub(super) data_start: usize,
}

/// Big-endian u16 at `i`.
fn be16(b: &[u8], i: usize) -> Option<usize> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize)
}

/// The marker segment at `i` (fill bytes skipped): its marker, length field, contents, and
/// where the next one starts.
fn segment(b: &[u8], mut i: usize) -> Option<(u8, usize, &[u8], usize)> {
    if *b.get(i)? != 0xFF {
        return None;
    }
    while *b.get(i + 1)? == 0xFF {
        i += 1;
    }
    let marker = *b.get(i + 1)?;
    let len = be16(b, i + 2)?;
    if len < 2 {
        return None;
    }
    Some((marker, len, b.get(i + 4..i + 2 + len)?, i + 2 + len))
}

/// The image size from a sequential frame header: a walk over the segments that builds no
/// tables, since every draft decode asks it (the full parse then decides what may be decoded).
pub fn frame_size(b: &[u8]) -> Option<(u32, u32)> {
    if b.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut i = 2;
    loop {
        let (marker, len, seg, next) = segment(b, i)?;
        match marker {
            0xC0 | 0xC1 if len >= 7 => return Some((be16(seg, 3)? as u32, be16(seg, 1)? as u32)),
            // Other frame types, or the scan before any frame.
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF | 0xDA => return None,
            _ => i = next,
        }
    }
}

/// The markers up to the scan; `None` where this module leaves the file to libjpeg.
pub(super) fn parse(b: &[u8]) -> Option<Header> {
    if b.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut h = Header {
        width: 0,
        height: 0,
        components: Vec::new(),
        scan: Vec::new(),
        quant: [None; 4],
        dc: [None, None, None, None],
        ac: [None, None, None, None],
        restart_interval: 0,
        data_start: 0,
    };
    let (mut jfif, mut adobe) = (false, None);
    let mut i = 2;
    loop {
        let (marker, len, seg, next) = segment(b, i)?;
        // Lengths as libjpeg requires them (jdmarker.c); markers it would refuse, other
        // frame types, DAC, DNL, a second SOF or SOI and an early EOI: left to libjpeg.
        match marker {
            0xC0 | 0xC1 if h.components.is_empty() && len == 17 => frame(seg, &mut h)?,
            0xC4 => tables(seg, &mut h)?,
            0xDB => quant_tables(seg, &mut h)?,
            0xDD if len == 4 => h.restart_interval = be16(seg, 0)?,
            0xE0 => jfif |= len >= 16 && seg.starts_with(b"JFIF\0"),
            0xEE if len >= 14 && seg.starts_with(b"Adobe") => adobe = Some(seg[11]),
            0xE1..=0xEF | 0xFE => {}
            0xDA if len == 12 => {
                scan(seg, &mut h)?;
                h.data_start = next;
                break;
            }
            _ => return None,
        }
        i = next;
    }
    // libjpeg's colour space guess (jdapimin.c): only YCbCr is decoded here.
    let ids: Vec<u8> = h.components.iter().map(|c| c.id).collect();
    let ycc = match (jfif, adobe) {
        (true, _) => true,
        (false, Some(transform)) => transform == 1,
        (false, None) => ids != [b'R', b'G', b'B'],
    };
    ycc.then_some(h)
}

fn frame(seg: &[u8], h: &mut Header) -> Option<()> {
    let (precision, height, width, n) = (*seg.first()?, be16(seg, 1)?, be16(seg, 3)?, *seg.get(5)?);
    // 65500: libjpeg's JPEG_MAX_DIMENSION.
    if precision != 8 || !(1..=65500).contains(&height) || !(1..=65500).contains(&width) || n != 3 {
        return None;
    }
    for c in 0..3 {
        let at = 6 + 3 * c;
        let sampling = *seg.get(at + 1)?;
        let comp = Component {
            id: *seg.get(at)?,
            h: (sampling >> 4) as usize,
            v: (sampling & 15) as usize,
            quant: *seg.get(at + 2)? as usize,
            ..Default::default()
        };
        if !(1..=4).contains(&comp.h) || !(1..=4).contains(&comp.v) || comp.quant > 3 {
            return None;
        }
        h.components.push(comp);
    }
    (h.width, h.height) = (width, height);
    Some(())
}

fn tables(mut seg: &[u8], h: &mut Header) -> Option<()> {
    while !seg.is_empty() {
        let (class, id) = (seg[0] >> 4, (seg[0] & 15) as usize);
        let counts: [u8; 16] = seg.get(1..17)?.try_into().ok()?;
        let n: usize = counts.iter().map(|&c| c as usize).sum();
        let symbols = seg.get(17..17 + n)?;
        if id > 3 || class > 1 {
            return None;
        }
        let table = Huffman::new(&counts, symbols, class == 0)?;
        if class == 0 {
            h.dc[id] = Some(table);
        } else {
            h.ac[id] = Some(table);
        }
        seg = &seg[17 + n..];
    }
    Some(())
}

fn quant_tables(mut seg: &[u8], h: &mut Header) -> Option<()> {
    while !seg.is_empty() {
        let (wide, id) = (seg[0] >> 4, (seg[0] & 15) as usize);
        if id > 3 || wide > 1 {
            return None;
        }
        let size = if wide == 1 { 2 } else { 1 };
        let values = seg.get(1..1 + 64 * size)?;
        let mut q = [0i32; 64];
        for (k, &natural) in NATURAL[..64].iter().enumerate() {
            let v = if wide == 1 {
                be16(values, 2 * k)?
            } else {
                values[k] as usize
            };
            // 16-bit values (libjpeg multiplies by them as a `short`) are left to libjpeg.
            if v > 255 {
                return None;
            }
            q[natural as usize] = v as i32;
        }
        h.quant[id] = Some(q);
        seg = &seg[1 + 64 * size..];
    }
    Some(())
}

fn scan(seg: &[u8], h: &mut Header) -> Option<()> {
    let n = *seg.first()? as usize;
    if n != 3 {
        return None;
    }
    for s in 0..n {
        let (id, t) = (*seg.get(1 + 2 * s)?, *seg.get(2 + 2 * s)?);
        let c = h.components.iter().position(|c| c.id == id)?;
        if h.scan.contains(&c) {
            return None;
        }
        let comp = &mut h.components[c];
        (comp.dc, comp.ac) = ((t >> 4) as usize, (t & 15) as usize);
        if comp.dc > 3 || comp.ac > 3 {
            return None;
        }
        h.scan.push(c);
    }
    let at = 1 + 2 * n;
    (seg.get(at..at + 3)? == [0, 63, 0]).then_some(())
}

/// The entropy-coded data without its byte stuffing, as one buffer (8 zero bytes after it)
/// and the ranges of its restart intervals; `None` unless the scan ends at EOI after exactly
/// `intervals` intervals whose RST markers come in order.
pub(super) fn unstuff(
    b: &[u8],
    start: usize,
    intervals: usize,
) -> Option<(Vec<u8>, Vec<std::ops::Range<usize>>)> {
    let mut out = Vec::with_capacity(b.len() - start.min(b.len()) + 8);
    let mut segments = Vec::with_capacity(intervals);
    let (mut i, mut seg_start) = (start, 0);
    loop {
        let j = memchr::memchr(0xFF, b.get(i..)?)?;
        out.extend_from_slice(&b[i..i + j]);
        let mut k = i + j + 1;
        while *b.get(k)? == 0xFF {
            k += 1;
        }
        match b[k] {
            0x00 => out.push(0xFF),
            m @ 0xD0..=0xD7 => {
                if m as usize - 0xD0 != segments.len() % 8 {
                    return None;
                }
                segments.push(seg_start..out.len());
                seg_start = out.len();
            }
            0xD9 => {
                segments.push(seg_start..out.len());
                break;
            }
            _ => return None,
        }
        i = k + 1;
    }
    out.extend_from_slice(&[0; 8]);
    (segments.len() == intervals).then_some((out, segments))
}
