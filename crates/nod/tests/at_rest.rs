//! Keys and secrets at rest, end to end with the real `nod` binary, a real TPM emulator (swtpm,
//! one instance per test, on loopback), the kernel keyring, `ssh-add`, and `kill -9`.
//!
//! - A copy of the whole XDG tree (a stolen home directory) opens nothing on "another machine"
//!   (another swtpm instance, or no passphrase): the agent there starts locked, offers no key,
//!   refuses every secret, and the files hold no plaintext.
//! - A locked agent refuses with "keystore is locked: run `nod keys unlock`" and picks the key up
//!   after `nod keys unlock`, without a restart, also from another user namespace (as a systemd
//!   user service with `PrivateTmp=` runs).
//! - Migration from the files of earlier versions (`secrets.key`, `secrets-policy.key` beside
//!   their data) survives `kill -9` at any point.
//! - Temp files of killed writers are removed at start; a live writer's is kept.
//!
//! Needs swtpm and libtss2-tcti-swtpm0 (`.ci/run` installs them); without them the TPM tests
//! skip, or fail under CI=true.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

mod common;

use common::{Agent, TempDir, command, nod_bin, out, output_with_stdin, ssh_add, write_script};

const SECRET: &str = "s3cr3t-value-at-rest";
const KEY_NAME: &str = "stolen-home-key";
const PASSPHRASE: &str = "correct horse battery staple";
/// The binary a policy of an earlier version registered.
const LEGACY_TOOL: &str = "/usr/local/bin/registered-tool";

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// A swtpm instance on loopback, killed on drop. Each has its own state: another TPM.
struct Swtpm {
    child: Child,
    port: u16,
    _state: TempDir,
}

