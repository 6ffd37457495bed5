//! Unsafe or invalid configuration fails closed (exit 31) before anything is sent, and
//! `check-config` lists every problem. Also `gen-key`, whose files the config then trusts.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;
use nix::unistd::{Uid, chown};
use nod_proto::Decision;

#[test]
fn group_writable_config_is_refused() {
    let Some(s) = Scratch::new() else { return };
    let _rx = agent(&s.socket_path(), decide(Decision::Approved));
    fs::set_permissions(s.config_path(), fs::Permissions::from_mode(0o664)).unwrap();
    let err = assert_exit(&s.request(&[]), 31);
    assert!(err.contains("config.toml"), "{err}");
    assert!(err.contains("chmod go-w"), "{err}");
}

#[test]
fn host_key_not_owned_by_root_is_refused() {
    let Some(s) = Scratch::new() else { return };
    let _rx = agent(&s.socket_path(), decide(Decision::Approved));
    chown(&s.path("host.key"), Some(Uid::from_raw(65534)), None).unwrap();
    let err = assert_exit(&s.request(&[]), 31);
    assert!(err.contains("host.key"), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
}

#[test]
fn host_key_readable_by_others_is_refused() {
    let Some(s) = Scratch::new() else { return };
    fs::set_permissions(s.path("host.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let err = assert_exit(&s.request(&[]), 31);
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn agent_key_writable_by_others_is_refused() {
    let Some(s) = Scratch::new() else { return };
    fs::set_permissions(s.path("agent.pub"), fs::Permissions::from_mode(0o666)).unwrap();
    let err = assert_exit(&s.request(&[]), 31);
    assert!(err.contains("agent.pub"), "{err}");
}

#[test]
fn symlink_in_config_path_is_refused() {
    let Some(s) = Scratch::new() else { return };
    let _rx = agent(&s.socket_path(), decide(Decision::Approved));
    std::os::unix::fs::symlink(&s.dir, s.path("link")).unwrap();
    let via_link = s.path("link/config.toml");
    let out = helper(&[
        "request",
        "--config",
        via_link.to_str().unwrap(),
        "--user",
        "root",
    ]);
    let err = assert_exit(&out, 31);
    assert!(err.contains("symlink"), "{err}");
}

#[test]
fn symlinked_agent_key_in_agents_dir_is_refused() {
    let Some(s) = Scratch::new() else { return };
    fs::create_dir(s.path("agents.d")).unwrap();
    s.write_pub("agents.d/a.pub", &agent_key());
    std::os::unix::fs::symlink(s.path("agent.pub"), s.path("agents.d/b.pub")).unwrap();
    s.write_config_with("agent.sock", "agents.d", "");
    let err = assert_exit(&s.request(&[]), 31);
    assert!(err.contains("b.pub"), "{err}");
}

#[test]
fn unknown_config_key_is_refused() {
    let Some(s) = Scratch::new() else { return };
    let _rx = agent(&s.socket_path(), decide(Decision::Approved));
    s.write_config("allowed_future_skew = 1000");
    let err = assert_exit(&s.request(&[]), 31);
    assert!(err.contains("unknown field `allowed_future_skew`"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn host_id_the_agent_cannot_allowlist_is_refused() {
    let Some(s) = Scratch::new() else { return };
    let _rx = agent(&s.socket_path(), decide(Decision::Approved));
    let d = s.dir.display();
    s.write(
        "config.toml",
        &format!(
            "socket_path = \"{d}/agent.sock\"\nhost_key_file = \"{d}/host.key\"\n\
             agent_pubkey_file = \"{d}/agent.pub\"\nhost_id = \"web 1\"\n"
        ),
        0o644,
    );
    let err = assert_exit(&s.request(&[]), 31);
    assert!(err.contains("host_id"), "{err}");
}

#[test]
fn missing_config_is_refused() {
    let Some(s) = Scratch::new() else { return };
    fs::remove_file(s.config_path()).unwrap();
    let err = assert_exit(&s.request(&[]), 31);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn config_values_override_defaults() {
    let Some(s) = Scratch::new() else { return };
    s.write_config(
        "key_id = \"host-7\"\nhostname = \"web-7.example\"\nservice = \"login\"\ntimeout_ms = 4000",
    );
    let seen = agent_with_host_key_id(&s, "host-7");
    let config = s.config_path();
    let out = helper(&[
        "request",
        "--config",
        config.to_str().unwrap(),
        "--user",
        "root",
    ]);
    assert_exit(&out, 0);
    let body = wait(&seen).request.body().clone();
    assert_eq!(body.key_id, "host-7");
    assert_eq!(body.linux_hostname, "web-7.example");
    assert_eq!(body.pam_service, "login");
    assert_eq!(body.expires_at_ms - body.created_at_ms, 4000);
}

/// A fake agent that expects the host to claim `id` instead of the fingerprint.
fn agent_with_host_key_id(
    s: &Scratch,
    id: &'static str,
) -> std::sync::mpsc::Receiver<Result<Seen, String>> {
    let host = nod_proto::PinnedKey {
        key: host_key().verifying_key(),
        key_id: Some(nod_proto::KeyId::new(id).unwrap()),
    };
    agent_pinning(&s.socket_path(), host, decide(Decision::Approved))
}

fn check_config(s: &Scratch, user: Option<&str>) -> (i32, String) {
    let config = s.config_path();
    let mut args = vec!["check-config", "--config", config.to_str().unwrap()];
    if let Some(u) = user {
        args.extend_from_slice(&["--user", u]);
    }
    let out = helper(&args);
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_config_accepts_a_good_config() {
    let Some(s) = Scratch::new() else { return };
    let _rx = agent(&s.socket_path(), decide(Decision::Approved));
    let (code, out) = check_config(&s, Some("root"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: no problems found"), "{out}");
    assert!(out.contains(key_id(&host_key()).as_str()), "{out}");
    assert!(out.contains(key_id(&agent_key()).as_str()), "{out}");
}

#[test]
fn check_config_notes_a_missing_socket_without_failing() {
    let Some(s) = Scratch::new() else { return };
    let (code, out) = check_config(&s, None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no agent socket at"), "{out}");
}

#[test]
fn check_config_lists_every_problem() {
    let Some(s) = Scratch::new() else { return };
    fs::set_permissions(s.path("host.key"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(s.path("agent.pub"), fs::Permissions::from_mode(0o666)).unwrap();
    s.write_config("timeout_ms = 0\nhostname = \"\"");
    let (code, out) = check_config(&s, Some("no-such-user-nod-test"));
    assert_eq!(code, 31, "{out}");
    for needle in [
        "host.key",
        "agent.pub",
        "timeout_ms = 0",
        "hostname",
        "no-such-user-nod-test",
        "5 problem(s) found",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn gen_key_writes_a_private_key_only_root_can_read() {
    let Some(s) = Scratch::new() else { return };
    let (private, public) = (s.path("new.key"), s.path("new.pub"));
    let out = helper(&[
        "gen-key",
        "--private-key-file",
        private.to_str().unwrap(),
        "--public-key-file",
        public.to_str().unwrap(),
    ]);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key = nod_proto::parse_private_key_file(&fs::read_to_string(&private).unwrap()).unwrap();
    let pubfile = nod_proto::parse_public_key_file(&fs::read_to_string(&public).unwrap()).unwrap();
    assert_eq!(pubfile.key, key.verifying_key());
    // The host claims its fingerprint; the .pub file pins no id, which admits it.
    let fingerprint = nod_proto::KeyId::fingerprint(&pubfile.key);
    assert_eq!(pubfile.key_id, None);
    assert!(
        stdout.contains(&format!("key_id={fingerprint}")),
        "{stdout}"
    );
    assert!(stdout.contains("ssh-ed25519 AAAA"), "{stdout}");
    assert_eq!(fs::metadata(&private).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(fs::metadata(&public).unwrap().mode() & 0o7777, 0o644);

    // The new key is accepted as the host key by the config loader.
    s.write("host.key", &fs::read_to_string(&private).unwrap(), 0o600);
    let (code, report) = check_config(&s, Some("root"));
    assert_eq!(code, 0, "{report}");
    assert!(report.contains(fingerprint.as_str()), "{report}");
}

#[test]
fn gen_key_refuses_to_overwrite_without_force() {
    let Some(s) = Scratch::new() else { return };
    let before = fs::read_to_string(s.path("host.key")).unwrap();
    let args = |force: bool| {
        let mut a = vec![
            "gen-key".to_owned(),
            "--private-key-file".into(),
            s.path("host.key").display().to_string(),
            "--public-key-file".into(),
            s.path("host.pub").display().to_string(),
            "--key-id".into(),
            "web-1".into(),
        ];
        if force {
            a.push("--force".into());
        }
        a
    };
    let run = |a: Vec<String>| helper(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let err = assert_exit(&run(args(false)), 1);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(fs::read_to_string(s.path("host.key")).unwrap(), before);
    assert!(!s.path("host.pub").exists(), "nothing half written");

    let out = run(args(true));
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("key_id=web-1"));
    assert_ne!(fs::read_to_string(s.path("host.key")).unwrap(), before);
    assert_eq!(
        fs::metadata(s.path("host.key")).unwrap().mode() & 0o7777,
        0o600
    );
    let pubfile =
        nod_proto::parse_public_key_file(&fs::read_to_string(s.path("host.pub")).unwrap()).unwrap();
    assert_eq!(pubfile.key_id.unwrap().as_str(), "web-1");
    let leftovers: Vec<_> = fs::read_dir(&s.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn host_key_file_naming_the_public_key_says_so_not_chmod() {
    let Some(s) = Scratch::new() else { return };
    s.write_pub("host.pub", &host_key());
    s.write_config_with("agent.sock", "agent.pub", "");
    let text = fs::read_to_string(s.config_path())
        .unwrap()
        .replace("host.key", "host.pub");
    s.write("config.toml", &text, 0o644);
    let err = assert_exit(&s.request(&[]), 31);
    assert!(
        err.contains("host_key_file names this public key")
            && err.contains(&format!("{}", s.path("host.key").display()))
            && !err.contains("chmod"),
        "{err}"
    );
}

#[test]
fn a_timeout_with_a_unit_is_named_with_the_form_it_needs() {
    let Some(s) = Scratch::new() else { return };
    s.write_config("timeout_ms = 30s");
    let err = assert_exit(&s.request(&[]), 31);
    assert!(
        err.contains("timeout_ms = 30s is not a whole number")
            && err.contains("timeout_ms = 30000")
            && !err.contains("expected newline"),
        "{err}"
    );
}

#[test]
fn check_config_refuses_the_hosts_own_key_pinned_as_the_agent_key() {
    let Some(s) = Scratch::new() else { return };
    s.write_pub("agent.pub", &host_key());
    let config = s.config_path();
    let out = helper(&[
        "check-config",
        "--config",
        config.to_str().unwrap(),
        "--user",
        "root",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(31), "{text}");
    assert!(
        text.contains("pins this host's own public key")
            && text.contains("`nod agent-key`")
            && !text.contains("ok: no problems found"),
        "{text}"
    );
}
