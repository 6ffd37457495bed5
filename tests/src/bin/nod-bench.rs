//! `make bench`: nod's approval path measured end to end, on this machine, in one run.
//!
//! - Approval round trip: `nod-helper request` exec → signed request → `nod agent` → command
//!   approver `/bin/true` → signed response → verified decision, timed from outside as the
//!   helper's wall-clock run.
//! - The same round trip with the `desktop` approver: a notification on a private session bus,
//!   shown by python3-dbusmock's notification server, which answers every `Notify` with
//!   `ActionInvoked(id, "approve")` at once (`GetCapabilities`, `Notify`, the signal and
//!   `CloseNotification` on the bus per request).
//! - PAM overhead: what `pam_nod.so` adds on top of the helper it runs, i.e.
//!   (pamtester with pam_nod.so − pamtester with only pam_permit.so) − helper alone, from the
//!   medians of interleaved runs. The pam_permit baseline takes pamtester's own start-up and
//!   libpam's stack loading out of the figure.
//!
//! - SSH agent: `nod agent` against OpenSSH's `ssh-agent`, same keys, sign/s and latency with
//!   1 and 4 clients, idle RSS (`nod_e2e::ssh_bench`). `NOD_BENCH_ONLY=ssh` runs only this,
//!   `NOD_BENCH_ONLY=approval` only the approval figures; `NOD_BENCH_RUNS=N` sets the runs.
//!
//! The macos-auth helper cannot run here (its peer is a macOS agent), so its published figure
//! is printed for comparison and labelled as such.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nod_e2e::buses::{NotificationServer, SessionBus, require_session_tools};
use nod_e2e::{Agent, Host, PamService, Scratch, code, require, run};

const RUNS: usize = 300;
const MACOS_AUTH_HELPER_MEDIAN_MS: f64 = 1.95;
const MACOS_AUTH_SHIM_POLL_MS: f64 = 10.0;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

fn summary(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    (
        percentile(&v, 0.5),
        percentile(&v, 0.95),
        percentile(&v, 0.99),
    )
}

fn main() {
    if !require(&["pamtester", "ssh-agent", "ssh-add", "ssh-keygen"]) {
        std::process::exit(1);
    }
    let scratch = Scratch::new("bench");
    let only = std::env::var("NOD_BENCH_ONLY").unwrap_or_default();
    if only == "ssh" {
        nod_e2e::ssh_bench::run(&scratch);
        return;
    }
    if only == "approval" {
        approval(&scratch);
        desktop_approval(&Scratch::new("bench-desktop"));
        return;
    }
    approval(&scratch);
    desktop_approval(&Scratch::new("bench-desktop"));
    nod_e2e::ssh_bench::run(&Scratch::new("bench-ssh"));
}

