//! Who may talk to an SSH agent socket: the agent's own user, and root, as OpenSSH's agent
//! checks (`getpeereid` in `handle_socket_read`). The socket is 0600 in a 0700 directory, but
//! a user may move it, widen its mode or forward it (`-a /shared/path`, a `chmod 666` for a
//! container), and file permissions are not the only way to reach a socket (a descriptor can
//! be passed on). Whoever connects is judged by the kernel's word (`SO_PEERCRED`), and anyone
//! else is closed before a byte is read.

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::getuid;
use tokio::net::UnixStream;

/// A connection that may not use the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("uid {uid} (pid {pid}) is neither the agent's user (uid {agent}) nor root")]
    OtherUser { uid: u32, pid: i32, agent: u32 },
    #[error("cannot read the peer's credentials: {0}")]
    Unknown(String),
}

/// Whether a peer of `uid` may use an agent running as `agent`.
pub fn allowed(uid: u32, agent: u32) -> bool {
    uid == agent || uid == 0
}

/// Checks the peer of a freshly accepted connection.
pub fn check(stream: &UnixStream) -> Result<(), PeerError> {
    let cred =
        getsockopt(stream, PeerCredentials).map_err(|e| PeerError::Unknown(e.to_string()))?;
    let agent = getuid().as_raw();
    if allowed(cred.uid(), agent) {
        Ok(())
    } else {
        Err(PeerError::OtherUser {
            uid: cred.uid(),
            pid: cred.pid(),
            agent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_user_or_root() {
        assert!(allowed(1000, 1000));
        assert!(allowed(0, 1000));
        assert!(allowed(0, 0));
        assert!(!allowed(1001, 1000));
        assert!(!allowed(65534, 0));
    }

    #[tokio::test]
    async fn a_connection_of_our_own_passes() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(check(&a), Ok(()));
    }
}
