//! What an approver is asked: one payload per service, each with its JSON form (for the
//! `command` approver) and its text (for a person). Everything a prompt shows that a peer
//! chose (a host's command line, a key comment, a path) is escaped by [`display_safe`].

use std::time::Duration;

use serde::Serialize;

use crate::caller::chain::{ProcessLink, describe_chain};
use crate::duration::format_duration;

/// A remote-approval (PAM) prompt: what a Linux host asks for. Every field comes from the
/// host's signed request, i.e. from a machine we trust to say who asks, but the strings may
/// still hold anything the user on that host typed (the sudo command line), so renderings
/// escape them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PamPrompt {
    /// `linux_hostname`.
    pub host: String,
    /// `linux_host_id`, as in the allowlist.
    pub host_id: String,
    /// `pam_service`, e.g. `sudo`.
    pub service: String,
    pub user: String,
    pub ruser: Option<String>,
    pub tty: Option<String>,
    pub rhost: Option<String>,
    /// `sudo_command`, when sent.
    pub command: Option<String>,
    pub request_id: String,
}

/// A secrets-broker policy change: a binary is to get (or keep, after an upgrade) access to
/// secrets. The path and hash come from the agent's own look at the file, the grants from the
/// `nod` command that asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretsPrompt {
    pub path: String,
    /// `sha256:<hex>` of the binary.
    pub hash: String,
    /// For an upgrade: the hash being replaced.
    pub previous_hash: Option<String>,
    pub read: Vec<String>,
    pub write: Vec<String>,
    pub search: bool,
    /// The binary is an interpreter: the grant covers every script it runs.
    pub interpreter: bool,
    /// The user can write the file, so anything running as the user can replace it.
    pub writable: bool,
    /// Its requests are to be served without a session handshake (keychain-auth clients).
    pub legacy_protocol: bool,
    /// Who asks for the change: the `nod` process and its ancestors (`nod ← bash ← setup.sh`).
    pub requested_by: Vec<ProcessLink>,
}

/// A request of the `nod` command line itself (`nod secrets get`): the command line may read
/// anything the person allows, so each use is asked, naming who ran it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretsUsePrompt {
    /// `read`, `write`, `delete` or `search`.
    pub action: String,
    pub service: String,
    pub targets: Vec<String>,
    /// The `nod` process and its ancestors: the shell or script that ran it.
    pub process_chain: Vec<ProcessLink>,
    /// When approved, the same caller may do this again without asking for this long.
    pub remember_secs: Option<u64>,
}

/// What an approver is asked. One variant per service; later services add their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Prompt {
    /// Remote approval of a PAM login or sudo on a Linux host.
    Pam(PamPrompt),
    /// One signature with an SSH key added with `ssh-add -c`.
    SshSign(SshSignPrompt),
    /// Minting an SSH session certificate (`nod ssh session`).
    SshSessionCert(SessionCertPrompt),
    /// `nod register <path>`: a new binary gets access to secrets.
    SecretsRegister(SecretsPrompt),
    /// `nod approve <hash>`: a pending binary gets access to secrets.
    SecretsApprove(SecretsPrompt),
    /// `nod upgrade <path>`: a registered binary's grants move to its new hash.
    SecretsUpgrade(SecretsPrompt),
    /// `nod secrets get|put|rm|ls`: the command line reads or writes a secret.
    SecretsUse(SecretsUsePrompt),
}

/// Longest rendering of one field in a human-readable prompt.
const MAX_FIELD_CHARS: usize = 300;

