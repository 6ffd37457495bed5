//! `session-bind@openssh.com` (OpenSSH `PROTOCOL.agent` §1): after key exchange, `ssh` tells
//! the agent which server it is talking to (the host key), the session id, the server's
//! signature over that id, and whether the connection is being forwarded onwards.
//!
//! The signature is verified with the host key before anything is kept, so a binding names a
//! server that really holds that key for this session. A host that presents a certificate
//! (`HostCertificate` in sshd_config) sends it as its host key: as OpenSSH's agent does, the
//! certificate's CA signature is verified (when it is decoded, [`super::credential`]) and the
//! session id's signature is verified with the certified key. Whether the certificate names
//! the host, and is current, is checked where a destination constraint relies on it
//! ([`super::destination`]). The bindings live with the connection (ssh opens one agent
//! connection per session). A connection whose bind failed to verify is poisoned: every later
//! signature on it is refused, since its client lied or is confused about where it is.

use signature::Verifier as _;
use ssh_key::public::KeyData;
use ssh_key::{HashAlg, Signature};

use super::credential::{OpensshCert, PublicCredential};
use super::wire::Reader;

/// Longest host key (or host certificate) blob accepted.
const MAX_HOST_KEY: usize = 16 * 1024;
/// Longest signature blob accepted.
const MAX_SIGNATURE: usize = 4 * 1024;

/// A decoded `session-bind@openssh.com` request, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionBind {
    pub host_key: PublicCredential,
    pub session_id: Vec<u8>,
    /// The server's signature blob over the session id.
    pub signature: Vec<u8>,
    pub is_forwarding: bool,
}

impl SessionBind {
    /// Decodes the extension's contents: `string hostkey, string session id, string
    /// signature, bool is_forwarding`. A host certificate whose CA signature does not verify
    /// is refused here.
    pub fn decode(details: &[u8]) -> Result<Self, String> {
        let mut r = Reader::new(details);
        let field = |e: super::wire::WireError| e.to_string();
        let host_key = PublicCredential::decode(r.string(MAX_HOST_KEY, "host key").map_err(field)?)
            .map_err(|e| format!("host key: {e}"))?;
        let session_id = r.string(64, "session id").map_err(field)?.to_vec();
        let signature = r
            .string(MAX_SIGNATURE, "signature")
            .map_err(field)?
            .to_vec();
        let is_forwarding = r.u8("is_forwarding").map_err(field)? != 0;
        r.finish().map_err(field)?;
        Ok(Self {
            host_key,
            session_id,
            signature,
            is_forwarding,
        })
    }

    /// Whether `signature` is the host key's signature over the session id. An `ssh-rsa`
    /// (SHA-1) signature, which a server with only `HostKeyAlgorithms ssh-rsa` makes, is
    /// verified too, as OpenSSH does; ssh-key's `Signature` cannot hold one.
    pub fn verify_signature(&self) -> bool {
        let key = self.host_key.key_data();
        let mut r = Reader::new(&self.signature);
        if r.text(64, "algorithm") == Ok("ssh-rsa") {
            return r
                .string(MAX_SIGNATURE, "signature")
                .ok()
                .filter(|_| r.finish().is_ok())
                .is_some_and(|sig| verify_rsa_sha1(key, &self.session_id, sig));
        }
        let mut blob = self.signature.as_slice();
        let Ok(sig) = <Signature as ssh_agent_lib::ssh_encoding::Decode>::decode(&mut blob) else {
            return false;
        };
        blob.is_empty() && key.verify(&self.session_id, &sig).is_ok()
    }
}

