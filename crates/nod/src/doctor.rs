//! `nod doctor`: the workstation half of docs/troubleshooting.md turned into checks. Each
//! check prints `ok`, `FAIL` (with the fix to apply), `warn` or `skip`; any FAIL makes `nod`
//! exit 1. With `--host DEST` it also measures the clock skew to the host over ssh and runs
//! `nod-helper doctor` there with this agent's key.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nod_agent::keystore::{AGENT_KEY_SEALED, Keystore, WRAP_KEY_FILE};
use nod_agent::pam::hosts::HostsFile;
use nod_agent::paths::Paths;

use crate::pair::shell_quote;

/// Skew above which approvals start to fail (a reply lives 10 s; see troubleshooting.md).
const MAX_SKEW_MS: i64 = 5_000;
/// 2024-01-01T00:00:00Z: any clock before this is certainly wrong.
const PLAUSIBLE_SINCE_S: u64 = 1_704_067_200;

const START_AGENT: &str = "start the agent: `systemctl --user enable --now nod-agent.service` \
                           (packaged unit) or run `nod agent` in a terminal";

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Broken; the string is the fix.
    Fail(String),
    Warn,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    pub message: String,
}

fn ok(m: impl Into<String>) -> Check {
    Check {
        status: Status::Ok,
        message: m.into(),
    }
}
fn fail(m: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        status: Status::Fail(fix.into()),
        message: m.into(),
    }
}
fn warn(m: impl Into<String>) -> Check {
    Check {
        status: Status::Warn,
        message: m.into(),
    }
}
fn skip(m: impl Into<String>) -> Check {
    Check {
        status: Status::Skip,
        message: m.into(),
    }
}

/// Prints the checks; returns how many failed.
pub fn print(checks: &[Check], out: &mut dyn Write) -> usize {
    let mut failed = 0;
    for c in checks {
        let _ = match &c.status {
            Status::Ok => writeln!(out, "ok    {}", c.message),
            Status::Warn => writeln!(out, "warn  {}", c.message),
            Status::Skip => writeln!(out, "skip  {}", c.message),
            Status::Fail(fix) => {
                failed += 1;
                writeln!(out, "FAIL  {}\n      fix: {fix}", c.message)
            }
        };
    }
    failed
}

/// What `nod doctor` was asked to check.
#[derive(Debug, Clone, Default)]
pub struct DoctorArgs {
    /// ssh destination of a host to check too.
    pub host: Option<String>,
    pub ssh_config: Option<std::path::PathBuf>,
    /// The host's nod config (passed to `nod-helper doctor --config`).
    pub host_config: Option<String>,
    /// The helper program on the host.
    pub remote_helper: String,
}

/// Runs `nod doctor [--host DEST]`; returns whether everything passed.
pub fn run(paths: &Paths, args: &DoctorArgs) -> Result<bool> {
    let host = args.host.as_deref();
    let ssh_config = args.ssh_config.as_deref();
    let mut out = std::io::stdout().lock();
    let mut checks = local_checks(paths);
    if let Some(dest) = host {
        checks.push(skew_check(dest, ssh_config));
    }
    let failed = print(&checks, &mut out);
    let summary = |n: usize| match n {
        0 => "all checks passed".to_owned(),
        n => format!("{n} check(s) failed"),
    };
    let Some(dest) = host else {
        let _ = writeln!(out, "{}", summary(failed));
        return Ok(failed == 0);
    };
    let _ = writeln!(out, "workstation: {}", summary(failed));
    let _ = writeln!(out, "--- {dest}: nod-helper doctor (through sudo)");
    let _ = out.flush();
    let remote_ok = remote_doctor(paths, dest, args)?;
    let failed = failed + usize::from(!remote_ok);
    Ok(failed == 0)
}

/// The checks that need nothing but this machine.
pub fn local_checks(paths: &Paths) -> Vec<Check> {
    let mut checks = Vec::new();
    let me = nix::unistd::getuid().as_raw();
    match paths.sockets_dir() {
        Err(e) => checks.push(fail(format!("runtime directory: {e}"), START_AGENT)),
        Ok(dir) => {
            let dir_ok = private_dir_check(dir, me, "socket directory", &mut checks);
            if dir_ok {
                checks.extend(socket_checks(&dir.join("approval.sock"), me, true));
                // The other services' sockets are checked when present (a `nod ssh-agent`
                // drop-in, for one, serves only its own socket elsewhere).
                for name in ["ssh-agent.sock", "secrets.sock"] {
                    let sock = dir.join(name);
                    if sock.exists() {
                        checks.extend(socket_checks(&sock, me, false));
                    }
                }
            }
        }
    }
    checks.push(approver_check(paths));
    checks.push(agent_key_check(paths, me));
    checks.push(at_rest_check(paths));
    checks.push(hosts_check(paths));
    checks.push(clock_check());
    checks
}

