//! What every socket of the agent shares: a cap on connections, room for newcomers when the
//! cap is reached, a budget for partial messages, memory handed back after a flood, and the
//! hang-up watch of an open prompt.
//!
//! - **Caps** come from one budget: the open-files limit, less a reserve for the agent's own
//!   files (the audit log, the keystore, approver programs, D-Bus, pidfds), split between the
//!   sockets. A flood on one socket fills only that socket's share: the others, and the
//!   agent's own files (a re-read of `hosts.toml`), still have descriptors.
//! - **Room for newcomers**: at the cap, the connection idle the longest (for a quarter of a second or
//!   more, waiting for its next message) is closed to make room, so a flood of idle
//!   connections cannot lock a legitimate client out; a flood must keep every connection busy,
//!   and the deadlines of each socket bound how long a message may take.
//! - **Partial messages** are held in buffers that grow as bytes arrive. Each connection may
//!   hold [`FREE_PER_CONNECTION`] bytes; beyond that, bytes count against the socket's
//!   [`IN_FLIGHT_BUDGET`], and a connection that would overrun it is closed.
//! - **Memory** freed when a flood ends is handed back to the system ([`crate::sys`]).

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::lock;
use crate::log::event;
use crate::now_ms;

/// Descriptors kept back from the sockets for the agent's own use.
const RESERVE: u64 = 128;
/// The most connections one socket holds, however high the limit.
const MAX_PER_SOCKET: usize = 4096;
/// Descriptors one connection may hold: its socket, and a pidfd of its peer (secrets).
const FDS_PER_CONNECTION: u64 = 2;
/// Bytes of a partial message any connection may hold, whatever the budget says: every
/// legitimate request of the three protocols fits.
pub const FREE_PER_CONNECTION: usize = 8 * 1024;
/// Bytes of partial messages beyond the free allowance that one socket's connections may hold
/// together.
pub const IN_FLIGHT_BUDGET: usize = 8 * 1024 * 1024;
/// How long a connection must have waited for its next message to be closed for a newcomer
/// (a client sends its message as soon as it has connected).
const EVICTABLE_AFTER_MS: u64 = 250;
/// Connections that must have closed since the last trim before freed memory is handed back.
const TRIM_AFTER: usize = 256;

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

/// Bytes of partial messages one socket holds beyond the free allowances.
#[derive(Debug)]
struct InFlight {
    held: AtomicUsize,
    budget: usize,
}

/// One connection's share of the in-flight budget.
#[derive(Debug)]
pub struct Held {
    pool: Arc<InFlight>,
    charged: usize,
}

impl Held {
    /// Accounts for the connection now holding `total` bytes of a partial message. False when
    /// that is over its free allowance and the socket's budget is spent: close the
    /// connection.
    pub fn set(&mut self, total: usize) -> bool {
        let want = total.saturating_sub(FREE_PER_CONNECTION);
        if want > self.charged {
            let add = want - self.charged;
            let before = self.pool.held.fetch_add(add, Ordering::AcqRel);
            if before + add > self.pool.budget {
                self.pool.held.fetch_sub(add, Ordering::AcqRel);
                return false;
            }
        } else {
            self.pool
                .held
                .fetch_sub(self.charged - want, Ordering::AcqRel);
        }
        self.charged = want;
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.pool.held.fetch_sub(self.charged, Ordering::AcqRel);
    }
}

