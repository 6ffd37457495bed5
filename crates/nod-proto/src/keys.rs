//! Key files and key ids.
//!
//! macos-auth key files are text: the first line that is neither blank nor `#` holds
//! `private_key_hex=<64 hex>` or `public_key_hex=<64 hex>`. nod also reads OpenSSH
//! `ssh-ed25519 AAAA… [comment]` public keys, and an optional `key_id=<id>` line after the key,
//! which pins the key id a signer must claim (macos-auth reads only the first line, so such a
//! file stays readable by it).
//!
//! A file without a `key_id=` line pins the key alone ([`PinnedKey::key_id`] is `None`): a
//! message signed by that key may claim any key id. The signature under the pinned key is what
//! authenticates; a key id only picks among pinned keys. macos-auth writes its key files that
//! way and signs with ids of its own choosing (`host-key-1`, `agent-key-1`), so this is what
//! makes its files and defaults work unchanged.
//!
//! The key id a nod signer claims by default is its key's OpenSSH fingerprint,
//! `SHA256:<base64>`, the same string `ssh-keygen -lf` prints.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::ProtoError;

const SSH_ED25519: &str = "ssh-ed25519";
/// Longest key id accepted from a file.
const MAX_KEY_ID_LEN: usize = 256;

/// Longest host id (`linux_host_id`) that nod accepts on either side.
pub const MAX_HOST_ID_LEN: usize = 128;

/// Checks a host id: 1-128 characters of `[A-Za-z0-9._:@-]`. The helper refuses to start with
/// any other id and the agent refuses to allowlist one, so the two always agree.
pub fn valid_host_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_HOST_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
}

