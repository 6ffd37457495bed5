//! Destination constraints: `ssh-add -h`, the `restrict-destination-v00@openssh.com` key
//! constraint (OpenSSH `PROTOCOL.agent` §2).
//!
//! A constraint is a list of permitted hops, each `from` → `to`, where a hop end is an optional
//! user, a host name and the host's keys. The agent checks them against the connection's
//! verified `session-bind` chain the way OpenSSH's `ssh-agent` does (`identity_permitted`):
//! every bound hop must match a permitted `from` → `to` pair (the first hop from the origin,
//! a `from` with no host and no keys), and a user in the final `to` must match the user in a
//! login request. A constrained key signs only on a bound connection, and only a login request
//! for the session the connection was last bound to.
//!
//! The wire format is decoded here with a reader that checks every length against what is
//! left and caps counts and sizes, rather than trusting the library's decoder. Host
//! certificates are not supported by the session-bind code, so a CA entry (`@cert-authority`)
//! never matches; plain host keys do.

use ssh_agent_lib::ssh_encoding::Decode;
use ssh_key::public::KeyData;

use super::bind::{Binding, Bindings};

/// The constraint's extension name.
pub const NAME: &str = "restrict-destination-v00@openssh.com";

/// Most constraints on one key, as OpenSSH's `AGENT_MAX_DEST_CONSTRAINTS`.
pub const MAX_CONSTRAINTS: usize = 1024;

/// Most keys in one hop end.
pub const MAX_HOP_KEYS: usize = 1024;

/// Longest user or host name.
const MAX_NAME: usize = 1024;

/// Longest host key blob.
const MAX_KEY_BLOB: usize = 16 * 1024;

/// One end of a hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// A user name pattern (`*`, `?`); `None` for any user.
    pub user: Option<String>,
    /// `None` for the origin (the local host).
    pub hostname: Option<String>,
    /// Host keys, each with whether it is a certificate authority.
    pub keys: Vec<(KeyData, bool)>,
}

/// One permitted hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub from: Hop,
    pub to: Hop,
}

/// Length-checked SSH wire fields.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn string(&mut self, max: usize, what: &str) -> Result<&'a [u8], String> {
        let Some(len) = self.0.get(..4) else {
            return Err(format!("{what}: truncated length"));
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > max {
            return Err(format!("{what}: {len} bytes is over the {max}-byte limit"));
        }
        let rest = &self.0[4..];
        let Some(value) = rest.get(..len) else {
            return Err(format!("{what}: truncated"));
        };
        self.0 = &rest[len..];
        Ok(value)
    }

    fn text(&mut self, max: usize, what: &str) -> Result<Option<String>, String> {
        let bytes = self.string(max, what)?;
        let text = std::str::from_utf8(bytes).map_err(|_| format!("{what}: not UTF-8"))?;
        Ok((!text.is_empty()).then(|| text.to_owned()))
    }

    fn byte(&mut self, what: &str) -> Result<u8, String> {
        let (&b, rest) = self
            .0
            .split_first()
            .ok_or_else(|| format!("{what}: truncated"))?;
        self.0 = rest;
        Ok(b)
    }

    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// Decodes the constraint's details (what follows the name): a sequence of strings, each one
/// constraint.
pub fn decode(details: &[u8]) -> Result<Vec<Constraint>, String> {
    let mut outer = Fields(details);
    let mut constraints = Vec::new();
    while !outer.done() {
        if constraints.len() >= MAX_CONSTRAINTS {
            return Err(format!(
                "more than {MAX_CONSTRAINTS} destination constraints"
            ));
        }
        let mut c = Fields(outer.string(usize::MAX, "constraint")?);
        let from = hop(c.string(usize::MAX, "from")?, "from")?;
        let to = hop(c.string(usize::MAX, "to")?, "to")?;
        if !c.string(usize::MAX, "reserved")?.is_empty() {
            return Err("constraint has unsupported extensions".into());
        }
        if !c.done() {
            return Err("trailing bytes after a constraint".into());
        }
        // As OpenSSH: `from` is either the origin (no host, no keys) or a host with keys, and
        // never names a user; `to` always names a host with keys.
        if from.hostname.is_none() != from.keys.is_empty() || from.user.is_some() {
            return Err("inconsistent \"from\" specification".into());
        }
        if to.hostname.is_none() || to.keys.is_empty() {
            return Err("incomplete \"to\" specification".into());
        }
        constraints.push(Constraint { from, to });
    }
    if constraints.is_empty() {
        return Err("empty destination constraint".into());
    }
    Ok(constraints)
}

