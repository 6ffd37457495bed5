//! `nod-helper doctor`: the host half of docs/troubleshooting.md turned into checks. Each check
//! prints `ok`, `FAIL` (with the fix to apply), `warn` or `skip`; any FAIL makes the exit code 1.
//!
//! It only reads: config and keys (through the same trusted-path loader as `request`), the
//! forwarded socket's owner and type, `sshd -T`, and one `/etc/pam.d` file (read as libpam
//! reads it, its `pam_nod.so` arguments parsed by the module's own parser). It connects to the
//! forwarded socket to see whether anything is behind it, but sends nothing, so it never makes
//! anyone's prompt appear.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use nod_proto::{KeyId, PinnedKey, parse_public_key_file};

use crate::config::{Config, PamUser, own_key_pinned};
use crate::error::{HelperError, one_line};
use crate::pam_file::{self, PamLine};
use crate::socket::{Liveness, check_socket, probe};

/// The PAM line docs/setup.md recommends; `doctor --pam-service` looks for it.
pub const RECOMMENDED_CONTROL: &str = "[success=done authinfo_unavail=ignore default=die]";

/// What `doctor` was asked to look at.
#[derive(Debug, Clone, Default)]
pub struct DoctorArgs {
    pub config: PathBuf,
    /// The user whose forwarded socket is checked; default `$SUDO_USER` under sudo, else the
    /// current user.
    pub user: Option<String>,
    /// The workstation's `nod agent-key` output: a file, or the `public_key_hex` value.
    pub agent_key: Option<String>,
    /// `/etc/pam.d/<name>` to look for the pam_nod.so line in.
    pub pam_service: Option<String>,
    /// sshd config to evaluate instead of the system one (`sshd -T -f`).
    pub sshd_config: Option<PathBuf>,
}

/// Where PAM service files live.
const PAM_DIR: &str = "/etc/pam.d";

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Broken; the string is the fix.
    Fail(String),
    /// Worth knowing, not fatal.
    Warn,
    /// Not checked (and why is in the message).
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    pub message: String,
}

impl Check {
    fn ok(message: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            message: message.into(),
        }
    }
    fn fail(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Fail(fix.into()),
            message: message.into(),
        }
    }
    fn warn(message: impl Into<String>) -> Self {
        Self {
            status: Status::Warn,
            message: message.into(),
        }
    }
    fn skip(message: impl Into<String>) -> Self {
        Self {
            status: Status::Skip,
            message: message.into(),
        }
    }

    /// A helper error's text is "what — what to do"; split it into message and fix.
    fn from_error(context: &str, e: &HelperError) -> Self {
        let text = one_line(&e.to_string());
        match text.split_once(" — ") {
            Some((what, fix)) => Self::fail(format!("{context}: {what}"), fix),
            None if context == "config" => Self::fail(
                format!("{context}: {text}"),
                "create /etc/nod as docs/setup.md steps 5-6 describe (root-owned, 0755; host key \
                 0600; config 0644), starting from /usr/share/nod/examples/config.toml.sample",
            ),
            None => Self::fail(
                format!("{context}: {text}"),
                "see docs/troubleshooting.md for this message",
            ),
        }
    }
}

