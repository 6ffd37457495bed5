//! Public keys and OpenSSH certificates as the agent protocol carries them: a key blob is a
//! plain public key (RFC 4253 §6.6) or a certificate (OpenSSH `PROTOCOL.certkeys`).
//!
//! Certificates are decoded here rather than by ssh-key, whose `Certificate` cannot hold a
//! `valid_before` above `i64::MAX`, so it refuses the "forever" validity (`u64::MAX`) that
//! `ssh-keygen -s` gives when no `-V` is passed. A certificate keeps the exact bytes it came
//! in: that is what the agent lists back and what equality compares, so nothing is
//! re-encoded. As in OpenSSH (`cert_parse`), the CA's signature over the certificate is
//! checked when it is decoded; a certificate whose signature does not verify is refused
//! wherever it appears. Its validity period and principals are checked only where OpenSSH
//! checks them (a host certificate in a destination constraint, [`OpensshCert::check_host`]).

use std::fmt;

use signature::Verifier as _;
use ssh_key::public::KeyData;
use ssh_key::{HashAlg, Signature};

use super::destination::glob;
use super::wire::{Reader, WireError, put_string};

/// Longest field of a public key (an RSA modulus of 16384 bits is 2 KiB).
const MAX_KEY_FIELD: usize = 8 * 1024;
/// Longest key id, principal, option name or value kept.
const MAX_TEXT: usize = 4 * 1024;
/// Most principals in one certificate, as OpenSSH's `SSHKEY_CERT_MAX_PRINCIPALS`.
const MAX_PRINCIPALS: usize = 256;
/// Longest CA key blob or signature blob.
const MAX_BLOB: usize = 16 * 1024;

/// `SSH2_CERT_TYPE_USER` / `SSH2_CERT_TYPE_HOST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertType {
    User,
    Host,
}

/// Why a key blob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("unsupported key type {0:?}")]
    UnknownType(String),
    #[error("bad public key: {0}")]
    BadKey(String),
    #[error("certificate type {0} is neither user (1) nor host (2)")]
    BadCertType(u32),
    #[error("certificate is signed by a certificate, not a CA key")]
    CaIsCertificate,
    #[error("certificate has more than {MAX_PRINCIPALS} principals")]
    TooManyPrincipals,
    #[error("certificate signature: {0}")]
    BadSignature(String),
    #[error("certificate signature does not verify with its CA key {0}")]
    SignatureMismatch(String),
}

/// An OpenSSH certificate, decoded and with its CA signature verified.
#[derive(Clone)]
pub struct OpensshCert {
    blob: Vec<u8>,
    /// The certified key.
    key: KeyData,
    serial: u64,
    cert_type: CertType,
    key_id: String,
    principals: Vec<String>,
    valid_after: u64,
    valid_before: u64,
    has_critical_options: bool,
    signature_key: KeyData,
    /// The algorithm of the CA's signature (`ssh-ed25519`, `rsa-sha2-512`, …).
    signature_algorithm: String,
}

impl fmt::Debug for OpensshCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpensshCert")
            .field("key", &self.key.fingerprint(HashAlg::Sha256).to_string())
            .field("serial", &self.serial)
            .field("type", &self.cert_type)
            .field("key_id", &self.key_id)
            .field("principals", &self.principals)
            .field("valid_after", &self.valid_after)
            .field("valid_before", &self.valid_before)
            .finish_non_exhaustive()
    }
}

impl PartialEq for OpensshCert {
    fn eq(&self, other: &Self) -> bool {
        self.blob == other.blob
    }
}

impl Eq for OpensshCert {}

/// The plain key type a certificate type certifies, and how many wire fields its public key
/// has inside the certificate.
fn certified_type(cert_type: &str) -> Option<(&'static str, usize)> {
    Some(match cert_type {
        "ssh-ed25519-cert-v01@openssh.com" => ("ssh-ed25519", 1),
        "ecdsa-sha2-nistp256-cert-v01@openssh.com" => ("ecdsa-sha2-nistp256", 2),
        "ecdsa-sha2-nistp384-cert-v01@openssh.com" => ("ecdsa-sha2-nistp384", 2),
        "ecdsa-sha2-nistp521-cert-v01@openssh.com" => ("ecdsa-sha2-nistp521", 2),
        "ssh-rsa-cert-v01@openssh.com" => ("ssh-rsa", 2),
        "ssh-dss-cert-v01@openssh.com" => ("ssh-dss", 4),
        "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com" => ("sk-ecdsa-sha2-nistp256@openssh.com", 3),
        "sk-ssh-ed25519-cert-v01@openssh.com" => ("sk-ssh-ed25519@openssh.com", 2),
        _ => return None,
    })
}

