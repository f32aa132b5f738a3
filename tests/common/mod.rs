//! Helpers shared by the integration tests: fixtures, generated datasets, running `tl`.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// tests/fixtures/generated, made by scripts/dev/make_fixtures.py (run here if missing).
pub fn fixtures() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = root().join("tests/fixtures/generated");
        if !dir.join("parity.json").is_file() {
            let status = Command::new(python())
                .arg(root().join("scripts/dev/make_fixtures.py"))
                .status()
                .expect("running make_fixtures.py (run scripts/setup.sh first)");
            assert!(status.success(), "make_fixtures.py failed");
        }
        dir
    })
    .clone()
}

/// The Python with torch: `$TL_PYTHON`, else the project's `.venv`.
pub fn python() -> PathBuf {
    std::env::var_os("TL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"))
}

pub fn tiny() -> PathBuf {
    fixtures().join("backbones/tiny.json")
}

pub fn shared_data() -> Option<PathBuf> {
    let p = root().join("../shared/data");
    p.join("cats_dogs").is_dir().then_some(p)
}

/// What a skipped test (or part of one) lacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lacks {
    /// ../shared (real photos, real weights): under `CI=true` a skip for this reason fails
    /// when ../shared/data is there — the check that should have run did not.
    SharedData,
    /// Something of the machine (root, a kernel limit): skipped anywhere.
    Machine,
}

/// Say that `test` (or part of it) is skipped and why: on stderr, and in
/// target/tl-skipped-tests.txt, which scripts/test.sh lists at the end of the run.
pub fn skip(test: &str, reason: &str, lacks: Lacks) {
    if lacks == Lacks::SharedData
        && std::env::var("CI").is_ok_and(|v| v == "true")
        && shared_data().is_some()
    {
        panic!("{test}: skipped ({reason}) although ../shared/data is present (CI=true)");
    }
    eprintln!("SKIPPED {test}: {reason}");
    use std::io::Write;
    let list = root().join("target/tl-skipped-tests.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(list)
    {
        let _ = writeln!(f, "{test}: {reason}");
    }
}

pub struct Tl {
    pub cache: tempfile::TempDir,
}

impl Tl {
    pub fn new() -> Tl {
        Tl {
            cache: tempfile::tempdir().unwrap(),
        }
    }
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tl"));
        c.env("TL_CACHE_DIR", self.cache.path())
            .env("TL_BACKBONES", fixtures().join("backbones"))
            .env("TL_THREADS", "1")
            .env("TL_DEVICE", "cpu")
            .env_remove("RUST_BACKTRACE");
        c
    }
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        self.cmd().args(args).output().expect("running tl")
    }
    /// Run and require success; returns stdout.
    pub fn ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tl {:?} failed:\nstdout: {}\nstderr: {}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().to_string())
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
    /// Run and require a clean one-line failure; returns stderr.
    pub fn fails<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success(),
            "expected failure, got success: {stderr}"
        );
        assert_clean_error(&stderr);
        stderr
    }
}

/// One `tl: error:` line, no panic, no C++ backtrace.
pub fn assert_clean_error(stderr: &str) {
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(
        !stderr.contains("Exception raised from") && !stderr.contains("frame #"),
        "C++ trace: {stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tl: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line: {stderr}");
}

/// Class-per-folder dataset of colour-coded images: class k is dominated by one colour, with
/// noise, random size and a random JPEG/PNG format, so a linear head on any features can tell them apart.
pub fn color_dataset(dir: &Path, classes: &[&str], per_class: usize, seed: u64) {
    let palette = [
        [220u8, 40, 40],
        [40, 60, 220],
        [40, 200, 60],
        [230, 220, 40],
    ];
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for (k, class) in classes.iter().enumerate() {
        let cdir = dir.join(class);
        std::fs::create_dir_all(&cdir).unwrap();
        for i in 0..per_class {
            let w = 64 + (next() % 200) as u32;
            let h = 64 + (next() % 200) as u32;
            let base = palette[k % palette.len()];
            let mut img = image::RgbImage::new(w, h);
            for p in img.pixels_mut() {
                let n = (next() % 61) as i32 - 30;
                *p = image::Rgb(base.map(|c| (c as i32 + n).clamp(0, 255) as u8));
            }
            let path = if i % 3 == 0 {
                cdir.join(format!("{class}_{i}.png"))
            } else {
                cdir.join(format!("{class}_{i}.jpg"))
            };
            img.save(&path).unwrap();
        }
    }
}

