//! The `desktop` approver: a notification with Approve and Deny buttons, through the
//! Desktop Notifications Specification (`org.freedesktop.Notifications` on the session bus,
//! version 1.2): `Notify` with actions, answered by `ActionInvoked` for our id.
//! `NotificationClosed` (dismissed, expired, closed by the server), the deadline or a server
//! that leaves the bus is a non-approval; a session without a notification server, or with one
//! that cannot show buttons (no `actions` capability), is `Unavailable`.
//!
//! Only the connection that answered `GetCapabilities` (the owner of the well-known name at
//! that moment) is believed: a signal from any other connection, even one naming our id, is
//! ignored. Any process of the user can still take the name when it is free, or click on X11;
//! so a click proves that someone is at the session, not who (docs/security.md).
//!
//! The same notification code shows the context of the `polkit` and `fprintd` prompts
//! (`notice.rs`), without buttons.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use zbus::names::OwnedUniqueName;
use zbus::zvariant::Value;
use zbus::{Connection, MessageStream};

use super::bus::{self, Bus, LazyBus, Method};
use super::{ApprovalFuture, Approver, Outcome, Presence, Prompt};
use crate::log::event;

const NAME: &str = "org.freedesktop.Notifications";
const PATH: &str = "/org/freedesktop/Notifications";
const IFACE: &str = "org.freedesktop.Notifications";

const APPROVE: &str = "approve";
const DENY: &str = "deny";

/// How long closing a notification may take once the answer is known.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the notification server (started by the bus, if it can) may take to say what it
/// can show. A server that does not answer by then is unavailable, so the next approver of the
/// chain is still asked in time.
const FIND_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks with a notification on the session bus.
#[derive(Debug)]
pub struct DesktopApprover {
    session: LazyBus,
}

impl Default for DesktopApprover {
    fn default() -> Self {
        Self::new()
    }
}

impl DesktopApprover {
    /// Connects to nothing yet: the session bus is reached at the first prompt.
    pub fn new() -> Self {
        Self {
            session: LazyBus::new(Bus::Session),
        }
    }

    async fn ask(&self, prompt: &Prompt, deadline: Instant) -> Outcome {
        let server = match Server::find(&self.session).await {
            Ok(server) => server,
            Err(why) => {
                event!("desktop approver: {why}; not asked");
                return Outcome::Unavailable;
            }
        };
        if !server.has("actions") {
            event!(
                "desktop approver: the notification server cannot show buttons (no \"actions\" \
                 capability); not asked (use the polkit or tty approver)"
            );
            return Outcome::Unavailable;
        }
        let mut events = match server.events().await {
            Ok(events) => events,
            Err(e) => {
                event!(
                    "desktop approver: cannot subscribe to the notification server: {}",
                    bus::describe(&e)
                );
                return Outcome::Unavailable;
            }
        };
        let actions = [DENY, "Deny", APPROVE, "Approve"];
        let mut shown = match server.show(prompt, "", &actions, deadline).await {
            Ok(shown) => shown,
            Err(e) => {
                event!(
                    "desktop approver: the notification server refused to show it: {}",
                    bus::describe(&e)
                );
                return Outcome::Unavailable;
            }
        };
        let outcome = loop {
            match events.next(shown.id).await {
                Event::Action(key) if key == APPROVE => break Outcome::Approved,
                Event::Action(key) if key == DENY => break Outcome::Denied,
                // "default" (a click on the body) and keys we never offered decide nothing.
                Event::Action(_) => {}
                Event::Closed(reason) => {
                    shown.closed();
                    event!("desktop approver: notification closed ({reason}); cancelled");
                    break Outcome::Cancelled;
                }
                Event::ServerGone => {
                    shown.closed();
                    event!("desktop approver: the notification server left the bus; not answered");
                    break Outcome::Unavailable;
                }
                Event::BusGone => {
                    shown.closed();
                    self.session.forget(&server.conn).await;
                    event!("desktop approver: lost the session bus; not answered");
                    break Outcome::Unavailable;
                }
            }
        };
        // Servers close a notification once an action is invoked, unless it is resident;
        // close it anyway, so no stale buttons remain.
        shown.close().await;
        outcome
    }
}

