//! Which binaries may do what (secrets-protocol.md §Policy), and who asked without being
//! registered (§Pending queue).
//!
//! The policy lives in `$XDG_STATE_HOME/nod/secrets-policy.json`, sealed with an HMAC-SHA256
//! whose key is derived from the keystore's wrapping key for `secrets-policy` (version 2): the
//! policy keeps no key of its own, and nobody can forge a policy without the wrapping key. Only
//! the agent writes it, after the person approved the change, so a file whose MAC does not
//! match was edited by something else and is refused as a whole (fail closed). While the
//! keystore is locked the policy cannot be checked, so every request is refused until it is
//! unlocked.
//!
//! Version 1 (earlier versions) was MAC'd with `secrets-policy.key` in the keystore directory.
//! It is accepted only while the keystore's protector is the plain file (so accepting it gives
//! no one anything the file did not), rewritten as version 2, and then the old key is removed.
//!
//! The pending queue (`secrets-pending.json`) grants nothing, so it is not sealed: it is
//! bounded, de-duplicated by hash, expires after 24 h, and keeps argv[0] only.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use nod_client::proto::{PendingEntry, PolicyEntry};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::keyfile::{self, Key32};
use crate::files::{RETRY_AFTER, write_atomic};
use crate::keystore::{Keystore, KeystoreError, ProtectorKind};

/// Pending entries kept at most.
pub const MAX_PENDING: usize = 64;
/// How long a pending entry lives.
pub const PENDING_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Services remembered per pending entry.
const MAX_REQUESTED: usize = 8;
/// Domain separation of the policy MAC, version 1 (key of its own).
const MAC_CONTEXT_V1: &[u8] = b"nod secrets policy v1\0";
/// Version 2: the key is derived from the wrapping key, and the version is MAC'd too.
const MAC_CONTEXT_V2: &[u8] = b"nod secrets policy v2\0";
/// The purpose the MAC key is derived for.
const PURPOSE: &str = "secrets-policy";

/// The policy could not be used; every request is refused until it is repaired.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    #[error("secrets policy {}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error(
        "secrets policy {} was changed outside nod (its seal does not match), so nod refuses it. \
         If you did not edit it, something running as you did: look at it. To repair, move it \
         away (`mv {} {}.bad`) and register your programs again with `nod register`.",
        path.display(), path.display(), path.display()
    )]
    Tampered { path: PathBuf },
    #[error("secrets policy {}: {message}", path.display())]
    Locked { path: PathBuf, message: String },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: u32,
    entries: Vec<PolicyEntry>,
    /// Hex HMAC-SHA256 over the version's context and the JSON of `entries`.
    mac: String,
}

/// (inode, mtime ns, size) of the policy file as we last saw it.
type Stamp = Option<(u64, i128, u64)>;

/// The sealed policy, reloaded (and re-checked) whenever the file changes.
#[derive(Debug)]
pub struct PolicyStore {
    path: PathBuf,
    legacy_key_path: PathBuf,
    keystore: Keystore,
    entries: Vec<PolicyEntry>,
    stamp: Stamp,
    broken: Option<PolicyError>,
    /// When the policy last failed to load: tried again after [`RETRY_AFTER`] even if the file
    /// did not change (a read that failed for a passing reason recovers by itself).
    failed_at: Option<std::time::Instant>,
}

