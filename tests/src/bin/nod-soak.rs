//! `make soak` (part of `make check`): floods, stalls and descriptor exhaustion against a real
//! `nod agent`, while legitimate clients of all three sockets are served.
//!
//! 1. 1,000 idle connections on each socket at once: legitimate requests on every socket are
//!    answered (approval through `nod-helper` and the command approver, the SSH agent's list,
//!    a registered program's secret), their latency is reported; the agent's peak RSS, and
//!    its RSS once the connections are closed.
//! 2. 500 stalled maximum-size frames on each socket (1 MiB announced on the approval socket,
//!    256 KiB on the SSH socket, a 64 KiB line on the secrets socket): peak RSS, and service
//!    during the stall.
//! 3. The agent started under an open-files limit of 1,024 with 1,100 idle SSH connections:
//!    approvals, SSH and secrets are still served, and a host added to `hosts.toml` during the
//!    flood is allowed (the re-read has descriptors).
//! 4. Unlock guessing: the agent locked (`SSH_AGENTC_LOCK`), then 64 connections try wrong
//!    passphrases for 8 s: the guesses the agent judged, per second.
//!
//! Every "served" is checked (a failure exits 1), and so is memory: the peak under the floods
//! at most `SOAK_PEAK_MB` (64), and a minute after they end at most `SOAK_SETTLED_MB` (default:
//! 4 MB above the agent's RSS before them, so the check holds for the debug build of `make
//! check` and for a release build alike).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nod_e2e::{Agent, Host, Scratch, artifact, code, require, run_ok, wait_for};

const IDLE_PER_SOCKET: usize = 1000;
const STALLED_PER_SOCKET: usize = 500;
const LEGIT_RUNS: usize = 20;

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn env_mb(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The SSH agent's identities request (`SSH_AGENTC_REQUEST_IDENTITIES`), answered or not.
fn ssh_list(socket: &Path) -> Result<Duration, String> {
    let start = Instant::now();
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[0, 0, 0, 1, 11]).map_err(|e| e.to_string())?;
    let mut header = [0u8; 5];
    s.read_exact(&mut header)
        .map_err(|e| format!("read: {e}"))?;
    if header[4] != 12 {
        return Err(format!("answer type {}", header[4]));
    }
    Ok(start.elapsed())
}

struct Rig {
    agent: Agent,
    host: Host,
    client: PathBuf,
    pid: u32,
}

impl Rig {
    fn start(scratch: &Scratch, nofile: Option<u64>) -> Self {
        let agent = match nofile {
            None => Agent::start_with(
                scratch,
                Some(Path::new("/bin/true")),
                Some("[approval]\nrate_limit_burst = 100000\nrate_limit_per_minute = 1000000\n"),
            ),
            Some(n) => Agent::start_limited(scratch, Path::new("/bin/true"), n),
        };
        let host = Host::setup(
            scratch,
            "soak-host",
            &agent.public_key_file(),
            &agent.socket.display().to_string(),
        );
        agent.add_host("soak-host", &host.host_pub);
        agent.wait_for_ssh_socket();
        let client = scratch.join("registered-client");
        std::fs::copy(artifact("examples/nod-secret"), &client).unwrap();
        run_ok(
            agent
                .nod(["register"])
                .arg(&client)
                .args(["--read", "soak", "--write", "soak"]),
        );
        let mut put = client_cmd(&agent, &client);
        put.args(["put", "soak", "k"]).stdin(Stdio::piped());
        let mut child = put.spawn().unwrap();
        child.stdin.take().unwrap().write_all(b"v").unwrap();
        assert!(
            child.wait().unwrap().success(),
            "storing the soak secret failed"
        );
        let pid = agent.pid();
        Self {
            agent,
            host,
            client,
            pid,
        }
    }

