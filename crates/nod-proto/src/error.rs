use std::fmt;

/// Why a frame, message or key was rejected.
///
/// The variants are grouped by what the helper does with them: protocol errors (malformed
/// input, exit 32) versus authentication errors (bad signature, binding or freshness, exit 30).
/// [`ProtoError::is_auth_failure`] tells them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoError {
    /// A frame announced more than [`crate::MAX_FRAME_LEN`] bytes.
    FrameTooLarge(u64),
    /// A frame ended before its announced length, or had bytes after it.
    FrameTruncated,
    /// The frame payload is not a well-formed v1 message.
    Json(String),
    /// `protocol_version` is not 1.
    UnsupportedVersion(u16),
    /// The message is well-formed JSON but a field is out of range.
    InvalidField(&'static str),
    /// The signature does not verify under any of the given keys.
    BadSignature,
    /// A key or key file could not be parsed.
    BadKey(String),
    /// The message expired before it was checked.
    Expired { now_ms: u64, expires_at_ms: u64 },
    /// The message claims to be created further in the future than the allowed skew.
    FromFuture { now_ms: u64, created_at_ms: u64 },
    /// A response field does not match the request it answers.
    Mismatch(&'static str),
    /// The key id in the message is not the one configured for the key that signed it.
    WrongKeyId { expected: String, got: String },
    /// The peer closed the connection before sending a single byte.
    Closed,
    /// The I/O under a frame failed. `started` tells whether any byte of the frame had arrived.
    Io {
        kind: std::io::ErrorKind,
        started: bool,
    },
    /// The peer sent the first `received` bytes of a frame, each still valid so far, and then
    /// nothing until the reader timed out (see [`crate::frame::read_frame_or_stall`]).
    Stalled { received: usize },
}

impl ProtoError {
    /// True for failures of signature, key id, binding or freshness: a message that parsed but
    /// must not be believed. False for malformed input.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            Self::BadSignature
                | Self::Expired { .. }
                | Self::FromFuture { .. }
                | Self::Mismatch(_)
                | Self::WrongKeyId { .. }
        )
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FrameTooLarge(n) => write!(
                f,
                "frame of {n} bytes exceeds the {} byte limit",
                crate::MAX_FRAME_LEN
            ),
            Self::FrameTruncated => f.write_str("frame is truncated or has trailing bytes"),
            Self::Json(e) => write!(f, "malformed message: {e}"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            Self::InvalidField(name) => write!(f, "invalid field `{name}`"),
            Self::BadSignature => f.write_str("signature does not verify under the pinned key"),
            Self::BadKey(e) => write!(f, "bad key: {e}"),
            Self::Expired {
                now_ms,
                expires_at_ms,
            } => write!(
                f,
                "message expired {} ms ago",
                now_ms.saturating_sub(*expires_at_ms)
            ),
            Self::FromFuture {
                now_ms,
                created_at_ms,
            } => write!(
                f,
                "message is created {} ms in the future (clock skew?)",
                created_at_ms.saturating_sub(*now_ms)
            ),
            Self::Mismatch(field) => {
                write!(f, "response field `{field}` does not match the request")
            }
            Self::WrongKeyId { expected, got } => {
                write!(f, "key id `{got}` does not match the pinned `{expected}`")
            }
            Self::Closed => f.write_str("connection closed before any reply"),
            Self::Io { kind, started } => {
                let when = if *started {
                    "mid-frame"
                } else {
                    "before any byte"
                };
                write!(f, "i/o error {when}: {kind}")
            }
            Self::Stalled { received } => {
                write!(
                    f,
                    "the reply stopped after {received} bytes and did not go on"
                )
            }
        }
    }
}

impl std::error::Error for ProtoError {}
