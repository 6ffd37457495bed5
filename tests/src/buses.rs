//! Private D-Bus worlds for the approver tests, built from the real daemons.
//!
//! - [`SessionBus`]: a `dbus-daemon` with its own socket, standing in for a graphical
//!   session's bus; [`NotificationServer`] is python3-dbusmock's `notification_daemon` template
//!   on it, which records every call and emits the signals a test asks for.
//! - [`PrivateSystem`]: a mount namespace (`unshare --mount`) in which `/run/dbus` is a tmpfs,
//!   so a private system bus listens on the real path `/run/dbus/system_bus_socket`, as nod's
//!   approvers and polkit's setuid helper insist. The real `polkitd` and `fprintd` run on it,
//!   with polkit actions and rules of the test's own (bind-mounted over the system's, inside
//!   the namespace only); the host's buses and files are not touched.
//!
//! Every daemon is killed when its handle drops; the namespace goes with its last process.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zbus::zvariant::{OwnedValue, Value};

use crate::{Scratch, TestUser, require, run, run_ok, wait_for};

/// The system python, where Debian's python3-dbusmock is (not a pyenv shim on PATH).
pub const PYTHON: &str = "/usr/bin/python3";

/// How long a daemon may take to appear on its bus.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Checks for root and the tools of the session-bus tests; fails under CI=true (see
/// [`require`]).
pub fn require_session_tools() -> bool {
    if !require(&["dbus-daemon", "setpriv"]) {
        return false;
    }
    require_python_module("dbusmock", "python3-dbusmock")
}

/// Checks for root, the tools of the system-bus tests, `extra` on PATH and the daemons in
/// `files` (polkitd and fprintd are not on PATH).
pub fn require_system_tools(extra: &[&str], files: &[&str]) -> bool {
    let mut tools = vec!["dbus-daemon", "dbus-send", "unshare", "nsenter", "setpriv"];
    tools.extend_from_slice(extra);
    if !require(&tools) || !require_session_tools() {
        return false;
    }
    let missing: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !Path::new(f).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "approver test needs {} (see .ci/run for the packages)",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: refusing to skip)");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// The test user `name`, created (and its password set) once per test binary: test threads
/// running `chpasswd` at once would fight over the lock on /etc/shadow.
pub fn test_user(name: &str, password: &str) -> TestUser {
    static USERS: std::sync::Mutex<Vec<TestUser>> = std::sync::Mutex::new(Vec::new());
    let mut users = USERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(u) = users.iter().find(|u| u.name == name) {
        return u.clone();
    }
    let user = TestUser::ensure(name, password);
    users.push(user.clone());
    user
}

