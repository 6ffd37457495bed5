//! `/etc/nod/config.toml` and the key files it names.
//!
//! Every file is opened through `nod-fscheck`: walked by fd from `/`, root-owned, not writable
//! by group or others, no symlinks; the host key must also be unreadable by group and others.
//! What is checked is the fd that is read, so a local user cannot swap a file in between.
//!
//! Loading collects every problem instead of stopping at the first, so `check-config` can
//! list them all; `request` reports the first.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use nix::unistd::Uid;
use nod_fscheck::{Reason, Rule, TrustedDir};
use nod_proto::{KeyId, PinnedKey, SigningKey, parse_private_key_file, parse_public_key_file};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{HelperError, one_line};

/// Where the config lives unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/nod/config.toml";
/// Default `service` when neither the config nor `--service` gives one.
pub const DEFAULT_SERVICE: &str = "sudo";
/// Default `timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Longest accepted `timeout_ms`: a PAM conversation that waits longer is stuck.
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// Config and key files are small; a larger file is a mistake, not something to read.
const MAX_FILE_LEN: u64 = 64 * 1024;
const KNOWN_PLACEHOLDERS: [&str; 2] = ["{uid}", "{user}"];

/// The file as written, before defaults and checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    socket_path: String,
    host_key_file: PathBuf,
    agent_pubkey_file: PathBuf,
    host_id: String,
    key_id: Option<String>,
    hostname: Option<String>,
    service: Option<String>,
    timeout_ms: Option<u64>,
    allowed_future_skew_ms: Option<u64>,
    /// macos-auth's helper-side cache of response signatures. Read so that its config files
    /// load, and not used: see [`REPLAY_CACHE_IGNORED`].
    replay_cache_dir: Option<PathBuf>,
}

/// Why `replay_cache_dir` is accepted and ignored; `check-config` prints it.
pub const REPLAY_CACHE_IGNORED: &str = "nod-helper binds every reply to its own request: a new \
     random 32-byte nonce and the request's hash, both covered by the agent's signature. A reply \
     from an earlier exchange fails that binding (exit 30), so a cache of past replies on disk \
     would catch nothing more; nothing is written there";

/// A loaded, checked configuration with its keys.
#[derive(Debug)]
pub struct Config {
    /// The file this came from.
    pub path: PathBuf,
    /// `socket_path` before `{uid}`/`{user}` are filled in.
    pub socket_template: String,
    /// The host's signing key (zeroized on drop by ed25519-dalek).
    pub host_key: SigningKey,
    /// The `key_id` the host claims in its requests.
    pub key_id: KeyId,
    /// Every pinned agent key, with the key id it must claim if its file names one.
    pub agent_keys: Vec<PinnedKey>,
    pub host_id: String,
    pub hostname: String,
    pub service: String,
    pub timeout_ms: u64,
    pub allowed_future_skew_ms: u64,
    /// `replay_cache_dir` if the file sets it; it is not used ([`REPLAY_CACHE_IGNORED`]).
    pub ignored_replay_cache_dir: Option<PathBuf>,
}

/// The user a request is made for, as the system knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PamUser {
    pub name: String,
    pub uid: Uid,
}

impl PamUser {
    /// Looks up `name` in the system user database.
    pub fn lookup(name: &str) -> Result<Self, HelperError> {
        let bad = |problem: &str| HelperError::UnknownUser {
            user: name.to_owned(),
            problem: problem.to_owned(),
        };
        // The name is pasted into a path by `{user}`; refuse anything that could leave it.
        if name.is_empty() || name.contains('/') || name.contains('\0') || name.starts_with('.') {
            return Err(bad("not a valid user name — pass the PAM user with --user"));
        }
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(Self {
                name: u.name,
                uid: u.uid,
            }),
            Ok(None) => Err(bad(
                "no such user — pass an existing user with --user (pam_nod passes PAM_USER)",
            )),
            Err(e) => Err(bad(&format!(
                "user database lookup failed ({}) — check /etc/nsswitch.conf",
                e.desc()
            ))),
        }
    }

    /// The user running this program (for `check-config` without `--user`).
    pub fn current() -> Result<Self, HelperError> {
        let uid = nix::unistd::getuid();
        match nix::unistd::User::from_uid(uid) {
            Ok(Some(u)) => Ok(Self {
                name: u.name,
                uid: u.uid,
            }),
            _ => Err(HelperError::UnknownUser {
                user: uid.to_string(),
                problem: "the current uid has no user entry — pass --user".into(),
            }),
        }
    }
}

