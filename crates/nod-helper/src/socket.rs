//! The agent socket: who may own it, and one exchange under one absolute deadline.
//!
//! The forwarded socket is created by the user's own sshd session, so it must be a socket owned
//! by the PAM user. Anything else at that path (a symlink, a file, another user's socket) could
//! let someone else answer for them. After connecting, the peer's kernel credentials are
//! checked too, which closes the window between `lstat` and `connect`.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, UnixAddr, connect, getsockopt, setsockopt, socket, sockopt,
};
use nix::sys::stat::{SFlag, lstat};
use nix::sys::time::TimeVal;

use crate::config::PamUser;
use crate::error::HelperError;

/// Checks that `path` is a Unix socket owned by `user`, without following a symlink.
pub fn check_socket(path: &Path, user: &PamUser) -> Result<(), HelperError> {
    let unsafe_socket = |problem: String| HelperError::UnsafeSocket {
        path: path.to_owned(),
        problem,
    };
    let st = match lstat(path) {
        Ok(st) => st,
        Err(Errno::ENOENT) => {
            return Err(HelperError::NoSocket {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(unsafe_socket(format!("cannot inspect it ({})", e.desc()))),
    };
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if kind == SFlag::S_IFLNK {
        return Err(unsafe_socket("it is a symlink".into()));
    }
    if kind != SFlag::S_IFSOCK {
        return Err(unsafe_socket("it is not a socket".into()));
    }
    if st.st_uid != user.uid.as_raw() {
        return Err(unsafe_socket(format!(
            "it is owned by uid {}, not by {} (uid {})",
            st.st_uid, user.name, user.uid
        )));
    }
    Ok(())
}

/// One absolute point in time by which the whole exchange must be over.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    timeout_ms: u64,
}

impl Deadline {
    /// `timeout_ms` after `start`.
    pub fn new(start: Instant, timeout_ms: u64) -> Self {
        Self {
            at: start + Duration::from_millis(timeout_ms),
            timeout_ms,
        }
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// Time left, or `TimedOut` once there is none. Never zero, because a zero socket timeout
    /// means "block forever".
    pub fn remaining(&self) -> io::Result<Duration> {
        self.at
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))
    }
}

fn timeval(d: Duration) -> TimeVal {
    // At least one microsecond: a zero timeval disables the timeout.
    let micros = d.as_micros().clamp(1, i64::MAX as u128) as i64;
    TimeVal::new(micros / 1_000_000, micros % 1_000_000)
}

/// Connects to the agent socket before the deadline and checks who is on the other end.
///
/// On Linux a blocking `connect` on a Unix socket waits (for a full backlog) at most
/// `SO_SNDTIMEO`, so setting it first keeps connect inside the deadline.
pub fn connect_agent(
    path: &Path,
    user: &PamUser,
    deadline: &Deadline,
) -> Result<UnixStream, HelperError> {
    let unreachable = |kind: io::ErrorKind| HelperError::AgentUnreachable {
        path: path.to_owned(),
        kind,
    };
    let timed_out = || HelperError::AgentTimedOut {
        timeout_ms: deadline.timeout_ms(),
    };
    let system = |e: Errno| HelperError::System {
        what: "cannot use a Unix socket",
        detail: e.desc().to_owned(),
        fix: "check the helper's limits (open files, memory)",
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(system)?;
    let left = deadline.remaining().map_err(|_| timed_out())?;
    setsockopt(&fd, sockopt::SendTimeout, &timeval(left)).map_err(system)?;
    let addr = UnixAddr::new(path).map_err(|_| HelperError::UnsafeSocket {
        path: path.to_owned(),
        problem: "the path is too long for a Unix socket".into(),
    })?;
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(Errno::EAGAIN | Errno::ETIMEDOUT | Errno::EINPROGRESS) => return Err(timed_out()),
        Err(e) => return Err(unreachable(io::Error::from(e).kind())),
    }
    let stream = UnixStream::from(fd);
    let peer = getsockopt(&stream, sockopt::PeerCredentials).map_err(system)?;
    // The user's sshd session (or their own agent) holds the listening end; root may too.
    if peer.uid() != user.uid.as_raw() && peer.uid() != 0 {
        return Err(HelperError::UnsafeSocket {
            path: path.to_owned(),
            problem: format!(
                "it is served by uid {}, not by {} (uid {})",
                peer.uid(),
                user.name,
                user.uid
            ),
        });
    }
    Ok(stream)
}

/// What is behind a forwarded socket of the right owner and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Something accepted and waits for a request: an `ssh -R` session (and, behind it, the
    /// agent) or the agent itself.
    Live,
    /// Nothing listens: the session that made the socket has gone, or another took the path
    /// over and left. The file is stale.
    Refused,
    /// The connection was accepted and closed before anything was sent: sshd's forward is up,
    /// but nothing answers at the workstation end.
    ClosedAtOnce,
    /// Bytes arrived before any request, which a protocol v1 agent never sends.
    Talks,
}

