//! Files written so that a crash or a full disk never leaves a half-written one, with the
//! permissions a user expects (0666 minus the umask), and never over a user's file unasked.
use crate::error::{IoContext, Result, TlError};
use serde::Serialize;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The folder a path lives in ("." for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A temporary file next to `path`, named `PREFIX….tmp`, created with mode 0666 minus the
/// umask (tempfile's default, 0600, would survive the rename and hide the output from the
/// user's group).
fn temp_file_near(path: &Path, prefix: &str) -> Result<tempfile::NamedTempFile> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).with_path(dir)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir).with_path(dir)
}

/// Write `bytes` to `path` through a temporary file in the same folder and a rename. The
/// temporary file is removed on every error path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, bytes, true)
}

/// As [`write_atomic`]; `durable` also flushes the data to disk before the rename (skipped
/// for cache entries, which carry their own checksum and are cheap to recompute).
pub fn write_atomic_with(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    if path.is_dir() {
        return Err(TlError::bad_path(path, "is a folder; expected a file name"));
    }
    let mut tmp = temp_file_near(path, ".tl-")?;
    tmp.write_all(bytes).map_err(|e| io_error(path, e))?;
    if durable {
        tmp.as_file().sync_data().map_err(|e| io_error(path, e))?;
    }
    tmp.persist(path).map_err(|e| TlError::io(path, e.error))?;
    Ok(())
}

/// Let `write` fill a temporary file (given its path) next to `path`, then rename it into
/// place: for writers that take a path rather than bytes (libtorch, a child process).
///
/// The temporary file is named with this process's id (`.tl-PID-….tmp`), so that one left by
/// a killed `tl` (whose writer could not clean up) is removed by the next call in that folder.
pub fn write_atomic_via(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if path.is_dir() {
        return Err(TlError::bad_path(path, "is a folder; expected a file name"));
    }
    remove_dead_processes_files(parent_dir(path), ".tl-", ".tmp");
    let tmp = temp_file_near(path, &format!(".tl-{}-", std::process::id()))?;
    write(tmp.path())?;
    std::fs::File::open(tmp.path())
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(path, e))?;
    tmp.persist(path).map_err(|e| TlError::io(path, e.error))?;
    Ok(())
}

pub fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut text = to_json_pretty(value)
        .map_err(|e| TlError::corrupt(path, format!("cannot write JSON: {e}")))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Files and folders in `dir` named `PREFIX<pid>-…SUFFIX` whose process is gone: removed.
pub fn remove_dead_processes_files(dir: &Path, prefix: &str, suffix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .filter(|rest| rest.ends_with(suffix))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() as i32 && !process_alive(pid) {
            let p = entry.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// An I/O error on `path`, without the temporary file's name that tempfile appends.
fn io_error(path: &Path, e: std::io::Error) -> TlError {
    let text = e.to_string();
    let text = text.split(" at path ").next().unwrap_or(&text);
    TlError::corrupt(path, text)
}

/// Pretty JSON, or why it cannot be made (never a panic).
pub fn to_json_pretty<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    serde_json::to_string_pretty(value)
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_path(path)?;
    serde_json::from_str(&text).map_err(|e| TlError::corrupt(path, format!("invalid JSON: {e}")))
}

/// The one "don't overwrite without asking" rule of every command that writes a file.
pub fn refuse_overwrite(path: &Path, force: bool) -> Result<()> {
    // Followed through links: a link to /dev/null is a device too.
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_dir() {
            return Err(TlError::bad_path(
                path,
                "is a folder; give a file name (tl writes only regular files, even with --force)",
            ));
        }
        if !meta.is_file() {
            return Err(TlError::bad_path(
                path,
                "exists and is not a regular file (a device or FIFO); tl writes only regular files, even with --force",
            ));
        }
    }
    if path.exists() && !force {
        return Err(TlError::bad_path(
            path,
            "already exists (pass --force to overwrite)",
        ));
    }
    Ok(())
}

