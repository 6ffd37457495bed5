//! Who is calling, as the kernel tells it (secrets-protocol.md "Caller verification").
//!
//! The broker gets the sender's pid and uid for *each message* from `SCM_CREDENTIALS` (the
//! socket has `SO_PASSCRED`); the kernel never merges bytes from two writers into one
//! `recvmsg`, so a line's sender is known. [`identify`] then judges that process:
//!
//! 1. a pidfd is opened for the pid, pinning the process;
//! 2. the process must have started before the message arrived (`/proc/<pid>/stat`
//!    `starttime`), so a pid that changed hands between send and `pidfd_open` is refused;
//! 3. `/proc/<pid>/exe` is *opened* (the running inode, not the path, so renaming another file
//!    over the path changes nothing) and hashed with SHA-256; hashes are cached by
//!    (dev, ino, size, ctime), so a warm check costs a few syscalls;
//! 4. the pidfd must still be alive after the open: if the process had exited, its pid could
//!    have been reused by the time `/proc/<pid>` was read.
//!
//! Not covered: a sender that `exec`s another binary *after* sending and before this check
//! is judged as that binary. A registered binary exec'd this way runs its own code, but a
//! process sharing the socket (a fork taken before the exec) could read the answer.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use sha2::{Digest, Sha256};

/// Kernel-given ids of one message's sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    pub pid: i32,
    pub uid: u32,
    /// `CLOCK_BOOTTIME` when the message was received, in nanoseconds.
    pub received_boot_ns: u128,
}

/// The verified caller of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub pid: i32,
    /// Where the binary was when it started (informational: the hash is what counts).
    pub exe_path: String,
    /// `sha256:<hex>` of the running binary.
    pub hash: String,
    /// argv[0] only: later arguments may hold secrets.
    pub argv0: String,
    pub interpreter: bool,
}

/// The caller could not be verified; the request is refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("process {pid} is gone")]
    Gone { pid: i32 },
    #[error("process {pid} started after the message was sent (pid reused)")]
    PidReused { pid: i32 },
    #[error("cannot inspect process {pid}: {source}")]
    Proc { pid: i32, source: io::Error },
}

/// Longest argv[0] kept.
const MAX_ARGV0: usize = 256;
/// Hash cache entries before it is cleared.
const MAX_CACHE: usize = 4096;

type FileKey = (u64, u64, u64, i64, i64);

/// SHA-256 of binaries by (dev, ino, size, ctime). A changed file gets a new ctime, so a stale
/// hash is never served.
#[derive(Debug, Default)]
pub struct HashCache {
    map: Mutex<HashMap<FileKey, String>>,
}

impl HashCache {
    /// The hash of an open file, from the cache or by reading it.
    pub fn hash_file(&self, file: &mut File) -> io::Result<String> {
        let meta = file.metadata()?;
        let key = (
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.ctime(),
            meta.ctime_nsec(),
        );
        if let Some(hash) = self.lock().get(&key) {
            return Ok(hash.clone());
        }
        let hash = sha256_file(file)?;
        let mut map = self.lock();
        if map.len() >= MAX_CACHE {
            map.clear();
        }
        map.insert(key, hash.clone());
        Ok(hash)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileKey, String>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `sha256:<hex>` of everything readable from `file`.
pub fn sha256_file(file: &mut File) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Hashes the file at `path` (for `nod register`): `path` is opened once and that inode is
/// hashed.
pub fn hash_path(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    sha256_file(&mut file)
}

/// Interpreters run whatever script they are given, so a grant to one is a grant to every
/// script it runs.
pub fn is_interpreter(exe: &Path) -> bool {
    let Some(name) = exe.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '-');
    matches!(
        base,
        "python"
            | "pypy"
            | "node"
            | "nodejs"
            | "deno"
            | "bun"
            | "perl"
            | "ruby"
            | "php"
            | "lua"
            | "luajit"
            | "tclsh"
            | "wish"
            | "sh"
            | "bash"
            | "dash"
            | "zsh"
            | "ksh"
            | "mksh"
            | "fish"
            | "csh"
            | "tcsh"
            | "busybox"
            | "env"
            | "java"
            | "osascript"
            | "R"
            | "Rscript"
            | "julia"
            | "gawk"
            | "awk"
            | "mawk"
            | "expect"
            | "guile"
            | "emacs"
            | "vim"
            | "nvim"
            | "gdb"
            | "pwsh"
    )
}

/// `CLOCK_BOOTTIME` now, in nanoseconds (the clock of `/proc/<pid>/stat` `starttime`).
pub fn boot_ns() -> u128 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| {
            u128::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u128::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(u128::MAX)
}

/// `starttime` of `/proc/<pid>/stat` in nanoseconds since boot.
fn start_boot_ns(pid: i32) -> io::Result<u128> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // comm (field 2) may hold spaces and parentheses; fields after the last ')' are plain.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed stat"))?;
    // rest starts at field 3 (state); starttime is field 22.
    let ticks: u128 = rest
        .split_whitespace()
        .nth(22 - 3)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("malformed stat"))?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|h| u128::try_from(h).ok())
        .filter(|&h| h > 0)
        .unwrap_or(100);
    Ok(ticks * 1_000_000_000 / hz)
}

