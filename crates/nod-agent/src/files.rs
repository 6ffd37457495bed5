//! File helpers shared by the keystore, the host allowlist and the audit log.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

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
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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
