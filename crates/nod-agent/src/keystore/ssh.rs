//! Persistent SSH keys and the user CA key, sealed in the keystore.
//!
//! `ssh_keys.sealed` opens to: `nod-ssh-keys-v1\0`, a u32 count, then per key the strings
//! name, policy word, a u64 remember-TTL in seconds, and the key in OpenSSH's unencrypted
//! binary private key format (`PrivateKey::to_bytes`). Strings are u32-length-prefixed. Keys
//! are parsed straight out of the zeroized plaintext buffer, so no stray copy of a key is left
//! in freed memory by the encoding itself.

use std::fmt;
use std::time::Duration;

pub use ssh_key::PrivateKey;
use ssh_key::{Algorithm, EcdsaCurve, HashAlg, LineEnding, rand_core::OsRng};
use zeroize::Zeroizing;

use super::{Keystore, KeystoreError, SSH_KEYS_FILE, USER_CA_FILE};
use crate::duration::format_duration;

/// A `remember` grant's lifetime when none is given.
pub const DEFAULT_REMEMBER_TTL: Duration = Duration::from_secs(10 * 60);

/// A key's approval policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Prompt for every signature.
    Always,
    /// Prompt once, then remember the approval for this long (key × caller × destination).
    Remember(Duration),
    /// Never prompt.
    Never,
}

impl Policy {
    /// `always`, `remember` or `never`; `ttl` only goes with `remember`.
    pub fn parse(word: &str, ttl: Option<Duration>) -> Result<Self, String> {
        match (word, ttl) {
            ("always", None) => Ok(Self::Always),
            ("never", None) => Ok(Self::Never),
            ("remember", ttl) => {
                let ttl = ttl.unwrap_or(DEFAULT_REMEMBER_TTL);
                if ttl.is_zero() {
                    return Err("a remember TTL must be longer than 0s".into());
                }
                Ok(Self::Remember(ttl))
            }
            ("always" | "never", Some(_)) => {
                Err(format!("--ttl only goes with remember, not {word}"))
            }
            _ => Err(format!(
                "unknown policy {word:?}: use always, remember or never"
            )),
        }
    }

    /// The policy's word, as stored.
    pub fn word(&self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Remember(_) => "remember",
            Self::Never => "never",
        }
    }

    /// The grant lifetime (`remember` only).
    pub fn ttl(&self) -> Option<Duration> {
        match self {
            Self::Remember(ttl) => Some(*ttl),
            _ => None,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Remember(ttl) => write!(f, "remember {}", format_duration(*ttl)),
            other => f.write_str(other.word()),
        }
    }
}

const MAGIC: &[u8] = b"nod-ssh-keys-v1\0";
const PURPOSE: &str = "ssh-keys";
const CA_PURPOSE: &str = "user-ca";
/// Longest key name.
const MAX_NAME: usize = 64;

/// One persistent key. `Debug` shows the name, policy and fingerprint only.
#[derive(Clone)]
pub struct StoredKey {
    pub name: String,
    pub policy: Policy,
    /// Zeroized on drop by ssh-key. Its comment is the name.
    pub key: PrivateKey,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .field("fingerprint", &self.fingerprint())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl StoredKey {
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, …
    pub fn type_name(&self) -> String {
        self.key.algorithm().as_str().to_owned()
    }

    /// The `authorized_keys` line.
    pub fn public_line(&self) -> String {
        self.key
            .public_key()
            .to_openssh()
            .unwrap_or_else(|_| "(unencodable)".into())
    }
}

/// The key types `nod keys generate` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ed25519,
    Ecdsa,
    Rsa,
}

impl std::str::FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ed25519" => Ok(Self::Ed25519),
            "ecdsa" => Ok(Self::Ecdsa),
            "rsa" => Ok(Self::Rsa),
            _ => Err(format!("unknown key type {s:?}: use ed25519, ecdsa or rsa")),
        }
    }
}

