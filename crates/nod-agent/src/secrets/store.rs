//! The encrypted file backend: `$XDG_DATA_HOME/nod/secrets.enc`.
//!
//! The whole store is one blob sealed by the keystore ([`crate::keystore::seal`], purpose
//! `secrets`) under the keystore's wrapping key: the store keeps no key of its own, and it is as
//! safe at rest as the keystore's protector makes it (docs/security.md "Keys at rest").
//!
//! Earlier versions kept an XChaCha20-Poly1305 ciphertext (`nod-secrets-v1\n` ‖ nonce ‖
//! ciphertext) under a key in `secrets.key` next to it. Such a store is read once with that
//! key, sealed anew and written in place (atomically), and only then is `secrets.key` wiped
//! and removed; a migration cut short at any point leaves a store that opens.
//!
//! Items are kept by service, then by target, in nested maps, so service `a` can never reach
//! items of service `a:b` (no separator is ever joined or split). Every change writes a whole
//! new file (temp + fsync + rename, then fsync of the directory), so a batch is all or
//! nothing, even across a crash.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use nod_client::proto::SecretValue;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::keyfile::{self, Key32};
use crate::files::write_atomic;
use crate::keystore::{Keystore, KeystoreError};
use crate::log::event;

/// The sealed blob's purpose.
const PURPOSE: &str = "secrets";
/// Magic of the store format of earlier versions.
const LEGACY_MAGIC: &[u8] = b"nod-secrets-v1\n";
const NONCE_LEN: usize = 24;
/// Largest store read (a store this big is far past any sane use).
const MAX_STORE: u64 = 64 * 1024 * 1024;

/// One stored secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredItem {
    pub value: SecretValue,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

type Items = BTreeMap<String, BTreeMap<String, StoredItem>>;

/// The store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("secrets store {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "secrets store {} cannot be decrypted with {} (wrong key or damaged file); restore both \
         from a backup, or move the store away to start empty",
        path.display(),
        key.display()
    )]
    Decrypt { path: PathBuf, key: PathBuf },
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    #[error(
        "secrets store {} opens but does not parse; written by a newer nod? (nothing was changed)",
        path.display()
    )]
    Format { path: PathBuf },
}

impl StoreError {
    /// "Not unlocked yet": retried on the next request.
    pub fn is_locked(&self) -> bool {
        matches!(self, Self::Keystore(e) if e.is_locked())
    }
}

/// A change to one service, applied whole or not at all.
#[derive(Debug)]
pub enum Change {
    Write {
        items: Vec<(String, SecretValue)>,
        attributes: BTreeMap<String, String>,
    },
    Delete {
        targets: Vec<String>,
    },
}

/// The decrypted store, in memory; every change is written through.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    keystore: Keystore,
    items: Items,
}

impl FileStore {
    /// Opens `path`, sealed by `keystore`. A store of an earlier version, with its key at
    /// `legacy_key_path`, is migrated first.
    pub fn open(
        path: &Path,
        legacy_key_path: &Path,
        keystore: &Keystore,
    ) -> Result<Self, StoreError> {
        let io_err = |p: &Path| {
            let p = p.to_owned();
            move |source| StoreError::Io { path: p, source }
        };
        let data = match fs::File::open(path) {
            Ok(f) => {
                use std::io::Read;
                let mut d = Vec::new();
                f.take(MAX_STORE)
                    .read_to_end(&mut d)
                    .map_err(io_err(path))?;
                Some(d)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(path)(e)),
        };
        let mut store = Self {
            path: path.to_owned(),
            keystore: keystore.clone(),
            items: Items::new(),
        };
        match data {
            None => {}
            Some(data) if data.starts_with(LEGACY_MAGIC) => {
                // Data without its key must not silently get a new, useless key.
                let key = keyfile::load(legacy_key_path)
                    .map_err(io_err(legacy_key_path))?
                    .ok_or_else(|| StoreError::Decrypt {
                        path: path.to_owned(),
                        key: legacy_key_path.to_owned(),
                    })?;
                store.items = decrypt_legacy(&key, &data).ok_or_else(|| StoreError::Decrypt {
                    path: path.to_owned(),
                    key: legacy_key_path.to_owned(),
                })?;
                let items = store.items.clone();
                store.write(&items)?;
                keyfile::wipe_and_remove(legacy_key_path);
                event!(
                    "secrets: {} is now sealed by the keystore; removed {}",
                    path.display(),
                    legacy_key_path.display()
                );
            }
            Some(data) => {
                let plain = keystore.open_blob(path, PURPOSE, &data)?;
                store.items = serde_json::from_slice(&plain).map_err(|_| StoreError::Format {
                    path: path.to_owned(),
                })?;
                // A migration that stopped between writing the store and removing its old key.
                if fs::symlink_metadata(legacy_key_path).is_ok() {
                    keyfile::wipe_and_remove(legacy_key_path);
                }
            }
        }
        Ok(store)
    }

