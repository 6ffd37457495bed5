//! `nod doctor`: the workstation half of docs/troubleshooting.md turned into checks. Each
//! check prints `ok`, `FAIL` (with the fix to apply), `warn` or `skip`; any FAIL makes `nod`
//! exit 1. With `--host DEST` it also measures the clock skew to the host over ssh, compares
//! the host's key with the one pinned here, and runs `nod-helper doctor` there with this
//! agent's key. None of its ssh sessions forwards anything (see [`crate::remote`]), so an open
//! login's forwarded socket stays as it is.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nod_agent::keystore::{AGENT_KEY_SEALED, Keystore, WRAP_KEY_FILE};
use nod_agent::pam::hosts::HostsFile;
use nod_agent::paths::Paths;
use nod_proto::{KeyId, parse_public_key_file};

use crate::remote::{self, HostConfig, hex_lower, shell_quote};

/// The host config `nod-helper` reads unless told otherwise.
const DEFAULT_HOST_CONFIG: &str = "/etc/nod/config.toml";

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
    /// `/etc/pam.d/<name>` on the host to check for the pam_nod.so line.
    pub pam_service: Option<String>,
}

/// Runs `nod doctor [--host DEST]`; returns whether everything passed.
pub fn run(paths: &Paths, args: &DoctorArgs) -> Result<bool> {
    let host = args.host.as_deref();
    let ssh_config = args.ssh_config.as_deref();
    let mut out = std::io::stdout().lock();
    let mut checks = local_checks(paths);
    if let Some(dest) = host {
        checks.push(skew_check(dest, ssh_config));
        let host_config = args.host_config.as_deref().unwrap_or(DEFAULT_HOST_CONFIG);
        checks.push(host_key_check(paths, dest, ssh_config, host_config));
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
    let chosen_by = agent["approvers_chosen_by"].as_str().unwrap_or_default();
    if approvers.is_empty() {
        let found = match chosen_by.strip_prefix("auto (") {
            Some(found) => format!(" (auto found {}", found),
            None => String::new(),
        };
        return fail(
            format!(
                "approvers: the agent has none{found}, so nobody is asked: every sudo falls \
                 back to the password, confirm keys are refused and `nod register` cannot be \
                 approved"
            ),
            nod_agent::daemon::NO_APPROVER_FIX,
        );
    }
    let how = if chosen_by.is_empty() {
        String::new()
    } else {
        format!(", chosen by {chosen_by}")
    };
    let line = format!("approvers: {}{how}", approvers.join(", then "));
    if approvers.iter().any(|a| a.starts_with("desktop ")) {
        return match desktop_server() {
            Ok(bus) => ok(format!(
                "{line}; a notification server with buttons is on the session bus {bus}"
            )),
            Err(why) if approvers.len() > 1 => warn(format!(
                "{line}; but {why}, so the desktop approver cannot reach you and the next one is \
                 asked (log in to your desktop, or set [approver] in agent.toml)"
            )),
            Err(why) => fail(
                format!("{line}; but {why}, so nobody can be asked"),
                format!(
                    "log in to your graphical session (a desktop whose notifications show \
                     buttons: GNOME, KDE Plasma, dunst, mako), or {}",
                    nod_agent::daemon::NO_APPROVER_FIX
                ),
            ),
        };
    }
    ok(line)
}

/// The notification server the desktop approver would use, looked for on this shell's session
/// bus (the same user's bus as the agent's, in a session with one).
fn desktop_server() -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot look for a notification server ({e})"))?;
    rt.block_on(nod_agent::approvers::desktop::check_server())
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Readings of the host's clock taken over one session.
const SKEW_SAMPLES: usize = 3;

/// The host's clock against ours. The session logs in first (whatever prompt or approval the
/// login takes happens then), and only then is the clock read, a few times, each bracketed by
/// our own clock; the tightest bracket bounds the skew.
fn skew_check(dest: &str, ssh_config: Option<&Path>) -> Check {
    let script = "echo ready; while read -r _; do date +%s%3N; done";
    let child = remote::ssh(ssh_config)
        .args(["-o", "BatchMode=yes", "--", dest])
        .arg(format!("sh -c {}", shell_quote(script)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot run ssh: {e}"), "install openssh-client"),
    };
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return fail("cannot talk to ssh", "install openssh-client");
    };
    let mut lines = BufReader::new(stdout).lines();
    let ready = matches!(lines.next(), Some(Ok(l)) if l == "ready");
    let mut best: Option<(i64, i64, i64)> = None;
    let mut unreadable = false;
    if ready {
        for _ in 0..SKEW_SAMPLES {
            let before = now_ms();
            if stdin.write_all(b"\n").and_then(|()| stdin.flush()).is_err() {
                break;
            }
            let Some(Ok(line)) = lines.next() else { break };
            let after = now_ms();
            let Ok(remote) = line.trim().parse::<i64>() else {
                unreadable = true;
                break;
            };
            if best.is_none_or(|(b, a, _)| after - before < a - b) {
                best = Some((before, after, remote));
            }
        }
    }
    drop(stdin);
    drop(lines);
    let out = child.wait_with_output();
    if !ready {
        let err = out
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_default();
        return fail(
            format!("cannot reach {dest} with ssh: {err}"),
            format!("make `ssh {dest} true` work without prompts first (keys, known_hosts)"),
        );
    }
    match best {
        Some((before, after, remote)) => skew_verdict(dest, before, after, remote),
        None if unreadable => skip(format!(
            "clock skew to {dest}: its `date` does not print milliseconds"
        )),
        None => warn(format!(
            "clock skew to {dest}: the session ended before the host's clock could be read"
        )),
    }
}

/// A reading `remote` of the host's clock taken between our `before` and `after` puts the
/// skew (host minus workstation) between `remote - after` and `remote - before`.
fn skew_verdict(dest: &str, before: i64, after: i64, remote: i64) -> Check {
    let (low, high) = (remote - after, remote - before);
    let rtt = after - before;
    let fix = "enable NTP on both machines (`sudo timedatectl set-ntp true`, or chrony)";
    if low > MAX_SKEW_MS || high < -MAX_SKEW_MS {
        let (least, side) = if low > 0 {
            (low, "ahead")
        } else {
            (-high, "behind")
        };
        fail(
            format!(
                "clock skew to {dest}: the host's clock is at least {least} ms {side} \
                 (measured over a {rtt} ms round trip), more than the {MAX_SKEW_MS} ms \
                 approvals tolerate"
            ),
            fix,
        )
    } else if low.abs().max(high.abs()) <= MAX_SKEW_MS {
        ok(format!(
            "clock skew to {dest}: between {low} and {high} ms (host minus workstation, \
             measured over a {rtt} ms round trip)"
        ))
    } else {
        warn(format!(
            "clock skew to {dest}: between {low} and {high} ms; the {rtt} ms round trip is too \
             long to tell whether it is under {MAX_SKEW_MS} ms ({fix})"
        ))
    }
}

/// The host's key as the host has it now, against the key pinned for its `host_id` here. A
/// host key regenerated on the host makes the agent refuse every request it signs, and sudo
/// there silently falls back to the password.
fn host_key_check(paths: &Paths, dest: &str, ssh_config: Option<&Path>, config: &str) -> Check {
    let read = |script: String| remote::read(ssh_config, dest, &script);
    let host = match read(format!("cat -- {}", shell_quote(config))).and_then(|t: String| {
        toml::from_str::<HostConfig>(&t).map_err(|e| anyhow::anyhow!("{}", e.message()))
    }) {
        Ok(h) => h,
        Err(e) => {
            return fail(
                format!(
                    "host key: cannot read the nod config {config} on {dest}: {}",
                    nod_agent::error_chain(e.as_ref())
                ),
                "install nod-helper there and write its config as docs/setup.md step 6 \
                 describes (or pass --host-config)",
            );
        }
    };
    let pub_path = host.public_key_path();
    let public = match read(format!("cat -- {}", shell_quote(&pub_path)))
        .and_then(|t: String| parse_public_key_file(&t).map_err(anyhow::Error::from))
    {
        Ok(k) => k,
        Err(e) => {
            return fail(
                format!(
                    "host key: cannot read {dest}:{pub_path}: {}",
                    nod_agent::error_chain(e.as_ref())
                ),
                "create the host key there with `sudo nod-helper gen-key` (docs/setup.md step 5)",
            );
        }
    };
    let now = KeyId::fingerprint(&public.key);
    let hosts_path = paths.hosts_file();
    let hosts = match HostsFile::load(&hosts_path) {
        Ok(h) => h,
        Err(e) => {
            return fail(
                format!("host allowlist: {e}"),
                format!("fix or remove {}", hosts_path.display()),
            );
        }
    };
    let id = &host.host_id;
    let Some(entry) = hosts.entries().find(|e| e.id == *id) else {
        return fail(
            format!(
                "host {id} ({dest}) is not in the allowlist {}: the agent refuses its \
                 requests, so sudo there falls back to the password",
                hosts_path.display()
            ),
            format!("run `nod pair {dest}`"),
        );
    };
    if entry.public_key_hex != hex_lower(public.key.as_bytes()) {
        let pinned = hosts.get(id).map_or_else(
            || entry.public_key_hex.clone(),
            |k| KeyId::fingerprint(&k.key).to_string(),
        );
        return fail(
            format!(
                "host key of {id} changed: {dest}:{pub_path} is {now}, but this agent pins \
                 {pinned}, so it refuses the host's requests and sudo there falls back to the \
                 password"
            ),
            format!(
                "if the key was regenerated on purpose (`nod-helper gen-key --force`), run \
                 `nod pair {dest} --replace-host-key`; if not, find out who changed it before \
                 trusting the host"
            ),
        );
    }
    // With no id configured, the helper claims its key's fingerprint.
    let claims = host
        .pinned_key_id(&public)
        .unwrap_or_else(|| now.to_string());
    if let Some(pinned) = &entry.key_id
        && claims != *pinned
    {
        return fail(
            format!(
                "host {id} is pinned here with key id {pinned}, but it now claims {claims}, so \
                 the agent refuses its requests"
            ),
            format!("run `nod pair {dest}` (the key itself is unchanged)"),
        );
    }
    ok(format!(
        "host key of {id}: {dest} has the key pinned here ({now})"
    ))
}

/// `sudo nod-helper doctor --agent-key <our key>` on the host; its report goes to our stdout.
/// The session forwards nothing: the helper checks the forwarded socket of the login that is
/// open (if any), which a forward of this session's own would have replaced and left stale.
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
    if let Some(service) = &args.pam_service {
        remote.push_str(&format!(" --pam-service {}", shell_quote(service)));
    }
    let mut cmd = remote::ssh(args.ssh_config.as_deref());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_bounded_by_the_round_trip_and_named_as_a_range() {
        // Read inside our bracket: the skew lies within the round trip, either way.
        let c = skew_verdict("h", 1000, 1100, 1050);
        assert_eq!(c.status, Status::Ok);
        assert!(c.message.contains("between -50 and 50 ms"), "{}", c.message);
        // 6 s ahead, whatever the round trip: at least 6000 ms.
        let c = skew_verdict("h", 1000, 1100, 7100);
        assert!(matches!(c.status, Status::Fail(_)), "{c:?}");
        assert!(
            c.message.contains("at least 6000 ms") && c.message.contains("ahead"),
            "{}",
            c.message
        );
        let c = skew_verdict("h", 10_000, 10_100, 1000);
        assert!(
            c.message.contains("at least 9000 ms") && c.message.contains("behind"),
            "{}",
            c.message
        );
        // A 12 s round trip cannot tell 0 from 6 s: neither ok nor a failure.
        let c = skew_verdict("h", 0, 12_000, 6000);
        assert_eq!(c.status, Status::Warn, "{c:?}");
    }
}
