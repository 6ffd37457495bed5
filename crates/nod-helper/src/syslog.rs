//! One line in the system log (facility authpriv, tag `nod-helper`) for every `request`.
//!
//! Under PAM the helper's stderr is `/dev/null`, and `pam_nod.so` logs only the exit code, so
//! this line is where an admin reads why sudo approved, refused or asked for the password.
//! What came from the wire or from the caller (the user name, the agent's error text, the key
//! id it claims) has been made one bounded line before it gets here.
//!
//! The line goes straight to `/dev/log` as one datagram, `<PRI>nod-helper[PID]: text`, the
//! form journald and rsyslog read from local programs (they stamp the time on arrival). No
//! libc `syslog(3)`: this crate has no unsafe code, and nix offers no authpriv facility.

use std::os::unix::net::UnixDatagram;

use crate::error::{
    EXIT_APPROVED, EXIT_AUTH, EXIT_CANCELLED, EXIT_CONFIG, EXIT_DENIED, EXIT_FAILED, EXIT_GEN_KEY,
    EXIT_PROTOCOL, EXIT_UNAVAILABLE, HelperError, one_line,
};

/// Longest user or service name repeated in the line.
const MAX_NAME_LEN: usize = 64;
/// The local syslog socket.
const DEV_LOG: &str = "/dev/log";
/// `LOG_AUTHPRIV`, as `pam_syslog(3)` uses: the security/authorization facility.
const FACILITY_AUTHPRIV: u8 = 10 << 3;

/// A syslog severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Err = 3,
    Notice = 5,
    Info = 6,
}

/// The severity of a `request` outcome, by its exit code: approvals are information, the
/// fallbacks and a denial are notable, anything that fails closed is an error.
pub fn severity(exit_code: u8) -> Severity {
    match exit_code {
        EXIT_APPROVED => Severity::Info,
        EXIT_UNAVAILABLE | EXIT_CANCELLED | EXIT_FAILED | EXIT_DENIED => Severity::Notice,
        EXIT_AUTH | EXIT_CONFIG | EXIT_PROTOCOL | EXIT_GEN_KEY => Severity::Err,
        _ => Severity::Err,
    }
}

/// The datagram for `text` at `severity`.
fn datagram(severity: Severity, text: &str) -> String {
    format!(
        "<{}>nod-helper[{}]: {text}",
        FACILITY_AUTHPRIV + severity as u8,
        std::process::id()
    )
}

/// The line for the outcome of a request for `user` through `service` (the PAM service, which
/// `pam_nod.so` always passes).
pub fn line(user: &str, service: Option<&str>, outcome: Result<(), &HelperError>) -> String {
    let name = |s: &str| -> String { one_line(s).chars().take(MAX_NAME_LEN).collect() };
    let what = match outcome {
        Ok(()) => "approved".to_owned(),
        Err(e) => one_line(&e.to_string()),
    };
    match service {
        Some(service) => format!("{} for {}: {what}", name(service), name(user)),
        None => format!("{}: {what}", name(user)),
    }
}

/// Writes the line for a request's outcome. A missing syslog daemon is not an error: the
/// outcome stands, and stderr has the same text.
pub fn outcome(user: &str, service: Option<&str>, outcome: Result<(), &HelperError>) {
    let code = outcome.err().map_or(EXIT_APPROVED, HelperError::exit_code);
    let message = datagram(severity(code), &line(user, service, outcome));
    if let Ok(socket) = UnixDatagram::unbound() {
        // A syslog daemon that does not read must not hold up the answer.
        let _ = socket.set_write_timeout(Some(std::time::Duration::from_millis(200)));
        let _ = socket.send_to(message.as_bytes(), DEV_LOG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_closed_outcomes_are_errors_and_fallbacks_notices() {
        for code in 0..=255u8 {
            let want = match code {
                0 => Severity::Info,
                10..=12 | 20 => Severity::Notice,
                _ => Severity::Err,
            };
            assert_eq!(severity(code), want, "exit {code}");
        }
    }

    #[test]
    fn the_line_names_service_and_user_on_one_bounded_line() {
        let e = HelperError::NotRoot { uid: 1000 };
        let l = line("al\nice", Some("xscreensaver"), Err(&e));
        assert!(
            l.starts_with("xscreensaver for al ice: nod-helper runs as uid 1000"),
            "{l}"
        );
        assert!(line(&"u".repeat(500), Some("sudo"), Ok(())).len() < 100);
        assert_eq!(line("alice", None, Ok(())), "alice: approved");
        let d = datagram(Severity::Err, "x");
        assert!(
            d.starts_with("<83>nod-helper[") && d.ends_with("]: x"),
            "{d}"
        );
    }
}