/// PKCS#1 v1.5 with SHA-1 under an RSA host key.
fn verify_rsa_sha1(key: &KeyData, data: &[u8], sig: &[u8]) -> bool {
    use sha1::Digest as _;
    let KeyData::Rsa(k) = key else {
        return false;
    };
    let int = |m: &ssh_key::Mpint| rsa::BigUint::try_from(m.clone()).ok();
    let (Some(n), Some(e)) = (int(&k.n), int(&k.e)) else {
        return false;
    };
    let Ok(public) = rsa::RsaPublicKey::new(n, e) else {
        return false;
    };
    const SHA1_DIGEST_INFO: [u8; 15] = [
        0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
    ];
    let scheme = rsa::Pkcs1v15Sign {
        hash_len: Some(20),
        prefix: SHA1_DIGEST_INFO.into(),
    };
    public
        .verify(scheme, &sha1::Sha1::digest(data), sig)
        .is_ok()
}

/// Most bindings kept per connection, as OpenSSH's `AGENT_MAX_SESSION_IDS`.
pub const MAX_BINDINGS: usize = 16;

/// One verified binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The host's key: the certified key when the host presented a certificate.
    pub host_key: KeyData,
    /// The host's certificate, when it presented one.
    pub host_cert: Option<Box<OpensshCert>>,
    pub session_id: Vec<u8>,
    pub forwarding: bool,
}

impl Binding {
    pub fn host_fingerprint(&self) -> String {
        self.host_key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The host key blob as the server sent it (the certificate, if any): what a host-bound
    /// login request names.
    pub fn host_blob(&self) -> Vec<u8> {
        match &self.host_cert {
            Some(cert) => cert.blob().to_vec(),
            None => super::credential::key_blob(&self.host_key),
        }
    }

    /// The host key as it was bound.
    pub fn host_credential(&self) -> PublicCredential {
        match &self.host_cert {
            Some(cert) => PublicCredential::Cert(cert.clone()),
            None => PublicCredential::Key(self.host_key.clone()),
        }
    }
}

/// Why a bind was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("session-bind message is malformed: {0}")]
    Malformed(String),
    #[error("session-bind signature does not verify with the host key {0}")]
    BadSignature(String),
    #[error("connection is already bound for authentication; refusing another bind")]
    AlreadyBoundForAuth,
    #[error("session id already bound to another host key")]
    SessionIdReused,
    #[error("too many session binds on one connection (limit {MAX_BINDINGS})")]
    TooMany,
    #[error("an earlier session-bind on this connection failed")]
    Poisoned,
}

/// The bindings of one connection.
#[derive(Debug, Default)]
pub struct Bindings {
    list: Vec<Binding>,
    poisoned: bool,
}

