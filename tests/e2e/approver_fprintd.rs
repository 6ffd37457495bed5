//! The `fprintd` approver against the real fprintd with libfprint's `virtual_device` driver (a
//! reader whose finger scans the test sends through a socket), the real polkitd deciding who
//! may use it, on a private system bus at the real path inside a mount namespace. Fingers are
//! enrolled with the real `fprintd-enroll`. The approver runs as a non-root test user; its
//! context goes to a notification server on that user's session bus.
//!
//! fprintd lets only an active local session verify (polkit, `allow_active=yes`); a namespace
//! has no logind session, so a polkit rule grants the test user what an active session has.

use std::time::Duration;

use nod_e2e::TestUser;
use nod_e2e::buses::{
    NotificationServer, PrivateSystem, Probe, ProbeRun, SessionBus, require_system_tools, test_user,
};

const USER: &str = "nod-e2e-fprint";
const PROBE: &str = env!("CARGO_BIN_EXE_nod-approve-probe");
const ENROLLED: &str = "finger-1";
const OTHER: &str = "finger-2";

/// What an active local session may do with the reader, granted to the test user.
const ACTIVE_SESSION_RULE: &str = r#"polkit.addRule(function(action, subject) {
    if (action.id.indexOf("net.reactivated.fprint.device.") == 0 && subject.user == "nod-e2e-fprint") {
        return polkit.Result.YES;
    }
});
"#;

fn required() -> bool {
    require_system_tools(
        &["fprintd-enroll"],
        &["/usr/libexec/fprintd", "/usr/lib/polkit-1/polkitd"],
    )
}

struct World {
    sys: PrivateSystem,
    user: TestUser,
    bus: SessionBus,
    server: NotificationServer,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// fprintd is not running.
    NoDaemon,
    None,
    Empty,
    Enrolled,
}

impl World {
    fn new(tag: &str, reader: Reader, rule: &str) -> Self {
        let user = test_user(USER, "unused-Fprint-3");
        let mut sys = PrivateSystem::new(tag);
        sys.start_bus();
        sys.start_polkitd(rule);
        if reader != Reader::NoDaemon {
            sys.start_fprintd(reader != Reader::None);
        }
        if reader == Reader::Enrolled {
            sys.enroll(&user, ENROLLED);
        }
        let home = sys.scratch.dir("user", 0o755);
        std::os::unix::fs::chown(&home, Some(user.uid), Some(user.gid)).unwrap();
        let bus = SessionBus::start(&home, Some(&user));
        let server = NotificationServer::start(&bus, "body body-markup", Some(&user));
        Self {
            sys,
            user,
            bus,
            server,
        }
    }

    /// A probe asking with the fprintd approver, as the user. A bogus
    /// `DBUS_SYSTEM_BUS_ADDRESS` proves the approver never follows it.
    fn probe(&self, prompt: &str, steps: &[&str]) -> Probe {
        let bin = Probe::install(&self.sys.scratch, PROBE);
        let mut cmd = self.sys.as_user(&self.user, bin.to_str().unwrap());
        cmd.args(["fprintd", prompt])
            .args(steps)
            .env("DBUS_SESSION_BUS_ADDRESS", self.bus.address())
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                "unix:path=/nonexistent/fake-fprintd",
            );
        Probe::spawn(&mut cmd, &self.sys.scratch.path, "probe")
    }
}

fn finish(p: Probe) -> ProbeRun {
    p.finish(Duration::from_secs(60))
}

