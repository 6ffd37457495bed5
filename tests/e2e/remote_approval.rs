//! Remote approval end to end: nod-helper → approval socket (directly, through a tampering
//! proxy, or through a real sshd `ssh -R` forward) → `nod agent` → command approver, and back;
//! then the same through `pam_nod.so` under pamtester and real sudo, with nod's own files and
//! with a host laid out in macos-auth's formats and defaults.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nod_e2e::{
    Agent, Answer, FallbackMarker, Host, PamService, Scratch, Sshd, SudoersDropIn, TamperProxy,
    TestUser, code, require, run, run_ok,
};

const APPROVED: i32 = 0;
const UNAVAILABLE: i32 = 10;
const CANCELLED: i32 = 11;
const DENIED: i32 = 20;
const AUTH_FAILURE: i32 = 30;

/// Agent plus a host whose config points straight at the agent's socket, the host pinned.
fn agent_and_host(scratch: &Scratch, host_id: &str) -> (Agent, Host) {
    let agent = Agent::start(scratch);
    let host = Host::setup(
        scratch,
        host_id,
        &agent.public_key_file(),
        &agent.socket.display().to_string(),
    );
    agent.add_host(host_id, &host.host_pub);
    (agent, host)
}

#[test]
fn helper_exit_codes_follow_the_agents_decision() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new("codes");
    let (agent, host) = agent_and_host(&scratch, "codes-host");

    agent.answer(Answer::Approve);
    assert_eq!(code(&host.request("root", &[])), APPROVED);
    agent.answer(Answer::Deny);
    assert_eq!(code(&host.request("root", &[])), DENIED);
    agent.answer(Answer::Cancel);
    assert_eq!(code(&host.request("root", &[])), CANCELLED);
    assert_eq!(agent.prompts().len(), 3);
}

#[test]
fn prompt_names_host_service_user_tty_rhost_and_command() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new("prompt");
    let (agent, host) = agent_and_host(&scratch, "prompt-host");
    let out = host.request(
        "root",
        &[
            "--rhost",
            "10.1.2.3",
            "--ruser",
            "alice",
            "--sudo-command",
            "sudo systemctl restart nginx",
        ],
    );
    assert_eq!(code(&out), APPROVED);
    let prompts = agent.prompts();
    let p = &prompts[0];
    assert_eq!(p["host"], "prompt-host.example.test");
    assert_eq!(p["host_id"], "prompt-host");
    assert_eq!(p["service"], "sudo");
    assert_eq!(p["user"], "root");
    assert_eq!(p["ruser"], "alice");
    assert_eq!(p["tty"], "pts/7");
    assert_eq!(p["rhost"], "10.1.2.3");
    assert_eq!(p["command"], "sudo systemctl restart nginx");
}

#[test]
fn agent_down_or_host_unknown_is_unavailable() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new("unavail");
    let mut agent = Agent::start(&scratch);
    // Not added to the allowlist: the agent accepts, logs and closes without a reply.
    let host = Host::setup(
        &scratch,
        "stranger",
        &agent.public_key_file(),
        &agent.socket.display().to_string(),
    );
    let out = host.request("root", &[]);
    assert_eq!(code(&out), UNAVAILABLE, "{out:?}");
    assert!(
        agent.prompts().is_empty(),
        "an unknown host reached the prompt"
    );

    agent.stop();
    assert!(!agent.socket.exists(), "agent left its socket behind");
    assert_eq!(code(&host.request("root", &[])), UNAVAILABLE);
}

#[test]
fn tampered_response_is_an_auth_failure() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new("tamper");
    let agent = Agent::start(&scratch);
    let proxy_socket = scratch.join("proxy.sock");
    let host = Host::setup(
        &scratch,
        "tamper-host",
        &agent.public_key_file(),
        &proxy_socket.display().to_string(),
    );
    agent.add_host("tamper-host", &host.host_pub);
    agent.answer(Answer::Deny);
    // A denial rewritten into an approval in transit.
    let proxy = TamperProxy::start(proxy_socket, agent.socket.clone(), 1, |json| {
        json["body"]["decision"] = "approved".into();
    });
    assert_eq!(code(&host.request("root", &[])), AUTH_FAILURE);
    proxy.join();
}

