//! `nod keys …` (persistent SSH keys, policies, the user CA) and `nod ssh session`.
//!
//! `nod keys` works on the keystore files directly, with or without a running agent; the agent
//! notices the change on its next request.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use nod_agent::keystore::Keystore;
use nod_agent::keystore::ssh::{
    KeyType, StoredKey, ca_line, decrypt_import, generate, parse_import,
};
use nod_agent::paths::Paths;
use nod_agent::ssh::cert::{self, SessionCertRequest};
use nod_agent::ssh::policy::{Policy, format_duration, parse_duration};
use zeroize::Zeroizing;

use crate::passphrase;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a key in the keystore and print its public line (for authorized_keys).
    Generate {
        /// ed25519, ecdsa or rsa.
        #[arg(long = "type", value_name = "TYPE", default_value = "ed25519")]
        kind: KeyType,
        /// ecdsa: 256 (default), 384 or 521; rsa: 2048 to 8192 (default 3072).
        #[arg(long)]
        bits: Option<usize>,
        /// Name of the key in the keystore (also its comment).
        #[arg(long)]
        name: String,
        /// always (default), remember or never.
        #[arg(long, default_value = "always")]
        policy: String,
        /// How long a remember approval lasts (e.g. 10m); default 10m.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// Import an OpenSSH private key file into the keystore. A passphrase-protected file is
    /// decrypted in memory (the passphrase is asked on the terminal). The file is left as it
    /// is.
    Import {
        file: PathBuf,
        /// Read the passphrase of a protected key as one line from stdin, not the terminal.
        #[arg(long)]
        passphrase_stdin: bool,
        /// Default: the key's comment, else the file name.
        #[arg(long)]
        name: Option<String>,
        /// always (default), remember or never.
        #[arg(long, default_value = "always")]
        policy: String,
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// List the keys: name, type, fingerprint, policy.
    List,
    /// Remove a key from the keystore.
    Remove { name: String },
    /// Set a key's approval policy: always (every signature), remember (once per program,
    /// terminal and host for --ttl), never (no prompt).
    Policy {
        name: String,
        policy: String,
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// The user CA for session certificates.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the user CA key (once) and print its line for sshd's TrustedUserCAKeys.
    Init,
}

#[derive(Debug, Subcommand)]
pub enum SshCommand {
    /// Ask the running agent for a session certificate: after one approval it offers an
    /// ephemeral key with a certificate from the user CA, which signs without prompts until it
    /// expires.
    Session {
        /// Comma-separated principals (user names on the servers).
        #[arg(long, value_delimiter = ',', required = true)]
        principals: Vec<String>,
        /// How long the certificate is valid, e.g. 8h (at most 7d).
        #[arg(long, value_parser = parse_duration, default_value = "8h")]
        validity: Duration,
        /// The agent's SSH socket; default $XDG_RUNTIME_DIR/nod/ssh-agent.sock.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
}

fn parse_policy(word: &str, ttl: Option<Duration>) -> Result<Policy> {
    Policy::parse(word, ttl).map_err(anyhow::Error::msg)
}

fn print_added(key: &StoredKey) {
    eprintln!(
        "added {} {} {} (policy {})",
        key.name,
        key.type_name(),
        key.fingerprint(),
        key.policy
    );
    println!("{}", key.public_line());
}

pub fn run_keys(paths: &Paths, command: KeysCommand) -> Result<()> {
    nod_agent::keystore::make_non_dumpable();
    let store = Keystore::open(paths);
    match command {
        KeysCommand::Generate {
            kind,
            bits,
            name,
            policy: word,
            ttl,
        } => {
            let policy = parse_policy(&word, ttl)?;
            let key = generate(kind, bits, &name)?;
            print_added(&add_key(&store, &name, key, policy)?);
        }
        KeysCommand::Import {
            file,
            passphrase_stdin,
            name,
            policy: word,
            ttl,
        } => {
            let policy = parse_policy(&word, ttl)?;
            let pem = Zeroizing::new(
                std::fs::read(&file)
                    .with_context(|| format!("cannot read the key file {}", file.display()))?,
            );
            let mut key = parse_import(&pem).with_context(|| format!("{}", file.display()))?;
            if key.is_encrypted() {
                let prompt = format!("Enter passphrase for {}: ", file.display());
                let passphrase = passphrase::read(&prompt, passphrase_stdin)?;
                key = decrypt_import(&key, &passphrase)
                    .with_context(|| format!("{}", file.display()))?;
            }
            let name = match name {
                Some(name) => name,
                None if !key.comment().is_empty() => key.comment().to_owned(),
                None => file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .context("give the key a --name")?,
            };
            print_added(&add_key(&store, &name, key, policy)?);
        }
        KeysCommand::List => {
            let keys = store.ssh_keys()?;
            if keys.is_empty() {
                eprintln!("no keys yet; add one with `nod keys generate --name NAME`");
            }
            for k in keys {
                println!(
                    "{}\t{}\t{}\t{}",
                    k.name,
                    k.type_name(),
                    k.fingerprint(),
                    k.policy
                );
            }
        }
        KeysCommand::Remove { name } => {
            store.remove_ssh_key(&name)?;
            println!("removed {name}");
        }
        KeysCommand::Policy {
            name,
            policy: word,
            ttl,
        } => {
            let policy = parse_policy(&word, ttl)?;
            store.set_ssh_policy(&name, policy)?;
            println!("{name}: {policy}");
        }
        KeysCommand::Ca {
            command: CaCommand::Init,
        } => {
            let (ca, created) = store.user_ca_or_create()?;
            if created {
                eprintln!(
                    "created the user CA; on each server, add this line to a file named by \
                     sshd_config's TrustedUserCAKeys:"
                );
            }
            println!("{}", ca_line(&ca));
        }
    }
    Ok(())
}

pub fn run_ssh(paths: &Paths, command: SshCommand) -> Result<()> {
    match command {
        SshCommand::Session {
            principals,
            validity,
            socket,
        } => {
            let request =
                SessionCertRequest::new(principals, validity).map_err(anyhow::Error::msg)?;
            let socket = match socket {
                Some(socket) => socket,
                None => paths.ssh_agent_socket()?,
            };
            // The person may take up to the agent's prompt timeout to decide.
            cert::request(&socket, &request, Duration::from_secs(90))?;
            eprintln!(
                "session certificate for {} valid {} is in the agent; see `ssh-add -l`",
                request.principals.join(","),
                format_duration(request.validity)
            );
            Ok(())
        }
    }
}

/// Adds a key the agent can sign with: its type and size are checked first (the keystore only
/// stores).
fn add_key(
    store: &Keystore,
    name: &str,
    key: nod_agent::keystore::ssh::PrivateKey,
    policy: Policy,
) -> Result<nod_agent::keystore::ssh::StoredKey> {
    nod_agent::ssh::sign::check_key(key.key_data()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(store.add_ssh_key(name, key, policy)?)
}
