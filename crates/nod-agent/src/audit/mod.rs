//! The audit log, `$XDG_STATE_HOME/nod/audit.jsonl`: one JSON object per line, one line per
//! decision, including requests refused before any prompt (docs/design.md "Audit").
//!
//! Each line's `prev` is the hex SHA-256 of the previous line's bytes (without its newline);
//! the first line has 64 zeros. Editing, inserting or deleting a line breaks the chain at the
//! next line, which [`verify`] reports. Cutting lines off the *end* leaves a valid chain: a
//! hash chain alone cannot tell a truncated log from a shorter one.
//!
//! Lines never hold secret values or signed payload bytes, only who asked for what and the
//! outcome. Host-supplied strings are cut to [`MAX_FIELD_LEN`] so one request cannot bloat the
//! log.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::files::ensure_private_dir;

/// `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest value of a host-supplied field, in bytes.
pub const MAX_FIELD_LEN: usize = 256;

/// How much of the end of the file is read at start to find the last line.
const TAIL_LEN: u64 = 64 * 1024;

/// The audit log could not be opened, written or checked.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "audit log {}: the last line is longer than {TAIL_LEN} bytes, so the chain cannot be \
         continued; run `nod audit verify` and move the file away",
        path.display()
    )]
    TailTooLong { path: PathBuf },
}

/// One decision. Fields a service does not have are left out of the line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// Which service decided: `approval`, `ssh` (later `secrets`).
    pub service: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pam_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// SSH agent: the key's comment and `SHA256:` fingerprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// SSH agent: the connecting process, from `SO_PEERCRED` and `/proc/<pid>/exe`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_exe: Option<String>,
    /// `approved`, `denied`, `cancelled`, `unavailable`, `failed`, or `refused` (no prompt).
    pub decision: String,
    /// Why, in a short machine-readable word: `unknown_host`, `bad_signature`, `replay`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Serialize)]
struct Line<'a, E> {
    time: String,
    #[serde(flatten)]
    event: &'a E,
    prev: &'a str,
}

/// Cuts a host-supplied value to [`MAX_FIELD_LEN`] bytes (on a char boundary).
pub fn clip(s: &str) -> String {
    if s.len() <= MAX_FIELD_LEN {
        return s.to_owned();
    }
    let mut end = MAX_FIELD_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// RFC 3339 UTC with milliseconds, from Unix milliseconds (civil-from-days, H. Hinnant).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// The open log, positioned to append, with the hash of its last line.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    prev: String,
}

