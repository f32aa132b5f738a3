//! The entropy decoder: libjpeg's Huffman tables, the AC skipping table, the bit reader.
/// Codes up to this long are decoded by one lookup.
pub(super) const FAST_BITS: u32 = 9;
/// Lookahead of the AC skipping table.
const SKIP_BITS: u32 = 11;

/// libjpeg's `jpeg_natural_order`, with the 16 extra entries that send a corrupt run past
/// the block's end to its last coefficient.
pub(super) const NATURAL: [u8; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

/// A Huffman table as libjpeg derives it (`jpeg_make_d_derived_tbl`), with a one-lookup
/// table for short codes.
pub(super) struct Huffman {
    /// `length << 8 | symbol` for codes of at most [`FAST_BITS`]; 0: a longer code.
    fast: Vec<u16>,
    /// The largest code of each length (-1: none).
    maxcode: [i32; 17],
    valoffset: [i32; 17],
    values: [u8; 256],
}

impl Huffman {
    /// `None` for a table libjpeg would refuse.
    pub(super) fn new(counts: &[u8; 16], symbols: &[u8], dc: bool) -> Option<Huffman> {
        if symbols.len() > 256 || (dc && symbols.iter().any(|&s| s > 15)) {
            return None;
        }
        let mut sizes = Vec::with_capacity(symbols.len());
        for (l, &n) in counts.iter().enumerate() {
            sizes.extend(std::iter::repeat_n(l as u32 + 1, n as usize));
        }
        let mut codes = Vec::with_capacity(sizes.len());
        let (mut code, mut si, mut p) = (0u32, sizes.first().copied().unwrap_or(1), 0);
        while p < sizes.len() {
            while p < sizes.len() && sizes[p] == si {
                codes.push(code);
                code += 1;
                p += 1;
            }
            if code >= 1 << si {
                return None;
            }
            code <<= 1;
            si += 1;
        }
        let mut h = Huffman {
            fast: vec![0; 1 << FAST_BITS],
            maxcode: [-1; 17],
            valoffset: [0; 17],
            values: [0; 256],
        };
        h.values[..symbols.len()].copy_from_slice(symbols);
        let mut p = 0;
        for l in 1..=16 {
            let n = counts[l - 1] as usize;
            if n > 0 {
                h.valoffset[l] = p as i32 - codes[p] as i32;
                p += n;
                h.maxcode[l] = codes[p - 1] as i32;
            }
        }
        for (i, (&size, &code)) in sizes.iter().zip(&codes).enumerate() {
            if size <= FAST_BITS {
                let shift = FAST_BITS - size;
                let first = (code << shift) as usize;
                let entry = (size as u16) << 8 | symbols[i] as u16;
                h.fast[first..first + (1 << shift)].fill(entry);
            }
        }
        Some(h)
    }

    /// The symbol whose code starts `bits` (`len` bits, MSB first), and its length.
    fn symbol_in(&self, bits: u32, len: u32) -> Option<(u32, u8)> {
        for l in 1..=len.min(16) {
            let c = (bits >> (len - l)) as i32;
            if c <= self.maxcode[l as usize] {
                let i = (c + self.valoffset[l as usize]) as usize & 0xFF;
                return Some((l, self.values[i]));
            }
        }
        None
    }

    /// For each [`SKIP_BITS`]-bit lookahead: how many whole AC symbols (code and extra bits)
    /// it holds, as `bits | coefficients advanced << 8 | ends with EOB << 16` (0: none).
    pub(super) fn skip_table(&self) -> Vec<u32> {
        (0..1u32 << SKIP_BITS)
            .map(|p| {
                let (mut used, mut advance, mut eob) = (0, 0, 0);
                while let Some((l, sym)) =
                    self.symbol_in(p & ((1 << (SKIP_BITS - used)) - 1), SKIP_BITS - used)
                {
                    let (run, size) = (sym as u32 >> 4, sym as u32 & 15);
                    if l + size > SKIP_BITS - used {
                        break;
                    }
                    used += l + size;
                    match (size, run) {
                        (0, 15) => advance += 16,
                        (0, _) => {
                            eob = 1;
                            break;
                        }
                        _ => advance += run + 1,
                    }
                }
                used | advance << 8 | eob << 16
            })
            .collect()
    }
}

/// An MSB-first bit reader over unstuffed entropy data (followed by 8 zero bytes).
#[derive(Clone, Copy)]
pub(super) struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u64,
    n: u32,
}

