//! `nod ssh-agent`: a drop-in for OpenSSH's `ssh-agent(1)`, so `eval "$(nod ssh-agent -s)"`
//! works wherever `eval "$(ssh-agent -s)"` did.
//!
//! It takes OpenSSH 10's flags (`-c -s -D -d -k -T -u -U -V -a -E -O -P -t`, and a command)
//! with their meanings, and prints the same environment lines. The socket is where
//! ssh-agent 10 puts it: `-a PATH`; else, with `-T`, `$TMPDIR/ssh-XXXXXXXXXXXX/agent.<pid>`;
//! else `~/.ssh/agent/s.<host hash>.agent.<random>`, after removing the stale sockets there
//! (unless `-U`; `-u` only cleans up). Names and the host hash follow OpenSSH's, so
//! `ssh-agent -u` and `nod ssh-agent -u` clean up after each other.
//!
//! Without `-D`/`-d` it starts itself again in the background (a new session via `setsid`,
//! stdio on `/dev/null`), waits until the socket answers, prints the lines with the background
//! process's pid and returns. The background process serves only the SSH agent socket (keys
//! added with `ssh-add`, the keystore's persistent keys with their policies and session
//! certificates, as `nod agent` does; the approver from `agent.toml` or `--approver…`).
//!
//! Signals, as ssh-agent: SIGTERM (`-k`) and SIGHUP remove the socket (and the directory made
//! for it) and exit with status 2; SIGINT does the same in `-d`/`-D` mode and is ignored in
//! the background; SIGUSR1 drops every added key (see
//! [`SshAgentService::drop_added_keys`]) and the agent goes on serving.
//!
//! With a command (`nod ssh-agent bash`, `exec nod ssh-agent startx`), the background agent is
//! started the same way, and the process then becomes the command (`exec`) with
//! `SSH_AUTH_SOCK` and `SSH_AGENT_PID` set, so it keeps the pid its parent knows. The agent
//! watches that pid through a pidfd and stops as soon as the command ends, as ssh-agent does
//! (which polls its parent every ten seconds).
//!
//! nod loads no PKCS#11 or FIDO provider libraries: `-P` is accepted and logged, and a request
//! that needs a provider (`ssh-add -s`, an `sk-*` key) is refused with a log line. The `-O`
//! options OpenSSH knows are accepted; all three are about such providers or security keys,
//! so they change nothing here, and the log says so. Not supported: socket activation
//! (`LISTEN_FDS`), refused with an error rather than ignored.

use std::ffi::OsString;
use std::fs::{self, DirBuilder};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::{Mode, umask};
use nix::unistd::Pid;
use sha2::{Digest as _, Sha512};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};

use super::CoreError;
use super::agent::raise_nofile_limit;
use crate::approvers::ApproverChoice;
use crate::config::{AgentConfig, ConfigError};
use crate::log::event;
use crate::paths::{Paths, PathsError};
use crate::ssh::SshAgentService;

/// The hidden flag that marks the background process.
pub const DAEMON_CHILD_FLAG: &str = "--daemon-child";
/// The hidden flag naming the directory the background process removes on exit.
pub const REMOVE_DIR_FLAG: &str = "--remove-dir";
/// The hidden flag naming the process (the command) whose end stops the background agent.
pub const COMMAND_PID_FLAG: &str = "--command-pid";

/// How long the foreground waits for the background agent's socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The exit status after SIGTERM, SIGHUP or (in the foreground) SIGINT, as ssh-agent's
/// `cleanup_exit(2)`.
pub const SIGNALLED_EXIT: u8 = 2;

/// ssh-agent's `usage()`, with nod's own options on the last line.
pub const USAGE: &str = "\
usage: nod ssh-agent [-c | -s] [-DdTU] [-a bind_address] [-E fingerprint_hash]
                     [-O option] [-P allowed_providers] [-t life]
       nod ssh-agent [-TU] [-a bind_address] [-E fingerprint_hash] [-O option]
                     [-P allowed_providers] [-t life] command [arg ...]
       nod ssh-agent [-c | -s] -k
       nod ssh-agent -u
       nod ssh-agent -V
       nod ssh-agent --help (nod's own options: --approver, --approver-command)
";

/// The characters of OpenSSH's random socket names and host hash (`presentation_chars`).
const PRESENTATION: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// `~/.ssh/agent`, OpenSSH's `_PATH_SSH_AGENT_SOCKET_DIR`.
const AGENT_SOCKET_DIR: &str = ".ssh/agent";

/// Stale sockets younger than this are left alone (another agent may be starting).
const STALE_AGE: Duration = Duration::from_secs(3600);

/// `-O` options, as OpenSSH's ssh-agent knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentOptions {
    /// `allow-remote-pkcs11`.
    pub allow_remote_pkcs11: bool,
    /// `no-restrict-websafe`.
    pub no_restrict_websafe: bool,
    /// `websafe-allow=PATTERNS`.
    pub websafe_allow: Option<String>,
}