impl Swtpm {
    /// `None` (skip) when swtpm or its TCTI is not installed; a failure under CI=true.
    fn start() -> Option<Self> {
        let found = Path::new("/usr/bin/swtpm").exists()
            && [
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib/aarch64-linux-gnu",
                "/usr/lib64",
                "/usr/lib",
            ]
            .iter()
            .any(|d| Path::new(d).join("libtss2-tcti-swtpm.so.0").exists());
        if !found {
            assert!(
                !ci(),
                "swtpm and libtss2-tcti-swtpm0 are required under CI=true (see .ci/run)"
            );
            eprintln!("skipped: swtpm or libtss2-tcti-swtpm0 not installed");
            return None;
        }
        // nod runs nod-tpm from its own directory; `cargo build --workspace` builds it.
        let nod_tpm = nod_bin().with_file_name("nod-tpm");
        if !nod_tpm.exists() {
            assert!(
                !ci(),
                "{} is missing: run `cargo build --workspace`",
                nod_tpm.display()
            );
            eprintln!(
                "skipped: {} is missing (cargo build --workspace)",
                nod_tpm.display()
            );
            return None;
        }
        let state = TempDir::new("nod-swtpm", &[]);
        for _ in 0..20 {
            let port = free_port_pair();
            let child = Command::new("/usr/bin/swtpm")
                .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--tpmstate")
                .arg(format!("dir={}", state.root().display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut tpm = Self {
                child,
                port,
                _state: TempDir::new("nod-swtpm-unused", &[]),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    tpm._state = state;
                    return Some(tpm);
                }
                if tpm.child.try_wait().unwrap().is_some() {
                    break; // lost the port to someone else: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("swtpm never listened");
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port N with N+1 free too (swtpm's control channel).
fn free_port_pair() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// `nod` under `dir`, with the TPM `tcti` (or none).
fn nod(dir: &TempDir, tcti: Option<&str>) -> Command {
    let mut cmd = command(dir, nod_bin());
    if let Some(tcti) = tcti {
        cmd.env("TPM2TOOLS_TCTI", tcti);
    }
    cmd
}

fn run(dir: &TempDir, tcti: Option<&str>, args: &[&str]) -> Output {
    nod(dir, tcti).args(args).output().unwrap()
}

fn run_in(dir: &TempDir, tcti: Option<&str>, args: &[&str], input: &str) -> Output {
    output_with_stdin(nod(dir, tcti).args(args), input)
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", out(&o));
    o
}

fn fails(o: Output) -> Output {
    assert!(!o.status.success(), "should fail: {}", out(&o));
    o
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An XDG tree whose agent uses the file backend and approves through a script that says yes.
fn new_home(prefix: &str) -> TempDir {
    let dir = TempDir::new(prefix, &["home", "config/nod", "run"]);
    fs::write(
        dir.path("config/nod/agent.toml"),
        "[secrets]\nbackend = \"file\"\n",
    )
    .unwrap();
    write_script(&dir.path("yes.sh"), "cat >/dev/null\nexit 0");
    dir
}

/// Starts the agent with `tcti`, waiting for its secrets socket.
fn start_agent(dir: &TempDir, tcti: Option<&str>) -> Agent {
    start_agent_with(dir, tcti, &[])
}

fn start_agent_with(dir: &TempDir, tcti: Option<&str>, wrapper: &[&str]) -> Agent {
    let mut cmd = match wrapper.split_first() {
        Some((prog, args)) => {
            let mut c = command(dir, prog);
            c.args(args).arg(nod_bin());
            c
        }
        None => command(dir, nod_bin()),
    };
    if let Some(tcti) = tcti {
        cmd.env("TPM2TOOLS_TCTI", tcti);
    }
    cmd.stderr(fs::File::create(dir.path("agent.log")).unwrap())
        .arg("agent")
        .arg("--approver-command")
        .arg(dir.path("yes.sh"));
    let agent = Agent(cmd.spawn().unwrap());
    common::wait_for_socket(&dir.secrets_socket(), "secrets.sock");
    agent
}

fn agent_log(dir: &TempDir) -> String {
    fs::read_to_string(dir.path("agent.log")).unwrap_or_default()
}

/// A key and a secret, made through the agent (file protector).
fn populate(dir: &TempDir, tcti: Option<&str>) {
    ok(run(
        dir,
        tcti,
        &["keys", "generate", "--name", KEY_NAME, "--policy", "never"],
    ));
    let agent = start_agent(dir, tcti);
    // `nod secrets` is asked each time (the approver script says yes).
    ok(run_in(dir, tcti, &["secrets", "put", "svc", "t1"], SECRET));
    agent.stop();
}

/// The agent of `dir` offers the key and hands out the secret.
fn assert_opens(dir: &TempDir, tcti: Option<&str>) {
    let agent = start_agent(dir, tcti);
    let got = ok(run(dir, tcti, &["secrets", "get", "svc", "t1"]));
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), SECRET);
    let listed = ssh_add(dir, &["-l"]);
    assert!(text(&listed).contains(KEY_NAME), "{}", out(&listed));
    agent.stop();
}

/// Every file under `root`, recursively.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// A copy of the whole tree (what a stolen disk or a backup holds), without the runtime dir.
fn steal(dir: &TempDir, prefix: &str) -> TempDir {
    let copy = TempDir::new(prefix, &["run"]);
    for sub in ["home", "config", "data", "state"] {
        let o = Command::new("cp")
            .arg("-a")
            .arg(dir.path(sub))
            .arg(copy.root())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", out(&o));
    }
    fs::copy(dir.path("yes.sh"), copy.path("yes.sh")).unwrap();
    copy
}

/// The stolen copy's agent: starts, but offers no key and hands out no secret; the files hold
/// neither in the clear, and `nod` cannot re-protect (open) the keystore.
fn assert_stolen_copy_opens_nothing(copy: &TempDir, tcti: Option<&str>) {
    for f in files(copy.root()) {
        let bytes = fs::read(&f).unwrap();
        for needle in [SECRET, KEY_NAME] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} holds {needle:?} in the clear",
                f.display()
            );
        }
    }
    let agent = start_agent(copy, tcti);
    let listed = ssh_add(copy, &["-l"]);
    assert!(!text(&listed).contains(KEY_NAME), "{}", out(&listed));
    let got = fails(run(copy, tcti, &["secrets", "get", "svc", "t1"]));
    assert!(!text(&got).contains(SECRET));
    let refused = |t: &str| t.contains("keystore is locked") || t.contains("TPM");
    assert!(refused(&text(&got)), "{}", out(&got));
    agent.stop();
    let log = agent_log(copy);
    assert!(refused(&log), "{log}");
    fails(run(copy, tcti, &["keys", "list"]));
    fails(run(copy, tcti, &["keys", "protect", "file"]));
}

#[test]
fn tpm_protected_home_copied_to_another_machine_opens_nothing() {
    let Some(tpm) = Swtpm::start() else { return };
    let tcti = tpm.tcti();
    let home = new_home("nod-rest-tpm");
    populate(&home, Some(&tcti));
    ok(run(&home, Some(&tcti), &["keys", "protect", "tpm"]));
    let status = text(&ok(run(&home, Some(&tcti), &["keys", "status"])));
    assert!(status.contains("protector: tpm"), "{status}");
    assert_opens(&home, Some(&tcti));
    let log = agent_log(&home);
    assert!(
        log.contains("keys at rest: protector tpm; keystore unlocked"),
        "{log}"
    );

    // Another machine: the same files, another TPM.
    let Some(other) = Swtpm::start() else { return };
    let copy = steal(&home, "nod-rest-tpm-stolen");
    assert_stolen_copy_opens_nothing(&copy, Some(&other.tcti()));
    assert!(agent_log(&copy).contains("cannot load the keystore key"));
    // Nor with no TPM at all.
    assert_stolen_copy_opens_nothing(&copy, Some("swtpm:host=127.0.0.1,port=1"));

    // The original still opens, and back to a plain file works (and says what it means).
    let back = ok(run(&home, Some(&tcti), &["keys", "protect", "file"]));
    assert!(text(&back).contains("copy of this disk"), "{}", out(&back));
    assert_opens(&home, None);
}

#[test]
fn tpm_pin_is_asked_for_and_a_wrong_one_refused() {
    let Some(tpm) = Swtpm::start() else { return };
    let tcti = tpm.tcti();
    let home = new_home("nod-rest-pin");
    populate(&home, Some(&tcti));
    ok(run_in(
        &home,
        Some(&tcti),
        &["keys", "protect", "tpm", "--pin", "--passphrase-stdin"],
        "4711\n",
    ));
    ok(run(&home, None, &["keys", "lock"]));
    let agent = start_agent(&home, Some(&tcti));
    let got = fails(run(&home, Some(&tcti), &["secrets", "get", "svc", "t1"]));
    assert!(
        text(&got).contains("run `nod keys unlock`"),
        "{}",
        out(&got)
    );
    let wrong = fails(run_in(
        &home,
        Some(&tcti),
        &["keys", "unlock", "--passphrase-stdin"],
        "1234\n",
    ));
    assert!(text(&wrong).contains("wrong TPM PIN"), "{}", out(&wrong));
    ok(run_in(
        &home,
        Some(&tcti),
        &["keys", "unlock", "--passphrase-stdin"],
        "4711\n",
    ));
    let got = ok(run(&home, Some(&tcti), &["secrets", "get", "svc", "t1"]));
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), SECRET);
    agent.stop();
    ok(run(&home, None, &["keys", "lock"]));
}

#[test]
fn passphrase_protected_home_copied_elsewhere_opens_nothing_and_unlock_needs_no_restart() {
    let home = new_home("nod-rest-pass");
    populate(&home, None);

    // The file protector: a copy opens everything (what the start-up line warns about).
    let plain = steal(&home, "nod-rest-plain-copy");
    assert_opens(&plain, None);
    assert!(agent_log(&plain).contains("anyone with a copy of this disk gets every key"));
    drop(plain);

    ok(run_in(
        &home,
        None,
        &["keys", "protect", "passphrase", "--passphrase-stdin"],
        &format!("{PASSPHRASE}\n"),
    ));
    let removed = ok(run(&home, None, &["keys", "lock"]));
    assert!(text(&removed).contains("removed the cached key"));

    // Locked: the agent runs, refuses clearly, and takes the key once it is unlocked.
    let agent = start_agent(&home, None);
    let listed = ssh_add(&home, &["-l"]);
    assert!(!text(&listed).contains(KEY_NAME), "{}", out(&listed));
    let got = fails(run(&home, None, &["secrets", "get", "svc", "t1"]));
    assert!(
        text(&got).contains("keystore is locked: run `nod keys unlock`"),
        "{}",
        out(&got)
    );
    fails(run_in(
        &home,
        None,
        &["keys", "unlock", "--passphrase-stdin"],
        "wrong\n",
    ));
    ok(run_in(
        &home,
        None,
        &["keys", "unlock", "--passphrase-stdin", "--timeout", "10m"],
        &format!("{PASSPHRASE}\n"),
    ));
    let got = ok(run(&home, None, &["secrets", "get", "svc", "t1"]));
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), SECRET);
    let listed = ssh_add(&home, &["-l"]);
    assert!(text(&listed).contains(KEY_NAME), "{}", out(&listed));
    agent.stop();

    // Another machine: the files without the passphrase (nothing cached there).
    ok(run(&home, None, &["keys", "lock"]));
    let copy = steal(&home, "nod-rest-pass-stolen");
    assert_stolen_copy_opens_nothing(&copy, None);
}

