//! Numbers and hashes as text, and the seeded RNG behind every split and shuffle.

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SplitMix64: a tiny, fully specified generator, so that shuffles and splits made with a
/// seed stay the same across crate upgrades and platforms.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }
    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Parse a finite number that may be written as a fraction, e.g. `4/255` or `0.0157`.
pub fn parse_fraction(text: &str) -> crate::error::Result<f64> {
    use crate::error::TlError;
    let text = text.trim();
    let number = |s: &str| {
        s.trim()
            .parse::<f64>()
            .map_err(|_| TlError::invalid(format!("'{text}' is not a number or fraction")))
    };
    let value = match text.split_once('/') {
        Some((num, den)) => {
            let den = number(den)?;
            if den == 0.0 {
                return Err(TlError::invalid(format!("'{text}' divides by zero")));
            }
            number(num)? / den
        }
        None => number(text)?,
    };
    if !value.is_finite() {
        return Err(TlError::invalid(format!("'{text}' is not finite")));
    }
    Ok(value)
}

/// Seconds as a short human string.
/// `532 B`, `14.2 KB`, `13.6 MB`, `1.2 GB` (powers of 1000).
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        _ if n < 1e3 => format!("{n} B"),
        _ if n < 1e6 => format!("{:.1} KB", n / 1e3),
        _ if n < 1e9 => format!("{:.1} MB", n / 1e6),
        _ => format!("{:.1} GB", n / 1e9),
    }
}

pub fn human_duration(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    }
}

/// Lines of text safe to print on a terminal: as [`printable`], keeping newlines and tabs.
pub fn terminal_safe(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| {
            let (body, end) = match line.strip_suffix('\n') {
                Some(b) => (b, "\n"),
                None => (line, ""),
            };
            let fields: Vec<String> = body.split('\t').map(printable).collect();
            fields.join("\t") + end
        })
        .collect()
}

/// `text` safe to print on a terminal: control characters and bidirectional overrides
/// (which could recolour, hide or reorder what follows) are shown as `\u{…}` escapes.
pub fn printable(text: &str) -> String {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
    };
    if !text.chars().any(unsafe_char) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if unsafe_char(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_escaped_for_terminals() {
        // (text, printed)
        let cases = [
            ("cat\tdog 0.9\n", "cat\tdog 0.9\n"),
            ("\u{1b}[31mred\u{7}\n", "\\u{1b}[31mred\\u{7}\n"),
            ("abc\u{202e}gpj.exe", "abc\\u{202e}gpj.exe"),
            ("ünïcødé – ok", "ünïcødé – ok"),
            ("a\rb", "a\\u{d}b"),
        ];
        for (text, want) in cases {
            assert_eq!(terminal_safe(text), want, "{text:?}");
        }
    }

    #[test]
    fn fractions_parse() {
        assert!((parse_fraction("4/255").unwrap() - 4.0 / 255.0).abs() < 1e-12);
        assert_eq!(parse_fraction("0.5").unwrap(), 0.5);
        assert!(parse_fraction("1/0").is_err());
        assert!(parse_fraction("abc").is_err());
        assert!(parse_fraction("inf").is_err());
        assert!(parse_fraction("NaN").is_err());
    }

    #[test]
    fn splitmix_is_stable() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut v: Vec<u32> = (0..100).collect();
        SplitMix64::new(1).shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
