//! The SSH agent service (docs/design.md §2), first part: an in-memory agent on
//! `$XDG_RUNTIME_DIR/nod/ssh-agent.sock`, speaking the agent protocol (OpenSSH
//! `PROTOCOL.agent`, [`message`]).
//!
//! Supported: list, sign (Ed25519, ECDSA P-256/P-384/P-521, RSA ≥ 2048 with `rsa-sha2-256/512`
//! and, when asked, `ssh-rsa`), add (keys and OpenSSH certificates, valid forever included,
//! with the lifetime, confirm and destination constraints, [`destination`]), remove, remove
//! all, lock/unlock, the `query` and `session-bind@openssh.com` extensions (host
//! certificates included). Keys added with confirm (`ssh-add -c`) ask the agent's approver
//! before every signature; other keys sign without asking, as with OpenSSH's agent. A
//! certificate is an identity of its own next to its plain key, as in OpenSSH. Everything else
//! (other extensions and constraints, smartcards, security keys, DSA) gets FAILURE and a log
//! line saying why.
//!
//! # Threat model
//!
//! The socket is 0600 in a 0700 directory, and every connection's peer must be the agent's
//! user or root ([`peer`]), as OpenSSH's agent checks. Every client is still treated as hostile
//! input: frames are capped at 256 KiB before anything is buffered ([`codec`]), a bad message
//! gets FAILURE and never ends service to other clients, and a peer learns only FAILURE, never
//! why (the log gets the detail). Keys live only in
//! memory, as `ssh_key::PrivateKey` (zeroized on drop); they are gone when the agent stops.
//! The caller shown in a confirm prompt comes from the kernel (`SO_PEERCRED`), not from the
//! message; its exe is read from `/proc` when the connection is accepted, so a caller that
//! exits and whose pid is reused before that could be misnamed.

pub mod bind;
pub mod cert;
pub mod client_argv;
pub mod codec;
pub mod credential;
pub mod destination;
pub mod known_hosts;
pub mod lock;
pub mod message;
pub mod peer;
pub mod policy;
pub mod purpose;
pub mod sign;
pub mod stored;
pub mod wire;

use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use serde::Serialize;
use ssh_agent_lib::proto::{EcdsaPrivateKey, PrivateKeyData};
use ssh_key::private::{EcdsaKeypair, KeypairData, RsaKeypair};
use ssh_key::public::{EcdsaPublicKey, KeyData};
use ssh_key::{HashAlg, PrivateKey};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::time::Instant;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};
use zeroize::{Zeroize, Zeroizing};

use crate::approvers::{Outcome, Prompt, Required, SshDestination, SshSignPrompt};
use crate::audit::{AuditEvent, Service, clip};
use crate::caller::chain::{self, ProcessLink};
use crate::decision::{Ask, Core, decision_word};
use crate::lock;
use crate::log::event;
use crate::socket::{Capped, Conn};
use bind::{BindError, Bindings};
use codec::{CappedCodec, CodecError, Frame};
use credential::{OpensshCert, PublicCredential};
use lock::LockHash;
use message::{
    Extension, Identity, KeyConstraint, PrivateCredential, Request, Response, SignRequest,
};
use sign::Signed;

/// How long a confirm prompt may stay open before it counts as failed.
pub const PROMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request got FAILURE. Peers only ever see FAILURE; this is for the log.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("the agent is locked")]
    Locked,
    #[error("the agent is not locked")]
    NotLocked,
    #[error("wrong unlock passphrase")]
    WrongPassphrase,
    #[error("unlocking is refused for a while after too many wrong passphrases")]
    LockedOut,
    #[error("no such key in the agent")]
    UnknownKey,
    #[error("{0} not supported yet")]
    Unsupported(String),
    #[error("RSA key of {0} bits refused: at least 2048 bits are required")]
    RsaTooSmall(usize),
    #[error("ssh-rsa (SHA-1) signature refused by agent.toml's [ssh] refuse_rsa_sha1")]
    RsaSha1,
    #[error("invalid key: bad {0}")]
    BadKey(&'static str),
    #[error("signing failed")]
    Sign,
    #[error("signature not approved ({})", decision_word(*.0))]
    NotApproved(Outcome),
    #[error("the audit log cannot be written, so the signature is refused")]
    Audit,
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("a session-bind on this connection failed to verify, so it may not sign")]
    BindFailed,
    #[error("login request for another session than the one this connection is bound to")]
    SessionMismatch,
    #[error("bad destination constraint: {0}")]
    BadConstraint(String),
    #[error("destination-constrained key refused: {0}")]
    NotPermitted(&'static str),
}

impl SshError {
    /// What the peer gets: always a bare FAILURE (ssh prints "agent refused operation"); a
    /// failed `session-bind` gets EXTENSION_FAILURE where it is answered, as from OpenSSH.
    pub fn response(&self) -> Response {
        match self {
            Self::Locked
            | Self::NotLocked
            | Self::WrongPassphrase
            | Self::LockedOut
            | Self::UnknownKey
            | Self::Unsupported(_)
            | Self::RsaTooSmall(_)
            | Self::RsaSha1
            | Self::BadKey(_)
            | Self::Sign
            | Self::NotApproved(_)
            | Self::Audit
            | Self::Bind(_)
            | Self::BindFailed
            | Self::SessionMismatch
            | Self::BadConstraint(_)
            | Self::NotPermitted(_) => Response::Failure,
        }
    }

