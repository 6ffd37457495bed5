//! Test harness: a real approval service on a Unix socket in a temp dir, approving through the
//! `command` approver with a small shell script, and a client that signs requests with a test
//! host key through nod-proto.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nod_agent::approvers::command::CommandApprover;
use nod_agent::audit::AuditLog;
use nod_agent::decision::{Core, RateSettings};
use nod_agent::keystore::{AgentKeySlot, Keystore};
use nod_agent::now_ms;
use nod_agent::pam::hosts::{HostAllowlist, HostsFile};
use nod_agent::pam::{ApprovalService, ApprovalSettings};
use nod_agent::paths::Paths;
use nod_proto::keys::openssh_public_line;
use nod_proto::{
    Alg, KeyId, PinnedKey, RequestBody, SignedRequest, SignedResponse, SigningKey,
    VerifiedResponse, VerifyingKey, frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

pub const HOST_ID: &str = "web-1";

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let mut r = [0u8; 6];
        getrandom::getrandom(&mut r).unwrap();
        let dir = std::env::temp_dir().join(format!("nod-{tag}-{}", hex::encode(r)));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub struct Harness {
    pub dir: TempDir,
    pub paths: Paths,
    pub socket: PathBuf,
    pub host_key: SigningKey,
    pub agent_pub: VerifyingKey,
    pub agent_key_id: KeyId,
    pub service: Arc<ApprovalService>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Harness {
    /// Marker file the approver script touches when it runs.
    pub fn marker(&self) -> PathBuf {
        self.dir.0.join("approver-ran")
    }

    /// Where the approver script saves the prompt JSON it received.
    pub fn prompt_file(&self) -> PathBuf {
        self.dir.0.join("prompt.json")
    }

    pub fn approver_ran(&self) -> bool {
        self.marker().exists()
    }

    /// How many times the approver ran.
    pub fn approver_runs(&self) -> usize {
        fs::read_to_string(self.marker())
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

/// Starts a service whose approver runs `sh -c "<save prompt>; <mark>; <script>"`.
pub async fn start(script: &str) -> Harness {
    start_with(script, ApprovalSettings::default(), true).await
}

pub async fn start_with(script: &str, settings: ApprovalSettings, allow_host: bool) -> Harness {
    start_rated(script, settings, RateSettings::default(), allow_host).await
}

/// A harness whose decision core limits prompts to `rate`.
pub async fn start_rated(
    script: &str,
    settings: ApprovalSettings,
    rate: RateSettings,
    allow_host: bool,
) -> Harness {
    let dir = TempDir::new("agent");
    let paths = Paths::under(&dir.0);
    let host_key = SigningKey::from_bytes(&[0x11; 32]);
    if allow_host {
        let mut hosts = HostsFile::default();
        let line = openssh_public_line(&host_key.verifying_key(), "root@web-1");
        // Pinned with the key id the requests claim, so a wrong one can be tested.
        let key_id = KeyId::fingerprint(&host_key.verifying_key());
        hosts
            .add(HOST_ID, &line, Path::new("host.pub"), Some(key_id.as_str()))
            .unwrap();
        hosts.save(&paths.hosts_file()).unwrap();
    }
    let full = format!(
        "cat > '{}'; echo run >> '{}'; {script}",
        dir.0.join("prompt.json").display(),
        dir.0.join("approver-ran").display()
    );
    let approver = CommandApprover::new(vec!["/bin/sh".into(), "-c".into(), full]).expect("argv");
    let keystore = Keystore::open(&paths);
    let agent_key = keystore.agent_key().unwrap();
    let agent_pub = agent_key.public_key();
    let agent_key_id = agent_key.key_id().clone();
    let core = Core::new(
        vec![Arc::new(approver)],
        Arc::new(AuditLog::open(&paths.audit_log()).unwrap()),
        rate,
    );
    let service = Arc::new(ApprovalService::new(
        Arc::new(AgentKeySlot::with_key(keystore, agent_key)),
        HostAllowlist::open(&paths.hosts_file()),
        Arc::new(core),
        settings,
    ));
    let socket = paths.approval_socket().unwrap();
    fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let listener = UnixListener::bind(&socket).unwrap();
    let task = tokio::spawn(
        Arc::clone(&service).serve(nod_agent::socket::Capped::new(listener, 1024, "approval")),
    );
    Harness {
        dir,
        paths,
        socket,
        host_key,
        agent_pub,
        agent_key_id,
        service,
        task,
    }
}

/// A request body from `web-1`, created now, valid for `life_ms`.
pub fn body(h: &Harness, request_id: &str, life_ms: u64) -> RequestBody {
    let now = now_ms();
    let mut nonce = [0u8; 32];
    getrandom::getrandom(&mut nonce).unwrap();
    RequestBody {
        protocol_version: 1,
        request_id: request_id.into(),
        nonce,
        created_at_ms: now,
        expires_at_ms: now + life_ms,
        linux_host_id: HOST_ID.into(),
        linux_hostname: "web-1.example.com".into(),
        pam_service: "sudo".into(),
        pam_user: "alice".into(),
        pam_ruser: Some("alice".into()),
        pam_rhost: Some("10.0.0.5".into()),
        pam_tty: Some("/dev/pts/3".into()),
        sudo_command: Some("/usr/bin/apt upgrade".into()),
        client_pid: Some(4242),
        key_id: KeyId::fingerprint(&h.host_key.verifying_key())
            .as_str()
            .to_owned(),
        alg: Alg::Ed25519,
    }
}

pub fn signed(h: &Harness, request_id: &str) -> SignedRequest {
    body(h, request_id, 20_000).sign(&h.host_key)
}

/// Writes `bytes`, then reads until the agent closes. Empty = closed without a reply.
pub async fn exchange_raw(socket: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    // The agent may close before reading everything; that is its right.
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut out))
        .await
        .expect("agent neither replied nor closed within 15 s");
    out
}

/// Sends a request; `None` when the agent closed without replying.
pub async fn ask(h: &Harness, request: &SignedRequest) -> Option<SignedResponse> {
    let bytes = frame::encode(&request.to_json()).unwrap();
    let reply = exchange_raw(&h.socket, &bytes).await;
    if reply.is_empty() {
        return None;
    }
    let payload = frame::decode(&reply).expect("one well-formed reply frame");
    Some(SignedResponse::from_json(payload).expect("a v1 response"))
}

/// Verifies a response as nod-helper would: agent key pinned, bound to the request, fresh.
pub fn verify(h: &Harness, request: &SignedRequest, response: SignedResponse) -> VerifiedResponse {
    response
        .verify(
            &[PinnedKey {
                key: h.agent_pub,
                key_id: Some(h.agent_key_id.clone()),
            }],
            &request.body,
            now_ms(),
            30_000,
        )
        .expect("response verifies under the agent key and binds to the request")
}

/// The audit log's lines as JSON.
pub fn audit_lines(h: &Harness) -> Vec<serde_json::Value> {
    fs::read_to_string(h.paths.audit_log())
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