/// The id a signer claims in `key_id` / `agent_key_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// Wraps an id from configuration. Ids are printable ASCII without spaces.
    pub fn new(id: &str) -> Result<Self, ProtoError> {
        let ok = !id.is_empty()
            && id.len() <= MAX_KEY_ID_LEN
            && id.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(Self(id.to_owned()))
        } else {
            Err(ProtoError::BadKey(format!(
                "key id {id:?} must be 1-{MAX_KEY_ID_LEN} printable characters without spaces"
            )))
        }
    }

    /// The default id of a key: its OpenSSH SHA-256 fingerprint.
    pub fn fingerprint(key: &VerifyingKey) -> Self {
        let digest = Sha256::digest(ssh_wire_blob(key));
        Self(format!("SHA256:{}", STANDARD_NO_PAD.encode(digest)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pinned public key (read from a key file or an allowlist), with the key id it pins, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedKey {
    pub key: VerifyingKey,
    /// `Some`: a message signed by this key must claim exactly this id (a `key_id=` line, or
    /// an id given when the key was pinned). `None`: it may claim any id.
    pub key_id: Option<KeyId>,
}

impl PinnedKey {
    /// Whether a message that claims `claimed` as its key id may be checked against this key.
    /// This only picks candidates: whatever it says, the signature still has to verify.
    pub fn admits(&self, claimed: &str) -> bool {
        self.key_id.as_ref().is_none_or(|id| id.as_str() == claimed)
    }

    /// The key's fingerprint and what it pins, for reports: `SHA256:… (key id X)` or
    /// `SHA256:… (any key id)`.
    pub fn describe(&self) -> String {
        let fingerprint = KeyId::fingerprint(&self.key);
        match &self.key_id {
            Some(id) => format!("{fingerprint} (key id {id})"),
            None => format!("{fingerprint} (any key id)"),
        }
    }
}

fn ssh_wire_blob(key: &VerifyingKey) -> Vec<u8> {
    let mut blob = Vec::with_capacity(51);
    blob.extend_from_slice(&(SSH_ED25519.len() as u32).to_be_bytes());
    blob.extend_from_slice(SSH_ED25519.as_bytes());
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(key.as_bytes());
    blob
}

/// `ssh-ed25519 AAAA… comment`, for `authorized_keys`-style display.
pub fn openssh_public_line(key: &VerifyingKey, comment: &str) -> String {
    format!(
        "{SSH_ED25519} {} {comment}",
        STANDARD.encode(ssh_wire_blob(key))
    )
    .trim_end()
    .to_owned()
}

fn meaningful_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

fn hex32(s: &str, what: &str) -> Result<Zeroizing<[u8; 32]>, ProtoError> {
    let mut out = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(s.trim(), &mut out[..])
        .map_err(|_| ProtoError::BadKey(format!("{what} must be 64 hex digits")))?;
    Ok(out)
}

fn parse_openssh_ed25519(line: &str) -> Result<VerifyingKey, ProtoError> {
    let mut parts = line.split_ascii_whitespace();
    let (Some(SSH_ED25519), Some(b64)) = (parts.next(), parts.next()) else {
        return Err(ProtoError::BadKey(
            "expected `public_key_hex=<64 hex>` or an `ssh-ed25519 AAAA…` line".into(),
        ));
    };
    if b64.len() > 128 {
        return Err(ProtoError::BadKey(
            "ssh-ed25519 key blob is too long".into(),
        ));
    }
    let blob = STANDARD
        .decode(b64)
        .map_err(|_| ProtoError::BadKey("ssh-ed25519 key is not valid base64".into()))?;
    let key_bytes: [u8; 32] = blob
        .strip_prefix(&ssh_wire_blob(&VerifyingKey::default())[..19])
        .and_then(|rest| rest.try_into().ok())
        .ok_or_else(|| ProtoError::BadKey("not an ssh-ed25519 key blob".into()))?;
    VerifyingKey::from_bytes(&key_bytes)
        .map_err(|_| ProtoError::BadKey("not a valid Ed25519 point".into()))
}

/// Parses a public key file (macos-auth hex format or an OpenSSH `ssh-ed25519` line), with an
/// optional `key_id=` line after it. Anything else in the file is an error.
pub fn parse_public_key_file(text: &str) -> Result<PinnedKey, ProtoError> {
    let mut lines = meaningful_lines(text);
    let first = lines
        .next()
        .ok_or_else(|| ProtoError::BadKey("file holds no key".into()))?;
    let key = match first.strip_prefix("public_key_hex=") {
        Some(hex) => VerifyingKey::from_bytes(&*hex32(hex, "public_key_hex")?)
            .map_err(|_| ProtoError::BadKey("not a valid Ed25519 point".into()))?,
        None => parse_openssh_ed25519(first)?,
    };
    let mut key_id = None;
    for line in lines {
        match line.strip_prefix("key_id=") {
            Some(id) if key_id.is_none() => key_id = Some(KeyId::new(id.trim())?),
            _ => {
                return Err(ProtoError::BadKey(format!(
                    "unexpected line {line:?} after the key"
                )));
            }
        }
    }
    Ok(PinnedKey { key, key_id })
}

/// Parses a private key file: `private_key_hex=<64 hex>` and nothing else.
pub fn parse_private_key_file(text: &str) -> Result<SigningKey, ProtoError> {
    let mut lines = meaningful_lines(text);
    let hex = lines
        .next()
        .and_then(|l| l.strip_prefix("private_key_hex="))
        .ok_or_else(|| ProtoError::BadKey("expected `private_key_hex=<64 hex>`".into()))?;
    let seed = hex32(hex, "private_key_hex")?;
    if lines.next().is_some() {
        return Err(ProtoError::BadKey(
            "unexpected lines after private_key_hex".into(),
        ));
    }
    Ok(SigningKey::from_bytes(&seed))
}

/// The text of a private key file.
pub fn format_private_key_file(key: &SigningKey) -> Zeroizing<String> {
    let seed = Zeroizing::new(key.to_bytes());
    let hex = Zeroizing::new(hex::encode(&seed[..]));
    Zeroizing::new(format!("private_key_hex={}\n", hex.as_str()))
}

/// The text of a public key file, with a `key_id=` line when the id is not the fingerprint.
/// (A file without one pins no id, which is all a signer that claims its fingerprint needs.)
pub fn format_public_key_file(key: &VerifyingKey, key_id: &KeyId, comment: &str) -> String {
    let mut out = String::new();
    for line in comment.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("public_key_hex=");
    out.push_str(&hex::encode(key.as_bytes()));
    out.push('\n');
    if *key_id != KeyId::fingerprint(key) {
        out.push_str("key_id=");
        out.push_str(key_id.as_str());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    #[test]
    fn fingerprint_matches_openssh_format() {
        let id = KeyId::fingerprint(&key().verifying_key());
        assert!(id.as_str().starts_with("SHA256:"));
        assert_eq!(id.as_str().len(), 7 + 43);
    }

    #[test]
    fn reads_hex_and_openssh_forms_of_the_same_key() {
        let vk = key().verifying_key();
        let hex_file = format_public_key_file(&vk, &KeyId::fingerprint(&vk), "host key");
        let ssh_line = openssh_public_line(&vk, "root@host");
        assert_eq!(parse_public_key_file(&hex_file).unwrap().key, vk);
        assert_eq!(parse_public_key_file(&ssh_line).unwrap().key, vk);
    }

    #[test]
    fn key_id_line_pins_the_id() {
        let vk = key().verifying_key();
        let id = KeyId::new("host-key-1").unwrap();
        let parsed = parse_public_key_file(&format_public_key_file(&vk, &id, "")).unwrap();
        assert_eq!(parsed.key_id, Some(id));
        assert!(parsed.admits("host-key-1"));
        assert!(!parsed.admits("host-key-2"));
        assert!(!parsed.admits(KeyId::fingerprint(&vk).as_str()));
    }

    #[test]
    fn file_without_key_id_line_admits_any_id() {
        let vk = key().verifying_key();
        // As macos-auth's `gen-key --public-key-file` writes it: one line, nothing else.
        let text = format!("public_key_hex={}\n", hex::encode(vk.as_bytes()));
        let parsed = parse_public_key_file(&text).unwrap();
        assert_eq!(
            parsed,
            PinnedKey {
                key: vk,
                key_id: None
            }
        );
        for claimed in [
            "host-key-1",
            "agent-key-1",
            KeyId::fingerprint(&vk).as_str(),
        ] {
            assert!(parsed.admits(claimed), "{claimed}");
        }
        assert!(parsed.describe().ends_with("(any key id)"));
        // A file for a signer that claims its fingerprint needs no line either.
        let nod_file = format_public_key_file(&vk, &KeyId::fingerprint(&vk), "agent");
        assert_eq!(parse_public_key_file(&nod_file).unwrap().key_id, None);
    }

    #[test]
    fn private_key_round_trips() {
        let text = format_private_key_file(&key());
        assert_eq!(parse_private_key_file(&text).unwrap().to_bytes(), [7; 32]);
    }

    #[test]
    fn rejects_junk() {
        for bad in [
            "",
            "# only a comment\n",
            "public_key_hex=zz\n",
            "public_key_hex=00\n",
            "ssh-rsa AAAAB3NzaC1yc2E= x\n",
            "ssh-ed25519 !!!\n",
            "public_key_hex=ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c\nextra\n",
        ] {
            assert!(parse_public_key_file(bad).is_err(), "{bad:?}");
        }
        assert!(parse_private_key_file("private_key_hex=00\n").is_err());
        assert!(parse_private_key_file("public_key_hex=00\n").is_err());
        assert!(KeyId::new("has space").is_err());
        assert!(KeyId::new("").is_err());
    }
}