/// A systemd user service with `PrivateTmp=`/`ProtectSystem=` runs in a user namespace of its
/// own, whose user keyring is another, empty one; the agent still finds the unlocked key.
#[test]
fn an_agent_in_another_user_namespace_finds_the_unlocked_key() {
    let root = nix::unistd::getuid().is_root();
    let unshare = Path::new("/usr/bin/unshare").exists();
    if !root || !unshare {
        assert!(!ci(), "CI=true runs as root with util-linux's unshare");
        eprintln!("skipped: needs root and unshare");
        return;
    }
    let home = new_home("nod-rest-userns");
    populate(&home, None);
    ok(run_in(
        &home,
        None,
        &["keys", "protect", "passphrase", "--passphrase-stdin"],
        &format!("{PASSPHRASE}\n"),
    ));
    ok(run(&home, None, &["keys", "lock"]));
    let wrapper = [
        "/usr/bin/unshare",
        "--user",
        "--map-user=0",
        "--map-group=0",
    ];
    let agent = start_agent_with(&home, None, &wrapper);
    let listed = ssh_add(&home, &["-l"]);
    assert!(!text(&listed).contains(KEY_NAME), "{}", out(&listed));
    ok(run_in(
        &home,
        None,
        &["keys", "unlock", "--passphrase-stdin", "--timeout", "10m"],
        &format!("{PASSPHRASE}\n"),
    ));
    let listed = ssh_add(&home, &["-l"]);
    assert!(text(&listed).contains(KEY_NAME), "{}", out(&listed));
    agent.stop();
    ok(run(&home, None, &["keys", "lock"]));
}

