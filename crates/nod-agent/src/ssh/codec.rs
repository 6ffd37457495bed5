//! Framing for the SSH agent socket: a 4-byte length, then one message ([`super::message`]).
//!
//! Frames are capped at [`MAX_FRAME_LEN`] (OpenSSH's `AGENT_MAX_LEN`, 256 KiB) before anything
//! more is buffered, and each message is decoded from exactly one frame, with no bytes left
//! over.

use tokio_util::bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};
use zeroize::Zeroize;

use super::message::{MessageError, Request, Response};

/// Longest message body accepted, as in OpenSSH's `ssh-agent.c`.
pub const MAX_FRAME_LEN: usize = 256 * 1024;

const LEN_PREFIX: usize = 4;

/// One frame read from a client.
#[derive(Debug)]
pub enum Frame {
    /// A message the library decoded, with no bytes left over.
    Request(Box<Request>),
    /// A complete frame that is not a valid message (unknown type, bad field, trailing bytes).
    /// The client gets FAILURE and the connection stays open, as with OpenSSH.
    Invalid(MessageError),
}

/// The frame's length is over the cap; the connection is closed without reading it.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {0} bytes is over the {MAX_FRAME_LEN}-byte limit")]
    TooLong(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The agent protocol's framing with a cap; see the module docs.
#[derive(Debug, Default)]
pub struct CappedCodec;

impl Decoder for CappedCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(prefix) = src.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(CodecError::TooLong(len));
        }
        // Wait for the rest without reserving room for it: a peer that announces 256 KiB and
        // stalls must not cost 256 KiB.
        if src.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        src.advance(LEN_PREFIX);
        let mut frame = src.split_to(len);
        let decoded = match Request::decode(&frame) {
            Ok(request) => Frame::Request(Box::new(request)),
            Err(e) => Frame::Invalid(e),
        };
        // The message may have carried a private key (`ssh-add`): wipe the wire copy now that
        // the decoded key (zeroized on drop) holds it.
        frame.as_mut().zeroize();
        Ok(Some(decoded))
    }
}

impl Encoder<Response> for CappedCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Response, dst: &mut BytesMut) -> Result<(), CodecError> {
        let body = item.encode();
        dst.reserve(LEN_PREFIX + body.len());
        dst.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
        dst.put_slice(&body);
        Ok(())
    }
}

/// The fuzzing entry point (`fuzz/fuzz_targets/ssh_agent_message.rs`): `data` as one client's
/// byte stream through the codec, then the decoders the service applies to what it yields
/// (the purpose of a sign request, a `session-bind`, a destination constraint). Must never
/// panic.
pub fn fuzz_decode(data: &[u8]) {
    let mut codec = CappedCodec;
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        let Frame::Request(request) = frame else {
            continue;
        };
        match *request {
            Request::Sign(sign) => {
                let _ = super::purpose::decode(&sign.data);
            }
            Request::Extension(ext) => {
                let message = super::bind::SessionBind::decode(&ext.details);
                let _ = super::bind::Bindings::default().bind(message);
            }
            Request::Add { constraints, .. } => {
                for constraint in &constraints {
                    if let super::message::KeyConstraint::Destinations(details) = constraint {
                        let _ = super::destination::decode(details);
                    }
                }
            }
            _ => {}
        }
    }
    let _ = super::purpose::decode(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Result<Option<Frame>, CodecError> {
        CappedCodec.decode(&mut BytesMut::from(bytes))
    }

    #[test]
    fn decodes_request_identities() {
        let frame = decode(&[0, 0, 0, 1, 11]).unwrap().unwrap();
        assert!(matches!(frame, Frame::Request(r) if matches!(*r, Request::RequestIdentities)));
    }

    #[test]
    fn rejects_frame_over_the_cap_before_buffering_it() {
        let len = u32::try_from(MAX_FRAME_LEN + 1).unwrap().to_be_bytes();
        assert!(matches!(decode(&len), Err(CodecError::TooLong(_))));
    }

    #[test]
    fn waits_for_the_rest_of_a_frame() {
        assert!(decode(&[0, 0, 0, 5, 11]).unwrap().is_none());
        assert!(decode(&[0, 0]).unwrap().is_none());
    }

    #[test]
    fn trailing_bytes_are_invalid() {
        let frame = decode(&[0, 0, 0, 2, 11, 0]).unwrap().unwrap();
        assert!(matches!(frame, Frame::Invalid(_)));
    }

    #[test]
    fn unknown_message_type_is_invalid_and_consumed() {
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 200, 0, 0, 0, 1, 11][..]);
        let mut codec = CappedCodec;
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Invalid(_))
        ));
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Request(_))
        ));
    }

    #[test]
    fn encodes_a_reply_with_its_length() {
        let mut out = BytesMut::new();
        CappedCodec.encode(Response::Success, &mut out).unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 1, 6]);
    }

    #[test]
    fn empty_frame_is_invalid() {
        assert!(matches!(
            decode(&[0, 0, 0, 0]).unwrap(),
            Some(Frame::Invalid(_))
        ));
    }
}
