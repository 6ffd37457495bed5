//! Session certificates (docs/design.md §2): after one approval the agent mints an ephemeral
//! Ed25519 key and an OpenSSH user certificate for it, signed by the user CA in the keystore,
//! and offers the pair as an identity that signs without prompts until it expires. At expiry
//! both are dropped (the key zeroizes) and vanish from `ssh-add -l`.
//!
//! # `session-cert@nod`
//!
//! `nod ssh session` asks over the agent socket with an `SSH_AGENTC_EXTENSION` (27) message
//! named `session-cert@nod` whose contents are:
//!
//! ```text
//! string  principals, comma-separated (e.g. "alice,deploy")
//! uint32  validity in seconds (1 .. 7 days)
//! ```
//!
//! The agent answers `SSH_AGENT_SUCCESS` once the identity is offered, or `SSH_AGENT_FAILURE`
//! (no CA, bad request, not approved). The certificate is valid from one minute before minting
//! (clock skew) to the end of the validity; its key id names the principals and the time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ssh_key::certificate::{Builder, CertType, Certificate};
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, HashAlg, PrivateKey};
use tokio::time::Instant;

use super::credential::{OpensshCert, PublicCredential};
use super::message::Identity;
use super::policy::{CallerScope, GrantScope, format_duration, rate_key};
use super::{PROMPT_TIMEOUT, SshAgentService, SshError};
use crate::approvers::{Prompt, SessionCertPrompt};
use crate::audit::{AuditEvent, Service, clip};
use crate::decision::{Ask, decision_word};
use crate::lock;
use crate::log::event;

/// The extension's name.
pub const EXTENSION: &str = "session-cert@nod";
/// Longest validity a session certificate may ask for.
pub const MAX_VALIDITY: Duration = Duration::from_secs(7 * 86_400);
/// Most principals in one certificate.
const MAX_PRINCIPALS: usize = 32;
/// How far `valid_after` is set back, for servers whose clock is a little behind.
const BACKDATE: Duration = Duration::from_secs(60);

/// What `nod ssh session` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCertRequest {
    pub principals: Vec<String>,
    pub validity: Duration,
}

impl SessionCertRequest {
    /// Checks the principals and the validity.
    pub fn new(principals: Vec<String>, validity: Duration) -> Result<Self, String> {
        if principals.is_empty() || principals.len() > MAX_PRINCIPALS {
            return Err(format!("give 1 to {MAX_PRINCIPALS} principals"));
        }
        for p in &principals {
            let ok = !p.is_empty()
                && p.len() <= 256
                && p.chars()
                    .all(|c| !c.is_control() && c != ',' && !c.is_whitespace());
            if !ok {
                return Err(format!("bad principal {p:?}"));
            }
        }
        if validity.is_zero() || validity > MAX_VALIDITY {
            return Err(format!(
                "validity must be between 1s and {}",
                format_duration(MAX_VALIDITY)
            ));
        }
        Ok(Self {
            principals,
            validity,
        })
    }

    /// The extension's contents (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let joined = self.principals.join(",");
        let mut out = Vec::with_capacity(joined.len() + 8);
        out.extend_from_slice(
            &u32::try_from(joined.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(joined.as_bytes());
        let secs = u32::try_from(self.validity.as_secs()).unwrap_or(u32::MAX);
        out.extend_from_slice(&secs.to_be_bytes());
        out
    }

    /// Parses and checks the extension's contents; nothing may trail.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let bad = || "malformed session-cert request".to_owned();
        let len_bytes = bytes.get(..4).ok_or_else(bad)?;
        let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        let len = usize::try_from(len).map_err(|_| bad())?;
        let text = bytes.get(4..4 + len).ok_or_else(bad)?;
        let rest = &bytes[4 + len..];
        if rest.len() != 4 {
            return Err(bad());
        }
        let secs = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let text = std::str::from_utf8(text).map_err(|_| bad())?;
        Self::new(
            text.split(',').map(str::to_owned).collect(),
            Duration::from_secs(u64::from(secs)),
        )
    }
}

