//! Datasets on disk: class-per-folder (torchvision ImageFolder, Kaggle `PetImages`),
//! Oxford-IIIT Pets (`images/Breed_N.jpg` with optional `annotations/{trainval,test}.txt`),
//! and explicit `train/` + `val/` folders. Class names are sorted, so label ids never
//! depend on the order the file system lists things in.
use crate::error::{IoContext, Result, TlError};
use crate::util::SplitMix64;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff"];

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

/// A dataset with its labelled files, before any image has been opened.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
    pub layout: Layout,
    pub classes: Vec<String>,
    pub train: Vec<Sample>,
    /// Empty until a split is made, unless the layout defines one.
    pub val: Vec<Sample>,
    /// Files skipped while listing (name and reason), e.g. `Thumbs.db`.
    pub ignored: Vec<(PathBuf, String)>,
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_path(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    entries.sort();
    Ok(entries)
}

/// Image files under `dir`, recursively, sorted; other files go to `ignored`.
pub fn collect_images(dir: &Path, ignored: &mut Vec<(PathBuf, String)>) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in sorted_entries(dir)? {
        if entry.is_dir() {
            out.extend(collect_images(&entry, ignored)?);
        } else if has_image_extension(&entry) {
            out.push(entry);
        } else {
            ignored.push((entry, "not an image file extension".into()));
        }
    }
    Ok(out)
}

/// The class of an Oxford-IIIT Pets file: the name before the last `_`.
pub fn pets_class(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let (class, number) = stem.rsplit_once('_')?;
    (!class.is_empty() && number.chars().all(|c| c.is_ascii_digit()) && !number.is_empty())
        .then(|| class.to_string())
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect())
}

