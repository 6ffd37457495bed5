//! The host allowlist, `$XDG_CONFIG_HOME/nod/hosts.toml`: which Linux hosts may ask for
//! approval, and the Ed25519 key (and key id) each one signs with.
//!
//! ```toml
//! [[host]]
//! id = "web-1"
//! public_key_hex = "…64 hex…"
//! key_id = "SHA256:…"
//! ```
//!
//! The file is written by `nod hosts add|remove` (atomically, mode 0600) and re-read by the
//! running agent when it changes, so adding a host needs no restart.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nod_proto::{KeyId, VerifyingKey, parse_public_key_file};
use serde::{Deserialize, Serialize};

use crate::files::{check_not_writable_by_others, ensure_private_dir, write_atomic};
use crate::log::event;

/// Longest host id accepted.
pub use nod_proto::keys::MAX_HOST_ID_LEN;

/// The allowlist could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("cannot access {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is invalid: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error(
        "host id {0:?} is invalid: use 1-{MAX_HOST_ID_LEN} characters from A-Z a-z 0-9 . _ : @ - \
         (the same value as host_id in the host's /etc/nod/config.toml)"
    )]
    BadHostId(String),
    #[error("{}: {message}", path.display())]
    BadKeyFile { path: PathBuf, message: String },
    #[error("key id {0:?} is invalid: use 1-256 printable characters without spaces")]
    BadKeyId(String),
    #[error("host {0:?} is not in the allowlist; `nod hosts list` shows the allowed hosts")]
    UnknownHost(String),
}

pub use nod_proto::valid_host_id;

/// One allowed host as stored in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub id: String,
    pub public_key_hex: String,
    pub key_id: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFileToml {
    #[serde(default)]
    host: Vec<HostEntry>,
}

/// A host whose key parsed: what the approval service checks a request against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    pub key: VerifyingKey,
    pub key_id: KeyId,
}

/// What `add` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    Replaced,
}

/// The allowlist file, parsed and checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostsFile {
    hosts: BTreeMap<String, (HostEntry, AllowedHost)>,
}

fn parse_entry(entry: HostEntry) -> Result<(HostEntry, AllowedHost), String> {
    if !valid_host_id(&entry.id) {
        return Err(format!("host id {:?} is invalid", entry.id));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(&entry.public_key_hex, &mut bytes)
        .map_err(|_| format!("host {:?}: public_key_hex must be 64 hex digits", entry.id))?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| format!("host {:?}: public_key_hex is not an Ed25519 key", entry.id))?;
    let key_id =
        KeyId::new(&entry.key_id).map_err(|_| format!("host {:?}: key_id is invalid", entry.id))?;
    Ok((entry, AllowedHost { key, key_id }))
}

