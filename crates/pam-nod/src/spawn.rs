//! fork + fexecve of the helper, and a deadline wait on a pidfd.
//!
//! Everything the child needs (argv, envp, fds, signal sets) is built before `fork`, because
//! the host program may be multi-threaded: between `fork` and `exec` the child may only make
//! async-signal-safe calls — no allocation, no locks, no Rust std I/O.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::time::{Duration, Instant};

use libc::{c_char, c_int, c_uint, pid_t};

/// How a helper run ended, or why it never ran. [`crate::pam_result`] maps it to PAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The helper exited with this code.
    Exited(i32),
    /// The helper was killed by this signal (not by us).
    Signaled(i32),
    /// The helper was still running at the deadline and was killed.
    TimedOut,
    /// The module arguments were wrong.
    BadArgs,
    /// PAM has no user to authenticate.
    NoUser,
    /// The helper is missing or failed the ownership/mode/symlink/ELF checks.
    HelperUnsafe,
    /// fork, pidfd, poll or waitpid failed.
    SpawnFailed,
}

/// Linux signals are 1..=64.
const NSIG: c_int = 65;

/// Everything the child touches, prepared before `fork`.
struct ChildPlan {
    helper_fd: RawFd,
    devnull_fd: RawFd,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    /// Upper bound for the close loop when `close_range` is unavailable.
    max_fd: c_int,
    default_action: libc::sigaction,
    empty_set: libc::sigset_t,
}

fn cstrings(items: &[&[u8]]) -> io::Result<Vec<CString>> {
    items
        .iter()
        .map(|b| CString::new(*b).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e)))
        .collect()
}

fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

fn last_error<T>(what: &str) -> io::Result<T> {
    let e = io::Error::last_os_error();
    Err(io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is a plain C bit array, for which all-zero is a valid value; sigemptyset
    // then initialises it as the API requires.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    set
}

fn default_action() -> libc::sigaction {
    // SAFETY: struct sigaction is plain C data; all-zero is a valid value (SIG_DFL handler,
    // no flags, no restorer).
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = libc::SIG_DFL;
    act.sa_mask = empty_sigset();
    act
}

/// Restores the SIGCHLD disposition on drop.
struct SigchldGuard(libc::sigaction);

impl SigchldGuard {
    /// Sets SIGCHLD to SIG_DFL while the helper runs: if the host ignores SIGCHLD the kernel
    /// would reap the helper itself (no exit status, and its pid could be reused under us), and
    /// a host SIGCHLD handler calling waitpid(-1) could steal the status. pam_unix does the
    /// same around unix_chkpwd.
    fn set_default() -> io::Result<Self> {
        let dfl = default_action();
        // SAFETY: an all-zero sigaction is valid storage for the old action (see above).
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers point to valid sigaction structs for the duration of the call.
        if unsafe { libc::sigaction(libc::SIGCHLD, &dfl, &mut old) } != 0 {
            return last_error("sigaction(SIGCHLD)");
        }
        Ok(Self(old))
    }
}

impl Drop for SigchldGuard {
    fn drop(&mut self) {
        // SAFETY: restores the action saved by `set_default`; the pointer is valid.
        unsafe { libc::sigaction(libc::SIGCHLD, &self.0, ptr::null_mut()) };
    }
}

/// Runs the helper through `helper` (an fd checked by nod-fscheck) with exactly `argv` and
/// `envp`, and waits at most `wait` for it.
pub(crate) fn run(
    helper: &File,
    argv: &[Vec<u8>],
    envp: &[&[u8]],
    wait: Duration,
) -> io::Result<Outcome> {
    let argv_refs: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
    let argv_c = cstrings(&argv_refs)?;
    let envp_c = cstrings(envp)?;
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| io::Error::new(e.kind(), format!("open /dev/null: {e}")))?;
    let plan = ChildPlan {
        helper_fd: helper.as_raw_fd(),
        devnull_fd: devnull.as_raw_fd(),
        argv: null_terminated(&argv_c),
        envp: null_terminated(&envp_c),
        max_fd: max_fd(),
        default_action: default_action(),
        empty_set: empty_sigset(),
    };

    let _sigchld = SigchldGuard::set_default()?;
    let pid = fork_child(&plan)?;
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // SAFETY: `pid` is our unreaped child, so the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = reap(pid);
            return Err(e);
        }
    };
    let timed_out = match wait_readable(&pidfd, wait) {
        Ok(exited) => !exited,
        Err(e) => {
            kill(&pidfd, pid);
            let _ = reap(pid);
            return Err(e);
        }
    };
    if timed_out {
        kill(&pidfd, pid);
        reap(pid)?;
        return Ok(Outcome::TimedOut);
    }
    let status = reap(pid)?;
    if libc::WIFEXITED(status) {
        Ok(Outcome::Exited(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Ok(Outcome::Signaled(libc::WTERMSIG(status)))
    } else {
        Err(io::Error::other(format!(
            "unexpected wait status {status:#x}"
        )))
    }
    // `argv_c`, `envp_c` and `devnull` live until here, past the child's exec.
}

fn max_fd() -> c_int {
    // SAFETY: an all-zero rlimit is a valid value; getrlimit only writes into it.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    if ok {
        c_int::try_from(lim.rlim_cur.min(65_536)).unwrap_or(65_536)
    } else {
        65_536
    }
}

