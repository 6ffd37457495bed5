//! The encrypted file backend: `$XDG_DATA_HOME/nod/secrets.enc`.
//!
//! The whole store is one XChaCha20-Poly1305 ciphertext (random 24-byte nonce per write, the
//! file's magic as associated data) under a 32-byte key in `secrets.key`, 0600, in the same
//! keystore directory. **What that protects against:** the data file on its own (a backup, a
//! synced or copied file, a stray `cat`) reveals nothing and cannot be altered unnoticed.
//! **What it does not:** anyone who can read both files as this user (or root) can decrypt,
//! because the key sits next to the data; it is not wrapped by a password or a hardware key
//! yet. Use the Secret Service backend (once supported) for login-password protection.
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

const MAGIC: &[u8] = b"nod-secrets-v1\n";
const NONCE_LEN: usize = 24;

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
    key_path: PathBuf,
    key: Key32,
    items: Items,
}

impl FileStore {
    /// Opens `path` with the key at `key_path` (created with the store if neither exists).
    pub fn open(path: &Path, key_path: &Path) -> Result<Self, StoreError> {
        let io_err = |p: &Path| {
            let p = p.to_owned();
            move |source| StoreError::Io { path: p, source }
        };
        let data = match fs::read(path) {
            Ok(d) => Some(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(path)(e)),
        };
        let key = match &data {
            // Data without a key must not silently get a new, useless key.
            Some(_) => keyfile::load(key_path)
                .map_err(io_err(key_path))?
                .ok_or_else(|| StoreError::Decrypt {
                    path: path.to_owned(),
                    key: key_path.to_owned(),
                })?,
            None => keyfile::load_or_create(key_path).map_err(io_err(key_path))?,
        };
        let mut store = Self {
            path: path.to_owned(),
            key_path: key_path.to_owned(),
            key,
            items: Items::new(),
        };
        if let Some(data) = data {
            store.items = store.decrypt(&data)?;
        }
        Ok(store)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.key).into())
    }

    fn decrypt(&self, data: &[u8]) -> Result<Items, StoreError> {
        let bad = || StoreError::Decrypt {
            path: self.path.clone(),
            key: self.key_path.clone(),
        };
        let rest = data.strip_prefix(MAGIC).ok_or_else(bad)?;
        if rest.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: ct,
                        aad: MAGIC,
                    },
                )
                .map_err(|_| bad())?,
        );
        serde_json::from_slice(&plain).map_err(|_| bad())
    }

    fn encrypt(&self, items: &Items) -> io::Result<Vec<u8>> {
        let plain = Zeroizing::new(serde_json::to_vec(items).map_err(io::Error::other)?);
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
        let ct = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: MAGIC,
                },
            )
            .map_err(|_| io::Error::other("encryption failed"))?;
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
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
        let io_err = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = self.encrypt(&next).map_err(io_err)?;
        write_atomic(&self.path, &bytes).map_err(io_err)?;
        self.items = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> PathBuf {
        crate::files::test_dir("store")
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
    fn round_trips_through_an_encrypted_file() {
        let dir = tempdir();
        let (data, key) = (dir.join("secrets.enc"), dir.join("secrets.key"));
        let mut s = FileStore::open(&data, &key).unwrap();
        s.apply("aws", write(&[("prod", "hunter2-value"), ("dev", "d")]))
            .unwrap();
        let raw = fs::read(&data).unwrap();
        assert!(raw.starts_with(MAGIC));
        assert!(!raw.windows(13).any(|w| w == b"hunter2-value"));
        let s = FileStore::open(&data, &key).unwrap();
        assert_eq!(
            s.get("aws", "prod").unwrap().value.expose(),
            "hunter2-value"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn services_match_exactly() {
        let dir = tempdir();
        let mut s = FileStore::open(&dir.join("s.enc"), &dir.join("s.key")).unwrap();
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
        let mut s = FileStore::open(&data, &dir.join("s.key")).unwrap();
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
        let mut s = FileStore::open(&data, &key).unwrap();
        s.apply("a", write(&[("x", "1")])).unwrap();
        let mut raw = fs::read(&data).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        fs::write(&data, &raw).unwrap();
        assert!(matches!(
            FileStore::open(&data, &key),
            Err(StoreError::Decrypt { .. })
        ));
        fs::remove_file(&key).unwrap();
        assert!(matches!(
            FileStore::open(&data, &key),
            Err(StoreError::Decrypt { .. })
        ));
        fs::remove_dir_all(dir).unwrap();
    }
}
