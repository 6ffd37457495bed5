//! The unlocked wrapping key, cached in the kernel's user keyring (never on disk) so that one
//! `nod keys unlock` serves the agent, its restarts and every `nod keys` command of the login,
//! until the cache times out (`keyctl` key `nod:keystore:<key id>`, type `user`).
//!
//! Where it is found, and why two ways:
//! - the **user keyring** (`@u`) of the caller: shared by every process of this uid in the
//!   same user namespace, whatever its session keyring (a terminal, ssh, the user manager);
//! - **by serial number** from `/proc/keys`: a systemd user service with `PrivateTmp=` or
//!   `ProtectSystem=` runs in a user namespace of its own (implied `PrivateUsers=yes`), where
//!   `@u` is another, empty keyring (the kernel keeps user keyrings per user namespace). The
//!   key stays readable there by its serial number because its permissions name our uid
//!   (view, read, search), and the kernel compares the uid as seen from the initial namespace.
//!
//! Those permissions also mean: while the key is cached, any process running as this user can
//! read it. That adds nothing a same-user process could not do anyway (it could read the
//! agent's sockets' secrets or wait for the next unlock), and it ends with the timeout or
//! `nod keys lock`. docs/security.md says so.

use std::fs;
use std::time::Duration;

use linux_keyutils::{
    Key, KeyPermissionsBuilder, KeyRing, KeyRingIdentifier, KeySerialId, Permission,
};
use nix::unistd::getuid;

use super::KeystoreError;
use super::protector::check_id;
use super::seal::{KEY_ID_LEN, WrapKey};

/// How long an unlock lasts when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(12 * 60 * 60);
/// Longest `/proc/keys` read.
const MAX_PROC_KEYS: u64 = 1 << 20;

fn description(key_id: &[u8; KEY_ID_LEN]) -> String {
    format!("nod:keystore:{}", hex::encode(key_id))
}

fn user_keyring() -> Result<KeyRing, KeystoreError> {
    KeyRing::from_special_id(KeyRingIdentifier::User, true)
        .map_err(|e| KeystoreError::Keyring(format!("the user keyring: {e:?}")))
}

/// Puts `key` into the user keyring for `timeout` (replacing an earlier copy).
pub fn store(key: &WrapKey, timeout: Duration) -> Result<(), KeystoreError> {
    let err =
        |what: &str, e: linux_keyutils::KeyError| KeystoreError::Keyring(format!("{what}: {e:?}"));
    let cached = user_keyring()?
        .add_key(&description(&key.id()), &key.bytes()[..])
        .map_err(|e| err("adding the key", e))?;
    let perms = KeyPermissionsBuilder::builder()
        .posessor(Permission::ALL)
        .user(Permission::VIEW | Permission::READ | Permission::SEARCH)
        .build();
    let secs = usize::try_from(timeout.as_secs().max(1)).unwrap_or(usize::MAX);
    let set = cached
        .set_perms(perms)
        .map_err(|e| err("setting its permissions", e))
        .and_then(|()| {
            cached
                .set_timeout(secs)
                .map_err(|e| err("setting its timeout", e))
        });
    if let Err(e) = set {
        // A key without its timeout must not linger.
        let _ = cached.invalidate();
        return Err(e);
    }
    Ok(())
}

/// Candidates for the cached key: the user keyring's, then those `/proc/keys` lists.
fn candidates(key_id: &[u8; KEY_ID_LEN]) -> Vec<Key> {
    let desc = description(key_id);
    let mut found = Vec::new();
    if let Ok(ring) = KeyRing::from_special_id(KeyRingIdentifier::User, false)
        && let Ok(key) = ring.search(&desc)
    {
        found.push(key);
    }
    found.extend(
        proc_keys(&desc)
            .into_iter()
            .map(|id| Key::from_id(KeySerialId::new(id))),
    );
    found
}

/// Serial numbers of our `user` keys with description `desc`, from `/proc/keys`.
fn proc_keys(desc: &str) -> Vec<i32> {
    use std::io::Read;
    let mut text = String::new();
    let read =
        fs::File::open("/proc/keys").and_then(|f| f.take(MAX_PROC_KEYS).read_to_string(&mut text));
    if read.is_err() {
        return Vec::new();
    }
    parse_proc_keys(&text, getuid().as_raw(), desc)
}

/// `/proc/keys` lines: serial (hex), flags, usage, expiry, perm, uid, gid, type, then
/// `description: summary`.
fn parse_proc_keys(text: &str, uid: u32, desc: &str) -> Vec<i32> {
    let want = format!("{desc}:");
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let ok = f.len() >= 9
                && f[5].parse::<u32>().ok() == Some(uid)
                && f[7] == "user"
                && f[8] == want;
            ok.then(|| u32::from_str_radix(f[0], 16).ok())
                .flatten()
                .and_then(|s| i32::try_from(s).ok())
        })
        .collect()
}

/// The cached wrapping key with this id, if one is there and it is the right key (anything
/// same-user can add a key of that name, so the id is checked).
pub fn load(key_id: &[u8; KEY_ID_LEN]) -> Option<WrapKey> {
    for key in candidates(key_id) {
        let mut buf = zeroize::Zeroizing::new([0u8; 64]);
        let Ok(n) = key.read(&mut *buf) else {
            continue;
        };
        if n != 32 {
            continue;
        }
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&buf[..32]);
        let wrap = WrapKey::from_bytes(bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        if check_id(&wrap, key_id).is_ok() {
            return Some(wrap);
        }
    }
    None
}

/// Removes every cached copy of this key; true if there was one.
pub fn remove(key_id: &[u8; KEY_ID_LEN]) -> bool {
    let mut removed = false;
    for key in candidates(key_id) {
        removed |= key.invalidate().is_ok();
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_keys_lines_are_matched_by_uid_type_and_name() {
        let text = "\
1f197369 I--Q---     1 perm 3f0b0000  1005  1005 user      nod:keystore:00ff: 32
2a197369 I--Q---     1 perm 3f0b0000  1006  1006 user      nod:keystore:00ff: 32
3b197369 I--Q---     1 perm 3f0b0000  1005  1005 keyring   nod:keystore:00ff: empty
4c197369 I--Q---     1 perm 3f0b0000  1005  1005 user      nod:keystore:00ffee: 32
short line
";
        assert_eq!(
            parse_proc_keys(text, 1005, "nod:keystore:00ff"),
            [0x1f19_7369]
        );
    }

    #[test]
    fn cached_key_round_trips_and_is_removed() {
        let key = WrapKey::generate().unwrap();
        let id = key.id();
        if let Err(e) = store(&key, Duration::from_secs(60)) {
            // Keyrings are part of every kernel nod supports; a build box without them
            // (CONFIG_KEYS=n) is the only reason to land here.
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{e}");
            eprintln!("skipped: no kernel keyring: {e}");
            return;
        }
        assert_eq!(load(&id).unwrap().bytes(), key.bytes());
        assert!(remove(&id));
        assert!(load(&id).is_none());
    }

    #[test]
    fn a_key_of_the_right_name_but_the_wrong_id_is_ignored() {
        let key = WrapKey::generate().unwrap();
        let other = WrapKey::generate().unwrap();
        let Ok(ring) = user_keyring() else { return };
        let planted = ring
            .add_key(&description(&key.id()), &other.bytes()[..])
            .unwrap();
        assert!(load(&key.id()).is_none());
        let _ = planted.invalidate();
    }
}