    /// The audit reason of a signature refused before any prompt; `None` for what is not a
    /// refusal of a held key (a key we do not hold, a decision the core already recorded).
    pub fn refusal_reason(&self) -> Option<&'static str> {
        match self {
            Self::Locked => Some("locked"),
            Self::RsaSha1 => Some("rsa_sha1"),
            Self::BindFailed | Self::Bind(_) => Some("bad_session_bind"),
            Self::SessionMismatch => Some("session_mismatch"),
            Self::NotPermitted(_) => Some("destination_not_permitted"),
            Self::NotLocked
            | Self::WrongPassphrase
            | Self::LockedOut
            | Self::UnknownKey
            | Self::Unsupported(_)
            | Self::RsaTooSmall(_)
            | Self::BadKey(_)
            | Self::Sign
            | Self::NotApproved(_)
            | Self::Audit
            | Self::BadConstraint(_) => None,
        }
    }
}

/// The process at the other end of a connection, from `SO_PEERCRED` and `/proc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Caller {
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    /// `/proc/<pid>/exe`, when readable.
    pub exe: Option<String>,
    /// The caller and its ancestors of the same user (`ssh ← git ← zsh`).
    pub chain: Vec<ProcessLink>,
    /// The caller's command line: only a source of candidate host names, never shown.
    #[serde(skip)]
    pub argv: Vec<String>,
}

impl Caller {
    fn of(stream: &UnixStream) -> Self {
        match getsockopt(stream, PeerCredentials) {
            Ok(cred) => {
                let pid = cred.pid();
                let exe = fs::read_link(format!("/proc/{pid}/exe"))
                    .ok()
                    .map(|p| p.to_string_lossy().into_owned());
                Self {
                    pid: Some(pid),
                    uid: Some(cred.uid()),
                    exe,
                    chain: chain::process_chain(pid, cred.uid()),
                    argv: chain::cmdline(pid),
                }
            }
            Err(e) => {
                event!("ssh agent: cannot read the peer's credentials: {e}");
                Self::default()
            }
        }
    }

    fn describe(&self) -> String {
        let exe = self.exe.as_deref().unwrap_or("unknown program");
        match self.pid {
            Some(pid) => format!("{exe:?} (pid {pid})"),
            None => format!("{exe:?}"),
        }
    }
}

/// Deadlines of one connection to the agent.
#[derive(Debug, Clone, Copy)]
pub struct SshLimits {
    /// A connection with no message in flight is closed after this long (`[ssh] idle_timeout`).
    pub idle: Duration,
    /// A message, once begun, must arrive in full within this, and a reply be taken.
    pub frame: Duration,
}

impl Default for SshLimits {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(3600),
            frame: Duration::from_secs(10),
        }
    }
}

/// One key the agent holds.
#[derive(Debug)]
struct HeldKey {
    key: Arc<PrivateKey>,
    /// Set when added as a certificate (`ssh-add` of a key with its `-cert.pub`): a separate
    /// identity from the plain key, with its own constraints, as in OpenSSH.
    cert: Option<Box<OpensshCert>>,
    comment: String,
    expires: Option<Instant>,
    confirm: bool,
    /// `ssh-add -h`: where the key may be used; empty when anywhere.
    destinations: Arc<[destination::Constraint]>,
}

impl HeldKey {
    fn public(&self) -> &KeyData {
        self.key.public_key().key_data()
    }

    /// What `ssh-add -l` lists for it: the key, or the certificate.
    fn credential(&self) -> PublicCredential {
        match &self.cert {
            Some(cert) => PublicCredential::Cert(cert.clone()),
            None => PublicCredential::Key(self.public().clone()),
        }
    }

    /// Whether `credential` names this identity: the same plain key, or the same certificate.
    fn is(&self, credential: &PublicCredential) -> bool {
        match (credential, &self.cert) {
            (PublicCredential::Key(public), None) => public == self.public(),
            (PublicCredential::Cert(theirs), Some(mine)) => theirs == mine,
            _ => false,
        }
    }
}

#[derive(Debug, Default)]
struct HeldKeys {
    keys: Vec<HeldKey>,
    lock: Option<Arc<LockHash>>,
}

impl HeldKeys {
    fn purge_expired(&mut self, now: Instant) {
        self.keys.retain(|k| {
            let live = k.expires.is_none_or(|t| t > now);
            if !live {
                event!("ssh agent: key {:?} expired and was removed", k.comment);
            }
            live
        });
    }

    fn unlocked(&mut self) -> Result<&mut Self, SshError> {
        match self.lock {
            Some(_) => Err(SshError::Locked),
            None => Ok(self),
        }
    }
}

/// The SSH agent: keys in memory, the approver for confirm keys, the shared audit log.
#[derive(Debug)]
pub struct SshAgentService {
    keyring: Mutex<HeldKeys>,
    /// Asks the person, records every decision and refusal.
    core: Arc<Core>,
    /// Unlock attempts, one at a time for the whole agent.
    unlock_throttle: tokio::sync::Mutex<lock::Throttle>,
    /// The least presence a signature that needs the person asks for.
    presence: Required,
    /// How long connections may sit idle, and a message take to arrive.
    limits: SshLimits,
    /// Lifetime of keys added without one (`nod ssh-agent -t`).
    default_lifetime: Option<Duration>,
    /// Where destination names come from.
    known_hosts: Vec<PathBuf>,
    /// Held keys turned into signers once.
    signers: sign::Signers,
    /// Persistent keys, session certificates, remembered approvals.
    stored: stored::Stored,
}

impl SshAgentService {
    pub fn new(core: Arc<Core>) -> Self {
        Self {
            keyring: Mutex::new(HeldKeys::default()),
            core,
            unlock_throttle: tokio::sync::Mutex::new(lock::Throttle::default()),
            limits: SshLimits::default(),
            presence: Required::Any,
            default_lifetime: None,
            known_hosts: default_known_hosts(),
            signers: sign::Signers::default(),
            stored: stored::Stored::default(),
        }
    }

