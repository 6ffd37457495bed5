//! The `desktop` approver against a real notification server (python3-dbusmock's
//! `notification_daemon`, which keeps to the Desktop Notifications spec, records every call and
//! emits the signals a test asks for) on a private session bus: what the notification shows,
//! and how clicks, closing, the deadline, a forged signal, a missing server, a server without
//! buttons and a restarted bus end the prompt. Needs root only for the shared test layout.

use std::process::Command;
use std::time::{Duration, Instant};

use nod_e2e::buses::{NotificationServer, Probe, ProbeRun, SessionBus, require_session_tools};
use nod_e2e::{Agent, Host, Scratch, code};

const WITH_MARKUP: &str = "body body-markup actions";
const PLAIN: &str = "body actions";
const PROBE: &str = env!("CARGO_BIN_EXE_nod-approve-probe");

/// A probe asking with the desktop approver on `bus`.
fn probe(scratch: &Scratch, bus: &SessionBus, prompt: &str, steps: &[&str]) -> Probe {
    let bin = Probe::install(scratch, PROBE);
    let mut cmd = Command::new(bin);
    cmd.args(["desktop", prompt])
        .args(steps)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("DBUS_SESSION_BUS_ADDRESS", bus.address());
    Probe::spawn(&mut cmd, &scratch.path, "probe")
}

fn finish(p: Probe) -> ProbeRun {
    p.finish(Duration::from_secs(30))
}

#[test]
fn approve_click_approves_and_the_notification_shows_the_request_escaped() {
    if !require_session_tools() {
        return;
    }
    let scratch = Scratch::new("desk-approve");
    let bus = SessionBus::start(&scratch.path, None);
    let server = NotificationServer::start(&bus, WITH_MARKUP, None);
    let p = probe(&scratch, &bus, "pam", &["ask"]);
    let shown = server.wait_for_notify(1);
    let n = &shown[0];
    assert_eq!(n.app_name, "nod");
    assert_eq!(n.replaces_id, 0);
    assert_eq!(
        n.summary,
        "nod: allow sudo as alice on web-1.example.com (web-1)?"
    );
    // The server interprets body markup, so the host's text is escaped for it.
    assert_eq!(
        n.body,
        "command: /usr/bin/apt install &lt;b&gt;pkg&lt;/b&gt; &amp;&amp; echo &apos;done&apos;\n\
         tty pts/3, from 10.0.0.5, by alice"
    );
    assert_eq!(n.actions, ["deny", "Deny", "approve", "Approve"]);
    assert_eq!(n.urgency, Some(2), "critical: stays until answered");
    assert!(
        n.timeout_ms > 10_000 && n.timeout_ms <= 20_000,
        "expires with the request: {}",
        n.timeout_ms
    );
    server.click(1, "approve");
    let run = finish(p);
    assert_eq!(run.outcomes, ["approved"], "{}", run.log);
    server.wait_for_close(1);
}

#[test]
fn deny_click_denies_and_a_forged_click_from_another_client_is_ignored() {
    if !require_session_tools() {
        return;
    }
    let scratch = Scratch::new("desk-deny");
    let bus = SessionBus::start(&scratch.path, None);
    let server = NotificationServer::start(&bus, WITH_MARKUP, None);
    let p = probe(&scratch, &bus, "pam", &["ask"]);
    server.wait_for_notify(1);
    // Any client can broadcast a signal that looks like the server's; only the server counts.
    server.forge_click(1, "approve");
    // An action we never offered (a click on the body) decides nothing either.
    server.click(1, "default");
    std::thread::sleep(Duration::from_millis(300));
    server.click(1, "deny");
    let run = finish(p);
    assert_eq!(run.outcomes, ["denied"], "{}", run.log);
}

#[test]
fn closing_the_notification_cancels() {
    if !require_session_tools() {
        return;
    }
    let scratch = Scratch::new("desk-closed");
    let bus = SessionBus::start(&scratch.path, None);
    let server = NotificationServer::start(&bus, WITH_MARKUP, None);
    let p = probe(&scratch, &bus, "pam", &["ask"]);
    server.wait_for_notify(1);
    // A signal about another notification is not about ours.
    server.close(7, 2);
    server.close(1, 2);
    let run = finish(p);
    assert_eq!(run.outcomes, ["cancelled"], "{}", run.log);
    assert!(run.log.contains("notification closed (2)"), "{}", run.log);
}

#[test]
fn deadline_and_withdrawn_prompt_cancel_and_close_the_notification() {
    if !require_session_tools() {
        return;
    }
    let scratch = Scratch::new("desk-deadline");
    let bus = SessionBus::start(&scratch.path, None);
    let server = NotificationServer::start(&bus, PLAIN, None);
    // 1: nobody answers before the deadline; 2: the requester goes away; 3: a click, on the
    // connection the first two made.
    let p = probe(&scratch, &bus, "pam", &["ask:800", "drop:800", "ask"]);
    server.wait_for_notify(3);
    server.click(3, "approve");
    let run = finish(p);
    assert_eq!(
        run.outcomes,
        ["cancelled", "dropped", "approved"],
        "{}",
        run.log
    );
    let closed = server.closed_ids();
    assert!(
        closed.contains(&1) && closed.contains(&2),
        "withdrawn notifications are closed: {closed:?}"
    );
}