/// Connects to `path` and waits up to `wait` for the far end to hang up, without sending
/// anything: the agent only asks the person once it has a signed request, so no prompt
/// appears. Through sshd, a forward whose workstation end is gone hangs up after one round
/// trip; a longer trip than `wait` reads as live.
pub fn probe(path: &Path, user: &PamUser, wait: Duration) -> Result<Liveness, HelperError> {
    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    let deadline = Deadline::new(Instant::now(), wait_ms);
    let stream = match connect_agent(path, user, &deadline) {
        Ok(stream) => stream,
        Err(HelperError::AgentUnreachable {
            kind: io::ErrorKind::ConnectionRefused,
            ..
        }) => return Ok(Liveness::Refused),
        Err(e) => return Err(e),
    };
    let mut io = DeadlineStream::new(&stream, deadline);
    let mut byte = [0u8; 1];
    match io.read(&mut byte) {
        Ok(0) => Ok(Liveness::ClosedAtOnce),
        Ok(_) => Ok(Liveness::Talks),
        Err(e) => match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(Liveness::Live),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                Ok(Liveness::ClosedAtOnce)
            }
            kind => Err(HelperError::AgentUnreachable {
                path: path.to_owned(),
                kind,
            }),
        },
    }
}

/// A stream whose every read and write gets the time left until the deadline, recomputed just
/// before the call, so several short reads cannot add up past it.
#[derive(Debug)]
pub struct DeadlineStream<'a> {
    stream: &'a UnixStream,
    deadline: Deadline,
}

impl<'a> DeadlineStream<'a> {
    pub fn new(stream: &'a UnixStream, deadline: Deadline) -> Self {
        Self { stream, deadline }
    }
}

impl Read for DeadlineStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream
            .set_read_timeout(Some(self.deadline.remaining()?))?;
        (&mut &*self.stream).read(buf)
    }
}

impl Write for DeadlineStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream
            .set_write_timeout(Some(self.deadline.remaining()?))?;
        (&mut &*self.stream).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_deadline_has_no_time_left() {
        let d = Deadline::new(Instant::now(), 0);
        assert_eq!(d.remaining().unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(Deadline::new(Instant::now(), 60_000).remaining().is_ok());
    }

    #[test]
    fn timeval_is_never_zero() {
        let tv = timeval(Duration::from_nanos(1));
        assert_eq!((tv.tv_sec(), tv.tv_usec()), (0, 1));
        let tv = timeval(Duration::from_millis(1500));
        assert_eq!((tv.tv_sec(), tv.tv_usec()), (1, 500_000));
    }

    #[test]
    fn probe_tells_a_stale_socket_a_hung_up_forward_and_a_waiting_listener_apart() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("nod-probe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let user = PamUser {
            name: "me".into(),
            uid: nix::unistd::getuid(),
        };
        let wait = Duration::from_millis(300);
        let path = dir.join("s.sock");

        // A listener that is gone leaves the file: refused.
        drop(UnixListener::bind(&path).unwrap());
        assert_eq!(probe(&path, &user, wait).unwrap(), Liveness::Refused);

        // Accepted and closed at once, as sshd does when the workstation end is gone.
        std::fs::remove_file(&path).unwrap();
        let listener = UnixListener::bind(&path).unwrap();
        let closer = std::thread::spawn(move || drop(listener.accept().unwrap()));
        assert_eq!(probe(&path, &user, wait).unwrap(), Liveness::ClosedAtOnce);
        closer.join().unwrap();

        // Accepted and waiting for a request: live.
        std::fs::remove_file(&path).unwrap();
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(probe(&path, &user, wait).unwrap(), Liveness::Live);
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_socket_is_unavailable() {
        let user = PamUser {
            name: "root".into(),
            uid: nix::unistd::Uid::from_raw(0),
        };
        let e = check_socket(Path::new("/nonexistent-nod-dir/agent.sock"), &user).unwrap_err();
        assert_eq!(e.exit_code(), 10, "{e}");
    }

    #[test]
    fn regular_file_is_not_a_socket() {
        let user = PamUser {
            name: "x".into(),
            uid: nix::unistd::getuid(),
        };
        let e = check_socket(Path::new("/proc/self/status"), &user).unwrap_err();
        assert_eq!(e.exit_code(), 31, "{e}");
    }
}
