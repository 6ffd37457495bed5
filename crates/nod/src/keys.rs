//! `nod keys …` (persistent SSH keys, policies, the user CA, how the keystore is protected at
//! rest) and `nod ssh session`.
//!
//! `nod keys` works on the keystore files directly, with or without a running agent; the agent
//! notices the change on its next request. A keystore under a passphrase or a TPM PIN is opened
//! from the kernel keyring when `nod keys unlock` put its key there, else by asking on the
//! terminal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use nod_agent::config::Required;
use nod_agent::keystore::ssh::{
    KeyType, StoredKey, ca_line, decrypt_import, generate, parse_import,
};
use nod_agent::keystore::{Asker, Keystore, Protector, ProtectorKind, tpm_description};
use nod_agent::paths::Paths;
use nod_agent::secrets::SecretsFiles;
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
        /// The least presence its signatures need: `any` approver, or `verified` (a password or
        /// a fingerprint; a click or a keypress is not asked, and with no such approver the
        /// signature is refused). The stronger of this and `[presence] ssh` of agent.toml
        /// applies. Not with policy never.
        #[arg(long, value_name = "any|verified", default_value = "any")]
        presence: Required,
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
        /// How long a remember approval lasts (e.g. 10m); default 10m.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// The least presence its signatures need: `any` approver, or `verified` (a password or
        /// a fingerprint; a click or a keypress is not asked, and with no such approver the
        /// signature is refused). The stronger of this and `[presence] ssh` of agent.toml
        /// applies. Not with policy never.
        #[arg(long, value_name = "any|verified", default_value = "any")]
        presence: Required,
    },
    /// List the keys: name, type, fingerprint, policy, presence.
    List,
    /// Remove a key from the keystore.
    Remove { name: String },
    /// Set a key's approval policy: always (every signature), remember (once per program,
    /// terminal and host for --ttl), never (no prompt); or its presence minimum, or both.
    /// What is not given stays as it is.
    Policy {
        name: String,
        #[arg(required_unless_present = "presence")]
        policy: Option<String>,
        /// How long a remember approval lasts (e.g. 10m); default 10m.
        #[arg(long, value_parser = parse_duration, requires = "policy")]
        ttl: Option<Duration>,
        /// The least presence its signatures need: `any` approver, or `verified` (a password or
        /// a fingerprint; a click or a keypress is not asked, and with no such approver the
        /// signature is refused). Not with policy never.
        #[arg(long, value_name = "any|verified")]
        presence: Option<Required>,
    },
    /// The user CA for session certificates.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Create the keystore's wrapping key under a protector of your choice (before the first
    /// run; a first run without it uses the file protector). See docs/security.md.
    Init {
        /// tpm (sealed to this machine's TPM), passphrase (Argon2id), or file (a plain file:
        /// a copy of the disk opens everything).
        #[arg(long, default_value = "tpm")]
        protector: ProtectorKind,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Change how the wrapping key is protected: tpm, passphrase or file. Only the wrapping
    /// key is re-wrapped (atomically); the sealed keys and secrets stay as they are.
    Protect {
        /// The new protector.
        protector: ProtectorKind,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Open a passphrase- or PIN-protected keystore and cache its key in the kernel keyring
    /// (never on disk) for the agent and `nod keys`, until --timeout or `nod keys lock`.
    Unlock {
        /// How long the key stays cached, e.g. 8h.
        #[arg(long, value_parser = parse_duration, default_value = "12h")]
        timeout: Duration,
        /// Read the passphrase (or PIN) as one line from stdin, not the terminal.
        #[arg(long)]
        passphrase_stdin: bool,
    },
    /// Remove the cached key from the kernel keyring. A running agent keeps the keys it has
    /// until it stops.
    Lock,
    /// How the keystore is protected at rest, and whether its key is cached.
    Status,
}

/// The new passphrase or PIN of `nod keys init` / `nod keys protect`.
#[derive(Debug, clap::Args)]
pub struct SecretArgs {
    /// tpm: also require a PIN (the TPM's dictionary-attack lockout guards it).
    #[arg(long)]
    pin: bool,
    /// Read the new passphrase (or PIN) as one line from stdin instead of asking twice on
    /// the terminal.
    #[arg(long)]
    passphrase_stdin: bool,
}

/// Asks on the terminal; `None` when there is none.
#[derive(Debug)]
pub struct TtyAsker;

impl Asker for TtyAsker {
    fn ask(&self, prompt: &str) -> Option<Zeroizing<Vec<u8>>> {
        // No terminal: nobody to ask, and the caller says "keystore is locked" and what to do.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .ok()?;
        match passphrase::read(prompt, false) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("nod: {e:#}");
                None
            }
        }
    }
}

