//! `nod ssh-agent`: OpenSSH `ssh-agent`'s flags, mapped onto `nod_agent::daemon::ssh_agent`.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use nod_agent::approvers::{ApproverChoice, parse_choice};
use nod_agent::config::KindSetting;
use nod_agent::daemon::ssh_agent::{self as ssh_agent_daemon, DropInOptions, Shell};

/// ssh-agent's own flags (see `ssh-agent(1)`), plus nod's approver choice.
#[derive(Debug, Args)]
pub struct SshAgentArgs {
    /// Bind the agent to the Unix-domain socket bind_address (default:
    /// $TMPDIR/ssh-XXXXXXXXXXXX/agent.<pid>).
    #[arg(short = 'a', value_name = "bind_address")]
    bind_address: Option<PathBuf>,
    /// Print C-shell commands.
    #[arg(short = 'c', conflicts_with = "bourne")]
    csh: bool,
    /// Print Bourne shell commands.
    #[arg(short = 's')]
    bourne: bool,
    /// Foreground mode: do not fork.
    #[arg(short = 'D')]
    foreground: bool,
    /// Debug mode: do not fork (nod logs to stderr in both modes).
    #[arg(short = 'd')]
    debug: bool,
    /// Kill the agent named by $SSH_AGENT_PID.
    #[arg(short = 'k')]
    kill: bool,
    /// Default lifetime of added keys: seconds, or e.g. 30m, 1h30m, 2d.
    #[arg(short = 't', value_name = "life")]
    life: Option<String>,
    /// Fingerprint hash for logs: sha256 or md5 (nod logs SHA-256 fingerprints).
    #[arg(short = 'E', value_name = "fingerprint_hash")]
    fingerprint_hash: Option<String>,
    /// How the person is asked for `ssh-add -c` keys: auto, a kind (tty, askpass, command,
    /// desktop, polkit, fprintd) or kinds separated by commas (default: agent.toml, else
    /// askpass if a display and an askpass program exist, else nobody).
    #[arg(long, value_parser = parse_choice, value_name = "KIND[,KIND…]")]
    approver: Option<KindSetting>,
    /// Program for the command approver. Implies --approver command.
    #[arg(long, value_name = "PROG")]
    approver_command: Option<String>,
    #[arg(long = "daemon-child", hide = true)]
    daemon_child: bool,
    #[arg(long = "remove-dir", hide = true)]
    remove_dir: Option<PathBuf>,
    #[arg(long = "command-pid", hide = true)]
    command_pid: Option<i32>,
    /// Run this command with the agent: it gets SSH_AUTH_SOCK and SSH_AGENT_PID, and the
    /// agent stops when it ends.
    #[arg(
        value_name = "command",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<OsString>,
}

pub fn run(args: SshAgentArgs) -> Result<()> {
    let lifetime = args
        .life
        .as_deref()
        .map(ssh_agent_daemon::parse_lifetime)
        .transpose()?;
    if let Some(hash) = &args.fingerprint_hash {
        ssh_agent_daemon::check_fingerprint_hash(hash)?;
    }
    let shell_env = std::env::var("SHELL").ok();
    let options = DropInOptions {
        bind_address: args.bind_address,
        shell: Shell::choose(args.csh, args.bourne, shell_env.as_deref()),
        shell_given: args.csh || args.bourne,
        foreground: args.foreground,
        debug: args.debug,
        kill: args.kill,
        lifetime,
        approver: ApproverChoice {
            kind: args.approver,
            command: args.approver_command,
        },
        daemon_child: args.daemon_child,
        remove_dir: args.remove_dir,
        command: args.command,
        command_pid: args.command_pid,
        args: std::env::args_os().skip(1).collect(),
    };
    Ok(ssh_agent_daemon::run(
        options,
        &mut std::io::stdout().lock(),
    )?)
}
