//! `nod ssh-agent` as a drop-in for OpenSSH's `ssh-agent`, driven by a real shell, `ssh-add`
//! and `ssh-keygen`: `eval "$(nod ssh-agent -s)"`, add, list, sign, `-k`; the csh lines; `-D`
//! with `-a`; `-t` as the default lifetime; OpenSSH 10's other flags (`-T -u -U -V -O -P`),
//! usage errors, and its signals (SIGTERM, SIGHUP, SIGINT, SIGUSR1). OpenSSH's own agent
//! regress tests run against it too (`make openssh-regress`).
//!
//! Without `ssh-add`/`ssh-keygen` the tests are skipped with a notice, except under `CI=true`,
//! where they fail.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

mod common;

use common::{TempDir, have_openssh, out};

/// A command with a clean environment: `nod` on PATH, everything under the temp dir.
fn command(dir: &TempDir, program: &str) -> Command {
    let nod_dir = Path::new(env!("CARGO_BIN_EXE_nod")).parent().unwrap();
    let mut cmd = common::command(dir, program);
    cmd.env("PATH", format!("{}:/usr/bin:/bin", nod_dir.display()))
        .env("TMPDIR", dir.path("tmp"));
    cmd
}

fn keygen(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.path(name);
    let o = command(dir, "ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "dropin@nod-test",
            "-f",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    path
}

fn alive(pid: i32) -> bool {
    // A zombie still answers signal 0; it has no /proc/<pid>/exe any more.
    kill(Pid::from_raw(pid), None).is_ok() && fs::read_link(format!("/proc/{pid}/exe")).is_ok()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

#[test]
fn eval_add_list_sign_and_kill_like_ssh_agent() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-dropin", &["home", "tmp"]);
    let key = keygen(&dir, "id_ed25519");
    fs::write(dir.path("msg"), "hello\n").unwrap();
    let script = format!(
        "set -e\n\
         eval \"$(nod ssh-agent -s)\"\n\
         echo \"sock=$SSH_AUTH_SOCK\"\n\
         echo \"pid=$SSH_AGENT_PID\"\n\
         ssh-add {key} 2>/dev/null\n\
         ssh-add -l\n\
         ssh-keygen -Y sign -n file -f {key}.pub {msg} 2>/dev/null\n\
         eval \"$(nod ssh-agent -k)\"\n\
         echo \"after=${{SSH_AGENT_PID:-unset}}/${{SSH_AUTH_SOCK:-unset}}\"\n",
        key = key.display(),
        msg = dir.path("msg").display()
    );
    let o = command(&dir, "/bin/sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let sock = PathBuf::from(field(&text, "sock="));
    let pid: i32 = field(&text, "pid=").parse().unwrap();
    // OpenSSH 10's default: ~/.ssh/agent/s.<10-char host hash>.agent.<10 random>.
    assert_eq!(
        sock.parent().unwrap(),
        dir.path("home/.ssh/agent"),
        "{text}"
    );
    let name = sock.file_name().unwrap().to_string_lossy().into_owned();
    let parts: Vec<&str> = name.split('.').collect();
    assert_eq!(parts.len(), 4, "{name}");
    assert_eq!((parts[0], parts[2]), ("s", "agent"), "{name}");
    assert_eq!((parts[1].len(), parts[3].len()), (10, 10), "{name}");
    assert_eq!(
        fs::metadata(dir.path("home/.ssh/agent"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert!(text.contains("dropin@nod-test (ED25519)"), "{text}");
    assert!(text.contains(&format!("Agent pid {pid} killed")), "{text}");
    assert!(text.contains("after=unset/unset"), "{text}");
    assert!(dir.path("msg.sig").exists(), "signed through the agent");
    wait_until("the background agent to exit", || !alive(pid));
    wait_until("the socket to go", || !sock.exists());

    // -T: $TMPDIR/ssh-XXXXXXXXXXXX/agent.<pid>, as before OpenSSH 10.1; the directory goes
    // with the agent.
    let o = command(&dir, env!("CARGO_BIN_EXE_nod"))
        .args(["ssh-agent", "-T", "-s"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let sock = PathBuf::from(
        field(&text, "SSH_AUTH_SOCK=")
            .split(';')
            .next()
            .unwrap()
            .to_owned(),
    );
    let pid: i32 = field(&text, "SSH_AGENT_PID=")
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let sock_dir = sock.parent().unwrap().to_owned();
    assert!(
        sock.starts_with(dir.path("tmp")),
        "socket under $TMPDIR: {text}"
    );
    assert!(
        sock_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("ssh-"),
        "{text}"
    );
    assert!(
        sock.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("agent."),
        "{text}"
    );
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    wait_until("the -T agent to exit", || !alive(pid));
    wait_until("the socket directory to go", || !sock_dir.exists());
}

#[test]
fn csh_lines_and_kill_by_pid() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-dropin", &["home", "tmp"]);
    let o = command(&dir, env!("CARGO_BIN_EXE_nod"))
        .args(["ssh-agent", "-c"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let sock = lines[0]
        .strip_prefix("setenv SSH_AUTH_SOCK ")
        .and_then(|l| l.strip_suffix(';'))
        .unwrap_or_else(|| panic!("{text}"));
    let pid = lines[1]
        .strip_prefix("setenv SSH_AGENT_PID ")
        .and_then(|l| l.strip_suffix(';'))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(lines[2], format!("echo Agent pid {pid};"));
    let o = command(&dir, "ssh-add")
        .arg("-l")
        .env("SSH_AUTH_SOCK", sock)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "empty agent: {}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no identities"),
        "{}",
        out(&o)
    );
    let o = command(&dir, env!("CARGO_BIN_EXE_nod"))
        .args(["ssh-agent", "-k", "-c"])
        .env("SSH_AGENT_PID", pid)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("unsetenv SSH_AUTH_SOCK;\nunsetenv SSH_AGENT_PID;\necho Agent pid {pid} killed;\n")
    );
    let pid: i32 = pid.parse().unwrap();
    wait_until("the agent to exit", || !alive(pid));
    let o = command(&dir, env!("CARGO_BIN_EXE_nod"))
        .args(["ssh-agent", "-k"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("SSH_AGENT_PID not set"),
        "{}",
        out(&o)
    );
}

#[test]
fn foreground_with_bind_address_and_default_lifetime() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-dropin", &["home", "tmp"]);
    let sock = dir.path("agent.sock");
    let mut child = command(&dir, env!("CARGO_BIN_EXE_nod"))
        .args(["ssh-agent", "-D", "-s", "-t", "2", "-E", "sha256", "-a"])
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(
        first,
        format!("SSH_AUTH_SOCK={}; export SSH_AUTH_SOCK;\n", sock.display())
    );
    assert!(fs::symlink_metadata(&sock).unwrap().file_type().is_socket());
    let key = keygen(&dir, "id_short");
    let ssh_add = |args: &[&str]| {
        command(&dir, "ssh-add")
            .args(args)
            .env("SSH_AUTH_SOCK", &sock)
            .output()
            .unwrap()
    };
    let o = ssh_add(&[key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(ssh_add(&["-l"]).status.success());
    // -t 2: the key is gone after two seconds, as with `ssh-agent -t 2`.
    std::thread::sleep(Duration::from_millis(2500));
    let o = ssh_add(&["-l"]);
    assert_eq!(o.status.code(), Some(1), "key expired: {}", out(&o));

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    // As ssh-agent: status 2 after SIGTERM.
    assert_eq!(child.wait().unwrap().code(), Some(2));
    assert!(!sock.exists(), "socket removed on exit");
}

/// The drop-in serves the keystore's persistent keys too, as `nod agent` does.
#[test]
fn keystore_keys_show_in_the_drop_in_agent() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-dropin", &["home", "tmp"]);
    let o = command(&dir, env!("CARGO_BIN_EXE_nod"))
        .args(["keys", "generate", "--name", "stored-in-keystore"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let public = dir.path("stored.pub");
    fs::write(&public, &o.stdout).unwrap();
    let o = command(&dir, "ssh-keygen")
        .arg("-lf")
        .arg(&public)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let listed = String::from_utf8_lossy(&o.stdout).into_owned();
    let fingerprint = listed.split_whitespace().nth(1).unwrap().to_owned();

    let sock = dir.path("agent.sock");
    let mut child = command(&dir, env!("CARGO_BIN_EXE_nod"))
        .args(["ssh-agent", "-D", "-s", "-a"])
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let o = command(&dir, "ssh-add")
        .arg("-l")
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(list.contains(&fingerprint), "{fingerprint} not in {list}");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(2));
}

/// `nod ssh-agent command …`: the command runs with the agent's variables, as the process
/// that ran `nod` (same pid, its exit status), and the agent stops when it ends.
#[test]
fn a_command_runs_with_the_agent_which_ends_with_it() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-dropin", &["home", "tmp"]);
    let key = keygen(&dir, "id_ed25519");
    let script = format!(
        "echo \"sock=$SSH_AUTH_SOCK\"; echo \"agent=$SSH_AGENT_PID\"; echo \"self=$$\"\n\
         ssh-add -q '{}' && ssh-add -l\n\
         exit 7",
        key.display()
    );
    let child = command(&dir, env!("CARGO_BIN_EXE_nod"))
        .args(["ssh-agent", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let nod_pid = child.id();
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(7), "{}", out(&o));
    assert_eq!(field(&text, "self="), nod_pid.to_string(), "{text}");
    assert!(text.contains("dropin@nod-test"), "{}", out(&o));
    let socket = PathBuf::from(field(&text, "sock="));
    let agent: i32 = field(&text, "agent=").parse().unwrap();
    wait_until("the agent to stop after the command", || !alive(agent));
    wait_until("the socket to go", || !socket.exists());

    // A command that cannot run: an error, and no agent left behind.
    let o = command(&dir, env!("CARGO_BIN_EXE_nod"))
        .args(["ssh-agent", "/nonexistent/program"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent/program"),
        "{}",
        out(&o)
    );
    wait_until("no socket left", || {
        fs::read_dir(dir.path("home/.ssh/agent"))
            .unwrap()
            .next()
            .is_none()
    });
}

#[test]
fn bad_flags_are_usage_errors() {
    let dir = TempDir::new("nod-dropin", &["home", "tmp"]);
    // Usage errors: ssh-agent's usage text and status 1; an unknown flag is never a command.
    for args in [
        &["ssh-agent", "-x"][..],
        &["ssh-agent", "-h"],
        &["ssh-agent", "-x", "-s"],
        &["ssh-agent", "--bogus"],
        &["ssh-agent", "-t", "soon"],
        &["ssh-agent", "-c", "-s"],
        &["ssh-agent", "-d", "-D"],
        &["ssh-agent", "-s", "sh"],
        &["ssh-agent", "-D", "true"],
        &["ssh-agent", "-u", "true"],
    ] {
        let o = command(&dir, env!("CARGO_BIN_EXE_nod"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", out(&o));
        assert!(
            o.stdout.is_empty(),
            "{args:?}: nothing to eval: {}",
            out(&o)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("usage: nod ssh-agent [-c | -s] [-DdTU]"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("cannot run"), "{args:?}: {err}");
    }
    // What ssh-agent calls fatal: status 255.
    for args in [
        &["ssh-agent", "-E", "sha1"][..],
        &["ssh-agent", "-O", "bogus"],
        &["ssh-agent", "-P", "/a", "-P", "/b"],
    ] {
        let o = command(&dir, env!("CARGO_BIN_EXE_nod"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(255), "{args:?}: {}", out(&o));
        assert!(o.stdout.is_empty(), "{args:?}: {}", out(&o));
    }
    let o = command(&dir, env!("CARGO_BIN_EXE_nod"))
        .args(["ssh-agent", "-V"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("nod "));
    // Nothing was started by any of these.
    assert!(
        !dir.path("home/.ssh/agent").exists()
            || fs::read_dir(dir.path("home/.ssh/agent"))
                .unwrap()
                .next()
                .is_none()
    );
}

/// The flags OpenSSH's regress suite passes: `-P<allowlist>` (always, when security keys are
/// built) with `-s`, `-a`, `-d`; and the `-O` options, accepted and logged as having no
/// effect.
#[test]
fn provider_allowlist_and_options_are_accepted() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-dropin", &["home", "tmp"]);
    let script = "set -e\n\
                  eval \"$(nod ssh-agent -P/* -s)\" >/dev/null\n\
                  ssh-add -l >/dev/null 2>&1 || test $? = 1\n\
                  echo ok\n\
                  eval \"$(nod ssh-agent -k)\" >/dev/null\n";
    let o = command(&dir, "/bin/sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "ok",
        "{}",
        out(&o)
    );

    let sock = dir.path("agent.sock");
    let mut child = command(&dir, env!("CARGO_BIN_EXE_nod"))
        .args(["ssh-agent", "-P/usr/lib*/*", "-O", "allow-remote-pkcs11"])
        .args([
            "-O",
            "no-restrict-websafe",
            "-O",
            "websafe-allow=ssh:*",
            "-d",
            "-a",
        ])
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.path("agent.log")).unwrap())
        .spawn()
        .unwrap();
    wait_until("the socket", || sock.exists());
    // ssh-add -s asks the agent to load a PKCS#11 provider: refused, with a log line.
    let o = command(&dir, "ssh-add")
        .args(["-s", "/usr/lib/x86_64-linux-gnu/pkcs11/none.so"])
        .env("SSH_AUTH_SOCK", &sock)
        .env("SSH_ASKPASS_REQUIRE", "never")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", out(&o));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    // -d: SIGINT stops it (status 2), as ssh-agent in the foreground.
    assert_eq!(child.wait().unwrap().code(), Some(2));
    let log = fs::read_to_string(dir.path("agent.log")).unwrap();
    for line in [
        "-P /usr/lib*/*: nod loads no PKCS#11 or FIDO provider libraries",
        "-O allow-remote-pkcs11 has no effect",
        "-O no-restrict-websafe / websafe-allow have no effect",
    ] {
        assert!(log.contains(line), "{line:?} not in {log}");
    }
    assert!(
        log.contains("PKCS#11 provider") && log.contains("nod loads no provider libraries"),
        "{log}"
    );
}

/// Signals as ssh-agent: SIGINT is ignored by the background agent, SIGUSR1 drops every added
/// key and the agent goes on, SIGHUP removes the socket and ends it.
#[test]
fn signals_behave_as_in_ssh_agent() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-dropin", &["home", "tmp"]);
    let o = command(&dir, env!("CARGO_BIN_EXE_nod"))
        .args(["ssh-agent", "-s"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let sock = PathBuf::from(field(&text, "SSH_AUTH_SOCK=").split(';').next().unwrap());
    let pid: i32 = field(&text, "SSH_AGENT_PID=")
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let key = keygen(&dir, "id_ed25519");
    let ssh_add = |args: &[&str]| {
        command(&dir, "ssh-add")
            .args(args)
            .env("SSH_AUTH_SOCK", &sock)
            .output()
            .unwrap()
    };
    assert!(ssh_add(&[key.to_str().unwrap()]).status.success());
    assert!(ssh_add(&["-l"]).status.success());

    kill(Pid::from_raw(pid), Signal::SIGINT).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(pid), "SIGINT is ignored in the background");

    kill(Pid::from_raw(pid), Signal::SIGUSR1).unwrap();
    wait_until("SIGUSR1 to drop the keys", || {
        ssh_add(&["-l"]).status.code() == Some(1)
    });
    assert!(alive(pid), "still serving after SIGUSR1");
    assert!(ssh_add(&[key.to_str().unwrap()]).status.success());
    assert!(ssh_add(&["-l"]).status.success());

    kill(Pid::from_raw(pid), Signal::SIGHUP).unwrap();
    wait_until("SIGHUP to end the agent", || !alive(pid));
    assert!(!sock.exists(), "socket removed on SIGHUP");
}

/// `-u` removes the stale sockets of this host in ~/.ssh/agent (older than an hour, nobody
/// listening) and exits; `-U` starts without touching them; a plain start cleans them.
#[test]
fn stale_sockets_are_cleaned_as_ssh_agent_does() {
    let dir = TempDir::new("nod-dropin", &["home", "tmp"]);
    let start = |args: &[&str]| {
        let o = command(&dir, env!("CARGO_BIN_EXE_nod"))
            .arg("ssh-agent")
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", out(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // A socket of a dead agent: start one, note its name, stop it the hard way (SIGKILL
    // leaves the socket), then age it.
    let text = start(&["-s"]);
    let stale = PathBuf::from(field(&text, "SSH_AUTH_SOCK=").split(';').next().unwrap());
    let pid: i32 = field(&text, "SSH_AGENT_PID=")
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    wait_until("the agent to die", || !alive(pid));
    assert!(stale.exists());
    let age = |path: &Path| {
        let o = Command::new("touch")
            .args(["-h", "-d", "2 hours ago"])
            .arg(path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", out(&o));
    };
    age(&stale);
    // -U leaves it; the agent started with -U works.
    let text = start(&["-U", "-s"]);
    assert!(stale.exists(), "-U keeps stale sockets");
    let pid: i32 = field(&text, "SSH_AGENT_PID=")
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // -u cleans up and exits; the live agent's socket stays.
    let live = PathBuf::from(field(&text, "SSH_AUTH_SOCK=").split(';').next().unwrap());
    age(&live);
    let text = start(&["-u"]);
    assert_eq!(text, "Deleted stale agent sockets in ~/.ssh/agent\n");
    assert!(!stale.exists(), "-u removed the stale socket");
    assert!(live.exists(), "a live agent's socket stays");
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    wait_until("the agent to exit", || !alive(pid));
}
