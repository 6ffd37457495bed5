//! `nod-helper gen-key`: a new host key pair in macos-auth's file format.
//!
//! The private key is created with `O_EXCL` and mode 0600 from the start, so there is no moment
//! at which it exists with wider permissions. Replacing a key (`--force`) writes a temporary
//! file next to it and renames it over, so a crash never leaves a half-written key.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nod_proto::keys::{format_private_key_file, format_public_key_file, openssh_public_line};
use nod_proto::{KeyId, SigningKey};
use zeroize::Zeroizing;

use crate::error::HelperError;

/// What `gen-key` was asked to do.
#[derive(Debug, Clone)]
pub struct GenKeyArgs {
    pub private_key_file: PathBuf,
    pub public_key_file: PathBuf,
    pub key_id: Option<String>,
    pub force: bool,
}

/// The result, for printing.
#[derive(Debug)]
pub struct GeneratedKey {
    pub key_id: KeyId,
    pub openssh_line: String,
}

/// Generates a key pair and writes both files.
pub fn run(args: &GenKeyArgs) -> Result<GeneratedKey, HelperError> {
    let key_id_arg = match &args.key_id {
        Some(id) => Some(KeyId::new(id).map_err(|e| HelperError::BadConfig {
            path: args.public_key_file.clone(),
            problem: format!("--key-id: {e}"),
        })?),
        None => None,
    };
    if !args.force {
        // Check both before writing either, so a refusal leaves nothing half done.
        for path in [&args.private_key_file, &args.public_key_file] {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(HelperError::KeyExists { path: path.clone() });
            }
        }
    }

    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut seed[..]).map_err(|e| HelperError::System {
        what: "the kernel random generator failed",
        detail: e.to_string(),
        fix: crate::error::RANDOM_FIX,
    })?;
    let key = SigningKey::from_bytes(&seed);
    let public = key.verifying_key();
    let key_id = key_id_arg.unwrap_or_else(|| KeyId::fingerprint(&public));
    let host = hostname();
    let comment = match &host {
        Some(h) => format!("nod host key for {h}"),
        None => "nod host key".to_owned(),
    };

    let private_text = format_private_key_file(&key);
    write_key(
        &args.private_key_file,
        private_text.as_bytes(),
        0o600,
        args.force,
    )?;
    let public_text = format_public_key_file(&public, &key_id, &comment);
    write_key(
        &args.public_key_file,
        public_text.as_bytes(),
        0o644,
        args.force,
    )?;

    Ok(GeneratedKey {
        openssh_line: openssh_public_line(
            &public,
            &host.map(|h| format!("nod-host@{h}")).unwrap_or_default(),
        ),
        key_id,
    })
}

fn hostname() -> Option<String> {
    nix::unistd::gethostname().ok()?.into_string().ok()
}

fn write_error(path: &Path) -> impl Fn(std::io::Error) -> HelperError + '_ {
    move |error| HelperError::KeyWrite {
        path: path.to_owned(),
        error,
    }
}

/// Creates `path` exclusively with `mode`, or with `force` replaces it atomically.
fn write_key(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<(), HelperError> {
    if !force {
        return write_new(path, contents, mode).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => HelperError::KeyExists {
                path: path.to_owned(),
            },
            _ => write_error(path)(e),
        });
    }
    let name = path
        .file_name()
        .ok_or_else(|| write_error(path)(std::io::Error::other("the path names no file")))?;
    let mut suffix = [0u8; 8];
    getrandom::getrandom(&mut suffix).map_err(|e| HelperError::System {
        what: "the kernel random generator failed",
        detail: e.to_string(),
        fix: crate::error::RANDOM_FIX,
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", hex::encode(suffix)));
    let tmp = path.with_file_name(tmp_name);
    let result = write_new(&tmp, contents, mode).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_error(path))
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)?;
    // The umask may have taken bits away (e.g. 0644 → 0600); set exactly what we mean.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}
