//! `session-bind@openssh.com` (OpenSSH `PROTOCOL.agent` §1): after key exchange, `ssh` tells
//! the agent which server it is talking to (the host key), the session id, the server's
//! signature over that id, and whether the connection is being forwarded onwards.
//!
//! The signature is verified with the host key before anything is kept, so a binding names a
//! server that really holds that key for this session. The bindings live with the connection
//! (ssh opens one agent connection per session). A connection whose bind failed to verify is
//! poisoned: every later signature on it is refused, since its client lied or is confused about
//! where it is.

use ssh_agent_lib::proto::extension::SessionBind;
use ssh_key::HashAlg;
use ssh_key::public::KeyData;

/// Most bindings kept per connection, as OpenSSH's `AGENT_MAX_SESSION_IDS`.
pub const MAX_BINDINGS: usize = 16;

/// One verified binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub host_key: KeyData,
    pub session_id: Vec<u8>,
    pub forwarding: bool,
}

impl Binding {
    pub fn host_fingerprint(&self) -> String {
        self.host_key.fingerprint(HashAlg::Sha256).to_string()
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
        bind.verify_signature().map_err(|_| {
            BindError::BadSignature(bind.host_key.fingerprint(HashAlg::Sha256).to_string())
        })?;
        for b in &self.list {
            if b.session_id == bind.session_id {
                if b.host_key == bind.host_key {
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
        self.list.push(Binding {
            host_key: bind.host_key,
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
    use signature::Signer as _;
    use ssh_key::{Algorithm, PrivateKey, Signature};

    pub(crate) fn signed_bind(host: &PrivateKey, sid: &[u8], forwarding: bool) -> SessionBind {
        let signature: Signature = host.try_sign(sid).unwrap();
        SessionBind {
            host_key: host.public_key().key_data().clone(),
            session_id: sid.to_vec(),
            signature,
            is_forwarding: forwarding,
        }
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
    fn malformed_bind_is_refused() {
        let mut b = Bindings::default();
        assert!(matches!(
            b.bind(Err("short".into())),
            Err(BindError::Malformed(_))
        ));
    }
}