/// Whether the running agent can ask anyone: its approvers, from the agent itself (its
/// environment, not this shell's, decides what `auto` found).
fn approver_check(paths: &Paths) -> Check {
    let Ok(socket) = paths.secrets_socket() else {
        return skip("approvers: no runtime directory, so no agent to ask");
    };
    if !socket.exists() {
        return skip("approvers: the agent's secrets socket is absent, so it cannot be asked");
    }
    let status = nod_client::Client::connect(&socket)
        .map_err(anyhow::Error::from)
        .and_then(|mut c| Ok(c.control(nod_client::proto::Control::Status)?));
    let agent = match status {
        Ok(resp) => resp.agent.unwrap_or_default(),
        Err(e) => return warn(format!("approvers: the agent did not answer: {e}")),
    };
    let approvers: Vec<String> = agent["approvers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    format!(
                        "{} ({})",
                        x["name"].as_str().unwrap_or("?"),
                        x["presence"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if approvers.is_empty() {
        return fail(
            "approvers: the agent has none, so nobody is asked: every sudo falls back to the \
             password, confirm keys are refused and `nod register` cannot be approved",
            "start the agent where it can reach you: inside your graphical session (the \
             packaged unit gets the session's bus and display once the desktop has imported \
             them: `systemctl --user import-environment DISPLAY WAYLAND_DISPLAY \
             DBUS_SESSION_BUS_ADDRESS`, then `systemctl --user restart nod-agent`), or run \
             `nod agent` in a terminal, or set [approver] in ~/.config/nod/agent.toml",
        );
    }
    ok(format!("approvers: {}", approvers.join(", then ")))
}

/// A directory that must be ours and 0700. Returns whether it exists.
fn private_dir_check(dir: &Path, me: u32, what: &str, checks: &mut Vec<Check>) -> bool {
    match std::fs::symlink_metadata(dir) {
        Err(_) => {
            checks.push(fail(
                format!(
                    "{what} {} does not exist: the agent is not running",
                    dir.display()
                ),
                START_AGENT,
            ));
            false
        }
        Ok(m) if !m.is_dir() => {
            checks.push(fail(
                format!("{what} {} is not a directory", dir.display()),
                format!("remove it (`rm {}`) and restart the agent", dir.display()),
            ));
            false
        }
        Ok(m) => {
            if m.uid() != me {
                checks.push(fail(
                    format!(
                        "{what} {} is owned by uid {}, not you",
                        dir.display(),
                        m.uid()
                    ),
                    format!(
                        "remove it (`sudo rm -r {}`) and restart the agent",
                        dir.display()
                    ),
                ));
            } else if m.mode() & 0o077 != 0 {
                checks.push(fail(
                    format!(
                        "{what} {} has mode {:04o}; others could reach the sockets",
                        dir.display(),
                        m.mode() & 0o7777
                    ),
                    format!("`chmod 700 {}`", dir.display()),
                ));
            } else {
                checks.push(ok(format!("{what} {} is yours, mode 0700", dir.display())));
            }
            true
        }
    }
}

/// A socket that must be ours, 0600, and (for the approval socket) accept connections.
fn socket_checks(sock: &Path, me: u32, required: bool) -> Vec<Check> {
    let restart = "restart the agent (`systemctl --user restart nod-agent.service`, or stop and \
                   start `nod agent`): it recreates its sockets 0600";
    let meta = match std::fs::symlink_metadata(sock) {
        Ok(m) => m,
        Err(_) if required => {
            return vec![fail(
                format!("no socket at {}: the agent is not running", sock.display()),
                START_AGENT,
            )];
        }
        Err(_) => return vec![],
    };
    if !meta.file_type().is_socket() {
        return vec![fail(
            format!("{} is not a socket", sock.display()),
            format!("`rm {}`, then {restart}", sock.display()),
        )];
    }
    let mut checks = Vec::new();
    if meta.uid() != me {
        checks.push(fail(
            format!("{} is owned by uid {}, not you", sock.display(), meta.uid()),
            restart,
        ));
    } else if meta.mode() & 0o177 != 0 {
        checks.push(fail(
            format!(
                "{} has mode {:04o}, not 0600",
                sock.display(),
                meta.mode() & 0o7777
            ),
            format!("`chmod 600 {}`, or {restart}", sock.display()),
        ));
    } else {
        checks.push(ok(format!("{} is yours, mode 0600", sock.display())));
    }
    match UnixStream::connect(sock) {
        Ok(_) => checks.push(ok(format!(
            "agent is running: {} accepts connections",
            sock.display()
        ))),
        Err(e) => checks.push(fail(
            format!(
                "{} does not accept connections ({e}): a stale socket, the agent is not running",
                sock.display()
            ),
            START_AGENT,
        )),
    }
    checks
}

/// A private file of ours: present, regular, owned by us, no group/other bits. `None` if fine.
fn private_file_problem(path: &Path, what: &str, me: u32) -> Option<Check> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Some(fail(
            format!("no {what} at {}", path.display()),
            "run `nod agent-key` (it creates the agent key and the keystore's wrapping key), \
             then pin it on each host with `nod pair`",
        )),
        Ok(m) if !m.is_file() => Some(fail(
            format!("{what} {} is not a regular file", path.display()),
            "move it away and run `nod agent-key`; re-pair every host afterwards",
        )),
        Ok(m) if m.uid() != me => Some(fail(
            format!(
                "{what} {} is owned by uid {}, not you",
                path.display(),
                m.uid()
            ),
            format!("`sudo chown $(id -u) {}`", path.display()),
        )),
        Ok(m) if m.mode() & 0o077 != 0 => Some(fail(
            format!(
                "{what} {} has mode {:04o}; others may read the agent key",
                path.display(),
                m.mode() & 0o7777
            ),
            format!(
                "`chmod 600 {}`; if others could read it, make a new key and re-pair every host",
                path.display()
            ),
        )),
        Ok(_) => None,
    }
}

