//! The secrets broker on `$XDG_RUNTIME_DIR/nod/secrets.sock` (docs/design.md §3, protocol in
//! `docs/protocol/secrets.md`, types in `nod_client::proto`).
//!
//! Each request line is judged by the process that sent *that line* (see [`crate::caller::identity`]):
//! another uid is refused, an unregistered binary gets `unregistered_binary` and is queued for
//! `nod approve`, and a registered one gets exactly what its policy entry allows. The order is:
//!
//! 1. line length (≤ 64 KiB, else `malformed_request` and the connection closes) and JSON shape
//!    (unknown fields rejected), then the request's own consistency;
//! 2. the sender: uid, pidfd, start time, hash of the running binary;
//! 3. the policy, for the whole batch before anything runs;
//! 4. the backend, all or nothing.
//!
//! `CONTROL` lines (nod's extension) change the policy. Those that grant access are shown to the
//! person through the approver; nothing a same-user program sends can approve itself.
//! Every read, write, delete and search, granted or not, and every policy change goes into the
//! audit log, never with a value.

mod conn;
mod keyfile;
pub mod keyring;
pub mod policy;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use nix::unistd::getuid;
use nod_client::proto::{
    Action, Control, DecodeError, Item, Match, Message, PendingEntry, PolicyEntry, Reason, Request,
    Response, Status,
};
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::time::{Instant, timeout};

use self::conn::{Line, LineReader, ReadError};
use self::keyring::{KeyringError, SecretService};
use self::policy::{PendingQueue, PolicyError, PolicyStore};
use self::store::{Change, FileStore, StoreError};
use crate::approvers::{Outcome, Prompt, Required, SecretsPrompt, SecretsUsePrompt};
use crate::audit::{AuditEvent, Service, clip};
use crate::caller::chain::{CallerScope, ProcessLink};
use crate::caller::identity::{self as peer, Binary, HashCache, Judged, PeerError};
use crate::config::SecretsBackend;
use crate::decision::{Ask, Core, Decision};
use crate::keystore::Keystore;
use crate::lock;
use crate::log::event;
use crate::now_ms;
use crate::paths::Paths;
use crate::socket::{self, Capped};
use crate::sys;

/// Longest service, target or attribute name, in bytes.
pub const MAX_NAME: usize = 256;
/// Most targets in one request.
pub const MAX_TARGETS: usize = 256;
/// Most attributes on one request.
pub const MAX_ATTRIBUTES: usize = 32;
/// Targets written to one audit line.
const MAX_AUDIT_TARGETS: usize = 16;

/// Tunables of the broker.
#[derive(Debug, Clone)]
pub struct SecretsSettings {
    /// A connection with no complete line for this long is closed (§Transport: 30 s).
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    /// Longest a policy prompt stays open.
    pub prompt_timeout: Duration,
    /// The least presence a policy change needs (`[presence] secrets` in agent.toml).
    pub presence: Required,
}

impl Default for SecretsSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            prompt_timeout: Duration::from_secs(120),
            presence: Required::Any,
        }
    }
}

/// Where the broker keeps its files, and the keystore that seals them.
#[derive(Debug, Clone)]
pub struct SecretsFiles {
    pub policy: PathBuf,
    pub pending: PathBuf,
    pub store: PathBuf,
    /// The keys of earlier versions, read once to migrate (see [`store`] and [`policy`]).
    pub legacy_policy_key: PathBuf,
    pub legacy_store_key: PathBuf,
    pub keystore: Keystore,
}

impl SecretsFiles {
    /// The files of `paths`, sealed by `keystore` (the agent's, so the wrapping key is opened
    /// once).
    pub fn new(paths: &Paths, keystore: &Keystore) -> Self {
        Self {
            policy: paths.state_dir.join("secrets-policy.json"),
            pending: paths.state_dir.join("secrets-pending.json"),
            legacy_policy_key: paths.keystore_dir().join("secrets-policy.key"),
            store: paths.keystore_dir().join("secrets.enc"),
            legacy_store_key: paths.keystore_dir().join("secrets.key"),
            keystore: keystore.clone(),
        }
    }

    /// Brings the store and the policy of an earlier version (each with a key of its own)
    /// under the keystore now, instead of on first use (`nod keys protect`, `nod keys init`).
    pub fn migrate(&self) -> Result<(), SecretsError> {
        let legacy = |p: &Path| std::fs::symlink_metadata(p).is_ok();
        if legacy(&self.legacy_store_key) {
            FileStore::open(&self.store, &self.legacy_store_key, &self.keystore)?;
        }
        if legacy(&self.legacy_policy_key) {
            let mut policy =
                PolicyStore::open(&self.policy, &self.legacy_policy_key, &self.keystore);
            policy.current().map_err(SecretsError::Policy)?;
            if legacy(&self.legacy_policy_key) && std::fs::symlink_metadata(&self.policy).is_ok() {
                return Err(SecretsError::Policy(PolicyError::Io {
                    path: self.policy.clone(),
                    message: "not migrated yet; see the log".into(),
                }));
            }
        }
        Ok(())
    }
}

/// The broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "[secrets] backend = \"secret-service\" in agent.toml, but no Secret Service is usable \
         ({0}); start gnome-keyring (or another Secret Service) in this session, or set \
         backend = \"file\""
    )]
    NoSecretService(KeyringError),
    #[error(transparent)]
    Policy(PolicyError),
}

impl SecretsError {
    /// The keystore is locked: the agent runs on and retries on the next request.
    pub fn is_locked(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_locked())
    }
}

/// Where secrets are kept.
#[derive(Debug)]
pub enum Backend {
    /// The encrypted file ([`store`]).
    File(Mutex<FileStore>),
    /// The Secret Service on the session bus ([`keyring`]).
    SecretService(SecretService),
}

impl Backend {
    /// Picks the backend: `auto` uses the Secret Service when one answers on the session bus,
    /// else the encrypted file.
    pub async fn choose(
        choice: SecretsBackend,
        files: &SecretsFiles,
    ) -> Result<Self, SecretsError> {
        let file = || -> Result<Self, SecretsError> {
            Ok(Self::File(Mutex::new(FileStore::open(
                &files.store,
                &files.legacy_store_key,
                &files.keystore,
            )?)))
        };
        match choice {
            SecretsBackend::File => file(),
            SecretsBackend::SecretService => SecretService::connect(Duration::from_secs(5))
                .await
                .map(Self::SecretService)
                .map_err(SecretsError::NoSecretService),
            SecretsBackend::Auto => match SecretService::connect(Duration::from_secs(2)).await {
                Ok(k) => Ok(Self::SecretService(k)),
                Err(e) => {
                    event!("secrets: no Secret Service ({e}); using the encrypted file");
                    file()
                }
            },
        }
    }

