//! Client SDK for nod's secrets broker.
//!
//! A program asks `nod agent` for secrets over `$XDG_RUNTIME_DIR/nod/secrets.sock` with
//! keychain-auth's newline-delimited JSON protocol (`docs/protocol/secrets.md`;
//! the types are in [`proto`]). The agent decides from what the *kernel* says about the calling
//! process (its binary's hash), so this crate holds no credentials and proves nothing itself.
//!
//! Threat model, client side: the socket is opened with `SOCK_CLOEXEC`, so a program that
//! execs a child does not hand it a connection the agent has already answered for. Secret
//! values are [`proto::SecretValue`]s, zeroized on drop and redacted in `Debug`.
//!
//! ```no_run
//! let mut client = nod_client::Client::connect_default()?;
//! let value = client.get("aws", "prod-api-key")?;
//! # Ok::<(), nod_client::ClientError>(())
//! ```

#![forbid(unsafe_code)]

pub mod proto;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};

use proto::{
    Action, Control, Item, Match, Message, Reason, Request, Response, SecretValue, Status,
};

/// Longest response line accepted (a prefix read can return many items).
pub const MAX_RESPONSE_LINE: usize = 16 * 1024 * 1024;

/// A request could not be made, or the agent refused it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no nod agent at {} ({source}); start it with `nod agent`",
        path.display()
    )]
    Connect { path: PathBuf, source: io::Error },
    #[error("XDG_RUNTIME_DIR is not set; set it, or pass the socket path explicitly")]
    NoRuntimeDir,
    #[error("talking to the agent failed: {0}")]
    Io(#[from] io::Error),
    #[error("the agent sent an invalid response: {0}")]
    BadResponse(String),
    /// The agent answered `denied` or `error`.
    #[error("{}", refusal_text(.status, .reason, .message))]
    Refused {
        status: Status,
        reason: Option<String>,
        message: Option<String>,
    },
}

fn refusal_text(status: &Status, reason: &Option<String>, message: &Option<String>) -> String {
    let word = match status {
        Status::Denied => "denied",
        _ => "error",
    };
    let reason = reason.as_deref().unwrap_or("no reason given");
    let hint = match Reason::from_wire(reason) {
        Some(Reason::UnregisteredBinary) => {
            "; this program is not registered: see `nod list-pending`, then `nod approve <hash>`"
        }
        Some(Reason::ServiceNotAllowed) | Some(Reason::ActionNotInPolicy) => {
            "; see `nod policy list`, and `nod register` to change the grants"
        }
        _ => "",
    };
    match message {
        Some(m) => format!("{word}: {reason}: {m}{hint}"),
        None => format!("{word}: {reason}{hint}"),
    }
}

impl ClientError {
    /// The reason code of a refusal.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Self::Refused { reason, .. } => reason.as_deref().and_then(Reason::from_wire),
            _ => None,
        }
    }
}

/// `$XDG_RUNTIME_DIR/nod/secrets.sock`.
pub fn default_socket() -> Result<PathBuf, ClientError> {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => Ok(dir.join("nod/secrets.sock")),
        _ => Err(ClientError::NoRuntimeDir),
    }
}

/// One connection to the broker. Requests are answered in order on it.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The session opened by `HELLO`, on the first request.
    session: Option<String>,
    /// Sent with each request (`nod secrets --remember`).
    remember_secs: Option<u64>,
}