fn hop(bytes: &[u8], what: &str) -> Result<Hop, String> {
    let mut f = Fields(bytes);
    let user = f.text(MAX_NAME, what)?;
    let hostname = f.text(MAX_NAME, what)?;
    if !f.string(usize::MAX, what)?.is_empty() {
        return Err(format!("{what}: unsupported extensions"));
    }
    let mut keys = Vec::new();
    while !f.done() {
        if keys.len() >= MAX_HOP_KEYS {
            return Err(format!("{what}: more than {MAX_HOP_KEYS} keys"));
        }
        let mut blob = f.string(MAX_KEY_BLOB, what)?;
        let key = KeyData::decode(&mut blob).map_err(|e| format!("{what}: bad key: {e}"))?;
        if !blob.is_empty() {
            return Err(format!("{what}: trailing bytes after a key"));
        }
        let is_ca = f.byte(what)? != 0;
        keys.push((key, is_ca));
    }
    Ok(Hop {
        user,
        hostname,
        keys,
    })
}

/// OpenSSH's `match_key_hop`: a plain host key listed (not as a CA) in `hop`.
fn key_matches(key: &KeyData, hop: &Hop) -> bool {
    hop.keys.iter().any(|(k, is_ca)| !is_ca && k == key)
}

/// OpenSSH's `match_pattern`: `*` any run, `?` any one character.
pub fn glob(text: &str, pattern: &str) -> bool {
    fn go(t: &[char], p: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| go(&t[i..], rest)),
            Some(('?', rest)) => !t.is_empty() && go(&t[1..], rest),
            Some((c, rest)) => t.first() == Some(c) && go(&t[1..], rest),
        }
    }
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    go(&t, &p)
}

/// OpenSSH's `permitted_by_dest_constraints`: some constraint allows `from` → `to` (either end
/// may be absent: `from` for the first hop, `to` when asking whether a hop beyond is allowed),
/// for `user` when given.
fn permitted_hop(
    constraints: &[Constraint],
    from: Option<&KeyData>,
    to: Option<&KeyData>,
    user: Option<&str>,
) -> bool {
    constraints.iter().any(|c| {
        let from_ok = match from {
            None => c.from.hostname.is_none() && c.from.keys.is_empty(),
            Some(key) => key_matches(key, &c.from),
        };
        let to_ok = to.is_none_or(|key| key_matches(key, &c.to));
        let user_ok = match (&c.to.user, user) {
            (Some(pattern), Some(user)) => glob(user, pattern),
            _ => true,
        };
        from_ok && to_ok && user_ok
    })
}

