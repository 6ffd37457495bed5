//! How a person says yes (docs/design.md "Approvers").
//!
//! A [`Prompt`] goes in, an [`Outcome`] comes out. Every backend error is a non-approval: a
//! program that cannot be started is `Failed`, a missing terminal is `Unavailable`, a deadline
//! reached is whatever the caller makes of an unanswered prompt. Nothing here can turn an error
//! into `Approved`.
//!
//! Backends: [`tty::TtyApprover`], [`askpass::AskpassApprover`], [`command::CommandApprover`],
//! [`desktop::DesktopApprover`] (a notification with buttons), [`polkit::PolkitApprover`]
//! (system authentication) and [`fprintd::FprintdApprover`] (a fingerprint); an empty chain
//! when none can reach the person.

pub mod askpass;
mod bus;
mod child;
pub mod command;
pub mod desktop;
pub mod fprintd;
mod notice;
pub mod polkit;
mod prompt;
pub mod tty;

pub use bus::SessionAddress;
pub use prompt::{
    PamPrompt, Prompt, SecretsPrompt, SecretsUsePrompt, SessionCertPrompt, SshDestination,
    SshSignPrompt, display_safe,
};

use std::fmt;
use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use tokio::time::Instant;

pub use crate::config::Required;
use crate::config::{ApproverConfig, ApproverKind, KindSetting, KindWord};

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

/// The future an approver returns.
pub type ApprovalFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// A way to ask the person. `deadline` is when the answer stops mattering (the request's
/// expiry); a backend should give up by then, and the caller drops the future at the deadline
/// anyway, so anything a backend holds must clean up on drop (e.g. kill its child).
pub trait Approver: fmt::Debug + Send + Sync {
    /// Short name for logs: `tty`, `askpass`, `command`, `desktop`, `polkit`, `fprintd`,
    /// `none`.
    fn name(&self) -> &'static str;

    /// How a yes from this approver proves presence.
    fn presence(&self) -> Presence;

    fn approve<'a>(&'a self, prompt: &'a Prompt, deadline: Instant) -> ApprovalFuture<'a>;
}

/// The approvers requested on the command line; they win over `agent.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApproverChoice {
    pub kind: Option<KindSetting>,
    /// `--approver-command PROG`: a program, run without a shell.
    pub command: Option<String>,
}

/// `--approver`'s value: `auto`, a kind, or kinds separated by commas (tried in order).
pub fn parse_choice(s: &str) -> Result<KindSetting, String> {
    if s.contains(',') {
        let kinds = s
            .split(',')
            .map(|k| k.trim().parse::<ApproverKind>())
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(KindSetting::Chain(kinds));
    }
    KindWord::try_from(s.trim().to_owned()).map(KindSetting::One)
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

/// What the environment offers, for `auto`. Read once at start.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub stdin_is_tty: bool,
    pub has_display: bool,
    pub askpass: Option<PathBuf>,
    /// The session bus, when one may be there ([`SessionAddress::reachable`]): the desktop's
    /// notification server is looked for on it at the first prompt, not before.
    pub session_bus: Option<SessionAddress>,
}

impl Environment {
    pub fn detect() -> Self {
        let set = |v: &str| std::env::var_os(v).is_some_and(|s| !s.is_empty());
        Self {
            stdin_is_tty: std::io::stdin().is_terminal(),
            has_display: set("DISPLAY") || set("WAYLAND_DISPLAY"),
            askpass: askpass::find_program(),
            session_bus: Some(SessionAddress::from_env()).filter(SessionAddress::reachable),
        }
    }

