//! The `fprintd` approver: a finger enrolled for the agent's user, on this machine's reader,
//! through fprintd (`net.reactivated.Fprint` on the real system bus, `bus.rs`). The default
//! device is claimed for the caller's own user, the user's enrolled fingers are checked, then
//! `VerifyStart("any")`: `verify-match` approves, `verify-no-match` denies, the retry statuses
//! (too short, not centred, …) keep waiting. No fprintd, no reader, no enrolled finger, a
//! reader in use by another program, a polkit refusal (fprintd lets only an active local
//! session verify) or a reader that disconnects are `Unavailable`: the host falls back to its
//! password. Whatever happens, including a prompt withdrawn mid-scan, the verification is
//! stopped and the device released.
//!
//! What the finger approves is shown as a notification and on the agent's terminal
//! (`notice.rs`); where it can be shown nowhere, the reader is not armed.
//!
//! Only the connection that owns `net.reactivated.Fprint` when the device is looked up is
//! talked to and believed; fprintd runs as root, so its signal is as good as that connection.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use zbus::names::OwnedUniqueName;
use zbus::zvariant::OwnedObjectPath;
use zbus::{Connection, MessageStream};

use super::bus::{self, Bus, LazyBus, Method};
use super::notice::Notice;
use super::{ApprovalFuture, Approver, Outcome, Presence, Prompt};
use crate::log::event;

const SERVICE: &str = "net.reactivated.Fprint";
const MANAGER_PATH: &str = "/net/reactivated/Fprint/Manager";
const MANAGER_IFACE: &str = "net.reactivated.Fprint.Manager";
const DEVICE_IFACE: &str = "net.reactivated.Fprint.Device";

/// How long stopping and releasing may take once the answer is known.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// What one `VerifyStatus` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The verification ended with this outcome.
    Done(Outcome),
    /// Scan again (too short, not centred, …): keep waiting.
    Retry,
}

/// A `VerifyStatus` result → what it means. Unknown results end the prompt unapproved.
pub fn status_of(result: &str) -> Status {
    match result {
        "verify-match" => Status::Done(Outcome::Approved),
        "verify-no-match" => Status::Done(Outcome::Denied),
        "verify-retry-scan"
        | "verify-swipe-too-short"
        | "verify-finger-not-centered"
        | "verify-remove-and-retry" => Status::Retry,
        "verify-disconnected" => Status::Done(Outcome::Unavailable),
        _ => Status::Done(Outcome::Failed),
    }
}

/// An fprintd error reply → outcome: what means "the person cannot be asked this way" is
/// `Unavailable`, anything else `Failed`.
pub fn error_outcome(name: &str) -> Outcome {
    match name {
        "net.reactivated.Fprint.Error.NoSuchDevice"
        | "net.reactivated.Fprint.Error.NoEnrolledPrints"
        | "net.reactivated.Fprint.Error.PermissionDenied"
        | "net.reactivated.Fprint.Error.AlreadyInUse"
        | "org.freedesktop.DBus.Error.ServiceUnknown"
        | "org.freedesktop.DBus.Error.NameHasNoOwner" => Outcome::Unavailable,
        _ => Outcome::Failed,
    }
}

/// Asks for an enrolled finger.
#[derive(Debug)]
pub struct FprintdApprover {
    system: LazyBus,
    session: LazyBus,
}

impl Default for FprintdApprover {
    fn default() -> Self {
        Self::new()
    }
}

impl FprintdApprover {
    /// Connects to nothing yet: the buses are reached at the first prompt.
    pub fn new() -> Self {
        Self {
            system: LazyBus::new(Bus::System),
            session: LazyBus::new(Bus::Session),
        }
    }

    async fn ask(&self, prompt: &Prompt, deadline: Instant) -> Outcome {
        let lookup = Method {
            dest: SERVICE,
            path: MANAGER_PATH,
            iface: MANAGER_IFACE,
            member: "GetDefaultDevice",
        };
        let reply = match self.system.call(&lookup, &()).await {
            Ok(reply) => reply,
            Err(e) => return unavailable_or_failed("finding the reader", &e),
        };
        let (Some(owner), Ok((device,))) = (
            reply.sender(),
            reply.msg.body().deserialize::<(OwnedObjectPath,)>(),
        ) else {
            event!("fprintd approver: malformed answer to GetDefaultDevice");
            return Outcome::Failed;
        };
        let reader = Reader {
            conn: reply.conn,
            owner,
            device,
        };
        let claimed = match reader.call("Claim", &("",)).await {
            Ok(_) => Claimed {
                reader,
                verifying: false,
                released: false,
            },
            Err(e) => {
                self.system.forget_if_broken(&reader.conn, &e).await;
                return unavailable_or_failed("claiming the reader", &e);
            }
        };
        claimed
            .verify(prompt, deadline, &self.session, &self.system)
            .await
    }
}