/// A xorshift generator (tests need no crate for this).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub fn hsv(h: f64, s: f64, v: f64) -> [u8; 3] {
    let c = v * s;
    let x = c * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r, g, b].map(|t| ((t + m) * 255.0).round() as u8)
}

/// A flat colour with a little noise, of a random size.
pub fn flat_image(rng: &mut Rng, rgb: [u8; 3]) -> image::RgbImage {
    let (w, h) = (64 + (rng.next() % 96) as u32, 64 + (rng.next() % 96) as u32);
    let mut img = image::RgbImage::new(w, h);
    for p in img.pixels_mut() {
        let n = (rng.next() % 25) as i32 - 12;
        *p = image::Rgb(rgb.map(|c| (c as i32 + n).clamp(0, 255) as u8));
    }
    img
}

/// `red/` (hues 0, 20, 40°) and `blue/` (200, 220, 240°), 16 images each, every one its own
/// shade (hue × saturation × value on a grid: random shades can fall too close together for
/// the tiny network to tell apart), of a random size with random noise.
pub fn clean_dataset(dir: &Path, seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    for (class, hues) in [("red", [0.0, 20.0, 40.0]), ("blue", [200.0, 220.0, 240.0])] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        let shades = hues
            .iter()
            .flat_map(|&h| [0.55, 1.0].map(move |s| (h, s)))
            .flat_map(|(h, s)| [0.45, 0.7, 1.0].map(move |v| (h, s, v)));
        for (i, (h, s, v)) in shades.take(16).enumerate() {
            let img = flat_image(&mut rng, hsv(h, s, v));
            img.save(dir.join(class).join(format!("{class}_{i}.jpg")))
                .unwrap();
        }
    }
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// Files under `dir`, recursively, sorted.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The feature cache's segment files under `root`, sorted.
pub fn segments(root: &Path) -> Vec<PathBuf> {
    walk(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tlseg"))
        .collect()
}

/// A PNG as the networks take it, computed without `tl`'s code: pixels / 255, ImageNet
/// mean/std, `[1,3,H,W]`.
pub fn normalized_png(path: &Path) -> tch::Tensor {
    let img = image::open(path).unwrap().into_rgb8();
    let (w, h) = img.dimensions();
    let x = tch::Tensor::from_slice(img.as_raw())
        .view([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .to_kind(tch::Kind::Float)
        / 255.0;
    let mean = tch::Tensor::from_slice(&[0.485f32, 0.456, 0.406]).view([3, 1, 1]);
    let std = tch::Tensor::from_slice(&[0.229f32, 0.224, 0.225]).view([3, 1, 1]);
    ((x - mean) / std).unsqueeze(0)
}

/// Copy the tiny fixture backbone's files (`tiny.*`) into `dest` (created).
pub fn copy_tiny_backbone(dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(tiny().parent().unwrap())
        .unwrap()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with("tiny.") {
            std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
        }
    }
}

/// Run `cmd` (stdout and stderr captured), killing it if it is still running after `secs`:
/// a hang fails the test instead of stalling it. The watchdog stands down as soon as the
/// process ends, so it never signals a reused process id.
pub fn output_within(cmd: &mut Command, secs: u64) -> Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running tl");
    let pid = child.id() as i32;
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if wait
            .recv_timeout(std::time::Duration::from_secs(secs))
            .is_err()
        {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().expect("waiting for tl");
    let _ = done.send(());
    let _ = watchdog.join();
    out
}
