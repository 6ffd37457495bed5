//! Admin tooling end to end: `nod pair` against a real loopback sshd makes a sudo approval
//! work with no manual step (and changes nothing the second time), and `nod doctor` /
//! `nod-helper doctor` report each broken state set up here, with the fix.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};

use nod_e2e::{
    Agent, Answer, FallbackMarker, Host, PamService, Scratch, Sshd, SudoersDropIn, TestUser, code,
    require, run, run_ok,
};

const RECOMMENDED: &str = "[success=done authinfo_unavail=ignore default=die]";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A "pre-installed host": helper, module and config in place, no agent pinned yet.
#[test]
fn pair_makes_sudo_approval_work_and_second_run_changes_nothing() {
    if !require(&[
        "sshd",
        "ssh",
        "ssh-keygen",
        "sudo",
        "visudo",
        "useradd",
        "chpasswd",
    ]) {
        return;
    }
    const PASSWORD: &str = "nod-e2e-pair-password";
    let scratch = Scratch::new("pair");
    let user = TestUser::ensure("nodpair", PASSWORD);
    let runtime = user.runtime_dir();
    let remote_socket = runtime.join("nod-agent.sock");
    let _ = fs::remove_file(&remote_socket);

    let agent = Agent::start(&scratch);
    let module = scratch.install("libpam_nod.so", "pam_nod.so");
    let host = Host::setup(&scratch, "pair-host", "", "/run/user/{uid}/nod-agent.sock");
    let agents_d = scratch.join("etc-nod/agents.d");
    fs::remove_file(agents_d.join("workstation.pub")).unwrap();
    let fallback = FallbackMarker::new(&scratch);
    let service = PamService::new(
        "pair",
        &format!(
            "auth {RECOMMENDED} {} conf={} helper={} timeout_ms=5000\n\
             auth optional pam_exec.so quiet seteuid {}\n\
             auth required pam_unix.so\n\
             account required pam_permit.so\n\
             session required pam_permit.so\n",
            module.display(),
            host.config.display(),
            host.helper.display(),
            fallback.script.display()
        ),
    );
    let sshd = Sshd::start(&scratch, &user);
    let original = format!(
        "# the user's own config, kept byte for byte\n\
         Host pairhost\n\
         \x20   HostName 127.0.0.1\n\
         \x20   Port {}\n\
         \x20   User {}\n\
         \x20   IdentityFile {}\n\
         \x20   IdentitiesOnly yes\n\
         \x20   StrictHostKeyChecking no\n\
         \x20   UserKnownHostsFile /dev/null\n\
         \x20   BatchMode yes\n\
         \x20   LogLevel ERROR",
        sshd.port,
        user.name,
        sshd.client_key.display()
    );
    let ssh_config = scratch.file("ssh_config", 0o600, &original);
    let pair = || {
        run(agent
            .nod(["pair", "pairhost", "--name", "ws", "--host-config"])
            .arg(&host.config)
            .arg("--ssh-config")
            .arg(&ssh_config)
            .stdin(Stdio::null()))
    };

    // The install step goes through `sudo -n`, so allow it for the duration of pairing only.
    let nopasswd = SudoersDropIn::new(
        "pair-install",
        &format!("{} ALL=(root) NOPASSWD: ALL\n", user.name),
    );
    let out = pair();
    assert!(out.status.success(), "first pair failed: {out:?}");
    let first = stdout(&out);
    assert!(first.contains("allowed host pair-host"), "{first}");
    assert!(first.contains("installed this agent's key"), "{first}");
    assert!(first.contains("wrote the RemoteForward block"), "{first}");

    let pinned = agents_d.join("ws.pub");
    let meta = fs::metadata(&pinned).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o644));
    assert_eq!(
        fs::read_to_string(&pinned).unwrap(),
        agent.public_key_file()
    );
    let written = fs::read_to_string(&ssh_config).unwrap();
    assert!(
        written.starts_with(&original),
        "the rest of the ssh config changed"
    );
    assert!(written.contains("# BEGIN nod pairhost\n"), "{written}");
    assert!(
        written.contains(&format!(
            "RemoteForward {} {}",
            remote_socket.display(),
            agent.socket.display()
        )),
        "{written}"
    );
    assert_eq!(
        fs::metadata(&ssh_config).unwrap().mode() & 0o7777,
        0o600,
        "mode not kept"
    );

    // Second run: nothing to do, nothing touched.
    let pinned_mtime = fs::metadata(&pinned).unwrap().mtime_nsec();
    let hosts_toml = agent.home.join("config/nod/hosts.toml");
    let hosts_before = fs::read(&hosts_toml).unwrap();
    let out = pair();
    assert!(out.status.success(), "second pair failed: {out:?}");
    let second = stdout(&out);
    assert!(second.contains("nothing changed"), "{second}");
    assert!(!second.contains("installed"), "{second}");
    assert_eq!(fs::read_to_string(&ssh_config).unwrap(), written);
    assert_eq!(fs::read(&hosts_toml).unwrap(), hosts_before);
    assert_eq!(
        fs::metadata(&pinned).unwrap().mtime_nsec(),
        pinned_mtime,
        "the pinned key was rewritten"
    );

    let doctor_host = |extra: &[&str]| {
        let out = run(agent
            .nod(["doctor", "--host", "pairhost", "--ssh-config"])
            .arg(&ssh_config)
            .arg("--host-config")
            .arg(&host.config)
            .arg("--remote-helper")
            .arg(&host.helper)
            .args(extra)
            .stdin(Stdio::null()));
        (code(&out), stdout(&out))
    };

    // From a terminal (under `script`, which gives it a pty) pair uses `ssh -t` and a plain
    // `sudo` that may prompt; with the key removed on the host it installs it again.
    fs::remove_file(&pinned).unwrap();
    let inner = format!(
        "{} pair pairhost --name ws --host-config {} --ssh-config {}",
        nod_e2e::artifact("nod").display(),
        host.config.display(),
        ssh_config.display()
    );
    let out = run(Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", &agent.home)
        .env("XDG_CONFIG_HOME", agent.home.join("config"))
        .env("XDG_DATA_HOME", agent.home.join("data"))
        .env("XDG_STATE_HOME", agent.home.join("state"))
        .env("XDG_RUNTIME_DIR", agent.home.join("runtime"))
        .stdin(Stdio::null()));
    let third = stdout(&out);
    eprintln!("first pair:\n{first}second pair:\n{second}pair on a terminal:\n{third}");
    assert!(out.status.success(), "pair on a terminal failed: {third}");
    assert!(third.contains("installed this agent's key"), "{third}");
    assert!(third.contains("unchanged: host pair-host"), "{third}");
    assert_eq!(
        fs::read_to_string(&pinned).unwrap(),
        agent.public_key_file()
    );

    // The host's key is regenerated: `nod doctor --host` says so (as pair does), and pair
    // refuses until told, and then replaces it.
    let host_key = scratch.join("etc-nod/host_ed25519.key");
    run_ok(
        Command::new(&host.helper)
            .args(["gen-key", "--force", "--private-key-file"])
            .arg(&host_key)
            .arg("--public-key-file")
            .arg(&host.host_pub),
    );
    let (rc, report) = doctor_host(&[]);
    eprintln!("nod doctor --host, host key regenerated:\n{report}");
    assert_eq!(rc, 1, "{report}");
    assert_fail(
        &report,
        "host key of pair-host changed",
        "nod pair pairhost --replace-host-key",
    );
    let out = pair();
    assert!(
        !out.status.success(),
        "a changed host key was accepted: {out:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--replace-host-key"), "{err}");
    assert_eq!(
        fs::read(&hosts_toml).unwrap(),
        hosts_before,
        "refusal changed the allowlist"
    );
    let out = run(agent
        .nod([
            "pair",
            "pairhost",
            "--name",
            "ws",
            "--replace-host-key",
            "--host-config",
        ])
        .arg(&host.config)
        .arg("--ssh-config")
        .arg(&ssh_config)
        .stdin(Stdio::null()));
    assert!(
        stdout(&out).contains("replaced the key of host pair-host"),
        "{out:?}"
    );

    // An open login with the forward of the written block, whose sudo waits for `go`.
    let go = scratch.join("go");
    let remote_cmd = format!(
        "i=0; while [ ! -S {sock} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; \
         echo up; i=0; while [ ! -e {go} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; \
         sudo -S -p '' id -u",
        sock = remote_socket.display(),
        go = go.display()
    );
    let mut session = Command::new("ssh")
        .arg("-F")
        .arg(&ssh_config)
        .args(["pairhost", &remote_cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut session_out = std::io::BufReader::new(session.stdout.take().unwrap());
    let mut up = String::new();
    std::io::BufRead::read_line(&mut session_out, &mut up).unwrap();
    assert_eq!(
        up.trim(),
        "up",
        "the open session's forward did not come up"
    );

    // Pair and doctor --host run their own ssh while that session is open; neither may touch
    // its forward.
    let out = pair();
    assert!(stdout(&out).contains("nothing changed"), "{out:?}");
    // (sshd's own checks read this machine's sshd_config, not the test sshd's: not asserted.)
    let (_, report) = doctor_host(&["--pam-service", &service.name]);
    eprintln!("nod doctor --host, session open:\n{report}");
    for line in [
        "ok    host allowlist lists pair-host",
        "ok    clock skew to pairhost: between ",
        "ok    host key of pair-host: pairhost has the key pinned here",
        "ok    the workstation's agent key",
        "ok    config ",
        "pam_nod.so with the recommended control",
        "is root-owned and executable",
    ] {
        assert!(report.contains(line), "missing {line:?}:\n{report}");
    }
    assert!(
        report.contains(&format!(
            "ok    forwarded socket {} is owned by {} and an open `ssh -R` session serves it",
            remote_socket.display(),
            user.name
        )),
        "the open session's forward was not seen:\n{report}"
    );
    assert!(!report.contains("FAIL  forwarded socket"), "{report}");
    drop(nopasswd);

    // Now the open session's sudo goes through the nod PAM service, and is approved.
    let _sudoers = SudoersDropIn::sudo_through("pair-sudo", &user.name, &service.name);
    agent.answer(Answer::Approve);
    fs::write(&go, "").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut session_out, &mut rest).unwrap();
    let status = session.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut session.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(
        rest.trim(),
        "0",
        "the open session's sudo did not run after approval ({status}): {err}"
    );
    assert!(!fallback.taken(), "fell back to the password");
    let prompts = agent.prompts();
    assert_eq!(prompts.len(), 1, "{prompts:?}");
    assert_eq!(prompts[0]["user"], user.name.as_str());
    assert_eq!(prompts[0]["host_id"], "pair-host");
}