/// Whether a key type name is a certificate type (`…-cert-v01@openssh.com`).
pub fn is_cert_type(name: &str) -> bool {
    name.ends_with("-cert-v01@openssh.com")
}

/// A plain public key from its blob; nothing may trail it.
pub fn decode_key(blob: &[u8]) -> Result<KeyData, CredentialError> {
    let mut r = blob;
    let key = ssh_agent_lib::ssh_encoding::Decode::decode(&mut r)
        .map_err(|e: ssh_key::Error| CredentialError::BadKey(e.to_string()))?;
    if !r.is_empty() {
        return Err(WireError::Trailing(r.len()).into());
    }
    Ok(key)
}

/// The blob of a plain public key.
pub fn key_blob(key: &KeyData) -> Vec<u8> {
    super::wire::to_vec(key)
}

/// Checks that a critical-options or extensions field is a list of (name, data) pairs.
fn check_options(bytes: &[u8], what: &'static str) -> Result<(), CredentialError> {
    let mut r = Reader::new(bytes);
    while !r.is_empty() {
        r.text(MAX_TEXT, what)?;
        r.string(MAX_TEXT, what)?;
    }
    Ok(())
}

impl OpensshCert {
    /// Decodes a certificate blob and verifies the CA's signature over it.
    pub fn decode(blob: &[u8]) -> Result<Self, CredentialError> {
        let mut r = Reader::new(blob);
        let type_name = r.text(MAX_TEXT, "certificate type")?;
        let (plain, fields) = certified_type(type_name)
            .ok_or_else(|| CredentialError::UnknownType(type_name.to_owned()))?;
        r.string(MAX_TEXT, "nonce")?;
        let mut plain_blob = Vec::new();
        put_string(&mut plain_blob, plain.as_bytes());
        for _ in 0..fields {
            put_string(&mut plain_blob, r.string(MAX_KEY_FIELD, "certified key")?);
        }
        let key = decode_key(&plain_blob)?;
        let serial = r.u64("serial")?;
        let cert_type = match r.u32("certificate type")? {
            1 => CertType::User,
            2 => CertType::Host,
            other => return Err(CredentialError::BadCertType(other)),
        };
        let key_id = r.text(MAX_TEXT, "key id")?.to_owned();
        let mut principals = Vec::new();
        let mut list = Reader::new(r.string(MAX_BLOB, "principals")?);
        while !list.is_empty() {
            if principals.len() >= MAX_PRINCIPALS {
                return Err(CredentialError::TooManyPrincipals);
            }
            principals.push(list.text(MAX_TEXT, "principal")?.to_owned());
        }
        let valid_after = r.u64("valid after")?;
        let valid_before = r.u64("valid before")?;
        let critical = r.string(MAX_BLOB, "critical options")?;
        check_options(critical, "critical option")?;
        check_options(r.string(MAX_BLOB, "extensions")?, "extension")?;
        r.string(MAX_BLOB, "reserved")?;
        let ca_blob = r.string(MAX_BLOB, "signature key")?;
        if Reader::new(ca_blob)
            .text(MAX_TEXT, "signature key")
            .is_ok_and(is_cert_type)
        {
            return Err(CredentialError::CaIsCertificate);
        }
        let signature_key = decode_key(ca_blob)?;
        let signed_len = blob.len() - r.remaining().len();
        let sig_blob = r.string(MAX_BLOB, "signature")?;
        r.finish()?;
        let signature_algorithm = Reader::new(sig_blob)
            .text(MAX_TEXT, "signature algorithm")?
            .to_owned();
        // ssh-key refuses `ssh-rsa` (SHA-1) signatures here, as OpenSSH's default
        // CASignatureAlgorithms does.
        let signature = {
            let mut s = sig_blob;
            let sig: Signature = ssh_agent_lib::ssh_encoding::Decode::decode(&mut s)
                .map_err(|e: ssh_key::Error| CredentialError::BadSignature(e.to_string()))?;
            if !s.is_empty() {
                return Err(CredentialError::BadSignature("trailing bytes".into()));
            }
            sig
        };
        signature_key
            .verify(&blob[..signed_len], &signature)
            .map_err(|_| {
                CredentialError::SignatureMismatch(
                    signature_key.fingerprint(HashAlg::Sha256).to_string(),
                )
            })?;
        Ok(Self {
            blob: blob.to_vec(),
            key,
            serial,
            cert_type,
            key_id,
            principals,
            valid_after,
            valid_before,
            has_critical_options: !critical.is_empty(),
            signature_key,
            signature_algorithm,
        })
    }

    /// The certificate exactly as it was received.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// The certified public key.
    pub fn public_key(&self) -> &KeyData {
        &self.key
    }

    pub fn signature_key(&self) -> &KeyData {
        &self.signature_key
    }

