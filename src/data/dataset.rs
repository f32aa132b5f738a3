//! Datasets on disk: class-per-folder (torchvision ImageFolder, Kaggle `PetImages`),
//! Oxford-IIIT Pets (`images/Breed_N.jpg` with optional `annotations/{trainval,test}.txt`),
//! and explicit `train/` + `val/` folders. Class names are sorted, so label ids never
//! depend on the order the file system lists things in. Nothing is opened as an image here.
use crate::error::{IoContext, Result, TlError};
use crate::util::{FilePath, SplitMix64};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff"];

/// Wrapper folders (a folder holding only one folder) looked through to find the classes.
const MAX_WRAPPER_DEPTH: usize = 4;

pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// `DIR/<class>/*.jpg`
    ImageFolder,
    /// `DIR/train/<class>/…` and `DIR/val/<class>/…`
    TrainVal,
    /// `DIR/images/<Breed>_<n>.jpg`
    OxfordPets,
}

/// A file found while listing that is not used, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoredFile {
    pub path: FilePath,
    pub reason: String,
}

impl IgnoredFile {
    fn new(path: PathBuf, reason: &str) -> Self {
        IgnoredFile {
            path: FilePath(path),
            reason: reason.into(),
        }
    }
}

/// A dataset with its labelled files, before any image has been opened.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The folder the layout was found in (the given one, or a wrapper folder inside it).
    pub root: PathBuf,
    pub layout: Layout,
    pub classes: Vec<String>,
    pub train: Vec<Sample>,
    /// Empty until a split is made, unless the layout defines one.
    pub val: Vec<Sample>,
    /// Files skipped while listing, e.g. `Thumbs.db`, hidden files, unlisted Oxford images.
    pub ignored: Vec<IgnoredFile>,
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Entries of `dir`, sorted; hidden ones go to `ignored` (files) or are passed over (folders).
fn sorted_entries(dir: &Path, ignored: &mut Vec<IgnoredFile>) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).with_path(dir)? {
        let path = entry.with_path(dir)?.path();
        if is_hidden(&path) {
            if path.is_file() {
                ignored.push(IgnoredFile::new(path, "hidden file"));
            }
            continue;
        }
        entries.push(path);
    }
    entries.sort();
    Ok(entries)
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(sorted_entries(dir, &mut Vec::new())?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect())
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Image files under `dir`, recursively, sorted; other files go to `ignored`. Links are
/// followed, but every folder and every file is taken once (by device and inode): a link
/// back up the tree (`ln -s .. up`) or a second path to the same photos is reported, not
/// walked. FIFOs, devices and sockets are never opened (reading one blocks or never ends).
pub fn collect_images(dir: &Path, ignored: &mut Vec<IgnoredFile>) -> Result<Vec<PathBuf>> {
    let mut seen = Seen::default();
    seen.dirs.extend(file_id(dir));
    walk_images(dir, ignored, &mut seen)?;
    Ok(seen.finish(ignored).into_iter().map(|(_, p)| p).collect())
}

/// A file found by the walk: its (device, inode), path, whether the path is a link to it,
/// and the walk (class folder) it was found in.
type Found = ((u64, u64), PathBuf, bool, usize);

/// Folders already listed and image files found, by (device, inode).
#[derive(Default)]
struct Seen {
    dirs: std::collections::HashSet<(u64, u64)>,
    files: Vec<Found>,
    walk: usize,
}

