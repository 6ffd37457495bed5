//! Where the agent keeps its files (XDG Base Directory spec, docs/design.md "Files").
//!
//! | What | Where |
//! |---|---|
//! | config | `$XDG_CONFIG_HOME/nod/agent.toml`, `hosts.toml` |
//! | state (audit log) | `$XDG_STATE_HOME/nod/` |
//! | keystore | `$XDG_DATA_HOME/nod/` |
//! | sockets | `$XDG_RUNTIME_DIR/nod/*.sock` |
//!
//! Per the spec, an unset, empty or relative variable is ignored and the usual fallback under
//! `$HOME` is used. `XDG_RUNTIME_DIR` has no home fallback (sockets must not live on a shared
//! or persistent file system): `/run/user/<uid>` is used if it exists, else it is an error.

use std::env;
use std::path::{Path, PathBuf};

use nix::unistd::{Uid, User, getuid};

/// A required directory could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error(
        "XDG_RUNTIME_DIR is not set and /run/user/{uid} does not exist; \
         log in through a session manager (systemd-logind) or set XDG_RUNTIME_DIR to a private \
         0700 directory"
    )]
    NoRuntimeDir { uid: u32 },
    #[error("HOME is not set and uid {uid} has no home directory in the user database; set HOME")]
    NoHome { uid: u32 },
}

/// The agent's directories, each already ending in `nod/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
    /// `None` when there is no runtime directory; only the agent needs one (for its sockets),
    /// so `nod hosts` and friends still work without it.
    pub runtime_dir: Option<PathBuf>,
    uid: u32,
}

fn absolute_var(name: &str) -> Option<PathBuf> {
    let value = env::var_os(name)?;
    let path = PathBuf::from(value);
    path.is_absolute().then_some(path)
}

fn home(uid: Uid) -> Result<PathBuf, PathsError> {
    if let Some(home) = absolute_var("HOME") {
        return Ok(home);
    }
    match User::from_uid(uid) {
        Ok(Some(user)) if user.dir.is_absolute() => Ok(user.dir),
        _ => Err(PathsError::NoHome { uid: uid.as_raw() }),
    }
}

impl Paths {
    /// Resolves the directories from the environment.
    pub fn from_env() -> Result<Self, PathsError> {
        let uid = getuid();
        let under_home = |var: &str, fallback: &str| -> Result<PathBuf, PathsError> {
            match absolute_var(var) {
                Some(dir) => Ok(dir),
                None => Ok(home(uid)?.join(fallback)),
            }
        };
        let runtime = absolute_var("XDG_RUNTIME_DIR").or_else(|| {
            let dir = PathBuf::from(format!("/run/user/{}", uid.as_raw()));
            dir.is_dir().then_some(dir)
        });
        Ok(Self {
            config_dir: under_home("XDG_CONFIG_HOME", ".config")?.join("nod"),
            data_dir: under_home("XDG_DATA_HOME", ".local/share")?.join("nod"),
            state_dir: under_home("XDG_STATE_HOME", ".local/state")?.join("nod"),
            runtime_dir: runtime.map(|dir| dir.join("nod")),
            uid: uid.as_raw(),
        })
    }

    /// All four directories under one root (tests, and a self-contained setup).
    pub fn under(root: &Path) -> Self {
        Self {
            config_dir: root.join("config/nod"),
            data_dir: root.join("data/nod"),
            state_dir: root.join("state/nod"),
            runtime_dir: Some(root.join("runtime/nod")),
            uid: getuid().as_raw(),
        }
    }

    pub fn agent_config(&self) -> PathBuf {
        self.config_dir.join("agent.toml")
    }

    pub fn hosts_file(&self) -> PathBuf {
        self.config_dir.join("hosts.toml")
    }

    pub fn keystore_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    pub fn audit_log(&self) -> PathBuf {
        self.state_dir.join("audit.jsonl")
    }

    /// The sockets' directory, or why there is none.
    pub fn sockets_dir(&self) -> Result<&Path, PathsError> {
        self.runtime_dir
            .as_deref()
            .ok_or(PathsError::NoRuntimeDir { uid: self.uid })
    }

    pub fn approval_socket(&self) -> Result<PathBuf, PathsError> {
        Ok(self.sockets_dir()?.join("approval.sock"))
    }

    pub fn ssh_agent_socket(&self) -> Result<PathBuf, PathsError> {
        Ok(self.sockets_dir()?.join("ssh-agent.sock"))
    }

    pub fn secrets_socket(&self) -> Result<PathBuf, PathsError> {
        Ok(self.sockets_dir()?.join("secrets.sock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_places_every_file_in_its_own_directory() {
        let p = Paths::under(Path::new("/x"));
        assert_eq!(p.agent_config(), Path::new("/x/config/nod/agent.toml"));
        assert_eq!(p.hosts_file(), Path::new("/x/config/nod/hosts.toml"));
        assert_eq!(p.keystore_dir(), Path::new("/x/data/nod"));
        assert_eq!(p.audit_log(), Path::new("/x/state/nod/audit.jsonl"));
        assert_eq!(
            p.approval_socket().unwrap(),
            Path::new("/x/runtime/nod/approval.sock")
        );
        assert_eq!(
            p.ssh_agent_socket().unwrap(),
            Path::new("/x/runtime/nod/ssh-agent.sock")
        );
    }
}