impl AgentOptions {
    /// Parses each `-O` value; an unknown one is an error, as in ssh-agent.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Self, DropInError> {
        let mut o = Self::default();
        for v in values {
            if v == "no-restrict-websafe" {
                o.no_restrict_websafe = true;
            } else if v == "allow-remote-pkcs11" {
                o.allow_remote_pkcs11 = true;
            } else if let Some(list) = v.strip_prefix("websafe-allow=") {
                if o.websafe_allow.is_some() {
                    return Err(DropInError::Fatal("websafe-allow already set".into()));
                }
                o.websafe_allow = Some(list.to_owned());
            } else {
                return Err(DropInError::Fatal("Unknown -O option".into()));
            }
        }
        Ok(o)
    }

    /// What the log says at start: each option given, and why it changes nothing.
    fn log(&self) {
        if self.allow_remote_pkcs11 {
            event!(
                "ssh agent: -O allow-remote-pkcs11 has no effect: nod loads no PKCS#11 or FIDO \
                 provider libraries, for local or forwarded clients"
            );
        }
        if self.no_restrict_websafe || self.websafe_allow.is_some() {
            event!(
                "ssh agent: -O no-restrict-websafe / websafe-allow have no effect: they apply to \
                 FIDO (sk-*) keys, which nod does not hold"
            );
        }
    }
}

/// Which shell syntax to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    /// `-s`: `VAR=value; export VAR;`
    Bourne,
    /// `-c`: `setenv VAR value;`
    Csh,
}

impl Shell {
    /// `-c`/`-s`, else csh syntax when `$SHELL` ends in `csh`, as ssh-agent decides.
    pub fn choose(csh: bool, bourne: bool, shell_env: Option<&str>) -> Self {
        if csh {
            Self::Csh
        } else if bourne {
            Self::Bourne
        } else if shell_env.is_some_and(|s| s.ends_with("csh")) {
            Self::Csh
        } else {
            Self::Bourne
        }
    }

    fn set(self, name: &str, value: &str) -> String {
        match self {
            Self::Bourne => format!("{name}={value}; export {name};\n"),
            Self::Csh => format!("setenv {name} {value};\n"),
        }
    }

    fn unset(self, name: &str) -> String {
        match self {
            Self::Bourne => format!("unset {name};\n"),
            Self::Csh => format!("unsetenv {name};\n"),
        }
    }
}

/// ssh-agent's flags, parsed.
#[derive(Debug, Clone)]
pub struct DropInOptions {
    /// `-a bind_address`.
    pub bind_address: Option<PathBuf>,
    pub shell: Shell,
    /// Whether `-c` or `-s` chose the shell (not allowed with a command).
    pub shell_given: bool,
    /// `-D`: stay in the foreground.
    pub foreground: bool,
    /// `-d`: stay in the foreground (debug); nod logs to stderr either way.
    pub debug: bool,
    /// `-k`: stop the agent named by `$SSH_AGENT_PID`.
    pub kill: bool,
    /// `-T`: the socket in a new directory under `$TMPDIR` rather than `~/.ssh/agent`.
    pub temp_dir: bool,
    /// `-U`: leave stale sockets in `~/.ssh/agent` alone.
    pub keep_stale: bool,
    /// `-u` (1) or `-uu` (2): only remove stale sockets in `~/.ssh/agent` (with `-uu`,
    /// those of other hosts too), then exit.
    pub clean_stale: u8,
    /// `-O` options.
    pub agent_options: AgentOptions,
    /// `-P allowed_providers`.
    pub allowed_providers: Option<String>,
    /// `-t life`: default lifetime of added keys.
    pub lifetime: Option<Duration>,
    pub approver: ApproverChoice,
    /// Set in the background process only.
    pub daemon_child: bool,
    /// The directory the background process made for its socket and removes on exit.
    pub remove_dir: Option<PathBuf>,
    /// `ssh-agent command [arg …]`: what to run with the agent; empty for none.
    pub command: Vec<OsString>,
    /// Set in the background process only: the command's pid, whose end stops the agent.
    pub command_pid: Option<i32>,
    /// The arguments after `nod`, to start the background process with.
    pub args: Vec<OsString>,
}

