//! `nod`: the command line of the nod agent. Parses arguments, calls `nod-agent`, and maps the
//! result to an exit code: 0 success, 1 error (with a message on stderr), 2 usage error.

#![forbid(unsafe_code)]

/// The mark by which the secrets broker knows this binary as nod's command line, whatever it
/// is called: its requests are then asked of the person each time, and it cannot be
/// registered (docs/security.md "Secrets broker").
#[used]
static NOD_CLI_MARK: [u8; 48] = nod_agent::caller::identity::nod_cli_mark();

mod assets;
mod doctor;
mod keys;
#[cfg(test)]
mod man_page_tests;
mod pair;
mod passphrase;
mod remote;
mod secrets;
mod ssh_agent;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand};
use nod_agent::approvers::{ApproverChoice, parse_choice};
use nod_agent::audit::{self, Verdict};
use nod_agent::config::{KindSetting, Required};
use nod_agent::keystore::Keystore;
use nod_agent::pam::hosts::{AddOutcome, HostsFile};
use nod_agent::paths::Paths;
use nod_agent::{AgentOptions, run_agent};
use nod_proto::keys::format_public_key_file;

#[derive(Debug, Parser)]
#[command(
    name = "nod",
    version,
    about = "nod: a presence-gated credential agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent in the foreground (logs to stderr; stop with Ctrl-C or SIGTERM).
    ///
    /// Serves remote approval on $XDG_RUNTIME_DIR/nod/approval.sock, an SSH agent on
    /// $XDG_RUNTIME_DIR/nod/ssh-agent.sock (use it with SSH_AUTH_SOCK) and the secrets broker
    /// on $XDG_RUNTIME_DIR/nod/secrets.sock.
    ///
    /// Reads $XDG_CONFIG_HOME/nod/agent.toml if present (see nod-agent.toml(5)):
    /// [approver] kind = "auto" or a kind or a list, command = ["prog", "arg"];
    /// [presence] pam/ssh/secrets = "any"|"verified";
    /// [approval] allowed_future_skew_ms, rate_limit_burst, rate_limit_per_minute;
    /// [secrets] backend = "auto"|"file"|"secret-service".
    Agent {
        /// How the person is asked: auto, or a kind (tty, askpass, command, desktop: a
        /// notification with buttons, polkit: system authentication, fprintd: a fingerprint), or kinds
        /// separated by commas, tried in order. Default: agent.toml, else auto: a notification
        /// when a session bus is there ($DBUS_SESSION_BUS_ADDRESS or $XDG_RUNTIME_DIR/bus),
        /// then an askpass dialog with a display, then this terminal, each skipped when it
        /// cannot reach you; with none, nobody: requests are answered unavailable, and the
        /// agent says so with the fix.
        #[arg(long, value_parser = parse_choice, value_name = "KIND[,KIND…]")]
        approver: Option<KindSetting>,
        /// Program for the command approver (prompt as JSON on stdin; exit 0 approve,
        /// 1 deny, 2 cancel). Implies --approver command.
        #[arg(long, value_name = "PROG")]
        approver_command: Option<String>,
    },
    /// Print the agent's public key file, to install on hosts as /etc/nod/agents.d/<name>.pub.
    AgentKey,
    /// Manage the hosts allowed to ask for approval.
    Hosts {
        #[command(subcommand)]
        command: HostsCommand,
    },
    /// Inspect the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Persistent SSH keys (sealed in the keystore), their approval policies, the user CA.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// SSH helpers that talk to the running agent.
    Ssh {
        #[command(subcommand)]
        command: keys::SshCommand,
    },
    /// A drop-in for OpenSSH's ssh-agent: same flags, same output, e.g.
    /// `eval "$(nod ssh-agent -s)"`; `eval "$(nod ssh-agent -k)"` stops it.
    SshAgent(ssh_agent::SshAgentArgs),
    /// Read and write secrets through the running agent's broker.
    Secrets(secrets::SecretsArgs),
    /// Let a binary use the secrets broker (the agent asks you to approve).
    Register {
        path: PathBuf,
        #[command(flatten)]
        grants: secrets::GrantArgs,
    },
    /// Register a binary from `nod list-pending` (the agent asks you to approve). Without
    /// grants, it gets the services it asked for.
    Approve {
        hash: String,
        #[command(flatten)]
        grants: secrets::GrantArgs,
    },
    /// A registered binary was updated: move its grants to the new file's hash (asks you).
    Upgrade { path: PathBuf },
    /// Binaries refused because they are not registered (last 24 h).
    ListPending,
    /// The secrets broker's policy.
    Policy {
        #[command(subcommand)]
        command: secrets::PolicyCommand,
    },
    /// What the running agent is doing: its approvers (and the strength of each), sockets, the
    /// prompts open now and the last decisions.
    Status {
        /// Print the agent's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check this workstation's setup (agent running, sockets and their modes, agent key, host
    /// allowlist, clock); print each check as ok or FAIL with the fix. Exit 1 if any failed.
    Doctor {
        /// Also check this host over ssh: clock skew, and `sudo nod-helper doctor` there with
        /// this agent's key.
        #[arg(long, value_name = "SSH-DESTINATION")]
        host: Option<String>,
        /// ssh config file to use (ssh -F).
        #[arg(long, value_name = "PATH")]
        ssh_config: Option<PathBuf>,
        /// The host's nod config, for --host (default: nod-helper's, /etc/nod/config.toml).
        #[arg(long, value_name = "PATH")]
        host_config: Option<String>,
        /// The helper program on the host, for --host.
        #[arg(long, value_name = "PROG", default_value = "nod-helper", hide = true)]
        remote_helper: String,
        /// For --host: check /etc/pam.d/NAME there for the pam_nod.so line, as
        /// `nod-helper doctor --pam-service NAME` does.
        #[arg(long, value_name = "NAME", requires = "host")]
        pam_service: Option<String>,
    },
    /// Pair a Linux host over ssh: allow its host key here, install this agent's key on it
    /// (one sudo), and write the RemoteForward block into ~/.ssh/config. Safe to run again.
    Pair {
        /// Where to ssh to: [user@]host or a Host alias from the ssh config.
        dest: String,
        /// The host id to expect (default: host_id from the host's config).
        #[arg(long, value_name = "ID")]
        host_id: Option<String>,
        /// Your uid on the host, for the forwarded socket path (default: `id -u` there).
        #[arg(long, value_name = "N")]
        remote_uid: Option<u32>,
        /// File name of this agent's key on the host, without .pub (default: user@hostname).
        #[arg(long)]
        name: Option<String>,
        /// The host's nod config.
        #[arg(long, value_name = "PATH", default_value = "/etc/nod/config.toml")]
        host_config: String,
        /// ssh config to use (ssh -F) and to write the block into (default: ~/.ssh/config).
        #[arg(long, value_name = "PATH")]
        ssh_config: Option<PathBuf>,
        /// Accept a host key that differs from the one already allowed for this host id.
        #[arg(long)]
        replace_host_key: bool,
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

#[derive(Debug, Subcommand)]
enum HostsCommand {
    /// Allow a host: its id (host_id in its /etc/nod/config.toml) and its public key file
    /// (public_key_hex=… or an ssh-ed25519 line). Re-adding an id replaces its key.
    Add {
        host_id: String,
        pubkey_file: PathBuf,
        /// Key id the host must claim; default: the file's key_id= line, else any (the
        /// host's signature under this key is what counts).
        #[arg(long, value_name = "ID")]
        key_id: Option<String>,
        /// The least presence this host's requests need: `any` approver, or `verified` (a
        /// password or a fingerprint). Default: `[presence] pam` of agent.toml.
        #[arg(long, value_name = "any|verified")]
        presence: Option<Required>,
    },
    /// List the allowed hosts: id, key id, presence, public key.
    List,
    /// Stop allowing a host.
    Remove { host_id: String },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the whole audit log.
    Verify,
}

fn agent_key(paths: &Paths) -> Result<()> {
    let key = Keystore::open(paths)
        .with_asker(std::sync::Arc::new(keys::TtyAsker))
        .agent_key()?;
    let comment = "nod agent key. Install this file on each Linux host as\n\
                   /etc/nod/agents.d/<name>.pub (owned by root, mode 0644).";
    print!(
        "{}",
        format_public_key_file(&key.public_key(), key.key_id(), comment)
    );
    Ok(())
}

fn hosts_add(
    paths: &Paths,
    host_id: &str,
    file: &Path,
    key_id: Option<&str>,
    presence: Option<Required>,
) -> Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the host key file {}", file.display()))?;
    let path = paths.hosts_file();
    let mut hosts = HostsFile::load(&path)?;
    let outcome = hosts.add(host_id, &text, file, key_id)?;
    hosts.set_presence(host_id, presence)?;
    hosts.save(&path)?;
    let entry = hosts
        .entries()
        .find(|e| e.id == host_id)
        .context("host vanished after adding it")?;
    match outcome {
        AddOutcome::Added => println!("added host {host_id} ({})", entry.pins()),
        AddOutcome::Replaced => {
            println!("replaced the key of host {host_id} ({} now)", entry.pins())
        }
    }
    Ok(())
}

fn hosts_list(paths: &Paths) -> Result<()> {
    let hosts = HostsFile::load(&paths.hosts_file())?;
    if hosts.is_empty() {
        eprintln!("no hosts allowed yet; add one with `nod hosts add <host_id> <pubkey-file>`");
    }
    for entry in hosts.entries() {
        let key_id = entry.key_id.as_deref().unwrap_or("(any key id)");
        let presence = match entry.presence {
            Some(Required::Any) => "any",
            Some(Required::Verified) => "verified",
            None => "(agent.toml)",
        };
        println!(
            "{}\t{key_id}\t{presence}\t{}",
            entry.id, entry.public_key_hex
        );
    }
    Ok(())
}

fn hosts_remove(paths: &Paths, host_id: &str) -> Result<()> {
    let path = paths.hosts_file();
    let mut hosts = HostsFile::load(&path)?;
    hosts.remove(host_id)?;
    hosts.save(&path)?;
    println!("removed host {host_id}");
    Ok(())
}

fn audit_verify(paths: &Paths) -> Result<()> {
    let path = paths.audit_log();
    match audit::verify(&path)? {
        Verdict::Intact { entries } => {
            println!("ok: {entries} entries");
            Ok(())
        }
        Verdict::Broken { line, why } => {
            bail!("{}: chain broken at line {line}: {why}", path.display())
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let paths = Paths::from_env()?;
    match cli.command {
        Command::SshAgent(_) => unreachable!("handled above"),
        Command::Agent {
            approver,
            approver_command,
        } => {
            use std::io::IsTerminal;
            let options = AgentOptions {
                approver: ApproverChoice {
                    kind: approver,
                    command: approver_command,
                },
                paths: Some(paths),
                // From a terminal, the agent asks for the keystore's passphrase or PIN itself.
                asker: std::io::stdin().is_terminal().then(|| {
                    std::sync::Arc::new(keys::TtyAsker)
                        as std::sync::Arc<dyn nod_agent::keystore::Asker>
                }),
            };
            Ok(run_agent(options)?)
        }
        Command::AgentKey => agent_key(&paths),
        Command::Keys { command } => keys::run_keys(&paths, command),
        Command::Ssh { command } => keys::run_ssh(&paths, command),
        Command::Hosts { command } => match command {
            HostsCommand::Add {
                host_id,
                pubkey_file,
                key_id,
                presence,
            } => hosts_add(&paths, &host_id, &pubkey_file, key_id.as_deref(), presence),
            HostsCommand::List => hosts_list(&paths),
            HostsCommand::Remove { host_id } => hosts_remove(&paths, &host_id),
        },
        Command::Audit {
            command: AuditCommand::Verify,
        } => audit_verify(&paths),
        Command::Secrets(args) => secrets::secrets(&paths, args),
        Command::Register { path, grants } => secrets::register(&paths, &path, grants),
        Command::Approve { hash, grants } => secrets::approve(&paths, hash, grants),
        Command::Upgrade { path } => secrets::upgrade(&paths, &path),
        Command::ListPending => secrets::list_pending(&paths),
        Command::Status { json } => status::run(&paths, json),
        Command::Policy { command } => secrets::policy(&paths, command),
        Command::Doctor {
            host,
            ssh_config,
            host_config,
            remote_helper,
            pam_service,
        } => {
            let args = doctor::DoctorArgs {
                host,
                ssh_config,
                host_config,
                remote_helper,
                pam_service,
            };
            if doctor::run(&paths, &args)? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Pair {
            dest,
            host_id,
            remote_uid,
            name,
            host_config,
            ssh_config,
            replace_host_key,
        } => pair::run(
            &paths,
            &pair::PairArgs {
                dest,
                host_id,
                remote_uid,
                name,
                host_config,
                ssh_config,
                replace_host_key,
            },
        ),
        Command::GenerateMan { dir } => assets::generate_man(Cli::command(), &dir),
        Command::GenerateCompletions { shell, dir } => {
            assets::generate_completions(Cli::command(), shell, &dir)
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `nod ssh-agent` answers a flag it does not know as ssh-agent does.
        Err(e)
            if ssh_agent::invoked()
                && !matches!(
                    e.kind(),
                    clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
                ) =>
        {
            let reason = e.to_string();
            let first = reason.lines().next().unwrap_or("bad arguments");
            return ssh_agent::usage_error(first.trim_start_matches("error: "));
        }
        Err(e) => e.exit(),
    };
    if let Command::SshAgent(args) = cli.command {
        return ssh_agent::run(args);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nod: {}", nod_agent::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