    /// For logs: `file` or `secret-service`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::SecretService(_) => "secret-service",
        }
    }
}

/// The start of a broker audit line (secrets-protocol.md §Audit log, in nod's chained log):
/// `caller_exe`/`caller_hash` are keychain-auth's `binary_path`/`binary_hash`.
fn audit_base(action: &str, pid: i32) -> AuditEvent {
    AuditEvent {
        service: Service::Secrets,
        action: Some(action.to_owned()),
        caller_pid: Some(pid),
        ..Default::default()
    }
}

/// A request that passed step 1: its shape is consistent.
#[derive(Debug)]
struct CheckedRequest {
    request: Request,
    prefix: bool,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && !s.chars().any(char::is_control)
}

/// Step 1 past JSON: §Request's rules, and nod's limits on names.
fn check_request(request: Request) -> Result<CheckedRequest, String> {
    let prefix = request.match_.unwrap_or_default() == Match::Prefix;
    if !valid_name(&request.service) {
        return Err(format!(
            "service must be 1-{MAX_NAME} bytes without control characters"
        ));
    }
    if request.targets.len() > MAX_TARGETS {
        return Err(format!("at most {MAX_TARGETS} targets per request"));
    }
    if let Some(t) = request.targets.iter().find(|t| !valid_name(t)) {
        return Err(format!(
            "target {:?} must be 1-{MAX_NAME} bytes without control characters",
            clip(t)
        ));
    }
    if request.attributes.len() > MAX_ATTRIBUTES
        || request
            .attributes
            .iter()
            .any(|(k, v)| !valid_name(k) || v.len() > MAX_NAME)
    {
        return Err(format!(
            "at most {MAX_ATTRIBUTES} attributes, names 1-{MAX_NAME} bytes, values up to {MAX_NAME}"
        ));
    }
    let is_write = request.action == Action::Write;
    if !is_write && !request.values.is_empty() {
        return Err("values are only allowed with write".into());
    }
    if is_write {
        if prefix {
            return Err("match prefix is not allowed with write".into());
        }
        if request.targets.len() != request.values.len() {
            return Err(format!(
                "write needs as many values as targets ({} targets, {} values)",
                request.targets.len(),
                request.values.len()
            ));
        }
    }
    if request.action != Action::Search && request.targets.is_empty() {
        return Err(if prefix {
            "prefix match needs at least one prefix in targets".into()
        } else {
            "exact read, write and delete need at least one target".into()
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = request.targets.iter().find(|t| !seen.insert(t.as_str())) {
        return Err(format!("target {:?} appears twice", clip(dup)));
    }
    Ok(CheckedRequest { request, prefix })
}

/// Step 3: what the policy entry allows, for the whole batch.
fn check_policy(entry: &PolicyEntry, req: &CheckedRequest) -> Result<(), Refusal> {
    let service = &req.request.service;
    let (services, needs_search) = match req.request.action {
        Action::Read => (&entry.allowed_read_services, req.prefix),
        Action::Search => (&entry.allowed_read_services, true),
        Action::Write => (&entry.allowed_write_services, false),
        Action::Delete => (&entry.allowed_write_services, req.prefix),
    };
    if !services.iter().any(|s| s == service) {
        return Err(Refusal::ServiceNotAllowed);
    }
    if needs_search && !entry.can_search {
        return Err(Refusal::ActionNotInPolicy);
    }
    Ok(())
}

/// Why the broker did not do what a line asked: the one mapping from cause to the wire's
/// status and reason code (secrets-protocol.md §Response). The message is for the person; the
/// agent's log has the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Bad JSON, unknown fields, a line over the cap, inconsistent fields, bad names.
    Malformed(String),
    /// The sender's uid is not the agent's.
    OtherUid,
    /// The binary is not in the policy (it is queued for `nod approve`).
    Unregistered(String),
    /// The policy entry does not name this service for this action.
    ServiceNotAllowed,
    /// A prefix read or delete, or a search, without `can_search`.
    ActionNotInPolicy,
    /// **nod**: an exact target, a pending hash or a file is not there.
    NotFound(String),
    /// **nod**: the person said no to a policy change, or could not be asked.
    NotApproved(String),
    /// **nod**: the calling process cannot be trusted to be what it runs (traced, injected,
    /// another namespace, exec'd since it connected, outside its session).
    Untrusted(String),
    /// The caller could not be verified, the policy is unusable, or the backend failed.
    Internal(String),
}

impl Refusal {
    pub fn status(&self) -> Status {
        match self {
            Self::Unregistered(_)
            | Self::OtherUid
            | Self::ServiceNotAllowed
            | Self::ActionNotInPolicy
            | Self::Untrusted(_)
            | Self::NotApproved(_) => Status::Denied,
            Self::Malformed(_) | Self::NotFound(_) | Self::Internal(_) => Status::Error,
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            Self::Malformed(_) => Reason::MalformedRequest,
            Self::OtherUid | Self::ServiceNotAllowed => Reason::ServiceNotAllowed,
            Self::Unregistered(_) => Reason::UnregisteredBinary,
            Self::ActionNotInPolicy => Reason::ActionNotInPolicy,
            Self::NotFound(_) => Reason::NotFound,
            Self::NotApproved(_) => Reason::NotApproved,
            Self::Untrusted(_) => Reason::UntrustedCaller,
            Self::Internal(_) => Reason::InternalError,
        }
    }

    /// The word in the audit log: finer than the wire's reason where that helps.
    pub fn audit_reason(&self) -> &'static str {
        match self {
            Self::OtherUid => "other_uid",
            other => other.reason().as_str(),
        }
    }

    pub fn response(&self) -> Response {
        let message = match self {
            Self::Malformed(m)
            | Self::Unregistered(m)
            | Self::NotFound(m)
            | Self::NotApproved(m)
            | Self::Untrusted(m)
            | Self::Internal(m) => Some(m.clone()),
            Self::OtherUid | Self::ServiceNotAllowed | Self::ActionNotInPolicy => None,
        };
        Response::refused(self.status(), self.reason(), message)
    }
}

/// The broker: shared by every connection task.
#[derive(Debug)]
pub struct SecretsService {
    settings: SecretsSettings,
    /// Asks the person and records every decision and refusal.
    core: Arc<Core>,
    policy: Mutex<PolicyStore>,
    pending: Mutex<PendingQueue>,
    /// Chosen on first use (see [`SecretsService::backend`]).
    backend: tokio::sync::OnceCell<Backend>,
    choice: SecretsBackend,
    files: SecretsFiles,
    hashes: Arc<HashCache>,
    /// What this very binary is (read on first use): requests from its command line are
    /// asked each time.
    own: std::sync::OnceLock<Option<Binary>>,
    /// Grants the person gave the `nod` command line (`nod secrets get --remember`).
    cli_grants: Mutex<HashMap<CliScope, std::time::Instant>>,
    /// The agent's sockets, for `nod status`.
    sockets: serde_json::Value,
    uid: u32,
}

impl SecretsService {
    /// Opens the policy and the pending queue; the backend `choice` names is opened by
    /// [`SecretsService::backend`].
    pub fn new(
        files: &SecretsFiles,
        choice: SecretsBackend,
        core: Arc<Core>,
        settings: SecretsSettings,
    ) -> Self {
        let mut policy =
            PolicyStore::open(&files.policy, &files.legacy_policy_key, &files.keystore);
        if let Err(e) = policy.current() {
            // Not fatal: the rest of the agent runs, and every secrets request says why it is
            // refused until the person repairs the file.
            event!("{e}");
        }
        Self {
            sockets: serde_json::Value::Null,
            settings,
            core,
            policy: Mutex::new(policy),
            pending: Mutex::new(PendingQueue::open(&files.pending)),
            backend: tokio::sync::OnceCell::new(),
            choice,
            files: files.clone(),
            own: std::sync::OnceLock::new(),
            cli_grants: Mutex::new(HashMap::new()),
            hashes: Arc::new(HashCache::default()),
            uid: getuid().as_raw(),
        }
    }

    /// Names the agent's sockets in `nod status`.
    pub fn with_sockets(mut self, sockets: serde_json::Value) -> Self {
        self.sockets = sockets;
        self
    }

    /// The backend, opened on the first call ([`Backend::choose`]); a failure is retried on
    /// the next. Under `auto` the agent makes the first call on the first request that needs
    /// a backend, so a Secret Service that starts after the agent (a login race) is still
    /// found, and an agent whose secrets are never asked for never connects to D-Bus.
    pub async fn backend(&self) -> Result<&Backend, SecretsError> {
        self.backend
            .get_or_try_init(|| async {
                let backend = Backend::choose(self.choice, &self.files).await?;
                event!("secrets backend: {}", backend.name());
                Ok(backend)
            })
            .await
    }

    /// Turns on `SO_PASSCRED` (inherited by accepted sockets) and serves for ever, one task per
    /// connection, so idle or slow peers never hold up others.
    pub async fn serve(self: Arc<Self>, listener: Capped) {
        if let Err(e) = setsockopt(listener.listener(), sockopt::PassCred, &true) {
            // Without credentials every line is refused; say why once.
            event!("secrets socket: cannot enable SO_PASSCRED: {e}");
        }
        if let Err(e) = sys::set_pass_pidfd(listener.listener()) {
            event!(
                "secrets socket: this kernel gives no pidfd of each message's sender ({e}; \
                 Linux 6.5 has SO_PASSPIDFD): senders are matched to the connected process by \
                 pid, the weaker check described in docs/security.md"
            );
        }
        match std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") {
            Ok(v) if v.trim() != "0" => {}
            _ => event!(
                "secrets: WARNING: any process of yours may ptrace any other (Yama ptrace_scope \
                 is 0 or absent), so it can inject code into a registered binary; set \
                 kernel.yama.ptrace_scope = 1 or higher (see docs/security.md)"
            ),
        }
        loop {
            let (stream, conn) = listener.accept().await;
            let service = Arc::clone(&self);
            tokio::spawn(async move { service.handle(stream, conn).await });
        }
    }

    /// Records a refusal; the refusal stands whether or not the line could be written.
    fn refused(&self, event: AuditEvent, refusal: &Refusal) {
        let _ = self.core.refuse(event, refusal.audit_reason());
    }

    async fn send(&self, stream: &mut UnixStream, resp: &Response) -> bool {
        matches!(
            timeout(
                self.settings.write_timeout,
                stream.write_all(&resp.encode())
            )
            .await,
            Ok(Ok(()))
        )
    }

    async fn handle(&self, mut stream: UnixStream, mut slot: socket::Conn) {
        // Refuse another uid at once (the per-line credentials are checked again below).
        let _ = setsockopt(&stream, sockopt::PassCred, &true);
        let _ = sys::set_pass_pidfd(&stream);
        let peer_pid = match getsockopt(&stream, sockopt::PeerCredentials) {
            Ok(c) if c.uid() == self.uid => c.pid(),
            Ok(c) => {
                event!("secrets: refused a connection from uid {}", c.uid());
                self.send(&mut stream, &Refusal::OtherUid.response()).await;
                return;
            }
            Err(e) => {
                event!("secrets: no peer credentials: {e}");
                return;
            }
        };
        // The kernel's pidfd of the process that connected: it can never name another one.
        // Before Linux 6.5 there is none, and one is opened from the pid instead.
        let peer = getsockopt(&stream, sockopt::PeerPidfd).or_else(|_| {
            rustix::process::Pid::from_raw(peer_pid)
                .ok_or(rustix::io::Errno::SRCH)
                .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()))
                .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error()))
        });
        let Ok(peer) = peer else {
            event!("secrets: the connecting process {peer_pid} is already gone");
            return;
        };
        let mut conn = Conn {
            peer: Some(peer),
            judged: None,
            session: None,
        };
        let mut reader = LineReader::default();
        loop {
            // Waiting for a line with nothing of it buffered, the connection may be closed to
            // make room for another.
            if reader.is_empty() {
                slot.idle();
            } else {
                slot.busy();
            }
            let evicted = slot.eviction();
            let next = timeout(
                self.settings.idle_timeout,
                reader.next_line(&stream, &mut slot.held),
            );
            let next = tokio::select! {
                r = next => r,
                () = evicted => return,
            };
            slot.busy();
            let line = match next {
                Err(_) | Ok(Ok(None)) => return,
                Ok(Ok(Some(line))) => line,
                Ok(Err(ReadError::TooLong)) => {
                    let resp = Refusal::Malformed(DecodeError::TooLong.to_string()).response();
                    self.send(&mut stream, &resp).await;
                    return;
                }
                Ok(Err(ReadError::OverBudget)) => {
                    event!("secrets: closing a connection: {}", ReadError::OverBudget);
                    return;
                }
                Ok(Err(ReadError::Io(_))) => return,
            };
            let resp = self.answer(line, &mut conn).await;
            if !self.send(&mut stream, &resp).await {
                return;
            }
        }
    }

    async fn answer(&self, line: Line, conn: &mut Conn) -> Response {
        let message = match Message::decode(&line.bytes) {
            Ok(m) => m,
            Err(e) => return Refusal::Malformed(e.to_string()).response(),
        };
        let Some(sender) = line.sender else {
            event!("secrets: a line came from more than one process; refused");
            return Refusal::Malformed(String::from(
                "the line was written by more than one process",
            ))
            .response();
        };
        if sender.uid != self.uid {
            event!("secrets: refused a line from uid {}", sender.uid);
            if let Message::Request(r) = &message {
                let mut event = audit_base(r.action.as_str(), sender.pid);
                event.secrets_service = Some(clip(&r.service));
                self.refused(event, &Refusal::OtherUid);
            }
            return Refusal::OtherUid.response();
        }
        match message {
            Message::Hello => self.hello(&sender, conn).await,
            Message::Request(request) => self.request(request, sender, conn).await,
            Message::Control(control) => self.control(control, sender, conn).await,
        }
    }

    /// Judges the connected process (off the runtime thread: a cold hash reads the whole
    /// binary), once per connection.
    async fn judge(&self, conn: &mut Conn) -> Result<Arc<Judged>, PeerError> {
        if let Some(j) = &conn.judged {
            return Ok(Arc::clone(j));
        }
        let pidfd = conn.peer.take().ok_or(PeerError::Gone)?;
        let cache = Arc::clone(&self.hashes);
        let uid = self.uid;
        let judged = tokio::task::spawn_blocking(move || peer::judge(pidfd, uid, &cache))
            .await
            .unwrap_or(Err(PeerError::Gone))?;
        let judged = Arc::new(judged);
        conn.judged = Some(Arc::clone(&judged));
        Ok(judged)
    }

    /// `HELLO`: the connected process is judged now, and requests carrying the session id
    /// that goes back were sent after that, by it.
    async fn hello(&self, sender: &peer::Sender, conn: &mut Conn) -> Response {
        if conn.session.is_some() {
            return Refusal::Malformed("this connection has a session already".into()).response();
        }
        let judged = match self.judge(conn).await {
            Ok(j) => j,
            Err(e) => return self.untrusted(audit_base("hello", sender.pid), &e),
        };
        if let Err(e) = judged.check_sender(sender) {
            return self.untrusted(audit_base("hello", sender.pid), &e);
        }
        let mut id = [0u8; 16];
        if getrandom::getrandom(&mut id).is_err() {
            return Refusal::Internal("no randomness for a session id".into()).response();
        }
        let session = hex::encode(id);
        conn.session = Some(session.clone());
        let mut resp = Response::success(Vec::new());
        resp.session = Some(session);
        resp
    }

    /// A caller that cannot be trusted: recorded and refused.
    fn untrusted(&self, mut audit: AuditEvent, e: &PeerError) -> Response {
        event!("secrets: caller refused: {e}");
        audit.reason = Some(e.reason().into());
        let _ = self.core.refuse(audit, e.reason());
        Refusal::Untrusted(e.to_string()).response()
    }

    async fn request(&self, request: Request, sender: peer::Sender, conn: &mut Conn) -> Response {
        let mut audit = audit_base(request.action.as_str(), sender.pid);
        audit.secrets_service = Some(clip(&request.service));
        audit.targets = request
            .targets
            .iter()
            .take(MAX_AUDIT_TARGETS)
            .map(|t| clip(t))
            .collect();
        let in_session = match (&request.session, &conn.session) {
            (Some(theirs), Some(ours)) if bool::from(theirs.as_bytes().ct_eq(ours.as_bytes())) => {
                true
            }
            (Some(_), _) => {
                let refusal = Refusal::Untrusted(
                    "the request names a session this connection did not open; send HELLO first"
                        .into(),
                );
                self.refused(audit, &refusal);
                return refusal.response();
            }
            (None, _) => false,
        };
        let remember = request.remember_secs;
        let checked = match check_request(request) {
            Ok(c) => c,
            Err(why) => {
                let refusal = Refusal::Malformed(why);
                self.refused(audit, &refusal);
                return refusal.response();
            }
        };
        let judged = match self.judge(conn).await {
            Ok(j) => j,
            Err(e) => return self.untrusted(audit, &e),
        };
        if let Err(e) = judged.check_sender(&sender) {
            return self.untrusted(audit, &e);
        }
        audit.caller_exe = Some(clip(&judged.exe_path));
        audit.caller_hash = Some(judged.binary.hash.clone());
        if self.is_nod_cli(&judged.binary) {
            if !in_session {
                let refusal =
                    Refusal::Untrusted("the nod command line always opens a session".into());
                self.refused(audit, &refusal);
                return refusal.response();
            }
            return self.cli_request(checked, &judged, remember, audit).await;
        }
        let entry = match lock(&self.policy).find(&judged.binary.hash) {
            Ok(e) => e,
            Err(e) => {
                event!("{e}");
                let refusal = Refusal::Internal(e.to_string());
                self.refused(audit, &refusal);
                return refusal.response();
            }
        };
        let Some(entry) = entry else {
            self.queue_pending(&judged, &checked);
            let refusal = Refusal::Unregistered(format!(
                "{} ({}) is not registered; it is listed in `nod list-pending`",
                judged.exe_path, judged.binary.hash
            ));
            self.refused(audit, &refusal);
            return refusal.response();
        };
        if !in_session && !entry.legacy_protocol {
            // A request sent before the agent looked may come from an image the process has
            // left since (send, then exec a registered binary).
            let refusal = Refusal::Untrusted(format!(
                "{} sent a request without a session; nod's clients open one with HELLO (a \
                 keychain-auth client needs `nod register --legacy-protocol`, see \
                 docs/security.md)",
                judged.exe_path
            ));
            self.refused(audit, &refusal);
            return refusal.response();
        }
        if let Err(refusal) = check_policy(&entry, &checked) {
            self.refused(audit, &refusal);
            return refusal.response();
        }
        self.execute(checked, audit, "policy").await
    }

    /// Runs a request that is allowed, once the grant is on record: a request whose line
    /// cannot be written is not served.
    async fn execute(&self, checked: CheckedRequest, audit: AuditEvent, why: &str) -> Response {
        if self.core.allow_by_policy(audit.clone(), why).is_err() {
            return Refusal::Internal(String::from(
                "the audit log cannot be written, so nothing is served; see the agent's log",
            ))
            .response();
        }
        let resp = match self.backend().await {
            Ok(Backend::File(store)) => Self::execute_file(&mut lock(store), checked),
            Ok(Backend::SecretService(keyring)) => Self::execute_keyring(keyring, checked).await,
            Err(e) => {
                event!("secrets: {e}");
                Refusal::Internal(e.to_string()).response()
            }
        };
        if resp.status != Status::Success {
            let reason = resp.reason_code().map(Reason::as_str);
            self.core.record(audit, Outcome::Failed, reason);
        }
        resp
    }

    /// Whether `binary` is `nod` (this binary, or another build of it, by its mark).
    fn is_nod_cli(&self, binary: &Binary) -> bool {
        binary.nod_cli
            || self
                .own
                .get_or_init(|| peer::own_binary(&self.hashes))
                .as_ref()
                .is_some_and(|o| o.hash == binary.hash)
    }

    /// A request of the `nod` command line: never by registration, since any script can run
    /// `nod`; the person is asked, with the chain of processes that ran it, unless they let
    /// that caller do this before (`--remember`).
    async fn cli_request(
        &self,
        checked: CheckedRequest,
        judged: &Judged,
        remember: Option<u64>,
        audit: AuditEvent,
    ) -> Response {
        let parent = judged.chain.get(1);
        let scope = CliScope {
            caller: CallerScope::of(parent.map(|p| p.pid), parent.and_then(|p| p.exe.clone())),
            service: checked.request.service.clone(),
            writes: matches!(checked.request.action, Action::Write | Action::Delete),
        };
        let now = std::time::Instant::now();
        let granted = scope.caller.known()
            && lock(&self.cli_grants)
                .get(&scope)
                .is_some_and(|until| *until > now);
        if granted {
            return self
                .execute(checked, audit, "remembered grant (nod command line)")
                .await;
        }
        let remember = remember.map(|s| s.clamp(1, MAX_CLI_REMEMBER.as_secs()));
        let prompt = Prompt::SecretsUse(SecretsUsePrompt {
            action: checked.request.action.as_str().to_owned(),
            service: checked.request.service.clone(),
            targets: checked.request.targets.clone(),
            process_chain: judged.chain.clone(),
            remember_secs: remember,
        });
        let ask = Ask {
            prompt,
            event: audit.clone(),
            deadline: tokio::time::Instant::now() + self.settings.prompt_timeout,
            required: self.settings.presence,
            rate_key: Some(format!("{:?}", scope.caller)),
            share_key: None,
        };
        let decision = self.core.decide(ask, std::future::pending()).await;
        if !decision.approved() {
            return Refusal::NotApproved(not_approved_why(&decision).into()).response();
        }
        if let Some(secs) = remember
            && scope.caller.known()
        {
            let mut grants = lock(&self.cli_grants);
            grants.retain(|_, until| *until > now);
            grants.insert(scope, now + Duration::from_secs(secs));
        }
        // The approval is on record; the backend's own failures are recorded after it.
        let resp = match self.backend().await {
            Ok(Backend::File(store)) => Self::execute_file(&mut lock(store), checked),
            Ok(Backend::SecretService(keyring)) => Self::execute_keyring(keyring, checked).await,
            Err(e) => {
                event!("secrets: {e}");
                Refusal::Internal(e.to_string()).response()
            }
        };
        if resp.status != Status::Success {
            let reason = resp.reason_code().map(Reason::as_str);
            self.core.record(audit, Outcome::Failed, reason);
        }
        resp
    }

    fn queue_pending(&self, caller: &Judged, req: &CheckedRequest) {
        let now = now_ms();
        let entry = PendingEntry {
            path: caller.exe_path.clone(),
            hash: caller.binary.hash.clone(),
            argv0: clip(&caller.argv0),
            first_seen_ms: now,
            last_seen_ms: now,
            interpreter: caller.binary.interpreter,
            requested: vec![format!(
                "{}:{}",
                req.request.action.as_str(),
                clip(&req.request.service)
            )],
        };
        if let Err(e) = lock(&self.pending).record(entry, now) {
            event!("secrets: cannot save the pending queue: {e}");
        }
    }

    /// Step 4, file backend.
    fn execute_file(store: &mut FileStore, req: CheckedRequest) -> Response {
        let CheckedRequest { request, prefix } = req;
        let service = request.service.as_str();
        let item = |t: &String, s: &store::StoredItem, with_value: bool| Item {
            target: t.clone(),
            value: with_value.then(|| s.value.clone()),
            attributes: s.attributes.clone(),
        };
        match (request.action, prefix) {
            (Action::Read, false) => {
                let mut results = Vec::new();
                for t in &request.targets {
                    match store.get(service, t) {
                        Some(s) => results.push(item(t, s, true)),
                        None => {
                            return Refusal::NotFound(format!("no item {:?}", clip(t))).response();
                        }
                    }
                }
                Response::success(results)
            }
            (Action::Read, true) => Response::success(
                store
                    .matching(service, &request.targets)
                    .map(|(t, s)| item(t, s, true))
                    .collect(),
            ),
            (Action::Search, _) => {
                let results = if prefix || request.targets.is_empty() {
                    store
                        .matching(service, &request.targets)
                        .map(|(t, s)| item(t, s, false))
                        .collect()
                } else {
                    request
                        .targets
                        .iter()
                        .filter_map(|t| store.get(service, t).map(|s| item(t, s, false)))
                        .collect()
                };
                Response::success(results)
            }
            (Action::Write, _) => {
                let items = request.targets.into_iter().zip(request.values).collect();
                let change = Change::Write {
                    items,
                    attributes: request.attributes,
                };
                Self::apply(store, service, change)
            }
            (Action::Delete, false) => {
                if let Some(t) = request
                    .targets
                    .iter()
                    .find(|t| store.get(service, t).is_none())
                {
                    return Refusal::NotFound(format!("no item {:?}", clip(t))).response();
                }
                let targets = request.targets;
                Self::apply(store, service, Change::Delete { targets })
            }
            (Action::Delete, true) => {
                let targets = store
                    .matching(service, &request.targets)
                    .map(|(t, _)| t.clone())
                    .collect();
                Self::apply(store, service, Change::Delete { targets })
            }
        }
    }

    /// Step 4, Secret Service backend.
    async fn execute_keyring(keyring: &SecretService, req: CheckedRequest) -> Response {
        let CheckedRequest { request, prefix } = req;
        let service = request.service.as_str();
        let result = match (request.action, prefix) {
            (Action::Read, false) => keyring.read(service, &request.targets).await,
            (Action::Read, true) => keyring.list(service, &request.targets, true).await,
            (Action::Search, true) => keyring.list(service, &request.targets, false).await,
            (Action::Search, false) if request.targets.is_empty() => {
                keyring.list(service, &[], false).await
            }
            (Action::Search, false) => keyring.list(service, &[], false).await.map(|all| {
                all.into_iter()
                    .filter(|i| request.targets.contains(&i.target))
                    .collect()
            }),
            (Action::Write, _) => {
                let items: Vec<_> = request.targets.into_iter().zip(request.values).collect();
                keyring
                    .write(service, &items, &request.attributes)
                    .await
                    .map(|()| Vec::new())
            }
            (Action::Delete, false) => keyring
                .delete(service, &request.targets)
                .await
                .map(|()| Vec::new()),
            (Action::Delete, true) => keyring
                .delete_prefix(service, &request.targets)
                .await
                .map(|()| Vec::new()),
        };
        match result {
            Ok(items) => Response::success(items),
            Err(KeyringError::NotFound(t)) => {
                Refusal::NotFound(format!("no item {:?}", clip(&t))).response()
            }
            Err(e) => {
                event!("secrets: {e}");
                Refusal::Internal(e.to_string()).response()
            }
        }
    }

    fn apply(store: &mut FileStore, service: &str, change: Change) -> Response {
        match store.apply(service, change) {
            Ok(()) => Response::success(Vec::new()),
            Err(e) => {
                event!("{e}");
                Refusal::Internal(String::from("the secrets store could not be written")).response()
            }
        }
    }

    // ---- CONTROL: policy changes and queries ----

    /// Who asks for a policy change: the connected process and its ancestors, for the
    /// prompt (`nod ← bash ← setup.sh`).
    fn requester(&self, conn: &Conn) -> Vec<ProcessLink> {
        match (&conn.judged, &conn.peer) {
            (Some(j), _) => j.chain.clone(),
            (None, Some(fd)) => crate::caller::pidfd::pid_of(fd)
                .map(|pid| crate::caller::chain::process_chain(pid, self.uid))
                .unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }

    async fn control(&self, control: Control, sender: peer::Sender, conn: &mut Conn) -> Response {
        let mut audit = audit_base("control", sender.pid);
        match control {
            Control::ListPending => {
                let mut resp = Response::success(Vec::new());
                resp.pending = Some(lock(&self.pending).list(now_ms()));
                resp
            }
            Control::Status => {
                let mut resp = Response::success(Vec::new());
                let mut status = serde_json::to_value(self.core.status()).unwrap_or_default();
                if let serde_json::Value::Object(map) = &mut status {
                    map.insert("pid".into(), std::process::id().into());
                    map.insert(
                        "secrets_backend".into(),
                        self.backend
                            .get()
                            .map_or("not chosen yet", Backend::name)
                            .into(),
                    );
                    map.insert("sockets".into(), self.sockets.clone());
                }
                resp.agent = Some(status);
                resp
            }
            Control::PolicyList => match lock(&self.policy).current() {
                Ok(entries) => {
                    let mut resp = Response::success(Vec::new());
                    resp.policy = Some(entries.to_vec());
                    resp
                }
                Err(e) => Refusal::Internal(e.to_string()).response(),
            },
            Control::Revoke { hash } => {
                audit.action = Some("revoke".into());
                audit.caller_hash = Some(clip(&hash));
                // Revoking only takes access away, so it needs no prompt.
                let resp = match lock(&self.policy).revoke(&hash) {
                    Ok(true) => Response::success(Vec::new()),
                    Ok(false) => Refusal::NotFound(format!("{hash} is not registered")).response(),
                    Err(e) => Refusal::Internal(e.to_string()).response(),
                };
                let outcome = if resp.status == Status::Success {
                    Outcome::Approved
                } else {
                    Outcome::Failed
                };
                self.core.record(audit, outcome, Some("revoke"));
                resp
            }
            Control::Register {
                path,
                read,
                write,
                search,
                legacy_protocol,
            } => {
                audit.action = Some("register".into());
                let g = Grant {
                    kind: GrantKind::Register,
                    path,
                    expected_hash: None,
                    read,
                    write,
                    search,
                    legacy_protocol,
                    requested_by: self.requester(conn),
                };
                self.grant(g, audit).await
            }
            Control::Approve {
                hash,
                read,
                write,
                search,
                legacy_protocol,
            } => {
                audit.action = Some("approve".into());
                let Some(p) = lock(&self.pending).get(&hash, now_ms()) else {
                    return Refusal::NotFound(format!(
                        "{hash} is not in the pending queue (see `nod list-pending`; entries \
                             expire after 24 h); use `nod register <path>` instead"
                    ))
                    .response();
                };
                let (mut read, mut write) = (read, write);
                if read.is_empty() && write.is_empty() && !search {
                    // Grant what it asked for, no more.
                    for r in &p.requested {
                        match r.split_once(':') {
                            Some(("read" | "search", s)) if !read.iter().any(|x| x == s) => {
                                read.push(s.to_owned())
                            }
                            Some(("write" | "delete", s)) if !write.iter().any(|x| x == s) => {
                                write.push(s.to_owned())
                            }
                            _ => {}
                        }
                    }
                }
                let g = Grant {
                    kind: GrantKind::Approve,
                    path: p.path,
                    expected_hash: Some(hash),
                    read,
                    write,
                    search,
                    legacy_protocol,
                    requested_by: self.requester(conn),
                };
                self.grant(g, audit).await
            }
            Control::Upgrade { path } => {
                audit.action = Some("upgrade".into());
                let requested_by = self.requester(conn);
                self.upgrade(&path, requested_by, audit).await
            }
        }
    }

    /// Looks at the file a policy change names (the agent's own look, off the runtime
    /// thread), refusing what can never be registered: `nod` itself, and scripts.
    async fn candidate(&self, path: &str) -> Result<peer::Candidate, Response> {
        let file = Path::new(path);
        if !file.is_absolute() {
            return Err(Refusal::Malformed(String::from("the path must be absolute")).response());
        }
        let owned = file.to_owned();
        let c = match tokio::task::spawn_blocking(move || peer::inspect_path(&owned)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(Refusal::NotFound(format!("cannot read {path}: {e}")).response());
            }
            Err(_) => return Err(Refusal::Internal(String::from("hashing failed")).response()),
        };
        if self.is_nod_cli(&c.binary) {
            return Err(Refusal::NotApproved(format!(
                "{path} is nod itself and cannot be registered: then any script could read the \
                 secrets through `nod secrets get`. Use `nod secrets get` as it is (the agent \
                 asks you each time, naming what ran it), or register the program that needs \
                 the secret"
            ))
            .response());
        }
        if c.script {
            return Err(Refusal::NotApproved(format!(
                "{path} is a script: the process that runs it is its interpreter, so its hash \
                 never matches; registering the interpreter instead would let every script it \
                 runs read the secrets. Register a compiled program, or read the secret with \
                 `nod secrets get` from the script (asked each time)"
            ))
            .response());
        }
        Ok(c)
    }

    /// Hashes the file the grant names (the agent's own look), asks the person, and
    /// registers it.
    async fn grant(&self, g: Grant, mut audit: AuditEvent) -> Response {
        if let Some(bad) = g.read.iter().chain(&g.write).find(|s| !valid_name(s)) {
            return Refusal::Malformed(format!("service {:?} is not a valid name", clip(bad)))
                .response();
        }
        let path = g.path.as_str();
        let c = match self.candidate(path).await {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        let hash = c.binary.hash.clone();
        if let Some(want) = &g.expected_hash
            && *want != hash
        {
            return Refusal::NotFound(format!(
                "{path} no longer has hash {want} (it is now {hash}); if the new file is the \
                 one you want, run `nod register {path}`"
            ))
            .response();
        }
        audit.caller_exe = Some(clip(path));
        audit.caller_hash = Some(hash.clone());
        let interpreter = c.binary.interpreter;
        let prompt = SecretsPrompt {
            path: path.to_owned(),
            hash: hash.clone(),
            previous_hash: None,
            read: g.read.clone(),
            write: g.write.clone(),
            search: g.search,
            interpreter,
            writable: c.writable,
            legacy_protocol: g.legacy_protocol,
            requested_by: g.requested_by,
        };
        let prompt = match g.kind {
            GrantKind::Register => Prompt::SecretsRegister(prompt),
            GrantKind::Approve => Prompt::SecretsApprove(prompt),
        };
        if let Err(resp) = self.ask(prompt, audit.clone()).await {
            return resp;
        }
        let entry = PolicyEntry {
            path: path.to_owned(),
            hash: hash.clone(),
            allowed_read_services: g.read,
            allowed_write_services: g.write,
            can_search: g.search,
            interpreter,
            legacy_protocol: g.legacy_protocol,
        };
        let mut resp = self.save_entry(entry, None, audit, interpreter);
        if c.writable && resp.status == Status::Success {
            resp.message = resp.message.map(|m| {
                format!(
                    "{m}. Note: you can write {path}, so anything running as you can replace it; \
                     a replaced file is refused until `nod upgrade {path}`"
                )
            });
        }
        resp
    }

    async fn upgrade(
        &self,
        path: &str,
        requested_by: Vec<ProcessLink>,
        mut audit: AuditEvent,
    ) -> Response {
        let old = match lock(&self.policy).current() {
            Ok(entries) => entries.iter().find(|e| e.path == path).cloned(),
            Err(e) => return Refusal::Internal(e.to_string()).response(),
        };
        let Some(old) = old else {
            return Refusal::NotFound(format!(
                "no registered binary at {path}; use `nod register {path}`"
            ))
            .response();
        };
        let c = match self.candidate(path).await {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        let hash = c.binary.hash.clone();
        if hash == old.hash {
            let mut resp = Response::success(Vec::new());
            resp.message = Some(format!("{path} has not changed; nothing to do"));
            return resp;
        }
        audit.caller_exe = Some(clip(path));
        audit.caller_hash = Some(hash.clone());
        let interpreter = old.interpreter || c.binary.interpreter;
        let prompt = Prompt::SecretsUpgrade(SecretsPrompt {
            path: path.to_owned(),
            hash: hash.clone(),
            previous_hash: Some(old.hash.clone()),
            read: old.allowed_read_services.clone(),
            write: old.allowed_write_services.clone(),
            search: old.can_search,
            interpreter,
            writable: c.writable,
            legacy_protocol: old.legacy_protocol,
            requested_by,
        });
        if let Err(resp) = self.ask(prompt, audit.clone()).await {
            return resp;
        }
        let entry = PolicyEntry {
            hash,
            interpreter,
            ..old.clone()
        };
        self.save_entry(entry, Some(&old.hash), audit, interpreter)
    }

    /// Asks the person, through the decision core; `Err` holds the refusal to send.
    async fn ask(&self, prompt: Prompt, audit: AuditEvent) -> Result<(), Response> {
        let kind = prompt.kind();
        let ask = Ask {
            prompt,
            event: audit,
            deadline: Instant::now() + self.settings.prompt_timeout,
            required: self.settings.presence,
            rate_key: None,
            share_key: None,
        };
        let decision = self.core.decide(ask, std::future::pending()).await;
        event!(
            "secrets: {kind}: {} (approver {})",
            crate::decision::decision_word(decision.outcome()),
            decision.approver()
        );
        if decision.approved() {
            return Ok(());
        }
        let why = not_approved_why(&decision);
        Err(Refusal::NotApproved(why.into()).response())
    }

    fn save_entry(
        &self,
        entry: PolicyEntry,
        replaces: Option<&str>,
        audit: AuditEvent,
        interpreter: bool,
    ) -> Response {
        let hash = entry.hash.clone();
        let saved = {
            let mut policy = lock(&self.policy);
            match replaces {
                Some(old) => policy.replace(old, entry),
                None => policy.upsert(entry),
            }
        };
        if let Err(e) = saved {
            event!("{e}");
            self.core
                .record(audit, Outcome::Failed, Some(Reason::InternalError.as_str()));
            return Refusal::Internal(policy_message(&e)).response();
        }
        if let Err(e) = lock(&self.pending).remove(&hash) {
            event!("secrets: cannot save the pending queue: {e}");
        }
        drop(audit);
        let mut resp = Response::success(Vec::new());
        resp.message = Some(if interpreter {
            format!(
                "registered {hash}. WARNING: this is an interpreter, so every script it runs has \
                 these grants"
            )
        } else {
            format!("registered {hash}")
        });
        resp
    }
}

/// Why a prompt did not approve, for the person who ran the command.
fn not_approved_why(decision: &Decision) -> &'static str {
    match (decision.outcome(), decision.reason()) {
        (Outcome::Denied, _) => "the person said no",
        (Outcome::Cancelled, _) => "the prompt was cancelled",
        (_, Some("audit_failed")) => "the audit log cannot be written",
        (_, Some("rate_limited")) => {
            "too many prompts from this caller in a short time; wait a minute, or approve once \
             with `nod secrets --remember DURATION …`"
        }
        (_, Some("presence_unavailable")) => {
            "this needs verified presence (a password or a fingerprint), and no approver here \
             can ask for it"
        }
        (Outcome::Unavailable, _) => {
            "nobody could be asked (no approver reaches you: see `nod doctor`)"
        }
        _ => "the approver failed or timed out",
    }
}