impl Config {
    /// Loads and checks the config at `path` and every file it names. Returns the config if
    /// nothing was wrong; every problem found is pushed onto `problems`.
    pub fn load(path: &Path, problems: &mut Vec<HelperError>) -> Option<Self> {
        let before = problems.len();
        let text = match read_trusted(path, Rule::root_file()) {
            Ok(text) => text,
            Err(e) => {
                problems.push(e);
                return None;
            }
        };
        let raw: RawConfig = match toml::from_str(&text) {
            Ok(raw) => raw,
            Err(e) => {
                problems.push(bad_config(path, toml_problem(&text, &e)));
                return None;
            }
        };

        check_socket_template(path, &raw.socket_path, problems);
        if !nod_proto::valid_host_id(&raw.host_id) {
            problems.push(bad_config(
                path,
                format!(
                    "host_id = {:?} must be 1-{} characters of A-Z a-z 0-9 . _ : @ - (the agent's `nod hosts add` accepts no others)",
                    raw.host_id,
                    nod_proto::keys::MAX_HOST_ID_LEN
                ),
            ));
        }
        check_name(path, "hostname", raw.hostname.as_deref(), problems);
        check_name(path, "service", raw.service.as_deref(), problems);
        let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            problems.push(bad_config(
                path,
                format!("timeout_ms = {timeout_ms} — use a value from 1 to {MAX_TIMEOUT_MS}"),
            ));
        }

        let host_key = load_host_key(&raw.host_key_file, problems);
        let key_id = match (&raw.key_id, &host_key) {
            (Some(id), _) => match KeyId::new(id) {
                Ok(id) => Some(id),
                Err(e) => {
                    problems.push(bad_config(path, format!("key_id: {e}")));
                    None
                }
            },
            (None, Some(k)) => Some(KeyId::fingerprint(&k.verifying_key())),
            (None, None) => None,
        };
        let agent_keys = load_agent_keys(&raw.agent_pubkey_file, problems);
        let hostname = match raw.hostname {
            Some(h) => Some(h),
            None => match nix::unistd::gethostname().map(|h| h.into_string()) {
                Ok(Ok(h)) if !h.is_empty() => Some(h),
                _ => {
                    problems.push(bad_config(
                        path,
                        "the system hostname cannot be read — set `hostname = \"…\"`".into(),
                    ));
                    None
                }
            },
        };

        if problems.len() != before {
            return None;
        }
        Some(Self {
            path: path.to_owned(),
            socket_template: raw.socket_path,
            host_key: host_key?,
            key_id: key_id?,
            agent_keys,
            host_id: raw.host_id,
            hostname: hostname?,
            service: raw.service.unwrap_or_else(|| DEFAULT_SERVICE.to_owned()),
            timeout_ms,
            allowed_future_skew_ms: raw
                .allowed_future_skew_ms
                .unwrap_or(nod_proto::DEFAULT_FUTURE_SKEW_MS),
            ignored_replay_cache_dir: raw.replay_cache_dir,
        })
    }

    /// The socket path for `user`: `{uid}` and `{user}` filled in.
    pub fn socket_path(&self, user: &PamUser) -> PathBuf {
        expand(&self.socket_template, user)
    }
}

fn expand(template: &str, user: &PamUser) -> PathBuf {
    PathBuf::from(
        template
            .replace("{uid}", &user.uid.to_string())
            .replace("{user}", &user.name),
    )
}

fn bad_config(path: &Path, problem: String) -> HelperError {
    HelperError::BadConfig {
        path: path.to_owned(),
        problem,
    }
}

/// Opens `path` through the fd walk and reads it as UTF-8, refusing oversized files.
fn read_trusted(path: &Path, rule: Rule) -> Result<Zeroizing<String>, HelperError> {
    let file = nod_fscheck::open_file(path, rule).map_err(HelperError::UnsafePath)?;
    read_text(path, file)
}

fn read_text(path: &Path, file: File) -> Result<Zeroizing<String>, HelperError> {
    // Zeroizing: the same reader is used for the host key.
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad_config(path, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(bad_config(
            path,
            format!("larger than {MAX_FILE_LEN} bytes — is this the right file?"),
        ));
    }
    match std::str::from_utf8(&bytes) {
        Ok(s) => Ok(Zeroizing::new(s.to_owned())),
        Err(_) => Err(bad_config(path, "is not UTF-8 text".into())),
    }
}

/// Keys whose value is a whole number of milliseconds.
const NUMBER_KEYS: [&str; 2] = ["timeout_ms", "allowed_future_skew_ms"];
/// Keys whose value is a quoted string.
const STRING_KEYS: [&str; 8] = [
    "socket_path",
    "host_key_file",
    "agent_pubkey_file",
    "host_id",
    "key_id",
    "hostname",
    "service",
    "replay_cache_dir",
];

