//! The host allowlist, `$XDG_CONFIG_HOME/nod/hosts.toml`: which Linux hosts may ask for
//! approval, and the Ed25519 key (and, optionally, the key id) each one signs with.
//!
//! ```toml
//! [[host]]
//! id = "web-1"
//! public_key_hex = "…64 hex…"
//! key_id = "host-key-1"   # optional
//! ```
//!
//! A host with a `key_id` must claim exactly that id in its requests. A host without one may
//! claim any id: its signature under the pinned key is what authenticates it, and the id it
//! claims is signed along with the rest of the request. That is what `nod hosts add` writes for
//! a key file without a `key_id=` line, such as macos-auth's `host_ed25519.pub`, whose helper
//! claims `host-key-1` by default.
//!
//! The file is written by `nod hosts add|remove` (atomically, mode 0600) and re-read by the
//! running agent when it changes, so adding a host needs no restart.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nod_proto::{KeyId, PinnedKey, VerifyingKey, parse_public_key_file};
use serde::{Deserialize, Serialize};

use crate::config::Required;
use crate::files::{Watched, check_not_writable_by_others, ensure_private_dir, write_atomic};
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
    /// The key id the host must claim; absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The least presence this host's requests need; absent: `[presence] pam` of agent.toml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Required>,
}

