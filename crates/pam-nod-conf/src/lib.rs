//! What a `pam_nod.so` line in `/etc/pam.d` means: its module arguments ([`args`]) and the
//! helper binary they name ([`helper`]).
//!
//! `pam_nod.so` and `nod-helper doctor` both use this crate, so the doctor accepts exactly
//! the lines the module accepts and refuses exactly the ones it refuses: a typo such as
//! `debg`, or a `conf=` path the module would hand to the helper, is judged by the same code
//! in both places.
//!
//! The module links this into `sudo` and `sshd`, so nothing here may panic (no `unwrap`,
//! `expect`, indexing or `panic!`), and nothing here is `unsafe`.

#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod args;
pub mod helper;

pub use args::{
    ArgError, Args, DEFAULT_CONF, DEFAULT_HELPER, DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS, parse_args,
};
pub use helper::open_helper;
