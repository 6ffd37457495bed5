//! `nod-helper request` against a fake agent: every decision, every way the agent can be
//! missing, and every way a reply can be forged, stale, replayed or malformed.

mod common;

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::*;
use nod_proto::{Decision, MAX_FRAME_LEN, ResponseBody, SignedResponse, frame};

#[test]
fn approved_response_exits_0_and_prints_nothing() {
    let Some(s) = Scratch::new() else { return };
    let rx = agent(&s.socket_path(), decide(Decision::Approved));
    let out = s.request(&[]);
    assert_exit(&out, 0);
    assert!(out.stdout.is_empty(), "request prints nothing on stdout");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let seen = wait(&rx);
    let body = seen.request.body();
    assert_eq!(body.linux_host_id, HOST_ID);
    assert_eq!(body.pam_user, "root");
    assert_eq!(body.pam_service, "sudo");
    assert_eq!(body.pam_ruser.as_deref(), Some("alice"));
    assert_eq!(body.pam_rhost.as_deref(), Some("10.0.0.7"));
    assert_eq!(body.pam_tty.as_deref(), Some("pts/3"));
    assert_eq!(
        body.sudo_command.as_deref(),
        Some("/usr/bin/systemctl restart nginx")
    );
    assert_eq!(body.client_pid, Some(std::process::id()));
    assert_eq!(body.key_id, key_id(&host_key()).as_str());
    assert_eq!(body.request_id.len(), 32);
    assert_eq!(body.expires_at_ms - body.created_at_ms, 5000);
}

#[test]
fn empty_optional_flags_are_sent_as_absent() {
    let Some(s) = Scratch::new() else { return };
    let rx = agent(&s.socket_path(), decide(Decision::Approved));
    let config = s.config_path();
    let out = helper(&[
        "request",
        "--config",
        config.to_str().unwrap(),
        "--user",
        "root",
        "--ruser",
        "",
        "--rhost",
        "",
        "--tty",
        "",
        "--sudo-command",
        "",
        "--service",
        "",
    ]);
    assert_exit(&out, 0);
    let body = wait(&rx).request.body().clone();
    assert_eq!(
        (
            body.pam_ruser,
            body.pam_rhost,
            body.pam_tty,
            body.sudo_command
        ),
        (None, None, None, None)
    );
    assert_eq!(body.pam_service, "sudo");
}

#[test]
fn denied_response_exits_20() {
    let Some(s) = Scratch::new() else { return };
    let rx = agent(&s.socket_path(), decide(Decision::Denied));
    let err = assert_exit(&s.request(&[]), 20);
    assert!(err.contains("denied"), "{err}");
    wait(&rx);
}

#[test]
fn cancelled_response_exits_11() {
    let Some(s) = Scratch::new() else { return };
    let rx = agent(&s.socket_path(), decide(Decision::Cancelled));
    assert_exit(&s.request(&[]), 11);
    wait(&rx);
}

#[test]
fn failed_response_exits_12() {
    let Some(s) = Scratch::new() else { return };
    let rx = agent(&s.socket_path(), decide(Decision::Failed));
    assert_exit(&s.request(&[]), 12);
    wait(&rx);
}

#[test]
fn unavailable_decision_exits_10() {
    let Some(s) = Scratch::new() else { return };
    let rx = agent(&s.socket_path(), decide(Decision::Unavailable));
    assert_exit(&s.request(&[]), 10);
    wait(&rx);
}

