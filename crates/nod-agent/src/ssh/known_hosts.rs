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
    lookup(host_key, files, candidates).0
}

/// [`names_for`], and whether a hashed entry for `host_key` matched none of the candidates
/// (so better candidates might name it).
pub fn lookup(host_key: &KeyData, files: &[&Path], candidates: &[String]) -> (Vec<String>, bool) {
    let mut unmatched_hashed = false;
    let mut names: Vec<String> = Vec::new();
    let push = |name: &str, names: &mut Vec<String>| {
        if names.len() < MAX_NAMES && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    };
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
                            push(p, &mut names);
                        }
                    }
                }
                HostPatterns::HashedName { salt, hash } => {
                    match candidates
                        .iter()
                        .find(|c| hashed_name_matches(salt, hash, c))
                    {
                        Some(c) => push(c, &mut names),
                        None => unmatched_hashed = true,
                    }
                }
            }
        }
    }
    (names, unmatched_hashed)
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
        // The decoy entry is hashed and matches no candidate.
        assert!(lookup(&host, &[&file], &candidates).1);
        assert!(!lookup(&other, &[&file], &candidates).1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
