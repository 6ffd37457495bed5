//! Persistent SSH keys and the user CA key, sealed in the keystore.
//!
//! `ssh_keys.sealed` opens to: `nod-ssh-keys-v1\0`, a u32 count, then per key the strings
//! name, policy word, a u64 remember-TTL in seconds, and the key in OpenSSH's unencrypted
//! binary private key format (`PrivateKey::to_bytes`). Strings are u32-length-prefixed. Keys
//! are parsed straight out of the zeroized plaintext buffer, so no stray copy of a key is left
//! in freed memory by the encoding itself.
//!
//! Version 2 (`nod-ssh-keys-v2\0`) adds, after the TTL, the key's presence word (`any` or
//! `verified`). It is written only when a key needs more than `any`, so a keystore that uses
//! no presence minimum stays readable by a nod that knows version 1 only; such a nod refuses a
//! version-2 file as written by a newer nod rather than reading its keys without their
//! minimum. A version-1 file reads as every key `any`.

use std::fmt;
use std::time::Duration;

pub use ssh_key::PrivateKey;
use ssh_key::{Algorithm, EcdsaCurve, HashAlg, LineEnding, rand_core::OsRng};
use zeroize::Zeroizing;

use super::{Keystore, KeystoreError, SSH_KEYS_FILE, USER_CA_FILE};
use crate::config::Required;
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

/// Version 1: no presence; every key reads as `any`.
const MAGIC_V1: &[u8] = b"nod-ssh-keys-v1\0";
/// Version 2: a presence word per key.
const MAGIC_V2: &[u8] = b"nod-ssh-keys-v2\0";
const PURPOSE: &str = "ssh-keys";
const CA_PURPOSE: &str = "user-ca";
/// Longest key name.
const MAX_NAME: usize = 64;
/// Longest policy or presence word (`remember`, `verified`).
const MAX_WORD: usize = 16;
/// Fewer bytes than any key takes in a file of either version (length prefixes and the TTL;
/// its name, words and key blob take more). Bounds the count a file may claim by its length,
/// before anything is allocated.
const MIN_KEY_LEN: usize = 4 * 4 + 8;

/// Refuses what a key cannot be: `never` asks nobody, so it cannot need verified presence.
fn check_presence(policy: Policy, presence: Required) -> Result<(), KeystoreError> {
    if policy == Policy::Never && presence != Required::Any {
        return Err(KeystoreError::Refused(format!(
            "a key with policy never asks nobody, so it cannot need {} presence; give it policy \
             always or remember, or --presence any",
            presence.word()
        )));
    }
    Ok(())
}