    /// Closes connections idle for `idle` and messages not complete within `frame`.
    pub fn with_limits(mut self, limits: SshLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Signatures that need the person need this presence (`[presence] ssh`).
    pub fn with_presence(mut self, presence: Required) -> Self {
        self.presence = presence;
        self
    }

    /// Gives keys added without a lifetime this one, as `ssh-agent -t`.
    pub fn with_default_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.default_lifetime = lifetime;
        self
    }

    /// `agent.toml`'s `[ssh]` settings.
    pub fn with_settings(mut self, settings: &crate::config::SshConfig) -> Self {
        self.signers.refuse_rsa_sha1(settings.refuse_rsa_sha1);
        self
    }

    /// SIGUSR1, as OpenSSH 10's agent: every key and certificate added through the socket is
    /// dropped, and so are the session certificates and every remembered approval, so the
    /// next use of any key needs the person again. The keystore's persistent keys stay
    /// offered (they are read from the sealed keystore, under their own policy), and a lock
    /// stays as it is.
    pub fn drop_added_keys(&self) {
        let dropped = {
            let mut ring = lock(&self.keyring);
            let n = ring.keys.len();
            ring.keys.clear();
            n
        };
        self.stored.sessions.clear();
        self.stored.approvals.revoke_all();
        self.signers.purge();
        event!(
            "ssh agent: SIGUSR1: removed all {dropped} added keys and certificates, the session \
             certificates and remembered approvals; persistent keys stay"
        );
    }

    /// Accepts connections forever, one task each.
    pub async fn serve(self: Arc<Self>, listener: Capped) {
        loop {
            let (stream, conn) = listener.accept().await;
            if let Err(e) = peer::check(&stream) {
                event!("ssh agent: connection closed: {e}");
                continue;
            }
            let session = SshSession {
                caller: Caller::of(&stream),
                service: Arc::clone(&self),
                bindings: Bindings::default(),
            };
            tokio::spawn(session.run(stream, conn));
        }
    }