/// One line: `line N: message — fix`, without toml's multi-line source excerpt. A value of the
/// wrong shape for a known key (`timeout_ms = 30s`, `host_id = web-1`) is named with its key
/// and the form it needs, rather than with the parser's "expected newline".
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let msg = one_line(e.message().trim());
    if msg.starts_with("missing field") {
        return format!(
            "{msg} — add it (/usr/share/nod/examples/config.toml.sample lists every key)"
        );
    }
    let Some(start) = e.span().map(|s| s.start.min(text.len())) else {
        return format!("{msg} — fix the config");
    };
    let n = text[..start].matches('\n').count() + 1;
    let source = text.lines().nth(n - 1).unwrap_or_default().trim();
    if let Some((key, value)) = source.split_once('=') {
        let (key, value) = (key.trim(), value.trim());
        if NUMBER_KEYS.contains(&key) && value.parse::<u64>().is_err() {
            return format!(
                "line {n}: {key} = {value} is not a whole number — write milliseconds without \
                 quotes or units, e.g. {key} = 30000"
            );
        }
        if STRING_KEYS.contains(&key) && !value.starts_with(['"', '\'']) {
            return format!(
                "line {n}: {key} = {value} is not a quoted string — write {key} = \"{value}\""
            );
        }
    }
    format!("line {n}: {msg} — fix or remove that line")
}

/// The pinned agent keys that are this host's own key: a host's `.pub` copied into agents.d
/// by mistake. Replies are signed by the agent's key, so that pin never verifies one.
pub fn own_key_pinned(config: &Config) -> Option<HelperError> {
    let own = config.host_key.verifying_key();
    config.agent_keys.iter().any(|p| p.key == own).then(|| {
        bad_config(
            &config.path,
            format!(
                "agent_pubkey_file pins this host's own public key ({}) as an agent key — \
                 replace that file with the workstation's `nod agent-key` output (`nod pair` \
                 installs it)",
                KeyId::fingerprint(&own)
            ),
        )
    })
}

fn check_socket_template(path: &Path, template: &str, problems: &mut Vec<HelperError>) {
    let mut rest = template.to_owned();
    for p in KNOWN_PLACEHOLDERS {
        rest = rest.replace(p, "");
    }
    if rest.contains('{') || rest.contains('}') {
        problems.push(bad_config(
            path,
            format!("socket_path {template:?} has an unknown placeholder — only {{uid}} and {{user}} are filled in"),
        ));
    }
    if !template.starts_with('/') {
        problems.push(bad_config(
            path,
            format!("socket_path {template:?} is not absolute — use e.g. \"/run/user/{{uid}}/nod-agent.sock\""),
        ));
    }
}

fn check_name(path: &Path, key: &str, value: Option<&str>, problems: &mut Vec<HelperError>) {
    if let Some(v) = value
        && (v.is_empty() || v.chars().any(char::is_control))
    {
        problems.push(bad_config(
            path,
            format!("{key} = {v:?} must be non-empty printable text — fix it"),
        ));
    }
}

fn load_host_key(path: &Path, problems: &mut Vec<HelperError>) -> Option<SigningKey> {
    let text = match read_trusted(path, Rule::root_private_file()) {
        Ok(t) => t,
        Err(e) => {
            problems.push(public_key_instead(path).unwrap_or(e));
            return None;
        }
    };
    match parse_private_key_file(&text) {
        Ok(k) => Some(k),
        Err(e) => {
            problems.push(public_key_instead(path).unwrap_or_else(|| {
                bad_config(
                    path,
                    format!("{e} — create a host key with `nod-helper gen-key`"),
                )
            }));
            None
        }
    }
}

/// `Some` when `host_key_file` names a public key: the usual slip of pointing it at the `.pub`,
/// which would otherwise be reported as "readable by others, chmod 600" or "not a private key".
fn public_key_instead(path: &Path) -> Option<HelperError> {
    let text = read_trusted(path, Rule::root_file()).ok()?;
    parse_public_key_file(&text).ok()?;
    let private = match path.extension() {
        Some(ext) if ext == "pub" => path.with_extension("key").display().to_string(),
        _ => "the private key file `nod-helper gen-key` wrote".to_owned(),
    };
    Some(bad_config(
        path,
        format!(
            "host_key_file names this public key, not the host's private key — set \
             host_key_file to {private} (mode 0600)"
        ),
    ))
}

