//! `nod-helper` with macos-auth's own files and defaults: a `config.toml` as its sample writes
//! it (`key_id = "host-key-1"`, `replay_cache_dir`), key files with nothing but
//! `private_key_hex=` / `public_key_hex=`, and an agent that signs as `agent-key-1`, the
//! default of macos-auth's macOS agent. The agent here is the test agent of `common`, speaking
//! the protocol through nod-proto.

mod common;

use std::fs;

use common::*;
use nod_proto::{AuthMethod, Decision, KeyId, PinnedKey, ResponseBody, SigningKey};

/// The key id macos-auth's helper claims unless configured otherwise.
const MACOS_AUTH_HOST_KEY_ID: &str = "host-key-1";
/// The key id macos-auth's macOS agent claims unless configured otherwise.
const MACOS_AUTH_AGENT_KEY_ID: &str = "agent-key-1";

/// A public key file as macos-auth's `gen-key --public-key-file` writes it.
fn macos_auth_pub(key: &SigningKey) -> String {
    format!(
        "public_key_hex={}\n",
        hex::encode(key.verifying_key().as_bytes())
    )
}

/// Lays out `<scratch>/agents.d` with `files` (name, text) and a config in the shape of
/// macos-auth's `packaging/linux/examples/config.toml.sample`, pointed at `agent_pubkey_file`
/// (relative to the scratch dir).
fn macos_auth_host(s: &Scratch, agent_pubkey_file: &str, files: &[(&str, String)]) {
    fs::create_dir_all(s.path("agents.d")).unwrap();
    for (name, text) in files {
        s.write(&format!("agents.d/{name}"), text, 0o644);
    }
    s.write(
        "host.key",
        &format!("private_key_hex={}\n", hex::encode(host_key().to_bytes())),
        0o600,
    );
    let replay = s.path("replay");
    fs::create_dir_all(&replay).unwrap();
    let d = s.dir.display();
    s.write(
        "config.toml",
        &format!(
            "# macos-auth Linux helper configuration sample.\n\
             # Install as /etc/macos-auth/config.toml after adapting paths and IDs.\n\
             \n\
             socket_path = \"{d}/agent.sock\"\n\
             host_key_file = \"{d}/host.key\"\n\
             agent_pubkey_file = \"{d}/{agent_pubkey_file}\"\n\
             key_id = \"{MACOS_AUTH_HOST_KEY_ID}\"\n\
             host_id = \"{HOST_ID}\"\n\
             hostname = \"linux.example.com\"\n\
             service = \"sudo\"\n\
             timeout_ms = 15000\n\
             allowed_future_skew_ms = 30000\n\
             replay_cache_dir = \"{}\"\n",
            replay.display()
        ),
        0o644,
    );
}

/// The host as a macos-auth agent pins it: its key file, which carries no key id.
fn host_pinned_without_id() -> PinnedKey {
    nod_proto::parse_public_key_file(&macos_auth_pub(&host_key())).unwrap()
}

/// A test agent that pins the host from its macos-auth key file and approves, signing with
/// `key` and claiming `agent_key_id`.
fn agent_signing_as(
    s: &Scratch,
    key: SigningKey,
    agent_key_id: &'static str,
) -> std::sync::mpsc::Receiver<Result<Seen, String>> {
    agent_pinning(&s.socket_path(), host_pinned_without_id(), move |req| {
        let body = ResponseBody::answering(
            req,
            Decision::Approved,
            AuthMethod::BiometricOrWatch,
            agent_key_id,
            now_ms(),
        );
        Reply::Frame(signed(body, &key))
    })
}

#[test]
fn macos_auth_files_and_defaults_are_approved() {
    let Some(s) = Scratch::new() else { return };
    macos_auth_host(
        &s,
        "agents.d/agent.pub",
        &[("agent.pub", macos_auth_pub(&agent_key()))],
    );
    let rx = agent_signing_as(&s, agent_key(), MACOS_AUTH_AGENT_KEY_ID);
    let out = s.request(&[]);
    assert_exit(&out, 0);
    let seen = wait(&rx);
    assert_eq!(seen.request.body().key_id, MACOS_AUTH_HOST_KEY_ID);
    assert!(
        fs::read_dir(s.path("replay")).unwrap().next().is_none(),
        "replay_cache_dir is documented as unused, but something was written there"
    );
}