    /// Seals `items` and replaces the file.
    fn write(&self, items: &Items) -> Result<(), StoreError> {
        let plain = Zeroizing::new(serde_json::to_vec(items).map_err(|e| StoreError::Io {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?);
        let sealed = self.keystore.seal_blob(PURPOSE, &plain)?;
        write_atomic(&self.path, &sealed).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// The item `target` of `service`.
    pub fn get(&self, service: &str, target: &str) -> Option<&StoredItem> {
        self.items.get(service)?.get(target)
    }

    /// Items of `service` whose target starts with one of `prefixes` (all items if empty).
    pub fn matching<'a>(
        &'a self,
        service: &str,
        prefixes: &'a [String],
    ) -> impl Iterator<Item = (&'a String, &'a StoredItem)> + 'a {
        self.items
            .get(service)
            .into_iter()
            .flatten()
            .filter(move |(t, _)| prefixes.is_empty() || prefixes.iter().any(|p| t.starts_with(p)))
    }

    /// Applies `change` to `service` and writes the store; on any error nothing changed, in
    /// memory or on disk.
    pub fn apply(&mut self, service: &str, change: Change) -> Result<(), StoreError> {
        let mut next = self.items.clone();
        let items = next.entry(service.to_owned()).or_default();
        match change {
            Change::Write {
                items: new,
                attributes,
            } => {
                for (target, value) in new {
                    items.insert(
                        target,
                        StoredItem {
                            value,
                            attributes: attributes.clone(),
                        },
                    );
                }
            }
            Change::Delete { targets } => {
                for t in &targets {
                    items.remove(t);
                }
            }
        }
        if items.is_empty() {
            next.remove(service);
        }
        self.write(&next)?;
        self.items = next;
        Ok(())
    }
}

/// Opens a store of an earlier version; `None` if the key does not open it.
fn decrypt_legacy(key: &Key32, data: &[u8]) -> Option<Items> {
    let rest = data.strip_prefix(LEGACY_MAGIC)?;
    if rest.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    let plain = Zeroizing::new(
        XChaCha20Poly1305::new((&**key).into())
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: LEGACY_MAGIC,
                },
            )
            .ok()?,
    );
    serde_json::from_slice(&plain).ok()
}

