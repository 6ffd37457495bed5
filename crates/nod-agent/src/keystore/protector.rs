//! How the wrapping key is kept at rest: `$XDG_CONFIG_HOME/nod/keystore.key`, one of three
//! protectors (docs/security.md "Keys at rest").
//!
//! - **file**: the key itself, 64 hex digits (the format of earlier versions, unchanged). Anyone
//!   who can read the file (a copy of the disk, a backup) opens everything.
//! - **passphrase**: the key encrypted (ChaCha20-Poly1305) under a key derived from a passphrase
//!   with Argon2id (64 MiB, 3 passes). A copy of the disk costs an offline guess per Argon2id run.
//! - **tpm**: the key sealed to this machine's TPM 2.0 (a keyedhash object under the owner
//!   hierarchy's storage primary), optionally behind a PIN that the TPM's dictionary-attack
//!   lockout guards. A copy of the disk is useless without this TPM.
//!
//! The non-file forms are text:
//!
//! ```text
//! nod-keystore-key v1
//! protector passphrase | tpm
//! key-id <16 hex>                    (the wrapping key's id, as in every sealed file)
//! argon2id m=<KiB> t=<passes> p=<lanes>     passphrase only
//! salt <32 hex> / nonce <24 hex> / wrapped <96 hex>
//! pin yes|no / public <hex> / private <hex>  tpm only (TPM2B_PUBLIC, TPM2B_PRIVATE)
//! ```
//!
//! Changing protector rewrites this one file (temp file, fsync, rename): a reader, or a change
//! killed half-way, sees the old protector or the new one, both opening the same key, so no
//! sealed blob is ever re-encrypted.

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::KeystoreError;
use super::seal::{KEY_ID_LEN, WrapKey};

/// First line of a non-file protector.
const HEADER: &str = "nod-keystore-key v1";
/// Longest protector file read; a TPM blob pair is well under 1 KiB.
pub const MAX_FILE: u64 = 8 * 1024;
/// Longest TPM blob accepted (public or private).
const MAX_TPM_BLOB: usize = 2048;

/// Argon2id cost of new passphrase protectors: memory in KiB, passes, lanes.
pub const ARGON2_M_KIB: u32 = 64 * 1024;
pub const ARGON2_T: u32 = 3;
pub const ARGON2_P: u32 = 1;
/// Highest costs a protector file may ask for, so a damaged file cannot make nod allocate
/// gigabytes or spin for hours.
const ARGON2_MAX_M_KIB: u32 = 1024 * 1024;
const ARGON2_MAX_T: u32 = 64;
const ARGON2_MAX_P: u32 = 16;

/// The protector kinds a user can pick (`nod keys protect tpm|passphrase|file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtectorKind {
    File,
    Passphrase,
    Tpm,
}

impl ProtectorKind {
    pub fn word(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Passphrase => "passphrase",
            Self::Tpm => "tpm",
        }
    }
}

impl fmt::Display for ProtectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

impl std::str::FromStr for ProtectorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "file" => Ok(Self::File),
            "passphrase" => Ok(Self::Passphrase),
            "tpm" => Ok(Self::Tpm),
            _ => Err(format!(
                "unknown protector {s:?}: use tpm, passphrase or file"
            )),
        }
    }
}

/// Argon2id parameters of a passphrase protector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Cost {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Default for Argon2Cost {
    fn default() -> Self {
        Self {
            m_kib: ARGON2_M_KIB,
            t: ARGON2_T,
            p: ARGON2_P,
        }
    }
}

/// A parsed `keystore.key`.
#[derive(Clone, PartialEq, Eq)]
pub enum Protector {
    /// The key in the clear.
    File(Zeroizing<[u8; 32]>),
    Passphrase {
        key_id: [u8; KEY_ID_LEN],
        cost: Argon2Cost,
        salt: [u8; 16],
        nonce: [u8; 12],
        /// The wrapping key encrypted, then its tag.
        wrapped: [u8; 48],
    },
    Tpm {
        key_id: [u8; KEY_ID_LEN],
        pin: bool,
        public: Vec<u8>,
        private: Vec<u8>,
    },
}

impl fmt::Debug for Protector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(_) => f.write_str("Protector::File(<redacted>)"),
            Self::Passphrase { key_id, cost, .. } => f
                .debug_struct("Protector::Passphrase")
                .field("key_id", &hex::encode(key_id))
                .field("cost", cost)
                .finish_non_exhaustive(),
            Self::Tpm { key_id, pin, .. } => f
                .debug_struct("Protector::Tpm")
                .field("key_id", &hex::encode(key_id))
                .field("pin", pin)
                .finish_non_exhaustive(),
        }
    }
}

