//! The agent's keys and secrets, sealed at rest (docs/security.md "Keys at rest").
//!
//! | File | Holds | Sealed for |
//! |---|---|---|
//! | `$XDG_DATA_HOME/nod/agent_ed25519.sealed` | the approval service's Ed25519 key (32-byte seed) | `agent-key` |
//! | `$XDG_DATA_HOME/nod/ssh_keys.sealed` | persistent SSH keys with their names and policies | `ssh-keys` |
//! | `$XDG_DATA_HOME/nod/user_ca_ed25519.sealed` | the user CA key for session certificates | `user-ca` |
//! | `$XDG_DATA_HOME/nod/secrets.enc` | the encrypted-file secrets backend | `secrets` |
//! | `$XDG_STATE_HOME/nod/secrets-policy.json` | MAC'd with a key derived for `secrets-policy` | — |
//!
//! One sealing primitive ([`seal`]) and one random 256-bit wrapping key for all of them, with
//! the purpose as associated data, so no blob can stand in for another and nothing keeps a key
//! of its own. The wrapping key is kept by one [`protector`] in `$XDG_CONFIG_HOME/nod/
//! keystore.key`: a plain file, a passphrase (Argon2id), or the TPM. Changing protector
//! rewrites that one file; no blob is re-encrypted.
//!
//! A keystore opens its wrapping key once and keeps it in memory ([`Keystore`] clones share
//! it). Until it can (a passphrase nobody typed yet, a TPM PIN), the keystore is *locked*: every
//! use fails with [`KeystoreError::Locked`], and each later use looks again (in the kernel
//! keyring, [`cache`], where `nod keys unlock` puts the key), so an agent started locked picks
//! the key up without a restart.
//!
//! Each file is replaced atomically, so a reader sees the old or the new version, never half.
//! An agent key from before encryption (`agent_ed25519.key`, plaintext) is read once, sealed,
//! and the plaintext file is overwritten and removed.

pub mod cache;
pub mod openssh;
pub mod protector;
pub mod seal;
pub mod ssh;
mod tpm;

use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use std::{fmt, time::SystemTime};

use nix::fcntl::{Flock, FlockArg};

