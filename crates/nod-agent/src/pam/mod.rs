//! The remote-approval service (docs/design.md §1 "Agent side"): `nod-helper` on a Linux host asks,
//! over a forwarded Unix socket, whether a PAM login or `sudo` may go ahead.
//!
//! - [`hosts`]: the allowlist of hosts and their pinned keys (`hosts.toml`).
//! - [`replay`]: signatures seen, until their request expires.
//! - [`service`]: one exchange per connection, the checks in their fixed order, the prompt and
//!   the signed reply.

pub mod hosts;
pub mod replay;
pub mod service;

pub use service::{ApprovalService, ApprovalSettings, Refusal};
