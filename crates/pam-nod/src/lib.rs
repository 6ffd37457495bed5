//! `pam_nod.so`: a PAM `auth` module that asks `nod-helper` for a remote approval.
//!
//! The module itself does no crypto and reads no config: it collects the PAM items (user,
//! service, ruser, rhost, tty and, under sudo, the command line), runs
//! `nod-helper request ...` and maps its exit code to a PAM result. Spec: docs/design.md §1,
//! "PAM module" and the `nod-helper` exit code table. Everything that can go wrong is decided by the
//! helper, in a process of its own, so a bug there cannot crash `sudo` or `sshd`.
//!
//! Threat model: the module runs inside a root process on behalf of a user who may control
//! the environment, the open fds, the signal state and the PAM items of that process.
//! - The helper is opened by fd walk from `/` (nod-fscheck): root-owned, not writable by group
//!   or others, no symlinks on the path, and the checked fd is the fd that is executed
//!   (`fexecve`), so the binary cannot be swapped between check and exec.
//! - The helper gets a fixed environment, `/dev/null` on stdin/stdout/stderr, no other fds,
//!   default signal dispositions and an empty signal mask.
//! - Item values are passed as `--flag=value`, so a value starting with `-` cannot be read as
//!   a flag.
//! - The wait has a deadline; a helper that hangs is killed and counts as "unavailable".
//! - It fails closed: anything unexpected, including a typo in the module arguments, is
//!   `PAM_AUTH_ERR`, never a silent success or a silent fallback.
//! - It never panics across `extern "C"` (pam-bindings catches panics, and this crate denies
//!   `unwrap`/`expect`/`panic`).
//!
//! Recommended line, first in the `auth` stack:
//!
//! ```text
//! auth [success=done authinfo_unavail=ignore default=die] pam_nod.so conf=/etc/nod/config.toml
//! ```
//!
//! An approval ends the stack (`done`); "unavailable", "cancelled" and "failed"
//! (`PAM_AUTHINFO_UNAVAIL`) fall through to the next module, e.g. the password; a denial or
//! any error stops it (`die`).
//!
//! Module arguments: `conf=PATH` (default `/etc/nod/config.toml`), `helper=PATH` (default
//! `/usr/bin/nod-helper`), `timeout_ms=N` (1..=300000, default 30000), `debug`. An unknown,
//! repeated or malformed argument is logged and makes authentication fail with
//! `PAM_AUTH_ERR`: a typo must not quietly change what the line means.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod spawn;

use std::ffi::{CStr, CString, OsStr};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use libc::{c_char, c_int};
use pam::constants::{PamFlag, PamResultCode};
use pam::items::{RHost, RUser, Service, Tty};
use pam::module::{PamHandle, PamHooks};

pub use spawn::Outcome;

pub use pam_nod_conf::{
    ArgError, Args, DEFAULT_CONF, DEFAULT_HELPER, DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS,
};

/// Extra time given to the helper beyond its own deadline before it is killed, so the helper's
/// own timeout (which maps to "unavailable" with a clean exit) normally fires first.
pub const GRACE_MS: u64 = 1_000;
/// Cap on `--sudo-command`, in bytes.
pub const SUDO_COMMAND_MAX: usize = 1024;
/// The whole environment of the helper.
pub const HELPER_PATH_ENV: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// Parses the module arguments as PAM passes them, with the parser `nod-helper doctor` uses
/// too (crate `pam-nod-conf`). Every argument must be known, and given at most once.
pub fn parse_args(args: &[&CStr]) -> Result<Args, ArgError> {
    pam_nod_conf::parse_args(args.iter().map(|a| a.to_bytes()))
}

/// What the helper is asked about. Empty items are treated as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub user: Vec<u8>,
    pub service: Option<Vec<u8>>,
    pub ruser: Option<Vec<u8>>,
    pub rhost: Option<Vec<u8>>,
    pub tty: Option<Vec<u8>>,
    pub sudo_command: Option<String>,
}