/// Why `nod ssh-agent` failed.
#[derive(Debug, thiserror::Error)]
pub enum DropInError {
    #[error("SSH_AGENT_PID not set, cannot kill agent")]
    NoAgentPid,
    #[error("SSH_AGENT_PID={0:?} is not a process id")]
    BadAgentPid(String),
    /// A usage error: the usage text follows, exit status 1, as ssh-agent's `usage()`.
    #[error("{0}")]
    Usage(String),
    /// What ssh-agent reports with `fatal()` (exit status 255).
    #[error("{0}")]
    Fatal(String),
    #[error("cannot use {}: {source}", dir.display())]
    AgentDir { dir: PathBuf, source: io::Error },
    #[error(
        "socket activation (LISTEN_FDS) is not supported by nod ssh-agent; pass -a PATH and \
         let the service manager start it without a socket"
    )]
    SocketActivation,
    #[error("cannot stop agent pid {pid}: {source}")]
    Kill { pid: i32, source: nix::Error },
    #[error("invalid lifetime {0:?}: use seconds, or a time like 90s, 30m, 1h30m, 2d, 1w")]
    BadLifetime(String),
    #[error("invalid fingerprint hash {0:?}: use sha256 or md5")]
    BadHash(String),
    #[error("cannot create the socket directory under {}: {source}", dir.display())]
    TempDir { dir: PathBuf, source: io::Error },
    #[error("cannot listen on {}: {source}", path.display())]
    Socket { path: PathBuf, source: io::Error },
    #[error(
        "{} exists; choose another -a path, or remove it if no agent uses it",
        path.display()
    )]
    SocketExists { path: PathBuf },
    #[error("cannot start the background agent: {0}")]
    Spawn(io::Error),
    #[error("the background agent did not start ({0}); run `nod ssh-agent -d` to see its log")]
    ChildFailed(String),
    #[error(transparent)]
    Paths(#[from] PathsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot write the environment lines: {0}")]
    Output(io::Error),
    #[error("a command to run cannot go with -c, -s, -k, -d, -D or -u")]
    CommandWithFlags,
    #[error("cannot run {command:?}: {source}")]
    Exec {
        command: OsString,
        source: io::Error,
    },
    #[error("cannot watch the command's process {pid}: {source}")]
    Watch { pid: i32, source: io::Error },
}

impl DropInError {
    /// The exit status, as ssh-agent's: 1 for usage and most errors, 255 for its `fatal()`s.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Fatal(_) | Self::BadHash(_) => 255,
            _ => 1,
        }
    }

    /// Whether the usage text goes with the message.
    pub fn shows_usage(&self) -> bool {
        matches!(
            self,
            Self::Usage(_) | Self::BadLifetime(_) | Self::CommandWithFlags
        )
    }
}