    fn keyring(&self) -> MutexGuard<'_, HeldKeys> {
        let mut ring = lock(&self.keyring);
        ring.purge_expired(Instant::now());
        self.signers.purge();
        ring
    }

    fn identities(&self, bindings: &Bindings) -> Vec<Identity> {
        let ring = self.keyring();
        if ring.lock.is_some() {
            return Vec::new();
        }
        let mut identities = self.stored.identities();
        // A key both in the keystore and added with ssh-add is listed once (the keystore's
        // policy is the one that applies).
        let added: Vec<Identity> = ring
            .keys
            .iter()
            .filter(|k| !identities.iter().any(|i| k.is(&i.credential)))
            // As OpenSSH: a destination-constrained key is listed only where it may be used.
            .filter(|k| destination::permitted(&k.destinations, bindings, None))
            .map(|k| Identity {
                credential: k.credential(),
                comment: k.comment.clone(),
            })
            .collect();
        identities.extend(added);
        identities
    }

    /// Adds a key or certificate. It is taken by reference and copied once into the agent's
    /// keyring, so the decoded message can be dropped where it lies (its key zeroizes in
    /// place) instead of being moved, which would leave copies behind.
    fn add(
        &self,
        credential: &PrivateCredential,
        constraints: &[KeyConstraint],
    ) -> Result<(), SshError> {
        let (keypair, cert, comment) = match credential.clone() {
            PrivateCredential::Key { privkey, comment } => (privkey, None, comment),
            PrivateCredential::Cert {
                certificate,
                privkey,
                comment,
                ..
            } => (
                cert_keypair(&certificate, privkey)?,
                Some(certificate),
                comment,
            ),
        };
        let mut expires = self.default_lifetime.map(|d| Instant::now() + d);
        let mut confirm = false;
        let mut destinations: Option<Vec<destination::Constraint>> = None;
        for constraint in constraints {
            match constraint {
                KeyConstraint::Lifetime(secs) => {
                    expires = Some(Instant::now() + Duration::from_secs(u64::from(*secs)));
                }
                KeyConstraint::Confirm => confirm = true,
                KeyConstraint::Destinations(details) => {
                    if destinations.is_some() {
                        return Err(SshError::BadConstraint(format!(
                            "{} given twice",
                            destination::NAME
                        )));
                    }
                    destinations =
                        Some(destination::decode(details).map_err(SshError::BadConstraint)?);
                }
                KeyConstraint::SkProvider(provider) => {
                    return Err(SshError::Unsupported(format!(
                        "security-key provider {provider:?}: nod loads no FIDO provider \
                         libraries, so sk-* keys cannot be used"
                    )));
                }
                KeyConstraint::AssociatedCerts => {
                    return Err(SshError::Unsupported(
                        "associated certificates (smartcard keys)".into(),
                    ));
                }
            }
        }
        sign::check_key(&keypair)?;
        // A certificate's validity is not enforced here: as with OpenSSH's agent, ssh-add
        // sends a lifetime that ends with the certificate unless asked not to (`ssh-add -N`),
        // and servers check validity themselves.
        let key = PrivateKey::new(keypair, comment.clone()).map_err(|_| SshError::BadKey("key"))?;
        let key = Arc::new(key);
        // The private half must be the one the certificate (or key) names.
        self.signers.prepare(&key)?;
        let held = HeldKey {
            key,
            cert,
            comment,
            expires,
            confirm,
            destinations: destinations.unwrap_or_default().into(),
        };
        let mut ring = self.keyring();
        let ring = ring.unlocked()?;
        // Adding a key again replaces it, with the new constraints, as in OpenSSH.
        ring.keys.retain(|k| !k.is(&held.credential()));
        event!(
            "ssh agent: added {} {:?} {}{}{}{}",
            if held.cert.is_some() {
                "certificate"
            } else {
                "key"
            },
            held.comment,
            held.key.fingerprint(HashAlg::Sha256),
            if confirm { ", confirm" } else { "" },
            if held.destinations.is_empty() {
                String::new()
            } else {
                format!(", {} destination constraints", held.destinations.len())
            },
            match constraints.iter().find_map(|c| match c {
                KeyConstraint::Lifetime(s) => Some(*s),
                _ => None,
            }) {
                Some(s) => format!(", lifetime {s}s"),
                None => String::new(),
            }
        );
        ring.keys.push(held);
        Ok(())
    }

    fn remove(&self, credential: &PublicCredential) -> Result<(), SshError> {
        let mut ring = self.keyring();
        let ring = ring.unlocked()?;
        let before = ring.keys.len();
        ring.keys.retain(|k| !k.is(credential));
        if ring.keys.len() == before {
            return Err(SshError::UnknownKey);
        }
        self.signers.purge();
        Ok(())
    }

    fn remove_all(&self) -> Result<(), SshError> {
        let mut ring = self.keyring();
        ring.unlocked()?.keys.clear();
        self.stored.sessions.clear();
        self.signers.purge();
        Ok(())
    }

    async fn lock_agent(&self, passphrase: Zeroizing<String>) -> Result<(), SshError> {
        self.keyring().unlocked()?;
        // argon2id takes tens of milliseconds: off the runtime thread.
        let hash = tokio::task::spawn_blocking(move || LockHash::new(passphrase.as_bytes()))
            .await
            .ok()
            .flatten()
            .ok_or(SshError::Sign)?;
        self.keyring().unlocked()?.lock = Some(Arc::new(hash));
        event!("ssh agent: locked");
        Ok(())
    }

    /// Unlocks with `passphrase`, one attempt at a time for the whole agent, each failure
    /// making the next attempt wait longer, and a lockout after too many (see [`lock`]).
    async fn unlock_agent(&self, passphrase: Zeroizing<String>) -> Result<(), SshError> {
        let mut throttle = self.unlock_throttle.lock().await;
        let record = |reason: &str| {
            let event = AuditEvent {
                service: Service::Ssh,
                action: Some("unlock".into()),
                ..Default::default()
            };
            let _ = self.core.refuse(event, reason);
        };
        match throttle.admit(Instant::now()) {
            lock::Admission::LockedOut(until) => {
                let left = until.saturating_duration_since(Instant::now()).as_secs();
                event!("ssh agent: unlock refused: too many wrong passphrases; {left} s left");
                return Err(SshError::LockedOut);
            }
            lock::Admission::TryAt(at) => tokio::time::sleep_until(at).await,
        }
        let hash = match &self.keyring().lock {
            None => return Err(SshError::NotLocked),
            Some(hash) => Arc::clone(hash),
        };
        let matches = tokio::task::spawn_blocking(move || hash.matches(passphrase.as_bytes()))
            .await
            .unwrap_or(false);
        if !matches {
            if throttle.failed(Instant::now()) {
                event!(
                    "ssh agent: {} wrong unlock passphrases in a row: unlocking refused for {} s",
                    lock::LOCKOUT_AFTER,
                    lock::LOCKOUT.as_secs()
                );
                record("unlock_lockout");
            } else {
                record("wrong_passphrase");
            }
            return Err(SshError::WrongPassphrase);
        }
        throttle.succeeded();
        self.keyring().lock = None;
        event!("ssh agent: unlocked");
        Ok(())
    }

    /// The key behind `credential`, if the agent is unlocked and holds that identity.
    fn find(
        &self,
        credential: &PublicCredential,
    ) -> Result<(Arc<PrivateKey>, String, bool), SshError> {
        let mut ring = self.keyring();
        let ring = ring.unlocked()?;
        ring.keys
            .iter()
            .find(|k| k.is(credential))
            .map(|k| (Arc::clone(&k.key), k.comment.clone(), k.confirm))
            .ok_or(SshError::UnknownKey)
    }

    /// Signs `request` for `caller`, asking the person first if the key's policy says so.
    /// Refusals are recorded in the audit log with their reason; `gone` resolves when the
    /// client has hung up, which withdraws an open prompt.
    async fn sign(
        &self,
        request: &SignRequest,
        caller: &Caller,
        bindings: &Bindings,
        gone: impl std::future::Future<Output = ()>,
    ) -> Result<Signed, SshError> {
        let result = self.sign_checked(request, caller, bindings, gone).await;
        if let Err(e) = &result
            && let Some(reason) = e.refusal_reason()
        {
            let public = match &request.credential {
                PublicCredential::Key(public) => public,
                PublicCredential::Cert(cert) => cert.public_key(),
            };
            let fingerprint = ssh_key::PublicKey::from(public.clone())
                .fingerprint(HashAlg::Sha256)
                .to_string();
            let mut record = sign_event(caller, None, fingerprint);
            record.destination = bindings.last().map(|b| b.host_fingerprint());
            let _ = self.core.refuse(record, reason);
        }
        result
    }

    async fn sign_checked(
        &self,
        request: &SignRequest,
        caller: &Caller,
        bindings: &Bindings,
        gone: impl std::future::Future<Output = ()>,
    ) -> Result<Signed, SshError> {
        let public = match &request.credential {
            PublicCredential::Key(public) => public,
            PublicCredential::Cert(cert) => cert.public_key(),
        };
        if bindings.poisoned() {
            return Err(SshError::BindFailed);
        }
        let purpose = purpose::decode(&request.data);
        check_login_binding(&purpose, bindings)?;
        self.check_destination(&request.credential, &purpose, bindings)?;
        // A live session certificate signs without asking: it was approved when minted.
        if let Some(key) = self.session_key(&request.credential)? {
            return self.signers.sign(&key, &request.data, request.flags).await;
        }
        let (key, comment, policy, key_presence) = self.find_with_policy(&request.credential)?;
        // `never` asks nobody, so skip building a grant scope (it reads `/proc`): this is the
        // hot path of an agent used like ssh-agent.
        if matches!(policy, policy::Policy::Never) {
            return self.signers.sign(&key, &request.data, request.flags).await;
        }
        let destination = bindings
            .last()
            .and_then(|b| ssh_key::PublicKey::from(b.host_key.clone()).to_bytes().ok());
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let mut record = sign_event(caller, Some(&comment), fingerprint.clone());
        record.destination = bindings.last().map(|b| b.host_fingerprint());
        match self.authorization(public, policy, caller.pid, caller.exe.clone(), destination) {
            stored::Need::Nothing => {}
            stored::Need::Remembered => {
                // No prompt, but the signature is on record like an approved one (never with
                // the data signed), and not made if it cannot be.
                self.core
                    .allow_by_policy(record, "remembered grant")
                    .map_err(|_| SshError::Audit)?;
            }
            stored::Need::Ask(auth) => {
                let prompt = Prompt::SshSign(SshSignPrompt {
                    key_comment: comment.clone(),
                    fingerprint: fingerprint.clone(),
                    caller_pid: caller.pid,
                    caller_exe: caller.exe.clone(),
                    process_chain: caller.chain.clone(),
                    destination: self.destination(caller, bindings).await,
                    forwarded: bindings.forwarded(),
                    purpose: purpose.to_string(),
                });
                let ask = Ask {
                    prompt,
                    event: record,
                    deadline: Instant::now() + PROMPT_TIMEOUT,
                    // The stronger of `[presence] ssh` and the key's own minimum.
                    required: self.presence.max(key_presence),
                    rate_key: Some(policy::rate_key(&auth.scope)),
                    share_key: Some(policy::request_id(&auth.scope, &request.data)),
                };
                let decision = self.core.decide(ask, gone).await;
                event!(
                    "ssh agent: signature with {comment:?} {fingerprint} for {}: {}",
                    caller.describe(),
                    decision_word(decision.outcome())
                );
                if !decision.approved() {
                    return Err(SshError::NotApproved(decision.outcome()));
                }
                if let policy::Policy::Remember(ttl) = auth.policy {
                    self.stored
                        .approvals
                        .grant(auth.scope.clone(), ttl, Instant::now());
                }
                // The key may have been removed, or the agent locked, while the prompt was
                // open; or its minimum raised above what this approver proves (a change to the
                // keystore, which also drops the grant just made).
                let (_, _, _, now_needs) = self.find_with_policy(&request.credential)?;
                let required = self.presence.max(now_needs);
                if !decision.presence().is_some_and(|p| p.satisfies(required)) {
                    event!(
                        "ssh agent: {comment:?} now needs {} presence, more than the approval \
                         proved; not signed",
                        required.word()
                    );
                    let mut record = sign_event(caller, Some(&comment), fingerprint);
                    record.destination = bindings.last().map(|b| b.host_fingerprint());
                    self.core
                        .record(record, Outcome::Unavailable, Some("presence_unavailable"));
                    return Err(SshError::NotApproved(Outcome::Unavailable));
                }
            }
        }
        self.signers.sign(&key, &request.data, request.flags).await
    }
}

