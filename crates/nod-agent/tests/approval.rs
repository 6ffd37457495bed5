//! The approval service end to end, in process: real Unix socket, real signed requests, real
//! approver programs (`/bin/sh` scripts through the command approver).

mod common;

use std::time::{Duration, Instant};

use common::*;
use nod_agent::audit::{self, Verdict};
use nod_agent::decision::RateSettings;
use nod_agent::now_ms;
use nod_agent::pam::ApprovalSettings;
use nod_agent::pam::hosts::HostsFile;
use nod_proto::keys::format_public_key_file;
use nod_proto::{AuthMethod, Decision, KeyId, MAX_FRAME_LEN, SigningKey, frame};

#[tokio::test]
async fn approves_with_a_signed_response_bound_to_the_request() {
    let h = start("exit 0").await;
    let req = signed(&h, "req-approve");
    let resp = ask(&h, &req).await.expect("a reply");
    let verified = verify(&h, &req, resp);
    assert_eq!(verified.body().decision, Decision::Approved);
    assert_eq!(verified.body().auth_method, AuthMethod::Unknown);
    assert_eq!(verified.body().error_code, None);
    assert!(h.approver_ran());
}

#[tokio::test]
async fn approver_exit_codes_become_decisions() {
    for (script, want, method) in [
        ("exit 1", Decision::Denied, AuthMethod::Unknown),
        ("exit 2", Decision::Cancelled, AuthMethod::Unknown),
        ("exit 3", Decision::Failed, AuthMethod::None),
        ("kill -9 $$", Decision::Failed, AuthMethod::None),
    ] {
        let h = start(script).await;
        let req = signed(&h, "req-decision");
        let verified = verify(&h, &req, ask(&h, &req).await.expect("a reply"));
        assert_eq!(verified.body().decision, want, "{script}");
        assert_eq!(verified.body().auth_method, method, "{script}");
    }
}

#[tokio::test]
async fn approver_receives_the_prompt_as_json() {
    let h = start("exit 0").await;
    let req = signed(&h, "req-prompt");
    ask(&h, &req).await.expect("a reply");
    let prompt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.prompt_file()).unwrap()).unwrap();
    assert_eq!(prompt["kind"], "pam");
    assert_eq!(prompt["host"], "web-1.example.com");
    assert_eq!(prompt["host_id"], "web-1");
    assert_eq!(prompt["service"], "sudo");
    assert_eq!(prompt["user"], "alice");
    assert_eq!(prompt["ruser"], "alice");
    assert_eq!(prompt["tty"], "/dev/pts/3");
    assert_eq!(prompt["rhost"], "10.0.0.5");
    assert_eq!(prompt["command"], "/usr/bin/apt upgrade");
    assert_eq!(prompt["request_id"], "req-prompt");
}

#[tokio::test]
async fn unknown_host_is_closed_without_reply_or_prompt() {
    let h = start("exit 0").await;
    let mut b = body(&h, "req-stranger", 20_000);
    b.linux_host_id = "stranger".into();
    let req = b.sign(&h.host_key);
    assert!(ask(&h, &req).await.is_none());
    assert!(!h.approver_ran());
    let lines = audit_lines(&h);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["decision"], "refused");
    assert_eq!(lines[0]["reason"], "unknown_host");
    assert_eq!(lines[0]["host_id"], "stranger");
}

#[tokio::test]
async fn bad_signature_is_closed_without_prompt() {
    let h = start("exit 0").await;
    let mut req = signed(&h, "req-badsig");
    req.signature[0] ^= 1;
    assert!(ask(&h, &req).await.is_none());
    // Signed by another key, claiming web-1.
    let other = SigningKey::from_bytes(&[0x22; 32]);
    let forged = body(&h, "req-forged", 20_000).sign(&other);
    assert!(ask(&h, &forged).await.is_none());
    assert!(!h.approver_ran());
    assert!(
        audit_lines(&h)
            .iter()
            .all(|l| l["reason"] == "bad_signature")
    );
}

