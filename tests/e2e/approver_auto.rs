//! `auto`, the default approver, where the packaged systemd user unit runs the agent:
//! `nod agent` with no `agent.toml`, no approver flags, stdin not a terminal and no display.
//!
//! - In a graphical session (a private session bus on `$XDG_RUNTIME_DIR/bus`, where the user
//!   manager puts one for every unit, with python3-dbusmock's notification server standing in
//!   for the desktop's), real sudo on a paired host raises a notification naming host, user
//!   and command; Approve runs the command.
//! - With no bus and no terminal, the agent's start-up and `nod doctor` name the problem and
//!   the fix, and sudo falls back to the password.
//! - A bus without a notification server makes `desktop` unavailable: the next approver of the
//!   chain is asked, and with none left the host gets *unavailable*, never *denied*.

use std::os::unix::fs::chown;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use nod_e2e::buses::{NotificationServer, SessionBus, require_session_tools, test_user};
use nod_e2e::{
    Agent, FallbackMarker, Host, PamService, Scratch, SudoersDropIn, TestUser, code, require, run,
    run_ok,
};

const APPROVED: i32 = 0;
const UNAVAILABLE: i32 = 10;

const SUDO_TOOLS: [&str; 5] = ["sudo", "visudo", "useradd", "chpasswd", "setpriv"];

/// The session bus where the user manager keeps it for the agent of `scratch`:
/// `$XDG_RUNTIME_DIR/bus`, with no `DBUS_SESSION_BUS_ADDRESS` anywhere.
fn user_manager_bus(scratch: &Scratch) -> SessionBus {
    let runtime = Agent::runtime_dir(scratch);
    let home = scratch.dir("session", 0o755);
    SessionBus::start_at(&home, &runtime.join("bus"), None)
}

/// A paired host whose PAM service asks nod first, then (on unavailable) touches the fallback
/// marker and asks for the password; sudo uses it for `user` through a `pam_service=` drop-in.
struct SudoHost {
    host: Host,
    user: TestUser,
    fallback: FallbackMarker,
    service: PamService,
    _sudoers: SudoersDropIn,
}

impl SudoHost {
    fn start(scratch: &Scratch, tag: &str, agent: &Agent, user: TestUser) -> Self {
        // The helper wants the socket owned by the PAM user, as an `ssh -R` forward makes it
        // on a real host: a hard link to the agent's socket, given to the user.
        let socket = scratch.join(format!("{tag}.sock"));
        std::fs::hard_link(&agent.socket, &socket).unwrap();
        chown(&socket, Some(user.uid), Some(user.gid)).unwrap();
        let host = Host::setup(
            scratch,
            tag,
            &agent.public_key_file(),
            &socket.display().to_string(),
        );
        agent.add_host(tag, &host.host_pub);
        let module = scratch.install("libpam_nod.so", "pam_nod.so");
        let fallback = FallbackMarker::new(scratch);
        let service = PamService::new(
            tag,
            &format!(
                "auth [success=done authinfo_unavail=ignore default=die] {} conf={} helper={} \
                 timeout_ms=15000\n\
                 auth optional pam_exec.so quiet seteuid {}\n\
                 auth required pam_unix.so\n\
                 account required pam_permit.so\n\
                 session required pam_permit.so\n",
                module.display(),
                host.config.display(),
                host.helper.display(),
                fallback.script.display(),
            ),
        );
        let sudoers = SudoersDropIn::sudo_through(tag, &user.name, &service.name);
        Self {
            host,
            user,
            fallback,
            service,
            _sudoers: sudoers,
        }
    }

    /// `sudo -S /usr/bin/id -u` run by the user; a password (if asked) comes from `stdin`.
    fn sudo_id(&self, stdin: &str) -> Output {
        nod_e2e::run_with_stdin(
            Command::new("setpriv")
                .arg(format!("--reuid={}", self.user.uid))
                .arg(format!("--regid={}", self.user.gid))
                .args([
                    "--init-groups",
                    "--",
                    "sudo",
                    "-S",
                    "-p",
                    "",
                    "/usr/bin/id",
                    "-u",
                ])
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("HOME", &self.user.home)
                .env("USER", &self.user.name),
            stdin,
        )
    }
}

