//! The secrets-broker wire format: newline-delimited JSON, keychain-auth compatible
//! (`docs/protocol/secrets.md`), plus nod's `CONTROL` messages for the policy.
//!
//! Both sides use these types. The agent decodes with [`Message::decode`], which rejects unknown
//! fields (**nod**, §Request) and lines longer than [`MAX_LINE`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, Zeroizing};

/// Longest request line, newline excluded (§Transport: 64 KiB).
pub const MAX_LINE: usize = 64 * 1024;

/// A secret value: zeroized on drop, redacted in `Debug`, compared in constant time (for a
/// given length).
#[derive(Clone, Eq, Default)]
pub struct SecretValue(String);

impl PartialEq for SecretValue {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself. Keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl Serialize for SecretValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

/// §Request `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Read,
    Write,
    Delete,
    Search,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Delete => "delete",
            Self::Search => "search",
        }
    }
}

/// §Request `match`; defaults to `exact`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Match {
    #[default]
    Exact,
    Prefix,
}

/// §Request: one keychain-auth request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub action: Action,
    pub service: String,
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub match_: Option<Match>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<SecretValue>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// **nod**: the session the connection's `HELLO` opened. A request that carries it was
    /// sent after the agent judged the connected process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// **nod**, from the `nod` command line only: after the person approves, let the same
    /// caller do the same kind of request on this service again for this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remember_secs: Option<u64>,
}

impl Request {
    pub fn new(action: Action, service: &str) -> Self {
        Self {
            action,
            service: service.to_owned(),
            match_: None,
            targets: Vec::new(),
            values: Vec::new(),
            attributes: BTreeMap::new(),
            session: None,
            remember_secs: None,
        }
    }
}

/// **nod**: policy changes and queries, sent by `nod register`, `nod approve` and friends.
/// Changes that grant access are shown to the person through the agent's approver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// Register the binary at `path` (hashed by the agent) with these grants.
    Register {
        path: String,
        #[serde(default)]
        read: Vec<String>,
        #[serde(default)]
        write: Vec<String>,
        #[serde(default)]
        search: bool,
        /// Serve its requests without a `HELLO` session (see [`PolicyEntry`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        legacy_protocol: bool,
    },
    /// Register a pending binary. Empty grants mean "what it asked for".
    Approve {
        hash: String,
        #[serde(default)]
        read: Vec<String>,
        #[serde(default)]
        write: Vec<String>,
        #[serde(default)]
        search: bool,
        /// Serve its requests without a `HELLO` session (see [`PolicyEntry`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        legacy_protocol: bool,
    },
    /// The binary at `path` changed: move its grants to the new hash.
    Upgrade {
        path: String,
    },
    ListPending,
    PolicyList,
    Revoke {
        hash: String,
    },
    /// **nod**: the agent's approvers, open prompts and recent decisions (`nod status`).
    Status,
}

/// One line from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Message {
    /// **nod**: opens a session. The agent judges the connected process now and answers
    /// with the session id that each later `REQUEST` carries.
    #[serde(rename = "HELLO")]
    Hello,
    #[serde(rename = "REQUEST")]
    Request(Request),
    #[serde(rename = "CONTROL")]
    Control(Control),
}

/// Why a line could not be decoded; all are `malformed_request` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("invalid JSON request: {0}")]
    Json(String),
}

impl Message {
    /// Decodes one line (without its newline).
    pub fn decode(line: &[u8]) -> Result<Self, DecodeError> {
        if line.len() > MAX_LINE {
            return Err(DecodeError::TooLong);
        }
        serde_json::from_slice(line).map_err(|e| DecodeError::Json(e.to_string()))
    }

    /// One line, newline included, in a buffer wiped on drop (a write carries values).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        encode_line(self)
    }
}

/// `value` as one JSON line in a buffer sized exactly once and wiped on drop: a buffer that
/// grew by reallocation would leave copies of the secrets it holds in freed memory.
pub fn encode_line<T: Serialize>(value: &T) -> Zeroizing<Vec<u8>> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("a message always serializes");
    let mut v = Zeroizing::new(Vec::with_capacity(count.0 + 1));
    serde_json::to_writer(&mut *v, value).expect("a message always serializes");
    v.push(b'\n');
    v
}

/// §Response `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Success,
    Denied,
    Error,
}