#[test]
fn enrolled_finger_approves_and_the_request_is_shown_while_the_reader_waits() {
    if !required() {
        return;
    }
    let w = World::new("fprint-match", Reader::Enrolled, ACTIVE_SESSION_RULE);
    let probe = w.probe("ssh", &["ask"]);
    // The reader is armed only once the person can see what the finger approves.
    let notice = w.server.wait_for_notify(1)[0].clone();
    w.sys.scan(ENROLLED);
    let run = finish(probe);
    assert_eq!(run.outcomes, ["approved"], "{}", run.log);
    assert!(run.log.contains("verify-match"), "{}", run.log);
    assert!(
        notice
            .summary
            .starts_with("nod: allow a signature with SSH key alice@laptop <work>"),
        "{}",
        notice.summary
    );
    assert!(
        notice.body.contains("to: github.com")
            && notice
                .body
                .contains("chain: ssh (4242) ← git (4241) ← zsh (4000)")
            && notice
                .body
                .ends_with("\nTouch the fingerprint reader to approve."),
        "{}",
        notice.body
    );
    assert!(
        notice.actions.is_empty(),
        "the answer is the finger's, not a click"
    );
    w.server.wait_for_close(1);
}

#[test]
fn another_finger_denies() {
    if !required() {
        return;
    }
    let w = World::new("fprint-nomatch", Reader::Enrolled, ACTIVE_SESSION_RULE);
    let probe = w.probe("pam", &["ask"]);
    w.server.wait_for_notify(1);
    w.sys.scan(OTHER);
    let run = finish(probe);
    assert_eq!(run.outcomes, ["denied"], "{}", run.log);
    assert!(run.log.contains("verify-no-match"), "{}", run.log);
}

#[test]
fn withdrawn_prompt_stops_the_scan_and_releases_the_reader() {
    if !required() {
        return;
    }
    let w = World::new("fprint-release", Reader::Enrolled, ACTIVE_SESSION_RULE);
    // Were the reader still claimed by the first, withdrawn prompt, the second could not
    // claim it (fprintd: already in use) and would be unavailable.
    let probe = w.probe("pam", &["drop:1500", "ask"]);
    w.server.wait_for_notify(2);
    w.sys.scan(ENROLLED);
    let run = finish(probe);
    assert_eq!(run.outcomes, ["dropped", "approved"], "{}", run.log);
    w.server.wait_for_close(1);
}

#[test]
fn no_fprintd_or_no_reader_is_unavailable() {
    if !required() {
        return;
    }
    let w = World::new("fprint-nodaemon", Reader::NoDaemon, ACTIVE_SESSION_RULE);
    let run = finish(w.probe("pam", &["ask"]));
    assert_eq!(run.outcomes, ["unavailable"], "{}", run.log);
    assert!(
        run.log.contains("fprintd is not installed or not running"),
        "{}",
        run.log
    );

    let w = World::new("fprint-noreader", Reader::None, ACTIVE_SESSION_RULE);
    let run = finish(w.probe("pam", &["ask"]));
    assert_eq!(run.outcomes, ["unavailable"], "{}", run.log);
    assert!(run.log.contains("no fingerprint reader"), "{}", run.log);
    assert!(
        w.server.notify_calls().is_empty(),
        "nothing to show when nothing is asked"
    );
}

#[test]
fn no_enrolled_finger_is_unavailable() {
    if !required() {
        return;
    }
    let w = World::new("fprint-noprint", Reader::Empty, ACTIVE_SESSION_RULE);
    let run = finish(w.probe("pam", &["ask"]));
    assert_eq!(run.outcomes, ["unavailable"], "{}", run.log);
    assert!(run.log.contains("fprintd-enroll"), "{}", run.log);
    assert!(w.server.notify_calls().is_empty());
}

#[test]
fn reader_refused_by_polkit_is_unavailable() {
    if !required() {
        return;
    }
    // No rule: fprintd's own policy, under which a process outside an active local session
    // (an SSH login, a service) may not verify.
    let w = World::new("fprint-refused", Reader::Enrolled, "");
    let run = finish(w.probe("pam", &["ask"]));
    assert_eq!(run.outcomes, ["unavailable"], "{}", run.log);
    assert!(run.log.contains("active local session"), "{}", run.log);
    assert!(w.server.notify_calls().is_empty());
}
