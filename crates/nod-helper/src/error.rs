//! Everything that can end a `nod-helper` run other than an approval, and the one mapping from
//! it to the exit code that `pam_nod.so` turns into a PAM result (docs/design.md §1, exit codes).
//!
//! The split that matters for security: 10/11/12 let PAM fall back to the password (only the
//! authenticator is missing), everything else fails closed.

use std::fmt;
use std::io;
use std::path::PathBuf;

use nod_proto::ProtoError;

/// Exit code of an approved request.
pub const EXIT_APPROVED: u8 = 0;
/// The agent cannot be reached or could not ask the person, or the helper does not run as root
/// (the PAM stack of a program that is not root). PAM falls back to the password.
pub const EXIT_UNAVAILABLE: u8 = 10;
/// The person cancelled the prompt. PAM falls back to the password.
pub const EXIT_CANCELLED: u8 = 11;
/// The agent failed to obtain a decision. PAM falls back to the password.
pub const EXIT_FAILED: u8 = 12;
/// The person denied the request. Hard fail.
pub const EXIT_DENIED: u8 = 20;
/// The reply failed signature, key id, binding, freshness or replay checks. Hard fail.
pub const EXIT_AUTH: u8 = 30;
/// Unsafe or invalid configuration. Hard fail.
pub const EXIT_CONFIG: u8 = 31;
/// The reply is not a well-formed protocol v1 message. Hard fail.
pub const EXIT_PROTOCOL: u8 = 32;
/// `gen-key` could not write its files. Never produced by `request`.
pub const EXIT_GEN_KEY: u8 = 1;

/// Why a run did not end in approval (or, for `gen-key`, in new key files).
#[derive(Debug)]
pub enum HelperError {
    /// A config or key file, or one of its ancestors, fails the trusted-path checks.
    UnsafePath(nod_fscheck::Unsafe),
    /// A config or key file is trusted but its content is wrong.
    BadConfig { path: PathBuf, problem: String },
    /// `request` does not run as root, so it cannot read the host key: the PAM stack belongs to
    /// a program that is not root (a screen locker, say). Nothing is unsafe; nod just cannot
    /// take part, so the next module decides.
    NotRoot { uid: u32 },
    /// The PAM user does not exist, so `{uid}`/`{user}` cannot be filled in.
    UnknownUser { user: String, problem: String },
    /// The agent socket exists but is not a socket owned by the PAM user.
    UnsafeSocket { path: PathBuf, problem: String },
    /// Nothing at the socket path: no `ssh -R` forward is up.
    NoSocket { path: PathBuf },
    /// Connecting to the socket failed (refused, vanished, …).
    AgentUnreachable { path: PathBuf, kind: io::ErrorKind },
    /// The connection closed before a single reply byte: the forward is up, the agent is not.
    AgentClosed,
    /// The deadline passed before a single reply byte arrived.
    AgentTimedOut { timeout_ms: u64 },
    /// The reply began, every byte of it valid so far, and then stopped until the deadline.
    AgentStalled { timeout_ms: u64, received: usize },
    /// The agent answered `unavailable`.
    AgentUnavailable { detail: String },
    /// The agent answered `cancelled`.
    Cancelled { detail: String },
    /// The agent answered `failed`.
    Failed { detail: String },
    /// The agent answered `denied`.
    Denied { detail: String },
    /// The reply's signature verifies under no pinned agent key, and the key it claims to be
    /// signed by (`agent_key_id`, a nod agent's fingerprint) is not pinned either: another
    /// agent answered, or the workstation's agent key changed since pairing.
    UnpinnedAgentKey {
        claimed: String,
        pinned: Vec<String>,
    },
    /// The reply claims a pinned key but its signature does not verify under it: it was
    /// changed on the way.
    AlteredReply { claimed: String },
    /// The reply parsed but must not be believed.
    Auth(ProtoError),
    /// The reply is not a well-formed protocol v1 frame or message.
    Protocol(ProtoError),
    /// A local facility the request needs failed (randomness, clock, sockets); `fix` says what
    /// to look at.
    System {
        what: &'static str,
        detail: String,
        fix: &'static str,
    },
    /// `gen-key` refused to overwrite a key file.
    KeyExists { path: PathBuf },
    /// `gen-key` could not write a key file.
    KeyWrite { path: PathBuf, error: io::Error },
}