/// ssh-agent's time format (`sshd_config(5)` TIME FORMATS): seconds, or a sequence of
/// number+unit with units s, m, h, d, w.
pub fn parse_lifetime(s: &str) -> Result<Duration, DropInError> {
    let bad = || DropInError::BadLifetime(s.to_owned());
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            number = Some(
                number
                    .unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d)))
                    .ok_or_else(bad)?,
            );
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let n = number.take().ok_or_else(bad)?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if let Some(n) = number {
        total = total.checked_add(n).ok_or_else(bad)?;
    }
    // The protocol carries lifetimes as 32-bit seconds.
    if total == 0 || total > u64::from(u32::MAX) {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// Checks `-E`; nod's log shows SHA-256 fingerprints whatever is chosen.
pub fn check_fingerprint_hash(s: &str) -> Result<(), DropInError> {
    match s.to_ascii_lowercase().as_str() {
        "sha256" | "md5" => Ok(()),
        _ => Err(DropInError::BadHash(s.to_owned())),
    }
}

/// The lines `ssh-agent` prints when it starts in the background.
pub fn start_lines(shell: Shell, socket: &Path, pid: u32) -> String {
    let mut s = shell.set("SSH_AUTH_SOCK", &socket.display().to_string());
    s.push_str(&shell.set("SSH_AGENT_PID", &pid.to_string()));
    s.push_str(&format!("echo Agent pid {pid};\n"));
    s
}

/// The lines `ssh-agent -D`/`-d` prints: no `SSH_AGENT_PID`.
pub fn foreground_lines(shell: Shell, socket: &Path, pid: u32) -> String {
    let mut s = shell.set("SSH_AUTH_SOCK", &socket.display().to_string());
    s.push_str(&format!("echo Agent pid {pid};\n"));
    s
}

/// The lines `ssh-agent -k` prints.
pub fn kill_lines(shell: Shell, pid: i32) -> String {
    let mut s = shell.unset("SSH_AUTH_SOCK");
    s.push_str(&shell.unset("SSH_AGENT_PID"));
    s.push_str(&format!("echo Agent pid {pid} killed;\n"));
    s
}

/// Runs `nod ssh-agent` with `options`; the environment lines go to `out`. Returns the exit
/// status: 0, or [`SIGNALLED_EXIT`] when a signal stopped the agent.
pub fn run(options: DropInOptions, out: &mut dyn Write) -> Result<u8, DropInError> {
    // ssh-agent takes no shell syntax or mode flags with a command either.
    let mode_flags = options.shell_given
        || options.kill
        || options.debug
        || options.foreground
        || options.clean_stale > 0;
    if !options.command.is_empty() && mode_flags {
        return Err(DropInError::CommandWithFlags);
    }
    if options.kill {
        let pid = std::env::var("SSH_AGENT_PID").map_err(|_| DropInError::NoAgentPid)?;
        let pid: i32 = pid
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 1)
            .ok_or(DropInError::BadAgentPid(pid))?;
        kill(Pid::from_raw(pid), Signal::SIGTERM)
            .map_err(|source| DropInError::Kill { pid, source })?;
        write_out(out, &kill_lines(options.shell, pid))?;
        return Ok(0);
    }
    if options.clean_stale > 0 {
        let home = home_dir()?;
        cleanup_stale(&home, options.clean_stale > 1);
        write_out(
            out,
            &format!("Deleted stale agent sockets in ~/{AGENT_SOCKET_DIR}\n"),
        )?;
        return Ok(0);
    }
    if !options.daemon_child
        && options.bind_address.is_none()
        && options.command.is_empty()
        && (options.debug || options.foreground)
        && std::env::var_os("LISTEN_PID").is_some()
        && std::env::var_os("LISTEN_FDS").is_some()
    {
        return Err(DropInError::SocketActivation);
    }
    let (socket, made_dir) = match (&options.bind_address, &options.remove_dir) {
        // Absolute, so the background agent can leave the working directory.
        (Some(path), dir) => (
            std::path::absolute(path).map_err(|source| DropInError::Socket {
                path: path.clone(),
                source,
            })?,
            dir.clone(),
        ),
        (None, _) if options.temp_dir => {
            let dir = make_socket_dir()?;
            (dir.join(format!("agent.{}", std::process::id())), Some(dir))
        }
        (None, _) => {
            let home = home_dir()?;
            if !options.keep_stale {
                cleanup_stale(&home, false);
            }
            (home_socket_path(&home)?, None)
        }
    };
    if options.daemon_child {
        // A session of its own: the terminal's hangup or the shell's job control must not
        // reach it, as with ssh-agent's fork + setsid.
        let _ = nix::unistd::setsid();
        // Keep no directory busy (an unmount must not wait for the agent), as ssh-agent does.
        let _ = std::env::set_current_dir("/");
        // Watched from before the socket exists: the command's process is still waiting
        // for it then, so the pid is not yet anyone else's.
        let command = options
            .command_pid
            .map(|pid| watch(pid).map_err(|source| DropInError::Watch { pid, source }))
            .transpose()?;
        return serve(&options, &socket, made_dir.as_deref(), None, command);
    }
    if options.foreground || options.debug {
        let lines = foreground_lines(options.shell, &socket, std::process::id());
        return serve(
            &options,
            &socket,
            made_dir.as_deref(),
            Some((out, lines)),
            None,
        );
    }
    warn_if_nobody_can_be_asked(&options);
    let pid = start_background(&options, &socket, made_dir.as_deref())?;
    if options.command.is_empty() {
        write_out(out, &start_lines(options.shell, &socket, pid))?;
        return Ok(0);
    }
    Err(exec_command(&options.command, &socket, pid))
}

/// The background agent has no terminal (it runs in a session of its own), so unless a desktop
/// session, an askpass dialog or `agent.toml` gives it an approver, keys that need a yes are
/// refused. Say so here, where the person still sees stderr. The background agent resolves its
/// approvers as `nod agent` does (`auto`: the desktop's notifications, then askpass; never
/// `tty`, since it keeps no terminal).
fn warn_if_nobody_can_be_asked(options: &DropInOptions) {
    let Ok(paths) = Paths::from_env() else { return };
    let Ok(config) = AgentConfig::load(&paths.agent_config()) else {
        return;
    };
    let env = crate::approvers::Environment {
        stdin_is_tty: false,
        ..crate::approvers::Environment::detect()
    };
    if crate::approvers::select(&options.approver, &config.approver, &env)
        .is_ok_and(|chain| chain.is_empty())
    {
        eprintln!(
            "nod ssh-agent: warning: the background agent has no way to ask you (auto found {}; \
             no [approver] in agent.toml), so keys added with `ssh-add -c` and keys whose \
             policy asks are refused; set [approver] in ~/.config/nod/agent.toml, or run \
             `nod ssh-agent -D` in a terminal of its own",
            env.describe()
        );
    }
}

