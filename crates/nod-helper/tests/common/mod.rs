//! Shared fixtures for the `nod-helper` end-to-end tests: a root-owned scratch tree the helper
//! trusts, and a fake agent on a Unix socket that answers with responses signed by a test key.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nod_proto::frame::{read_frame, write_frame};
use nod_proto::keys::{format_private_key_file, format_public_key_file};
use nod_proto::{
    AuthMethod, Decision, KeyId, PinnedKey, ResponseBody, SignedRequest, SignedResponse,
    SigningKey, VerifiedRequest,
};

pub const HOST_ID: &str = "test-host";

pub fn host_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

pub fn agent_key() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}

pub fn other_key() -> SigningKey {
    SigningKey::from_bytes(&[3; 32])
}

pub fn key_id(key: &SigningKey) -> KeyId {
    KeyId::fingerprint(&key.verifying_key())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A root-owned directory under /run that the helper's fd walk trusts, removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Scratch {
    /// `None` (with a notice) when not root, except under CI=true where that is a failure:
    /// the trusted-path checks can only be exercised on root-owned files.
    pub fn new() -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "nod-helper tests need root (they build root-owned trusted dirs under /run); \
                     CI=true, so refusing to skip — run them as root, e.g. in the CI container"
                );
            }
            eprintln!("skipping: nod-helper end-to-end tests need root");
            return None;
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/run/nod-helper-tests-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let s = Self { dir };
        s.write(
            "host.key",
            format_private_key_file(&host_key()).as_str(),
            0o600,
        );
        s.write_pub("agent.pub", &agent_key());
        s.write_config("");
        Some(s)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn write(&self, rel: &str, contents: &str, mode: u32) -> PathBuf {
        let p = self.path(rel);
        fs::write(&p, contents).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    pub fn write_pub(&self, rel: &str, key: &SigningKey) -> PathBuf {
        let vk = key.verifying_key();
        let text = format_public_key_file(&vk, &KeyId::fingerprint(&vk), "test agent");
        self.write(rel, &text, 0o644)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("config.toml")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.path("agent.sock")
    }

    /// The standard config with `extra` lines appended; `{dir}` in `extra` is the scratch dir.
    pub fn write_config(&self, extra: &str) {
        self.write_config_with("agent.sock", "agent.pub", extra);
    }

    pub fn write_config_with(&self, socket: &str, agent_pub: &str, extra: &str) {
        let d = self.dir.display();
        let text = format!(
            "socket_path = \"{d}/{socket}\"\nhost_key_file = \"{d}/host.key\"\n\
             agent_pubkey_file = \"{d}/{agent_pub}\"\nhost_id = \"{HOST_ID}\"\n{}\n",
            extra.replace("{dir}", &d.to_string())
        );
        self.write("config.toml", &text, 0o644);
    }

    /// `nod-helper request` for root with every optional field set, plus `extra` args.
    pub fn request(&self, extra: &[&str]) -> Output {
        let config = self.config_path();
        let mut args = vec![
            "request",
            "--config",
            config.to_str().unwrap(),
            "--user",
            "root",
            "--ruser",
            "alice",
            "--rhost",
            "10.0.0.7",
            "--tty",
            "pts/3",
            "--sudo-command",
            "/usr/bin/systemctl restart nginx",
        ];
        if !extra.contains(&"--timeout-ms") {
            args.extend_from_slice(&["--timeout-ms", "5000"]);
        }
        args.extend_from_slice(extra);
        helper(&args)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn helper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nod-helper"))
        .args(args)
        .env_clear()
        .output()
        .expect("run nod-helper")
}

/// Asserts the exit code, showing stderr on failure; returns stderr.
#[track_caller]
pub fn assert_exit(out: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}, got {:?}; stderr: {stderr}",
        out.status
    );
    stderr
}

/// What the fake agent does with a connection.
pub enum Reply {
    /// Send this payload as one frame.
    Frame(Vec<u8>),
    /// Send these bytes as they are.
    Raw(Vec<u8>),
    /// Say nothing and keep the connection open until the helper hangs up.
    Silent,
    /// Send these bytes, then nothing more, keeping the connection open until the helper
    /// hangs up: a reply that stalls halfway.
    Stall(Vec<u8>),
}

