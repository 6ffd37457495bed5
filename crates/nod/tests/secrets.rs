//! The secrets broker of the real `nod agent`, driven by the real `nod` CLI, `nod-client`, and
//! small attacker scripts. XDG directories live in a temp dir; policy changes are approved by a
//! command approver script that records the prompt, never by a compiled-in yes.
//!
//! Binaries used as callers:
//! - `nod-secret`, nod-client's example client (a program that needs a secret), copied into
//!   each test's directory and registered there; a copy with a byte appended behaves the same
//!   but hashes differently (unregistered);
//! - `nod` itself, whose `nod secrets …` the agent asks the person about each time;
//! - python3 for the attacks that need fork/exec/setuid (a failure under CI=true if missing).
//!
//! This test binary is never a client of its own: cargo runs it with `LD_LIBRARY_PATH` set,
//! which the broker refuses (a variable that can load other code into a process).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nod_client::Client;
use nod_client::proto::{Action, Reason, Request, SecretValue, Status};

mod common;

use common::{Agent, TempDir, command as cmd, copy_exe, nod_bin, output_with_stdin};

fn run(dir: &TempDir, args: &[&str]) -> Output {
    cmd(dir, nod_bin()).args(args).output().unwrap()
}

fn run_with_stdin(dir: &TempDir, program: &Path, args: &[&str], input: &str) -> Output {
    output_with_stdin(cmd(dir, program).args(args), input)
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        out(&o),
        err(&o)
    );
    o
}

fn fails(o: Output) -> Output {
    assert!(!o.status.success(), "should fail; stdout: {}", out(&o));
    o
}

/// Starts the agent with an approver that records each prompt to `prompt.json` and answers
/// with `exit_code` (0 approve, 1 deny).
fn start_agent(dir: &TempDir, exit_code: i32) -> Agent {
    let script = dir.path("approve.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat > {}\necho \"$NOD_PROMPT_KIND\" >> {}\nexit {exit_code}\n",
            dir.path("prompt.json").display(),
            dir.path("kinds.log").display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o700)).unwrap();
    Agent::start_waiting_for(dir, Some(&script), &dir.secrets_socket(), "secrets.sock")
}

fn prompt(dir: &TempDir) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(dir.path("prompt.json")).unwrap()).unwrap()
}

