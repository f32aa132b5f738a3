//! Backbones that just work from any folder (issue #27): the per-user store, first-use
//! export, `tl backbones list|add|remove|verify`, concurrent first uses, the offline error.
//! Every test runs `tl` with a fresh TL_HOME / HOME and no TL_BACKBONES, from an empty
//! folder outside the repository.
mod common;
use common::{assert_clean_error, color_dataset, read_json, root, shared_data};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Home {
    tmp: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let home = Home {
            tmp: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(home.cwd()).unwrap();
        home
    }
    fn path(&self) -> &Path {
        self.tmp.path()
    }
    fn cwd(&self) -> PathBuf {
        self.path().join("work")
    }
    fn store(&self) -> PathBuf {
        self.path().join(".local/share/tl/backbones")
    }
    /// `tl` as a new user runs it: HOME here, nothing from the repository's environment
    /// except the Python that has torch (TL_PYTHON, as scripts/env.sh sets it).
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tl"));
        c.current_dir(self.cwd())
            .env("HOME", self.path())
            .env_remove("TL_HOME")
            .env_remove("TL_BACKBONES")
            .env_remove("TL_WEIGHTS")
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_CACHE_HOME")
            .env("TL_THREADS", "1")
            .env("TL_DEVICE", "cpu")
            // No network, whatever the machine has: downloads fail at once.
            .env("https_proxy", "http://127.0.0.1:9")
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env_remove("RUST_BACKTRACE");
        if std::env::var_os("TL_PYTHON").is_none() {
            c.env("TL_PYTHON", root().join(".venv/bin/python"));
        }
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "tl {args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn hidden_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".export-"))
        .collect()
}

#[test]
fn list_add_verify_remove_in_a_fresh_home() {
    let home = Home::new();
    let empty = home.json(&["backbones", "list", "--json"]);
    assert_eq!(empty["backbones"].as_array().unwrap().len(), 0);
    assert_eq!(empty["store"], s(&home.store()));

    let added = home.json(&["backbones", "add", "tiny", "--json"]);
    assert_eq!(added["exported"], true);
    assert_eq!(added["backbone"]["weights"], "random");
    let again = home.json(&["backbones", "add", "tiny", "--json"]);
    assert_eq!(again["exported"], false);
    assert!(home.store().join("tiny.json").is_file());

    let list = home.json(&["backbones", "list", "--json"]);
    let b = &list["backbones"][0];
    assert_eq!(b["name"], "tiny");
    assert_eq!(b["architecture"], "tiny");
    assert_eq!(b["onnx"], true);
    let files = b["files"].as_u64().unwrap();
    assert!(files >= 3, "{b}");
    let text = home.ok(&["backbones", "list"]);
    assert!(text.starts_with("name "), "{text}");
    assert!(text.contains("tiny") && text.contains("random"), "{text}");

    let verified = home.json(&["backbones", "verify", "--json"]);
    assert_eq!(verified["damaged"].as_array().unwrap().len(), 0);
    assert_eq!(verified["files"].as_u64().unwrap(), files - 1);

    // One flipped byte: verify names the file and exits 1.
    let features = home.store().join("tiny.features.pt");
    let mut bytes = std::fs::read(&features).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&features, bytes).unwrap();
    let out = home.run(&["backbones", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("tiny.features.pt") && stdout.contains("differs"),
        "{stdout}"
    );
    assert_clean_error(&String::from_utf8_lossy(&out.stderr));
    // --force exports it again, whole.
    home.ok(&["backbones", "add", "tiny", "--force"]);
    home.ok(&["backbones", "verify"]);

    let removed = home.json(&["backbones", "remove", "tiny", "--json"]);
    assert_eq!(removed["files"].as_array().unwrap().len() as u64, files);
    let left: Vec<String> = std::fs::read_dir(home.store())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let stderr = home.fails(&["backbones", "remove", "tiny"]);
    assert_clean_error(&stderr);
    assert!(stderr.contains("not in the store"), "{stderr}");
    assert!(hidden_leftovers(&home.store()).is_empty());
}

