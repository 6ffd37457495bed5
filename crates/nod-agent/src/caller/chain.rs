//! Who is asking: the peer from `SO_PEERCRED`, and its ancestors from `/proc`
//! (`ssh ← git ← zsh`).
//!
//! The pid comes from the kernel, never from the message. Everything else is read from `/proc`
//! when the connection is accepted; a process that exits and whose pid is reused before that
//! could be misnamed, so the chain is a description for the person, not an authorization
//! decision. The walk stops at pid 1, at a process of another user (whose details are none of
//! ours to show), or after [`MAX_CHAIN`] links.

use std::fs;
use std::io::Read as _;

use serde::Serialize;

/// Longest process chain shown.
pub const MAX_CHAIN: usize = 8;

/// Longest `/proc/<pid>/cmdline` read, in bytes.
const MAX_CMDLINE: u64 = 64 * 1024;

/// One process of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessLink {
    pub pid: i32,
    /// `/proc/<pid>/comm` (at most 15 bytes, set by the process itself).
    pub comm: String,
    /// `/proc/<pid>/exe`, when readable.
    pub exe: Option<String>,
}

impl ProcessLink {
    /// The short name shown in a chain: the exe's file name, else `comm`.
    pub fn name(&self) -> &str {
        self.exe
            .as_deref()
            .and_then(|e| e.rsplit('/').next())
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.comm)
    }
}

/// What `/proc/<pid>/status` says about a process.
#[derive(Debug, PartialEq, Eq)]
struct Status {
    comm: String,
    ppid: i32,
    uid: u32,
}

fn parse_status(text: &str) -> Option<Status> {
    let mut comm = None;
    let mut ppid = None;
    let mut uid = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Name:") {
            comm = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("PPid:") {
            ppid = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("Uid:") {
            uid = v.split_whitespace().next().and_then(|u| u.parse().ok());
        }
    }
    Some(Status {
        comm: comm?,
        ppid: ppid?,
        uid: uid?,
    })
}

fn status(pid: i32) -> Option<Status> {
    parse_status(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The chain from `pid` up, as far as it belongs to `uid`.
pub fn process_chain(pid: i32, uid: u32) -> Vec<ProcessLink> {
    let mut chain = Vec::new();
    let mut pid = pid;
    while pid > 1 && chain.len() < MAX_CHAIN {
        let Some(st) = status(pid) else { break };
        if st.uid != uid {
            break;
        }
        let exe = fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        chain.push(ProcessLink {
            pid,
            comm: st.comm,
            exe,
        });
        pid = st.ppid;
    }
    chain
}

/// The process's argv, capped; empty when unreadable.
pub fn cmdline(pid: i32) -> Vec<String> {
    let mut bytes = Vec::new();
    if let Ok(f) = fs::File::open(format!("/proc/{pid}/cmdline")) {
        let _ = f.take(MAX_CMDLINE).read_to_end(&mut bytes);
    }
    bytes
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// `ssh ← git ← zsh`.
pub fn describe_chain(chain: &[ProcessLink]) -> String {
    chain
        .iter()
        .map(|l| format!("{} ({})", l.name(), l.pid))
        .collect::<Vec<_>>()
        .join(" ← ")
}

/// Who asks, as far as a grant is concerned: the program and where it runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallerScope {
    pub exe: Option<String>,
    /// Session id (`/proc/<pid>/stat` field 6).
    pub session: Option<i32>,
    /// Controlling terminal device number (field 7); 0 when there is none.
    pub tty: Option<i32>,
}

impl CallerScope {
    /// Read from `/proc` while the caller (kernel pid from `SO_PEERCRED`) still waits on its
    /// connection.
    pub fn of(pid: Option<i32>, exe: Option<String>) -> Self {
        let (session, tty) = pid
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .and_then(|stat| parse_stat(&stat))
            .map_or((None, None), |(s, t)| (Some(s), Some(t)));
        Self { exe, session, tty }
    }

    /// An unknown program matches nothing: without an exe there is no grant to reuse.
    pub fn known(&self) -> bool {
        self.exe.is_some() && self.session.is_some()
    }
}

/// Session id and tty number from a `/proc/<pid>/stat` line. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat(stat: &str) -> Option<(i32, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // state, ppid, pgrp, session, tty_nr
    let session = fields.nth(3)?.parse().ok()?;
    let tty = fields.next()?.parse().ok()?;
    Some((session, tty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let text = "Name:\tssh\nUmask:\t0022\nState:\tS\nPPid:\t41\nUid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(
            parse_status(text),
            Some(Status {
                comm: "ssh".into(),
                ppid: 41,
                uid: 1000
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn own_chain_starts_with_this_process() {
        let me = std::process::id() as i32;
        let chain = process_chain(me, nix::unistd::getuid().as_raw());
        assert_eq!(chain.first().map(|l| l.pid), Some(me));
        assert!(chain.len() <= MAX_CHAIN);
        assert!(chain.iter().all(|l| l.pid > 1));
        assert!(!describe_chain(&chain).is_empty());
    }

    #[test]
    fn chain_of_another_uid_is_empty() {
        let me = std::process::id() as i32;
        let other = nix::unistd::getuid().as_raw().wrapping_add(12345);
        assert!(process_chain(me, other).is_empty());
    }
}