/// Shortest passphrase accepted for the passphrase protector.
const MIN_PASSPHRASE: usize = 8;

/// The new secret for `kind`: a passphrase (always), a PIN (with --pin), else none.
fn new_secret(kind: ProtectorKind, args: &SecretArgs) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let what = match (kind, args.pin) {
        (ProtectorKind::Passphrase, _) => "passphrase",
        (ProtectorKind::Tpm, true) => "TPM PIN",
        (ProtectorKind::Tpm, false) | (ProtectorKind::File, false) => return Ok(None),
        (ProtectorKind::File, true) => anyhow::bail!("--pin goes with tpm only"),
    };
    let first = passphrase::read(&format!("New keystore {what}: "), args.passphrase_stdin)?;
    if first.is_empty() {
        anyhow::bail!("an empty {what} protects nothing");
    }
    // A PIN is guarded by the TPM's lockout; a passphrase only by Argon2id's cost per guess.
    if kind == ProtectorKind::Passphrase && first.len() < MIN_PASSPHRASE {
        anyhow::bail!(
            "a passphrase of fewer than {MIN_PASSPHRASE} characters falls to an offline guess \
             against a copy of the disk; choose a longer one (or `nod keys protect tpm --pin`)"
        );
    }
    if !args.passphrase_stdin {
        let again = passphrase::read(&format!("Repeat the {what}: "), false)?;
        if again != first {
            anyhow::bail!("the two {what}s differ; nothing was changed");
        }
    }
    Ok(Some(first))
}

/// The keystore's protection in one line, for `nod keys status` and `nod doctor`.
pub fn describe(protector: Option<&Protector>) -> String {
    match protector {
        None => "no keystore yet".into(),
        Some(Protector::File(_)) => "file: the key is a plain file, so a copy of this disk \
                                     opens every key and secret"
            .into(),
        Some(Protector::Passphrase { .. }) => "passphrase (Argon2id)".into(),
        Some(Protector::Tpm { pin, .. }) => format!(
            "tpm ({}){}",
            tpm_description(),
            if *pin { ", with a PIN" } else { "" }
        ),
    }
}

