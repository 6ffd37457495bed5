//! One approval exchange per connection (protocol v1 §Transport), with the checks of
//! docs/design.md §1 "Agent side" in this order, all before any prompt:
//!
//! 1. frame size (read under a deadline) and JSON shape;
//! 2. host allowlisted, by `linux_host_id`;
//! 3. signature by that host's pinned key;
//! 4. key id;
//! 5. freshness;
//! 6. replay (the request signature was not seen before);
//! 7. rate limit per host|service|user.
//!
//! A failure of 1-6 is logged and the connection is closed without a reply: the helper reads
//! that as "unavailable", so an unknown or forged request cannot even learn whether a person is
//! there. A rate-limited request gets a signed `unavailable` with `error_code = "rate_limited"`.
//! Everything else is shown to the person, one prompt at a time, and answered with a signed
//! decision bound to the request hash. Every decision, and every refusal from check 2 on, is
//! written to the audit log before the reply is sent.

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nod_proto::frame::{self, HEADER_LEN};
use nod_proto::{
    AuthMethod, Decision, ProtoError, RequestBody, ResponseBody, SignedRequest, VerifiedRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::{Instant, timeout, timeout_at};

use super::hosts::HostAllowlist;
use super::replay::{self, ReplayCache, ReplayError};
use crate::approvers::{Approver, Outcome, PamPrompt, Prompt};
use crate::audit::{AuditEvent, AuditLog, clip};
use crate::config::ApprovalConfig;
use crate::decision::rate::RateLimiter;
use crate::keystore::AgentKey;
use crate::lock;
use crate::log::event;
use crate::now_ms;

/// How long before the request's expiry a prompt is given up, to leave time for the reply.
const REPLY_MARGIN_MS: u64 = 500;

/// Tunables of the service; [`From<&ApprovalConfig>`] fills them from `agent.toml`.
#[derive(Debug, Clone)]
pub struct ApprovalSettings {
    pub allowed_future_skew_ms: u64,
    pub rate_limit_burst: u32,
    pub rate_limit_per_minute: u32,
    /// Deadline for reading the request frame (check 1). A peer that trickles bytes is cut off.
    pub read_timeout: Duration,
    /// Deadline for writing the reply.
    pub write_timeout: Duration,
    pub replay_capacity: usize,
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
            rate_limit_burst: c.rate_limit_burst,
            rate_limit_per_minute: c.rate_limit_per_minute,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            replay_capacity: replay::DEFAULT_CAPACITY,
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
            Self::ReplayCacheFull => "too many live requests remembered; refusing new ones".into(),
        }
    }
}

/// A request that passed checks 1-6.
enum Admitted {
    Prompt(VerifiedRequest),
    RateLimited(VerifiedRequest),
}

/// The remote-approval service: shared by every connection task.
#[derive(Debug)]
pub struct ApprovalService {
    agent_key: AgentKey,
    settings: ApprovalSettings,
    approver: Arc<dyn Approver>,
    hosts: Mutex<HostAllowlist>,
    replay: Mutex<ReplayCache>,
    rate: Mutex<RateLimiter>,
    audit: Arc<Mutex<AuditLog>>,
    /// One prompt at a time: a person answers one question, and a flood of requests must not
    /// stack dialogs until one is approved by mistake.
    prompt_turn: tokio::sync::Mutex<()>,
}

fn audit_base(body: &RequestBody) -> AuditEvent {
    AuditEvent {
        service: "approval",
        host_id: Some(clip(&body.linux_host_id)),
        pam_service: Some(clip(&body.pam_service)),
        user: Some(clip(&body.pam_user)),
        request_id: Some(clip(&body.request_id)),
        decision: String::new(),
        reason: None,
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

/// How an approver's outcome is put on the wire: the decision, whether a person answered
/// (`auth_method` `unknown`, else `none`), and an error code for the helper's logs.
pub fn decision_of(outcome: Outcome) -> (Decision, AuthMethod, Option<&'static str>) {
    match outcome {
        Outcome::Approved => (Decision::Approved, AuthMethod::Unknown, None),
        Outcome::Denied => (Decision::Denied, AuthMethod::Unknown, None),
        Outcome::Cancelled => (Decision::Cancelled, AuthMethod::Unknown, None),
        Outcome::Unavailable => (Decision::Unavailable, AuthMethod::None, Some("no_approver")),
        Outcome::Failed => (Decision::Failed, AuthMethod::None, Some("approver_failed")),
    }
}

/// Reads one request frame: header, size check against the protocol cap (nod-proto's
/// `payload_len`) before reading on, then exactly the announced payload.
async fn read_request_frame(stream: &mut UnixStream) -> Result<Vec<u8>, ProtoError> {
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
    // Grow the buffer as bytes arrive instead of allocating the announced length up front:
    // a thousand peers announcing 1 MiB each and then stalling must not cost a gigabyte.
    let mut payload = Vec::with_capacity(len.min(64 * 1024));
    let got = (&mut *stream)
        .take(len as u64)
        .read_to_end(&mut payload)
        .await
        .map_err(|e| ProtoError::Io {
            kind: e.kind(),
            started: true,
        })?;
    if got != len {
        return Err(ProtoError::FrameTruncated);
    }
    Ok(payload)
}

/// Resolves once the helper has closed its end completely (`POLLHUP`). A half-close after
/// sending the request is not "gone": the helper may still be waiting for the reply. Checked a
/// few times a second while a prompt is open, so a cancelled `sudo` takes its prompt down.
async fn peer_gone(stream: &UnixStream) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::empty())];
        if poll(&mut fds, PollTimeout::ZERO).is_ok() {
            let revents = fds[0].revents().unwrap_or(PollFlags::empty());
            if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                return;
            }
        }
    }
}

