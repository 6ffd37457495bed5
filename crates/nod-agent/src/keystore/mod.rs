//! The agent's keys, sealed at rest in `$XDG_DATA_HOME/nod/` (docs/security.md "Keystore").
//!
//! | File | Holds | Sealed for |
//! |---|---|---|
//! | `agent_ed25519.sealed` | the approval service's Ed25519 key (32-byte seed) | `agent-key` |
//! | `ssh_keys.sealed` | persistent SSH keys with their names and policies | `ssh-keys` |
//! | `user_ca_ed25519.sealed` | the user CA key for session certificates | `user-ca` |
//!
//! Every file is ChaCha20-Poly1305-sealed ([`seal`]) under one random 256-bit wrapping key
//! from a [`WrapKeySource`]; the default is `$XDG_CONFIG_HOME/nod/keystore.key` (0600), kept
//! apart from the data directory so a copy of the data directory alone opens nothing.
//! Each file is replaced atomically, so a reader sees the old or the new version, never half.
//!
//! An agent key from before encryption (`agent_ed25519.key`, plaintext) is read once, sealed,
//! and the plaintext file is overwritten and removed.

pub mod seal;
pub mod ssh;

use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::{Flock, FlockArg};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::{fmt, time::SystemTime};

use nod_proto::keys::parse_private_key_file;
use nod_proto::{KeyId, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::files::{ensure_private_dir, write_atomic};
use crate::log::event;
use crate::paths::Paths;
pub use seal::{FileWrapKey, WrapKey, WrapKeySource};

/// The plaintext agent key of earlier versions; migrated on first use.
pub const AGENT_KEY_FILE: &str = "agent_ed25519.key";
/// The sealed agent key.
pub const AGENT_KEY_SEALED: &str = "agent_ed25519.sealed";
/// Persistent SSH keys.
pub const SSH_KEYS_FILE: &str = "ssh_keys.sealed";
/// The user CA key.
pub const USER_CA_FILE: &str = "user_ca_ed25519.sealed";
/// Lock file serializing changes to the keystore.
pub const LOCK_FILE: &str = ".lock";
/// The wrapping key's file name in the config directory.
pub const WRAP_KEY_FILE: &str = "keystore.key";

const SEALED_FILES: [&str; 3] = [AGENT_KEY_SEALED, SSH_KEYS_FILE, USER_CA_FILE];

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
    #[error("{} is owned by uid {uid}, not by you; it cannot be your key", path.display())]
    Owner { path: PathBuf, uid: u32 },
    #[error("{} is not a valid key file ({reason}); move it away to start over", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{} was sealed with another wrapping key than {wrap}; put back the keystore.key that \
         belongs to this keystore (nothing was changed)",
        path.display()
    )]
    WrongWrapKey { path: PathBuf, wrap: String },
    #[error(
        "{} is damaged or was changed by someone else (it does not authenticate); restore it \
         from a backup or move it away (nothing was changed)",
        path.display()
    )]
    Damaged { path: PathBuf },
    #[error(
        "{} exists but its wrapping key {wrap} is missing; restore that file (a new wrapping key \
         cannot open the keystore)",
        path.display()
    )]
    MissingWrapKey { path: PathBuf, wrap: String },
    #[error("no key named {0:?} in the keystore; see `nod keys list`")]
    NoSuchKey(String),
    #[error("{0}")]
    Refused(String),
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

/// The keystore directory and where its wrapping key comes from.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
    wrap: Arc<dyn WrapKeySource>,
}

impl Keystore {
    pub fn new(dir: &Path, wrap: Arc<dyn WrapKeySource>) -> Self {
        Self {
            dir: dir.to_owned(),
            wrap,
        }
    }