impl Client {
    /// Connects to `path` with a `SOCK_CLOEXEC` socket.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let err = |source| ClientError::Connect {
            path: path.to_owned(),
            source,
        };
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| err(e.into()))?;
        let addr = UnixAddr::new(path).map_err(|e| err(e.into()))?;
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).map_err(|e| err(e.into()))?;
        let stream = UnixStream::from(fd);
        let writer = stream.try_clone()?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
            session: None,
            remember_secs: None,
        })
    }

    /// Connects to [`default_socket`].
    pub fn connect_default() -> Result<Self, ClientError> {
        Self::connect(&default_socket()?)
    }

    /// Gives up on an answer after `timeout` (`None`: wait for ever, e.g. for a prompt).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.writer.set_read_timeout(timeout)?;
        self.writer.set_write_timeout(timeout)?;
        Ok(())
    }

    /// Sends one message and reads its response, whatever its status.
    pub fn call(&mut self, message: &Message) -> Result<Response, ClientError> {
        self.writer.write_all(&message.encode())?;
        self.read_response()
    }

    /// Sends raw bytes (tests, other clients' quirks) and reads one response.
    pub fn call_raw(&mut self, line: &[u8]) -> Result<Response, ClientError> {
        self.writer.write_all(line)?;
        self.read_response()
    }

    fn read_response(&mut self) -> Result<Response, ClientError> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_RESPONSE_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(ClientError::BadResponse(
                "the agent closed the connection".into(),
            ));
        }
        if !line.ends_with(b"\n") {
            return Err(ClientError::BadResponse(
                "response line too long or cut off".into(),
            ));
        }
        let resp: Response =
            serde_json::from_slice(&line).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        if resp.kind != "RESPONSE" {
            return Err(ClientError::BadResponse(format!(
                "unexpected type {:?}",
                resp.kind
            )));
        }
        Ok(resp)
    }

    /// Opens the session, once per connection: the agent judges this process now, and only
    /// requests sent after its answer (carrying the session id) are served.
    pub fn hello(&mut self) -> Result<&str, ClientError> {
        if self.session.is_none() {
            let resp = Self::ok(self.call(&Message::Hello)?)?;
            let session = resp
                .session
                .ok_or_else(|| ClientError::BadResponse("the agent opened no session".into()))?;
            self.session = Some(session);
        }
        Ok(self.session.as_deref().unwrap_or_default())
    }

    /// Asks, with every later request, that an approval of the `nod` command line be
    /// remembered for `duration` (the agent caps it; other callers' requests ignore it).
    pub fn remember_for(&mut self, duration: Option<Duration>) {
        self.remember_secs = duration.map(|d| d.as_secs());
    }

    /// Sends a request in this connection's session and reads its response, whatever its
    /// status.
    pub fn send(&mut self, mut request: Request) -> Result<Response, ClientError> {
        request.session = Some(self.hello()?.to_owned());
        request.remember_secs = request.remember_secs.or(self.remember_secs);
        self.call(&Message::Request(request))
    }

    /// Sends a request in this connection's session; a `denied` or `error` answer is an
    /// error.
    pub fn request(&mut self, request: Request) -> Result<Vec<Item>, ClientError> {
        Self::ok(self.send(request)?).map(|r| r.results)
    }

    /// Sends a control message; a `denied` or `error` answer is an error.
    pub fn control(&mut self, control: Control) -> Result<Response, ClientError> {
        Self::ok(self.call(&Message::Control(control))?)
    }

    fn ok(resp: Response) -> Result<Response, ClientError> {
        match resp.status {
            Status::Success => Ok(resp),
            status => Err(ClientError::Refused {
                status,
                reason: resp.reason,
                message: resp.message,
            }),
        }
    }

    /// Reads one secret.
    pub fn get(&mut self, service: &str, target: &str) -> Result<SecretValue, ClientError> {
        let mut req = Request::new(Action::Read, service);
        req.targets = vec![target.to_owned()];
        let items = self.request(req)?;
        items
            .into_iter()
            .find(|i| i.target == target)
            .and_then(|i| i.value)
            .ok_or_else(|| ClientError::BadResponse("the response holds no value".into()))
    }

    /// Reads every item whose target starts with `prefix` (needs `can_search`).
    pub fn get_prefix(&mut self, service: &str, prefix: &str) -> Result<Vec<Item>, ClientError> {
        let mut req = Request::new(Action::Read, service);
        req.match_ = Some(Match::Prefix);
        req.targets = vec![prefix.to_owned()];
        self.request(req)
    }

    /// Writes a batch of `(target, value)` pairs.
    pub fn put(
        &mut self,
        service: &str,
        items: Vec<(String, SecretValue)>,
    ) -> Result<(), ClientError> {
        let mut req = Request::new(Action::Write, service);
        for (t, v) in items {
            req.targets.push(t);
            req.values.push(v);
        }
        self.request(req).map(|_| ())
    }

    /// Deletes targets.
    pub fn delete(&mut self, service: &str, targets: &[String]) -> Result<(), ClientError> {
        let mut req = Request::new(Action::Delete, service);
        req.targets = targets.to_vec();
        self.request(req).map(|_| ())
    }

    /// Lists targets of `service` (starting with `prefix`, if given); never values.
    pub fn search(
        &mut self,
        service: &str,
        prefix: Option<&str>,
    ) -> Result<Vec<String>, ClientError> {
        let mut req = Request::new(Action::Search, service);
        if let Some(p) = prefix {
            req.match_ = Some(Match::Prefix);
            req.targets = vec![p.to_owned()];
        }
        Ok(self.request(req)?.into_iter().map(|i| i.target).collect())
    }
}