/// The user's home, as ssh-agent's `get_homedir` (`$HOME`, else the password database).
fn home_dir() -> Result<PathBuf, DropInError> {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .ok_or_else(|| DropInError::Fatal("Couldn't determine home directory".into()))
}

/// OpenSSH's `hostname_hash(10)`: SHA-512 of the host name, each of the first ten bytes taken
/// modulo the presentation characters. It keeps agents of several hosts sharing one home
/// (NFS) apart.
pub fn hostname_hash(hostname: &[u8]) -> String {
    Sha512::digest(hostname)
        .iter()
        .take(10)
        .map(|b| char::from(PRESENTATION[usize::from(*b) % PRESENTATION.len()]))
        .collect()
}

fn this_hostname_hash() -> String {
    let name = nix::unistd::gethostname().unwrap_or_default();
    hostname_hash(name.as_encoded_bytes())
}

/// `count` random presentation characters.
fn random_name(count: usize) -> Result<String, io::Error> {
    // 62 does not divide 256, so the top values are dropped rather than bias the name.
    let limit = 256 - 256 % PRESENTATION.len();
    let mut out = String::with_capacity(count);
    let mut buf = [0u8; 32];
    while out.len() < count {
        getrandom::getrandom(&mut buf).map_err(io::Error::other)?;
        for b in buf.iter().map(|b| usize::from(*b)).filter(|b| *b < limit) {
            if out.len() == count {
                break;
            }
            out.push(char::from(PRESENTATION[b % PRESENTATION.len()]));
        }
    }
    Ok(out)
}

/// `~/.ssh` and `~/.ssh/agent` (each 0700 when made), and a fresh socket name in the latter:
/// `s.<host hash>.agent.<10 random>`, OpenSSH's `agent_socket_template`.
fn home_socket_path(home: &Path) -> Result<PathBuf, DropInError> {
    let dir = home.join(AGENT_SOCKET_DIR);
    for d in [home.join(".ssh"), dir.clone()] {
        match DirBuilder::new().mode(0o700).create(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(DropInError::AgentDir { dir: d, source }),
        }
    }
    let hash = this_hostname_hash();
    for _ in 0..16 {
        let name = random_name(10).map_err(|source| DropInError::AgentDir {
            dir: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("s.{hash}.agent.{name}"));
        if fs::symlink_metadata(&path).is_err() {
            return Ok(path);
        }
    }
    Err(DropInError::AgentDir {
        dir,
        source: io::Error::from(io::ErrorKind::AlreadyExists),
    })
}

/// OpenSSH's `agent_cleanup_stale`: removes sockets in `~/.ssh/agent` that are over an hour
/// old, of this host (unless `any_host`), and that nobody listens on any more.
pub fn cleanup_stale(home: &Path, any_host: bool) {
    let dir = home.join(AGENT_SOCKET_DIR);
    let prefix = format!("s.{}.", this_hostname_hash());
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    let old = std::time::SystemTime::now()
        .checked_sub(STALE_AGE)
        .unwrap_or(std::time::UNIX_EPOCH);
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !any_host && !name.to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let modified =
            std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(meta.mtime()).unwrap_or(0));
        if !meta.file_type().is_socket() || modified > old {
            continue;
        }
        if std::os::unix::net::UnixStream::connect(&path).is_err() {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Becomes `command` with the agent's variables set; returns only if that fails, after
/// stopping the agent started for it.
fn exec_command(command: &[OsString], socket: &Path, agent_pid: u32) -> DropInError {
    use std::os::unix::process::CommandExt as _;
    let source = Command::new(&command[0])
        .args(&command[1..])
        .env("SSH_AUTH_SOCK", socket)
        .env("SSH_AGENT_PID", agent_pid.to_string())
        .exec();
    if let Ok(pid) = i32::try_from(agent_pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    DropInError::Exec {
        command: command[0].clone(),
        source,
    }
}

/// A pidfd for `pid`: it becomes readable once that process has ended.
fn watch(pid: i32) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::NONBLOCK,
    )?)
}

/// Resolves once the process behind `pidfd` has ended (or it can no longer be watched). A
/// thread waits in `poll`, so the runtime needs no raw-fd registration.
async fn until_ended(pidfd: OwnedFd) {
    let (ended, wait) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        while let Err(nix::errno::Errno::EINTR) = poll(&mut fds, PollTimeout::NONE) {}
        let _ = ended.send(());
    });
    let _ = wait.await;
}

/// The arguments before the command (and before a `--` that ends them).
fn own_args(options: &DropInOptions) -> &[OsString] {
    let args = &options.args;
    let own = &args[..args.len().saturating_sub(options.command.len())];
    match own.split_last() {
        Some((last, rest)) if !options.command.is_empty() && last == "--" => rest,
        _ => own,
    }
}