impl HelperError {
    /// The exit code for this outcome. This is the only place the mapping lives.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotRoot { .. }
            | Self::NoSocket { .. }
            | Self::AgentUnreachable { .. }
            | Self::AgentClosed
            | Self::AgentTimedOut { .. }
            | Self::AgentStalled { .. }
            | Self::AgentUnavailable { .. } => EXIT_UNAVAILABLE,
            Self::Cancelled { .. } => EXIT_CANCELLED,
            // A local failure to build the request is not an attack and the password still
            // guards the account, so it falls back like a failed approval.
            Self::Failed { .. } | Self::System { .. } => EXIT_FAILED,
            Self::Denied { .. } => EXIT_DENIED,
            Self::UnpinnedAgentKey { .. } | Self::AlteredReply { .. } | Self::Auth(_) => EXIT_AUTH,
            Self::UnsafePath(_)
            | Self::BadConfig { .. }
            | Self::UnknownUser { .. }
            | Self::UnsafeSocket { .. } => EXIT_CONFIG,
            Self::Protocol(_) => EXIT_PROTOCOL,
            Self::KeyExists { .. } | Self::KeyWrite { .. } => EXIT_GEN_KEY,
        }
    }

    /// Sorts an error from reading or checking the agent's reply.
    ///
    /// EOF or a dead connection before the first byte, and a deadline with no byte, mean the
    /// agent is not there (sshd accepts the forward even when the agent is down): unavailable,
    /// not a protocol error, so the person can still use the password. So is a reply that
    /// starts and then stalls past the deadline ([`ProtoError::Stalled`]): a slow or stuck
    /// link is a missing authenticator, not an attack. Only bytes that already fail to decode
    /// make it a protocol error; a stall never makes anything count as approved.
    pub fn from_reply(e: ProtoError, timeout_ms: u64) -> Self {
        use io::ErrorKind::{BrokenPipe, ConnectionReset, TimedOut, WouldBlock};
        match e {
            ProtoError::Closed => Self::AgentClosed,
            ProtoError::Stalled { received } => Self::AgentStalled {
                timeout_ms,
                received,
            },
            ProtoError::Io {
                kind: WouldBlock | TimedOut,
                started: false,
            } => Self::AgentTimedOut { timeout_ms },
            ProtoError::Io {
                kind: ConnectionReset | BrokenPipe,
                started: false,
            } => Self::AgentClosed,
            e if e.is_auth_failure() => Self::Auth(e),
            e => Self::Protocol(e),
        }
    }
}

