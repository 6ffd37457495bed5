//! 32-byte keys kept in the keystore directory (`$XDG_DATA_HOME/nod/`), mode 0600, as hex.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::unistd::getuid;
use zeroize::Zeroizing;

use crate::files::{ensure_private_dir, write_atomic};

/// A 32-byte key, zeroized on drop.
pub type Key32 = Zeroizing<[u8; 32]>;

/// Reads the key at `path`; `None` if there is no file.
pub fn load(path: &Path) -> io::Result<Option<Key32>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if meta.uid() != getuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} must be owned by you with mode 0600; run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    let mut text = Zeroizing::new(String::new());
    file.take(200).read_to_string(&mut text)?;
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), &mut key[..]).map_err(|_| {
        io::Error::other(format!(
            "{} is not a 64-digit hex key; it is damaged",
            path.display()
        ))
    })?;
    Ok(Some(key))
}

/// Reads the key at `path`, creating a random one if there is none.
pub fn load_or_create(path: &Path) -> io::Result<Key32> {
    if let Some(key) = load(path)? {
        return Ok(key);
    }
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir)?;
    }
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut key[..]).map_err(|e| io::Error::other(e.to_string()))?;
    let text = Zeroizing::new(format!("{}\n", hex::encode(&key[..])));
    write_atomic(path, text.as_bytes())?;
    // Re-read: another agent process may have raced us; the file on disk is the key.
    fs::metadata(path)?;
    load(path)?.ok_or_else(|| io::Error::other("key vanished after writing it"))
}