/// Makes host-supplied text safe to show: control characters (including ESC, so no terminal
/// escape sequences) and bidi overrides are escaped, and long values are cut.
pub fn display_safe(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX_FIELD_CHARS {
            out.push('…');
            break;
        }
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl Prompt {
    /// The prompt's kind as in its JSON `kind` and the `NOD_PROMPT_KIND` variable.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Pam(_) => "pam",
            Self::SshSign(_) => "ssh-sign",
            Self::SshSessionCert(_) => "ssh-session-cert",
            Self::SecretsRegister(_) => "secrets-register",
            Self::SecretsApprove(_) => "secrets-approve",
            Self::SecretsUpgrade(_) => "secrets-upgrade",
            Self::SecretsUse(_) => "secrets-use",
        }
    }

    /// One JSON object, as the `command` approver receives it on stdin.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a prompt always serializes")
    }

    /// A few lines of text for a person, with every host-supplied value escaped.
    pub fn text(&self) -> String {
        match self {
            Self::Pam(p) => {
                let mut text = format!(
                    "nod: allow {} as {} on {} ({})?",
                    display_safe(&p.service),
                    display_safe(&p.user),
                    display_safe(&p.host),
                    display_safe(&p.host_id),
                );
                if let Some(cmd) = &p.command {
                    text.push_str(&format!("\n  command: {}", display_safe(cmd)));
                }
                let mut from = Vec::new();
                if let Some(tty) = &p.tty {
                    from.push(format!("tty {}", display_safe(tty)));
                }
                if let Some(rhost) = &p.rhost {
                    from.push(format!("from {}", display_safe(rhost)));
                }
                if let Some(ruser) = &p.ruser {
                    from.push(format!("by {}", display_safe(ruser)));
                }
                if !from.is_empty() {
                    text.push_str(&format!("\n  {}", from.join(", ")));
                }
                text
            }
            Self::SshSessionCert(p) => p.text(),
            Self::SshSign(p) => {
                let by = match (&p.caller_exe, p.caller_pid) {
                    (Some(exe), Some(pid)) => format!("{} (pid {pid})", display_safe(exe)),
                    (None, Some(pid)) => format!("pid {pid}"),
                    (Some(exe), None) => display_safe(exe),
                    (None, None) => "an unknown program".to_owned(),
                };
                let mut text = format!(
                    "nod: allow a signature with SSH key {} ({})?\n  for: {}",
                    display_safe(&p.key_comment),
                    p.fingerprint,
                    display_safe(&p.purpose),
                );
                if let Some(dest) = &p.destination {
                    text.push_str(&format!("\n  to: {}", display_safe(&dest.describe())));
                }
                if p.forwarded {
                    text.push_str("\n  through agent forwarding");
                }
                text.push_str(&format!("\n  requested by {by}"));
                if p.process_chain.len() > 1 {
                    text.push_str(&format!(
                        "\n  chain: {}",
                        display_safe(&describe_chain(&p.process_chain))
                    ));
                }
                text
            }
            Self::SecretsRegister(p) | Self::SecretsApprove(p) => {
                format!(
                    "nod: let {} use secrets?\n{}",
                    display_safe(&p.path),
                    p.details()
                )
            }
            Self::SecretsUpgrade(p) => format!(
                "nod: {} changed; keep its access to secrets?\n{}",
                display_safe(&p.path),
                p.details()
            ),
            Self::SecretsUse(p) => {
                let targets = if p.targets.is_empty() {
                    "(all names)".to_owned()
                } else {
                    p.targets
                        .iter()
                        .map(|t| display_safe(t))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let mut text = format!(
                    "nod: {} {} in secrets service {}?\n  run by: {}",
                    display_safe(&p.action),
                    targets,
                    display_safe(&p.service),
                    display_safe(&describe_chain(&p.process_chain))
                );
                if let Some(secs) = p.remember_secs {
                    text.push_str(&format!(
                        "\n  and let the same caller do this again for {} without asking",
                        format_duration(Duration::from_secs(secs))
                    ));
                }
                text
            }
        }
    }
}