impl<'a> Bits<'a> {
    pub(super) fn new(data: &'a [u8], start: usize) -> Self {
        Bits {
            data,
            pos: start,
            buf: 0,
            n: 0,
        }
    }

    /// At least 56 bits in the buffer (zeros past the data). Called before every symbol:
    /// cheaper than a branch on the bit count that mispredicts.
    #[inline(always)]
    fn refill(&mut self) {
        if let Some(b) = self.data.get(self.pos..self.pos + 8) {
            let v = u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
            self.buf |= v >> self.n;
            self.pos += ((63 - self.n) >> 3) as usize;
            self.n |= 56;
        } else {
            while self.n <= 56 {
                let b = self.data.get(self.pos).copied().unwrap_or(0) as u64;
                self.buf |= b << (56 - self.n);
                self.pos += 1;
                self.n += 8;
            }
        }
    }

    /// Bits consumed since byte `start`.
    pub(super) fn consumed_since(&self, start: usize) -> usize {
        (self.pos - start) * 8 - self.n as usize
    }

    #[inline(always)]
    fn peek(&self, k: u32) -> u32 {
        (self.buf >> (64 - k)) as u32
    }

    #[inline(always)]
    fn drop(&mut self, k: u32) {
        self.buf <<= k;
        self.n -= k;
    }

    /// `s` bits as a signed coefficient (HUFF_EXTEND); needs `s` ≤ 16 bits buffered.
    #[inline(always)]
    fn extend(&mut self, s: u32) -> i32 {
        // Branch-free (the sign is a coin toss): libjpeg-turbo's HUFF_EXTEND; 0 for s = 0.
        let v = ((self.buf >> (63 - s)) >> 1) as i32;
        self.drop(s);
        v + (((v - ((1 << s) >> 1)) >> 31) & ((-1 << s) + 1))
    }

    /// One Huffman symbol; needs 16 bits buffered.
    #[inline(always)]
    fn symbol(&mut self, h: &Huffman) -> Option<u32> {
        let e = h.fast[self.peek(FAST_BITS) as usize];
        if e != 0 {
            self.drop((e >> 8) as u32);
            return Some((e & 0xFF) as u32);
        }
        let code = self.peek(16);
        for l in FAST_BITS + 1..=16 {
            let c = (code >> (16 - l)) as i32;
            if c <= h.maxcode[l as usize] {
                self.drop(l);
                return Some(h.values[(c + h.valoffset[l as usize]) as usize & 0xFF] as u32);
            }
        }
        None
    }

    /// The DC difference of a block.
    #[inline(always)]
    pub(super) fn dc(&mut self, h: &Huffman) -> Option<i32> {
        self.refill();
        let s = self.symbol(h)?;
        Some(self.extend(s))
    }

    /// Pass over a block's AC coefficients.
    #[inline(always)]
    pub(super) fn skip_ac(&mut self, h: &Huffman, skip: &[u32]) -> Option<()> {
        let mut k = 1;
        while k < 64 {
            self.refill();
            let e = skip[self.peek(SKIP_BITS) as usize];
            let (used, advance, eob) = (e & 0xFF, (e >> 8) & 0xFF, e >> 16);
            if used != 0 && k + advance + eob <= 64 {
                self.drop(used);
                k += advance;
                if eob != 0 {
                    break;
                }
                continue;
            }
            let sym = self.symbol(h)?;
            let (run, size) = (sym >> 4, sym & 15);
            if size != 0 {
                k += run + 1;
                self.drop(size);
            } else if run == 15 {
                k += 16;
            } else {
                break;
            }
        }
        Some(())
    }

    /// A block's AC coefficients, in natural order; whether any was decoded.
    #[inline(always)]
    pub(super) fn ac(&mut self, h: &Huffman, block: &mut [i16; 64]) -> Option<bool> {
        let mut any = false;
        let mut k = 1;
        while k < 64 {
            self.refill();
            let sym = self.symbol(h)?;
            let (run, size) = (sym >> 4, sym & 15);
            if size != 0 {
                k += run;
                block[NATURAL[k as usize] as usize] = self.extend(size) as i16;
                any = true;
                k += 1;
            } else if run == 15 {
                k += 16;
            } else {
                break;
            }
        }
        Some(any)
    }
}