/// OpenSSH's `identity_permitted`. `user` is the login user of a sign request, `None` for a
/// listing. An unbound connection is local use and passes here (the signing path refuses it
/// separately); a connection whose bind failed passes nothing.
pub fn permitted(constraints: &[Constraint], bindings: &Bindings, user: Option<&str>) -> bool {
    if constraints.is_empty() {
        return true;
    }
    if bindings.poisoned() {
        return false;
    }
    let hops: &[Binding] = bindings.all();
    let Some(last) = hops.last() else {
        return true;
    };
    let mut from: Option<&KeyData> = None;
    for (i, b) in hops.iter().enumerate() {
        let test_user = if i + 1 == hops.len() { user } else { None };
        if !permitted_hop(constraints, from, Some(&b.host_key), test_user) {
            return false;
        }
        from = Some(&b.host_key);
    }
    // A listing on a connection forwarded onwards from the last host shows the key only if it
    // may be used beyond that host, not just to log in to it.
    if last.forwarding
        && user.is_none()
        && !permitted_hop(constraints, Some(&last.host_key), None, None)
    {
        return false;
    }
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ssh::bind::tests::signed_bind;
    use ssh_agent_lib::ssh_encoding::Encode;
    use ssh_key::{Algorithm, PrivateKey};

    fn put_string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&u32::try_from(s.len()).unwrap().to_be_bytes());
        out.extend_from_slice(s);
    }

    pub(crate) fn hop_bytes(user: &str, host: &str, keys: &[&KeyData]) -> Vec<u8> {
        let mut h = Vec::new();
        put_string(&mut h, user.as_bytes());
        put_string(&mut h, host.as_bytes());
        put_string(&mut h, b"");
        for k in keys {
            let mut blob = Vec::new();
            k.encode(&mut blob).unwrap();
            put_string(&mut h, &blob);
            h.push(0);
        }
        h
    }

    pub(crate) fn constraint_bytes(from: &[u8], to: &[u8]) -> Vec<u8> {
        let mut c = Vec::new();
        put_string(&mut c, from);
        put_string(&mut c, to);
        put_string(&mut c, b"");
        let mut out = Vec::new();
        put_string(&mut out, &c);
        out
    }

    fn key() -> PrivateKey {
        PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519).unwrap()
    }

    #[test]
    fn decodes_a_hand_built_constraint() {
        let a = key();
        let b = key();
        let mut blob = constraint_bytes(
            &hop_bytes("", "", &[]),
            &hop_bytes("bob", "a.test", &[a.public_key().key_data()]),
        );
        blob.extend(constraint_bytes(
            &hop_bytes("", "a.test", &[a.public_key().key_data()]),
            &hop_bytes("", "b.test", &[b.public_key().key_data()]),
        ));
        let c = decode(&blob).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].from.hostname, None);
        assert_eq!(c[0].to.user.as_deref(), Some("bob"));
        assert_eq!(c[0].to.hostname.as_deref(), Some("a.test"));
        assert_eq!(
            c[0].to.keys,
            vec![(a.public_key().key_data().clone(), false)]
        );
        assert_eq!(c[1].from.hostname.as_deref(), Some("a.test"));
    }

    #[test]
    fn truncated_oversized_and_inconsistent_constraints_are_refused() {
        let a = key();
        let good = constraint_bytes(
            &hop_bytes("", "", &[]),
            &hop_bytes("", "a.test", &[a.public_key().key_data()]),
        );
        for cut in 1..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        assert!(decode(&[]).is_err());
        // A length far beyond the data.
        assert!(decode(&[0xff, 0xff, 0xff, 0xff, 0]).is_err());
        // A host name over the cap.
        let long = "h".repeat(MAX_NAME + 1);
        let blob = constraint_bytes(
            &hop_bytes("", "", &[]),
            &hop_bytes("", &long, &[a.public_key().key_data()]),
        );
        assert!(decode(&blob).unwrap_err().contains("limit"));
        // Too many constraints.
        let many = good.repeat(MAX_CONSTRAINTS + 1);
        assert!(decode(&many).unwrap_err().contains("more than"));
        // `to` without keys; `from` with a user.
        assert!(
            decode(&constraint_bytes(
                &hop_bytes("", "", &[]),
                &hop_bytes("", "a", &[])
            ))
            .is_err()
        );
        assert!(
            decode(&constraint_bytes(
                &hop_bytes("u", "", &[]),
                &hop_bytes("", "a", &[a.public_key().key_data()])
            ))
            .is_err()
        );
    }

    #[test]
    fn permits_only_listed_hops_and_users() {
        let a = key();
        let b = key();
        let other = key();
        let blob = [
            constraint_bytes(
                &hop_bytes("", "", &[]),
                &hop_bytes("al?ce", "a", &[a.public_key().key_data()]),
            ),
            constraint_bytes(
                &hop_bytes("", "a", &[a.public_key().key_data()]),
                &hop_bytes("", "b", &[b.public_key().key_data()]),
            ),
        ]
        .concat();
        let c = decode(&blob).unwrap();

        let unbound = Bindings::default();
        assert!(permitted(&c, &unbound, None));

        let mut to_a = Bindings::default();
        to_a.bind(Ok(signed_bind(&a, &[1; 32], false))).unwrap();
        assert!(permitted(&c, &to_a, None));
        assert!(permitted(&c, &to_a, Some("alice")));
        assert!(!permitted(&c, &to_a, Some("mallory")));

        let mut to_other = Bindings::default();
        to_other
            .bind(Ok(signed_bind(&other, &[1; 32], false)))
            .unwrap();
        assert!(!permitted(&c, &to_other, None));

        let mut via_a_to_b = Bindings::default();
        via_a_to_b
            .bind(Ok(signed_bind(&a, &[1; 32], true)))
            .unwrap();
        assert!(permitted(&c, &via_a_to_b, None), "may go on from a");
        via_a_to_b
            .bind(Ok(signed_bind(&b, &[2; 32], false)))
            .unwrap();
        assert!(permitted(&c, &via_a_to_b, Some("anyone")));

        // Forwarded onwards from b: no hop beyond b is permitted, so the key is hidden.
        let mut via_b = Bindings::default();
        via_b.bind(Ok(signed_bind(&a, &[1; 32], true))).unwrap();
        via_b.bind(Ok(signed_bind(&b, &[2; 32], true))).unwrap();
        assert!(!permitted(&c, &via_b, None));

        let mut poisoned = Bindings::default();
        let _ = poisoned.bind(Err("bad".into()));
        assert!(!permitted(&c, &poisoned, None));
    }

    #[test]
    fn glob_matches_like_openssh() {
        assert!(glob("alice", "alice"));
        assert!(glob("alice", "a*"));
        assert!(glob("alice", "al?ce"));
        assert!(glob("alice", "*"));
        assert!(!glob("alice", "bob"));
        assert!(!glob("alice", "alic"));
    }
}
