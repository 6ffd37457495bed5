//! Sealing keystore files: ChaCha20-Poly1305 under a random 256-bit wrapping key.
//!
//! A sealed file is `MAGIC` (8 bytes) ‖ wrapping-key id (8 bytes) ‖ nonce (12 bytes) ‖
//! ciphertext ‖ tag (16 bytes). The associated data is `MAGIC` ‖ the file's purpose (e.g.
//! `ssh-keys`), so a sealed file moved into another file's place fails to open instead of
//! being read as something else. The key id (a domain-separated hash of the wrapping key,
//! useless to an attacker) tells "wrong wrapping key" apart from "damaged file".
//!
//! Every blob nod keeps at rest goes through here: the keystore's files, the encrypted secrets
//! store (`secrets`), and the policy's MAC key ([`WrapKey::derive`]). Where the wrapping key
//! itself is kept, and how it is protected, is [`super::protector`]'s business.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hmac::{Hmac, Mac};
use nix::unistd::getuid;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::KeystoreError;

/// First bytes of every sealed file.
pub const MAGIC: &[u8; 8] = b"nodseal1";
/// Length of a wrapping key's id.
pub const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + KEY_ID_LEN + NONCE_LEN;

/// The 256-bit wrapping key. Zeroized on drop, never printed.
pub struct WrapKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for WrapKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WrapKey(<redacted>)")
    }
}

impl WrapKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A fresh key from the kernel's randomness.
    pub fn generate() -> Result<Self, KeystoreError> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut key[..]).map_err(|e| KeystoreError::Random(e.to_string()))?;
        Ok(Self(key))
    }

    /// The key's bytes, for a protector to wrap.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A 32-byte key for one purpose other than sealing (the policy's MAC key), so nothing
    /// keeps a key of its own: HMAC-SHA256 under the wrapping key of a domain string and the
    /// purpose. Different purposes give unrelated keys.
    pub fn derive(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0[..]).expect("any key length");
        m.update(b"nod derived key v1\0");
        m.update(purpose.as_bytes());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&m.finalize().into_bytes());
        out
    }

    /// Names the key in a sealed file's header and in the protector file without revealing it.
    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        let mut h = Sha256::new();
        h.update(b"nod keystore wrapping key id v1\0");
        h.update(&self.0[..]);
        let digest = h.finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        id
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0[..]))
    }
}

/// Refuses a secret file someone else owns or can read.
pub(super) fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeystoreError> {
    if meta.uid() != getuid().as_raw() {
        return Err(KeystoreError::Owner {
            path: path.to_owned(),
            uid: meta.uid(),
        });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(KeystoreError::Permissions {
            path: path.to_owned(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

fn aad(purpose: &str) -> Vec<u8> {
    let mut aad = MAGIC.to_vec();
    aad.extend_from_slice(purpose.as_bytes());
    aad
}

/// Encrypts `plaintext` for a file with the given purpose.
pub fn seal(key: &WrapKey, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeystoreError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(|e| KeystoreError::Random(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&key.id());
    out.extend_from_slice(&nonce);
    // Encrypted in place inside `out`, whose capacity never changes, so no unencrypted copy is
    // left behind in a freed allocation.
    out.extend_from_slice(plaintext);
    let tag = key
        .cipher()
        .encrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            &aad(purpose),
            &mut out[HEADER_LEN..],
        )
        .map_err(|_| KeystoreError::Random("encryption failed".into()))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Why a sealed file did not open, before a path is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Not a sealed file, or cut short.
    Format,
    /// Sealed under another wrapping key.
    WrongKey,
    /// The tag does not verify: the file was changed or damaged.
    Damaged,
}

/// Decrypts a sealed file's bytes.
pub fn open(key: &WrapKey, purpose: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if sealed.len() < HEADER_LEN + TAG_LEN || &sealed[..MAGIC.len()] != MAGIC {
        return Err(OpenError::Format);
    }
    let id = &sealed[MAGIC.len()..MAGIC.len() + KEY_ID_LEN];
    if !bool::from(id.ct_eq(&key.id())) {
        return Err(OpenError::WrongKey);
    }
    let nonce = &sealed[MAGIC.len() + KEY_ID_LEN..HEADER_LEN];
    let (body, tag) = sealed[HEADER_LEN..].split_at(sealed.len() - HEADER_LEN - TAG_LEN);
    let mut plain = Zeroizing::new(body.to_vec());
    key.cipher()
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            &aad(purpose),
            &mut plain[..],
            Tag::from_slice(tag),
        )
        .map_err(|_| OpenError::Damaged)?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_hides_the_plaintext() {
        let key = WrapKey::generate().unwrap();
        let sealed = seal(&key, "test", b"secret scalar bytes").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            &open(&key, "test", &sealed).unwrap()[..],
            b"secret scalar bytes"
        );
    }

    #[test]
    fn wrong_key_damage_and_wrong_purpose_are_told_apart() {
        let key = WrapKey::generate().unwrap();
        let other = WrapKey::generate().unwrap();
        let mut sealed = seal(&key, "test", b"payload").unwrap();
        assert_eq!(open(&other, "test", &sealed), Err(OpenError::WrongKey));
        assert_eq!(open(&key, "other", &sealed), Err(OpenError::Damaged));
        assert_eq!(open(&key, "test", &sealed[..20]), Err(OpenError::Format));
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(open(&key, "test", &sealed), Err(OpenError::Damaged));
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_from_the_key() {
        let key = WrapKey::from_bytes([7; 32]);
        let a = key.derive("secrets-policy");
        assert_eq!(a, key.derive("secrets-policy"));
        assert_ne!(a, key.derive("other"));
        assert_ne!(&a[..], &[7u8; 32][..]);
        assert_ne!(a, WrapKey::from_bytes([8; 32]).derive("secrets-policy"));
    }

    #[test]
    fn wrap_key_debug_is_redacted() {
        let key = WrapKey::from_bytes([0x42; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted") && !shown.contains("42"));
    }
}