fn doctor_output(cmd: &mut Command) -> (i32, String) {
    let out = run(cmd.stdin(Stdio::null()));
    (code(&out), stdout(&out))
}

/// Asserts a FAIL line containing `what`, followed by a fix line containing `fix`.
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
fn nod_doctor_reports_missing_socket_bad_modes_and_empty_allowlist() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new("doctor-ws");
    let mut agent = Agent::start(&scratch);
    let doctor = |agent: &Agent| doctor_output(&mut agent.nod(["doctor"]));

    let (rc, report) = doctor(&agent);
    assert_eq!(rc, 1, "{report}");
    assert!(
        report.contains("ok    agent is running"),
        "agent not seen running:\n{report}"
    );
    assert_fail(&report, "lists no hosts", "nod pair");

    let host = Host::setup(
        &scratch,
        "doc-host",
        &agent.public_key_file(),
        "/nonexistent",
    );
    agent.add_host("doc-host", &host.host_pub);
    let (rc, report) = doctor(&agent);
    assert_eq!(rc, 0, "a healthy setup failed:\n{report}");
    assert!(
        report.contains("ok    host allowlist lists doc-host"),
        "{report}"
    );

    // Bad permissions: socket, its directory, the agent key.
    let key = agent.home.join("data/nod/agent_ed25519.sealed");
    fs::set_permissions(&agent.socket, fs::Permissions::from_mode(0o666)).unwrap();
    let dir = agent.socket.parent().unwrap().to_owned();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let (rc, report) = doctor(&agent);
    assert_eq!(rc, 1, "{report}");
    assert_fail(&report, "has mode 0666, not 0600", "chmod 600");
    assert_fail(&report, "has mode 0755", "chmod 700");
    assert_fail(&report, "others may read the agent key", "chmod 600");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

    // Agent stopped: the socket is gone.
    agent.stop();
    let (rc, report) = doctor(&agent);
    assert_eq!(rc, 1, "{report}");
    assert_fail(
        &report,
        "the agent is not running",
        "systemctl --user enable --now nod-agent.service",
    );
}

