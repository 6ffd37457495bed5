//! Which binary a local caller runs, as the kernel and its files say, for the secrets broker
//! (docs/design.md §3 "Caller identity").
//!
//! A connection is bound to the process that made it (`SO_PEERPIDFD`: the kernel's own pidfd of
//! the connecting process, which can name no other process, ever). That process is judged once
//! ([`judge`]), after its session handshake, and every message must then come from it, still
//! running the same image ([`Judged::check_sender`]):
//!
//! - it lives in the agent's own user and pid namespaces: inside a namespace of its own a
//!   sender can put any pid of its children into `SCM_CREDENTIALS`;
//! - no tracer is attached (`TracerPid`), and it was not started with `LD_PRELOAD`,
//!   `LD_LIBRARY_PATH` or `LD_AUDIT`: code injected that way runs as the registered binary;
//! - the binary is hashed from `/proc/<pid>/exe` opened as a file (the running inode, not a path
//!   that can be renamed), cached by (dev, inode, size, ctime), and its content is scanned for
//!   the marks of an interpreter (python, perl, node, a shell, …), since approving one approves
//!   every script it runs, whatever the file is called;
//! - each message's sender (`SCM_PIDFD`) is the connecting process, and its image has not
//!   changed since it was judged: the executable's inode and the layout of its address space
//!   (`/proc/<pid>/stat`: code, data, stack, arguments), which every `exec` rebuilds.
//!
//! What this does not cover is stated in docs/security.md: a process that can ptrace a
//! registered binary (Yama `ptrace_scope` 0, or an ancestor under scope 1) can inject code and
//! detach before it sends; an `exec` from a registered image into another image and back, with
//! address-space randomization turned off, keeps the layout.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aho_corasick::{AhoCorasick, Input, MatchKind};
use sha2::{Digest, Sha256};

use super::chain::{self, ProcessLink};
use super::pidfd;

/// What the content of a binary says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    /// `sha256:<hex>` of the file.
    pub hash: String,
    /// It carries the marks of a program that runs scripts.
    pub interpreter: bool,
    /// It is `nod` itself (its command line can read any secret the person allows).
    pub nod_cli: bool,
}

/// The mark `nod` carries in its binary (see [`nod_cli_mark`]), so the broker knows its
/// command line by content, whatever the file is called and wherever it was installed. Kept
/// here with every byte shifted by one, so that programs linking this library (tests, benches)
/// do not carry the mark themselves.
const NOD_CLI_MARK_SHIFTED: [u8; 48] = *b"ope.dmj;!uif!dpnnboe!mjof!pg!uif!ope!bhfou!)ope*";

/// The mark itself, for `nod`'s binary to embed (`#[used] static … = nod_cli_mark();`).
pub const fn nod_cli_mark() -> [u8; 48] {
    let mut out = NOD_CLI_MARK_SHIFTED;
    let mut i = 0;
    while i < out.len() {
        out[i] -= 1;
        i += 1;
    }
    out
}

/// The mark, built at run time (never a constant of this library's binary).
fn nod_cli_mark_runtime() -> Vec<u8> {
    std::hint::black_box(NOD_CLI_MARK_SHIFTED)
        .iter()
        .map(|b| b - 1)
        .collect()
}

/// Strings found in interpreters and in no ordinary tool: the entry points they link
/// (`Py_BytesMain`, `perl_parse`, …) or a shell's own messages.
const INTERPRETER_MARKS: &[&str] = &[
    "Py_BytesMain",
    "Py_Initialize",
    "perl_parse",
    "ruby_run_node",
    "_ZN4node5Start",
    "lua_pcallk",
    "luaL_loadfilex",
    "Tcl_Main",
    "php_execute_script",
    "JLI_Launch",
    "bash_initialize_history",
    "Usage: getopts optstring var [arg...]",
    "ZSH_VERSION",
    "KSH_VERSION",
    "MAWK_LONG_OPTIONS",
    "GNU Awk",
    "BusyBox v",
    "Usage: ld.so [OPTION]",
    "deno_runtime",
];

