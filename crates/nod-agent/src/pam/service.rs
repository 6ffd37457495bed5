//! One approval exchange per connection (protocol v1 §Transport), with the checks of
//! docs/design.md §1 "Agent side" in this order, all before any prompt:
//!
//! 1. frame size (read under a deadline) and JSON shape;
//! 2. host allowlisted, by `linux_host_id`;
//! 3. signature by that host's pinned key;
//! 4. key id;
//! 5. freshness;
//! 6. replay (the request signature was not seen before);
//! 7. rate limit per host|service|user (in the decision core, with the prompt).
//!
//! A failure of 1-6 is logged and the connection is closed without a reply: the helper reads
//! that as "unavailable", so an unknown or forged request cannot even learn whether a person is
//! there. A rate-limited request gets a signed `unavailable` with `error_code = "rate_limited"`.
//! Everything else goes to the decision core (`crate::decision`), which shows it to the person
//! one prompt at a time and records the decision; the answer is signed and bound to the request
//! hash. Every decision, and every refusal from check 2 on, is in the audit log before the
//! reply is sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nod_proto::frame::{self, HEADER_LEN};
use nod_proto::{
    AuthMethod, Decision as Wire, ProtoError, RequestBody, ResponseBody, SignedRequest,
    VerifiedRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::{Instant, timeout};

use super::hosts::HostAllowlist;
use super::replay::{self, ReplayCache, ReplayError};
use crate::approvers::{Outcome, PamPrompt, Presence, Prompt, Required};
use crate::audit::{AuditEvent, Service, clip};
use crate::config::ApprovalConfig;
use crate::decision::{Ask, Core, Decision};
use crate::keystore::AgentKeySlot;
use crate::lock;
use crate::log::event;
use crate::now_ms;
use crate::socket::{Capped, Conn, Held, hung_up};

/// How long before the request's expiry a prompt is given up, to leave time for the reply.
const REPLY_MARGIN_MS: u64 = 500;

/// Tunables of the service; [`From<&ApprovalConfig>`] fills them from `agent.toml`.
#[derive(Debug, Clone)]
pub struct ApprovalSettings {
    pub allowed_future_skew_ms: u64,
    /// The least presence a host's request needs (`[presence] pam` in agent.toml).
    pub presence: Required,
    /// Deadline for reading the request frame (check 1). A peer that trickles bytes is cut off.
    pub read_timeout: Duration,
    /// Deadline for writing the reply.
    pub write_timeout: Duration,
    /// Live requests remembered per host.
    pub replay_share: usize,
    /// Longest a prompt may stay open, whatever expiry the host chose.
    pub max_prompt: Duration,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        Self::from(&ApprovalConfig::default())
    }
}

impl From<&ApprovalConfig> for ApprovalSettings {
    fn from(c: &ApprovalConfig) -> Self {
        Self {
            allowed_future_skew_ms: c.allowed_future_skew_ms,
            presence: Required::Any,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            replay_share: replay::DEFAULT_SHARE,
            max_prompt: Duration::from_secs(300),
        }
    }
}

/// Why a request was closed without a prompt (checks 2-6). Check 1 failures have no trusted
/// fields to record and are only logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownHost,
    BadSignature,
    WrongKeyId,
    Expired,
    FromFuture,
    Invalid(String),
    Replayed,
    ReplayCacheFull,
    /// The request lives longer than any helper waits.
    TooLong,
    /// The request was made before this agent started.
    BeforeStart,
}

impl Refusal {
    fn from_verify(e: ProtoError) -> Self {
        match e {
            ProtoError::BadSignature => Self::BadSignature,
            ProtoError::WrongKeyId { .. } => Self::WrongKeyId,
            ProtoError::Expired { .. } => Self::Expired,
            ProtoError::FromFuture { .. } => Self::FromFuture,
            other => Self::Invalid(other.to_string()),
        }
    }

    /// The `reason` word in the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownHost => "unknown_host",
            Self::BadSignature => "bad_signature",
            Self::WrongKeyId => "wrong_key_id",
            Self::Expired => "expired",
            Self::FromFuture => "from_future",
            Self::Invalid(_) => "invalid",
            Self::Replayed => "replay",
            Self::ReplayCacheFull => "replay_cache_full",
            Self::TooLong => "lifetime_too_long",
            Self::BeforeStart => "before_agent_start",
        }
    }

    fn explain(&self) -> String {
        match self {
            Self::UnknownHost => "host is not in hosts.toml (add it with `nod hosts add`)".into(),
            Self::BadSignature => "signature does not verify under the pinned host key".into(),
            Self::WrongKeyId => "key_id is not the one pinned for this host".into(),
            Self::Expired => "request has expired".into(),
            Self::FromFuture => "request is created in the future (check the host's clock)".into(),
            Self::Invalid(e) => e.clone(),
            Self::Replayed => "request was already seen (replay)".into(),
            Self::ReplayCacheFull => {
                "this host has too many live requests remembered; refusing its new ones".into()
            }
            Self::TooLong => format!(
                "the request lives longer than {} s, more than any helper waits",
                nod_proto::MAX_REQUEST_LIFETIME_MS / 1000
            ),
            Self::BeforeStart => {
                "the request was made before this agent started (a replay across a restart is \
                 refused)"
                    .into()
            }
        }
    }
}

