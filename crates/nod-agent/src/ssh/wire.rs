//! The SSH wire encoding (RFC 4251 §5) as the agent protocol uses it: one bounded reader over a
//! byte slice, and the few writers the replies need.
//!
//! Every length is checked against what is left before anything is taken, each string has a
//! cap chosen by its caller, and [`Reader::finish`] rejects trailing bytes. Nothing here
//! allocates on the peer's word.

use std::fmt;

/// Why a field could not be read. `what` names the field, for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{0}: truncated")]
    Truncated(&'static str),
    #[error("{what}: {len} bytes is over the {max}-byte limit")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0}: not UTF-8")]
    NotUtf8(&'static str),
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Reads SSH wire fields from a slice.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reader({} bytes left)", self.buf.len())
    }
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut v = [0u8; 8];
        v.copy_from_slice(b);
        Ok(u64::from_be_bytes(v))
    }

    /// A `string` of at most `max` bytes.
    pub fn string(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(WireError::TooLong { what, len, max });
        }
        self.take(len, what)
    }

    /// A `string` that must be UTF-8.
    pub fn text(&mut self, max: usize, what: &'static str) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.string(max, what)?).map_err(|_| WireError::NotUtf8(what))
    }

    /// Everything not read yet, consumed.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// What is left, without consuming it.
    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Ends a structure: nothing may trail it.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.buf.len()))
        }
    }
}

/// Appends a `uint32`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a `string`. Every value written here is far below 4 GiB (frames are capped at
/// 256 KiB), so the length always fits.
pub fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(bytes);
}

/// The wire bytes of something ssh-encoding can write (a key, a signature). Writing to a
/// `Vec` cannot fail for the values nod builds, so a failure gives an empty blob, which every
/// peer refuses.
pub fn to_vec(value: &impl ssh_agent_lib::ssh_encoding::Encode) -> Vec<u8> {
    let mut out = Vec::new();
    if value.encode(&mut out).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_rejects_what_is_not_there() {
        let mut b = Vec::new();
        b.push(7);
        put_u32(&mut b, 9);
        put_string(&mut b, b"abc");
        b.extend_from_slice(&5u64.to_be_bytes());
        let mut r = Reader::new(&b);
        assert_eq!(r.u8("a"), Ok(7));
        assert_eq!(r.u32("b"), Ok(9));
        assert_eq!(r.text(3, "c"), Ok("abc"));
        assert_eq!(r.u64("d"), Ok(5));
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(r.u8("e"), Err(WireError::Truncated("e")));
    }

    #[test]
    fn caps_and_truncation_are_checked_before_taking() {
        let mut b = Vec::new();
        put_string(&mut b, b"abcd");
        assert!(matches!(
            Reader::new(&b).string(3, "s"),
            Err(WireError::TooLong { len: 4, max: 3, .. })
        ));
        assert_eq!(
            Reader::new(&b[..6]).string(10, "s"),
            Err(WireError::Truncated("s"))
        );
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff]).string(usize::MAX, "s"),
            Err(WireError::Truncated("s"))
        );
        let mut r = Reader::new(&b);
        r.u8("x").unwrap();
        assert_eq!(r.finish(), Err(WireError::Trailing(7)));
        assert_eq!(
            Reader::new(&[0, 0, 0, 1, 0xff]).text(1, "t"),
            Err(WireError::NotUtf8("t"))
        );
    }
}
