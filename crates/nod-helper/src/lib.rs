//! `nod-helper`: the Linux-host half of nod's remote approval (docs/design.md §1).
//!
//! `pam_nod.so` runs `nod-helper request` as root for every PAM authentication. The helper signs
//! a protocol v1 request with the host key, sends it through the user's `ssh -R` forwarded Unix
//! socket to their `nod agent`, and turns the signed reply into an exit code. It speaks
//! macos-auth protocol v1 (see `docs/protocol/approval-v1.md`) through `nod-proto`.
//!
//! Threat model, in short:
//! - Local users must not steer what root reads: config and keys are opened by fd walk from `/`
//!   (`nod-fscheck`), root-owned, not group/other writable, no symlinks; unknown config keys are
//!   errors.
//! - Only the PAM user's own forward may answer: the socket must be a socket owned by them, and
//!   the peer's kernel credentials are checked after connecting.
//! - The wire is untrusted: a reply counts only if signed by a pinned agent key (under the key
//!   id pinned with it, when its file names one), bound to this request's id, nonce and hash,
//!   and fresh. A replayed reply fails the binding.
//! - Missing authenticator (no socket, agent down, no answer in time, a reply that stalls
//!   halfway) falls back to the password (exit 10–12); anything unsafe, forged or malformed
//!   fails closed (20–32). See [`HelperError::exit_code`].

#![forbid(unsafe_code)]

pub mod assets;
pub mod check_config;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod error;
pub mod gen_key;
#[cfg(test)]
mod man_page_tests;
pub mod pam_file;
pub mod request;
pub mod socket;
pub mod syslog;

use std::time::Instant;

pub use cli::{Cli, Command};
pub use error::HelperError;

use crate::config::Config;
use crate::error::one_line;

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    // The deadline of `request` counts from here, so config loading is inside it too.
    let start = Instant::now();
    match cli.command {
        Command::GenKey {
            private_key_file,
            public_key_file,
            key_id,
            force,
        } => {
            let args = gen_key::GenKeyArgs {
                private_key_file,
                public_key_file,
                key_id,
                force,
            };
            match gen_key::run(&args) {
                Ok(k) => {
                    println!("key_id={}", k.key_id);
                    println!("{}", k.openssh_line);
                    0
                }
                Err(e) => report(&e),
            }
        }
        Command::Request {
            config,
            user,
            ruser,
            rhost,
            tty,
            service,
            sudo_command,
            timeout_ms,
        } => {
            let info = request::RequestInfo {
                user,
                ruser,
                rhost,
                tty,
                service,
                sudo_command,
                timeout_ms,
            };
            let result = request(&config, &info, start);
            let service = info.service.as_deref().filter(|s| !s.is_empty());
            syslog::outcome(&info.user, service, result.as_ref().map(|_| ()));
            match result {
                Ok(()) => 0,
                Err(e) => report(&e),
            }
        }
        Command::CheckConfig { config, user } => {
            check_config::run(&config, user.as_deref(), &mut std::io::stdout().lock())
        }
        Command::Doctor {
            config,
            user,
            agent_key,
            pam_service,
            sshd_config,
        } => {
            let args = doctor::DoctorArgs {
                config,
                user,
                agent_key,
                pam_service,
                sshd_config,
            };
            doctor::run(&args, &mut std::io::stdout().lock())
        }
        Command::GenerateMan { dir } => asset_result(assets::generate_man(&dir), &dir),
        Command::GenerateCompletions { shell, dir } => {
            asset_result(assets::generate_completions(shell, &dir), &dir)
        }
    }
}

/// `request`: only root can read the host key, so a helper that is not root (in the PAM
/// stack of a program that is not root) steps aside before it reads anything; as root, the
/// config and keys must be safe.
fn request(
    config: &std::path::Path,
    info: &request::RequestInfo,
    start: Instant,
) -> Result<(), HelperError> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return Err(HelperError::NotRoot { uid: euid.as_raw() });
    }
    let mut problems = Vec::new();
    match Config::load(config, &mut problems) {
        Some(config) => request::run(&config, info, start),
        None => Err(problems
            .into_iter()
            .next()
            .unwrap_or_else(|| HelperError::BadConfig {
                path: config.to_owned(),
                problem: "could not be loaded — run `nod-helper check-config`".into(),
            })),
    }
}

fn asset_result(r: std::io::Result<()>, dir: &std::path::Path) -> u8 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("nod-helper: cannot write into {}: {e}", dir.display());
            1
        }
    }
}

/// One line on stderr that says what went wrong and what to do; returns the exit code.
fn report(e: &HelperError) -> u8 {
    eprintln!("nod-helper: {}", one_line(&e.to_string()));
    e.exit_code()
}