/// The helper's argv, argv[0] included. Values use `--flag=value` so that a value beginning
/// with `-` (an rhost or ruser chosen by the caller) cannot be parsed as a flag.
pub fn helper_argv(args: &Args, req: &Request) -> Vec<Vec<u8>> {
    fn flag(name: &str, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(name.len() + 1 + value.len());
        v.extend_from_slice(name.as_bytes());
        v.push(b'=');
        v.extend_from_slice(value);
        v
    }
    let mut argv = vec![
        args.helper.as_os_str().as_bytes().to_vec(),
        b"request".to_vec(),
        flag("--config", args.conf.as_os_str().as_bytes()),
        flag("--user", &req.user),
    ];
    let optional: [(&str, Option<&[u8]>); 5] = [
        ("--service", req.service.as_deref()),
        ("--ruser", req.ruser.as_deref()),
        ("--rhost", req.rhost.as_deref()),
        ("--tty", req.tty.as_deref()),
        (
            "--sudo-command",
            req.sudo_command.as_deref().map(str::as_bytes),
        ),
    ];
    for (name, value) in optional {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            argv.push(flag(name, value));
        }
    }
    argv.push(flag("--timeout-ms", args.timeout_ms.to_string().as_bytes()));
    argv
}

/// Turns the raw bytes of `/proc/self/cmdline` into the `--sudo-command` value: arguments
/// joined by spaces, control characters (which could forge lines in the approver's prompt)
/// shown as `?`, invalid UTF-8 replaced, at most [`SUDO_COMMAND_MAX`] bytes.
pub fn format_cmdline(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len().min(SUDO_COMMAND_MAX));
    for c in text.chars() {
        let c = match c {
            '\0' => ' ',
            c if c.is_control() => '?',
            c => c,
        };
        if out.len() + c.len_utf8() > SUDO_COMMAND_MAX {
            break;
        }
        out.push(c);
    }
    out
}

/// Whether a `/proc/self/exe` target is sudo (`sudo`, `sudoedit`, `sudo-rs`, ...).
pub fn is_sudo_exe(exe: &Path) -> bool {
    exe.file_name()
        .is_some_and(|n| n.as_bytes().starts_with(b"sudo"))
}

/// The command line of the calling sudo, if the calling process is sudo.
fn sudo_command() -> Option<String> {
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    if !is_sudo_exe(&exe) {
        return None;
    }
    let mut raw = Vec::new();
    // Four times the cap leaves room for multi-byte characters without reading a huge argv.
    std::fs::File::open("/proc/self/cmdline")
        .ok()?
        .take(4 * SUDO_COMMAND_MAX as u64)
        .read_to_end(&mut raw)
        .ok()?;
    Some(format_cmdline(&raw)).filter(|s| !s.is_empty())
}

/// The single place where an outcome becomes a PAM result.
pub fn pam_result(outcome: &Outcome) -> PamResultCode {
    match outcome {
        Outcome::Exited(0) => PamResultCode::PAM_SUCCESS,
        // unavailable / cancelled / failed: let the next module (the password) decide.
        Outcome::Exited(10..=12) => PamResultCode::PAM_AUTHINFO_UNAVAIL,
        // denied, bad signature, unsafe config, protocol error, usage error, exec failure (127).
        Outcome::Exited(_) => PamResultCode::PAM_AUTH_ERR,
        // The helper never answered within its own deadline plus grace: same as unavailable.
        Outcome::TimedOut => PamResultCode::PAM_AUTHINFO_UNAVAIL,
        Outcome::Signaled(_)
        | Outcome::BadArgs
        | Outcome::NoUser
        | Outcome::HelperUnsafe
        | Outcome::SpawnFailed => PamResultCode::PAM_AUTH_ERR,
    }
}

/// The syslog priority at which an outcome is logged even without `debug`, if any.
fn always_log_priority(outcome: &Outcome) -> Option<c_int> {
    match outcome {
        Outcome::Exited(0 | 10 | 11 | 12 | 20) => None,
        Outcome::TimedOut => Some(libc::LOG_WARNING),
        Outcome::Exited(_)
        | Outcome::Signaled(_)
        | Outcome::BadArgs
        | Outcome::NoUser
        | Outcome::HelperUnsafe
        | Outcome::SpawnFailed => Some(libc::LOG_ERR),
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Exited(127) => {
            "helper exited with code 127 (it could not be executed — is it an ELF binary \
             on a filesystem mounted without noexec?)"
                .to_owned()
        }
        Outcome::Exited(c) => format!("helper exited with code {c}"),
        Outcome::Signaled(s) => format!("helper was killed by signal {s}"),
        Outcome::TimedOut => "helper did not finish before the deadline and was killed".to_owned(),
        Outcome::BadArgs => "bad module arguments".to_owned(),
        Outcome::NoUser => "no PAM user".to_owned(),
        Outcome::HelperUnsafe => "helper refused as unsafe".to_owned(),
        Outcome::SpawnFailed => "helper could not be started".to_owned(),
    }
}