impl Approver for FprintdApprover {
    fn name(&self) -> &'static str {
        "fprintd"
    }

    fn presence(&self) -> Presence {
        Presence::Fingerprint
    }

    fn approve<'a>(&'a self, prompt: &'a Prompt, deadline: Instant) -> ApprovalFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, self.ask(prompt, deadline)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    event!("fprintd approver: no finger in time; reader released");
                    Outcome::Cancelled
                }
            }
        })
    }
}

/// Logs why `what` failed and maps it to an outcome.
fn unavailable_or_failed(what: &str, e: &zbus::Error) -> Outcome {
    let Some(name) = bus::error_name(e) else {
        event!(
            "fprintd approver: {what}: no system bus at {} ({}); not asked",
            bus::SYSTEM_BUS,
            bus::describe(e)
        );
        return Outcome::Unavailable;
    };
    let outcome = error_outcome(&name);
    let hint = match name.as_str() {
        "net.reactivated.Fprint.Error.NoSuchDevice" => " (no fingerprint reader)",
        "net.reactivated.Fprint.Error.NoEnrolledPrints" => {
            " (no finger enrolled: run fprintd-enroll)"
        }
        "net.reactivated.Fprint.Error.PermissionDenied" => {
            " (polkit lets only an active local session use the reader)"
        }
        "net.reactivated.Fprint.Error.AlreadyInUse" => " (another program is using the reader)",
        "org.freedesktop.DBus.Error.ServiceUnknown"
        | "org.freedesktop.DBus.Error.NameHasNoOwner" => {
            " (fprintd is not installed or not running)"
        }
        _ => "",
    };
    if outcome == Outcome::Unavailable {
        event!(
            "fprintd approver: {what}: {}{hint}; not asked",
            bus::describe(e)
        );
    } else {
        event!("fprintd approver: {what}: {}", bus::describe(e));
    }
    outcome
}

/// The device, on the fprintd connection that told us about it.
#[derive(Debug)]
struct Reader {
    conn: Connection,
    owner: OwnedUniqueName,
    device: OwnedObjectPath,
}

impl Reader {
    async fn call<B>(&self, member: &str, body: &B) -> zbus::Result<zbus::message::Message>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        Method {
            dest: self.owner.as_str(),
            path: self.device.as_str(),
            iface: DEVICE_IFACE,
            member,
        }
        .call(&self.conn, body)
        .await
    }
}

/// A claimed device: released (after stopping a running verification) on every way out,
/// including a drop mid-prompt.
#[derive(Debug)]
struct Claimed {
    reader: Reader,
    verifying: bool,
    released: bool,
}

impl Claimed {
    async fn verify(
        mut self,
        prompt: &Prompt,
        deadline: Instant,
        session: &LazyBus,
        system: &LazyBus,
    ) -> Outcome {
        match self.reader.call("ListEnrolledFingers", &("",)).await {
            Ok(reply) => match reply.body().deserialize::<(Vec<String>,)>() {
                Ok((fingers,)) if !fingers.is_empty() => {}
                Ok(_) => {
                    event!("fprintd approver: no finger enrolled (run fprintd-enroll); not asked");
                    self.release().await;
                    return Outcome::Unavailable;
                }
                Err(e) => {
                    event!(
                        "fprintd approver: malformed list of enrolled fingers: {}",
                        bus::describe(&e)
                    );
                    self.release().await;
                    return Outcome::Failed;
                }
            },
            Err(e) => {
                system.forget_if_broken(&self.reader.conn, &e).await;
                let outcome = unavailable_or_failed("listing enrolled fingers", &e);
                self.release().await;
                return outcome;
            }
        }
        let Some(notice) = Notice::show(
            session,
            prompt,
            "Touch the fingerprint reader to approve.",
            deadline,
        )
        .await
        else {
            event!(
                "fprintd approver: nowhere to show what the finger approves (no notification \
                 server, no terminal); not asked"
            );
            self.release().await;
            return Outcome::Unavailable;
        };
        let outcome = self.scan(system).await;
        self.release().await;
        notice.finish(outcome).await;
        outcome
    }