/// One live connection as its socket sees it.
#[derive(Debug, Default)]
struct Slot {
    /// When it started waiting for its next message; 0 while a message is in flight.
    idle_since_ms: AtomicU64,
    evicted: AtomicBool,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Registry {
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next: AtomicU64,
    /// Most connections open at once since memory was last handed back.
    peak: AtomicUsize,
}

impl Registry {
    /// The connection idle the longest, if any has waited long enough.
    fn evict_one(&self) -> bool {
        let now = now_ms();
        let slots = lock(&self.slots);
        let victim = slots
            .values()
            .filter(|s| !s.evicted.load(Ordering::Acquire))
            .filter_map(|s| {
                let since = s.idle_since_ms.load(Ordering::Acquire);
                (since != 0 && now.saturating_sub(since) >= EVICTABLE_AFTER_MS)
                    .then_some((since, s))
            })
            .min_by_key(|(since, _)| *since);
        match victim {
            Some((_, slot)) => {
                slot.evicted.store(true, Ordering::Release);
                slot.notify.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A listening socket with a cap on the connections it holds at once.
#[derive(Debug)]
pub struct Capped {
    listener: UnixListener,
    permits: Arc<Semaphore>,
    name: &'static str,
    registry: Arc<Registry>,
    in_flight: Arc<InFlight>,
    /// Connections closed at once because the socket was full, for the log.
    turned_away: AtomicU64,
}

/// One accepted connection: its place under the cap, its share of the in-flight budget.
#[derive(Debug)]
pub struct Conn {
    _permit: OwnedSemaphorePermit,
    registry: Arc<Registry>,
    id: u64,
    slot: Arc<Slot>,
    pub held: Held,
}

impl Conn {
    /// The connection waits for its next message: it may be closed to make room.
    pub fn idle(&self) {
        self.slot
            .idle_since_ms
            .store(now_ms().max(1), Ordering::Release);
    }

    /// A message is in flight or being answered.
    pub fn busy(&self) {
        self.slot.idle_since_ms.store(0, Ordering::Release);
    }

    /// Resolves when the socket closes this connection to make room for a newcomer.
    pub async fn evicted(&self) {
        self.eviction().await;
    }

    /// The same, as a future that does not borrow the connection (so that its in-flight
    /// share can be used meanwhile).
    pub fn eviction(&self) -> impl std::future::Future<Output = ()> + use<> {
        let slot = Arc::clone(&self.slot);
        async move {
            loop {
                if slot.evicted.load(Ordering::Acquire) {
                    return;
                }
                slot.notify.notified().await;
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let open = {
            let mut slots = lock(&self.registry.slots);
            slots.remove(&self.id);
            slots.len()
        };
        // After a flood, give the freed buffers back rather than keep them resident.
        let peak = self.registry.peak.load(Ordering::Acquire);
        if peak >= TRIM_AFTER && open <= peak / 4 {
            self.registry.peak.store(open, Ordering::Release);
            crate::sys::trim_memory();
        }
    }
}

impl Capped {
    pub fn new(listener: UnixListener, cap: usize, name: &'static str) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(cap)),
            name,
            registry: Arc::new(Registry::default()),
            in_flight: Arc::new(InFlight {
                held: AtomicUsize::new(0),
                budget: IN_FLIGHT_BUDGET,
            }),
            turned_away: AtomicU64::new(0),
        }
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// A permit now, or once a connection closed to make room has gone.
    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
            return Some(p);
        }
        if !self.registry.evict_one() {
            return None;
        }
        tokio::time::timeout(
            Duration::from_millis(500),
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        .ok()
        .and_then(Result::ok)
    }

    /// The next connection. At the cap the connection idle the longest is closed to make
    /// room; with none to close, the newcomer is accepted and closed at once (its peer sees
    /// EOF), so the backlog never fills. Out of descriptors, it waits a little instead of
    /// spinning.
    pub async fn accept(&self) -> (UnixStream, Conn) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    event!("{} socket: accept failed: {e}", self.name);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(permit) = self.permit().await else {
                drop(stream);
                let n = self.turned_away.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    event!(
                        "{} socket: full of busy connections; closed {n} new one(s) at once so far",
                        self.name
                    );
                }
                continue;
            };
            let id = self.registry.next.fetch_add(1, Ordering::Relaxed);
            let slot = Arc::new(Slot::default());
            let open = {
                let mut slots = lock(&self.registry.slots);
                slots.insert(id, Arc::clone(&slot));
                slots.len()
            };
            self.registry.peak.fetch_max(open, Ordering::AcqRel);
            let conn = Conn {
                _permit: permit,
                registry: Arc::clone(&self.registry),
                id,
                slot,
                held: Held {
                    pool: Arc::clone(&self.in_flight),
                    charged: 0,
                },
            };
            return (stream, conn);
        }
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

    #[test]
    fn partial_messages_beyond_the_allowance_share_one_budget() {
        let pool = Arc::new(InFlight {
            held: AtomicUsize::new(0),
            budget: 100_000,
        });
        let held = |pool: &Arc<InFlight>| Held {
            pool: Arc::clone(pool),
            charged: 0,
        };
        let (mut a, mut b) = (held(&pool), held(&pool));
        assert!(a.set(FREE_PER_CONNECTION), "the allowance is free");
        assert_eq!(pool.held.load(Ordering::Acquire), 0);
        assert!(a.set(FREE_PER_CONNECTION + 60_000));
        assert!(!b.set(FREE_PER_CONNECTION + 60_000), "over the budget");
        assert!(b.set(FREE_PER_CONNECTION + 40_000));
        a.set(0);
        drop(b);
        assert_eq!(pool.held.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_makes_room() {
        let dir = crate::files::test_dir("capped");
        let path = dir.join("s.sock");
        let capped = Capped::new(UnixListener::bind(&path).unwrap(), 2, "test");
        let _c1 = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (_s1, first) = capped.accept().await;
        let _c2 = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (_s2, second) = capped.accept().await;
        first.idle();
        second.busy();
        let _c3 = std::os::unix::net::UnixStream::connect(&path).unwrap();
        // The first has waited for its next message for a while; the second is busy.
        first
            .slot
            .idle_since_ms
            .store(now_ms() - 2 * EVICTABLE_AFTER_MS, Ordering::Release);
        let accepting = capped.accept();
        tokio::pin!(accepting);
        tokio::select! {
            () = first.evicted() => {}
            _ = &mut accepting => panic!("accepted before anyone made room"),
        }
        drop(first);
        let (_s3, _third) = accepting.await;
        assert!(!second.slot.evicted.load(Ordering::Acquire));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
