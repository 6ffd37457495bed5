//! ssh to a host to pair or check it: the one `ssh` command both `nod pair` and `nod doctor
//! --host` use, and the parts of the host's config they read.
//!
//! Every session opened here clears the ssh config's forwards (`ClearAllForwardings=yes`).
//! The RemoteForward block `nod pair` writes forwards a fixed path on the host with
//! `StreamLocalBindUnlink yes`, so a second session that forwarded it too would unlink the
//! open login's socket, bind its own, and leave a stale file behind when it exits: the open
//! session's sudo would then fall back to the password.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use nod_proto::PinnedKey;
use serde::Deserialize;

/// The parts of the host's `config.toml` that pairing and checking need (the other keys are
/// the helper's).
#[derive(Debug, Deserialize)]
pub struct HostConfig {
    pub socket_path: String,
    pub host_key_file: String,
    pub agent_pubkey_file: String,
    pub host_id: String,
    pub key_id: Option<String>,
}

impl HostConfig {
    /// The host's public key file: `host_key_file` with `.key` replaced by `.pub`, as
    /// `nod-helper gen-key` names them.
    pub fn public_key_path(&self) -> String {
        match self.host_key_file.strip_suffix(".key") {
            Some(stem) => format!("{stem}.pub"),
            None => format!("{}.pub", self.host_key_file),
        }
    }

    /// The key id the agent pins for the host: the config's, else its key file's; with
    /// neither none is pinned (as `nod hosts add` does) and the host's signature decides.
    pub fn pinned_key_id(&self, public: &PinnedKey) -> Option<String> {
        self.key_id
            .clone()
            .or_else(|| public.key_id.as_ref().map(|id| id.as_str().to_owned()))
    }
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `ssh [-F config] -o ClearAllForwardings=yes`: a session that never forwards anything.
pub fn ssh(ssh_config: Option<&Path>) -> Command {
    let mut cmd = Command::new("ssh");
    if let Some(cfg) = ssh_config {
        cmd.arg("-F").arg(cfg);
    }
    cmd.args(["-o", "ClearAllForwardings=yes"]);
    cmd
}

/// Runs the POSIX shell `script` on `dest` without a terminal and returns its stdout.
pub fn read(ssh_config: Option<&Path>, dest: &str, script: &str) -> Result<String> {
    // Through `sh -c`, so a login shell that is not POSIX (fish, csh) runs it too.
    let command = format!("sh -c {}", shell_quote(script));
    let out = ssh(ssh_config)
        .args(["-o", "BatchMode=yes", "--", dest, &command])
        .stdin(Stdio::null())
        .output()
        .context("cannot run ssh")?;
    if !out.status.success() {
        bail!(
            "ssh {dest} failed ({}): {} — make `ssh {dest} true` work without a password \
             prompt first (an ssh key, a verified known_hosts entry)",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
        );
    }
    String::from_utf8(out.stdout).context("the host sent non-UTF-8 text")
}

/// Lower-case hex, as the allowlist stores keys.
pub fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn every_session_clears_the_configs_forwards() {
        let cmd = ssh(Some(Path::new("/x/config")));
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["-F", "/x/config", "-o", "ClearAllForwardings=yes"]);
    }

    #[test]
    fn the_public_key_sits_next_to_the_private_one() {
        let c = HostConfig {
            socket_path: String::new(),
            host_key_file: "/etc/nod/host_ed25519.key".into(),
            agent_pubkey_file: String::new(),
            host_id: String::new(),
            key_id: None,
        };
        assert_eq!(c.public_key_path(), "/etc/nod/host_ed25519.pub");
    }
}