/// The remote-approval service: shared by every connection task.
#[derive(Debug)]
pub struct ApprovalService {
    agent_key: Arc<AgentKeySlot>,
    settings: ApprovalSettings,
    core: Arc<Core>,
    hosts: Mutex<HostAllowlist>,
    replay: Mutex<ReplayCache>,
    /// When this agent started: requests created earlier are refused (see `admit`).
    started_ms: u64,
}

fn audit_base(body: &RequestBody) -> AuditEvent {
    AuditEvent {
        service: Service::Pam,
        action: Some("authenticate".into()),
        host_id: Some(clip(&body.linux_host_id)),
        pam_service: Some(clip(&body.pam_service)),
        user: Some(clip(&body.pam_user)),
        request_id: Some(clip(&body.request_id)),
        ..Default::default()
    }
}

impl PamPrompt {
    /// The prompt for a verified request.
    pub fn from_request(body: &RequestBody) -> Self {
        Self {
            host: body.linux_hostname.clone(),
            host_id: body.linux_host_id.clone(),
            service: body.pam_service.clone(),
            user: body.pam_user.clone(),
            ruser: body.pam_ruser.clone(),
            tty: body.pam_tty.clone(),
            rhost: body.pam_rhost.clone(),
            command: body.sudo_command.clone(),
            request_id: body.request_id.clone(),
        }
    }
}

/// How a decision is put on the wire: the decision, how the person proved presence
/// (`auth_method`), and an error code for the helper's logs. macos-auth's helper knows only its
/// own `auth_method` words, so a fingerprint is `biometric-or-watch`, any other answer from a
/// person `unknown`, and no answer `none`; the audit line has the exact strength.
pub fn wire_answer(decision: &Decision) -> (Wire, AuthMethod, Option<&'static str>) {
    let by_person = match decision.presence() {
        Some(Presence::Fingerprint) => AuthMethod::BiometricOrWatch,
        _ => AuthMethod::Unknown,
    };
    match decision.outcome() {
        Outcome::Approved => (Wire::Approved, by_person, None),
        Outcome::Denied => (Wire::Denied, AuthMethod::Unknown, None),
        Outcome::Cancelled => (Wire::Cancelled, AuthMethod::Unknown, decision.reason()),
        Outcome::Unavailable => (
            Wire::Unavailable,
            AuthMethod::None,
            Some(decision.reason().unwrap_or("no_approver")),
        ),
        Outcome::Failed => (
            Wire::Failed,
            AuthMethod::None,
            Some(decision.reason().unwrap_or("approver_failed")),
        ),
    }
}

/// Reads one request frame: header, size check against the protocol cap (nod-proto's
/// `payload_len`) before reading on, then exactly the announced payload, into a buffer that
/// grows as bytes arrive (never sized from the header), counted against the socket's
/// in-flight budget.
async fn read_request_frame(
    stream: &mut UnixStream,
    held: &mut Held,
) -> Result<Vec<u8>, ProtoError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match stream.read(&mut header[got..]).await {
            Ok(0) if got == 0 => return Err(ProtoError::Closed),
            Ok(0) => return Err(ProtoError::FrameTruncated),
            Ok(n) => got += n,
            Err(e) => {
                return Err(ProtoError::Io {
                    kind: e.kind(),
                    started: got > 0,
                });
            }
        }
    }
    let len = frame::payload_len(header)?;
    let mut payload = Vec::new();
    while payload.len() < len {
        stream.readable().await.map_err(|e| ProtoError::Io {
            kind: e.kind(),
            started: true,
        })?;
        let mut chunk = [0u8; 4096];
        let want = (len - payload.len()).min(chunk.len());
        match stream.try_read(&mut chunk[..want]) {
            Ok(0) => return Err(ProtoError::FrameTruncated),
            Ok(n) => {
                if !held.set(payload.len() + n) {
                    return Err(ProtoError::InvalidField(
                        "too many bytes of unfinished requests on this socket",
                    ));
                }
                payload.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                return Err(ProtoError::Io {
                    kind: e.kind(),
                    started: true,
                });
            }
        }
    }
    held.set(0);
    Ok(payload)
}