#[tokio::test]
async fn wrong_key_id_is_closed_without_prompt() {
    let h = start("exit 0").await;
    let mut b = body(&h, "req-keyid", 20_000);
    b.key_id = "some-other-key".into();
    assert!(ask(&h, &b.sign(&h.host_key)).await.is_none());
    assert!(!h.approver_ran());
    assert_eq!(audit_lines(&h)[0]["reason"], "wrong_key_id");
}

#[tokio::test]
async fn stale_and_future_requests_are_closed_without_prompt() {
    let h = start("exit 0").await;
    let now = now_ms();
    let mut stale = body(&h, "req-stale", 20_000);
    stale.created_at_ms = now - 60_000;
    stale.expires_at_ms = now - 30_000;
    assert!(ask(&h, &stale.sign(&h.host_key)).await.is_none());
    let mut future = body(&h, "req-future", 20_000);
    future.created_at_ms = now + 120_000;
    future.expires_at_ms = now + 180_000;
    assert!(ask(&h, &future.sign(&h.host_key)).await.is_none());
    assert!(!h.approver_ran());
    let reasons: Vec<_> = audit_lines(&h)
        .iter()
        .map(|l| l["reason"].clone())
        .collect();
    assert_eq!(reasons, ["expired", "from_future"]);
}

#[tokio::test]
async fn replayed_request_is_closed_the_second_time() {
    let h = start("exit 0").await;
    let req = signed(&h, "req-replay");
    let first = ask(&h, &req).await.expect("first is answered");
    assert_eq!(verify(&h, &req, first).body().decision, Decision::Approved);
    assert!(ask(&h, &req).await.is_none());
    assert_eq!(h.approver_runs(), 1);
    assert_eq!(audit_lines(&h)[1]["reason"], "replay");
}

#[tokio::test]
async fn oversized_frame_header_is_closed_at_once() {
    let h = start("exit 0").await;
    let started = Instant::now();
    let header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
    assert!(exchange_raw(&h.socket, &header).await.is_empty());
    assert!(exchange_raw(&h.socket, &[0xff; 4]).await.is_empty());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!h.approver_ran());
}

#[tokio::test]
async fn rate_limit_answers_unavailable() {
    let rate = RateSettings {
        burst: 2,
        per_minute: 1,
    };
    let h = start_rated("exit 0", ApprovalSettings::default(), rate, true).await;
    for i in 0..2 {
        let req = signed(&h, &format!("req-rl-{i}"));
        let resp = verify(&h, &req, ask(&h, &req).await.expect("a reply"));
        assert_eq!(resp.body().decision, Decision::Approved);
    }
    let req = signed(&h, "req-rl-3");
    let resp = verify(&h, &req, ask(&h, &req).await.expect("a signed refusal"));
    assert_eq!(resp.body().decision, Decision::Unavailable);
    assert_eq!(resp.body().auth_method, AuthMethod::None);
    assert_eq!(resp.body().error_code.as_deref(), Some("rate_limited"));
    assert_eq!(h.approver_runs(), 2);
    // Another user on the same host is not limited by alice's bucket.
    let mut b = body(&h, "req-rl-bob", 20_000);
    b.pam_user = "bob".into();
    let req = b.sign(&h.host_key);
    let resp = verify(&h, &req, ask(&h, &req).await.expect("a reply"));
    assert_eq!(resp.body().decision, Decision::Approved);
    assert_eq!(audit_lines(&h)[2]["reason"], "rate_limited");
}

