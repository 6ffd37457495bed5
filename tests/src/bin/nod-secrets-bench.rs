//! `make bench`, secrets part: the broker's warm verified read (file backend) through
//! `nod-client`, with 1 and 8 concurrent clients, and the first request from a fresh 100 MB
//! binary (cold hash). This benchmark binary registers itself with the agent it starts.
//!
//! Secret Service backend and baseline: when `dbus-run-session`, `gnome-keyring-daemon` and
//! `secret-tool` exist, this binary runs itself again inside a private D-Bus session with an
//! unlocked gnome-keyring, and measures nod's warm read through that backend and
//! `secret-tool lookup` (what a user would script today) in the same run. Otherwise those
//! lines say why they were not measured.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nod_client::Client;
use nod_client::proto::SecretValue;
use nod_e2e::{Agent, Scratch, run_ok, which};

const READS: usize = 5000;
const KEYRING_READS: usize = 300;
const CHILD_VAR: &str = "NOD_BENCH_KEYRING_CHILD";
const COLD_MB: usize = 100;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e6
}

/// One client's sequential reads on one connection: latencies.
fn reads(socket: &Path, n: usize) -> Vec<Duration> {
    let mut c = Client::connect(socket).expect("connect");
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let value = c.get("bench", "key").expect("read");
        v.push(start.elapsed());
        assert_eq!(value.expose(), "value");
    }
    v
}

fn measure(socket: &Path, clients: usize, n: usize) -> (f64, f64, f64) {
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let s = socket.to_owned();
            std::thread::spawn(move || reads(&s, n))
        })
        .collect();
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    let wall = start.elapsed().as_secs_f64();
    all.sort();
    (
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.len() as f64 / wall,
    )
}

fn wait_for_socket(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Client::connect(socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "no secrets socket at {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    // `cargo run` sets LD_LIBRARY_PATH, and the broker refuses a caller started with it (it
    // can load other code into the process): start again without it.
    if std::env::var_os("LD_LIBRARY_PATH").is_some() {
        use std::os::unix::process::CommandExt as _;
        let e = Command::new(std::env::current_exe().expect("own path"))
            .args(std::env::args_os().skip(1))
            .env_remove("LD_LIBRARY_PATH")
            .exec();
        panic!("cannot run again without LD_LIBRARY_PATH: {e}");
    }
    if std::env::var_os(CHILD_VAR).is_some() {
        keyring_child();
        return;
    }
    // `--once SOCKET`: one timed read, for the cold-hash measurement (run as a fresh binary).
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "--once" {
        let start = Instant::now();
        let mut c = Client::connect(std::path::Path::new(&args[2])).expect("connect");
        let _ = c.get("bench", "key");
        println!("{}", start.elapsed().as_secs_f64() * 1000.0);
        return;
    }
    let scratch = Scratch::new("secrets-bench");
    let agent = Agent::start_with(&scratch, None, Some("[secrets]\nbackend = \"file\"\n"));
    let socket = agent.home.join("runtime/nod/secrets.sock");
    wait_for_socket(&socket);
    let me = std::env::current_exe().expect("own path");
    run_ok(
        agent
            .nod(["register"])
            .arg(&me)
            .args(["--read", "bench", "--write", "bench"]),
    );
    Client::connect(&socket)
        .expect("connect")
        .put("bench", vec![("key".into(), SecretValue::new("value"))])
        .expect("put");
    let _ = reads(&socket, 200); // warm up

    let (p50_1, p99_1, rps_1) = measure(&socket, 1, READS);
    let (p50_8, p99_8, rps_8) = measure(&socket, 8, READS);

    // Cold hash: a fresh 100 MB binary (this one, padded), so nothing is cached for it.
    let big = scratch.join("big-client");
    let mut bytes = std::fs::read(&me).expect("read own binary");
    bytes.resize(COLD_MB * 1024 * 1024, 0);
    std::fs::write(&big, &bytes).expect("write big binary");
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&big)
        .arg("--once")
        .arg(&socket)
        .stderr(Stdio::inherit())
        .output()
        .expect("run big client");
    let cold_ms: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(f64::NAN);

    println!(
        "nod secrets broker benchmark (file backend; release build; {READS} reads per client)"
    );
    println!();
    println!("| measurement | p50 µs | p99 µs | req/s |");
    println!("|---|---|---|---|");
    println!("| warm verified read, 1 client | {p50_1:.0} | {p99_1:.0} | {rps_1:.0} |");
    println!("| warm verified read, 8 clients | {p50_8:.0} | {p99_8:.0} | {rps_8:.0} |");
    println!();
    println!(
        "targets: p50 ≤ 200 µs ({}); ≥ 10,000 req/s with 8 clients ({})",
        if p50_1 <= 200.0 { "met" } else { "NOT met" },
        if rps_8 >= 10_000.0 { "met" } else { "NOT met" }
    );
    println!(
        "first request from a fresh {COLD_MB} MB binary (cold hash): {cold_ms:.1} ms; target ≤ 150 ms ({})",
        if cold_ms <= 150.0 { "met" } else { "NOT met" }
    );
    drop(agent);
    keyring_rows(&scratch);
}

