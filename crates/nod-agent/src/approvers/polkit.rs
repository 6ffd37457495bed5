//! The `polkit` approver: "system authentication", as 1Password and KeePassXC do it on Linux.
//! The agent asks polkitd (`CheckAuthorization` with `AllowUserInteraction`) whether it, the
//! agent process itself, may perform one of nod's actions; their policy is `auth_self`
//! (`packaging/polkit/org.nod.policy`), so the session's polkit agent opens its dialog and the
//! person proves it is them through the `polkit-1` PAM stack: the password, or whatever the
//! admin put there (a fingerprint, a security key). nod cannot tell which.
//!
//! The dialog's message is the action's, static: per-request text (the `polkit.message`
//! detail) is accepted only from the action's owner, an annotation naming each user that the
//! package cannot know and does not template at install. So the dialog names the kind of
//! request (remote login or sudo, SSH key, secrets) and the request itself is shown as a
//! notification and on the agent's terminal (`notice.rs`); where it can be shown nowhere, the
//! person is not asked.
//!
//! polkitd is reached on the real system bus socket only (`bus.rs`). Outcomes: authorized →
//! approved; dismissed → cancelled; no authentication agent for this process → unavailable;
//! authentication failed or the admin's rules say no → denied. A prompt withdrawn before the
//! answer (deadline, requester gone) cancels the check (`CancelCheckAuthorization`), which
//! takes the dialog down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use zbus::Connection;
use zbus::zvariant::Value;

use super::bus::{self, Bus, LazyBus, Method};
use super::notice::Notice;
use super::{ApprovalFuture, Approver, Outcome, Presence, Prompt};
use crate::log::event;

const AUTHORITY: &str = "org.freedesktop.PolicyKit1";
const AUTHORITY_PATH: &str = "/org/freedesktop/PolicyKit1/Authority";
const AUTHORITY_IFACE: &str = "org.freedesktop.PolicyKit1.Authority";

/// `CheckAuthorizationFlags::AllowUserInteraction`.
const ALLOW_USER_INTERACTION: u32 = 1;

/// Where the package installs the actions.
pub const POLICY_FILE: &str = "/usr/share/polkit-1/actions/org.nod.policy";

/// How long cancelling a withdrawn check may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

/// The polkit action a prompt asks for; each has its own message in the dialog.
pub fn action_id(prompt: &Prompt) -> &'static str {
    match prompt {
        Prompt::Pam(_) => "org.nod.approve.remote",
        Prompt::SshSign(_) | Prompt::SshSessionCert(_) => "org.nod.approve.ssh",
        Prompt::SecretsRegister(_)
        | Prompt::SecretsApprove(_)
        | Prompt::SecretsUpgrade(_)
        | Prompt::SecretsUse(_) => "org.nod.approve.secrets",
    }
}

/// Asks polkit to authenticate the person.
#[derive(Debug)]
pub struct PolkitApprover {
    system: LazyBus,
    session: LazyBus,
    checks: AtomicU64,
}

impl Default for PolkitApprover {
    fn default() -> Self {
        Self::new()
    }
}

/// What polkitd answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationResult {
    pub is_authorized: bool,
    pub is_challenge: bool,
    pub details: HashMap<String, String>,
}

/// polkitd's answer → outcome.
pub fn outcome_of(result: &AuthorizationResult) -> Outcome {
    if result.is_authorized {
        Outcome::Approved
    } else if result.details.get("polkit.dismissed").map(String::as_str) == Some("true") {
        Outcome::Cancelled
    } else if result.is_challenge {
        // Authentication would do, but nobody could be asked: no agent for this process.
        Outcome::Unavailable
    } else {
        Outcome::Denied
    }
}

/// polkitd's error reply → outcome.
pub fn error_outcome(name: &str, message: &str) -> Outcome {
    match name {
        "org.freedesktop.PolicyKit1.Error.Cancelled" => Outcome::Cancelled,
        "org.freedesktop.DBus.Error.ServiceUnknown"
        | "org.freedesktop.DBus.Error.NameHasNoOwner"
        | "org.freedesktop.DBus.Error.NoReply" => Outcome::Unavailable,
        // An action polkitd does not know: the policy file is not installed.
        "org.freedesktop.PolicyKit1.Error.Failed" if message.contains("not registered") => {
            Outcome::Unavailable
        }
        _ => Outcome::Failed,
    }
}

impl PolkitApprover {
    /// Connects to nothing yet: the buses are reached at the first prompt.
    pub fn new() -> Self {
        Self {
            system: LazyBus::new(Bus::System),
            session: LazyBus::new(Bus::Session),
            checks: AtomicU64::new(0),
        }
    }