fn parse_agent_key(path: &Path, text: &str, problems: &mut Vec<HelperError>) -> Option<PinnedKey> {
    match parse_public_key_file(text) {
        Ok(k) => Some(k),
        Err(e) => {
            problems.push(bad_config(
                path,
                format!("{e} — write the output of `nod agent-key` into it"),
            ));
            None
        }
    }
}

/// `agent_pubkey_file` is one key file, or a directory whose `*.pub` files are all pinned. A
/// file with a `key_id=` line pins that id; one without (as macos-auth writes them) pins the key
/// for any id its agent claims.
fn load_agent_keys(path: &Path, problems: &mut Vec<HelperError>) -> Vec<PinnedKey> {
    let as_file = nod_fscheck::open_file(path, Rule::root_file());
    let dir = match as_file {
        Ok(file) => {
            return match read_text(path, file) {
                Ok(text) => parse_agent_key(path, &text, problems).into_iter().collect(),
                Err(e) => {
                    problems.push(e);
                    Vec::new()
                }
            };
        }
        Err(e) if e.reason == Reason::NotRegularFile && e.path == path => {
            match TrustedDir::open(path, Uid::from_raw(0)) {
                Ok(dir) => dir,
                Err(e) => {
                    problems.push(HelperError::UnsafePath(e));
                    return Vec::new();
                }
            }
        }
        Err(e) => {
            problems.push(HelperError::UnsafePath(e));
            return Vec::new();
        }
    };
    let names = match dir.file_names() {
        Ok(n) => n,
        Err(e) => {
            problems.push(HelperError::UnsafePath(e));
            return Vec::new();
        }
    };
    let mut keys = Vec::new();
    for name in names.iter().filter(|n| is_pub(n)) {
        let file_path = path.join(name);
        match dir.open_file(name, Rule::root_file()) {
            Ok(file) => match read_text(&file_path, file) {
                Ok(text) => {
                    keys.extend(parse_agent_key(&file_path, &text, problems));
                }
                Err(e) => problems.push(e),
            },
            Err(e) => problems.push(HelperError::UnsafePath(e)),
        }
    }
    if keys.is_empty() && !names.iter().any(|n| is_pub(n)) {
        problems.push(bad_config(
            path,
            format!(
                "holds no *.pub agent key — on your workstation run `nod agent-key` and save it as {}/<name>.pub",
                path.display()
            ),
        ));
    }
    keys
}

fn is_pub(name: &OsStr) -> bool {
    name.as_encoded_bytes().ends_with(b".pub")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_uid_and_user_placeholders() {
        let user = PamUser {
            name: "alice".into(),
            uid: Uid::from_raw(1000),
        };
        assert_eq!(
            expand("/run/user/{uid}/nod-{user}.sock", &user),
            PathBuf::from("/run/user/1000/nod-alice.sock")
        );
    }

    #[test]
    fn rejects_unknown_placeholder_and_relative_socket_path() {
        let mut problems = Vec::new();
        check_socket_template(Path::new("/c"), "/run/{home}/s", &mut problems);
        check_socket_template(Path::new("/c"), "run/s", &mut problems);
        check_socket_template(
            Path::new("/c"),
            "/run/user/{uid}/{user}.sock",
            &mut problems,
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn unknown_key_is_reported_with_its_line() {
        let text = "socket_path = \"/s\"\nsocket_pth = \"/x\"\n";
        let e = toml::from_str::<RawConfig>(text).unwrap_err();
        let msg = toml_problem(text, &e);
        assert!(msg.starts_with("line 2:"), "{msg}");
        assert!(msg.contains("socket_pth"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn a_value_of_the_wrong_shape_is_named_with_its_key_and_the_form_it_needs() {
        let problem = |text: &str| {
            let e = toml::from_str::<RawConfig>(text).unwrap_err();
            toml_problem(text, &e)
        };
        let msg = problem("socket_path = \"/s\"\ntimeout_ms = 30s\n");
        assert_eq!(
            msg,
            "line 2: timeout_ms = 30s is not a whole number — write milliseconds without \
             quotes or units, e.g. timeout_ms = 30000"
        );
        let msg = problem("timeout_ms = \"30000\"\n");
        assert!(
            msg.starts_with("line 1: timeout_ms = \"30000\" is not a whole number"),
            "{msg}"
        );
        let msg = problem("host_id = web-1\n");
        assert!(msg.contains("host_id = \"web-1\""), "{msg}");
        assert!(!msg.contains("expected"), "{msg}");
    }

    #[test]
    fn user_names_that_could_escape_a_path_are_refused() {
        for name in ["", "../root", "a/b", ".hidden"] {
            assert!(PamUser::lookup(name).is_err(), "{name:?}");
        }
        assert!(PamUser::lookup("root").is_ok());
    }
}
