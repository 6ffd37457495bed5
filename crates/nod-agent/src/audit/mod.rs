//! The audit log, `$XDG_STATE_HOME/nod/audit.jsonl`: one JSON object per line, one line per
//! decision and per refusal, for every service (docs/design.md "Audit").
//!
//! Each line's `prev` is the hex SHA-256 of the previous line's bytes (without its newline);
//! the first line has 64 zeros. Editing, inserting or deleting a line breaks the chain at the
//! next line, which [`verify`] reports. Cutting lines off the *end* leaves a valid chain: a
//! hash chain alone cannot tell a truncated log from a shorter one.
//!
//! Several writers share one chain: `nod agent`, `nod ssh-agent` and the CLI of one user may
//! append at once. An append takes an exclusive `flock` on the file and chains from the last
//! line that is actually on disk (re-read whenever the file is not as this writer left it), so
//! the chain stays valid however the writers interleave. A line is one `write` to an `O_APPEND`
//! file, so lines never interleave either.
//!
//! Durability: a decision a person made, and every refusal, is fsynced before it is acted on
//! ([`Durability::Synced`]). A decision the policy made alone (a registered binary reading its
//! secret, a signature under a remembered grant) is written before it is acted on and fsynced
//! within [`BATCH_INTERVAL`] ([`Durability::Batched`]): the line is in the kernel once the
//! answer leaves, so a crash of the agent loses nothing; only a crash of the whole machine in
//! that window can.
//!
//! Lines never hold secret values or signed payload bytes, only who asked for what and the
//! outcome. Peer-supplied strings are cut to [`MAX_FIELD_LEN`] so one request cannot bloat the
//! log.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::approvers::Presence;
use crate::files::ensure_private_dir;
use crate::lock;
use crate::log::event;

/// `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest value of a peer-supplied field, in bytes.
pub const MAX_FIELD_LEN: usize = 256;

/// Longest time a [`Durability::Batched`] line waits for its fsync.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(50);

/// How much of the end of the file is read to find the last line.
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

/// Which service a line is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// Remote approval of PAM logins and sudo on paired hosts.
    #[default]
    Pam,
    /// The SSH agent.
    Ssh,
    /// The secrets broker.
    Secrets,
}

/// What one line records: a decision or a refusal. Fields a service does not have are left
/// out of the line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    pub service: Service,
    /// What was asked: `sudo`-style PAM service for remote approval is in `pam_service`; here
    /// `sign`, `session-cert`, `read`, `write`, `register`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `approved`, `denied`, `cancelled`, `unavailable`, `failed`, or `refused` (no prompt).
    pub decision: &'static str,
    /// Why, in a short machine-readable word: `unknown_host`, `replay`, `rate_limited`,
    /// `withdrawn`, `policy`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How the person proved presence, when a person answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<Presence>,
    /// Which approver asked (`tty`, `desktop`, `command`, …), or `policy` when none had to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver: Option<&'static str>,
    /// The local caller, from the kernel: pid, `/proc/<pid>/exe`, and the binary's hash where
    /// the service checks it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_exe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_hash: Option<String>,
    /// Remote approval: the host and what it asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pam_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// SSH agent: the key's comment and `SHA256:` fingerprint, and where it is used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Secrets broker: the keychain service and the targets named (never values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets_service: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a AuditEvent,
    prev: &'a str,
}

/// Whether an append returns only once the line is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsynced before `append` returns.
    Synced,
    /// Written before `append` returns; fsynced within [`BATCH_INTERVAL`] by
    /// [`AuditLog::flush_periodically`].
    Batched,
}

/// Cuts a peer-supplied value to [`MAX_FIELD_LEN`] bytes (on a char boundary).
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

/// Where this writer left the file: if the file is still like that under the lock, no other
/// writer appended since, and `prev` is still the hash of the last line.
#[derive(Debug, Default)]
struct Tip {
    dev: u64,
    ino: u64,
    len: u64,
    prev: String,
}