/// The audit line of a signature: the key and the caller, never the data signed.
fn sign_event(caller: &Caller, comment: Option<&str>, fingerprint: String) -> AuditEvent {
    AuditEvent {
        service: Service::Ssh,
        action: Some("sign".into()),
        key_comment: comment.map(clip),
        key_fingerprint: Some(fingerprint),
        caller_pid: caller.pid,
        caller_exe: caller.exe.as_deref().map(clip),
        ..Default::default()
    }
}

impl SshAgentService {
    /// The destination constraints of a key added with `ssh-add -h`, enforced as OpenSSH's
    /// agent does for a sign request: only on a bound connection, only a login request for the
    /// session last bound, along a permitted chain of hops and for a permitted user.
    fn check_destination(
        &self,
        credential: &PublicCredential,
        purpose: &purpose::Purpose,
        bindings: &Bindings,
    ) -> Result<(), SshError> {
        let constraints = {
            let ring = self.keyring();
            match ring.keys.iter().find(|k| k.is(credential)) {
                Some(k) if !k.destinations.is_empty() => Arc::clone(&k.destinations),
                _ => return Ok(()),
            }
        };
        let Some(last) = bindings.last() else {
            return Err(SshError::NotPermitted("connection has no session-bind"));
        };
        let purpose::Purpose::SshLogin {
            user,
            session_id,
            hostbound_key,
        } = purpose
        else {
            return Err(SshError::NotPermitted(
                "data to sign is not a login request",
            ));
        };
        if !destination::permitted(&constraints, bindings, Some(user)) {
            return Err(SshError::NotPermitted("not permitted for this destination"));
        }
        if *session_id != last.session_id {
            return Err(SshError::SessionMismatch);
        }
        if bindings.all().len() > 1 && hostbound_key.is_none() {
            return Err(SshError::NotPermitted(
                "forwarded login request names no host key",
            ));
        }
        match hostbound_key {
            Some(blob) => check_hostbound(blob, last),
            None => Ok(()),
        }
    }

    /// The bound server, named by `known_hosts`. Hashed entries are matched against the
    /// caller's command line and, if that names none of them (an `ssh_config` alias), against
    /// what the caller's `ssh -G` resolves it to.
    async fn destination(&self, caller: &Caller, bindings: &Bindings) -> Option<SshDestination> {
        let last = bindings.last()?;
        let files: Vec<&std::path::Path> = self.known_hosts.iter().map(PathBuf::as_path).collect();
        let candidates = client_argv::ssh_destination_candidates(&caller.argv);
        let mut known = known_hosts::lookup(&last.host_key, &files, &candidates);
        if known.has_unmatched() {
            known.confirm(
                &client_argv::ssh_config_candidates(caller.exe.as_deref(), &caller.argv).await,
            );
        }
        Some(SshDestination {
            names: known.names,
            host_key_fingerprint: last.host_fingerprint(),
        })
    }
}