/// A fresh key. `bits`: ECDSA 256 (default), 384 or 521; RSA 2048..=8192, default 3072.
pub fn generate(
    kind: KeyType,
    bits: Option<usize>,
    name: &str,
) -> Result<PrivateKey, KeystoreError> {
    let refused = |m: String| KeystoreError::Refused(m);
    let mut key = match (kind, bits) {
        (KeyType::Ed25519, None | Some(256)) => PrivateKey::random(&mut OsRng, Algorithm::Ed25519),
        (KeyType::Ecdsa, None | Some(256)) => PrivateKey::random(
            &mut OsRng,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
        ),
        (KeyType::Ecdsa, Some(384)) => PrivateKey::random(
            &mut OsRng,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP384,
            },
        ),
        (KeyType::Ecdsa, Some(521)) => PrivateKey::random(
            &mut OsRng,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP521,
            },
        ),
        (KeyType::Rsa, bits) => {
            let bits = bits.unwrap_or(3072);
            if !(2048..=8192).contains(&bits) {
                return Err(refused(format!(
                    "RSA keys must have 2048 to 8192 bits, not {bits}"
                )));
            }
            ssh_key::private::RsaKeypair::random(&mut OsRng, bits)
                .and_then(|k| PrivateKey::new(k.into(), ""))
        }
        (kind, Some(bits)) => {
            return Err(refused(format!("{kind:?} keys cannot have {bits} bits")));
        }
    }
    .map_err(|e| refused(format!("cannot generate the key: {e}")))?;
    key.set_comment(name);
    Ok(key)
}

/// Parses an OpenSSH private key file for import. A passphrase-protected key comes back still
/// encrypted (`is_encrypted()`); [`decrypt_import`] opens it. A file ssh-key refuses is read
/// again by [`super::openssh`], which takes the ECDSA keys OpenSSH writes with a short scalar.
pub fn parse_import(pem: &[u8]) -> Result<PrivateKey, KeystoreError> {
    PrivateKey::from_openssh(pem).or_else(|e| {
        super::openssh::key_file_bytes(pem)
            .and_then(|bin| super::openssh::decode_key_file(&bin, None))
            .ok()
            .ok_or_else(|| {
                KeystoreError::Refused(format!(
                    "not an OpenSSH private key ({e}); convert it with `ssh-keygen -p -f FILE` \
                     (which rewrites it in the OpenSSH format)"
                ))
            })
    })
}

/// Decrypts a passphrase-protected key read by [`parse_import`]. The decrypted copy is the
/// caller's to zeroize (`PrivateKey` does so on drop).
pub fn decrypt_import(key: &PrivateKey, passphrase: &[u8]) -> Result<PrivateKey, KeystoreError> {
    key.decrypt(passphrase).or_else(|e| match e {
        // The check integers inside did not match: the passphrase is wrong.
        ssh_key::Error::Crypto => Err(KeystoreError::Refused("wrong passphrase".into())),
        // ssh-key refused what it decrypted (an ECDSA key with a short scalar): decode the
        // file's container again here.
        e => key
            .to_bytes()
            .map_err(|_| ())
            .and_then(|bin| super::openssh::decode_key_file(&bin, Some(passphrase)).map_err(|_| ()))
            .map_err(|()| KeystoreError::Refused(format!("cannot decrypt the key: {e}"))),
    })
}

fn valid_name(name: &str) -> Result<(), KeystoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(KeystoreError::Refused(format!(
            "bad key name {name:?}: use 1 to {MAX_NAME} of A-Z a-z 0-9 - _ . @"
        )))
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s);
}

