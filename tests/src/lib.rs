//! Harness for nod's end-to-end tests.
//!
//! The tests drive the real programs: `nod agent`, `nod-helper`, `pam_nod.so` under
//! `pamtester` and `sudo`, and `sshd` on loopback with an `ssh -R` forward of the approval
//! socket. They need root (to write a throwaway `/etc/pam.d` service, a sudoers drop-in and
//! root-owned config) and those tools. When something is missing, [`require`] fails the test
//! under `CI=true` and skips it otherwise, so CI can never pass without running them.
//!
//! Everything a test creates lives under a [`Scratch`] directory in `/run` (root-owned and not
//! writable by others, as nod-helper insists) and is removed when the test ends.

#![forbid(unsafe_code)]

pub mod buses;
pub mod ssh_bench;

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Checks that the test can run for real: root, and every tool in `tools` on PATH.
/// Returns false (after printing why) when it cannot and CI is not set; panics under CI.
pub fn require(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        missing.push("root".to_owned());
    }
    for tool in tools {
        if which(tool).is_none() {
            missing.push((*tool).to_owned());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "end-to-end test needs {}; install them (see .ci/run) and run as root",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: refusing to skip)");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// Raises this process's soft open-files limit to the hard one (floods need thousands).
pub fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Finds a program on PATH, also in the sbin directories a non-login root shell may lack.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// The workspace's build directory for the current profile.
pub fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("NOD_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // tests/ → workspace root → target/<profile>; the test binary itself lives in
    // target/<profile>/deps.
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_owned()
}

/// A built artifact of the workspace, e.g. `nod`, `nod-helper` or `libpam_nod.so`.
pub fn artifact(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first (`make check` does)",
        p.display()
    );
    p
}

static SCRATCH_SEQ: AtomicU32 = AtomicU32::new(0);