/// Garbage of every kind, all at once, plus idle connections that never send a byte: a valid
/// request must still be approved, without waiting for the idle ones' read deadline.
#[tokio::test]
async fn valid_request_is_approved_after_1000_garbage_connections() {
    nod_agent::daemon::agent::raise_nofile_limit();
    let h = start("exit 0").await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(tokio::net::UnixStream::connect(&h.socket).await.unwrap());
    }
    let garbage: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        frame::encode(b"{not json").unwrap(),
        frame::encode(b"{\"body\":{},\"signature\":[]}").unwrap(),
        [0xff, 0xff, 0xff, 0xff].to_vec(),
        vec![0, 0],
        frame::encode(&[0u8; 300]).unwrap(),
        Vec::new(),
    ];
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let socket = h.socket.clone();
        let bytes = garbage[i % garbage.len()].clone();
        let sent = std::sync::Arc::clone(&sent);
        tasks.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
            let _ = stream.write_all(&bytes).await;
            sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut out = Vec::new();
            let _ = stream.read_to_end(&mut out).await;
            out
        });
    }
    while sent.load(std::sync::atomic::Ordering::SeqCst) < 1000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Some garbage (a half header) is still waiting out its 5 s read deadline now.
    let started = Instant::now();
    let req = signed(&h, "req-after-garbage");
    let resp = verify(&h, &req, ask(&h, &req).await.expect("a reply"));
    assert_eq!(resp.body().decision, Decision::Approved);
    assert!(started.elapsed() < Duration::from_secs(3));
    while let Some(reply) = tasks.join_next().await {
        assert!(reply.unwrap().is_empty(), "garbage never gets a reply");
    }
    assert_eq!(h.approver_runs(), 1);
    drop(idle);
}

#[tokio::test]
async fn prompt_ends_when_the_request_expires() {
    let h = start("sleep 30; exit 0").await;
    let req = body(&h, "req-slow", 2_000).sign(&h.host_key);
    let resp = ask(&h, &req).await.expect("a reply");
    // The answer arrives before the helper's deadline (= the request's expiry), so the helper
    // reads a whole frame instead of timing out in the middle of one.
    assert!(
        now_ms() < req.body.expires_at_ms,
        "reply came after the request expired"
    );
    let resp = verify(&h, &req, resp);
    assert_ne!(resp.body().decision, Decision::Approved);
}

#[tokio::test]
async fn prompts_are_answered_one_at_a_time() {
    // The script fails if another prompt is running at the same time.
    let lock = std::env::temp_dir().join(format!("nod-serial-lock-{}", std::process::id()));
    let h = start(&format!(
        "mkdir '{0}' 2>/dev/null || exit 7; sleep 0.2; rmdir '{0}'; exit 0",
        lock.display()
    ))
    .await;
    let reqs: Vec<_> = (0..3)
        .map(|i| signed(&h, &format!("req-serial-{i}")))
        .collect();
    let answers = futures_join(&h, &reqs).await;
    for (req, resp) in reqs.iter().zip(answers) {
        let resp = verify(&h, req, resp.expect("a reply"));
        assert_eq!(resp.body().decision, Decision::Approved);
    }
}

async fn futures_join(
    h: &Harness,
    reqs: &[nod_proto::SignedRequest],
) -> Vec<Option<nod_proto::SignedResponse>> {
    let (a, b, c) = tokio::join!(ask(h, &reqs[0]), ask(h, &reqs[1]), ask(h, &reqs[2]));
    vec![a, b, c]
}

