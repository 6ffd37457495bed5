//! `nod agent`: the foreground process. Sets up the process (umask, fd limit, not dumpable),
//! loads config, key, allowlist and audit log, creates the sockets, and serves until SIGINT,
//! SIGTERM or SIGHUP, after which it removes its sockets and returns. SIGUSR1 drops the keys
//! added to the SSH agent socket, as OpenSSH's agent does, and serving goes on.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::stat::{Mode, umask};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};

use super::{CoreError, build_core};
use crate::approvers::ApproverChoice;
use crate::config::{AgentConfig, ConfigError, SecretsBackend};
use crate::files::ensure_private_dir;
use crate::keystore::{self, Asker, KeystoreError};
use crate::log::event;
use crate::pam::hosts::HostAllowlist;
use crate::pam::{ApprovalService, ApprovalSettings};
use crate::paths::{Paths, PathsError};
use crate::secrets::{SecretsError, SecretsFiles, SecretsService, SecretsSettings};
use crate::socket::Capped;
use crate::ssh::SshAgentService;

/// What `nod agent` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    pub approver: ApproverChoice,
    /// Directories to use instead of the XDG ones from the environment.
    pub paths: Option<Paths>,
    /// Asks for the keystore's passphrase or TPM PIN at start (an agent with a terminal).
    pub asker: Option<Arc<dyn Asker>>,
}

/// The agent could not start (or its runtime failed).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Paths(#[from] PathsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    #[error("socket {}: {source}", path.display())]
    Socket { path: PathBuf, source: io::Error },
    #[error(
        "{} exists and is not a socket; refusing to replace it — move it away and retry",
        path.display()
    )]
    NotASocket { path: PathBuf },
    #[error(
        "another nod agent is already serving {}; stop it first (or use another XDG_RUNTIME_DIR)",
        path.display()
    )]
    AlreadyRunning { path: PathBuf },
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
}

/// Raises the soft open-files limit to the hard one: every connection holds an fd, and a flood
/// of them should meet the 5 s read deadline, not `EMFILE`.
pub fn raise_nofile_limit() {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                event!("cannot raise the open-files limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => event!("cannot read the open-files limit: {e}"),
    }
}