    /// What `auto` found, for the start-up line and `nod doctor`.
    pub fn describe(&self) -> String {
        let bus = match &self.session_bus {
            Some(bus) => format!("session bus {bus}"),
            None => "no session bus (DBUS_SESSION_BUS_ADDRESS is unset and there is no socket \
                     at $XDG_RUNTIME_DIR/bus)"
                .to_owned(),
        };
        let display = match (self.has_display, &self.askpass) {
            (true, Some(p)) => format!(
                "a display and askpass {}",
                display_safe(&p.display().to_string())
            ),
            (true, None) => "a display but no askpass program".to_owned(),
            (false, _) => "no DISPLAY or WAYLAND_DISPLAY".to_owned(),
        };
        let tty = if self.stdin_is_tty {
            "stdin is a terminal"
        } else {
            "stdin is not a terminal"
        };
        format!("{bus}; {display}; {tty}")
    }
}

/// What `auto` means here, in this order:
/// - in a graphical session, a notification (`desktop`): whenever a session bus is there, as
///   the systemd user manager gives one to every unit; a session without a notification server
///   makes it unavailable at the prompt, and the next is asked;
/// - with a display and an askpass program, a dialog (`askpass`);
/// - with a terminal on stdin, `tty`;
/// - otherwise nobody can be asked.
pub fn auto_chain(env: &Environment) -> Vec<ApproverKind> {
    let mut kinds = Vec::new();
    if env.session_bus.is_some() {
        kinds.push(ApproverKind::Desktop);
    }
    if env.has_display && env.askpass.is_some() {
        kinds.push(ApproverKind::Askpass);
    }
    if env.stdin_is_tty {
        kinds.push(ApproverKind::Tty);
    }
    kinds
}

/// Where a chain comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// `--approver` or `--approver-command`.
    CommandLine,
    /// `[approver]` in `agent.toml`.
    Config,
    /// [`auto_chain`]: nothing chose, or `auto` was chosen.
    Auto,
}

/// The kinds to build and where they come from: the command line, then `agent.toml`, then
/// `auto`.
fn resolve(
    cli: &ApproverChoice,
    config: &ApproverConfig,
    env: &Environment,
) -> (Vec<ApproverKind>, Origin) {
    let command = || KindSetting::One(KindWord::Kind(ApproverKind::Command));
    let from_cli = cli.kind.clone().or(cli.command.as_ref().map(|_| command()));
    let (setting, origin) = match from_cli {
        Some(s) => (Some(s), Origin::CommandLine),
        None => (
            config
                .kind
                .clone()
                .or(config.command.as_ref().map(|_| command())),
            Origin::Config,
        ),
    };
    match setting.and_then(|s| s.chain()) {
        Some(kinds) => (kinds, origin),
        None => (auto_chain(env), Origin::Auto),
    }
}

/// How the chain was chosen, for the start-up line and `nod status`: `command line`,
/// `agent.toml`, or `auto (`what it found`)`.
pub fn chosen_by(cli: &ApproverChoice, config: &ApproverConfig, env: &Environment) -> String {
    match resolve(cli, config, env).1 {
        Origin::CommandLine => "the command line".to_owned(),
        Origin::Config => "agent.toml".to_owned(),
        Origin::Auto => format!("auto ({})", env.describe()),
    }
}

