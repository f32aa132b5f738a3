//! Value parsers: each flag's number is checked when it is parsed (finite, in range), so a
//! bad value fails at once with clap naming the flag, before any image is read.
use tl::util::parse_fraction;

/// Why a flag's value was refused (clap prints it after the flag's name).
#[derive(Debug)]
pub struct BadValue(pub String);

impl std::fmt::Display for BadValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadValue {}

impl From<&str> for BadValue {
    fn from(s: &str) -> Self {
        BadValue(s.to_string())
    }
}

impl From<String> for BadValue {
    fn from(s: String) -> Self {
        BadValue(s)
    }
}

impl From<tl::error::TlError> for BadValue {
    fn from(e: tl::error::TlError) -> Self {
        BadValue(e.to_string())
    }
}

/// A parsed flag value, or why it was refused.
pub type Parsed<T> = Result<T, BadValue>;

/// A whole number >= 1.
pub fn at_least_one(s: &str) -> Parsed<usize> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(BadValue(format!("'{s}' is not a whole number"))),
    }
}

/// A calendar date `YYYY-MM-DD`, as the start of that day in local time.
pub fn date(s: &str) -> Parsed<std::time::SystemTime> {
    let day = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| format!("'{s}' is not a date like 2026-01-31"))?;
    let time = day
        .and_hms_opt(0, 0, 0)
        .and_then(|t| t.and_local_timezone(chrono::Local).earliest())
        .map(std::time::SystemTime::from)
        .ok_or_else(|| format!("'{s}' is not a valid local date"))?;
    // A future date would count everything, a run in progress included, as unused.
    if time > std::time::SystemTime::now() {
        return Err(BadValue(format!("'{s}' is in the future")));
    }
    Ok(time)
}

/// A shard `K/N` (0-based).
pub fn shard(s: &str) -> Parsed<tl::data::shard::Shard> {
    tl::data::shard::Shard::parse(s).map_err(|e| BadValue(e.to_string()))
}

/// The Python of the environment whose libtorch `tl` was built against (it has torch), or
/// `python3`.
pub fn default_python() -> std::path::PathBuf {
    match option_env!("TL_BUILD_PYTHON") {
        Some(p) if std::path::Path::new(p).is_file() => p.into(),
        _ => "python3".into(),
    }
}

/// A share of known images to accept: a finite number in (0, 1].
pub fn accept(s: &str) -> Parsed<f64> {
    let v = parse_fraction(s)?;
    tl::head::unknown::check_accept(v)
        .map(|_| v)
        .map_err(|_| "must be a share in (0, 1], e.g. 0.95".into())
}

/// A learning rate: a number in (0, 1e30]. From about 3e38 a rate overflows float32 inside
/// libtorch's optimiser (a crash, not an error); below that, a rate too large makes training
/// diverge, which `tl` reports as such.
pub fn learning_rate(s: &str) -> Parsed<f64> {
    let v = positive(s)?;
    if v <= 1e30 {
        Ok(v)
    } else {
        Err("must be a learning rate in (0, 1e30] (float32 overflows beyond)".into())
    }
}

/// A loss weight (total variation, L2, diversity): a number in [0, 1e6]. Beyond that the
/// term swamps everything and overflows float32 (a black image, not an error).
pub fn weight(s: &str) -> Parsed<f64> {
    let v = non_negative(s)?;
    if v <= 1e6 {
        Ok(v)
    } else {
        Err("must be a weight in [0, 1e6]".into())
    }
}

/// A thread count: 1 to 1024 (more would only exhaust memory and the process table).
pub fn threads(s: &str) -> Parsed<usize> {
    match at_least_one(s)? {
        n if n <= 1024 => Ok(n),
        _ => Err("must be between 1 and 1024".into()),
    }
}

/// A finite number > 0.
pub fn positive(s: &str) -> Parsed<f64> {
    let v = parse_fraction(s)?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err("must be a number > 0".into())
    }
}

/// A finite number >= 0.
pub fn non_negative(s: &str) -> Parsed<f64> {
    let v = parse_fraction(s)?;
    if v >= 0.0 {
        Ok(v)
    } else {
        Err("must be a number >= 0".into())
    }
}

/// A finite number in [0, 1).
pub fn unit_interval(s: &str) -> Parsed<f64> {
    let v = parse_fraction(s)?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be in [0, 1)".into())
    }
}