#[tokio::test]
async fn helper_hanging_up_withdraws_the_prompt() {
    let h = start("sleep 30; exit 0").await;
    let req = signed(&h, "req-hangup");
    let bytes = frame::encode(&req.to_json()).unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::UnixStream::connect(&h.socket).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        // Wait until the approver runs, then hang up.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !h.approver_ran() {
            assert!(Instant::now() < deadline, "approver never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = audit_lines(&h);
        if let Some(last) = lines.last() {
            assert_eq!(last["reason"], "withdrawn");
            assert_eq!(last["decision"], "cancelled");
            break;
        }
        assert!(Instant::now() < deadline, "prompt was not withdrawn");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn hosts_added_while_running_are_picked_up() {
    let h = start_with("exit 0", ApprovalSettings::default(), false).await;
    let req = signed(&h, "req-before-add");
    assert!(ask(&h, &req).await.is_none());
    let mut hosts = HostsFile::load(&h.paths.hosts_file()).unwrap();
    let vk = h.host_key.verifying_key();
    let file = format_public_key_file(&vk, &KeyId::fingerprint(&vk), "web-1");
    hosts
        .add(HOST_ID, &file, std::path::Path::new("web-1.pub"), None)
        .unwrap();
    hosts.save(&h.paths.hosts_file()).unwrap();
    let req = signed(&h, "req-after-add");
    let resp = verify(&h, &req, ask(&h, &req).await.expect("a reply"));
    assert_eq!(resp.body().decision, Decision::Approved);
}

/// macos-auth's defaults: its `host_ed25519.pub` holds only `public_key_hex=`, and its helper
/// claims `key_id = "host-key-1"`. Added as it is, the host is pinned by key alone.
#[tokio::test]
async fn host_added_from_a_macos_auth_key_file_is_approved_under_host_key_1() {
    let h = start_with("exit 0", ApprovalSettings::default(), false).await;
    let mut hosts = HostsFile::load(&h.paths.hosts_file()).unwrap();
    let file = format!(
        "public_key_hex={}\n",
        hex::encode(h.host_key.verifying_key().as_bytes())
    );
    hosts
        .add(
            HOST_ID,
            &file,
            std::path::Path::new("host_ed25519.pub"),
            None,
        )
        .unwrap();
    hosts.save(&h.paths.hosts_file()).unwrap();

    let mut b = body(&h, "req-host-key-1", 20_000);
    b.key_id = "host-key-1".into();
    let req = b.sign(&h.host_key);
    let resp = verify(&h, &req, ask(&h, &req).await.expect("a reply"));
    assert_eq!(resp.body().decision, Decision::Approved);

    // The key id picks nothing here; the signature still has to be the host's.
    let mut forged = body(&h, "req-forged", 20_000);
    forged.key_id = "host-key-1".into();
    let forged = forged.sign(&SigningKey::from_bytes(&[0x22; 32]));
    assert!(ask(&h, &forged).await.is_none());
    assert_eq!(audit_lines(&h).last().unwrap()["reason"], "bad_signature");
    assert_eq!(h.approver_runs(), 1);
}

#[tokio::test]
async fn audit_chain_records_every_decision_and_verifies() {
    let h = start("exit 0").await;
    let req = signed(&h, "req-audit-1");
    ask(&h, &req).await.unwrap();
    ask(&h, &req).await; // replay
    let mut b = body(&h, "req-audit-2", 20_000);
    b.linux_host_id = "stranger".into();
    ask(&h, &b.sign(&h.host_key)).await;
    let lines = audit_lines(&h);
    let summary: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["decision"].as_str().unwrap().to_owned(),
                l["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("approved".into(), String::new()),
            ("refused".into(), "replay".into()),
            ("refused".into(), "unknown_host".into()),
        ]
    );
    for l in &lines {
        assert_eq!(l["service"], "pam");
        assert_eq!(l["pam_service"], "sudo");
        assert_eq!(l["user"], "alice");
        assert!(l["time"].as_str().unwrap().ends_with('Z'));
        assert!(l.get("signature").is_none() && l.get("nonce").is_none());
    }
    assert_eq!(
        audit::verify(&h.paths.audit_log()).unwrap(),
        Verdict::Intact { entries: 3 }
    );
    // Delete the middle line: detected at the line after it.
    let text = std::fs::read_to_string(h.paths.audit_log()).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(h.paths.audit_log(), kept.join("\n") + "\n").unwrap();
    assert!(matches!(
        audit::verify(&h.paths.audit_log()).unwrap(),
        Verdict::Broken { line: 2, .. }
    ));
}

#[tokio::test]
async fn slow_or_truncated_frames_are_closed_without_prompt() {
    let settings = ApprovalSettings {
        read_timeout: Duration::from_millis(300),
        ..ApprovalSettings::default()
    };
    let h = start_with("exit 0", settings, true).await;
    // Announces 1 MiB, sends 10 bytes, then waits: cut off at the read deadline.
    let started = Instant::now();
    let mut partial = (MAX_FRAME_LEN as u32).to_be_bytes().to_vec();
    partial.extend_from_slice(&[b'{'; 10]);
    assert!(exchange_raw(&h.socket, &partial).await.is_empty());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(3));
    // A valid request cut short, then EOF.
    let req = signed(&h, "req-truncated");
    let bytes = frame::encode(&req.to_json()).unwrap();
    let mut stream = tokio::net::UnixStream::connect(&h.socket).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(&bytes[..bytes.len() - 5]).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty());
    }
    assert!(!h.approver_ran());
    // The same request, complete, still works: nothing of the cut one was remembered.
    let resp = verify(&h, &req, ask(&h, &req).await.expect("a reply"));
    assert_eq!(resp.body().decision, Decision::Approved);
}