fn write_private(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// The files of an earlier version: `secrets.enc` under `secrets.key`, a version-1 policy
/// MAC'd with `secrets-policy.key`, both keys beside the data. Written here with the old
/// formats' own primitives, not with nod's code.
fn write_legacy_secrets(dir: &TempDir) {
    let data = dir.path("data/nod");
    let state = dir.path("state/nod");
    fs::create_dir_all(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
    let mut store_key = [0u8; 32];
    let mut policy_key = [0u8; 32];
    let mut nonce = [0u8; 24];
    getrandom::getrandom(&mut store_key).unwrap();
    getrandom::getrandom(&mut policy_key).unwrap();
    getrandom::getrandom(&mut nonce).unwrap();

    let magic = b"nod-secrets-v1\n";
    let items = serde_json::json!({"svc": {"t1": {"value": SECRET, "attributes": {}}}});
    let plain = serde_json::to_vec(&items).unwrap();
    let ct = XChaCha20Poly1305::new((&store_key).into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: magic,
            },
        )
        .unwrap();
    let mut file = magic.to_vec();
    file.extend_from_slice(&nonce);
    file.extend_from_slice(&ct);
    write_private(&data.join("secrets.enc"), &file);
    write_private(
        &data.join("secrets.key"),
        format!("{}\n", hex::encode(store_key)).as_bytes(),
    );

    let hash = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(b"a registered tool"))
    );
    let entries = vec![nod_client::proto::PolicyEntry {
        path: LEGACY_TOOL.into(),
        hash,
        allowed_read_services: vec!["svc".into()],
        allowed_write_services: vec!["svc".into()],
        can_search: false,
        interpreter: false,
        legacy_protocol: false,
    }];
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&policy_key).unwrap();
    mac.update(b"nod secrets policy v1\0");
    mac.update(&serde_json::to_vec(&entries).unwrap());
    let policy = serde_json::json!({
        "version": 1,
        "entries": entries,
        "mac": hex::encode(mac.finalize().into_bytes()),
    });
    write_private(
        &state.join("secrets-policy.json"),
        &serde_json::to_vec_pretty(&policy).unwrap(),
    );
    write_private(
        &data.join("secrets-policy.key"),
        format!("{}\n", hex::encode(policy_key)).as_bytes(),
    );
}