fn marks() -> &'static AhoCorasick {
    static MARKS: std::sync::OnceLock<AhoCorasick> = std::sync::OnceLock::new();
    MARKS.get_or_init(|| {
        let mut all: Vec<Vec<u8>> = INTERPRETER_MARKS
            .iter()
            .map(|m| m.as_bytes().to_vec())
            .collect();
        all.push(nod_cli_mark_runtime());
        // Leftmost-first lets the search use its SIMD prefilter, about ten times faster over
        // a large binary than an overlapping search; `find_marks` restarts after each match's
        // first byte, so no occurrence is skipped.
        AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(all)
            .expect("the marks are valid patterns")
    })
}

/// Reads `file` to the end once, hashing it and looking for the marks. A mark that straddles
/// two reads is found too: the last bytes of each read are searched again with the next.
pub fn inspect(file: &mut File) -> io::Result<Binary> {
    const CHUNK: usize = 256 * 1024;
    let longest = INTERPRETER_MARKS
        .iter()
        .map(|m| m.len())
        .chain([NOD_CLI_MARK_SHIFTED.len()])
        .max()
        .unwrap_or(0);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK + longest];
    let mut carry = 0;
    let (mut interpreter, mut nod_cli) = (false, false);
    loop {
        let n = file.read(&mut buf[carry..])?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[carry..carry + n]);
        let window = &buf[..carry + n];
        let mut at = 0;
        while let Some(m) = marks().find(Input::new(window).span(at..window.len())) {
            if m.pattern().as_usize() == INTERPRETER_MARKS.len() {
                nod_cli = true;
            } else {
                interpreter = true;
            }
            at = m.start() + 1;
        }
        let keep = (carry + n).min(longest.saturating_sub(1));
        buf.copy_within(carry + n - keep..carry + n, 0);
        carry = keep;
    }
    Ok(Binary {
        hash: format!("sha256:{}", hex::encode(hasher.finalize())),
        interpreter,
        nod_cli,
    })
}

/// The caller could not be verified, or may not be trusted; the request is refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("the calling process has exited")]
    Gone,
    #[error("the calling process is in another {0} namespace than the agent")]
    OtherNamespace(&'static str),
    #[error("process {pid} is being traced by process {tracer}")]
    Traced { pid: i32, tracer: i32 },
    #[error("process {pid} was started with {var} set, so other code may run in it")]
    Injected { pid: i32, var: String },
    #[error("process {pid} has run another program (exec) since it was checked")]
    Execed { pid: i32 },
    #[error("the message was sent by another process than the one that connected")]
    NotTheConnectedProcess,
    #[error("the kernel did not say which process sent the message")]
    NoSender,
    #[error("cannot inspect process {pid}: {source}")]
    Proc { pid: i32, source: io::Error },
    #[error("{SANDBOXED}")]
    AgentSandboxed,
}

/// Why an agent in a user namespace of its own cannot judge anyone of the session.
pub const SANDBOXED: &str = "the agent runs in a user namespace of its own (systemd's \
     PrivateUsers=, which a user unit's PrivateTmp=, ProtectSystem= or ProtectHome= imply), so \
     the kernel hides its callers' programs from it and every caller is refused; run it without \
     those options (the packaged nod-agent.service has none)";

/// The inode of the initial user namespace (the kernel's `PROC_USER_INIT_INO`, fixed since
/// Linux 3.8).
const INITIAL_USER_NS_INO: u64 = 0xEFFF_FFFD;

/// Whether this process runs in the initial user namespace, where it can see the programs of
/// the session's processes. `None` when that cannot be read.
pub fn in_initial_user_namespace() -> Option<bool> {
    namespace("self", "user")
        .ok()
        .map(|(_, ino)| ino == INITIAL_USER_NS_INO)
}

impl PeerError {
    /// The audit reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Gone => "caller_gone",
            Self::OtherNamespace(_) => "other_namespace",
            Self::Traced { .. } => "traced",
            Self::Injected { .. } => "injected_environment",
            Self::Execed { .. } => "exec_since_check",
            Self::NotTheConnectedProcess => "not_the_connected_process",
            Self::NoSender => "no_sender",
            Self::Proc { .. } => "caller_unverified",
            Self::AgentSandboxed => "agent_sandboxed",
        }
    }
}

