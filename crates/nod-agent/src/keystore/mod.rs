//! The agent's keys, kept in `$XDG_DATA_HOME/nod/`.
//!
//! For now this holds one key: the agent's Ed25519 key, which signs approval decisions. Hosts
//! pin its public half in `/etc/nod/agents.d/<name>.pub` (`nod agent-key` prints it).
//!
//! **Not encrypted at rest yet.** The key is stored as a macos-auth `private_key_hex=` file,
//! mode 0600 in a 0700 directory, and is only as safe as the user's account and disk. Encryption
//! at rest is a later change; until then, anyone who can read files as this user can sign
//! approvals.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::{fmt, io::ErrorKind};

use nix::unistd::getuid;
use nod_proto::keys::{format_private_key_file, parse_private_key_file};
use nod_proto::{KeyId, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::fsutil::{ensure_private_dir, write_atomic};

/// File name of the agent key inside the keystore directory.
pub const AGENT_KEY_FILE: &str = "agent_ed25519.key";

/// The keystore could not give us a key.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("keystore {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{} is readable or writable by group or others (mode {mode:o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{} is owned by uid {uid}, not by you; it cannot be your agent key", path.display())]
    Owner { path: PathBuf, uid: u32 },
    #[error("{} is not a valid agent key ({reason}); move it away to create a new key", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("no randomness from the kernel: {0}")]
    Random(String),
}

/// The agent's signing key with its key id. The secret is zeroized on drop (ed25519-dalek's
/// `zeroize` feature) and never printed by `Debug`.
pub struct AgentKey {
    signing: SigningKey,
    key_id: KeyId,
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentKey")
            .field("key_id", &self.key_id)
            .field("signing", &"<redacted>")
            .finish()
    }
}

impl AgentKey {
    /// Wraps a key; its id is its fingerprint.
    pub fn new(signing: SigningKey) -> Self {
        let key_id = KeyId::fingerprint(&signing.verifying_key());
        Self { signing, key_id }
    }

    /// A fresh key from the kernel's randomness.
    pub fn generate() -> Result<Self, KeystoreError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut seed[..]).map_err(|e| KeystoreError::Random(e.to_string()))?;
        Ok(Self::new(SigningKey::from_bytes(&seed)))
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// `KeyId::fingerprint` of the public key; sent as `agent_key_id`.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }
}

/// The keystore directory.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
}

impl Keystore {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn agent_key_path(&self) -> PathBuf {
        self.dir.join(AGENT_KEY_FILE)
    }

    /// Loads the agent key, creating it on first use.
    pub fn agent_key(&self) -> Result<AgentKey, KeystoreError> {
        let path = self.agent_key_path();
        let io_err = |source| KeystoreError::Io {
            path: path.clone(),
            source,
        };
        ensure_private_dir(&self.dir).map_err(io_err)?;
        match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(mut file) => {
                let meta = file.metadata().map_err(io_err)?;
                if meta.uid() != getuid().as_raw() {
                    return Err(KeystoreError::Owner {
                        path,
                        uid: meta.uid(),
                    });
                }
                if meta.mode() & 0o077 != 0 {
                    return Err(KeystoreError::Permissions {
                        path,
                        mode: meta.mode() & 0o7777,
                    });
                }
                let mut text = Zeroizing::new(String::new());
                file.read_to_string(&mut text).map_err(io_err)?;
                let signing =
                    parse_private_key_file(&text).map_err(|e| KeystoreError::Invalid {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                Ok(AgentKey::new(signing))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let key = AgentKey::generate()?;
                let text = format_private_key_file(key.signing_key());
                write_atomic(&path, text.as_bytes()).map_err(io_err)?;
                Ok(key)
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// Whether the agent key exists yet (without creating it).
    pub fn has_agent_key(&self) -> bool {
        fs::symlink_metadata(self.agent_key_path()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let mut r = [0u8; 8];
        getrandom::getrandom(&mut r).unwrap();
        let dir = std::env::temp_dir().join(format!("nod-ks-{name}-{}", hex::encode(r)));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn creates_key_once_with_private_modes() {
        let root = tempdir("create");
        let store = Keystore::new(&root.join("nod"));
        assert!(!store.has_agent_key());
        let first = store.agent_key().unwrap();
        let second = store.agent_key().unwrap();
        assert_eq!(first.public_key(), second.public_key());
        assert_eq!(first.key_id(), &KeyId::fingerprint(&first.public_key()));
        let dir_mode = fs::metadata(root.join("nod")).unwrap().mode() & 0o777;
        let file_mode = fs::metadata(store.agent_key_path()).unwrap().mode() & 0o777;
        assert_eq!((dir_mode, file_mode), (0o700, 0o600));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn refuses_a_key_readable_by_others() {
        let root = tempdir("perm");
        let store = Keystore::new(&root.join("nod"));
        store.agent_key().unwrap();
        fs::set_permissions(store.agent_key_path(), fs::Permissions::from_mode(0o644)).unwrap();
        let err = store.agent_key().unwrap_err();
        assert!(matches!(err, KeystoreError::Permissions { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let key = AgentKey::new(SigningKey::from_bytes(&[0x42; 32]));
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains("4242"));
        assert!(!shown.contains("66, 66"));
    }
}