fn argv0(pid: i32) -> String {
    let mut buf = Vec::new();
    if let Ok(f) = File::open(format!("/proc/{pid}/cmdline")) {
        let _ = f.take(MAX_ARGV0 as u64).read_to_end(&mut buf);
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn exited(pidfd: &impl AsFd) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    // A pidfd is readable once its process has exited.
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) => true,
        Err(_) => true,
    }
}

/// Verifies the sender of one message (steps 1-4 of the module docs). Blocking: it may read a
/// whole binary on a cache miss.
pub fn identify(sender: Sender, cache: &HashCache) -> Result<Caller, PeerError> {
    let pid = sender.pid;
    let proc_err = |source| PeerError::Proc { pid, source };
    let raw = rustix::process::Pid::from_raw(pid).ok_or(PeerError::Gone { pid })?;
    let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
        .map_err(|_| PeerError::Gone { pid })?;
    // 10 ms of slack: starttime has clock-tick resolution.
    if start_boot_ns(pid).map_err(proc_err)? > sender.received_boot_ns + 10_000_000 {
        return Err(PeerError::PidReused { pid });
    }
    let mut exe = File::open(format!("/proc/{pid}/exe")).map_err(proc_err)?;
    let exe_path: PathBuf = fs::read_link(format!("/proc/{pid}/exe")).map_err(proc_err)?;
    let argv0 = argv0(pid);
    if exited(&pidfd) {
        return Err(PeerError::Gone { pid });
    }
    let hash = cache.hash_file(&mut exe).map_err(proc_err)?;
    Ok(Caller {
        pid,
        interpreter: is_interpreter(&exe_path),
        exe_path: exe_path.to_string_lossy().into_owned(),
        hash,
        argv0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_interpreters_by_name() {
        for p in [
            "/usr/bin/python3.12",
            "/usr/bin/python3",
            "/usr/bin/node",
            "/bin/bash",
            "/usr/bin/perl5.36.0",
            "/usr/bin/ruby3.1",
            "/bin/sh",
            "/usr/bin/zsh (deleted)",
        ] {
            assert!(is_interpreter(Path::new(p)), "{p}");
        }
        for p in ["/usr/bin/git", "/usr/bin/aws", "/bin/cat", "/usr/bin/shred"] {
            assert!(!is_interpreter(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn identifies_this_process() {
        let cache = HashCache::default();
        let me = Sender {
            pid: std::process::id() as i32,
            uid: nix::unistd::getuid().as_raw(),
            received_boot_ns: boot_ns(),
        };
        let caller = identify(me, &cache).unwrap();
        let want = hash_path(&std::env::current_exe().unwrap()).unwrap();
        assert_eq!(caller.hash, want);
        assert!(caller.hash.starts_with("sha256:") && caller.hash.len() == 7 + 64);
        // Cached: the same answer again.
        assert_eq!(identify(me, &cache).unwrap().hash, want);
    }

    #[test]
    fn refuses_a_process_that_started_after_the_message() {
        let cache = HashCache::default();
        let me = Sender {
            pid: std::process::id() as i32,
            uid: 0,
            received_boot_ns: 0,
        };
        assert!(matches!(
            identify(me, &cache),
            Err(PeerError::PidReused { .. })
        ));
    }

    #[test]
    fn refuses_a_dead_pid() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let s = Sender {
            pid,
            uid: 0,
            received_boot_ns: boot_ns(),
        };
        assert!(identify(s, &HashCache::default()).is_err());
    }
}