#[link(name = "pam")]
unsafe extern "C" {
    /// Linux-PAM's `pam_syslog(3)`: logs to `LOG_AUTHPRIV` with a `pam_nod(service:auth):`
    /// prefix, without calling `openlog`, so the host program's own syslog ident is untouched.
    fn pam_syslog(pamh: *const PamHandle, priority: c_int, fmt: *const c_char, ...);
}

fn log(pamh: &PamHandle, priority: c_int, msg: &str) {
    let Ok(msg) = CString::new(msg.replace('\0', "?")) else {
        return;
    };
    // SAFETY: `pamh` is the live handle PAM passed to this hook; the format is the constant
    // "%s" and its one argument is a NUL-terminated string that outlives the call.
    unsafe { pam_syslog(pamh, priority, c"%s".as_ptr(), msg.as_ptr()) };
}

fn cstr_item(value: Option<&CStr>) -> Option<Vec<u8>> {
    value
        .map(CStr::to_bytes)
        .filter(|b| !b.is_empty())
        .map(<[u8]>::to_vec)
}

fn authenticate(pamh: &mut PamHandle, args: &[&CStr]) -> Outcome {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            log(pamh, libc::LOG_ERR, &e.to_string());
            return Outcome::BadArgs;
        }
    };
    let user = match pamh.get_user(None) {
        Ok(u) if !u.is_empty() => u,
        _ => {
            log(pamh, libc::LOG_ERR, "no PAM user to ask an approval for");
            return Outcome::NoUser;
        }
    };
    let req = Request {
        user: user.into_bytes(),
        service: cstr_item(pamh.get_item::<Service>().ok().flatten().map(|v| v.0)),
        ruser: cstr_item(pamh.get_item::<RUser>().ok().flatten().map(|v| v.0)),
        rhost: cstr_item(pamh.get_item::<RHost>().ok().flatten().map(|v| v.0)),
        tty: cstr_item(pamh.get_item::<Tty>().ok().flatten().map(|v| v.0)),
        sudo_command: sudo_command(),
    };
    let helper = match pam_nod_conf::open_helper(&args.helper) {
        Ok(f) => f,
        Err(msg) => {
            log(pamh, libc::LOG_ERR, &msg);
            return Outcome::HelperUnsafe;
        }
    };
    let argv = helper_argv(&args, &req);
    if args.debug {
        let shown: Vec<String> = argv
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        log(pamh, libc::LOG_DEBUG, &format!("running {shown:?}"));
    }
    let wait = Duration::from_millis(u64::from(args.timeout_ms) + GRACE_MS);
    match spawn::run(
        &helper,
        &argv,
        &[OsStr::new(HELPER_PATH_ENV).as_bytes()],
        wait,
    ) {
        Ok(outcome) => {
            let msg = format!("{} → {:?}", describe(&outcome), pam_result(&outcome));
            if let Some(priority) = always_log_priority(&outcome) {
                log(pamh, priority, &msg);
            } else if args.debug {
                log(pamh, libc::LOG_DEBUG, &msg);
            }
            outcome
        }
        Err(e) => {
            log(
                pamh,
                libc::LOG_ERR,
                &format!("could not run the helper: {e}"),
            );
            Outcome::SpawnFailed
        }
    }
}

/// The PAM module.
#[derive(Debug)]
pub struct PamNod;

pam::pam_hooks!(PamNod);

impl PamHooks for PamNod {
    fn sm_authenticate(pamh: &mut PamHandle, args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        pam_result(&authenticate(pamh, &args))
    }

