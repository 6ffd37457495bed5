//! `$XDG_CONFIG_HOME/nod/agent.toml`. Optional: a missing file means the defaults. Unknown keys
//! are an error, so a misspelled `rate_limit_burts` is not silently ignored.
//!
//! ```toml
//! [approver]
//! kind = "auto"             # auto | tty | askpass | command | desktop | polkit | fprintd,
//!                           # or a list tried in order
//! command = ["prog", "arg"]
//! [presence]
//! pam = "any"               # any | verified (a password or a fingerprint)
//! ssh = "any"
//! secrets = "any"
//! [approval]
//! allowed_future_skew_ms = 30000
//! rate_limit_burst = 5
//! rate_limit_per_minute = 20
//! [secrets]
//! backend = "auto"          # auto | file | secret-service
//! [ssh]
//! idle_timeout = "1h"       # close SSH agent connections idle this long
//! refuse_rsa_sha1 = false   # true: no `ssh-rsa` (SHA-1) signatures, even when asked for
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::files::check_not_writable_by_others;

/// Which approver backend asks the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApproverKind {
    Tty,
    Askpass,
    Command,
    /// A notification with Approve and Deny buttons on the session bus.
    Desktop,
    /// System authentication through polkit (the password, or what its PAM stack asks).
    Polkit,
    /// An enrolled finger, through fprintd.
    Fprintd,
}

impl std::str::FromStr for ApproverKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tty" => Ok(Self::Tty),
            "askpass" => Ok(Self::Askpass),
            "command" => Ok(Self::Command),
            "desktop" => Ok(Self::Desktop),
            "polkit" => Ok(Self::Polkit),
            "fprintd" => Ok(Self::Fprintd),
            other => Err(format!(
                "unknown approver {other:?}; use tty, askpass, command, desktop, polkit or fprintd"
            )),
        }
    }
}

/// The least a host, key or secrets service asks of the person (`presence = "verified"`).
/// Ordered from weakest to strongest, so `a.max(b)` is what both ask.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Required {
    /// Any approver that reaches the person.
    #[default]
    Any,
    /// A password or a fingerprint; a click or a keypress is not asked.
    Verified,
}

impl Required {
    /// `any` or `verified`, as written in `agent.toml` and on the command line.
    pub fn word(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::Verified => "verified",
        }
    }
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

/// `kind = "tty"` or `kind = ["desktop", "tty"]`: one approver, or a chain tried in order
/// (an approver that cannot reach the person hands over to the next).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum KindSetting {
    One(KindWord),
    Chain(Vec<ApproverKind>),
}

/// `auto` or an approver kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum KindWord {
    Auto,
    Kind(ApproverKind),
}

impl TryFrom<String> for KindWord {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "auto" => Ok(Self::Auto),
            other => other.parse().map(Self::Kind),
        }
    }
}

impl KindSetting {
    /// The chain it names; `None` for `auto`.
    pub fn chain(&self) -> Option<Vec<ApproverKind>> {
        match self {
            Self::One(KindWord::Auto) => None,
            Self::One(KindWord::Kind(k)) => Some(vec![*k]),
            Self::Chain(kinds) => Some(kinds.clone()),
        }
    }
}

/// `[approver]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverConfig {
    pub kind: Option<KindSetting>,
    /// argv of the `command` approver.
    pub command: Option<Vec<String>>,
}

/// `[presence]`: the least presence each service's prompts need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    pub pam: Required,
    pub ssh: Required,
    pub secrets: Required,
}

/// `[approval]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalConfig {
    pub allowed_future_skew_ms: u64,
    /// Prompts a host|service|user may trigger back to back.
    pub rate_limit_burst: u32,
    /// Steady rate at which that allowance refills.
    pub rate_limit_per_minute: u32,
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        Self {
            allowed_future_skew_ms: nod_proto::DEFAULT_FUTURE_SKEW_MS,
            rate_limit_burst: 5,
            rate_limit_per_minute: 20,
        }
    }
}

/// Where the secrets broker keeps secrets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretsBackend {
    /// The Secret Service when one answers on the session bus, else the encrypted file.
    #[default]
    Auto,
    File,
    SecretService,
}

/// `[ssh]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// A connection with no message in flight is closed after this long.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: std::time::Duration,
    /// Refuse RSA signatures with SHA-1 (`ssh-rsa`), which a client asks for by passing no
    /// `rsa-sha2-*` flag (sshd's `HostKeyAgent` does so for an `ssh-rsa` host key). Off by
    /// default, as in OpenSSH's agent.
    pub refuse_rsa_sha1: bool,
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            idle_timeout: std::time::Duration::from_secs(3600),
            refuse_rsa_sha1: false,
        }
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    let s = String::deserialize(d)?;
    crate::duration::parse_duration(&s).map_err(serde::de::Error::custom)
}

/// `[secrets]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    pub backend: SecretsBackend,
}

/// The whole `agent.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default)]
    pub approver: ApproverConfig,
    #[serde(default)]
    pub approval: ApprovalConfig,
    #[serde(default)]
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub presence: PresenceConfig,
    #[serde(default)]
    pub ssh: SshConfig,
}

/// `agent.toml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("refusing {}: {source}", path.display())]
    Unsafe { path: PathBuf, source: io::Error },
    #[error("{} is invalid; fix or remove the offending key:\n{message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
}

/// Longest allowed clock skew: ten minutes is already generous for NTP-less hosts.
const MAX_SKEW_MS: u64 = 10 * 60 * 1000;