/// The longest a `nod secrets … --remember` grant lasts.
const MAX_CLI_REMEMBER: Duration = Duration::from_secs(8 * 3600);

/// What a grant to the `nod` command line covers: the program that ran `nod` (and where),
/// one service, reads or writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CliScope {
    caller: CallerScope,
    service: String,
    writes: bool,
}

/// One connection's state: the process that made it, and once judged, what it runs.
#[derive(Debug)]
struct Conn {
    /// The kernel's pidfd of the connecting process, until it is judged.
    peer: Option<std::os::fd::OwnedFd>,
    judged: Option<Arc<Judged>>,
    /// The session id `HELLO` gave out.
    session: Option<String>,
}

fn policy_message(e: &PolicyError) -> String {
    e.to_string()
}

#[derive(Debug, Clone, Copy)]
enum GrantKind {
    Register,
    Approve,
}

/// A policy change that gives a binary access, as the person is to see it.
#[derive(Debug)]
struct Grant {
    kind: GrantKind,
    path: String,
    /// `nod approve <hash>`: the file must still have the hash that was queued.
    expected_hash: Option<String>,
    read: Vec<String>,
    write: Vec<String>,
    search: bool,
    legacy_protocol: bool,
    requested_by: Vec<ProcessLink>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use nod_client::proto::SecretValue;