    async fn ask(&self, prompt: &Prompt, deadline: Instant) -> Outcome {
        let subject = match own_subject() {
            Ok(subject) => subject,
            Err(e) => {
                event!("polkit approver: cannot describe this process to polkit: {e}");
                return Outcome::Failed;
            }
        };
        // No system bus, nothing to show: the check below would find none either.
        if let Err(e) = self.system.get().await {
            event!(
                "polkit approver: no system bus at {} ({}); not asked",
                bus::SYSTEM_BUS,
                bus::describe(&e)
            );
            return Outcome::Unavailable;
        }
        let Some(notice) = Notice::show(
            &self.session,
            prompt,
            "Authenticate in the system dialog to approve.",
            deadline,
        )
        .await
        else {
            event!(
                "polkit approver: nowhere to show what the dialog approves (no notification \
                 server, no terminal); not asked"
            );
            return Outcome::Unavailable;
        };
        let outcome = self.check(prompt, &subject).await;
        notice.finish(outcome).await;
        outcome
    }

    async fn check(&self, prompt: &Prompt, subject: &Subject) -> Outcome {
        let action = action_id(prompt);
        let mut retried = false;
        loop {
            let conn = match self.system.get().await {
                Ok(conn) => conn,
                Err(e) => {
                    event!(
                        "polkit approver: no system bus at {} ({})",
                        bus::SYSTEM_BUS,
                        bus::describe(&e)
                    );
                    return Outcome::Unavailable;
                }
            };
            let n = self.checks.fetch_add(1, Ordering::Relaxed);
            let mut pending = Pending {
                conn: conn.clone(),
                cancellation_id: format!("nod-{}-{n}", std::process::id()),
                answered: false,
            };
            let details: HashMap<&str, &str> = HashMap::new();
            let body = (
                subject.as_value(),
                action,
                details,
                ALLOW_USER_INTERACTION,
                pending.cancellation_id.as_str(),
            );
            let method = Method {
                dest: AUTHORITY,
                path: AUTHORITY_PATH,
                iface: AUTHORITY_IFACE,
                member: "CheckAuthorization",
            };
            let reply = method.call(&conn, &body).await;
            pending.answered = true;
            let msg = match reply {
                Ok(msg) => msg,
                Err(e) if !bus::is_reply(&e) && !retried => {
                    // A kept connection that broke (the bus restarted): once more, anew.
                    self.system.forget(&conn).await;
                    retried = true;
                    continue;
                }
                Err(e) => return self.on_error(&conn, &e, action).await,
            };
            type Body = ((bool, bool, HashMap<String, String>),);
            let result = match msg.body().deserialize::<Body>() {
                Ok(((is_authorized, is_challenge, details),)) => AuthorizationResult {
                    is_authorized,
                    is_challenge,
                    details,
                },
                Err(e) => {
                    event!(
                        "polkit approver: malformed answer from polkitd: {}",
                        bus::describe(&e)
                    );
                    return Outcome::Failed;
                }
            };
            let outcome = outcome_of(&result);
            match outcome {
                Outcome::Approved => event!("polkit approver: authenticated"),
                Outcome::Cancelled => event!("polkit approver: the dialog was dismissed"),
                Outcome::Unavailable => event!(
                    "polkit approver: no polkit authentication agent answered for this process \
                     (GNOME and KDE have one; elsewhere start one, e.g. lxpolkit or \
                     polkit-gnome); not asked"
                ),
                _ => event!("polkit approver: authentication failed or refused by polkit rules"),
            }
            return outcome;
        }
    }

    async fn on_error(&self, conn: &Connection, e: &zbus::Error, action: &str) -> Outcome {
        let Some(name) = bus::error_name(e) else {
            self.system.forget(conn).await;
            event!(
                "polkit approver: lost the system bus ({}); not answered",
                bus::describe(e)
            );
            return Outcome::Unavailable;
        };
        let message = e.to_string();
        let outcome = error_outcome(&name, &message);
        match outcome {
            Outcome::Cancelled => event!("polkit approver: check cancelled"),
            Outcome::Unavailable if name.starts_with("org.freedesktop.PolicyKit1") => event!(
                "polkit approver: polkit does not know {action}; install {POLICY_FILE} (the nod \
                 package does) — not asked"
            ),
            Outcome::Unavailable => event!(
                "polkit approver: polkitd is not running ({})",
                bus::describe(e)
            ),
            _ => event!(
                "polkit approver: polkitd failed the check: {}",
                bus::describe(e)
            ),
        }
        outcome
    }
}

impl Approver for PolkitApprover {
    fn name(&self) -> &'static str {
        "polkit"
    }

    fn presence(&self) -> Presence {
        Presence::Password
    }

    fn approve<'a>(&'a self, prompt: &'a Prompt, deadline: Instant) -> ApprovalFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, self.ask(prompt, deadline)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    event!("polkit approver: not answered in time; dialog withdrawn");
                    Outcome::Cancelled
                }
            }
        })
    }
}