fn image_folder(
    root: &Path,
    classes: Option<&[String]>,
    ignored: &mut Vec<(PathBuf, String)>,
) -> Result<(Vec<String>, Vec<Sample>)> {
    let dirs = subdirs(root)?;
    let found: Vec<String> = dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    let classes: Vec<String> = match classes {
        Some(c) => c.to_vec(),
        None => found.clone(),
    };
    let mut samples = Vec::new();
    for (dir, name) in dirs.iter().zip(&found) {
        let Some(label) = classes.iter().position(|c| c == name) else {
            return Err(TlError::file(
                dir,
                format!(
                    "class folder '{name}' is not one of the {} known classes",
                    classes.len()
                ),
            ));
        };
        for path in collect_images(dir, ignored)? {
            samples.push(Sample { path, label });
        }
    }
    for entry in sorted_entries(root)? {
        if entry.is_file() {
            ignored.push((entry, "file outside any class folder".into()));
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

impl Dataset {
    /// Detect the layout of `root` and list its samples. `classes` fixes the label ids (for
    /// evaluating a trained run); otherwise they are the sorted class names found.
    pub fn open(root: &Path, classes: Option<&[String]>) -> Result<Dataset> {
        if !root.is_dir() {
            return Err(TlError::file(root, "dataset folder not found"));
        }
        let mut ignored = Vec::new();
        // Oxford-IIIT Pets: images/ holds the files directly.
        let images = root.join("images");
        if images.is_dir() && subdirs(&images)?.is_empty() {
            return Self::open_pets(root, classes, ignored);
        }
        let dirs = subdirs(root)?;
        let names: Vec<String> = dirs
            .iter()
            .map(|d| d.file_name().unwrap().to_string_lossy().to_lowercase())
            .collect();
        let train_i = names.iter().position(|n| n == "train");
        let val_i = names
            .iter()
            .position(|n| n == "val" || n == "valid" || n == "validation");
        if let (Some(t), Some(v)) = (train_i, val_i) {
            let (classes, train) = image_folder(&dirs[t], classes, &mut ignored)?;
            let (_, val) = image_folder(&dirs[v], Some(&classes), &mut ignored)?;
            return Self::finish(root, Layout::TrainVal, classes, train, val, ignored);
        }
        // A single wrapper folder (e.g. kagglecatsanddogs/PetImages): look inside it.
        if dirs.len() == 1 && collect_top_images(root)?.is_empty() {
            let inner = &dirs[0];
            let inner_dirs = subdirs(inner)?;
            if !inner_dirs.is_empty()
                && inner_dirs
                    .iter()
                    .all(|d| subdirs(d).map(|s| s.is_empty()).unwrap_or(false))
            {
                return Self::open(inner, classes);
            }
        }
        let (classes, train) = image_folder(root, classes, &mut ignored)?;
        Self::finish(
            root,
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
        mut ignored: Vec<(PathBuf, String)>,
    ) -> Result<Dataset> {
        let images = root.join("images");
        let files = collect_images(&images, &mut ignored)?;
        let mut by_stem = BTreeMap::new();
        let mut found = std::collections::BTreeSet::new();
        for path in files {
            match pets_class(&path) {
                Some(class) => {
                    found.insert(class.clone());
                    by_stem.insert(
                        path.file_stem().unwrap().to_string_lossy().to_string(),
                        (path, class),
                    );
                }
                None => ignored.push((path, "name is not <Breed>_<number>".into())),
            }
        }
        let classes: Vec<String> = classes
            .map(<[String]>::to_vec)
            .unwrap_or_else(|| found.into_iter().collect());
        let label_of = |class: &str, path: &Path| {
            classes
                .iter()
                .position(|c| c == class)
                .ok_or_else(|| TlError::file(path, format!("breed '{class}' is not a known class")))
        };
        let trainval = root.join("annotations").join("trainval.txt");
        let test = root.join("annotations").join("test.txt");
        let (train, val) = if trainval.is_file() && test.is_file() {
            let pick = |list: Vec<String>| -> Result<Vec<Sample>> {
                let mut out = Vec::new();
                for stem in list {
                    if let Some((path, class)) = by_stem.get(&stem) {
                        out.push(Sample {
                            path: path.clone(),
                            label: label_of(class, path)?,
                        });
                    }
                }
                Ok(out)
            };
            (pick(read_list(&trainval)?)?, pick(read_list(&test)?)?)
        } else {
            let mut all = Vec::new();
            for (path, class) in by_stem.values() {
                all.push(Sample {
                    path: path.clone(),
                    label: label_of(class, path)?,
                });
            }
            (all, Vec::new())
        };
        Self::finish(root, Layout::OxfordPets, classes, train, val, ignored)
    }

    fn finish(
        root: &Path,
        layout: Layout,
        classes: Vec<String>,
        mut train: Vec<Sample>,
        mut val: Vec<Sample>,
        ignored: Vec<(PathBuf, String)>,
    ) -> Result<Dataset> {
        if classes.is_empty() {
            return Err(TlError::file(
                root,
                "no classes found (expected one folder per class, or images/<Breed>_<n>.jpg)",
            ));
        }
        if train.is_empty() && val.is_empty() {
            return Err(TlError::file(root, "no image files found"));
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

    /// Move a stratified fraction of `train` into `val`, reproducibly for a seed. Each class
    /// with at least two images keeps at least one on each side.
    pub fn split(&mut self, fraction: f64, seed: u64) -> Result<()> {
        if !(0.0..1.0).contains(&fraction) || fraction == 0.0 {
            return Err(TlError::invalid(format!(
                "--val-split must be in (0, 1), got {fraction}"
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
            let mut n_val = (n as f64 * fraction).round() as usize;
            if n >= 2 {
                n_val = n_val.clamp(1, n - 1);
            } else {
                n_val = 0;
            }
            self.val.extend(group.drain(..n_val));
            self.train.extend(group);
        }
        self.train.sort_by(|a, b| a.path.cmp(&b.path));
        self.val.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(())
    }

    pub fn class_counts(samples: &[Sample], n_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; n_classes];
        for s in samples {
            counts[s.label] += 1;
        }
        counts
    }
}

fn collect_top_images(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|p| p.is_file() && has_image_extension(p))
        .collect())
}

/// Expand files and folders given on the command line into image files (folders
/// recursively, sorted). Missing paths are errors; non-image files inside folders are skipped.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut ignored = Vec::new();
    for input in inputs {
        if input.is_dir() {
            out.extend(collect_images(input, &mut ignored)?);
        } else if input.exists() {
            out.push(input.clone());
        } else {
            return Err(TlError::file(input, "no such file or folder"));
        }
    }
    if out.is_empty() {
        return Err(TlError::invalid("no image files among the inputs"));
    }
    Ok(out)
}