fn stamp_of(path: &Path) -> io::Result<Stamp> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some((
            m.ino(),
            i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            m.size(),
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn mac(key: &Key32, context: &[u8], entries: &[PolicyEntry]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&key[..]).expect("any key length");
    m.update(context);
    m.update(&serde_json::to_vec(entries).expect("entries serialize"));
    m
}

impl PolicyStore {
    /// Opens the policy at `path`, MAC'd under `keystore`'s wrapping key; a version-1 policy
    /// with its key at `legacy_key_path` is migrated.
    pub fn open(path: &Path, legacy_key_path: &Path, keystore: &Keystore) -> Self {
        let mut s = Self {
            path: path.to_owned(),
            legacy_key_path: legacy_key_path.to_owned(),
            keystore: keystore.clone(),
            entries: Vec::new(),
            stamp: None,
            broken: None,
            failed_at: None,
        };
        s.reload();
        s
    }

    fn io_err(&self, e: impl std::fmt::Display) -> PolicyError {
        PolicyError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn keystore_err(&self, e: KeystoreError) -> PolicyError {
        if e.is_locked() {
            PolicyError::Locked {
                path: self.path.clone(),
                message: e.to_string(),
            }
        } else {
            self.io_err(e)
        }
    }

    fn reload(&mut self) {
        self.entries.clear();
        self.broken = None;
        match self.read() {
            Ok((entries, stamp, legacy)) => {
                if self.failed_at.take().is_some() {
                    crate::log::event!(
                        "secrets policy {}: read again, working",
                        self.path.display()
                    );
                }
                self.entries = entries;
                self.stamp = stamp;
                if legacy {
                    self.migrate();
                }
            }
            Err(e) => {
                // Not logged here: the request it fails says why.
                self.failed_at = Some(std::time::Instant::now());
                self.stamp = stamp_of(&self.path).ok().flatten();
                self.broken = Some(e);
            }
        }
    }

    /// Rewrites a version-1 policy as version 2, then removes its old key; cut short, it is
    /// redone on the next read.
    fn migrate(&mut self) {
        let entries = self.entries.clone();
        match self.save(entries) {
            Ok(()) => {
                keyfile::wipe_and_remove(&self.legacy_key_path);
                crate::log::event!(
                    "secrets policy {}: now sealed by the keystore; removed {}",
                    self.path.display(),
                    self.legacy_key_path.display()
                );
            }
            Err(e) => crate::log::event!("secrets policy: migration not done yet: {e}"),
        }
    }

    /// The policy's entries and stamp; `true` when it is version 1 (to migrate).
    fn read(&self) -> Result<(Vec<PolicyEntry>, Stamp, bool), PolicyError> {
        let stamp = stamp_of(&self.path).map_err(|e| self.io_err(e))?;
        let text = match fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), None, false)),
            Err(e) => return Err(self.io_err(e)),
        };
        let tampered = || PolicyError::Tampered {
            path: self.path.clone(),
        };
        let file: PolicyFile = serde_json::from_slice(&text).map_err(|_| tampered())?;
        let want = hex::decode(&file.mac).map_err(|_| tampered())?;
        match file.version {
            2 => {
                let key = self
                    .keystore
                    .derive(PURPOSE)
                    .map_err(|e| self.keystore_err(e))?
                    .ok_or_else(tampered)?;
                mac(&key, MAC_CONTEXT_V2, &file.entries)
                    .verify_slice(&want)
                    .map_err(|_| tampered())?;
                Ok((file.entries, stamp, false))
            }
            1 => {
                // Only where the wrapping key is a plain file anyway (see the module docs).
                let plain = match self.keystore.protector() {
                    Ok(None) => true,
                    Ok(Some(p)) => p.kind() == ProtectorKind::File,
                    Err(e) => return Err(self.keystore_err(e)),
                };
                if !plain {
                    return Err(tampered());
                }
                let key = keyfile::load(&self.legacy_key_path)
                    .map_err(|e| self.io_err(e))?
                    .ok_or_else(tampered)?;
                mac(&key, MAC_CONTEXT_V1, &file.entries)
                    .verify_slice(&want)
                    .map_err(|_| tampered())?;
                Ok((file.entries, stamp, true))
            }
            _ => Err(tampered()),
        }
    }

    /// The current policy: reloaded if the file changed since we last read or wrote it.
    pub fn current(&mut self) -> Result<&[PolicyEntry], PolicyError> {
        let now = stamp_of(&self.path).map_err(|e| self.io_err(e))?;
        // Locked: look again each time, so an unlock takes effect without a restart; another
        // failure: again after a moment.
        let retry = self.failed_at.is_some_and(|t| t.elapsed() >= RETRY_AFTER);
        if now != self.stamp || retry || matches!(self.broken, Some(PolicyError::Locked { .. })) {
            self.reload();
        }
        match &self.broken {
            Some(e) => Err(e.clone()),
            None => Ok(&self.entries),
        }
    }

    /// The entry for `hash`.
    pub fn find(&mut self, hash: &str) -> Result<Option<PolicyEntry>, PolicyError> {
        Ok(self.current()?.iter().find(|e| e.hash == hash).cloned())
    }

    /// Replaces the whole policy with `entries` and seals it.
    fn save(&mut self, entries: Vec<PolicyEntry>) -> Result<(), PolicyError> {
        let key = self
            .keystore
            .derive_for_writing(PURPOSE)
            .map_err(|e| self.keystore_err(e))?;
        let file = PolicyFile {
            version: 2,
            mac: hex::encode(mac(&key, MAC_CONTEXT_V2, &entries).finalize().into_bytes()),
            entries,
        };
        let mut text = serde_json::to_vec_pretty(&file).map_err(|e| self.io_err(e))?;
        text.push(b'\n');
        write_atomic(&self.path, &text).map_err(|e| self.io_err(e))?;
        self.entries = file.entries;
        self.stamp = stamp_of(&self.path).map_err(|e| self.io_err(e))?;
        self.broken = None;
        self.failed_at = None;
        Ok(())
    }

    /// Adds `entry`, replacing any entry with the same hash.
    pub fn upsert(&mut self, entry: PolicyEntry) -> Result<(), PolicyError> {
        let mut entries: Vec<PolicyEntry> = self.current()?.to_vec();
        entries.retain(|e| e.hash != entry.hash);
        entries.push(entry);
        self.save(entries)
    }

    /// Replaces the entry with hash `old` by `entry`.
    pub fn replace(&mut self, old: &str, entry: PolicyEntry) -> Result<(), PolicyError> {
        let mut entries: Vec<PolicyEntry> = self.current()?.to_vec();
        entries.retain(|e| e.hash != old && e.hash != entry.hash);
        entries.push(entry);
        self.save(entries)
    }

    /// Removes the entry for `hash`; false if there was none.
    pub fn revoke(&mut self, hash: &str) -> Result<bool, PolicyError> {
        let mut entries: Vec<PolicyEntry> = self.current()?.to_vec();
        let before = entries.len();
        entries.retain(|e| e.hash != hash);
        if entries.len() == before {
            return Ok(false);
        }
        self.save(entries)?;
        Ok(true)
    }
}

