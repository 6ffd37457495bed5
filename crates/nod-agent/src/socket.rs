//! What every socket of the agent shares.

use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

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
