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
        what: "cannot create a socket",
        detail: e.desc().to_owned(),
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