/// Runs of each measurement; `NOD_BENCH_RUNS` makes a quick smoke run.
fn runs() -> usize {
    std::env::var("NOD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RUNS)
}

/// The approval round trip with the `desktop` approver against the test notification server.
fn desktop_approval(scratch: &Scratch) {
    if !require_session_tools() {
        println!("desktop approver: not measured (needs dbus-daemon and python3-dbusmock)");
        return;
    }
    let bus = SessionBus::start(&scratch.path, None);
    let server = NotificationServer::start(&bus, "body body-markup actions", None);
    server.approve_every_notification();
    let agent = Agent::start_configured(
        scratch,
        "[approver]\nkind = \"desktop\"\n\
         [approval]\nrate_limit_burst = 100000\nrate_limit_per_minute = 1000000\n",
        &[("DBUS_SESSION_BUS_ADDRESS", &bus.address())],
    );
    let host = Host::setup(
        scratch,
        "bench-desktop",
        &agent.public_key_file(),
        &agent.socket.display().to_string(),
    );
    agent.add_host("bench-desktop", &host.host_pub);
    let once = || {
        let start = Instant::now();
        let out = host.request("root", &[]);
        let t = start.elapsed();
        assert_eq!(
            code(&out),
            0,
            "helper did not get an approval through the desktop: {out:?}\n{}",
            agent.log()
        );
        t
    };
    for _ in 0..20 {
        once();
    }
    let runs = runs();
    let times: Vec<Duration> = (0..runs).map(|_| once()).collect();
    let (d50, d95, d99) = summary(times);
    let shown = server.notify_calls().len();
    assert_eq!(shown, runs + 20, "one notification per request");
    println!();
    println!(
        "nod approval benchmark, desktop approver ({runs} runs; notification server: python3-dbusmock)"
    );
    println!();
    println!("| measurement | p50 ms | p95 ms | p99 ms |");
    println!("|---|---|---|---|");
    println!(
        "| helper exec → verified decision (approver desktop, auto-approving notification server) | {d50:.3} | {d95:.3} | {d99:.3} |"
    );
}

fn approval(scratch: &Scratch) {
    let agent = Agent::start_with(
        scratch,
        Some(std::path::Path::new("/bin/true")),
        Some("[approval]\nrate_limit_burst = 100000\nrate_limit_per_minute = 1000000\n"),
    );
    let host = Host::setup(
        scratch,
        "bench-host",
        &agent.public_key_file(),
        &agent.socket.display().to_string(),
    );
    agent.add_host("bench-host", &host.host_pub);
    let module = scratch.install("libpam_nod.so", "pam_nod.so");
    let service = PamService::new(
        "bench",
        &format!(
            "auth [success=done default=die] {} conf={} helper={} timeout_ms=5000\n\
             account required pam_permit.so\n",
            module.display(),
            host.config.display(),
            host.helper.display()
        ),
    );

    let baseline = PamService::new(
        "bench-permit",
        "auth required pam_permit.so\naccount required pam_permit.so\n",
    );
    let no_agent = scratch.file(
        "no-agent.toml",
        0o644,
        &std::fs::read_to_string(&host.config).unwrap().replace(
            &agent.socket.display().to_string(),
            "/run/nod-bench-no-such.sock",
        ),
    );

    let helper_once = || {
        let start = Instant::now();
        let out = host.request("root", &[]);
        let t = start.elapsed();
        assert_eq!(code(&out), 0, "helper did not get an approval: {out:?}");
        t
    };
    let startup_once = || {
        let start = Instant::now();
        let out = run(Command::new(&host.helper)
            .args(["request", "--config"])
            .arg(&no_agent)
            .args(["--user", "root"])
            .env_clear());
        let t = start.elapsed();
        assert_eq!(code(&out), 10, "helper without agent: {out:?}");
        t
    };
    let pam_once = |svc: &str| {
        let start = Instant::now();
        let out = run(Command::new("pamtester")
            .args([svc, "root", "authenticate"])
            .stdin(Stdio::null()));
        let t = start.elapsed();
        assert!(out.status.success(), "pamtester failed: {out:?}");
        t
    };
    // Warm up page cache and the agent.
    for _ in 0..20 {
        helper_once();
        pam_once(&service.name);
        pam_once(&baseline.name);
    }
    let (mut helper, mut pam, mut permit, mut startup) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let runs = runs();
    for _ in 0..runs {
        helper.push(helper_once());
        pam.push(pam_once(&service.name));
        permit.push(pam_once(&baseline.name));
        startup.push(startup_once());
    }
    let (h50, h95, h99) = summary(helper);
    let (p50, p95, p99) = summary(pam);
    let (b50, b95, b99) = summary(permit);
    let (s50, s95, s99) = summary(startup);
    let overhead = (p50 - b50) - h50;

    println!("nod approval benchmark ({runs} runs each, interleaved; release build)");
    println!();
    println!("| measurement | p50 ms | p95 ms | p99 ms |");
    println!("|---|---|---|---|");
    println!(
        "| helper exec → verified decision (approver /bin/true) | {h50:.3} | {h95:.3} | {h99:.3} |"
    );
    println!("| pamtester → pam_nod.so → helper → decision | {p50:.3} | {p95:.3} | {p99:.3} |");
    println!("| pamtester → pam_permit.so (baseline) | {b50:.3} | {b95:.3} | {b99:.3} |");
    println!(
        "| helper exec, config + keys loaded, no agent (exit 10) | {s50:.3} | {s95:.3} | {s99:.3} |"
    );
    println!();
    println!(
        "round trip p50 {h50:.3} ms; target ≤ 2 ms; macos-auth helper median {MACOS_AUTH_HELPER_MEDIAN_MS} ms \
         (published figure, not measured here) → ratio nod/macos-auth {:.2}",
        h50 / MACOS_AUTH_HELPER_MEDIAN_MS
    );
    println!(
        "PAM module overhead ((pamtester nod − pamtester permit) − helper), p50s: {overhead:.3} ms; \
         target ≤ 1 ms; macos-auth's shim polls every {MACOS_AUTH_SHIM_POLL_MS} ms"
    );
    println!(
        "agent side of the round trip ≈ {:.3} ms (round trip − helper start-up), most of it \
         spawning the approver",
        h50 - s50
    );
}