fn require_python_module(module: &str, package: &str) -> bool {
    let ok = Path::new(PYTHON).exists()
        && Command::new(PYTHON)
            .args(["-c", &format!("import {module}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let msg = format!("approver test needs {PYTHON} with {module} (apt-get install {package})");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: refusing to skip)");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// A process killed (with its process group) when dropped.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Child,
}

impl Daemon {
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics if it has already exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early: {status}", self.name);
        }
    }

    /// Waits for it to exit (at most `timeout`, then kills it and panics).
    pub fn wait(mut self, timeout: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A process's output, captured to a file in a scratch directory.
pub fn log_file(dir: &Path, name: &str) -> (PathBuf, Stdio, Stdio) {
    let path = dir.join(name);
    let file = fs::File::create(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    let err = file.try_clone().unwrap();
    (path, Stdio::from(file), Stdio::from(err))
}

/// A bus config: `type` with its socket at `socket`, anyone may connect and talk to anyone.
/// No service directories: nothing is started by activation behind the test's back.
fn bus_config(kind: &str, socket: &Path, policy: &str) -> String {
    format!(
        "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n \
         \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig>\n  \
         <type>{kind}</type>\n  <listen>unix:path={}</listen>\n  <auth>EXTERNAL</auth>\n{policy}\
         </busconfig>\n",
        socket.display()
    )
}

/// The session bus of a test: `dbus-daemon` on `<dir>/session/bus`, run by `owner` (root
/// when `None`).
#[derive(Debug)]
pub struct SessionBus {
    _daemon: Daemon,
    pub socket: PathBuf,
}

impl SessionBus {
    pub fn start(dir: &Path, owner: Option<&TestUser>) -> Self {
        let home = dir.join("session");
        fs::create_dir_all(&home).unwrap();
        if let Some(user) = owner {
            chown(&home, Some(user.uid), Some(user.gid)).unwrap();
        }
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
        Self::start_at(&home, &home.join("bus"), owner)
    }

    /// A bus listening on `socket` (e.g. where the systemd user manager puts one,
    /// `$XDG_RUNTIME_DIR/bus`), its config and log in `home`.
    pub fn start_at(home: &Path, socket: &Path, owner: Option<&TestUser>) -> Self {
        let _ = fs::remove_file(socket);
        let config = home.join("session.conf");
        let policy = "  <policy context=\"default\">\n    <allow user=\"*\"/>\n    \
                      <allow send_destination=\"*\" eavesdrop=\"true\"/>\n    \
                      <allow eavesdrop=\"true\"/>\n    <allow own=\"*\"/>\n  </policy>\n";
        fs::write(&config, bus_config("session", socket, policy)).unwrap();
        let (_, out, err) = log_file(home, "dbus-daemon.log");
        let mut cmd = as_user(owner, "dbus-daemon");
        cmd.arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile"])
            .stdout(out)
            .stderr(err);
        let daemon = Daemon::spawn("session dbus-daemon", &mut cmd);
        wait_for_listener("the session bus", socket);
        Self {
            _daemon: daemon,
            socket: socket.to_owned(),
        }
    }

    pub fn address(&self) -> String {
        format!("unix:path={}", self.socket.display())
    }
}

/// Waits until something accepts connections on `socket`: a socket file may be bound a
/// moment before its daemon listens.
fn wait_for_listener(what: &str, socket: &Path) {
    wait_for(what, START_TIMEOUT, || UnixStream::connect(socket).is_ok());
}

/// `prog` run as `user` (no supplementary groups), or as root.
fn as_user(user: Option<&TestUser>, prog: &str) -> Command {
    match user {
        None => Command::new(prog),
        Some(user) => {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={}", user.uid))
                .arg(format!("--regid={}", user.gid))
                .args(["--clear-groups", "--"])
                .arg(prog);
            cmd
        }
    }
}

/// One `Notify` call the notification server received.
#[derive(Debug, Clone)]
pub struct NotifyCall {
    pub app_name: String,
    pub replaces_id: u32,
    pub icon: String,
    pub summary: String,
    pub body: String,
    pub actions: Vec<String>,
    pub urgency: Option<u8>,
    pub timeout_ms: i32,
}

/// python3-dbusmock's `notification_daemon` on a [`SessionBus`]: a spec-conformant
/// notification server that hands out ids 1, 2, … and records every call.
#[derive(Debug)]
pub struct NotificationServer {
    _daemon: Daemon,
    rt: tokio::runtime::Runtime,
    conn: zbus::Connection,
}

const NOTIFICATIONS: &str = "org.freedesktop.Notifications";
const NOTIFICATIONS_PATH: &str = "/org/freedesktop/Notifications";
const MOCK_IFACE: &str = "org.freedesktop.DBus.Mock";

impl NotificationServer {
    /// Starts the server with `capabilities` (space-separated, e.g. `"body actions"`).
    pub fn start(bus: &SessionBus, capabilities: &str, owner: Option<&TestUser>) -> Self {
        let dir = bus.socket.parent().unwrap();
        let (_, out, err) = log_file(dir, "dbusmock.log");
        let params = format!("{{\"capabilities\": \"{capabilities}\"}}");
        let mut cmd = as_user(owner, PYTHON);
        cmd.args(["-m", "dbusmock", "--template", "notification_daemon", "-p"])
            .arg(params)
            .env("DBUS_SESSION_BUS_ADDRESS", bus.address())
            .stdout(out)
            .stderr(err);
        let daemon = Daemon::spawn("dbusmock notification_daemon", &mut cmd);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = rt
            .block_on(
                zbus::conn::Builder::address(bus.address().as_str())
                    .unwrap()
                    .build(),
            )
            .expect("connect to the test session bus");
        let server = Self {
            _daemon: daemon,
            rt,
            conn,
        };
        let end = Instant::now() + START_TIMEOUT;
        while !server.name_has_owner(NOTIFICATIONS) {
            assert!(
                Instant::now() < end,
                "the notification server did not appear on the bus (see {}/dbusmock.log)",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn call<B, R>(&self, dest: &str, path: &str, iface: &str, member: &str, body: &B) -> R
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
        R: for<'d> serde::Deserialize<'d> + zbus::zvariant::Type,
    {
        self.rt.block_on(async {
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                self.conn
                    .call_method(Some(dest), path, Some(iface), member, body),
            )
            .await
            .unwrap_or_else(|_| panic!("{member} timed out"))
            .unwrap_or_else(|e| panic!("{member}: {e}"));
            reply.body().deserialize::<R>().unwrap()
        })
    }

    fn name_has_owner(&self, name: &str) -> bool {
        let (owned,): (bool,) = self.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            &(name,),
        );
        owned
    }

    /// Every call of `method` so far, with its arguments.
    pub fn calls(&self, method: &str) -> Vec<Vec<OwnedValue>> {
        let (calls,): (Vec<(u64, String, Vec<OwnedValue>)>,) = self.call(
            NOTIFICATIONS,
            NOTIFICATIONS_PATH,
            MOCK_IFACE,
            "GetCalls",
            &(),
        );
        calls
            .into_iter()
            .filter(|(_, m, _)| m == method)
            .map(|(_, _, args)| args)
            .collect()
    }

    /// Every `Notify` call so far.
    pub fn notify_calls(&self) -> Vec<NotifyCall> {
        self.calls("Notify")
            .into_iter()
            .map(|args| {
                assert_eq!(args.len(), 8, "Notify takes 8 arguments: {args:?}");
                let s = |i: usize| String::try_from(args[i].try_clone().unwrap()).unwrap();
                let actions: Vec<String> = args[5].try_clone().unwrap().try_into().unwrap();
                let hints: HashMap<String, OwnedValue> =
                    args[6].try_clone().unwrap().try_into().unwrap();
                NotifyCall {
                    app_name: s(0),
                    replaces_id: u32::try_from(args[1].try_clone().unwrap()).unwrap(),
                    icon: s(2),
                    summary: s(3),
                    body: s(4),
                    actions,
                    urgency: hints
                        .get("urgency")
                        .map(|v| u8::try_from(v.try_clone().unwrap()).unwrap()),
                    timeout_ms: i32::try_from(args[7].try_clone().unwrap()).unwrap(),
                }
            })
            .collect()
    }

    /// Waits until `count` notifications were shown; returns them all.
    pub fn wait_for_notify(&self, count: usize) -> Vec<NotifyCall> {
        let end = Instant::now() + START_TIMEOUT;
        loop {
            let calls = self.notify_calls();
            if calls.len() >= count {
                return calls;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for notification {count} (have {})",
                calls.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The ids that `CloseNotification` was called with.
    pub fn closed_ids(&self) -> Vec<u32> {
        self.calls("CloseNotification")
            .into_iter()
            .map(|args| {
                let v = args[0].try_clone().unwrap();
                u32::try_from(v.try_clone().unwrap())
                    .or_else(|_| i32::try_from(v).map(|i| i as u32))
                    .unwrap()
            })
            .collect()
    }

    /// Waits until `CloseNotification(id)` was called.
    pub fn wait_for_close(&self, id: u32) {
        let end = Instant::now() + START_TIMEOUT;
        while !self.closed_ids().contains(&id) {
            assert!(Instant::now() < end, "notification {id} was never closed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn emit(&self, signal: &str, signature: &str, args: Vec<Value<'_>>) {
        let () = self.call(
            NOTIFICATIONS,
            NOTIFICATIONS_PATH,
            MOCK_IFACE,
            "EmitSignal",
            &(NOTIFICATIONS, signal, signature, args),
        );
    }

    /// From now on every notification is answered at once: the server's `Notify` hands out
    /// the id as before and emits `ActionInvoked(id, "approve")` itself (from the server's own
    /// connection, as a click would), for benchmarks of the whole approval path.
    pub fn approve_every_notification(&self) {
        let code = "if args[1]:\n    ret = args[1]\nelse:\n    ret = self.next_id\n    \
                    self.next_id += 1\n\
                    self.EmitSignal('', 'ActionInvoked', 'us', [ret, 'approve'])\n";
        let () = self.call(
            NOTIFICATIONS,
            NOTIFICATIONS_PATH,
            MOCK_IFACE,
            "AddMethod",
            &(NOTIFICATIONS, "Notify", "susssasa{sv}i", "u", code),
        );
    }

    /// The server says the person clicked `key` on notification `id`.
    pub fn click(&self, id: u32, key: &str) {
        self.emit(
            "ActionInvoked",
            "us",
            vec![Value::U32(id), Value::from(key)],
        );
    }

    /// The server says notification `id` was closed (`reason` 1 expired, 2 dismissed).
    pub fn close(&self, id: u32, reason: u32) {
        self.emit(
            "NotificationClosed",
            "uu",
            vec![Value::U32(id), Value::U32(reason)],
        );
    }

    /// Another client of the bus (not the server) broadcasts `ActionInvoked(id, key)`.
    pub fn forge_click(&self, id: u32, key: &str) {
        self.rt
            .block_on(self.conn.emit_signal(
                None::<&str>,
                NOTIFICATIONS_PATH,
                NOTIFICATIONS,
                "ActionInvoked",
                &(id, key),
            ))
            .unwrap();
    }

    /// Whether process `pid` has a connection to this bus.
    pub fn has_connection_from(&self, pid: u32) -> bool {
        let (names,): (Vec<String>,) = self.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "ListNames",
            &(),
        );
        names.iter().filter(|n| n.starts_with(':')).any(|name| {
            let reply = self.rt.block_on(self.conn.call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "GetConnectionUnixProcessID",
                &(name.as_str(),),
            ));
            // A name that left between the two calls has no pid.
            reply
                .ok()
                .and_then(|r| r.body().deserialize::<(u32,)>().ok())
                .is_some_and(|(p,)| p == pid)
        })
    }
}

/// A mount namespace with a private system bus on `/run/dbus/system_bus_socket`, polkit
/// actions that include nod's (`packaging/polkit/org.nod.policy`), and the polkit rules that a
/// test gives.
#[derive(Debug)]
pub struct PrivateSystem {
    pub scratch: Scratch,
    daemons: Vec<Daemon>,
    holder: Daemon,
}

/// nod's polkit actions, as the packages install them.
pub fn nod_policy_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/polkit/org.nod.policy")
}

impl PrivateSystem {
    pub fn new(tag: &str) -> Self {
        Self::with_policy(tag, true)
    }

    /// With `nod_policy` false, polkit does not know nod's actions (the package is missing).
    pub fn with_policy(tag: &str, nod_policy: bool) -> Self {
        let scratch = Scratch::new(tag);
        let holder = Daemon::spawn(
            "namespace holder",
            Command::new("unshare").args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sleep",
                "900",
            ]),
        );
        let own_ns = fs::read_link("/proc/self/ns/mnt").unwrap();
        let ns = format!("/proc/{}/ns/mnt", holder.pid());
        wait_for("the private mount namespace", START_TIMEOUT, || {
            fs::read_link(&ns).is_ok_and(|l| l != own_ns)
        });
        let actions = scratch.dir("polkit-actions", 0o755);
        for entry in fs::read_dir("/usr/share/polkit-1/actions")
            .into_iter()
            .flatten()
        {
            let entry = entry.unwrap();
            // An installed nod package's copy is not the one under test.
            if entry.file_name() != "org.nod.policy" {
                fs::copy(entry.path(), actions.join(entry.file_name())).unwrap();
            }
        }
        if nod_policy {
            fs::copy(nod_policy_file(), actions.join("org.nod.policy")).unwrap();
        }
        let sys = Self {
            scratch,
            daemons: Vec::new(),
            holder,
        };
        let script = format!(
            "set -e\n\
             mkdir -p /run/dbus /etc/polkit-1/rules.d /usr/share/polkit-1/actions\n\
             mount -t tmpfs -o mode=0755 nod-e2e-dbus /run/dbus\n\
             mount -t tmpfs -o mode=0755 nod-e2e-rules /etc/polkit-1/rules.d\n\
             mount --bind {} /usr/share/polkit-1/actions\n",
            actions.display()
        );
        run_ok(sys.in_ns("sh").args(["-c", &script]));
        sys
    }

    /// `prog`, run as root inside the namespace.
    pub fn in_ns(&self, prog: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.pid()))
            .arg("--")
            .arg(prog);
        cmd
    }

    /// `prog`, run as `user` inside the namespace (with the same pid: nothing forks).
    pub fn as_user(&self, user: &TestUser, prog: &str) -> Command {
        let mut cmd = self.in_ns("setpriv");
        cmd.arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .args(["--clear-groups", "--"])
            .arg(prog)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
        cmd
    }

    /// A path as seen inside the namespace.
    pub fn path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{p}", self.holder.pid()))
    }

    /// Starts the system bus (the system bus's own policy files apply, so polkitd and
    /// fprintd own their names as on a real system); waits for its socket.
    pub fn start_bus(&mut self) {
        let config = self.scratch.join("system.conf");
        let policy = "  <policy context=\"default\">\n    <allow user=\"*\"/>\n    \
            <deny own=\"*\"/>\n    <deny send_type=\"method_call\"/>\n    \
            <allow send_type=\"signal\"/>\n    \
            <allow send_requested_reply=\"true\" send_type=\"method_return\"/>\n    \
            <allow send_requested_reply=\"true\" send_type=\"error\"/>\n    \
            <allow receive_type=\"method_call\"/>\n    <allow receive_type=\"method_return\"/>\n    \
            <allow receive_type=\"error\"/>\n    <allow receive_type=\"signal\"/>\n    \
            <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus\"/>\n    \
            <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus.Introspectable\"/>\n  \
            </policy>\n  <includedir>/usr/share/dbus-1/system.d</includedir>\n  \
            <includedir>/etc/dbus-1/system.d</includedir>\n";
        fs::write(
            &config,
            bus_config("system", Path::new("/run/dbus/system_bus_socket"), policy),
        )
        .unwrap();
        let (_, out, err) = log_file(&self.scratch.path, "system-dbus.log");
        let mut cmd = self.in_ns("dbus-daemon");
        cmd.arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile"])
            .stdout(out)
            .stderr(err);
        self.daemons
            .push(Daemon::spawn("system dbus-daemon", &mut cmd));
        wait_for_listener(
            "the private system bus",
            &self.path("/run/dbus/system_bus_socket"),
        );
    }

    /// Starts the real polkitd with `rules` as `/etc/polkit-1/rules.d/50-nod-e2e.rules`.
    pub fn start_polkitd(&mut self, rules: &str) {
        fs::write(self.path("/etc/polkit-1/rules.d/50-nod-e2e.rules"), rules).unwrap();
        let (_, out, err) = log_file(&self.scratch.path, "polkitd.log");
        let mut cmd = self.in_ns("/usr/lib/polkit-1/polkitd");
        cmd.stdout(out).stderr(err);
        self.daemons.push(Daemon::spawn("polkitd", &mut cmd));
        self.wait_for_name("org.freedesktop.PolicyKit1");
    }

    /// Starts the real fprintd; with `reader`, libfprint's `virtual_device` driver serves a
    /// reader driven through [`Self::fingerprint_socket`], else fprintd finds no reader.
    pub fn start_fprintd(&mut self, reader: bool) {
        let state = self.scratch.dir("fprint-state", 0o700);
        let (_, out, err) = log_file(&self.scratch.path, "fprintd.log");
        let mut cmd = self.in_ns("/usr/libexec/fprintd");
        cmd.arg("--no-timeout")
            .env("STATE_DIRECTORY", &state)
            .env("FP_DRIVERS_WHITELIST", "virtual_device")
            .env("FP_DRIVERS_ALLOWLIST", "virtual_device")
            .stdout(out)
            .stderr(err);
        if reader {
            cmd.env("FP_VIRTUAL_DEVICE", self.fingerprint_socket());
        }
        self.daemons.push(Daemon::spawn("fprintd", &mut cmd));
        self.wait_for_name("net.reactivated.Fprint");
    }

    /// The virtual reader's control socket (it exists while the device is open).
    pub fn fingerprint_socket(&self) -> PathBuf {
        self.scratch.join("fpdev.sock")
    }

    /// Puts print `id` on the virtual reader (one `SCAN`, its own connection).
    pub fn scan(&self, id: &str) {
        let socket = self.fingerprint_socket();
        // The socket appears when fprintd opens the device, and may be bound a moment before
        // it listens.
        let mut conn = None;
        wait_for("the virtual reader's socket", START_TIMEOUT, || {
            conn = UnixStream::connect(&socket).ok();
            conn.is_some()
        });
        let mut s = conn.unwrap();
        s.write_all(format!("SCAN {id}\n").as_bytes()).unwrap();
    }

    /// Enrolls print `id` as `user`'s right index finger with the real `fprintd-enroll`.
    pub fn enroll(&self, user: &TestUser, id: &str) {
        let (log, out, err) = log_file(&self.scratch.path, "fprintd-enroll.log");
        let mut cmd = self.in_ns("fprintd-enroll");
        cmd.args(["-f", "right-index-finger", &user.name])
            .stdout(out)
            .stderr(err);
        let enroll = Daemon::spawn("fprintd-enroll", &mut cmd);
        // The virtual device has 5 enroll stages; a scan left over would answer the next verify.
        for _ in 0..5 {
            self.scan(id);
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = enroll.wait(Duration::from_secs(20));
        let text = fs::read_to_string(&log).unwrap_or_default();
        assert!(
            status.success() && text.contains("enroll-completed"),
            "fprintd-enroll failed ({status}):\n{text}"
        );
    }

    /// Waits until `name` has an owner on the private system bus.
    pub fn wait_for_name(&mut self, name: &str) {
        let end = Instant::now() + START_TIMEOUT;
        loop {
            let out = run(self.in_ns("dbus-send").args([
                "--system",
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.NameHasOwner",
                &format!("string:{name}"),
            ]));
            if String::from_utf8_lossy(&out.stdout).contains("boolean true") {
                return;
            }
            for d in &mut self.daemons {
                d.assert_running();
            }
            assert!(
                Instant::now() < end,
                "{name} did not appear on the private system bus (logs in {})",
                self.scratch.path.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateSystem {
    fn drop(&mut self) {
        // Clients first, the bus last, then the namespace.
        while let Some(d) = self.daemons.pop() {
            drop(d);
        }
    }
}

/// The text of a log file a daemon wrote.
pub fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// A running `nod-approve-probe` (see `src/bin/nod-approve-probe.rs`), its output in files.
#[derive(Debug)]
pub struct Probe {
    daemon: Daemon,
    out: PathBuf,
    err: PathBuf,
}

/// What a probe printed.
#[derive(Debug)]
pub struct ProbeRun {
    /// One word per asking step: `approved`, `denied`, `cancelled`, `unavailable`, `failed`,
    /// `dropped`.
    pub outcomes: Vec<String>,
    /// The approvers' log lines.
    pub log: String,
}

impl Probe {
    /// Puts the probe binary `built` (the test's `CARGO_BIN_EXE_nod-approve-probe`) into
    /// `scratch`, so that a test user can run it even when the build directory is not
    /// reachable for them: a hard link (no copy of a debug binary per test), else a copy.
    pub fn install(scratch: &Scratch, built: &str) -> PathBuf {
        let dst = scratch.join("nod-approve-probe");
        if fs::hard_link(built, &dst).is_err() {
            // Copied by a child: a write descriptor of ours could leak into a child that
            // another test thread forked but has not exec'd yet, and running the copy would
            // then fail with ETXTBSY (in setpriv's exec, where no retry can help).
            run_ok(
                Command::new("install")
                    .args(["-m", "0755"])
                    .arg(built)
                    .arg(&dst),
            );
        }
        dst
    }

    /// Spawns `cmd` (a probe command line), its output into `<dir>/<tag>.out` and `.err`.
    pub fn spawn(cmd: &mut Command, dir: &Path, tag: &str) -> Self {
        let (out, stdout, _) = log_file(dir, &format!("{tag}.out"));
        let (err, stderr, _) = log_file(dir, &format!("{tag}.err"));
        cmd.stdout(stdout).stderr(stderr);
        // ETXTBSY: the binary was just copied, and another test thread may have forked.
        let mut tries = 0;
        let daemon = loop {
            use std::os::unix::process::CommandExt;
            match cmd.process_group(0).stdin(Stdio::null()).spawn() {
                Ok(child) => {
                    break Daemon {
                        name: format!("probe {tag}"),
                        child,
                    };
                }
                Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot run the probe: {e}"),
            }
        };
        Self { daemon, out, err }
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Waits for the probe to finish (at most `timeout`) and returns what it printed.
    pub fn finish(self, timeout: Duration) -> ProbeRun {
        let out = self.out.clone();
        let err = self.err.clone();
        let status = self.daemon.wait(timeout);
        let log = read_log(&err);
        assert!(status.success(), "the probe failed ({status}):\n{log}");
        let outcomes = read_log(&out)
            .lines()
            .filter_map(|l| l.strip_prefix("outcome: "))
            .map(str::to_owned)
            .collect();
        ProbeRun { outcomes, log }
    }
}