#[test]
fn no_notification_server_is_unavailable() {
    if !require_session_tools() {
        return;
    }
    let scratch = Scratch::new("desk-none");
    let bus = SessionBus::start(&scratch.path, None);
    let start = Instant::now();
    let run = finish(probe(&scratch, &bus, "pam", &["ask"]));
    assert_eq!(run.outcomes, ["unavailable"], "{}", run.log);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(run.log.contains("no notification server"), "{}", run.log);
    // No session bus at all: unavailable too.
    let mut cmd = Command::new(Probe::install(&scratch, PROBE));
    cmd.args(["desktop", "pam", "ask"]).env_clear().env(
        "DBUS_SESSION_BUS_ADDRESS",
        format!("unix:path={}/nobus", scratch.path.display()),
    );
    let run = finish(Probe::spawn(&mut cmd, &scratch.path, "nobus"));
    assert_eq!(run.outcomes, ["unavailable"], "{}", run.log);
    assert!(run.log.contains("no session bus"), "{}", run.log);
}

#[test]
fn server_without_buttons_is_unavailable_and_shows_nothing() {
    if !require_session_tools() {
        return;
    }
    let scratch = Scratch::new("desk-noactions");
    let bus = SessionBus::start(&scratch.path, None);
    let server = NotificationServer::start(&bus, "body body-markup", None);
    let run = finish(probe(&scratch, &bus, "pam", &["ask"]));
    assert_eq!(run.outcomes, ["unavailable"], "{}", run.log);
    assert!(run.log.contains("\"actions\""), "{}", run.log);
    assert!(server.notify_calls().is_empty());
}

#[test]
fn ssh_and_secrets_prompts_show_their_context() {
    if !require_session_tools() {
        return;
    }
    let scratch = Scratch::new("desk-kinds");
    let bus = SessionBus::start(&scratch.path, None);
    // Without body-markup the server shows text as it is: nothing is escaped.
    let server = NotificationServer::start(&bus, PLAIN, None);
    let p = probe(&scratch, &bus, "ssh", &["ask"]);
    let ssh = server.wait_for_notify(1)[0].clone();
    server.click(1, "approve");
    assert_eq!(finish(p).outcomes, ["approved"]);
    assert_eq!(
        ssh.summary,
        "nod: allow a signature with SSH key alice@laptop <work> (SHA256:Qm9iIGtleSBmaW5nZXJwcmludA)?"
    );
    assert_eq!(
        ssh.body,
        "for: ssh login as git\n\
         to: github.com (SHA256:aG9zdCBrZXk)\n\
         requested by /usr/bin/ssh (pid 4242)\n\
         chain: ssh (4242) ← git (4241) ← zsh (4000)"
    );
    let p = probe(&scratch, &bus, "secrets", &["ask"]);
    let secrets = server.wait_for_notify(2)[1].clone();
    server.click(2, "deny");
    assert_eq!(finish(p).outcomes, ["denied"]);
    assert_eq!(
        secrets.summary,
        "nod: let /usr/local/bin/deploy-tool use secrets?"
    );
    assert_eq!(
        secrets.body,
        "binary: sha256:5d41402abc4b2a76b9719d911017c592\n\
         read: aws/prod, db/<main>\n\
         write: cache/token\n\
         search: no\n\
         asked by: nod (5150) ← bash (5100)"
    );
}

#[test]
fn a_restarted_session_bus_is_reconnected() {
    if !require_session_tools() {
        return;
    }
    let scratch = Scratch::new("desk-restart");
    let restarted = scratch.join("restarted");
    let bus = SessionBus::start(&scratch.path, None);
    let server = NotificationServer::start(&bus, PLAIN, None);
    let wait = format!("wait:{}", restarted.display());
    let p = probe(&scratch, &bus, "pam", &["ask", &wait, "ask"]);
    server.wait_for_notify(1);
    server.click(1, "approve");
    // Same socket path, new bus and server: the kept connection is dead.
    drop(server);
    drop(bus);
    let bus = SessionBus::start(&scratch.path, None);
    let server = NotificationServer::start(&bus, PLAIN, None);
    std::fs::write(&restarted, "").unwrap();
    server.wait_for_notify(1);
    server.click(1, "approve");
    let run = finish(p);
    assert_eq!(run.outcomes, ["approved", "approved"], "{}", run.log);
}

/// The whole path with the agent: `nod agent` with `kind = "desktop"` connects to nothing until
/// a request comes; a PAM request from a paired host raises the notification, Approve answers.
#[test]
fn agent_asks_through_the_desktop_only_when_a_request_comes() {
    if !require_session_tools() {
        return;
    }
    let scratch = Scratch::new("desk-agent");
    let bus = SessionBus::start(&scratch.path, None);
    let server = NotificationServer::start(&bus, WITH_MARKUP, None);
    let agent = Agent::start_configured(
        &scratch,
        "[approver]\nkind = \"desktop\"\n",
        &[("DBUS_SESSION_BUS_ADDRESS", &bus.address())],
    );
    let host = Host::setup(
        &scratch,
        "desk-host",
        &agent.public_key_file(),
        &agent.socket.display().to_string(),
    );
    agent.add_host("desk-host", &host.host_pub);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !server.has_connection_from(agent.pid()),
        "an agent that has not prompted yet must not be on the bus"
    );
    let helper = std::thread::spawn(move || {
        let out = host.request("root", &["--sudo-command", "systemctl restart <nginx>"]);
        code(&out)
    });
    let n = server.wait_for_notify(1)[0].clone();
    assert_eq!(
        n.summary,
        "nod: allow sudo as root on desk-host.example.test (desk-host)?"
    );
    assert!(
        n.body
            .starts_with("command: systemctl restart &lt;nginx&gt;\n"),
        "{}",
        n.body
    );
    assert!(server.has_connection_from(agent.pid()));
    server.click(1, "approve");
    assert_eq!(helper.join().unwrap(), 0, "approved");
}