/// Hash cache entries before it is cleared.
const MAX_CACHE: usize = 4096;

type FileKey = (u64, u64, u64, i64, i64);

/// What binaries are, by (dev, ino, size, ctime). A changed file gets a new ctime, so stale
/// facts are never served.
#[derive(Debug, Default)]
pub struct HashCache {
    map: Mutex<HashMap<FileKey, Binary>>,
}

impl HashCache {
    /// The facts of an open file, from the cache or by reading it.
    pub fn inspect(&self, file: &mut File) -> io::Result<Binary> {
        let meta = file.metadata()?;
        let key = (
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.ctime(),
            meta.ctime_nsec(),
        );
        if let Some(b) = self.lock().get(&key) {
            return Ok(b.clone());
        }
        let binary = inspect(file)?;
        let mut map = self.lock();
        if map.len() >= MAX_CACHE {
            map.clear();
        }
        map.insert(key, binary.clone());
        Ok(binary)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileKey, Binary>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A file offered for registration, as the agent itself sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub binary: Binary,
    /// A `#!` script: the process that runs it is its interpreter, never the script.
    pub script: bool,
    /// The user (or group, or anyone) can write the file: anything running as the user can
    /// replace it, and a replaced file is a new hash that needs `nod upgrade`.
    pub writable: bool,
}

/// Looks at the file at `path` for `nod register`/`nod upgrade`: `path` is opened once and
/// that inode is read.
pub fn inspect_path(path: &Path) -> io::Result<Candidate> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut head = [0u8; 2];
    let script = file.read(&mut head).is_ok_and(|n| n == 2) && head == *b"#!";
    drop(file);
    let mut file = File::open(path)?;
    let binary = inspect(&mut file)?;
    let me = nix::unistd::getuid().as_raw();
    let mode = meta.permissions().mode();
    let writable = (meta.uid() == me && mode & 0o200 != 0) || mode & 0o022 != 0;
    Ok(Candidate {
        binary: Binary {
            interpreter: binary.interpreter || is_interpreter(path),
            ..binary
        },
        script,
        writable,
    })
}

/// `sha256:<hex>` of the file at `path`.
pub fn hash_path(path: &Path) -> io::Result<String> {
    inspect_path(path).map(|c| c.binary.hash)
}

/// Interpreters by file name, for the common ones (the content scan finds them under any
/// name).
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

/// Longest argv[0] kept.
const MAX_ARGV0: usize = 256;
/// Longest environment read; a longer one is refused (the variable that matters could hide
/// past any cut).
const MAX_ENVIRON: u64 = 1024 * 1024;
/// Variables that make the dynamic loader run other code inside the process.
const INJECTING_VARS: &[&str] = &["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"];

/// What `exec` rebuilds: the executable and the layout of the address space
/// (`/proc/<pid>/stat` fields 26-28 and 45-51: code, stack, data, heap, arguments, environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Image {
    dev: u64,
    ino: u64,
    layout: [u64; 10],
}

/// `starttime` of `/proc/<pid>/stat` (field 22): clock ticks since boot, what polkit calls a
/// process's `start-time`.
pub fn start_ticks(pid: i32) -> io::Result<u64> {
    // stat_fields()[0] is field 4.
    stat_fields(pid)?
        .get(22 - 4)
        .copied()
        .filter(|&t| t != 0)
        .ok_or_else(|| io::Error::other("malformed stat"))
}

fn stat_fields(pid: i32) -> io::Result<Vec<u64>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // comm (field 2) may hold spaces and parentheses; fields after the last ')' are plain.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed stat"))?;
    // rest starts at field 3 (state); keep fields as numbers (state is not one).
    Ok(rest
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect())
}

