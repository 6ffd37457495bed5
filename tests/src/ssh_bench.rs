//! The SSH section of `make bench`: `nod agent`'s SSH agent and OpenSSH's `ssh-agent`, side by
//! side on this machine in one run, with the same keys (added without confirm, i.e. policy
//! `never`), driven by the same small client speaking raw agent frames over the socket.
//!
//! For each key type and 1 or 4 concurrent clients (one connection each, signing back to back
//! for [`RUN`]): signatures per second, and p50/p99 latency of one request → response. Idle
//! RSS is read from `/proc/<pid>/status` after the keys are added and one signature with each,
//! so it counts the signers' set-up and code, and before the timed runs.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::{Agent, Scratch, run_ok, wait_for};

/// How long each measurement signs.
pub const RUN: Duration = Duration::from_secs(2);

const SIGN_REQUEST: u8 = 13;
const SIGN_RESPONSE: u8 = 14;
const REQUEST_IDENTITIES: u8 = 11;
const IDENTITIES_ANSWER: u8 = 12;
const RSA_SHA2_512: u32 = 4;

/// One key type of the comparison.
#[derive(Debug, Clone, Copy)]
struct KeyType {
    label: &'static str,
    keygen: &'static [&'static str],
    flags: u32,
}

const KEY_TYPES: [KeyType; 3] = [
    KeyType {
        label: "Ed25519",
        keygen: &["-t", "ed25519"],
        flags: 0,
    },
    KeyType {
        label: "ECDSA P-256",
        keygen: &["-t", "ecdsa", "-b", "256"],
        flags: 0,
    },
    KeyType {
        label: "RSA-3072",
        keygen: &["-t", "rsa", "-b", "3072"],
        flags: RSA_SHA2_512,
    },
];

fn string(bytes: &[u8]) -> Vec<u8> {
    let mut v = u32::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(bytes);
    v
}

/// A blocking agent client over one connection.
struct Client {
    stream: UnixStream,
    reply: Vec<u8>,
}

impl Client {
    fn connect(socket: &Path) -> Self {
        Self {
            stream: UnixStream::connect(socket).expect("connect to the agent"),
            reply: Vec::with_capacity(1024),
        }
    }

    fn ask(&mut self, frame: &[u8]) -> &[u8] {
        self.stream.write_all(frame).unwrap();
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).unwrap();
        self.reply.resize(u32::from_be_bytes(len) as usize, 0);
        self.stream.read_exact(&mut self.reply).unwrap();
        &self.reply
    }

    /// (key blob, comment) of every identity.
    fn identities(&mut self) -> Vec<(Vec<u8>, String)> {
        let reply = self.ask(&string(&[REQUEST_IDENTITIES])).to_vec();
        assert_eq!(reply[0], IDENTITIES_ANSWER);
        let mut r = &reply[5..];
        let mut take = || {
            let len = u32::from_be_bytes(r[..4].try_into().unwrap()) as usize;
            let v = r[4..4 + len].to_vec();
            r = &r[4 + len..];
            v
        };
        let n = u32::from_be_bytes(reply[1..5].try_into().unwrap());
        (0..n)
            .map(|_| {
                let blob = take();
                let comment = String::from_utf8(take()).unwrap();
                (blob, comment)
            })
            .collect()
    }
}

fn sign_frame(blob: &[u8], flags: u32) -> Vec<u8> {
    // About the size of an SSH user authentication request.
    let data = [0x5a_u8; 160];
    let mut body = vec![SIGN_REQUEST];
    body.extend(string(blob));
    body.extend(string(&data));
    body.extend(flags.to_be_bytes());
    string(&body)
}

/// Signatures per second and per-request latencies of `clients` connections signing back to
/// back for [`RUN`].
fn measure(socket: &Path, blob: &[u8], flags: u32, clients: usize) -> (f64, Vec<Duration>) {
    let frame = sign_frame(blob, flags);
    let start = Instant::now();
    let deadline = start + RUN;
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let socket = socket.to_owned();
            let frame = frame.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket);
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let reply = c.ask(&frame);
                    assert_eq!(reply[0], SIGN_RESPONSE, "signing failed");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    (all.len() as f64 / elapsed, all)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The pid serving `socket`, from the kernel.
fn server_pid(socket: &Path) -> i32 {
    let s = UnixStream::connect(socket).unwrap();
    getsockopt(&s, PeerCredentials).unwrap().pid()
}

/// OpenSSH's agent in the foreground on its own socket; killed on drop.
struct OpensshAgent(Child);

impl Drop for OpensshAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    rate: f64,
    p50: f64,
    p99: f64,
}