/// The sealed agent key and the wrapping key that opens it. Only reads: a missing key is
/// reported, not created, and a plaintext key of an earlier version is left for the agent
/// to seal.
fn agent_key_check(paths: &Paths, me: u32) -> Check {
    let keystore = Keystore::open(paths);
    let legacy = keystore.agent_key_path();
    if !keystore.path(AGENT_KEY_SEALED).exists() && legacy.exists() {
        return private_file_problem(&legacy, "plaintext agent key", me).unwrap_or_else(|| {
            warn(format!(
                "the agent key is still in plaintext at {}; the next `nod agent-key` or \
                 `nod agent` seals it",
                legacy.display()
            ))
        });
    }
    let sealed = keystore.path(AGENT_KEY_SEALED);
    let wrap = paths.config_dir.join(WRAP_KEY_FILE);
    if let Some(problem) = private_file_problem(&sealed, "agent key", me)
        .or_else(|| private_file_problem(&wrap, "keystore wrapping key", me))
    {
        return problem;
    }
    match keystore.agent_key() {
        Ok(k) => ok(format!(
            "agent key {} sealed at {} (0600)",
            k.key_id(),
            sealed.display()
        )),
        Err(e) if e.is_locked() => warn(format!("agent key: {e}")),
        Err(e) => fail(
            format!("agent key: {e}"),
            "fix the file as the message says",
        ),
    }
}

/// How the keys are protected at rest; plain about the file protector.
fn at_rest_check(paths: &Paths) -> Check {
    use nod_agent::keystore::Protector;
    let keystore = Keystore::open(paths);
    match keystore.protector() {
        Err(e) => fail(
            format!("keystore protector: {e}"),
            "fix the file as the message says",
        ),
        Ok(None) => warn("no keystore yet; choose how it is protected with `nod keys init`"),
        Ok(Some(Protector::File(_))) => warn(format!(
            "keys at rest: {} is the wrapping key in a plain file, so the disk gives the keys \
             away: anyone with a copy of it (a stolen laptop, a backup, a synced home) opens \
             every key and secret; run `nod keys protect tpm` or `nod keys protect passphrase`",
            keystore.protector_path().display()
        )),
        Ok(Some(p)) => {
            let cached = if p.needs_secret() {
                match keystore.is_cached() {
                    Ok(true) => "; unlocked (cached in the kernel keyring)",
                    _ => "; locked: run `nod keys unlock`",
                }
            } else {
                ""
            };
            ok(format!(
                "keys at rest: protector {}{cached}",
                crate::keys::describe(Some(&p))
            ))
        }
    }
}