/// `nod doctor`'s line about the approvers (and its fix, when it fails).
fn doctor_approvers(agent: &Agent) -> String {
    // Its own session bus is the agent's: the one in their runtime directory, if any.
    let out = run(agent.nod(["doctor"]).env_remove("DBUS_SESSION_BUS_ADDRESS"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().skip_while(|l| !l.contains("approvers:"));
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("no approvers line:\n{text}"));
    let fix = lines.next().filter(|l| l.trim_start().starts_with("fix:"));
    format!("{line}\n{}", fix.unwrap_or_default())
}

#[test]
fn packaged_unit_in_a_graphical_session_asks_the_desktop_and_approve_runs_sudo() {
    if !require(&SUDO_TOOLS) || !require_session_tools() {
        return;
    }
    let scratch = Scratch::new("auto-desktop");
    let bus = user_manager_bus(&scratch);
    let server = NotificationServer::start(&bus, "body body-markup actions", None);
    let agent = Agent::start_as_unit(&scratch, &[]);
    let log = agent.log();
    assert!(
        log.contains(&format!(
            "approvers: desktop (click), chosen by auto (session bus unix:path={}; \
             no DISPLAY or WAYLAND_DISPLAY; stdin is not a terminal)",
            bus.socket.display()
        )),
        "{log}"
    );
    let doctor = doctor_approvers(&agent);
    assert!(
        doctor.starts_with("ok")
            && doctor.contains("approvers: desktop (click), chosen by auto (session bus")
            && doctor.contains("a notification server with buttons is on the session bus"),
        "{doctor}"
    );
    let status = run_ok(agent.nod(["status"]).env_remove("DBUS_SESSION_BUS_ADDRESS"));
    assert!(
        status.contains("approvers: desktop (click)\napprovers chosen by: auto (session bus"),
        "{status}"
    );
    // One user per test: a sudoers drop-in sets the user's PAM service.
    let user = test_user("nod-e2e-auto-gui", "auto-pass-1");
    let sudo = SudoHost::start(&scratch, "auto-host", &agent, user);
    let (name, service) = (&sudo.user.name, &sudo.service.name);
    let out = std::thread::scope(|s| {
        let running = s.spawn(|| sudo.sudo_id(""));
        let n = server.wait_for_notify(1)[0].clone();
        assert_eq!(
            n.summary,
            format!("nod: allow {service} as {name} on auto-host.example.test (auto-host)?")
        );
        let first = n.body.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("command: sudo -S -p  /usr/bin/id -u"),
            "{}",
            n.body
        );
        assert_eq!(n.actions, ["deny", "Deny", "approve", "Approve"]);
        server.click(1, "approve");
        running.join().unwrap()
    });
    assert!(out.status.success(), "sudo: {out:?}\n{}", agent.log());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0\n",
        "the command ran as root"
    );
    assert!(
        !sudo.fallback.taken(),
        "approved, yet the password was asked"
    );
    let last = agent.audit().pop().unwrap();
    assert_eq!(last["decision"], "approved", "{last}");
    assert_eq!(last["approver"], "desktop", "{last}");
    server.wait_for_close(1);
}