fn encode(keys: &[StoredKey]) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    let blobs = keys
        .iter()
        .map(|k| {
            k.key
                .to_bytes()
                .map_err(|e| KeystoreError::Refused(format!("cannot encode key {:?}: {e}", k.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let len = MAGIC.len()
        + 4
        + keys
            .iter()
            .zip(&blobs)
            .map(|(k, b)| 4 + k.name.len() + 4 + k.policy.word().len() + 8 + 4 + b.len())
            .sum::<usize>();
    // Sized up front: the buffer never reallocates, so no partial copy is left unzeroized.
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&u32::try_from(keys.len()).unwrap_or(u32::MAX).to_be_bytes());
    for (k, blob) in keys.iter().zip(&blobs) {
        put_str(&mut out, k.name.as_bytes());
        put_str(&mut out, k.policy.word().as_bytes());
        out.extend_from_slice(&k.policy.ttl().map_or(0, |t| t.as_secs()).to_be_bytes());
        put_str(&mut out, blob);
    }
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_be_bytes(a))
    }
    fn str(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        self.take(n)
    }
}

fn decode(plain: &[u8]) -> Option<Vec<StoredKey>> {
    let mut r = Reader(plain);
    if r.take(MAGIC.len())? != MAGIC {
        return None;
    }
    let count = r.u32()?;
    let mut keys = Vec::new();
    for _ in 0..count {
        let name = String::from_utf8(r.str()?.to_vec()).ok()?;
        let word = std::str::from_utf8(r.str()?).ok()?;
        let ttl = r.u64()?;
        let ttl = (word == "remember").then(|| Duration::from_secs(ttl));
        let policy = Policy::parse(word, ttl).ok()?;
        let mut key = PrivateKey::from_bytes(r.str()?).ok()?;
        key.set_comment(name.clone());
        keys.push(StoredKey { name, policy, key });
    }
    r.0.is_empty().then_some(keys)
}

impl Keystore {
    /// The persistent SSH keys, in the order they were added.
    pub fn ssh_keys(&self) -> Result<Vec<StoredKey>, KeystoreError> {
        match self.read_sealed(SSH_KEYS_FILE, PURPOSE)? {
            None => Ok(Vec::new()),
            Some(plain) => decode(&plain).ok_or_else(|| KeystoreError::Invalid {
                path: self.path(SSH_KEYS_FILE),
                reason: "it authenticates but does not parse; written by a newer nod?".into(),
            }),
        }
    }

    fn save_ssh_keys(&self, keys: &[StoredKey]) -> Result<(), KeystoreError> {
        let plain = encode(keys)?;
        self.write_sealed(SSH_KEYS_FILE, PURPOSE, &plain)
    }

    /// Adds a key under a new name. Refused if the name or the key is already there, or the
    /// agent could not sign with it.
    pub fn add_ssh_key(
        &self,
        name: &str,
        mut key: PrivateKey,
        policy: Policy,
    ) -> Result<StoredKey, KeystoreError> {
        valid_name(name)?;
        let _lock = self.exclusive()?;
        let mut keys = self.ssh_keys()?;
        if keys.iter().any(|k| k.name == name) {
            return Err(KeystoreError::Refused(format!(
                "a key named {name:?} exists already; pick another --name or remove it first"
            )));
        }
        if let Some(k) = keys
            .iter()
            .find(|k| k.key.public_key().key_data() == key.public_key().key_data())
        {
            return Err(KeystoreError::Refused(format!(
                "this key is in the keystore already, as {:?}",
                k.name
            )));
        }
        key.set_comment(name);
        let stored = StoredKey {
            name: name.to_owned(),
            policy,
            key,
        };
        keys.push(stored.clone());
        self.save_ssh_keys(&keys)?;
        Ok(stored)
    }

    /// Removes a key by name.
    pub fn remove_ssh_key(&self, name: &str) -> Result<(), KeystoreError> {
        let _lock = self.exclusive()?;
        let mut keys = self.ssh_keys()?;
        let before = keys.len();
        keys.retain(|k| k.name != name);
        if keys.len() == before {
            return Err(KeystoreError::NoSuchKey(name.to_owned()));
        }
        self.save_ssh_keys(&keys)
    }

    /// Sets a key's policy.
    pub fn set_ssh_policy(&self, name: &str, policy: Policy) -> Result<(), KeystoreError> {
        let _lock = self.exclusive()?;
        let mut keys = self.ssh_keys()?;
        let key = keys
            .iter_mut()
            .find(|k| k.name == name)
            .ok_or_else(|| KeystoreError::NoSuchKey(name.to_owned()))?;
        key.policy = policy;
        self.save_ssh_keys(&keys)
    }

    /// The user CA key, if `nod keys ca init` made one.
    pub fn user_ca(&self) -> Result<Option<PrivateKey>, KeystoreError> {
        let Some(plain) = self.read_sealed(USER_CA_FILE, CA_PURPOSE)? else {
            return Ok(None);
        };
        PrivateKey::from_bytes(&plain)
            .map(Some)
            .map_err(|e| KeystoreError::Invalid {
                path: self.path(USER_CA_FILE),
                reason: e.to_string(),
            })
    }

    /// The user CA key, created on first call. The flag is true when it was just created.
    pub fn user_ca_or_create(&self) -> Result<(PrivateKey, bool), KeystoreError> {
        let _lock = self.exclusive()?;
        if let Some(ca) = self.user_ca()? {
            return Ok((ca, false));
        }
        let mut ca = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .map_err(|e| KeystoreError::Random(e.to_string()))?;
        ca.set_comment("nod user CA");
        let bytes = ca
            .to_bytes()
            .map_err(|e| KeystoreError::Random(e.to_string()))?;
        self.write_sealed(USER_CA_FILE, CA_PURPOSE, &bytes)?;
        Ok((ca, true))
    }
}

/// The CA's public line for `TrustedUserCAKeys`.
pub fn ca_line(ca: &PrivateKey) -> String {
    ca.public_key()
        .to_openssh()
        .unwrap_or_else(|_| "(unencodable)".into())
}

/// An unencrypted OpenSSH PEM of `key` (tests and export).
pub fn to_pem(key: &PrivateKey) -> Result<Zeroizing<String>, KeystoreError> {
    key.to_openssh(LineEnding::LF)
        .map_err(|e| KeystoreError::Refused(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::tests::{store, tempdir};
    use super::*;

    #[test]
    fn keys_round_trip_through_the_sealed_file() {
        let root = tempdir("ssh");
        let store = store(&root);
        assert!(store.ssh_keys().unwrap().is_empty());
        let ed = generate(KeyType::Ed25519, None, "work").unwrap();
        let ec = generate(KeyType::Ecdsa, Some(384), "ec").unwrap();
        let ed_pub = ed.public_key().clone();
        store
            .add_ssh_key("work", ed.clone(), Policy::Always)
            .unwrap();
        store
            .add_ssh_key("ec", ec, Policy::Remember(Duration::from_secs(90)))
            .unwrap();
        assert!(
            store
                .add_ssh_key(
                    "work",
                    generate(KeyType::Ed25519, None, "x").unwrap(),
                    Policy::Never
                )
                .is_err()
        );
        assert!(
            store
                .add_ssh_key("again", ed.clone(), Policy::Never)
                .is_err()
        );
        assert!(
            store
                .add_ssh_key(
                    "bad name",
                    generate(KeyType::Ed25519, None, "x").unwrap(),
                    Policy::Never
                )
                .is_err()
        );

        let keys = store.ssh_keys().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].name, "work");
        assert_eq!(keys[0].key.public_key(), &ed_pub);
        assert_eq!(keys[0].policy, Policy::Always);
        assert_eq!(keys[1].policy, Policy::Remember(Duration::from_secs(90)));

        let raw = fs::read(store.path(SSH_KEYS_FILE)).unwrap();
        let ed_seed = ed.key_data().ed25519().unwrap().private.to_bytes();
        assert!(!raw.windows(32).any(|w| w == ed_seed));
        assert!(!raw.windows(4).any(|w| w == b"work"));

        store.set_ssh_policy("work", Policy::Never).unwrap();
        assert_eq!(store.ssh_keys().unwrap()[0].policy, Policy::Never);
        store.remove_ssh_key("work").unwrap();
        assert!(matches!(
            store.remove_ssh_key("work"),
            Err(KeystoreError::NoSuchKey(_))
        ));
        assert_eq!(store.ssh_keys().unwrap().len(), 1);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn concurrent_adds_lose_nothing() {
        let root = tempdir("race");
        let store = store(&root);
        std::thread::scope(|s| {
            for i in 0..8 {
                let store = &store;
                s.spawn(move || {
                    let name = format!("k{i}");
                    let key = generate(KeyType::Ed25519, None, &name).unwrap();
                    store.add_ssh_key(&name, key, Policy::Never).unwrap();
                });
            }
        });
        assert_eq!(store.ssh_keys().unwrap().len(), 8);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn ca_is_created_once() {
        let root = tempdir("ca");
        let store = store(&root);
        assert!(store.user_ca().unwrap().is_none());
        let (ca, created) = store.user_ca_or_create().unwrap();
        assert!(created);
        let (again, created) = store.user_ca_or_create().unwrap();
        assert!(!created);
        assert_eq!(ca_line(&ca), ca_line(&again));
        assert!(ca_line(&ca).starts_with("ssh-ed25519 "));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn imports_parse_and_passphrase_protected_keys_decrypt() {
        let key = generate(KeyType::Ed25519, None, "k").unwrap();
        let pem = to_pem(&key).unwrap();
        assert!(!parse_import(pem.as_bytes()).unwrap().is_encrypted());
        let err = parse_import(b"-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n").unwrap_err();
        assert!(err.to_string().contains("ssh-keygen"), "{err}");

        let locked = key.encrypt(&mut OsRng, "right horse").unwrap();
        let pem = locked.to_openssh(ssh_key::LineEnding::LF).unwrap();
        let parsed = parse_import(pem.as_bytes()).unwrap();
        assert!(parsed.is_encrypted());
        let err = decrypt_import(&parsed, b"wrong horse").unwrap_err();
        assert_eq!(err.to_string(), "wrong passphrase");
        let opened = decrypt_import(&parsed, b"right horse").unwrap();
        assert_eq!(opened.key_data(), key.key_data());
    }

    #[test]
    fn stored_key_debug_is_redacted() {
        let key = StoredKey {
            name: "k".into(),
            policy: Policy::Never,
            key: generate(KeyType::Ed25519, None, "k").unwrap(),
        };
        let seed = hex::encode(key.key.key_data().ed25519().unwrap().private.to_bytes());
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted") && shown.contains("SHA256:"));
        assert!(!shown.to_lowercase().contains(&seed[..16]));
    }
}
