//! Where backbones are found, and how a known one gets there on first use.
//!
//! `--backbone NAME` is looked up, in order, in the folder given by `--backbones-dir` /
//! `TL_BACKBONES` (when given), in `./backbones` (when it exists: the folder
//! `scripts/export_backbones.py` writes by default), and in the per-user store,
//! `$TL_HOME/backbones` (`TL_HOME` defaults to the XDG data folder: `~/.local/share/tl`).
//! Not the feature cache's folder: `tl cache gc` owns that one, and an export is not
//! disposable (VGG16's weights are a 528 MB download).
//!
//! A torchvision classifier name that is in none of them (vgg16, resnet50, mobilenet_v2, …:
//! [`KNOWN_MODELS`]) is exported into the store on first use by the export script (embedded
//! in the binary, run from a temporary file by the Python that has torch, isolated with
//! `-I`): its weights are
//! `--weights FILE` when given, else a file for it in `$TL_HOME/weights` (torchvision's name,
//! e.g. `vgg16-397923af.pth`, or `NAME.safetensors` / `NAME-*.safetensors`), else
//! torchvision's own download (checked against its hash; found without a download when it is
//! already in torch's cache). Random weights are only ever exported when asked for
//! (`--weights none`).
//!
//! Concurrent first uses export once: the exporter holds an exclusive lock on
//! `store/.NAME.lock` (flock; released if the process dies), writes into a hidden temporary
//! folder beside the store and renames each file into place, the sidecar last: a reader sees
//! the backbone whole or not at all.
use crate::error::{IoContext, Result, TlError};
use crate::util::fs::FileLock;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The export script, written to a temporary file and run with `python -I`.
const EXPORT_SCRIPT: &str = include_str!("../scripts/export_backbones.py");

/// torchvision 0.28's classification models (`torchvision.models.list_models`), the names
/// exported on first use; scripts/tests/test_backbones.py checks the list.
pub const KNOWN_MODELS: &[&str] = &[
    "alexnet",
    "convnext_base",
    "convnext_large",
    "convnext_small",
    "convnext_tiny",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_v2_l",
    "efficientnet_v2_m",
    "efficientnet_v2_s",
    "googlenet",
    "inception_v3",
    "maxvit_t",
    "mnasnet0_5",
    "mnasnet0_75",
    "mnasnet1_0",
    "mnasnet1_3",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "regnet_x_16gf",
    "regnet_x_1_6gf",
    "regnet_x_32gf",
    "regnet_x_3_2gf",
    "regnet_x_400mf",
    "regnet_x_800mf",
    "regnet_x_8gf",
    "regnet_y_128gf",
    "regnet_y_16gf",
    "regnet_y_1_6gf",
    "regnet_y_32gf",
    "regnet_y_3_2gf",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "regnet_y_8gf",
    "resnet101",
    "resnet152",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "resnext50_32x4d",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
    "squeezenet1_0",
    "squeezenet1_1",
    "swin_b",
    "swin_s",
    "swin_t",
    "swin_v2_b",
    "swin_v2_s",
    "swin_v2_t",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "vit_b_16",
    "vit_b_32",
    "vit_h_14",
    "vit_l_16",
    "vit_l_32",
    "wide_resnet101_2",
    "wide_resnet50_2",
];

/// The weights of an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Weights {
    /// torchvision's ImageNet weights: a file in the weights folder, or the download.
    ImageNet,
    /// A torchvision `state_dict` (`.pth`, `.pt`, `.safetensors`).
    File(PathBuf),
    /// Random initialisation (shapes and speed only).
    Random,
}

impl Weights {
    /// `imagenet`, `none` or a file path.
    pub fn parse(s: &str) -> Weights {
        match s {
            "imagenet" => Weights::ImageNet,
            "none" => Weights::Random,
            path => Weights::File(PathBuf::from(path)),
        }
    }
}

/// The folders backbones are looked up in, and where new ones are exported.
#[derive(Clone, Debug)]
pub struct BackboneStore {
    /// Searched in order.
    pub search: Vec<PathBuf>,
    /// The per-user store: first uses and `tl backbones add` export here.
    pub store: PathBuf,
    /// Weights files handed over for exports.
    pub weights_dir: PathBuf,
    /// The Python (with torch and torchvision) that runs the export script.
    pub python: PathBuf,
    /// Weights for a first-use export (None: ImageNet).
    pub weights: Option<Weights>,
    /// Export known names on first use.
    pub auto_export: bool,
    /// Show the export script's output (torchvision's download bar) on stderr.
    pub show_progress: bool,
}