/// This process as polkit's `unix-process` subject. The agent asks about itself, so the pid
/// cannot be reused while the check runs; the start time and uid pin it anyway, as polkit asks.
#[derive(Debug, Clone, Copy)]
struct Subject {
    pid: u32,
    start_ticks: u64,
    uid: u32,
}

fn own_subject() -> std::io::Result<Subject> {
    let pid = std::process::id();
    let start_ticks = crate::caller::identity::start_ticks(i32::try_from(pid).unwrap_or(-1))?;
    Ok(Subject {
        pid,
        start_ticks,
        uid: nix::unistd::getuid().as_raw(),
    })
}

impl Subject {
    fn as_value(&self) -> (&'static str, HashMap<&'static str, Value<'static>>) {
        let uid = i32::try_from(self.uid).unwrap_or(-1);
        (
            "unix-process",
            HashMap::from([
                ("pid", Value::U32(self.pid)),
                ("start-time", Value::U64(self.start_ticks)),
                ("uid", Value::I32(uid)),
            ]),
        )
    }
}

/// A check in flight; dropped before its answer (the prompt withdrawn), it is cancelled, which
/// makes polkitd dismiss the dialog. Cancellation ids are the caller's, per connection, so the
/// same connection sends it.
#[derive(Debug)]
struct Pending {
    conn: Connection,
    cancellation_id: String,
    answered: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let conn = self.conn.clone();
        let id = std::mem::take(&mut self.cancellation_id);
        rt.spawn(async move {
            let method = Method {
                dest: AUTHORITY,
                path: AUTHORITY_PATH,
                iface: AUTHORITY_IFACE,
                member: "CancelCheckAuthorization",
            };
            let _ = tokio::time::timeout(CANCEL_TIMEOUT, method.call(&conn, &(id.as_str(),))).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(is_authorized: bool, is_challenge: bool, dismissed: bool) -> AuthorizationResult {
        let mut details = HashMap::new();
        if dismissed {
            details.insert("polkit.dismissed".to_owned(), "true".to_owned());
        }
        AuthorizationResult {
            is_authorized,
            is_challenge,
            details,
        }
    }

    #[test]
    fn only_an_authorization_approves() {
        assert_eq!(outcome_of(&result(true, false, false)), Outcome::Approved);
        assert_eq!(outcome_of(&result(false, false, true)), Outcome::Cancelled);
        assert_eq!(outcome_of(&result(false, true, true)), Outcome::Cancelled);
        assert_eq!(
            outcome_of(&result(false, true, false)),
            Outcome::Unavailable
        );
        assert_eq!(outcome_of(&result(false, false, false)), Outcome::Denied);
    }

    #[test]
    fn errors_never_approve_and_missing_pieces_are_unavailable() {
        let cases = [
            (
                "org.freedesktop.PolicyKit1.Error.Cancelled",
                "",
                Outcome::Cancelled,
            ),
            (
                "org.freedesktop.DBus.Error.ServiceUnknown",
                "",
                Outcome::Unavailable,
            ),
            (
                "org.freedesktop.DBus.Error.NameHasNoOwner",
                "",
                Outcome::Unavailable,
            ),
            (
                "org.freedesktop.PolicyKit1.Error.Failed",
                "Action org.nod.approve.remote is not registered",
                Outcome::Unavailable,
            ),
            (
                "org.freedesktop.PolicyKit1.Error.Failed",
                "other",
                Outcome::Failed,
            ),
            (
                "org.freedesktop.PolicyKit1.Error.NotAuthorized",
                "",
                Outcome::Failed,
            ),
            ("org.example.Whatever", "", Outcome::Failed),
        ];
        for (name, message, want) in cases {
            assert_eq!(error_outcome(name, message), want, "{name} {message}");
        }
    }

    #[test]
    fn every_prompt_kind_has_an_action_in_the_shipped_policy() {
        let policy = include_str!("../../../../packaging/polkit/org.nod.policy");
        for prompt in [
            crate::approvers::sample_prompt(),
            Prompt::SecretsApprove(crate::approvers::SecretsPrompt {
                path: "/bin/x".into(),
                hash: "sha256:00".into(),
                previous_hash: None,
                read: vec![],
                write: vec![],
                search: false,
                interpreter: false,
                writable: false,
                legacy_protocol: false,
                requested_by: vec![],
            }),
        ] {
            let id = action_id(&prompt);
            assert!(policy.contains(&format!("<action id=\"{id}\">")), "{id}");
        }
        for id in [
            "org.nod.approve.remote",
            "org.nod.approve.ssh",
            "org.nod.approve.secrets",
        ] {
            assert!(policy.contains(&format!("<action id=\"{id}\">")), "{id}");
        }
        // Every approval asks again: never a kept authorization, never without authentication.
        assert!(!policy.contains("_keep</"));
        assert_eq!(policy.matches(">auth_self</allow_").count(), 9);
    }
}
