//! Attacks on the secrets broker by a same-user attacker, against a real `nod agent`. Each
//! attack test asserts the outcome only: the attacker never receives the secret value.
//!
//! Every test builds the same lab (see [`Lab::new`]):
//! - the agent and every program run as one unprivileged user (`nobody` when the tests run as
//!   root, else the current user), so the attacker has exactly a same-user attacker's powers;
//! - the programs live in a root-owned `bin/` the user cannot write (when run as root), like
//!   installed programs;
//! - `registered-sleep`, a copy of `sleep`, holds the read grant on service `aws`; `nodc`, a
//!   small C client compiled here (`fixtures/nodc.c`), holds read and write on `aws` and stores
//!   the secret; neither is an interpreter;
//! - `attacker` is a copy of python3 with a byte appended: unregistered;
//! - the command approver records every prompt in `prompts/` and answers from the `answer`
//!   file: yes while the lab is set up, no during the attacks (a person who did not ask for
//!   anything says no).
//!
//! The fixtures need `cc`, python3, `ss` (iproute2), `strace` and `unshare` (util-linux), and
//! unprivileged user namespaces; without them a test fails under `CI=true` and is skipped
//! with a notice otherwise. The pid-reuse test needs root (to place a process at a given pid).

use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{Agent, TempDir, copy_exe, nod_bin};

const SERVICE: &str = "aws";
const TARGET: &str = "prod";
const READ_PROD: &str = r#"{"type":"REQUEST","action":"read","service":"aws","targets":["prod"]}"#;

