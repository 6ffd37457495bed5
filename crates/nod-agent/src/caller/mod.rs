//! Who is asking, from the kernel: the peer of a connection and the sender of a message
//! (`SO_PEERCRED`, `SCM_CREDENTIALS`, pidfds) and what `/proc` says about that process.
//!
//! - [`identity`]: the verified binary behind one message (hash of the running executable).
//! - [`chain`]: the process and its ancestors (`ssh ← git ← zsh`), for prompts.

pub mod chain;
pub mod identity;