#[tokio::test]
async fn a_request_that_lives_longer_than_any_helper_waits_is_refused() {
    let h = start("exit 0").await;
    let ten_years = 10 * 365 * 24 * 3600 * 1000;
    let req = body(&h, "req-forever", ten_years).sign(&h.host_key);
    assert!(ask(&h, &req).await.is_none());
    assert!(!h.approver_ran());
    assert_eq!(
        audit_lines(&h).last().unwrap()["reason"],
        "lifetime_too_long"
    );
}

#[tokio::test]
async fn a_request_made_before_the_agent_started_is_refused() {
    let h = start("exit 0").await;
    // Made a minute ago, still valid for nine: a capture replayed after a restart.
    let mut b = body(&h, "req-old", 9 * 60_000);
    b.created_at_ms -= 60_000;
    let req = b.sign(&h.host_key);
    assert!(ask(&h, &req).await.is_none());
    assert!(!h.approver_ran());
    assert_eq!(
        audit_lines(&h).last().unwrap()["reason"],
        "before_agent_start"
    );
}

#[tokio::test]
async fn a_host_that_fills_its_replay_share_locks_out_only_itself() {
    let settings = ApprovalSettings {
        replay_share: 3,
        ..ApprovalSettings::default()
    };
    let h = start_with("exit 0", settings, true).await;
    // Three live requests fill web-1's share…
    for i in 0..3 {
        let req = signed(&h, &format!("req-fill-{i}"));
        assert!(ask(&h, &req).await.is_some());
    }
    let req = signed(&h, "req-fill-more");
    assert!(ask(&h, &req).await.is_none());
    assert_eq!(
        audit_lines(&h).last().unwrap()["reason"],
        "replay_cache_full"
    );
    // …and another pinned host is still served.
    let other = ed25519_dalek::SigningKey::from_bytes(&[0x22; 32]);
    let line = nod_proto::keys::openssh_public_line(&other.verifying_key(), "root@db-1");
    let mut hosts = nod_agent::pam::hosts::HostsFile::load(&h.paths.hosts_file()).unwrap();
    hosts
        .add("db-1", &line, std::path::Path::new("db.pub"), None)
        .unwrap();
    hosts.save(&h.paths.hosts_file()).unwrap();
    let mut b = body(&h, "req-db", 20_000);
    b.linux_host_id = "db-1".into();
    b.key_id = nod_proto::KeyId::fingerprint(&other.verifying_key())
        .as_str()
        .to_owned();
    let req = b.sign(&other);
    let resp = verify(&h, &req, ask(&h, &req).await.expect("a reply"));
    assert_eq!(resp.body().decision, Decision::Approved);
}