/// `~/.ssh/known_hosts` of the agent's user, then the system file.
fn default_known_hosts() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        files.push(PathBuf::from(home).join(".ssh/known_hosts"));
    }
    files.push(PathBuf::from("/etc/ssh/ssh_known_hosts"));
    files
}

/// A login signature on a bound connection must be for the session it is bound to (and, for
/// a host-bound request, the same server), as OpenSSH's agent checks: otherwise a signature
/// obtained "for" one server could be replayed to another. When the last bind is a forwarding
/// one, the login is for a hop further on (whose client may not bind), so there is nothing to
/// compare with.
fn check_login_binding(purpose: &purpose::Purpose, bindings: &Bindings) -> Result<(), SshError> {
    let (
        purpose::Purpose::SshLogin {
            session_id,
            hostbound_key,
            ..
        },
        Some(last),
    ) = (purpose, bindings.last())
    else {
        return Ok(());
    };
    if last.forwarding {
        return Ok(());
    }
    if *session_id != last.session_id {
        return Err(SshError::SessionMismatch);
    }
    match hostbound_key {
        Some(blob) => check_hostbound(blob, last),
        None => Ok(()),
    }
}

/// A host-bound login request (`publickey-hostbound-v00@openssh.com`) must name the host key
/// of the last verified bind, or it could be replayed to another server.
fn check_hostbound(blob: &[u8], last: &bind::Binding) -> Result<(), SshError> {
    if blob == last.host_blob() {
        Ok(())
    } else {
        Err(SshError::SessionMismatch)
    }
}

/// The extensions `query` reports.
pub const SUPPORTED_EXTENSIONS: &[&str] = &["query", "session-bind@openssh.com", cert::EXTENSION];

/// The reply to `query` (draft-miller-ssh-agent §3.8.1): SSH_AGENT_EXTENSION_RESPONSE,
/// "query", then each supported name as a string, as OpenSSH's agent sends it.
fn query_response() -> Response {
    let mut details = Vec::new();
    wire::put_string(&mut details, b"query");
    for name in SUPPORTED_EXTENSIONS {
        wire::put_string(&mut details, name.as_bytes());
    }
    Response::ExtensionResponse(details)
}

/// One client connection.
#[derive(Debug)]
struct SshSession {
    service: Arc<SshAgentService>,
    caller: Caller,
    bindings: Bindings,
}

