//! The nod agent as a library.
//!
//! The agent runs in the user's session and asks the person before a credential is used. This
//! crate holds everything behind the thin `nod` binary. Three services, each with its own front
//! door (wire format, policy, what the prompt shows), and one middle they all go through:
//!
//! - [`pam`]: remote approval. `nod-helper` on a Linux host sends a signed request (protocol
//!   v1, macos-auth compatible, see `nod-proto`) over an SSH-forwarded Unix socket; the agent
//!   checks it and answers with a signed decision.
//! - [`ssh`]: the SSH agent (OpenSSH's agent protocol): keys added with `ssh-add`, the
//!   keystore's persistent keys with their approval policies, session certificates.
//! - [`secrets`]: the secrets broker (keychain-auth's JSON protocol) for local programs, which
//!   get secrets only if the kernel-verified binary is registered.
//! - [`decision`]: the decision core: presence strength, dedupe, rate limits, one prompt at a
//!   time per approver, withdrawal, and the audit line written before any answer.
//! - [`approvers`]: how a person says yes (the [`approvers::Approver`] trait, its backends, and
//!   every prompt payload).
//! - [`caller`]: who is asking, from the kernel (peer credentials, pidfds, `/proc`).
//! - [`audit`]: the hash-chained JSON-lines log, shared by every writer of one user.
//! - [`keystore`]: keys sealed at rest: the agent's own Ed25519 key, persistent SSH keys and
//!   the user CA key.
//! - [`daemon`]: the processes `nod agent` and `nod ssh-agent`: composition, sockets, signals.
//! - [`config`], [`paths`]: `agent.toml` and the XDG locations of every file.
//!
//! Floors, with no import upward: files, time and sockets < caller < keystore < audit <
//! approvers < decision < {pam, ssh, secrets} < daemon.
//!
//! # Threat model (approval service)
//!
//! Anything that reaches the approval socket is untrusted: the socket is forwarded from other
//! hosts, and anyone who can reach it there can write to it. A request is believed only once it
//! is signed by a host key the user pinned with `nod hosts add`, names that key's id, is fresh,
//! and has not been seen before (docs/design.md §1 "Agent side", checks 1-7 in order). An invalid
//! request never reaches a prompt and gets no reply; the helper reads silence as
//! "unavailable" and falls back to the password. Prompts are serialized (one at a time per
//! approver, across services) and bounded by the request's expiry; an approver that cannot
//! reach the person is unavailable, never a denial; a decision that cannot be recorded is not
//! given. What the prompt shows comes from the host, so it is escaped before it is shown.
//!
//! # Threat model (secrets broker)
//!
//! Any program of the same user can connect to the secrets socket. What it gets depends only on
//! what the kernel says about the process that sent each line (`SCM_CREDENTIALS`, pidfd, the
//! hash of `/proc/<pid>/exe`) and on a policy that only the person can extend (through the
//! approver). See [`secrets`] and [`caller`] for the checks and what they do not cover.
//!
//! Not covered, for any service: a process running as the same user can read the keystore's
//! wrapping key (the keystore is sealed at rest, but the key to open it is a file of the
//! user's) and can edit `hosts.toml` or `agent.toml`; see docs/security.md "Keystore".
//!
//! # Spec
//!
//! Wire format: `docs/protocol/approval-v1.md`, implemented by `nod-proto`;
//! `docs/protocol/secrets.md`, types in `nod-client`.
//! Behaviour: `docs/design.md` §1, "Approvers", "Audit" and "Files".

// `sys` is the one module allowed `unsafe` (pidfd socket options and control messages, and
// handing freed memory back to the system).
#![deny(unsafe_code)]

pub mod approvers;
pub mod audit;
pub mod caller;
pub mod config;
pub mod daemon;
pub mod decision;
pub mod duration;
mod files;
pub mod keystore;
mod log;
pub mod pam;
pub mod paths;
pub mod secrets;
pub mod socket;
pub mod ssh;
mod sys;

pub use daemon::agent::{AgentError, AgentOptions, run_agent};
pub use log::error_chain;

/// Locks a mutex, carrying on past poisoning. Every mutex in the agent guards plain data (maps,
/// lists, the audit writer) that a panic elsewhere cannot leave half-changed, and a
/// half-made decision is never stored behind one, so continuing is safe.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Milliseconds since the Unix epoch, the clock of protocol v1.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