/// A finite number in (0, 1).
pub fn open_fraction(s: &str) -> Parsed<f64> {
    let v = parse_fraction(s)?;
    if v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err("must be in (0, 1)".into())
    }
}

/// `auto`, or a finite number >= 0.
pub fn l2(s: &str) -> Parsed<tl::workflow::train::L2> {
    use tl::workflow::train::L2;
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(L2::Auto);
    }
    weight(s)
        .map(L2::Fixed)
        .map_err(|_| "must be 'auto' or a number in [0, 1e6]".into())
}

/// A device name: auto, cpu, cuda or cuda:N.
pub fn device(s: &str) -> Parsed<tl::device::DeviceChoice> {
    Ok(s.parse()?)
}

/// `--finetune`: a number of top blocks (>= 1) or `all`.
pub fn unfreeze(s: &str) -> Parsed<tl::features::Unfreeze> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(tl::features::Unfreeze::All);
    }
    at_least_one(s)
        .map(tl::features::Unfreeze::Blocks)
        .map_err(|e| BadValue(format!("{e}; give a number of top blocks or 'all'")))
}

/// `--tta`: test-time augmentation.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TtaArg {
    /// The eval transform only.
    None,
    /// Average the image and its mirror image.
    Flip,
}

impl TtaArg {
    pub fn setting(self) -> tl::workflow::evaluate::Tta {
        match self {
            TtaArg::None => tl::workflow::evaluate::Tta::None,
            TtaArg::Flip => tl::workflow::evaluate::Tta::Flip,
        }
    }
}

/// `--engine`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    Auto,
    Torch,
    Onnx,
    Openvino,
}

impl EngineArg {
    pub fn setting(self) -> tl::runtime::EngineChoice {
        match self {
            EngineArg::Auto => tl::runtime::EngineChoice::Auto,
            EngineArg::Torch => tl::runtime::EngineChoice::Torch,
            EngineArg::Onnx => tl::runtime::EngineChoice::Onnx,
            EngineArg::Openvino => tl::runtime::EngineChoice::OpenVino,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    Auto,
    Fp32,
    Bf16,
}

impl PrecisionArg {
    pub fn setting(self) -> tl::runtime::PrecisionChoice {
        match self {
            PrecisionArg::Auto => tl::runtime::PrecisionChoice::Auto,
            PrecisionArg::Fp32 => tl::runtime::PrecisionChoice::Fp32,
            PrecisionArg::Bf16 => tl::runtime::PrecisionChoice::Bf16,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DecodeArg {
    Full,
    Draft,
}

impl DecodeArg {
    pub fn setting(self) -> tl::runtime::DecodeMode {
        match self {
            DecodeArg::Full => tl::runtime::DecodeMode::Full,
            DecodeArg::Draft => tl::runtime::DecodeMode::Draft,
        }
    }
}

/// A duration: `90s`, `10m`, `1h`, `1h30m` or plain seconds; in seconds, > 0.
pub fn duration(s: &str) -> Parsed<f64> {
    let text = s.trim();
    if let Ok(v) = text.parse::<f64>() {
        return if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err("must be a duration > 0 (e.g. 90s, 10m, 1h)".into())
        };
    }
    let mut total = 0.0;
    let mut number = String::new();
    for c in text.chars() {
        match c {
            '0'..='9' | '.' => number.push(c),
            'h' | 'm' | 's' if !number.is_empty() => {
                let v: f64 = number
                    .parse()
                    .map_err(|_| BadValue(format!("'{s}' is not a duration")))?;
                total += v * match c {
                    'h' => 3600.0,
                    'm' => 60.0,
                    _ => 1.0,
                };
                number.clear();
            }
            _ => {
                return Err(BadValue(format!(
                    "'{s}' is not a duration (e.g. 90s, 10m, 1h)"
                )))
            }
        }
    }
    if !(number.is_empty() && total.is_finite() && total > 0.0) {
        return Err(BadValue(format!(
            "'{s}' is not a duration > 0 (e.g. 90s, 10m, 1h)"
        )));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_table() {
        let cases: &[(&str, Option<f64>)] = &[
            ("90", Some(90.0)),
            ("90s", Some(90.0)),
            ("10m", Some(600.0)),
            ("1h30m", Some(5400.0)),
            ("1.5m", Some(90.0)),
            ("0", None),
            ("-5", None),
            ("10x", None),
            ("m", None),
            ("10m5", None),
        ];
        for (text, want) in cases {
            assert_eq!(duration(text).ok(), *want, "{text}");
        }
    }
}