#[test]
fn macos_auth_agents_dir_is_approved() {
    let Some(s) = Scratch::new() else { return };
    macos_auth_host(
        &s,
        "agents.d",
        &[("agent.pub", macos_auth_pub(&agent_key()))],
    );
    let rx = agent_signing_as(&s, agent_key(), MACOS_AUTH_AGENT_KEY_ID);
    assert_exit(&s.request(&[]), 0);
    wait(&rx);
}

#[test]
fn check_config_accepts_the_macos_auth_sample_and_says_replay_cache_dir_is_unused() {
    let Some(s) = Scratch::new() else { return };
    macos_auth_host(
        &s,
        "agents.d",
        &[("agent.pub", macos_auth_pub(&agent_key()))],
    );
    let config = s.config_path();
    let out = helper(&[
        "check-config",
        "--config",
        config.to_str().unwrap(),
        "--user",
        "root",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("ok: no problems found"), "{stdout}");
    assert!(stdout.contains("host key id: host-key-1"), "{stdout}");
    let fingerprint = KeyId::fingerprint(&agent_key().verifying_key());
    assert!(
        stdout.contains(&format!("pinned agent key: {fingerprint} (any key id)")),
        "{stdout}"
    );
    let note = stdout
        .lines()
        .find(|l| l.contains("replay_cache_dir"))
        .unwrap_or_else(|| panic!("no replay_cache_dir note in:\n{stdout}"));
    assert!(note.contains("ignored"), "{note}");
    assert!(note.contains("nonce"), "says why: {note}");
}

/// agents.d with several keys: a key pinned with an id (`key_id=` line) is tried only for that
/// id, a key pinned without one for any id, and the signature decides which key it is.
#[test]
fn several_agent_keys_the_signature_decides() {
    let Some(s) = Scratch::new() else { return };
    let with_id = |key: &SigningKey, id: &str| format!("{}key_id={id}\n", macos_auth_pub(key));
    let laptop = other_key();
    let stranger = SigningKey::from_bytes(&[9; 32]);
    // Another agent pinned under the very id this one claims does not get in its way.
    let files = [
        ("laptop.pub", with_id(&laptop, MACOS_AUTH_AGENT_KEY_ID)),
        ("workstation.pub", macos_auth_pub(&agent_key())),
    ];
    macos_auth_host(&s, "agents.d", &files);
    let rx = agent_signing_as(&s, agent_key(), MACOS_AUTH_AGENT_KEY_ID);
    assert_exit(&s.request(&[]), 0);
    wait(&rx);
    std::fs::remove_file(s.socket_path()).unwrap();

    // The laptop's own key under its pinned id, and under another id.
    let rx = agent_signing_as(&s, laptop.clone(), MACOS_AUTH_AGENT_KEY_ID);
    assert_exit(&s.request(&[]), 0);
    wait(&rx);
    std::fs::remove_file(s.socket_path()).unwrap();
    let rx = agent_signing_as(&s, laptop, "agent-key-2");
    let err = assert_exit(&s.request(&[]), 30);
    assert!(err.contains("key id `agent-key-2`"), "{err}");
    wait(&rx);
    std::fs::remove_file(s.socket_path()).unwrap();

    // A key pinned nowhere gets nothing, whatever id it claims.
    for id in [MACOS_AUTH_AGENT_KEY_ID, "agent-key-2"] {
        let rx = agent_signing_as(&s, stranger.clone(), id);
        let err = assert_exit(&s.request(&[]), 30);
        assert!(
            err.contains("signature does not verify") || err.contains("is not the one paired"),
            "{id}: {err}"
        );
        wait(&rx);
        std::fs::remove_file(s.socket_path()).unwrap();
    }
}