impl Approver for DesktopApprover {
    fn name(&self) -> &'static str {
        "desktop"
    }

    fn presence(&self) -> Presence {
        Presence::Click
    }

    fn approve<'a>(&'a self, prompt: &'a Prompt, deadline: Instant) -> ApprovalFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, self.ask(prompt, deadline)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    event!("desktop approver: not answered in time; notification withdrawn");
                    Outcome::Cancelled
                }
            }
        })
    }
}

/// Whether the desktop approver would reach a notification server that can show its buttons,
/// asked on the session bus of this process's environment (for `nod doctor`): `Ok` names the
/// bus, `Err` says what is missing.
pub async fn check_server() -> Result<String, String> {
    let address = super::SessionAddress::from_env();
    let session = LazyBus::new(Bus::Session);
    let server = Server::find(&session).await?;
    if !server.has("actions") {
        return Err(format!(
            "the notification server on the session bus {address} cannot show buttons (no \
             \"actions\" capability)"
        ));
    }
    Ok(address.to_string())
}

/// The notification server that answered, and what it can show.
#[derive(Debug)]
pub(super) struct Server {
    conn: Connection,
    owner: OwnedUniqueName,
    caps: Vec<String>,
}

impl Server {
    /// Asks the session's notification server for its capabilities (starting it, if the bus
    /// can); `Err` says why there is none.
    pub(super) async fn find(session: &LazyBus) -> Result<Self, String> {
        let method = Method {
            dest: NAME,
            path: PATH,
            iface: IFACE,
            member: "GetCapabilities",
        };
        let call = tokio::time::timeout(FIND_TIMEOUT, session.call(&method, &()));
        let Ok(reply) = call.await else {
            return Err(format!(
                "the notification server did not answer within {} s",
                FIND_TIMEOUT.as_secs()
            ));
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) if bus::is_reply(&e) => {
                return Err(format!(
                    "no notification server on the session bus ({})",
                    bus::describe(&e)
                ));
            }
            Err(e) => return Err(format!("no session bus ({})", bus::describe(&e))),
        };
        let owner = reply
            .sender()
            .ok_or("the notification server's reply names no sender")?;
        let caps: Vec<String> = reply.msg.body().deserialize().map_err(|e| {
            format!(
                "the notification server's capabilities are malformed: {}",
                bus::describe(&e)
            )
        })?;
        Ok(Self {
            conn: reply.conn,
            owner,
            caps,
        })
    }

    pub(super) fn has(&self, cap: &str) -> bool {
        self.caps.iter().any(|c| c == cap)
    }

    /// Subscribes to what the server says about notifications, before anything is shown, so
    /// no answer can come before we listen.
    async fn events(&self) -> zbus::Result<Events> {
        Ok(Events {
            signals: bus::signals(&self.conn, &self.owner, PATH, IFACE).await?,
            vanished: bus::vanished(&self.conn, &self.owner).await?,
            owner: self.owner.clone(),
        })
    }

    /// Shows `prompt` (and `footer`, a line of ours) with `actions` (pairs of key and label),
    /// until `deadline` where the server honours a timeout.
    pub(super) async fn show(
        &self,
        prompt: &Prompt,
        footer: &str,
        actions: &[&str],
        deadline: Instant,
    ) -> zbus::Result<Shown> {
        let (summary, body) = render(prompt, footer, self.has("body-markup"));
        let timeout_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .clamp(1, i32::MAX as u128) as i32;
        // Critical: it stays until answered and shows over full-screen windows.
        let hints = HashMap::from([("urgency", Value::U8(2))]);
        let body = (
            "nod",
            0u32,
            "dialog-password",
            summary.as_str(),
            body.as_str(),
            actions,
            hints,
            timeout_ms,
        );
        let method = Method {
            dest: self.owner.as_str(),
            path: PATH,
            iface: IFACE,
            member: "Notify",
        };
        let reply = method.call(&self.conn, &body).await?;
        let (id,): (u32,) = reply.body().deserialize()?;
        Ok(Shown {
            conn: self.conn.clone(),
            owner: self.owner.clone(),
            id,
            open: true,
        })
    }
}

