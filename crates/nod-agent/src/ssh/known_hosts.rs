//! Names for a verified host key, from `known_hosts` files.
//!
//! A name is shown only when an entry of the user's own `known_hosts` lists it with the very
//! host key the server proved it holds (`session-bind@openssh.com`). Plain entries give their
//! names directly. Hashed entries (`|1|salt|HMAC-SHA1(salt, name)`, `HashKnownHosts yes`) cannot
//! be reversed, so candidate names (the caller's `ssh` command line, or what its `ssh -G`
//! resolves an alias to) are hashed and compared; a candidate the file does not confirm is
//! never shown.

use std::fs;
use std::io::Read as _;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use ssh_key::public::KeyData;

/// Largest `known_hosts` file read; the rest is ignored.
const MAX_FILE: u64 = 4 * 1024 * 1024;

/// Most names returned for one key.
const MAX_NAMES: usize = 8;

/// The names `files` give to `host_key`, plain ones in file order, then confirmed candidates.
pub fn names_for(host_key: &KeyData, files: &[&Path], candidates: &[String]) -> Vec<String> {
    lookup(host_key, files, candidates).names
}

/// What the `known_hosts` files say of one host key.
#[derive(Debug, Default)]
pub struct Known {
    /// Plain names in file order, then confirmed candidates.
    pub names: Vec<String>,
    /// Hashed entries (salt, HMAC) for the key that no candidate matched yet.
    unmatched: Vec<(Vec<u8>, [u8; 20])>,
}

impl Known {
    /// Whether a hashed entry for the key is still unnamed (better candidates might name it).
    pub fn has_unmatched(&self) -> bool {
        !self.unmatched.is_empty()
    }

    /// Tries `candidates` against the entries still unnamed, without reading the files again.
    pub fn confirm(&mut self, candidates: &[String]) {
        let mut unmatched = std::mem::take(&mut self.unmatched);
        unmatched.retain(|(salt, hash)| !self.match_hashed(salt, hash, candidates));
        self.unmatched = unmatched;
    }

    /// Adds the candidate a hashed entry names, if one does; says whether one did.
    fn match_hashed(&mut self, salt: &[u8], hash: &[u8; 20], candidates: &[String]) -> bool {
        match candidates
            .iter()
            .find(|c| hashed_name_matches(salt, hash, c))
        {
            Some(c) => {
                self.push(c);
                true
            }
            None => false,
        }
    }

    fn push(&mut self, name: &str) {
        if self.names.len() < MAX_NAMES && !self.names.iter().any(|n| n == name) {
            self.names.push(name.to_owned());
        }
    }
}

/// Reads `files` once for `host_key`: its plain names, and its hashed entries matched against
/// `candidates` (those left unmatched are kept for [`Known::confirm`]).
pub fn lookup(host_key: &KeyData, files: &[&Path], candidates: &[String]) -> Known {
    let mut known = Known::default();
    for file in files {
        let mut text = String::new();
        match fs::File::open(file) {
            Ok(f) => {
                if f.take(MAX_FILE).read_to_string(&mut text).is_err() {
                    continue;
                }
            }
            Err(_) => continue,
        }
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // One bad line (an unsupported key type, a typo) must not hide the others.
            let Ok(entry) = line.parse::<Entry>() else {
                continue;
            };
            if matches!(
                entry.marker(),
                Some(Marker::CertAuthority | Marker::Revoked)
            ) || entry.public_key().key_data() != host_key
            {
                continue;
            }
            match entry.host_patterns() {
                HostPatterns::Patterns(patterns) => {
                    for p in patterns {
                        if !p.starts_with('!') && !p.contains(['*', '?']) {
                            known.push(p);
                        }
                    }
                }
                HostPatterns::HashedName { salt, hash } => {
                    if !known.match_hashed(salt, hash, candidates) {
                        known.unmatched.push((salt.clone(), *hash));
                    }
                }
            }
        }
    }
    known
}

/// Whether `name` is the one hashed as `|1|salt|hash`.
pub fn hashed_name_matches(salt: &[u8], hash: &[u8; 20], name: &str) -> bool {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(hash).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::{Algorithm, PrivateKey};

    fn key() -> KeyData {
        PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .key_data()
            .clone()
    }

    fn hashed(name: &str, salt: &[u8]) -> String {
        let mut mac = Hmac::<Sha1>::new_from_slice(salt).unwrap();
        mac.update(name.as_bytes());
        HostPatterns::HashedName {
            salt: salt.to_vec(),
            hash: mac.finalize().into_bytes().into(),
        }
        .to_string()
    }

    #[test]
    fn finds_plain_and_hashed_names_of_the_key_only() {
        let host = key();
        let other = key();
        let line = |names: &str, k: &KeyData| {
            format!(
                "{names} {}\n",
                ssh_key::PublicKey::from(k.clone()).to_openssh().unwrap()
            )
        };
        let dir = std::env::temp_dir().join(format!("nod-kh-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("known_hosts");
        let text = [
            "# comment\n".to_owned(),
            "garbage line\n".to_owned(),
            line("plain.example,10.0.0.1,*.wild,!neg", &host),
            line("other.example", &other),
            line(&hashed("[127.0.0.1]:2222", b"0123456789abcdefghij"), &host),
            line(&hashed("decoy", b"0123456789abcdefghij"), &host),
            format!("@revoked {}", line("revoked.example", &host)),
        ]
        .concat();
        fs::write(&file, text).unwrap();
        let candidates = vec!["[127.0.0.1]:2222".to_owned(), "127.0.0.1".to_owned()];
        let names = names_for(&host, &[&file, Path::new("/nonexistent")], &candidates);
        assert_eq!(names, ["plain.example", "10.0.0.1", "[127.0.0.1]:2222"]);
        assert_eq!(names_for(&other, &[&file], &candidates), ["other.example"]);
        assert!(names_for(&key(), &[&file], &candidates).is_empty());
        // The decoy entry is hashed and matches no candidate; a later candidate can name it
        // without the file being read again.
        let mut known = lookup(&host, &[&file], &candidates);
        assert!(known.has_unmatched());
        assert!(!lookup(&other, &[&file], &candidates).has_unmatched());
        fs::remove_file(&file).unwrap();
        known.confirm(&["decoy".to_owned()]);
        assert!(!known.has_unmatched());
        assert_eq!(
            known.names,
            ["plain.example", "10.0.0.1", "[127.0.0.1]:2222", "decoy"]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
