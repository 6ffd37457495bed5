//! The nod approval protocol, version 1.
//!
//! This crate is the wire format shared by `nod-helper` (on a Linux host) and `nod agent` (in
//! the user's session). It is byte-compatible with macos-auth protocol v1: the same JSON
//! messages, the same canonical bytes under the same domain strings, and the same Ed25519
//! signatures. `tests/vectors/macos-auth-v1/approval.json` is reproduced byte for byte by the
//! tests in this crate.
//!
//! Threat model, in short: everything that arrives from the wire is untrusted. Frames are capped
//! at [`MAX_FRAME_LEN`] before any allocation, JSON with unknown fields is rejected, signatures
//! are checked with strict (non-malleable) Ed25519 verification, and a decoded message becomes a
//! [`VerifiedRequest`] / [`VerifiedResponse`] only after its signature, shape and freshness have
//! been checked. Binding a response to the request it answers is [`VerifiedResponse::bind`].
//!
//! The crate does no I/O of its own beyond [`frame::read_frame`] / [`frame::write_frame`] over
//! any `Read`/`Write`, so it is usable from blocking and async code alike.

#![forbid(unsafe_code)]

mod canonical;
mod error;
pub mod frame;
pub mod keys;
mod message;
mod serde_bytes64;

pub use error::ProtoError;
pub use keys::{KeyId, PinnedKey, parse_private_key_file, parse_public_key_file, valid_host_id};
pub use message::{
    Alg, AuthMethod, Decision, REQUEST_DOMAIN, RESPONSE_DOMAIN, RequestBody, ResponseBody,
    SignedRequest, SignedResponse, VerifiedRequest, VerifiedResponse, check_freshness,
};

/// The only protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest frame payload accepted or produced (1 MiB), as in macos-auth.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Default allowance for a peer clock running ahead of ours.
pub const DEFAULT_FUTURE_SKEW_MS: u64 = 30_000;

/// The agent never signs a response that lives longer than this (macos-auth caps it at 10 s).
pub const MAX_RESPONSE_LIFETIME_MS: u64 = 10_000;

/// Longest lifetime (`expires_at_ms - created_at_ms`) of a request an agent accepts: nod-helper's
/// longest `timeout_ms`. A longer one would sit in the agent's replay cache for as long.
pub const MAX_REQUEST_LIFETIME_MS: u64 = 600_000;

/// Length of the request nonce.
pub const NONCE_LEN: usize = 32;

pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// Everything a peer's bytes go through on either side: framing, then decoding as a request
/// and as a response. The fuzz target calls this; it must never panic or allocate beyond the
/// frame cap.
pub fn fuzz_decode(data: &[u8]) {
    let Ok(payload) = frame::read_frame(&mut &data[..]) else {
        return;
    };
    if let Ok(req) = SignedRequest::from_json(&payload) {
        let _ = req.body.hash();
        let _ = SignedRequest::from_json(&req.to_json()).expect("re-encoded request decodes");
    }
    let _ = SignedResponse::check_prefix(&payload[..payload.len() / 2]);
    if let Ok(resp) = SignedResponse::from_json(&payload) {
        let _ = resp.body.canonical_bytes();
        let _ = SignedResponse::from_json(&resp.to_json()).expect("re-encoded response decodes");
    }
}