#[test]
fn backbones_outside_the_store_are_found_but_never_removed() {
    let home = Home::new();
    let mine = home.path().join("my-backbones");
    common::copy_tiny_backbone(&mine);
    let before = std::fs::read_dir(&mine).unwrap().count();
    let list = home.json(&["--backbones-dir", s(&mine), "backbones", "list", "--json"]);
    assert_eq!(list["backbones"][0]["name"], "tiny");
    assert_eq!(list["search"][0], s(&mine));
    let stderr = home.fails(&["--backbones-dir", s(&mine), "backbones", "remove", "tiny"]);
    assert_clean_error(&stderr);
    assert!(stderr.contains("does not manage"), "{stderr}");
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), before);
}

#[test]
fn two_concurrent_first_uses_export_once_and_whole() {
    let home = Home::new();
    let children: Vec<_> = (0..2)
        .map(|_| {
            home.cmd()
                .args(["backbones", "add", "tiny", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut exported = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        exported += usize::from(v["exported"] == true);
    }
    assert_eq!(exported, 1, "exactly one of the two exports");
    home.ok(&["backbones", "verify"]);
    assert!(hidden_leftovers(&home.store()).is_empty());
}

#[test]
fn an_offline_first_use_says_in_one_line_which_file_to_get() {
    let home = Home::new();
    let data = home.path().join("data");
    color_dataset(&data, &["a", "b"], 4, 1);
    let stderr = home.fails(&["train", "--backbone", "resnet18", s(&data), "-q"]);
    assert_clean_error(&stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("tl: error:"))
        .unwrap();
    let weights = home.path().join(".local/share/tl/weights");
    assert!(line.contains("resnet18-f37072fd.pth"), "{line}");
    assert!(line.contains(s(&weights)), "{line}");
    assert!(line.contains("--weights FILE"), "{line}");
    // Nothing half-made, and never random weights in its place.
    assert!(!home.store().join("resnet18.json").exists());
    assert!(hidden_leftovers(&home.store()).is_empty());
    // A name that is not a torchvision classifier is not tried at all.
    let stderr = home.fails(&["train", "--backbone", "resnet_18", s(&data), "-q"]);
    assert_clean_error(&stderr);
    assert!(stderr.contains("not found"), "{stderr}");
}

#[test]
fn first_use_exports_into_the_store_and_a_second_folder_reuses_it_without_python() {
    let Some(shared) = shared_data() else {
        common::skip(
            "first_use_exports_into_the_store_and_a_second_folder_reuses_it_without_python",
            "../shared/data not present (real photos and MobileNetV2 weights)",
            common::Lacks::SharedData,
        );
        return;
    };
    let weights = shared
        .parent()
        .unwrap()
        .join("models/mobilenet_v2-imagenet.safetensors");
    if !weights.is_file() {
        common::skip(
            "first_use_exports_into_the_store_and_a_second_folder_reuses_it_without_python",
            &format!("{} not present", weights.display()),
            common::Lacks::SharedData,
        );
        return;
    }
    let home = Home::new();
    // 10 photos of each class, linked into a folder of the user's.
    let data = home.path().join("photos");
    for class in ["cat", "dog"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(shared.join("cats_dogs").join(class))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files.iter().take(10) {
            std::os::unix::fs::symlink(f, data.join(class).join(f.file_name().unwrap())).unwrap();
        }
    }
    let out = home.run(&[
        "train",
        "--backbone",
        "mobilenet_v2",
        s(&data),
        "--weights",
        s(&weights),
        "--out",
        "run1",
        "-q",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("is not exported yet"))
            .count(),
        1,
        "{stderr}"
    );
    let sidecar = home.store().join("mobilenet_v2.json");
    assert!(sidecar.is_file());
    let config = read_json(&home.cwd().join("run1/config.json"));
    assert_eq!(config["backbone"]["pretrained"], true);
    assert_eq!(
        config["backbone"]["features_file"],
        s(&std::fs::canonicalize(home.store().join("mobilenet_v2.features.pt")).unwrap())
    );
    // From another folder, with no Python at all: the export is reused.
    let other = home.path().join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    let out = home
        .cmd()
        .current_dir(&other)
        .env("TL_PYTHON", "/nonexistent/python")
        .args([
            "train",
            "--backbone",
            "mobilenet_v2",
            s(&data),
            "--out",
            "run2",
            "-q",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("not exported yet"), "{stderr}");
    let second = read_json(&other.join("run2/config.json"));
    assert_eq!(
        second["backbone"]["features_sha256"],
        config["backbone"]["features_sha256"]
    );
    assert_eq!(second["data"]["val_images"], config["data"]["val_images"]);
}