/// The summary (the prompt's first line) and the body (the rest, then `footer`), escaped for
/// the body's markup when the server interprets it. The summary is plain text by the spec.
pub(super) fn render(prompt: &Prompt, footer: &str, markup: bool) -> (String, String) {
    let text = prompt.text();
    let mut lines = text.lines();
    let summary = lines.next().unwrap_or_default().to_owned();
    let mut body: Vec<&str> = lines.map(str::trim_start).collect();
    if !footer.is_empty() {
        body.push(footer);
    }
    let body = body.join("\n");
    let body = if markup { escape_markup(&body) } else { body };
    (summary, body)
}

/// Escapes the characters that the spec's body markup (a subset of XML) gives a meaning.
pub(super) fn escape_markup(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// What happened to a shown notification.
#[derive(Debug)]
enum Event {
    Action(String),
    Closed(u32),
    ServerGone,
    BusGone,
}

/// The server's signals and its departure from the bus.
struct Events {
    signals: MessageStream,
    vanished: MessageStream,
    owner: OwnedUniqueName,
}

impl Events {
    /// The next event for notification `id`; everything else is skipped.
    async fn next(&mut self, id: u32) -> Event {
        loop {
            tokio::select! {
                msg = self.signals.next() => {
                    let Some(Ok(msg)) = msg else { return Event::BusGone };
                    if !bus::sent_by(&msg, &self.owner) {
                        continue;
                    }
                    match bus::member(&msg).as_deref() {
                        Some("ActionInvoked") => {
                            if let Ok((got, key)) = msg.body().deserialize::<(u32, String)>()
                                && got == id {
                                    return Event::Action(key);
                                }
                        }
                        Some("NotificationClosed") => {
                            if let Ok((got, reason)) = msg.body().deserialize::<(u32, u32)>()
                                && got == id {
                                    return Event::Closed(reason);
                                }
                        }
                        _ => {}
                    }
                }
                msg = self.vanished.next() => {
                    let Some(Ok(msg)) = msg else { return Event::BusGone };
                    if let Ok((_, _, new)) = msg.body().deserialize::<(String, String, String)>()
                        && new.is_empty() {
                            return Event::ServerGone;
                        }
                }
            }
        }
    }
}

/// A notification on screen; closed when dropped while still open (the prompt was withdrawn).
#[derive(Debug)]
pub(super) struct Shown {
    conn: Connection,
    owner: OwnedUniqueName,
    id: u32,
    open: bool,
}

impl Shown {
    /// The server closed it already.
    pub(super) fn closed(&mut self) {
        self.open = false;
    }

    /// Closes it now (best effort, briefly).
    pub(super) async fn close(mut self) {
        self.open = false;
        close(self.conn.clone(), self.owner.clone(), self.id).await;
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        // Dropped mid-prompt: close it from a task, since drop cannot wait.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(close(self.conn.clone(), self.owner.clone(), self.id));
        }
    }
}

async fn close(conn: Connection, owner: OwnedUniqueName, id: u32) {
    let method = Method {
        dest: owner.as_str(),
        path: PATH,
        iface: IFACE,
        member: "CloseNotification",
    };
    // A notification that is already gone is an error reply here: nothing to do.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, method.call(&conn, &(id,))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_splits_summary_and_escapes_the_body_for_markup() {
        let Prompt::Pam(mut p) = crate::approvers::sample_prompt() else {
            unreachable!()
        };
        p.command = Some("echo <b>hi</b> & 'x'".into());
        let prompt = Prompt::Pam(p);
        let (summary, body) = render(&prompt, "footer", true);
        assert_eq!(
            summary,
            "nod: allow sudo as alice on web-1.example.com (web-1)?"
        );
        assert!(
            body.starts_with("command: echo &lt;b&gt;hi&lt;/b&gt; &amp; &apos;x&apos;\n"),
            "{body}"
        );
        assert!(body.ends_with("\nfooter"), "{body}");
        let (_, plain) = render(&prompt, "", false);
        assert!(
            plain.starts_with("command: echo <b>hi</b> & 'x'\n"),
            "{plain}"
        );
        assert!(!plain.contains("footer"));
    }
}
