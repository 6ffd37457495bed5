//! The `command` approver: any program decides. The prompt is one JSON object on its stdin
//! (then EOF), `NOD_PROMPT_KIND` names the prompt kind, and the exit code is the answer:
//! 0 approve, 1 deny, 2 cancel; anything else, a signal, a spawn failure or the deadline is
//! `Failed`.
//!
//! The program runs in its own process group, killed as a whole when the answer is no longer
//! wanted (see `child.rs`).

use std::io::ErrorKind;
use std::process::{ExitStatus, Stdio};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::time::Instant;

use super::child::{GroupChild, by_deadline};
use super::{ApprovalFuture, Approver, Outcome, Prompt};
use crate::log::event;

/// Runs `argv` for each prompt.
#[derive(Debug, Clone)]
pub struct CommandApprover {
    argv: Vec<String>,
}

impl CommandApprover {
    /// `None` when `argv` names no program.
    pub fn new(argv: Vec<String>) -> Option<Self> {
        argv.first()
            .is_some_and(|p| !p.is_empty())
            .then_some(Self { argv })
    }
}

/// The exit status → outcome mapping of the command approver.
pub fn outcome_of(status: ExitStatus) -> Outcome {
    match status.code() {
        Some(0) => Outcome::Approved,
        Some(1) => Outcome::Denied,
        Some(2) => Outcome::Cancelled,
        _ => Outcome::Failed,
    }
}

impl CommandApprover {
    async fn run(&self, prompt: &Prompt) -> Outcome {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .env("NOD_PROMPT_KIND", prompt.kind())
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = match GroupChild::spawn(&mut cmd) {
            Ok(child) => child,
            Err(e) => {
                event!("command approver {:?} could not start: {e}", self.argv[0]);
                return Outcome::Failed;
            }
        };
        let stdin = child.take_stdin();
        let json = prompt.to_json();
        let write = async move {
            let Some(mut stdin) = stdin else { return };
            // A program that decides without reading its stdin closes the pipe: not an error.
            match stdin.write_all(&json).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
                Err(e) => event!("command approver: writing the prompt failed: {e}"),
            }
            drop(stdin);
        };
        let ((), status) = tokio::join!(write, child.wait());
        match status {
            Ok(status) => {
                let outcome = outcome_of(status);
                if outcome == Outcome::Failed {
                    event!("command approver {:?} failed: {status}", self.argv[0]);
                }
                outcome
            }
            Err(e) => {
                event!("command approver {:?}: wait failed: {e}", self.argv[0]);
                Outcome::Failed
            }
        }
    }
}

impl Approver for CommandApprover {
    fn name(&self) -> &'static str {
        "command"
    }

    fn presence(&self) -> super::Presence {
        super::Presence::Program
    }

    fn approve<'a>(&'a self, prompt: &'a Prompt, deadline: Instant) -> ApprovalFuture<'a> {
        Box::pin(by_deadline(deadline, self.run(prompt), || {
            event!(
                "command approver {:?} did not answer in time; killed",
                self.argv[0]
            );
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::time::Duration;

    use super::*;

    fn prompt() -> Prompt {
        crate::approvers::sample_prompt()
    }

    fn sh(script: &str) -> CommandApprover {
        CommandApprover::new(vec!["/bin/sh".into(), "-c".into(), script.into()]).unwrap()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn exit_status_mapping_is_exhaustive() {
        let cases = [
            (0, Outcome::Approved),
            (1, Outcome::Denied),
            (2, Outcome::Cancelled),
            (3, Outcome::Failed),
            (255, Outcome::Failed),
        ];
        for (code, want) in cases {
            assert_eq!(outcome_of(ExitStatus::from_raw(code << 8)), want, "{code}");
        }
        // Killed by SIGKILL.
        assert_eq!(outcome_of(ExitStatus::from_raw(9)), Outcome::Failed);
    }

    #[tokio::test]
    async fn exit_codes_become_outcomes() {
        let p = prompt();
        assert_eq!(
            sh("cat >/dev/null; exit 0").approve(&p, soon()).await,
            Outcome::Approved
        );
        assert_eq!(sh("exit 1").approve(&p, soon()).await, Outcome::Denied);
        assert_eq!(sh("exit 2").approve(&p, soon()).await, Outcome::Cancelled);
        assert_eq!(sh("exit 7").approve(&p, soon()).await, Outcome::Failed);
        assert_eq!(sh("kill -9 $$").approve(&p, soon()).await, Outcome::Failed);
    }

    #[tokio::test]
    async fn missing_program_fails_closed() {
        let a = CommandApprover::new(vec!["/nonexistent/nod-approver".into()]).unwrap();
        assert_eq!(a.approve(&prompt(), soon()).await, Outcome::Failed);
        assert!(CommandApprover::new(vec![]).is_none());
        assert!(CommandApprover::new(vec![String::new()]).is_none());
    }

    #[tokio::test]
    async fn program_sees_the_prompt_kind_and_json() {
        let a = sh(r#"test "$NOD_PROMPT_KIND" = pam && grep -q '"kind":"pam"' && exit 0; exit 1"#);
        assert_eq!(a.approve(&prompt(), soon()).await, Outcome::Approved);
    }

    #[tokio::test]
    async fn deadline_kills_a_slow_program() {
        let start = std::time::Instant::now();
        let deadline = Instant::now() + Duration::from_millis(200);
        assert_eq!(
            sh("sleep 30; exit 0").approve(&prompt(), deadline).await,
            Outcome::Failed
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