impl Protector {
    pub fn kind(&self) -> ProtectorKind {
        match self {
            Self::File(_) => ProtectorKind::File,
            Self::Passphrase { .. } => ProtectorKind::Passphrase,
            Self::Tpm { .. } => ProtectorKind::Tpm,
        }
    }

    /// The wrapping key's id; for the file protector, computed from the key.
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        match self {
            Self::File(key) => WrapKey::from_bytes(**key).id(),
            Self::Passphrase { key_id, .. } | Self::Tpm { key_id, .. } => *key_id,
        }
    }

    /// Whether unwrapping needs something typed (a passphrase, or the TPM's PIN).
    pub fn needs_secret(&self) -> bool {
        match self {
            Self::File(_) => false,
            Self::Passphrase { .. } => true,
            Self::Tpm { pin, .. } => *pin,
        }
    }

    /// Parses `keystore.key` (already capped at [`MAX_FILE`] bytes). `Err` carries the reason.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if !trimmed.starts_with(HEADER) {
            let mut key = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(trimmed, &mut key[..])
                .map_err(|_| "neither 64 hex digits nor a nod-keystore-key file".to_owned())?;
            return Ok(Self::File(key));
        }
        let mut lines = trimmed.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("first line is not {HEADER:?}"));
        }
        let mut fields = BTreeMap::new();
        for line in lines {
            let (name, value) = line
                .split_once(' ')
                .ok_or_else(|| format!("line {line:?} has no value"))?;
            if fields.insert(name, value).is_some() {
                return Err(format!("{name} appears twice"));
            }
        }
        let mut take = |name: &str| {
            fields
                .remove(name)
                .ok_or_else(|| format!("{name} is missing"))
        };
        let protector = match take("protector")? {
            "passphrase" => Self::Passphrase {
                key_id: hex_array(take("key-id")?, "key-id")?,
                cost: parse_cost(take("argon2id")?)?,
                salt: hex_array(take("salt")?, "salt")?,
                nonce: hex_array(take("nonce")?, "nonce")?,
                wrapped: hex_array(take("wrapped")?, "wrapped")?,
            },
            "tpm" => Self::Tpm {
                key_id: hex_array(take("key-id")?, "key-id")?,
                pin: match take("pin")? {
                    "yes" => true,
                    "no" => false,
                    other => return Err(format!("pin {other:?} is neither yes nor no")),
                },
                public: hex_blob(take("public")?, "public")?,
                private: hex_blob(take("private")?, "private")?,
            },
            other => return Err(format!("unknown protector {other:?}")),
        };
        if let Some(name) = fields.keys().next() {
            return Err(format!("unknown field {name}"));
        }
        Ok(protector)
    }

    /// The file's text; [`parse`](Self::parse) reads it back to the same value.
    pub fn encode(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::new());
        match self {
            Self::File(key) => {
                out.push_str(&hex::encode(&key[..]));
                out.push('\n');
            }
            Self::Passphrase {
                key_id,
                cost,
                salt,
                nonce,
                wrapped,
            } => {
                out.push_str(&format!(
                    "{HEADER}\nprotector passphrase\nkey-id {}\nargon2id m={} t={} p={}\n\
                     salt {}\nnonce {}\nwrapped {}\n",
                    hex::encode(key_id),
                    cost.m_kib,
                    cost.t,
                    cost.p,
                    hex::encode(salt),
                    hex::encode(nonce),
                    hex::encode(wrapped)
                ));
            }
            Self::Tpm {
                key_id,
                pin,
                public,
                private,
            } => {
                out.push_str(&format!(
                    "{HEADER}\nprotector tpm\nkey-id {}\npin {}\npublic {}\nprivate {}\n",
                    hex::encode(key_id),
                    if *pin { "yes" } else { "no" },
                    hex::encode(public),
                    hex::encode(private)
                ));
            }
        }
        out
    }

    /// Wraps `key` under a passphrase, with a fresh salt and nonce.
    pub fn passphrase(
        key: &WrapKey,
        passphrase: &[u8],
        cost: Argon2Cost,
    ) -> Result<Self, KeystoreError> {
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 12];
        getrandom::getrandom(&mut salt).map_err(|e| KeystoreError::Random(e.to_string()))?;
        getrandom::getrandom(&mut nonce).map_err(|e| KeystoreError::Random(e.to_string()))?;
        let key_id = key.id();
        let kek = derive_kek(passphrase, &salt, cost)?;
        let mut body = Zeroizing::new(*key.bytes());
        let tag = ChaCha20Poly1305::new(Key::from_slice(&kek[..]))
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &passphrase_aad(&key_id, cost, &salt),
                &mut body[..],
            )
            .map_err(|_| KeystoreError::Random("encryption failed".into()))?;
        let mut wrapped = [0u8; 48];
        wrapped[..32].copy_from_slice(&body[..]);
        wrapped[32..].copy_from_slice(&tag);
        Ok(Self::Passphrase {
            key_id,
            cost,
            salt,
            nonce,
            wrapped,
        })
    }

    /// The wrapping key of a passphrase protector; `Ok(None)` for a wrong passphrase.
    pub fn open_passphrase(&self, passphrase: &[u8]) -> Result<Option<WrapKey>, KeystoreError> {
        let Self::Passphrase {
            key_id,
            cost,
            salt,
            nonce,
            wrapped,
        } = self
        else {
            return Err(KeystoreError::Refused(
                "the keystore key is not protected by a passphrase".into(),
            ));
        };
        let kek = derive_kek(passphrase, salt, *cost)?;
        let mut body = Zeroizing::new([0u8; 32]);
        body.copy_from_slice(&wrapped[..32]);
        let opened = ChaCha20Poly1305::new(Key::from_slice(&kek[..])).decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            &passphrase_aad(key_id, *cost, salt),
            &mut body[..],
            Tag::from_slice(&wrapped[32..]),
        );
        if opened.is_err() {
            return Ok(None);
        }
        let key = WrapKey::from_bytes(*body);
        check_id(&key, key_id)?;
        Ok(Some(key))
    }
}