/// A root-owned 0755 directory under /run, removed on drop.
#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let n = SCRATCH_SEQ.fetch_add(1, Ordering::SeqCst);
        let path = PathBuf::from(format!("/run/nod-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).expect("create scratch dir in /run");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        Self { path }
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// Creates a subdirectory with `mode`.
    pub fn dir(&self, name: &str, mode: u32) -> PathBuf {
        let p = self.join(name);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// Writes a file with `mode`.
    pub fn file(&self, name: &str, mode: u32, contents: &str) -> PathBuf {
        let p = self.join(name);
        fs::write(&p, contents).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// Copies a built artifact in, root-owned 0755, so trusted-path checks see safe ancestors.
    pub fn install(&self, artifact_name: &str, as_name: &str) -> PathBuf {
        let dst = self.join(as_name);
        fs::copy(artifact(artifact_name), &dst).unwrap();
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).unwrap();
        dst
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Runs a command, returns its output; panics if it cannot be spawned.
///
/// `ETXTBSY` is retried: tests run in parallel threads, and a binary just copied in by
/// [`Scratch::install`] can still be open for writing in a child another thread forked but has
/// not exec'd yet.
pub fn run(cmd: &mut Command) -> Output {
    let mut tries = 0;
    loop {
        match cmd.output() {
            Ok(out) => return out,
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot run {cmd:?}: {e}"),
        }
    }
}

/// Runs a command with `stdin` written to its standard input, and collects its output.
pub fn run_with_stdin(cmd: &mut Command, stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // A command that exits without reading gives EPIPE here; its output still tells why.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// Runs a command that must succeed and returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until `cond` holds, or panics after `timeout` with `what`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How the command approver of a test agent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Approve,
    Deny,
    Cancel,
}

impl Answer {
    fn exit_code(self) -> u8 {
        match self {
            Self::Approve => 0,
            Self::Deny => 1,
            Self::Cancel => 2,
        }
    }
}

/// A running `nod agent` with its own XDG directories and a command approver whose answer
/// and received prompts live in files, so a test can change and inspect them.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    pub home: PathBuf,
    pub socket: PathBuf,
    answer_file: PathBuf,
    prompts_file: PathBuf,
}

impl Agent {
    /// Starts `nod agent` under `<scratch>/agent`, with the scripted command approver.
    pub fn start(scratch: &Scratch) -> Self {
        Self::start_with(scratch, None, None)
    }

    /// Starts `nod agent` with `approver` as its command approver (default: the scripted one
    /// that records prompts and answers from a file) and `agent_toml` as its config.
    pub fn start_with(
        scratch: &Scratch,
        approver: Option<&Path>,
        agent_toml: Option<&str>,
    ) -> Self {
        let mut agent = Self::prepare(scratch, agent_toml);
        let script = agent.home.join("approver.sh");
        let approver = approver.unwrap_or(&script).to_owned();
        let mut cmd = agent.nod(["agent", "--approver", "command", "--approver-command"]);
        cmd.arg(approver);
        agent.spawn(cmd);
        agent
    }

    /// Starts `nod agent` with no approver flags: what it asks through comes from
    /// `agent_toml` and from `env` (added to the clean environment), as for the packaged unit.
    pub fn start_configured(scratch: &Scratch, agent_toml: &str, env: &[(&str, &str)]) -> Self {
        let mut agent = Self::prepare(scratch, Some(agent_toml));
        let mut cmd = agent.nod(["agent"]);
        cmd.envs(env.iter().copied());
        agent.spawn(cmd);
        agent
    }

    /// Starts `nod agent` as the packaged systemd unit runs it: `ExecStart=/usr/bin/nod agent`,
    /// no `agent.toml`, no approver flags, stdin not a terminal, no display, and no session
    /// bus but what `env` gives (not the test's own), so `auto` decides alone. The runtime
    /// directory is [`Agent::runtime_dir`], where the user manager's bus socket would be.
    pub fn start_as_unit(scratch: &Scratch, env: &[(&str, &str)]) -> Self {
        let mut agent = Self::prepare(scratch, None);
        let mut cmd = agent.nod(["agent"]);
        cmd.env_remove("DBUS_SESSION_BUS_ADDRESS")
            .envs(env.iter().copied());
        agent.spawn(cmd);
        agent
    }

    /// The `XDG_RUNTIME_DIR` that [`Agent::start_as_unit`] gives the agent of `scratch`,
    /// made (0700) so that a bus can listen there before the agent starts.
    pub fn runtime_dir(scratch: &Scratch) -> PathBuf {
        let home = scratch.dir("agent", 0o700);
        let runtime = home.join("runtime");
        fs::create_dir_all(&runtime).unwrap();
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
        runtime
    }

    /// Starts `nod agent` with `approver` as its command approver under an open-files limit
    /// of `nofile` (soft and hard, through `prlimit`).
    pub fn start_limited(scratch: &Scratch, approver: &Path, nofile: u64) -> Self {
        let mut agent = Self::prepare(
            scratch,
            Some("[approval]\nrate_limit_burst = 100000\nrate_limit_per_minute = 1000000\n"),
        );
        let template = agent.nod(["agent", "--approver", "command", "--approver-command"]);
        let mut cmd = Command::new(which("prlimit").expect("prlimit (util-linux)"));
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(template.get_program())
            .args(template.get_args())
            .arg(approver)
            .env_clear();
        for (k, v) in template.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        agent.spawn(cmd);
        agent
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The agent's home with its XDG directories, the scripted approver and `agent_toml`;
    /// the agent key is made up front so it can be pinned before start.
    fn prepare(scratch: &Scratch, agent_toml: Option<&str>) -> Self {
        let home = scratch.dir("agent", 0o700);
        for d in ["config", "data", "state", "runtime"] {
            fs::create_dir_all(home.join(d)).unwrap();
            fs::set_permissions(home.join(d), fs::Permissions::from_mode(0o700)).unwrap();
        }
        let answer_file = home.join("answer");
        let prompts_file = home.join("prompts.jsonl");
        fs::write(&answer_file, "0").unwrap();
        // The approver appends the prompt it was shown and exits with the chosen code.
        let script = home.join("approver.sh");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\ncat >> {prompts}\necho >> {prompts}\nexit $(cat {answer})\n",
                prompts = prompts_file.display(),
                answer = answer_file.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        if let Some(toml) = agent_toml {
            fs::create_dir_all(home.join("config/nod")).unwrap();
            fs::write(home.join("config/nod/agent.toml"), toml).unwrap();
        }
        let agent = Self {
            child: None,
            socket: home.join("runtime/nod/approval.sock"),
            home,
            answer_file,
            prompts_file,
        };
        run_ok(&mut agent.nod(["agent-key"]));
        agent
    }

    fn spawn(&mut self, mut cmd: Command) {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.home.join("agent.log")).unwrap())
            .spawn()
            .expect("spawn nod agent");
        self.child = Some(child);
        let socket = self.socket.clone();
        wait_for(
            "the agent's approval socket",
            Duration::from_secs(10),
            || socket.exists(),
        );
    }

    /// What the agent has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.home.join("agent.log")).unwrap_or_default()
    }

    /// The agent's audit log, one JSON value per line.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.home.join("state/nod/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// A `nod` command with this agent's environment.
    pub fn nod<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(artifact("nod"));
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join("config"))
            .env("XDG_DATA_HOME", self.home.join("data"))
            .env("XDG_STATE_HOME", self.home.join("state"))
            .env("XDG_RUNTIME_DIR", self.home.join("runtime"));
        // A bench run inside `dbus-run-session` hands its bus (and keyring) to the agent.
        if let Some(bus) = std::env::var_os("DBUS_SESSION_BUS_ADDRESS") {
            cmd.env("DBUS_SESSION_BUS_ADDRESS", bus);
        }
        cmd
    }

    /// The agent's SSH agent socket.
    pub fn ssh_socket(&self) -> PathBuf {
        self.home.join("runtime/nod/ssh-agent.sock")
    }

    /// Waits (10 s at most) until the SSH agent socket exists; returns its path.
    pub fn wait_for_ssh_socket(&self) -> PathBuf {
        let socket = self.ssh_socket();
        wait_for("the SSH agent socket", Duration::from_secs(10), || {
            socket.exists()
        });
        socket
    }

    pub fn answer(&self, a: Answer) {
        fs::write(&self.answer_file, a.exit_code().to_string()).unwrap();
    }

    /// Prompts the approver has been shown so far, as JSON values.
    pub fn prompts(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.prompts_file)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("prompt is JSON"))
            .collect()
    }

    /// The agent's public key file text, for `/etc/nod/agents.d/`.
    pub fn public_key_file(&self) -> String {
        run_ok(&mut self.nod(["agent-key"]))
    }

    /// The agent's public key.
    pub fn public_key(&self) -> nod_proto::VerifyingKey {
        nod_proto::parse_public_key_file(&self.public_key_file())
            .expect("`nod agent-key` prints a key file")
            .key
    }

    pub fn add_host(&self, host_id: &str, pubkey_file: &Path) {
        run_ok(self.nod(["hosts", "add", host_id]).arg(pubkey_file));
    }

    /// Stops the agent (SIGTERM, then wait).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}