impl SecretsPrompt {
    fn details(&self) -> String {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.iter()
                    .map(|s| display_safe(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let mut text = format!("  binary: {}", display_safe(&self.hash));
        if let Some(prev) = &self.previous_hash {
            text.push_str(&format!("\n  was: {}", display_safe(prev)));
        }
        text.push_str(&format!(
            "\n  read: {}\n  write: {}\n  search: {}",
            list(&self.read),
            list(&self.write),
            if self.search { "yes" } else { "no" }
        ));
        if self.interpreter {
            text.push_str(
                "\n  WARNING: this is an interpreter; approving it approves every script it runs",
            );
        }
        if self.writable {
            text.push_str(
                "\n  note: you can write this file, so anything running as you can replace it \
                 (a replaced file needs `nod upgrade` and your yes again)",
            );
        }
        if self.legacy_protocol {
            text.push_str(
                "\n  note: served without a session handshake (keychain-auth client); see \
                 docs/security.md",
            );
        }
        if !self.requested_by.is_empty() {
            text.push_str(&format!(
                "\n  asked by: {}",
                display_safe(&describe_chain(&self.requested_by))
            ));
        }
        text
    }
}

/// A confirm prompt for one signature (`ssh-add -c` keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshSignPrompt {
    pub key_comment: String,
    /// `SHA256:…`, as `ssh-add -l` prints it.
    pub fingerprint: String,
    pub caller_pid: Option<i32>,
    pub caller_exe: Option<String>,
    /// The caller and its ancestors, nearest first (`ssh ← git ← zsh`).
    pub process_chain: Vec<ProcessLink>,
    /// The server from the connection's last verified `session-bind`; `None` when unbound.
    pub destination: Option<SshDestination>,
    /// Whether the connection came through agent forwarding.
    pub forwarded: bool,
    /// What the data to sign says it is: `ssh login as <user>`, `sshsig namespace <ns>`, or
    /// `unknown`.
    pub purpose: String,
}

/// The server a signature is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshDestination {
    /// Names `known_hosts` gives the verified host key; empty when none.
    pub names: Vec<String>,
    /// `SHA256:…` of the host key.
    pub host_key_fingerprint: String,
}

impl SshDestination {
    /// The names, or the fingerprint when there are none.
    pub fn describe(&self) -> String {
        if self.names.is_empty() {
            format!("unknown host with key {}", self.host_key_fingerprint)
        } else {
            format!("{} ({})", self.names.join(", "), self.host_key_fingerprint)
        }
    }
}

/// The prompt for minting a session certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionCertPrompt {
    pub principals: Vec<String>,
    pub validity_secs: u64,
    /// `SHA256:…` of the user CA.
    pub ca_fingerprint: String,
    pub caller_pid: Option<i32>,
    pub caller_exe: Option<String>,
}