impl Bindings {
    /// Verifies and records a bind. Any failure poisons the connection.
    pub fn bind(&mut self, message: Result<SessionBind, String>) -> Result<(), BindError> {
        let result = self.try_bind(message);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn try_bind(&mut self, message: Result<SessionBind, String>) -> Result<(), BindError> {
        if self.poisoned {
            return Err(BindError::Poisoned);
        }
        let bind = message.map_err(BindError::Malformed)?;
        if bind.session_id.is_empty() || bind.session_id.len() > 64 {
            return Err(BindError::Malformed("session id length".into()));
        }
        if !bind.verify_signature() {
            return Err(BindError::BadSignature(
                bind.host_key
                    .key_data()
                    .fingerprint(HashAlg::Sha256)
                    .to_string(),
            ));
        }
        for b in &self.list {
            if b.session_id == bind.session_id {
                if b.host_credential() == bind.host_key {
                    // ssh may repeat a bind; nothing new is learned.
                    return Ok(());
                }
                return Err(BindError::SessionIdReused);
            }
            // A connection bound for user authentication is not forwarded further; a later
            // bind on it means the client is confused (OpenSSH refuses this too).
            if !b.forwarding {
                return Err(BindError::AlreadyBoundForAuth);
            }
        }
        if self.list.len() >= MAX_BINDINGS {
            return Err(BindError::TooMany);
        }
        let (host_key, host_cert) = match bind.host_key {
            PublicCredential::Key(key) => (key, None),
            PublicCredential::Cert(cert) => (cert.public_key().clone(), Some(cert)),
        };
        self.list.push(Binding {
            host_key,
            host_cert,
            session_id: bind.session_id,
            forwarding: bind.is_forwarding,
        });
        Ok(())
    }

    pub fn poisoned(&self) -> bool {
        self.poisoned
    }

    /// Every binding, oldest (the first hop) first.
    pub fn all(&self) -> &[Binding] {
        &self.list
    }

    /// The most recent binding: the server the signature is for.
    pub fn last(&self) -> Option<&Binding> {
        self.list.last()
    }

    /// Whether the connection reaches us through agent forwarding.
    pub fn forwarded(&self) -> bool {
        self.list.iter().any(|b| b.forwarding)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ssh::credential::tests::cert_blob;
    use signature::Signer as _;
    use ssh_key::certificate::CertType;
    use ssh_key::{Algorithm, PrivateKey, Signature};

    pub(crate) fn signed_bind(host: &PrivateKey, sid: &[u8], forwarding: bool) -> SessionBind {
        let signature: Signature = host.try_sign(sid).unwrap();
        SessionBind {
            host_key: PublicCredential::Key(host.public_key().key_data().clone()),
            session_id: sid.to_vec(),
            signature: crate::ssh::wire::to_vec(&signature),
            is_forwarding: forwarding,
        }
    }

    /// A bind by a host that presents `cert` (a blob) for the key `host`.
    pub(crate) fn signed_cert_bind(
        host: &PrivateKey,
        cert: &[u8],
        sid: &[u8],
        forwarding: bool,
    ) -> SessionBind {
        SessionBind {
            host_key: PublicCredential::decode(cert).unwrap(),
            ..signed_bind(host, sid, forwarding)
        }
    }

    /// The wire form of a bind, as ssh sends it.
    pub(crate) fn bind_bytes(bind: &SessionBind) -> Vec<u8> {
        use crate::ssh::wire::put_string;
        let mut out = Vec::new();
        put_string(&mut out, &bind.host_key.to_blob());
        put_string(&mut out, &bind.session_id);
        put_string(&mut out, &bind.signature);
        out.push(u8::from(bind.is_forwarding));
        out
    }

    fn host() -> PrivateKey {
        PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519).unwrap()
    }

    #[test]
    fn keeps_a_verified_bind() {
        let h = host();
        let mut b = Bindings::default();
        b.bind(Ok(signed_bind(&h, &[1; 32], false))).unwrap();
        assert_eq!(b.last().unwrap().host_key, *h.public_key().key_data());
        assert!(!b.forwarded() && !b.poisoned());
        // A repeat of the same bind is fine.
        b.bind(Ok(signed_bind(&h, &[1; 32], false))).unwrap();
    }

    #[test]
    fn bad_signature_poisons_the_connection() {
        let h = host();
        let mut bind = signed_bind(&h, &[1; 32], false);
        bind.session_id = vec![2; 32];
        let mut b = Bindings::default();
        assert!(matches!(b.bind(Ok(bind)), Err(BindError::BadSignature(_))));
        assert!(b.poisoned() && b.last().is_none());
        assert_eq!(
            b.bind(Ok(signed_bind(&h, &[3; 32], false))),
            Err(BindError::Poisoned)
        );
    }

    #[test]
    fn forwarding_chain_then_auth_but_not_after_auth() {
        let mut b = Bindings::default();
        b.bind(Ok(signed_bind(&host(), &[1; 32], true))).unwrap();
        b.bind(Ok(signed_bind(&host(), &[2; 32], false))).unwrap();
        assert!(b.forwarded());
        assert_eq!(
            b.bind(Ok(signed_bind(&host(), &[3; 32], false))),
            Err(BindError::AlreadyBoundForAuth)
        );
    }

    #[test]
    fn reused_session_id_with_another_key_is_refused() {
        let mut b = Bindings::default();
        b.bind(Ok(signed_bind(&host(), &[1; 32], true))).unwrap();
        assert_eq!(
            b.bind(Ok(signed_bind(&host(), &[1; 32], true))),
            Err(BindError::SessionIdReused)
        );
    }

    #[test]
    fn too_many_binds_are_refused() {
        let mut b = Bindings::default();
        for i in 0..MAX_BINDINGS {
            b.bind(Ok(signed_bind(&host(), &[i as u8 + 1; 32], true)))
                .unwrap();
        }
        assert_eq!(
            b.bind(Ok(signed_bind(&host(), &[99; 32], true))),
            Err(BindError::TooMany)
        );
    }

    #[test]
    fn decodes_what_ssh_sends_and_nothing_else() {
        let h = host();
        let bind = signed_bind(&h, &[1; 32], true);
        let bytes = bind_bytes(&bind);
        assert_eq!(SessionBind::decode(&bytes), Ok(bind));
        for cut in 0..bytes.len() {
            assert!(SessionBind::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(SessionBind::decode(&trailing).is_err());
    }

    #[test]
    fn a_host_certificate_binds_with_the_certified_key() {
        let (ca, h) = (host(), host());
        // What `ssh-keygen -s ca -h` makes without -V: valid forever.
        let cert = cert_blob(
            &ca,
            h.public_key().key_data(),
            CertType::Host,
            &["h"],
            u64::MAX,
        );
        let bind = signed_cert_bind(&h, &cert, &[1; 32], false);
        assert_eq!(SessionBind::decode(&bind_bytes(&bind)).as_ref(), Ok(&bind));
        let mut b = Bindings::default();
        b.bind(Ok(bind)).unwrap();
        let last = b.last().unwrap();
        assert_eq!(last.host_key, *h.public_key().key_data());
        assert_eq!(last.host_blob(), cert);
        assert!(last.host_cert.is_some());

        // The session id signed by another key than the certified one.
        let other = host();
        let forged = SessionBind {
            host_key: PublicCredential::decode(&cert).unwrap(),
            ..signed_bind(&other, &[2; 32], false)
        };
        let mut b = Bindings::default();
        assert!(matches!(
            b.bind(Ok(forged)),
            Err(BindError::BadSignature(_))
        ));
        assert!(b.poisoned());

        // A certificate whose CA signature does not verify never decodes.
        let mut tampered = cert.clone();
        let at = tampered.len() - 10;
        tampered[at] ^= 1;
        let mut bytes = bind_bytes(&signed_bind(&h, &[3; 32], false));
        let key_len = 4 + crate::ssh::credential::key_blob(h.public_key().key_data()).len();
        let mut with_bad_cert = Vec::new();
        crate::ssh::wire::put_string(&mut with_bad_cert, &tampered);
        with_bad_cert.extend_from_slice(&bytes.split_off(key_len));
        assert!(SessionBind::decode(&with_bad_cert).is_err());
    }

    #[test]
    fn an_ssh_rsa_sha1_bind_verifies() {
        let rsa =
            ssh_key::private::RsaKeypair::random(&mut ssh_key::rand_core::OsRng, 2048).unwrap();
        let key = PrivateKey::new(ssh_key::private::KeypairData::Rsa(rsa), "h").unwrap();
        let sig = crate::ssh::sign::sign(&key, &[4; 32], 0).unwrap();
        let mut bind = SessionBind {
            host_key: PublicCredential::Key(key.public_key().key_data().clone()),
            session_id: vec![4; 32],
            signature: sig.to_blob(),
            is_forwarding: false,
        };
        assert!(bind.verify_signature());
        bind.session_id = vec![5; 32];
        assert!(!bind.verify_signature());
    }

    #[test]
    fn malformed_bind_is_refused() {
        let mut b = Bindings::default();
        assert!(matches!(
            b.bind(Err("short".into())),
            Err(BindError::Malformed(_))
        ));
    }
}
