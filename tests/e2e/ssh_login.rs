//! SSH login to a loopback `sshd` with a key held by `nod agent`'s SSH agent, added with
//! `ssh-add -c`: the approver is asked with the destination (matched in `known_hosts`, plain
//! and hashed entries), the purpose and the process chain; a denial makes `ssh` print "agent
//! refused operation". Also: destination constraints (`ssh-add -h`), and a host that presents
//! a host certificate (`HostCertificate`), trusted through `@cert-authority`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nod_e2e::{Agent, Answer, Scratch, Sshd, TestUser, require, run, run_ok, spawn_sshd, wait_for};

const PASSWORD: &str = "nod-e2e-password";

/// What every test here needs (skipped without, failed under `CI=true`).
const LOGIN_TOOLS: [&str; 6] = [
    "sshd",
    "ssh",
    "ssh-add",
    "ssh-keygen",
    "useradd",
    "chpasswd",
];

/// `sshd`'s host key line, trimmed, and a known_hosts file (`known_hosts_ssh` in the scratch
/// dir) that pins it for `[127.0.0.1]:<port>`.
fn host_key_and_known_hosts(scratch: &Scratch, sshd: &Sshd) -> (String, PathBuf) {
    let host_pub = fs::read_to_string(scratch.join("sshd/ssh_host_ed25519_key.pub")).unwrap();
    let host_pub = host_pub.trim().to_owned();
    let ssh_known = scratch.file(
        "known_hosts_ssh",
        0o600,
        &format!("[127.0.0.1]:{} {host_pub}\n", sshd.port),
    );
    (host_pub, ssh_known)
}

fn ssh(agent_socket: &Path, known_hosts: &Path, port: u16, user: &TestUser) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-o"])
        .arg(format!("IdentityAgent={}", agent_socket.display()))
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
        ])
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "LogLevel=ERROR", "-p"])
        .arg(port.to_string())
        .arg(format!("{}@127.0.0.1", user.name))
        .arg("echo nod-login-ok");
    cmd
}