/// The settings a store is made from (the CLI's global flags and environment).
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// `--backbones-dir` / `TL_BACKBONES`.
    pub explicit: Option<PathBuf>,
    /// `TL_HOME` (None: the XDG data folder's `tl`).
    pub home: Option<PathBuf>,
    pub python: PathBuf,
    pub weights: Option<Weights>,
    pub show_progress: bool,
}

/// `$TL_HOME`, or `~/.local/share/tl` (the XDG data folder).
pub fn default_home() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("tl")
}

impl BackboneStore {
    pub fn new(s: &StoreSettings) -> BackboneStore {
        let home = s.home.clone().unwrap_or_else(default_home);
        let store = home.join("backbones");
        let mut search: Vec<PathBuf> = s.explicit.iter().cloned().collect();
        let local = PathBuf::from("backbones");
        if local.is_dir() && s.explicit.as_deref() != Some(local.as_path()) {
            search.push(local);
        }
        if !search.contains(&store) {
            search.push(store.clone());
        }
        BackboneStore {
            search,
            store,
            weights_dir: home.join("weights"),
            python: s.python.clone(),
            weights: s.weights.clone(),
            auto_export: true,
            show_progress: s.show_progress,
        }
    }

    /// One folder, nothing exported into it on first use (library users, tests).
    pub fn folder(dir: impl Into<PathBuf>) -> BackboneStore {
        let dir = dir.into();
        BackboneStore {
            search: vec![dir.clone()],
            weights_dir: dir.join("weights"),
            store: dir,
            python: PathBuf::from("python3"),
            weights: None,
            auto_export: false,
            show_progress: false,
        }
    }