impl AuditLog {
    /// Opens (or creates, 0600 in a 0700 directory) the log and reads its tail to continue the
    /// chain.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io_err = |source| AuditError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            ensure_private_dir(dir).map_err(io_err)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let start = len.saturating_sub(TAIL_LEN);
        file.seek(SeekFrom::Start(start)).map_err(io_err)?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).map_err(io_err)?;
        let torn = !tail.is_empty() && !tail.ends_with(b"\n");
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        let prev = if body.is_empty() && start == 0 {
            GENESIS.to_owned()
        } else {
            match body.iter().rposition(|&b| b == b'\n') {
                Some(i) => line_hash(&body[i + 1..]),
                None if start == 0 => line_hash(body),
                None => {
                    return Err(AuditError::TailTooLong {
                        path: path.to_owned(),
                    });
                }
            }
        };
        if torn {
            // A crash mid-write left half a line. Close it so our lines start on their own;
            // `verify` will still point at the damaged one.
            file.write_all(b"\n").map_err(io_err)?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            prev,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line for `event` (an [`AuditEvent`], or another service's flat struct with
    /// a `service` field) at `time_ms`. One `write` of the whole line to an `O_APPEND` file, so
    /// lines never interleave.
    pub fn append<E: Serialize>(&mut self, event: &E, time_ms: u64) -> Result<(), AuditError> {
        let line = Line {
            time: rfc3339(time_ms),
            event,
            prev: &self.prev,
        };
        let mut bytes = serde_json::to_vec(&line).expect("an audit line always serializes");
        let hash = line_hash(&bytes);
        bytes.push(b'\n');
        self.file
            .write_all(&bytes)
            .map_err(|source| AuditError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.prev = hash;
        Ok(())
    }
}

/// The result of checking a whole log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every line links to the one before it.
    Intact { entries: usize },
    /// Line `line` (1-based) is not valid JSON, or its `prev` does not match.
    Broken { line: usize, why: String },
}

/// Checks the whole chain of the log at `path`. A missing file is an empty, intact log.
pub fn verify(path: &Path) -> Result<Verdict, AuditError> {
    let io_err = |source| AuditError::Io {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Verdict::Intact { entries: 0 }),
        Err(e) => return Err(io_err(e)),
    };
    let mut reader = BufReader::new(file);
    let mut expected = GENESIS.to_owned();
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io_err)? == 0 {
            return Ok(Verdict::Intact { entries: n });
        }
        n += 1;
        let Some(line) = buf.strip_suffix(b"\n") else {
            return Ok(Verdict::Broken {
                line: n,
                why: "the last line is incomplete (no newline)".into(),
            });
        };
        let value: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Verdict::Broken {
                    line: n,
                    why: format!("not a JSON line: {e}"),
                });
            }
        };
        match value.get("prev").and_then(|p| p.as_str()) {
            Some(prev) if prev == expected => {}
            Some(_) => {
                return Ok(Verdict::Broken {
                    line: n,
                    why: "`prev` does not match the line before it (edited, inserted or deleted lines)"
                        .into(),
                });
            }
            None => {
                return Ok(Verdict::Broken {
                    line: n,
                    why: "no `prev` field".into(),
                });
            }
        }
        expected = line_hash(line);
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn tempdir() -> PathBuf {
        crate::files::test_dir("audit")
    }

    fn event(i: usize) -> AuditEvent {
        AuditEvent {
            service: "approval",
            host_id: Some("web-1".into()),
            pam_service: Some("sudo".into()),
            user: Some("alice".into()),
            request_id: Some(format!("r{i}")),
            decision: "approved".into(),
            reason: None,
            ..Default::default()
        }
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn chain_continues_across_reopen_and_verifies() {
        let dir = tempdir();
        let path = dir.join("state/audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        log.append(&event(1), 1).unwrap();
        log.append(&event(2), 2).unwrap();
        drop(log);
        let mut log = AuditLog::open(&path).unwrap();
        log.append(&event(3), 3).unwrap();
        assert_eq!(verify(&path).unwrap(), Verdict::Intact { entries: 3 });
        let text = fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["prev"], GENESIS);
        assert_eq!(first["service"], "approval");
        assert_eq!(first["request_id"], "r1");
        assert_eq!(first["time"], "1970-01-01T00:00:00.001Z");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn detects_an_edited_or_deleted_middle_line() {
        let dir = tempdir();
        let path = dir.join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        for i in 0..4 {
            log.append(&event(i), 10).unwrap();
        }
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        let edited = text.replacen("\"r1\"", "\"r9\"", 1);
        fs::write(&path, edited).unwrap();
        assert!(matches!(
            verify(&path).unwrap(),
            Verdict::Broken { line: 3, .. }
        ));

        let deleted = format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]);
        fs::write(&path, deleted).unwrap();
        assert!(matches!(
            verify(&path).unwrap(),
            Verdict::Broken { line: 2, .. }
        ));

        fs::write(&path, format!("{}\nnot json\n", lines[0])).unwrap();
        assert!(matches!(
            verify(&path).unwrap(),
            Verdict::Broken { line: 2, .. }
        ));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn torn_last_line_is_closed_and_reported() {
        let dir = tempdir();
        let path = dir.join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        log.append(&event(0), 10).unwrap();
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"half").unwrap();
        let mut log = AuditLog::open(&path).unwrap();
        log.append(&event(1), 11).unwrap();
        assert!(matches!(
            verify(&path).unwrap(),
            Verdict::Broken { line: 2, .. }
        ));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn clips_long_values_on_a_char_boundary() {
        let long = "é".repeat(MAX_FIELD_LEN);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_FIELD_LEN + '…'.len_utf8());
        assert_eq!(clip("short"), "short");
    }
}
