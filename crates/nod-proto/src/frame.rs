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
    let mut partial = Partial::default();
    read_into(r, &mut partial)?;
    Ok(partial.payload)
}

/// Reads one frame like [`read_frame`], and sorts a read that times out after the first byte:
/// if every byte that did arrive can still begin a valid frame whose payload `payload_prefix`
/// accepts as the start of a message, the peer stalled ([`ProtoError::Stalled`]); if not, the
/// bytes are already broken, and the error is why (e.g. [`ProtoError::FrameTooLarge`] or the
/// decode error of the payload so far).
///
/// A timeout is an I/O error of kind `WouldBlock` (a socket read timeout) or `TimedOut`.
pub fn read_frame_or_stall<R: Read>(
    r: &mut R,
    payload_prefix: impl FnOnce(&[u8]) -> Result<(), ProtoError>,
) -> Result<Vec<u8>, ProtoError> {
    let mut partial = Partial::default();
    match read_into(r, &mut partial) {
        Ok(()) => Ok(partial.payload),
        Err(ProtoError::Io {
            kind: ErrorKind::WouldBlock | ErrorKind::TimedOut,
            started: true,
        }) => {
            if partial.header_len < HEADER_LEN {
                // The smallest length these header bytes can still announce.
                let mut smallest = [0u8; HEADER_LEN];
                smallest[..partial.header_len]
                    .copy_from_slice(&partial.header[..partial.header_len]);
                payload_len(smallest)?;
            } else {
                payload_prefix(&partial.payload)?;
            }
            Err(ProtoError::Stalled {
                received: partial.header_len + partial.payload.len(),
            })
        }
        Err(e) => Err(e),
    }
}

/// What has arrived of a frame so far.
#[derive(Default)]
struct Partial {
    header: [u8; HEADER_LEN],
    header_len: usize,
    payload: Vec<u8>,
}

fn read_into<R: Read>(r: &mut R, partial: &mut Partial) -> Result<(), ProtoError> {
    while partial.header_len < HEADER_LEN {
        match r.read(&mut partial.header[partial.header_len..]) {
            Ok(0) if partial.header_len == 0 => return Err(ProtoError::Closed),
            Ok(0) => return Err(ProtoError::FrameTruncated),
            Ok(n) => partial.header_len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(ProtoError::Io {
                    kind: e.kind(),
                    started: partial.header_len > 0,
                });
            }
        }
    }
    let len = payload_len(partial.header)?;
    // Grown as bytes arrive rather than allocated at the announced length, so a peer that
    // announces the cap and then stalls costs nothing. `read_to_end` keeps what it read
    // when it fails, which is what lets a stall be told apart from garbage.
    partial.payload.reserve_exact(len.min(64 * 1024));
    r.take(len as u64)
        .read_to_end(&mut partial.payload)
        .map_err(|e| ProtoError::Io {
            kind: e.kind(),
            started: true,
        })?;
    if partial.payload.len() != len {
        return Err(ProtoError::FrameTruncated);
    }
    Ok(())
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

    /// A reader that yields `bytes` and then times out, as a socket with a read timeout does
    /// when the peer stops sending.
    struct StallsAfter<'a>(&'a [u8]);

    impl Read for StallsAfter<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.0.len()).min(3);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn any_prefix(_: &[u8]) -> Result<(), ProtoError> {
        Ok(())
    }

    #[test]
    fn stall_after_the_first_byte_is_stalled_while_the_bytes_still_fit() {
        let at_the_cap = b"\0\x10\0\0{";
        for bytes in [
            &b"\0"[..],
            b"\0\x10",
            b"\0\x10\0",
            b"\0\0\0\x05",
            b"\0\0\0\x05ab",
            at_the_cap,
        ] {
            assert_eq!(
                read_frame_or_stall(&mut StallsAfter(bytes), any_prefix),
                Err(ProtoError::Stalled {
                    received: bytes.len()
                }),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn stall_after_bytes_that_cannot_decode_is_their_error() {
        // No completion of these header bytes is within the cap.
        for bytes in [&b"\x01"[..], b"\0\x11", b"\0\x10\0\x01"] {
            assert!(
                matches!(
                    read_frame_or_stall(&mut StallsAfter(bytes), any_prefix),
                    Err(ProtoError::FrameTooLarge(_))
                ),
                "{bytes:?}"
            );
        }
        // The payload so far is refused by the message's prefix check.
        let refuse = |p: &[u8]| {
            assert_eq!(p, b"ab");
            Err(ProtoError::Json("not a message".into()))
        };
        assert_eq!(
            read_frame_or_stall(&mut StallsAfter(b"\0\0\0\x05ab"), refuse),
            Err(ProtoError::Json("not a message".into()))
        );
    }

    #[test]
    fn silence_before_the_first_byte_is_not_a_stall() {
        assert_eq!(
            read_frame_or_stall(&mut StallsAfter(b""), any_prefix),
            Err(ProtoError::Io {
                kind: ErrorKind::WouldBlock,
                started: false
            })
        );
        assert_eq!(
            read_frame_or_stall(&mut &b"\0\0\0\x02{}"[..], any_prefix),
            Ok(b"{}".to_vec())
        );
        assert_eq!(
            read_frame_or_stall(&mut &b"\0\0\0\x05ab"[..], any_prefix),
            Err(ProtoError::FrameTruncated)
        );
    }

    #[test]
    fn decode_rejects_trailing_bytes() {
        assert_eq!(decode(b"\0\0\0\x01ab"), Err(ProtoError::FrameTruncated));
        assert_eq!(decode(b"\0\0"), Err(ProtoError::FrameTruncated));
    }
}