impl HostsFile {
    /// Parses the text of `hosts.toml`. A host listed twice is an error, because which entry
    /// wins would otherwise be a guess.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: HostsFileToml = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut hosts = BTreeMap::new();
        for entry in file.host {
            let (entry, allowed) = parse_entry(entry)?;
            let id = entry.id.clone();
            if hosts.insert(id.clone(), (entry, allowed)).is_some() {
                return Err(format!("host {id:?} is listed twice"));
            }
        }
        Ok(Self { hosts })
    }

    /// Reads `path`; a missing file is an empty allowlist. A file others can write is refused.
    pub fn load(path: &Path) -> Result<Self, HostsError> {
        let io_err = |source| HostsError::Io {
            path: path.to_owned(),
            source,
        };
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(io_err(e)),
        };
        let meta = fs::metadata(path).map_err(io_err)?;
        check_not_writable_by_others(path, &meta).map_err(io_err)?;
        Self::parse(&text).map_err(|message| HostsError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Writes the allowlist to `path` atomically (temp + fsync + rename), mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), HostsError> {
        let io_err = |source| HostsError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            ensure_private_dir(dir).map_err(io_err)?;
        }
        let file = HostsFileToml {
            host: self.hosts.values().map(|(e, _)| e.clone()).collect(),
        };
        let body = toml::to_string(&file).expect("the host list always serializes");
        let text = format!(
            "# Hosts allowed to ask this nod agent for approval. Managed by `nod hosts`.\n{body}"
        );
        write_atomic(path, text.as_bytes()).map_err(io_err)
    }

    /// Adds (or replaces) a host from the text of its public key file: macos-auth
    /// `public_key_hex=` or an OpenSSH `ssh-ed25519` line. The key id is `key_id` if given,
    /// else the file's `key_id=` line, else the key's fingerprint.
    pub fn add(
        &mut self,
        host_id: &str,
        key_file_text: &str,
        key_file_path: &Path,
        key_id: Option<&str>,
    ) -> Result<AddOutcome, HostsError> {
        if !valid_host_id(host_id) {
            return Err(HostsError::BadHostId(host_id.to_owned()));
        }
        let parsed = parse_public_key_file(key_file_text).map_err(|e| HostsError::BadKeyFile {
            path: key_file_path.to_owned(),
            message: format!(
                "{e}; expected the host's public key file (public_key_hex=… or ssh-ed25519 …)"
            ),
        })?;
        let key_id = match key_id {
            Some(id) => KeyId::new(id).map_err(|_| HostsError::BadKeyId(id.to_owned()))?,
            None => parsed.key_id,
        };
        let entry = HostEntry {
            id: host_id.to_owned(),
            public_key_hex: hex::encode(parsed.key.as_bytes()),
            key_id: key_id.as_str().to_owned(),
        };
        let allowed = AllowedHost {
            key: parsed.key,
            key_id,
        };
        Ok(
            match self.hosts.insert(host_id.to_owned(), (entry, allowed)) {
                Some(_) => AddOutcome::Replaced,
                None => AddOutcome::Added,
            },
        )
    }

    /// Removes a host; an unknown id is an error so a typo is not reported as success.
    pub fn remove(&mut self, host_id: &str) -> Result<(), HostsError> {
        self.hosts
            .remove(host_id)
            .map(drop)
            .ok_or_else(|| HostsError::UnknownHost(host_id.to_owned()))
    }

    pub fn get(&self, host_id: &str) -> Option<&AllowedHost> {
        self.hosts.get(host_id).map(|(_, allowed)| allowed)
    }

    /// The entries, sorted by host id.
    pub fn entries(&self) -> impl Iterator<Item = &HostEntry> {
        self.hosts.values().map(|(entry, _)| entry)
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// What identifies one version of the file: a rename replaces the inode, an edit in place
/// changes mtime or size.
type Stamp = Option<(SystemTime, u64, u64)>;

/// The allowlist as the running agent sees it: reloaded whenever the file changes. One `stat`
/// per connection is cheap next to an Ed25519 verification.
#[derive(Debug)]
pub struct HostAllowlist {
    path: PathBuf,
    stamp: Stamp,
    hosts: HostsFile,
}

fn stamp(path: &Path) -> Stamp {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

impl HostAllowlist {
    /// Loads the file now; a broken file is logged and treated as empty (fail closed).
    pub fn open(path: &Path) -> Self {
        let mut list = Self {
            path: path.to_owned(),
            stamp: None,
            hosts: HostsFile::default(),
        };
        list.reload(stamp(path));
        list
    }

    fn reload(&mut self, stamp: Stamp) {
        self.stamp = stamp;
        self.hosts = match HostsFile::load(&self.path) {
            Ok(hosts) if stamp.is_none() => {
                event!(
                    "no host allowlist at {} yet; allow a host with `nod hosts add <host_id> <pubkey-file>`",
                    self.path.display()
                );
                hosts
            }
            Ok(hosts) => {
                event!(
                    "host allowlist {}: {} host(s)",
                    self.path.display(),
                    hosts.len()
                );
                hosts
            }
            Err(e) => {
                event!("{e}; no host is allowed until it is fixed");
                HostsFile::default()
            }
        };
    }

    /// The current allowlist, re-read first if the file changed since the last call.
    pub fn current(&mut self) -> &HostsFile {
        let now = stamp(&self.path);
        if now != self.stamp {
            self.reload(now);
        }
        &self.hosts
    }
}

#[cfg(test)]
mod tests {
    use nod_proto::SigningKey;
    use nod_proto::keys::{format_public_key_file, openssh_public_line};

    use super::*;

    fn vk(seed: u8) -> VerifyingKey {
        SigningKey::from_bytes(&[seed; 32]).verifying_key()
    }

    #[test]
    fn host_ids_follow_the_documented_alphabet() {
        for ok in ["web-1", "a", "host.example.com", "user@host:22", "A_b"] {
            assert!(valid_host_id(ok), "{ok}");
        }
        let long = "x".repeat(MAX_HOST_ID_LEN + 1);
        for bad in [
            "",
            "has space",
            "semi;colon",
            "new\nline",
            "ü",
            long.as_str(),
        ] {
            assert!(!valid_host_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn add_takes_key_id_from_flag_then_file_then_fingerprint() {
        let mut hosts = HostsFile::default();
        let p = Path::new("k.pub");
        let hex_file = format_public_key_file(&vk(1), &KeyId::new("pinned").unwrap(), "c");
        hosts.add("a", &hex_file, p, None).unwrap();
        assert_eq!(hosts.get("a").unwrap().key_id.as_str(), "pinned");
        hosts.add("b", &hex_file, p, Some("flag")).unwrap();
        assert_eq!(hosts.get("b").unwrap().key_id.as_str(), "flag");
        hosts
            .add("c", &openssh_public_line(&vk(2), "root@c"), p, None)
            .unwrap();
        assert_eq!(hosts.get("c").unwrap().key_id, KeyId::fingerprint(&vk(2)));
        assert_eq!(hosts.get("c").unwrap().key, vk(2));
    }

    #[test]
    fn re_adding_replaces_and_round_trips_through_text() {
        let mut hosts = HostsFile::default();
        let p = Path::new("k.pub");
        let line1 = openssh_public_line(&vk(1), "");
        let line2 = openssh_public_line(&vk(2), "");
        assert_eq!(
            hosts.add("web", &line1, p, None).unwrap(),
            AddOutcome::Added
        );
        assert_eq!(
            hosts.add("web", &line2, p, None).unwrap(),
            AddOutcome::Replaced
        );
        assert_eq!(hosts.len(), 1);
        let file = HostsFileToml {
            host: hosts.entries().cloned().collect(),
        };
        let again = HostsFile::parse(&toml::to_string(&file).unwrap()).unwrap();
        assert_eq!(again, hosts);
        assert_eq!(again.get("web").unwrap().key, vk(2));
    }

    #[test]
    fn rejects_bad_input() {
        let mut hosts = HostsFile::default();
        let p = Path::new("k.pub");
        let line = openssh_public_line(&vk(1), "");
        assert!(matches!(
            hosts.add("bad id", &line, p, None),
            Err(HostsError::BadHostId(_))
        ));
        assert!(matches!(
            hosts.add("ok", "ssh-rsa AAAA", p, None),
            Err(HostsError::BadKeyFile { .. })
        ));
        assert!(matches!(
            hosts.add("ok", &line, p, Some("with space")),
            Err(HostsError::BadKeyId(_))
        ));
        assert!(matches!(
            hosts.remove("nope"),
            Err(HostsError::UnknownHost(_))
        ));
        assert!(
            HostsFile::parse("[[host]]\nid = \"a\"\npublic_key_hex = \"00\"\nkey_id = \"k\"")
                .is_err()
        );
        assert!(HostsFile::parse("[[host]]\nid = \"a\"\nextra = 1").is_err());
    }
}