#[test]
fn garbage_connections_do_not_stop_service() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new("garbage");
    let (agent, host) = agent_and_host(&scratch, "garbage-host");
    let junk: [&[u8]; 4] = [
        b"\xff\xff\xff\xff",       // oversized frame header
        b"\0\0\0\x05{not json",    // malformed JSON
        b"GET / HTTP/1.0\r\n\r\n", // not a frame at all
        b"\0\0\0\x02{}",           // well-framed, wrong shape
    ];
    for i in 0..1000 {
        let mut s = UnixStream::connect(&agent.socket).expect("agent still accepts");
        let _ = s.write_all(junk[i % junk.len()]);
    }
    assert_eq!(code(&host.request("root", &[])), APPROVED);
    assert_eq!(agent.prompts().len(), 1, "garbage reached the prompt");
}

/// The PAM stack of the throwaway service: nod first; on "unavailable" fall through to a
/// marker module (pamtester) and then `tail`.
fn pam_stack(
    host: &Host,
    module: &std::path::Path,
    fallback: &FallbackMarker,
    tail: &str,
) -> String {
    format!(
        "auth [success=done authinfo_unavail=ignore default=die] {} conf={} helper={} timeout_ms=5000 debug\n\
         auth optional pam_exec.so quiet seteuid {}\n\
         {tail}\n\
         account required pam_permit.so\n\
         session required pam_permit.so\n",
        module.display(),
        host.config.display(),
        host.helper.display(),
        fallback.script.display(),
    )
}

#[test]
fn pamtester_approves_falls_back_and_fails_hard_on_tampering() {
    if !require(&["pamtester"]) {
        return;
    }
    let scratch = Scratch::new("pamtester");
    let mut agent = Agent::start(&scratch);
    let module = scratch.install("libpam_nod.so", "pam_nod.so");
    let proxy_socket = scratch.join("proxy.sock");
    let socket_link = scratch.join("current.sock");
    // The host talks to `current.sock`, which each case points at the agent or the proxy.
    let host = Host::setup(
        &scratch,
        "pam-host",
        &agent.public_key_file(),
        &socket_link.display().to_string(),
    );
    agent.add_host("pam-host", &host.host_pub);
    let fallback = FallbackMarker::new(&scratch);
    let service = PamService::new(
        "pamtester",
        &pam_stack(&host, &module, &fallback, "auth requisite pam_deny.so"),
    );
    let pamtester = |user: &str| {
        run(Command::new("pamtester")
            .args([&service.name, user, "authenticate"])
            .stdin(Stdio::null()))
    };
    let point_at = |target: &std::path::Path| {
        let _ = std::fs::remove_file(&socket_link);
        // A hard link keeps it a socket (the helper refuses symlinks).
        std::fs::hard_link(target, &socket_link).unwrap();
    };

    // Approve → success, and the fallback never ran.
    point_at(&agent.socket);
    agent.answer(Answer::Approve);
    let out = pamtester("root");
    assert!(out.status.success(), "approve: {out:?}");
    assert!(!fallback.taken(), "fallback ran after an approval");

    // Tampered response → failure, and the fallback did not run either.
    agent.answer(Answer::Deny);
    let proxy = TamperProxy::start(proxy_socket.clone(), agent.socket.clone(), 1, |json| {
        json["body"]["decision"] = "approved".into();
    });
    point_at(&proxy_socket);
    let out = pamtester("root");
    assert!(
        !out.status.success(),
        "tampered response authenticated: {out:?}"
    );
    assert!(!fallback.taken(), "fallback ran after a tampered response");
    proxy.join();

    // Agent down → the fallback runs (and then pam_deny ends the stack).
    point_at(&agent.socket);
    agent.stop();
    let out = pamtester("root");
    assert!(
        fallback.taken(),
        "fallback did not run with the agent down: {out:?}"
    );
}

/// Real sudo by a non-root user logged in through a real sshd, whose `ssh -R` forwards the
/// approval socket from the "workstation" (the agent) to `remote_socket` on the host. The
/// PAM service, sudoers drop-in and sshd live as long as this.
struct SudoOverSsh {
    user: TestUser,
    remote_socket: PathBuf,
    fallback: FallbackMarker,
    sshd: Sshd,
    _service: PamService,
    _sudoers: SudoersDropIn,
}

