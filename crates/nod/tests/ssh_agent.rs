//! The SSH agent service of the real `nod agent`, driven by the real OpenSSH tools (`ssh-add`,
//! `ssh-keygen`), with XDG directories in a temp dir and confirmations through the command
//! approver (a shell script).
//!
//! Without `ssh-add`/`ssh-keygen` the tests are skipped with a notice, except under `CI=true`,
//! where they fail.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

mod common;

use common::{Agent, TempDir, have_openssh, out, ssh_add, stderr, stdout, tool, write_script};

/// Generates `name` (private) and `name.pub` in the temp dir; returns the private key's path.
fn keygen(dir: &TempDir, name: &str, kind: &str, bits: &str) -> PathBuf {
    let path = dir.path(name);
    let o = tool(dir, "ssh-keygen")
        .args(["-q", "-t", kind, "-b", bits, "-N", "", "-C"])
        .arg(format!("{name}@nod-test"))
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    path
}

/// `SHA256:…` of a key file, as `ssh-keygen -l` prints it.
fn fingerprint(dir: &TempDir, key: &Path) -> String {
    let o = tool(dir, "ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

/// Adds `key` and deletes the private file, so signing can only go through the agent.
fn add_and_forget(dir: &TempDir, key: &Path, flags: &[&str]) {
    let o = tool(dir, "ssh-add").args(flags).arg(key).output().unwrap();
    assert!(o.status.success(), "{}", out(&o));
    fs::remove_file(key).unwrap();
}

/// `ssh-keygen -Y sign -n file` of a fixed message with `key`'s public half (via the agent).
fn sign(dir: &TempDir, key: &Path) -> Output {
    let data = dir.path("message.txt");
    fs::write(&data, b"signed by nod's ssh agent\n").unwrap();
    let _ = fs::remove_file(dir.path("message.txt.sig"));
    tool(dir, "ssh-keygen")
        .args(["-Y", "sign", "-n", "file", "-f"])
        .arg(key.with_extension("pub"))
        .arg(&data)
        .output()
        .unwrap()
}

/// `ssh-keygen -Y verify` of the signature `sign` made, against an allowed_signers file.
fn verify(dir: &TempDir, key: &Path) -> Output {
    let public = fs::read_to_string(key.with_extension("pub")).unwrap();
    let allowed = dir.path("allowed_signers");
    fs::write(&allowed, format!("me@nod-test {public}")).unwrap();
    tool(dir, "ssh-keygen")
        .args(["-Y", "verify", "-I", "me@nod-test", "-n", "file", "-f"])
        .arg(&allowed)
        .arg("-s")
        .arg(dir.path("message.txt.sig"))
        .stdin(fs::File::open(dir.path("message.txt")).unwrap())
        .output()
        .unwrap()
}

#[test]
fn ssh_add_lists_removes_and_signs_with_each_key_type() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-ssh", &["home"]);
    let agent = Agent::start(&dir, None);
    let socket = dir.socket();
    assert_eq!(
        fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let log = fs::read_to_string(dir.path("agent.log")).unwrap();
    assert!(
        log.contains(&format!(
            "SSH_AUTH_SOCK={}; export SSH_AUTH_SOCK;",
            socket.display()
        )),
        "{log}"
    );

    let o = ssh_add(&dir, &["-l"]);
    assert!(stdout(&o).contains("no identities"), "{}", out(&o));

    let keys = [
        keygen(&dir, "id_ed25519", "ed25519", "256"),
        keygen(&dir, "id_p256", "ecdsa", "256"),
        keygen(&dir, "id_p384", "ecdsa", "384"),
        keygen(&dir, "id_p521", "ecdsa", "521"),
        keygen(&dir, "id_rsa", "rsa", "3072"),
    ];
    let fingerprints: Vec<String> = keys.iter().map(|k| fingerprint(&dir, k)).collect();
    for key in &keys {
        add_and_forget(&dir, key, &[]);
    }

    let o = ssh_add(&dir, &["-l"]);
    assert!(o.status.success(), "{}", out(&o));
    for (fp, key) in fingerprints.iter().zip(&keys) {
        assert!(
            stdout(&o).contains(fp.as_str()),
            "{key:?} missing: {}",
            out(&o)
        );
    }
    let o = ssh_add(&dir, &["-L"]);
    assert!(o.status.success(), "{}", out(&o));
    for key in &keys {
        let public = fs::read_to_string(key.with_extension("pub")).unwrap();
        let blob = public.split_whitespace().nth(1).unwrap();
        assert!(stdout(&o).contains(blob), "{key:?} missing: {}", out(&o));
    }

    for key in &keys {
        let o = sign(&dir, key);
        assert!(o.status.success(), "sign with {key:?}: {}", out(&o));
        let o = verify(&dir, key);
        assert!(o.status.success(), "verify {key:?}: {}", out(&o));
    }

    let o = ssh_add(
        &dir,
        &["-d", keys[0].with_extension("pub").to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", out(&o));
    let o = ssh_add(&dir, &["-l"]);
    assert!(
        !stdout(&o).contains(fingerprints[0].as_str()),
        "{}",
        out(&o)
    );
    assert!(stdout(&o).contains(fingerprints[1].as_str()), "{}", out(&o));
    assert!(!sign(&dir, &keys[0]).status.success());

    let o = ssh_add(&dir, &["-D"]);
    assert!(o.status.success(), "{}", out(&o));
    let o = ssh_add(&dir, &["-l"]);
    assert!(stdout(&o).contains("no identities"), "{}", out(&o));

    agent.stop();
    assert!(!socket.exists(), "ssh agent socket removed on SIGTERM");
    // `ssh-add -D` also sends protocol 1's remove-all (9), which OpenSSH's agent takes as
    // remove-all: no complaint in the log.
    let log = fs::read_to_string(dir.path("agent.log")).unwrap();
    for complaint in [
        "not supported",
        "Command",
        "nknown message",
        "invalid message",
    ] {
        assert!(!log.contains(complaint), "{complaint:?} in {log}");
    }
}

/// OpenSSH writes an ECDSA private scalar as a minimal mpint: about one P-521 key in four has
/// a shorter one than the curve's width. Every such key must add (several keys make one with
/// a short scalar near certain; `keystore::openssh`'s unit tests build one on purpose).
#[test]
fn p521_keys_add_and_sign_whatever_their_scalar() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-ssh", &["home"]);
    let agent = Agent::start(&dir, None);
    for i in 0..12 {
        let key = keygen(&dir, &format!("id_p521_{i}"), "ecdsa", "521");
        add_and_forget(&dir, &key, &[]);
        let o = sign(&dir, &key);
        assert!(o.status.success(), "sign with {key:?}: {}", out(&o));
        let o = verify(&dir, &key);
        assert!(o.status.success(), "verify {key:?}: {}", out(&o));
    }
    agent.stop();
}

/// A CA key and a user certificate for `key` made by `ssh-keygen -s`, with `validity` (`-V`)
/// when given.
fn certify(dir: &TempDir, key: &Path, validity: Option<&str>) -> PathBuf {
    let ca = dir.path("user_ca");
    if !ca.exists() {
        let o = tool(dir, "ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&ca)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", out(&o));
    }
    let mut cmd = tool(dir, "ssh-keygen");
    cmd.args(["-q", "-s"])
        .arg(&ca)
        .args(["-I", "nod-test cert", "-n", "me"]);
    if let Some(v) = validity {
        cmd.args(["-V", v]);
    }
    let o = cmd.arg(key.with_extension("pub")).output().unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let cert = PathBuf::from(format!("{}-cert.pub", key.display()));
    assert!(cert.exists());
    cert
}

/// `ssh-keygen -s` without `-V` makes a certificate valid forever (valid_before 2^64-1): it is
/// added, listed, signs and is removed like any other.
#[test]
fn a_certificate_valid_forever_is_added_and_signs() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-ssh", &["home"]);
    let agent = Agent::start(&dir, None);
    let key = keygen(&dir, "id_ed25519", "ed25519", "256");
    let cert = certify(&dir, &key, None);
    let o = tool(&dir, "ssh-keygen")
        .arg("-Lf")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(stdout(&o).contains("Valid: forever"), "{}", out(&o));
    let o = tool(&dir, "ssh-add").arg(&key).output().unwrap();
    assert!(stderr(&o).contains("Certificate added"), "{}", out(&o));
    let o = ssh_add(&dir, &["-L"]);
    let cert_line = fs::read_to_string(&cert).unwrap();
    let blob = cert_line.split_whitespace().nth(1).unwrap();
    assert!(stdout(&o).contains(blob), "certificate listed: {}", out(&o));
    fs::remove_file(&key).unwrap();

    // `ssh-keygen -Y sign -f <cert>` signs through the agent with the certificate identity.
    let data = dir.path("message.txt");
    fs::write(&data, b"signed with a certificate\n").unwrap();
    let o = tool(&dir, "ssh-keygen")
        .args(["-Y", "sign", "-n", "file", "-f"])
        .arg(&cert)
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let o = tool(&dir, "ssh-keygen")
        .args(["-Y", "check-novalidate", "-n", "file", "-s"])
        .arg(dir.path("message.txt.sig"))
        .stdin(fs::File::open(&data).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));

    // `ssh-add -d -` of the certificate removes it and leaves the key.
    let o = tool(&dir, "ssh-add")
        .args(["-d", "-"])
        .stdin(fs::File::open(&cert).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let o = ssh_add(&dir, &["-L"]);
    assert!(!stdout(&o).contains(blob), "{}", out(&o));
    assert!(stdout(&o).lines().count() == 1, "{}", out(&o));
    agent.stop();
}

/// An expired certificate sent without a lifetime is kept, as OpenSSH's agent keeps it: that
/// is what `ssh-add -N` (no expiry handling, OpenSSH 10.1) sends, and what Debian 12's
/// ssh-add 9.2 always sends. Without -N, ssh-add 10.x leaves expired certificates out and
/// sends a lifetime for the others, which the agent honours.
#[test]
fn an_expired_certificate_sent_without_a_lifetime_is_kept() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-ssh", &["home"]);
    let agent = Agent::start(&dir, None);
    let key = keygen(&dir, "id_ed25519", "ed25519", "256");
    let cert = certify(&dir, &key, Some("20200101:20200102"));
    let help = tool(&dir, "ssh-add")
        .arg("-N")
        .arg("/nonexistent")
        .output()
        .unwrap();
    // ssh-add 10.1+ knows -N; older ones send certificates as -N does anyway.
    let args: &[&str] = if stderr(&help).contains("option -- N") {
        &[]
    } else {
        &["-N"]
    };
    let o = tool(&dir, "ssh-add").args(args).arg(&key).output().unwrap();
    assert!(stderr(&o).contains("Certificate added"), "{}", out(&o));
    let blob = fs::read_to_string(&cert).unwrap();
    let blob = blob.split_whitespace().nth(1).unwrap().to_owned();
    let o = ssh_add(&dir, &["-L"]);
    assert!(
        stdout(&o).contains(&blob),
        "expired certificate kept: {}",
        out(&o)
    );
    agent.stop();
}

/// SIGUSR1 drops every key and certificate added through the socket, as OpenSSH 10's agent
/// does, and the agent goes on serving; the keystore's persistent keys stay.
#[test]
fn sigusr1_drops_added_keys_and_keeps_serving() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-ssh", &["home"]);
    let o = common::nod(&dir)
        .args([
            "keys",
            "generate",
            "--name",
            "persistent",
            "--policy",
            "never",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let agent = Agent::start(&dir, None);
    let key = keygen(&dir, "id_ed25519", "ed25519", "256");
    let fp = fingerprint(&dir, &key);
    certify(&dir, &key, None);
    add_and_forget(&dir, &key, &[]);
    let o = ssh_add(&dir, &["-l"]);
    assert_eq!(
        stdout(&o).lines().count(),
        3,
        "key, cert, persistent: {}",
        out(&o)
    );

    kill(Pid::from_raw(agent.0.id() as i32), Signal::SIGUSR1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let o = ssh_add(&dir, &["-l"]);
        if !stdout(&o).contains(fp.as_str()) {
            assert_eq!(stdout(&o).lines().count(), 1, "{}", out(&o));
            assert!(stdout(&o).contains("persistent"), "{}", out(&o));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", out(&o));
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = fs::read_to_string(dir.path("agent.log")).unwrap();
    assert!(log.contains("SIGUSR1: removed all 2 added keys"), "{log}");
    agent.stop();
}

/// OpenSSH's agent lets only its own user and root in (getpeereid). Made reachable by anyone
/// (0711 directory, 0666 socket), the socket still gives uid `nobody` nothing: the connection
/// is closed before a byte is read, and the log says who it was.
#[test]
fn a_peer_of_another_uid_is_closed() {
    if !have_openssh() {
        return;
    }
    if !common::is_root_or_skip("run ssh-add as uid nobody") {
        return;
    }
    let dir = TempDir::new("nod-ssh", &["home"]);
    let agent = Agent::start(&dir, None);
    let key = keygen(&dir, "id_ed25519", "ed25519", "256");
    add_and_forget(&dir, &key, &[]);
    let socket = dir.socket();
    for d in [dir.root().to_owned(), dir.path("run"), dir.path("run/nod")] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o711)).unwrap();
    }
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .args(["ssh-add", "-L"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("SSH_AUTH_SOCK", &socket)
        .output()
        .unwrap();
    assert!(!o.status.success(), "nobody was served: {}", out(&o));
    assert!(!stdout(&o).contains("ssh-ed25519"), "{}", out(&o));
    // It did reach the agent (the socket is open to all): the agent hung up on it.
    assert!(
        !stderr(&o).contains("Error connecting") && !stderr(&o).contains("Permission denied"),
        "{}",
        out(&o)
    );
    // The agent's own user (root here) is still served.
    assert!(ssh_add(&dir, &["-L"]).status.success());
    agent.stop();
    let log = fs::read_to_string(dir.path("agent.log")).unwrap();
    assert!(
        log.contains("connection closed: uid 65534"),
        "refusal logged: {log}"
    );
}

#[test]
fn key_added_with_a_lifetime_expires() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-ssh", &["home"]);
    let agent = Agent::start(&dir, None);
    let key = keygen(&dir, "id_ed25519", "ed25519", "256");
    let fp = fingerprint(&dir, &key);
    add_and_forget(&dir, &key, &["-t", "1"]);
    let o = ssh_add(&dir, &["-l"]);
    assert!(stdout(&o).contains(fp.as_str()), "{}", out(&o));
    std::thread::sleep(Duration::from_millis(1500));
    let o = ssh_add(&dir, &["-l"]);
    assert!(stdout(&o).contains("no identities"), "{}", out(&o));
    assert!(!sign(&dir, &key).status.success());
    agent.stop();
}

#[test]
fn locked_agent_lists_nothing_and_refuses_to_sign_until_unlocked() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-ssh", &["home"]);
    let agent = Agent::start(&dir, None);
    let key = keygen(&dir, "id_ed25519", "ed25519", "256");
    let fp = fingerprint(&dir, &key);
    add_and_forget(&dir, &key, &[]);
    let askpass = dir.path("askpass.sh");
    let with_passphrase = |flag: &str, passphrase: &str| {
        write_script(&askpass, &format!("echo '{passphrase}'"));
        tool(&dir, "ssh-add")
            .arg(flag)
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .output()
            .unwrap()
    };

    let o = with_passphrase("-x", "hunter2");
    assert!(o.status.success(), "{}", out(&o));
    let o = ssh_add(&dir, &["-l"]);
    assert!(stdout(&o).contains("no identities"), "{}", out(&o));
    assert!(!sign(&dir, &key).status.success());

    let o = with_passphrase("-X", "wrong");
    assert!(!o.status.success(), "{}", out(&o));
    let o = with_passphrase("-X", "hunter2");
    assert!(o.status.success(), "{}", out(&o));
    let o = ssh_add(&dir, &["-l"]);
    assert!(stdout(&o).contains(fp.as_str()), "{}", out(&o));
    assert!(sign(&dir, &key).status.success());
    agent.stop();
}

#[test]
fn confirm_key_signs_only_when_the_approver_says_yes() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-ssh", &["home"]);
    let approver = dir.path("approve.sh");
    let prompt = dir.path("prompt.json");
    let answer = dir.path("answer");
    write_script(
        &approver,
        &format!(
            "cat > '{}'\nexit \"$(cat '{}')\"",
            prompt.display(),
            answer.display()
        ),
    );
    let agent = Agent::start(&dir, Some(&approver));
    let key = keygen(&dir, "id_ed25519", "ed25519", "256");
    let fp = fingerprint(&dir, &key);
    add_and_forget(&dir, &key, &["-c"]);

    fs::write(&answer, "0").unwrap();
    let o = sign(&dir, &key);
    assert!(o.status.success(), "{}", out(&o));
    assert!(verify(&dir, &key).status.success());
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&prompt).unwrap()).unwrap();
    assert_eq!(json["kind"], "ssh-sign");
    assert_eq!(json["fingerprint"], fp.as_str());
    assert_eq!(json["key_comment"], "id_ed25519@nod-test");
    assert!(json["caller_pid"].as_i64().is_some_and(|p| p > 0), "{json}");
    assert!(
        json["caller_exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("/ssh-keygen")),
        "{json}"
    );

    fs::write(&answer, "1").unwrap();
    fs::remove_file(&prompt).unwrap();
    let o = sign(&dir, &key);
    assert!(!o.status.success(), "{}", out(&o));
    assert!(prompt.exists(), "the approver was asked");

    agent.stop();
    let audit = fs::read_to_string(dir.path("state/nod/audit.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{audit}");
    assert_eq!(lines[0]["service"], "ssh");
    assert_eq!(lines[0]["decision"], "approved");
    assert_eq!(lines[1]["decision"], "denied");
    assert_eq!(lines[1]["key_fingerprint"], fp.as_str());
    let o = Command::new(env!("CARGO_BIN_EXE_nod"))
        .env("XDG_STATE_HOME", dir.path("state"))
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
}

/// Sends `bytes` on a fresh connection and returns whatever comes back until the agent closes
/// or goes quiet.
fn exchange(socket: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    reply
}

const FAILURE: [u8; 5] = [0, 0, 0, 1, 5];

#[test]
fn malformed_messages_do_not_stop_the_next_client() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-ssh", &["home"]);
    let agent = Agent::start(&dir, None);
    let socket = dir.socket();

    // Over the 256 KiB cap: the connection is closed without an answer.
    let mut oversized = (256 * 1024 + 1u32).to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0u8; 1024]);
    assert_eq!(exchange(&socket, &oversized), b"");
    assert_eq!(exchange(&socket, &[0xff; 4]), b"");
    // Unknown message type, trailing bytes, empty frame: FAILURE, and the connection goes on.
    let mut garbage = vec![0, 0, 0, 3, 200, 1, 2];
    garbage.extend_from_slice(&[0, 0, 0, 2, 11, 0]);
    garbage.extend_from_slice(&[0, 0, 0, 0]);
    garbage.extend_from_slice(&[0, 0, 0, 1, 11]);
    let reply = exchange(&socket, &garbage);
    assert_eq!(&reply[..15], [FAILURE, FAILURE, FAILURE].concat());
    // IDENTITIES_ANSWER with no keys.
    assert_eq!(&reply[15..], [0, 0, 0, 5, 12, 0, 0, 0, 0]);
    // Truncated frame, then hang up.
    assert_eq!(exchange(&socket, &[0, 0, 0, 10, 11]), b"");

    let key = keygen(&dir, "id_ed25519", "ed25519", "256");
    let fp = fingerprint(&dir, &key);
    add_and_forget(&dir, &key, &[]);
    let o = ssh_add(&dir, &["-l"]);
    assert!(stdout(&o).contains(fp.as_str()), "{}", out(&o));
    agent.stop();
}