impl Seen {
    /// Each file once, with the walk it belongs to: where it really is (a path that is not a
    /// link to it) when there is one, else where it was first found.
    fn finish(self, ignored: &mut Vec<IgnoredFile>) -> Vec<(usize, PathBuf)> {
        let direct: std::collections::HashSet<(u64, u64)> =
            self.files.iter().filter(|f| !f.2).map(|f| f.0).collect();
        let mut taken = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (id, path, via_link, walk) in self.files {
            let wanted = !via_link || !direct.contains(&id);
            if wanted && taken.insert(id) {
                out.push((walk, path));
            } else {
                ignored.push(IgnoredFile::new(
                    path,
                    "the same file as one already listed (a link)",
                ));
            }
        }
        out
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn walk_images(dir: &Path, ignored: &mut Vec<IgnoredFile>, seen: &mut Seen) -> Result<()> {
    for entry in sorted_entries(dir, ignored)? {
        let Ok(meta) = std::fs::metadata(&entry) else {
            ignored.push(IgnoredFile::new(entry, "cannot be read (a dangling link?)"));
            continue;
        };
        let id = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        if meta.is_dir() {
            if seen.dirs.insert(id) {
                walk_images(&entry, ignored, seen)?;
            } else {
                ignored.push(IgnoredFile::new(
                    entry,
                    "a link to a folder already listed (a loop, or a second path to the same photos)",
                ));
            }
        } else if !meta.is_file() {
            ignored.push(IgnoredFile::new(
                entry,
                "not a regular file (a FIFO, device or socket)",
            ));
        } else if !has_image_extension(&entry) {
            ignored.push(IgnoredFile::new(entry, "not an image file extension"));
        } else {
            let via_link =
                std::fs::symlink_metadata(&entry).is_ok_and(|m| m.file_type().is_symlink());
            seen.files.push((id, entry, via_link, seen.walk));
        }
    }
    Ok(())
}

/// The class of an Oxford-IIIT Pets file: the name before the last `_`.
pub fn pets_class(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let (class, number) = stem.rsplit_once('_')?;
    (!class.is_empty() && number.chars().all(|c| c.is_ascii_digit()) && !number.is_empty())
        .then(|| class.to_string())
}

fn image_folder(
    root: &Path,
    classes: Option<&[String]>,
    ignored: &mut Vec<IgnoredFile>,
) -> Result<(Vec<String>, Vec<Sample>)> {
    let dirs = subdirs(root)?;
    let found: Vec<String> = dirs.iter().map(|d| name_of(d)).collect();
    let classes: Vec<String> = classes.map(<[String]>::to_vec).unwrap_or(found.clone());
    let mut samples = Vec::new();
    // One record for the whole tree: a link from one class folder into another (or up to
    // the root) must not list the other class's photos under this class.
    let mut seen = Seen::default();
    for d in std::iter::once(root).chain(dirs.iter().map(PathBuf::as_path)) {
        seen.dirs.extend(file_id(d));
    }
    let mut labels = Vec::new();
    for (dir, name) in dirs.iter().zip(&found) {
        let Some(label) = classes.iter().position(|c| c == name) else {
            return Err(TlError::corrupt(
                dir,
                format!(
                    "class folder '{name}' is not one of the {} known classes",
                    classes.len()
                ),
            ));
        };
        seen.walk = labels.len();
        labels.push(label);
        walk_images(dir, ignored, &mut seen)?;
    }
    for (walk, path) in seen.finish(ignored) {
        samples.push(Sample {
            path,
            label: labels[walk],
        });
    }
    for entry in sorted_entries(root, ignored)? {
        if entry.is_file() {
            ignored.push(IgnoredFile::new(entry, "file outside any class folder"));
        }
    }
    Ok((classes, samples))
}

fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_path(path)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Follow folders that hold exactly one folder and nothing else (e.g.
/// `kagglecatsanddogs/PetImages/{Cat,Dog}` given as `kagglecatsanddogs`).
fn unwrap_single_folders(root: &Path) -> Result<PathBuf> {
    let mut dir = root.to_path_buf();
    for _ in 0..MAX_WRAPPER_DEPTH {
        let entries = sorted_entries(&dir, &mut Vec::new())?;
        match entries.as_slice() {
            // Only a folder of folders is a wrapper: `data/cat/*.jpg` is one class, not one.
            [only] if only.is_dir() && !is_layout_marker(only) && !subdirs(only)?.is_empty() => {
                dir = only.clone()
            }
            _ => break,
        }
    }
    Ok(dir)
}

/// A folder name that is a layout of its own, never a wrapper.
fn is_layout_marker(dir: &Path) -> bool {
    matches!(name_of(dir).to_lowercase().as_str(), "images" | "train")
}

impl Dataset {
    /// Detect the layout of `root` and list its samples. `classes` fixes the label ids (for
    /// evaluating a trained run); otherwise they are the sorted class names found.
    pub fn open(root: &Path, classes: Option<&[String]>) -> Result<Dataset> {
        if !root.is_dir() {
            return Err(TlError::not_found(root, "dataset folder not found"));
        }
        let root = unwrap_single_folders(root)?;
        let mut ignored = Vec::new();
        // Oxford-IIIT Pets: images/ holds the files directly.
        let images = root.join("images");
        if images.is_dir() && subdirs(&images)?.is_empty() {
            return Self::open_pets(&root, classes, ignored);
        }
        let dirs = subdirs(&root)?;
        let position = |names: &[&str]| {
            dirs.iter()
                .position(|d| names.contains(&name_of(d).to_lowercase().as_str()))
        };
        let train_i = position(&["train"]);
        // A test/ folder is the held-out side when there is no val/ (train/ + test/ is a common
        // layout; read as one folder, it would be a "train vs test" classifier).
        let val_i = position(&["val", "valid", "validation"]).or_else(|| position(&["test"]));
        if let (Some(t), Some(v)) = (train_i, val_i) {
            let (classes, train) = image_folder(&dirs[t], classes, &mut ignored)?;
            let (_, val) = image_folder(&dirs[v], Some(&classes), &mut ignored)?;
            return Self::finish(&root, Layout::TrainVal, classes, train, val, ignored);
        }
        let (classes, train) = image_folder(&root, classes, &mut ignored)?;
        Self::finish(
            &root,
            Layout::ImageFolder,
            classes,
            train,
            Vec::new(),
            ignored,
        )
    }

    fn open_pets(
        root: &Path,
        classes: Option<&[String]>,
        mut ignored: Vec<IgnoredFile>,
    ) -> Result<Dataset> {
        let images = root.join("images");
        let files = collect_images(&images, &mut ignored)?;
        let mut by_stem = BTreeMap::new();
        let mut found = BTreeSet::new();
        for path in files {
            match pets_class(&path) {
                Some(class) => {
                    found.insert(class.clone());
                    let stem = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    by_stem.insert(stem, (path, class));
                }
                None => ignored.push(IgnoredFile::new(path, "name is not <Breed>_<number>")),
            }
        }
        let classes: Vec<String> = classes
            .map(<[String]>::to_vec)
            .unwrap_or_else(|| found.into_iter().collect());
        let label_of = |class: &str, path: &Path| {
            classes.iter().position(|c| c == class).ok_or_else(|| {
                TlError::corrupt(path, format!("breed '{class}' is not a known class"))
            })
        };
        let trainval = root.join("annotations").join("trainval.txt");
        let test = root.join("annotations").join("test.txt");
        let (mut train, mut val) = (Vec::new(), Vec::new());
        if trainval.is_file() && test.is_file() {
            let (train_list, test_list) = (read_list(&trainval)?, read_list(&test)?);
            for (list, side) in [(train_list, &mut train), (test_list, &mut val)] {
                for stem in list {
                    if let Some((path, class)) = by_stem.remove(&stem) {
                        let label = label_of(&class, &path)?;
                        side.push(Sample { path, label });
                    }
                }
            }
            for (path, _) in by_stem.into_values() {
                ignored.push(IgnoredFile::new(
                    path,
                    "not listed in annotations/trainval.txt or test.txt",
                ));
            }
        } else {
            for (path, class) in by_stem.into_values() {
                let label = label_of(&class, &path)?;
                train.push(Sample { path, label });
            }
        }
        Self::finish(root, Layout::OxfordPets, classes, train, val, ignored)
    }

    fn finish(
        root: &Path,
        layout: Layout,
        classes: Vec<String>,
        mut train: Vec<Sample>,
        mut val: Vec<Sample>,
        ignored: Vec<IgnoredFile>,
    ) -> Result<Dataset> {
        if classes.is_empty() {
            return Err(TlError::corrupt(
                root,
                "no classes found (expected one folder per class, or images/<Breed>_<n>.jpg)",
            ));
        }
        if train.is_empty() && val.is_empty() {
            return Err(TlError::bad_path(root, "no image files found"));
        }
        train.sort_by(|a, b| a.path.cmp(&b.path));
        val.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Dataset {
            root: root.to_path_buf(),
            layout,
            classes,
            train,
            val,
            ignored,
        })
    }

    /// Every sample (train then val).
    pub fn all(&self) -> Vec<Sample> {
        self.train.iter().chain(&self.val).cloned().collect()
    }

    /// Classes with no image file at all (before any is opened).
    pub fn empty_classes(&self) -> Vec<String> {
        let mut counts = vec![0usize; self.classes.len()];
        for s in self.train.iter().chain(&self.val) {
            counts[s.label] += 1;
        }
        counts
            .iter()
            .zip(&self.classes)
            .filter(|(n, _)| **n == 0)
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// Move a stratified fraction of `train` into `val`, reproducibly for a seed. Each class
    /// with at least two images keeps at least one on each side.
    pub fn split(&mut self, fraction: f64, seed: u64) -> Result<()> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(TlError::invalid(format!(
                "the validation fraction must be in (0, 1), got {fraction}"
            )));
        }
        let mut by_class: Vec<Vec<Sample>> = vec![Vec::new(); self.classes.len()];
        for s in self.train.drain(..) {
            by_class[s.label].push(s);
        }
        let mut rng = SplitMix64::new(seed ^ 0x5EED_5EED);
        for mut group in by_class {
            rng.shuffle(&mut group);
            let n = group.len();
            let n_val = if n >= 2 {
                ((n as f64 * fraction).round() as usize).clamp(1, n - 1)
            } else {
                0
            };
            self.val.extend(group.drain(..n_val));
            self.train.extend(group);
        }
        self.train.sort_by(|a, b| a.path.cmp(&b.path));
        self.val.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(())
    }
}

/// Expand files and folders given on the command line into image files (folders
/// recursively, sorted). Missing paths are errors; non-image files inside folders are skipped.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut ignored = Vec::new();
    for input in inputs {
        match std::fs::metadata(input) {
            Ok(m) if m.is_dir() => out.extend(collect_images(input, &mut ignored)?),
            Ok(m) if m.is_file() => out.push(input.clone()),
            Ok(_) => {
                return Err(TlError::bad_path(
                    input,
                    "is not a regular file (a FIFO, device or socket); give image files or folders",
                ))
            }
            Err(_) => return Err(TlError::not_found(input, "no such file or folder")),
        }
    }
    if out.is_empty() {
        return Err(TlError::invalid("no image files among the inputs"));
    }
    Ok(out)
}