#[test]
fn no_bus_and_no_terminal_say_so_with_the_fix_and_sudo_falls_back_to_the_password() {
    if !require(&SUDO_TOOLS) {
        return;
    }
    let scratch = Scratch::new("auto-none");
    Agent::runtime_dir(&scratch);
    let agent = Agent::start_as_unit(&scratch, &[]);
    let log = agent.log();
    for said in [
        "no approver can reach you",
        "every request is answered unavailable",
        "auto found no session bus (DBUS_SESSION_BUS_ADDRESS is unset and there is no socket \
         at $XDG_RUNTIME_DIR/bus); no DISPLAY or WAYLAND_DISPLAY; stdin is not a terminal",
        "Fix: run the agent inside your graphical session",
        "systemctl --user import-environment DBUS_SESSION_BUS_ADDRESS",
        "set [approver] in agent.toml",
    ] {
        assert!(log.contains(said), "start-up does not say {said:?}:\n{log}");
    }
    let doctor = doctor_approvers(&agent);
    assert!(
        doctor.starts_with("FAIL")
            && doctor.contains("approvers: the agent has none (auto found no session bus")
            && doctor.contains("fix: run the agent inside your graphical session"),
        "{doctor}"
    );
    let user = test_user("nod-e2e-auto-none", "auto-pass-1");
    let sudo = SudoHost::start(&scratch, "auto-nobody", &agent, user);
    // Unavailable, not denied: PAM goes on to the password, which lets sudo run.
    let out = sudo.sudo_id("auto-pass-1\n");
    assert!(out.status.success(), "sudo: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");
    assert!(sudo.fallback.taken(), "the password path was not taken");
    let last = agent.audit().pop().unwrap();
    assert_eq!(last["decision"], "unavailable", "{last}");
    assert_eq!(last["reason"], "no_approver", "{last}");
    assert_eq!(code(&sudo.host.request(&sudo.user.name, &[])), UNAVAILABLE);
    // And with a wrong password sudo fails there, in pam_unix, not on nod's answer.
    sudo.fallback.reset();
    let out = sudo.sudo_id("wrong\n");
    assert!(!out.status.success(), "sudo ran with a wrong password");
    assert!(sudo.fallback.taken());
}

/// An askpass program that says yes and records that it was asked.
fn approving_askpass(scratch: &Scratch) -> (PathBuf, PathBuf) {
    scratch.dir("askpass", 0o755);
    let asked = scratch.join("askpass/asked");
    let program = scratch.file(
        "askpass/approve",
        0o755,
        &format!(
            "#!/bin/sh\nprintf '%s' \"$1\" > {}\nexit 0\n",
            asked.display()
        ),
    );
    (program, asked)
}

fn paired(scratch: &Scratch, agent: &Agent, tag: &str) -> Host {
    let host = Host::setup(
        scratch,
        tag,
        &agent.public_key_file(),
        &agent.socket.display().to_string(),
    );
    agent.add_host(tag, &host.host_pub);
    host
}

#[test]
fn a_bus_without_a_notification_server_asks_the_next_approver_and_never_denies() {
    if !require(&[]) || !require_session_tools() {
        return;
    }
    // A headless login with the user manager's bus but no desktop: desktop, then askpass.
    let scratch = Scratch::new("auto-noserver");
    let bus = user_manager_bus(&scratch);
    let (askpass, asked) = approving_askpass(&scratch);
    let env = [
        ("DISPLAY", ":77"),
        ("SSH_ASKPASS", askpass.to_str().unwrap()),
    ];
    let agent = Agent::start_as_unit(&scratch, &env);
    assert!(
        agent
            .log()
            .contains("approvers: desktop (click), then askpass (click), chosen by auto"),
        "{}",
        agent.log()
    );
    let doctor = doctor_approvers(&agent);
    assert!(
        doctor.starts_with("warn")
            && doctor.contains("no notification server on the session bus")
            && doctor.contains("the next one is asked"),
        "{doctor}"
    );
    let host = paired(&scratch, &agent, "noserver-host");
    assert_eq!(
        code(&host.request("root", &[])),
        APPROVED,
        "{}",
        agent.log()
    );
    let shown = std::fs::read_to_string(&asked).expect("askpass was not asked");
    assert!(
        shown.starts_with("nod: allow sudo as root on noserver-host"),
        "{shown}"
    );
    let last = agent.audit().pop().unwrap();
    assert_eq!(last["approver"], "askpass", "{last}");
    let log = agent.log();
    assert!(
        log.contains("no notification server on the session bus"),
        "{log}"
    );
    assert!(
        log.contains("approver desktop cannot reach the person; trying the next"),
        "{log}"
    );
    drop(agent);
    drop(bus);

    // The same bus and nothing after the desktop: unavailable, so the host falls back.
    let scratch = Scratch::new("auto-noserver-alone");
    let _bus = user_manager_bus(&scratch);
    let agent = Agent::start_as_unit(&scratch, &[]);
    let doctor = doctor_approvers(&agent);
    assert!(
        doctor.starts_with("FAIL")
            && doctor.contains("no notification server on the session bus")
            && doctor.contains("fix: log in to your graphical session"),
        "{doctor}"
    );
    let host = paired(&scratch, &agent, "alone-host");
    assert_eq!(
        code(&host.request("root", &[])),
        UNAVAILABLE,
        "{}",
        agent.log()
    );
    let last = agent.audit().pop().unwrap();
    assert_eq!(last["decision"], "unavailable", "{last}");
    assert_eq!(last["reason"], "no_approver", "{last}");
}