#[test]
fn missing_socket_is_unavailable() {
    let Some(s) = Scratch::new() else { return };
    let err = assert_exit(&s.request(&[]), 10);
    assert!(err.contains("no agent socket at"), "{err}");
    assert!(err.contains("ssh -R"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn socket_nobody_listens_on_is_unavailable() {
    let Some(s) = Scratch::new() else { return };
    // A socket file left behind by a dead listener: connect is refused.
    drop(UnixListener::bind(s.socket_path()).unwrap());
    assert_exit(&s.request(&[]), 10);
}

#[test]
fn agent_that_closes_without_reply_is_unavailable() {
    let Some(s) = Scratch::new() else { return };
    let rx = closing_agent(&s.socket_path());
    let err = assert_exit(&s.request(&[]), 10);
    assert!(err.contains("without a reply"), "{err}");
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

#[test]
fn agent_that_never_replies_is_unavailable_at_the_deadline() {
    let Some(s) = Scratch::new() else { return };
    let rx = agent(&s.socket_path(), |_| Reply::Silent);
    let start = Instant::now();
    let err = assert_exit(&s.request(&["--timeout-ms", "300"]), 10);
    let took = start.elapsed();
    assert!(err.contains("within 300 ms"), "{err}");
    assert!(
        took >= Duration::from_millis(250),
        "gave up early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "deadline not kept: {took:?}");
    wait(&rx);
}

/// The first `keep` bytes of the framed, signed approval of `req`.
fn approval_prefix(req: &nod_proto::VerifiedRequest, keep: fn(usize) -> usize) -> Vec<u8> {
    let payload = signed(answer(req, Decision::Approved, &agent_key()), &agent_key());
    let framed = frame::encode(&payload).unwrap();
    framed[..keep(framed.len())].to_vec()
}

#[test]
fn reply_that_starts_and_stalls_past_the_deadline_is_unavailable() {
    let Some(s) = Scratch::new() else { return };
    type Cut = fn(usize) -> usize;
    let cuts: [(&str, Cut); 4] = [
        ("first byte", |_| 1),
        ("header", |_| 4),
        ("half", |n| n / 2),
        ("all but the last byte", |n| n - 1),
    ];
    for (name, keep) in cuts {
        let sock = format!("stall-{}.sock", name.replace(' ', "-"));
        s.write_config_with(&sock, "agent.pub", "");
        let rx = agent(&s.path(&sock), move |req| {
            Reply::Stall(approval_prefix(req, keep))
        });
        let start = Instant::now();
        let out = s.request(&["--timeout-ms", "400"]);
        let took = start.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(10), "stalled after {name}: {err}");
        assert!(err.contains("stopped after"), "{name}: {err}");
        assert!(
            took >= Duration::from_millis(350),
            "{name}: gave up early: {took:?}"
        );
        assert!(
            took < Duration::from_secs(3),
            "{name}: deadline not kept: {took:?}"
        );
        wait(&rx);
    }
}

#[test]
fn reply_that_stalls_after_bytes_that_do_not_decode_is_a_protocol_error() {
    let Some(s) = Scratch::new() else { return };
    let replies: [(&str, &[u8]); 3] = [
        ("a header above the cap", b"\x7f"),
        ("an unknown field", b"\0\0\x01\0{\"hello\""),
        ("not JSON", b"\0\0\x01\0GET / HTTP/1.0"),
    ];
    for (name, bytes) in replies {
        let sock = format!("garbage-{}.sock", name.replace(' ', "-"));
        s.write_config_with(&sock, "agent.pub", "");
        let rx = agent(&s.path(&sock), move |_| Reply::Stall(bytes.to_vec()));
        let out = s.request(&["--timeout-ms", "300"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(32), "{name}: {err}");
        assert!(err.contains("protocol error"), "{name}: {err}");
        wait(&rx);
    }
}

#[test]
fn response_field_changed_after_signing_is_rejected() {
    let Some(s) = Scratch::new() else { return };
    type Edit = fn(&mut SignedResponse);
    let edits: [(&str, Edit); 14] = [
        ("request_id", |r| r.body.request_id.push('0')),
        ("nonce", |r| r.body.nonce[0] ^= 1),
        ("request_hash", |r| r.body.request_hash[31] ^= 1),
        ("linux_host_id", |r| r.body.linux_host_id.push('x')),
        ("pam_service", |r| r.body.pam_service = "login".into()),
        ("pam_user", |r| r.body.pam_user = "daemon".into()),
        ("decision", |r| r.body.decision = Decision::Denied),
        ("auth_method", |r| {
            r.body.auth_method = nod_proto::AuthMethod::Watch
        }),
        ("created_at_ms", |r| r.body.created_at_ms -= 1),
        ("expires_at_ms", |r| r.body.expires_at_ms += 1),
        ("agent_key_id", |r| r.body.agent_key_id.push('x')),
        ("error_code", |r| r.body.error_code = Some("x".into())),
        ("error_message", |r| r.body.error_message = Some("x".into())),
        ("signature", |r| r.signature[0] ^= 1),
    ];
    for (field, edit) in edits {
        let sock = s.path(&format!("agent-{field}.sock"));
        s.write_config_with(&format!("agent-{field}.sock"), "agent.pub", "");
        let rx = agent(&sock, tamper(edit));
        let out = s.request(&[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(30), "changed {field}: {err}");
        wait(&rx);
    }
}

#[test]
fn response_signed_by_unpinned_key_is_rejected() {
    let Some(s) = Scratch::new() else { return };
    let rx = agent(&s.socket_path(), |req| {
        // Claims the pinned key's id, but is signed by another key.
        let body = answer(req, Decision::Approved, &agent_key());
        Reply::Frame(signed(body, &other_key()))
    });
    let err = assert_exit(&s.request(&[]), 30);
    assert!(err.contains("signature"), "{err}");
    wait(&rx);
}

#[test]
fn response_with_another_key_id_than_the_pinned_one_is_rejected() {
    let Some(s) = Scratch::new() else { return };
    let vk = agent_key().verifying_key();
    let pinned = nod_proto::KeyId::new("workstation").unwrap();
    s.write(
        "agent.pub",
        &nod_proto::keys::format_public_key_file(&vk, &pinned, "pinned with an id"),
        0o644,
    );
    let rx = agent(&s.socket_path(), |req| {
        let mut body = answer(req, Decision::Approved, &agent_key());
        body.agent_key_id = "some-other-agent".into();
        Reply::Frame(signed(body, &agent_key()))
    });
    let err = assert_exit(&s.request(&[]), 30);
    assert!(err.contains("key id"), "{err}");
    wait(&rx);
}

#[test]
fn expired_response_is_rejected() {
    let Some(s) = Scratch::new() else { return };
    let rx = agent(&s.socket_path(), |req| {
        let mut body = answer(req, Decision::Approved, &agent_key());
        body.created_at_ms = now_ms() - 20_000;
        body.expires_at_ms = now_ms() - 10_000;
        Reply::Frame(signed(body, &agent_key()))
    });
    let err = assert_exit(&s.request(&[]), 30);
    assert!(err.contains("expired"), "{err}");
    wait(&rx);
}

#[test]
fn response_created_beyond_future_skew_is_rejected() {
    let Some(s) = Scratch::new() else { return };
    let rx = agent(&s.socket_path(), |req| {
        let mut body = answer(req, Decision::Approved, &agent_key());
        body.created_at_ms = now_ms() + 60_000;
        body.expires_at_ms = now_ms() + 70_000;
        Reply::Frame(signed(body, &agent_key()))
    });
    let err = assert_exit(&s.request(&[]), 30);
    assert!(err.contains("future"), "{err}");
    wait(&rx);
}

#[test]
fn response_within_configured_future_skew_is_accepted() {
    let Some(s) = Scratch::new() else { return };
    s.write_config("allowed_future_skew_ms = 120000");
    let rx = agent(&s.socket_path(), |req| {
        let mut body = answer(req, Decision::Approved, &agent_key());
        body.created_at_ms = now_ms() + 60_000;
        body.expires_at_ms = now_ms() + 70_000;
        Reply::Frame(signed(body, &agent_key()))
    });
    assert_exit(&s.request(&[]), 0);
    wait(&rx);
}

#[test]
fn replayed_response_is_rejected() {
    let Some(s) = Scratch::new() else { return };
    let first = agent(&s.socket_path(), decide(Decision::Approved));
    assert_exit(&s.request(&[]), 0);
    let captured = wait(&first).reply;

    std::fs::remove_file(s.socket_path()).unwrap();
    let second = agent(&s.socket_path(), move |_| Reply::Frame(captured));
    let err = assert_exit(&s.request(&[]), 30);
    assert!(err.contains("does not match the request"), "{err}");
    wait(&second);
}

#[test]
fn garbage_reply_is_a_protocol_error() {
    let Some(s) = Scratch::new() else { return };
    let rx = agent(&s.socket_path(), |_| {
        Reply::Frame(b"{\"hello\": 1}".to_vec())
    });
    assert_exit(&s.request(&[]), 32);
    wait(&rx);
}

#[test]
fn oversized_frame_header_is_a_protocol_error() {
    let Some(s) = Scratch::new() else { return };
    let rx = agent(&s.socket_path(), |_| {
        Reply::Raw(((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec())
    });
    let err = assert_exit(&s.request(&[]), 32);
    assert!(err.contains("exceeds"), "{err}");
    wait(&rx);
}

#[test]
fn truncated_reply_is_a_protocol_error() {
    let Some(s) = Scratch::new() else { return };
    let rx = agent(&s.socket_path(), |_| {
        Reply::Raw(b"\0\0\0\x40{\"body\"".to_vec())
    });
    assert_exit(&s.request(&[]), 32);
    wait(&rx);
}

#[test]
fn wrong_protocol_version_is_a_protocol_error() {
    let Some(s) = Scratch::new() else { return };
    let rx = agent(&s.socket_path(), |req| {
        let mut body: ResponseBody = answer(req, Decision::Approved, &agent_key());
        body.protocol_version = 2;
        Reply::Frame(signed(body, &agent_key()))
    });
    let err = assert_exit(&s.request(&[]), 32);
    assert!(err.contains("version"), "{err}");
    wait(&rx);
}

#[test]
fn socket_path_expands_uid_and_user() {
    let Some(s) = Scratch::new() else { return };
    s.write_config_with("{user}-{uid}.sock", "agent.pub", "");
    let rx = agent(&s.path("root-0.sock"), decide(Decision::Approved));
    assert_exit(&s.request(&[]), 0);
    wait(&rx);
}

#[test]
fn agents_dir_pins_every_pub_key() {
    let Some(s) = Scratch::new() else { return };
    std::fs::create_dir(s.path("agents.d")).unwrap();
    s.write_pub("agents.d/laptop.pub", &other_key());
    s.write_pub("agents.d/workstation.pub", &agent_key());
    s.write("agents.d/README", "not a key, ignored\n", 0o644);
    s.write_config_with("agent.sock", "agents.d", "");
    let rx = agent(&s.socket_path(), decide(Decision::Approved));
    assert_exit(&s.request(&[]), 0);
    wait(&rx);
}

#[test]
fn socket_owned_by_another_user_is_refused() {
    let Some(s) = Scratch::new() else { return };
    let _rx = agent(&s.socket_path(), decide(Decision::Approved));
    nix::unistd::chown(
        &s.socket_path(),
        Some(nix::unistd::Uid::from_raw(65534)),
        None,
    )
    .unwrap();
    let err = assert_exit(&s.request(&[]), 31);
    assert!(err.contains("owned by uid 65534"), "{err}");
}

#[test]
fn symlinked_socket_is_refused() {
    let Some(s) = Scratch::new() else { return };
    let _rx = agent(&s.path("real.sock"), decide(Decision::Approved));
    std::os::unix::fs::symlink(s.path("real.sock"), s.socket_path()).unwrap();
    let err = assert_exit(&s.request(&[]), 31);
    assert!(err.contains("symlink"), "{err}");
}

#[test]
fn regular_file_at_socket_path_is_refused() {
    let Some(s) = Scratch::new() else { return };
    s.write("agent.sock", "", 0o600);
    assert_exit(&s.request(&[]), 31);
}

#[test]
fn unknown_user_is_a_config_error() {
    let Some(s) = Scratch::new() else { return };
    let config = s.config_path();
    let out = helper(&[
        "request",
        "--config",
        config.to_str().unwrap(),
        "--user",
        "no-such-user-nod-test",
    ]);
    let err = assert_exit(&out, 31);
    assert!(err.contains("no such user"), "{err}");
}

#[test]
fn reply_from_an_agent_whose_key_is_not_pinned_names_both_keys_and_the_fix() {
    let Some(s) = Scratch::new() else { return };
    // Another agent (a re-keyed workstation) answers, claiming its own fingerprint.
    let rx = agent(&s.socket_path(), |req| {
        let body = answer(req, Decision::Approved, &other_key());
        Reply::Frame(signed(body, &other_key()))
    });
    let err = assert_exit(&s.request(&[]), 30);
    let signer = key_id(&other_key());
    let pinned = key_id(&agent_key());
    assert!(
        err.contains(&format!("the agent's reply is signed by {signer}"))
            && err.contains(&format!("this host pins {pinned}"))
            && err.contains("run `nod pair <this host>` again"),
        "{err}"
    );
    wait(&rx);
}

#[test]
fn request_as_a_user_who_is_not_root_is_unavailable_and_says_why() {
    let Some(s) = Scratch::new() else { return };
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "setpriv is missing (apt-get install util-linux); CI=true, so not skipping"
        );
        eprintln!("skipping: setpriv is missing");
        return;
    };
    // A screen locker's PAM stack: the helper runs as the user, who cannot read the host key.
    let config = s.config_path();
    let out = std::process::Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_nod-helper"))
        .args(["request", "--config"])
        .arg(&config)
        .args(["--user", "nobody", "--service", "xscreensaver"])
        .env_clear()
        .output()
        .unwrap();
    let err = assert_exit(&out, 10);
    assert!(
        err.contains("runs as uid 65534, not root")
            && err.contains("falls through to the next PAM module")
            && !err.contains("Permission denied"),
        "{err}"
    );
    // As root, the same unreadable-for-others key is fine, and an unsafe one is still 31.
    std::fs::set_permissions(
        s.path("host.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    assert_exit(&s.request(&[]), 31);
}
