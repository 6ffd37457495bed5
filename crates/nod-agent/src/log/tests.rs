//! Every variant of the agent's user-facing error types, with the values its callers really
//! give it, printed as the log prints it (`{}`) and as `nod` prints it (the whole chain): each
//! says one thing once, in words, with no Rust debug syntax.
//!
//! Each `name_*` function matches its type with no wildcard, so a new variant does not compile
//! until it is named here, and the count check then fails until it has a sample.

use std::collections::BTreeSet;
use std::error::Error;
use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

use super::error_chain;
use crate::approvers::{Outcome, SelectError};
use crate::audit::AuditError;
use crate::caller::identity::PeerError;
use crate::config::ConfigError;
use crate::daemon::CoreError;
use crate::daemon::agent::AgentError;
use crate::daemon::ssh_agent::DropInError;
use crate::decision::NotRecorded;
use crate::keystore::KeystoreError;
use crate::pam::hosts::HostsError;
use crate::paths::PathsError;
use crate::secrets::SecretsError;
use crate::secrets::keyring::KeyringError;
use crate::secrets::policy::PolicyError;
use crate::secrets::store::StoreError;
use crate::ssh::SshError;
use crate::ssh::bind::BindError;
use crate::ssh::cert::ClientError;
use crate::ssh::codec::CodecError;

/// Text that is Rust's `Debug` of an `Option` or a `Result` (or of a string inside a string).
const DEBUG_SYNTAX: [&str; 5] = ["Some(", "None", "Ok(", "Err(", "\\\""];

/// A clause (text between `:`, `;`, `—`, `,` and parentheses, three words or more) that
/// occurs twice in `msg`.
fn repeated_clause(msg: &str) -> Option<&str> {
    msg.split([':', ';', '—', ',', '(', ')', '\n'])
        .map(str::trim)
        .filter(|c| c.split_whitespace().count() >= 3)
        .find(|c| msg.matches(*c).count() > 1)
}

fn check_messages<E: Error + 'static>(samples: &[E], name: fn(&E) -> &'static str, count: usize) {
    let mut seen = BTreeSet::new();
    for e in samples {
        seen.insert(name(e));
        for text in [e.to_string(), error_chain(e)] {
            assert_eq!(repeated_clause(&text), None, "{}: {text}", name(e));
            for debug in DEBUG_SYNTAX {
                assert!(!text.contains(debug), "{}: {debug} in {text}", name(e));
            }
        }
    }
    let missing = count as isize - seen.len() as isize;
    assert_eq!(
        missing, 0,
        "{missing} variant(s) have no sample; seen: {seen:?}"
    );
}

fn path(p: &str) -> PathBuf {
    PathBuf::from(p)
}

/// What `std::fs` says for a missing file.
fn enoent() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::ENOENT)
}

/// What `files::check_not_writable_by_others` says about a file of another user.
fn foreign_owner(p: &str) -> io::Error {
    io::Error::other(format!(
        "{p} is owned by uid 1001, not by you; fix its owner"
    ))
}

fn paths_errors() -> Vec<PathsError> {
    vec![
        PathsError::NoRuntimeDir { uid: 1000 },
        PathsError::NoHome { uid: 1000 },
    ]
}

fn name_paths(e: &PathsError) -> &'static str {
    match e {
        PathsError::NoRuntimeDir { .. } => "NoRuntimeDir",
        PathsError::NoHome { .. } => "NoHome",
    }
}

fn config_errors() -> Vec<ConfigError> {
    let toml = path("/home/a/.config/nod/agent.toml");
    vec![
        ConfigError::Read {
            path: toml.clone(),
            source: enoent(),
        },
        ConfigError::Unsafe {
            path: toml.clone(),
            source: foreign_owner("/home/a/.config/nod/agent.toml"),
        },
        ConfigError::Parse {
            path: toml.clone(),
            message: "TOML parse error at line 2, column 8\n  |\n2 | kind = tty\n  |        ^\n\
                      invalid string\nexpected `\"`, `'`"
                .into(),
        },
        ConfigError::Invalid {
            path: toml,
            problem: "[approver] command is empty; give a program, e.g. [\"zenity\"]".into(),
        },
    ]
}

