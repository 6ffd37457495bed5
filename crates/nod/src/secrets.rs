//! `nod secrets …`, `nod register`, `nod approve`, `nod upgrade`, `nod list-pending`,
//! `nod policy …`: thin wrappers over `nod-client`. Policy changes go through the running
//! agent, which asks the person.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use nod_agent::caller::identity::is_interpreter;
use nod_agent::paths::Paths;
use nod_client::proto::{Control, SecretValue};
use nod_client::{Client, default_socket};

/// `nod secrets [--remember DURATION] …`.
#[derive(Debug, clap::Args)]
pub struct SecretsArgs {
    /// When you approve, let the program that ran `nod` (in this session and terminal) do the
    /// same kind of request on this service again for DURATION without asking (e.g. 10m, at
    /// most 8h).
    #[arg(long, value_name = "DURATION", global = true)]
    pub remember: Option<String>,
    #[command(subcommand)]
    pub command: SecretsCommand,
}

/// The grants of `nod register` and `nod approve`.
#[derive(Debug, Clone, clap::Args)]
pub struct GrantArgs {
    /// A service it may read (and search, with --search); repeatable.
    #[arg(long, value_name = "SERVICE")]
    pub read: Vec<String>,
    /// A service it may write and delete in; repeatable.
    #[arg(long, value_name = "SERVICE")]
    pub write: Vec<String>,
    /// Allow prefix reads and deletes, and search.
    #[arg(long)]
    pub search: bool,
    /// Serve its plain keychain-auth requests, sent without nod's session handshake. This
    /// leaves a window open for this binary (a process can send a request and then exec it
    /// before the agent looks); see docs/security.md. Only for clients that cannot use
    /// nod-client.
    #[arg(long)]
    pub legacy_protocol: bool,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Print the values of targets of a service, one per line.
    ///
    /// `nod` is never registered: the agent asks you each time, naming the program that ran
    /// it (see --remember).
    Get {
        service: String,
        #[arg(required = true)]
        targets: Vec<String>,
        /// Treat the targets as prefixes (needs --search in the policy); prints target=value.
        #[arg(long)]
        prefix: bool,
    },
    /// Store a value read from standard input (one trailing newline is dropped). Values are
    /// never taken from the command line, where other users' `ps` could see them.
    Put {
        service: String,
        target: String,
        /// An attribute stored with the item, KEY=VALUE; repeatable.
        #[arg(long = "attr", value_name = "KEY=VALUE")]
        attributes: Vec<String>,
    },
    /// Delete targets.
    Rm {
        service: String,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// List the targets of a service (never values); needs --search in the policy.
    Search {
        service: String,
        /// Only the targets that start with this.
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// List the registered binaries and their grants.
    List,
    /// Take every grant away from a binary hash.
    Revoke { hash: String },
}

fn socket(paths: &Paths) -> Result<PathBuf> {
    match paths.secrets_socket() {
        Ok(p) => Ok(p),
        Err(_) => Ok(default_socket()?),
    }
}

fn client(paths: &Paths) -> Result<Client> {
    Ok(Client::connect(&socket(paths)?)?)
}

pub fn secrets(paths: &Paths, args: SecretsArgs) -> Result<()> {
    let remember = args
        .remember
        .as_deref()
        .map(nod_agent::duration::parse_duration)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--remember: {e}"))?;
    // The agent asks the person before it answers: wait as long as the prompt may stay open.
    let mut c = control_client(paths)?;
    c.remember_for(remember);
    match args.command {
        SecretsCommand::Get {
            service,
            targets,
            prefix,
        } => {
            let mut out = std::io::stdout().lock();
            if prefix {
                for p in &targets {
                    for item in c.get_prefix(&service, p)? {
                        let value = item.value.as_ref().map(SecretValue::expose).unwrap_or("");
                        writeln!(out, "{}={value}", item.target)?;
                    }
                }
            } else {
                for t in &targets {
                    let value = c.get(&service, t)?;
                    writeln!(out, "{}", value.expose())?;
                }
            }
            Ok(())
        }
        SecretsCommand::Put {
            service,
            target,
            attributes,
        } => {
            let mut attrs = BTreeMap::new();
            for a in attributes {
                let (k, v) = a
                    .split_once('=')
                    .with_context(|| format!("--attr {a:?}: use KEY=VALUE"))?;
                attrs.insert(k.to_owned(), v.to_owned());
            }
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("cannot read the value from standard input")?;
            if value.ends_with('\n') {
                value.pop();
            }
            let mut req =
                nod_client::proto::Request::new(nod_client::proto::Action::Write, &service);
            req.targets = vec![target];
            req.values = vec![SecretValue::new(value)];
            req.attributes = attrs;
            c.request(req)?;
            Ok(())
        }
        SecretsCommand::Rm { service, targets } => Ok(c.delete(&service, &targets)?),
        SecretsCommand::Search { service, prefix } => {
            for t in c.search(&service, prefix.as_deref())? {
                println!("{t}");
            }
            Ok(())
        }
    }
}

fn absolute(path: &Path) -> Result<String> {
    let p =
        std::fs::canonicalize(path).with_context(|| format!("cannot find {}", path.display()))?;
    p.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not valid UTF-8", p.display()))
}

fn warn_interpreter(path: &str) {
    if is_interpreter(Path::new(path)) {
        eprintln!(
            "nod: warning: {path} is an interpreter; registering it lets every script it runs \
             use these grants. Prefer registering a compiled program."
        );
    }
}

fn print_message(resp: &nod_client::proto::Response) {
    if let Some(m) = &resp.message {
        println!("{m}");
    }
}

/// A client for a control request that may wait on the person.
fn control_client(paths: &Paths) -> Result<Client> {
    let c = client(paths)?;
    c.set_timeout(None)?;
    Ok(c)
}

pub fn register(paths: &Paths, path: &Path, g: GrantArgs) -> Result<()> {
    let path = absolute(path)?;
    warn_interpreter(&path);
    if g.read.is_empty() && g.write.is_empty() {
        bail!("grant at least one service: --read SERVICE and/or --write SERVICE");
    }
    eprintln!("nod: asking for approval through the agent…");
    let resp = control_client(paths)?.control(Control::Register {
        path,
        read: g.read,
        write: g.write,
        search: g.search,
        legacy_protocol: g.legacy_protocol,
    })?;
    print_message(&resp);
    Ok(())
}

pub fn approve(paths: &Paths, hash: String, g: GrantArgs) -> Result<()> {
    eprintln!("nod: asking for approval through the agent…");
    let resp = control_client(paths)?.control(Control::Approve {
        hash,
        read: g.read,
        write: g.write,
        search: g.search,
        legacy_protocol: g.legacy_protocol,
    })?;
    print_message(&resp);
    Ok(())
}

pub fn upgrade(paths: &Paths, path: &Path) -> Result<()> {
    let path = absolute(path)?;
    eprintln!("nod: asking for approval through the agent…");
    let resp = control_client(paths)?.control(Control::Upgrade { path })?;
    print_message(&resp);
    Ok(())
}

fn ago(ms: u64) -> String {
    let s = nod_agent::now_ms().saturating_sub(ms) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

pub fn list_pending(paths: &Paths) -> Result<()> {
    let resp = client(paths)?.control(Control::ListPending)?;
    let pending = resp.pending.unwrap_or_default();
    if pending.is_empty() {
        eprintln!("no pending binaries");
    }
    for p in pending {
        println!(
            "{}\t{}\targv0={}\tasked={}\t{}{}",
            p.hash,
            p.path,
            p.argv0,
            p.requested.join(","),
            ago(p.last_seen_ms),
            if p.interpreter { "\tINTERPRETER" } else { "" }
        );
    }
    Ok(())
}

pub fn policy(paths: &Paths, command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::List => {
            let resp = client(paths)?.control(Control::PolicyList)?;
            let entries = resp.policy.unwrap_or_default();
            if entries.is_empty() {
                eprintln!("no registered binaries; add one with `nod register <path> --read SVC`");
            }
            for e in entries {
                println!(
                    "{}\t{}\tread={}\twrite={}\tsearch={}{}",
                    e.hash,
                    e.path,
                    e.allowed_read_services.join(","),
                    e.allowed_write_services.join(","),
                    if e.can_search { "yes" } else { "no" },
                    if e.interpreter { "\tINTERPRETER" } else { "" }
                );
            }
            Ok(())
        }
        PolicyCommand::Revoke { hash } => {
            client(paths)?.control(Control::Revoke { hash: hash.clone() })?;
            println!("revoked {hash}");
            Ok(())
        }
    }
}
