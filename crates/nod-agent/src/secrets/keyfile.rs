//! The 32-byte keys earlier versions kept beside their data (`secrets.key`,
//! `secrets-policy.key` in `$XDG_DATA_HOME/nod/`, mode 0600, as hex): read once to migrate
//! what they protect to the keystore's wrapping key, then wiped and removed.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::unistd::getuid;
use zeroize::Zeroizing;

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

/// Overwrites an old key file with zeros and removes it. Best effort: on copy-on-write file
/// systems and SSDs the old blocks may survive (docs/security.md says so).
pub fn wipe_and_remove(path: &Path) {
    use std::io::Write;
    if let Ok(mut f) = OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
    {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0).min(4096);
        let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
        let _ = f.write_all(&zeros).and_then(|()| f.sync_all());
    }
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        crate::log::event!("cannot remove {}: {e}", path.display());
    }
}
