//! `session-bind@openssh.com` and `query` against the real `nod agent`, with hand-made agent
//! messages, and what the confirm prompt says: destination, forwarding, purpose, process
//! chain. Also `git commit -S` with `gpg.format=ssh` through the agent, verified by
//! `git verify-commit`.
//!
//! Without `ssh-add`/`ssh-keygen` (or `git` for the git test) the tests are skipped with a
//! notice, except under `CI=true`, where they fail.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;

mod common;

use common::{TempDir, out};

fn have(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !["/usr/local/bin", "/usr/bin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(t).exists())
        })
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{missing:?} required under CI=true (apt-get install openssh-client git)"
        );
        eprintln!("skipped: {missing:?} not installed (apt-get install openssh-client git)");
    }
    missing.is_empty()
}

/// A running `nod agent` whose command approver records the prompt and answers from a file.
struct Agent {
    _agent: common::Agent,
    prompt: PathBuf,
    answer: PathBuf,
}

impl Agent {
    fn start(dir: &TempDir) -> Self {
        let approver = dir.path("approve.sh");
        let prompt = dir.path("prompt.json");
        let answer = dir.path("answer");
        fs::write(&answer, "0").unwrap();
        common::write_script(
            &approver,
            &format!(
                "cat > '{}'\nexit \"$(cat '{}')\"",
                prompt.display(),
                answer.display()
            ),
        );
        Self {
            _agent: common::Agent::start(dir, Some(&approver)),
            prompt,
            answer,
        }
    }

    fn prompt(&self) -> serde_json::Value {
        serde_json::from_slice(&fs::read(&self.prompt).expect("the approver was asked")).unwrap()
    }
}

fn tool(dir: &TempDir, program: &str) -> Command {
    let mut cmd = common::tool(dir, program);
    cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin");
    cmd
}