/// What the fake agent saw.
pub struct Seen {
    pub request: VerifiedRequest,
    pub reply: Vec<u8>,
}

/// A fake agent that accepts one connection on `socket`, checks the request with the host key
/// like `nod agent` would (pinned under its fingerprint, the helper's default key id), and
/// answers with whatever `respond` returns.
pub fn agent<F>(socket: &Path, respond: F) -> Receiver<Result<Seen, String>>
where
    F: FnOnce(&VerifiedRequest) -> Reply + Send + 'static,
{
    let host = PinnedKey {
        key: host_key().verifying_key(),
        key_id: Some(key_id(&host_key())),
    };
    agent_pinning(socket, host, respond)
}

/// [`agent`] with the host key pinned as `host`.
pub fn agent_pinning<F>(
    socket: &Path,
    host: PinnedKey,
    respond: F,
) -> Receiver<Result<Seen, String>>
where
    F: FnOnce(&VerifiedRequest) -> Reply + Send + 'static,
{
    let listener = UnixListener::bind(socket).unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let result = serve(&listener, &host, respond);
        let _ = tx.send(result);
    });
    rx
}

fn serve<F>(listener: &UnixListener, host: &PinnedKey, respond: F) -> Result<Seen, String>
where
    F: FnOnce(&VerifiedRequest) -> Reply,
{
    let (mut conn, _) = listener.accept().map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let payload = read_frame(&mut conn).map_err(|e| e.to_string())?;
    let request = SignedRequest::from_json(&payload)
        .and_then(|r| r.verify(host, now_ms(), 30_000))
        .map_err(|e| format!("agent rejected the helper's request: {e}"))?;
    let reply = match respond(&request) {
        Reply::Frame(p) => {
            write_frame(&mut conn, &p).map_err(|e| e.to_string())?;
            p
        }
        Reply::Raw(bytes) => {
            use std::io::Write;
            conn.write_all(&bytes).map_err(|e| e.to_string())?;
            bytes
        }
        Reply::Silent => {
            // Wait for the helper to give up and close its end.
            let mut sink = Vec::new();
            let _ = conn.read_to_end(&mut sink);
            Vec::new()
        }
        Reply::Stall(bytes) => {
            use std::io::Write;
            conn.write_all(&bytes).map_err(|e| e.to_string())?;
            let mut sink = Vec::new();
            let _ = conn.read_to_end(&mut sink);
            bytes
        }
    };
    Ok(Seen { request, reply })
}

/// An agent that accepts and closes without reading or replying (sshd forward, agent down).
pub fn closing_agent(socket: &Path) -> Receiver<()> {
    let listener = UnixListener::bind(socket).unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        if let Ok((conn, _)) = listener.accept() {
            drop::<UnixStream>(conn);
        }
        let _ = tx.send(());
    });
    rx
}

pub fn wait(rx: &Receiver<Result<Seen, String>>) -> Seen {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("fake agent finished")
        .expect("fake agent saw a valid request")
}

/// A response to `req` signed by `key` under its fingerprint id.
pub fn answer(req: &VerifiedRequest, decision: Decision, key: &SigningKey) -> ResponseBody {
    ResponseBody::answering(
        req,
        decision,
        AuthMethod::Unknown,
        key_id(key).as_str(),
        now_ms(),
    )
}

pub fn signed(body: ResponseBody, key: &SigningKey) -> Vec<u8> {
    body.sign(key).to_json()
}

pub fn decide(decision: Decision) -> impl FnOnce(&VerifiedRequest) -> Reply + Send + 'static {
    move |req| Reply::Frame(signed(answer(req, decision, &agent_key()), &agent_key()))
}

pub fn tamper(
    edit: impl FnOnce(&mut SignedResponse) + Send + 'static,
) -> impl FnOnce(&VerifiedRequest) -> Reply + Send + 'static {
    move |req| {
        let mut resp = answer(req, Decision::Approved, &agent_key()).sign(&agent_key());
        edit(&mut resp);
        Reply::Frame(resp.to_json())
    }
}