/// One persistent key. `Debug` shows the name, policy, presence and fingerprint only.
#[derive(Clone)]
pub struct StoredKey {
    pub name: String,
    pub policy: Policy,
    /// The least presence a signature with it asks for (at least `[presence] ssh`).
    pub presence: Required,
    /// Zeroized on drop by ssh-key. Its comment is the name.
    pub key: PrivateKey,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .field("presence", &self.presence)
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
    // Version 2 only when a key needs it: a file without presence minimums stays readable by
    // a nod that knows version 1 only.
    let v2 = keys.iter().any(|k| k.presence != Required::Any);
    let blobs = keys
        .iter()
        .map(|k| {
            k.key
                .to_bytes()
                .map_err(|e| KeystoreError::Refused(format!("cannot encode key {:?}: {e}", k.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let len = MAGIC_V2.len()
        + 4
        + keys
            .iter()
            .zip(&blobs)
            .map(|(k, b)| {
                let presence = if v2 { 4 + k.presence.word().len() } else { 0 };
                4 + k.name.len() + 4 + k.policy.word().len() + 8 + presence + 4 + b.len()
            })
            .sum::<usize>();
    // Sized up front: the buffer never reallocates, so no partial copy is left unzeroized.
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    out.extend_from_slice(if v2 { MAGIC_V2 } else { MAGIC_V1 });
    out.extend_from_slice(&u32::try_from(keys.len()).unwrap_or(u32::MAX).to_be_bytes());
    for (k, blob) in keys.iter().zip(&blobs) {
        put_str(&mut out, k.name.as_bytes());
        put_str(&mut out, k.policy.word().as_bytes());
        out.extend_from_slice(&k.policy.ttl().map_or(0, |t| t.as_secs()).to_be_bytes());
        if v2 {
            put_str(&mut out, k.presence.word().as_bytes());
        }
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
    /// A short ASCII word (a policy or a presence).
    fn word(&mut self) -> Option<&'a str> {
        let word = self.str()?;
        if word.len() > MAX_WORD {
            return None;
        }
        std::str::from_utf8(word).ok()
    }
}

/// The keys of a file of either version; `None` for anything else (another version, a
/// truncated or padded file, a word or key that does not parse).
fn decode(plain: &[u8]) -> Option<Vec<StoredKey>> {
    let mut r = Reader(plain);
    let v2 = match r.take(MAGIC_V1.len())? {
        m if m == MAGIC_V1 => false,
        m if m == MAGIC_V2 => true,
        _ => return None,
    };
    let count = usize::try_from(r.u32()?).ok()?;
    if count > r.0.len() / MIN_KEY_LEN {
        return None;
    }
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        let name = r.str()?;
        if name.len() > MAX_NAME {
            return None;
        }
        let name = String::from_utf8(name.to_vec()).ok()?;
        let word = r.word()?;
        let ttl = r.u64()?;
        let ttl = (word == "remember").then(|| Duration::from_secs(ttl));
        let policy = Policy::parse(word, ttl).ok()?;
        let presence = if v2 {
            r.word()?.parse().ok()?
        } else {
            Required::Any
        };
        check_presence(policy, presence).ok()?;
        let mut key = PrivateKey::from_bytes(r.str()?).ok()?;
        key.set_comment(name.clone());
        keys.push(StoredKey {
            name,
            policy,
            presence,
            key,
        });
    }
    r.0.is_empty().then_some(keys)
}

/// The fuzzing entry point (`fuzz/fuzz_targets/ssh_keys_file.rs`): `data` as the opened
/// plaintext of `ssh_keys.sealed`. Must never panic, and what decodes must encode to a file
/// that decodes to the same keys.
pub fn fuzz_decode(data: &[u8]) {
    let summary = |keys: &[StoredKey]| -> Vec<(String, Policy, Required, String)> {
        keys.iter()
            .map(|k| (k.name.clone(), k.policy, k.presence, k.fingerprint()))
            .collect()
    };
    if let Some(keys) = decode(data)
        && let Ok(again) = encode(&keys)
    {
        let decoded = decode(&again).expect("an encoded file decodes");
        assert_eq!(summary(&decoded), summary(&keys));
    }
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

    /// Adds a key under a new name, asking `any` presence. Refused if the name or the key is
    /// already there, or the agent could not sign with it.
    pub fn add_ssh_key(
        &self,
        name: &str,
        key: PrivateKey,
        policy: Policy,
    ) -> Result<StoredKey, KeystoreError> {
        self.add_ssh_key_requiring(name, key, policy, Required::Any)
    }

    /// Adds a key under a new name whose signatures need at least `presence`. Refused as
    /// [`Keystore::add_ssh_key`], and for `never` with `verified` (nobody would be asked).
    pub fn add_ssh_key_requiring(
        &self,
        name: &str,
        mut key: PrivateKey,
        policy: Policy,
        presence: Required,
    ) -> Result<StoredKey, KeystoreError> {
        valid_name(name)?;
        check_presence(policy, presence)?;
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
            presence,
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
        self.update_ssh_key(name, Some(policy), None).map(drop)
    }

    /// Sets a key's policy, its presence minimum, or both (`None` keeps what it has), and
    /// returns the key as now stored. Refused for `never` with `verified`.
    pub fn update_ssh_key(
        &self,
        name: &str,
        policy: Option<Policy>,
        presence: Option<Required>,
    ) -> Result<StoredKey, KeystoreError> {
        let _lock = self.exclusive()?;
        let mut keys = self.ssh_keys()?;
        let key = keys
            .iter_mut()
            .find(|k| k.name == name)
            .ok_or_else(|| KeystoreError::NoSuchKey(name.to_owned()))?;
        let policy = policy.unwrap_or(key.policy);
        let presence = presence.unwrap_or(key.presence);
        check_presence(policy, presence)?;
        key.policy = policy;
        key.presence = presence;
        let updated = key.clone();
        self.save_ssh_keys(&keys)?;
        Ok(updated)
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

    fn stored(name: &str, policy: Policy, presence: Required) -> StoredKey {
        StoredKey {
            name: name.into(),
            policy,
            presence,
            key: generate(KeyType::Ed25519, None, name).unwrap(),
        }
    }

    /// A file built by hand, as the format's description says: per key the name, policy
    /// word, TTL, presence word (version 2 only) and key blob.
    fn file(magic: &[u8], keys: &[(&str, &str, u64, Option<&str>, &PrivateKey)]) -> Vec<u8> {
        let mut out = magic.to_vec();
        out.extend_from_slice(&u32::try_from(keys.len()).unwrap().to_be_bytes());
        for (name, word, ttl, presence, key) in keys {
            put_str(&mut out, name.as_bytes());
            put_str(&mut out, word.as_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            if let Some(presence) = presence {
                put_str(&mut out, presence.as_bytes());
            }
            put_str(&mut out, &key.to_bytes().unwrap());
        }
        out
    }

    type Summary = Vec<(String, Policy, Required, String)>;

    fn summary(keys: &[StoredKey]) -> Summary {
        keys.iter()
            .map(|k| (k.name.clone(), k.policy, k.presence, k.fingerprint()))
            .collect()
    }

    #[test]
    fn a_version_1_file_reads_as_any_presence_and_is_written_back_as_version_1() {
        let work = generate(KeyType::Ed25519, None, "work").unwrap();
        let ci = generate(KeyType::Ecdsa, None, "ci").unwrap();
        let old = file(
            b"nod-ssh-keys-v1\0",
            &[
                ("work", "remember", 90, None, &work),
                ("ci", "never", 0, None, &ci),
            ],
        );
        let keys = decode(&old).expect("a version-1 file decodes");
        assert_eq!(
            summary(&keys),
            vec![
                (
                    "work".into(),
                    Policy::Remember(Duration::from_secs(90)),
                    Required::Any,
                    work.fingerprint(HashAlg::Sha256).to_string()
                ),
                (
                    "ci".into(),
                    Policy::Never,
                    Required::Any,
                    ci.fingerprint(HashAlg::Sha256).to_string()
                ),
            ]
        );
        // Nothing needs version 2, so an older nod can still read what this one writes.
        assert_eq!(&encode(&keys).unwrap()[..], &old[..]);
    }

    #[test]
    fn presence_round_trips_in_version_2() {
        let keys = vec![
            stored("strict", Policy::Always, Required::Verified),
            stored("loose", Policy::Never, Required::Any),
            stored(
                "sticky",
                Policy::Remember(Duration::from_secs(600)),
                Required::Verified,
            ),
        ];
        let plain = encode(&keys).unwrap();
        assert!(plain.starts_with(MAGIC_V2));
        // The only magic a version-1 nod knows: it refuses the file instead of reading the
        // keys without their minimum.
        assert!(!plain.starts_with(MAGIC_V1));
        let decoded = decode(&plain).expect("version 2 decodes");
        assert_eq!(summary(&decoded), summary(&keys));
        assert_eq!(&encode(&decoded).unwrap()[..], &plain[..]);
        assert!(decode(&encode(&[]).unwrap()).unwrap().is_empty());
    }

    #[test]
    fn truncated_padded_or_garbled_files_are_refused() {
        let plain = encode(&[
            stored("strict", Policy::Always, Required::Verified),
            stored("loose", Policy::Always, Required::Any),
        ])
        .unwrap();
        for n in 0..plain.len() {
            assert!(decode(&plain[..n]).is_none(), "a file cut at {n} bytes");
        }
        let mut padded = plain.to_vec();
        padded.push(0);
        assert!(decode(&padded).is_none(), "trailing bytes");

        let key = generate(KeyType::Ed25519, None, "k").unwrap();
        let v2 = b"nod-ssh-keys-v2\0";
        assert_eq!(
            decode(&file(v2, &[("k", "always", 0, Some("verified"), &key)])).map(|k| summary(&k)),
            Some(summary(&[StoredKey {
                name: "k".into(),
                policy: Policy::Always,
                presence: Required::Verified,
                key: key.clone(),
            }]))
        );
        for (presence, why) in [
            (Some("verifies"), "an unknown presence word"),
            (Some(""), "an empty presence word"),
            (Some("verifiedverifiedverified"), "a presence word too long"),
            (None, "a version-2 key without its presence word"),
        ] {
            let bad = file(v2, &[("k", "always", 0, presence, &key)]);
            assert!(decode(&bad).is_none(), "{why}");
        }
        // `never` with `verified` is never written, and not read either.
        let never = file(v2, &[("k", "never", 0, Some("verified"), &key)]);
        assert!(decode(&never).is_none(), "never with verified");
        // A presence word in a version-1 file is garbage there.
        let v1 = file(
            b"nod-ssh-keys-v1\0",
            &[("k", "always", 0, Some("any"), &key)],
        );
        assert!(decode(&v1).is_none(), "a presence word in version 1");

        let mut newer = plain.to_vec();
        newer[..MAGIC_V2.len()].copy_from_slice(b"nod-ssh-keys-v3\0");
        assert!(decode(&newer).is_none(), "a version this nod does not know");

        // A count that the file's length cannot hold is refused before anything is allocated.
        let mut many = MAGIC_V2.to_vec();
        many.extend_from_slice(&u32::MAX.to_be_bytes());
        many.extend_from_slice(&[0; 64]);
        assert!(decode(&many).is_none(), "a count larger than the file");
    }

    /// The fuzz target's seeds are files of each version that decode, so the fuzzer starts
    /// from inside the format.
    #[test]
    fn the_fuzz_seeds_decode() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus/ssh_keys_file");
        for (seed, keys) in [("v1-two-keys", 2), ("v2-verified", 2), ("v2-empty", 0)] {
            let plain = fs::read(dir.join(seed)).unwrap();
            let decoded = decode(&plain).unwrap_or_else(|| panic!("{seed} does not decode"));
            assert_eq!(decoded.len(), keys, "{seed}");
            fuzz_decode(&plain);
        }
    }

    #[test]
    fn a_file_of_a_newer_version_is_refused_as_such() {
        let root = tempdir("ssh-newer");
        let store = store(&root);
        let mut plain = encode(&[stored("k", Policy::Always, Required::Verified)]).unwrap();
        plain[..MAGIC_V2.len()].copy_from_slice(b"nod-ssh-keys-v3\0");
        store.write_sealed(SSH_KEYS_FILE, PURPOSE, &plain).unwrap();
        let err = store.ssh_keys().unwrap_err();
        assert!(err.to_string().contains("written by a newer nod?"), "{err}");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn presence_is_stored_with_the_key_and_changed_with_its_policy() {
        let root = tempdir("ssh-presence");
        let store = store(&root);
        let key = || generate(KeyType::Ed25519, None, "k").unwrap();
        let err = store
            .add_ssh_key_requiring("n", key(), Policy::Never, Required::Verified)
            .unwrap_err();
        assert!(
            err.to_string().contains("policy never asks nobody"),
            "{err}"
        );
        store
            .add_ssh_key_requiring("strict", key(), Policy::Always, Required::Verified)
            .unwrap();
        store.add_ssh_key("plain", key(), Policy::Always).unwrap();
        let keys = store.ssh_keys().unwrap();
        assert_eq!(
            keys.iter().map(|k| k.presence).collect::<Vec<_>>(),
            [Required::Verified, Required::Any]
        );

        // Only what is given changes.
        let k = store
            .update_ssh_key(
                "strict",
                Some(Policy::Remember(Duration::from_secs(60))),
                None,
            )
            .unwrap();
        assert_eq!(
            (k.policy, k.presence),
            (
                Policy::Remember(Duration::from_secs(60)),
                Required::Verified
            )
        );
        assert!(store.set_ssh_policy("strict", Policy::Never).is_err());
        assert!(
            store
                .update_ssh_key("plain", Some(Policy::Never), Some(Required::Verified))
                .is_err()
        );
        let k = store
            .update_ssh_key("strict", Some(Policy::Never), Some(Required::Any))
            .unwrap();
        assert_eq!((k.policy, k.presence), (Policy::Never, Required::Any));
        assert!(
            store
                .ssh_keys()
                .unwrap()
                .iter()
                .all(|k| k.presence == Required::Any)
        );
        assert!(matches!(
            store.update_ssh_key("nobody", None, Some(Required::Any)),
            Err(KeystoreError::NoSuchKey(_))
        ));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn presence_minimums_combine_to_the_stronger() {
        assert_eq!(Required::Any.max(Required::Verified), Required::Verified);
        assert_eq!(Required::Verified.max(Required::Any), Required::Verified);
        assert_eq!(Required::Any.max(Required::Any), Required::Any);
    }

    #[test]
    fn stored_key_debug_is_redacted() {
        let key = StoredKey {
            name: "k".into(),
            policy: Policy::Never,
            presence: Required::Any,
            key: generate(KeyType::Ed25519, None, "k").unwrap(),
        };
        let seed = hex::encode(key.key.key_data().ed25519().unwrap().private.to_bytes());
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted") && shown.contains("SHA256:"));
        assert!(!shown.to_lowercase().contains(&seed[..16]));
    }
}
