//! The `tty` approver: the agent's controlling terminal (`/dev/tty`) shows the prompt and reads
//! `y`/`N`. Anything but `y`/`yes` is no; end of input (Ctrl-D) is cancel; no terminal is
//! `Unavailable`.
//!
//! The terminal is opened non-blocking and watched with `poll(2)` on a blocking-pool thread
//! that checks a cancel flag every [`TICK`]. A prompt that is abandoned (deadline, helper gone,
//! shutdown) therefore stops reading at once: no thread is left blocked in `read`, waiting to
//! swallow the answer meant for the next prompt. Typing that happened before the prompt
//! appeared is discarded, so a stray `y` typed earlier cannot approve it.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::time::Instant;

use super::{ApprovalFuture, Approver, Outcome, Prompt};
use crate::log::event;

/// Longest answer line read; a longer one is not a `y`.
const MAX_ANSWER: usize = 64;

/// How often the terminal thread looks at the cancel flag and the deadline.
const TICK: Duration = Duration::from_millis(100);

/// Asks on the controlling terminal.
#[derive(Debug, Clone, Default)]
pub struct TtyApprover {
    _private: (),
}

impl TtyApprover {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Parses the person's answer: only an explicit yes approves.
pub fn parse_answer(line: &[u8]) -> Outcome {
    let answer = String::from_utf8_lossy(line).trim().to_ascii_lowercase();
    match answer.as_str() {
        "y" | "yes" => Outcome::Approved,
        _ => Outcome::Denied,
    }
}

/// Why the terminal conversation stopped without an answer.
enum Stop {
    Cancelled,
    TimedOut,
    Io(std::io::Error),
}

/// Waits until `tty` is ready for `flags`, the deadline passes or `cancel` is set.
fn wait_for(
    tty: &File,
    flags: PollFlags,
    cancel: &AtomicBool,
    deadline: std::time::Instant,
) -> Result<(), Stop> {
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(Stop::Cancelled);
        }
        if std::time::Instant::now() >= deadline {
            return Err(Stop::TimedOut);
        }
        let mut fds = [PollFd::new(tty.as_fd(), flags)];
        match poll(&mut fds, PollTimeout::from(TICK.as_millis() as u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(Stop::Io(e.into())),
        }
    }
}

fn write_all(
    mut tty: &File,
    mut bytes: &[u8],
    cancel: &AtomicBool,
    deadline: std::time::Instant,
) -> Result<(), Stop> {
    while !bytes.is_empty() {
        match tty.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                wait_for(tty, PollFlags::POLLOUT, cancel, deadline)?;
            }
            Err(e) => return Err(Stop::Io(e)),
        }
    }
    Ok(())
}

/// Throws away input typed before the prompt was shown.
fn discard_pending_input(mut tty: &File) {
    let mut buf = [0u8; 256];
    while let Ok(n) = tty.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

fn read_answer(
    mut tty: &File,
    cancel: &AtomicBool,
    deadline: std::time::Instant,
) -> Result<Outcome, Stop> {
    let mut line = Vec::new();
    let mut buf = [0u8; MAX_ANSWER];
    loop {
        wait_for(tty, PollFlags::POLLIN, cancel, deadline)?;
        match tty.read(&mut buf) {
            Ok(0) => return Ok(Outcome::Cancelled),
            Ok(n) => {
                line.extend_from_slice(&buf[..n]);
                if let Some(end) = line.iter().position(|&b| b == b'\n') {
                    return Ok(parse_answer(&line[..end]));
                }
                if line.len() > MAX_ANSWER {
                    return Ok(Outcome::Denied);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {}
            Err(e) => return Err(Stop::Io(e)),
        }
    }
}

/// The whole conversation, on a blocking-pool thread.
fn converse(
    tty: File,
    question: String,
    cancel: &AtomicBool,
    deadline: std::time::Instant,
) -> Outcome {
    discard_pending_input(&tty);
    let result = write_all(&tty, question.as_bytes(), cancel, deadline)
        .and_then(|()| read_answer(&tty, cancel, deadline));
    let (outcome, note) = match result {
        Ok(Outcome::Approved) => (Outcome::Approved, "approved"),
        Ok(Outcome::Cancelled) => (Outcome::Cancelled, "cancelled"),
        Ok(other) => (other, "denied"),
        Err(Stop::Cancelled) => (Outcome::Cancelled, "withdrawn"),
        Err(Stop::TimedOut) => (Outcome::Cancelled, "no answer in time"),
        Err(Stop::Io(e)) => {
            event!("tty approver: terminal error: {e}");
            (Outcome::Failed, "terminal error")
        }
    };
    // Best effort, and briefly: the answer is already decided.
    let flush_by = std::time::Instant::now() + Duration::from_millis(500);
    let _ = write_all(
        &tty,
        format!("\nnod: {note}\n").as_bytes(),
        &AtomicBool::new(false),
        flush_by,
    );
    outcome
}

/// Sets the cancel flag when the prompt future is dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn ask(prompt: &Prompt, deadline: Instant) -> Outcome {
    let tty = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open("/dev/tty")
    {
        Ok(file) => file,
        Err(e) => {
            event!("tty approver: no terminal ({e}); not approved");
            return Outcome::Unavailable;
        }
    };
    let question = format!("\n{}\nApprove? [y/N] ", prompt.text());
    let cancel = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(Arc::clone(&cancel));
    let deadline = deadline.into_std();
    let task = tokio::task::spawn_blocking(move || converse(tty, question, &cancel, deadline));
    task.await.unwrap_or(Outcome::Failed)
}

impl Approver for TtyApprover {
    fn name(&self) -> &'static str {
        "tty"
    }

    fn presence(&self) -> super::Presence {
        super::Presence::Keypress
    }

    fn approve<'a>(&'a self, prompt: &'a Prompt, deadline: Instant) -> ApprovalFuture<'a> {
        Box::pin(ask(prompt, deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_explicit_yes_approves() {
        for yes in [&b"y"[..], b"Y", b"yes", b" YES \r"] {
            assert_eq!(parse_answer(yes), Outcome::Approved, "{yes:?}");
        }
        for no in [&b""[..], b"n", b"no", b"yess", b"y y", b"\x1b[A"] {
            assert_eq!(parse_answer(no), Outcome::Denied, "{no:?}");
        }
    }
}