    /// Starts the verification and waits for its end.
    async fn scan(&mut self, system: &LazyBus) -> Outcome {
        let r = &self.reader;
        let subscribed = async {
            let signals = bus::signals(&r.conn, &r.owner, r.device.as_str(), DEVICE_IFACE).await?;
            let vanished = bus::vanished(&r.conn, &r.owner).await?;
            Ok::<_, zbus::Error>((signals, vanished))
        };
        let (mut signals, mut vanished) = match subscribed.await {
            Ok(streams) => streams,
            Err(e) => {
                event!(
                    "fprintd approver: cannot subscribe to the reader: {}",
                    bus::describe(&e)
                );
                return Outcome::Failed;
            }
        };
        if let Err(e) = self.reader.call("VerifyStart", &("any",)).await {
            system.forget_if_broken(&self.reader.conn, &e).await;
            return unavailable_or_failed("starting the scan", &e);
        }
        self.verifying = true;
        let owner = self.reader.owner.clone();
        loop {
            match next_status(&mut signals, &mut vanished, &owner).await {
                Some(result) => match status_of(&result) {
                    Status::Retry => {
                        event!("fprintd approver: {result:?}; waiting for another scan")
                    }
                    Status::Done(outcome) => {
                        event!("fprintd approver: {result:?}");
                        return outcome;
                    }
                },
                None => {
                    event!("fprintd approver: fprintd or the system bus went away mid-scan");
                    system.forget(&self.reader.conn).await;
                    self.verifying = false;
                    self.released = true;
                    return Outcome::Unavailable;
                }
            }
        }
    }

    async fn release(&mut self) {
        let stop = self.verifying;
        self.verifying = false;
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let _ = tokio::time::timeout(RELEASE_TIMEOUT, release(&self.reader, stop)).await;
    }
}

/// `VerifyStop` when a scan runs, then `Release`. Errors are moot: fprintd also releases a
/// device whose claimer leaves the bus.
async fn release(reader: &Reader, stop: bool) {
    if stop {
        let _ = reader.call("VerifyStop", &()).await;
    }
    let _ = reader.call("Release", &()).await;
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let reader = Reader {
            conn: self.reader.conn.clone(),
            owner: self.reader.owner.clone(),
            device: self.reader.device.clone(),
        };
        let stop = self.verifying;
        rt.spawn(async move {
            let _ = tokio::time::timeout(RELEASE_TIMEOUT, release(&reader, stop)).await;
        });
    }
}

/// The next `VerifyStatus` result from `owner`; `None` when fprintd or the bus is gone.
async fn next_status(
    signals: &mut MessageStream,
    vanished: &mut MessageStream,
    owner: &OwnedUniqueName,
) -> Option<String> {
    loop {
        tokio::select! {
            msg = signals.next() => {
                let Some(Ok(msg)) = msg else { return None };
                if !bus::sent_by(&msg, owner) || bus::member(&msg).as_deref() != Some("VerifyStatus") {
                    continue;
                }
                if let Ok((result, _done)) = msg.body().deserialize::<(String, bool)>() {
                    return Some(result);
                }
            }
            msg = vanished.next() => {
                let Some(Ok(msg)) = msg else { return None };
                if let Ok((_, _, new)) = msg.body().deserialize::<(String, String, String)>()
                    && new.is_empty() {
                        return None;
                    }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_match_approves() {
        assert_eq!(status_of("verify-match"), Status::Done(Outcome::Approved));
        assert_eq!(status_of("verify-no-match"), Status::Done(Outcome::Denied));
        for retry in [
            "verify-retry-scan",
            "verify-swipe-too-short",
            "verify-finger-not-centered",
            "verify-remove-and-retry",
        ] {
            assert_eq!(status_of(retry), Status::Retry, "{retry}");
        }
        assert_eq!(
            status_of("verify-disconnected"),
            Status::Done(Outcome::Unavailable)
        );
        assert_eq!(
            status_of("verify-unknown-error"),
            Status::Done(Outcome::Failed)
        );
        assert_eq!(status_of("verify-matched"), Status::Done(Outcome::Failed));
        assert_eq!(status_of(""), Status::Done(Outcome::Failed));
    }

    #[test]
    fn missing_reader_finger_or_permission_is_unavailable() {
        for name in [
            "net.reactivated.Fprint.Error.NoSuchDevice",
            "net.reactivated.Fprint.Error.NoEnrolledPrints",
            "net.reactivated.Fprint.Error.PermissionDenied",
            "net.reactivated.Fprint.Error.AlreadyInUse",
            "org.freedesktop.DBus.Error.ServiceUnknown",
        ] {
            assert_eq!(error_outcome(name), Outcome::Unavailable, "{name}");
        }
        for name in [
            "net.reactivated.Fprint.Error.Internal",
            "net.reactivated.Fprint.Error.ClaimDevice",
            "org.example.Other",
        ] {
            assert_eq!(error_outcome(name), Outcome::Failed, "{name}");
        }
    }
}