impl SudoOverSsh {
    /// `tag` names the PAM service and sudoers drop-in; one `user` per test, because a drop-in
    /// sets the user's PAM service.
    fn start(
        scratch: &Scratch,
        tag: &str,
        user: TestUser,
        host: &Host,
        remote_socket: PathBuf,
    ) -> Self {
        let module = scratch.install("libpam_nod.so", "pam_nod.so");
        let fallback = FallbackMarker::new(scratch);
        let service = PamService::new(
            tag,
            &pam_stack(host, &module, &fallback, "auth required pam_unix.so"),
        );
        let sudoers = SudoersDropIn::sudo_through(tag, &user.name, &service.name);
        let _ = std::fs::remove_file(&remote_socket);
        let sshd = Sshd::start(scratch, &user);
        Self {
            user,
            remote_socket,
            fallback,
            sshd,
            _service: service,
            _sudoers: sudoers,
        }
    }

    /// Logs in with the forward to `agent_socket`, waits for the forwarded socket, then runs
    /// `sudo id -u`; the password (if asked) comes from `stdin`.
    fn sudo_id(&self, agent_socket: &Path, stdin: &str) -> std::process::Output {
        let remote_cmd = format!(
            "i=0; while [ ! -S {sock} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; \
             sudo -S -p '' id -u",
            sock = self.remote_socket.display()
        );
        nod_e2e::run_with_stdin(
            &mut self.sshd.ssh_with_forward(
                &self.user,
                &self.remote_socket,
                agent_socket,
                &remote_cmd,
            ),
            stdin,
        )
    }
}

const SUDO_TOOLS: [&str; 7] = [
    "sshd",
    "ssh",
    "ssh-keygen",
    "sudo",
    "visudo",
    "useradd",
    "chpasswd",
];

#[test]
fn sudo_over_ssh_forward_runs_when_approved_and_falls_back_to_password() {
    if !require(&SUDO_TOOLS) {
        return;
    }
    const PASSWORD: &str = "nod-e2e-password";
    let scratch = Scratch::new("sudo");
    let user = TestUser::ensure("nodtest", PASSWORD);
    let remote_socket = user.runtime_dir().join("nod-agent.sock");

    let mut agent = Agent::start(&scratch);
    let host = Host::setup(
        &scratch,
        "sudo-host",
        &agent.public_key_file(),
        "/run/user/{uid}/nod-agent.sock",
    );
    agent.add_host("sudo-host", &host.host_pub);
    let sudo = SudoOverSsh::start(&scratch, "sudo", user, &host, remote_socket);

    // Approved: sudo runs the command without a password (stdin is empty).
    agent.answer(Answer::Approve);
    let out = sudo.sudo_id(&agent.socket, "");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "sudo did not run after approval: {out:?}"
    );
    assert!(!sudo.fallback.taken());
    let prompts = agent.prompts();
    assert_eq!(prompts.len(), 1);
    assert_eq!(prompts[0]["user"], sudo.user.name.as_str());
    assert!(
        prompts[0]["command"]
            .as_str()
            .is_some_and(|c| c.contains("id -u")),
        "prompt lacks the sudo command: {}",
        prompts[0]
    );

    // Denied: sudo fails and never asks for the password.
    agent.answer(Answer::Deny);
    let out = sudo.sudo_id(&agent.socket, &format!("{PASSWORD}\n"));
    assert!(!out.status.success(), "sudo ran after a denial: {out:?}");
    assert!(!sudo.fallback.taken(), "denial fell back to the password");

    // Agent down (the forward still exists): sudo falls back to the password and runs.
    agent.stop();
    let out = sudo.sudo_id(&agent.socket, &format!("{PASSWORD}\n"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "password fallback did not work: {out:?}"
    );
    assert!(sudo.fallback.taken(), "fallback marker not set");
}

