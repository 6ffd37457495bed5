//! `nod ssh-agent`: OpenSSH 10 `ssh-agent`'s flags, mapped onto `nod_agent::daemon::ssh_agent`.
//!
//! Parsing follows ssh-agent's `getopt("cDdksTuUVE:a:O:P:t:")`: flags may be grouped (`-sk`),
//! values attached (`-P/usr/lib/*`, `-t10`), options end at the first argument that is not
//! one (the command) or at `--`. Any other flag is a usage error: ssh-agent's usage text and
//! exit status 1, never a command to run.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Args};
use nod_agent::approvers::{ApproverChoice, parse_choice};
use nod_agent::config::KindSetting;
use nod_agent::daemon::ssh_agent::{
    self as ssh_agent_daemon, AgentOptions, DropInError, DropInOptions, Shell, USAGE,
};

/// ssh-agent's own flags (see `ssh-agent(1)`), plus nod's approver choice.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct SshAgentArgs {
    /// Bind the agent to the Unix-domain socket bind_address (default:
    /// ~/.ssh/agent/s.*, or with -T $TMPDIR/ssh-XXXXXXXXXXXX/agent.<pid>).
    #[arg(short = 'a', value_name = "bind_address", action = ArgAction::Append)]
    bind_address: Vec<PathBuf>,
    /// Print C-shell commands.
    #[arg(short = 'c', action = ArgAction::Count)]
    csh: u8,
    /// Print Bourne shell commands.
    #[arg(short = 's', action = ArgAction::Count)]
    bourne: u8,
    /// Foreground mode: do not fork.
    #[arg(short = 'D', action = ArgAction::Count)]
    foreground: u8,
    /// Debug mode: do not fork (nod logs to stderr in both modes).
    #[arg(short = 'd', action = ArgAction::Count)]
    debug: u8,
    /// Kill the agent named by $SSH_AGENT_PID.
    #[arg(short = 'k', action = ArgAction::Count)]
    kill: u8,
    /// Bind the socket in a new directory under $TMPDIR instead of ~/.ssh/agent.
    #[arg(short = 'T', action = ArgAction::Count)]
    temp_dir: u8,
    /// Do not clean up stale agent sockets under ~/.ssh/agent.
    #[arg(short = 'U', action = ArgAction::Count)]
    keep_stale: u8,
    /// Only clean up stale agent sockets under ~/.ssh/agent, then exit (twice: those of
    /// other hosts too).
    #[arg(short = 'u', action = ArgAction::Count)]
    clean_stale: u8,
    /// Print the version and exit.
    #[arg(short = 'V', action = ArgAction::Count)]
    version: u8,
    /// Fingerprint hash for logs: sha256 or md5 (nod logs SHA-256 fingerprints).
    #[arg(short = 'E', value_name = "fingerprint_hash", action = ArgAction::Append)]
    fingerprint_hash: Vec<String>,
    /// An option: allow-remote-pkcs11, no-restrict-websafe or websafe-allow=PATTERNS (all
    /// about provider libraries and FIDO keys, which nod does not load: accepted, no effect).
    #[arg(short = 'O', value_name = "option", action = ArgAction::Append)]
    options: Vec<String>,
    /// Providers that may be loaded. nod loads none, so keys that need one are refused.
    #[arg(short = 'P', value_name = "allowed_providers", action = ArgAction::Append)]
    allowed_providers: Vec<String>,
    /// Default lifetime of added keys: seconds, or e.g. 30m, 1h30m, 2d.
    #[arg(short = 't', value_name = "life", action = ArgAction::Append)]
    life: Vec<String>,
    /// How the person is asked for `ssh-add -c` keys: auto, a kind (tty, askpass, command,
    /// desktop, polkit, fprintd) or kinds separated by commas (default: agent.toml, else auto
    /// as for `nod agent`: a notification when a session bus is there, then askpass with a
    /// display and an askpass program, then the terminal in the foreground (-d, -D); with
    /// none, nobody, and a warning).
    #[arg(long, value_parser = parse_choice, value_name = "KIND[,KIND…]")]
    approver: Option<KindSetting>,
    /// Program for the command approver. Implies --approver command.
    #[arg(long, value_name = "PROG")]
    approver_command: Option<String>,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    #[arg(long = "daemon-child", hide = true)]
    daemon_child: bool,
    #[arg(long = "remove-dir", hide = true)]
    remove_dir: Option<PathBuf>,
    #[arg(long = "command-pid", hide = true)]
    command_pid: Option<i32>,
    /// Run this command with the agent: it gets SSH_AUTH_SOCK and SSH_AGENT_PID, and the
    /// agent stops when it ends.
    #[arg(value_name = "command", trailing_var_arg = true)]
    command: Vec<OsString>,
}

/// Whether `nod` was run as `nod ssh-agent …` (so a bad flag gets ssh-agent's usage).
pub fn invoked() -> bool {
    std::env::args_os().nth(1).is_some_and(|a| a == "ssh-agent")
}

/// ssh-agent's answer to a flag it does not know: the reason, the usage text, exit 1.
pub fn usage_error(reason: &str) -> ExitCode {
    eprintln!("nod ssh-agent: {reason}");
    eprint!("{USAGE}");
    ExitCode::from(1)
}

fn options(args: SshAgentArgs) -> Result<DropInOptions, DropInError> {
    if args.csh > 0 && args.bourne > 0 {
        return Err(DropInError::Usage("-c and -s cannot go together".into()));
    }
    if args.debug + args.foreground > 1 {
        return Err(DropInError::Usage(
            "-d and -D may be given once, and not together".into(),
        ));
    }
    if args.allowed_providers.len() > 1 {
        return Err(DropInError::Fatal("-P option already specified".into()));
    }
    let lifetime = args
        .life
        .last()
        .map(|l| ssh_agent_daemon::parse_lifetime(l))
        .transpose()?;
    for hash in &args.fingerprint_hash {
        ssh_agent_daemon::check_fingerprint_hash(hash)?;
    }
    let agent_options = AgentOptions::parse(args.options.iter().map(String::as_str))?;
    let shell_env = std::env::var("SHELL").ok();
    let (csh, bourne) = (args.csh > 0, args.bourne > 0);
    Ok(DropInOptions {
        bind_address: args.bind_address.last().cloned(),
        shell: Shell::choose(csh, bourne, shell_env.as_deref()),
        shell_given: csh || bourne,
        foreground: args.foreground > 0,
        debug: args.debug > 0,
        kill: args.kill > 0,
        temp_dir: args.temp_dir > 0,
        keep_stale: args.keep_stale > 0,
        clean_stale: args.clean_stale,
        agent_options,
        allowed_providers: args.allowed_providers.into_iter().next(),
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
    })
}

/// Runs `nod ssh-agent` and returns its exit status, as ssh-agent's: 0; 1 for a usage error
/// (with the usage text) or a failure; 2 after SIGTERM or SIGHUP; 255 for what ssh-agent
/// calls fatal (a bad `-E` or `-O`, `-P` twice).
pub fn run(args: SshAgentArgs) -> ExitCode {
    if args.version > 0 {
        eprintln!(
            "nod {} (ssh-agent drop-in, OpenSSH 10 flags)",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    let result = options(args)
        .and_then(|options| ssh_agent_daemon::run(options, &mut std::io::stdout().lock()));
    match result {
        Ok(status) => ExitCode::from(status),
        Err(e) if e.shows_usage() => usage_error(&e.to_string()),
        Err(e) => {
            eprintln!("nod ssh-agent: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