/// An agent-protocol string: u32 length, then the bytes.
fn ssh_string(bytes: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

#[test]
fn rsa_signs_sha2_as_flagged_and_sha1_unless_refused() {
    use base64::Engine as _;
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-ssh", &["home"]);
    let agent = Agent::start(&dir, None);
    let key = keygen(&dir, "id_rsa", "rsa", "2048");
    add_and_forget(&dir, &key, &[]);
    let public = fs::read_to_string(key.with_extension("pub")).unwrap();
    let blob = base64::engine::general_purpose::STANDARD
        .decode(public.split_whitespace().nth(1).unwrap())
        .unwrap();
    let request = |flags: u32| {
        let mut body = vec![13u8];
        body.extend(ssh_string(&blob));
        body.extend(ssh_string(b"data to sign"));
        body.extend(flags.to_be_bytes());
        exchange(&dir.socket(), &ssh_string(&body))
    };
    for (flag, name) in [(2, &b"rsa-sha2-256"[..]), (4, &b"rsa-sha2-512"[..])] {
        let reply = request(flag);
        assert_eq!(reply[4], 14, "SSH_AGENT_SIGN_RESPONSE for flag {flag}");
        assert!(
            reply.windows(name.len()).any(|w| w == name),
            "signature algorithm for flag {flag}"
        );
    }
    // No flag asks for ssh-rsa (SHA-1), as sshd's HostKeyAgent does for an ssh-rsa host key:
    // signed, as by OpenSSH's agent. Checked with openssl, not with nod's code.
    let reply = request(0);
    assert_eq!(reply[4], 14, "SSH_AGENT_SIGN_RESPONSE for flag 0");
    let sig_blob = &reply[9..];
    assert_eq!(&sig_blob[..11], b"\0\0\0\x07ssh-rsa");
    let raw = &sig_blob[15..];
    assert_eq!(
        u32::from_be_bytes(sig_blob[11..15].try_into().unwrap()) as usize,
        raw.len()
    );
    fs::write(dir.path("sig.bin"), raw).unwrap();
    fs::write(dir.path("data.bin"), b"data to sign").unwrap();
    let o = tool(&dir, "ssh-keygen")
        .args(["-e", "-m", "PKCS8", "-f"])
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    fs::write(dir.path("rsa.pem"), &o.stdout).unwrap();
    let o = Command::new("openssl")
        .args(["dgst", "-sha1", "-verify"])
        .arg(dir.path("rsa.pem"))
        .arg("-signature")
        .arg(dir.path("sig.bin"))
        .arg(dir.path("data.bin"))
        .output()
        .expect("openssl (from ca-certificates) is installed");
    assert!(o.status.success(), "SHA-1 signature verifies: {}", out(&o));
    agent.stop();

    // `[ssh] refuse_rsa_sha1 = true` in agent.toml: refused, SHA-2 still signs.
    fs::create_dir_all(dir.path("config/nod")).unwrap();
    fs::write(
        dir.path("config/nod/agent.toml"),
        "[ssh]\nrefuse_rsa_sha1 = true\n",
    )
    .unwrap();
    let agent = Agent::start(&dir, None);
    let key = keygen(&dir, "id_rsa2", "rsa", "2048");
    add_and_forget(&dir, &key, &[]);
    let public = fs::read_to_string(key.with_extension("pub")).unwrap();
    let blob = base64::engine::general_purpose::STANDARD
        .decode(public.split_whitespace().nth(1).unwrap())
        .unwrap();
    let request = |flags: u32| {
        let mut body = vec![13u8];
        body.extend(ssh_string(&blob));
        body.extend(ssh_string(b"data to sign"));
        body.extend(flags.to_be_bytes());
        exchange(&dir.socket(), &ssh_string(&body))
    };
    assert_eq!(request(0), FAILURE);
    assert_eq!(request(2)[4], 14);
    agent.stop();
    let log = fs::read_to_string(dir.path("agent.log")).unwrap();
    assert!(log.contains("refuse_rsa_sha1"), "{log}");
}

/// `ssh-add -h`: the key is accepted and listed on an unbound connection (local use, as
/// OpenSSH's agent), but never signs there: `ssh-keygen -Y sign` binds no session. Logins
/// through the constraint are in `tests/e2e/ssh_login.rs`.
#[test]
fn destination_constrained_key_is_listed_but_does_not_sign_unbound() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-ssh", &["home"]);
    let agent = Agent::start(&dir, None);
    let host = keygen(&dir, "host_key", "ed25519", "256");
    let host_pub = fs::read_to_string(host.with_extension("pub")).unwrap();
    // ssh-add reads the home directory from passwd, not $HOME: name the file.
    let known_hosts = dir.path("known_hosts");
    fs::write(&known_hosts, format!("example.com {host_pub}")).unwrap();
    let key = keygen(&dir, "id_ed25519", "ed25519", "256");
    add_and_forget(
        &dir,
        &key,
        &["-H", known_hosts.to_str().unwrap(), "-h", "example.com"],
    );
    let o = ssh_add(&dir, &["-l"]);
    assert!(stdout(&o).contains(&fingerprint(&dir, &key)), "{}", out(&o));
    let o = sign(&dir, &key);
    assert!(
        !o.status.success(),
        "unbound signature allowed: {}",
        out(&o)
    );
    agent.stop();
    let log = fs::read_to_string(dir.path("agent.log")).unwrap();
    assert!(log.contains("1 destination constraints"), "{log}");
    assert!(
        log.contains("destination-constrained key refused: connection has no session-bind"),
        "{log}"
    );
}
