//! How a person says yes (docs/design.md "Approvers").
//!
//! A [`Prompt`] goes in, an [`Outcome`] comes out. Every backend error is a non-approval: a
//! program that cannot be started is `Failed`, a missing terminal is `Unavailable`, a deadline
//! reached is whatever the caller makes of an unanswered prompt. Nothing here can turn an error
//! into `Approved`.
//!
//! Backends: [`tty::TtyApprover`], [`askpass::AskpassApprover`], [`command::CommandApprover`],
//! and [`Unavailable`] when none can reach the person.

pub mod askpass;
mod child;
pub mod command;
mod prompt;
pub mod tty;

pub use prompt::{
    PamPrompt, Prompt, SecretsPrompt, SessionCertPrompt, SshDestination, SshSignPrompt,
    display_safe,
};

use std::fmt;
use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::{ApproverConfig, ApproverKind};

/// What one approver answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Approved,
    Denied,
    Cancelled,
    /// No way to ask the person (no terminal, no display).
    Unavailable,
    /// The approver itself broke (could not start, crashed, answered nonsense).
    Failed,
}

/// How the person proved they were there, as the approver that asked knows it. Recorded with
/// every decision (the audit line, and for remote approval the response's `auth_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// A program decided (the `command` approver): whatever that program checks.
    Program,
    /// A key typed on the agent's terminal (`tty`).
    Keypress,
    /// A click on a dialog or notification (`desktop`, `askpass`).
    Click,
    /// The user's password, checked by the system (`polkit`, through its PAM stack).
    Password,
    /// An enrolled finger on this machine's reader (`fprintd`).
    Fingerprint,
}

impl Presence {
    /// The word in audit lines and `nod status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Program => "program",
            Self::Keypress => "keypress",
            Self::Click => "click",
            Self::Password => "password",
            Self::Fingerprint => "fingerprint",
        }
    }

    /// Whether it proves who is there, not only that someone is: a password or a finger.
    pub fn is_verified(self) -> bool {
        matches!(self, Self::Password | Self::Fingerprint)
    }

    /// Whether it is enough for a request that needs `required`.
    pub fn satisfies(self, required: Required) -> bool {
        match required {
            Required::Any => true,
            Required::Verified => self.is_verified(),
        }
    }
}

/// The least a host, key or secrets service asks of the person (`presence = "verified"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Required {
    /// Any approver that reaches the person.
    #[default]
    Any,
    /// A password or a fingerprint; a click or a keypress is not asked.
    Verified,
}

impl std::str::FromStr for Required {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(Self::Any),
            "verified" => Ok(Self::Verified),
            other => Err(format!("unknown presence {other:?}; use any or verified")),
        }
    }
}

/// The future an approver returns.
pub type ApprovalFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// A way to ask the person. `deadline` is when the answer stops mattering (the request's
/// expiry); a backend should give up by then, and the caller drops the future at the deadline
/// anyway, so anything a backend holds must clean up on drop (e.g. kill its child).
pub trait Approver: fmt::Debug + Send + Sync {
    /// Short name for logs: `tty`, `askpass`, `command`, `none`.
    fn name(&self) -> &'static str;

    /// How a yes from this approver proves presence.
    fn presence(&self) -> Presence;

    fn approve<'a>(&'a self, prompt: &'a Prompt, deadline: Instant) -> ApprovalFuture<'a>;
}

/// The approver used when nobody can be asked: always [`Outcome::Unavailable`], so the host
/// falls back to its password (fail closed, never open).
#[derive(Debug, Clone, Default)]
pub struct Unavailable;

impl Approver for Unavailable {
    fn name(&self) -> &'static str {
        "none"
    }

    fn presence(&self) -> Presence {
        Presence::Program
    }

    fn approve<'a>(&'a self, _prompt: &'a Prompt, _deadline: Instant) -> ApprovalFuture<'a> {
        Box::pin(async { Outcome::Unavailable })
    }
}

/// The approver requested on the command line; it wins over `agent.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApproverChoice {
    pub kind: Option<ApproverKind>,
    /// `--approver-command PROG`: a program, run without a shell.
    pub command: Option<String>,
}

/// No approver can be built from the given choice.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(
        "the command approver needs a program: pass --approver-command PROG or set \
         [approver] command = [\"prog\", \"arg\"] in agent.toml"
    )]
    NoCommand,
    #[error(
        "the askpass approver needs a program: set SSH_ASKPASS or install ssh-askpass \
         (e.g. the ssh-askpass-gnome package)"
    )]
    NoAskpass,
}

/// What the environment offers, for the default choice. Read once at start.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub stdin_is_tty: bool,
    pub has_display: bool,
    pub askpass: Option<PathBuf>,
}