/// Runs this binary again inside `dbus-run-session` with an unlocked gnome-keyring.
fn keyring_rows(scratch: &Scratch) {
    let missing: Vec<&str> = ["dbus-run-session", "gnome-keyring-daemon", "secret-tool"]
        .into_iter()
        .filter(|t| which(t).is_none())
        .collect();
    if !missing.is_empty() {
        println!(
            "Secret Service backend and `secret-tool lookup` baseline: not measured ({} missing)",
            missing.join(", ")
        );
        return;
    }
    let home = scratch.join("keyring-home");
    std::fs::create_dir_all(&home).unwrap();
    let me = std::env::current_exe().expect("own path");
    let status = Command::new(which("dbus-run-session").unwrap())
        .args([
            "--",
            "sh",
            "-c",
            "echo bench | gnome-keyring-daemon --unlock --components=secrets >/dev/null && exec \"$0\"",
        ])
        .arg(&me)
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env(CHILD_VAR, "1")
        .status()
        .expect("dbus-run-session");
    if !status.success() {
        println!("Secret Service rows: the keyring run failed ({status})");
    }
}

/// Inside the private session: nod through the Secret Service, and `secret-tool lookup`.
fn keyring_child() {
    let scratch = Scratch::new("secrets-bench-keyring");
    let agent = Agent::start_with(
        &scratch,
        None,
        Some("[secrets]\nbackend = \"secret-service\"\n"),
    );
    let socket = agent.home.join("runtime/nod/secrets.sock");
    wait_for_socket(&socket);
    let me = std::env::current_exe().expect("own path");
    run_ok(
        agent
            .nod(["register"])
            .arg(&me)
            .args(["--read", "bench", "--write", "bench"]),
    );
    Client::connect(&socket)
        .expect("connect")
        .put("bench", vec![("key".into(), SecretValue::new("value"))])
        .expect("put into the keyring");
    let _ = reads(&socket, 20);
    let (p50_1, p99_1, rps_1) = measure(&socket, 1, KEYRING_READS);
    let (p50_8, p99_8, rps_8) = measure(&socket, 8, KEYRING_READS / 4);
    println!();
    println!("| Secret Service (gnome-keyring) | p50 µs | p99 µs | req/s |");
    println!("|---|---|---|---|");
    println!("| nod warm verified read, 1 client | {p50_1:.0} | {p99_1:.0} | {rps_1:.0} |");
    println!("| nod warm verified read, 8 clients | {p50_8:.0} | {p99_8:.0} | {rps_8:.0} |");

    let tool = which("secret-tool").expect("secret-tool");
    let mut store = Command::new(&tool)
        .args(["store", "--label", "nod-bench", "service", "nod-bench"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("secret-tool store");
    std::io::Write::write_all(store.stdin.as_mut().unwrap(), b"value").unwrap();
    drop(store.stdin.take());
    store.wait().unwrap();
    let once = || {
        let start = Instant::now();
        let out = Command::new(&tool)
            .args(["lookup", "service", "nod-bench"])
            .output()
            .expect("secret-tool lookup");
        assert_eq!(out.stdout, b"value", "secret-tool lookup found the value");
        start.elapsed()
    };
    let mut v: Vec<Duration> = (0..100).map(|_| once()).collect();
    v.sort();
    println!(
        "| baseline `secret-tool lookup` (process start + D-Bus) | {:.0} | {:.0} | — |",
        percentile(&v, 0.5),
        percentile(&v, 0.99)
    );
    drop(agent);
}