/// Forks with all signals blocked, so no host signal handler runs in the child before it has
/// reset the dispositions.
fn fork_child(plan: &ChildPlan) -> io::Result<pid_t> {
    // SAFETY: all-zero is valid storage for a sigset_t; sigfillset initialises it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` is a valid, writable sigset_t.
    unsafe { libc::sigfillset(&mut all) };
    let mut old = empty_sigset();
    // SAFETY: both pointers are valid sigset_t for the duration of the call.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: the child only runs `exec_child`, which makes async-signal-safe calls on data
    // prepared before the fork and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the freshly forked child; `plan` was fully built before the fork.
        unsafe { exec_child(plan) }
    }
    let fork_err = io::Error::last_os_error();
    // SAFETY: restores the mask saved above; the pointer is valid.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
    if pid < 0 {
        return Err(io::Error::new(fork_err.kind(), format!("fork: {fork_err}")));
    }
    Ok(pid)
}

/// The child side: /dev/null on 0/1/2, every other fd closed, clean signal state, fexecve.
///
/// # Safety
/// Must only be called in the child right after `fork`. It makes only async-signal-safe calls
/// (fcntl, dup2, close_range/close, chdir, sigaction, sigprocmask, fexecve, _exit).
unsafe fn exec_child(plan: &ChildPlan) -> ! {
    // SAFETY: every call below is async-signal-safe and only reads memory prepared before the
    // fork (`plan`), which the child's copy of the address space still holds.
    unsafe {
        // Move both fds to 3 or above first: if the host had 0/1/2 closed, one of them could
        // sit at 0..=2 and be overwritten by the dup2 calls. F_DUPFD_CLOEXEC keeps the helper
        // fd close-on-exec: fexecve on an ELF binary does not need the fd after the kernel has
        // opened it, and the helper must not inherit a descriptor of its own binary.
        let helper = libc::fcntl(plan.helper_fd, libc::F_DUPFD_CLOEXEC, 3);
        let devnull = libc::fcntl(plan.devnull_fd, libc::F_DUPFD_CLOEXEC, 3);
        if helper < 0 || devnull < 0 {
            libc::_exit(127);
        }
        // dup2 clears close-on-exec on 0/1/2, so the helper gets them.
        for target in 0..3 {
            if libc::dup2(devnull, target) < 0 {
                libc::_exit(127);
            }
        }
        // Close everything from 3 up except the helper fd (which closes on exec anyway).
        close_from(3, helper, plan.max_fd);
        if libc::chdir(c"/".as_ptr()) != 0 {
            libc::_exit(127);
        }
        for sig in 1..NSIG {
            // Fails harmlessly for SIGKILL, SIGSTOP and glibc's internal signals.
            libc::sigaction(sig, &plan.default_action, ptr::null_mut());
        }
        libc::sigprocmask(libc::SIG_SETMASK, &plan.empty_set, ptr::null_mut());
        libc::fexecve(helper, plan.argv.as_ptr(), plan.envp.as_ptr());
        libc::_exit(127)
    }
}

/// Closes every fd >= `first` except `keep` (which must be >= `first`).
///
/// # Safety
/// Async-signal-safe; closes fds the caller may still hold, so only for the forked child.
unsafe fn close_from(first: c_int, keep: c_int, max_fd: c_int) {
    // SAFETY: close_range/close on integer fds have no memory-safety preconditions.
    unsafe {
        let range = |lo: c_int, hi: c_uint| {
            libc::syscall(libc::SYS_close_range, lo as c_uint, hi, 0 as c_uint) == 0
        };
        let ok =
            (keep == first || range(first, (keep - 1) as c_uint)) && range(keep + 1, c_uint::MAX);
        if !ok {
            // Kernels before 5.9 lack close_range.
            for fd in first..max_fd {
                if fd != keep {
                    libc::close(fd);
                }
            }
        }
    }
}

fn pidfd_open(pid: pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as c_uint) };
    if fd < 0 {
        return last_error("pidfd_open (needs Linux 5.3 or later)");
    }
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until the pidfd is readable (the child exited) or `wait` has passed. Returns whether
/// the child exited. This is one poll; it only loops to resume after a signal interrupted it.
fn wait_readable(pidfd: &OwnedFd, wait: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up, so poll never returns a hair early and turns into a busy loop.
        let ms = c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(c_int::MAX);
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd and the count is 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        match rc {
            1.. => return Ok(true),
            0 if left.is_zero() || Instant::now() >= deadline => return Ok(false),
            0 => continue,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(io::Error::new(e.kind(), format!("poll(pidfd): {e}")));
                }
            }
        }
    }
}

fn kill(pidfd: &OwnedFd, pid: pid_t) {
    // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            ptr::null::<libc::siginfo_t>(),
            0 as c_uint,
        )
    };
    if rc != 0 {
        // SAFETY: `pid` is our unreaped child, so it still names the helper.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Waits for `pid` and returns its wait status.
fn reap(pid: pid_t) -> io::Result<c_int> {
    loop {
        let mut status: c_int = 0;
        // SAFETY: `status` is a valid, writable int.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(io::Error::new(e.kind(), format!("waitpid: {e}")));
        }
    }
}