/// A socket we created; removed on drop unless something else has taken its place.
#[derive(Debug)]
pub struct BoundSocket {
    path: PathBuf,
    ino: u64,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates a listening socket at `path` (mode 0600, in a 0700 directory of ours). A stale socket
/// left by a crashed agent is replaced; a live one, or anything that is not a socket, is not.
/// Must be called inside the runtime.
pub fn bind_socket(path: &Path) -> Result<(UnixListener, BoundSocket), AgentError> {
    let sock_err = |source| AgentError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir).map_err(sock_err)?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(AgentError::AlreadyRunning {
                    path: path.to_owned(),
                });
            }
            fs::remove_file(path).map_err(sock_err)?;
        }
        Ok(_) => {
            return Err(AgentError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(sock_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(sock_err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(sock_err)?;
    let ino = fs::symlink_metadata(path).map_err(sock_err)?.ino();
    Ok((
        listener,
        BoundSocket {
            path: path.to_owned(),
            ino,
        },
    ))
}

/// Runs the agent in the foreground on a current-thread runtime until SIGINT or SIGTERM.
pub fn run_agent(options: AgentOptions) -> Result<(), AgentError> {
    // Everything the agent creates is private to the user, whatever the caller's umask.
    umask(Mode::from_bits_truncate(0o077));
    raise_nofile_limit();
    // Keep other processes of this user from reading the key out of our memory (ptrace, core
    // dumps).
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        event!("cannot make the agent non-dumpable: {e}");
    }
    let paths = match options.paths {
        Some(paths) => paths,
        None => Paths::from_env()?,
    };
    let socket_path = paths.approval_socket()?;
    let ssh_socket_path = paths.ssh_agent_socket()?;
    let secrets_socket_path = paths.secrets_socket()?;
    let config = AgentConfig::load(&paths.agent_config())?;
    let core = build_core(&options.approver, &config, &paths.audit_log())?;
    let keystore::AgentKeystore {
        keystore,
        agent_key,
    } = keystore::open_for_agent(&paths, options.asker.clone())?;
    let hosts = HostAllowlist::open(&paths.hosts_file());
    event!(
        "agent key {}",
        agent_key
            .get()
            .map_or_else(|_| "(locked)".into(), |k| k.key_id().to_string())
    );
    let service = Arc::new(ApprovalService::new(
        agent_key,
        hosts,
        Arc::clone(&core),
        ApprovalSettings {
            presence: config.presence.pam,
            ..ApprovalSettings::from(&config.approval)
        },
    ));
    let secrets_files = SecretsFiles::new(&paths, &keystore);
    let ssh_agent = Arc::new(
        SshAgentService::new(Arc::clone(&core))
            .with_presence(config.presence.ssh)
            .with_limits(crate::ssh::SshLimits {
                idle: config.ssh.idle_timeout,
                ..crate::ssh::SshLimits::default()
            })
            .with_settings(&config.ssh)
            .with_keystore(keystore),
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    runtime.block_on(async move {
        let secrets = Arc::new(
            SecretsService::new(
                &secrets_files,
                config.secrets.backend,
                Arc::clone(&core),
                SecretsSettings {
                    presence: config.presence.secrets,
                    ..SecretsSettings::default()
                },
            )
            .with_sockets(serde_json::json!({
                "approval": socket_path,
                "ssh_agent": ssh_socket_path,
                "secrets": secrets_socket_path,
            })),
        );
        match config.secrets.backend {
            // A backend named in agent.toml must work from the start: the agent refuses to
            // start without it, rather than fail every request later.
            SecretsBackend::File | SecretsBackend::SecretService => {
                match secrets.backend().await {
                    // Opened on the first request after `nod keys unlock`.
                    Err(e) if e.is_locked() => event!("secrets backend: {e}"),
                    other => {
                        other?;
                    }
                }
            }
            SecretsBackend::Auto => {
                event!("secrets backend: chosen on the first secrets request (auto)");
            }
        }
        let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Runtime)?;
        let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Runtime)?;
        let mut sighup = signal(SignalKind::hangup()).map_err(AgentError::Runtime)?;
        let mut sigusr1 = signal(SignalKind::user_defined1()).map_err(AgentError::Runtime)?;
        let (listener, socket) = bind_socket(&socket_path)?;
        let (secrets_listener, secrets_socket) = bind_socket(&secrets_socket_path)?;
        event!("approval socket {} ready", socket_path.display());
        let (ssh_listener, ssh_socket) = bind_socket(&ssh_socket_path)?;
        event!("ssh agent socket {} ready", ssh_socket_path.display());
        eprintln!(
            "SSH_AUTH_SOCK={}; export SSH_AUTH_SOCK;",
            ssh_socket_path.display()
        );
        event!("secrets socket {} ready", secrets_socket_path.display());
        // One share of the descriptors for each socket (see `socket`).
        let cap = crate::socket::cap_from_limit(3);
        event!("connections: at most {cap} at once on each socket");
        let flushing = Arc::clone(core.audit_log()).flush_periodically();
        let approval = service.serve(Capped::new(listener, cap, "approval"));
        let ssh = Arc::clone(&ssh_agent).serve(Capped::new(ssh_listener, cap, "ssh agent"));
        let secrets_served = secrets.serve(Capped::new(secrets_listener, cap, "secrets"));
        tokio::pin!(flushing, approval, ssh, secrets_served);
        loop {
            tokio::select! {
                () = &mut flushing => break,
                () = &mut approval => break,
                () = &mut ssh => break,
                () = &mut secrets_served => break,
                _ = sigint.recv() => { event!("SIGINT: shutting down"); break }
                _ = sigterm.recv() => { event!("SIGTERM: shutting down"); break }
                _ = sighup.recv() => { event!("SIGHUP: shutting down"); break }
                _ = sigusr1.recv() => ssh_agent.drop_added_keys(),
            }
        }
        drop(socket);
        drop(ssh_socket);
        drop(secrets_socket);
        Ok(())
    })
}