impl AgentConfig {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let meta = fs::metadata(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        check_not_writable_by_others(path, &meta).map_err(|source| ConfigError::Unsafe {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks the text of `agent.toml`; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.check().map_err(|problem| ConfigError::Invalid {
            path: path.to_owned(),
            problem,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if let Some(KindSetting::Chain(kinds)) = &self.approver.kind
            && kinds.is_empty()
        {
            return Err("[approver] kind = [] names no approver; leave it out for auto".into());
        }
        if let Some(cmd) = &self.approver.command
            && cmd.first().is_none_or(|p| p.is_empty())
        {
            return Err(
                "[approver] command must name a program, e.g. command = [\"/usr/bin/my-approver\"]"
                    .into(),
            );
        }
        let a = &self.approval;
        if a.rate_limit_burst == 0 || a.rate_limit_per_minute == 0 {
            return Err(
                "[approval] rate_limit_burst and rate_limit_per_minute must be at least 1".into(),
            );
        }
        if self.ssh.idle_timeout.is_zero() {
            return Err("[ssh] idle_timeout must be longer than 0s".into());
        }
        if a.allowed_future_skew_ms > MAX_SKEW_MS {
            return Err(format!(
                "[approval] allowed_future_skew_ms must be at most {MAX_SKEW_MS}; fix the host's clock instead"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("agent.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, AgentConfig::default());
        assert_eq!(c.approval.allowed_future_skew_ms, 30_000);
        assert_eq!(c.approval.rate_limit_burst, 5);
        assert_eq!(c.approval.rate_limit_per_minute, 20);
    }

    #[test]
    fn reads_every_documented_key() {
        let c = parse(
            r#"
            [approver]
            kind = "command"
            command = ["prog", "arg"]
            [approval]
            allowed_future_skew_ms = 1000
            rate_limit_burst = 2
            rate_limit_per_minute = 3
            [secrets]
            backend = "file"
            [ssh]
            refuse_rsa_sha1 = true
            "#,
        )
        .unwrap();
        assert_eq!(
            c.approver.kind,
            Some(KindSetting::One(KindWord::Kind(ApproverKind::Command)))
        );
        assert_eq!(c.approver.command.unwrap(), ["prog", "arg"]);
        assert_eq!(c.approval.allowed_future_skew_ms, 1000);
        assert_eq!(c.approval.rate_limit_burst, 2);
        assert_eq!(c.approval.rate_limit_per_minute, 3);
        assert_eq!(c.secrets.backend, SecretsBackend::File);
        assert!(c.ssh.refuse_rsa_sha1);
        assert!(!parse("").unwrap().ssh.refuse_rsa_sha1);
    }

    #[test]
    fn approver_kind_is_auto_one_kind_or_a_chain_and_presence_per_service() {
        let c = parse("[approver]\nkind = \"auto\"").unwrap();
        assert_eq!(c.approver.kind.unwrap().chain(), None);
        let c = parse("[approver]\nkind = [\"askpass\", \"tty\"]\n[presence]\npam = \"verified\"")
            .unwrap();
        assert_eq!(
            c.approver.kind.unwrap().chain(),
            Some(vec![ApproverKind::Askpass, ApproverKind::Tty])
        );
        assert_eq!(c.presence.pam, Required::Verified);
        assert_eq!(c.presence.ssh, Required::Any);
        assert!(parse("[approver]\nkind = []").is_err());
        assert!(parse("[approver]\nkind = [\"auto\"]").is_err());
        assert!(parse("[presence]\npam = \"strong\"").is_err());
        let c = parse("[ssh]\nidle_timeout = \"90s\"").unwrap();
        assert_eq!(c.ssh.idle_timeout, std::time::Duration::from_secs(90));
        assert!(parse("[ssh]\nidle_timeout = \"0s\"").is_err());
        assert!(parse("[ssh]\nidle_timeout = \"soon\"").is_err());
    }

    #[test]
    fn rejects_unknown_keys_at_every_level() {
        for text in [
            "colour = 1",
            "[approver]\nkinds = \"tty\"",
            "[approval]\nrate_limit_burts = 5",
            "[ssh]\nx = 1",
            "[ssh]\nidle = \"1h\"",
            "[secrets]\nbackend_kind = \"file\"",
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains("unknown field"), "{text}: {err}");
        }
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse("[approver]\nkind = \"yes\"").is_err());
        assert!(parse("[approver]\ncommand = []").is_err());
        assert!(parse("[approval]\nrate_limit_burst = 0").is_err());
        assert!(parse("[approval]\nallowed_future_skew_ms = 99999999").is_err());
    }

    #[test]
    fn approver_kind_parses_cli_spelling() {
        assert_eq!("tty".parse::<ApproverKind>(), Ok(ApproverKind::Tty));
        assert_eq!("askpass".parse::<ApproverKind>(), Ok(ApproverKind::Askpass));
        assert_eq!("command".parse::<ApproverKind>(), Ok(ApproverKind::Command));
        assert_eq!("desktop".parse::<ApproverKind>(), Ok(ApproverKind::Desktop));
        assert_eq!("polkit".parse::<ApproverKind>(), Ok(ApproverKind::Polkit));
        assert_eq!("fprintd".parse::<ApproverKind>(), Ok(ApproverKind::Fprintd));
        assert!("always".parse::<ApproverKind>().is_err());
        for kind in ["desktop", "polkit", "fprintd"] {
            let c = parse(&format!("[approver]\nkind = \"{kind}\"")).unwrap();
            assert_eq!(
                c.approver.kind,
                Some(KindSetting::One(KindWord::Kind(kind.parse().unwrap())))
            );
        }
    }
}