/// A host set up the way macos-auth sets one up, with its defaults, and nothing added for nod:
/// key files with only `public_key_hex=`/`private_key_hex=`, its sample `config.toml`
/// (`key_id = "host-key-1"`, `replay_cache_dir`), the agent's key as `agents.d/agent.pub`
/// without a key id, and the host allowed with a plain `nod hosts add` (no `--key-id`). Then
/// `nod-helper`, pamtester and real sudo over an ssh forward are approved by `nod agent`.
#[test]
fn macos_auth_files_and_defaults_approve_sudo_with_no_extra_flags() {
    if !require(&SUDO_TOOLS) || !require(&["pamtester"]) {
        return;
    }
    const PASSWORD: &str = "nod-e2e-macos-password";
    let scratch = Scratch::new("macos");
    let user = TestUser::ensure("nodmacos", PASSWORD);
    // macos-auth's sample names one socket, with the uid written out.
    let remote_socket = user.runtime_dir().join("macos-auth-agent.sock");

    let agent = Agent::start(&scratch);
    let host = Host::macos_auth(
        &scratch,
        "linux-host-id",
        &agent.public_key(),
        &remote_socket.display().to_string(),
    );
    let added = run_ok(
        agent
            .nod(["hosts", "add", "linux-host-id"])
            .arg(&host.host_pub),
    );
    assert!(added.contains("any key id"), "{added}");
    let check = run(Command::new(&host.helper)
        .args(["check-config", "--config"])
        .arg(&host.config)
        .args(["--user", &user.name])
        .env_clear());
    let report = String::from_utf8_lossy(&check.stdout);
    assert_eq!(code(&check), 0, "check-config: {report}");
    assert!(report.contains("replay_cache_dir"), "{report}");

    // pamtester first, the PAM user root, who owns the agent's socket: the same files, with
    // socket_path pointing there instead of at the forward.
    let text = std::fs::read_to_string(&host.config).unwrap();
    let direct = text.replace(
        &format!("socket_path = \"{}\"", remote_socket.display()),
        &format!("socket_path = \"{}\"", agent.socket.display()),
    );
    assert_ne!(direct, text);
    let pam_host = Host {
        config: scratch.file("etc-macos-auth/config-direct.toml", 0o644, &direct),
        helper: host.helper.clone(),
        host_pub: host.host_pub.clone(),
        host_id: host.host_id.clone(),
    };
    let module = scratch.install("libpam_nod.so", "pam_nod.so");
    let fallback = FallbackMarker::new(&scratch);
    let service = PamService::new(
        "pamtester-macos",
        &pam_stack(&pam_host, &module, &fallback, "auth requisite pam_deny.so"),
    );
    agent.answer(Answer::Approve);
    let out = run(Command::new("pamtester")
        .args([&service.name, "root", "authenticate"])
        .stdin(Stdio::null()));
    assert!(out.status.success(), "pamtester: {out:?}");
    assert!(!fallback.taken(), "pamtester fell back to the password");
    drop(service);

    // Real sudo by a user logged in over ssh, through the forward macos-auth's config names.
    let sudo = SudoOverSsh::start(&scratch, "sudo-macos", user, &host, remote_socket);
    let out = sudo.sudo_id(&agent.socket, "");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "sudo did not run after approval: {out:?}"
    );
    assert!(!sudo.fallback.taken(), "fell back to the password");
    let prompts = agent.prompts();
    assert_eq!(prompts.len(), 2, "{prompts:?}");
    for p in &prompts {
        assert_eq!(p["host_id"], "linux-host-id");
        assert_eq!(p["host"], "linux.example.com");
    }
    assert_eq!(prompts[0]["user"], "root");
    assert_eq!(prompts[1]["user"], sudo.user.name.as_str());
}

/// The workstation's agent key is not the one pinned on the host (another agent, or one that
/// was re-keyed): the approval is refused, and both the helper's stderr and its syslog line
/// under PAM say which key signed and which is pinned, and to pair again.
#[test]
fn a_wrong_pinned_agent_key_names_both_keys_on_stderr_and_in_syslog() {
    if !require(&["pamtester", "unshare", "mount"]) || !nod_e2e::SyslogCapture::available() {
        return;
    }
    let scratch = Scratch::new("wrongkey");
    let agent = Agent::start(&scratch);
    let other = Scratch::new("wrongkey-other");
    let stranger = Agent::start(&other);
    let host = Host::setup(
        &scratch,
        "wrongkey-host",
        &stranger.public_key_file(),
        &agent.socket.display().to_string(),
    );
    agent.add_host("wrongkey-host", &host.host_pub);
    agent.answer(Answer::Approve);
    let signer = nod_proto::KeyId::fingerprint(&agent.public_key()).to_string();
    let pinned = nod_proto::KeyId::fingerprint(&stranger.public_key()).to_string();
    let says_why = |text: &str| {
        text.contains(&format!(
            "the agent's reply is signed by {signer}, but this host pins {pinned}"
        )) && text.contains("run `nod pair <this host>` again on the workstation")
    };

    let out = host.request("root", &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), AUTH_FAILURE, "{err}");
    assert!(says_why(&err), "stderr does not say why: {err}");

    let syslog = nod_e2e::SyslogCapture::new(&scratch);
    let module = scratch.install("libpam_nod.so", "pam_nod.so");
    let fallback = FallbackMarker::new(&scratch);
    let service = PamService::new(
        "wrongkey",
        &pam_stack(&host, &module, &fallback, "auth requisite pam_deny.so"),
    );
    let pamtester = nod_e2e::which("pamtester").unwrap();
    let out = run(syslog
        .command(None, &pamtester, &[&service.name, "root", "authenticate"])
        .stdin(Stdio::null()));
    assert!(!out.status.success(), "a wrong key authenticated: {out:?}");
    assert!(!fallback.taken(), "a wrong key fell back to the password");
    let lines = syslog.lines();
    // LOG_AUTHPRIV | LOG_ERR.
    let helper_line = lines
        .iter()
        .find(|(_, l)| l.starts_with("nod-helper["))
        .unwrap_or_else(|| panic!("no nod-helper line in {lines:?}"));
    assert_eq!(helper_line.0, 10 * 8 + 3, "{helper_line:?}");
    assert!(says_why(&helper_line.1), "{helper_line:?}");
    assert!(
        helper_line
            .1
            .contains(&format!("]: {} for root: ", service.name)),
        "{helper_line:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(_, l)| l.contains("pam_nod(") && l.contains("helper exited with code 30")),
        "no pam_nod line in {lines:?}"
    );
    assert_eq!(agent.prompts().len(), 2, "both requests were asked");
}