    /// The sidecar of `name` in the first folder that has one.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        self.search
            .iter()
            .map(|d| d.join(format!("{name}.json")))
            .find(|p| p.is_file())
    }

    /// Every exported backbone: (name, sidecar), the first folder's copy of each name.
    pub fn all(&self) -> Vec<(String, PathBuf)> {
        let mut seen = std::collections::BTreeMap::new();
        for dir in &self.search {
            for name in list(dir) {
                seen.entry(name.clone())
                    .or_insert_with(|| dir.join(format!("{name}.json")));
            }
        }
        seen.into_iter().collect()
    }

    /// Is `name` one the store can export on first use?
    pub fn can_export(&self, name: &str) -> bool {
        self.auto_export && KNOWN_MODELS.contains(&name)
    }

    /// The weights a first-use export of `name` takes: the chosen ones, or ImageNet's.
    pub fn first_use_weights(&self) -> Weights {
        self.weights.clone().unwrap_or(Weights::ImageNet)
    }

    /// A weights file for `name` in the weights folder: torchvision's file name
    /// (`NAME-HASH.pth`) or `NAME.safetensors` / `NAME-*.safetensors`.
    pub fn handed_over(&self, name: &str) -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&self.weights_dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let Some(file) = p.file_name().and_then(|n| n.to_str()) else {
                    return false;
                };
                let stem_ok = file
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('.'));
                let ext_ok = [".pth", ".pt", ".safetensors"]
                    .iter()
                    .any(|e| file.ends_with(e));
                stem_ok && ext_ok && p.is_file()
            })
            .collect();
        found.sort();
        found.into_iter().next()
    }

    /// Say on stderr what a first use is about to do (it may take minutes).
    pub fn announce(&self, name: &str, weights: &Weights) {
        let source = match weights {
            Weights::Random => "random weights (--weights none)".to_string(),
            Weights::File(p) => format!("weights from {}", p.display()),
            Weights::ImageNet => match self.handed_over(name) {
                Some(p) => format!("ImageNet weights from {}", p.display()),
                None => "ImageNet weights, downloaded once by torchvision".to_string(),
            },
        };
        crate::progress::say(&format!(
            "backbone '{name}' is not exported yet: exporting it into {} ({source}; once)",
            self.store.display()
        ));
    }

    /// Export `name` with `weights` into the store; `force` replaces an existing export.
    /// Returns the sidecar, and whether this call exported it (false: it was there, or
    /// another process exported it meanwhile). Concurrent calls export once (see the module
    /// comment).
    pub fn export(&self, name: &str, weights: &Weights, force: bool) -> Result<(PathBuf, bool)> {
        if !KNOWN_MODELS.contains(&name) && name != "tiny" {
            return Err(TlError::invalid(format!(
                "'{name}' is not a torchvision classifier tl can export (e.g. {}); export other models with scripts/export_backbones.py or pass a TorchScript file",
                "vgg16, resnet50, mobilenet_v2, efficientnet_b0, convnext_tiny"
            )));
        }
        std::fs::create_dir_all(&self.store).with_path(&self.store)?;
        let _lock = FileLock::exclusive(&self.store.join(format!(".{name}.lock")))?;
        let sidecar = self.store.join(format!("{name}.json"));
        if sidecar.is_file() && !force {
            return Ok((sidecar, false));
        }
        remove_stale_staging(&self.store, name);
        let staging = self
            .store
            .join(format!(".export-{name}-{}", std::process::id()));
        let result = self
            .run_script(name, weights, &staging)
            .and_then(|()| publish(&staging, &self.store, name));
        let _ = std::fs::remove_dir_all(&staging);
        result.map(|()| (sidecar, true))
    }

    fn run_script(&self, name: &str, weights: &Weights, out: &Path) -> Result<()> {
        let weights_arg = match weights {
            Weights::Random => "none".to_string(),
            Weights::File(p) => p.display().to_string(),
            Weights::ImageNet => match self.handed_over(name) {
                Some(p) => p.display().to_string(),
                None => "imagenet".to_string(),
            },
        };
        // A file, not `-c`: the script scripts modules with TorchScript, which reads source.
        let scratch = tempfile::tempdir()
            .map_err(|e| TlError::invalid(format!("a temporary folder: {e}")))?;
        let script = scratch.path().join("export_backbones.py");
        std::fs::write(&script, EXPORT_SCRIPT).with_path(&script)?;
        let mut cmd = Command::new(&self.python);
        // The exporter dies with tl: a killed first use leaves no process writing on.
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .arg("-I")
            .arg(&script)
            .arg(name)
            .arg("--weights")
            .arg(&weights_arg)
            .arg("--out")
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                TlError::invalid(format!(
                    "cannot run Python '{}' to export backbone '{name}' ({e}); set TL_PYTHON to a Python with torch and torchvision (scripts/setup.sh makes .venv/bin/python)",
                    self.python.display()
                ))
            })?;
        let mut stderr = Vec::new();
        if let Some(pipe) = child.stderr.take() {
            stderr = relay(pipe, self.show_progress);
        }
        let status = child
            .wait()
            .map_err(|e| TlError::invalid(format!("exporting backbone '{name}': {e}")))?;
        if status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&stderr);
        let tagged = |tag: &str| {
            text.lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix(tag))
                .map(str::trim)
        };
        // The script's exit status says what failed; its tagged lines say the details.
        if status.code() == Some(DOWNLOAD_FAILED) && *weights == Weights::ImageNet {
            return Err(self.download_error(name, tagged("export_backbones: url: ")));
        }
        let why = tagged("export_backbones: error: ")
            .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("no message")
            .trim();
        Err(TlError::invalid(format!(
            "exporting backbone '{name}' failed: {why}"
        )))
    }

    /// One line: the weights could not be downloaded; which file to hand over, and where.
    fn download_error(&self, name: &str, url: Option<&str>) -> TlError {
        let file = url
            .and_then(|u| u.rsplit('/').next())
            .unwrap_or("its weights file");
        TlError::invalid(format!(
            "backbone '{name}' is not exported and its ImageNet weights could not be downloaded (offline?): put {file}{} in {}, or pass --weights FILE (a torchvision state_dict)",
            url.map(|u| format!(" (from {u})")).unwrap_or_default(),
            self.weights_dir.display(),
        ))
    }
}

/// scripts/export_backbones.py's exit status when the weights could not be downloaded.
const DOWNLOAD_FAILED: i32 = 3;

/// Names of the backbones exported in `dir` (their sidecars).
pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    name.strip_suffix(".json").map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Read the export script's stderr to the end; with `show`, pass it on as it comes (the
/// download's progress bar redraws with `\r`), except its error line, which `tl` rewords.
fn relay(mut pipe: impl Read, show: bool) -> Vec<u8> {
    use std::io::Write;
    let mut all = Vec::new();
    let mut start = 0;
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        while let Some(end) = all[start..].iter().position(|&b| b == b'\n' || b == b'\r') {
            let segment = &all[start..=start + end];
            if show && !segment.starts_with(b"export_backbones: error:") {
                let _ = std::io::stderr().write_all(segment);
            }
            start += end + 1;
        }
    }
    all
}