/// A Linux-host side: a root-owned `/etc/nod`-like tree with a host key, the pinned agent key,
/// a config pointing at `socket_path`, and a root-owned copy of `nod-helper`.
#[derive(Debug)]
pub struct Host {
    pub config: PathBuf,
    pub helper: PathBuf,
    pub host_pub: PathBuf,
    pub host_id: String,
}

impl Host {
    pub fn setup(scratch: &Scratch, host_id: &str, agent_pub: &str, socket_path: &str) -> Self {
        let etc = scratch.dir("etc-nod", 0o755);
        scratch.dir("etc-nod/agents.d", 0o755);
        let helper = scratch.install("nod-helper", "nod-helper");
        let key = etc.join("host_ed25519.key");
        let host_pub = etc.join("host_ed25519.pub");
        run_ok(
            Command::new(&helper)
                .arg("gen-key")
                .arg("--private-key-file")
                .arg(&key)
                .arg("--public-key-file")
                .arg(&host_pub),
        );
        let agent_pub_path = etc.join("agents.d/workstation.pub");
        fs::write(&agent_pub_path, agent_pub).unwrap();
        fs::set_permissions(&agent_pub_path, fs::Permissions::from_mode(0o644)).unwrap();
        let config = etc.join("config.toml");
        fs::write(
            &config,
            format!(
                "socket_path = \"{socket_path}\"\n\
                 host_key_file = \"{}\"\n\
                 agent_pubkey_file = \"{}\"\n\
                 host_id = \"{host_id}\"\n\
                 hostname = \"{host_id}.example.test\"\n\
                 timeout_ms = 10000\n",
                key.display(),
                etc.join("agents.d").display()
            ),
        )
        .unwrap();
        fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
        Self {
            config,
            helper,
            host_pub,
            host_id: host_id.to_owned(),
        }
    }