/// nod-client's example client, built next to `nod` (`cargo build --workspace --examples`).
fn client_bin() -> PathBuf {
    let p = nod_bin().parent().unwrap().join("examples/nod-secret");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins --examples` first (`make check` does)",
        p.display()
    );
    p
}

/// A copy of the example client at `<dir>/<name>`: the program a test registers.
fn tool(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.path(name);
    copy_exe(&client_bin(), &path, false);
    path
}

/// A copy of the example client with one byte appended: it runs the same, but hashes
/// differently.
fn tool_copy(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.path(name);
    copy_exe(&client_bin(), &path, true);
    path
}

/// A program calling the broker: each call is one run of the example client, which opens a
/// session and sends one message.
struct Caller<'a> {
    dir: &'a TempDir,
    exe: PathBuf,
}

impl Caller<'_> {
    fn message(&self, line: &str) -> nod_client::proto::Response {
        let o = output_with_stdin(cmd(self.dir, &self.exe).arg("call"), line);
        assert!(o.status.success(), "{}", err(&o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", out(&o)))
    }

    fn call(&self, req: Request) -> nod_client::proto::Response {
        let line = nod_client::proto::Message::Request(req).encode();
        self.message(std::str::from_utf8(&line).unwrap())
    }

    fn ok(&self, req: Request) -> Result<Vec<nod_client::proto::Item>, Reason> {
        let resp = self.call(req);
        match resp.status {
            Status::Success => Ok(resp.results),
            _ => Err(resp.reason_code().expect("a refusal has a reason")),
        }
    }

    fn get(&self, service: &str, target: &str) -> Result<String, Reason> {
        let mut r = Request::new(Action::Read, service);
        r.targets = vec![target.into()];
        let items = self.ok(r)?;
        Ok(items[0].value.as_ref().unwrap().expose().to_owned())
    }

    fn get_prefix(
        &self,
        service: &str,
        prefix: &str,
    ) -> Result<Vec<nod_client::proto::Item>, Reason> {
        let mut r = Request::new(Action::Read, service);
        r.match_ = Some(nod_client::proto::Match::Prefix);
        r.targets = vec![prefix.into()];
        self.ok(r)
    }

    fn put(&self, service: &str, items: &[(&str, &str)]) -> Result<(), Reason> {
        let mut r = Request::new(Action::Write, service);
        for (t, v) in items {
            r.targets.push((*t).into());
            r.values.push(SecretValue::new(*v));
        }
        self.ok(r).map(|_| ())
    }

    fn search(&self, service: &str) -> Result<Vec<String>, Reason> {
        Ok(self
            .ok(Request::new(Action::Search, service))?
            .into_iter()
            .map(|i| i.target)
            .collect())
    }

    fn delete(&self, service: &str, targets: &[&str]) -> Result<(), Reason> {
        let mut r = Request::new(Action::Delete, service);
        r.targets = targets.iter().map(|t| (*t).into()).collect();
        self.ok(r).map(|_| ())
    }
}

/// A registered example client with `grants`, ready to call.
fn registered<'a>(dir: &'a TempDir, name: &str, grants: &[&str]) -> Caller<'a> {
    let exe = tool(dir, name);
    ok(register(dir, &exe, grants));
    Caller { dir, exe }
}

fn hash_of(path: &Path) -> String {
    nod_agent::caller::identity::hash_path(path).unwrap()
}

fn register(dir: &TempDir, path: &Path, grants: &[&str]) -> Output {
    let mut args = vec!["register", path.to_str().unwrap()];
    args.extend_from_slice(grants);
    run(dir, &args)
}

fn client(dir: &TempDir) -> Client {
    let c = Client::connect(&dir.secrets_socket()).unwrap();
    c.set_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// python3, or `None` after a notice (a failure under CI=true).
fn python() -> Option<PathBuf> {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join("python3");
        if p.exists() {
            return Some(p);
        }
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("python3 is missing (CI=true: not skipping); install the python3 package");
    }
    eprintln!("SKIPPED: python3 is missing; install it to run the attack tests");
    None
}

const READ_PROD: &str = r#"{"type":"REQUEST","action":"read","service":"aws","targets":["prod"]}"#;

#[test]
fn registered_binary_reads_and_writes_and_an_unregistered_copy_is_pending() {
    let dir = TempDir::new("nod-secrets", &[]);
    let agent = start_agent(&dir, 0);
    assert_eq!(
        fs::metadata(dir.secrets_socket())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let tool = tool(&dir, "tool");
    let o = ok(register(&dir, &tool, &["--read", "aws", "--write", "aws"]));
    let tool_hash = hash_of(&tool);
    assert!(out(&o).contains(&tool_hash), "{}", out(&o));
    let p = prompt(&dir);
    assert_eq!(p["kind"], "secrets-register");
    assert_eq!(p["hash"], tool_hash.as_str());
    assert_eq!(p["read"][0], "aws");
    assert_eq!(p["interpreter"], false);
    // Who asked: the `nod register` process, and the test above it.
    let chain = p["requested_by"].as_array().unwrap();
    assert_eq!(chain[0]["comm"], "nod", "{p}");

    ok(run_with_stdin(
        &dir,
        &tool,
        &["put", "aws", "prod"],
        "s3cr3t-value\n",
    ));
    let o = ok(cmd(&dir, &tool)
        .args(["get", "aws", "prod"])
        .output()
        .unwrap());
    assert_eq!(out(&o), "s3cr3t-value\n");

    let copy = tool_copy(&dir, "other-tool");
    let copy_hash = hash_of(&copy);
    let o = fails(
        cmd(&dir, &copy)
            .args(["get", "aws", "prod"])
            .output()
            .unwrap(),
    );
    assert!(err(&o).contains("unregistered_binary"), "{}", err(&o));
    assert!(!out(&o).contains("s3cr3t"));
    let o = ok(run(&dir, &["list-pending"]));
    let line = out(&o);
    assert!(line.contains(&copy_hash), "{line}");
    assert!(line.contains("asked=read:aws"), "{line}");
    assert!(line.contains("argv0="), "{line}");

    // Approving the pending hash grants what it asked for, through the person.
    let o = ok(run(&dir, &["approve", &copy_hash]));
    assert!(out(&o).contains(&copy_hash));
    assert_eq!(prompt(&dir)["kind"], "secrets-approve");
    let o = ok(cmd(&dir, &copy)
        .args(["get", "aws", "prod"])
        .output()
        .unwrap());
    assert_eq!(out(&o), "s3cr3t-value\n");
    assert!(!out(&ok(run(&dir, &["list-pending"]))).contains(&copy_hash));
    // It asked to read only, so it cannot write.
    let o = fails(run_with_stdin(&dir, &copy, &["put", "aws", "x"], "v"));
    assert!(err(&o).contains("service_not_allowed"), "{}", err(&o));

    let list = out(&ok(run(&dir, &["policy", "list"])));
    assert!(
        list.contains(&tool_hash) && list.contains(&copy_hash),
        "{list}"
    );
    ok(run(&dir, &["policy", "revoke", &copy_hash]));
    let o = fails(
        cmd(&dir, &copy)
            .args(["get", "aws", "prod"])
            .output()
            .unwrap(),
    );
    assert!(err(&o).contains("unregistered_binary"), "{}", err(&o));

    agent.stop();
    assert!(
        !dir.secrets_socket().exists(),
        "secrets.sock removed on shutdown"
    );
    let o = ok(run(&dir, &["audit", "verify"]));
    assert!(out(&o).starts_with("ok:"), "{}", out(&o));
}

#[test]
fn a_person_saying_no_registers_nothing() {
    let dir = TempDir::new("nod-secrets", &[]);
    let _agent = start_agent(&dir, 1);
    let tool = tool(&dir, "tool");
    let o = fails(register(&dir, &tool, &["--read", "aws"]));
    assert!(err(&o).contains("not_approved"), "{}", err(&o));
    let o = fails(
        cmd(&dir, &tool)
            .args(["get", "aws", "prod"])
            .output()
            .unwrap(),
    );
    assert!(err(&o).contains("unregistered_binary"), "{}", err(&o));
    let audit = fs::read_to_string(dir.path("state/nod/audit.jsonl")).unwrap();
    assert!(
        audit.contains(r#""action":"register""#) && audit.contains(r#""decision":"denied""#),
        "{audit}"
    );
}

#[test]
fn registering_an_interpreter_warns() {
    let Some(python) = python() else { return };
    let dir = TempDir::new("nod-secrets", &[]);
    let _agent = start_agent(&dir, 0);
    let o = ok(register(&dir, &python, &["--read", "aws"]));
    assert!(err(&o).contains("interpreter"), "{}", err(&o));
    assert!(out(&o).contains("WARNING"), "{}", out(&o));
    assert_eq!(prompt(&dir)["interpreter"], true);
    assert!(out(&ok(run(&dir, &["policy", "list"]))).contains("INTERPRETER"));
}

#[test]
fn upgrade_moves_the_grants_to_the_new_hash_after_approval() {
    let dir = TempDir::new("nod-secrets", &[]);
    let _agent = start_agent(&dir, 0);
    let tool = tool(&dir, "tool");
    ok(register(&dir, &tool, &["--read", "aws", "--search"]));
    let old = hash_of(&tool);
    // "Update" the tool: new content at the same path.
    copy_exe(&tool_copy(&dir, "new"), &tool, false);
    let new = hash_of(&tool);
    assert_ne!(old, new);
    ok(run(&dir, &["upgrade", tool.to_str().unwrap()]));
    let p = prompt(&dir);
    assert_eq!(p["kind"], "secrets-upgrade");
    assert_eq!(p["previous_hash"], old.as_str());
    assert_eq!(p["search"], true);
    let list = out(&ok(run(&dir, &["policy", "list"])));
    assert!(list.contains(&new) && !list.contains(&old), "{list}");
    assert!(list.contains("search=yes"), "{list}");
}

/// keychain-auth's fork/exec race: a process connects, forks, and the connecting side execs a
/// registered binary; the other side's requests must be judged as *its own* binary.
#[test]
fn fork_attack_requests_from_the_other_process_are_denied() {
    let Some(python) = python() else { return };
    let dir = TempDir::new("nod-secrets", &[]);
    let _agent = start_agent(&dir, 0);
    let sleeper = dir.path("registered-sleep");
    copy_exe(Path::new("/bin/sleep"), &sleeper, false);
    ok(register(&dir, &sleeper, &["--read", "aws"]));
    let writer = registered(&dir, "writer", &["--write", "aws"]);
    writer.put("aws", &[("prod", "forked-secret")]).unwrap();

    let script = r#"
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
if os.fork() == 0:
    time.sleep(0.5)  # the parent is now the registered binary
    s.sendall((sys.argv[3] + "\n").encode())
    sys.stdout.write(s.makefile().readline())
    sys.stdout.flush()
    os._exit(0)
os.set_inheritable(s.fileno(), True)
os.execv(sys.argv[2], [sys.argv[2], "2"])
"#;
    let o = ok(Command::new(&python)
        .args([
            "-c",
            script,
            dir.secrets_socket().to_str().unwrap(),
            sleeper.to_str().unwrap(),
            READ_PROD,
        ])
        .output()
        .unwrap());
    let resp: serde_json::Value = serde_json::from_str(out(&o).trim()).unwrap();
    assert_eq!(resp["status"], "denied", "{resp}");
    // The connection belongs to the process that made it (now the registered binary); the
    // child that sent is another process.
    assert_eq!(resp["reason"], "untrusted_caller", "{resp}");
    assert!(!out(&o).contains("forked-secret"));
    let pending = out(&ok(run(&dir, &["list-pending"])));
    assert!(!pending.contains(&hash_of(&sleeper)), "{pending}");
}

/// The path race: the registered binary's path is renamed over after it started. The running
/// process is still granted (its inode is the registered one); the new file is not.
#[test]
fn renaming_over_the_registered_path_after_start_changes_nothing() {
    let dir = TempDir::new("nod-secrets", &[]);
    let _agent = start_agent(&dir, 0);
    let tool = tool(&dir, "tool");
    ok(register(&dir, &tool, &["--read", "aws", "--write", "aws"]));
    // `put` connects, then reads the value from stdin: rename while it waits.
    let mut child = cmd(&dir, &tool)
        .args(["put", "aws", "k"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let evil = tool_copy(&dir, "evil");
    fs::rename(&evil, &tool).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"still-me").unwrap();
    drop(stdin);
    ok(child.wait_with_output().unwrap());
    // The new file at the same path is another binary.
    let o = fails(cmd(&dir, &tool).args(["get", "aws", "k"]).output().unwrap());
    assert!(err(&o).contains("unregistered_binary"), "{}", err(&o));
    let reader = registered(&dir, "reader", &["--read", "aws"]);
    assert_eq!(reader.get("aws", "k").unwrap(), "still-me");
}

/// A caller whose uid differs from the agent's is refused, even on a connection that was
/// opened under the right uid.
#[test]
fn a_caller_with_another_uid_is_refused() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("SKIPPED: needs root to switch a child to uid 65534");
        return;
    }
    let Some(python) = python() else { return };
    let dir = TempDir::new("nod-secrets", &[]);
    let _agent = start_agent(&dir, 0);
    let script = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
os.setgid(65534)
os.setuid(65534)
s.sendall((sys.argv[2] + "\n").encode())
sys.stdout.write(s.makefile().readline())
"#;
    let o = ok(Command::new(&python)
        .args([
            "-c",
            script,
            dir.secrets_socket().to_str().unwrap(),
            READ_PROD,
        ])
        .output()
        .unwrap());
    let resp: serde_json::Value = serde_json::from_str(out(&o).trim()).unwrap();
    assert_eq!(resp["status"], "denied", "{resp}");
    let audit = fs::read_to_string(dir.path("state/nod/audit.jsonl")).unwrap();
    assert!(audit.contains("other_uid"), "{audit}");
}

#[test]
fn a_hand_edited_policy_is_refused_with_a_repair_hint() {
    let dir = TempDir::new("nod-secrets", &[]);
    let _agent = start_agent(&dir, 0);
    let caller = registered(&dir, "tool", &["--read", "aws"]);
    let policy = dir.path("state/nod/secrets-policy.json");
    let text = fs::read_to_string(&policy).unwrap();
    assert!(text.contains("\"can_search\": false"));
    fs::write(
        &policy,
        text.replace("\"can_search\": false", "\"can_search\": true"),
    )
    .unwrap();
    let resp = caller.call(Request::new(Action::Search, "aws"));
    let message = resp.message.unwrap_or_default();
    assert!(message.contains("changed outside nod"), "{message}");
    let o = fails(run(&dir, &["policy", "list"]));
    assert!(err(&o).contains("nod register"), "{}", err(&o));
    // Repair as the message says.
    fs::rename(&policy, dir.path("state/nod/secrets-policy.json.bad")).unwrap();
    ok(register(&dir, &caller.exe, &["--read", "aws"]));
    ok(run(&dir, &["policy", "list"]));
}

#[test]
fn batches_are_all_or_nothing_and_write_alignment_is_checked() {
    let dir = TempDir::new("nod-secrets", &[]);
    let _agent = start_agent(&dir, 0);
    let c = registered(
        &dir,
        "tool",
        &["--read", "aws", "--write", "aws", "--search"],
    );
    let bad_batch = [("a", "1"), ("b", "2"), ("bad\ttarget", "3")];
    assert_eq!(c.put("aws", &bad_batch), Err(Reason::MalformedRequest));
    assert!(c.search("aws").unwrap().is_empty(), "nothing written");

    let mut misaligned = Request::new(Action::Write, "aws");
    misaligned.targets = vec!["a".into(), "b".into()];
    misaligned.values = vec![SecretValue::new("1")];
    assert_eq!(c.ok(misaligned).unwrap_err(), Reason::MalformedRequest);
    let mut prefix_write = Request::new(Action::Write, "aws");
    prefix_write.match_ = Some(nod_client::proto::Match::Prefix);
    prefix_write.targets = vec!["a".into()];
    prefix_write.values = vec![SecretValue::new("1")];
    assert_eq!(c.ok(prefix_write).unwrap_err(), Reason::MalformedRequest);

    c.put("aws", &[("a", "1"), ("b", "2")]).unwrap();
    // Deleting a batch with one missing target deletes nothing.
    assert_eq!(c.delete("aws", &["a", "missing"]), Err(Reason::NotFound));
    assert_eq!(c.search("aws").unwrap(), ["a", "b"]);
}

#[test]
fn prefix_reads_and_search_need_can_search_and_services_match_exactly() {
    let dir = TempDir::new("nod-secrets", &[]);
    let _agent = start_agent(&dir, 0);
    let c = registered(
        &dir,
        "tool",
        &["--read", "a", "--write", "a", "--write", "a:b"],
    );
    c.put("a", &[("key-1", "v1")]).unwrap();
    c.put("a:b", &[("key-2", "v2")]).unwrap();
    assert_eq!(c.get("a", "key-1").unwrap(), "v1");
    assert_eq!(
        c.get_prefix("a", "key").unwrap_err(),
        Reason::ActionNotInPolicy
    );
    assert_eq!(c.search("a").unwrap_err(), Reason::ActionNotInPolicy);
    // No read grant on `a:b`, and `a` does not cover it.
    assert_eq!(
        c.get("a:b", "key-2").unwrap_err(),
        Reason::ServiceNotAllowed
    );

    ok(register(
        &dir,
        &c.exe,
        &["--read", "a", "--write", "a", "--search"],
    ));
    let items = c.get_prefix("a", "key").unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].target, "key-1");
    assert_eq!(items[0].value.as_ref().unwrap().expose(), "v1");
    // Search returns targets only, and service `a` never lists `a:b`'s items.
    let resp = c.call(Request::new(Action::Search, "a"));
    assert_eq!(resp.status, Status::Success);
    assert_eq!(resp.results.len(), 1);
    assert!(resp.results[0].value.is_none());
    assert_eq!(resp.results[0].target, "key-1");
    assert!(c.get("a", "b:key-2").is_err());
}

#[test]
fn an_oversized_line_is_malformed_and_closes_the_connection() {
    let dir = TempDir::new("nod-secrets", &[]);
    let _agent = start_agent(&dir, 0);
    let mut s = UnixStream::connect(dir.secrets_socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let big = vec![b'x'; 64 * 1024 + 10];
    // The agent answers and closes once the cap is passed; it may close before reading all.
    let _ = s.write_all(&big);
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    let resp: serde_json::Value = serde_json::from_str(reply.trim()).unwrap();
    assert_eq!(resp["status"], "error");
    assert_eq!(resp["reason"], "malformed_request");
    // Garbage that fits is malformed too, but the connection stays open.
    let mut c = client(&dir);
    let resp = c.call_raw(b"{\"type\":\"REQUEST\",\"bogus\":1}\n").unwrap();
    assert_eq!(resp.reason.as_deref(), Some("malformed_request"));
    let resp = c.call_raw(b"not json\n").unwrap();
    assert_eq!(resp.reason.as_deref(), Some("malformed_request"));
}

#[test]
fn a_thousand_idle_connections_do_not_block_a_real_client() {
    nod_agent::daemon::agent::raise_nofile_limit();
    let dir = TempDir::new("nod-secrets", &[]);
    let _agent = start_agent(&dir, 0);
    let c = registered(&dir, "tool", &["--read", "aws", "--write", "aws"]);
    c.put("aws", &[("k", "v")]).unwrap();
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut s = UnixStream::connect(dir.secrets_socket()).unwrap();
        if i % 2 == 0 {
            // Half of them stall mid-line.
            s.write_all(b"{\"type\":\"REQ").unwrap();
        }
        idle.push(s);
    }
    let start = Instant::now();
    assert_eq!(c.get("aws", "k").unwrap(), "v");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    drop(idle);
}

#[test]
fn no_secret_value_reaches_the_audit_log_or_the_agent_log() {
    let dir = TempDir::new("nod-secrets", &[]);
    let agent = start_agent(&dir, 0);
    let c = registered(
        &dir,
        "tool",
        &["--read", "aws", "--write", "aws", "--search"],
    );
    let marker = "VALUE-d41d8cd98f00b204";
    c.put("aws", &[("k", marker)]).unwrap();
    assert_eq!(c.get("aws", "k").unwrap(), marker);
    assert_eq!(c.get_prefix("aws", "k").unwrap().len(), 1);
    c.search("aws").unwrap();
    c.delete("aws", &["k"]).unwrap();
    let raw = format!("{{\"type\":\"REQUEST\",\"values\":[\"{marker}\"]}}\n");
    let o = output_with_stdin(cmd(&dir, &c.exe).arg("raw"), &raw);
    assert!(out(&o).contains("malformed_request"), "{}", out(&o));
    agent.stop();
    let audit = fs::read_to_string(dir.path("state/nod/audit.jsonl")).unwrap();
    for action in ["write", "read", "search", "delete"] {
        assert!(
            audit.contains(&format!("\"action\":\"{action}\"")),
            "{action} audited: {audit}"
        );
    }
    assert!(!audit.contains(marker), "{audit}");
    let log = fs::read_to_string(dir.path("agent.log")).unwrap();
    assert!(!log.contains(marker), "{log}");
    // `auto` (no agent.toml) decides on the first request; with no session bus, the file.
    let deferred = log.find("secrets backend: chosen on the first secrets request");
    let chosen = log.find("secrets backend: file");
    let (Some(deferred), Some(chosen)) = (deferred, chosen) else {
        panic!("no backend lines: {log}");
    };
    assert!(deferred < chosen, "{log}");
    let store = fs::read(dir.path("data/nod/secrets.enc")).unwrap();
    assert!(!store.windows(marker.len()).any(|w| w == marker.as_bytes()));
}

fn system_tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// `backend = "secret-service"` with no Secret Service to reach: the agent refuses to start and
/// says what to do, rather than fail every request later.
#[test]
fn a_secret_service_backend_that_is_not_there_stops_the_agent_at_start() {
    let dir = TempDir::new("nod-secrets", &["run"]);
    fs::create_dir_all(dir.path("config/nod")).unwrap();
    fs::write(
        dir.path("config/nod/agent.toml"),
        "[secrets]\nbackend = \"secret-service\"\n",
    )
    .unwrap();
    fs::set_permissions(dir.path("run"), fs::Permissions::from_mode(0o700)).unwrap();
    let o = cmd(&dir, nod_bin())
        .args(["agent", "--approver-command", "/bin/false"])
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            format!("unix:path={}", dir.path("no-bus").display()),
        )
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", err(&o));
    assert!(
        err(&o).contains("no Secret Service is usable"),
        "{}",
        err(&o)
    );
    assert!(!dir.secrets_socket().exists());
}

/// The Secret Service backend against a real gnome-keyring in its own D-Bus session
/// (`dbus-run-session`), unlocked by piping a password to `gnome-keyring-daemon --unlock`.
#[test]
fn secret_service_backend_with_a_real_gnome_keyring() {
    let tools = ["dbus-run-session", "gnome-keyring-daemon", "secret-tool"];
    if tools.iter().any(|t| system_tool(t).is_none()) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "{tools:?} missing (CI=true: not skipping); install dbus, gnome-keyring, libsecret-tools"
            );
        }
        eprintln!("SKIPPED: needs {tools:?} (packages dbus, gnome-keyring, libsecret-tools)");
        return;
    }
    let dir = TempDir::new("nod-secrets", &[]);
    fs::create_dir_all(dir.path("config/nod")).unwrap();
    fs::write(
        dir.path("config/nod/agent.toml"),
        "[secrets]\nbackend = \"secret-service\"\n",
    )
    .unwrap();
    for d in ["home", "run"] {
        fs::create_dir_all(dir.path(d)).unwrap();
        fs::set_permissions(dir.path(d), fs::Permissions::from_mode(0o700)).unwrap();
    }
    fs::write(
        dir.path("approve.sh"),
        "#!/bin/sh\ncat >/dev/null\nexit 0\n",
    )
    .unwrap();
    fs::set_permissions(dir.path("approve.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    let script = r#"
set -u
echo pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null
"$NOD" agent --approver-command "$D/approve.sh" 2>"$D/agent.log" &
AGENT=$!
i=0; while [ ! -S "$D/run/nod/secrets.sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
printf 'kv-1' | "$NOD" secrets --remember 1m put a key-1 --attr env=prod && echo PUT-OK
printf 'kv-2' | "$NOD" secrets put a:b key-2 && echo PUT2-OK
echo "GET=$("$NOD" secrets --remember 1m get a key-1)"
echo "PREFIX=$("$NOD" secrets get --prefix a key)"
echo "SEARCH=$("$NOD" secrets search a | tr '\n' ' ')"
echo "LOOKUP=$(secret-tool lookup nod_service a nod_target key-1)"
"$NOD" secrets rm a key-1 && echo RM-OK
"$NOD" secrets get a key-1 2>&1 | sed 's/^/AFTER-RM=/'
kill $AGENT; wait $AGENT
echo "AGENT-EXIT=$?"
"#;
    let o = Command::new(system_tool("dbus-run-session").unwrap())
        .args(["--", "sh", "-c", script])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("D", dir.root())
        .env("NOD", nod_bin())
        .env("HOME", dir.path("home"))
        .env("XDG_CONFIG_HOME", dir.path("config"))
        .env("XDG_DATA_HOME", dir.path("data"))
        .env("XDG_STATE_HOME", dir.path("state"))
        .env("XDG_RUNTIME_DIR", dir.path("run"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = out(&o);
    let log = fs::read_to_string(dir.path("agent.log")).unwrap_or_default();
    let ctx = format!("{text}\n--- agent log:\n{log}\n--- stderr:\n{}", err(&o));
    assert!(log.contains("secrets backend: secret-service"), "{ctx}");
    for want in [
        "PUT-OK",
        "PUT2-OK",
        "GET=kv-1",
        "PREFIX=key-1=kv-1",
        "SEARCH=key-1 ",
        "LOOKUP=kv-1",
        "RM-OK",
        "AFTER-RM=nod: error: not_found",
        "AGENT-EXIT=0",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{ctx}");
    }
    let audit = fs::read_to_string(dir.path("state/nod/audit.jsonl")).unwrap();
    assert!(!audit.contains("kv-1") && !log.contains("kv-1"), "{audit}");
}

/// A line whose bytes were written by two processes (here: this test, then `printf` holding
/// the same socket as its stdout) has no single sender and is refused.
#[test]
fn a_line_written_by_two_processes_is_refused() {
    let dir = TempDir::new("nod-secrets", &[]);
    let _agent = start_agent(&dir, 0);
    let mut s = UnixStream::connect(dir.secrets_socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(br#"{"type":"REQUEST","action":"read","#)
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let status = Command::new("printf")
        .arg(r#""service":"aws","targets":["k"]}\n"#)
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(
            s.try_clone().unwrap(),
        )))
        .status()
        .unwrap();
    assert!(status.success());
    let mut reply = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut reply).unwrap();
    let resp: serde_json::Value = serde_json::from_str(reply.trim()).unwrap();
    assert_eq!(resp["reason"], "malformed_request", "{resp}");
    assert!(
        resp["message"]
            .as_str()
            .unwrap()
            .contains("more than one process"),
        "{resp}"
    );
}

#[test]
fn a_request_whose_audit_line_cannot_be_written_is_not_served() {
    let dir = TempDir::new("nod-secrets", &[]);
    let _agent = start_agent(&dir, 0);
    let c = registered(&dir, "tool", &["--read", "aws", "--write", "aws"]);
    c.put("aws", &[("prod", "kept-secret")]).unwrap();
    // The log's path becomes a directory: no line can be appended any more.
    let log = dir.path("state/nod/audit.jsonl");
    fs::rename(&log, dir.path("state/nod/audit.old")).unwrap();
    fs::create_dir(&log).unwrap();
    assert_eq!(c.get("aws", "prod"), Err(Reason::InternalError));
    assert_eq!(c.put("aws", &[("other", "x")]), Err(Reason::InternalError));
    // Once the log can be written again, the same request is served.
    fs::remove_dir(&log).unwrap();
    assert_eq!(c.get("aws", "prod").unwrap(), "kept-secret");
}