/// Whatever state a killed migration left: it opens, with the passphrase if it got that far,
/// and the policy still holds its entry (its MAC checks out).
fn assert_nothing_lost(dir: &TempDir) {
    let copy = steal(dir, "nod-rest-check");
    let status = text(&ok(run(&copy, None, &["keys", "status"])));
    if status.contains("protector: passphrase") {
        ok(run_in(
            &copy,
            None,
            &["keys", "unlock", "--passphrase-stdin", "--timeout", "1m"],
            &format!("{PASSPHRASE}\n"),
        ));
    }
    let agent = start_agent(&copy, None);
    let got = ok(run(&copy, None, &["secrets", "get", "svc", "t1"]));
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), SECRET);
    let listed = ssh_add(&copy, &["-l"]);
    assert!(text(&listed).contains(KEY_NAME), "{}", out(&listed));
    let listed = ok(run(&copy, None, &["policy", "list"]));
    assert!(text(&listed).contains(LEGACY_TOOL), "{}", out(&listed));
    agent.stop();
}

/// Where a migration stopped: (store migrated, store key gone, policy key gone, protector).
fn migration_state(dir: &TempDir) -> (bool, bool, bool, String) {
    let store = fs::read(dir.path("data/nod/secrets.enc")).unwrap_or_default();
    let protector = fs::read_to_string(dir.path("config/nod/keystore.key")).unwrap_or_default();
    (
        store.starts_with(b"nodseal1"),
        !dir.path("data/nod/secrets.key").exists(),
        !dir.path("data/nod/secrets-policy.key").exists(),
        if protector.contains("protector passphrase") {
            "passphrase".into()
        } else {
            "file".into()
        },
    )
}

