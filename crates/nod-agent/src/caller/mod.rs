//! Who is asking, from the kernel: the peer of a connection and the sender of a message
//! (`SO_PEERCRED`, `SO_PEERPIDFD`, `SCM_CREDENTIALS`, `SCM_PIDFD`) and what `/proc` says about
//! that process.
//!
//! - [`identity`]: the verified binary behind a connection and each of its messages.
//! - [`chain`]: the process and its ancestors (`ssh ← git ← zsh`), for prompts.
//! - [`pidfd`]: processes held by pidfd, which can never name another process.

pub mod chain;
pub mod identity;
pub mod pidfd;