#[derive(Debug, Default)]
struct Writer {
    tip: Option<Tip>,
    /// The file last appended to, kept for the batched fsync.
    last: Option<File>,
}

/// The log, shared by every service of one process.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    writer: Mutex<Writer>,
    /// Lines written but not yet fsynced.
    dirty: AtomicBool,
}

impl AuditLog {
    /// Makes sure the log can be written: creates it (0600, in a 0700 directory) if missing,
    /// and reads its tail once, so a log that cannot be continued stops the agent at start
    /// rather than fail every decision later.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        if let Some(dir) = path.parent() {
            ensure_private_dir(dir).map_err(|source| AuditError::Io {
                path: path.to_owned(),
                source,
            })?;
        }
        let log = Self {
            path: path.to_owned(),
            writer: Mutex::new(Writer::default()),
            dirty: AtomicBool::new(false),
        };
        let mut writer = lock(&log.writer);
        let file = log.lock_file()?;
        writer.tip = Some(log.tip_of(&file, &None)?);
        drop(writer);
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_err(&self, source: io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Opens the file (creating it) and takes the exclusive lock that every writer takes.
    /// Opened per append, so a log moved away (after `nod audit verify` reported damage) is
    /// continued in a new file at the same path.
    fn lock_file(&self) -> Result<Flock<File>, AuditError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&self.path)
            .map_err(|e| self.io_err(e))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| self.io_err(errno.into()))
    }

    /// The tip of the locked file: ours, if the file is as we left it, else read from the
    /// tail on disk. A torn last line (a writer killed mid-write) is closed with a newline so
    /// the next line starts on its own; `verify` still points at the damaged one.
    fn tip_of(&self, file: &File, ours: &Option<Tip>) -> Result<Tip, AuditError> {
        let meta = file.metadata().map_err(|e| self.io_err(e))?;
        if let Some(tip) = ours
            && (tip.dev, tip.ino, tip.len) == (meta.dev(), meta.ino(), meta.len())
        {
            return Ok(Tip {
                prev: tip.prev.clone(),
                ..*tip
            });
        }
        let len = meta.len();
        let start = len.saturating_sub(TAIL_LEN);
        let mut reader = file;
        reader
            .seek(SeekFrom::Start(start))
            .map_err(|e| self.io_err(e))?;
        let mut tail = Vec::new();
        reader.read_to_end(&mut tail).map_err(|e| self.io_err(e))?;
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
                        path: self.path.clone(),
                    });
                }
            }
        };
        let mut len = len;
        if torn {
            let mut w = file;
            w.write_all(b"\n").map_err(|e| self.io_err(e))?;
            len += 1;
        }
        Ok(Tip {
            dev: meta.dev(),
            ino: meta.ino(),
            len,
            prev,
        })
    }

    /// Appends one line for `event` at `time_ms`, chained from the last line on disk.
    pub fn append(
        &self,
        event: &AuditEvent,
        time_ms: u64,
        durability: Durability,
    ) -> Result<(), AuditError> {
        let mut writer = lock(&self.writer);
        let file = self.lock_file()?;
        let tip = self.tip_of(&file, &writer.tip)?;
        let line = Line {
            time: rfc3339(time_ms),
            event,
            prev: &tip.prev,
        };
        let mut bytes = serde_json::to_vec(&line).expect("an audit line always serializes");
        let hash = line_hash(&bytes);
        bytes.push(b'\n');
        let mut w: &File = &file;
        w.write_all(&bytes).map_err(|e| self.io_err(e))?;
        writer.tip = Some(Tip {
            len: tip.len + bytes.len() as u64,
            prev: hash,
            ..tip
        });
        match durability {
            Durability::Synced => {
                file.sync_data().map_err(|e| self.io_err(e))?;
            }
            Durability::Batched => self.dirty.store(true, Ordering::Release),
        }
        // Keep a handle on the file for the batched fsync; dropping the lock releases it.
        let file = file
            .unlock()
            .map_err(|(_, errno)| self.io_err(errno.into()))?;
        writer.last = Some(file);
        Ok(())
    }

    /// fsyncs lines written with [`Durability::Batched`], if any.
    pub fn flush(&self) -> Result<(), AuditError> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let file = lock(&self.writer)
            .last
            .as_ref()
            .map(File::try_clone)
            .transpose()
            .map_err(|e| self.io_err(e))?;
        if let Some(file) = file {
            file.sync_data().map_err(|e| self.io_err(e))?;
        }
        Ok(())
    }

    /// Runs for the life of the agent: fsyncs batched lines every [`BATCH_INTERVAL`], off the
    /// runtime thread.
    pub async fn flush_periodically(self: std::sync::Arc<Self>) {
        loop {
            tokio::time::sleep(BATCH_INTERVAL).await;
            if !self.dirty.load(Ordering::Acquire) {
                continue;
            }
            let log = std::sync::Arc::clone(&self);
            match tokio::task::spawn_blocking(move || log.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => event!("{e}"),
                Err(e) => event!("audit log: fsync task failed: {e}"),
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            event!("{e}");
        }
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
    use std::sync::Arc;

    use super::*;

    fn tempdir() -> PathBuf {
        crate::files::test_dir("audit")
    }

    fn event(i: usize) -> AuditEvent {
        AuditEvent {
            service: Service::Pam,
            host_id: Some("web-1".into()),
            pam_service: Some("sudo".into()),
            user: Some("alice".into()),
            request_id: Some(format!("r{i}")),
            decision: "approved",
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
        let log = AuditLog::open(&path).unwrap();
        log.append(&event(1), 1, Durability::Synced).unwrap();
        log.append(&event(2), 2, Durability::Batched).unwrap();
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        log.append(&event(3), 3, Durability::Synced).unwrap();
        assert_eq!(verify(&path).unwrap(), Verdict::Intact { entries: 3 });
        let text = fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["prev"], GENESIS);
        assert_eq!(first["service"], "pam");
        assert_eq!(first["request_id"], "r1");
        assert_eq!(first["time"], "1970-01-01T00:00:00.001Z");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn writers_that_interleave_keep_one_chain() {
        // Two logs on one file stand for two processes (`nod agent` and `nod ssh-agent`): each
        // chains from what is on disk, not from its own last line.
        let dir = tempdir();
        let path = dir.join("audit.jsonl");
        let a = AuditLog::open(&path).unwrap();
        let b = AuditLog::open(&path).unwrap();
        for i in 0..6 {
            let log = if i % 2 == 0 { &a } else { &b };
            log.append(&event(i), 10, Durability::Synced).unwrap();
        }
        assert_eq!(verify(&path).unwrap(), Verdict::Intact { entries: 6 });
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_writers_on_threads_keep_one_chain() {
        let dir = tempdir();
        let path = dir.join("audit.jsonl");
        let logs: Vec<Arc<AuditLog>> = (0..4)
            .map(|_| Arc::new(AuditLog::open(&path).unwrap()))
            .collect();
        let threads: Vec<_> = logs
            .iter()
            .map(|log| {
                let log = Arc::clone(log);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        log.append(&event(i), 10, Durability::Batched).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(verify(&path).unwrap(), Verdict::Intact { entries: 200 });
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_log_moved_away_is_continued_in_a_new_file() {
        let dir = tempdir();
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.append(&event(0), 10, Durability::Synced).unwrap();
        fs::rename(&path, dir.join("audit.old")).unwrap();
        log.append(&event(1), 11, Durability::Synced).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["prev"], GENESIS);
        assert_eq!(verify(&path).unwrap(), Verdict::Intact { entries: 1 });
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn detects_an_edited_or_deleted_middle_line() {
        let dir = tempdir();
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        for i in 0..4 {
            log.append(&event(i), 10, Durability::Synced).unwrap();
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
        let log = AuditLog::open(&path).unwrap();
        log.append(&event(0), 10, Durability::Synced).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"half").unwrap();
        log.append(&event(1), 11, Durability::Synced).unwrap();
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