/// §Response reason codes, plus nod's own for the control channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Also what keychain-auth's `unregistered_binary_pending_approval` decodes to.
    UnregisteredBinary,
    ActionNotInPolicy,
    ServiceNotAllowed,
    MalformedRequest,
    InternalError,
    /// **nod**: the person said no (or could not be asked) to a policy change.
    NotApproved,
    /// **nod**: the backend cannot do this yet.
    NotSupported,
    /// **nod**: the named hash, path or item is not there.
    NotFound,
    /// **nod**: the calling process cannot be trusted to be what it runs (it is traced, was
    /// started with `LD_PRELOAD`, runs in another namespace, exec'd since it connected, or
    /// sent outside its session).
    UntrustedCaller,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Self::UnregisteredBinary,
        Self::ActionNotInPolicy,
        Self::ServiceNotAllowed,
        Self::MalformedRequest,
        Self::InternalError,
        Self::NotApproved,
        Self::NotSupported,
        Self::NotFound,
        Self::UntrustedCaller,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnregisteredBinary => "unregistered_binary",
            Self::ActionNotInPolicy => "action_not_in_policy",
            Self::ServiceNotAllowed => "service_not_allowed",
            Self::MalformedRequest => "malformed_request",
            Self::InternalError => "internal_error",
            Self::NotApproved => "not_approved",
            Self::NotSupported => "not_supported",
            Self::NotFound => "not_found",
            Self::UntrustedCaller => "untrusted_caller",
        }
    }

    /// Accepts both names of the unregistered reason (§Response).
    pub fn from_wire(s: &str) -> Option<Self> {
        if s == "unregistered_binary_pending_approval" {
            return Some(Self::UnregisteredBinary);
        }
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// One item of a response. `value` is absent for search results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<SecretValue>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// A registered binary (§Policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    pub path: String,
    /// `sha256:<hex>`.
    pub hash: String,
    pub allowed_read_services: Vec<String>,
    pub allowed_write_services: Vec<String>,
    pub can_search: bool,
    /// **nod**: the binary is an interpreter, so every script it runs has these grants.
    #[serde(default)]
    pub interpreter: bool,
    /// **nod**: its requests are served without a `HELLO` session (keychain-auth clients),
    /// which leaves the send-then-exec window of docs/security.md open for this binary.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legacy_protocol: bool,
}

/// A refused, unregistered caller (§Pending queue). No argv beyond argv[0].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEntry {
    pub path: String,
    pub hash: String,
    pub argv0: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    #[serde(default)]
    pub interpreter: bool,
    /// `action:service` pairs it asked for, bounded.
    #[serde(default)]
    pub requested: Vec<String>,
}

/// One line from the agent. Clients ignore fields they do not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub results: Vec<Item>,
    /// **nod**: a sentence for a person (control channel, errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Vec<PolicyEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Vec<PendingEntry>>,
    /// **nod**: the answer to `Status`, as the agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<serde_json::Value>,
    /// **nod**: the answer to `HELLO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl Response {
    pub fn success(results: Vec<Item>) -> Self {
        Self {
            kind: "RESPONSE".into(),
            status: Status::Success,
            reason: None,
            results,
            message: None,
            policy: None,
            pending: None,
            agent: None,
            session: None,
        }
    }

    pub fn refused(status: Status, reason: Reason, message: Option<String>) -> Self {
        Self {
            reason: Some(reason.as_str().into()),
            status,
            message,
            ..Self::success(Vec::new())
        }
    }

    /// The reason as a code, if it is one we know.
    pub fn reason_code(&self) -> Option<Reason> {
        self.reason.as_deref().and_then(Reason::from_wire)
    }

    /// One line, newline included, in a buffer wiped on drop (a read carries values).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        encode_line(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_reference_request() {
        let line = br#"{"type":"REQUEST","action":"write","service":"aws","match":"exact","targets":["prod-api-key"],"values":["v"],"attributes":{"environment":"production"}}"#;
        let Message::Request(r) = Message::decode(line).unwrap() else {
            panic!("not a request")
        };
        assert_eq!(r.action, Action::Write);
        assert_eq!(r.match_, Some(Match::Exact));
        assert_eq!(r.values[0].expose(), "v");
        assert_eq!(r.attributes["environment"], "production");
        let again = Message::decode(Message::Request(r.clone()).encode().trim_ascii_end()).unwrap();
        assert_eq!(again, Message::Request(r));
    }

    #[test]
    fn rejects_unknown_fields_and_types() {
        for line in [
            r#"{"type":"REQUEST","action":"read","service":"a","targets":["x"],"extra":1}"#,
            r#"{"type":"REQUESTS","action":"read","service":"a"}"#,
            r#"{"type":"REQUEST","action":"steal","service":"a"}"#,
            r#"{"type":"CONTROL","op":"register","path":"/x","sneaky":true}"#,
            r#"{"action":"read","service":"a"}"#,
        ] {
            assert!(Message::decode(line.as_bytes()).is_err(), "{line}");
        }
    }

    #[test]
    fn decodes_control_messages() {
        let m =
            Message::decode(br#"{"type":"CONTROL","op":"register","path":"/bin/x","read":["a"]}"#)
                .unwrap();
        assert_eq!(
            m,
            Message::Control(Control::Register {
                path: "/bin/x".into(),
                read: vec!["a".into()],
                write: vec![],
                search: false,
                legacy_protocol: false,
            })
        );
        let m = Message::decode(br#"{"type":"CONTROL","op":"list_pending"}"#).unwrap();
        assert_eq!(m, Message::Control(Control::ListPending));
    }

    #[test]
    fn rejects_long_lines_before_parsing() {
        let line = vec![b' '; MAX_LINE + 1];
        assert_eq!(Message::decode(&line), Err(DecodeError::TooLong));
    }

    #[test]
    fn reason_codes_round_trip_and_accept_the_keychain_auth_name() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_wire(r.as_str()), Some(r));
        }
        assert_eq!(
            Reason::from_wire("unregistered_binary_pending_approval"),
            Some(Reason::UnregisteredBinary)
        );
        assert_eq!(Reason::from_wire("nope"), None);
    }

    #[test]
    fn secret_values_are_redacted_in_debug_and_compare_by_content() {
        let v = SecretValue::new("hunter2");
        assert!(!format!("{v:?}").contains("hunter2"));
        assert_eq!(v, SecretValue::new("hunter2"));
        assert_ne!(v, SecretValue::new("hunter3"));
        assert_ne!(v, SecretValue::new("hunter22"));
    }
}