impl SshSession {
    /// Serves one client until it hangs up or breaks the framing. A message that cannot be
    /// handled gets FAILURE and the connection stays open.
    async fn run(mut self, mut stream: UnixStream, mut conn: Conn) {
        let limits = self.service.limits;
        let mut codec = CappedCodec;
        // Grows with what arrives, never with what a length prefix announces, and is let go
        // between messages, so idle connections hold no buffer.
        let mut buf = BytesMut::new();
        let mut frame_started: Option<Instant> = None;
        loop {
            let frame = match codec.decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    // More bytes are needed: a connection may sit idle for long, but a message
                    // once begun must arrive in full within seconds.
                    let deadline = if buf.is_empty() {
                        conn.idle();
                        Instant::now() + limits.idle
                    } else {
                        conn.busy();
                        *frame_started.get_or_insert_with(Instant::now) + limits.frame
                    };
                    let readable = tokio::select! {
                        r = tokio::time::timeout_at(deadline, stream.readable()) => r,
                        () = conn.evicted() => return,
                    };
                    match readable.map(|r| r.and_then(|()| read_some(&stream, &mut buf))) {
                        Ok(Ok(Some(0))) | Ok(Err(_)) => return,
                        Ok(Ok(None)) => {}
                        Ok(Ok(Some(_))) => {
                            if !conn.held.set(buf.len()) {
                                event!(
                                    "ssh agent: closing a connection from {}: too many bytes of \
                                     unfinished messages on this socket",
                                    self.caller.describe()
                                );
                                return;
                            }
                        }
                        Err(_) if buf.is_empty() => {
                            event!(
                                "ssh agent: closing a connection from {} idle for {} s",
                                self.caller.describe(),
                                limits.idle.as_secs()
                            );
                            return;
                        }
                        Err(_) => {
                            event!(
                                "ssh agent: closing a connection from {}: a message stalled \
                                 for {} s",
                                self.caller.describe(),
                                limits.frame.as_secs()
                            );
                            return;
                        }
                    }
                    continue;
                }
                Err(CodecError::TooLong(len)) => {
                    event!(
                        "ssh agent: closing connection from {}: frame of {len} bytes is over \
                         the 256 KiB limit",
                        self.caller.describe()
                    );
                    return;
                }
                Err(e) => {
                    event!("ssh agent: connection from {}: {e}", self.caller.describe());
                    return;
                }
            };
            frame_started = None;
            conn.busy();
            if buf.is_empty() {
                buf = BytesMut::new();
            }
            conn.held.set(buf.len());
            let response = match frame {
                // Keys are added from the message where it lies, which is then dropped (its key
                // zeroizing in place) and the stack that decoded it wiped: no copy of the key
                // is left behind in memory the agent no longer uses.
                Frame::Request(request) if matches!(*request, Request::Add { .. }) => {
                    let added = match &*request {
                        Request::Add {
                            credential,
                            constraints,
                        } => self.service.add(credential, constraints),
                        _ => unreachable!(),
                    };
                    drop(request);
                    scrub_stack();
                    match added {
                        Ok(()) => Response::Success,
                        Err(e) => refuse(e),
                    }
                }
                Frame::Request(request) => match *request {
                    // Signing may ask the person: the prompt watches this connection, so a
                    // client that hangs up (an interrupted `ssh`) withdraws it.
                    Request::Sign(request) => {
                        let gone = crate::socket::hung_up(&stream);
                        match self
                            .service
                            .sign(&request, &self.caller, &self.bindings, gone)
                            .await
                        {
                            Ok(signature) => Response::Signature(signature),
                            Err(e) => refuse(e),
                        }
                    }
                    request => self.handle(request).await,
                },
                Frame::Invalid(why) => {
                    if why.is_unknown_type() {
                        // As OpenSSH's agent: protocol 1 and other unknown messages get
                        // FAILURE.
                        event!("ssh agent: {why} from {}", self.caller.describe());
                    } else {
                        event!(
                            "ssh agent: invalid message from {}: {why}",
                            self.caller.describe()
                        );
                    }
                    Response::Failure
                }
            };
            let mut out = BytesMut::new();
            if let Err(e) = codec.encode(response, &mut out) {
                event!("ssh agent: reply to {} failed: {e}", self.caller.describe());
                return;
            }
            let send = tokio::time::timeout(limits.frame, stream.write_all(&out));
            if !matches!(send.await, Ok(Ok(()))) {
                event!(
                    "ssh agent: reply to {} failed or stalled",
                    self.caller.describe()
                );
                return;
            }
        }
    }

    /// Answers one request. Refusals are logged with their reason; the peer gets FAILURE.
    async fn handle(&mut self, request: Request) -> Response {
        let done = |r: Result<(), SshError>| match r {
            Ok(()) => Response::Success,
            Err(e) => refuse(e),
        };
        match request {
            Request::RequestIdentities => {
                Response::Identities(self.service.identities(&self.bindings))
            }
            // `run` serves sign requests itself, with the connection to watch; this path has
            // none.
            Request::Sign(request) => match self
                .service
                .sign(
                    &request,
                    &self.caller,
                    &self.bindings,
                    std::future::pending(),
                )
                .await
            {
                Ok(signature) => Response::Signature(signature),
                Err(e) => refuse(e),
            },
            Request::Add {
                credential,
                constraints,
            } => done(self.service.add(&credential, &constraints)),
            Request::Remove(credential) => done(self.service.remove(&credential)),
            Request::RemoveAll => done(self.service.remove_all()),
            Request::AddSmartcard { provider } => refuse(SshError::Unsupported(format!(
                "PKCS#11 provider {provider:?}: nod loads no provider libraries, so smartcard \
                 keys cannot be added"
            ))),
            Request::RemoveSmartcard { provider } => refuse(SshError::Unsupported(format!(
                "removing PKCS#11 provider {provider:?}: nod loads no provider libraries"
            ))),
            Request::Lock(passphrase) => done(self.service.lock_agent(passphrase).await),
            Request::Unlock(passphrase) => done(self.service.unlock_agent(passphrase).await),
            Request::Extension(extension) => self.extension(extension).await,
        }
    }

    async fn extension(&mut self, extension: Extension) -> Response {
        // As OpenSSH: a locked agent still records session binds (new channels need them),
        // and refuses every other extension.
        let locked = self.service.keyring().lock.is_some();
        match extension.name.as_str() {
            "session-bind@openssh.com" => {
                let message = bind::SessionBind::decode(&extension.details);
                if let Err(e) = self.bindings.bind(message) {
                    event!("ssh agent: {}", SshError::Bind(e));
                    return Response::ExtensionFailure;
                }
                if let Some(b) = self.bindings.last() {
                    event!(
                        "ssh agent: connection from {} bound to host {} {}{}",
                        self.caller.describe(),
                        if b.host_cert.is_some() {
                            "certificate for"
                        } else {
                            "key"
                        },
                        b.host_fingerprint(),
                        if b.forwarding { " (forwarding)" } else { "" }
                    );
                }
                Response::Success
            }
            _ if locked => refuse(SshError::Locked),
            "query" => query_response(),
            cert::EXTENSION => {
                let (pid, exe) = (self.caller.pid, self.caller.exe.clone());
                match self
                    .service
                    .session_cert(&extension.details, pid, exe)
                    .await
                {
                    Ok(()) => Response::Success,
                    Err(e) => refuse(e),
                }
            }
            name => refuse(SshError::Unsupported(format!("extension {name:?}"))),
        }
    }
}

/// Logs why and answers the peer's bare FAILURE.
fn refuse(e: SshError) -> Response {
    event!("ssh agent: {e}");
    e.response()
}

/// Overwrites the stack below the caller, where the frames that decoded and copied a key just
/// were (those copies are not zeroized when the frames return).
#[inline(never)]
fn scrub_stack() {
    let mut area = [0u8; 256 * 1024];
    area.zeroize();
    std::hint::black_box(&area);
}