    /// A host laid out as macos-auth lays one out, with its defaults, and `nod-helper` in
    /// place of its helper: key files holding nothing but `private_key_hex=` /
    /// `public_key_hex=` (no key id), the agent's key as `agents.d/agent.pub`, and a
    /// `config.toml` as macos-auth's `packaging/linux/examples/config.toml.sample` writes it
    /// (`key_id = "host-key-1"`, `replay_cache_dir`, no `{uid}` placeholder).
    pub fn macos_auth(
        scratch: &Scratch,
        host_id: &str,
        agent_pub: &nod_proto::VerifyingKey,
        socket_path: &str,
    ) -> Self {
        scratch.dir("etc-macos-auth", 0o755);
        scratch.dir("etc-macos-auth/agents.d", 0o755);
        let replay = scratch.dir("etc-macos-auth/replay", 0o700);
        let helper = scratch.install("nod-helper", "nod-helper");
        let key = nod_proto::SigningKey::from_bytes(&random_seed());
        let key_file = scratch.file(
            "etc-macos-auth/host_ed25519.key",
            0o600,
            &format!("private_key_hex={}\n", hex::encode(key.to_bytes())),
        );
        let host_pub = scratch.file(
            "etc-macos-auth/host_ed25519.pub",
            0o644,
            &format!(
                "public_key_hex={}\n",
                hex::encode(key.verifying_key().as_bytes())
            ),
        );
        let agent_pub_file = scratch.file(
            "etc-macos-auth/agents.d/agent.pub",
            0o644,
            &format!("public_key_hex={}\n", hex::encode(agent_pub.as_bytes())),
        );
        let config = scratch.file(
            "etc-macos-auth/config.toml",
            0o644,
            &format!(
                "# macos-auth Linux helper configuration sample.\n\
                 # Install as /etc/macos-auth/config.toml after adapting paths and IDs.\n\
                 \n\
                 socket_path = \"{socket_path}\"\n\
                 host_key_file = \"{}\"\n\
                 agent_pubkey_file = \"{}\"\n\
                 key_id = \"host-key-1\"\n\
                 host_id = \"{host_id}\"\n\
                 hostname = \"linux.example.com\"\n\
                 service = \"sudo\"\n\
                 timeout_ms = 15000\n\
                 allowed_future_skew_ms = 30000\n\
                 replay_cache_dir = \"{}\"\n",
                key_file.display(),
                agent_pub_file.display(),
                replay.display(),
            ),
        );
        Self {
            config,
            helper,
            host_pub,
            host_id: host_id.to_owned(),
        }
    }

    /// `nod-helper request` for `user`, as PAM would run it.
    pub fn request(&self, user: &str, extra: &[&str]) -> Output {
        run(Command::new(&self.helper)
            .arg("request")
            .arg("--config")
            .arg(&self.config)
            .args(["--user", user, "--service", "sudo", "--tty", "pts/7"])
            .args(extra)
            .env_clear())
    }
}