/// Runs every check, writes the report to `out`, and returns the exit code (0, or 1 on FAIL).
pub fn run(args: &DoctorArgs, out: &mut dyn Write) -> u8 {
    let checks = checks(args);
    let mut failed = 0;
    for c in &checks {
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
    if failed == 0 {
        let _ = writeln!(out, "all checks passed");
        0
    } else {
        let _ = writeln!(out, "{failed} check(s) failed");
        1
    }
}

/// The checks, in the order docs/troubleshooting.md walks them.
pub fn checks(args: &DoctorArgs) -> Vec<Check> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        // The host key, the config's owner checks and `sshd -T` are root's: as anyone else
        // every check below would fail for that reason alone and point the wrong way.
        return vec![Check::fail(
            format!(
                "doctor runs as uid {euid}, not root: the host key is readable by root only, \
                 so nothing was checked"
            ),
            "run it as root: `sudo nod-helper doctor` (with the same options)",
        )];
    }
    let mut checks = Vec::new();
    let mut problems = Vec::new();
    let config = Config::load(&args.config, &mut problems);
    problems.extend(config.as_ref().and_then(own_key_pinned));
    if problems.is_empty() {
        checks.push(Check::ok(format!(
            "config {} and its keys are root-owned, safe and valid",
            args.config.display()
        )));
    }
    for p in &problems {
        checks.push(Check::from_error("config", p));
    }

    let user = match args.user.as_deref().map(str::to_owned).or_else(sudo_user) {
        Some(name) => PamUser::lookup(&name),
        None => PamUser::current(),
    };
    match (&config, &user) {
        (Some(config), Ok(user)) => checks.push(socket_check(config, user)),
        (_, Err(e)) => checks.push(Check::from_error("user", e)),
        (None, Ok(_)) => checks.push(Check::skip(
            "forwarded socket: not checked, the config did not load",
        )),
    }

    checks.extend(sshd_checks(args.sshd_config.as_deref(), user.as_ref().ok()));

    match (&args.agent_key, &config) {
        (None, _) => checks.push(Check::skip(
            "pinned agent key: pass --agent-key with the workstation's `nod agent-key` output \
             (a file or the public_key_hex value) to compare",
        )),
        (Some(_), None) => checks.push(Check::skip(
            "pinned agent key: not compared, the config did not load",
        )),
        (Some(given), Some(config)) => checks.push(agent_key_check(given, config)),
    }

    checks.push(clock_check());

    if let Some(service) = &args.pam_service {
        checks.extend(pam_checks(Path::new(PAM_DIR), service, &args.config));
    } else {
        checks.push(Check::skip(
            "PAM line: pass --pam-service NAME to check /etc/pam.d/NAME",
        ));
    }
    checks
}

fn sudo_user() -> Option<String> {
    if !nix::unistd::getuid().is_root() {
        return None;
    }
    std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty())
}

fn socket_check(config: &Config, user: &PamUser) -> Check {
    let socket = config.socket_path(user);
    match check_socket(&socket, user) {
        Ok(()) => liveness_check(&socket, user),
        Err(HelperError::NoSocket { .. }) => Check::fail(
            format!(
                "no forwarded socket at {} for {}",
                socket.display(),
                user.name
            ),
            format!(
                "log in from the workstation with the RemoteForward block that `nod pair` writes \
                 (RemoteForward {} <agent approval.sock>) and keep that session open; \
                 check `nod doctor` on the workstation",
                socket.display()
            ),
        ),
        Err(e @ HelperError::UnsafeSocket { .. }) => {
            let what = one_line(&e.to_string());
            let what = what.split(" — ").next().unwrap_or(&what).to_owned();
            Check::fail(
                what,
                format!(
                    "remove it (`sudo rm {}`) and log in again as {} with the RemoteForward; sshd \
                     creates the socket as that user",
                    socket.display(),
                    user.name
                ),
            )
        }
        Err(e) => Check::from_error("forwarded socket", &e),
    }
}

/// How long the probe waits for the far end to hang up: one round trip to the workstation.
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);

/// A socket of the right owner and type can still be dead: what is behind it decides.
fn liveness_check(socket: &Path, user: &PamUser) -> Check {
    let reconnect = "log in again with the RemoteForward block (`ssh <this host>`) and keep \
                     that session open (sshd replaces the stale file if StreamLocalBindUnlink \
                     is yes, checked below); a second ssh that forwards the same path takes it \
                     over and leaves it stale on exit, so run such sessions with `-o \
                     ClearAllForwardings=yes`";
    match probe(socket, user, PROBE_WAIT) {
        Ok(Liveness::Live) => Check::ok(format!(
            "forwarded socket {} is owned by {} and an open `ssh -R` session serves it",
            socket.display(),
            user.name
        )),
        Ok(Liveness::Refused) => Check::fail(
            format!(
                "forwarded socket {} is stale: nothing listens on it (connection refused), so \
                 sudo falls back to the password",
                socket.display()
            ),
            reconnect,
        ),
        Ok(Liveness::ClosedAtOnce) => Check::fail(
            format!(
                "forwarded socket {}: the `ssh -R` session is open, but nothing answers at the \
                 workstation end (it hung up at once)",
                socket.display()
            ),
            "start the agent on the workstation (`systemctl --user start nod-agent.service`, \
             or `nod agent`); `nod doctor` there says why it is not running",
        ),
        Ok(Liveness::Talks) => Check::fail(
            format!(
                "forwarded socket {}: what answers sent data before any request, which `nod \
                 agent` never does",
                socket.display()
            ),
            "forward the agent's approval socket ($XDG_RUNTIME_DIR/nod/approval.sock), not \
             another socket, in the RemoteForward line",
        ),
        Err(e) => Check::from_error("forwarded socket", &e),
    }
}