fn name_config(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::Read { .. } => "Read",
        ConfigError::Unsafe { .. } => "Unsafe",
        ConfigError::Parse { .. } => "Parse",
        ConfigError::Invalid { .. } => "Invalid",
    }
}

fn audit_errors() -> Vec<AuditError> {
    let log = path("/home/a/.local/state/nod/audit.jsonl");
    vec![
        AuditError::Io {
            path: log.clone(),
            source: io::Error::from_raw_os_error(nix::libc::ENOSPC),
        },
        AuditError::TailTooLong { path: log },
    ]
}

fn name_audit(e: &AuditError) -> &'static str {
    match e {
        AuditError::Io { .. } => "Io",
        AuditError::TailTooLong { .. } => "TailTooLong",
    }
}

fn select_errors() -> Vec<SelectError> {
    vec![SelectError::NoCommand, SelectError::NoAskpass]
}

fn name_select(e: &SelectError) -> &'static str {
    match e {
        SelectError::NoCommand => "NoCommand",
        SelectError::NoAskpass => "NoAskpass",
    }
}

fn core_errors() -> Vec<CoreError> {
    let mut all: Vec<CoreError> = select_errors().into_iter().map(CoreError::from).collect();
    all.extend(audit_errors().into_iter().map(CoreError::from));
    all
}

fn name_core(e: &CoreError) -> &'static str {
    match e {
        CoreError::Approver(_) => "Approver",
        CoreError::Audit(_) => "Audit",
    }
}

fn keystore_errors() -> Vec<KeystoreError> {
    let key = || path("/home/a/.local/share/nod/agent_ed25519.sealed");
    let wrap = "/home/a/.config/nod/keystore.key".to_owned();
    vec![
        KeystoreError::Io {
            path: key(),
            source: io::Error::from_raw_os_error(nix::libc::EACCES),
        },
        KeystoreError::Permissions {
            path: key(),
            mode: 0o644,
        },
        KeystoreError::Owner {
            path: key(),
            uid: 1001,
        },
        KeystoreError::Invalid {
            path: key(),
            reason: "the file is cut short".into(),
        },
        KeystoreError::WrongWrapKey {
            path: key(),
            wrap: wrap.clone(),
        },
        KeystoreError::Damaged { path: key() },
        KeystoreError::MissingWrapKey { path: key(), wrap },
        KeystoreError::NoSuchKey("deploy".into()),
        KeystoreError::Refused(
            "the key \"deploy\" already exists; remove it first with `nod keys remove deploy`"
                .into(),
        ),
        KeystoreError::Random("getrandom: ENOSYS".into()),
        KeystoreError::Locked("protector: passphrase".into()),
        KeystoreError::WrongSecret("passphrase"),
        KeystoreError::Tpm("no TPM at /dev/tpmrm0".into()),
        KeystoreError::Keyring("add_key: EDQUOT".into()),
    ]
}

fn name_keystore(e: &KeystoreError) -> &'static str {
    match e {
        KeystoreError::Io { .. } => "Io",
        KeystoreError::Permissions { .. } => "Permissions",
        KeystoreError::Owner { .. } => "Owner",
        KeystoreError::Invalid { .. } => "Invalid",
        KeystoreError::WrongWrapKey { .. } => "WrongWrapKey",
        KeystoreError::Damaged { .. } => "Damaged",
        KeystoreError::MissingWrapKey { .. } => "MissingWrapKey",
        KeystoreError::NoSuchKey(_) => "NoSuchKey",
        KeystoreError::Refused(_) => "Refused",
        KeystoreError::Random(_) => "Random",
        KeystoreError::Locked(_) => "Locked",
        KeystoreError::WrongSecret(_) => "WrongSecret",
        KeystoreError::Tpm(_) => "Tpm",
        KeystoreError::Keyring(_) => "Keyring",
    }
}