/// Mints an ephemeral Ed25519 key and its user certificate, valid from `now - 1 min` to
/// `now + validity`.
pub fn mint(
    ca: &PrivateKey,
    request: &SessionCertRequest,
    now: SystemTime,
) -> Result<(PrivateKey, Certificate), String> {
    let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(|e| e.to_string())?;
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let after = secs(now).saturating_sub(BACKDATE.as_secs());
    let before = secs(now).saturating_add(request.validity.as_secs());
    let mut builder = Builder::new_with_random_nonce(
        &mut OsRng,
        key.public_key().key_data().clone(),
        after,
        before,
    )
    .map_err(|e| e.to_string())?;
    builder
        .cert_type(CertType::User)
        .and_then(|b| {
            b.key_id(format!(
                "nod session {} @{}",
                request.principals.join(","),
                secs(now)
            ))
        })
        .map_err(|e| e.to_string())?;
    for p in &request.principals {
        builder
            .valid_principal(p.clone())
            .map_err(|e| e.to_string())?;
    }
    // The extensions `ssh-keygen -s` grants by default.
    for ext in [
        "permit-X11-forwarding",
        "permit-agent-forwarding",
        "permit-port-forwarding",
        "permit-pty",
        "permit-user-rc",
    ] {
        builder.extension(ext, "").map_err(|e| e.to_string())?;
    }
    let cert = builder.sign(ca).map_err(|e| e.to_string())?;
    Ok((key, cert))
}

/// One live session identity.
#[derive(Debug)]
struct SessionIdentity {
    /// Zeroized on drop (ssh-key).
    key: Arc<PrivateKey>,
    cert: OpensshCert,
    expires: Instant,
    comment: String,
}

/// The live session identities. Shared with the timer that wipes each at its expiry.
#[derive(Debug, Default)]
pub struct SessionCerts {
    live: Arc<Mutex<Vec<SessionIdentity>>>,
}

fn purge(live: &mut Vec<SessionIdentity>, now: Instant) {
    live.retain(|s| {
        let keep = s.expires > now;
        if !keep {
            event!(
                "ssh agent: session certificate {:?} expired; key and certificate wiped",
                s.comment
            );
        }
        keep
    });
}

impl SessionCerts {
    /// The live certificates, for `ssh-add -l`.
    pub fn identities(&self) -> Vec<Identity> {
        let mut live = lock(&self.live);
        purge(&mut live, Instant::now());
        live.iter()
            .map(|s| Identity {
                credential: PublicCredential::Cert(Box::new(s.cert.clone())),
                comment: s.comment.clone(),
            })
            .collect()
    }

    /// The key of a live certificate.
    pub fn find(&self, cert: &OpensshCert) -> Option<Arc<PrivateKey>> {
        let mut live = lock(&self.live);
        purge(&mut live, Instant::now());
        live.iter()
            .find(|s| s.cert == *cert)
            .map(|s| Arc::clone(&s.key))
    }

    /// The key of a live certificate, looked up by the certified public key (a client may
    /// name the plain key of a certificate identity).
    pub fn find_by_key(&self, public: &ssh_key::public::KeyData) -> Option<Arc<PrivateKey>> {
        let mut live = lock(&self.live);
        purge(&mut live, Instant::now());
        live.iter()
            .find(|s| s.key.public_key().key_data() == public)
            .map(|s| Arc::clone(&s.key))
    }

    /// Drops every session identity (`ssh-add -D`).
    pub fn clear(&self) {
        lock(&self.live).clear();
    }

    fn insert(&self, key: PrivateKey, cert: Certificate, validity: Duration, comment: String) {
        // The agent's own view of the certificate (the bytes it lists), checked once.
        let cert = match cert
            .to_bytes()
            .map_err(|e| e.to_string())
            .and_then(|b| OpensshCert::decode(&b).map_err(|e| e.to_string()))
        {
            Ok(cert) => cert,
            Err(e) => {
                event!("ssh agent: the minted session certificate does not decode: {e}");
                return;
            }
        };
        let expires = Instant::now() + validity;
        lock(&self.live).push(SessionIdentity {
            key: Arc::new(key),
            cert,
            expires,
            comment,
        });
        // Wipe at expiry even if nobody asks the agent anything then.
        let live = Arc::clone(&self.live);
        tokio::spawn(async move {
            tokio::time::sleep_until(expires).await;
            purge(&mut lock(&live), Instant::now());
        });
    }
}