    pub fn cert_type(&self) -> CertType {
        self.cert_type
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn principals(&self) -> &[String] {
        &self.principals
    }

    /// Unix seconds; `u64::MAX` is forever.
    pub fn valid_before(&self) -> u64 {
        self.valid_before
    }

    pub fn valid_after(&self) -> u64 {
        self.valid_after
    }

    /// OpenSSH's `sshkey_cert_check_host` with `SSH_ALLOWED_CA_SIGALGS`: a host certificate,
    /// valid at `now`, with principals of which one (a pattern) matches `hostname` when a
    /// name is given, no critical options, and a CA signature of an allowed algorithm.
    pub fn check_host(&self, hostname: Option<&str>, now: u64) -> Result<(), &'static str> {
        if self.cert_type != CertType::Host {
            return Err("not a host certificate");
        }
        if now < self.valid_after {
            return Err("not yet valid");
        }
        if now >= self.valid_before {
            return Err("expired");
        }
        if self.principals.is_empty() {
            return Err("lacks a principal list");
        }
        if let Some(name) = hostname
            && !self.principals.iter().any(|p| glob(name, p))
        {
            return Err("name is not a listed principal");
        }
        if self.has_critical_options {
            return Err("contains unsupported critical options");
        }
        const ALLOWED: &[&str] = &[
            "ssh-ed25519",
            "ecdsa-sha2-nistp256",
            "ecdsa-sha2-nistp384",
            "ecdsa-sha2-nistp521",
            "sk-ssh-ed25519@openssh.com",
            "sk-ecdsa-sha2-nistp256@openssh.com",
            "rsa-sha2-512",
            "rsa-sha2-256",
        ];
        if !ALLOWED.contains(&self.signature_algorithm.as_str()) {
            return Err("signed with a disallowed algorithm");
        }
        Ok(())
    }
}

/// A key blob of a sign, remove or list message: a plain key or a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicCredential {
    Key(KeyData),
    Cert(Box<OpensshCert>),
}

impl PublicCredential {
    /// Decodes a key blob, whichever it is.
    pub fn decode(blob: &[u8]) -> Result<Self, CredentialError> {
        let name = Reader::new(blob).text(MAX_TEXT, "key type")?;
        if is_cert_type(name) {
            Ok(Self::Cert(Box::new(OpensshCert::decode(blob)?)))
        } else {
            Ok(Self::Key(decode_key(blob)?))
        }
    }

    /// The public key itself (the certified key of a certificate).
    pub fn key_data(&self) -> &KeyData {
        match self {
            Self::Key(key) => key,
            Self::Cert(cert) => cert.public_key(),
        }
    }

    /// The blob as it goes on the wire.
    pub fn to_blob(&self) -> Vec<u8> {
        match self {
            Self::Key(key) => key_blob(key),
            Self::Cert(cert) => cert.blob().to_vec(),
        }
    }

    /// The wire type name (`ssh-ed25519`, `ssh-ed25519-cert-v01@openssh.com`, …).
    pub fn type_name(&self) -> String {
        match self {
            Self::Key(key) => key.algorithm().to_string(),
            Self::Cert(cert) => Reader::new(cert.blob())
                .text(MAX_TEXT, "type")
                .unwrap_or("certificate")
                .to_owned(),
        }
    }
}