fn store_errors() -> Vec<StoreError> {
    let store = path("/home/a/.local/share/nod/secrets.sealed");
    vec![
        StoreError::Io {
            path: store.clone(),
            source: enoent(),
        },
        StoreError::Decrypt {
            path: store.clone(),
            key: path("/home/a/.config/nod/secrets.key"),
        },
        StoreError::Keystore(KeystoreError::Locked("protector: passphrase".into())),
        StoreError::Format { path: store },
    ]
}

fn name_store(e: &StoreError) -> &'static str {
    match e {
        StoreError::Io { .. } => "Io",
        StoreError::Decrypt { .. } => "Decrypt",
        StoreError::Keystore(_) => "Keystore",
        StoreError::Format { .. } => "Format",
    }
}

fn keyring_errors() -> Vec<KeyringError> {
    vec![
        KeyringError::NotFound("github-token".into()),
        KeyringError::Locked,
        KeyringError::Failed("org.freedesktop.DBus.Error.ServiceUnknown".into()),
    ]
}

fn name_keyring(e: &KeyringError) -> &'static str {
    match e {
        KeyringError::NotFound(_) => "NotFound",
        KeyringError::Locked => "Locked",
        KeyringError::Failed(_) => "Failed",
    }
}

fn secrets_errors() -> Vec<SecretsError> {
    let mut all: Vec<SecretsError> = store_errors().into_iter().map(SecretsError::from).collect();
    all.extend(
        keyring_errors()
            .into_iter()
            .map(SecretsError::NoSecretService),
    );
    all.extend(policy_errors().into_iter().map(SecretsError::Policy));
    all
}

fn name_secrets(e: &SecretsError) -> &'static str {
    match e {
        SecretsError::Store(_) => "Store",
        SecretsError::NoSecretService(_) => "NoSecretService",
        SecretsError::Policy(_) => "Policy",
    }
}

fn policy_errors() -> Vec<PolicyError> {
    let policy = path("/home/a/.config/nod/secrets-policy.toml");
    vec![
        PolicyError::Io {
            path: policy.clone(),
            message: "No such file or directory (os error 2)".into(),
        },
        PolicyError::Tampered {
            path: policy.clone(),
        },
        PolicyError::Locked {
            path: policy,
            message: "keystore is locked: run `nod keys unlock`".into(),
        },
    ]
}

fn name_policy(e: &PolicyError) -> &'static str {
    match e {
        PolicyError::Io { .. } => "Io",
        PolicyError::Tampered { .. } => "Tampered",
        PolicyError::Locked { .. } => "Locked",
    }
}

fn hosts_errors() -> Vec<HostsError> {
    let hosts = path("/home/a/.config/nod/hosts.toml");
    vec![
        HostsError::Io {
            path: hosts.clone(),
            source: foreign_owner("/home/a/.config/nod/hosts.toml"),
        },
        HostsError::Parse {
            path: hosts.clone(),
            message: "unknown field `hostid`, expected one of `id`, `public_key_hex`, `key_id`"
                .into(),
        },
        HostsError::BadHostId("web 1".into()),
        HostsError::BadKeyFile {
            path: hosts,
            message: "no public_key_hex= or ssh-ed25519 line".into(),
        },
        HostsError::BadKeyId("a b".into()),
        HostsError::UnknownHost("web-1".into()),
    ]
}

fn name_hosts(e: &HostsError) -> &'static str {
    match e {
        HostsError::Io { .. } => "Io",
        HostsError::Parse { .. } => "Parse",
        HostsError::BadHostId(_) => "BadHostId",
        HostsError::BadKeyFile { .. } => "BadKeyFile",
        HostsError::BadKeyId(_) => "BadKeyId",
        HostsError::UnknownHost(_) => "UnknownHost",
    }
}