/// One non-blocking read into `buf`, through a buffer on the stack (an idle connection holds
/// none): `Some(n)` bytes (0 at end of stream), or `None` when nothing was ready after all.
fn read_some(stream: &UnixStream, buf: &mut BytesMut) -> std::io::Result<Option<usize>> {
    let mut chunk = Zeroizing::new([0u8; 4096]);
    match stream.try_read(&mut chunk[..]) {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(Some(n))
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// The key pair of a certificate identity: the certificate's public key with the private half
/// the client sent. Whether the halves belong together is checked when the key is prepared.
fn cert_keypair(cert: &OpensshCert, private: PrivateKeyData) -> Result<KeypairData, SshError> {
    let mismatch = || SshError::BadKey("certificate and private key of different types");
    Ok(match (cert.public_key(), private) {
        (KeyData::Ed25519(public), PrivateKeyData::Ed25519(pair)) => {
            if pair.public != *public {
                return Err(SshError::BadKey("certificate of another key"));
            }
            KeypairData::Ed25519(pair)
        }
        (
            KeyData::Ecdsa(EcdsaPublicKey::NistP256(public)),
            PrivateKeyData::Ecdsa(EcdsaPrivateKey::NistP256(private)),
        ) => KeypairData::Ecdsa(EcdsaKeypair::NistP256 {
            public: *public,
            private,
        }),
        (
            KeyData::Ecdsa(EcdsaPublicKey::NistP384(public)),
            PrivateKeyData::Ecdsa(EcdsaPrivateKey::NistP384(private)),
        ) => KeypairData::Ecdsa(EcdsaKeypair::NistP384 {
            public: *public,
            private,
        }),
        (
            KeyData::Ecdsa(EcdsaPublicKey::NistP521(public)),
            PrivateKeyData::Ecdsa(EcdsaPrivateKey::NistP521(private)),
        ) => KeypairData::Ecdsa(EcdsaKeypair::NistP521 {
            public: *public,
            private,
        }),
        (KeyData::Rsa(public), PrivateKeyData::Rsa(private)) => KeypairData::Rsa(RsaKeypair {
            public: public.clone(),
            private,
        }),
        (_, PrivateKeyData::Dsa(_)) => {
            return Err(SshError::Unsupported(
                "DSA keys (OpenSSH 10 removed DSA; use an Ed25519 key)".into(),
            ));
        }
        _ => return Err(mismatch()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_a_bare_failure() {
        for e in [
            SshError::Locked,
            SshError::NotLocked,
            SshError::WrongPassphrase,
            SshError::UnknownKey,
            SshError::Unsupported("x".into()),
            SshError::RsaTooSmall(1024),
            SshError::RsaSha1,
            SshError::BadKey("x"),
            SshError::Sign,
            SshError::NotApproved(Outcome::Denied),
            SshError::Audit,
            SshError::Bind(BindError::Poisoned),
            SshError::BindFailed,
            SshError::SessionMismatch,
            SshError::BadConstraint("x".into()),
            SshError::NotPermitted("x"),
        ] {
            assert_eq!(e.response(), Response::Failure, "{e}");
        }
    }

    #[test]
    fn login_must_be_for_the_bound_session_unless_forwarded() {
        use bind::tests::signed_bind;
        let host = PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519)
            .unwrap();
        let login =
            |sid: &[u8]| purpose::decode(&purpose::tests::userauth_request(sid, "me", "publickey"));
        let mut bindings = Bindings::default();
        assert!(check_login_binding(&login(&[1; 32]), &bindings).is_ok());
        bindings
            .bind(Ok(signed_bind(&host, &[2; 32], true)))
            .unwrap();
        assert!(check_login_binding(&login(&[1; 32]), &bindings).is_ok());
        bindings
            .bind(Ok(signed_bind(&host, &[3; 32], false)))
            .unwrap();
        assert!(check_login_binding(&login(&[3; 32]), &bindings).is_ok());
        assert!(matches!(
            check_login_binding(&login(&[1; 32]), &bindings),
            Err(SshError::SessionMismatch)
        ));
        let hostbound = purpose::decode(&purpose::tests::userauth_request(
            &[3; 32],
            "me",
            "publickey-hostbound-v00@openssh.com",
        ));
        assert!(matches!(
            check_login_binding(&hostbound, &bindings),
            Err(SshError::SessionMismatch)
        ));
    }

    #[test]
    fn expired_keys_are_purged() {
        let key = PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519)
            .unwrap();
        let now = Instant::now();
        let mut ring = HeldKeys::default();
        for (expires, comment) in [(Some(now), "old"), (None, "kept")] {
            ring.keys.push(HeldKey {
                key: Arc::new(key.clone()),
                cert: None,
                comment: comment.into(),
                expires,
                confirm: false,
                destinations: Arc::new([]),
            });
        }
        ring.purge_expired(now);
        assert_eq!(ring.keys.len(), 1);
        assert_eq!(ring.keys[0].comment, "kept");
    }

    #[test]
    fn a_certificate_goes_with_its_own_private_key_only() {
        use ssh_key::certificate::{Builder, CertType};
        let mut rng = ssh_key::rand_core::OsRng;
        let ed25519 = |rng: &mut ssh_key::rand_core::OsRng| {
            PrivateKey::random(rng, ssh_key::Algorithm::Ed25519).unwrap()
        };
        let (ca, user, other) = (ed25519(&mut rng), ed25519(&mut rng), ed25519(&mut rng));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut builder =
            Builder::new_with_random_nonce(&mut rng, user.public_key(), 0, now + 3600).unwrap();
        builder.cert_type(CertType::User).unwrap();
        builder.valid_principal("me").unwrap();
        let cert = builder.sign(&ca).unwrap();
        let cert = OpensshCert::decode(&cert.to_bytes().unwrap()).unwrap();
        let private = |k: &PrivateKey| match k.key_data() {
            KeypairData::Ed25519(pair) => PrivateKeyData::Ed25519(pair.clone()),
            _ => unreachable!(),
        };
        let pair = cert_keypair(&cert, private(&user)).unwrap();
        assert_eq!(
            &KeyData::try_from(&pair).unwrap(),
            user.public_key().key_data()
        );
        assert!(matches!(
            cert_keypair(&cert, private(&other)),
            Err(SshError::BadKey(_))
        ));
        let p256 = PrivateKey::random(
            &mut rng,
            ssh_key::Algorithm::Ecdsa {
                curve: ssh_key::EcdsaCurve::NistP256,
            },
        )
        .unwrap();
        let KeypairData::Ecdsa(EcdsaKeypair::NistP256 { private: ec, .. }) = p256.key_data() else {
            unreachable!()
        };
        let wrong_type = PrivateKeyData::Ecdsa(EcdsaPrivateKey::NistP256(ec.clone()));
        assert!(matches!(
            cert_keypair(&cert, wrong_type),
            Err(SshError::BadKey(_))
        ));
    }
}