/// The arguments for the background process: ours without the command, plus the command's
/// pid when there is one.
fn background_args(options: &DropInOptions) -> Vec<OsString> {
    let mut args = own_args(options).to_vec();
    if !options.command.is_empty() {
        args.push(COMMAND_PID_FLAG.into());
        args.push(std::process::id().to_string().into());
    }
    args
}

fn write_out(out: &mut dyn Write, text: &str) -> Result<(), DropInError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(DropInError::Output)
}

/// `$TMPDIR/ssh-XXXXXXXXXXXX`, mode 0700, as ssh-agent's `mkdtemp`.
fn make_socket_dir() -> Result<PathBuf, DropInError> {
    let base = std::env::var_os("TMPDIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut last = io::Error::other("no attempt made");
    for _ in 0..16 {
        let mut r = [0u8; 12];
        getrandom::getrandom(&mut r).map_err(|e| DropInError::TempDir {
            dir: base.clone(),
            source: io::Error::other(e),
        })?;
        let name: String = r
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
            .collect();
        let dir = base.join(format!("ssh-{name}"));
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => {
                return Err(DropInError::TempDir {
                    dir: base,
                    source: e,
                });
            }
        }
    }
    Err(DropInError::TempDir {
        dir: base,
        source: last,
    })
}