fn agent_errors() -> Vec<AgentError> {
    let sock = || path("/run/user/1000/nod/approval.sock");
    let mut all: Vec<AgentError> = paths_errors().into_iter().map(AgentError::from).collect();
    all.extend(config_errors().into_iter().map(AgentError::from));
    all.extend(core_errors().into_iter().map(AgentError::from));
    all.extend(keystore_errors().into_iter().map(AgentError::from));
    all.extend(secrets_errors().into_iter().map(AgentError::from));
    all.extend([
        AgentError::Socket {
            path: sock(),
            source: io::Error::from_raw_os_error(nix::libc::EADDRINUSE),
        },
        AgentError::NotASocket { path: sock() },
        AgentError::AlreadyRunning { path: sock() },
        AgentError::Runtime(io::Error::from_raw_os_error(nix::libc::EMFILE)),
    ]);
    all
}

fn name_agent(e: &AgentError) -> &'static str {
    match e {
        AgentError::Paths(_) => "Paths",
        AgentError::Config(_) => "Config",
        AgentError::Core(_) => "Core",
        AgentError::Keystore(_) => "Keystore",
        AgentError::Socket { .. } => "Socket",
        AgentError::NotASocket { .. } => "NotASocket",
        AgentError::AlreadyRunning { .. } => "AlreadyRunning",
        AgentError::Secrets(_) => "Secrets",
        AgentError::Runtime(_) => "Runtime",
    }
}

fn drop_in_errors() -> Vec<DropInError> {
    let sock = || path("/tmp/ssh-XXXXabcd/agent.1234");
    let mut all = vec![
        DropInError::NoAgentPid,
        DropInError::BadAgentPid("12x".into()),
        DropInError::Usage("unknown option -- z".into()),
        DropInError::Fatal("bind: Address already in use".into()),
        DropInError::AgentDir {
            dir: path("/home/a/.ssh/agent"),
            source: io::Error::from_raw_os_error(nix::libc::EACCES),
        },
        DropInError::SocketActivation,
        DropInError::Kill {
            pid: 4242,
            source: nix::Error::ESRCH,
        },
        DropInError::BadLifetime("1x".into()),
        DropInError::BadHash("sha1".into()),
        DropInError::TempDir {
            dir: path("/tmp"),
            source: io::Error::from_raw_os_error(nix::libc::EROFS),
        },
        DropInError::Socket {
            path: sock(),
            source: io::Error::from_raw_os_error(nix::libc::EADDRINUSE),
        },
        DropInError::SocketExists { path: sock() },
        DropInError::Spawn(io::Error::from_raw_os_error(nix::libc::EAGAIN)),
        DropInError::ChildFailed("it exited with status 1".into()),
        DropInError::Runtime(io::Error::from_raw_os_error(nix::libc::EMFILE)),
        DropInError::Output(io::Error::from_raw_os_error(nix::libc::EPIPE)),
        DropInError::CommandWithFlags,
        DropInError::Exec {
            command: OsString::from("/usr/bin/nonexistent"),
            source: enoent(),
        },
        DropInError::Watch {
            pid: 4242,
            source: io::Error::from_raw_os_error(nix::libc::ESRCH),
        },
    ];
    all.extend(paths_errors().into_iter().map(DropInError::from));
    all.extend(config_errors().into_iter().map(DropInError::from));
    all.extend(core_errors().into_iter().map(DropInError::from));
    all
}