/// Refuses a key whose id is not the one the protector names (a protector file pieced
/// together from two keystores).
pub(super) fn check_id(key: &WrapKey, want: &[u8; KEY_ID_LEN]) -> Result<(), KeystoreError> {
    if bool::from(key.id().ct_eq(want)) {
        Ok(())
    } else {
        Err(KeystoreError::Refused(
            "the keystore key opened, but it is not the key this protector names; the file is \
             damaged"
                .into(),
        ))
    }
}

/// The associated data of a passphrase-wrapped key: everything else the file says, so no
/// field can be swapped (e.g. a cheaper cost) without the tag failing.
fn passphrase_aad(key_id: &[u8; KEY_ID_LEN], cost: Argon2Cost, salt: &[u8; 16]) -> Vec<u8> {
    let mut aad = format!(
        "{HEADER} passphrase argon2id m={} t={} p={} ",
        cost.m_kib, cost.t, cost.p
    )
    .into_bytes();
    aad.extend_from_slice(key_id);
    aad.extend_from_slice(salt);
    aad
}

/// Argon2id of the passphrase: the key that wraps the wrapping key.
fn derive_kek(
    passphrase: &[u8],
    salt: &[u8; 16],
    cost: Argon2Cost,
) -> Result<Zeroizing<[u8; 32]>, KeystoreError> {
    let params = argon2::Params::new(cost.m_kib, cost.t, cost.p, Some(32))
        .map_err(|e| KeystoreError::Refused(format!("bad Argon2id parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, &mut out[..])
        .map_err(|e| KeystoreError::Refused(format!("Argon2id failed: {e}")))?;
    Ok(out)
}

fn parse_cost(text: &str) -> Result<Argon2Cost, String> {
    let mut m = None;
    let mut t = None;
    let mut p = None;
    for part in text.split(' ') {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("argon2id parameter {part:?} is not name=value"))?;
        let value: u32 = value
            .parse()
            .map_err(|_| format!("argon2id {name}={value:?} is not a number"))?;
        let slot = match name {
            "m" => &mut m,
            "t" => &mut t,
            "p" => &mut p,
            _ => return Err(format!("unknown argon2id parameter {name}")),
        };
        if slot.replace(value).is_some() {
            return Err(format!("argon2id {name} appears twice"));
        }
    }
    let cost = Argon2Cost {
        m_kib: m.ok_or("argon2id m is missing")?,
        t: t.ok_or("argon2id t is missing")?,
        p: p.ok_or("argon2id p is missing")?,
    };
    if !(8..=ARGON2_MAX_M_KIB).contains(&cost.m_kib)
        || !(1..=ARGON2_MAX_T).contains(&cost.t)
        || !(1..=ARGON2_MAX_P).contains(&cost.p)
        || cost.m_kib < 8 * cost.p
    {
        return Err(format!(
            "argon2id m={} t={} p={} is out of range (m 8..={ARGON2_MAX_M_KIB} KiB, t \
             1..={ARGON2_MAX_T}, p 1..={ARGON2_MAX_P})",
            cost.m_kib, cost.t, cost.p
        ));
    }
    Ok(cost)
}

fn hex_array<const N: usize>(text: &str, name: &str) -> Result<[u8; N], String> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| format!("{name} is not {} hex digits", 2 * N))?;
    Ok(out)
}