const NODC_C: &str = include_str!("fixtures/nodc.c");
const FORGE_CREDS_PY: &str = include_str!("fixtures/forge_creds.py");
const PID_REUSE_PY: &str = include_str!("fixtures/pid_reuse.py");
const PLACE_PID_PY: &str = include_str!("fixtures/place_pid.py");
const SEND_EXEC_PY: &str = include_str!("fixtures/send_exec.py");
const USE_SESSION_PY: &str = include_str!("fixtures/use_session.py");

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Under `CI=true` a missing prerequisite fails the test; otherwise it is skipped with a notice.
fn cannot_run(why: &str) {
    assert!(!ci(), "{why} (CI=true: not skipping)");
    eprintln!("SKIPPED: {why}");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn which(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// The tools every lab needs (`cc`, python3, `ss`, `sleep`), or `None` after [`cannot_run`].
fn lab_tools() -> Option<()> {
    for (tool, package) in [
        ("cc", "gcc libc6-dev"),
        ("python3", "python3"),
        ("ss", "iproute2"),
        ("sleep", "coreutils"),
    ] {
        if which(tool).is_none() {
            cannot_run(&format!("{tool} is missing (apt-get install {package})"));
            return None;
        }
    }
    Some(())
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", text(&o));
    o
}

fn hash_of(path: &Path) -> String {
    nod_agent::caller::identity::hash_path(path).unwrap()
}

/// Who the agent and every program of the lab run as.
#[derive(Clone, Copy)]
struct LabUser {
    uid: u32,
    gid: u32,
    /// The tests run as root and switch each child to `uid`.
    switch: bool,
}

impl LabUser {
    fn pick() -> Self {
        if is_root() {
            let nobody = nix::unistd::User::from_name("nobody").ok().flatten();
            let (uid, gid) = nobody.map_or((65534, 65534), |u| (u.uid.as_raw(), u.gid.as_raw()));
            Self {
                uid,
                gid,
                switch: true,
            }
        } else {
            Self {
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
                switch: false,
            }
        }
    }

    fn chown(&self, path: &Path) {
        if self.switch {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).unwrap();
        }
    }
}

/// A running agent with a secret stored under service `aws`, registered programs and an
/// attacker (see the module docs).
struct Lab {
    /// Declared first, so that it is killed before its directory is removed.
    agent: Agent,
    dir: TempDir,
    user: LabUser,
    secret: String,
    /// Root-owned (when run as root) programs: `nod`, `nodc`, `registered-sleep`, `attacker`.
    bin: PathBuf,
}

impl Lab {
    /// `None` (after a notice) when a tool is missing outside CI.
    fn new(tag: &str) -> Option<Self> {
        Self::start(tag, false)
    }

    /// With the agent in a user and mount namespace of its own, as systemd runs a user service
    /// with `PrivateTmp=` or `ProtectSystem=` (`PrivateUsers=` implied): the user's uid and
    /// gid mapped to themselves. Nothing is registered or stored.
    fn sandboxed(tag: &str) -> Option<Self> {
        Self::start(tag, true)
    }

    fn start(tag: &str, sandboxed: bool) -> Option<Self> {
        lab_tools()?;
        let user = LabUser::pick();
        let dir = TempDir::new(&format!("nod-attack-{tag}"), &[]);
        // Every ancestor must let the user through.
        let mut ancestor = dir.root().parent();
        while let Some(d) = ancestor {
            let mode = fs::metadata(d).unwrap().mode();
            assert!(
                !user.switch || mode & 0o001 != 0,
                "{} is not searchable by uid {}; set TMPDIR to a directory that is",
                d.display(),
                user.uid
            );
            ancestor = d.parent();
        }
        fs::set_permissions(dir.root(), fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["home", "run", "config", "data", "state", "prompts", "work"] {
            let d = dir.path(sub);
            fs::create_dir_all(&d).unwrap();
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
            user.chown(&d);
        }
        let bin = dir.path("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();

        // The nod binary, reachable by the user wherever the build directory is.
        if fs::hard_link(nod_bin(), bin.join("nod")).is_err() {
            copy_exe(&nod_bin(), &bin.join("nod"), false);
        }
        compile(&bin, "nodc", &[]);
        copy_exe(
            &which("sleep").unwrap(),
            &bin.join("registered-sleep"),
            false,
        );
        copy_exe(&which("python3").unwrap(), &bin.join("attacker"), true);

        let approver = dir.path("approve.sh");
        fs::write(
            &approver,
            format!(
                "#!/bin/sh\nf=$(mktemp '{prompts}/prompt.XXXXXX') || exit 1\ncat > \"$f\"\n\
                 echo \"$NOD_PROMPT_KIND\" > \"$f.kind\"\nexit \"$(cat '{answer}')\"\n",
                prompts = dir.path("prompts").display(),
                answer = dir.path("answer").display()
            ),
        )
        .unwrap();
        fs::set_permissions(&approver, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.path("answer"), "0\n").unwrap();
        fs::set_permissions(dir.path("answer"), fs::Permissions::from_mode(0o644)).unwrap();

        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random).unwrap();
        let secret = format!("s3cr3t-{}", hex::encode(random));

        let agent = {
            let mut cmd = if sandboxed {
                let mut cmd = as_user(&dir, user, which("unshare").unwrap());
                cmd.arg("--user")
                    .arg(format!("--map-user={}", user.uid))
                    .arg(format!("--map-group={}", user.gid))
                    .arg("--mount")
                    .arg(bin.join("nod"));
                cmd
            } else {
                as_user(&dir, user, bin.join("nod"))
            };
            cmd.stderr(fs::File::create(dir.path("agent.log")).unwrap())
                .arg("agent")
                .arg("--approver-command")
                .arg(&approver);
            Agent(cmd.spawn().unwrap())
        };
        let lab = Self {
            agent,
            dir,
            user,
            secret,
            bin,
        };
        lab.wait_listening();
        if sandboxed {
            // Such an agent refuses every caller, `nod register` and the client included.
            return Some(lab);
        }
        let nodc = lab.bin("nodc");
        ok(lab.nod(&["register", p(&nodc), "--read", SERVICE, "--write", SERVICE]));
        ok(lab.nod(&[
            "register",
            p(&lab.bin("registered-sleep")),
            "--read",
            SERVICE,
        ]));
        let o = ok(lab
            .cmd(&nodc)
            .args(["write", SERVICE, TARGET, &lab.secret])
            .output()
            .unwrap());
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(r#""status":"success""#),
            "storing the secret failed: {}",
            text(&o)
        );
        lab.answer(false);
        lab.clear_prompts();
        Some(lab)
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    fn socket(&self) -> PathBuf {
        self.dir.secrets_socket()
    }

    fn agent_pid(&self) -> i32 {
        self.agent.0.id() as i32
    }

    /// Waits (10 s at most) until the broker socket is listening, without connecting to it
    /// (this process may not be the lab's user).
    fn wait_listening(&self) {
        let socket = self.socket();
        let want = socket.to_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let table = fs::read_to_string("/proc/net/unix").unwrap_or_default();
            // Flags 00010000 (__SO_ACCEPTCON): listening.
            let listening = table.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 8 && f[3] == "00010000" && f[7] == want
            });
            if listening {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent never listened on {want}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `program` as the lab's user, with the lab's XDG dirs and no terminal.
    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        as_user(&self.dir, self.user, program)
    }

    fn nod(&self, args: &[&str]) -> Output {
        self.cmd(self.bin("nod")).args(args).output().unwrap()
    }

    /// The approver's answer from now on.
    fn answer(&self, approve: bool) {
        fs::write(self.dir.path("answer"), if approve { "0\n" } else { "1\n" }).unwrap();
    }

    fn clear_prompts(&self) {
        for e in fs::read_dir(self.dir.path("prompts")).unwrap() {
            fs::remove_file(e.unwrap().path()).unwrap();
        }
    }

    /// Every prompt the approver saw since the last [`Lab::clear_prompts`], as (kind, JSON).
    fn prompts(&self) -> Vec<(String, serde_json::Value)> {
        let mut found = Vec::new();
        for e in fs::read_dir(self.dir.path("prompts")).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "kind") {
                continue;
            }
            let raw = fs::read_to_string(&path).unwrap_or_default();
            let kind = fs::read_to_string(format!("{}.kind", path.display())).unwrap_or_default();
            let json = serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw));
            found.push((kind.trim().to_owned(), json));
        }
        found
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path("agent.log")).unwrap_or_default()
    }

    fn audit(&self) -> String {
        fs::read_to_string(self.dir.path("state/nod/audit.jsonl")).unwrap_or_default()
    }

    /// The outcome every attack test asserts: `seen` (all the attacker could read) does not
    /// hold the secret value.
    fn assert_no_secret(&self, attack: &str, seen: &str) {
        assert!(
            !seen.contains(&self.secret),
            "{attack}: the attacker got the secret.\n--- attacker saw:\n{seen}\n--- prompts \
             during the attack: {:?}\n--- audit (last lines):\n{}\n--- agent log (last \
             lines):\n{}",
            self.prompts(),
            tail(&self.audit(), 6),
            tail(&self.log(), 20)
        );
    }

    /// A python attacker script run by the unregistered `attacker` binary.
    fn attacker(&self, script: &str) -> Command {
        let mut cmd = self.cmd(self.bin("attacker"));
        cmd.arg("-c").arg(script);
        cmd
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `common::command` as `user`.
fn as_user(dir: &TempDir, user: LabUser, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = common::command(dir, program);
    cmd.current_dir(dir.path("work"));
    if user.switch {
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd
}

/// Compiles `fixtures/nodc.c` into `bin/<name>` with extra `cc` flags.
fn compile(bin: &Path, name: &str, flags: &[&str]) {
    let src = bin.join("nodc.c");
    if !src.exists() {
        fs::write(&src, NODC_C).unwrap();
    }
    let o = Command::new(which("cc").unwrap())
        .args(["-O1", "-Wall", "-Werror"])
        .args(flags)
        .arg("-o")
        .arg(bin.join(name))
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "cc failed: {}", text(&o));
    fs::set_permissions(bin.join(name), fs::Permissions::from_mode(0o755)).unwrap();
}

fn stdout_and_stderr(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Kills and reaps a child on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` with piped output, killed after `limit`.
fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    let o = child.wait_with_output().unwrap();
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    o
}

/// A legitimate registered client still reads its secret, with no prompt.
#[test]
fn a_registered_client_still_reads_its_secret() {
    let Some(lab) = Lab::new("legit") else { return };
    let o = ok(lab
        .cmd(lab.bin("nodc"))
        .args(["read", SERVICE, TARGET])
        .output()
        .unwrap());
    let reply: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON line");
    assert_eq!(reply["status"], "success", "{reply}\n{}", lab.log());
    assert_eq!(reply["results"][0]["value"], lab.secret.as_str(), "{reply}");
    assert!(lab.prompts().is_empty(), "{:?}", lab.prompts());
}

/// An agent in a user namespace of its own (systemd's `PrivateUsers=`) cannot see the programs
/// of the session's processes: it refuses every caller with a reason that names the cause, and
/// says so at start.
#[test]
fn an_agent_in_a_user_namespace_of_its_own_refuses_every_caller_and_says_why() {
    let Some(unshare) = which("unshare") else {
        return cannot_run("unshare is missing (apt-get install util-linux)");
    };
    let probe = as_user(
        &TempDir::new("nod-attack-probe", &["work"]),
        LabUser::pick(),
        &unshare,
    )
    .args(["-Urpf", "true"])
    .output()
    .unwrap();
    if !probe.status.success() {
        return cannot_run(&format!(
            "unprivileged user namespaces are off: {}",
            text(&probe)
        ));
    }
    let Some(lab) = Lab::sandboxed("sandboxed") else {
        return;
    };
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    assert_ne!(
        ns(&lab.agent_pid().to_string()),
        ns("self"),
        "the agent is not in a user namespace of its own"
    );
    let o = lab
        .cmd(lab.bin("nodc"))
        .args(["read", SERVICE, TARGET])
        .output()
        .unwrap();
    let reply = String::from_utf8_lossy(&o.stdout);
    assert!(
        reply.contains(r#""status":"denied""#) && reply.contains(r#""reason":"untrusted_caller""#),
        "{reply}\n{}",
        lab.log()
    );
    assert!(reply.contains("PrivateUsers="), "{reply}");
    assert!(
        lab.log()
            .contains("warning: the agent runs in a user namespace of its own"),
        "{}",
        lab.log()
    );
}

/// So the packaged unit sets no option that makes systemd put a user service in a user
/// namespace of its own.
#[test]
fn the_packaged_unit_keeps_the_agent_in_the_session_user_namespace() {
    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd/nod-agent.service"),
    )
    .unwrap();
    let implying = [
        "PrivateUsers",
        "PrivateTmp",
        "ProtectSystem",
        "ProtectHome",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "BindPaths",
        "BindReadOnlyPaths",
        "TemporaryFileSystem",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "ProtectProc",
        "PrivateMounts",
    ];
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let key = line.split('=').next().unwrap_or("");
        assert!(!implying.contains(&key), "nod-agent.service sets {line}");
    }
}

/// Attack 1: in `unshare -Urpf`, the attacker starts the registered binary as its child and
/// sends the request with `SCM_CREDENTIALS` naming the child's pid.
#[test]
fn forged_credentials_from_a_user_namespace_get_nothing() {
    let Some(unshare) = which("unshare") else {
        return cannot_run("unshare is missing (apt-get install util-linux)");
    };
    let Some(lab) = Lab::new("userns") else {
        return;
    };
    // Root in the initial namespace can forge any pid anyway: the attack is the user's.
    assert!(
        lab.user.uid != 0,
        "the attacker must not be root: {}",
        lab.user.uid
    );
    let probe = lab.cmd(&unshare).args(["-Urpf", "true"]).output().unwrap();
    if !probe.status.success() {
        return cannot_run(&format!(
            "unprivileged user namespaces are off (unshare -Urpf true as uid {}: {}); \
             sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces",
            lab.user.uid,
            text(&probe)
        ));
    }
    let mut cmd = lab.cmd(&unshare);
    cmd.args(["-Urpf", p(&lab.bin("attacker")), "-c", FORGE_CREDS_PY])
        .arg(lab.socket())
        .arg(lab.bin("registered-sleep"))
        .arg(READ_PROD);
    let o = output_within(&mut cmd, Duration::from_secs(25));
    let seen = stdout_and_stderr(&o);
    assert!(
        !seen.contains("FORGE-REFUSED-BY-KERNEL"),
        "this kernel refuses the forged credentials, so nod's check is not exercised: {seen}"
    );
    assert!(
        (seen.contains("FORGED-SENT") || seen.contains("SEND-CLOSED")) && seen.contains("REPLY"),
        "the attack did not run: {seen}"
    );
    lab.assert_no_secret("forged SCM_CREDENTIALS from a user namespace", &seen);
}

/// Attack 2: the attacker freezes the agent, sends from a child that exits, and the registered
/// binary gets the dead sender's pid before the agent resumes. Three times.
#[test]
fn a_reused_pid_gets_nothing() {
    if !is_root() {
        return cannot_run("placing a process at a given pid needs root (ns_last_pid)");
    }
    let Some(lab) = Lab::new("pidreuse") else {
        return;
    };
    let system_python = which("python3").unwrap();
    let mut placed = 0;
    let mut rounds = 0;
    while placed < 3 {
        rounds += 1;
        assert!(
            rounds <= 12,
            "could place the registered binary at the sender's pid only {placed} times in \
             {} rounds (something else took the pid): the attack could not be set up",
            rounds - 1
        );
        let mut attacker = Reaped(
            lab.attacker(PID_REUSE_PY)
                .arg(lab.socket())
                .arg(lab.agent_pid().to_string())
                .arg(READ_PROD)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(attacker.0.stdout.take().unwrap());
        let mut sent = String::new();
        lines.read_line(&mut sent).unwrap();
        let Some(pid) = sent
            .strip_prefix("SENT ")
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            panic!("the attacker did not send: {sent:?}");
        };
        // The stand-in for the attacker cycling pids.
        let placement = Command::new(&system_python)
            .args(["-c", PLACE_PID_PY])
            .arg(pid.to_string())
            .arg(lab.user.uid.to_string())
            .arg(lab.user.gid.to_string())
            .arg(lab.bin("registered-sleep"))
            .output()
            .unwrap();
        let ok_placed = placement.status.success();
        let mut stdin = attacker.0.stdin.take().unwrap();
        stdin.write_all(b"GO\n").unwrap();
        drop(stdin);
        let mut seen = String::new();
        for line in lines.lines() {
            seen.push_str(&line.unwrap());
            seen.push('\n');
        }
        let status = attacker.0.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut attacker.0.stderr.take().unwrap(), &mut err).unwrap();
        seen.push_str(&err);
        if ok_placed {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(
            seen.contains("REPLY"),
            "the attacker got no answer ({status}): {seen}"
        );
        lab.assert_no_secret(&format!("pid reuse (pid {pid})"), &seen);
        if ok_placed {
            placed += 1;
        }
    }
}

/// Runs the send-then-exec attacker once; returns all it saw.
fn send_then_exec(lab: &Lab, mode: &str) -> String {
    let mut cmd = lab.attacker(SEND_EXEC_PY);
    cmd.arg(lab.socket())
        .arg(lab.agent_pid().to_string())
        .arg(lab.bin("registered-sleep"))
        .arg(READ_PROD)
        .arg(mode);
    let o = output_within(&mut cmd, Duration::from_secs(20));
    let seen = stdout_and_stderr(&o);
    assert!(
        seen.contains("REPLY")
            && seen.contains(&format!("EXECED {}", lab.bin("registered-sleep").display())),
        "the attack did not run ({mode}): {seen}"
    );
    seen
}

/// Attack 3: the attacker sends, then execs the registered binary while a forked reader keeps
/// the socket; with the agent frozen from the send until the exec is done (5 runs), as a plain
/// race (30 runs), and frozen before the connection is accepted while the attacker opens a
/// session and execs, the reader then using that session (5 runs). Every run must get nothing.
#[test]
fn sending_then_execing_the_registered_binary_gets_nothing() {
    let Some(lab) = Lab::new("sendexec") else {
        return;
    };
    let mut leaked = Vec::new();
    for (mode, runs) in [("freeze", 5), ("race", 30), ("hello", 5)] {
        for run in 0..runs {
            let seen = send_then_exec(&lab, mode);
            if seen.contains(&lab.secret) {
                leaked.push(format!("{mode} run {run}"));
            }
        }
    }
    lab.assert_no_secret(
        "send then exec",
        &if leaked.is_empty() {
            String::new()
        } else {
            format!("{} of 40 runs got {}: {leaked:?}", leaked.len(), lab.secret)
        },
    );
}

/// A session belongs to the image that opened it: a registered client that opens one and then
/// execs another program (here the attacker, which gets the connection and the session id)
/// cannot lend it. (A process that execs a registered client *before* its session is judged
/// just runs that client, which asks for its own secret: no different from running it.)
#[test]
fn a_session_is_refused_once_its_process_execs_another_program() {
    let Some(lab) = Lab::new("execd") else { return };
    let nodc = lab.bin("nodc");
    let own = ok(lab
        .cmd(&nodc)
        .args(["read", SERVICE, TARGET])
        .output()
        .unwrap());
    assert!(
        String::from_utf8_lossy(&own.stdout).contains(&lab.secret),
        "the registered client on its own connection: {}",
        text(&own)
    );
    let script = lab.dir.path("work/use-session");
    fs::write(
        &script,
        format!("#!{}\n{}", lab.bin("attacker").display(), USE_SESSION_PY),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    lab.user.chown(&script);
    let mut cmd = lab.cmd(&nodc);
    cmd.arg("--hello-then-exec").arg(&script);
    let o = output_within(&mut cmd, Duration::from_secs(20));
    let seen = stdout_and_stderr(&o);
    assert!(
        seen.contains("SESSION-OPEN") && seen.contains("SESSION-USED"),
        "the session was not opened and handed over: {seen}"
    );
    lab.assert_no_secret(
        "a session opened by the registered client, used after it exec'd the attacker",
        &seen,
    );
}

/// Attack 4a: code injected with `LD_PRELOAD` asks from inside the registered binary.
#[test]
fn ld_preload_code_in_a_registered_binary_gets_nothing() {
    let Some(lab) = Lab::new("preload") else {
        return;
    };
    compile(
        &lab.bin,
        "steal.so",
        &["-shared", "-fPIC", "-DNODC_PRELOAD"],
    );
    let mut cmd = lab.cmd(lab.bin("registered-sleep"));
    cmd.arg("0").env("LD_PRELOAD", lab.bin("steal.so"));
    let o = output_within(&mut cmd, Duration::from_secs(20));
    let seen = stdout_and_stderr(&o);
    assert!(
        seen.contains("PRELOAD-CONNECTED"),
        "the preloaded code did not run: {seen}"
    );
    lab.assert_no_secret("LD_PRELOAD in the registered binary", &seen);
}

/// The `ptrace_scope` the attack below runs under (`None`: no Yama, classic ptrace rules,
/// i.e. as 0).
fn ptrace_scope() -> Option<u32> {
    fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn tracer_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The system calls the tracer shows, with every byte read or sent.
const TRACED: &str = "trace=connect,read,recvfrom,recvmsg,sendto,write";

/// The trace shows the client connecting to the broker and sending its request.
/// Whether the traced client reached the broker: it connected and opened its session (the
/// broker may refuse it there, before any request is sent).
fn asked_the_broker(trace: &str) -> bool {
    trace.contains("secrets.sock")
        && (trace.contains(r#"\"type\":\"HELLO\""#) || trace.contains(r#"\"action\":\"read\""#))
}

/// Attack 4b: the attacker traces the registered client with `strace`, which prints every
/// byte the client reads: started under the tracer (`strace -f`), and attached to while
/// running (`strace -p`, when Yama's `ptrace_scope` lets a same-user process attach).
#[test]
fn a_traced_registered_client_gets_nothing() {
    let Some(strace) = which("strace") else {
        return cannot_run("strace is missing (apt-get install strace)");
    };
    let Some(lab) = Lab::new("traced") else {
        return;
    };
    let scope = ptrace_scope();
    eprintln!("yama ptrace_scope: {scope:?}");
    if matches!(scope, Some(s) if s >= 2) {
        return cannot_run(&format!(
            "yama ptrace_scope {scope:?} lets no same-user process trace another, so the \
             attack cannot be made"
        ));
    }
    let nodc = lab.bin("nodc");
    let read_args = ["read", SERVICE, TARGET];

    // Started under the tracer.
    let log = lab.dir.path("work/strace-f.log");
    let mut cmd = lab.cmd(&strace);
    cmd.args(["-f", "-qq", "-s", "65536", "-e", TRACED])
        .arg("-o")
        .arg(&log)
        .arg(&nodc)
        .args(read_args);
    let o = output_within(&mut cmd, Duration::from_secs(20));
    let trace = fs::read_to_string(&log).unwrap_or_default();
    let seen = format!("{}\n--- strace -f:\n{trace}", stdout_and_stderr(&o));
    assert!(
        asked_the_broker(&trace),
        "the traced client did not run or was not traced: {seen}"
    );
    lab.assert_no_secret("strace -f of the registered client", &seen);

    // Attached to while it waits.
    if matches!(scope, Some(s) if s >= 1) {
        eprintln!(
            "ptrace_scope {scope:?}: a same-user process cannot attach to a non-child; the \
             `strace -p` variant is blocked by the kernel and not run"
        );
        return;
    }
    // Dropping its stdin on a failure below ends it.
    let mut client = lab
        .cmd(&nodc)
        .arg("--wait")
        .args(read_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = client.id();
    let log = lab.dir.path("work/strace-p.log");
    let mut tracer = Reaped(
        lab.cmd(&strace)
            .args(["-qq", "-s", "65536", "-e", TRACED])
            .arg("-o")
            .arg(&log)
            .arg("-p")
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while tracer_pid(pid).unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "strace -p never attached (TracerPid 0)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"g").unwrap();
    drop(stdin);
    let o = client.wait_with_output().unwrap();
    // strace -p ends when its tracee does.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tracer.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "strace -p did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    let trace = fs::read_to_string(&log).unwrap_or_default();
    let seen = format!("{}\n--- strace -p:\n{trace}", stdout_and_stderr(&o));
    assert!(
        asked_the_broker(&trace),
        "the attached-to client did not run or was not traced: {seen}"
    );
    lab.assert_no_secret("strace -p of the registered client", &seen);
}

/// True when `prompt` was flagged as an interpreter.
fn flagged_interpreter(prompt: &serde_json::Value) -> bool {
    prompt["interpreter"] == true
}

/// Attack 5: python3 copied to `regtool` is an interpreter by content; a shebang script is
/// refused (with a reason) or flagged.
#[test]
fn an_interpreter_is_known_by_its_content_not_its_name() {
    let Some(lab) = Lab::new("interp") else {
        return;
    };
    lab.answer(true);
    let regtool = lab.bin("regtool");
    copy_exe(&which("python3").unwrap(), &regtool, false);
    lab.clear_prompts();
    let o = lab.nod(&["register", p(&regtool), "--read", SERVICE]);
    assert!(o.status.success(), "{}", text(&o));
    let prompts = lab.prompts();
    assert!(
        prompts.iter().any(|(_, j)| flagged_interpreter(j)),
        "python3 copied to regtool was not flagged as an interpreter in the prompt: \
         {prompts:?}"
    );
    let list = ok(lab.nod(&["policy", "list"]));
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    let line = list
        .lines()
        .find(|l| l.contains(&hash_of(&regtool)))
        .unwrap_or_else(|| panic!("regtool not registered: {list}"));
    assert!(line.contains("INTERPRETER"), "{line}");

    // A shebang script: the running process would be /bin/sh, so a grant to the script's hash
    // cannot mean what it says.
    let script = lab.bin("deploy-tool");
    fs::write(&script, "#!/bin/sh\necho deploying\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    lab.clear_prompts();
    let o = lab.nod(&["register", p(&script), "--read", SERVICE]);
    let said = stdout_and_stderr(&o).to_lowercase();
    let list = String::from_utf8_lossy(&ok(lab.nod(&["policy", "list"])).stdout).into_owned();
    let entry = list.lines().find(|l| l.contains(&hash_of(&script)));
    if o.status.success() {
        let prompts = lab.prompts();
        assert!(
            prompts.iter().any(|(_, j)| flagged_interpreter(j))
                && entry.is_some_and(|l| l.contains("INTERPRETER")),
            "a shebang script was registered without a flag: {}\nprompts: {prompts:?}\n{list}",
            text(&o)
        );
    } else {
        assert!(entry.is_none(), "refused, yet in the policy: {list}");
        assert!(
            ["script", "interpreter", "shebang", "/bin/sh"]
                .iter()
                .any(|w| said.contains(w)),
            "refused without saying why: {}",
            text(&o)
        );
    }
}

/// The `nod` CLI as a generic reader: registering it is refused, and `nod secrets get` run by
/// a script gives the secret only when the person approves a prompt that names the script.
#[test]
fn the_nod_cli_is_not_a_generic_reader() {
    let Some(lab) = Lab::new("cli") else { return };
    let nod = lab.bin("nod");
    let nod_hash = hash_of(&nod);
    // Refused even though the person would say yes, under its own name and under another.
    lab.answer(true);
    let renamed = lab.bin("aws-helper");
    copy_exe(&nod, &renamed, false);
    for path in [&nod, &renamed] {
        let o = lab.nod(&["register", p(path), "--read", SERVICE]);
        assert!(
            !o.status.success() && !o.stderr.is_empty(),
            "registering the nod binary ({}) must be refused with a reason: {}",
            path.display(),
            text(&o)
        );
    }
    let list = String::from_utf8_lossy(&lab.nod(&["policy", "list"]).stdout).into_owned();
    assert!(!list.contains(&nod_hash), "nod is in the policy: {list}");

    let script = lab.bin("reader.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n'{}' secrets get {SERVICE} {TARGET}\n",
            nod.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();

    // The person says no: nothing.
    lab.answer(false);
    lab.clear_prompts();
    let o = output_within(&mut lab.cmd(&script), Duration::from_secs(20));
    lab.assert_no_secret(
        "a script running `nod secrets get`, denied",
        &stdout_and_stderr(&o),
    );
    let prompts = lab.prompts();
    let names_script = |j: &serde_json::Value| names_in_caller_field(j, "reader.sh");
    assert!(
        prompts.iter().any(|(_, j)| names_script(j)),
        "no prompt named the calling script in a chain or caller field: {prompts:?}\n{}",
        lab.log()
    );

    // The person says yes: the value.
    lab.answer(true);
    lab.clear_prompts();
    let o = output_within(&mut lab.cmd(&script), Duration::from_secs(20));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        lab.secret,
        "approved: {}\nprompts: {:?}",
        text(&o),
        lab.prompts()
    );
}

/// True when some field of `v` whose name mentions a chain or a caller holds `needle`.
fn names_in_caller_field(v: &serde_json::Value, needle: &str) -> bool {
    match v {
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| {
            let k = k.to_lowercase();
            ((k.contains("chain") || k.contains("caller")) && v.to_string().contains(needle))
                || names_in_caller_field(v, needle)
        }),
        serde_json::Value::Array(items) => items.iter().any(|v| names_in_caller_field(v, needle)),
        _ => false,
    }
}
