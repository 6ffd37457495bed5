//! Set-up shared by the integration tests of the real `nod` binary: a temp dir holding the XDG
//! directories, commands with a clean environment, and a running `nod agent` whose approvals go
//! through a command approver (a shell script), never a compiled-in yes.
//!
//! Each test file uses only part of this module.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A temp dir `<prefix>-<random>`, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates the dir and the given subdirectories of it.
    pub fn new(prefix: &str, subdirs: &[&str]) -> Self {
        let mut r = [0u8; 6];
        getrandom::getrandom(&mut r).unwrap();
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", hex::encode(r)));
        fs::create_dir_all(&dir).unwrap();
        for sub in subdirs {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        Self(dir)
    }
    pub fn root(&self) -> &Path {
        &self.0
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    /// The SSH agent socket of a `nod agent` running with these XDG dirs.
    pub fn socket(&self) -> PathBuf {
        self.path("run/nod/ssh-agent.sock")
    }
    /// The secrets broker socket of a `nod agent` running with these XDG dirs.
    pub fn secrets_socket(&self) -> PathBuf {
        self.path("run/nod/secrets.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn nod_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nod"))
}

/// `program` with a clean environment: no terminal, no display, XDG dirs under `dir`.
pub fn command(dir: &TempDir, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir.path("home"))
        .env("XDG_CONFIG_HOME", dir.path("config"))
        .env("XDG_DATA_HOME", dir.path("data"))
        .env("XDG_STATE_HOME", dir.path("state"))
        .env("XDG_RUNTIME_DIR", dir.path("run"))
        .stdin(Stdio::null());
    cmd
}

/// `nod` with a clean environment: no terminal, no display, XDG dirs under `dir`.
pub fn nod(dir: &TempDir) -> Command {
    command(dir, nod_bin())
}

/// An OpenSSH tool talking to the agent under test only.
pub fn tool(dir: &TempDir, program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir.path("home"))
        .env("SSH_AUTH_SOCK", dir.socket())
        .stdin(Stdio::null());
    cmd
}

pub fn ssh_add(dir: &TempDir, args: &[&str]) -> Output {
    tool(dir, "ssh-add").args(args).output().unwrap()
}

/// True when the OpenSSH tools are there; otherwise skips (or fails under CI).
pub fn have_openssh() -> bool {
    let found = ["/usr/bin/ssh-add", "/usr/bin/ssh-keygen"]
        .iter()
        .all(|p| Path::new(p).exists());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "ssh-add and ssh-keygen are required under CI=true (apt-get install openssh-client)"
        );
        eprintln!("skipped: ssh-add/ssh-keygen not installed (apt-get install openssh-client)");
    }
    found
}

pub fn write_script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).unwrap();
}

/// Runs `cmd` with `input` on its stdin; collects stdout and stderr.
pub fn output_with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Status, stdout and stderr, for assertion messages.
/// Copies an executable with `cp` in a child process, optionally appending a newline (same
/// behaviour, another hash). Writing it from this process could leave a writable fd in a child
/// that another test thread forked but has not exec'd yet, and exec would fail with ETXTBSY.
pub fn copy_exe(src: &Path, dst: &Path, append: bool) {
    let status = Command::new("/bin/sh")
        .args([
            "-c",
            r#"rm -f "$2" && cp "$1" "$2" && chmod 755 "$2" && if [ "$3" = 1 ]; then printf '\n' >> "$2"; fi"#,
            "sh",
        ])
        .arg(src)
        .arg(dst)
        .arg(if append { "1" } else { "0" })
        .status()
        .unwrap();
    assert!(status.success(), "copying {} failed", src.display());
}

pub fn out(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Waits (10 s at most) until `socket` is a socket that accepts connections (a stale socket
/// file may exist before); panics with "agent never created {what}".
pub fn wait_for_socket(socket: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket())
        && UnixStream::connect(socket).is_ok())
    {
        assert!(Instant::now() < deadline, "agent never created {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `nod agent`, killed if the test fails.
pub struct Agent(pub Child);

impl Agent {
    /// Starts `nod agent` (stderr to `agent.log`) and waits for its SSH agent socket.
    pub fn start(dir: &TempDir, approver: Option<&Path>) -> Self {
        Self::start_waiting_for(dir, approver, &dir.socket(), "its socket")
    }

    /// Starts `nod agent` (stderr to `agent.log`) and waits for `socket`.
    pub fn start_waiting_for(
        dir: &TempDir,
        approver: Option<&Path>,
        socket: &Path,
        what: &str,
    ) -> Self {
        let mut cmd = nod(dir);
        cmd.stderr(fs::File::create(dir.path("agent.log")).unwrap())
            .arg("agent");
        if let Some(approver) = approver {
            cmd.arg("--approver-command").arg(approver);
        }
        let agent = Self(cmd.spawn().unwrap());
        wait_for_socket(socket, what);
        agent
    }

    /// SIGTERM; the agent must exit successfully.
    pub fn stop(mut self) {
        kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM).unwrap();
        assert!(self.0.wait().unwrap().success());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// True when the test runs as root; otherwise skips with a notice, or fails under `CI=true`
/// (CI runs as root, so a test that needs it must never pass there without running).
pub fn is_root_or_skip(why: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "this test needs root to {why} (CI=true: refusing to skip)"
    );
    eprintln!("skipped: needs root to {why}");
    false
}