impl ApprovalService {
    pub fn new(
        agent_key: AgentKey,
        hosts: HostAllowlist,
        audit: AuditLog,
        approver: Arc<dyn Approver>,
        settings: ApprovalSettings,
    ) -> Self {
        Self {
            replay: Mutex::new(ReplayCache::new(settings.replay_capacity)),
            rate: Mutex::new(RateLimiter::new(
                settings.rate_limit_burst,
                settings.rate_limit_per_minute,
            )),
            agent_key,
            settings,
            approver,
            hosts: Mutex::new(hosts),
            audit: Arc::new(Mutex::new(audit)),
            prompt_turn: tokio::sync::Mutex::new(()),
        }
    }

    pub fn approver(&self) -> &Arc<dyn Approver> {
        &self.approver
    }

    /// The audit log, shared with the other services so they continue one chain.
    pub fn audit_log(&self) -> Arc<Mutex<AuditLog>> {
        Arc::clone(&self.audit)
    }

    pub fn agent_key(&self) -> &AgentKey {
        &self.agent_key
    }

    /// Accepts connections forever, one task each, so a slow or hostile peer never holds up
    /// the others.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let service = Arc::clone(&self);
                    tokio::spawn(async move { service.handle(stream).await });
                }
                Err(e) => {
                    // Out of fds or memory: back off instead of spinning; the exchanges in
                    // flight finish and free what they hold.
                    event!("approval socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Writes an audit line; false if it could not be written.
    fn audit(&self, event: &AuditEvent) -> bool {
        match lock(&self.audit).append(event, now_ms()) {
            Ok(()) => true,
            Err(e) => {
                event!("{e}");
                false
            }
        }
    }

    /// Checks 2-7 of one decoded request.
    fn admit(&self, request: SignedRequest) -> Result<Admitted, Refusal> {
        let body = &request.body;
        // 2. The host must be allowlisted; the file is re-read if it changed.
        let host = lock(&self.hosts)
            .current()
            .get(&body.linux_host_id)
            .cloned()
            .ok_or(Refusal::UnknownHost)?;
        // 3-5. Signature by the pinned key, then key id, then freshness.
        let now = now_ms();
        let verified = request
            .verify(
                &host.key,
                host.key_id.as_str(),
                now,
                self.settings.allowed_future_skew_ms,
            )
            .map_err(Refusal::from_verify)?;
        // 6. Replay, keyed by the signature, kept until the request expires.
        lock(&self.replay)
            .check_and_insert(verified.signature(), verified.body().expires_at_ms, now)
            .map_err(|e| match e {
                ReplayError::Replayed => Refusal::Replayed,
                ReplayError::Full => Refusal::ReplayCacheFull,
            })?;
        // 7. Rate limit per host|service|user. The parts are joined with a byte that host ids
        // cannot contain, so two different triples never share a bucket.
        let b = verified.body();
        let key = format!("{}\0{}\0{}", b.linux_host_id, b.pam_service, b.pam_user);
        if lock(&self.rate).try_take(&key, std::time::Instant::now()) {
            Ok(Admitted::Prompt(verified))
        } else {
            Ok(Admitted::RateLimited(verified))
        }
    }

    /// Serves one connection: read, check, prompt, reply. Never panics on peer input and never
    /// returns an error: whatever goes wrong is logged and the connection is closed.
    pub async fn handle(&self, mut stream: UnixStream) {
        // 1. Frame size and JSON, under the read deadline.
        let payload =
            match timeout(self.settings.read_timeout, read_request_frame(&mut stream)).await {
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
        let mut record = audit_base(&request.body);
        let what = format!(
            "request {:?} from host {:?} ({:?} for {:?})",
            record.request_id.as_deref().unwrap_or_default(),
            record.host_id.as_deref().unwrap_or_default(),
            record.pam_service.as_deref().unwrap_or_default(),
            record.user.as_deref().unwrap_or_default(),
        );
        let verified = match self.admit(request) {
            Ok(Admitted::Prompt(verified)) => verified,
            Ok(Admitted::RateLimited(verified)) => {
                event!("approval: {what}: rate limited; answered unavailable");
                record.decision = Decision::Unavailable.as_str().into();
                record.reason = Some("rate_limited".into());
                if self.audit(&record) {
                    self.reply(
                        &mut stream,
                        &verified,
                        Decision::Unavailable,
                        AuthMethod::None,
                        Some("rate_limited"),
                    )
                    .await;
                }
                return;
            }
            Err(refusal) => {
                event!(
                    "approval: {what}: refused without reply: {}",
                    refusal.explain()
                );
                record.decision = "refused".into();
                record.reason = Some(refusal.reason().into());
                self.audit(&record);
                return;
            }
        };

        let outcome = self.prompt(&stream, &verified).await;
        let Some(outcome) = outcome else {
            event!("approval: {what}: the helper hung up; prompt withdrawn");
            record.decision = Decision::Cancelled.as_str().into();
            record.reason = Some("helper_disconnected".into());
            self.audit(&record);
            return;
        };
        let (mut decision, mut method, mut code) = match outcome {
            PromptResult::Answered(outcome) => decision_of(outcome),
            PromptResult::TimedOut => (
                Decision::Unavailable,
                AuthMethod::None,
                Some("prompt_timeout"),
            ),
        };
        if decision == Decision::Approved && now_ms() > verified.body().expires_at_ms {
            // Too late to matter to the helper, and an approval must never outlive its request.
            (decision, method, code) = (
                Decision::Unavailable,
                AuthMethod::None,
                Some("prompt_timeout"),
            );
        }
        record.decision = decision.as_str().into();
        record.reason = code.map(str::to_owned);
        if !self.audit(&record) {
            // An approval that cannot be recorded is not given.
            (decision, method, code) = (Decision::Failed, AuthMethod::None, Some("audit_failed"));
        }
        event!(
            "approval: {what}: {} (approver {})",
            decision.as_str(),
            self.approver.name()
        );
        self.reply(&mut stream, &verified, decision, method, code)
            .await;
    }

    /// Asks the person, one prompt at a time, bounded by the request's expiry. `None` if the
    /// helper hung up first (the prompt is dropped, which also kills an approver program).
    async fn prompt(
        &self,
        stream: &UnixStream,
        verified: &VerifiedRequest,
    ) -> Option<PromptResult> {
        let body = verified.body();
        // Stop asking a little before the request expires, so that even a timed-out prompt's
        // answer reaches the helper before its own deadline (same instant as the expiry). A
        // reply cut off mid-frame by that deadline would read as a protocol error (a hard
        // fail) instead of "unavailable" (password fallback).
        let remaining = body.expires_at_ms.saturating_sub(now_ms());
        let margin = (remaining / 4).min(REPLY_MARGIN_MS);
        let left = Duration::from_millis(remaining - margin);
        let deadline = Instant::now() + left.min(self.settings.max_prompt);
        let prompt = Prompt::Pam(PamPrompt::from_request(body));
        let ask = async {
            let Ok(_turn) = timeout_at(deadline, self.prompt_turn.lock()).await else {
                return PromptResult::TimedOut;
            };
            match timeout_at(deadline, self.approver.approve(&prompt, deadline)).await {
                Ok(outcome) => PromptResult::Answered(outcome),
                Err(_) => PromptResult::TimedOut,
            }
        };
        tokio::select! {
            result = ask => Some(result),
            () = peer_gone(stream) => None,
        }
    }

    /// Signs and sends the answer; failures are logged (the helper will read them as
    /// unavailable).
    async fn reply(
        &self,
        stream: &mut UnixStream,
        verified: &VerifiedRequest,
        decision: Decision,
        method: AuthMethod,
        error_code: Option<&str>,
    ) {
        let mut body = ResponseBody::answering(
            verified,
            decision,
            method,
            self.agent_key.key_id().as_str(),
            now_ms(),
        );
        body.error_code = error_code.map(str::to_owned);
        let signed = body.sign(self.agent_key.signing_key());
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

enum PromptResult {
    Answered(Outcome),
    TimedOut,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_maps_to_one_decision_and_only_approved_approves() {
        for outcome in [
            Outcome::Approved,
            Outcome::Denied,
            Outcome::Cancelled,
            Outcome::Unavailable,
            Outcome::Failed,
        ] {
            let (decision, method, code) = decision_of(outcome);
            assert_eq!(decision == Decision::Approved, outcome == Outcome::Approved);
            let by_person = matches!(
                outcome,
                Outcome::Approved | Outcome::Denied | Outcome::Cancelled
            );
            assert_eq!(method == AuthMethod::Unknown, by_person, "{outcome:?}");
            assert_eq!(code.is_some(), !by_person, "{outcome:?}");
        }
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
