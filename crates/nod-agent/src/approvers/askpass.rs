//! The `askpass` approver, OpenSSH's convention for `ssh-add -c`: run `$SSH_ASKPASS` (or
//! `ssh-askpass` from `PATH`) with `SSH_ASKPASS_PROMPT=confirm` and the prompt as `argv[1]`.
//! Exit 0 is yes; any other exit is no; a crash, a spawn failure or the deadline is `Failed`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;
use tokio::time::Instant;

use super::child::{GroupChild, by_deadline};
use super::{ApprovalFuture, Approver, Outcome, Prompt};
use crate::log::event;

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
}

impl AskpassApprover {
    pub fn new(program: PathBuf) -> Self {
        Self { program }
    }

    async fn run(&self, prompt: &Prompt) -> Outcome {
        let mut cmd = Command::new(&self.program);
        cmd.arg(prompt.text())
            .env("SSH_ASKPASS_PROMPT", "confirm")
            .env("NOD_PROMPT_KIND", prompt.kind())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut child = match GroupChild::spawn(&mut cmd) {
            Ok(child) => child,
            Err(e) => {
                event!("askpass {} could not start: {e}", self.program.display());
                return Outcome::Failed;
            }
        };
        match child.wait().await {
            Ok(s) if s.success() => Outcome::Approved,
            Ok(s) if s.code().is_some() => Outcome::Denied,
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
        let p = dir.join(format!("askpass-{code}"));
        let script = format!(
            "#!/bin/sh\n[ \"$SSH_ASKPASS_PROMPT\" = confirm ] || exit 9\n\
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
        let yes = AskpassApprover::new(fake_askpass(&dir, 0));
        let no = AskpassApprover::new(fake_askpass(&dir, 1));
        assert_eq!(yes.approve(&prompt(), deadline).await, Outcome::Approved);
        assert_eq!(no.approve(&prompt(), deadline).await, Outcome::Denied);
        let missing = AskpassApprover::new(dir.join("missing"));
        assert_eq!(missing.approve(&prompt(), deadline).await, Outcome::Failed);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
