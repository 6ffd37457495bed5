//! D-Bus for the `desktop`, `polkit` and `fprintd` approvers: one connection per approver,
//! made at its first prompt (an agent that never prompts never touches D-Bus) and made again
//! when it breaks.
//!
//! The system bus is always the real socket, never `$DBUS_SYSTEM_BUS_ADDRESS`: a process of
//! the same user could point that variable at a bus of its own, where its own "polkit" or
//! "fprintd" says yes. The session bus is whatever the session says it is; everything on it
//! runs as the user anyway.

use std::time::Duration;

use tokio::sync::Mutex;
use zbus::message::Message;
use zbus::names::{OwnedUniqueName, UniqueName};
use zbus::{Connection, Error};

/// The system bus socket, as every distribution puts it.
pub(super) const SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";

/// How long connecting (and the bus's `Hello`) may take before the bus counts as absent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which bus an approver talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bus {
    /// `$DBUS_SESSION_BUS_ADDRESS`, else `$XDG_RUNTIME_DIR/bus`.
    Session,
    /// [`SYSTEM_BUS`].
    System,
}

/// A connection made on first use and kept; [`LazyBus::forget`] drops a broken one.
#[derive(Debug)]
pub(super) struct LazyBus {
    bus: Bus,
    conn: Mutex<Option<Connection>>,
}

impl LazyBus {
    pub(super) fn new(bus: Bus) -> Self {
        Self {
            bus,
            conn: Mutex::new(None),
        }
    }

    /// The kept connection, or a new one.
    pub(super) async fn get(&self) -> Result<Connection, Error> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let builder = match self.bus {
            Bus::Session => zbus::conn::Builder::session()?,
            Bus::System => zbus::conn::Builder::address(SYSTEM_BUS)?,
        };
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, builder.build())
            .await
            .map_err(|_| Error::Failure("timed out connecting to the bus".into()))??;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Drops the kept connection if it is still `broken`, so the next prompt connects anew.
    pub(super) async fn forget(&self, broken: &Connection) {
        let mut slot = self.conn.lock().await;
        if slot
            .as_ref()
            .is_some_and(|c| c.unique_name() == broken.unique_name())
        {
            *slot = None;
        }
    }

    /// Calls `method` with a connection from [`get`](Self::get). A kept connection that fails
    /// with anything but a D-Bus error reply is forgotten and the call made once more on a new
    /// one, so an agent outlives a restarted bus.
    pub(super) async fn call<B>(&self, method: &Method<'_>, body: &B) -> Result<Reply, Error>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let mut retried = false;
        loop {
            let conn = self.get().await?;
            match method.call(&conn, body).await {
                Err(e) if !retried && !is_reply(&e) => {
                    self.forget(&conn).await;
                    retried = true;
                }
                Ok(msg) => return Ok(Reply { conn, msg }),
                Err(e) => {
                    self.forget_if_broken(&conn, &e).await;
                    return Err(e);
                }
            }
        }
    }

    /// Forgets `conn` when `e` says it broke (anything but an error reply).
    pub(super) async fn forget_if_broken(&self, conn: &Connection, e: &Error) {
        if !is_reply(e) {
            self.forget(conn).await;
        }
    }
}

/// A method to call: destination, object, interface and member.
#[derive(Debug, Clone, Copy)]
pub(super) struct Method<'a> {
    pub dest: &'a str,
    pub path: &'a str,
    pub iface: &'a str,
    pub member: &'a str,
}

impl Method<'_> {
    pub(super) async fn call<B>(&self, conn: &Connection, body: &B) -> Result<Message, Error>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        conn.call_method(
            Some(self.dest),
            self.path,
            Some(self.iface),
            self.member,
            body,
        )
        .await
    }
}

/// A method's reply and the connection it came on.
#[derive(Debug)]
pub(super) struct Reply {
    pub conn: Connection,
    pub msg: Message,
}

impl Reply {
    /// The unique name that answered: the one connection that owned the well-known name when
    /// the call was routed. Signals are believed only from it.
    pub(super) fn sender(&self) -> Option<OwnedUniqueName> {
        self.msg.header().sender().map(|s| s.to_owned().into())
    }
}

/// Whether `e` is the peer's (or the bus's) error reply, rather than a broken connection.
pub(super) fn is_reply(e: &Error) -> bool {
    matches!(e, Error::MethodError(..) | Error::FDO(_))
}

/// The D-Bus error name of an error reply, e.g. `org.freedesktop.DBus.Error.ServiceUnknown`.
pub(super) fn error_name(e: &Error) -> Option<String> {
    match e {
        Error::MethodError(name, _, _) => Some(name.as_str().to_owned()),
        Error::FDO(e) => Some(zbus::DBusError::name(&**e).as_str().to_owned()),
        _ => None,
    }
}

/// `e` for the log: D-Bus errors carry text that a peer chose, so it is escaped.
pub(super) fn describe(e: &Error) -> String {
    super::display_safe(&e.to_string())
}

/// Whether `msg` came from `sender`.
pub(super) fn sent_by(msg: &Message, sender: &UniqueName<'_>) -> bool {
    msg.header().sender() == Some(sender)
}

/// A stream of the signals that `sender` emits on `path` with `iface`; `sender` is matched by
/// the bus and checked again here, since a unicast signal reaches us whatever the match rule.
pub(super) async fn signals(
    conn: &Connection,
    sender: &UniqueName<'_>,
    path: &str,
    iface: &str,
) -> Result<zbus::MessageStream, Error> {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(sender.clone())?
        .path(path)?
        .interface(iface)?
        .build();
    zbus::MessageStream::for_match_rule(rule, conn, Some(64)).await
}

/// A stream that yields once `name` has left the bus (its connection closed).
pub(super) async fn vanished(
    conn: &Connection,
    name: &UniqueName<'_>,
) -> Result<zbus::MessageStream, Error> {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.DBus")?
        .path("/org/freedesktop/DBus")?
        .interface("org.freedesktop.DBus")?
        .member("NameOwnerChanged")?
        .add_arg(name.as_str())?
        .build();
    zbus::MessageStream::for_match_rule(rule, conn, Some(8)).await
}

/// The member of a signal, for dispatch.
pub(super) fn member(msg: &Message) -> Option<String> {
    msg.header().member().map(|m| m.as_str().to_owned())
}