impl ApprovalService {
    pub fn new(
        agent_key: Arc<AgentKeySlot>,
        hosts: HostAllowlist,
        core: Arc<Core>,
        settings: ApprovalSettings,
    ) -> Self {
        Self {
            replay: Mutex::new(ReplayCache::new(settings.replay_share)),
            agent_key,
            settings,
            core,
            hosts: Mutex::new(hosts),
            started_ms: now_ms(),
        }
    }

    pub fn agent_key(&self) -> &AgentKeySlot {
        &self.agent_key
    }

    /// Accepts connections forever, one task each, so a slow or hostile peer never holds up
    /// the others.
    pub async fn serve(self: Arc<Self>, listener: Capped) {
        loop {
            let (stream, conn) = listener.accept().await;
            let service = Arc::clone(&self);
            tokio::spawn(async move { service.handle(stream, conn).await });
        }
    }

    /// Checks 2-6 of one decoded request (check 7, the rate limit, is the decision core's).
    /// Returns the verified request and the presence the host's requests need, if its
    /// allowlist entry says.
    fn admit(
        &self,
        request: SignedRequest,
    ) -> Result<(VerifiedRequest, Option<Required>), Refusal> {
        let body = &request.body;
        // 2. The host must be allowlisted; the file is re-read if it changed.
        let (host, presence) = {
            let mut hosts = lock(&self.hosts);
            let hosts = hosts.current();
            let host = hosts
                .get(&body.linux_host_id)
                .cloned()
                .ok_or(Refusal::UnknownHost)?;
            (host, hosts.presence(&body.linux_host_id))
        };
        // 3-5. Signature by the pinned key, then key id, then freshness.
        let now = now_ms();
        let verified = request
            .verify(&host, now, self.settings.allowed_future_skew_ms)
            .map_err(Refusal::from_verify)?;
        // A request may not outlive the helper's longest timeout: it would fill the replay
        // cache for as long.
        let b = verified.body();
        if b.expires_at_ms.saturating_sub(b.created_at_ms) > nod_proto::MAX_REQUEST_LIFETIME_MS {
            return Err(Refusal::TooLong);
        }
        // The replay cache lives in memory: a request made before this agent started may have
        // been seen by an earlier one, so it is refused (the host falls back to the password).
        if b.created_at_ms
            .saturating_add(self.settings.allowed_future_skew_ms)
            < self.started_ms
        {
            return Err(Refusal::BeforeStart);
        }
        // 6. Replay, keyed by the signature, kept until the request expires, per host.
        lock(&self.replay)
            .check_and_insert(&b.linux_host_id, verified.signature(), b.expires_at_ms, now)
            .map_err(|e| match e {
                ReplayError::Replayed => Refusal::Replayed,
                ReplayError::Full => Refusal::ReplayCacheFull,
            })?;
        Ok((verified, presence))
    }