impl From<KeyData> for PublicCredential {
    fn from(key: KeyData) -> Self {
        Self::Key(key)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ssh_key::certificate::{Builder, CertType as KeyCertType};
    use ssh_key::rand_core::OsRng;
    use ssh_key::{Algorithm, PrivateKey};

    pub(crate) fn ed25519() -> PrivateKey {
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// A certificate made with ssh-key, whose bytes are then rewritten to end at
    /// `valid_before` (re-signed by `ca`), so tests can make "forever" certificates.
    pub(crate) fn cert_blob(
        ca: &PrivateKey,
        subject: &KeyData,
        cert_type: KeyCertType,
        principals: &[&str],
        valid_before: u64,
    ) -> Vec<u8> {
        let mut b = Builder::new_with_random_nonce(&mut OsRng, subject.clone(), 0, 1).unwrap();
        b.cert_type(cert_type).unwrap();
        b.key_id("test").unwrap();
        for p in principals {
            b.valid_principal(*p).unwrap();
        }
        if principals.is_empty() {
            b.all_principals_valid().unwrap();
        }
        let cert = b.sign(ca).unwrap();
        let bytes = super::super::wire::to_vec(&cert);
        resign(&bytes, ca, valid_before)
    }

    /// Rewrites `valid_before` (the u64 before critical options) and signs again.
    fn resign(blob: &[u8], ca: &PrivateKey, valid_before: u64) -> Vec<u8> {
        let mut r = Reader::new(blob);
        let ty = r.text(MAX_TEXT, "t").unwrap();
        let (_, fields) = certified_type(ty).unwrap();
        r.string(MAX_TEXT, "n").unwrap();
        for _ in 0..fields {
            r.string(MAX_KEY_FIELD, "k").unwrap();
        }
        r.u64("s").unwrap();
        r.u32("t").unwrap();
        r.string(MAX_TEXT, "i").unwrap();
        r.string(MAX_BLOB, "p").unwrap();
        r.u64("a").unwrap();
        let at = blob.len() - r.remaining().len();
        r.u64("b").unwrap();
        for _ in 0..4 {
            r.string(MAX_BLOB, "x").unwrap();
        }
        let signed_end = blob.len() - r.remaining().len();
        let mut out = blob[..signed_end].to_vec();
        out[at..at + 8].copy_from_slice(&valid_before.to_be_bytes());
        let sig: Signature = signature::Signer::try_sign(ca, &out).unwrap();
        let sig = super::super::wire::to_vec(&sig);
        put_string(&mut out, &sig);
        out
    }

    #[test]
    fn decodes_a_certificate_valid_forever() {
        let (ca, user) = (ed25519(), ed25519());
        let blob = cert_blob(
            &ca,
            user.public_key().key_data(),
            KeyCertType::User,
            &["me"],
            u64::MAX,
        );
        let cert = OpensshCert::decode(&blob).unwrap();
        assert_eq!(cert.valid_before(), u64::MAX);
        assert_eq!(cert.public_key(), user.public_key().key_data());
        assert_eq!(cert.signature_key(), ca.public_key().key_data());
        assert_eq!(cert.principals(), ["me"]);
        assert_eq!(cert.key_id(), "test");
        assert_eq!(cert.blob(), blob.as_slice());
        let cred = PublicCredential::decode(&blob).unwrap();
        assert_eq!(cred.to_blob(), blob);
        assert_eq!(cred.type_name(), "ssh-ed25519-cert-v01@openssh.com");
        assert_eq!(cred.key_data(), user.public_key().key_data());
    }

    #[test]
    fn every_key_type_is_certified() {
        let ca = ed25519();
        let ecdsa = |curve| Algorithm::Ecdsa { curve };
        for alg in [
            ecdsa(ssh_key::EcdsaCurve::NistP256),
            ecdsa(ssh_key::EcdsaCurve::NistP384),
            ecdsa(ssh_key::EcdsaCurve::NistP521),
        ] {
            let k = PrivateKey::random(&mut OsRng, alg).unwrap();
            let blob = cert_blob(&ca, k.public_key().key_data(), KeyCertType::Host, &["h"], 9);
            let cert = OpensshCert::decode(&blob).unwrap();
            assert_eq!(cert.public_key(), k.public_key().key_data());
            assert_eq!(cert.cert_type(), CertType::Host);
        }
    }

    #[test]
    fn a_bad_ca_signature_or_damaged_blob_is_refused() {
        let (ca, user) = (ed25519(), ed25519());
        let mut blob = cert_blob(&ca, user.public_key().key_data(), KeyCertType::User, &[], 5);
        for cut in 0..blob.len() {
            assert!(OpensshCert::decode(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = blob.clone();
        trailing.push(0);
        assert!(OpensshCert::decode(&trailing).is_err());
        // Flip a bit of the key id: the signature no longer covers it.
        let at = blob.len() / 2;
        blob[at] ^= 1;
        assert!(OpensshCert::decode(&blob).is_err());
        // A plain key is not a certificate.
        let plain = key_blob(user.public_key().key_data());
        assert!(OpensshCert::decode(&plain).is_err());
        assert_eq!(
            PublicCredential::decode(&plain).unwrap(),
            PublicCredential::Key(user.public_key().key_data().clone())
        );
    }

    #[test]
    fn host_checks_follow_openssh() {
        let (ca, host) = (ed25519(), ed25519());
        let key = host.public_key().key_data();
        let t = now();
        let host_cert = |principals: &[&str], before| {
            OpensshCert::decode(&cert_blob(&ca, key, KeyCertType::Host, principals, before))
                .unwrap()
        };
        let c = host_cert(&["h.test", "*.example"], u64::MAX);
        assert_eq!(c.check_host(Some("h.test"), t), Ok(()));
        assert_eq!(c.check_host(Some("a.example"), t), Ok(()));
        assert_eq!(c.check_host(None, t), Ok(()));
        assert!(c.check_host(Some("other"), t).is_err());
        assert!(host_cert(&["h.test"], t - 1).check_host(None, t).is_err());
        assert!(host_cert(&[], u64::MAX).check_host(None, t).is_err());
        let user = OpensshCert::decode(&cert_blob(
            &ca,
            key,
            KeyCertType::User,
            &["h.test"],
            u64::MAX,
        ))
        .unwrap();
        assert!(user.check_host(Some("h.test"), t).is_err());
    }
}