    /// The keystore of `paths`: data in the data directory, wrapping key in
    /// `<config>/keystore.key`.
    pub fn open(paths: &Paths) -> Self {
        Self::new(
            &paths.keystore_dir(),
            Arc::new(FileWrapKey::new(&paths.config_dir.join(WRAP_KEY_FILE))),
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The plaintext agent key file of earlier versions.
    pub fn agent_key_path(&self) -> PathBuf {
        self.dir.join(AGENT_KEY_FILE)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Modification time of a sealed file; `None` when it does not exist.
    pub fn modified(&self, file: &str) -> Option<SystemTime> {
        fs::symlink_metadata(self.path(file))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Holds the keystore's lock until dropped. Every read-modify-write of a sealed file, and
    /// the creation of the wrapping key, happens under it, so two `nod` processes cannot lose
    /// each other's change or create two wrapping keys.
    pub(crate) fn exclusive(&self) -> Result<Flock<fs::File>, KeystoreError> {
        let path = self.path(LOCK_FILE);
        let io_err = |source| KeystoreError::Io {
            path: path.clone(),
            source,
        };
        ensure_private_dir(&self.dir).map_err(io_err)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err)?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io_err(errno.into()))
    }

    /// Reads and opens a sealed file; `None` when it does not exist.
    pub fn read_sealed(
        &self,
        file: &str,
        purpose: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KeystoreError> {
        let path = self.path(file);
        let io_err = |source| KeystoreError::Io {
            path: path.clone(),
            source,
        };
        let mut f = match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        seal::check_private(&path, &f.metadata().map_err(io_err)?)?;
        let mut sealed = Vec::new();
        f.read_to_end(&mut sealed).map_err(io_err)?;
        let Some(key) = self.wrap.load()? else {
            return Err(KeystoreError::MissingWrapKey {
                path,
                wrap: self.wrap.describe(),
            });
        };
        match seal::open(&key, purpose, &sealed) {
            Ok(plain) => Ok(Some(plain)),
            Err(seal::OpenError::WrongKey) => Err(KeystoreError::WrongWrapKey {
                path,
                wrap: self.wrap.describe(),
            }),
            Err(seal::OpenError::Damaged | seal::OpenError::Format) => {
                Err(KeystoreError::Damaged { path })
            }
        }
    }

    /// Seals `plain` into `file`, atomically. Creates the wrapping key on first use, but never
    /// while sealed files exist that a new key could not open.
    pub fn write_sealed(
        &self,
        file: &str,
        purpose: &str,
        plain: &[u8],
    ) -> Result<(), KeystoreError> {
        let path = self.path(file);
        let io_err = |source| KeystoreError::Io {
            path: path.clone(),
            source,
        };
        ensure_private_dir(&self.dir).map_err(io_err)?;
        let key = match self.wrap.load()? {
            Some(key) => key,
            None => {
                if let Some(existing) = SEALED_FILES
                    .iter()
                    .map(|f| self.path(f))
                    .find(|p| fs::symlink_metadata(p).is_ok())
                {
                    return Err(KeystoreError::MissingWrapKey {
                        path: existing,
                        wrap: self.wrap.describe(),
                    });
                }
                self.wrap.create()?
            }
        };
        let sealed = seal::seal(&key, purpose, plain)?;
        write_atomic(&path, &sealed).map_err(io_err)
    }

    /// Loads the agent key: the sealed one; else a plaintext one of an earlier version, which
    /// is sealed and then removed; else a new one.
    pub fn agent_key(&self) -> Result<AgentKey, KeystoreError> {
        let _lock = self.exclusive()?;
        let sealed_path = self.path(AGENT_KEY_SEALED);
        if let Some(seed) = self.read_sealed(AGENT_KEY_SEALED, "agent-key")? {
            let seed: &[u8; 32] = seed[..].try_into().map_err(|_| KeystoreError::Invalid {
                path: sealed_path.clone(),
                reason: "not a 32-byte Ed25519 seed".into(),
            })?;
            let key = AgentKey::new(SigningKey::from_bytes(seed));
            // A migration that stopped between sealing and removing the plaintext.
            if let Some(old) = self.read_plaintext_agent_key()?
                && old.verifying_key() == key.public_key()
            {
                wipe_and_remove(&self.agent_key_path());
            }
            return Ok(key);
        }
        let (key, migrated) = match self.read_plaintext_agent_key()? {
            Some(signing) => (AgentKey::new(signing), true),
            None => (AgentKey::generate()?, false),
        };
        let seed = Zeroizing::new(key.signing_key().to_bytes());
        self.write_sealed(AGENT_KEY_SEALED, "agent-key", &seed[..])?;
        if migrated {
            wipe_and_remove(&self.agent_key_path());
            event!(
                "keystore: sealed the plaintext agent key into {} and removed {}",
                sealed_path.display(),
                self.agent_key_path().display()
            );
        }
        Ok(key)
    }

    /// The plaintext agent key of earlier versions, with the owner and mode checks it had.
    fn read_plaintext_agent_key(&self) -> Result<Option<SigningKey>, KeystoreError> {
        let path = self.agent_key_path();
        let io_err = |source| KeystoreError::Io {
            path: path.clone(),
            source,
        };
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        seal::check_private(&path, &file.metadata().map_err(io_err)?)?;
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text).map_err(io_err)?;
        parse_private_key_file(&text)
            .map(Some)
            .map_err(|e| KeystoreError::Invalid {
                path,
                reason: e.to_string(),
            })
    }

    /// Whether the agent key exists yet (without creating it).
    pub fn has_agent_key(&self) -> bool {
        fs::symlink_metadata(self.path(AGENT_KEY_SEALED)).is_ok()
            || fs::symlink_metadata(self.agent_key_path()).is_ok()
    }
}

/// Keeps other processes of this user from reading keys out of our memory (ptrace, core
/// dumps). The agent does this at start; `nod keys` does it before it opens the keystore.
pub fn make_non_dumpable() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        event!("cannot make this process non-dumpable: {e}");
    }
}

