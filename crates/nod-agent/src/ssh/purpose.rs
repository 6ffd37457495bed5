//! What a signature is for, decoded from the data the client asks the agent to sign.
//!
//! Two formats are recognised, each by its whole structure (trailing bytes are not allowed):
//!
//! - an SSH user authentication request (RFC 4252 §7, `SSH_MSG_USERAUTH_REQUEST`, 50, method
//!   `publickey`, or OpenSSH's `publickey-hostbound-v00@openssh.com`, PROTOCOL §2.5): a login;
//! - an `SSHSIG` blob (OpenSSH `PROTOCOL.sshsig`): a signature of a file, git commit, … in a
//!   namespace.
//!
//! Anything else is `unknown`. The data is the client's word, so a purpose says what the
//! client claims; the session id of a login is checked against the connection's verified
//! `session-bind` before signing (see the service).

use std::fmt;

/// SSH_MSG_USERAUTH_REQUEST.
const USERAUTH_REQUEST: u8 = 50;

/// Longest session id accepted (SHA-512 output is 64 bytes).
const MAX_SESSION_ID: usize = 64;

/// Longest user name, service, method or namespace kept.
const MAX_NAME: usize = 256;

/// The decoded purpose of one signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// Public-key user authentication as `user`.
    SshLogin {
        user: String,
        session_id: Vec<u8>,
        /// The server host key blob in a `publickey-hostbound-v00@openssh.com` request.
        hostbound_key: Option<Vec<u8>>,
    },
    /// An `SSHSIG` signature in `namespace` (`git`, `file`, …).
    Sshsig {
        namespace: String,
    },
    Unknown,
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SshLogin { user, .. } => write!(f, "ssh login as {user}"),
            Self::Sshsig { namespace } => write!(f, "sshsig namespace {namespace}"),
            Self::Unknown => f.write_str("unknown"),
        }
    }
}

/// SSH wire fields over a byte slice; every read checks the length first.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self, max: usize) -> Option<&'a [u8]> {
        let len = self.0.get(..4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > max {
            return None;
        }
        let rest = &self.0[4..];
        let value = rest.get(..len)?;
        self.0 = &rest[len..];
        Some(value)
    }

    fn text(&mut self, max: usize) -> Option<&'a str> {
        std::str::from_utf8(self.bytes(max)?).ok()
    }

    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// Decodes `data`; never fails, never panics.
pub fn decode(data: &[u8]) -> Purpose {
    userauth(data)
        .or_else(|| sshsig(data))
        .unwrap_or(Purpose::Unknown)
}

fn userauth(data: &[u8]) -> Option<Purpose> {
    let mut r = Fields(data);
    let session_id = r.bytes(MAX_SESSION_ID)?.to_vec();
    if session_id.is_empty() || r.byte()? != USERAUTH_REQUEST {
        return None;
    }
    let user = r.text(MAX_NAME)?.to_owned();
    let _service = r.text(MAX_NAME)?;
    let hostbound = match r.text(MAX_NAME)? {
        "publickey" => false,
        "publickey-hostbound-v00@openssh.com" => true,
        _ => return None,
    };
    if r.byte()? != 1 {
        return None;
    }
    let _algorithm = r.text(MAX_NAME)?;
    let _key = r.bytes(usize::MAX)?;
    let hostbound_key = if hostbound {
        Some(r.bytes(usize::MAX)?.to_vec())
    } else {
        None
    };
    r.done().then_some(Purpose::SshLogin {
        user,
        session_id,
        hostbound_key,
    })
}

fn sshsig(data: &[u8]) -> Option<Purpose> {
    let mut r = Fields(data.strip_prefix(b"SSHSIG")?);
    let namespace = r.text(MAX_NAME)?.to_owned();
    let _reserved = r.bytes(usize::MAX)?;
    let _hash_alg = r.text(MAX_NAME)?;
    let _hash = r.bytes(usize::MAX)?;
    (r.done() && !namespace.is_empty()).then_some(Purpose::Sshsig { namespace })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s);
    }

    pub(crate) fn userauth_request(session_id: &[u8], user: &str, method: &str) -> Vec<u8> {
        let mut d = Vec::new();
        string(&mut d, session_id);
        d.push(USERAUTH_REQUEST);
        string(&mut d, user.as_bytes());
        string(&mut d, b"ssh-connection");
        string(&mut d, method.as_bytes());
        d.push(1);
        string(&mut d, b"ssh-ed25519");
        string(&mut d, b"key blob");
        if method.contains("hostbound") {
            string(&mut d, b"host key blob");
        }
        d
    }

    fn sshsig_blob(ns: &str) -> Vec<u8> {
        let mut d = b"SSHSIG".to_vec();
        string(&mut d, ns.as_bytes());
        string(&mut d, b"");
        string(&mut d, b"sha512");
        string(&mut d, &[7; 64]);
        d
    }

    #[test]
    fn decodes_a_publickey_login() {
        let p = decode(&userauth_request(&[1; 32], "git", "publickey"));
        assert_eq!(p.to_string(), "ssh login as git");
        assert!(
            matches!(p, Purpose::SshLogin { ref session_id, hostbound_key: None, .. }
            if session_id == &[1; 32])
        );
    }

    #[test]
    fn decodes_a_hostbound_login() {
        let p = decode(&userauth_request(
            &[1; 32],
            "me",
            "publickey-hostbound-v00@openssh.com",
        ));
        assert!(
            matches!(p, Purpose::SshLogin { hostbound_key: Some(ref k), .. }
            if k == b"host key blob")
        );
    }

    #[test]
    fn decodes_sshsig_namespaces() {
        assert_eq!(
            decode(&sshsig_blob("git")).to_string(),
            "sshsig namespace git"
        );
        assert_eq!(
            decode(&sshsig_blob("file")).to_string(),
            "sshsig namespace file"
        );
    }

    #[test]
    fn truncated_or_trailing_data_is_unknown() {
        let full = userauth_request(&[1; 32], "git", "publickey");
        for end in 0..full.len() {
            assert_eq!(decode(&full[..end]), Purpose::Unknown, "cut at {end}");
        }
        let mut long = full.clone();
        long.push(0);
        assert_eq!(decode(&long), Purpose::Unknown);
        let sig = sshsig_blob("git");
        for end in 0..sig.len() {
            assert_eq!(decode(&sig[..end]), Purpose::Unknown, "cut at {end}");
        }
    }

    #[test]
    fn other_methods_and_huge_lengths_are_unknown() {
        assert_eq!(
            decode(&userauth_request(&[1; 32], "git", "password")),
            Purpose::Unknown
        );
        assert_eq!(decode(&[0xff; 16]), Purpose::Unknown);
        assert_eq!(decode(b"SSHSIG\xff\xff\xff\xff"), Purpose::Unknown);
        assert_eq!(decode(b""), Purpose::Unknown);
    }
}
