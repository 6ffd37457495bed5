//! What the agent adds to the keys `ssh-add` gives it: persistent keys from the keystore (with
//! their policies and presence minimums), session certificates ([`super::cert`]), and the per-key approval state
//! ([`super::policy`]).
//!
//! Persistent keys are read from `ssh_keys.sealed` and re-read whenever the file changes
//! (its inode, size or times), so `nod keys …` run while the agent is up takes effect on the
//! next request; a read that failed is tried again a moment later (`files::Watched`). Any change to the file drops every `remember` grant: a policy tightened with
//! `nod keys policy` must not be outlived by a grant made under the old one.

use std::sync::{Arc, Mutex};

use ssh_key::PrivateKey;
use ssh_key::public::KeyData;
use tokio::time::Instant;

use super::cert::SessionCerts;
use super::credential::PublicCredential;
use super::message::Identity;
use super::policy::{Approvals, CallerScope, GrantScope, Policy};
use super::{SshAgentService, SshError};
use crate::config::Required;
use crate::files::Watched;
use crate::keystore::{Keystore, SSH_KEYS_FILE};
use crate::lock;
use crate::log::event;

/// One persistent key as the agent holds it.
#[derive(Debug)]
struct Persistent {
    name: String,
    policy: Policy,
    /// The least presence its signatures need (`nod keys … --presence`).
    presence: Required,
    key: Arc<PrivateKey>,
}

/// The persistent keys as last read, and whether they have been read at all.
#[derive(Debug, Default)]
struct Cache {
    file: Option<Watched<Vec<Persistent>>>,
    seen: bool,
}

/// The agent's keystore-backed state. Without a keystore (unit tests), only the approval
/// state is used.
#[derive(Debug, Default)]
pub struct Stored {
    keystore: Option<Keystore>,
    cache: Mutex<Cache>,
    pub(super) approvals: Approvals,
    pub(super) sessions: SessionCerts,
}

impl Stored {
    pub fn new(keystore: Option<Keystore>) -> Self {
        Self {
            keystore,
            ..Self::default()
        }
    }

    pub fn keystore(&self) -> Option<&Keystore> {
        self.keystore.as_ref()
    }

    /// The persistent keys, re-read if the file changed. A file that cannot be read yields no
    /// keys (fail closed) and a log line.
    fn with_keys<R>(&self, f: impl FnOnce(&[Persistent]) -> R) -> R {
        let Some(keystore) = &self.keystore else {
            return f(&[]);
        };
        let mut cache = lock(&self.cache);
        let Cache { file, seen } = &mut *cache;
        let file = file.get_or_insert_with(|| Watched::new(&keystore.path(SSH_KEYS_FILE)));
        // A failed read (a locked keystore, a file made unreadable) is tried again a moment
        // later even if the file did not change, so an unlock or a fix needs no restart.
        let (mut read_ok, mut locked) = (false, false);
        let (keys, _) = file.current(|_, _| {
            keystore
                .ssh_keys()
                .inspect(|_| read_ok = true)
                .map(|keys| {
                    keys.into_iter()
                        .map(|k| Persistent {
                            name: k.name,
                            policy: k.policy,
                            presence: k.presence,
                            key: Arc::new(k.key),
                        })
                        .collect()
                })
                .map_err(|e| {
                    locked = e.is_locked();
                    format!("ssh agent: persistent keys not offered: {e}")
                })
        });
        // Any new version of the file drops the remembered approvals (not a retry that fails
        // again: that changes nothing, and would log every second).
        if read_ok && std::mem::replace(seen, true) {
            event!(
                "ssh agent: keystore changed; {} persistent keys; remembered approvals dropped",
                keys.len()
            );
            self.approvals.revoke_all();
        }
        let r = f(keys);
        if locked {
            // Locked: look again on the very next request, so `nod keys unlock` takes effect
            // at once.
            file.reload_next_time();
        }
        r
    }

    /// Persistent keys and live session certificates, for `ssh-add -l`.
    pub fn identities(&self) -> Vec<Identity> {
        let mut ids = self.sessions.identities();
        self.with_keys(|keys| {
            ids.extend(keys.iter().map(|k| Identity {
                credential: PublicCredential::Key(k.key.public_key().key_data().clone()),
                comment: k.name.clone(),
            }));
        });
        ids
    }