impl Environment {
    pub fn detect() -> Self {
        let set = |v: &str| std::env::var_os(v).is_some_and(|s| !s.is_empty());
        Self {
            stdin_is_tty: std::io::stdin().is_terminal(),
            has_display: set("DISPLAY") || set("WAYLAND_DISPLAY"),
            askpass: askpass::find_program(),
        }
    }
}

/// Picks the approver: the command line, then `agent.toml`, then the default: `tty` when stdin
/// is a terminal, else `askpass` when a display and an askpass program exist, else
/// [`Unavailable`].
pub fn select(
    cli: &ApproverChoice,
    config: &ApproverConfig,
    env: &Environment,
) -> Result<Arc<dyn Approver>, SelectError> {
    let kind = cli
        .kind
        .or(cli.command.as_ref().map(|_| ApproverKind::Command))
        .or(config.kind)
        .or(config.command.as_ref().map(|_| ApproverKind::Command));
    let kind = match kind {
        Some(kind) => kind,
        None if env.stdin_is_tty => ApproverKind::Tty,
        None if env.has_display && env.askpass.is_some() => ApproverKind::Askpass,
        None => return Ok(Arc::new(Unavailable)),
    };
    Ok(match kind {
        ApproverKind::Tty => Arc::new(tty::TtyApprover::new()),
        ApproverKind::Askpass => {
            let program = env.askpass.clone().ok_or(SelectError::NoAskpass)?;
            Arc::new(askpass::AskpassApprover::new(program))
        }
        ApproverKind::Command => {
            let argv = match (&cli.command, &config.command) {
                (Some(prog), _) => vec![prog.clone()],
                (None, Some(argv)) => argv.clone(),
                (None, None) => return Err(SelectError::NoCommand),
            };
            Arc::new(command::CommandApprover::new(argv).ok_or(SelectError::NoCommand)?)
        }
    })
}

/// The PAM prompt the approver tests ask with.
#[cfg(test)]
pub(crate) fn sample_prompt() -> Prompt {
    Prompt::Pam(PamPrompt {
        host: "web-1.example.com".into(),
        host_id: "web-1".into(),
        service: "sudo".into(),
        user: "alice".into(),
        ruser: Some("alice".into()),
        tty: Some("/dev/pts/3".into()),
        rhost: Some("10.0.0.5".into()),
        command: Some("/usr/bin/apt upgrade".into()),
        request_id: "r1".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt() -> Prompt {
        sample_prompt()
    }

    #[test]
    fn selection_prefers_cli_then_config_then_environment() {
        let cfg = ApproverConfig {
            kind: Some(ApproverKind::Command),
            command: Some(vec!["/bin/true".into()]),
        };
        let tty_env = Environment {
            stdin_is_tty: true,
            ..Default::default()
        };
        let cli = ApproverChoice {
            kind: Some(ApproverKind::Tty),
            command: None,
        };
        assert_eq!(select(&cli, &cfg, &tty_env).unwrap().name(), "tty");
        let none = ApproverChoice::default();
        assert_eq!(select(&none, &cfg, &tty_env).unwrap().name(), "command");
        let empty = ApproverConfig::default();
        assert_eq!(select(&none, &empty, &tty_env).unwrap().name(), "tty");
        let gui = Environment {
            has_display: true,
            askpass: Some("/usr/bin/ssh-askpass".into()),
            ..Default::default()
        };
        assert_eq!(select(&none, &empty, &gui).unwrap().name(), "askpass");
        let headless = Environment::default();
        assert_eq!(select(&none, &empty, &headless).unwrap().name(), "none");
        let cli_cmd = ApproverChoice {
            kind: None,
            command: Some("/bin/approve".into()),
        };
        assert_eq!(
            select(&cli_cmd, &empty, &headless).unwrap().name(),
            "command"
        );
    }

    #[test]
    fn selection_errors_instead_of_guessing() {
        let cli = ApproverChoice {
            kind: Some(ApproverKind::Command),
            command: None,
        };
        let err = select(&cli, &ApproverConfig::default(), &Environment::default()).unwrap_err();
        assert!(matches!(err, SelectError::NoCommand));
        let cli = ApproverChoice {
            kind: Some(ApproverKind::Askpass),
            command: None,
        };
        let err = select(&cli, &ApproverConfig::default(), &Environment::default()).unwrap_err();
        assert!(matches!(err, SelectError::NoAskpass));
    }

    #[tokio::test]
    async fn unavailable_never_approves() {
        let outcome = Unavailable.approve(&prompt(), Instant::now()).await;
        assert_eq!(outcome, Outcome::Unavailable);
    }
}