fn hosts_check(paths: &Paths) -> Check {
    let path = paths.hosts_file();
    match HostsFile::load(&path) {
        Err(e) => fail(
            format!("host allowlist: {e}"),
            format!(
                "fix or remove {} and add the hosts again with `nod pair`",
                path.display()
            ),
        ),
        Ok(hosts) if hosts.is_empty() => fail(
            format!("host allowlist {} lists no hosts", path.display()),
            "pair a host: `nod pair <ssh-destination>` (or `nod hosts add <host_id> <pubkey-file>`)",
        ),
        Ok(hosts) => ok(format!(
            "host allowlist lists {}",
            hosts
                .entries()
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn clock_check() -> Check {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if secs < PLAUSIBLE_SINCE_S {
        return fail(
            "clock: the system time is before 2024",
            "enable NTP (`sudo timedatectl set-ntp true`, or chrony)",
        );
    }
    match Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .stderr(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "yes" => {
            ok("clock: synchronised (NTP)")
        }
        Ok(o) if o.status.success() => warn(
            "clock: not NTP-synchronised; skew over ~10 s against a host breaks approvals \
             (`sudo timedatectl set-ntp true`; `nod doctor --host DEST` measures the skew)",
        ),
        _ => skip("clock: plausible; timedatectl cannot tell whether it is synchronised"),
    }
}

fn ssh(ssh_config: Option<&Path>) -> Command {
    let mut cmd = Command::new("ssh");
    if let Some(cfg) = ssh_config {
        cmd.arg("-F").arg(cfg);
    }
    cmd.arg("-o").arg("ClearAllForwardings=yes");
    cmd
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The host's clock against ours, read over ssh and corrected by half the round trip.
fn skew_check(dest: &str, ssh_config: Option<&Path>) -> Check {
    let start = Instant::now();
    let before = now_ms();
    let out = ssh(ssh_config)
        .args(["-o", "BatchMode=yes", "--", dest, "date +%s%3N"])
        .stdin(Stdio::null())
        .output();
    let rtt = start.elapsed().as_millis() as i64;
    let remote = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().parse::<i64>(),
        Ok(o) => {
            return fail(
                format!(
                    "cannot reach {dest} with ssh: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                format!("make `ssh {dest} true` work without prompts first (keys, known_hosts)"),
            );
        }
        Err(e) => return fail(format!("cannot run ssh: {e}"), "install openssh-client"),
    };
    let Ok(remote) = remote else {
        return skip(format!(
            "clock skew to {dest}: its `date` does not print milliseconds"
        ));
    };
    // The host read its clock somewhere between `before` and `before + rtt`.
    let after = before + rtt;
    let skew = skew_bounds(remote, before, after);
    if skew.abs() > MAX_SKEW_MS {
        fail(
            format!(
                "clock skew to {dest}: at least {skew} ms (host minus workstation; measured \
                 over a {rtt} ms round trip)"
            ),
            "enable NTP on both machines (`sudo timedatectl set-ntp true`, or chrony)",
        )
    } else {
        ok(format!(
            "clock skew to {dest}: {skew} ms at most (measured over a {rtt} ms round trip)"
        ))
    }
}

/// The smallest skew consistent with a remote reading taken between `before` and `after`.
fn skew_bounds(remote: i64, before: i64, after: i64) -> i64 {
    if remote < before {
        remote - before
    } else if remote > after {
        remote - after
    } else {
        0
    }
}

/// `sudo nod-helper doctor --agent-key <our key>` on the host; its report goes to our stdout.
/// The session keeps the ssh config's forwards, so the helper sees the forwarded socket that
/// a real login would create.
fn remote_doctor(paths: &Paths, dest: &str, args: &DoctorArgs) -> Result<bool> {
    let key = Keystore::open(paths)
        .agent_key()
        .context("cannot load the agent key")?;
    let hex = hex_lower(key.public_key().as_bytes());
    let interactive = std::io::stdin().is_terminal();
    let sudo = if interactive { "sudo" } else { "sudo -n" };
    let mut remote = format!(
        "{sudo} {} doctor --agent-key {}",
        shell_quote(&args.remote_helper),
        shell_quote(&hex)
    );
    if let Some(config) = &args.host_config {
        remote.push_str(&format!(" --config {}", shell_quote(config)));
    }
    let mut cmd = Command::new("ssh");
    if let Some(cfg) = &args.ssh_config {
        cmd.arg("-F").arg(cfg);
    }
    if interactive {
        cmd.arg("-t");
    } else {
        cmd.args(["-o", "BatchMode=yes"]);
    }
    let status = cmd
        .arg("--")
        .arg(dest)
        .arg(remote)
        .status()
        .context("cannot run ssh")?;
    Ok(status.success())
}

pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_zero_inside_the_round_trip_and_the_distance_outside() {
        assert_eq!(skew_bounds(1050, 1000, 1100), 0);
        assert_eq!(skew_bounds(900, 1000, 1100), -100);
        assert_eq!(skew_bounds(7100, 1000, 1100), 6000);
    }
}
