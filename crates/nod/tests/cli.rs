//! The real `nod` binary, with XDG directories in a temp dir and approvals through the
//! command approver (a shell script), never a compiled-in yes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use nod_proto::keys::{format_public_key_file, openssh_public_line, parse_public_key_file};
use nod_proto::{
    Alg, Decision, KeyId, RequestBody, SignedRequest, SignedResponse, SigningKey, frame,
};

mod common;

use common::{Agent, TempDir, nod, stderr, stdout, write_script};

fn run(dir: &TempDir, args: &[&str]) -> Output {
    nod(dir).args(args).output().unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn host_key() -> SigningKey {
    SigningKey::from_bytes(&[0x33; 32])
}

#[test]
fn hosts_add_list_remove_round_trip_with_both_key_formats() {
    let dir = TempDir::new("nod-cli", &[]);
    let vk1 = host_key().verifying_key();
    let vk2 = SigningKey::from_bytes(&[0x44; 32]).verifying_key();
    fs::write(
        dir.path("web.pub"),
        format_public_key_file(&vk1, &KeyId::new("web-key").unwrap(), "web-1 host key"),
    )
    .unwrap();
    fs::write(
        dir.path("db.pub"),
        openssh_public_line(&vk2, "root@db") + "\n",
    )
    .unwrap();
    let web = dir.path("web.pub");
    let db = dir.path("db.pub");

    let o = run(&dir, &["hosts", "add", "web-1", web.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("added host web-1 (key id web-key)"));
    let o = run(
        &dir,
        &["hosts", "add", "db.example.com", db.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let list = stdout(&run(&dir, &["hosts", "list"]));
    assert!(list.contains(&format!(
        "web-1\tweb-key\t(agent.toml)\t{}",
        hex::encode(vk1.as_bytes())
    )));
    // A key file without a key_id= line pins the key for any key id.
    assert!(list.contains(&format!(
        "db.example.com\t(any key id)\t(agent.toml)\t{}",
        hex::encode(vk2.as_bytes())
    )));

    // Re-adding replaces, and --key-id wins over the file.
    let o = run(
        &dir,
        &[
            "hosts",
            "add",
            "web-1",
            db.to_str().unwrap(),
            "--key-id",
            "rotated",
            "--presence",
            "verified",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("replaced"), "{}", stdout(&o));
    let list = stdout(&run(&dir, &["hosts", "list"]));
    assert!(list.contains(&format!(
        "web-1\trotated\tverified\t{}",
        hex::encode(vk2.as_bytes())
    )));

    let o = run(&dir, &["hosts", "remove", "db.example.com"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list = stdout(&run(&dir, &["hosts", "list"]));
    assert!(!list.contains("db.example.com") && list.contains("web-1"));

    let o = run(&dir, &["hosts", "remove", "db.example.com"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not in the allowlist"),
        "{}",
        stderr(&o)
    );

    let mode = fs::metadata(dir.path("config/nod/hosts.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn hosts_add_rejects_bad_ids_and_key_files() {
    let dir = TempDir::new("nod-cli", &[]);
    fs::write(dir.path("bad.pub"), "ssh-rsa AAAAB3NzaC1yc2E= x\n").unwrap();
    fs::write(
        dir.path("ok.pub"),
        openssh_public_line(&host_key().verifying_key(), ""),
    )
    .unwrap();
    let o = run(
        &dir,
        &[
            "hosts",
            "add",
            "bad id",
            dir.path("ok.pub").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("host id"), "{}", stderr(&o));
    let o = run(
        &dir,
        &[
            "hosts",
            "add",
            "web-1",
            dir.path("bad.pub").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad.pub"), "{}", stderr(&o));
    let o = run(
        &dir,
        &[
            "hosts",
            "add",
            "web-1",
            dir.path("missing.pub").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
}

#[test]
fn agent_key_is_created_once_and_printed_for_agents_d() {
    let dir = TempDir::new("nod-cli", &[]);
    let first = run(&dir, &["agent-key"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(text.contains("/etc/nod/agents.d/"), "{text}");
    assert!(text.contains("public_key_hex="));
    let parsed = parse_public_key_file(&text).unwrap();
    // The agent claims its fingerprint, so the file needs no key_id= line.
    assert_eq!(parsed.key_id, None);
    assert_eq!(stdout(&run(&dir, &["agent-key"])), text);
    let key_mode = fs::metadata(dir.path("data/nod/agent_ed25519.sealed"))
        .unwrap()
        .permissions()
        .mode();
    let dir_mode = fs::metadata(dir.path("data/nod"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!((key_mode & 0o777, dir_mode & 0o777), (0o600, 0o700));
}

#[test]
fn agent_toml_with_unknown_key_is_rejected() {
    let dir = TempDir::new("nod-cli", &[]);
    fs::create_dir_all(dir.path("config/nod")).unwrap();
    fs::write(
        dir.path("config/nod/agent.toml"),
        "[approval]\nrate_limit_burts = 5\n",
    )
    .unwrap();
    let o = run(&dir, &["agent", "--approver-command", "/bin/true"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("agent.toml") && err.contains("rate_limit_burts"),
        "{err}"
    );
    assert!(!dir.path("run/nod/approval.sock").exists());
}

#[test]
fn audit_verify_reports_ok_and_the_broken_line() {
    let dir = TempDir::new("nod-cli", &[]);
    let o = run(&dir, &["audit", "verify"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim(), "ok: 0 entries");
    let log = nod_agent::audit::AuditLog::open(&dir.path("state/nod/audit.jsonl")).unwrap();
    for i in 0..3 {
        let event = nod_agent::audit::AuditEvent {
            request_id: Some(format!("r{i}")),
            decision: "approved",
            ..Default::default()
        };
        log.append(&event, 1_000 + i, nod_agent::audit::Durability::Synced)
            .unwrap();
    }
    drop(log);
    let o = run(&dir, &["audit", "verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "ok: 3 entries");
    let path = dir.path("state/nod/audit.jsonl");
    let edited = fs::read_to_string(&path)
        .unwrap()
        .replace("\"r1\"", "\"rX\"");
    fs::write(&path, edited).unwrap();
    let o = run(&dir, &["audit", "verify"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("line 3"), "{}", stderr(&o));
}

fn start_agent(dir: &TempDir, args: &[&str]) -> Agent {
    let child = nod(dir)
        .arg("agent")
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let agent = Agent(child);
    common::wait_for_socket(&dir.path("run/nod/approval.sock"), "its socket");
    agent
}

fn request(id: &str) -> SignedRequest {
    let now = now_ms();
    let vk = host_key().verifying_key();
    RequestBody {
        protocol_version: 1,
        request_id: id.into(),
        nonce: [9; 32],
        created_at_ms: now,
        expires_at_ms: now + 20_000,
        linux_host_id: "web-1".into(),
        linux_hostname: "web-1.example.com".into(),
        pam_service: "sudo".into(),
        pam_user: "alice".into(),
        pam_ruser: None,
        pam_rhost: None,
        pam_tty: Some("/dev/pts/0".into()),
        sudo_command: Some("/usr/bin/id".into()),
        client_pid: None,
        key_id: KeyId::fingerprint(&vk).as_str().to_owned(),
        alg: Alg::Ed25519,
    }
    .sign(&host_key())
}

fn ask(socket: &Path, req: &SignedRequest) -> SignedResponse {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    frame::write_frame(&mut stream, &req.to_json()).unwrap();
    let payload = frame::read_frame(&mut stream).expect("a reply frame");
    SignedResponse::from_json(&payload).unwrap()
}

fn setup_host(dir: &TempDir) {
    fs::write(
        dir.path("web.pub"),
        openssh_public_line(&host_key().verifying_key(), ""),
    )
    .unwrap();
    let o = run(
        dir,
        &[
            "hosts",
            "add",
            "web-1",
            dir.path("web.pub").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn agent_approves_through_the_command_approver_and_cleans_up_on_sigterm() {
    let dir = TempDir::new("nod-cli", &[]);
    setup_host(&dir);
    write_script(&dir.path("approve.sh"), "cat >/dev/null\nexit 0");
    let pinned = parse_public_key_file(&stdout(&run(&dir, &["agent-key"]))).unwrap();
    let mut agent = start_agent(
        &dir,
        &[
            "--approver-command",
            dir.path("approve.sh").to_str().unwrap(),
        ],
    );
    let socket = dir.path("run/nod/approval.sock");
    assert_eq!(
        fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(dir.path("run/nod"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    let req = request("cli-approve");
    let resp = ask(&socket, &req)
        .verify(&[pinned], &req.body, now_ms(), 30_000)
        .expect("verifies under the key `nod agent-key` printed");
    assert_eq!(resp.body().decision, Decision::Approved);

    kill(Pid::from_raw(agent.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = agent.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "socket removed on SIGTERM");
    let o = run(&dir, &["audit", "verify"]);
    assert_eq!(stdout(&o).trim(), "ok: 1 entries");
}

#[test]
fn agent_without_any_approver_answers_unavailable() {
    let dir = TempDir::new("nod-cli", &[]);
    setup_host(&dir);
    let mut agent = start_agent(&dir, &[]);
    let resp = ask(&dir.path("run/nod/approval.sock"), &request("cli-headless"));
    assert_eq!(resp.body.decision, Decision::Unavailable);
    assert_eq!(resp.body.error_code.as_deref(), Some("no_approver"));
    kill(Pid::from_raw(agent.0.id() as i32), Signal::SIGINT).unwrap();
    assert!(agent.0.wait().unwrap().success());
}

#[test]
fn agent_replaces_a_stale_socket_but_not_a_file() {
    let dir = TempDir::new("nod-cli", &[]);
    fs::create_dir_all(dir.path("run/nod")).unwrap();
    let socket = dir.path("run/nod/approval.sock");
    drop(UnixListener::bind(&socket).unwrap());
    let mut agent = start_agent(&dir, &["--approver-command", "/bin/false"]);
    let mut stream = UnixStream::connect(&socket).expect("the new agent listens");
    stream.write_all(&[0xff; 4]).unwrap();
    // A second agent on the same socket refuses to start.
    let o = run(&dir, &["agent", "--approver-command", "/bin/false"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already serving"), "{}", stderr(&o));
    kill(Pid::from_raw(agent.0.id() as i32), Signal::SIGTERM).unwrap();
    assert!(agent.0.wait().unwrap().success());

    fs::write(&socket, "not a socket").unwrap();
    let o = run(&dir, &["agent", "--approver-command", "/bin/false"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a socket"), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(&socket).unwrap(), "not a socket");
}

#[test]
fn agent_rejects_an_unknown_approver_kind() {
    let dir = TempDir::new("nod-cli", &[]);
    let o = run(&dir, &["agent", "--approver", "always"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&dir, &["agent", "--approver", "command"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--approver-command"), "{}", stderr(&o));
}

#[test]
fn xdg_fallbacks_use_home_and_ignore_relative_values() {
    let dir = TempDir::new("nod-cli", &[]);
    fs::write(
        dir.path("web.pub"),
        openssh_public_line(&host_key().verifying_key(), ""),
    )
    .unwrap();
    let o = nod(&dir)
        .env_remove("XDG_CONFIG_HOME")
        .env("XDG_DATA_HOME", "relative/data")
        .args([
            "hosts",
            "add",
            "web-1",
            dir.path("web.pub").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path("home/.config/nod/hosts.toml").exists());
    let o = nod(&dir)
        .env("XDG_DATA_HOME", "relative/data")
        .arg("agent-key")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        dir.path("home/.local/share/nod/agent_ed25519.sealed")
            .exists()
    );
}

/// A file of another user where nod wants its own: the message says so once, with the fix,
/// although the error also carries the same text as its cause.
#[test]
fn an_error_and_its_cause_are_printed_once() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "needs root to give a file to another user; CI=true, so not skipping"
        );
        eprintln!("skipping: needs root");
        return;
    }
    let dir = TempDir::new("nod-cli-once", &["config/nod", "run"]);
    fs::set_permissions(dir.path("run"), fs::Permissions::from_mode(0o700)).unwrap();
    let nobody = Some(nix::unistd::Uid::from_raw(65534));
    for (file, args) in [
        ("config/nod/agent.toml", &["agent"][..]),
        ("config/nod/hosts.toml", &["hosts", "list"][..]),
    ] {
        fs::write(dir.path(file), "").unwrap();
        nix::unistd::chown(&dir.path(file), nobody, None).unwrap();
        let o = run(&dir, args);
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?}: {err}");
        assert_eq!(
            err.matches("is owned by uid 65534, not by you").count(),
            1,
            "{args:?} says it twice: {err}"
        );
        assert!(err.contains("fix its owner"), "{args:?}: {err}");
        fs::remove_file(dir.path(file)).unwrap();
    }
}