/// `sshd -T` for the user: stream-local forwarding allowed, stale sockets unlinked.
fn sshd_checks(config: Option<&Path>, user: Option<&PamUser>) -> Vec<Check> {
    let Some(sshd) = ["/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
    else {
        return vec![Check::skip("sshd: not installed here, nothing to check")];
    };
    let mut cmd = Command::new(sshd);
    cmd.arg("-T");
    if let Some(config) = config {
        cmd.arg("-f").arg(config);
    }
    if let Some(user) = user {
        // Evaluate Match blocks as they apply to this user's login.
        cmd.arg("-C")
            .arg(format!("user={},host=localhost,addr=127.0.0.1", user.name));
    }
    let out = match cmd.output() {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            return vec![Check::fail(
                format!(
                    "sshd -T failed: {}",
                    one_line(String::from_utf8_lossy(&out.stderr).trim())
                ),
                "run doctor as root (sshd -T reads the host keys), and fix what `sudo sshd -t` reports",
            )];
        }
        Err(e) => {
            return vec![Check::fail(
                format!("cannot run {}: {e}", sshd.display()),
                "run doctor as root",
            )];
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let value = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.trim().to_owned())
    };
    let dropin = "add it to /etc/ssh/sshd_config.d/nod.conf (and out of any Match block that \
                  overrides it), then `sudo sshd -t && sudo systemctl reload ssh`";
    let mut checks = Vec::new();
    let allow = value("allowstreamlocalforwarding").unwrap_or_else(|| "yes".into());
    let disable = value("disableforwarding").unwrap_or_else(|| "no".into());
    if disable == "yes" {
        checks.push(Check::fail(
            "sshd: DisableForwarding yes turns off socket forwarding",
            format!("set DisableForwarding no; {dropin}"),
        ));
    } else if matches!(allow.as_str(), "yes" | "all" | "remote") {
        checks.push(Check::ok(format!(
            "sshd: AllowStreamLocalForwarding {allow}"
        )));
    } else {
        checks.push(Check::fail(
            format!("sshd: AllowStreamLocalForwarding {allow} refuses the RemoteForward socket"),
            format!("set AllowStreamLocalForwarding yes; {dropin}"),
        ));
    }
    match value("streamlocalbindunlink").as_deref() {
        Some("yes") => checks.push(Check::ok("sshd: StreamLocalBindUnlink yes")),
        other => checks.push(Check::fail(
            format!(
                "sshd: StreamLocalBindUnlink {} leaves stale sockets, so the next login's forward fails",
                other.unwrap_or("no")
            ),
            format!("set StreamLocalBindUnlink yes; {dropin}"),
        )),
    }
    checks
}

/// Reads `--agent-key`: a file, or the bare `public_key_hex` value.
fn parse_agent_key(given: &str) -> Result<PinnedKey, String> {
    let text = if Path::new(given).is_file() {
        std::fs::read_to_string(given).map_err(|e| format!("cannot read {given}: {e}"))?
    } else if given.len() == 64 && given.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("public_key_hex={given}\n")
    } else {
        given.to_owned()
    };
    parse_public_key_file(&text).map_err(|e| e.to_string())
}