impl fmt::Display for HelperError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsafePath(u) => unsafe_path(f, u),
            Self::BadConfig { path, problem } => write!(f, "{}: {problem}", path.display()),
            Self::NotRoot { uid } => write!(
                f,
                "nod-helper runs as uid {uid}, not root, and only root can read the host key, so \
                 this authentication falls through to the next PAM module (the password) — \
                 pam_nod.so works only in the PAM stacks of programs that run as root (sudo, su, \
                 sshd); leave it out of the others' (a screen locker's, say)"
            ),
            Self::UnknownUser { user, problem } => {
                write!(f, "cannot look up user {user:?}: {problem}")
            }
            Self::UnsafeSocket { path, problem } => write!(
                f,
                "refusing agent socket {}: {problem} — only the user's own `ssh -R` forward may live there",
                path.display()
            ),
            Self::NoSocket { path } => write!(
                f,
                "no agent socket at {} — is your `ssh -R` session still open? see `nod-helper doctor`",
                path.display()
            ),
            Self::AgentUnreachable {
                path,
                kind: io::ErrorKind::ConnectionRefused,
            } => write!(
                f,
                "the agent socket {} is stale: nothing listens on it (connection refused) — the \
                 `ssh -R` session that made it has ended, or a later login took the path over \
                 and left: log in again with the RemoteForward and keep that session open",
                path.display()
            ),
            Self::AgentUnreachable { path, kind } => write!(
                f,
                "cannot connect to the agent socket {} ({kind}) — is your `ssh -R` session still open and `nod agent` running?",
                path.display()
            ),
            Self::AgentClosed => f.write_str(
                "the agent closed the connection without a reply — either `nod agent` is not running on your workstation (the ssh forward is up), or it refused this request (unknown host, bad signature, wrong key id, stale or replayed): its log says which",
            ),
            Self::AgentTimedOut { timeout_ms } => write!(
                f,
                "no reply from the agent within {timeout_ms} ms — answer the prompt sooner, or raise timeout_ms"
            ),
            Self::AgentStalled {
                timeout_ms,
                received,
            } => write!(
                f,
                "the agent's reply stopped after {received} bytes and was not complete within {timeout_ms} ms — is the ssh connection to your workstation stuck? (raise timeout_ms if it is only slow)"
            ),
            Self::AgentUnavailable { detail } => write!(
                f,
                "the agent could not ask for approval{detail} — `nod doctor` on the workstation \
                 says why nobody could be asked"
            ),
            Self::Cancelled { detail } => write!(f, "the approval was cancelled{detail}"),
            Self::Failed { detail } => write!(
                f,
                "the agent failed to get a decision{detail} — its log on the workstation says why"
            ),
            Self::Denied { detail } => write!(f, "the request was denied on the agent{detail}"),
            Self::UnpinnedAgentKey { claimed, pinned } => write!(
                f,
                "the agent's reply is signed by {claimed}, but this host pins {} — the \
                 workstation's agent key is not the one paired with this host: run `nod pair \
                 <this host>` again on the workstation",
                if pinned.is_empty() {
                    "no agent key".to_owned()
                } else {
                    pinned.join(", ")
                }
            ),
            Self::AlteredReply { claimed } => write!(
                f,
                "the agent's reply claims the pinned key {claimed}, but its signature does not \
                 verify under it: the reply was changed on the way — find out what serves the \
                 forwarded socket"
            ),
            Self::Auth(e) => write!(f, "rejected the agent's reply: {e} — {}", auth_fix(e)),
            Self::Protocol(e) => write!(
                f,
                "protocol error talking to the agent: {e} — is the program behind the socket a protocol v1 agent (`nod agent`)?"
            ),
            Self::System { what, detail, fix } => write!(f, "{what} ({detail}) — {fix}"),
            Self::KeyExists { path } => write!(
                f,
                "{} already exists — pass --force to replace it",
                path.display()
            ),
            Self::KeyWrite { path, error } => write!(
                f,
                "cannot write {}: {error} — check that the directory exists and is writable by root",
                path.display()
            ),
        }
    }
}

/// A trusted-path failure, with the fix where `nod_fscheck` names none.
fn unsafe_path(f: &mut fmt::Formatter<'_>, u: &nod_fscheck::Unsafe) -> fmt::Result {
    use nod_fscheck::Reason;
    let p = u.path.display();
    match &u.reason {
        Reason::NotFound => write!(
            f,
            "{p} does not exist — create it as docs/setup.md steps 5-6 describe, or fix the path \
             that names it"
        ),
        Reason::Io(nix::errno::Errno::EACCES) => write!(
            f,
            "{p} cannot be read: permission denied — run this as root (`sudo`)"
        ),
        Reason::Io(e) => write!(
            f,
            "{p} cannot be checked ({}) — fix the file, or the setting that names it",
            e.desc()
        ),
        Reason::NotRegularFile => write!(
            f,
            "unsafe configuration: {p} is not a regular file — point the setting at a file"
        ),
        Reason::NotDirectory => write!(
            f,
            "unsafe configuration: {p} is not a directory — fix the path"
        ),
        _ => write!(f, "unsafe configuration: {u}"),
    }
}

