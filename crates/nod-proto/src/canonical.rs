//! Canonical bytes: the exact byte string that is hashed and signed (protocol v1 §Encodings).
//!
//! bytes / str: u32 BE length then the raw bytes; integers big-endian; optional values are one
//! byte, 0 for absent or 1 followed by the value.

#[derive(Debug, Default)]
pub(crate) struct Canonical(Vec<u8>);

impl Canonical {
    pub(crate) fn new(domain: &[u8]) -> Self {
        let mut c = Self(Vec::with_capacity(512));
        c.bytes(domain);
        c
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        // Fields are bounded by the 1 MiB frame cap, so the length always fits a u32.
        self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }

    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            None => self.0.push(0),
            Some(s) => {
                self.0.push(1);
                self.str(s);
            }
        }
        self
    }

    pub(crate) fn opt_u32(&mut self, v: Option<u32>) -> &mut Self {
        match v {
            None => self.0.push(0),
            Some(n) => {
                self.0.push(1);
                self.u32(n);
            }
        }
        self
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.0
    }
}