/// Is `dir` a folder with something in it? (An unreadable folder counts as non-empty, so
/// that it is never written into unasked.)
pub fn is_non_empty_dir(dir: &Path) -> bool {
    dir.is_dir()
        && std::fs::read_dir(dir)
            .map(|mut r| r.next().is_some())
            .unwrap_or(true)
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).with_path(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_path(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(super::text::hex(&hasher.finalize()))
}

/// The one "don't write into a user's folder unasked" rule: `dest` may be written if it does
/// not exist, is empty, or `force` is set.
pub fn check_destination(dest: &Path, force: bool) -> Result<()> {
    if dest.exists() && !dest.is_dir() {
        return Err(TlError::bad_path(dest, "exists and is not a folder"));
    }
    if is_non_empty_dir(dest) && !force {
        return Err(TlError::bad_path(
            dest,
            "output folder exists and is not empty (pass --force to write into it)",
        ));
    }
    Ok(())
}

/// Is `dir` a run folder written by `tl train` (its config.json names tl's version, the
/// backbone and the head, and classes.json is there)?
pub fn is_tl_run(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    ["tl_version", "backbone", "head"]
        .iter()
        .all(|k| v.get(k).is_some())
        && dir.join("classes.json").is_file()
}

/// Check early (before any work) that a run may be written at `dest`: absent, empty, or
/// with `force` a tl run folder, which is then replaced completely.
pub fn check_run_destination(dest: &Path, force: bool) -> Result<()> {
    check_destination(dest, force)?;
    if is_non_empty_dir(dest) && !is_tl_run(dest) {
        return Err(TlError::bad_path(
            dest,
            "is a folder but not a tl run (no config.json from tl train); --force replaces only a run folder, completely: choose another --out",
        ));
    }
    Ok(())
}

/// An exclusive advisory lock (flock) on a file or folder, held until dropped or the
/// process ends (a killed holder never blocks the next one).
pub struct FileLock(#[allow(dead_code)] std::fs::File);

impl FileLock {
    /// Lock `path`: a folder as it is, a file created when missing.
    pub fn exclusive(path: &Path) -> Result<FileLock> {
        use std::os::unix::io::AsRawFd;
        let file = if path.is_dir() {
            std::fs::File::open(path)
        } else {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
        }
        .with_path(path)?;
        // SAFETY: flock on a descriptor this File owns; released when it is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(TlError::corrupt(
                path,
                std::io::Error::last_os_error().to_string(),
            ));
        }
        Ok(FileLock(file))
    }
}

/// A run folder built under a temporary name next to its destination and moved into place
/// by [`StagedDir::commit`]; dropped before that (an error, a panic), it is removed with its
/// contents, so an interrupted or failed write leaves nothing behind.
pub struct StagedDir {
    tmp: Option<tempfile::TempDir>,
    dest: PathBuf,
    force: bool,
}

impl StagedDir {
    /// Stage a folder for `dest`. `dest` may exist only if it is empty, or a tl run and
    /// `force` is set.
    pub fn new(dest: &Path, force: bool) -> Result<StagedDir> {
        check_run_destination(dest, force)?;
        let parent = parent_dir(dest);
        std::fs::create_dir_all(parent).with_path(parent)?;
        remove_abandoned_staging(parent);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{STAGING_PREFIX}{}-", std::process::id()))
            .tempdir_in(parent)
            .with_path(parent)?;
        Ok(StagedDir {
            tmp: Some(tmp),
            dest: dest.to_path_buf(),
            force,
        })
    }

    /// An error about a staged file, told about its destination instead.
    pub fn relocate_error(&self, mut err: TlError) -> TlError {
        if let (Some(path), Some(tmp)) = (err.path_mut(), self.tmp.as_ref()) {
            if let Ok(rel) = path.strip_prefix(tmp.path()) {
                *path = self.dest.join(rel);
            }
        }
        err
    }