/// Generates a key; returns the private key's path and the public key's wire blob.
fn keygen(dir: &TempDir, name: &str) -> (PathBuf, Vec<u8>) {
    let path = dir.path(name);
    let o = tool(dir, "ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("{name}@nod-test"))
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let public = fs::read_to_string(path.with_extension("pub")).unwrap();
    let b64 = public.split_whitespace().nth(1).unwrap();
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    (path, blob)
}

fn ssh_add(dir: &TempDir, flags: &[&str], key: &Path) {
    let o = tool(dir, "ssh-add").args(flags).arg(key).output().unwrap();
    assert!(o.status.success(), "{}", out(&o));
}

fn string(bytes: &[u8]) -> Vec<u8> {
    let mut v = u32::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(bytes);
    v
}

/// One agent connection speaking raw frames.
struct Conn(UnixStream);

impl Conn {
    fn open(dir: &TempDir) -> Self {
        let s = UnixStream::connect(dir.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self(s)
    }

    /// Sends one message body; returns the reply body.
    fn ask(&mut self, body: &[u8]) -> Vec<u8> {
        self.0.write_all(&string(body)).unwrap();
        let mut len = [0u8; 4];
        self.0.read_exact(&mut len).unwrap();
        let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
        self.0.read_exact(&mut reply).unwrap();
        reply
    }

    /// SSH_AGENTC_SIGN_REQUEST; returns the signature blob, or `None` on FAILURE.
    fn sign(&mut self, key_blob: &[u8], data: &[u8]) -> Option<Vec<u8>> {
        let mut m = vec![13];
        m.extend(string(key_blob));
        m.extend(string(data));
        m.extend(0u32.to_be_bytes());
        let reply = self.ask(&m);
        match reply[0] {
            14 => Some(reply[5..].to_vec()),
            5 => None,
            other => panic!("unexpected reply type {other}"),
        }
    }
}

const FAILURE: u8 = 5;
const EXTENSION_RESPONSE: u8 = 29;

fn bind_message(host_blob: &[u8], session_id: &[u8], sig_blob: &[u8], fwd: bool) -> Vec<u8> {
    let mut m = vec![27];
    m.extend(string(b"session-bind@openssh.com"));
    m.extend(string(host_blob));
    m.extend(string(session_id));
    m.extend(string(sig_blob));
    m.push(u8::from(fwd));
    m
}

fn userauth_request(session_id: &[u8], user: &str, key_blob: &[u8]) -> Vec<u8> {
    let mut d = string(session_id);
    d.push(50);
    d.extend(string(user.as_bytes()));
    d.extend(string(b"ssh-connection"));
    d.extend(string(b"publickey"));
    d.push(1);
    d.extend(string(b"ssh-ed25519"));
    d.extend(string(key_blob));
    d
}

#[test]
fn bad_session_bind_fails_and_poisons_only_its_connection() {
    if !have(&["ssh-add", "ssh-keygen"]) {
        return;
    }
    let dir = TempDir::new("nod-bind", &["home/.ssh"]);
    let _agent = Agent::start(&dir);
    let (key, key_blob) = keygen(&dir, "id_user");
    ssh_add(&dir, &[], &key);
    let (_, host_blob) = keygen(&dir, "host");

    let mut conn = Conn::open(&dir);
    let mut bad_sig = string(b"ssh-ed25519");
    bad_sig.extend(string(&[0x42; 64]));
    let reply = conn.ask(&bind_message(&host_blob, &[7; 32], &bad_sig, false));
    // SSH_AGENT_EXTENSION_FAILURE, as OpenSSH's agent answers a bind it refuses.
    assert_eq!(reply, [28]);
    assert_eq!(
        conn.sign(&key_blob, b"anything"),
        None,
        "poisoned connection"
    );

    // Garbage after the type is FAILURE too, and other clients are served.
    assert_eq!(Conn::open(&dir).ask(&[27, 0, 0]), [FAILURE]);
    assert!(Conn::open(&dir).sign(&key_blob, b"anything").is_some());
    let log = fs::read_to_string(dir.path("agent.log")).unwrap();
    assert!(log.contains("does not verify"), "{log}");
}

#[test]
fn query_lists_extensions_and_unknown_ones_fail() {
    if !have(&["ssh-add", "ssh-keygen"]) {
        return;
    }
    let dir = TempDir::new("nod-bind", &["home/.ssh"]);
    let _agent = Agent::start(&dir);
    let mut conn = Conn::open(&dir);
    let mut query = vec![27];
    query.extend(string(b"query"));
    let reply = conn.ask(&query);
    assert_eq!(reply[0], EXTENSION_RESPONSE, "{reply:?}");
    let mut rest = &reply[1..];
    let mut names = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        names.push(String::from_utf8(rest[4..4 + len].to_vec()).unwrap());
        rest = &rest[4 + len..];
    }
    assert_eq!(
        names[0], "query",
        "the reply names its extension: {names:?}"
    );
    assert!(names[1..].contains(&"query".to_owned()), "{names:?}");
    assert!(
        names[1..].contains(&"session-bind@openssh.com".to_owned()),
        "{names:?}"
    );
    let mut unknown = vec![27];
    unknown.extend(string(b"no-such-extension@example.com"));
    assert_eq!(conn.ask(&unknown), [FAILURE]);
}

#[test]
fn prompt_shows_bound_destination_forwarding_purpose_and_chain() {
    if !have(&["ssh-add", "ssh-keygen"]) {
        return;
    }
    let dir = TempDir::new("nod-bind", &["home/.ssh"]);
    let agent = Agent::start(&dir);
    let (host, host_blob) = keygen(&dir, "host");
    let (user, user_blob) = keygen(&dir, "id_user");
    // The "server" key signs its own session id through the agent, so the bind is genuine.
    ssh_add(&dir, &[], &host);
    ssh_add(&dir, &["-c"], &user);
    let host_pub = fs::read_to_string(host.with_extension("pub")).unwrap();
    fs::write(
        dir.path("home/.ssh/known_hosts"),
        format!("server.nod.test,10.9.8.7 {host_pub}"),
    )
    .unwrap();

    // A forwarding hop, then the login's own session, as ssh -A then ssh on the far side.
    let mut conn = Conn::open(&dir);
    let hop = [10u8; 32];
    let sig = conn.sign(&host_blob, &hop).expect("host key signs");
    assert_eq!(conn.ask(&bind_message(&host_blob, &hop, &sig, true)), [6]);
    let sid = [9u8; 32];
    let sig = conn.sign(&host_blob, &sid).expect("host key signs");
    assert_eq!(conn.ask(&bind_message(&host_blob, &sid, &sig, false)), [6]);

    fs::write(&agent.answer, "0").unwrap();
    let data = userauth_request(&sid, "alice", &user_blob);
    assert!(conn.sign(&user_blob, &data).is_some());
    let p = agent.prompt();
    assert_eq!(p["purpose"], "ssh login as alice", "{p}");
    assert_eq!(p["forwarded"], true, "{p}");
    assert_eq!(
        p["destination"]["names"],
        serde_json::json!(["server.nod.test", "10.9.8.7"]),
        "{p}"
    );
    assert!(
        p["destination"]["host_key_fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("SHA256:")),
        "{p}"
    );
    let chain = p["process_chain"].as_array().unwrap();
    assert_eq!(chain[0]["pid"], std::process::id(), "{p}");

    // A login for another session than the bound one is refused without asking.
    fs::remove_file(&agent.prompt).unwrap();
    let other = userauth_request(&[8; 32], "alice", &user_blob);
    assert_eq!(conn.sign(&user_blob, &other), None);
    assert!(!agent.prompt.exists(), "refused before any prompt");

    // Unbound: no destination, not forwarded; an SSHSIG blob names its namespace.
    let mut sshsig = b"SSHSIG".to_vec();
    for field in [&b"file"[..], b"", b"sha512", &[1; 64]] {
        sshsig.extend(string(field));
    }
    assert!(Conn::open(&dir).sign(&user_blob, &sshsig).is_some());
    let p = agent.prompt();
    assert_eq!(p["purpose"], "sshsig namespace file", "{p}");
    assert_eq!(p["forwarded"], false, "{p}");
    assert!(p["destination"].is_null(), "{p}");
}

#[test]
fn git_commit_signed_through_the_agent_verifies() {
    if !have(&["ssh-add", "ssh-keygen", "git"]) {
        return;
    }
    let dir = TempDir::new("nod-bind", &["home/.ssh"]);
    let agent = Agent::start(&dir);
    let (key, _) = keygen(&dir, "id_git");
    ssh_add(&dir, &["-c"], &key);
    // Only the agent can sign now.
    fs::remove_file(&key).unwrap();
    let public = fs::read_to_string(key.with_extension("pub")).unwrap();
    let allowed = dir.path("allowed_signers");
    fs::write(&allowed, format!("git@nod.test {public}")).unwrap();
    let repo = dir.path("repo");
    let git = |args: &[&str]| {
        let o = tool(&dir, "git")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "nod test")
            .env("GIT_AUTHOR_EMAIL", "git@nod.test")
            .env("GIT_COMMITTER_NAME", "nod test")
            .env("GIT_COMMITTER_EMAIL", "git@nod.test")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {}", out(&o));
        o
    };
    fs::create_dir_all(&repo).unwrap();
    git(&["init", "-q"]);
    git(&["config", "gpg.format", "ssh"]);
    git(&[
        "config",
        "user.signingkey",
        key.with_extension("pub").to_str().unwrap(),
    ]);
    git(&[
        "config",
        "gpg.ssh.allowedSignersFile",
        allowed.to_str().unwrap(),
    ]);
    git(&["commit", "-q", "-S", "--allow-empty", "-m", "signed by nod"]);
    let o = git(&["verify-commit", "-v", "HEAD"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Good \"git\" signature"),
        "{}",
        out(&o)
    );
    let p = agent.prompt();
    assert_eq!(p["purpose"], "sshsig namespace git", "{p}");
    let comms: Vec<&str> = p["process_chain"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["comm"].as_str())
        .collect();
    assert_eq!(comms.first(), Some(&"ssh-keygen"), "{p}");
    assert!(comms.contains(&"git"), "{p}");
}