    fn req(action: Action, targets: &[&str]) -> Request {
        let mut r = Request::new(action, "aws");
        r.targets = targets.iter().map(|s| s.to_string()).collect();
        r
    }

    fn entry(read: &[&str], write: &[&str], search: bool) -> PolicyEntry {
        PolicyEntry {
            path: "/x".into(),
            hash: "sha256:00".into(),
            allowed_read_services: read.iter().map(|s| s.to_string()).collect(),
            allowed_write_services: write.iter().map(|s| s.to_string()).collect(),
            can_search: search,
            interpreter: false,
            legacy_protocol: false,
        }
    }

    #[test]
    fn every_refusal_maps_to_one_status_and_reason() {
        let m = || "m".to_string();
        let cases = [
            (
                Refusal::Malformed(m()),
                Status::Error,
                Reason::MalformedRequest,
            ),
            (Refusal::OtherUid, Status::Denied, Reason::ServiceNotAllowed),
            (
                Refusal::Unregistered(m()),
                Status::Denied,
                Reason::UnregisteredBinary,
            ),
            (
                Refusal::ServiceNotAllowed,
                Status::Denied,
                Reason::ServiceNotAllowed,
            ),
            (
                Refusal::ActionNotInPolicy,
                Status::Denied,
                Reason::ActionNotInPolicy,
            ),
            (Refusal::NotFound(m()), Status::Error, Reason::NotFound),
            (
                Refusal::NotApproved(m()),
                Status::Denied,
                Reason::NotApproved,
            ),
            (Refusal::Internal(m()), Status::Error, Reason::InternalError),
            (
                Refusal::Untrusted(m()),
                Status::Denied,
                Reason::UntrustedCaller,
            ),
        ];
        for (refusal, status, reason) in cases {
            // Exhaustive: a new variant must be added here (and to the mapping).
            match &refusal {
                Refusal::Malformed(_)
                | Refusal::OtherUid
                | Refusal::Unregistered(_)
                | Refusal::ServiceNotAllowed
                | Refusal::ActionNotInPolicy
                | Refusal::NotFound(_)
                | Refusal::NotApproved(_)
                | Refusal::Untrusted(_)
                | Refusal::Internal(_) => {}
            }
            let resp = refusal.response();
            assert_eq!(
                (resp.status, resp.reason_code()),
                (status, Some(reason)),
                "{refusal:?}"
            );
            assert_eq!(
                refusal.audit_reason() == reason.as_str(),
                refusal != Refusal::OtherUid
            );
        }
    }