    /// One round of legitimate requests on every socket; their latencies (ms), or what failed.
    fn legit(&self) -> Result<(f64, f64, f64), String> {
        let start = Instant::now();
        let out = self.host.request("root", &[]);
        if code(&out) != 0 {
            return Err(format!(
                "approval answered {}: {}",
                code(&out),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let approval = start.elapsed();
        let ssh = ssh_list(&self.agent.ssh_socket()).map_err(|e| format!("ssh agent: {e}"))?;
        let start = Instant::now();
        let out = client_cmd(&self.agent, &self.client)
            .args(["get", "soak", "k"])
            .output()
            .unwrap();
        if !out.status.success() || out.stdout != b"v\n" {
            return Err(format!("secrets: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let secrets = start.elapsed();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Ok((ms(approval), ms(ssh), ms(secrets)))
    }

    fn sockets(&self) -> [PathBuf; 3] {
        [
            self.agent.socket.clone(),
            self.agent.ssh_socket(),
            self.agent.home.join("runtime/nod/secrets.sock"),
        ]
    }
}

/// One SSH agent message (`type`, then a string) and the type of its answer.
fn ssh_message(s: &mut UnixStream, kind: u8, text: &[u8]) -> std::io::Result<u8> {
    let mut frame = ((1 + 4 + text.len()) as u32).to_be_bytes().to_vec();
    frame.push(kind);
    frame.extend_from_slice(&(text.len() as u32).to_be_bytes());
    frame.extend_from_slice(text);
    s.write_all(&frame)?;
    let mut header = [0u8; 5];
    s.read_exact(&mut header)?;
    Ok(header[4])
}

/// Wrong unlock passphrases from `clients` connections for `span`: answers per second.
fn unlock_guesses(socket: &Path, clients: usize, span: Duration) -> f64 {
    let mut lock = UnixStream::connect(socket).unwrap();
    // SSH_AGENTC_LOCK = 22; SSH_AGENT_SUCCESS = 6.
    assert_eq!(ssh_message(&mut lock, 22, b"right").unwrap(), 6, "lock");
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let socket = socket.to_owned();
            std::thread::spawn(move || {
                let mut answered = 0u32;
                let Ok(mut s) = UnixStream::connect(&socket) else {
                    return 0;
                };
                s.set_read_timeout(Some(span)).unwrap();
                let guess = format!("wrong-{i}");
                while start.elapsed() < span {
                    // SSH_AGENTC_UNLOCK = 23.
                    match ssh_message(&mut s, 23, guess.as_bytes()) {
                        Ok(_) => answered += 1,
                        Err(_) => break,
                    }
                }
                answered
            })
        })
        .collect();
    let answered: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    answered as f64 / start.elapsed().as_secs_f64()
}

/// `client` with the agent's clean environment (its XDG directories).
fn client_cmd(agent: &Agent, client: &Path) -> Command {
    let template = agent.nod(std::iter::empty::<&str>());
    let mut c = Command::new(client);
    c.env_clear();
    for (k, v) in template.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * 0.99).round() as usize]
}

/// Legitimate rounds while a flood holds (in place for a second); every round must be served.
fn served_during(rig: &Rig, what: &str) -> (f64, f64, f64) {
    std::thread::sleep(Duration::from_secs(1));
    let (mut a, mut s, mut x) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..LEGIT_RUNS {
        match rig.legit() {
            Ok((ap, ss, sx)) => {
                a.push(ap);
                s.push(ss);
                x.push(sx);
            }
            Err(e) => fail(&format!("{what}: legitimate request {i} not served: {e}")),
        }
    }
    (p99(a), p99(s), p99(x))
}

fn fail(why: &str) -> ! {
    eprintln!("SOAK FAILED: {why}");
    std::process::exit(1);
}

fn connect_all(socket: &Path, n: usize, first: &[u8]) -> Vec<UnixStream> {
    (0..n)
        .map(|_| {
            let mut s = UnixStream::connect(socket)
                .unwrap_or_else(|e| fail(&format!("connect {}: {e}", socket.display())));
            if !first.is_empty() {
                let _ = s.write_all(first);
            }
            s
        })
        .collect()
}

/// Waits up to `within` for the agent's RSS to come down to `target_kb`; the last reading.
fn settle(pid: u32, target_kb: u64, within: Duration) -> u64 {
    let start = Instant::now();
    loop {
        let now = rss_kb(pid, "VmRSS:");
        if now <= target_kb || start.elapsed() >= within {
            return now;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn main() {
    if !require(&["prlimit", "ssh-add"]) {
        std::process::exit(1);
    }
    nod_e2e::raise_nofile_limit();
    let peak_limit = env_mb("SOAK_PEAK_MB", 64.0);
    let scratch = Scratch::new("soak");
    let rig = Rig::start(&scratch, None);
    if let Err(e) = rig.legit() {
        fail(&format!("before any flood: {e}"));
    }
    let base = rss_kb(rig.pid, "VmRSS:");
    // Settled: back within 4 MB of where it started, whichever build this is.
    let settled_limit = env_mb("SOAK_SETTLED_MB", mb(base) + 4.0);
    println!("| phase | approval p99 ms | ssh p99 ms | secrets p99 ms | agent RSS MB |");
    println!("|---|---|---|---|---|");
    println!("| idle | | | | {:.1} |", mb(base));

    // 1. A thousand idle connections on each socket.
    let idle: Vec<Vec<UnixStream>> = rig
        .sockets()
        .iter()
        .map(|s| connect_all(s, IDLE_PER_SOCKET, b""))
        .collect();
    let (a, s, x) = served_during(&rig, "1,000 idle connections per socket");
    let held = rss_kb(rig.pid, "VmRSS:");
    println!(
        "| {} idle connections on each socket | {a:.2} | {s:.2} | {x:.2} | {:.1} |",
        IDLE_PER_SOCKET,
        mb(held)
    );
    drop(idle);
    let settled = settle(rig.pid, base + 4 * 1024, Duration::from_secs(60));
    println!("| after they closed | | | | {:.1} |", mb(settled));

    // 2. Stalled maximum-size frames.
    let approval_frame = {
        let mut f = ((1024 * 1024) as u32).to_be_bytes().to_vec();
        f.extend(vec![b'{'; 64 * 1024]);
        f
    };
    let ssh_frame = {
        let mut f = ((256 * 1024) as u32).to_be_bytes().to_vec();
        f.push(17); // SSH_AGENTC_ADD_IDENTITY, never completed
        f.extend(vec![0u8; 64 * 1024]);
        f
    };
    let secrets_line = vec![b'x'; 60 * 1024];
    let [ap, ss, se] = rig.sockets();
    let stalled = [
        connect_all(&ap, STALLED_PER_SOCKET, &approval_frame),
        connect_all(&ss, STALLED_PER_SOCKET, &ssh_frame),
        connect_all(&se, STALLED_PER_SOCKET, &secrets_line),
    ];
    let (a, s, x) = served_during(&rig, "500 stalled frames per socket");
    let hwm = rss_kb(rig.pid, "VmHWM:");
    println!(
        "| {} stalled maximum-size frames on each socket | {a:.2} | {s:.2} | {x:.2} | peak {:.1} |",
        STALLED_PER_SOCKET,
        mb(hwm)
    );
    drop(stalled);
    let settled2 = settle(rig.pid, base + 4 * 1024, Duration::from_secs(60));
    println!("| after they closed | | | | {:.1} |", mb(settled2));
    drop(rig);

    // 3. A low open-files limit, and an SSH flood beyond it.
    let scratch3 = Scratch::new("soak-nofile");
    let rig = Rig::start(&scratch3, Some(1024));
    let flood = connect_all(&rig.agent.ssh_socket(), 1100, b"");
    let (a, s, x) = served_during(
        &rig,
        "1,100 idle SSH connections under a 1,024 open-files limit",
    );
    // A host added now is allowed: the re-read of hosts.toml has descriptors.
    let other_scratch = Scratch::new("soak-other");
    let other = Host::setup(
        &other_scratch,
        "soak-other",
        &rig.agent.public_key_file(),
        &rig.agent.socket.display().to_string(),
    );
    rig.agent.add_host("soak-other", &other.host_pub);
    wait_for(
        "the new host to be allowed",
        Duration::from_secs(10),
        || code(&other.request("root", &[])) == 0,
    );
    println!(
        "| 1,100 idle SSH connections, open-files limit 1,024 (new host allowed) | {a:.2} | {s:.2} | {x:.2} | {:.1} |",
        mb(rss_kb(rig.pid, "VmRSS:"))
    );
    drop(flood);

    // 4. Unlock guessing from many connections at once.
    let rate = unlock_guesses(&rig.agent.ssh_socket(), 64, Duration::from_secs(8));
    println!(
        "| unlock guesses from 64 connections for 8 s | {rate:.2} guesses/s (target ≤ 1) | | | |"
    );
    if rate > 1.0 {
        fail(&format!("{rate:.2} unlock guesses a second"));
    }

    let peak = mb(hwm.max(held));
    if peak > peak_limit {
        fail(&format!("peak RSS {peak:.1} MB is over {peak_limit} MB"));
    }
    let settled = mb(settled.max(settled2));
    if settled > settled_limit {
        fail(&format!(
            "RSS {settled:.1} MB a minute after the floods is over {settled_limit} MB"
        ));
    }
    println!(
        "soak passed: every legitimate request served; peak RSS {peak:.1} MB (limit {peak_limit}), \
         settled {settled:.1} MB (limit {settled_limit:.1})"
    );
}
