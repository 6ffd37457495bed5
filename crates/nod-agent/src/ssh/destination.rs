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
//! A hop's keys come from `ssh-add -H known_hosts`: plain host keys, and CA keys from
//! `@cert-authority` lines. As in OpenSSH's `match_key_hop`, a host that presented a plain key
//! matches a listed plain key, and a host that presented a certificate matches a listed CA
//! key that signed it, provided the certificate is a current host certificate naming the
//! hop's host name (`sshkey_cert_check_host`).
//!
//! The wire format is decoded with the bounded [`super::wire::Reader`], which checks every
//! length against what is left; counts and sizes are capped here.

use ssh_key::public::KeyData;

use super::bind::{Binding, Bindings};
use super::credential::decode_key;
use super::wire::Reader;

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

/// Decodes the constraint's details (what follows the name): a sequence of strings, each one
/// constraint.
pub fn decode(details: &[u8]) -> Result<Vec<Constraint>, String> {
    let wire = |e: super::wire::WireError| e.to_string();
    let mut outer = Reader::new(details);
    let mut constraints = Vec::new();
    while !outer.is_empty() {
        if constraints.len() >= MAX_CONSTRAINTS {
            return Err(format!(
                "more than {MAX_CONSTRAINTS} destination constraints"
            ));
        }
        let mut c = Reader::new(outer.string(usize::MAX, "constraint").map_err(wire)?);
        let from = hop(c.string(usize::MAX, "from").map_err(wire)?, "from")?;
        let to = hop(c.string(usize::MAX, "to").map_err(wire)?, "to")?;
        if !c.string(usize::MAX, "reserved").map_err(wire)?.is_empty() {
            return Err("constraint has unsupported extensions".into());
        }
        if !c.is_empty() {
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

fn hop(bytes: &[u8], what: &'static str) -> Result<Hop, String> {
    let wire = |e: super::wire::WireError| e.to_string();
    let mut f = Reader::new(bytes);
    let text = |f: &mut Reader<'_>| -> Result<Option<String>, String> {
        let t = f.text(MAX_NAME, what).map_err(wire)?;
        Ok((!t.is_empty()).then(|| t.to_owned()))
    };
    let user = text(&mut f)?;
    let hostname = text(&mut f)?;
    if !f.string(usize::MAX, what).map_err(wire)?.is_empty() {
        return Err(format!("{what}: unsupported extensions"));
    }
    let mut keys = Vec::new();
    while !f.is_empty() {
        if keys.len() >= MAX_HOP_KEYS {
            return Err(format!("{what}: more than {MAX_HOP_KEYS} keys"));
        }
        let blob = f.string(MAX_KEY_BLOB, what).map_err(wire)?;
        let key = decode_key(blob).map_err(|e| format!("{what}: bad key: {e}"))?;
        let is_ca = f.u8(what).map_err(wire)? != 0;
        keys.push((key, is_ca));
    }
    Ok(Hop {
        user,
        hostname,
        keys,
    })
}

/// OpenSSH's `match_key_hop`: the bound host's plain key listed (not as a CA) in `hop`, or its
/// certificate signed by a CA listed in `hop` and valid now for the hop's host name.
fn key_matches(host: &Binding, hop: &Hop) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    hop.keys.iter().any(|(k, is_ca)| match &host.host_cert {
        None => !is_ca && *k == host.host_key,
        Some(cert) => {
            *is_ca
                && k == cert.signature_key()
                && cert.check_host(hop.hostname.as_deref(), now).is_ok()
        }
    })
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
    from: Option<&Binding>,
    to: Option<&Binding>,
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
    let mut from: Option<&Binding> = None;
    for (i, b) in hops.iter().enumerate() {
        let test_user = if i + 1 == hops.len() { user } else { None };
        if !permitted_hop(constraints, from, Some(b), test_user) {
            return false;
        }
        from = Some(b);
    }
    // A listing on a connection forwarded onwards from the last host shows the key only if it
    // may be used beyond that host, not just to log in to it.
    if last.forwarding && user.is_none() && !permitted_hop(constraints, Some(last), None, None) {
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
        let keys: Vec<_> = keys.iter().map(|k| (*k, false)).collect();
        hop_bytes_ca(user, host, &keys)
    }

    /// A hop whose keys may be CA keys (`@cert-authority`).
    pub(crate) fn hop_bytes_ca(user: &str, host: &str, keys: &[(&KeyData, bool)]) -> Vec<u8> {
        let mut h = Vec::new();
        put_string(&mut h, user.as_bytes());
        put_string(&mut h, host.as_bytes());
        put_string(&mut h, b"");
        for (k, is_ca) in keys {
            let mut blob = Vec::new();
            k.encode(&mut blob).unwrap();
            put_string(&mut h, &blob);
            h.push(u8::from(*is_ca));
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
    fn a_host_certificate_matches_a_listed_ca_for_its_own_name() {
        use crate::ssh::bind::tests::signed_cert_bind;
        use crate::ssh::credential::tests::cert_blob;
        use ssh_key::certificate::CertType;
        let (ca, other_ca, d, plain) = (key(), key(), key(), key());
        let ca_key = ca.public_key().key_data();
        // `ssh-add -h host_d -H known_hosts`, where known_hosts has
        // `@cert-authority host_* <ca>`: the hop lists the CA key as a CA.
        let to = |name: &str, keys: &[(&KeyData, bool)]| {
            decode(&constraint_bytes(
                &hop_bytes("", "", &[]),
                &hop_bytes_ca("", name, keys),
            ))
            .unwrap()
        };
        let bound_to = |cert: &[u8]| {
            let mut b = Bindings::default();
            b.bind(Ok(signed_cert_bind(&d, cert, &[1; 32], false)))
                .unwrap();
            b
        };
        let cert = cert_blob(
            &ca,
            d.public_key().key_data(),
            CertType::Host,
            &["host_d"],
            u64::MAX,
        );
        let via_cert = bound_to(&cert);
        assert!(permitted(
            &to("host_d", &[(ca_key, true)]),
            &via_cert,
            Some("u")
        ));
        // OpenSSH's "agent restriction honours certificate principal": the constraint names
        // host_e, the certificate host_d.
        assert!(!permitted(
            &to("host_e", &[(ca_key, true)]),
            &via_cert,
            Some("u")
        ));
        // Another CA, or the CA key listed as a plain key, does not match.
        assert!(!permitted(
            &to("host_d", &[(other_ca.public_key().key_data(), true)]),
            &via_cert,
            None
        ));
        assert!(!permitted(
            &to("host_d", &[(ca_key, false)]),
            &via_cert,
            None
        ));
        // The certified key listed as a plain key does not match a certificate either.
        assert!(!permitted(
            &to("host_d", &[(d.public_key().key_data(), false)]),
            &via_cert,
            None
        ));
        // An expired certificate, a user certificate: no.
        let expired = cert_blob(
            &ca,
            d.public_key().key_data(),
            CertType::Host,
            &["host_d"],
            1,
        );
        assert!(!permitted(
            &to("host_d", &[(ca_key, true)]),
            &bound_to(&expired),
            None
        ));
        let user = cert_blob(
            &ca,
            d.public_key().key_data(),
            CertType::User,
            &["host_d"],
            u64::MAX,
        );
        assert!(!permitted(
            &to("host_d", &[(ca_key, true)]),
            &bound_to(&user),
            None
        ));
        // A plain host key never matches a CA entry.
        let mut plain_bound = Bindings::default();
        plain_bound
            .bind(Ok(signed_bind(&plain, &[1; 32], false)))
            .unwrap();
        assert!(!permitted(
            &to("host_d", &[(plain.public_key().key_data(), true)]),
            &plain_bound,
            None
        ));
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
