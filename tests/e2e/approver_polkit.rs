//! The `polkit` approver against the real polkitd, its setuid helper and PAM, with polkit's
//! real text agent (`pkttyagent`, typed into on a pty) as the session's authentication agent.
//! Everything system-wide is private: a mount namespace whose `/run/dbus` holds the test's own
//! system bus, with nod's shipped policy (`packaging/polkit/org.nod.policy`) among the actions.
//! The approver runs as a non-root test user (polkit authorizes root without asking), and its
//! context goes to a notification server on the user's own session bus.

use std::path::PathBuf;
use std::time::Duration;

use nod_e2e::TestUser;
use nod_e2e::buses::{
    Daemon, NotificationServer, PYTHON, PrivateSystem, Probe, ProbeRun, SessionBus, read_log,
    require_system_tools, test_user,
};

const USER: &str = "nod-e2e-polkit";
const PASSWORD: &str = "nod-e2e-Polkit-7";
const PROBE: &str = env!("CARGO_BIN_EXE_nod-approve-probe");
const DRIVER: &str = include_str!("../src/ttyagent.py");

fn required() -> bool {
    require_system_tools(
        &["pkttyagent"],
        &[
            "/usr/lib/polkit-1/polkitd",
            "/usr/lib/polkit-1/polkit-agent-helper-1",
        ],
    )
}

/// A private system with polkitd, and the test user's session bus with a notification server.
struct World {
    sys: PrivateSystem,
    user: TestUser,
    bus: SessionBus,
    server: NotificationServer,
    /// Written by the user: the agent's log and its "registered" mark.
    home: PathBuf,
}

impl World {
    fn new(tag: &str) -> Self {
        Self::build(tag, true, true, true)
    }

    fn build(tag: &str, bus: bool, polkitd: bool, nod_policy: bool) -> Self {
        let user = test_user(USER, PASSWORD);
        let mut sys = PrivateSystem::with_policy(tag, nod_policy);
        if bus {
            sys.start_bus();
        }
        if polkitd {
            sys.start_polkitd("");
        }
        let home = sys.scratch.dir("user", 0o755);
        std::os::unix::fs::chown(&home, Some(user.uid), Some(user.gid)).unwrap();
        let bus = SessionBus::start(&home, Some(&user));
        let server = NotificationServer::start(&bus, "body actions", Some(&user));
        Self {
            sys,
            user,
            bus,
            server,
            home,
        }
    }

    /// A probe asking with the polkit approver, as the user, after `steps`. A bogus
    /// `DBUS_SYSTEM_BUS_ADDRESS` proves the approver never follows it.
    fn probe(&self, steps: &[&str]) -> Probe {
        let bin = Probe::install(&self.sys.scratch, PROBE);
        let mut cmd = self.sys.as_user(&self.user, bin.to_str().unwrap());
        cmd.args(["polkit", "pam"])
            .args(steps)
            .env("DBUS_SESSION_BUS_ADDRESS", self.bus.address())
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                "unix:path=/nonexistent/fake-polkit",
            );
        Probe::spawn(&mut cmd, &self.sys.scratch.path, "probe")
    }

    /// The mark the agent leaves once registered; a probe step waits for it.
    fn ready(&self) -> PathBuf {
        self.home.join("agent-ready")
    }

    fn wait_ready(&self) -> String {
        format!("wait:{}", self.ready().display())
    }

    /// pkttyagent as the authentication agent of process `subject`, typing `answers`.
    fn agent(&self, subject: u32, answers: &[&str]) -> (Daemon, PathBuf) {
        let driver = self.sys.scratch.join("ttyagent.py");
        std::fs::write(&driver, DRIVER).unwrap();
        let log = self.home.join("pkttyagent.log");
        let mut cmd = self.sys.as_user(&self.user, PYTHON);
        cmd.arg(&driver)
            .arg(&log)
            .arg(self.ready())
            .arg(subject.to_string())
            .args(answers)
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                "unix:path=/run/dbus/system_bus_socket",
            );
        (Daemon::spawn("pkttyagent", &mut cmd), log)
    }
}

fn finish(p: Probe) -> ProbeRun {
    p.finish(Duration::from_secs(60))
}

