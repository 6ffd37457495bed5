//! Command-line surface, the same as macos-auth's helper so its setup notes still apply.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{DEFAULT_CONFIG_PATH, MAX_TIMEOUT_MS};

/// nod's Linux host helper: asks the user's `nod agent`, over their `ssh -R` forward, to approve
/// a PAM authentication. Run by `pam_nod.so`; exit code = decision.
#[derive(Debug, Parser)]
#[command(name = "nod-helper", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the host key pair (private key 0600, refuses to overwrite without --force).
    GenKey {
        /// Where to write the private key (`private_key_hex=`; `host_key_file` in the config).
        #[arg(long, value_name = "PATH")]
        private_key_file: PathBuf,
        /// Where to write the public key, for `nod hosts add` or `nod pair` on the workstation.
        #[arg(long, value_name = "PATH")]
        public_key_file: PathBuf,
        /// Key id the host claims (default: the key's SHA256 fingerprint).
        #[arg(long, value_name = "ID")]
        key_id: Option<String>,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Ask the agent to approve one authentication. Prints nothing on stdout; the exit code is
    /// the decision (0 approved, 10 unavailable, 11 cancelled, 12 failed, 20 denied,
    /// 30 bad signature/binding/freshness, 31 unsafe config, 32 protocol error).
    Request {
        /// The config file.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The PAM user.
        #[arg(long, allow_hyphen_values = true)]
        user: String,
        /// The PAM remote user (PAM_RUSER), shown in the prompt.
        #[arg(long, allow_hyphen_values = true)]
        ruser: Option<String>,
        /// The PAM remote host (PAM_RHOST), shown in the prompt.
        #[arg(long, allow_hyphen_values = true)]
        rhost: Option<String>,
        /// The PAM terminal (PAM_TTY), shown in the prompt.
        #[arg(long, allow_hyphen_values = true)]
        tty: Option<String>,
        /// The PAM service (default: `service` from the config, else "sudo").
        #[arg(long, allow_hyphen_values = true)]
        service: Option<String>,
        /// The command run under sudo, shown in the prompt.
        #[arg(long, allow_hyphen_values = true)]
        sudo_command: Option<String>,
        /// Overrides `timeout_ms` from the config.
        #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_MS))]
        timeout_ms: Option<u64>,
    },
    /// Check the config, keys and agent socket, and print every problem found.
    CheckConfig {
        /// The config file.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Check the socket path of this user (default: the current user).
        #[arg(long)]
        user: Option<String>,
    },
    /// Check this host's setup step by step (config, forwarded socket, sshd, pinned agent key,
    /// clock, PAM line); print each check as ok or FAIL with the fix. Exit 1 if any failed.
    Doctor {
        /// The config file.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Whose forwarded socket to check (default: $SUDO_USER under sudo, else the current user).
        #[arg(long)]
        user: Option<String>,
        /// The workstation's `nod agent-key` output (a file, or its public_key_hex value), to
        /// check that it is pinned here.
        #[arg(long, value_name = "FILE|HEX")]
        agent_key: Option<String>,
        /// Check /etc/pam.d/NAME for the recommended pam_nod.so auth line.
        #[arg(long, value_name = "NAME")]
        pam_service: Option<String>,
        /// Evaluate this sshd config instead of the system one (`sshd -T -f PATH`).
        #[arg(long, value_name = "PATH")]
        sshd_config: Option<PathBuf>,
    },
    /// Write the man pages into DIR (used when building packages).
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
    /// Write the completion script for SHELL into DIR (used when building packages).
    #[command(hide = true)]
    GenerateCompletions {
        shell: clap_complete::Shell,
        dir: PathBuf,
    },
}
