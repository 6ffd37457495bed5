//! What a `polkit` or `fprintd` prompt is for, shown while the system asks for the password or
//! the finger: a notification without buttons (the answer comes from the system, not from a
//! click), and the agent's terminal when it has one. A prompt that can be shown nowhere is not
//! asked: a finger on the reader or a password in a dialog must never approve something the
//! person could not see.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use tokio::time::Instant;

use super::bus::{self, LazyBus};
use super::desktop::{Server, Shown};
use super::{Outcome, Prompt};
use crate::log::event;

/// Where a prompt's context is on show; taken down by [`Notice::finish`] or on drop.
#[derive(Debug)]
pub(super) struct Notice {
    notification: Option<Shown>,
    terminal: Option<File>,
}

impl Notice {
    /// Shows `prompt` and `how` (what the person does to approve) everywhere it can;
    /// `None` when there is nowhere.
    pub(super) async fn show(
        session: &LazyBus,
        prompt: &Prompt,
        how: &str,
        deadline: Instant,
    ) -> Option<Self> {
        let notification = match Server::find(session).await {
            Ok(server) => match server.show(prompt, how, &[], deadline).await {
                Ok(shown) => Some(shown),
                Err(e) => {
                    event!(
                        "the notification server refused the prompt's context: {}",
                        bus::describe(&e)
                    );
                    None
                }
            },
            Err(_) => None,
        };
        let terminal = terminal().and_then(|mut tty| {
            let text = format!("\n{}\n{how}\n", prompt.text());
            tty.write_all(text.as_bytes()).ok().map(|()| tty)
        });
        if notification.is_none() && terminal.is_none() {
            return None;
        }
        Some(Self {
            notification,
            terminal,
        })
    }

    /// Takes the notification down and tells the terminal how it ended.
    pub(super) async fn finish(mut self, outcome: Outcome) {
        if let Some(shown) = self.notification.take() {
            shown.close().await;
        }
        if let Some(mut tty) = self.terminal.take() {
            let word = match outcome {
                Outcome::Approved => "approved",
                Outcome::Denied => "denied",
                Outcome::Cancelled => "cancelled",
                Outcome::Unavailable => "not asked",
                Outcome::Failed => "failed",
            };
            let _ = tty.write_all(format!("nod: {word}\n").as_bytes());
        }
    }
}

/// The agent's controlling terminal, if it has one. Non-blocking: a stopped terminal must not
/// hold up the prompt (the text is short, a full buffer only loses it).
fn terminal() -> Option<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open("/dev/tty")
        .ok()
}