/// `nod keys init|protect|unlock|lock|status`.
fn protection(paths: &Paths, store: &Keystore, command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Init { protector, secret } => {
            let pass = new_secret(protector, &secret)?;
            store.init(protector, pass.as_deref().map(|p| &p[..]))?;
            SecretsFiles::new(paths, store).migrate()?;
            eprintln!(
                "keystore key created in {}; protector {}",
                store.protector_path().display(),
                describe(store.protector()?.as_ref())
            );
        }
        KeysCommand::Protect { protector, secret } => {
            // Open the current protector first (and finish any migration of an earlier
            // version's files under it), then ask for the new secret.
            if store.protector()?.is_some() {
                store.wrap_key()?.context("the keystore key vanished")?;
                SecretsFiles::new(paths, store).migrate()?;
            }
            let pass = new_secret(protector, &secret)?;
            store.protect(protector, pass.as_deref().map(|p| &p[..]))?;
            SecretsFiles::new(paths, store).migrate()?;
            eprintln!(
                "keystore key now protected by {}; nothing else was re-encrypted",
                describe(store.protector()?.as_ref())
            );
            if protector == ProtectorKind::File {
                eprintln!(
                    "warning: anyone with a copy of this disk can now open every key and secret"
                );
            }
        }
        KeysCommand::Unlock {
            timeout,
            passphrase_stdin,
        } => {
            let protector = store
                .protector()?
                .context("there is no keystore yet; create it with `nod keys init`")?;
            if let Protector::Tpm { pin: false, .. } = protector {
                anyhow::bail!(
                    "the keystore key is sealed to the TPM without a PIN: the agent opens it by \
                     itself, there is nothing to unlock"
                );
            }
            let secret = match protector {
                Protector::File(_) => None,
                Protector::Passphrase { .. } => Some(passphrase::read(
                    "nod keystore passphrase: ",
                    passphrase_stdin,
                )?),
                Protector::Tpm { .. } => Some(passphrase::read(
                    "nod keystore TPM PIN: ",
                    passphrase_stdin,
                )?),
            };
            store.unlock_to_cache(secret.as_deref().map(|p| &p[..]), timeout)?;
            eprintln!(
                "unlocked for {}: the agent picks the key up on its next request",
                format_duration(timeout)
            );
        }
        KeysCommand::Lock => {
            if store.lock_cache()? {
                eprintln!(
                    "removed the cached key; a running agent keeps its keys until it stops \
                     (systemctl --user restart nod-agent)"
                );
            } else {
                eprintln!("no cached key");
            }
        }
        KeysCommand::Status => {
            let protector = store.protector()?;
            println!("protector: {}", describe(protector.as_ref()));
            println!("file: {}", store.protector_path().display());
            if protector.as_ref().is_some_and(Protector::needs_secret) {
                println!(
                    "cached: {}",
                    if store.is_cached()? {
                        "yes (unlocked)"
                    } else {
                        "no (locked: run `nod keys unlock`)"
                    }
                );
            }
        }
        _ => unreachable!("only the protection commands come here"),
    }
    Ok(())
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
        "added {} {} {} (policy {}, presence {})",
        key.name,
        key.type_name(),
        key.fingerprint(),
        key.policy,
        key.presence.word()
    );
    println!("{}", key.public_line());
}

pub fn run_keys(paths: &Paths, command: KeysCommand) -> Result<()> {
    nod_agent::keystore::make_non_dumpable();
    let store = Keystore::open(paths).with_asker(Arc::new(TtyAsker));
    if matches!(
        command,
        KeysCommand::Init { .. }
            | KeysCommand::Protect { .. }
            | KeysCommand::Unlock { .. }
            | KeysCommand::Lock
            | KeysCommand::Status
    ) {
        return protection(paths, &store, command);
    }
    match command {
        KeysCommand::Generate {
            kind,
            bits,
            name,
            policy: word,
            ttl,
            presence,
        } => {
            let policy = parse_policy(&word, ttl)?;
            let key = generate(kind, bits, &name)?;
            print_added(&add_key(&store, &name, key, policy, presence)?);
        }
        KeysCommand::Import {
            file,
            passphrase_stdin,
            name,
            policy: word,
            ttl,
            presence,
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
            print_added(&add_key(&store, &name, key, policy, presence)?);
        }
        KeysCommand::List => {
            let keys = store.ssh_keys()?;
            if keys.is_empty() {
                eprintln!("no keys yet; add one with `nod keys generate --name NAME`");
            }
            for k in keys {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    k.name,
                    k.type_name(),
                    k.fingerprint(),
                    k.policy,
                    k.presence.word()
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
            presence,
        } => {
            let policy = word.map(|w| parse_policy(&w, ttl)).transpose()?;
            let key = store.update_ssh_key(&name, policy, presence)?;
            println!("{name}: {}, presence {}", key.policy, key.presence.word());
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
        _ => unreachable!("handled by protection()"),
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
    presence: Required,
) -> Result<nod_agent::keystore::ssh::StoredKey> {
    nod_agent::ssh::sign::check_key(key.key_data()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(store.add_ssh_key_requiring(name, key, policy, presence)?)
}
