//! Secrets and keys in the running agent's memory: one copy while held, none once removed or
//! overwritten. The agent's memory is read through `/proc/<pid>/mem`, which needs root (the
//! agent makes itself non-dumpable); under CI=true a run without root fails.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;

use common::{Agent, TempDir, command, have_openssh, out, ssh_add};

/// Whether this test can read another process's memory; fails under CI when it cannot.
fn can_read_memory() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "reading the agent's memory needs root (CI=true: not skipping)"
    );
    eprintln!("SKIPPED: reading the agent's memory needs root");
    false
}

/// How often `needle` occurs in the readable memory of process `pid`.
fn occurrences(pid: u32, needle: &[u8]) -> usize {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = 0;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        let n = buf.windows(needle.len()).filter(|w| *w == needle).count();
        if n > 0 && std::env::var_os("NOD_MEMORY_DEBUG").is_some() {
            eprintln!("{n} in {line}");
            for (i, _) in buf
                .windows(needle.len())
                .enumerate()
                .filter(|(_, w)| *w == needle)
            {
                let lo = i.saturating_sub(160);
                let hi = (i + needle.len() + 48).min(buf.len());
                eprintln!("  at +{i:#x}: {:02x?}", &buf[lo..hi]);
            }
        }
        found += n;
    }
    found
}

fn agent_pid(agent: &Agent) -> u32 {
    agent.0.id()
}

#[test]
fn a_removed_ssh_key_leaves_no_copy_on_the_stack_and_at_most_one_freed_block() {
    if !have_openssh() || !can_read_memory() {
        return;
    }
    let dir = TempDir::new("nod-memory", &["home", "keys"]);
    let agent = Agent::start(&dir, None);
    let key = dir.path("keys/id");
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let private =
        nod_agent::keystore::ssh::PrivateKey::read_openssh_file(&key).expect("the new key");
    let seed = private
        .key_data()
        .ed25519()
        .expect("an Ed25519 key")
        .private
        .to_bytes();
    let o = ssh_add(&dir, &[key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    // Held: the scan sees it (so a later zero means something).
    let held = occurrences(agent_pid(&agent), &seed);
    assert!(held >= 1, "the scan does not find the held key");
    let o = ssh_add(&dir, &["-d", key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    // The message, the decoding stack and the signer are wiped. One copy is still found in a
    // freed heap block (not yet traced to its source; see docs/security.md "Memory").
    let left = occurrences(agent_pid(&agent), &seed);
    assert!(
        left <= 1,
        "{left} copies of the removed key's seed remain (while held: {held})"
    );
}

fn client_bin() -> std::path::PathBuf {
    common::nod_bin()
        .parent()
        .unwrap()
        .join("examples/nod-secret")
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> Output {
    common::output_with_stdin(cmd, input)
}

#[test]
fn an_overwritten_or_deleted_secret_leaves_no_copy() {
    if !can_read_memory() {
        return;
    }
    let dir = TempDir::new("nod-memory", &["home"]);
    let approver = dir.path("yes.sh");
    fs::write(&approver, "#!/bin/sh\ncat >/dev/null\nexit 0\n").unwrap();
    fs::set_permissions(&approver, fs::Permissions::from_mode(0o700)).unwrap();
    let agent =
        Agent::start_waiting_for(&dir, Some(&approver), &dir.secrets_socket(), "secrets.sock");
    let client = dir.path("client");
    fs::copy(client_bin(), &client).expect("nod-secret (cargo build --examples)");
    let o = command(&dir, common::nod_bin())
        .args(["register"])
        .arg(&client)
        .args(["--read", "mem", "--write", "mem"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let first = "FIRST-d6f1a0c2b9e84e57a3c1";
    let second = "SECOND-7b2e9d41c0a35f86e2d4";
    for value in [first, second] {
        let o = run_with_stdin(command(&dir, &client).args(["put", "mem", "k"]), value);
        assert!(o.status.success(), "{}", out(&o));
    }
    let o = command(&dir, &client)
        .args(["get", "mem", "k"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), second);
    std::thread::sleep(Duration::from_millis(200));
    let pid = agent_pid(&agent);
    assert_eq!(
        occurrences(pid, first.as_bytes()),
        0,
        "copies of the overwritten value remain"
    );
    let now = occurrences(pid, second.as_bytes());
    assert!(now <= 1, "{now} copies of the current value");
    let mut delete = command(&dir, &client);
    delete.arg("call").stdin(Stdio::piped());
    let o = run_with_stdin(
        &mut delete,
        r#"{"type":"REQUEST","action":"delete","service":"mem","targets":["k"]}"#,
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("success"),
        "{}",
        out(&o)
    );
    assert_eq!(
        occurrences(pid, second.as_bytes()),
        0,
        "copies of the deleted value remain"
    );
}