    /// There are no credentials to set, but `pam_setcred` replays the chain that
    /// `pam_authenticate` took through the `auth` stack. After an approval (`success=done`)
    /// that chain is this module alone; answering `PAM_IGNORE` here would leave libpam with
    /// no answer, and `pam_setcred` would fail (sudo then refuses to run the command).
    fn sm_setcred(_pamh: &mut PamHandle, _args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        PamResultCode::PAM_SUCCESS
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, ArgError> {
        let owned: Vec<CString> = args.iter().map(|a| CString::new(*a).unwrap()).collect();
        let refs: Vec<&CStr> = owned.iter().map(CString::as_c_str).collect();
        parse_args(&refs)
    }

    #[test]
    fn module_arguments_from_pam_are_parsed_by_the_shared_parser() {
        let a = parse(&["conf=/etc/nod/other.toml", "timeout_ms=5000", "debug"]).unwrap();
        assert_eq!(a.conf, Path::new("/etc/nod/other.toml"));
        assert_eq!((a.timeout_ms, a.debug), (5000, true));
        assert!(matches!(parse(&["debg"]), Err(ArgError::Unknown(_))));
        let arg = CString::new(vec![b'c', b'o', b'n', b'f', b'=', b'/', 0xff]).unwrap();
        assert_eq!(parse_args(&[&arg]).unwrap_err(), ArgError::NotUtf8);
    }

    fn strs(argv: &[Vec<u8>]) -> Vec<&str> {
        argv.iter()
            .map(|a| std::str::from_utf8(a).unwrap())
            .collect()
    }

    #[test]
    fn argv_has_all_present_items_as_flag_equals_value() {
        let args = parse(&["conf=/etc/nod/c.toml", "helper=/usr/bin/nod-helper"]).unwrap();
        let req = Request {
            user: b"alice".to_vec(),
            service: Some(b"sudo".to_vec()),
            ruser: Some(b"-bob".to_vec()),
            rhost: Some(b"host.example".to_vec()),
            tty: Some(b"/dev/pts/3".to_vec()),
            sudo_command: Some("sudo ls -la".into()),
        };
        assert_eq!(
            strs(&helper_argv(&args, &req)),
            [
                "/usr/bin/nod-helper",
                "request",
                "--config=/etc/nod/c.toml",
                "--user=alice",
                "--service=sudo",
                "--ruser=-bob",
                "--rhost=host.example",
                "--tty=/dev/pts/3",
                "--sudo-command=sudo ls -la",
                "--timeout-ms=30000",
            ]
        );
    }

    #[test]
    fn argv_omits_absent_and_empty_items() {
        let args = parse(&["timeout_ms=1500"]).unwrap();
        let req = Request {
            user: b"alice".to_vec(),
            service: None,
            ruser: Some(Vec::new()),
            rhost: None,
            tty: None,
            sudo_command: Some(String::new()),
        };
        assert_eq!(
            strs(&helper_argv(&args, &req)),
            [
                "/usr/bin/nod-helper",
                "request",
                "--config=/etc/nod/config.toml",
                "--user=alice",
                "--timeout-ms=1500",
            ]
        );
    }

    #[test]
    fn cmdline_joins_arguments_with_spaces() {
        assert_eq!(
            format_cmdline(b"sudo\0ls\0-la\0/root\0"),
            "sudo ls -la /root"
        );
        assert_eq!(format_cmdline(b"sudo\0-i"), "sudo -i");
        assert_eq!(format_cmdline(b"sudo\0echo\0\0"), "sudo echo ");
        assert_eq!(format_cmdline(b""), "");
    }

    #[test]
    fn cmdline_control_characters_cannot_forge_prompt_lines() {
        assert_eq!(
            format_cmdline(b"sudo\0sh\0-c\0echo hi\napproved: yes\x1b[2J\0"),
            "sudo sh -c echo hi?approved: yes?[2J"
        );
    }

    #[test]
    fn cmdline_invalid_utf8_is_replaced() {
        assert_eq!(
            format_cmdline(b"sudo\0cat\0\xff\xfe\0"),
            "sudo cat \u{fffd}\u{fffd}"
        );
        assert_eq!(format_cmdline("sudo\0é".as_bytes()), "sudo é");
    }

    #[test]
    fn cmdline_is_capped_at_1024_bytes_on_a_char_boundary() {
        let mut raw = b"sudo\0echo\0".to_vec();
        raw.extend(std::iter::repeat_n(b'x', 5000));
        let s = format_cmdline(&raw);
        assert_eq!(s.len(), SUDO_COMMAND_MAX);
        assert!(s.starts_with("sudo echo xxx"));

        // 1021 ASCII bytes then a 3-byte char would make 1024; a 4th byte must not split one.
        let mut raw = vec![b'a'; 1022];
        raw.extend("€€".as_bytes());
        let s = format_cmdline(&raw);
        assert_eq!(s.len(), 1022);
        assert!(s.chars().all(|c| c == 'a'));
        // A char cut off by the 4 KiB read becomes U+FFFD, which is also dropped by the cap.
        let s = format_cmdline(&"é".repeat(3000).as_bytes()[..4095]);
        assert_eq!(s.len(), SUDO_COMMAND_MAX);
        assert!(s.chars().all(|c| c == 'é'));
    }

    #[test]
    fn sudo_is_recognised_by_executable_name() {
        assert!(is_sudo_exe(Path::new("/usr/bin/sudo")));
        assert!(is_sudo_exe(Path::new("/usr/bin/sudoedit")));
        assert!(is_sudo_exe(Path::new("/usr/bin/sudo-rs")));
        assert!(!is_sudo_exe(Path::new("/usr/bin/pamtester")));
        assert!(!is_sudo_exe(Path::new("/usr/sbin/sshd")));
        assert!(!is_sudo_exe(Path::new("/home/sudo/bin/su")));
    }

    /// Every `Outcome` variant with the result it must map to. The `match` below has no
    /// wildcard, so adding a variant without a row here does not compile.
    fn expected_results() -> Vec<(Outcome, PamResultCode)> {
        use PamResultCode::*;
        let rows = vec![
            (Outcome::Exited(0), PAM_SUCCESS),
            (Outcome::Exited(10), PAM_AUTHINFO_UNAVAIL),
            (Outcome::Exited(11), PAM_AUTHINFO_UNAVAIL),
            (Outcome::Exited(12), PAM_AUTHINFO_UNAVAIL),
            (Outcome::Exited(1), PAM_AUTH_ERR),
            (Outcome::Exited(2), PAM_AUTH_ERR),
            (Outcome::Exited(9), PAM_AUTH_ERR),
            (Outcome::Exited(13), PAM_AUTH_ERR),
            (Outcome::Exited(20), PAM_AUTH_ERR),
            (Outcome::Exited(30), PAM_AUTH_ERR),
            (Outcome::Exited(31), PAM_AUTH_ERR),
            (Outcome::Exited(32), PAM_AUTH_ERR),
            (Outcome::Exited(127), PAM_AUTH_ERR),
            (Outcome::Exited(255), PAM_AUTH_ERR),
            (Outcome::Signaled(libc::SIGKILL), PAM_AUTH_ERR),
            (Outcome::Signaled(libc::SIGSEGV), PAM_AUTH_ERR),
            (Outcome::TimedOut, PAM_AUTHINFO_UNAVAIL),
            (Outcome::BadArgs, PAM_AUTH_ERR),
            (Outcome::NoUser, PAM_AUTH_ERR),
            (Outcome::HelperUnsafe, PAM_AUTH_ERR),
            (Outcome::SpawnFailed, PAM_AUTH_ERR),
        ];
        for (o, _) in &rows {
            match o {
                Outcome::Exited(_)
                | Outcome::Signaled(_)
                | Outcome::TimedOut
                | Outcome::BadArgs
                | Outcome::NoUser
                | Outcome::HelperUnsafe
                | Outcome::SpawnFailed => {}
            }
        }
        rows
    }

    #[test]
    fn every_outcome_maps_to_the_documented_pam_result() {
        for (outcome, want) in expected_results() {
            assert_eq!(pam_result(&outcome), want, "{outcome:?}");
        }
    }

    #[test]
    fn every_exit_code_other_than_0_10_11_12_is_a_hard_failure() {
        for code in 0..=255 {
            let got = pam_result(&Outcome::Exited(code));
            let want = match code {
                0 => PamResultCode::PAM_SUCCESS,
                10..=12 => PamResultCode::PAM_AUTHINFO_UNAVAIL,
                _ => PamResultCode::PAM_AUTH_ERR,
            };
            assert_eq!(got, want, "exit {code}");
        }
    }

    #[test]
    fn faults_are_logged_without_debug_and_normal_answers_are_not() {
        for (outcome, _) in expected_results() {
            let quiet = matches!(outcome, Outcome::Exited(0 | 10 | 11 | 12 | 20));
            assert_eq!(
                always_log_priority(&outcome).is_none(),
                quiet,
                "{outcome:?}"
            );
        }
    }
}