/// 32 bytes from the kernel's random generator, for a throwaway key.
pub fn random_seed() -> [u8; 32] {
    use std::io::Read;
    let mut seed = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .expect("read /dev/urandom");
    seed
}

/// The exit code of a finished process; panics if it was killed by a signal.
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or_else(|| {
        panic!(
            "killed by a signal: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A non-root login user for the tests, created if missing, with `password`.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl TestUser {
    pub fn ensure(name: &str, password: &str) -> Self {
        if nix::unistd::User::from_name(name).unwrap().is_none() {
            run_ok(Command::new(which("useradd").expect("useradd")).args([
                "--create-home",
                "--shell",
                "/bin/sh",
                name,
            ]));
        }
        let mut chpasswd = Command::new(which("chpasswd").expect("chpasswd"))
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(chpasswd.stdin.take().unwrap(), "{name}:{password}").unwrap();
        assert!(chpasswd.wait().unwrap().success(), "chpasswd failed");
        let user = nix::unistd::User::from_name(name).unwrap().unwrap();
        Self {
            name: name.to_owned(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        }
    }

    /// `/run/user/<uid>`, created 0700 and owned by the user, as logind would.
    pub fn runtime_dir(&self) -> PathBuf {
        let p = PathBuf::from(format!("/run/user/{}", self.uid));
        fs::create_dir_all(&p).unwrap();
        chown(&p, Some(self.uid), Some(self.gid)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        p
    }
}

/// A throwaway PAM service `/etc/pam.d/<name>`, removed on drop. Never an existing service.
#[derive(Debug)]
pub struct PamService {
    pub name: String,
    path: PathBuf,
}

impl PamService {
    pub fn new(tag: &str, body: &str) -> Self {
        let name = format!("nod-e2e-{tag}-{}", std::process::id());
        let path = PathBuf::from("/etc/pam.d").join(&name);
        assert!(!path.exists(), "{} already exists", path.display());
        fs::write(&path, body).unwrap();
        Self { name, path }
    }
}

impl Drop for PamService {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A sudoers drop-in `/etc/sudoers.d/<name>`, validated with visudo, removed on drop.
#[derive(Debug)]
pub struct SudoersDropIn {
    path: PathBuf,
}

impl SudoersDropIn {
    pub fn new(tag: &str, body: &str) -> Self {
        let path = PathBuf::from(format!(
            "/etc/sudoers.d/nod-e2e-{tag}-{}",
            std::process::id()
        ));
        let tmp = path.with_file_name(format!(".tmp-{}", std::process::id()));
        fs::write(&tmp, body).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o440)).unwrap();
        run_ok(
            Command::new(which("visudo").expect("visudo"))
                .arg("-cf")
                .arg(&tmp),
        );
        fs::rename(&tmp, &path).unwrap();
        Self { path }
    }

    /// Points `user`'s sudo at the PAM service `service`, with one try, no cached
    /// credentials and no lecture, so every `sudo` goes through that stack once.
    pub fn sudo_through(tag: &str, user: &str, service: &str) -> Self {
        Self::new(
            tag,
            &format!(
                "Defaults:{user} pam_service={service}\n\
                 Defaults:{user} passwd_tries=1\n\
                 Defaults:{user} timestamp_timeout=0\n\
                 Defaults:{user} !lecture\n\
                 {user} ALL=(root) ALL\n"
            ),
        )
    }
}

impl Drop for SudoersDropIn {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A file marker that a fallback PAM module (pam_exec) touches when the stack falls through.
#[derive(Debug)]
pub struct FallbackMarker {
    pub script: PathBuf,
    pub marker: PathBuf,
}

impl FallbackMarker {
    pub fn new(scratch: &Scratch) -> Self {
        let marker = scratch.join("fallback-taken");
        let script = scratch.file(
            "fallback.sh",
            0o755,
            &format!("#!/bin/sh\ntouch {}\nexit 0\n", marker.display()),
        );
        Self { script, marker }
    }

    pub fn taken(&self) -> bool {
        self.marker.exists()
    }

    pub fn reset(&self) {
        let _ = fs::remove_file(&self.marker);
    }
}

/// A free TCP port on loopback (bound and released; fine for a throwaway sshd).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `sshd -D` on a free loopback port with an ed25519 host key
/// (`<dir>/ssh_host_ed25519_key`, made fresh unless the caller made it, e.g. to certify it
/// first) and `<dir>/sshd_config`: public-key login for `user` only, no PAM, with `auth` (how
/// keys are authorized) and `extra` as further config lines. Checks the config with `sshd -t`
/// first and waits until it listens.
pub fn spawn_sshd(dir: &Path, user: &TestUser, auth: &str, extra: &str) -> (Child, u16) {
    let host_key = dir.join("ssh_host_ed25519_key");
    if !host_key.exists() {
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key),
        );
    }
    let port = free_port();
    let config = dir.join("sshd_config");
    fs::write(
        &config,
        format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {}\n\
             PidFile {}\n\
             {auth}\
             AllowUsers {}\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             {extra}\
             LogLevel ERROR\n",
            host_key.display(),
            dir.join("sshd.pid").display(),
            user.name,
        ),
    )
    .unwrap();
    sshd_privsep_dir();
    let sshd = which("sshd").expect("sshd");
    run_ok(Command::new(&sshd).arg("-t").arg("-f").arg(&config));
    let child = Command::new(&sshd)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sshd");
    wait_for("sshd to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (child, port)
}

/// `sshd` on loopback with a throwaway config: public-key login for one user, no PAM, Unix
/// socket remote forwards allowed and stale sockets unlinked (`StreamLocalBindUnlink yes`).
#[derive(Debug)]
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub client_key: PathBuf,
}

impl Sshd {
    pub fn start(scratch: &Scratch, user: &TestUser) -> Self {
        let dir = scratch.dir("sshd", 0o755);
        let client_key = dir.join("client_ed25519");
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&client_key),
        );
        let authorized = dir.join("authorized_keys");
        fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        fs::set_permissions(&authorized, fs::Permissions::from_mode(0o644)).unwrap();
        let (child, port) = spawn_sshd(
            &dir,
            user,
            &format!("AuthorizedKeysFile {}\n", authorized.display()),
            "AllowStreamLocalForwarding yes\nStreamLocalBindUnlink yes\n",
        );
        Self {
            child,
            port,
            client_key,
        }
    }

    /// An `ssh` client command logging in as `user` with `-R remote:local` and `remote_cmd`.
    pub fn ssh_with_forward(
        &self,
        user: &TestUser,
        remote_socket: &Path,
        local_socket: &Path,
        remote_cmd: &str,
    ) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-i")
            .arg(&self.client_key)
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ExitOnForwardFailure=yes",
                "-p",
            ])
            .arg(self.port.to_string())
            .arg("-R")
            .arg(format!(
                "{}:{}",
                remote_socket.display(),
                local_socket.display()
            ))
            .arg(format!("{}@127.0.0.1", user.name))
            .arg(remote_cmd);
        cmd
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a [`TamperProxy`] changes the agent's response on its way to the helper.
pub type Tamper = fn(&mut serde_json::Value);