/// The files a backbone's sidecar names in its folder, with the sha256 recorded for each
/// (the source weights file it was made from is not one of them).
pub fn sidecar_files(sidecar: &Path) -> Result<Vec<(PathBuf, Option<String>)>> {
    let value: serde_json::Value = crate::util::read_json(sidecar)?;
    let dir = sidecar.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    collect_files(&value, dir, &mut out);
    // A file may be named twice (the bf16 export is the plain one when no layer needed
    // rounding by calibration): once each, or publishing would move it twice.
    let mut seen = std::collections::HashSet::new();
    out.retain(|(path, _)| seen.insert(path.clone()));
    Ok(out)
}

fn collect_files(v: &serde_json::Value, dir: &Path, out: &mut Vec<(PathBuf, Option<String>)>) {
    match v {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if key == "weights" {
                    continue;
                }
                let is_file_key = key == "file" || key.ends_with("_file");
                if let (true, Some(file)) = (is_file_key, value.as_str()) {
                    // Names only: a sidecar never points outside its folder.
                    if Path::new(file).components().count() == 1 {
                        let sha_key = format!("{}sha256", key.trim_end_matches("file"));
                        let sha = map.get(&sha_key).and_then(|s| s.as_str()).map(String::from);
                        out.push((dir.join(file), sha));
                    }
                } else {
                    collect_files(value, dir, out);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_files(item, dir, out);
            }
        }
        _ => {}
    }
}

/// Move every file of the staged export into `store`, the sidecar last.
fn publish(staging: &Path, store: &Path, name: &str) -> Result<()> {
    let sidecar = staging.join(format!("{name}.json"));
    if !sidecar.is_file() {
        return Err(TlError::corrupt(staging, "the export wrote no sidecar"));
    }
    for (file, _) in sidecar_files(&sidecar)? {
        if let Some(base) = file.file_name() {
            std::fs::rename(&file, store.join(base)).with_path(&file)?;
        }
    }
    std::fs::rename(&sidecar, store.join(format!("{name}.json"))).with_path(&sidecar)
}

/// Staging folders of exports whose process died (the lock is ours, so none is live).
fn remove_stale_staging(store: &Path, name: &str) {
    let prefix = format!(".export-{name}-");
    if let Ok(rd) = std::fs::read_dir(store) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_files_are_the_folder_files_with_their_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let sidecar = dir.path().join("m.json");
        let json = serde_json::json!({
            "features_file": "m.features.pt", "features_sha256": "aa",
            "classifier_file": "m.classifier.pt", "classifier_sha256": "bb",
            "weights": {"file": "/somewhere/else.pth", "sha256": "cc"},
            "cuts": [{"top_file": "m.top1.pt", "trunk_file": "m.trunk1.pt", "trunk_sha256": "dd"}],
            "onnx": {"features": {"file": "m.features.onnx", "sha256": "ee"},
                     "features_bf16": {"file": "m.features.onnx", "sha256": "ee"}},
            "layers": {"file": "../escape.pt", "sha256": "ff"}
        });
        std::fs::write(&sidecar, json.to_string()).unwrap();
        let mut got: Vec<(String, Option<String>)> = sidecar_files(&sidecar)
            .unwrap()
            .into_iter()
            .map(|(p, s)| (p.file_name().unwrap().to_string_lossy().into_owned(), s))
            .collect();
        got.sort();
        let want = [
            ("m.classifier.pt", Some("bb")),
            ("m.features.onnx", Some("ee")),
            ("m.features.pt", Some("aa")),
            ("m.top1.pt", None),
            ("m.trunk1.pt", Some("dd")),
        ];
        let want: Vec<(String, Option<String>)> = want
            .iter()
            .map(|(f, s)| (f.to_string(), s.map(String::from)))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn handed_over_weights_are_found_by_torchvision_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = BackboneStore::folder(dir.path());
        std::fs::create_dir_all(&store.weights_dir).unwrap();
        for f in [
            "vgg16-397923af.pth",
            "vgg16_bn-6c64b313.pth",
            "resnet50.safetensors",
            "notes.txt",
        ] {
            std::fs::write(store.weights_dir.join(f), b"x").unwrap();
        }
        // (name, file found)
        let cases = [
            ("vgg16", Some("vgg16-397923af.pth")),
            ("vgg16_bn", Some("vgg16_bn-6c64b313.pth")),
            ("resnet50", Some("resnet50.safetensors")),
            ("resnet18", None),
            ("notes", None),
        ];
        for (name, want) in cases {
            let got = store.handed_over(name);
            assert_eq!(
                got.as_ref()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned()),
                want.map(String::from),
                "{name}"
            );
        }
    }
}
