//! `nod ssh-agent`: a drop-in for OpenSSH's `ssh-agent(1)`, so `eval "$(nod ssh-agent -s)"`
//! works wherever `eval "$(ssh-agent -s)"` did.
//!
//! It takes ssh-agent's flags (`-a -c -s -D -d -k -t -E`) and prints the same environment
//! lines. Without `-D`/`-d` it starts itself again in the background (a new session via
//! `setsid`, stdio on `/dev/null`), waits until the socket answers, prints the lines with the
//! background process's pid and returns. The background process serves only the SSH agent
//! socket (keys added with `ssh-add`, the keystore's persistent keys with their policies and
//! session certificates, as `nod agent` does; the approver from `agent.toml` or
//! `--approver…`), and removes the socket, and the `ssh-XXXXXXXXXXXX` directory it made, on
//! SIGTERM (`-k`), SIGINT or SIGHUP.
//!
//! With a command (`nod ssh-agent bash`, `exec nod ssh-agent startx`), the background agent is
//! started the same way, and the process then becomes the command (`exec`) with
//! `SSH_AUTH_SOCK` and `SSH_AGENT_PID` set, so it keeps the pid its parent knows. The agent
//! watches that pid through a pidfd and stops as soon as the command ends, as ssh-agent does
//! (which polls its parent every ten seconds).
//!
//! Not supported: `-O` options, `-P` (no PKCS#11).

use std::ffi::OsString;
use std::fs::{self, DirBuilder};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::{Mode, umask};
use nix::unistd::Pid;
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
    #[error("a command to run cannot go with -c, -s, -k, -d or -D")]
    CommandWithFlags,
    #[error("cannot run {command:?}: {source}")]
    Exec {
        command: OsString,
        source: io::Error,
    },
    #[error("cannot watch the command's process {pid}: {source}")]
    Watch { pid: i32, source: io::Error },
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

/// Runs `nod ssh-agent` with `options`; the environment lines go to `out`.
pub fn run(options: DropInOptions, out: &mut dyn Write) -> Result<(), DropInError> {
    // ssh-agent takes no shell syntax or mode flags with a command either.
    let mode_flags = options.shell_given || options.kill || options.debug || options.foreground;
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
        return write_out(out, &kill_lines(options.shell, pid));
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
        (None, _) => {
            let dir = make_socket_dir()?;
            (dir.join(format!("agent.{}", std::process::id())), Some(dir))
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
        return write_out(out, &start_lines(options.shell, &socket, pid));
    }
    Err(exec_command(&options.command, &socket, pid))
}

/// The background agent has no terminal (it runs in a session of its own), so unless a desktop
/// session, an askpass dialog or `agent.toml` gives it an approver, keys that need a yes are
/// refused. Say so here, where the person still sees stderr.
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
            "nod ssh-agent: warning: the background agent has no way to ask you (no desktop \
             session, no askpass dialog, no [approver] in agent.toml), so keys added with \
             `ssh-add -c` and keys whose policy asks are refused; set [approver] in \
             ~/.config/nod/agent.toml, or run `nod ssh-agent -D` in a terminal of its own"
        );
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

/// Serves the SSH agent socket until SIGTERM, SIGINT or SIGHUP. `announce` gets the
/// environment lines once the socket is listening.
fn serve(
    options: &DropInOptions,
    socket: &Path,
    made_dir: Option<&Path>,
    announce: Option<(&mut dyn Write, String)>,
    command: Option<OwnedFd>,
) -> Result<(), DropInError> {
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
            .with_keystore(keystore),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DropInError::Runtime)?;
    runtime.block_on(async move {
        let mut sigint = signal(SignalKind::interrupt()).map_err(DropInError::Runtime)?;
        let mut sigterm = signal(SignalKind::terminate()).map_err(DropInError::Runtime)?;
        let mut sighup = signal(SignalKind::hangup()).map_err(DropInError::Runtime)?;
        let command_ended = async {
            match command {
                Some(pidfd) => until_ended(pidfd).await,
                None => std::future::pending().await,
            }
        };
        let listener = bind_at(socket)?;
        event!("ssh agent socket {} ready", socket.display());
        if let Some((out, lines)) = announce {
            write_out(out, &lines)?;
        }
        tokio::select! {
            () = Arc::clone(core.audit_log()).flush_periodically() => {}
            () = service.serve(crate::socket::Capped::new(
                listener,
                crate::socket::cap_from_limit(1),
                "ssh agent",
            )) => {}
            _ = sigint.recv() => event!("SIGINT: shutting down"),
            _ = sigterm.recv() => event!("SIGTERM: shutting down"),
            _ = sighup.recv() => event!("SIGHUP: shutting down"),
            () = command_ended => event!("the command ended: shutting down"),
        }
        Ok::<(), DropInError>(())
    })?;
    drop(cleanup);
    Ok(())
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
    fn accepts_only_known_fingerprint_hashes() {
        assert!(check_fingerprint_hash("sha256").is_ok());
        assert!(check_fingerprint_hash("MD5").is_ok());
        assert!(check_fingerprint_hash("sha1").is_err());
    }
}