/// The bounded queue of refused, unregistered callers.
#[derive(Debug)]
pub struct PendingQueue {
    path: PathBuf,
    entries: Vec<PendingEntry>,
}

impl PendingQueue {
    /// Loads the queue; a missing or unreadable file is an empty queue (it grants nothing).
    pub fn open(path: &Path) -> Self {
        let entries = fs::read(path)
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default();
        Self {
            path: path.to_owned(),
            entries,
        }
    }

    fn expire(&mut self, now_ms: u64) {
        self.entries
            .retain(|e| now_ms.saturating_sub(e.last_seen_ms) < PENDING_TTL_MS);
    }

    /// The live entries.
    pub fn list(&mut self, now_ms: u64) -> Vec<PendingEntry> {
        self.expire(now_ms);
        self.entries.clone()
    }

    pub fn get(&mut self, hash: &str, now_ms: u64) -> Option<PendingEntry> {
        self.expire(now_ms);
        self.entries.iter().find(|e| e.hash == hash).cloned()
    }

    /// Records a refused caller (de-duplicated by hash; the oldest entry goes when full).
    pub fn record(&mut self, mut entry: PendingEntry, now_ms: u64) -> io::Result<()> {
        self.expire(now_ms);
        if let Some(e) = self.entries.iter_mut().find(|e| e.hash == entry.hash) {
            // A known caller asking again only touches memory, so a refused program in a loop
            // does not turn into a disk write per request; the next real change saves it.
            let stale = now_ms.saturating_sub(e.last_seen_ms) > PENDING_TTL_MS / 24;
            e.last_seen_ms = now_ms;
            let mut changed = stale || e.path != entry.path || e.argv0 != entry.argv0;
            e.path = entry.path;
            e.argv0 = entry.argv0;
            for r in entry.requested {
                if !e.requested.contains(&r) && e.requested.len() < MAX_REQUESTED {
                    e.requested.push(r);
                    changed = true;
                }
            }
            if !changed {
                return Ok(());
            }
        } else {
            if self.entries.len() >= MAX_PENDING
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.last_seen_ms)
                    .map(|(i, _)| i)
            {
                self.entries.remove(oldest);
            }
            entry.requested.truncate(MAX_REQUESTED);
            self.entries.push(entry);
        }
        self.save()
    }

    pub fn remove(&mut self, hash: &str) -> io::Result<()> {
        self.entries.retain(|e| e.hash != hash);
        self.save()
    }

    fn save(&self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            crate::files::ensure_private_dir(dir)?;
        }
        let text = serde_json::to_vec_pretty(&self.entries).map_err(io::Error::other)?;
        write_atomic(&self.path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn tempdir() -> PathBuf {
        crate::files::test_dir("policy")
    }

    fn entry(hash: &str) -> PolicyEntry {
        PolicyEntry {
            path: "/usr/bin/x".into(),
            hash: hash.into(),
            allowed_read_services: vec!["a".into()],
            allowed_write_services: vec![],
            can_search: false,
            interpreter: false,
            legacy_protocol: false,
        }
    }

    fn keystore(dir: &Path) -> Keystore {
        Keystore::new(&dir.join("data"), &dir.join("config/keystore.key"))
    }

    #[test]
    fn sealed_policy_survives_reopen_and_hand_edits_are_refused() {
        let dir = tempdir();
        let (p, k) = (dir.join("policy.json"), dir.join("key"));
        let mut s = PolicyStore::open(&p, &k, &keystore(&dir));
        assert!(s.current().unwrap().is_empty());
        s.upsert(entry("sha256:11")).unwrap();
        assert!(!k.exists(), "no key of its own");
        let mut s = PolicyStore::open(&p, &k, &keystore(&dir));
        assert_eq!(s.current().unwrap().len(), 1);

        let text = fs::read_to_string(&p).unwrap();
        fs::write(
            &p,
            text.replace("\"can_search\": false", "\"can_search\": true"),
        )
        .unwrap();
        let err = s.current().unwrap_err();
        assert!(matches!(err, PolicyError::Tampered { .. }));
        assert!(err.to_string().contains("nod register"), "{err}");
        // Refused until repaired, also for writes.
        assert!(s.upsert(entry("sha256:22")).is_err());
        fs::rename(&p, dir.join("policy.json.bad")).unwrap();
        assert!(s.current().unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    /// A read that fails for a passing reason (the keystore's wrapping key briefly gone, the
    /// policy file itself unchanged) recovers a moment later, without a restart.
    #[test]
    fn a_failed_read_is_tried_again_though_the_file_did_not_change() {
        let dir = tempdir();
        let (p, k) = (dir.join("policy.json"), dir.join("key"));
        let ks = keystore(&dir);
        PolicyStore::open(&p, &k, &ks)
            .upsert(entry("sha256:11"))
            .unwrap();
        let wrap = ks.protector_path().to_owned();
        let aside = dir.join("keystore.key.aside");
        fs::rename(&wrap, &aside).unwrap();
        let mut s = PolicyStore::open(&p, &k, &keystore(&dir));
        assert!(s.current().is_err(), "fails closed");
        fs::rename(&aside, &wrap).unwrap();
        std::thread::sleep(RETRY_AFTER);
        assert_eq!(s.current().unwrap().len(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    fn write_v1(p: &Path, k: &Path, entries: Vec<PolicyEntry>) {
        use std::os::unix::fs::PermissionsExt;
        let key = Zeroizing::new([4u8; 32]);
        fs::write(k, format!("{}\n", hex::encode(&key[..]))).unwrap();
        fs::set_permissions(k, fs::Permissions::from_mode(0o600)).unwrap();
        let file = PolicyFile {
            version: 1,
            mac: hex::encode(mac(&key, MAC_CONTEXT_V1, &entries).finalize().into_bytes()),
            entries,
        };
        fs::write(p, serde_json::to_vec(&file).unwrap()).unwrap();
    }

    #[test]
    fn a_version_1_policy_is_migrated_and_its_key_removed() {
        let dir = tempdir();
        let (p, k) = (dir.join("policy.json"), dir.join("key"));
        write_v1(&p, &k, vec![entry("sha256:11")]);
        let mut s = PolicyStore::open(&p, &k, &keystore(&dir));
        assert_eq!(s.current().unwrap().len(), 1);
        assert!(!k.exists());
        assert!(fs::read_to_string(&p).unwrap().contains("\"version\": 2"));
        let mut s = PolicyStore::open(&p, &k, &keystore(&dir));
        assert_eq!(s.current().unwrap().len(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_version_1_policy_is_refused_once_the_keystore_is_protected() {
        let dir = tempdir();
        let (p, k) = (dir.join("policy.json"), dir.join("key"));
        let ks = keystore(&dir);
        ks.init(ProtectorKind::File, None).unwrap();
        // Protected by something other than a plain file: a planted v1 policy (with a key
        // of the planter's choosing) must not be taken up.
        let protector = crate::keystore::Protector::passphrase(
            ks.wrap_key().unwrap().unwrap(),
            b"pw",
            crate::keystore::Argon2Cost {
                m_kib: 64,
                t: 1,
                p: 1,
            },
        )
        .unwrap();
        fs::write(ks.protector_path(), protector.encode().as_bytes()).unwrap();
        write_v1(&p, &k, vec![entry("sha256:11")]);
        let mut s = PolicyStore::open(&p, &k, &keystore(&dir));
        assert!(matches!(s.current(), Err(PolicyError::Tampered { .. })));
        assert!(k.exists(), "nothing migrated");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pending_queue_is_bounded_deduplicated_and_expires() {
        let dir = tempdir();
        let mut q = PendingQueue::open(&dir.join("pending.json"));
        let e = |h: String, req: &str| PendingEntry {
            path: "/x".into(),
            hash: h,
            argv0: "x".into(),
            first_seen_ms: 0,
            last_seen_ms: 0,
            interpreter: false,
            requested: vec![req.into()],
        };
        for i in 0..(MAX_PENDING as u64 + 10) {
            let mut en = e(format!("h{i}"), "read:a");
            en.last_seen_ms = 1000 + i;
            q.record(en, 1000 + i).unwrap();
        }
        assert_eq!(q.list(2000).len(), MAX_PENDING);
        assert!(q.get("h0", 2000).is_none());
        q.record(e("h20".into(), "write:b"), 2000).unwrap();
        let h20 = q.get("h20", 2000).unwrap();
        assert_eq!(h20.requested, ["read:a", "write:b"]);
        let reopened = PendingQueue::open(&dir.join("pending.json")).list(2000);
        assert_eq!(reopened.len(), MAX_PENDING);
        assert_eq!(q.list(1999 + PENDING_TTL_MS).len(), 1);
        fs::remove_dir_all(dir).unwrap();
    }
}