fn image_of(pid: i32) -> io::Result<Image> {
    let exe = fs::metadata(format!("/proc/{pid}/exe"))?;
    let f = stat_fields(pid)?;
    // f[0] is field 4; field n is f[n - 4].
    let at = |n: usize| f.get(n - 4).copied().unwrap_or(0);
    let layout = [
        at(26),
        at(27),
        at(28),
        at(45),
        at(46),
        at(47),
        at(48),
        at(49),
        at(50),
        at(51),
    ];
    if layout.iter().all(|&v| v == 0) {
        // The kernel hides the layout from a reader without ptrace-read access (a setuid or
        // non-dumpable process): then exec cannot be told apart, so such a caller is not
        // trusted.
        return Err(io::Error::other(
            "its address-space layout is hidden (not dumpable)",
        ));
    }
    Ok(Image {
        dev: exe.dev(),
        ino: exe.ino(),
        layout,
    })
}

fn tracer(pid: i32) -> io::Result<i32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

fn check_environ(pid: i32) -> Result<(), PeerError> {
    let proc_err = |source| PeerError::Proc { pid, source };
    let mut env = Vec::new();
    File::open(format!("/proc/{pid}/environ"))
        .map_err(proc_err)?
        .take(MAX_ENVIRON + 1)
        .read_to_end(&mut env)
        .map_err(proc_err)?;
    if env.len() as u64 > MAX_ENVIRON {
        return Err(proc_err(io::Error::other("its environment is over 1 MiB")));
    }
    for var in env.split(|&b| b == 0) {
        let name = var.split(|&b| b == b'=').next().unwrap_or_default();
        if let Some(v) = INJECTING_VARS.iter().find(|v| v.as_bytes() == name) {
            return Err(PeerError::Injected {
                pid,
                var: (*v).to_owned(),
            });
        }
    }
    Ok(())
}

fn namespace(pid: &str, ns: &str) -> io::Result<(u64, u64)> {
    let m = fs::metadata(format!("/proc/{pid}/ns/{ns}"))?;
    Ok((m.dev(), m.ino()))
}

fn argv0(pid: i32) -> String {
    let mut buf = Vec::new();
    if let Ok(f) = File::open(format!("/proc/{pid}/cmdline")) {
        let _ = f.take(MAX_ARGV0 as u64).read_to_end(&mut buf);
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A process that passed [`judge`], and what it was running then.
#[derive(Debug)]
pub struct Judged {
    pub pid: i32,
    pub uid: u32,
    /// Where the binary was when it started (informational: the hash is what counts).
    pub exe_path: String,
    pub binary: Binary,
    /// argv[0] only: later arguments may hold secrets.
    pub argv0: String,
    /// The process and its ancestors of the same user, for prompts about it.
    pub chain: Vec<ProcessLink>,
    pidfd: OwnedFd,
    image: Image,
}

/// Judges the process behind `pidfd` (the kernel's pidfd of the connecting process). Blocking:
/// it may read a whole binary on a cache miss.
pub fn judge(pidfd: OwnedFd, uid: u32, cache: &HashCache) -> Result<Judged, PeerError> {
    let pid = pidfd::pid_of(&pidfd).ok_or(PeerError::Gone)?;
    let proc_err = |source| PeerError::Proc { pid, source };
    let spid = pid.to_string();
    for ns in ["user", "pid"] {
        let theirs = namespace(&spid, ns).map_err(|e| {
            if e.kind() == io::ErrorKind::PermissionDenied
                && in_initial_user_namespace() == Some(false)
            {
                PeerError::AgentSandboxed
            } else {
                proc_err(e)
            }
        })?;
        if theirs != namespace("self", ns).map_err(proc_err)? {
            return Err(PeerError::OtherNamespace(ns));
        }
    }
    match tracer(pid).map_err(proc_err)? {
        0 => {}
        tracer => return Err(PeerError::Traced { pid, tracer }),
    }
    check_environ(pid)?;
    let image = image_of(pid).map_err(proc_err)?;
    let mut exe = File::open(format!("/proc/{pid}/exe")).map_err(proc_err)?;
    let exe_path: PathBuf = fs::read_link(format!("/proc/{pid}/exe")).map_err(proc_err)?;
    let binary = cache.inspect(&mut exe).map_err(proc_err)?;
    let judged = Judged {
        pid,
        uid,
        binary: Binary {
            interpreter: binary.interpreter || is_interpreter(&exe_path),
            ..binary
        },
        exe_path: exe_path.to_string_lossy().into_owned(),
        argv0: argv0(pid),
        chain: chain::process_chain(pid, uid),
        pidfd,
        image,
    };
    // Everything above was read from /proc/<pid>: it was this process only if it still runs,
    // the same image as when the reading began.
    judged.still_the_same()?;
    Ok(judged)
}

/// The kernel's word on who sent one message.
#[derive(Debug)]
pub struct Sender {
    pub pid: i32,
    pub uid: u32,
    /// `SCM_PIDFD` (Linux ≥ 6.5); `None` on older kernels.
    pub pidfd: Option<OwnedFd>,
}

impl Sender {
    /// The same sender, with its own copy of the pidfd.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            pid: self.pid,
            uid: self.uid,
            pidfd: self.pidfd.as_ref().map(OwnedFd::try_clone).transpose()?,
        })
    }
}

