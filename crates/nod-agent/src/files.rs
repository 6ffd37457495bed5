//! File helpers shared by the keystore, the host allowlist and the audit log.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::getuid;

/// Creates `dir` (and its parents) if missing and makes sure it is a directory of ours with
/// mode 0700. An existing directory owned by someone else is refused: whoever owns it could
/// swap the files we put in it.
pub(crate) fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory; move it away and retry",
            dir.display()
        )));
    }
    if meta.uid() != getuid().as_raw() {
        return Err(io::Error::other(format!(
            "{} is owned by uid {}, not by you; remove it or fix its owner",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Refuses a file that someone other than us (or root) could have written: such a file could
/// pin an attacker's host key or name an approver that always says yes.
pub(crate) fn check_not_writable_by_others(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let uid = meta.uid();
    if uid != getuid().as_raw() && uid != 0 {
        return Err(io::Error::other(format!(
            "{} is owned by uid {uid}, not by you; fix its owner",
            path.display()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} is writable by group or others; run `chmod go-w {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// Replaces `path` atomically with `contents`: write a 0600 temp file next to it, fsync it,
/// rename it over `path`, then fsync the directory. A reader sees the old or the new file,
/// never half of one.
///
/// The temp file (`.<name>.tmp-<16 hex>`) is `flock`ed while it is written, so
/// [`remove_stale_temps`] can tell the leftover of a killed writer (the lock died with it) from
/// a write in progress.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent directory", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
    let mut suffix = [0u8; 8];
    getrandom::getrandom(&mut suffix).map_err(|e| io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        hex::encode(suffix)
    ));
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        let file =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
        (&*file).write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        drop(file);
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Whether `name` is one of [`write_atomic`]'s temp files: `.<name>.tmp-<16 hex>`.
fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    match rest.rsplit_once(".tmp-") {
        Some((base, suffix)) => {
            !base.is_empty() && suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

/// Removes the temp files that writers killed mid-write left in `dir` (whole encrypted copies
/// of a store, or of a key file). A temp file whose writer is alive is locked, and kept.
/// Returns how many were removed; a missing directory has none.
pub(crate) fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_temp_name(name) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
        else {
            continue;
        };
        // Held until the file is gone, so a writer cannot take it back in between.
        let Ok(_lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        if fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// A fresh, uniquely named scratch directory under the system temp dir, for unit tests.
#[cfg(test)]
pub(crate) fn test_dir(tag: &str) -> std::path::PathBuf {
    let mut r = [0u8; 8];
    getrandom::getrandom(&mut r).unwrap();
    let dir = std::env::temp_dir().join(format!("nod-{tag}-{}", hex::encode(r)));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// What identifies one version of a file: inode, size, modification and change time. The
/// change time moves with `chmod`/`chown` too, so making a file readable again is a change.
pub(crate) type Stamp = Option<(u64, u64, i64, i64, i64, i64)>;

/// The stamp of `path` now; `None` when it cannot be seen.
pub(crate) fn stamp(path: &Path) -> Stamp {
    let m = fs::metadata(path).ok()?;
    Some((
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// How long a failed load waits before it is tried again, whatever the file's stamp says.
pub(crate) const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A file the agent re-reads when it changes: [`Watched::current`] loads it again when its
/// stamp changed, and after a failure also when [`RETRY_AFTER`] has passed, so a read that
/// failed for a passing reason (out of descriptors, a file briefly unreadable) recovers by
/// itself. It logs once when a failed file loads again.
#[derive(Debug)]
pub(crate) struct Watched<T> {
    path: std::path::PathBuf,
    stamp: Stamp,
    loaded: bool,
    failed_at: Option<std::time::Instant>,
    value: T,
}

impl<T: Default> Watched<T> {
    /// Nothing loaded yet; the first [`Watched::current`] loads.
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            stamp: None,
            loaded: false,
            failed_at: None,
            value: T::default(),
        }
    }

    /// Makes the next [`Watched::current`] load again at once, whatever the stamp says (a
    /// keystore that was locked may be unlocked by the next request).
    pub(crate) fn reload_next_time(&mut self) {
        self.loaded = false;
    }

    /// The value, loaded again first if the file changed, or if the last load failed a while
    /// ago. `load` returns the new value or an error to log; while it fails, the value is
    /// `T::default()` (fail closed: no hosts, no keys). Returns whether the value was loaded
    /// again by this call.
    pub(crate) fn current<E: std::fmt::Display>(
        &mut self,
        load: impl FnOnce(&Path, Stamp) -> Result<T, E>,
    ) -> (&T, bool) {
        let now = stamp(&self.path);
        let retry = self.failed_at.is_some_and(|t| t.elapsed() >= RETRY_AFTER);
        if self.loaded && now == self.stamp && !retry {
            return (&self.value, false);
        }
        self.stamp = now;
        self.loaded = true;
        match load(&self.path, now) {
            Ok(value) => {
                if self.failed_at.take().is_some() {
                    crate::log::event!("{}: read again, working", self.path.display());
                }
                self.value = value;
            }
            Err(e) => {
                if self.failed_at.is_none() {
                    crate::log::event!("{e}");
                }
                self.failed_at = Some(std::time::Instant::now());
                self.value = T::default();
            }
        }
        (&self.value, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_load_is_tried_again_after_a_while_even_if_the_file_did_not_change() {
        let dir = test_dir("watched");
        let path = dir.join("f");
        fs::write(&path, "x").unwrap();
        let mut w: Watched<u32> = Watched::new(&path);
        let (v, loaded) = w.current(|_, _| Err::<u32, _>("out of descriptors"));
        assert_eq!((*v, loaded), (0, true));
        // Same stamp, just failed: not tried again at once.
        let (_, loaded) = w.current(|_, _| Ok::<u32, String>(7));
        assert!(!loaded);
        std::thread::sleep(RETRY_AFTER);
        let (v, loaded) = w.current(|_, _| Ok::<u32, String>(7));
        assert_eq!((*v, loaded), (7, true));
        // Loaded and unchanged: not read again.
        let (v, loaded) = w.current(|_, _| Ok::<u32, String>(9));
        assert_eq!((*v, loaded), (7, false));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn temp_names_are_recognised_exactly() {
        assert!(is_temp_name(".secrets.enc.tmp-0123456789abcdef"));
        assert!(is_temp_name(".ssh_keys.sealed.tmp-0123456789ABCDEF"));
        for name in [
            "secrets.enc",
            ".secrets.enc",
            ".secrets.enc.tmp-0123",
            ".secrets.enc.tmp-0123456789abcdeg",
            "..tmp-0123456789abcdef",
            "x.tmp-0123456789abcdef",
        ] {
            assert!(!is_temp_name(name), "{name}");
        }
    }

    #[test]
    fn stale_temps_go_and_live_ones_and_real_files_stay() {
        let dir = test_dir("temps");
        let stale = dir.join(".a.tmp-0000000000000001");
        let live = dir.join(".b.tmp-0000000000000002");
        fs::write(&stale, b"old copy").unwrap();
        fs::write(&live, b"being written").unwrap();
        fs::write(dir.join("a"), b"real").unwrap();
        let held = Flock::lock(File::open(&live).unwrap(), FlockArg::LockExclusive).unwrap();
        assert_eq!(remove_stale_temps(&dir), 1);
        assert!(!stale.exists() && live.exists() && dir.join("a").exists());
        drop(held);
        assert_eq!(remove_stale_temps(&dir), 1);
        write_atomic(&dir.join("a"), b"new").unwrap();
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"new");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }
}