use nod_proto::keys::parse_private_key_file;
use nod_proto::{KeyId, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::files::{ensure_private_dir, remove_stale_temps, write_atomic};
use crate::log::event;
use crate::paths::Paths;
pub use protector::{Argon2Cost, Protector, ProtectorKind};
pub use seal::WrapKey;

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
    /// The wrapping key is protected by something nobody has supplied yet.
    #[error("keystore is locked: run `nod keys unlock` ({0})")]
    Locked(String),
    #[error("wrong {0}; nothing was changed")]
    WrongSecret(&'static str),
    #[error("TPM: {0}")]
    Tpm(String),
    #[error("kernel keyring: {0}")]
    Keyring(String),
}

impl KeystoreError {
    /// Whether this is "not unlocked (yet)" rather than a damaged or missing keystore: the
    /// agent runs on, refusing what needs a key, and looks again on the next request.
    pub fn is_locked(&self) -> bool {
        matches!(self, Self::Locked(_) | Self::Tpm(_))
    }
}

/// Asks the person for the passphrase or the TPM PIN: a terminal prompt in `nod keys` and in
/// an agent started from a terminal. `None`: nobody can be asked (or they gave up).
pub trait Asker: fmt::Debug + Send + Sync {
    fn ask(&self, prompt: &str) -> Option<Zeroizing<Vec<u8>>>;
}

/// How long a failed TPM unseal (no TPM, another TPM) is not retried: a locked agent looks
/// again on requests, and a request must not cost a TPM round trip each time.
const TPM_RETRY: Duration = Duration::from_secs(5);

/// The keystore's wrapping key as far as it is known; shared by every clone of a keystore.
#[derive(Debug)]
struct Unlock {
    protector_path: PathBuf,
    key: OnceLock<WrapKey>,
    asker: Mutex<Option<Arc<dyn Asker>>>,
    /// When the TPM last failed to unseal, and why.
    tpm_failed: Mutex<Option<(Instant, String)>>,
    /// This process created the file protector, and said so with its warning.
    created_here: std::sync::atomic::AtomicBool,
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

/// The keystore directory and its wrapping key.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
    unlock: Arc<Unlock>,
}

impl Keystore {
    /// A keystore in `dir` whose protector file is `protector_path`. Nothing is read yet.
    pub fn new(dir: &Path, protector_path: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            unlock: Arc::new(Unlock {
                protector_path: protector_path.to_owned(),
                key: OnceLock::new(),
                asker: Mutex::new(None),
                tpm_failed: Mutex::new(None),
                created_here: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The keystore of `paths`: data in the data directory, protector file
    /// `<config>/keystore.key`.
    pub fn open(paths: &Paths) -> Self {
        Self::new(&paths.keystore_dir(), &paths.config_dir.join(WRAP_KEY_FILE))
    }

    /// Lets the keystore ask for a passphrase or PIN when the key is not cached.
    pub fn with_asker(self, asker: Arc<dyn Asker>) -> Self {
        *crate::lock(&self.unlock.asker) = Some(asker);
        self
    }

    /// `keystore.key`.
    pub fn protector_path(&self) -> &Path {
        &self.unlock.protector_path
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
        self.open_blob(&path, purpose, &sealed).map(Some)
    }

    /// Opens the sealed bytes of the file at `path` (named in errors).
    pub fn open_blob(
        &self,
        path: &Path,
        purpose: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        let Some(key) = self.wrap_key()? else {
            return Err(KeystoreError::MissingWrapKey {
                path: path.to_owned(),
                wrap: self.protector_path().display().to_string(),
            });
        };
        match seal::open(key, purpose, sealed) {
            Ok(plain) => Ok(plain),
            Err(seal::OpenError::WrongKey) => Err(KeystoreError::WrongWrapKey {
                path: path.to_owned(),
                wrap: self.protector_path().display().to_string(),
            }),
            Err(seal::OpenError::Damaged | seal::OpenError::Format) => {
                Err(KeystoreError::Damaged {
                    path: path.to_owned(),
                })
            }
        }
    }

    /// Seals `plain` for `purpose` under the wrapping key, creating the key on first use
    /// ([`Self::key_for_writing`]).
    pub fn seal_blob(&self, purpose: &str, plain: &[u8]) -> Result<Vec<u8>, KeystoreError> {
        seal::seal(self.key_for_writing()?, purpose, plain)
    }

    /// A key derived from the wrapping key for `purpose` (see [`WrapKey::derive`]); `None`
    /// before any wrapping key exists.
    pub fn derive(&self, purpose: &str) -> Result<Option<Zeroizing<[u8; 32]>>, KeystoreError> {
        Ok(self.wrap_key()?.map(|k| k.derive(purpose)))
    }

    /// Like [`Self::derive`], creating the wrapping key on first use.
    pub fn derive_for_writing(&self, purpose: &str) -> Result<Zeroizing<[u8; 32]>, KeystoreError> {
        Ok(self.key_for_writing()?.derive(purpose))
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
        let sealed = self.seal_blob(purpose, plain)?;
        write_atomic(&path, &sealed).map_err(io_err)
    }

    /// The wrapping key; a new one under the file protector if there is none yet and no sealed
    /// file exists that a new key could not open.
    fn key_for_writing(&self) -> Result<&WrapKey, KeystoreError> {
        if let Some(key) = self.wrap_key()? {
            return Ok(key);
        }
        if let Some(existing) = SEALED_FILES
            .iter()
            .map(|f| self.path(f))
            .find(|p| fs::symlink_metadata(p).is_ok())
        {
            return Err(KeystoreError::MissingWrapKey {
                path: existing,
                wrap: self.protector_path().display().to_string(),
            });
        }
        let key = WrapKey::generate()?;
        self.write_protector(&Protector::File(Zeroizing::new(*key.bytes())))?;
        self.unlock
            .created_here
            .store(true, std::sync::atomic::Ordering::Relaxed);
        event!(
            "keystore: new wrapping key in {} (protector: file). Anyone with a copy of this \
             disk can open every key and secret; protect it with `nod keys protect tpm` or \
             `nod keys protect passphrase`",
            self.protector_path().display()
        );
        Ok(self.unlock.key.get_or_init(|| key))
    }

    /// Reads `keystore.key`; `None` if there is none.
    pub fn protector(&self) -> Result<Option<Protector>, KeystoreError> {
        let path = self.protector_path();
        let io_err = |source| KeystoreError::Io {
            path: path.to_owned(),
            source,
        };
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        seal::check_private(path, &file.metadata().map_err(io_err)?)?;
        let mut text = Zeroizing::new(String::new());
        file.take(protector::MAX_FILE)
            .read_to_string(&mut text)
            .map_err(io_err)?;
        Protector::parse(&text)
            .map(Some)
            .map_err(|reason| KeystoreError::Invalid {
                path: path.to_owned(),
                reason,
            })
    }

    /// Replaces `keystore.key` atomically. When the old file held the key in the clear, its
    /// blocks are overwritten after the rename (best effort, as [`wipe_and_remove`]).
    fn write_protector(&self, protector: &Protector) -> Result<(), KeystoreError> {
        let path = self.protector_path();
        let io_err = |source| KeystoreError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            ensure_private_dir(dir).map_err(io_err)?;
        }
        let plain_before = matches!(self.protector(), Ok(Some(Protector::File(_))));
        let old = plain_before
            .then(|| {
                OpenOptions::new()
                    .write(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(path)
                    .ok()
            })
            .flatten();
        write_atomic(path, protector.encode().as_bytes()).map_err(io_err)?;
        if let Some(mut old) = old {
            let len = old.metadata().map(|m| m.len()).unwrap_or(0);
            let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
            let _ = old.write_all(&zeros).and_then(|()| old.sync_all());
        }
        Ok(())
    }

    /// The wrapping key, once known: from memory; else from the protector (a file, the key
    /// cache, the TPM, or the asker). `Ok(None)`: no wrapping key exists yet.
    pub fn wrap_key(&self) -> Result<Option<&WrapKey>, KeystoreError> {
        if let Some(key) = self.unlock.key.get() {
            return Ok(Some(key));
        }
        let Some(protector) = self.protector()? else {
            return Ok(None);
        };
        let key = self.unwrap(&protector, true)?;
        Ok(Some(self.unlock.key.get_or_init(|| key)))
    }

    /// Whether the wrapping key is in memory.
    pub fn is_unlocked(&self) -> bool {
        self.unlock.key.get().is_some()
    }

    fn ask(&self, prompt: &str) -> Option<Zeroizing<Vec<u8>>> {
        let asker = crate::lock(&self.unlock.asker).clone()?;
        asker.ask(prompt)
    }

    /// Opens the wrapping key from `protector`. The key cache comes first (no prompt, no TPM
    /// round trip); `may_ask` allows the asker.
    fn unwrap(&self, protector: &Protector, may_ask: bool) -> Result<WrapKey, KeystoreError> {
        let key_id = protector.key_id();
        match protector {
            Protector::File(key) => return Ok(WrapKey::from_bytes(**key)),
            _ if protector.needs_secret() => {
                if let Some(key) = cache::load(&key_id) {
                    return Ok(key);
                }
            }
            _ => {}
        }
        match protector {
            Protector::File(_) => unreachable!("returned above"),
            Protector::Passphrase { .. } => {
                let prompt = format!(
                    "nod keystore passphrase ({}): ",
                    self.protector_path().display()
                );
                let Some(pass) = may_ask.then(|| self.ask(&prompt)).flatten() else {
                    return Err(KeystoreError::Locked(
                        "its key is protected by a passphrase".into(),
                    ));
                };
                let key = protector
                    .open_passphrase(&pass)?
                    .ok_or(KeystoreError::WrongSecret("passphrase"))?;
                // So that the agent and the next `nod keys` find it without asking again.
                if let Err(e) = cache::store(&key, cache::DEFAULT_TIMEOUT) {
                    event!("keystore: unlocked, but not cached ({e})");
                }
                Ok(key)
            }
            Protector::Tpm { pin, .. } => {
                if *pin {
                    let Some(pin) = may_ask
                        .then(|| self.ask("nod keystore TPM PIN: "))
                        .flatten()
                    else {
                        return Err(KeystoreError::Locked(
                            "its key is sealed to the TPM with a PIN".into(),
                        ));
                    };
                    let key = self.unseal(protector, Some(&pin))?;
                    if let Err(e) = cache::store(&key, cache::DEFAULT_TIMEOUT) {
                        event!("keystore: unlocked, but not cached ({e})");
                    }
                    Ok(key)
                } else {
                    self.unseal(protector, None)
                }
            }
        }
    }

    /// Unseals a TPM protector, at most once per [`TPM_RETRY`] after a failure.
    fn unseal(&self, protector: &Protector, pin: Option<&[u8]>) -> Result<WrapKey, KeystoreError> {
        let mut failed = crate::lock(&self.unlock.tpm_failed);
        if let Some((when, why)) = &*failed
            && pin.is_none()
            && when.elapsed() < TPM_RETRY
        {
            return Err(KeystoreError::Tpm(why.clone()));
        }
        match unseal_tpm(protector, pin) {
            Ok(key) => {
                *failed = None;
                Ok(key)
            }
            Err(e) => {
                if let KeystoreError::Tpm(why) = &e {
                    *failed = Some((Instant::now(), why.clone()));
                }
                Err(e)
            }
        }
    }

    /// Creates the wrapping key under `kind` (`nod keys init`). Refused if there is one.
    pub fn init(&self, kind: ProtectorKind, secret: Option<&[u8]>) -> Result<(), KeystoreError> {
        let _lock = self.exclusive()?;
        if self.protector()?.is_some() {
            return Err(KeystoreError::Refused(format!(
                "{} exists already; change its protector with `nod keys protect {kind}`",
                self.protector_path().display()
            )));
        }
        if let Some(existing) = SEALED_FILES
            .iter()
            .map(|f| self.path(f))
            .find(|p| fs::symlink_metadata(p).is_ok())
        {
            return Err(KeystoreError::MissingWrapKey {
                path: existing,
                wrap: self.protector_path().display().to_string(),
            });
        }
        let key = WrapKey::generate()?;
        let protector = build_protector(&key, kind, secret)?;
        self.write_protector(&protector)?;
        if protector.needs_secret() {
            let _ = cache::store(&key, cache::DEFAULT_TIMEOUT);
        }
        let _ = self.unlock.key.set(key);
        Ok(())
    }

    /// Re-wraps the wrapping key under `kind` (`nod keys protect`); the blobs stay as they are.
    /// The current protector is opened first (asking if need be). Creates the key if there is
    /// none yet.
    pub fn protect(&self, kind: ProtectorKind, secret: Option<&[u8]>) -> Result<(), KeystoreError> {
        let _lock = self.exclusive()?;
        let Some(current) = self.protector()? else {
            drop(_lock);
            return self.init(kind, secret);
        };
        let key = match self.unlock.key.get() {
            Some(key) => WrapKey::from_bytes(*key.bytes()),
            None => self.unwrap(&current, true)?,
        };
        let protector = build_protector(&key, kind, secret)?;
        if let Protector::Tpm { .. } = &protector {
            // Sealed is not enough: it must unseal here before the old protector goes.
            let back = unseal_tpm(&protector, secret)?;
            protector::check_id(&back, &key.id())?;
        }
        self.write_protector(&protector)?;
        if protector.needs_secret() {
            let _ = cache::store(&key, cache::DEFAULT_TIMEOUT);
        } else {
            cache::remove(&key.id());
        }
        let _ = self.unlock.key.set(key);
        Ok(())
    }

    /// Opens the wrapping key with `secret` (or the TPM) and caches it in the kernel keyring
    /// for `timeout` (`nod keys unlock`). Refused for the file protector, which has nothing to
    /// unlock.
    pub fn unlock_to_cache(
        &self,
        secret: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ProtectorKind, KeystoreError> {
        let Some(protector) = self.protector()? else {
            return Err(KeystoreError::Refused(
                "there is no keystore yet; create it with `nod keys init`".into(),
            ));
        };
        let key = match (&protector, secret) {
            (Protector::File(_), _) => {
                return Err(KeystoreError::Refused(format!(
                    "the keystore key is a plain file ({}), so there is nothing to unlock; \
                     protect it with `nod keys protect tpm` or `nod keys protect passphrase`",
                    self.protector_path().display()
                )));
            }
            (Protector::Passphrase { .. }, Some(pass)) => protector
                .open_passphrase(pass)?
                .ok_or(KeystoreError::WrongSecret("passphrase"))?,
            (Protector::Tpm { .. }, secret) => unseal_tpm(&protector, secret)?,
            (Protector::Passphrase { .. }, None) => {
                return Err(KeystoreError::Refused("no passphrase given".into()));
            }
        };
        cache::store(&key, timeout)?;
        let _ = self.unlock.key.set(key);
        Ok(protector.kind())
    }

    /// Removes the cached key (`nod keys lock`); true if one was cached.
    pub fn lock_cache(&self) -> Result<bool, KeystoreError> {
        Ok(match self.protector()? {
            Some(p) => cache::remove(&p.key_id()),
            None => false,
        })
    }

    /// Whether the key of the current protector is in the kernel keyring.
    pub fn is_cached(&self) -> Result<bool, KeystoreError> {
        Ok(match self.protector()? {
            Some(p) => cache::load(&p.key_id()).is_some(),
            None => false,
        })
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

/// A protector of `kind` for `key`. `secret` is the passphrase, or the TPM PIN (optional).
fn build_protector(
    key: &WrapKey,
    kind: ProtectorKind,
    secret: Option<&[u8]>,
) -> Result<Protector, KeystoreError> {
    match kind {
        ProtectorKind::File => Ok(Protector::File(Zeroizing::new(*key.bytes()))),
        ProtectorKind::Passphrase => {
            let pass = secret.filter(|p| !p.is_empty()).ok_or_else(|| {
                KeystoreError::Refused("an empty passphrase protects nothing".into())
            })?;
            Protector::passphrase(key, pass, Argon2Cost::default())
        }
        ProtectorKind::Tpm => seal_tpm(key, secret.filter(|p| !p.is_empty())),
    }
}

fn seal_tpm(key: &WrapKey, pin: Option<&[u8]>) -> Result<Protector, KeystoreError> {
    let (public, private) = tpm::seal(key, pin)?;
    Ok(Protector::Tpm {
        key_id: key.id(),
        pin: pin.is_some(),
        public,
        private,
    })
}

fn unseal_tpm(protector: &Protector, pin: Option<&[u8]>) -> Result<WrapKey, KeystoreError> {
    let Protector::Tpm {
        key_id,
        pin: needs_pin,
        public,
        private,
    } = protector
    else {
        return Err(KeystoreError::Refused("not a TPM protector".into()));
    };
    if *needs_pin && pin.is_none() {
        return Err(KeystoreError::Locked(
            "its key is sealed to the TPM with a PIN".into(),
        ));
    }
    let pin = if *needs_pin { pin } else { None };
    let key = tpm::unseal(public, private, pin)?.ok_or(KeystoreError::WrongSecret("TPM PIN"))?;
    protector::check_id(&key, key_id)?;
    Ok(key)
}

/// For messages: the TPM nod would use.
pub fn tpm_description() -> String {
    tpm::describe()
}

/// The agent's keystore, opened at start ([`open_for_agent`]): the keystore, and the agent
/// key as soon as it can be had.
#[derive(Debug)]
pub struct AgentKeystore {
    pub keystore: Keystore,
    pub agent_key: Arc<AgentKeySlot>,
}

/// The approval service's key, loaded on first use once the keystore is unlocked.
#[derive(Debug)]
pub struct AgentKeySlot {
    keystore: Keystore,
    key: OnceLock<AgentKey>,
}

impl AgentKeySlot {
    pub fn new(keystore: Keystore) -> Self {
        Self {
            keystore,
            key: OnceLock::new(),
        }
    }

    /// A slot that holds `key` already (tests, and callers that loaded it themselves).
    pub fn with_key(keystore: Keystore, key: AgentKey) -> Self {
        let slot = Self::new(keystore);
        let _ = slot.key.set(key);
        slot
    }

    /// The agent key; [`KeystoreError::Locked`] until the keystore is unlocked.
    pub fn get(&self) -> Result<&AgentKey, KeystoreError> {
        if let Some(key) = self.key.get() {
            return Ok(key);
        }
        let key = self.keystore.agent_key()?;
        Ok(self.key.get_or_init(|| key))
    }
}

/// Opens the keystore for the agent, once at start:
/// - removes temp files that killed writers left in nod's directories;
/// - opens the wrapping key (from the file, the TPM, the key cache, or `asker` when the agent
///   has a terminal) and loads the agent key;
/// - says in one line how the keys are protected at rest, and plainly when a copy of the disk
///   gives them away.
///
/// A locked keystore is not an error: the agent runs, and what needs a key is refused with
/// "keystore is locked: run `nod keys unlock`" until the key shows up in the cache.
pub fn open_for_agent(
    paths: &Paths,
    asker: Option<Arc<dyn Asker>>,
) -> Result<AgentKeystore, KeystoreError> {
    let keystore = prepare(paths, asker);
    let slot = AgentKeySlot::new(keystore.clone());
    match slot.get() {
        Ok(_) => {}
        Err(e) if e.is_locked() => {
            event!("{e}; until then, requests that need a key are refused");
        }
        Err(e) => return Err(e),
    }
    describe_at_rest(&keystore);
    Ok(AgentKeystore {
        keystore,
        agent_key: Arc::new(slot),
    })
}

/// [`open_for_agent`] for the drop-in `nod ssh-agent`, which has no agent key: nothing is
/// created, and a keystore that does not open only means no persistent keys are offered.
pub fn open_for_ssh_agent(paths: &Paths) -> Keystore {
    let keystore = prepare(paths, None);
    if let Err(e) = keystore.wrap_key() {
        event!("{e}");
    }
    describe_at_rest(&keystore);
    keystore
}

/// Removes the temp files that killed writers left in nod's directories.
fn prepare(paths: &Paths, asker: Option<Arc<dyn Asker>>) -> Keystore {
    let mut keystore = Keystore::open(paths);
    if let Some(asker) = asker {
        keystore = keystore.with_asker(asker);
    }
    let mut stale = 0;
    for dir in [
        paths.keystore_dir(),
        paths.config_dir.clone(),
        paths.state_dir.clone(),
    ] {
        stale += remove_stale_temps(&dir);
    }
    if stale > 0 {
        event!("keystore: removed {stale} temp files left by interrupted writes");
    }
    keystore
}

/// One line on how the keys are kept at rest, plain about a file protector (unless the line
/// that created it just said so).
fn describe_at_rest(keystore: &Keystore) {
    match keystore.protector().ok().flatten().map(|p| p.kind()) {
        Some(ProtectorKind::File)
            if keystore
                .unlock
                .created_here
                .load(std::sync::atomic::Ordering::Relaxed) => {}
        Some(ProtectorKind::File) => event!(
            "keys at rest: protector file ({}): anyone with a copy of this disk gets every key \
             and secret; use `nod keys protect tpm` or `nod keys protect passphrase`",
            keystore.protector_path().display()
        ),
        None => event!("keys at rest: no keystore yet"),
        Some(kind) => event!(
            "keys at rest: protector {kind}; keystore {}",
            if keystore.is_unlocked() {
                "unlocked"
            } else {
                "locked"
            }
        ),
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
pub(crate) mod tests {
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

        // A keystore keeps the key it opened; a new one reads the file again.
        fs::write(&wrap, format!("{}\n", hex::encode([9u8; 32]))).unwrap();
        assert!(store.agent_key().is_ok());
        let err = super::tests::store(&root).agent_key().unwrap_err();
        assert!(matches!(err, KeystoreError::WrongWrapKey { .. }), "{err}");
        assert_eq!(fs::read(&sealed_path).unwrap(), before);

        fs::remove_file(&wrap).unwrap();
        let err = super::tests::store(&root).agent_key().unwrap_err();
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
