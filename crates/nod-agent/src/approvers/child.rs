//! What the `askpass` and `command` approvers share: the program runs in its own process
//! group, and the whole group is killed when the answer stops mattering (deadline, agent
//! shutdown, helper gone) before the program exits, so a `sh -c` wrapper or a dialog it opened
//! cannot be left behind.

use std::future::Future;
use std::io;
use std::process::ExitStatus;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdin, Command};
use tokio::time::Instant;

use super::Outcome;

/// A child in its own process group; dropping it before it was reaped kills the group.
pub(super) struct GroupChild {
    child: Child,
    reaped: bool,
}

impl GroupChild {
    /// Spawns `cmd` as the leader of a new process group.
    pub(super) fn spawn(cmd: &mut Command) -> io::Result<Self> {
        let child = cmd.process_group(0).kill_on_drop(true).spawn()?;
        Ok(Self {
            child,
            reaped: false,
        })
    }

    pub(super) fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    pub(super) fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Waits for the program; once reaped its pid may be reused, so it is never signalled.
    pub(super) async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await;
        self.reaped = true;
        status
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // Not reaped yet, so the pid (= the group id) cannot have been reused.
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// `asking` until `deadline`; past it the program is dropped (its group killed), `late` says
/// so in the log, and the answer is [`Outcome::Failed`].
pub(super) async fn by_deadline(
    deadline: Instant,
    asking: impl Future<Output = Outcome>,
    late: impl FnOnce(),
) -> Outcome {
    match tokio::time::timeout_at(deadline, asking).await {
        Ok(outcome) => outcome,
        Err(_) => {
            late();
            Outcome::Failed
        }
    }
}