#[test]
fn migration_from_earlier_files_killed_with_sigkill_at_any_point_loses_nothing() {
    let home = new_home("nod-rest-migrate");
    // The keystore of an earlier version: keystore.key (hex) and ssh_keys.sealed, whose
    // formats are unchanged.
    ok(run(
        &home,
        None,
        &["keys", "generate", "--name", KEY_NAME, "--policy", "never"],
    ));
    write_legacy_secrets(&home);
    assert_nothing_lost(&home);
    // That check ran on a copy: the original is still in the old format.
    assert!(home.path("data/nod/secrets.key").exists());

    let mut killed = 0;
    let mut delay_us = 0u64;
    let mut states = std::collections::BTreeSet::new();
    loop {
        let mut child = nod(&home, None)
            .args(["keys", "protect", "passphrase", "--passphrase-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PASSPHRASE}\n").as_bytes());
        std::thread::sleep(Duration::from_micros(delay_us));
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let status = child.wait().unwrap();
        if status.success() {
            break;
        }
        killed += 1;
        states.insert(migration_state(&home));
        assert_nothing_lost(&home);
        assert!(killed < 60, "the migration never finished");
        delay_us += 1500 + (delay_us / 4);
    }
    assert!(killed >= 3, "killed only {killed} times");
    eprintln!("killed {killed} times; states left behind: {states:?}");
    assert!(!home.path("data/nod/secrets.key").exists());
    assert!(!home.path("data/nod/secrets-policy.key").exists());
    let status = text(&ok(run(&home, None, &["keys", "status"])));
    assert!(status.contains("protector: passphrase"), "{status}");
    assert_opens(&home, None);
    ok(run(&home, None, &["keys", "lock"]));
}

/// `.name.tmp-<16 hex>` files in `dir`.
fn temps(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n.contains(".tmp-"))
        .collect()
}

#[test]
fn start_up_removes_temp_files_of_killed_writers_and_keeps_a_live_one() {
    let home = new_home("nod-rest-temps");
    populate(&home, None);
    let data = home.path("data/nod");
    // Writers killed mid-write: the agent while it writes the store, `nod keys` while it
    // writes the keystore.
    let mut agent = start_agent(&home, None);
    let mut acknowledged = Vec::new();
    for i in 0..40 {
        let target = format!("k{i}");
        let mut put = nod(&home, None)
            .args(["secrets", "--remember", "10m", "put", "svc", &target])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        let _ = put.stdin.take().unwrap().write_all(b"v");
        if i % 8 == 7 {
            std::thread::sleep(Duration::from_micros(200 * (i as u64 % 5)));
            let _ = kill(Pid::from_raw(agent.0.id() as i32), Signal::SIGKILL);
            let _ = agent.0.wait();
            if put.wait().unwrap().success() {
                acknowledged.push(target);
            }
            agent = start_agent(&home, None);
        } else if put.wait().unwrap().success() {
            acknowledged.push(target);
        }
    }
    for i in 0..10 {
        let mut writer = nod(&home, None)
            .args(["keys", "generate", "--type", "rsa", "--bits", "2048"])
            .arg("--name")
            .arg(format!("g{i}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5 * i));
        let _ = writer.kill();
        let _ = writer.wait();
    }
    agent.stop();
    // What a writer killed after creating its temp file leaves (the lock died with it), and
    // one whose writer is still running (it holds the lock).
    write_private(&data.join(".secrets.enc.tmp-00112233445566aa"), b"old copy");
    write_private(
        &data.join(".ssh_keys.sealed.tmp-00112233445566bb"),
        b"old copy",
    );
    let live = data.join(".secrets.enc.tmp-00112233445566cc");
    write_private(&live, b"being written");
    let mut holder = Command::new("flock")
        .arg(&live)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = temps(&data);
    assert!(before.len() >= 3, "{before:?}");

    let agent = start_agent(&home, None);
    let after = temps(&data);
    assert_eq!(
        after,
        [".secrets.enc.tmp-00112233445566cc"],
        "before: {before:?}"
    );
    let log = agent_log(&home);
    assert!(
        log.contains("temp files left by interrupted writes"),
        "{log}"
    );
    // Every write that was acknowledged is there.
    for target in &acknowledged {
        let got = ok(run(
            &home,
            None,
            &["secrets", "--remember", "10m", "get", "svc", target],
        ));
        assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "v");
    }
    let got = ok(run(&home, None, &["secrets", "get", "svc", "t1"]));
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), SECRET);
    agent.stop();
    let _ = holder.kill();
    let _ = holder.wait();
}