impl SshAgentService {
    /// Handles `session-cert@nod`: one approval, then mint and offer.
    pub(super) async fn session_cert(
        &self,
        details: &[u8],
        pid: Option<i32>,
        exe: Option<String>,
    ) -> Result<(), SshError> {
        let request = SessionCertRequest::decode(details).map_err(SshError::Unsupported)?;
        self.keyring().unlocked()?;
        let keystore = self.stored.keystore().ok_or_else(|| {
            SshError::Unsupported("session certificates without a keystore".into())
        })?;
        let ca = match keystore.user_ca() {
            Ok(Some(ca)) => ca,
            Ok(None) => {
                return Err(SshError::Unsupported(
                    "session certificates before `nod keys ca init`".into(),
                ));
            }
            Err(e) => {
                event!("ssh agent: cannot read the user CA: {e}");
                return Err(SshError::BadKey("user CA"));
            }
        };
        let ca_fingerprint = ca.fingerprint(HashAlg::Sha256).to_string();
        let summary = format!(
            "session certificate for {} ({})",
            request.principals.join(","),
            format_duration(request.validity)
        );
        let prompt = Prompt::SshSessionCert(SessionCertPrompt {
            principals: request.principals.clone(),
            validity_secs: request.validity.as_secs(),
            ca_fingerprint: ca_fingerprint.clone(),
            caller_pid: pid,
            caller_exe: exe.clone(),
        });
        let scope = GrantScope {
            key: ca.public_key().to_bytes().unwrap_or_default(),
            caller: CallerScope::of(pid, exe.clone()),
            destination: None,
        };
        let ask = Ask {
            prompt,
            event: AuditEvent {
                service: Service::Ssh,
                action: Some("session-cert".into()),
                key_comment: Some(clip(&summary)),
                key_fingerprint: Some(ca_fingerprint),
                caller_pid: pid,
                caller_exe: exe.as_deref().map(clip),
                ..Default::default()
            },
            deadline: Instant::now() + PROMPT_TIMEOUT,
            required: self.presence,
            rate_key: Some(rate_key(&scope)),
            share_key: None,
        };
        let decision = self.core.decide(ask, std::future::pending()).await;
        let program = exe.as_deref().unwrap_or("unknown program");
        let caller = match pid {
            Some(pid) => format!("{program:?} (pid {pid})"),
            None => format!("{program:?}"),
        };
        event!(
            "ssh agent: {summary} for {caller}: {}",
            decision_word(decision.outcome())
        );
        if !decision.approved() {
            return Err(SshError::NotApproved(decision.outcome()));
        }
        let (key, cert) = mint(&ca, &request, SystemTime::now()).map_err(|e| {
            event!("ssh agent: cannot mint the session certificate: {e}");
            SshError::Sign
        })?;
        let comment = format!("nod session {}", request.principals.join(","));
        event!(
            "ssh agent: offering {summary}, key {}",
            key.fingerprint(HashAlg::Sha256)
        );
        self.stored
            .sessions
            .insert(key, cert, request.validity, comment);
        Ok(())
    }
}

/// Why `nod ssh session` got no certificate.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the nod agent at {}: {source}; is `nod agent` running (or pass --socket)?",
        path.display()
    )]
    Connect {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the agent refused: not approved, no user CA yet (run `nod keys ca init`), or the socket \
         is not nod's agent; its log says which"
    )]
    Refused,
    #[error("the agent answered message type {0}, not SUCCESS")]
    Unexpected(u8),
}