/// Overwrites a small secret file with zeros, then removes it. Best effort: on copy-on-write
/// file systems and SSDs the old blocks may survive (docs/security.md says so).
fn wipe_and_remove(path: &Path) {
    if let Ok(len) = fs::metadata(path).map(|m| m.len())
        && let Ok(mut f) = OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
    {
        let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
        let _ = f.write_all(&zeros).and_then(|()| f.sync_all());
    }
    if let Err(e) = fs::remove_file(path) {
        event!("keystore: cannot remove {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use nod_proto::keys::format_private_key_file;

    use super::*;

    pub(crate) fn tempdir(name: &str) -> PathBuf {
        crate::files::test_dir(&format!("ks-{name}"))
    }

    pub(crate) fn store(root: &Path) -> Keystore {
        Keystore::open(&Paths::under(root))
    }

    #[test]
    fn creates_key_once_sealed_with_private_modes() {
        let root = tempdir("create");
        let store = store(&root);
        assert!(!store.has_agent_key());
        let first = store.agent_key().unwrap();
        let second = store.agent_key().unwrap();
        assert_eq!(first.public_key(), second.public_key());
        assert_eq!(first.key_id(), &KeyId::fingerprint(&first.public_key()));
        let mode = |p: PathBuf| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(root.join("data/nod")), 0o700);
        assert_eq!(mode(store.path(AGENT_KEY_SEALED)), 0o600);
        assert_eq!(mode(root.join("config/nod/keystore.key")), 0o600);
        assert!(!store.agent_key_path().exists());
        let sealed = fs::read(store.path(AGENT_KEY_SEALED)).unwrap();
        let seed = first.signing_key().to_bytes();
        assert!(!sealed.windows(32).any(|w| w == seed));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn migrates_a_plaintext_agent_key_and_removes_it() {
        let root = tempdir("migrate");
        let store = store(&root);
        let old = SigningKey::from_bytes(&[7; 32]);
        ensure_private_dir(store.dir()).unwrap();
        write_atomic(
            &store.agent_key_path(),
            format_private_key_file(&old).as_bytes(),
        )
        .unwrap();
        assert!(store.has_agent_key());
        let key = store.agent_key().unwrap();
        assert_eq!(key.public_key(), old.verifying_key());
        assert!(!store.agent_key_path().exists());
        assert!(store.path(AGENT_KEY_SEALED).exists());
        assert_eq!(store.agent_key().unwrap().public_key(), old.verifying_key());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn refuses_a_sealed_file_readable_by_others() {
        let root = tempdir("perm");
        let store = store(&root);
        store.agent_key().unwrap();
        fs::set_permissions(
            store.path(AGENT_KEY_SEALED),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = store.agent_key().unwrap_err();
        assert!(matches!(err, KeystoreError::Permissions { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn wrong_or_missing_wrap_key_and_damage_fail_clearly_without_changes() {
        let root = tempdir("wrap");
        let store = store(&root);
        let key = store.agent_key().unwrap();
        let sealed_path = store.path(AGENT_KEY_SEALED);
        let before = fs::read(&sealed_path).unwrap();
        let wrap = root.join("config/nod/keystore.key");

        fs::write(&wrap, format!("{}\n", hex::encode([9u8; 32]))).unwrap();
        let err = store.agent_key().unwrap_err();
        assert!(matches!(err, KeystoreError::WrongWrapKey { .. }), "{err}");
        assert_eq!(fs::read(&sealed_path).unwrap(), before);

        fs::remove_file(&wrap).unwrap();
        let err = store.agent_key().unwrap_err();
        assert!(matches!(err, KeystoreError::MissingWrapKey { .. }), "{err}");
        assert!(
            !wrap.exists(),
            "no new wrapping key over existing sealed files"
        );
        assert_eq!(fs::read(&sealed_path).unwrap(), before);

        let root2 = tempdir("wrap2");
        let store2 = super::tests::store(&root2);
        let _ = store2.agent_key().unwrap();
        let mut damaged = fs::read(store2.path(AGENT_KEY_SEALED)).unwrap();
        damaged[30] ^= 0x40;
        fs::write(store2.path(AGENT_KEY_SEALED), &damaged).unwrap();
        let err = store2.agent_key().unwrap_err();
        assert!(matches!(err, KeystoreError::Damaged { .. }), "{err}");
        assert_eq!(fs::read(store2.path(AGENT_KEY_SEALED)).unwrap(), damaged);
        drop(key);
        fs::remove_dir_all(root).unwrap();
        fs::remove_dir_all(root2).unwrap();
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
