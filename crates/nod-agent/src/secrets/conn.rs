//! Reading request lines together with the kernel's word on who sent them.
//!
//! The stream is read with `recvmsg`, and every chunk carries `SCM_CREDENTIALS` (the listener
//! has `SO_PASSCRED`, which accepted sockets inherit). The kernel never returns bytes from two
//! different writers in one `recvmsg`, so each chunk has one sender; a line whose bytes came
//! from more than one sender is refused as a whole. Lines are capped at
//! [`MAX_LINE`] before the buffer grows past it.

use std::io;
use std::os::fd::AsRawFd;

use nod_client::proto::MAX_LINE;
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::caller::identity::Sender;
use zeroize::Zeroizing;

use crate::socket::Held;
use crate::sys::recv_with_sender;

const CHUNK: usize = 16 * 1024;

/// One complete line and its sender.
#[derive(Debug)]
pub struct Line {
    /// Wiped on drop: a write request carries secret values.
    pub bytes: Zeroizing<Vec<u8>>,
    /// `None` when the line's bytes came from several processes (or without credentials).
    pub sender: Option<Sender>,
}

/// Why no line could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("too many bytes of unfinished lines on this socket")]
    OverBudget,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Splits a stream into lines, remembering who sent each.
#[derive(Debug, Default)]
pub struct LineReader {
    /// Grown by copying into a new buffer and wiping the old one, never by reallocation,
    /// which would leave copies of secret values in freed memory.
    buf: Zeroizing<Vec<u8>>,
    /// Sender of the bytes in `buf` (a partial line).
    sender: Option<Sender>,
    /// `buf` holds bytes from more than one sender, or bytes without credentials.
    mixed: bool,
}

fn same_process(a: &Sender, b: &Sender) -> bool {
    a.pid == b.pid && a.uid == b.uid
}

impl LineReader {
    /// Takes one complete line out of the buffer, if there is one.
    fn take_line(&mut self) -> Result<Option<Line>, ReadError> {
        match self.buf.iter().position(|&b| b == b'\n') {
            Some(i) if i > MAX_LINE => Err(ReadError::TooLong),
            Some(i) => {
                let bytes = Zeroizing::new(self.buf[..i].to_vec());
                self.buf = Zeroizing::new(self.buf[i + 1..].to_vec());
                // A descriptor that cannot be duplicated leaves the line without a sender,
                // which refuses it.
                let sender = if self.mixed {
                    None
                } else {
                    self.sender.as_ref().and_then(|s| s.try_clone().ok())
                };
                // What is left arrived in the last chunk, from its one sender.
                self.mixed = self.sender.is_none() && !self.buf.is_empty();
                Ok(Some(Line { bytes, sender }))
            }
            None if self.buf.len() > MAX_LINE => Err(ReadError::TooLong),
            None => Ok(None),
        }
    }

    /// Appends `data`, growing into a fresh buffer (the old one is wiped as it drops).
    fn append(&mut self, data: &[u8]) {
        let need = self.buf.len() + data.len();
        if need > self.buf.capacity() {
            let mut grown = Zeroizing::new(Vec::with_capacity(need.max(2 * self.buf.capacity())));
            grown.extend_from_slice(&self.buf);
            self.buf = grown;
        }
        self.buf.extend_from_slice(data);
    }

    /// Whether no part of a line is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next line, or `None` at end of stream (a trailing partial line is dropped). The
    /// bytes of a partial line count against the socket's in-flight budget (`held`).
    pub async fn next_line(
        &mut self,
        stream: &UnixStream,
        held: &mut Held,
    ) -> Result<Option<Line>, ReadError> {
        loop {
            if let Some(line) = self.take_line()? {
                held.set(self.buf.len());
                return Ok(Some(line));
            }
            // Never read more than the cap allows, so the buffer stays bounded.
            let room = (MAX_LINE + 1 - self.buf.len()).min(CHUNK);
            let fd = stream.as_raw_fd();
            let (received, bytes) = stream
                .async_io(Interest::READABLE, || {
                    // On the stack only while reading: an idle connection holds no buffer.
                    let mut chunk = Zeroizing::new([0u8; CHUNK]);
                    let r = recv_with_sender(fd, &mut chunk[..room])?;
                    let bytes = Zeroizing::new(chunk[..r.bytes].to_vec());
                    Ok((r, bytes))
                })
                .await?;
            let n = received.bytes;
            if n == 0 {
                return Ok(None);
            }
            let sender = received.credentials.map(|(pid, uid)| Sender {
                pid,
                uid,
                pidfd: received.pidfd,
            });
            let starts_line = self.buf.is_empty();
            match (&self.sender, &sender) {
                _ if starts_line => self.mixed = sender.is_none(),
                (Some(a), Some(b)) if same_process(a, b) => {}
                _ => self.mixed = true,
            }
            // Keep the newest chunk's pidfd: it names the process that finished the line.
            self.sender = sender;
            if !held.set(self.buf.len() + n) {
                return Err(ReadError::OverBudget);
            }
            self.append(&bytes);
            if let Some(line) = self.take_line()? {
                return Ok(Some(line));
            }
        }
    }
}