impl SessionCertPrompt {
    /// The human-readable prompt, every caller-supplied value escaped.
    pub fn text(&self) -> String {
        let by = match (&self.caller_exe, self.caller_pid) {
            (Some(exe), Some(pid)) => format!("{} (pid {pid})", display_safe(exe)),
            (None, Some(pid)) => format!("pid {pid}"),
            (Some(exe), None) => display_safe(exe),
            (None, None) => "an unknown program".to_owned(),
        };
        format!(
            "nod: issue an SSH session certificate for {} valid {}?\n  signed by user CA {}; \
             it signs without asking until it expires\n  requested by {by}",
            display_safe(&self.principals.join(", ")),
            format_duration(Duration::from_secs(self.validity_secs)),
            self.ca_fingerprint,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt() -> Prompt {
        crate::approvers::sample_prompt()
    }
    #[test]
    fn prompt_json_has_the_contract_fields() {
        let v: serde_json::Value = serde_json::from_slice(&prompt().to_json()).unwrap();
        assert_eq!(v["kind"], "pam");
        for (k, want) in [
            ("host", "web-1.example.com"),
            ("host_id", "web-1"),
            ("service", "sudo"),
            ("user", "alice"),
            ("ruser", "alice"),
            ("tty", "/dev/pts/3"),
            ("rhost", "10.0.0.5"),
            ("command", "/usr/bin/apt upgrade"),
            ("request_id", "r1"),
        ] {
            assert_eq!(v[k], want, "{k}");
        }
    }

    #[test]
    fn absent_command_is_json_null() {
        let Prompt::Pam(mut p) = prompt() else {
            unreachable!()
        };
        p.command = None;
        let v: serde_json::Value = serde_json::from_slice(&Prompt::Pam(p).to_json()).unwrap();
        assert!(v["command"].is_null());
    }

    #[test]
    fn text_escapes_terminal_control_sequences() {
        let Prompt::Pam(mut p) = prompt() else {
            unreachable!()
        };
        p.command = Some("ls\x1b[2J\rApproved!\u{202e}".into());
        let text = Prompt::Pam(p).text();
        assert!(!text.contains('\x1b'));
        assert!(!text.contains('\r'));
        assert!(!text.contains('\u{202e}'));
        assert!(text.contains("\\u{1b}[2J"));
        assert!(text.contains("web-1.example.com") && text.contains("Approved!"));
        assert!(
            text.starts_with("nod: allow sudo as alice on web-1.example.com (web-1)?\n"),
            "{text}"
        );
    }

    #[test]
    fn ssh_sign_prompt_json_has_kind_key_and_caller() {
        let prompt = Prompt::SshSign(SshSignPrompt {
            key_comment: "me@laptop\x1b[2J".into(),
            fingerprint: "SHA256:abc".into(),
            caller_pid: Some(42),
            caller_exe: Some("/usr/bin/ssh".into()),
            process_chain: vec![
                crate::caller::chain::ProcessLink {
                    pid: 42,
                    comm: "ssh".into(),
                    exe: Some("/usr/bin/ssh".into()),
                },
                crate::caller::chain::ProcessLink {
                    pid: 41,
                    comm: "git".into(),
                    exe: None,
                },
            ],
            destination: Some(SshDestination {
                names: vec!["github.com".into()],
                host_key_fingerprint: "SHA256:host".into(),
            }),
            forwarded: true,
            purpose: "ssh login as git".into(),
        });
        let v: serde_json::Value = serde_json::from_slice(&prompt.to_json()).unwrap();
        assert_eq!(v["kind"], "ssh-sign");
        assert_eq!(prompt.kind(), "ssh-sign");
        assert_eq!(v["fingerprint"], "SHA256:abc");
        assert_eq!(v["caller_pid"], 42);
        assert_eq!(v["caller_exe"], "/usr/bin/ssh");
        let text = prompt.text();
        assert!(!text.contains('\x1b'));
        assert!(text.contains("SHA256:abc") && text.contains("/usr/bin/ssh (pid 42)"));
        assert_eq!(v["purpose"], "ssh login as git");
        assert_eq!(v["forwarded"], true);
        assert_eq!(v["destination"]["names"][0], "github.com");
        assert_eq!(v["destination"]["host_key_fingerprint"], "SHA256:host");
        assert_eq!(v["process_chain"][0]["comm"], "ssh");
        assert_eq!(v["process_chain"][1]["pid"], 41);
        assert!(text.contains("for: ssh login as git"), "{text}");
        assert!(text.contains("to: github.com (SHA256:host)"), "{text}");
        assert!(text.contains("chain: ssh (42) ← git (41)"), "{text}");
        assert!(text.contains("forwarding"), "{text}");
    }

    #[test]
    fn text_cuts_long_values() {
        assert_eq!(
            display_safe(&"a".repeat(1000)).chars().count(),
            MAX_FIELD_CHARS + 1
        );
    }

    #[test]
    fn secrets_prompt_has_its_kind_and_warns_about_interpreters() {
        let p = Prompt::SecretsRegister(SecretsPrompt {
            path: "/usr/bin/python3".into(),
            hash: "sha256:00".into(),
            previous_hash: None,
            read: vec!["aws".into()],
            write: vec![],
            search: false,
            interpreter: true,
            writable: false,
            legacy_protocol: false,
            requested_by: Vec::new(),
        });
        let v: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(v["kind"], "secrets-register");
        assert_eq!(v["hash"], "sha256:00");
        assert_eq!(v["interpreter"], true);
        assert!(p.text().contains("interpreter"));
        assert_eq!(p.kind(), "secrets-register");
    }
}