/// A background `nod ssh-agent`, stopped when dropped.
struct DropIn(nix::unistd::Pid);

impl Drop for DropIn {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGTERM);
    }
}

/// `nod ssh-agent -s -a <socket>` in the environment of the unit's agent: starts the
/// background agent and returns it with what the command printed on stdout and stderr.
fn ssh_agent_s(agent: &Agent, socket: &std::path::Path) -> (Option<DropIn>, String, String) {
    let out = run(agent
        .nod(["ssh-agent", "-s", "-a"])
        .arg(socket)
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .stdin(Stdio::null()));
    assert!(out.status.success(), "nod ssh-agent -s: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let pid = stdout
        .split("SSH_AGENT_PID=")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|pid| pid.parse().ok())
        .map(|pid| DropIn(nix::unistd::Pid::from_raw(pid)));
    (
        pid,
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn nod_ssh_agent_s_chooses_its_approvers_as_the_unit_does() {
    if !require(&["ssh-add", "ssh-keygen"]) || !require_session_tools() {
        return;
    }
    let scratch = Scratch::new("auto-ssh-agent");
    let bus = user_manager_bus(&scratch);
    let server = NotificationServer::start(&bus, "body actions", None);
    let agent = Agent::start_as_unit(&scratch, &[]);
    let dir = scratch.dir("ssh", 0o700);
    let socket = dir.join("drop-in.sock");
    let (drop_in, _, stderr) = ssh_agent_s(&agent, &socket);
    let _drop_in = drop_in.expect("nod ssh-agent -s prints SSH_AGENT_PID");
    assert!(!stderr.contains("no way to ask you"), "{stderr}");
    let key = dir.join("id_confirm");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "confirm-key", "-f"])
            .arg(&key),
    );
    let ssh = |program: &str| {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("SSH_AUTH_SOCK", &socket)
            .stdin(Stdio::null());
        cmd
    };
    run_ok(ssh("ssh-add").arg("-c").arg(&key));
    std::fs::remove_file(&key).unwrap();
    let data = dir.join("data.txt");
    std::fs::write(&data, "signed through the desktop\n").unwrap();
    let signed = std::thread::scope(|s| {
        let signing = s.spawn(|| {
            run(ssh("ssh-keygen")
                .args(["-Y", "sign", "-n", "file", "-f"])
                .arg(key.with_extension("pub"))
                .arg(&data))
        });
        let n = server.wait_for_notify(1)[0].clone();
        assert!(
            n.summary.contains("SSH key confirm-key"),
            "{}\n{}",
            n.summary,
            n.body
        );
        server.click(1, "approve");
        signing.join().unwrap()
    });
    assert!(signed.status.success(), "sign: {signed:?}");
    assert!(dir.join("data.txt.sig").exists());
    drop(_drop_in);

    // No bus: the command warns on stderr, naming what auto found.
    let scratch = Scratch::new("auto-ssh-agent-none");
    Agent::runtime_dir(&scratch);
    let agent = Agent::start_as_unit(&scratch, &[]);
    let socket = scratch.join("drop-in.sock");
    let (_drop_in, _, stderr) = ssh_agent_s(&agent, &socket);
    assert!(
        stderr.contains("the background agent has no way to ask you (auto found no session bus"),
        "{stderr}"
    );
}