fn hex_blob(text: &str, name: &str) -> Result<Vec<u8>, String> {
    if text.len() > 2 * MAX_TPM_BLOB {
        return Err(format!("{name} is longer than {MAX_TPM_BLOB} bytes"));
    }
    hex::decode(text).map_err(|_| format!("{name} is not hex"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap enough for a debug-build unit test; real protectors use [`Argon2Cost::default`].
    const CHEAP: Argon2Cost = Argon2Cost {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn file_protector_keeps_the_old_format() {
        let text = format!("{}\n", hex::encode([9u8; 32]));
        let p = Protector::parse(&text).unwrap();
        assert_eq!(p.kind(), ProtectorKind::File);
        assert_eq!(&p.encode()[..], text);
        assert_eq!(p.key_id(), WrapKey::from_bytes([9; 32]).id());
        assert!(!p.needs_secret());
    }

    #[test]
    fn passphrase_protector_round_trips_and_refuses_a_wrong_passphrase() {
        let key = WrapKey::from_bytes([3; 32]);
        let p = Protector::passphrase(&key, b"correct horse", CHEAP).unwrap();
        let text = p.encode();
        assert!(!text.contains(&hex::encode([3u8; 32])));
        let back = Protector::parse(&text).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.encode(), text);
        let opened = back.open_passphrase(b"correct horse").unwrap().unwrap();
        assert_eq!(opened.bytes(), key.bytes());
        assert!(back.open_passphrase(b"wrong horse").unwrap().is_none());
    }

    #[test]
    fn a_passphrase_protector_with_a_lowered_cost_does_not_open() {
        let key = WrapKey::from_bytes([3; 32]);
        let text = Protector::passphrase(&key, b"pw", CHEAP).unwrap().encode();
        let cheaper = text.replace("m=64 ", "m=32 ");
        let p = Protector::parse(&cheaper).unwrap();
        assert!(p.open_passphrase(b"pw").unwrap().is_none());
    }

    #[test]
    fn tpm_protector_round_trips() {
        let p = Protector::Tpm {
            key_id: [1; 8],
            pin: true,
            public: vec![1, 2, 3],
            private: vec![4, 5],
        };
        assert_eq!(Protector::parse(&p.encode()).unwrap(), p);
        assert!(p.needs_secret());
    }

    #[test]
    fn malformed_protector_files_are_refused() {
        let good = Protector::passphrase(&WrapKey::from_bytes([3; 32]), b"pw", CHEAP)
            .unwrap()
            .encode();
        for bad in [
            String::new(),
            "zz".into(),
            format!("{HEADER}\nprotector magic\n"),
            good.replace("salt ", "salt 00"),
            format!("{}extra field\n", &*good),
            format!("{}salt 00\n", &*good),
            good.replace("m=64", "m=99999999"),
            good.replace("t=1", "t=0"),
            good.replace("p=1", "q=1"),
            good.replace("protector passphrase\n", ""),
            format!(
                "{HEADER}\nprotector tpm\nkey-id 0101010101010101\npin maybe\npublic 00\nprivate 00\n"
            ),
            format!(
                "{HEADER}\nprotector tpm\nkey-id 0101010101010101\npin no\npublic {}\nprivate 00\n",
                "00".repeat(MAX_TPM_BLOB + 1)
            ),
        ] {
            assert!(Protector::parse(&bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn debug_hides_the_file_key() {
        let p = Protector::File(Zeroizing::new([0x42; 32]));
        assert!(!format!("{p:?}").contains("42"));
    }
}