#[test]
fn helper_doctor_reports_socket_sshd_key_mismatch_config_and_pam_problems() {
    if !require(&["sshd", "ssh-keygen"]) {
        return;
    }
    let scratch = Scratch::new("doctor-host");
    let agent = Agent::start(&scratch);
    let other = Scratch::new("doctor-other");
    let other_agent = Agent::start(&other);
    let socket_template = format!("{}/fwd-{{user}}.sock", scratch.path.display());
    let host = Host::setup(
        &scratch,
        "doc-host",
        &agent.public_key_file(),
        &socket_template,
    );
    let module = scratch.install("libpam_nod.so", "pam_nod.so");
    let agent_pub = scratch.file("agent.pub", 0o644, &agent.public_key_file());
    let other_pub = other.file("agent.pub", 0o644, &other_agent.public_key_file());

    // sshd configs: a good one and one that forbids the forward.
    let host_key = scratch.join("ssh_host_ed25519_key");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key),
    );
    let sshd_good = scratch.file(
        "sshd_good",
        0o644,
        &format!(
            "HostKey {}\nAllowStreamLocalForwarding yes\nStreamLocalBindUnlink yes\n",
            host_key.display()
        ),
    );
    let sshd_bad = scratch.file(
        "sshd_bad",
        0o644,
        &format!(
            "HostKey {}\nAllowStreamLocalForwarding no\nStreamLocalBindUnlink no\n",
            host_key.display()
        ),
    );
    let good_pam = PamService::new(
        "doctor-good",
        &format!(
            "auth {RECOMMENDED} {} conf={} helper={}\nauth required pam_unix.so\n",
            module.display(),
            host.config.display(),
            host.helper.display()
        ),
    );
    let bad_pam = PamService::new(
        "doctor-bad",
        &format!(
            "auth sufficient {} conf={}\n",
            module.display(),
            host.config.display()
        ),
    );
    let helper_doctor =
        |user: &str, agent_key: &std::path::Path, sshd: &std::path::Path, pam: &str| {
            doctor_output(
                Command::new(&host.helper)
                    .arg("doctor")
                    .arg("--config")
                    .arg(&host.config)
                    .args(["--user", user, "--pam-service", pam])
                    .arg("--agent-key")
                    .arg(agent_key)
                    .arg("--sshd-config")
                    .arg(sshd)
                    .env_clear(),
            )
        };

    // Everything right, with root's forwarded socket in place.
    nod_e2e::sshd_privsep_dir();
    let _root_socket = UnixListener::bind(scratch.join("fwd-root.sock")).unwrap();
    let (rc, report) = helper_doctor("root", &agent_pub, &sshd_good, &good_pam.name);
    assert_eq!(rc, 0, "a healthy host failed:\n{report}");
    for line in [
        "ok    forwarded socket",
        "ok    sshd: AllowStreamLocalForwarding yes",
        "ok    sshd: StreamLocalBindUnlink yes",
        "ok    the workstation's agent key",
        "ok    PAM module",
    ] {
        assert!(report.contains(line), "missing {line:?}:\n{report}");
    }

    // Socket missing (no forward for this user), sshd forbidding the forward, another
    // workstation's key, and a PAM line with the wrong control.
    let (rc, report) = helper_doctor("nobody", &other_pub, &sshd_bad, &bad_pam.name);
    assert_eq!(rc, 1, "{report}");
    assert_fail(&report, "no forwarded socket", "nod pair");
    assert_fail(
        &report,
        "AllowStreamLocalForwarding no",
        "set AllowStreamLocalForwarding yes",
    );
    assert_fail(
        &report,
        "StreamLocalBindUnlink no",
        "set StreamLocalBindUnlink yes",
    );
    assert_fail(&report, "is not pinned here", "nod pair");
    assert_fail(&report, "unexpected pam_nod.so control", RECOMMENDED);

    // A socket owned by someone else than the user.
    let _wrong_owner = UnixListener::bind(scratch.join("fwd-nobody.sock")).unwrap();
    let (_, report) = helper_doctor("nobody", &agent_pub, &sshd_good, &good_pam.name);
    assert_fail(&report, "not by nobody", "sudo rm");

    // Unsafe config permissions.
    fs::set_permissions(&host.config, fs::Permissions::from_mode(0o666)).unwrap();
    let (rc, report) = helper_doctor("root", &agent_pub, &sshd_good, &good_pam.name);
    assert_eq!(rc, 1, "{report}");
    assert_fail(&report, "writable by group or others", "chmod go-w");
    let _ = std::io::stdout().flush();
}
