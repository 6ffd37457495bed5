//! Framing: a u32 big-endian length, then that many bytes of JSON (protocol v1 §Transport).
//!
//! The length is checked against [`MAX_FRAME_LEN`] before anything is allocated, so a peer
//! cannot make us reserve memory by announcing a large frame.

use std::io::{ErrorKind, Read, Write};

use crate::{MAX_FRAME_LEN, ProtoError};

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// Validates a frame header and returns the payload length it announces.
pub fn payload_len(header: [u8; HEADER_LEN]) -> Result<usize, ProtoError> {
    let len = u32::from_be_bytes(header);
    if len as usize > MAX_FRAME_LEN {
        return Err(ProtoError::FrameTooLarge(u64::from(len)));
    }
    Ok(len as usize)
}

/// Builds a frame around `payload`.
pub fn encode(payload: &[u8]) -> Result<Vec<u8>, ProtoError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(ProtoError::FrameTooLarge(payload.len() as u64));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Splits one complete frame held in `buf` and returns its payload. Bytes after the frame are an
/// error: one exchange is exactly one frame.
pub fn decode(buf: &[u8]) -> Result<&[u8], ProtoError> {
    let (header, rest) = buf
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(ProtoError::FrameTruncated)?;
    let len = payload_len(*header)?;
    if rest.len() != len {
        return Err(ProtoError::FrameTruncated);
    }
    Ok(rest)
}

/// Reads one frame. EOF before the first byte is [`ProtoError::Closed`]; EOF or an error after
/// it is a truncated frame or [`ProtoError::Io`] with `started: true`.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Vec<u8>, ProtoError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(ProtoError::Closed),
            Ok(0) => return Err(ProtoError::FrameTruncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(ProtoError::Io {
                    kind: e.kind(),
                    started: got > 0,
                });
            }
        }
    }
    let len = payload_len(header)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => ProtoError::FrameTruncated,
        kind => ProtoError::Io {
            kind,
            started: true,
        },
    })?;
    Ok(payload)
}

/// Writes one frame.
pub fn write_frame<W: Write>(w: &mut W, payload: &[u8]) -> Result<(), ProtoError> {
    let frame = encode(payload)?;
    w.write_all(&frame).map_err(|e| ProtoError::Io {
        kind: e.kind(),
        started: true,
    })?;
    w.flush().map_err(|e| ProtoError::Io {
        kind: e.kind(),
        started: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_payload() {
        let frame = encode(b"{}").unwrap();
        assert_eq!(frame, b"\0\0\0\x02{}");
        assert_eq!(decode(&frame).unwrap(), b"{}");
        assert_eq!(read_frame(&mut &frame[..]).unwrap(), b"{}");
    }

    #[test]
    fn rejects_oversized_header_before_allocating() {
        let header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert_eq!(
            read_frame(&mut &header[..]),
            Err(ProtoError::FrameTooLarge(MAX_FRAME_LEN as u64 + 1))
        );
        assert!(matches!(
            payload_len([0xff; 4]),
            Err(ProtoError::FrameTooLarge(_))
        ));
    }

    #[test]
    fn accepts_exactly_the_cap() {
        assert_eq!(
            payload_len((MAX_FRAME_LEN as u32).to_be_bytes()),
            Ok(MAX_FRAME_LEN)
        );
        assert!(encode(&vec![0; MAX_FRAME_LEN + 1]).is_err());
    }

    #[test]
    fn eof_before_first_byte_is_closed() {
        assert_eq!(read_frame(&mut &b""[..]), Err(ProtoError::Closed));
    }

    #[test]
    fn eof_inside_frame_is_truncated() {
        assert_eq!(
            read_frame(&mut &b"\0\0"[..]),
            Err(ProtoError::FrameTruncated)
        );
        assert_eq!(
            read_frame(&mut &b"\0\0\0\x05abc"[..]),
            Err(ProtoError::FrameTruncated)
        );
    }

    #[test]
    fn decode_rejects_trailing_bytes() {
        assert_eq!(decode(b"\0\0\0\x01ab"), Err(ProtoError::FrameTruncated));
        assert_eq!(decode(b"\0\0"), Err(ProtoError::FrameTruncated));
    }
}