#[test]
fn right_password_approves_and_the_request_is_shown_beside_the_dialog() {
    if !required() {
        return;
    }
    let w = World::new("polkit-right");
    let probe = w.probe(&[&w.wait_ready(), "ask"]);
    let (_agent, log) = w.agent(probe.pid(), &[PASSWORD]);
    let run = finish(probe);
    assert_eq!(run.outcomes, ["approved"], "{}", run.log);
    let dialog = read_log(&log);
    assert!(
        dialog.contains("AUTHENTICATING FOR org.nod.approve.remote"),
        "{dialog}"
    );
    assert!(
        dialog.contains("nod asks you to approve a login or sudo on another computer"),
        "the dialog names the kind of request: {dialog}"
    );
    assert!(dialog.contains("AUTHENTICATION COMPLETE"), "{dialog}");
    let notice = &w.server.wait_for_notify(1)[0];
    assert_eq!(
        notice.summary,
        "nod: allow sudo as alice on web-1.example.com (web-1)?"
    );
    assert!(
        notice
            .body
            .contains("command: /usr/bin/apt install <b>pkg</b>")
            && notice
                .body
                .ends_with("\nAuthenticate in the system dialog to approve."),
        "{}",
        notice.body
    );
    assert!(
        notice.actions.is_empty(),
        "the answer is the dialog's, not a click"
    );
    w.server.wait_for_close(1);
}

#[test]
fn wrong_password_denies() {
    if !required() {
        return;
    }
    let w = World::new("polkit-wrong");
    let probe = w.probe(&[&w.wait_ready(), "ask"]);
    let (_agent, log) = w.agent(probe.pid(), &["not-the-password"]);
    let run = finish(probe);
    assert_eq!(run.outcomes, ["denied"], "{}", run.log);
    let dialog = read_log(&log);
    assert!(dialog.contains("AUTHENTICATION FAILED"), "{dialog}");
}

#[test]
fn no_authentication_agent_is_unavailable() {
    if !required() {
        return;
    }
    let w = World::new("polkit-noagent");
    let run = finish(w.probe(&["ask"]));
    assert_eq!(run.outcomes, ["unavailable"], "{}", run.log);
    assert!(
        run.log.contains("no polkit authentication agent"),
        "{}",
        run.log
    );
    // The context was up while polkitd was asked, and is taken down.
    w.server.wait_for_close(1);
}

#[test]
fn withdrawn_prompt_cancels_the_check_and_takes_the_dialog_down() {
    if !required() {
        return;
    }
    let w = World::new("polkit-cancel");
    let released = w.home.join("released");
    // Nobody answers the dialog; the requester goes away after 1.5 s. The probe stays on the
    // bus until polkitd has withdrawn the dialog, so it is the cancel that withdraws it, not a
    // closed connection.
    let wait_released = format!("wait:{}", released.display());
    let probe = w.probe(&[&w.wait_ready(), "drop:1500", &wait_released]);
    let (_agent, log) = w.agent(probe.pid(), &["-"]);
    let polkitd = w.sys.scratch.join("polkitd.log");
    nod_e2e::wait_for(
        "polkitd to withdraw the dialog",
        Duration::from_secs(20),
        || read_log(&polkitd).contains("Error performing authentication: Operation was cancelled"),
    );
    std::fs::write(&released, "").unwrap();
    let run = finish(probe);
    assert_eq!(run.outcomes, ["dropped"], "{}", run.log);
    let polkitd = read_log(&polkitd);
    assert!(
        polkitd.contains(
            "FAILED to authenticate to gain authorization for action org.nod.approve.remote"
        ),
        "{polkitd}"
    );
    assert!(read_log(&log).contains("AUTHENTICATING FOR org.nod.approve.remote"));
    w.server.wait_for_close(1);
}

#[test]
fn no_system_bus_no_polkitd_or_no_nod_policy_is_unavailable() {
    if !required() {
        return;
    }
    let w = World::build("polkit-nobus", false, false, true);
    let run = finish(w.probe(&["ask"]));
    assert_eq!(run.outcomes, ["unavailable"], "{}", run.log);
    assert!(
        run.log
            .contains("no system bus at unix:path=/run/dbus/system_bus_socket"),
        "{}",
        run.log
    );
    assert!(
        w.server.notify_calls().is_empty(),
        "nothing shown when nothing is asked"
    );

    let w = World::build("polkit-nopolkitd", true, false, true);
    let run = finish(w.probe(&["ask"]));
    assert_eq!(run.outcomes, ["unavailable"], "{}", run.log);
    assert!(run.log.contains("polkitd is not running"), "{}", run.log);

    let w = World::build("polkit-nopolicy", true, true, false);
    let run = finish(w.probe(&["ask"]));
    assert_eq!(run.outcomes, ["unavailable"], "{}", run.log);
    assert!(
        run.log
            .contains("install /usr/share/polkit-1/actions/org.nod.policy"),
        "{}",
        run.log
    );
}