fn agent_key_check(given: &str, config: &Config) -> Check {
    let wanted = match parse_agent_key(given) {
        Ok(k) => k,
        Err(e) => {
            return Check::fail(
                format!("--agent-key is not an agent public key: {e}"),
                "pass the file `nod agent-key` prints, or its public_key_hex value",
            );
        }
    };
    // The id the agent claims: its file's `key_id=` line, else its fingerprint (what
    // `nod agent` always claims).
    let claims = wanted
        .key_id
        .clone()
        .unwrap_or_else(|| KeyId::fingerprint(&wanted.key));
    let same_key: Vec<&PinnedKey> = config
        .agent_keys
        .iter()
        .filter(|p| p.key == wanted.key)
        .collect();
    match same_key.iter().find(|p| p.admits(claims.as_str())) {
        Some(p) => Check::ok(format!(
            "the workstation's agent key {} is pinned",
            p.describe()
        )),
        None if !same_key.is_empty() => Check::fail(
            format!(
                "the workstation's agent key is pinned as {}, but the agent claims key id {claims}",
                same_key
                    .iter()
                    .map(|p| p.describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "remove the key_id= line from the pinned .pub file in /etc/nod/agents.d \
             (or run `nod pair` again from the workstation)",
        ),
        None => Check::fail(
            format!(
                "the workstation's agent key {} is not pinned here; this host pins {}, so the \
                 agent's replies are refused (exit 30) and sudo fails",
                KeyId::fingerprint(&wanted.key),
                if config.agent_keys.is_empty() {
                    "no agent key".to_owned()
                } else {
                    config
                        .agent_keys
                        .iter()
                        .map(PinnedKey::describe)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            "run `nod pair <this host>` again on the workstation, or install its `nod \
             agent-key` output as /etc/nod/agents.d/<name>.pub (root, 0644)",
        ),
    }
}

/// The host's own clock: plausible, and synchronised if systemd can tell. The skew against
/// the workstation is measured by `nod doctor --host`, which sees both clocks.
fn clock_check() -> Check {
    clock_sanity(SystemTime::now())
}

/// 2024-01-01T00:00:00Z: any clock before this is certainly wrong.
const PLAUSIBLE_SINCE_S: u64 = 1_704_067_200;

pub(crate) fn clock_sanity(now: SystemTime) -> Check {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if secs < PLAUSIBLE_SINCE_S {
        return Check::fail(
            format!("clock: the system time ({secs} s since 1970) is before 2024"),
            "enable NTP (`sudo timedatectl set-ntp true`, or chrony) and check `timedatectl`",
        );
    }
    match Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .output()
    {
        Ok(out) if out.status.success() => match String::from_utf8_lossy(&out.stdout).trim() {
            "yes" => Check::ok("clock: synchronised (NTP)"),
            _ => Check::warn(
                "clock: not NTP-synchronised; skew over ~10 s against the workstation breaks \
                     approvals (`nod doctor --host` measures it; `sudo timedatectl set-ntp true`)",
            ),
        },
        _ => Check::skip("clock: plausible; timedatectl cannot tell whether it is synchronised"),
    }
}

/// Looks for the pam_nod.so auth line in `<pam_dir>/<service>`, read as libpam reads it, and
/// judges it as the module would: its control, its arguments (by the module's own parser),
/// the config its `conf=` names and the helper its `helper=` names, and the module file.
fn pam_checks(pam_dir: &Path, service: &str, config: &Path) -> Vec<Check> {
    let recommended = format!(
        "auth {RECOMMENDED_CONTROL} pam_nod.so conf={}",
        config.display()
    );
    if service.is_empty() || service.contains('/') {
        return vec![Check::fail(
            format!("PAM service {service:?} is not a service name"),
            "pass the file name under /etc/pam.d, e.g. --pam-service nod-test",
        )];
    }
    let path = pam_dir.join(service);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            return vec![Check::fail(
                format!("PAM service {}: cannot read it ({e})", path.display()),
                format!(
                    "create it from /usr/share/nod/examples/pam.d/nod-test; its first auth line: {recommended}"
                ),
            )];
        }
    };
    let lines = pam_file::parse(&text);
    let Some(line) = lines.iter().find(|l| l.is_auth() && l.is_pam_nod()) else {
        return vec![Check::fail(
            format!(
                "PAM service {}: no auth line with pam_nod.so",
                path.display()
            ),
            format!("add this line above the password modules: {recommended}"),
        )];
    };
    let at = format!("PAM service {}, line {}", path.display(), line.number);
    let mut checks = Vec::new();
    if same_control(&line.control, RECOMMENDED_CONTROL) {
        checks.push(Check::ok(format!(
            "{at}: pam_nod.so with the recommended control"
        )));
    } else {
        checks.push(Check::fail(
            format!("{at}: unexpected pam_nod.so control: {}", line.text),
            format!(
                "use exactly this control so only approvals succeed and only a missing agent \
                 falls back to the password: {recommended}"
            ),
        ));
    }
    checks.extend(pam_args_checks(&at, line, config));
    checks.push(module_file_check(&line.module));
    checks
}

/// The module arguments, as `pam_nod.so` parses them, and what they name.
fn pam_args_checks(at: &str, line: &PamLine, checked_config: &Path) -> Vec<Check> {
    let args = match pam_nod_conf::parse_args(line.args.iter().map(|a| a.as_bytes())) {
        Ok(args) => args,
        Err(e) => {
            let text = e.to_string();
            let (what, fix) = text.split_once(" — ").unwrap_or((&text, ""));
            return vec![Check::fail(
                format!(
                    "{at}: {what}, so pam_nod.so refuses every authentication (sudo is locked)"
                ),
                fix,
            )];
        }
    };
    let mut checks = Vec::new();
    if args.conf != checked_config {
        let mut problems = Vec::new();
        let loaded = Config::load(&args.conf, &mut problems);
        problems.extend(loaded.as_ref().and_then(own_key_pinned));
        if problems.is_empty() {
            checks.push(Check::ok(format!(
                "{at}: conf={} is safe and valid (the checks above used {})",
                args.conf.display(),
                checked_config.display()
            )));
        }
        for p in &problems {
            let missing = matches!(p, HelperError::UnsafePath(u)
                if u.path == args.conf && u.reason == nod_fscheck::Reason::NotFound);
            let mut c = if missing {
                Check::fail(
                    format!("{at}: conf={} does not exist", args.conf.display()),
                    format!(
                        "correct conf= in that line (the config checked above is {})",
                        checked_config.display()
                    ),
                )
            } else {
                Check::from_error(&format!("{at}: conf={}", args.conf.display()), p)
            };
            c.message
                .push_str(", so every authentication through this line fails (exit 31)");
            checks.push(c);
        }
    }
    match pam_nod_conf::open_helper(&args.helper) {
        Ok(_) => checks.push(Check::ok(format!(
            "{at}: helper {} is root-owned and executable",
            args.helper.display()
        ))),
        Err(e) => {
            let (what, fix) = e.split_once(" — ").unwrap_or((
                &e,
                "install the nod-helper \
                package, or point helper= at its binary",
            ));
            checks.push(Check::fail(
                format!("{at}: {what}, so pam_nod.so refuses every authentication"),
                fix,
            ));
        }
    }
    checks
}

fn same_control(a: &str, b: &str) -> bool {
    let set = |s: &str| {
        let mut v: Vec<String> = s
            .trim_matches(|c| c == '[' || c == ']')
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    set(a) == set(b)
}

/// The PAM module file: an absolute path as given, or a bare name in the distro's directory.
fn module_file_check(module: &str) -> Check {
    let found = if module.starts_with('/') {
        Path::new(module).is_file().then(|| PathBuf::from(module))
    } else {
        pam_module_dirs()
            .into_iter()
            .map(|d| d.join(module))
            .find(|p| p.is_file())
    };
    match found {
        Some(p) => Check::ok(format!("PAM module {}", p.display())),
        None => Check::fail(
            format!("PAM module {module} is not installed"),
            "install the nod-helper package (it puts pam_nod.so in the distribution's PAM \
             directory, e.g. /usr/lib/x86_64-linux-gnu/security or /usr/lib64/security)",
        ),
    }
}

/// Where distributions keep PAM modules: `/{usr/,}lib/<multiarch>/security`,
/// `/{usr/,}lib64/security`, `/{usr/,}lib/security`.
fn pam_module_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for lib in ["/usr/lib", "/lib"] {
        if let Ok(entries) = std::fs::read_dir(lib) {
            for e in entries.flatten() {
                let security = e.path().join("security");
                if security.is_dir() {
                    dirs.push(security);
                }
            }
        }
    }
    for d in [
        "/usr/lib64/security",
        "/lib64/security",
        "/usr/lib/security",
        "/lib/security",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_order_does_not_matter_but_values_do() {
        assert!(same_control(
            "[default=die success=done authinfo_unavail=ignore]",
            RECOMMENDED_CONTROL
        ));
        assert!(!same_control(
            "[success=done authinfo_unavail=ignore default=ignore]",
            RECOMMENDED_CONTROL
        ));
        assert!(!same_control("sufficient", RECOMMENDED_CONTROL));
    }

    #[test]
    fn a_clock_before_2024_fails() {
        let c = clock_sanity(UNIX_EPOCH);
        assert!(matches!(c.status, Status::Fail(_)), "{c:?}");
    }

    #[test]
    fn agent_key_accepts_bare_hex() {
        let hex = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        let k = parse_agent_key(hex).unwrap();
        assert_eq!(hex::encode(k.key.as_bytes()), hex);
    }
}