/// What to do about a reply that parsed but must not be believed.
fn auth_fix(e: &ProtoError) -> &'static str {
    match e {
        ProtoError::Expired { .. } | ProtoError::FromFuture { .. } => {
            "check both clocks (`timedatectl`; `nod doctor --host` measures the skew)"
        }
        ProtoError::Mismatch(_) => {
            "the reply answers another request (replayed, or mixed up on the way): find out \
             what serves the forwarded socket"
        }
        ProtoError::WrongKeyId { .. } => {
            "the pinned key file's key_id= line names another id than the agent claims: remove \
             that line, or run `nod pair <this host>` again on the workstation"
        }
        _ => {
            "check that agent_pubkey_file pins your agent's current key (`nod agent-key`), or \
             run `nod pair <this host>` again on the workstation"
        }
    }
}

impl std::error::Error for HelperError {}

/// The fix for a failing kernel random generator.
pub const RANDOM_FIX: &str = "the kernel's getrandom(2) failed: check the kernel and its \
                              seccomp policy";

/// Makes an untrusted or multi-line message safe to print as one line of a log.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// One value of every variant, with the exit code docs/design.md §1 gives it. The match in
    /// `covers` has no wildcard, so adding a variant without listing it here fails to compile.
    fn every_variant() -> Vec<(HelperError, u8)> {
        let p = || PathBuf::from("/etc/nod/config.toml");
        let unsafe_path =
            nod_fscheck::open_file(Path::new("relative"), nod_fscheck::Rule::root_file())
                .unwrap_err();
        let s = String::new;
        vec![
            (HelperError::UnsafePath(unsafe_path), 31),
            (
                HelperError::BadConfig {
                    path: p(),
                    problem: s(),
                },
                31,
            ),
            (HelperError::NotRoot { uid: 1000 }, 10),
            (
                HelperError::UnknownUser {
                    user: s(),
                    problem: s(),
                },
                31,
            ),
            (
                HelperError::UnsafeSocket {
                    path: p(),
                    problem: s(),
                },
                31,
            ),
            (HelperError::NoSocket { path: p() }, 10),
            (
                HelperError::AgentUnreachable {
                    path: p(),
                    kind: io::ErrorKind::ConnectionRefused,
                },
                10,
            ),
            (HelperError::AgentClosed, 10),
            (HelperError::AgentTimedOut { timeout_ms: 1 }, 10),
            (
                HelperError::AgentStalled {
                    timeout_ms: 1,
                    received: 5,
                },
                10,
            ),
            (HelperError::AgentUnavailable { detail: s() }, 10),
            (HelperError::Cancelled { detail: s() }, 11),
            (HelperError::Failed { detail: s() }, 12),
            (HelperError::Denied { detail: s() }, 20),
            (
                HelperError::UnpinnedAgentKey {
                    claimed: s(),
                    pinned: vec![],
                },
                30,
            ),
            (HelperError::AlteredReply { claimed: s() }, 30),
            (HelperError::Auth(ProtoError::BadSignature), 30),
            (HelperError::Protocol(ProtoError::FrameTruncated), 32),
            (
                HelperError::System {
                    what: "x",
                    detail: s(),
                    fix: "y",
                },
                12,
            ),
            (HelperError::KeyExists { path: p() }, 1),
            (
                HelperError::KeyWrite {
                    path: p(),
                    error: io::Error::other("x"),
                },
                1,
            ),
        ]
    }

    fn covers(e: &HelperError) -> &'static str {
        match e {
            HelperError::UnsafePath(_) => "UnsafePath",
            HelperError::BadConfig { .. } => "BadConfig",
            HelperError::NotRoot { .. } => "NotRoot",
            HelperError::UnknownUser { .. } => "UnknownUser",
            HelperError::UnsafeSocket { .. } => "UnsafeSocket",
            HelperError::NoSocket { .. } => "NoSocket",
            HelperError::AgentUnreachable { .. } => "AgentUnreachable",
            HelperError::AgentClosed => "AgentClosed",
            HelperError::AgentTimedOut { .. } => "AgentTimedOut",
            HelperError::AgentStalled { .. } => "AgentStalled",
            HelperError::AgentUnavailable { .. } => "AgentUnavailable",
            HelperError::Cancelled { .. } => "Cancelled",
            HelperError::Failed { .. } => "Failed",
            HelperError::Denied { .. } => "Denied",
            HelperError::UnpinnedAgentKey { .. } => "UnpinnedAgentKey",
            HelperError::AlteredReply { .. } => "AlteredReply",
            HelperError::Auth(_) => "Auth",
            HelperError::Protocol(_) => "Protocol",
            HelperError::System { .. } => "System",
            HelperError::KeyExists { .. } => "KeyExists",
            HelperError::KeyWrite { .. } => "KeyWrite",
        }
    }

    const VARIANT_COUNT: usize = 21;

    #[test]
    fn every_variant_maps_to_its_documented_exit_code() {
        let all = every_variant();
        let mut names: Vec<_> = all.iter().map(|(e, _)| covers(e)).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), VARIANT_COUNT, "every variant listed once");
        for (e, code) in &all {
            assert_eq!(e.exit_code(), *code, "{} ({e})", covers(e));
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
    }

    /// Every variant with the values it really carries, as `request`, `check-config` and
    /// `doctor` build them, and several for the variants whose text depends on what they hold.
    fn representative() -> Vec<HelperError> {
        use nod_fscheck::{Reason, Unsafe};
        let key = || PathBuf::from("/etc/nod/host_ed25519.key");
        let at = |reason| Unsafe {
            path: key(),
            reason,
        };
        let mut all: Vec<HelperError> = [
            Reason::NotAbsolute,
            Reason::NotFound,
            Reason::Symlink,
            Reason::WrongOwner { uid: 1000, want: 0 },
            Reason::Writable { mode: 0o666 },
            Reason::NotPrivate { mode: 0o644 },
            Reason::NotRegularFile,
            Reason::NotDirectory,
            Reason::Io(nix::errno::Errno::EACCES),
            Reason::Io(nix::errno::Errno::EIO),
        ]
        .into_iter()
        .map(|r| HelperError::UnsafePath(at(r)))
        .collect();
        let sock = || PathBuf::from("/run/user/1000/nod-agent.sock");
        let proto = [
            ProtoError::BadSignature,
            ProtoError::Mismatch("nonce"),
            ProtoError::WrongKeyId {
                expected: "host-key-1".into(),
                got: "SHA256:abc".into(),
            },
            ProtoError::Expired {
                now_ms: 20_000,
                expires_at_ms: 10_000,
            },
            ProtoError::FromFuture {
                now_ms: 10_000,
                created_at_ms: 90_000,
            },
        ];
        all.extend(proto.into_iter().map(HelperError::Auth));
        all.extend([
            HelperError::BadConfig {
                path: PathBuf::from("/etc/nod/config.toml"),
                problem: "line 6: timeout_ms = 30s is not a number — write whole \
                          milliseconds without quotes or units, e.g. timeout_ms = 30000"
                    .into(),
            },
            HelperError::NotRoot { uid: 1000 },
            HelperError::UnknownUser {
                user: "alice".into(),
                problem: "no such user — pass an existing user with --user (pam_nod passes \
                          PAM_USER)"
                    .into(),
            },
            HelperError::UnsafeSocket {
                path: sock(),
                problem: "it is owned by uid 1001, not by alice (uid 1000)".into(),
            },
            HelperError::NoSocket { path: sock() },
            HelperError::AgentUnreachable {
                path: sock(),
                kind: io::ErrorKind::ConnectionRefused,
            },
            HelperError::AgentUnreachable {
                path: sock(),
                kind: io::ErrorKind::PermissionDenied,
            },
            HelperError::AgentClosed,
            HelperError::AgentTimedOut { timeout_ms: 30_000 },
            HelperError::AgentStalled {
                timeout_ms: 30_000,
                received: 12,
            },
            HelperError::AgentUnavailable {
                detail: " (no-approver: nobody to ask)".into(),
            },
            HelperError::Cancelled {
                detail: String::new(),
            },
            HelperError::Failed {
                detail: " (audit: the audit log cannot be written)".into(),
            },
            HelperError::Denied {
                detail: String::new(),
            },
            HelperError::UnpinnedAgentKey {
                claimed: "SHA256:x2Tq".into(),
                pinned: vec!["SHA256:9f0A (any key id)".into()],
            },
            HelperError::UnpinnedAgentKey {
                claimed: "SHA256:x2Tq".into(),
                pinned: vec![],
            },
            HelperError::AlteredReply {
                claimed: "SHA256:x2Tq".into(),
            },
            HelperError::Protocol(ProtoError::Json("expected value at line 1 column 2".into())),
            HelperError::System {
                what: "the kernel random generator failed",
                detail: "ENOSYS".into(),
                fix: RANDOM_FIX,
            },
            HelperError::KeyExists { path: key() },
            HelperError::KeyWrite {
                path: key(),
                error: io::Error::from(io::ErrorKind::NotFound),
            },
        ]);
        all
    }

    /// A clause (text between `:`, `;`, `—`, `,` and parentheses, three words or more) that
    /// occurs twice in `msg`.
    fn repeated_clause(msg: &str) -> Option<&str> {
        msg.split([':', ';', '—', ',', '(', ')'])
            .map(str::trim)
            .filter(|c| c.split_whitespace().count() >= 3)
            .find(|c| msg.matches(*c).count() > 1)
    }

    #[test]
    fn every_message_says_each_thing_once_without_rust_debug_syntax() {
        let all = representative();
        let mut names: Vec<_> = all.iter().map(covers).collect();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            VARIANT_COUNT,
            "every variant has a representative"
        );
        for e in &all {
            let msg = e.to_string();
            assert_eq!(repeated_clause(&msg), None, "repeated clause in: {msg}");
            for debug in ["Some(", "None", "Ok(", "Err(", "\\\""] {
                assert!(!msg.contains(debug), "{debug} in: {msg}");
            }
            // The person's own answers need no fix.
            if !matches!(
                e,
                HelperError::Cancelled { .. } | HelperError::Denied { .. }
            ) {
                assert!(msg.contains(" — "), "no fix in: {msg}");
            }
        }
    }

    #[test]
    fn eof_and_silence_before_the_first_byte_are_unavailable() {
        use io::ErrorKind::*;
        let code = |e| HelperError::from_reply(e, 5).exit_code();
        assert_eq!(code(ProtoError::Closed), 10);
        for kind in [WouldBlock, TimedOut, ConnectionReset, BrokenPipe] {
            assert_eq!(
                code(ProtoError::Io {
                    kind,
                    started: false
                }),
                10,
                "{kind}"
            );
        }
        assert_eq!(code(ProtoError::Stalled { received: 1 }), 10);
        // An I/O error mid-frame that is not a stall at the deadline stays a protocol error.
        assert_eq!(
            code(ProtoError::Io {
                kind: ConnectionReset,
                started: true
            }),
            32
        );
        assert_eq!(code(ProtoError::FrameTruncated), 32);
        assert_eq!(code(ProtoError::FrameTooLarge(u64::MAX)), 32);
        assert_eq!(code(ProtoError::Json("x".into())), 32);
        assert_eq!(code(ProtoError::UnsupportedVersion(2)), 32);
        assert_eq!(code(ProtoError::InvalidField("expires_at_ms")), 32);
        assert_eq!(code(ProtoError::BadSignature), 30);
        assert_eq!(code(ProtoError::Mismatch("nonce")), 30);
        assert_eq!(
            code(ProtoError::WrongKeyId {
                expected: "a".into(),
                got: "b".into()
            }),
            30
        );
        assert_eq!(
            code(ProtoError::Expired {
                now_ms: 2,
                expires_at_ms: 1
            }),
            30
        );
        assert_eq!(
            code(ProtoError::FromFuture {
                now_ms: 1,
                created_at_ms: 2
            }),
            30
        );
    }

    #[test]
    fn one_line_strips_control_characters() {
        assert_eq!(one_line("a\nb\r\x1b[31mc"), "a b  [31mc");
    }
}