/// Sends `session-cert@nod` to the agent at `socket` and waits (up to `timeout`, the person
/// may be deciding) for the answer.
pub fn request(
    socket: &std::path::Path,
    request: &SessionCertRequest,
    timeout: Duration,
) -> Result<(), ClientError> {
    use std::io::{Read as _, Write as _};
    let mut stream =
        std::os::unix::net::UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            path: socket.to_owned(),
            source,
        })?;
    stream.set_read_timeout(Some(timeout))?;
    let mut body = vec![27u8];
    body.extend_from_slice(&u32::try_from(EXTENSION.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(EXTENSION.as_bytes());
    body.extend_from_slice(&request.encode());
    let mut frame = u32::try_from(body.len())
        .unwrap_or(0)
        .to_be_bytes()
        .to_vec();
    frame.extend_from_slice(&body);
    stream.write_all(&frame)?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len == 0 || len > 1024 {
        return Err(ClientError::Unexpected(0));
    }
    let mut reply = vec![0u8; usize::try_from(len).unwrap_or(0)];
    stream.read_exact(&mut reply)?;
    match reply[0] {
        6 => Ok(()),
        5 | 28 => Err(ClientError::Refused),
        other => Err(ClientError::Unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_rejects_bad_input() {
        let r = SessionCertRequest::new(
            vec!["alice".into(), "deploy".into()],
            Duration::from_secs(8 * 3600),
        )
        .unwrap();
        assert_eq!(SessionCertRequest::decode(&r.encode()).unwrap(), r);
        let mut trailing = r.encode();
        trailing.push(0);
        assert!(SessionCertRequest::decode(&trailing).is_err());
        assert!(SessionCertRequest::decode(&r.encode()[..5]).is_err());
        assert!(SessionCertRequest::new(vec![], Duration::from_secs(1)).is_err());
        assert!(SessionCertRequest::new(vec!["a b".into()], Duration::from_secs(1)).is_err());
        assert!(SessionCertRequest::new(vec!["a".into()], Duration::ZERO).is_err());
        assert!(
            SessionCertRequest::new(vec!["a".into()], MAX_VALIDITY + Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn minted_certificate_is_a_user_cert_for_the_principals_signed_by_the_ca() {
        let ca = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap();
        let request =
            SessionCertRequest::new(vec!["alice".into()], Duration::from_secs(3600)).unwrap();
        let now = SystemTime::now();
        let (key, cert) = mint(&ca, &request, now).unwrap();
        assert_eq!(cert.cert_type(), CertType::User);
        assert_eq!(cert.valid_principals(), ["alice".to_owned()]);
        assert_eq!(cert.public_key(), key.public_key().key_data());
        assert_eq!(cert.signature_key(), ca.public_key().key_data());
        let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(cert.valid_before(), secs + 3600);
        assert_eq!(cert.valid_after(), secs - 60);
        let fp = ca.fingerprint(HashAlg::Sha256);
        cert.validate_at(secs, [&fp]).unwrap();
    }

    #[tokio::test]
    async fn session_identities_never_print_the_key_and_expire() {
        let ca = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap();
        let request =
            SessionCertRequest::new(vec!["alice".into()], Duration::from_secs(1)).unwrap();
        let (key, cert) = mint(&ca, &request, SystemTime::now()).unwrap();
        let seed = key.key_data().ed25519().unwrap().private.to_bytes();
        let certs = SessionCerts::default();
        certs.insert(key, cert.clone(), Duration::from_millis(200), "s".into());
        let cert = OpensshCert::decode(&cert.to_bytes().unwrap()).unwrap();
        let shown = format!("{certs:?}");
        assert!(!shown.contains(&hex::encode(seed)[..12]));
        assert!(!shown.contains(&format!("{:?}", &seed[..4])[1..12]));
        assert!(certs.find(&cert).is_some());
        assert_eq!(certs.identities().len(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(lock(&certs.live).is_empty(), "wiped by the timer");
        assert!(certs.find(&cert).is_none());
    }

    #[test]
    fn prompt_text_escapes_principals() {
        let p = SessionCertPrompt {
            principals: vec!["root\x1b[2J".into()],
            validity_secs: 28_800,
            ca_fingerprint: "SHA256:ca".into(),
            caller_pid: Some(5),
            caller_exe: Some("/usr/bin/nod".into()),
        };
        let text = p.text();
        assert!(!text.contains('\x1b'));
        assert!(text.contains("valid 8h") && text.contains("SHA256:ca"));
    }
}