impl Judged {
    /// Whether the process still runs, untraced, the image it was judged in.
    fn still_the_same(&self) -> Result<(), PeerError> {
        let pid = self.pid;
        let proc_err = |source| PeerError::Proc { pid, source };
        if !pidfd::alive(&self.pidfd) {
            return Err(PeerError::Gone);
        }
        match tracer(pid).map_err(proc_err)? {
            0 => {}
            tracer => return Err(PeerError::Traced { pid, tracer }),
        }
        let now = image_of(pid).map_err(|_| PeerError::Execed { pid })?;
        if now != self.image {
            return Err(PeerError::Execed { pid });
        }
        // Read through the pid: it is still this process only if the pidfd says it runs.
        if !pidfd::alive(&self.pidfd) {
            return Err(PeerError::Gone);
        }
        Ok(())
    }

    /// Checks that `sender` is this process, still the same image: every message's check.
    pub fn check_sender(&self, sender: &Sender) -> Result<(), PeerError> {
        let same = match &sender.pidfd {
            Some(fd) => pidfd::same_process(fd, &self.pidfd),
            // Before Linux 6.5 (no SCM_PIDFD): the pid the kernel put in the message, which a
            // sender in our namespaces cannot choose, names the connected process while it
            // runs.
            None => sender.pid == self.pid,
        };
        if !same || sender.uid != self.uid {
            return Err(PeerError::NotTheConnectedProcess);
        }
        self.still_the_same()
    }
}

/// The facts of this very binary (the agent's own `nod`), to recognise its command line.
pub fn own_binary(cache: &HashCache) -> Option<Binary> {
    let mut f = File::open("/proc/self/exe").ok()?;
    cache.inspect(&mut f).ok()
}

/// The shared cache, for the broker and its blocking tasks.
pub type SharedCache = Arc<HashCache>;

#[cfg(test)]
mod tests {
    use super::*;

    fn pidfd_of(pid: u32) -> OwnedFd {
        let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap()
    }

