//! D-Bus for the `desktop`, `polkit` and `fprintd` approvers: one connection per approver,
//! made at its first prompt (an agent that never prompts never touches D-Bus) and made again
//! when it breaks.
//!
//! The system bus is always the real socket, never `$DBUS_SYSTEM_BUS_ADDRESS`: a process of
//! the same user could point that variable at a bus of its own, where its own "polkit" or
//! "fprintd" says yes. The session bus is whatever the session says it is; everything on it
//! runs as the user anyway. Without `$DBUS_SESSION_BUS_ADDRESS` it is the socket that the
//! systemd user manager (through `dbus-user-session`) keeps at `$XDG_RUNTIME_DIR/bus`, where
//! every user unit finds it even when the desktop did not import the variable.

use std::ffi::OsString;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::Mutex;
use zbus::message::Message;
use zbus::names::{OwnedUniqueName, UniqueName};
use zbus::{Connection, Error};

/// The system bus socket, as every distribution puts it.
pub(super) const SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";

/// How long connecting (and the bus's `Hello`) may take before the bus counts as absent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the session bus is, and how that was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionAddress {
    /// `$DBUS_SESSION_BUS_ADDRESS`, as the session set it.
    Variable(String),
    /// The user manager's socket, `$XDG_RUNTIME_DIR/bus` (or `/run/user/<uid>/bus`): used when
    /// the variable is unset; it may not exist.
    UserSocket(PathBuf),
}

impl SessionAddress {
    /// From the environment: a non-empty `$DBUS_SESSION_BUS_ADDRESS`, else the socket in the
    /// runtime directory (`$XDG_RUNTIME_DIR` when it is an absolute path, else
    /// `/run/user/<uid>` as the agent's own paths fall back to).
    pub fn from_env() -> Self {
        Self::from_vars(
            std::env::var_os("DBUS_SESSION_BUS_ADDRESS"),
            std::env::var_os("XDG_RUNTIME_DIR"),
            nix::unistd::geteuid().as_raw(),
        )
    }

    fn from_vars(address: Option<OsString>, runtime: Option<OsString>, uid: u32) -> Self {
        if let Some(address) = address.filter(|a| !a.is_empty()) {
            return Self::Variable(address.to_string_lossy().into_owned());
        }
        let runtime = runtime
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| PathBuf::from(format!("/run/user/{uid}")));
        Self::UserSocket(runtime.join("bus"))
    }

    /// Whether a bus may be there, without connecting: the variable is set, or the user
    /// manager's socket exists.
    pub fn reachable(&self) -> bool {
        match self {
            Self::Variable(_) => true,
            Self::UserSocket(path) => {
                std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
            }
        }
    }

    /// The D-Bus address to connect to.
    pub fn address(&self) -> String {
        match self {
            Self::Variable(a) => a.clone(),
            Self::UserSocket(path) => format!("unix:path={}", path.display()),
        }
    }
}

impl std::fmt::Display for SessionAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Variable(a) => write!(f, "{} (DBUS_SESSION_BUS_ADDRESS)", super::display_safe(a)),
            Self::UserSocket(path) => {
                write!(
                    f,
                    "unix:path={}",
                    super::display_safe(&path.display().to_string())
                )
            }
        }
    }
}

/// Which bus an approver talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bus {
    /// [`SessionAddress::from_env`], looked up at each connection.
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
            Bus::Session => {
                zbus::conn::Builder::address(SessionAddress::from_env().address().as_str())?
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_bus_is_the_variable_else_the_user_managers_socket() {
        let var = |s: &str| Some(OsString::from(s));
        assert_eq!(
            SessionAddress::from_vars(var("unix:path=/tmp/b"), var("/run/user/7"), 7),
            SessionAddress::Variable("unix:path=/tmp/b".into())
        );
        // Unset or empty: the socket that the user manager gives every unit.
        for unset in [None, var("")] {
            let found = SessionAddress::from_vars(unset, var("/run/user/7"), 7);
            assert_eq!(found, SessionAddress::UserSocket("/run/user/7/bus".into()));
            assert_eq!(found.address(), "unix:path=/run/user/7/bus");
        }
        // A runtime directory that is unset or not absolute is not believed.
        for runtime in [None, var("relative/dir"), var("")] {
            assert_eq!(
                SessionAddress::from_vars(None, runtime, 1000),
                SessionAddress::UserSocket("/run/user/1000/bus".into())
            );
        }
    }

    #[test]
    fn only_a_socket_at_the_user_managers_path_counts_as_a_bus() {
        let dir = std::env::temp_dir().join(format!("nod-bus-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let at = |name: &str| SessionAddress::UserSocket(dir.join(name));
        assert!(!at("bus").reachable(), "nothing there");
        std::fs::write(dir.join("file"), "").unwrap();
        assert!(!at("file").reachable(), "a regular file is no bus");
        let _listener = std::os::unix::net::UnixListener::bind(dir.join("bus")).unwrap();
        assert!(at("bus").reachable());
        assert!(SessionAddress::Variable("unix:path=/nowhere".into()).reachable());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