/// A store in the format of earlier versions (for migration tests).
#[doc(hidden)]
pub fn write_legacy(path: &Path, key: &Key32, items: &Items) -> io::Result<()> {
    let plain = Zeroizing::new(serde_json::to_vec(items).map_err(io::Error::other)?);
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
    let ct = XChaCha20Poly1305::new((&**key).into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: LEGACY_MAGIC,
            },
        )
        .map_err(|_| io::Error::other("encryption failed"))?;
    let mut out = LEGACY_MAGIC.to_vec();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    write_atomic(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> PathBuf {
        crate::files::test_dir("store")
    }

    fn keystore(dir: &Path) -> Keystore {
        Keystore::new(&dir.join("data"), &dir.join("config/keystore.key"))
    }

    fn write(targets: &[(&str, &str)]) -> Change {
        Change::Write {
            items: targets
                .iter()
                .map(|(t, v)| (t.to_string(), SecretValue::new(*v)))
                .collect(),
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn round_trips_through_a_sealed_file_without_a_key_of_its_own() {
        let dir = tempdir();
        let ks = keystore(&dir);
        let (data, key) = (dir.join("secrets.enc"), dir.join("secrets.key"));
        let mut s = FileStore::open(&data, &key, &ks).unwrap();
        s.apply("aws", write(&[("prod", "hunter2-value"), ("dev", "d")]))
            .unwrap();
        let raw = fs::read(&data).unwrap();
        assert!(raw.starts_with(crate::keystore::seal::MAGIC));
        assert!(!raw.windows(13).any(|w| w == b"hunter2-value"));
        assert!(!key.exists());
        let s = FileStore::open(&data, &key, &keystore(&dir)).unwrap();
        assert_eq!(
            s.get("aws", "prod").unwrap().value.expose(),
            "hunter2-value"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_store_of_an_earlier_version_is_migrated_and_its_key_removed() {
        let dir = tempdir();
        let (data, key_path) = (dir.join("secrets.enc"), dir.join("secrets.key"));
        let key = Zeroizing::new([5u8; 32]);
        fs::write(&key_path, format!("{}\n", hex::encode([5u8; 32]))).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
        let mut items = Items::new();
        items.entry("aws".into()).or_default().insert(
            "prod".into(),
            StoredItem {
                value: SecretValue::new("old-secret"),
                attributes: BTreeMap::new(),
            },
        );
        write_legacy(&data, &key, &items).unwrap();
        let s = FileStore::open(&data, &key_path, &keystore(&dir)).unwrap();
        assert_eq!(s.get("aws", "prod").unwrap().value.expose(), "old-secret");
        assert!(!key_path.exists());
        assert!(
            fs::read(&data)
                .unwrap()
                .starts_with(crate::keystore::seal::MAGIC)
        );
        let s = FileStore::open(&data, &key_path, &keystore(&dir)).unwrap();
        assert_eq!(s.get("aws", "prod").unwrap().value.expose(), "old-secret");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn services_match_exactly() {
        let dir = tempdir();
        let mut s =
            FileStore::open(&dir.join("s.enc"), &dir.join("s.key"), &keystore(&dir)).unwrap();
        s.apply("a:b", write(&[("x", "1")])).unwrap();
        s.apply("a", write(&[("y", "2")])).unwrap();
        assert!(s.get("a", "x").is_none());
        assert!(s.get("a", "b:x").is_none());
        let all: Vec<_> = s.matching("a", &[]).map(|(t, _)| t.clone()).collect();
        assert_eq!(all, ["y"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempdir();
        let data = dir.join("sub/s.enc");
        fs::create_dir_all(dir.join("sub")).unwrap();
        let mut s = FileStore::open(&data, &dir.join("s.key"), &keystore(&dir)).unwrap();
        s.apply("a", write(&[("x", "1")])).unwrap();
        // The directory is gone: the atomic write cannot even create its temp file.
        fs::remove_dir_all(dir.join("sub")).unwrap();
        assert!(s.apply("a", write(&[("x", "2"), ("y", "3")])).is_err());
        assert_eq!(s.get("a", "x").unwrap().value.expose(), "1");
        assert!(s.get("a", "y").is_none());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_wrong_key_or_tampered_file_is_refused() {
        let dir = tempdir();
        let (data, key) = (dir.join("s.enc"), dir.join("s.key"));
        let mut s = FileStore::open(&data, &key, &keystore(&dir)).unwrap();
        s.apply("a", write(&[("x", "1")])).unwrap();
        let mut raw = fs::read(&data).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        fs::write(&data, &raw).unwrap();
        assert!(matches!(
            FileStore::open(&data, &key, &keystore(&dir)),
            Err(StoreError::Keystore(KeystoreError::Damaged { .. }))
        ));
        raw[last] ^= 1;
        fs::write(&data, &raw).unwrap();
        let other = tempdir();
        assert!(matches!(
            FileStore::open(&data, &key, &keystore(&other)),
            Err(StoreError::Keystore(KeystoreError::MissingWrapKey { .. }))
        ));
        fs::remove_dir_all(dir).unwrap();
        fs::remove_dir_all(other).unwrap();
    }
}