/// A PAM stack run by a program that is not root (a screen locker): the helper cannot read
/// the host key, so the stack falls through to the next module (here pam_permit, standing in
/// for the password) and the syslog line says why; nothing is asked on the workstation.
#[test]
fn a_pam_caller_that_is_not_root_falls_back_and_the_log_says_why() {
    if !require(&[
        "pamtester",
        "unshare",
        "mount",
        "setpriv",
        "useradd",
        "chpasswd",
    ]) || !nod_e2e::SyslogCapture::available()
    {
        return;
    }
    let scratch = Scratch::new("nonroot");
    let (agent, host) = agent_and_host(&scratch, "nonroot-host");
    let user = TestUser::ensure("nodlocker", "nod-e2e-locker-password");
    let syslog = nod_e2e::SyslogCapture::new(&scratch);
    let module = scratch.install("libpam_nod.so", "pam_nod.so");
    // The fallback marker must be writable by the user the stack runs as.
    let marks = scratch.dir("marks", 0o755);
    std::os::unix::fs::chown(&marks, Some(user.uid), Some(user.gid)).unwrap();
    let marker = marks.join("fallback-taken");
    let script = scratch.file(
        "fallback.sh",
        0o755,
        &format!("#!/bin/sh\ntouch {}\nexit 0\n", marker.display()),
    );
    let service = PamService::new(
        "nonroot",
        &format!(
            "auth [success=done authinfo_unavail=ignore default=die] {} conf={} helper={} timeout_ms=5000\n\
             auth optional pam_exec.so quiet {}\n\
             auth required pam_permit.so\n\
             account required pam_permit.so\n",
            module.display(),
            host.config.display(),
            host.helper.display(),
            script.display(),
        ),
    );
    agent.answer(Answer::Approve);
    let pamtester = nod_e2e::which("pamtester").unwrap();
    let out = run(syslog
        .command(
            Some(&user),
            &pamtester,
            &[&service.name, &user.name, "authenticate"],
        )
        .stdin(Stdio::null()));
    assert!(
        out.status.success(),
        "the stack did not fall through: {out:?}"
    );
    assert!(marker.exists(), "the next module did not run: {out:?}");
    assert!(
        agent.prompts().is_empty(),
        "a non-root stack reached the prompt"
    );
    let lines = syslog.lines();
    let helper_line = lines
        .iter()
        .find(|(_, l)| l.starts_with("nod-helper["))
        .unwrap_or_else(|| panic!("no nod-helper line in {lines:?}"));
    // LOG_AUTHPRIV | LOG_NOTICE: a fallback, not a failure.
    assert_eq!(helper_line.0, 10 * 8 + 5, "{helper_line:?}");
    assert!(
        helper_line
            .1
            .contains(&format!("runs as uid {}, not root", user.uid))
            && helper_line.1.contains("only root can read the host key")
            && helper_line
                .1
                .contains("falls through to the next PAM module"),
        "{helper_line:?}"
    );
    // pam_nod itself logs no error for a fallback.
    assert!(
        !lines.iter().any(|(_, l)| l.contains("pam_nod(")),
        "{lines:?}"
    );
}