/// Starts this program again as the background agent and waits for its socket.
fn start_background(
    options: &DropInOptions,
    socket: &Path,
    made_dir: Option<&Path>,
) -> Result<u32, DropInError> {
    let exe = std::env::current_exe().map_err(DropInError::Spawn)?;
    let mut cmd = Command::new(exe);
    cmd.args(background_args(options)).arg(DAEMON_CHILD_FLAG);
    if options.bind_address.is_none() {
        cmd.arg("-a").arg(socket);
    }
    if let Some(dir) = made_dir {
        cmd.arg(REMOVE_DIR_FLAG).arg(dir);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            if let Some(dir) = made_dir {
                let _ = fs::remove_dir(dir);
            }
            DropInError::Spawn(e)
        })?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if is_socket(socket) && std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(child.id());
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                if let Some(dir) = made_dir {
                    let _ = fs::remove_dir_all(dir);
                }
                return Err(DropInError::ChildFailed(status.to_string()));
            }
            Ok(None) => {}
            Err(e) => return Err(DropInError::ChildFailed(e.to_string())),
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(DropInError::ChildFailed("no socket after 10 s".into()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn is_socket(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Removes the socket (if still ours) and the directory we made, on drop.
#[derive(Debug)]
struct Cleanup {
    socket: PathBuf,
    dir: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if is_socket(&self.socket) {
            let _ = fs::remove_file(&self.socket);
        }
        if let Some(dir) = &self.dir {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Binds `path` like ssh-agent: an existing live socket or other file is refused, a stale
/// socket (nobody answers) is replaced. The parent directory is left as it is: it is the
/// user's choice (`-a`), or the 0700 directory we just made.
fn bind_at(path: &Path) -> Result<UnixListener, DropInError> {
    if fs::symlink_metadata(path).is_ok() {
        if is_socket(path) && std::os::unix::net::UnixStream::connect(path).is_err() {
            let _ = fs::remove_file(path);
        } else {
            return Err(DropInError::SocketExists {
                path: path.to_owned(),
            });
        }
    }
    let sock_err = |source| DropInError::Socket {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(sock_err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(sock_err)?;
    Ok(listener)
}

/// Serves the SSH agent socket until SIGTERM or SIGHUP (and SIGINT in the foreground), or
/// until the command ends; SIGUSR1 drops the added keys. `announce` gets the environment lines
/// once the socket is listening. Returns the exit status.
fn serve(
    options: &DropInOptions,
    socket: &Path,
    made_dir: Option<&Path>,
    announce: Option<(&mut dyn Write, String)>,
    command: Option<OwnedFd>,
) -> Result<u8, DropInError> {
    umask(Mode::from_bits_truncate(0o077));
    raise_nofile_limit();
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        event!("cannot make the agent non-dumpable: {e}");
    }
    let cleanup = Cleanup {
        socket: socket.to_owned(),
        dir: made_dir.map(Path::to_owned),
    };
    let paths = Paths::from_env()?;
    let config = AgentConfig::load(&paths.agent_config())?;
    let core = super::build_core(&options.approver, &config, &paths.audit_log())?;
    let keystore = crate::keystore::open_for_ssh_agent(&paths);
    let service = Arc::new(
        SshAgentService::new(Arc::clone(&core))
            .with_presence(config.presence.ssh)
            .with_limits(crate::ssh::SshLimits {
                idle: config.ssh.idle_timeout,
                ..crate::ssh::SshLimits::default()
            })
            .with_default_lifetime(options.lifetime)
            .with_settings(&config.ssh)
            .with_keystore(keystore),
    );
    if let Some(providers) = &options.allowed_providers {
        event!(
            "ssh agent: -P {providers}: nod loads no PKCS#11 or FIDO provider libraries; \
             smartcard and security-key (sk-*) keys are refused"
        );
    }
    options.agent_options.log();
    let foreground = options.foreground || options.debug;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DropInError::Runtime)?;
    let status = runtime.block_on(async move {
        let done = |status: u8| Ok::<u8, DropInError>(status);
        let mut sigint = signal(SignalKind::interrupt()).map_err(DropInError::Runtime)?;
        let mut sigterm = signal(SignalKind::terminate()).map_err(DropInError::Runtime)?;
        let mut sighup = signal(SignalKind::hangup()).map_err(DropInError::Runtime)?;
        let mut sigusr1 = signal(SignalKind::user_defined1()).map_err(DropInError::Runtime)?;
        let command_ended = async {
            match command {
                Some(pidfd) => until_ended(pidfd).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(command_ended);
        let listener = bind_at(socket)?;
        event!("ssh agent socket {} ready", socket.display());
        if let Some((out, lines)) = announce {
            write_out(out, &lines)?;
        }
        let flushing = Arc::clone(core.audit_log()).flush_periodically();
        let serving = Arc::clone(&service).serve(crate::socket::Capped::new(
            listener,
            crate::socket::cap_from_limit(1),
            "ssh agent",
        ));
        tokio::pin!(flushing, serving);
        loop {
            tokio::select! {
                () = &mut flushing => return done(0),
                () = &mut serving => return done(0),
                _ = sigint.recv() => {
                    if foreground {
                        event!("SIGINT: shutting down");
                        return done(SIGNALLED_EXIT);
                    }
                    // As ssh-agent in the background: SIGINT is ignored.
                }
                _ = sigterm.recv() => {
                    event!("SIGTERM: shutting down");
                    return done(SIGNALLED_EXIT);
                }
                _ = sighup.recv() => {
                    event!("SIGHUP: shutting down");
                    return done(SIGNALLED_EXIT);
                }
                _ = sigusr1.recv() => service.drop_added_keys(),
                () = &mut command_ended => {
                    event!("the command ended: shutting down");
                    return done(SIGNALLED_EXIT);
                }
            }
        }
    })?;
    drop(cleanup);
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_background_agent_gets_the_flags_but_not_the_command() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let options = |args: &[&str], command: &[&str]| DropInOptions {
            bind_address: None,
            shell: Shell::Bourne,
            shell_given: false,
            foreground: false,
            debug: false,
            kill: false,
            temp_dir: false,
            keep_stale: false,
            clean_stale: 0,
            agent_options: AgentOptions::default(),
            allowed_providers: None,
            lifetime: None,
            approver: ApproverChoice::default(),
            daemon_child: false,
            remove_dir: None,
            command: os(command),
            command_pid: None,
            args: os(args),
        };
        let pid = std::process::id().to_string();
        for (args, command) in [
            (
                &["ssh-agent", "-t", "1h", "sh", "-c", "x"][..],
                &["sh", "-c", "x"][..],
            ),
            (
                &["ssh-agent", "-t", "1h", "--", "sh", "-c", "x"],
                &["sh", "-c", "x"],
            ),
        ] {
            assert_eq!(
                background_args(&options(args, command)),
                os(&["ssh-agent", "-t", "1h", COMMAND_PID_FLAG, &pid])
            );
        }
        assert_eq!(
            background_args(&options(&["ssh-agent", "-a", "/s"], &[])),
            os(&["ssh-agent", "-a", "/s"])
        );
    }

    #[test]
    fn prints_ssh_agents_lines() {
        let sock = Path::new("/tmp/ssh-abc/agent.7");
        assert_eq!(
            start_lines(Shell::Bourne, sock, 8),
            "SSH_AUTH_SOCK=/tmp/ssh-abc/agent.7; export SSH_AUTH_SOCK;\n\
             SSH_AGENT_PID=8; export SSH_AGENT_PID;\necho Agent pid 8;\n"
        );
        assert_eq!(
            start_lines(Shell::Csh, sock, 8),
            "setenv SSH_AUTH_SOCK /tmp/ssh-abc/agent.7;\nsetenv SSH_AGENT_PID 8;\n\
             echo Agent pid 8;\n"
        );
        assert_eq!(
            kill_lines(Shell::Bourne, 8),
            "unset SSH_AUTH_SOCK;\nunset SSH_AGENT_PID;\necho Agent pid 8 killed;\n"
        );
        assert_eq!(
            kill_lines(Shell::Csh, 8),
            "unsetenv SSH_AUTH_SOCK;\nunsetenv SSH_AGENT_PID;\necho Agent pid 8 killed;\n"
        );
        assert_eq!(
            foreground_lines(Shell::Bourne, sock, 9),
            "SSH_AUTH_SOCK=/tmp/ssh-abc/agent.7; export SSH_AUTH_SOCK;\necho Agent pid 9;\n"
        );
    }

    #[test]
    fn shell_follows_flags_then_shell_variable() {
        assert_eq!(Shell::choose(true, false, Some("/bin/bash")), Shell::Csh);
        assert_eq!(Shell::choose(false, true, Some("/bin/tcsh")), Shell::Bourne);
        assert_eq!(Shell::choose(false, false, Some("/bin/tcsh")), Shell::Csh);
        assert_eq!(Shell::choose(false, false, None), Shell::Bourne);
    }

    #[test]
    fn parses_ssh_agent_lifetimes() {
        let secs = |s| parse_lifetime(s).map(|d| d.as_secs()).ok();
        assert_eq!(secs("600"), Some(600));
        assert_eq!(secs("90s"), Some(90));
        assert_eq!(secs("1h30m"), Some(5400));
        assert_eq!(secs("2d"), Some(172_800));
        assert_eq!(secs("1w"), Some(604_800));
        assert_eq!(secs("1H"), Some(3600));
        for bad in [
            "",
            "0",
            "h",
            "1x",
            "-5",
            "99999999999999999999",
            "9999999999",
        ] {
            assert_eq!(secs(bad), None, "{bad}");
        }
    }

    #[test]
    fn minus_o_takes_what_ssh_agent_takes() {
        let o = AgentOptions::parse([
            "no-restrict-websafe",
            "allow-remote-pkcs11",
            "websafe-allow=ssh:*,example.org",
        ])
        .unwrap();
        assert!(o.no_restrict_websafe && o.allow_remote_pkcs11);
        assert_eq!(o.websafe_allow.as_deref(), Some("ssh:*,example.org"));
        for bad in [
            &["no-such-option"][..],
            &["websafe-allow=a", "websafe-allow=b"],
        ] {
            let e = AgentOptions::parse(bad.iter().copied()).unwrap_err();
            assert_eq!(e.exit_code(), 255, "{e}");
        }
    }

    #[test]
    fn socket_names_follow_openssh() {
        // OpenSSH 10.1's hostname_hash(10) of "localhost", computed by hand from SHA-512.
        let hash = hostname_hash(b"localhost");
        assert_eq!(hash.len(), 10);
        let digest = Sha512::digest(b"localhost");
        let expected: String = digest[..10]
            .iter()
            .map(|b| char::from(PRESENTATION[usize::from(*b) % 62]))
            .collect();
        assert_eq!(hash, expected);
        let name = random_name(10).unwrap();
        assert_eq!(name.len(), 10);
        assert!(name.bytes().all(|b| PRESENTATION.contains(&b)));
    }

    #[test]
    fn stale_sockets_of_this_host_are_removed_live_and_recent_ones_kept() {
        let home = std::env::temp_dir().join(format!("nod-stale-{}", random_name(8).unwrap()));
        fs::create_dir(&home).unwrap();
        let path = home_socket_path(&home).unwrap();
        let dir = path.parent().unwrap().to_owned();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let hash = this_hostname_hash();
        let make = |name: &str, old: bool| {
            let p = dir.join(name);
            let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
            if old {
                let t = std::time::SystemTime::now() - Duration::from_secs(7200);
                let t = t.duration_since(std::time::UNIX_EPOCH).unwrap();
                let tv = nix::sys::time::TimeVal::new(t.as_secs() as i64, 0);
                nix::sys::stat::lutimes(&p, &tv, &tv).unwrap();
            }
            (p, l)
        };
        let (stale, l1) = make(&format!("s.{hash}.agent.aaaaaaaaaa"), true);
        drop(l1);
        let (live, _l2) = make(&format!("s.{hash}.agent.bbbbbbbbbb"), true);
        let (recent, l3) = make(&format!("s.{hash}.agent.cccccccccc"), false);
        drop(l3);
        let (other_host, l4) = make("s.XXXXXXXXXX.agent.dddddddddd", true);
        drop(l4);
        cleanup_stale(&home, false);
        assert!(!stale.exists());
        assert!(live.exists() && recent.exists() && other_host.exists());
        cleanup_stale(&home, true);
        assert!(!other_host.exists());
        fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn accepts_only_known_fingerprint_hashes() {
        assert!(check_fingerprint_hash("sha256").is_ok());
        assert!(check_fingerprint_hash("MD5").is_ok());
        assert!(check_fingerprint_hash("sha1").is_err());
    }
}