    /// Where to write the files now.
    pub fn path(&self) -> &Path {
        self.tmp.as_ref().map(|t| t.path()).unwrap_or(&self.dest)
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Move the staged folder into place, the destination checked again under a lock on its
    /// parent folder (other `tl` processes may have written there since `new`): one rename
    /// when it does not exist or is empty; with `force`, a tl run there is swapped out whole
    /// (renamed aside, the new one renamed in, the old one deleted), never merged.
    pub fn commit(mut self) -> Result<PathBuf> {
        let Some(tmp) = self.tmp.take() else {
            return Ok(self.dest.clone());
        };
        let staged = tmp.keep();
        let result = self.move_into_place(&staged);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staged);
        }
        result.map(|_| self.dest.clone())
    }

    fn move_into_place(&self, staged: &Path) -> Result<()> {
        #[cfg(unix)]
        {
            // TempDir makes its folder 0700; a run folder is for the user's group too.
            use std::os::unix::fs::PermissionsExt;
            let mode = 0o777 & !current_umask();
            let _ = std::fs::set_permissions(staged, std::fs::Permissions::from_mode(mode));
        }
        let parent = parent_dir(&self.dest);
        let _lock = FileLock::exclusive(parent)?;
        if !is_non_empty_dir(&self.dest) {
            // rename(2) replaces an empty folder atomically.
            return std::fs::rename(staged, &self.dest).with_path(&self.dest);
        }
        if !self.force {
            return Err(TlError::bad_path(
                &self.dest,
                "was written by another process meanwhile; nothing written (pass --force to replace it)",
            ));
        }
        check_run_destination(&self.dest, true)?;
        let name = self
            .dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Named like a staging folder, so that a kill between the renames leaves nothing
        // that the next run in this folder does not clean up.
        let aside = parent.join(format!(
            "{STAGING_PREFIX}{}-replaced-{name}",
            std::process::id()
        ));
        std::fs::rename(&self.dest, &aside).with_path(&self.dest)?;
        if let Err(e) = std::fs::rename(staged, &self.dest) {
            let _ = std::fs::rename(&aside, &self.dest);
            return Err(TlError::io(&self.dest, e));
        }
        let _ = std::fs::remove_dir_all(&aside);
        Ok(())
    }
}

const STAGING_PREFIX: &str = ".tl-staging-";

/// Staging folders left by a `tl` that was killed (SIGKILL, a power cut: no chance to clean
/// up) are named with its process id; remove those whose process is gone.
fn remove_abandoned_staging(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(STAGING_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() as i32 && !process_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Does process `pid` exist (under any user)?
#[cfg(unix)]
pub fn process_alive(pid: i32) -> bool {
    // Signal 0 checks existence; EPERM means it exists under another user.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(unix))]
pub fn process_alive(_pid: i32) -> bool {
    true
}

/// The process umask, read without changing it (Linux: /proc/self/status).
#[cfg(unix)]
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_json_atomic(&path, &vec![1, 2, 3]).unwrap();
        let back: Vec<i32> = read_json(&path).unwrap();
        assert_eq!(back, vec![1, 2, 3]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
        // A folder as the target is refused, and no temporary file is left.
        let err = write_atomic(dir.path(), b"x").unwrap_err().to_string();
        assert!(err.contains("is a folder"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn staged_dir_is_removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("run");
        {
            let staged = StagedDir::new(&dest, false).unwrap();
            std::fs::write(staged.path().join("a"), b"1").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let run_files = |dir: &Path| {
            let config = r#"{"tl_version": "0", "backbone": {}, "head": {}}"#;
            std::fs::write(dir.join("config.json"), config).unwrap();
            std::fs::write(dir.join("classes.json"), "[]").unwrap();
        };
        let staged = StagedDir::new(&dest, false).unwrap();
        std::fs::write(staged.path().join("a"), b"1").unwrap();
        staged.commit().unwrap();
        assert_eq!(std::fs::read(dest.join("a")).unwrap(), b"1");
        assert!(StagedDir::new(&dest, false).is_err());
        // Not a run: --force does not replace it.
        assert!(StagedDir::new(&dest, true).is_err());
        run_files(&dest);
        // A run: --force replaces it whole (nothing of the old one is left).
        let staged = StagedDir::new(&dest, true).unwrap();
        std::fs::write(staged.path().join("b"), b"2").unwrap();
        run_files(staged.path());
        staged.commit().unwrap();
        assert!(!dest.join("a").exists() && dest.join("b").is_file());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A staging folder of a killed process is removed by the next one; a live one's
        // (this process's) is not.
        let dead = dir.path().join(".tl-staging-2147483646-x");
        let live = dir
            .path()
            .join(format!(".tl-staging-{}-y", std::process::id()));
        std::fs::create_dir(&dead).unwrap();
        std::fs::create_dir(&live).unwrap();
        StagedDir::new(&dir.path().join("other"), false).unwrap();
        assert!(!dead.exists() && live.exists());
    }
}