/// Builds the approver chain: the command line, then `agent.toml`, then `auto`. An empty chain
/// means nobody can be asked: every request is then answered unavailable (hosts fall back to
/// the password), and the agent says so at start.
pub fn select(
    cli: &ApproverChoice,
    config: &ApproverConfig,
    env: &Environment,
) -> Result<Vec<Arc<dyn Approver>>, SelectError> {
    let (kinds, _) = resolve(cli, config, env);
    let mut chain: Vec<Arc<dyn Approver>> = Vec::new();
    for kind in kinds {
        chain.push(match kind {
            ApproverKind::Tty => Arc::new(tty::TtyApprover::new()),
            ApproverKind::Askpass => {
                let program = env.askpass.clone().ok_or(SelectError::NoAskpass)?;
                Arc::new(askpass::AskpassApprover::new(program, env.has_display))
            }
            ApproverKind::Command => {
                let argv = match (&cli.command, &config.command) {
                    (Some(prog), _) => vec![prog.clone()],
                    (None, Some(argv)) => argv.clone(),
                    (None, None) => return Err(SelectError::NoCommand),
                };
                Arc::new(command::CommandApprover::new(argv).ok_or(SelectError::NoCommand)?)
            }
            ApproverKind::Desktop => Arc::new(desktop::DesktopApprover::new()),
            ApproverKind::Polkit => Arc::new(polkit::PolkitApprover::new()),
            ApproverKind::Fprintd => Arc::new(fprintd::FprintdApprover::new()),
        });
    }
    Ok(chain)
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

    fn names(chain: &[Arc<dyn Approver>]) -> Vec<&'static str> {
        chain.iter().map(|a| a.name()).collect()
    }

    #[test]
    fn selection_prefers_cli_then_config_then_auto() {
        let one = |k| Some(KindSetting::One(KindWord::Kind(k)));
        let cfg = ApproverConfig {
            kind: one(ApproverKind::Command),
            command: Some(vec!["/bin/true".into()]),
        };
        let tty_env = Environment {
            stdin_is_tty: true,
            ..Default::default()
        };
        let cli = ApproverChoice {
            kind: one(ApproverKind::Tty),
            command: None,
        };
        assert_eq!(names(&select(&cli, &cfg, &tty_env).unwrap()), ["tty"]);
        let none = ApproverChoice::default();
        assert_eq!(names(&select(&none, &cfg, &tty_env).unwrap()), ["command"]);
        let empty = ApproverConfig::default();
        assert_eq!(names(&select(&none, &empty, &tty_env).unwrap()), ["tty"]);
        let gui = Environment {
            stdin_is_tty: true,
            has_display: true,
            askpass: Some("/usr/bin/ssh-askpass".into()),
            session_bus: None,
        };
        assert_eq!(
            names(&select(&none, &empty, &gui).unwrap()),
            ["askpass", "tty"]
        );
        let headless = Environment::default();
        assert!(select(&none, &empty, &headless).unwrap().is_empty());
        let cli_cmd = ApproverChoice {
            kind: None,
            command: Some("/bin/approve".into()),
        };
        assert_eq!(
            names(&select(&cli_cmd, &empty, &headless).unwrap()),
            ["command"]
        );
        let chain = ApproverChoice {
            kind: Some(parse_choice("command,tty").unwrap()),
            command: Some("/bin/approve".into()),
        };
        assert_eq!(
            names(&select(&chain, &empty, &headless).unwrap()),
            ["command", "tty"]
        );
        assert_eq!(parse_choice("auto").unwrap().chain(), None);
        assert!(parse_choice("tty,yes").is_err());
    }

    fn bus() -> Option<SessionAddress> {
        Some(SessionAddress::UserSocket("/run/user/1000/bus".into()))
    }

    #[test]
    fn auto_in_a_unit_with_only_a_session_bus_is_the_desktop() {
        // The packaged unit: no terminal, no display, the user manager's bus socket.
        let unit = Environment {
            session_bus: bus(),
            ..Default::default()
        };
        assert_eq!(auto_chain(&unit), [ApproverKind::Desktop]);
        let chain = select(
            &ApproverChoice::default(),
            &ApproverConfig::default(),
            &unit,
        )
        .unwrap();
        assert_eq!(names(&chain), ["desktop"]);
        assert_eq!(chain[0].presence(), Presence::Click);
    }

    #[test]
    fn auto_asks_the_desktop_then_a_dialog_then_the_terminal() {
        let all = Environment {
            stdin_is_tty: true,
            has_display: true,
            askpass: Some("/usr/bin/ssh-askpass".into()),
            session_bus: bus(),
        };
        assert_eq!(
            auto_chain(&all),
            [
                ApproverKind::Desktop,
                ApproverKind::Askpass,
                ApproverKind::Tty
            ]
        );
        let chain = select(&ApproverChoice::default(), &ApproverConfig::default(), &all).unwrap();
        assert_eq!(names(&chain), ["desktop", "askpass", "tty"]);
        // A terminal inside a desktop session: the notification first, the terminal if the
        // session has no notification server.
        let terminal = Environment {
            stdin_is_tty: true,
            session_bus: bus(),
            ..Default::default()
        };
        assert_eq!(
            auto_chain(&terminal),
            [ApproverKind::Desktop, ApproverKind::Tty]
        );
        // `kind = "auto"` in agent.toml is the same as no [approver].
        let cfg = ApproverConfig {
            kind: Some(parse_choice("auto").unwrap()),
            command: None,
        };
        assert_eq!(
            names(&select(&ApproverChoice::default(), &cfg, &terminal).unwrap()),
            ["desktop", "tty"]
        );
    }

    #[test]
    fn auto_needs_an_askpass_program_as_well_as_a_display() {
        let display_only = Environment {
            has_display: true,
            ..Default::default()
        };
        assert!(auto_chain(&display_only).is_empty());
        let askpass_only = Environment {
            askpass: Some("/usr/bin/ssh-askpass".into()),
            ..Default::default()
        };
        assert!(auto_chain(&askpass_only).is_empty());
        assert!(auto_chain(&Environment::default()).is_empty());
    }

    #[test]
    fn chosen_by_names_the_source_and_what_auto_found() {
        let none = ApproverChoice::default();
        let empty = ApproverConfig::default();
        let unit = Environment {
            session_bus: bus(),
            ..Default::default()
        };
        assert_eq!(
            chosen_by(&none, &empty, &unit),
            "auto (session bus unix:path=/run/user/1000/bus; no DISPLAY or WAYLAND_DISPLAY; \
             stdin is not a terminal)"
        );
        let headless = chosen_by(&none, &empty, &Environment::default());
        assert!(headless.starts_with("auto (no session bus"), "{headless}");
        let cli = ApproverChoice {
            kind: None,
            command: Some("/bin/approve".into()),
        };
        assert_eq!(chosen_by(&cli, &empty, &unit), "the command line");
        let cfg = ApproverConfig {
            kind: Some(parse_choice("tty").unwrap()),
            command: None,
        };
        assert_eq!(chosen_by(&none, &cfg, &unit), "agent.toml");
    }

    #[test]
    fn selection_errors_instead_of_guessing() {
        let cli = ApproverChoice {
            kind: Some(KindSetting::One(KindWord::Kind(ApproverKind::Command))),
            command: None,
        };
        let err = select(&cli, &ApproverConfig::default(), &Environment::default()).unwrap_err();
        assert!(matches!(err, SelectError::NoCommand));
        let cli = ApproverChoice {
            kind: Some(KindSetting::One(KindWord::Kind(ApproverKind::Askpass))),
            command: None,
        };
        let err = select(&cli, &ApproverConfig::default(), &Environment::default()).unwrap_err();
        assert!(matches!(err, SelectError::NoAskpass));
    }

    #[test]
    fn explicit_system_approvers_are_built_without_touching_a_bus() {
        // Nothing here connects: a bus is reached at the first prompt only.
        for (kind, name, presence) in [
            (ApproverKind::Desktop, "desktop", Presence::Click),
            (ApproverKind::Polkit, "polkit", Presence::Password),
            (ApproverKind::Fprintd, "fprintd", Presence::Fingerprint),
        ] {
            let cli = ApproverChoice {
                kind: Some(KindSetting::One(KindWord::Kind(kind))),
                command: None,
            };
            let chain = select(&cli, &ApproverConfig::default(), &Environment::default()).unwrap();
            assert_eq!(names(&chain), [name]);
            assert_eq!(chain[0].presence(), presence);
        }
        let cli = ApproverChoice {
            kind: Some(parse_choice("fprintd,polkit,desktop").unwrap()),
            command: None,
        };
        let chain = select(&cli, &ApproverConfig::default(), &Environment::default()).unwrap();
        assert_eq!(names(&chain), ["fprintd", "polkit", "desktop"]);
    }
}
