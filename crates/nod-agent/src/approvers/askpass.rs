//! The `askpass` approver, OpenSSH's convention for `ssh-add -c`: run `$SSH_ASKPASS` (or
//! `ssh-askpass` from `PATH`) with `SSH_ASKPASS_PROMPT=confirm` and the prompt as `argv[1]`.
//!
//! Exit 0 is yes. A dialog needs a display: with neither `DISPLAY` nor `WAYLAND_DISPLAY` it is
//! not started (`Unavailable`). A non-zero exit is no only when the program said nothing on
//! stderr, as when the person clicks No; a program that exits after printing an error ("cannot
//! open display") never reached the person, so it is `Failed`, never a denial (the host falls
//! back to the password). A crash, a spawn failure or the deadline is `Failed` too.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::time::Instant;

use super::child::{GroupChild, by_deadline};
use super::{ApprovalFuture, Approver, Outcome, Prompt};
use crate::log::event;

/// The most of an askpass program's stderr that is read (for the log).
const MAX_STDERR: u64 = 4096;

/// `$SSH_ASKPASS` if set (and non-empty), else `ssh-askpass` found in `PATH`.
pub fn find_program() -> Option<PathBuf> {
    if let Some(p) = env::var_os("SSH_ASKPASS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join("ssh-askpass"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Asks through an askpass program.
#[derive(Debug, Clone)]
pub struct AskpassApprover {
    program: PathBuf,
    /// Whether the agent has a display to show a dialog on (`DISPLAY` or `WAYLAND_DISPLAY`).
    has_display: bool,
}

impl AskpassApprover {
    pub fn new(program: PathBuf, has_display: bool) -> Self {
        Self {
            program,
            has_display,
        }
    }

    async fn run(&self, prompt: &Prompt) -> Outcome {
        if !self.has_display {
            event!("askpass: no DISPLAY or WAYLAND_DISPLAY, so no dialog can be shown");
            return Outcome::Unavailable;
        }
        let mut cmd = Command::new(&self.program);
        cmd.arg(prompt.text())
            .env("SSH_ASKPASS_PROMPT", "confirm")
            .env("NOD_PROMPT_KIND", prompt.kind())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = match GroupChild::spawn(&mut cmd) {
            Ok(child) => child,
            Err(e) => {
                event!("askpass {} could not start: {e}", self.program.display());
                return Outcome::Failed;
            }
        };
        let stderr = child.take_stderr();
        let read_stderr = async move {
            let mut said = Vec::new();
            if let Some(stderr) = stderr {
                let _ = stderr.take(MAX_STDERR).read_to_end(&mut said).await;
            }
            said
        };
        let (status, said) = tokio::join!(child.wait(), read_stderr);
        let said = String::from_utf8_lossy(&said);
        let said = said.trim();
        match status {
            Ok(s) if s.success() => Outcome::Approved,
            Ok(s) if s.code().is_some() && said.is_empty() => Outcome::Denied,
            Ok(s) if s.code().is_some() => {
                event!(
                    "askpass {} failed ({s}) without asking: {:?}",
                    self.program.display(),
                    said.lines().next().unwrap_or_default()
                );
                Outcome::Failed
            }
            Ok(s) => {
                event!("askpass {} died: {s}", self.program.display());
                Outcome::Failed
            }
            Err(e) => {
                event!("askpass {}: wait failed: {e}", self.program.display());
                Outcome::Failed
            }
        }
    }
}

impl Approver for AskpassApprover {
    fn name(&self) -> &'static str {
        "askpass"
    }

    fn presence(&self) -> super::Presence {
        super::Presence::Click
    }

    fn approve<'a>(&'a self, prompt: &'a Prompt, deadline: Instant) -> ApprovalFuture<'a> {
        Box::pin(by_deadline(deadline, self.run(prompt), || {
            event!("askpass was not answered in time; closed it");
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn prompt() -> Prompt {
        crate::approvers::sample_prompt()
    }

    /// A fake askpass: a script that checks the OpenSSH convention and exits with `code`.
    /// Written by a child `sh`, not by this process: a write fd of ours could be inherited by
    /// a child that another test thread forked but has not exec'd yet, and running the script
    /// would then fail with ETXTBSY.
    fn fake_askpass(dir: &Path, code: u8) -> PathBuf {
        fake_askpass_saying(dir, code, "")
    }

    /// The same, printing `said` on stderr first.
    fn fake_askpass_saying(dir: &Path, code: u8, said: &str) -> PathBuf {
        let p = dir.join(format!("askpass-{code}-{}", said.len()));
        let script = format!(
            "#!/bin/sh\n[ \"$SSH_ASKPASS_PROMPT\" = confirm ] || exit 9\n\
             [ -z '{said}' ] || echo '{said}' >&2\n\
             case \"$1\" in *'allow sudo as alice on web-1.example.com'*) exit {code};; esac\nexit 8\n"
        );
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", r#"printf '%s' "$1" > "$2" && chmod 700 "$2""#, "sh"])
            .arg(script)
            .arg(&p)
            .status()
            .unwrap();
        assert!(status.success());
        p
    }

    #[tokio::test]
    async fn exit_zero_approves_and_anything_else_denies() {
        let mut r = [0u8; 8];
        getrandom::getrandom(&mut r).unwrap();
        let dir = std::env::temp_dir().join(format!("nod-askpass-{}", hex::encode(r)));
        std::fs::create_dir_all(&dir).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let yes = AskpassApprover::new(fake_askpass(&dir, 0), true);
        let no = AskpassApprover::new(fake_askpass(&dir, 1), true);
        assert_eq!(yes.approve(&prompt(), deadline).await, Outcome::Approved);
        assert_eq!(no.approve(&prompt(), deadline).await, Outcome::Denied);
        let missing = AskpassApprover::new(dir.join("missing"), true);
        assert_eq!(missing.approve(&prompt(), deadline).await, Outcome::Failed);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn an_askpass_that_cannot_show_a_dialog_never_denies() {
        let mut r = [0u8; 8];
        getrandom::getrandom(&mut r).unwrap();
        let dir = std::env::temp_dir().join(format!("nod-askpass-{}", hex::encode(r)));
        std::fs::create_dir_all(&dir).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // What GTK prints (and exits 1) when DISPLAY names no server.
        let broken = AskpassApprover::new(
            fake_askpass_saying(&dir, 1, "cannot open display: :9"),
            true,
        );
        assert_eq!(broken.approve(&prompt(), deadline).await, Outcome::Failed);
        let yes = fake_askpass(&dir, 0);
        let headless = AskpassApprover::new(yes.clone(), false);
        assert_eq!(
            headless.approve(&prompt(), deadline).await,
            Outcome::Unavailable
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