    fn me() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    #[test]
    fn start_ticks_of_a_process_stay_the_same() {
        let pid = std::process::id() as i32;
        let t = start_ticks(pid).unwrap();
        assert!(t > 0);
        assert_eq!(start_ticks(pid).unwrap(), t);
        assert!(start_ticks(-1).is_err());
    }

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
    fn flags_interpreters_by_content_under_any_name() {
        let dir = crate::files::test_dir("identity");
        for (name, content, interp) in [
            ("regtool", &b"\x7fELF junk Py_BytesMain more"[..], true),
            ("tool", b"\x7fELF perl_parse", true),
            ("plain", b"\x7fELF nothing to see", false),
        ] {
            let p = dir.join(name);
            fs::write(&p, content).unwrap();
            assert_eq!(
                inspect_path(&p).unwrap().binary.interpreter,
                interp,
                "{name}"
            );
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_mark_across_two_reads_is_found() {
        let dir = crate::files::test_dir("identity");
        let p = dir.join("big");
        let mut content = vec![b'x'; 256 * 1024 - 5];
        content.extend_from_slice(b"Py_BytesMain");
        content.extend(vec![b'y'; 1000]);
        fs::write(&p, &content).unwrap();
        let c = inspect_path(&p).unwrap();
        assert!(c.binary.interpreter);
        assert_eq!(
            c.binary.hash,
            format!("sha256:{}", hex::encode(Sha256::digest(&content)))
        );
        fs::remove_dir_all(dir).unwrap();
    }

    /// Marks that overlap are both found: the nod mark starting on the last byte of an
    /// interpreter's.
    #[test]
    fn overlapping_marks_are_all_found() {
        let dir = crate::files::test_dir("identity");
        let p = dir.join("both");
        let mut content = b"\x7fELF Py_BytesMai".to_vec();
        content.extend_from_slice(&nod_cli_mark_runtime());
        fs::write(&p, &content).unwrap();
        let c = inspect_path(&p).unwrap();
        assert!(c.binary.interpreter && c.binary.nod_cli, "{c:?}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_nod_mark_is_found_and_this_library_does_not_carry_it() {
        // Built at run time: a constant of the mark here would put it in this test binary.
        let mark = nod_cli_mark_runtime();
        assert!(mark.starts_with(b"nod-cli: "));
        let dir = crate::files::test_dir("identity");
        let p = dir.join("nod-copy");
        let mut content = b"\x7fELF ".to_vec();
        content.extend_from_slice(&mark);
        fs::write(&p, &content).unwrap();
        assert!(inspect_path(&p).unwrap().binary.nod_cli);
        // This test binary links the library: it must not look like nod.
        let me = inspect_path(&std::env::current_exe().unwrap()).unwrap();
        assert!(!me.binary.nod_cli);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_script_is_seen_as_one() {
        let dir = crate::files::test_dir("identity");
        let p = dir.join("s.sh");
        fs::write(&p, "#!/bin/sh\necho hi\n").unwrap();
        assert!(inspect_path(&p).unwrap().script);
        fs::remove_dir_all(dir).unwrap();
    }

    /// A child with a clean environment (cargo runs tests with `LD_LIBRARY_PATH` set, which
    /// the judgment refuses).
    fn clean(program: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(program);
        cmd.env_clear().env("PATH", "/usr/bin:/bin");
        cmd
    }

    #[test]
    fn judges_a_process_and_checks_its_messages() {
        let cache = HashCache::default();
        let mut child = clean("sleep").arg("5").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let judged = judge(pidfd_of(child.id()), me(), &cache).unwrap();
        let sleep = fs::read_link(format!("/proc/{}/exe", child.id())).unwrap();
        assert_eq!(judged.binary.hash, hash_path(&sleep).unwrap());
        let sender = Sender {
            pid: child.id() as i32,
            uid: me(),
            pidfd: Some(pidfd_of(child.id())),
        };
        judged.check_sender(&sender).unwrap();
        let me_pid = std::process::id();
        let other = Sender {
            pid: me_pid as i32,
            uid: me(),
            pidfd: Some(pidfd_of(me_pid)),
        };
        assert!(matches!(
            judged.check_sender(&other),
            Err(PeerError::NotTheConnectedProcess)
        ));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(judged.check_sender(&sender).is_err());
    }

    #[test]
    fn a_process_that_execs_after_it_was_judged_is_refused() {
        // `sh -c 'read x; exec sleep 5'`: judged as sh, then it becomes sleep.
        let mut child = clean("sh")
            .args(["-c", "read x; exec sleep 5"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let cache = HashCache::default();
        let judged = judge(pidfd_of(child.id()), me(), &cache).unwrap();
        use std::io::Write as _;
        writeln!(child.stdin.take().unwrap(), "go").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let sender = Sender {
            pid: child.id() as i32,
            uid: me(),
            pidfd: Some(pidfd_of(child.id())),
        };
        assert!(matches!(
            judged.check_sender(&sender),
            Err(PeerError::Execed { .. })
        ));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_dead_process_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = pidfd_of(child.id());
        child.wait().unwrap();
        assert!(matches!(
            judge(fd, me(), &HashCache::default()),
            Err(PeerError::Gone)
        ));
    }

    #[test]
    fn a_process_started_with_ld_preload_is_refused() {
        let mut child = clean("sleep")
            .arg("5")
            .env("LD_PRELOAD", "/nonexistent.so")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let r = judge(pidfd_of(child.id()), me(), &HashCache::default());
        assert!(matches!(r, Err(PeerError::Injected { .. })), "{r:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