fn name_drop_in(e: &DropInError) -> &'static str {
    match e {
        DropInError::NoAgentPid => "NoAgentPid",
        DropInError::BadAgentPid(_) => "BadAgentPid",
        DropInError::Usage(_) => "Usage",
        DropInError::Fatal(_) => "Fatal",
        DropInError::AgentDir { .. } => "AgentDir",
        DropInError::SocketActivation => "SocketActivation",
        DropInError::Kill { .. } => "Kill",
        DropInError::BadLifetime(_) => "BadLifetime",
        DropInError::BadHash(_) => "BadHash",
        DropInError::TempDir { .. } => "TempDir",
        DropInError::Socket { .. } => "Socket",
        DropInError::SocketExists { .. } => "SocketExists",
        DropInError::Spawn(_) => "Spawn",
        DropInError::ChildFailed(_) => "ChildFailed",
        DropInError::Paths(_) => "Paths",
        DropInError::Config(_) => "Config",
        DropInError::Core(_) => "Core",
        DropInError::Runtime(_) => "Runtime",
        DropInError::Output(_) => "Output",
        DropInError::CommandWithFlags => "CommandWithFlags",
        DropInError::Exec { .. } => "Exec",
        DropInError::Watch { .. } => "Watch",
    }
}

fn peer_errors() -> Vec<PeerError> {
    vec![
        PeerError::Gone,
        PeerError::OtherNamespace("pid"),
        PeerError::Traced {
            pid: 4242,
            tracer: 4200,
        },
        PeerError::Injected {
            pid: 4242,
            var: "LD_PRELOAD".into(),
        },
        PeerError::Execed { pid: 4242 },
        PeerError::NotTheConnectedProcess,
        PeerError::NoSender,
        PeerError::Proc {
            pid: 4242,
            source: enoent(),
        },
        PeerError::AgentSandboxed,
    ]
}

fn name_peer(e: &PeerError) -> &'static str {
    match e {
        PeerError::Gone => "Gone",
        PeerError::OtherNamespace(_) => "OtherNamespace",
        PeerError::Traced { .. } => "Traced",
        PeerError::Injected { .. } => "Injected",
        PeerError::Execed { .. } => "Execed",
        PeerError::NotTheConnectedProcess => "NotTheConnectedProcess",
        PeerError::NoSender => "NoSender",
        PeerError::Proc { .. } => "Proc",
        PeerError::AgentSandboxed => "AgentSandboxed",
    }
}

fn bind_errors() -> Vec<BindError> {
    vec![
        BindError::Malformed("session id longer than 64 bytes".into()),
        BindError::BadSignature("SHA256:abc".into()),
        BindError::AlreadyBoundForAuth,
        BindError::SessionIdReused,
        BindError::TooMany,
        BindError::Poisoned,
    ]
}

fn name_bind(e: &BindError) -> &'static str {
    match e {
        BindError::Malformed(_) => "Malformed",
        BindError::BadSignature(_) => "BadSignature",
        BindError::AlreadyBoundForAuth => "AlreadyBoundForAuth",
        BindError::SessionIdReused => "SessionIdReused",
        BindError::TooMany => "TooMany",
        BindError::Poisoned => "Poisoned",
    }
}

fn ssh_errors() -> Vec<SshError> {
    let mut all = vec![
        SshError::Locked,
        SshError::NotLocked,
        SshError::WrongPassphrase,
        SshError::LockedOut,
        SshError::UnknownKey,
        SshError::Unsupported("smartcard keys".into()),
        SshError::RsaTooSmall(1024),
        SshError::RsaSha1,
        SshError::BadKey("ecdsa point"),
        SshError::Sign,
        SshError::Audit,
        SshError::BindFailed,
        SshError::SessionMismatch,
        SshError::BadConstraint("hop 2 names no host key".into()),
        SshError::NotPermitted("no constraint allows this destination"),
    ];
    all.extend(
        [
            Outcome::Approved,
            Outcome::Denied,
            Outcome::Cancelled,
            Outcome::Unavailable,
            Outcome::Failed,
        ]
        .into_iter()
        .map(SshError::NotApproved),
    );
    all.extend(bind_errors().into_iter().map(SshError::from));
    all
}