/// Runs the SSH section and prints its tables.
pub fn run(scratch: &Scratch) {
    let nod = Agent::start_with(scratch, Some(Path::new("/bin/true")), None);
    let nod_socket = nod.ssh_socket();
    wait_for("nod's SSH agent socket", Duration::from_secs(10), || {
        nod_socket.exists()
    });
    let ossh_socket = scratch.join("openssh-agent.sock");
    let ossh = OpensshAgent(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&ossh_socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ssh-agent"),
    );
    wait_for("ssh-agent's socket", Duration::from_secs(10), || {
        UnixStream::connect(&ossh_socket).is_ok()
    });

    let keys_dir = scratch.dir("ssh-bench-keys", 0o700);
    let mut keys: Vec<(KeyType, PathBuf)> = Vec::new();
    for kt in KEY_TYPES {
        let path = keys_dir.join(kt.label.replace(' ', "-"));
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-N", "", "-C", kt.label, "-f"])
                .arg(&path)
                .args(kt.keygen),
        );
        for socket in [&nod_socket, &ossh_socket] {
            run_ok(
                Command::new("ssh-add")
                    .arg(&path)
                    .env("SSH_AUTH_SOCK", socket)
                    .stderr(Stdio::null()),
            );
        }
        keys.push((kt, path));
    }
    let blobs = Client::connect(&nod_socket).identities();
    let blob_of = |label: &str| {
        blobs
            .iter()
            .find(|(_, c)| c == label)
            .map(|(b, _)| b.clone())
            .expect("key listed")
    };

    let nod_pid = server_pid(&nod_socket);
    let ossh_pid = ossh.0.id() as i32;
    // A first signature with each key on each agent, so one-time set-up is not measured.
    for (kt, _) in &keys {
        for socket in [&nod_socket, &ossh_socket] {
            measure_once(socket, &blob_of(kt.label), kt.flags);
        }
    }
    let (nod_rss, ossh_rss) = (rss_kib(nod_pid), rss_kib(ossh_pid));

    let mut rows = Vec::new();
    for (kt, _) in &keys {
        let blob = blob_of(kt.label);
        for clients in [1, 4] {
            let mut fig = [Figures::default(); 2];
            for (i, socket) in [&nod_socket, &ossh_socket].into_iter().enumerate() {
                let (rate, mut lat) = measure(socket, &blob, kt.flags, clients);
                lat.sort();
                fig[i] = Figures {
                    rate,
                    p50: pct(&lat, 0.5),
                    p99: pct(&lat, 0.99),
                };
            }
            rows.push((kt.label, clients, fig[0], fig[1]));
        }
    }

    println!();
    println!(
        "SSH agent: nod agent vs OpenSSH ssh-agent, same keys (no confirm), {} s per cell, \
         raw agent frames, 160-byte data",
        RUN.as_secs()
    );
    println!();
    println!(
        "| key | clients | nod sign/s | ssh-agent sign/s | ratio nod/ssh-agent | nod p50 ms | \
         nod p99 ms | ssh-agent p50 ms | ssh-agent p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (label, clients, n, o) in &rows {
        println!(
            "| {label} | {clients} | {:.0} | {:.0} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} |",
            n.rate,
            o.rate,
            n.rate / o.rate,
            n.p50,
            n.p99,
            o.p50,
            o.p99
        );
    }
    println!();
    for (label, _, _, _) in rows.iter().filter(|r| r.1 == 1) {
        let get = |c: usize| rows.iter().find(|r| r.0 == *label && r.1 == c).unwrap();
        let (one, four) = (get(1), get(4));
        let target = if *label == "Ed25519" { 10.0 } else { 1.0 };
        println!(
            "{label}: ratio {:.2} (1 client) / {:.2} (4 clients), target ≥ {target}×; \
             nod p99 {:.3} ms with 1 client, {:.3} ms with 4 (ssh-agent {:.3} → {:.3})",
            one.2.rate / one.3.rate,
            four.2.rate / four.3.rate,
            one.2.p99,
            four.2.p99,
            one.3.p99,
            four.3.p99,
        );
    }
    println!(
        "idle RSS with the 3 keys loaded: nod agent {:.1} MB (target ≤ 8 MB; includes the \
         approval service), ssh-agent {:.1} MB",
        nod_rss as f64 / 1024.0,
        ossh_rss as f64 / 1024.0
    );
}

fn measure_once(socket: &Path, blob: &[u8], flags: u32) {
    let mut c = Client::connect(socket);
    assert_eq!(c.ask(&sign_frame(blob, flags))[0], SIGN_RESPONSE);
}