/// A man in the middle between helper and agent: it passes the request through and rewrites
/// the signed response, the way a compromised forward could. One thread, serving `n`
/// exchanges.
#[derive(Debug)]
pub struct TamperProxy {
    pub socket: PathBuf,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl TamperProxy {
    pub fn start(socket: PathBuf, upstream: PathBuf, n: usize, tamper: Tamper) -> Self {
        let _ = fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let handle = std::thread::spawn(move || {
            for conn in listener.incoming().take(n) {
                let Ok(mut down) = conn else { return };
                let Ok(request) = nod_proto::frame::read_frame(&mut down) else {
                    continue;
                };
                let mut up = std::os::unix::net::UnixStream::connect(&upstream).unwrap();
                nod_proto::frame::write_frame(&mut up, &request).unwrap();
                let Ok(response) = nod_proto::frame::read_frame(&mut up) else {
                    continue;
                };
                let mut json: serde_json::Value = serde_json::from_slice(&response).unwrap();
                tamper(&mut json);
                let _ =
                    nod_proto::frame::write_frame(&mut down, &serde_json::to_vec(&json).unwrap());
            }
        });
        Self {
            socket,
            handle: Some(handle),
        }
    }

    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
    }
}

/// sshd's privilege separation directory, as the Debian unit creates it: without it, `sshd -t`
/// and `sshd -T` fail (on machines without systemd, nothing else makes it).
pub fn sshd_privsep_dir() {
    fs::create_dir_all("/run/sshd").unwrap();
}