    #[test]
    fn checks_write_alignment_and_prefix_rules() {
        let mut w = req(Action::Write, &["a", "b"]);
        w.values = vec![SecretValue::new("1")];
        assert!(
            check_request(w.clone())
                .unwrap_err()
                .contains("as many values")
        );
        w.values.push(SecretValue::new("2"));
        assert!(check_request(w.clone()).is_ok());
        w.match_ = Some(Match::Prefix);
        assert!(check_request(w).is_err());
        assert!(check_request(req(Action::Read, &[])).is_err());
        assert!(check_request(req(Action::Delete, &[])).is_err());
        assert!(check_request(req(Action::Search, &[])).is_ok());
        let mut r = req(Action::Read, &["a"]);
        r.values = vec![SecretValue::new("x")];
        assert!(check_request(r).is_err());
        assert!(check_request(req(Action::Read, &["a", "a"])).is_err());
        assert!(check_request(req(Action::Read, &["a\nb"])).is_err());
        let mut r = req(Action::Read, &["a"]);
        r.service = String::new();
        assert!(check_request(r).is_err());
    }

    #[test]
    fn policy_needs_the_service_and_can_search_for_prefix_and_search() {
        let e = entry(&["aws"], &[], false);
        let read = check_request(req(Action::Read, &["k"])).unwrap();
        assert_eq!(check_policy(&e, &read), Ok(()));
        let mut p = req(Action::Read, &["k"]);
        p.match_ = Some(Match::Prefix);
        let prefix = check_request(p).unwrap();
        assert_eq!(check_policy(&e, &prefix), Err(Refusal::ActionNotInPolicy));
        let search = check_request(req(Action::Search, &[])).unwrap();
        assert_eq!(check_policy(&e, &search), Err(Refusal::ActionNotInPolicy));
        let mut w = req(Action::Write, &["k"]);
        w.values = vec![SecretValue::new("v")];
        let write = check_request(w).unwrap();
        assert_eq!(check_policy(&e, &write), Err(Refusal::ServiceNotAllowed));
        let e = entry(&["aws"], &["aws"], true);
        assert_eq!(check_policy(&e, &prefix), Ok(()));
        assert_eq!(check_policy(&e, &search), Ok(()));
        assert_eq!(check_policy(&e, &write), Ok(()));
        // Exact service match: `aws` grants nothing on `aws:prod`.
        let mut other = req(Action::Read, &["k"]);
        other.service = "aws:prod".into();
        let other = check_request(other).unwrap();
        assert_eq!(check_policy(&e, &other), Err(Refusal::ServiceNotAllowed));
    }
}