#[test]
fn ssh_login_asks_with_destination_purpose_and_chain_and_denial_refuses() {
    if !require(&LOGIN_TOOLS) {
        return;
    }
    let user = TestUser::ensure("nodtest", PASSWORD);
    let scratch = Scratch::new("sshlogin");
    let agent = Agent::start(&scratch);
    let sshd = Sshd::start(&scratch, &user);
    let socket = agent.wait_for_ssh_socket();
    run_ok(
        Command::new("ssh-add")
            .arg("-c")
            .arg(&sshd.client_key)
            .env("SSH_AUTH_SOCK", &socket),
    );

    // known_hosts of the agent's user: a plain name, and a hashed entry for the address ssh
    // connects to (which ssh itself needs, StrictHostKeyChecking=yes).
    let host_pub = fs::read_to_string(scratch.join("sshd/ssh_host_ed25519_key.pub")).unwrap();
    let host_pub = host_pub.trim();
    let ssh_dir = agent.home.join(".ssh");
    fs::create_dir_all(&ssh_dir).unwrap();
    fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700)).unwrap();
    let to_hash = ssh_dir.join("to_hash");
    fs::write(&to_hash, format!("[127.0.0.1]:{} {host_pub}\n", sshd.port)).unwrap();
    run_ok(
        Command::new("ssh-keygen")
            .arg("-q")
            .arg("-H")
            .arg("-f")
            .arg(&to_hash),
    );
    let hashed = fs::read_to_string(&to_hash).unwrap();
    assert!(hashed.starts_with("|1|"), "{hashed}");
    let known_hosts = ssh_dir.join("known_hosts");
    fs::write(&known_hosts, format!("nod-plain.test {host_pub}\n{hashed}")).unwrap();

    agent.answer(Answer::Approve);
    let out = run(&mut ssh(&socket, &known_hosts, sshd.port, &user));
    assert!(
        out.status.success(),
        "approved login failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nod-login-ok");
    let prompts = agent.prompts();
    let p = prompts.last().expect("the approver was asked");
    assert_eq!(p["kind"], "ssh-sign", "{p}");
    assert_eq!(p["purpose"], format!("ssh login as {}", user.name), "{p}");
    assert_eq!(p["forwarded"], false, "{p}");
    let names: Vec<&str> = p["destination"]["names"]
        .as_array()
        .unwrap_or_else(|| panic!("no destination: {p}"))
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert!(names.contains(&"nod-plain.test"), "{p}");
    assert!(
        names.contains(&format!("[127.0.0.1]:{}", sshd.port).as_str()),
        "hashed entry matched: {p}"
    );
    let host_fp = run_ok(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(scratch.join("sshd/ssh_host_ed25519_key.pub")),
    );
    assert_eq!(
        Some(p["destination"]["host_key_fingerprint"].as_str().unwrap()),
        host_fp.split_whitespace().nth(1),
        "{p}"
    );
    assert_eq!(p["process_chain"][0]["comm"], "ssh", "{p}");
    assert!(
        p["process_chain"][0]["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("/ssh")),
        "{p}"
    );

    // Through an ssh_config alias, the command line names only "nod-alias": the hashed entry
    // is found through what `ssh -G` resolves the alias to.
    let config = scratch.file(
        "ssh_config_alias",
        0o600,
        &format!(
            "Host nod-alias\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  \
             IdentityAgent {}\n  BatchMode yes\n  StrictHostKeyChecking yes\n  \
             UserKnownHostsFile {}\n  LogLevel ERROR\n",
            sshd.port,
            user.name,
            socket.display(),
            known_hosts.display()
        ),
    );
    let out = run(Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args(["nod-alias", "echo nod-login-ok"]));
    assert!(
        out.status.success(),
        "alias login failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prompts = agent.prompts();
    let p = prompts.last().expect("the approver was asked");
    let names = p["destination"]["names"].as_array().unwrap();
    assert!(
        names.contains(&serde_json::json!(format!("[127.0.0.1]:{}", sshd.port))),
        "hashed entry matched through the alias: {p}"
    );

    agent.answer(Answer::Deny);
    let before = agent.prompts().len();
    let out = run(&mut ssh(&socket, &known_hosts, sshd.port, &user));
    assert!(!out.status.success(), "denied login succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("agent refused operation"), "{stderr}");
    assert!(agent.prompts().len() > before, "the approver was asked");
}

#[test]
fn drop_in_agent_after_eval_serves_an_ssh_login_and_stops_with_k() {
    if !require(&LOGIN_TOOLS) {
        return;
    }
    let user = TestUser::ensure("nodtest", PASSWORD);
    let scratch = Scratch::new("sshdropin");
    let sshd = Sshd::start(&scratch, &user);
    let home = scratch.dir("home", 0o700);
    let tmp = scratch.dir("tmp", 0o700);
    // A copy of the authorized key that only the agent will hold once added.
    let key = home.join("id_login");
    fs::copy(&sshd.client_key, &key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let script = format!(
        "set -e\n\
         eval \"$({nod} ssh-agent -s)\"\n\
         ssh-add {key} 2>/dev/null\n\
         rm {key}\n\
         ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -p {port} {user}@127.0.0.1 \
         echo nod-drop-in-ok\n\
         eval \"$({nod} ssh-agent -k)\" >/dev/null\n\
         echo \"agent=${{SSH_AGENT_PID:-gone}}\"\n",
        nod = nod_e2e::artifact("nod").display(),
        key = key.display(),
        port = sshd.port,
        user = user.name,
    );
    let out = run(Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_AGENT_PID"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("nod-drop-in-ok"), "{stdout}");
    assert!(stdout.contains("agent=gone"), "{stdout}");
    wait_for(
        "the agent's socket directory to go",
        Duration::from_secs(5),
        || fs::read_dir(&tmp).unwrap().next().is_none(),
    );
}

/// `ssh-add -h 127.0.0.1` with the host key from a known_hosts file (`-H`): the key logs in to
/// that sshd; with a user restriction, only as that user; with another host key for the same
/// name, it is hidden from the bound connection and the login fails.
#[test]
fn destination_constrained_key_logs_in_only_where_permitted() {
    if !require(&LOGIN_TOOLS) {
        return;
    }
    let user = TestUser::ensure("nodtest", PASSWORD);
    let scratch = Scratch::new("sshdest");
    let agent = Agent::start(&scratch);
    let sshd = Sshd::start(&scratch, &user);
    let socket = agent.wait_for_ssh_socket();
    // What ssh checks the server against, and what ssh-add -h looks the name up in (by name
    // only, without the port).
    let (host_pub, ssh_known) = host_key_and_known_hosts(&scratch, &sshd);
    let right = scratch.file(
        "known_hosts_right",
        0o600,
        &format!("127.0.0.1 {host_pub}\n"),
    );
    let other_key = scratch.join("other_host_key");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&other_key),
    );
    let other_pub = fs::read_to_string(other_key.with_extension("pub")).unwrap();
    let wrong = scratch.file(
        "known_hosts_wrong",
        0o600,
        &format!("127.0.0.1 {}\n", other_pub.trim()),
    );
    let add = |known: &Path, destination: &str| {
        run_ok(
            Command::new("ssh-add")
                .arg("-D")
                .env("SSH_AUTH_SOCK", &socket),
        );
        run_ok(
            Command::new("ssh-add")
                .arg("-H")
                .arg(known)
                .arg("-h")
                .arg(destination)
                .arg(&sshd.client_key)
                .env("SSH_AUTH_SOCK", &socket),
        );
    };

    add(&right, "127.0.0.1");
    let out = run(&mut ssh(&socket, &ssh_known, sshd.port, &user));
    assert!(
        out.status.success(),
        "login to the permitted host failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nod-login-ok");

    add(&right, &format!("{}@127.0.0.1", user.name));
    let out = run(&mut ssh(&socket, &ssh_known, sshd.port, &user));
    assert!(
        out.status.success(),
        "login as the permitted user failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    add(&right, "someone-else@127.0.0.1");
    let out = run(&mut ssh(&socket, &ssh_known, sshd.port, &user));
    assert!(!out.status.success(), "login as another user succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("agent refused operation"), "{stderr}");

    add(&wrong, "127.0.0.1");
    // Unbound (local) listing still shows it, as OpenSSH's agent does.
    let listed = run_ok(
        Command::new("ssh-add")
            .arg("-l")
            .env("SSH_AUTH_SOCK", &socket),
    );
    assert!(listed.contains("ED25519"), "{listed}");
    let out = run(&mut ssh(&socket, &ssh_known, sshd.port, &user));
    assert!(
        !out.status.success(),
        "login to a host the key is not constrained to succeeded"
    );
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "nod-login-ok");
}

/// Agent forwarding through a permitted hop: `-h 127.0.0.1 -h '127.0.0.1>127.0.0.1'` lets the
/// key log in to the sshd, and from there (through the forwarded agent) to the same sshd again;
/// with only the first hop permitted, the second login fails.
#[test]
fn destination_constrained_key_follows_permitted_forwarding_hops() {
    if !require(&LOGIN_TOOLS) {
        return;
    }
    let user = TestUser::ensure("nodtest", PASSWORD);
    let scratch = Scratch::new("sshdestfwd");
    let agent = Agent::start(&scratch);
    let sshd = Sshd::start(&scratch, &user);
    let socket = agent.wait_for_ssh_socket();
    let (host_pub, ssh_known) = host_key_and_known_hosts(&scratch, &sshd);
    let for_add = scratch.file("known_hosts_add", 0o600, &format!("127.0.0.1 {host_pub}\n"));
    let add = |hops: &[&str]| {
        run_ok(
            Command::new("ssh-add")
                .arg("-D")
                .env("SSH_AUTH_SOCK", &socket),
        );
        let mut cmd = Command::new("ssh-add");
        cmd.arg("-H").arg(&for_add);
        for hop in hops {
            cmd.arg("-h").arg(hop);
        }
        run_ok(cmd.arg(&sshd.client_key).env("SSH_AUTH_SOCK", &socket));
    };
    let inner = format!(
        "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -p {} {}@127.0.0.1 echo nod-hop-ok",
        sshd.port, user.name
    );
    let forwarded = || {
        let base = ssh(&socket, &ssh_known, sshd.port, &user);
        // Replace the remote command: the last argument of `ssh`.
        let args: Vec<_> = base.get_args().map(|a| a.to_owned()).collect();
        let mut cmd = Command::new("ssh");
        cmd.arg("-A").args(&args[..args.len() - 1]).arg(&inner);
        run(&mut cmd)
    };

    add(&["127.0.0.1", "127.0.0.1>127.0.0.1"]);
    let out = forwarded();
    assert!(
        out.status.success(),
        "login through the permitted hop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nod-hop-ok");

    add(&["127.0.0.1"]);
    let out = forwarded();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("nod-hop-ok"),
        "login through a hop that is not permitted succeeded"
    );
}

/// A host that presents a host certificate (`HostCertificate`, signed by `ssh-keygen -s -h`
/// without `-V`, so valid forever), which the client trusts only through `@cert-authority`:
/// ssh binds the agent connection with the certificate (`session-bind@openssh.com`), and the
/// login through nod works, asks with the certified key's fingerprint, and works for a key
/// constrained (`ssh-add -h`) to that host through its CA; a constraint to another name under
/// the same CA does not let the key in (the certificate's principal is checked).
#[test]
fn ssh_login_to_a_host_with_a_host_certificate() {
    if !require(&LOGIN_TOOLS) {
        return;
    }
    let user = TestUser::ensure("nodtest", PASSWORD);
    let scratch = Scratch::new("sshcert");
    let agent = Agent::start(&scratch);
    let socket = agent.wait_for_ssh_socket();

    let dir = scratch.dir("sshd", 0o755);
    let keygen = |path: &Path| {
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(path),
        );
    };
    let host_ca = dir.join("host_ca");
    keygen(&host_ca);
    let host_key = dir.join("ssh_host_ed25519_key");
    keygen(&host_key);
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&host_ca)
            .args(["-h", "-I", "nod-cert-host", "-n", "nod-cert.test"])
            .arg(host_key.with_extension("pub")),
    );
    let host_cert = dir.join("ssh_host_ed25519_key-cert.pub");
    let shown = run_ok(Command::new("ssh-keygen").arg("-Lf").arg(&host_cert));
    assert!(shown.contains("Valid: forever"), "{shown}");
    let client_key = dir.join("client_ed25519");
    keygen(&client_key);
    let authorized = dir.join("authorized_keys");
    fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
    fs::set_permissions(&authorized, fs::Permissions::from_mode(0o644)).unwrap();
    let (mut sshd, port) = spawn_sshd(
        &dir,
        &user,
        &format!("AuthorizedKeysFile {}\n", authorized.display()),
        &format!("HostCertificate {}\n", host_cert.display()),
    );

    let ca_pub = fs::read_to_string(host_ca.with_extension("pub")).unwrap();
    let known = |name: &str| {
        scratch.file(
            &format!("known_hosts_{name}"),
            0o600,
            &format!("@cert-authority {name} {}", ca_pub.trim()),
        )
    };
    let known_cert_host = known("nod-cert.test");
    let login = || {
        run(Command::new("ssh")
            .args(["-F", "/dev/null", "-o"])
            .arg(format!("IdentityAgent={}", socket.display()))
            .args(["-o", "IdentitiesOnly=no", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", known_cert_host.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "HostKeyAlias=nod-cert.test"])
            .args(["-o", "HostKeyAlgorithms=ssh-ed25519-cert-v01@openssh.com"])
            .args(["-o", "LogLevel=ERROR", "-p"])
            .arg(port.to_string())
            .arg(format!("{}@127.0.0.1", user.name))
            .arg("echo nod-login-ok"))
    };
    let ssh_add = |args: &[&str]| {
        run_ok(
            Command::new("ssh-add")
                .args(args)
                .arg(&client_key)
                .env("SSH_AUTH_SOCK", &socket),
        )
    };

    ssh_add(&["-c"]);
    agent.answer(Answer::Approve);
    let out = login();
    assert!(
        out.status.success(),
        "login to the certified host failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nod-login-ok");
    let prompts = agent.prompts();
    let p = prompts.last().expect("the approver was asked");
    let host_fp = run_ok(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(host_key.with_extension("pub")),
    );
    assert_eq!(
        Some(p["destination"]["host_key_fingerprint"].as_str().unwrap()),
        host_fp.split_whitespace().nth(1),
        "bound to the certified key: {p}"
    );

    // Destination-constrained to nod-cert.test, whose key comes from the @cert-authority line.
    let reset = || {
        run_ok(
            Command::new("ssh-add")
                .arg("-D")
                .env("SSH_AUTH_SOCK", &socket),
        )
    };
    reset();
    ssh_add(&[
        "-H",
        known_cert_host.to_str().unwrap(),
        "-h",
        "nod-cert.test",
    ]);
    let out = login();
    assert!(
        out.status.success(),
        "constrained login through the host CA failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same CA, another host name: the certificate does not name it.
    reset();
    let known_other = known("other.test");
    ssh_add(&["-H", known_other.to_str().unwrap(), "-h", "other.test"]);
    let out = login();
    assert!(
        !out.status.success(),
        "a key constrained to other.test logged in to nod-cert.test"
    );

    let _ = sshd.kill();
    let _ = sshd.wait();
}
