//! What every socket of the agent shares: a cap on connections, accepting without spinning
//! when descriptors run out, and the hang-up watch of an open prompt.
//!
//! The caps come from one budget: the open-files limit, less a reserve for the agent's own
//! files (the audit log, the keystore, approver programs, D-Bus, pidfds), split between the
//! sockets. A flood on one socket then fills only that socket's share: the others, and the
//! agent's own files (a reload of `hosts.toml`), still have descriptors.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::log::event;

/// Descriptors kept back from the sockets for the agent's own use.
const RESERVE: u64 = 128;
/// The most connections one socket holds, however high the limit.
const MAX_PER_SOCKET: usize = 4096;
/// Descriptors one connection may hold: its socket, and a pidfd of its peer (secrets).
const FDS_PER_CONNECTION: u64 = 2;

/// The connection cap of each of `sockets` sockets under an open-files limit of `nofile`.
pub fn per_socket_cap(nofile: u64, sockets: u64) -> usize {
    let usable = nofile.saturating_sub(RESERVE) / FDS_PER_CONNECTION;
    let cap = usable / sockets.max(1);
    usize::try_from(cap)
        .unwrap_or(MAX_PER_SOCKET)
        .clamp(8, MAX_PER_SOCKET)
}

/// The cap for each of the agent's `sockets` sockets under its current open-files limit.
pub fn cap_from_limit(sockets: u64) -> usize {
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    per_socket_cap(nofile, sockets)
}

/// A listening socket with a cap on the connections it holds at once.
#[derive(Debug)]
pub struct Capped {
    listener: UnixListener,
    permits: Arc<Semaphore>,
    name: &'static str,
    /// Connections closed at once because the socket was full, for the log.
    turned_away: AtomicU64,
}

impl Capped {
    pub fn new(listener: UnixListener, cap: usize, name: &'static str) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(cap)),
            name,
            turned_away: AtomicU64::new(0),
        }
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// The next connection, with the permit that counts it. Over the cap a connection is
    /// accepted and closed at once (its peer sees EOF), so the backlog never fills and a
    /// legitimate client that comes after the flood is served. Out of descriptors, it waits a
    /// little instead of spinning.
    pub async fn accept(&self) -> (UnixStream, OwnedSemaphorePermit) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => match Arc::clone(&self.permits).try_acquire_owned() {
                    Ok(permit) => return (stream, permit),
                    Err(_) => {
                        drop(stream);
                        let n = self.turned_away.fetch_add(1, Ordering::Relaxed);
                        if n.is_power_of_two() || n == 0 {
                            event!(
                                "{} socket: full, closed {} connection(s) at once so far",
                                self.name,
                                n + 1
                            );
                        }
                    }
                },
                Err(e) => {
                    event!("{} socket: accept failed: {e}", self.name);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Connections held now.
    pub fn open(&self, cap: usize) -> usize {
        cap.saturating_sub(self.permits.available_permits())
    }
}

/// Resolves once the peer has closed its end completely (`POLLHUP`). A half-close after
/// sending a request is not "gone": the peer may still be waiting for the reply. Checked a few
/// times a second while a prompt is open, so a cancelled `sudo` or an interrupted `ssh` takes
/// its prompt down.
pub async fn hung_up(conn: &impl AsFd) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut fds = [PollFd::new(conn.as_fd(), PollFlags::empty())];
        if poll(&mut fds, PollTimeout::ZERO).is_ok() {
            let revents = fds[0].revents().unwrap_or(PollFlags::empty());
            if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_leave_the_reserve_and_share_the_rest() {
        assert_eq!(per_socket_cap(1024, 3), (1024 - 128) / 2 / 3);
        assert_eq!(per_socket_cap(1_048_576, 3), MAX_PER_SOCKET);
        assert_eq!(per_socket_cap(100, 3), 8);
    }
}