impl HostEntry {
    /// What the entry pins, for messages: `key id <id>`, or `any key id` (a key id cannot
    /// contain spaces, so the two never meet).
    pub fn pins(&self) -> String {
        match &self.key_id {
            Some(id) => format!("key id {id}"),
            None => "any key id".to_owned(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFileToml {
    #[serde(default)]
    host: Vec<HostEntry>,
}

/// A host whose key parsed: what the approval service checks a request against
/// ([`nod_proto::SignedRequest::verify`]).
pub type AllowedHost = PinnedKey;

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
    let key_id = match &entry.key_id {
        Some(id) => {
            Some(KeyId::new(id).map_err(|_| format!("host {:?}: key_id is invalid", entry.id))?)
        }
        None => None,
    };
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
    /// `public_key_hex=` or an OpenSSH `ssh-ed25519` line. The key id pinned is `key_id` if
    /// given, else the file's `key_id=` line; with neither, none is pinned and the host may
    /// claim any id under its key.
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
            Some(id) => Some(KeyId::new(id).map_err(|_| HostsError::BadKeyId(id.to_owned()))?),
            None => parsed.key_id,
        };
        let entry = HostEntry {
            id: host_id.to_owned(),
            public_key_hex: hex::encode(parsed.key.as_bytes()),
            key_id: key_id.as_ref().map(|id| id.as_str().to_owned()),
            presence: None,
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

    /// The presence `host_id`'s requests need, when its entry says.
    pub fn presence(&self, host_id: &str) -> Option<Required> {
        self.hosts
            .get(host_id)
            .and_then(|(entry, _)| entry.presence)
    }

    /// Sets (or, with `None`, clears) the presence `host_id`'s requests need.
    pub fn set_presence(
        &mut self,
        host_id: &str,
        presence: Option<Required>,
    ) -> Result<(), HostsError> {
        let (entry, _) = self
            .hosts
            .get_mut(host_id)
            .ok_or_else(|| HostsError::UnknownHost(host_id.to_owned()))?;
        entry.presence = presence;
        Ok(())
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

/// The allowlist as the running agent sees it: reloaded whenever the file changes. One `stat`
/// per connection is cheap next to an Ed25519 verification.
#[derive(Debug)]
pub struct HostAllowlist {
    file: Watched<HostsFile>,
}

impl HostAllowlist {
    /// Loads the file now; a broken file is logged and treated as empty (fail closed).
    pub fn open(path: &Path) -> Self {
        let mut list = Self {
            file: Watched::new(path),
        };
        list.current();
        list
    }

    /// The current allowlist, read again first if the file changed since the last call, or
    /// if the last read failed a moment ago.
    pub fn current(&mut self) -> &HostsFile {
        let (hosts, _) = self.file.current(|path, stamp| {
            let hosts = HostsFile::load(path)
                .map_err(|e| format!("{e}; no host is allowed until it is fixed"))?;
            if stamp.is_none() {
                event!(
                    "no host allowlist at {} yet; allow a host with `nod hosts add <host_id> \
                     <pubkey-file>`",
                    path.display()
                );
            } else {
                event!("host allowlist {}: {} host(s)", path.display(), hosts.len());
            }
            Ok::<_, String>(hosts)
        });
        hosts
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

    /// A host list made unsafe (group-writable) allows no host; once fixed with `chmod` (the
    /// contents unchanged), the running agent allows them again without a restart.
    #[test]
    fn the_allowlist_comes_back_once_the_file_is_safe_again() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::files::test_dir("hosts-recover");
        let path = dir.join("hosts.toml");
        let mut hosts = HostsFile::default();
        let file = format_public_key_file(&vk(1), &KeyId::new("k").unwrap(), "c");
        hosts.add("web-1", &file, Path::new("k.pub"), None).unwrap();
        hosts.save(&path).unwrap();
        let mut list = HostAllowlist::open(&path);
        assert_eq!(list.current().len(), 1);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o620)).unwrap();
        assert!(list.current().is_empty(), "an unsafe file allows nobody");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(list.current().len(), 1, "back without a restart");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn add_takes_key_id_from_flag_then_file_else_pins_none() {
        let mut hosts = HostsFile::default();
        let p = Path::new("k.pub");
        let hex_file = format_public_key_file(&vk(1), &KeyId::new("pinned").unwrap(), "c");
        hosts.add("a", &hex_file, p, None).unwrap();
        assert_eq!(
            hosts.get("a").unwrap().key_id,
            Some(KeyId::new("pinned").unwrap())
        );
        hosts.add("b", &hex_file, p, Some("flag")).unwrap();
        assert_eq!(
            hosts.get("b").unwrap().key_id,
            Some(KeyId::new("flag").unwrap())
        );
        hosts
            .add("c", &openssh_public_line(&vk(2), "root@c"), p, None)
            .unwrap();
        assert_eq!(hosts.get("c").unwrap().key_id, None);
        assert_eq!(hosts.get("c").unwrap().key, vk(2));
    }

    /// macos-auth's `gen-key --public-key-file host_ed25519.pub` writes one line; its helper
    /// then claims `host-key-1`.
    #[test]
    fn macos_auth_host_key_file_pins_the_key_for_any_key_id() {
        let mut hosts = HostsFile::default();
        let text = format!("public_key_hex={}\n", hex::encode(vk(3).as_bytes()));
        hosts
            .add("linux-host-id", &text, Path::new("host_ed25519.pub"), None)
            .unwrap();
        let host = hosts.get("linux-host-id").unwrap();
        assert_eq!(host.key, vk(3));
        assert!(host.admits("host-key-1"));
        assert!(host.admits(KeyId::fingerprint(&vk(3)).as_str()));

        // Saved without a key_id line, and read back the same way.
        let file = HostsFileToml {
            host: hosts.entries().cloned().collect(),
        };
        let text = toml::to_string(&file).unwrap();
        assert!(!text.contains("key_id"), "{text}");
        assert_eq!(HostsFile::parse(&text).unwrap(), hosts);

        // An explicit --key-id still pins.
        hosts
            .add(
                "linux-host-id",
                &text_of(&vk(3)),
                Path::new("k"),
                Some("host-key-1"),
            )
            .unwrap();
        let host = hosts.get("linux-host-id").unwrap();
        assert!(host.admits("host-key-1"));
        assert!(!host.admits("host-key-2"));
    }

    fn text_of(key: &VerifyingKey) -> String {
        format!("public_key_hex={}\n", hex::encode(key.as_bytes()))
    }

    #[test]
    fn entries_written_with_a_key_id_still_pin_it() {
        let text = format!(
            "[[host]]\nid = \"web-1\"\npublic_key_hex = \"{}\"\nkey_id = \"SHA256:abc\"\n",
            hex::encode(vk(4).as_bytes())
        );
        let hosts = HostsFile::parse(&text).unwrap();
        let host = hosts.get("web-1").unwrap();
        assert!(host.admits("SHA256:abc"));
        assert!(!host.admits("host-key-1"));
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
