//! `nod-helper doctor` on broken hosts: each state is set up for real (a stale socket, a
//! forward whose far end hangs up, a PAM line pam_nod.so refuses, a conf= that does not exist,
//! the host's own key pinned, a run as non-root) and the report must say FAIL with the fix.

mod common;

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// A throwaway `/etc/pam.d` service, removed on drop.
struct PamService {
    name: String,
    path: PathBuf,
}

impl PamService {
    fn new(tag: &str, body: &str) -> Self {
        let name = format!("nod-helper-doctor-{tag}-{}", std::process::id());
        let path = Path::new("/etc/pam.d").join(&name);
        fs::write(&path, body).unwrap();
        Self { name, path }
    }
}

impl Drop for PamService {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

const CONTROL: &str = "[success=done authinfo_unavail=ignore default=die]";

fn doctor(s: &Scratch, extra: &[&str]) -> (i32, String) {
    let config = s.config_path();
    let mut args = vec![
        "doctor",
        "--config",
        config.to_str().unwrap(),
        "--user",
        "root",
    ];
    args.extend_from_slice(extra);
    let out = helper(&args);
    (out.status.code().unwrap(), report(&out))
}

fn report(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a FAIL line containing `what`, followed by a fix line containing `fix`.
#[track_caller]
fn assert_fail(report: &str, what: &str, fix: &str) {
    let lines: Vec<&str> = report.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.starts_with("FAIL") && l.contains(what))
        .unwrap_or_else(|| panic!("no FAIL line with {what:?} in:\n{report}"));
    let fix_line = lines.get(i + 1).copied().unwrap_or("");
    assert!(
        fix_line.trim_start().starts_with("fix:") && fix_line.contains(fix),
        "FAIL {what:?} lacks the fix {fix:?}:\n{report}"
    );
}

#[test]
fn a_stale_forwarded_socket_fails_and_a_served_one_passes() {
    let Some(s) = Scratch::new() else { return };
    // What a forward leaves when its session ends (or another took the path and left).
    drop(UnixListener::bind(s.socket_path()).unwrap());
    let (rc, r) = doctor(&s, &[]);
    assert_eq!(rc, 1, "{r}");
    assert_fail(
        &r,
        "is stale: nothing listens on it",
        "ClearAllForwardings=yes",
    );
    assert!(!r.contains("ok    forwarded socket"), "{r}");

    // sshd accepting and hanging up at once: the forward is up, the workstation end is not.
    fs::remove_file(s.socket_path()).unwrap();
    let closed = closing_agent(&s.socket_path());
    let (_, r) = doctor(&s, &[]);
    assert_fail(&r, "nothing answers at the workstation end", "nod agent");
    closed.recv().unwrap();

    // Someone listening and waiting for a request: fine, and no request was sent.
    fs::remove_file(s.socket_path()).unwrap();
    let _listener = UnixListener::bind(s.socket_path()).unwrap();
    let (_, r) = doctor(&s, &[]);
    assert!(
        r.contains("ok    forwarded socket") && r.contains("an open `ssh -R` session serves it"),
        "{r}"
    );
}

#[test]
fn pam_lines_that_lock_sudo_fail_with_the_fix() {
    let Some(s) = Scratch::new() else { return };
    let _listener = UnixListener::bind(s.socket_path()).unwrap();
    let helper_bin = s.path("nod-helper");
    fs::copy(env!("CARGO_BIN_EXE_nod-helper"), &helper_bin).unwrap();
    let conf = s.config_path();
    let line = |args: &str| {
        format!(
            "auth {CONTROL} pam_nod.so helper={} {args}\nauth required pam_unix.so\n",
            helper_bin.display()
        )
    };

    let good = PamService::new("good", &line(&format!("conf={}", conf.display())));
    let (_, r) = doctor(&s, &["--pam-service", &good.name]);
    for want in [
        "pam_nod.so with the recommended control",
        "is root-owned and executable",
    ] {
        assert!(r.contains(want), "missing {want:?}:\n{r}");
    }
    assert!(!r.contains("FAIL  PAM service"), "{r}");

    // A typo in an argument: pam_nod.so refuses every authentication.
    let typo = PamService::new("typo", &line(&format!("conf={} debg", conf.display())));
    let (rc, r) = doctor(&s, &["--pam-service", &typo.name]);
    assert_eq!(rc, 1, "{r}");
    assert_fail(
        &r,
        "unknown module argument \"debg\", so pam_nod.so refuses every authentication",
        "valid arguments are conf=PATH, helper=PATH, timeout_ms=N and debug",
    );

    // A conf= that does not exist.
    let missing = s.path("confg.toml");
    let typo_conf = PamService::new("conf", &line(&format!("conf={}", missing.display())));
    let (rc, r) = doctor(&s, &["--pam-service", &typo_conf.name]);
    assert_eq!(rc, 1, "{r}");
    assert_fail(
        &r,
        &format!("conf={} does not exist", missing.display()),
        &format!("the config checked above is {}", conf.display()),
    );

    // A conf= naming an unsafe file.
    let unsafe_conf = s.write("other.toml", &fs::read_to_string(&conf).unwrap(), 0o666);
    let bad_conf = PamService::new("unsafe", &line(&format!("conf={}", unsafe_conf.display())));
    let (_, r) = doctor(&s, &["--pam-service", &bad_conf.name]);
    assert_fail(&r, "writable by group or others", "chmod go-w");

    // Bracketed arguments are one argument each, as libpam reads them.
    let bracket = PamService::new(
        "bracket",
        &line(&format!(
            "[conf={}] [timeout_ms=5000 debug]",
            conf.display()
        )),
    );
    let (_, r) = doctor(&s, &["--pam-service", &bracket.name]);
    assert_fail(&r, "timeout_ms=\"5000 debug\"", "timeout_ms=30000");
}

#[test]
fn the_hosts_own_key_pinned_as_the_agent_key_fails() {
    let Some(s) = Scratch::new() else { return };
    s.write_pub("agent.pub", &host_key());
    let (rc, r) = doctor(&s, &[]);
    assert_eq!(rc, 1, "{r}");
    assert_fail(&r, "pins this host's own public key", "`nod agent-key`");
}

#[test]
fn doctor_as_non_root_says_to_run_it_as_root() {
    let Some(s) = Scratch::new() else { return };
    let config = s.config_path();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_nod-helper"))
        .args(["doctor", "--config"])
        .arg(&config)
        .env_clear()
        .output()
        .expect("setpriv (util-linux)");
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1), "{r}");
    assert_fail(
        &r,
        "doctor runs as uid 65534, not root",
        "sudo nod-helper doctor",
    );
    assert!(!r.contains("create /etc/nod"), "{r}");
}