    /// Serves one connection: read, check, decide, reply. Never panics on peer input and never
    /// returns an error: whatever goes wrong is logged and the connection is closed.
    pub async fn handle(&self, mut stream: UnixStream, mut conn: Conn) {
        // 1. Frame size and JSON, under the read deadline. Until it has arrived, the
        // connection may be closed to make room for another.
        conn.idle();
        let evicted = conn.eviction();
        let read = timeout(
            self.settings.read_timeout,
            read_request_frame(&mut stream, &mut conn.held),
        );
        let payload = tokio::select! {
            r = read => r,
            () = evicted => return,
        };
        conn.busy();
        let payload = match payload {
            Ok(Ok(payload)) => payload,
            Ok(Err(ProtoError::Closed)) => return,
            Ok(Err(e)) => {
                event!("approval: refused a connection: {e}");
                return;
            }
            Err(_) => {
                event!(
                    "approval: refused a connection: no complete request within {:?}",
                    self.settings.read_timeout
                );
                return;
            }
        };
        let request = match SignedRequest::from_json(&payload) {
            Ok(request) => request,
            Err(e) => {
                event!("approval: refused a connection: {e}");
                return;
            }
        };
        drop(payload);
        let record = audit_base(&request.body);
        let what = format!(
            "request {:?} from host {:?} ({:?} for {:?})",
            record.request_id.as_deref().unwrap_or_default(),
            record.host_id.as_deref().unwrap_or_default(),
            record.pam_service.as_deref().unwrap_or_default(),
            record.user.as_deref().unwrap_or_default(),
        );
        let (verified, host_presence) = match self.admit(request) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                event!(
                    "approval: {what}: refused without reply: {}",
                    refusal.explain()
                );
                let _ = self.core.refuse(record, refusal.reason());
                return;
            }
        };
        // Without the agent key (keystore locked) no answer could be signed: do not ask.
        if let Err(e) = self.agent_key.get() {
            event!("approval: {what}: not asked: {e}; the host falls back to its password");
            let _ = self.core.refuse(record, "keystore_locked");
            return;
        }
        let body = verified.body();
        // Stop asking a little before the request expires, so that even a timed-out prompt's
        // answer reaches the helper before its own deadline (same instant as the expiry). A
        // reply cut off mid-frame by that deadline would read as a protocol error (a hard
        // fail) instead of "unavailable" (password fallback).
        let remaining = body.expires_at_ms.saturating_sub(now_ms());
        let margin = (remaining / 4).min(REPLY_MARGIN_MS);
        let left = Duration::from_millis(remaining - margin);
        // The rate-limit bucket: the parts are joined with a byte that host ids cannot
        // contain, so two different triples never share a bucket.
        let rate_key = format!(
            "{}\0{}\0{}",
            body.linux_host_id, body.pam_service, body.pam_user
        );
        let ask = Ask {
            prompt: Prompt::Pam(PamPrompt::from_request(body)),
            event: record,
            deadline: Instant::now() + left.min(self.settings.max_prompt),
            required: host_presence.unwrap_or(self.settings.presence),
            rate_key: Some(rate_key),
            share_key: None,
        };
        let decision = self.core.decide(ask, hung_up(&stream)).await;
        if decision.reason() == Some("withdrawn") {
            event!("approval: {what}: the helper hung up; prompt withdrawn");
            return;
        }
        let (wire, method, code) = wire_answer(&decision);
        event!(
            "approval: {what}: {} (approver {}{})",
            wire.as_str(),
            decision.approver(),
            code.map(|c| format!(", {c}")).unwrap_or_default()
        );
        self.reply(&mut stream, &verified, wire, method, code).await;
    }

    /// Signs and sends the answer; failures are logged (the helper will read them as
    /// unavailable).
    async fn reply(
        &self,
        stream: &mut UnixStream,
        verified: &VerifiedRequest,
        decision: Wire,
        method: AuthMethod,
        error_code: Option<&str>,
    ) {
        let agent_key = match self.agent_key.get() {
            Ok(key) => key,
            Err(e) => {
                event!("approval: cannot sign the reply: {e}");
                return;
            }
        };
        let mut body = ResponseBody::answering(
            verified,
            decision,
            method,
            agent_key.key_id().as_str(),
            now_ms(),
        );
        body.error_code = error_code.map(str::to_owned);
        let signed = body.sign(agent_key.signing_key());
        let bytes = match frame::encode(&signed.to_json()) {
            Ok(bytes) => bytes,
            Err(e) => {
                event!("approval: cannot frame the reply: {e}");
                return;
            }
        };
        let send = async {
            stream.write_all(&bytes).await?;
            stream.shutdown().await
        };
        match timeout(self.settings.write_timeout, send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => event!("approval: sending the reply failed: {e}"),
            Err(_) => event!("approval: sending the reply timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decision_maps_to_one_wire_answer_and_only_approved_approves() {
        for outcome in [
            Outcome::Approved,
            Outcome::Denied,
            Outcome::Cancelled,
            Outcome::Unavailable,
            Outcome::Failed,
        ] {
            for presence in [None, Some(Presence::Password), Some(Presence::Fingerprint)] {
                let d = Decision::for_test(outcome, presence, None);
                let (wire, method, code) = wire_answer(&d);
                assert_eq!(wire == Wire::Approved, outcome == Outcome::Approved);
                let by_person = matches!(
                    outcome,
                    Outcome::Approved | Outcome::Denied | Outcome::Cancelled
                );
                assert_eq!(method != AuthMethod::None, by_person, "{outcome:?}");
                assert_eq!(code.is_some(), !by_person, "{outcome:?}");
                if outcome == Outcome::Approved && presence == Some(Presence::Fingerprint) {
                    assert_eq!(method, AuthMethod::BiometricOrWatch);
                }
            }
        }
        let d = Decision::for_test(Outcome::Unavailable, None, Some("rate_limited"));
        assert_eq!(wire_answer(&d).2, Some("rate_limited"));
    }

    #[test]
    fn every_verify_error_maps_to_a_refusal_reason() {
        let cases = [
            (ProtoError::BadSignature, "bad_signature"),
            (
                ProtoError::WrongKeyId {
                    expected: "a".into(),
                    got: "b".into(),
                },
                "wrong_key_id",
            ),
            (
                ProtoError::Expired {
                    now_ms: 2,
                    expires_at_ms: 1,
                },
                "expired",
            ),
            (
                ProtoError::FromFuture {
                    now_ms: 1,
                    created_at_ms: 2,
                },
                "from_future",
            ),
            (ProtoError::InvalidField("x"), "invalid"),
        ];
        for (err, reason) in cases {
            assert_eq!(Refusal::from_verify(err).reason(), reason);
        }
    }
}