/// A private `/dev/log` that a test reads: commands made by [`SyslogCapture::command`] run in
/// their own mount namespace (`unshare -m`), whose `/dev` holds the system's device nodes and,
/// as `log`, a datagram socket bound by this test. So syslog lines (of the helper, and of
/// `pam_nod.so` through `pam_syslog`) can be checked on a machine with no syslog daemon, and
/// the real `/dev/log` is never touched.
#[derive(Debug)]
pub struct SyslogCapture {
    dev: PathBuf,
    socket: std::os::unix::net::UnixDatagram,
}

impl SyslogCapture {
    /// Whether mount namespaces work here (`unshare --mount`, which needs real root, not an
    /// unprivileged container). Like [`require`]: false after a notice, or a panic under CI.
    pub fn available() -> bool {
        let works = which("unshare").is_some_and(|u| {
            Command::new(u)
                .args(["--mount", "--propagation", "private", "true"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if works {
            return true;
        }
        let msg = "end-to-end test needs mount namespaces (`unshare --mount true` failed): run \
                   as real root, not in an unprivileged container";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg} (CI=true: refusing to skip)");
        }
        eprintln!("SKIPPED: {msg}");
        false
    }

    /// Needs root, `unshare` and `mount` (util-linux, mount); see [`SyslogCapture::available`].
    pub fn new(scratch: &Scratch) -> Self {
        let dev = scratch.dir("dev", 0o755);
        let log = dev.join("log");
        let socket = std::os::unix::net::UnixDatagram::bind(&log).expect("bind the log socket");
        // Any user may log, as with the real /dev/log.
        fs::set_permissions(&log, fs::Permissions::from_mode(0o666)).unwrap();
        socket.set_nonblocking(true).unwrap();
        Self { dev, socket }
    }

    /// `program args…` in a mount namespace whose /dev is this capture's, run as `user` (with
    /// `setpriv`) when given.
    pub fn command(&self, user: Option<&TestUser>, program: &Path, args: &[&str]) -> Command {
        let d = self.dev.display();
        let script = format!(
            "set -e; for n in null zero full random urandom tty; do \
               [ -e /dev/$n ] || continue; touch {d}/$n; mount --bind /dev/$n {d}/$n; \
             done; \
             ln -sfn /proc/self/fd {d}/fd; \
             mount --rbind {d} /dev; \
             exec \"$@\""
        );
        let mut cmd = Command::new(which("unshare").expect("unshare (util-linux)"));
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ]);
        if let Some(u) = user {
            cmd.arg(which("setpriv").expect("setpriv (util-linux)"))
                .args([
                    format!("--reuid={}", u.uid),
                    format!("--regid={}", u.gid),
                    "--init-groups".to_owned(),
                    "--".to_owned(),
                ]);
        }
        cmd.arg(program).args(args);
        cmd
    }

    /// Every line logged since the last call, without its `<priority>` prefix kept apart:
    /// `(priority, text)`.
    pub fn lines(&self) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = self.socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let parsed = text
                .strip_prefix('<')
                .and_then(|t| t.split_once('>'))
                .and_then(|(p, rest)| Some((p.parse().ok()?, rest.to_owned())));
            out.push(parsed.unwrap_or((255, text)));
        }
        out
    }
}