fn name_ssh(e: &SshError) -> &'static str {
    match e {
        SshError::Locked => "Locked",
        SshError::NotLocked => "NotLocked",
        SshError::WrongPassphrase => "WrongPassphrase",
        SshError::LockedOut => "LockedOut",
        SshError::UnknownKey => "UnknownKey",
        SshError::Unsupported(_) => "Unsupported",
        SshError::RsaTooSmall(_) => "RsaTooSmall",
        SshError::RsaSha1 => "RsaSha1",
        SshError::BadKey(_) => "BadKey",
        SshError::Sign => "Sign",
        SshError::NotApproved(_) => "NotApproved",
        SshError::Audit => "Audit",
        SshError::Bind(_) => "Bind",
        SshError::BindFailed => "BindFailed",
        SshError::SessionMismatch => "SessionMismatch",
        SshError::BadConstraint(_) => "BadConstraint",
        SshError::NotPermitted(_) => "NotPermitted",
    }
}

fn codec_errors() -> Vec<CodecError> {
    vec![
        CodecError::TooLong(300_000),
        CodecError::Io(io::Error::from_raw_os_error(nix::libc::ECONNRESET)),
    ]
}

fn name_codec(e: &CodecError) -> &'static str {
    match e {
        CodecError::TooLong(_) => "TooLong",
        CodecError::Io(_) => "Io",
    }
}

fn client_errors() -> Vec<ClientError> {
    vec![
        ClientError::Connect {
            path: path("/run/user/1000/nod/ssh-agent.sock"),
            source: io::Error::from_raw_os_error(nix::libc::ECONNREFUSED),
        },
        ClientError::Io(io::Error::from_raw_os_error(nix::libc::EPIPE)),
        ClientError::Refused,
        ClientError::Unexpected(5),
    ]
}

fn name_client(e: &ClientError) -> &'static str {
    match e {
        ClientError::Connect { .. } => "Connect",
        ClientError::Io(_) => "Io",
        ClientError::Refused => "Refused",
        ClientError::Unexpected(_) => "Unexpected",
    }
}

#[test]
fn start_up_errors_say_each_thing_once() {
    check_messages(&paths_errors(), name_paths, 2);
    check_messages(&config_errors(), name_config, 4);
    check_messages(&select_errors(), name_select, 2);
    check_messages(&audit_errors(), name_audit, 2);
    check_messages(&core_errors(), name_core, 2);
    check_messages(&agent_errors(), name_agent, 9);
    check_messages(&drop_in_errors(), name_drop_in, 22);
}

#[test]
fn key_and_file_errors_say_each_thing_once() {
    check_messages(&keystore_errors(), name_keystore, 14);
    check_messages(&store_errors(), name_store, 4);
    check_messages(&keyring_errors(), name_keyring, 3);
    check_messages(&secrets_errors(), name_secrets, 3);
    check_messages(&policy_errors(), name_policy, 3);
    check_messages(&hosts_errors(), name_hosts, 6);
    let not_recorded: Vec<NotRecorded> =
        audit_errors().into_iter().map(NotRecorded::from).collect();
    check_messages(&not_recorded, |_| "NotRecorded", 1);
}

#[test]
fn ssh_agent_errors_say_each_thing_once() {
    check_messages(&peer_errors(), name_peer, 9);
    check_messages(&bind_errors(), name_bind, 6);
    check_messages(&ssh_errors(), name_ssh, 17);
    check_messages(&codec_errors(), name_codec, 2);
    check_messages(&client_errors(), name_client, 4);
}

#[test]
fn a_cause_the_message_already_holds_is_printed_once() {
    let e = ConfigError::Unsafe {
        path: path("/c/agent.toml"),
        source: foreign_owner("/c/agent.toml"),
    };
    assert_eq!(
        error_chain(&e),
        "refusing /c/agent.toml: /c/agent.toml is owned by uid 1001, not by you; fix its owner"
    );
    // What anyhow's `{:#}` prints for it, and what this test would catch.
    let naive = format!("{e}: {}", e.source().unwrap());
    assert!(repeated_clause(&naive).is_some(), "{naive}");
    // A cause the message does not hold is appended.
    let e = io::Error::other(enoent());
    let outer = AgentError::Runtime(e);
    assert!(error_chain(&outer).starts_with("cannot start the async runtime: "));
}