    /// The persistent key for `public`, with its name, policy and presence minimum.
    fn find(&self, public: &KeyData) -> Option<(Arc<PrivateKey>, String, Policy, Required)> {
        self.with_keys(|keys| {
            keys.iter()
                .find(|k| k.key.public_key().key_data() == public)
                .map(|k| (Arc::clone(&k.key), k.name.clone(), k.policy, k.presence))
        })
    }
}

/// How one signature is to be authorized.
#[derive(Debug)]
pub struct Authorization {
    pub policy: Policy,
    pub scope: GrantScope,
}

/// Whether a signature needs the person.
#[derive(Debug)]
pub enum Need {
    /// The policy asks nobody (`never`).
    Nothing,
    /// A `remember` grant covers it: no prompt, but an audit line.
    Remembered,
    /// Ask.
    Ask(Authorization),
}

impl SshAgentService {
    /// Offers the keystore's persistent keys and enables session certificates.
    pub fn with_keystore(mut self, keystore: Keystore) -> Self {
        self.stored = Stored::new(Some(keystore));
        self
    }

    /// The key of a live session certificate named by `credential`. A certificate the agent
    /// did not mint is an unknown key.
    pub(super) fn session_key(
        &self,
        credential: &PublicCredential,
    ) -> Result<Option<Arc<PrivateKey>>, SshError> {
        self.keyring().unlocked()?;
        Ok(match credential {
            // Not a session certificate: perhaps one added with ssh-add.
            PublicCredential::Cert(cert) => self.stored.sessions.find(cert),
            PublicCredential::Key(public) => self.stored.sessions.find_by_key(public),
        })
    }

    /// The key behind `credential`: a persistent key (with its policy and presence minimum)
    /// first, else a key or certificate added with `ssh-add` (`never`, or `always` if added
    /// with `-c`; presence `any`).
    pub(super) fn find_with_policy(
        &self,
        credential: &PublicCredential,
    ) -> Result<(Arc<PrivateKey>, String, Policy, Required), SshError> {
        self.keyring().unlocked()?;
        if let PublicCredential::Key(public) = credential
            && let Some(found) = self.stored.find(public)
        {
            return Ok(found);
        }
        let (key, comment, confirm) = self.find(credential)?;
        Ok((
            key,
            comment,
            if confirm {
                Policy::Always
            } else {
                Policy::Never
            },
            Required::Any,
        ))
    }

    /// Whether this signature needs the person.
    pub(super) fn authorization(
        &self,
        public: &KeyData,
        policy: Policy,
        pid: Option<i32>,
        exe: Option<String>,
        destination: Option<Vec<u8>>,
    ) -> Need {
        let key = ssh_key::PublicKey::from(public.clone())
            .to_bytes()
            .unwrap_or_default();
        let scope = GrantScope {
            key,
            caller: CallerScope::of(pid, exe),
            destination,
        };
        match policy {
            Policy::Never => Need::Nothing,
            Policy::Remember(_) if self.stored.approvals.granted(&scope, Instant::now()) => {
                event!(
                    "ssh agent: signature allowed by a remembered approval for {:?}",
                    scope.caller.exe.as_deref().unwrap_or("unknown program")
                );
                Need::Remembered
            }
            Policy::Always | Policy::Remember(_) => Need::Ask(Authorization { policy, scope }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::keystore::ssh::{KeyType, generate};
    use crate::keystore::tests::{store, tempdir};

    /// A read that fails for a passing reason (here the wrapping key briefly gone, with the
    /// keys file itself unchanged) recovers a moment later, without a restart.
    #[test]
    fn persistent_keys_come_back_after_a_failed_read_without_a_change_to_the_file() {
        let root = tempdir("stored-retry");
        let writer = store(&root);
        let key = generate(KeyType::Ed25519, None, "work").unwrap();
        writer.add_ssh_key("work", key, Policy::Always).unwrap();
        let wrap = writer.protector_path().to_owned();
        let aside = root.join("keystore.key.aside");
        fs::rename(&wrap, &aside).unwrap();

        let stored = Stored::new(Some(store(&root)));
        assert!(stored.identities().is_empty(), "fails closed");
        fs::rename(&aside, &wrap).unwrap();
        std::thread::sleep(crate::files::RETRY_AFTER);
        let ids = stored.identities();
        assert_eq!(ids.len(), 1, "the key is offered again");
        assert_eq!(ids[0].comment, "work");
        fs::remove_dir_all(root).unwrap();
    }
}
