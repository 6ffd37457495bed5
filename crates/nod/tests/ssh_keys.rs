//! Persistent keys, approval policies and session certificates of the real `nod` binary:
//! `nod keys …` on the keystore files, the running `nod agent` offering them to the real
//! OpenSSH tools (`ssh-add`, `ssh-keygen -Y sign`), and a command approver (a shell script)
//! that counts its prompts.
//!
//! Without `ssh-add`/`ssh-keygen` the tests are skipped with a notice, except under `CI=true`,
//! where they fail.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

mod common;

use common::{
    Agent, TempDir, command, have_openssh, nod, nod_bin, out, output_with_stdin, ssh_add, stderr,
    stdout, tool,
};

fn nod_ok(dir: &TempDir, args: &[&str]) -> String {
    let o = nod(dir).args(args).output().unwrap();
    assert!(o.status.success(), "nod {args:?}: {}", out(&o));
    stdout(&o)
}

/// The approver: appends each prompt to `prompts.jsonl`, waits `delay` seconds, answers with
/// the exit code in `answer`.
fn approver(dir: &TempDir, delay: &str) -> PathBuf {
    let path = dir.path("approve.sh");
    fs::write(
        &path,
        format!(
            "#!/bin/sh\ncat >> '{p}'\necho >> '{p}'\nsleep {delay}\nexit \"$(cat '{a}')\"\n",
            p = dir.path("prompts.jsonl").display(),
            a = dir.path("answer").display()
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(dir.path("answer"), "0").unwrap();
    path
}

fn prompts(dir: &TempDir) -> Vec<serde_json::Value> {
    fs::read_to_string(dir.path("prompts.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `nod keys generate`; writes the printed public line to `<name>.pub` in the temp dir.
fn generate(dir: &TempDir, args: &[&str], name: &str) -> PathBuf {
    let mut all = vec!["keys", "generate", "--name", name];
    all.extend_from_slice(args);
    let line = nod_ok(dir, &all);
    let path = dir.path(&format!("{name}.pub"));
    fs::write(&path, &line).unwrap();
    path
}

/// `ssh-keygen -Y sign -n file` of `file` with the key whose public half is `public`.
fn sign_file(dir: &TempDir, public: &Path, file: &Path) -> Command {
    let _ = fs::remove_file(format!("{}.sig", file.display()));
    let mut cmd = tool(dir, "ssh-keygen");
    cmd.args(["-Y", "sign", "-n", "file", "-f"])
        .arg(public)
        .arg(file);
    cmd
}

fn sign(dir: &TempDir, public: &Path) -> Output {
    let data = dir.path("message.txt");
    fs::write(&data, b"signed by a persistent key\n").unwrap();
    sign_file(dir, public, &data).output().unwrap()
}

#[test]
fn keys_generate_import_list_policy_remove_round_trip_sealed() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-keys", &["home"]);
    generate(&dir, &[], "work");
    generate(
        &dir,
        &["--type", "ecdsa", "--bits", "384", "--policy", "never"],
        "ec",
    );
    let imported = dir.path("id_import");
    let o = tool(&dir, "ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "imported@test", "-f"])
        .arg(&imported)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let o = nod(&dir)
        .args(["keys", "import", "--policy", "remember", "--ttl", "90s"])
        .arg(&imported)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let imported_pub = fs::read_to_string(imported.with_extension("pub")).unwrap();
    let imported_blob = imported_pub.split_whitespace().nth(1).unwrap();
    assert!(stdout(&o).contains(imported_blob), "{}", out(&o));

    let fp = |p: &Path| {
        let o = tool(&dir, "ssh-keygen").arg("-lf").arg(p).output().unwrap();
        stdout(&o).split_whitespace().nth(1).unwrap().to_owned()
    };
    let list = nod_ok(&dir, &["keys", "list"]);
    let rows: Vec<Vec<&str>> = list.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 3, "{list}");
    assert_eq!(
        rows[0],
        [
            "work",
            "ssh-ed25519",
            fp(&dir.path("work.pub")).as_str(),
            "always",
            "any"
        ]
    );
    assert_eq!(rows[1][..2], ["ec", "ecdsa-sha2-nistp384"]);
    assert_eq!(rows[1][3], "never");
    assert_eq!(
        rows[2],
        [
            "imported@test",
            "ssh-ed25519",
            fp(&imported.with_extension("pub")).as_str(),
            "remember 90s",
            "any"
        ]
    );

    // No plaintext key material in the sealed file: not the PEM, not the Ed25519 seed, not
    // even the names.
    let raw = fs::read(dir.path("data/nod/ssh_keys.sealed")).unwrap();
    let pem = fs::read_to_string(&imported).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let binary = base64::engine::general_purpose::STANDARD
        .decode(&body)
        .unwrap();
    // The private section holds string(seed ‖ public) with length 64.
    let at = binary
        .windows(4)
        .position(|w| w == [0, 0, 0, 64])
        .expect("ed25519 private part");
    let seed = &binary[at + 4..at + 36];
    assert!(!raw.windows(32).any(|w| w == seed), "seed in the store");
    for needle in [
        &b"OPENSSH PRIVATE KEY"[..],
        pem.lines().nth(2).unwrap().as_bytes(),
        b"imported@test",
        b"work",
    ] {
        assert!(!raw.windows(needle.len()).any(|w| w == needle));
    }
    let mode = |p: &str| fs::metadata(dir.path(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("data/nod/ssh_keys.sealed"), 0o600);
    assert_eq!(mode("config/nod/keystore.key"), 0o600);

    nod_ok(
        &dir,
        &["keys", "policy", "work", "remember", "--ttl", "10m"],
    );
    nod_ok(&dir, &["keys", "remove", "ec"]);
    let list = nod_ok(&dir, &["keys", "list"]);
    assert!(list.contains("work\tssh-ed25519\tSHA256:") && list.contains("remember 10m"));
    assert!(
        !list.contains("\nec\t") && !list.starts_with("ec\t"),
        "{list}"
    );

    // Errors: a name taken, an unknown key, a bad policy, an encrypted key.
    for args in [
        &["keys", "generate", "--name", "work"][..],
        &["keys", "remove", "nope"],
        &["keys", "policy", "work", "sometimes"],
        &["keys", "policy", "work", "never", "--ttl", "5m"],
    ] {
        let o = nod(&dir).args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", out(&o));
    }
}

/// Whether the unencrypted OpenSSH key file at `path` holds a P-521 scalar that OpenSSH wrote
/// shorter than 66 bytes (its top byte was zero): the private section repeats the public
/// point (a 133-byte string starting 0x04), and the scalar's mpint follows it.
fn has_short_p521_scalar(path: &Path) -> bool {
    let pem = fs::read_to_string(path).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let bin = base64::engine::general_purpose::STANDARD
        .decode(&body)
        .unwrap();
    let points: Vec<usize> = bin
        .windows(5)
        .enumerate()
        .filter(|(_, w)| *w == [0, 0, 0, 133, 4])
        .map(|(i, _)| i)
        .collect();
    let after = points.last().unwrap() + 4 + 133;
    let len = u32::from_be_bytes(bin[after..after + 4].try_into().unwrap());
    len < 66
}

/// ECDSA P-521: `nod keys generate --bits 521`, and `nod keys import` of keys ssh-keygen made,
/// also one whose scalar OpenSSH wrote short (about one key in four), plain and encrypted;
/// each signs through the agent.
#[test]
fn p521_keys_generate_and_import_and_sign() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-keys", &["home"]);
    let generated = generate(
        &dir,
        &["--type", "ecdsa", "--bits", "521", "--policy", "never"],
        "gen521",
    );
    assert!(
        fs::read_to_string(&generated)
            .unwrap()
            .starts_with("ecdsa-sha2-nistp521 ")
    );
    let short = dir.path("id_short");
    let found = (0..64).any(|_| {
        let _ = fs::remove_file(&short);
        let _ = fs::remove_file(short.with_extension("pub"));
        let o = tool(&dir, "ssh-keygen")
            .args([
                "-q", "-t", "ecdsa", "-b", "521", "-N", "", "-C", "short", "-f",
            ])
            .arg(&short)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", out(&o));
        has_short_p521_scalar(&short)
    });
    assert!(
        found,
        "ssh-keygen made no P-521 key with a short scalar in 64 tries"
    );
    let o = nod(&dir)
        .args(["keys", "import", "--policy", "never"])
        .arg(&short)
        .output()
        .unwrap();
    assert!(o.status.success(), "plain short-scalar import: {}", out(&o));
    // The same kind of key, passphrase-protected.
    let locked = dir.path("id_locked");
    fs::copy(&short, &locked).unwrap();
    fs::copy(short.with_extension("pub"), locked.with_extension("pub")).unwrap();
    let o = tool(&dir, "ssh-keygen")
        .args(["-q", "-p", "-P", "", "-N", "pw", "-C", "locked", "-f"])
        .arg(&locked)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    nod_ok(&dir, &["keys", "remove", "short"]);
    let mut cmd = nod(&dir);
    cmd.args(["keys", "import", "--policy", "never", "--passphrase-stdin"])
        .arg(&locked);
    let o = output_with_stdin(&mut cmd, "wrong\n");
    assert!(stderr(&o).contains("wrong passphrase"), "{}", out(&o));
    let o = output_with_stdin(&mut cmd, "pw\n");
    assert!(
        o.status.success(),
        "encrypted short-scalar import: {}",
        out(&o)
    );
    let list = nod_ok(&dir, &["keys", "list"]);
    assert!(list.contains("gen521\tecdsa-sha2-nistp521"), "{list}");
    assert!(list.contains("\tecdsa-sha2-nistp521\t"), "{list}");
    assert_eq!(list.lines().count(), 2, "{list}");

    let agent = Agent::start(&dir, None);
    for public in [generated, locked.with_extension("pub")] {
        let o = sign(&dir, &public);
        assert!(o.status.success(), "sign with {public:?}: {}", out(&o));
        let o = tool(&dir, "ssh-keygen")
            .args(["-Y", "check-novalidate", "-n", "file", "-s"])
            .arg(dir.path("message.txt.sig"))
            .stdin(fs::File::open(dir.path("message.txt")).unwrap())
            .output()
            .unwrap();
        assert!(o.status.success(), "verify {public:?}: {}", out(&o));
    }
    agent.stop();
}

/// Runs `line` with `sh` on a pseudo-terminal (`script`, from util-linux), types `keys` after
/// the passphrase prompt shows, and returns everything the terminal showed.
fn on_terminal(dir: &TempDir, line: &str, keys: &[u8]) -> String {
    let mut child = command(dir, "timeout")
        .args(["20", "script", "-qec", line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("timeout and script (coreutils, util-linux) run");
    let mut stdin = child.stdin.take().unwrap();
    let mut terminal = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("Enter passphrase") {
        let mut buf = [0u8; 256];
        let n = terminal.read(&mut buf).unwrap();
        assert!(n > 0, "no prompt: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    stdin.write_all(keys).unwrap();
    terminal.read_to_end(&mut seen).unwrap();
    drop(stdin);
    child.wait().unwrap();
    String::from_utf8_lossy(&seen).into_owned()
}

/// A passphrase-protected key imports with the passphrase from stdin or typed on the terminal
/// (without echo); a wrong one or no way to ask refuses and leaves the keystore as it was.
#[test]
fn passphrase_protected_keys_import_from_stdin_or_the_terminal() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-keys", &["home"]);
    let pass = "hunter2-horse";
    let keys: Vec<PathBuf> = ["id_protected", "id_typed"]
        .iter()
        .map(|name| {
            let path = dir.path(name);
            let o = tool(&dir, "ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", pass, "-C", name, "-f"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", out(&o));
            path
        })
        .collect();
    let public = |p: &Path| {
        let line = fs::read_to_string(p.with_extension("pub")).unwrap();
        line.split_whitespace().nth(1).unwrap().to_owned()
    };
    let import_stdin = |file: &Path, input: &str| {
        let mut cmd = nod(&dir);
        cmd.args(["keys", "import", "--passphrase-stdin"]).arg(file);
        output_with_stdin(&mut cmd, input)
    };

    let o = import_stdin(&keys[0], "wrong horse\n");
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(stderr(&o).contains("wrong passphrase"), "{}", out(&o));
    // No terminal (a new session has none) and no --passphrase-stdin: refused, with the way out.
    let mut detached = nod(&dir);
    detached.args(["keys", "import"]).arg(&keys[0]);
    // SAFETY: setsid is async-signal-safe, and nothing else runs between fork and exec.
    unsafe {
        detached.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let o = detached.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(stderr(&o).contains("--passphrase-stdin"), "{}", out(&o));
    assert_eq!(nod_ok(&dir, &["keys", "list"]), "");

    let o = import_stdin(&keys[0], &format!("{pass}\n"));
    assert!(o.status.success(), "{}", out(&o));
    assert!(stdout(&o).contains(&public(&keys[0])), "{}", out(&o));

    // Typed on a terminal. Ctrl-C at the prompt leaves the echo on and imports nothing.
    let import = format!(
        "'{}' keys import '{}'",
        nod_bin().display(),
        keys[1].display()
    );
    let shown = on_terminal(
        &dir,
        &format!("trap true INT; {import}; echo rc=$?; stty -a"),
        b"\x03",
    );
    assert!(shown.contains("rc=130"), "{shown}");
    assert!(
        shown.contains(" echo ") && !shown.contains("-echo "),
        "echo left off: {shown}"
    );
    let shown = on_terminal(
        &dir,
        &format!("{import} && echo IMPORTED"),
        format!("{pass}\n").as_bytes(),
    );
    assert!(shown.contains("IMPORTED"), "{shown}");
    assert!(shown.contains(&public(&keys[1])), "{shown}");
    assert!(!shown.contains(pass), "the passphrase was echoed: {shown}");

    let list = nod_ok(&dir, &["keys", "list"]);
    assert!(list.starts_with("id_protected\tssh-ed25519"), "{list}");
    assert!(list.contains("\nid_typed\tssh-ed25519"), "{list}");
}

#[test]
fn damaged_store_or_wrong_wrapping_key_fails_clearly_and_changes_nothing() {
    let dir = TempDir::new("nod-keys", &["home"]);
    nod_ok(&dir, &["keys", "generate", "--name", "k"]);
    let store = dir.path("data/nod/ssh_keys.sealed");
    let mut damaged = fs::read(&store).unwrap();
    damaged[40] ^= 0x01;
    fs::write(&store, &damaged).unwrap();
    for args in [
        &["keys", "list"][..],
        &["keys", "generate", "--name", "k2"],
        &["keys", "policy", "k", "never"],
    ] {
        let o = nod(&dir).args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", out(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("damaged") && err.contains("nothing was changed"),
            "{err}"
        );
        assert_eq!(fs::read(&store).unwrap(), damaged);
    }

    let dir = TempDir::new("nod-keys", &["home"]);
    nod_ok(&dir, &["keys", "generate", "--name", "k"]);
    let store = dir.path("data/nod/ssh_keys.sealed");
    let wrap = dir.path("config/nod/keystore.key");
    let before = fs::read(&store).unwrap();
    fs::write(&wrap, format!("{}\n", "ab".repeat(32))).unwrap();
    let o = nod(&dir).args(["keys", "list"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another wrapping key"),
        "{}",
        out(&o)
    );
    fs::remove_file(&wrap).unwrap();
    let o = nod(&dir)
        .args(["keys", "generate", "--name", "k2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wrapping key"),
        "{}",
        out(&o)
    );
    assert!(!wrap.exists(), "no new wrapping key over an existing store");
    assert_eq!(fs::read(&store).unwrap(), before);
    // No temp files left behind.
    let names: Vec<String> = fs::read_dir(dir.path("data/nod"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n == "ssh_keys.sealed" || n == ".lock"),
        "{names:?}"
    );
}

#[test]
fn plaintext_agent_key_is_migrated_into_the_sealed_store() {
    let dir = TempDir::new("nod-keys", &["home"]);
    let key = nod_proto::SigningKey::from_bytes(&[0x11; 32]);
    let plain = dir.path("data/nod/agent_ed25519.key");
    fs::create_dir_all(plain.parent().unwrap()).unwrap();
    fs::set_permissions(plain.parent().unwrap(), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(&plain, nod_proto::keys::format_private_key_file(&key)).unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o600)).unwrap();

    let printed = nod_ok(&dir, &["agent-key"]);
    let parsed = nod_proto::keys::parse_public_key_file(&printed).unwrap();
    assert_eq!(parsed.key, key.verifying_key());
    assert!(!plain.exists(), "plaintext key removed");
    let sealed = fs::read(dir.path("data/nod/agent_ed25519.sealed")).unwrap();
    assert!(!sealed.windows(32).any(|w| w == [0x11; 32]));
    // Same key on the next start, from the sealed file.
    assert_eq!(nod_ok(&dir, &["agent-key"]), printed);
}

#[test]
fn persistent_key_policies_never_always_and_remember() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-keys", &["home"]);
    let agent = Agent::start(&dir, Some(&approver(&dir, "0")));
    // Added while the agent runs: it picks the key up.
    let public = generate(&dir, &["--policy", "never"], "k");
    let o = ssh_add(&dir, &["-l"]);
    assert!(stdout(&o).contains(" k (ED25519)"), "{}", out(&o));
    let blob = fs::read_to_string(&public).unwrap();
    let o = ssh_add(&dir, &["-L"]);
    assert!(
        stdout(&o).contains(blob.split_whitespace().nth(1).unwrap()),
        "{}",
        out(&o)
    );

    let o = sign(&dir, &public);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(prompts(&dir).len(), 0, "never: no prompt");

    nod_ok(&dir, &["keys", "policy", "k", "always"]);
    for n in 1..=2 {
        let o = sign(&dir, &public);
        assert!(o.status.success(), "{}", out(&o));
        assert_eq!(prompts(&dir).len(), n, "always: a prompt per signature");
    }
    let p = &prompts(&dir)[0];
    assert_eq!(p["kind"], "ssh-sign");
    assert_eq!(p["key_comment"], "k");
    fs::write(dir.path("answer"), "1").unwrap();
    assert!(!sign(&dir, &public).status.success(), "denied");
    fs::write(dir.path("answer"), "0").unwrap();
    assert_eq!(prompts(&dir).len(), 3);

    nod_ok(&dir, &["keys", "policy", "k", "remember", "--ttl", "3s"]);
    assert!(sign(&dir, &public).status.success());
    assert_eq!(prompts(&dir).len(), 4, "remember: the first signature asks");
    assert!(sign(&dir, &public).status.success());
    assert!(sign(&dir, &public).status.success());
    assert_eq!(
        prompts(&dir).len(),
        4,
        "then the grant covers the same caller"
    );
    std::thread::sleep(Duration::from_millis(3500));
    assert!(sign(&dir, &public).status.success());
    assert_eq!(prompts(&dir).len(), 5, "after the TTL it asks again");

    // Removed while the agent runs: gone from the list and unusable.
    nod_ok(&dir, &["keys", "remove", "k"]);
    let o = ssh_add(&dir, &["-l"]);
    assert!(!stdout(&o).contains(" k (ED25519)"), "{}", out(&o));
    assert!(!sign(&dir, &public).status.success());
    agent.stop();

    // Signatures under a remembered grant are audited as approved, with the reason, and
    // without the data signed.
    let audit = fs::read_to_string(dir.path("state/nod/audit.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let remembered: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["reason"] == "remembered grant")
        .collect();
    assert_eq!(remembered.len(), 2, "{audit}");
    for line in remembered {
        assert_eq!(line["service"], "ssh", "{line}");
        assert_eq!(line["decision"], "approved", "{line}");
        assert_eq!(line["key_comment"], "k", "{line}");
        let fields: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for field in &fields {
            assert!(
                [
                    "time",
                    "prev",
                    "service",
                    "key_comment",
                    "key_fingerprint",
                    "caller_pid",
                    "caller_exe",
                    "decision",
                    "reason",
                    "action",
                    "approver"
                ]
                .contains(field),
                "unexpected field {field} in {line}"
            );
        }
    }
    assert!(!audit.contains("signed by a persistent key"), "{audit}");
}

#[test]
fn identical_concurrent_requests_share_one_prompt() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-keys", &["home"]);
    let agent = Agent::start(&dir, Some(&approver(&dir, "1")));
    let public = generate(&dir, &["--policy", "always"], "k");
    // Same content, so the same data to sign; different files, so no clash on the .sig.
    let files: Vec<PathBuf> = (0..2)
        .map(|i| {
            let f = dir.path(&format!("same-{i}.txt"));
            fs::write(&f, b"identical content\n").unwrap();
            f
        })
        .collect();
    let children: Vec<Child> = files
        .iter()
        .map(|f| {
            sign_file(&dir, &public, f)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", out(&o));
    }
    assert_eq!(prompts(&dir).len(), 1, "one prompt for both");
    agent.stop();
}

#[test]
fn session_certificate_is_offered_after_one_approval_and_expires() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-keys", &["home"]);
    // Before `nod keys ca init` the agent refuses.
    let agent = Agent::start(&dir, Some(&approver(&dir, "0")));
    let o = nod(&dir)
        .args([
            "ssh",
            "session",
            "--principals",
            "nodtest",
            "--validity",
            "5s",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", out(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nod keys ca init"));

    let ca = nod_ok(&dir, &["keys", "ca", "init"]);
    assert!(ca.starts_with("ssh-ed25519 "), "{ca}");
    assert_eq!(nod_ok(&dir, &["keys", "ca", "init"]), ca, "idempotent");
    fs::write(dir.path("ca.pub"), &ca).unwrap();
    let ca_fp = {
        let o = tool(&dir, "ssh-keygen")
            .arg("-lf")
            .arg(dir.path("ca.pub"))
            .output()
            .unwrap();
        stdout(&o).split_whitespace().nth(1).unwrap().to_owned()
    };

    // Denied: nothing is offered.
    fs::write(dir.path("answer"), "1").unwrap();
    let o = nod(&dir)
        .args([
            "ssh",
            "session",
            "--principals",
            "nodtest",
            "--validity",
            "5s",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", out(&o));
    fs::write(dir.path("answer"), "0").unwrap();
    let before = prompts(&dir).len();

    let started = Instant::now();
    let o = nod(&dir)
        .args([
            "ssh",
            "session",
            "--principals",
            "nodtest,other",
            "--validity",
            "5s",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let all = prompts(&dir);
    assert_eq!(all.len(), before + 1, "one approval");
    let p = &all[before];
    assert_eq!(p["kind"], "ssh-session-cert");
    assert_eq!(p["principals"][0], "nodtest");
    assert_eq!(p["validity_secs"], 5);
    assert_eq!(p["ca_fingerprint"], ca_fp.as_str());

    let o = ssh_add(&dir, &["-l"]);
    assert!(
        stdout(&o).contains("nod session nodtest,other (ED25519-CERT)"),
        "{}",
        out(&o)
    );
    let o = ssh_add(&dir, &["-L"]);
    let line = stdout(&o)
        .lines()
        .find(|l| l.starts_with("ssh-ed25519-cert-v01@openssh.com "))
        .unwrap_or_else(|| panic!("no certificate in {}", out(&o)))
        .to_owned();
    fs::write(dir.path("session-cert.pub"), format!("{line}\n")).unwrap();
    let o = tool(&dir, "ssh-keygen")
        .arg("-Lf")
        .arg(dir.path("session-cert.pub"))
        .output()
        .unwrap();
    let shown = stdout(&o);
    assert!(o.status.success(), "{}", out(&o));
    assert!(shown.contains("user certificate"), "{shown}");
    assert!(
        shown.contains(&format!("Signing CA: ED25519 {ca_fp}")),
        "{shown}"
    );
    let principals: Vec<&str> = shown
        .lines()
        .skip_while(|l| !l.trim().starts_with("Principals:"))
        .skip(1)
        .take_while(|l| l.starts_with("                "))
        .map(str::trim)
        .collect();
    assert_eq!(principals, ["nodtest", "other"], "{shown}");
    assert!(shown.contains("Valid: from "), "{shown}");

    // It expires: gone from the list, no further prompt was needed for any of this.
    let left = Duration::from_secs(6).saturating_sub(started.elapsed());
    std::thread::sleep(left);
    let o = ssh_add(&dir, &["-l"]);
    assert!(!stdout(&o).contains("ED25519-CERT"), "{}", out(&o));
    assert_eq!(prompts(&dir).len(), before + 1);
    agent.stop();
    let log = fs::read_to_string(dir.path("agent.log")).unwrap();
    assert!(log.contains("expired; key and certificate wiped"), "{log}");
}

#[test]
fn a_key_both_persistent_and_added_is_listed_once_under_the_keystore_policy() {
    if !have_openssh() {
        return;
    }
    let dir = TempDir::new("nod-keys", &["home"]);
    let agent = Agent::start(&dir, Some(&approver(&dir, "0")));
    let key = dir.path("id_both");
    let o = tool(&dir, "ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "both@test", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let o = nod(&dir)
        .args(["keys", "import", "--policy", "always"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let o = ssh_add(&dir, &[key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    let o = ssh_add(&dir, &["-l"]);
    assert_eq!(stdout(&o).lines().count(), 1, "{}", out(&o));
    assert!(sign(&dir, &key.with_extension("pub")).status.success());
    assert_eq!(prompts(&dir).len(), 1, "the keystore's always applies");
    agent.stop();
}
