//! The decision core end to end, with the real programs: prompts of all three services on one
//! approver are shown one at a time; refusals before a prompt are in the audit log; two agents
//! of one user keep one valid audit chain; an approver that cannot show a dialog never denies;
//! a host or a key that needs verified presence is not approved by a program.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nod_e2e::{Agent, Host, Scratch, code, require, run, run_ok, wait_for};

const APPROVED: i32 = 0;
const UNAVAILABLE: i32 = 10;
const FAILED: i32 = 12;

/// An OpenSSH tool that talks to the agent at `socket` only.
fn ssh_tool(program: &str, socket: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("SSH_AUTH_SOCK", socket)
        .stdin(Stdio::null());
    cmd
}

/// A new Ed25519 key pair in `dir`; returns the private key's path.
fn keygen(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key),
    );
    key
}

/// `ssh-add [flags] key`, then removes the private key file, so a signature can only come from
/// the agent.
fn add_to_agent(socket: &Path, key: &Path, flags: &[&str]) {
    run_ok(ssh_tool("ssh-add", socket).args(flags).arg(key));
    fs::remove_file(key).unwrap();
}

/// `ssh-keygen -Y sign` of a small file with the agent's key for `key.pub`.
fn sign_file(socket: &Path, key: &Path, data: &Path) -> Output {
    let _ = fs::remove_file(data.with_extension("txt.sig"));
    run(ssh_tool("ssh-keygen", socket)
        .args(["-Y", "sign", "-n", "file", "-f"])
        .arg(key.with_extension("pub"))
        .arg(data))
}

/// A command approver that approves after a pause, noting each prompt's kind and whether
/// another prompt was open at the same time.
fn overlap_detector(dir: &Path) -> PathBuf {
    let script = dir.join("approver.sh");
    let d = dir.display();
    fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat > /dev/null\n\
             if ! mkdir {d}/open 2>/dev/null; then echo overlap >> {d}/overlaps; fi\n\
             echo \"$NOD_PROMPT_KIND\" >> {d}/kinds\n\
             sleep 0.3\nrmdir {d}/open 2>/dev/null\nexit 0\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
fn prompts_of_pam_ssh_and_secrets_on_one_approver_are_shown_one_at_a_time() {
    if !require(&["ssh-add", "ssh-keygen"]) {
        return;
    }
    let scratch = Scratch::new("one-at-a-time");
    let dir = scratch.dir("d", 0o755);
    let approver = overlap_detector(&dir);
    let agent = Agent::start_with(&scratch, Some(&approver), None);
    let host = Host::setup(
        &scratch,
        "turn-host",
        &agent.public_key_file(),
        &agent.socket.display().to_string(),
    );
    agent.add_host("turn-host", &host.host_pub);
    let socket = agent.wait_for_ssh_socket();
    let key = keygen(&dir, "confirm-key");
    add_to_agent(&socket, &key, &["-c"]);
    let data = dir.join("data.txt");
    fs::write(&data, "to be signed\n").unwrap();
    let tool = scratch.join("some-tool");
    fs::copy("/bin/true", &tool).unwrap();

    std::thread::scope(|s| {
        let pam: Vec<_> = (0..2)
            // Time enough to wait behind the other prompts on a loaded machine.
            .map(|_| s.spawn(|| code(&host.request("root", &["--timeout-ms", "30000"]))))
            .collect();
        let ssh: Vec<_> = (0..2)
            .map(|i| {
                let (socket, key) = (&socket, &key);
                let data = dir.join(format!("data-{i}.txt"));
                fs::write(&data, format!("to be signed {i}\n")).unwrap();
                s.spawn(move || sign_file(socket, key, &data))
            })
            .collect();
        let secrets = s.spawn(|| run(agent.nod(["register"]).arg(&tool).args(["--read", "x"])));
        for p in pam {
            assert_eq!(p.join().unwrap(), APPROVED);
        }
        for o in ssh {
            let o = o.join().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let o = secrets.join().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    });
    let kinds = fs::read_to_string(dir.join("kinds")).unwrap();
    for kind in ["pam", "ssh-sign", "secrets-register"] {
        assert!(kinds.lines().any(|k| k == kind), "{kind} in {kinds}");
    }
    assert!(
        !dir.join("overlaps").exists(),
        "two prompts were open at once:\n{kinds}"
    );
    let verify = run_ok(&mut agent.nod(["audit", "verify"]));
    assert!(verify.starts_with("ok:"), "{verify}");
}

#[test]
fn ssh_refusals_before_any_prompt_are_in_the_audit_log() {
    if !require(&["ssh-add", "ssh-keygen"]) {
        return;
    }
    let scratch = Scratch::new("ssh-refusals");
    let dir = scratch.dir("d", 0o755);
    // No approver configured, no terminal, no display: nobody can be asked.
    let agent = Agent::start_configured(&scratch, "", &[]);
    assert!(
        agent.log().contains("no approver can reach you"),
        "{}",
        agent.log()
    );
    let socket = agent.wait_for_ssh_socket();
    let confirm = keygen(&dir, "confirm-key");
    add_to_agent(&socket, &confirm, &["-c"]);
    let bound = keygen(&dir, "bound-key");
    let host_key = keygen(&dir, "host-key");
    let host_pub = fs::read_to_string(host_key.with_extension("pub")).unwrap();
    let known_hosts = dir.join("known_hosts");
    fs::write(&known_hosts, format!("somehost.example {host_pub}")).unwrap();
    let known_hosts = known_hosts.to_str().unwrap();
    add_to_agent(
        &socket,
        &bound,
        &["-H", known_hosts, "-h", "somehost.example"],
    );
    let data = dir.join("data.txt");
    fs::write(&data, "x\n").unwrap();
    assert!(!sign_file(&socket, &confirm, &data).status.success());
    assert!(!sign_file(&socket, &bound, &data).status.success());
    let audit = agent.audit();
    let ssh: Vec<_> = audit.iter().filter(|l| l["service"] == "ssh").collect();
    assert!(
        ssh.iter()
            .any(|l| l["decision"] == "unavailable" && l["reason"] == "no_approver"),
        "{ssh:?}"
    );
    assert!(
        ssh.iter()
            .any(|l| l["decision"] == "refused" && l["reason"] == "destination_not_permitted"),
        "{ssh:?}"
    );
    let status = run_ok(&mut agent.nod(["status"]));
    assert!(status.contains("approvers: NONE"), "{status}");
    let doctor = run(&mut agent.nod(["doctor"]));
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(!doctor.status.success(), "{text}");
    assert!(
        text.contains("FAIL  approvers: the agent has none"),
        "{text}"
    );
}

/// `nod ssh-agent -D -a <socket>` with `approver` (a command), the same XDG dirs as `agent`.
fn drop_in_agent(agent: &Agent, socket: &Path, approver: &Path) -> Child {
    agent
        .nod(["ssh-agent", "-D", "-a"])
        .arg(socket)
        .arg("--approver-command")
        .arg(approver)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn two_agents_of_one_user_keep_one_valid_audit_chain() {
    if !require(&["ssh-add", "ssh-keygen"]) {
        return;
    }
    let scratch = Scratch::new("two-agents");
    let dir = scratch.dir("d", 0o755);
    let agent = Agent::start(&scratch);
    let main_socket = agent.wait_for_ssh_socket();
    let drop_in_socket = dir.join("drop-in.sock");
    let approver = dir.join("yes.sh");
    fs::write(&approver, "#!/bin/sh\ncat > /dev/null\nexit 0\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&approver, fs::Permissions::from_mode(0o755)).unwrap();
    let mut drop_in = drop_in_agent(&agent, &drop_in_socket, &approver);
    wait_for("the drop-in's socket", Duration::from_secs(10), || {
        drop_in_socket.exists()
    });
    let a = keygen(&dir, "a");
    add_to_agent(&main_socket, &a, &["-c"]);
    let b = keygen(&dir, "b");
    add_to_agent(&drop_in_socket, &b, &["-c"]);
    std::thread::scope(|s| {
        for (socket, key) in [(&main_socket, &a), (&drop_in_socket, &b)] {
            let name = key.file_name().unwrap().to_string_lossy().into_owned();
            let data = dir.join(format!("{name}.txt"));
            s.spawn(move || {
                for i in 0..4 {
                    let data = data.with_extension(format!("{i}.txt"));
                    fs::write(&data, "x\n").unwrap();
                    let o = sign_file(socket, key, &data);
                    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                }
            });
        }
    });
    let _ = drop_in.kill();
    let _ = drop_in.wait();
    let verify = run(&mut agent.nod(["audit", "verify"]));
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{text}");
    let signed = agent
        .audit()
        .iter()
        .filter(|l| l["action"] == "sign" && l["decision"] == "approved")
        .count();
    assert_eq!(signed, 8);
}

#[test]
fn an_askpass_that_cannot_reach_a_display_falls_back_and_never_denies() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new("askpass-headless");
    scratch.dir("d", 0o755);
    // What a GTK dialog does when DISPLAY names no server: an error on stderr, exit 1.
    let askpass = scratch.file(
        "d/askpass",
        0o755,
        "#!/bin/sh\necho 'cannot open display: :77' >&2\nexit 1\n",
    );
    let toml = "[approver]\nkind = \"askpass\"\n";
    let env = [
        ("SSH_ASKPASS", askpass.to_str().unwrap()),
        ("DISPLAY", ":77"),
    ];
    let agent = Agent::start_configured(&scratch, toml, &env);
    let host = Host::setup(
        &scratch,
        "askpass-host",
        &agent.public_key_file(),
        &agent.socket.display().to_string(),
    );
    agent.add_host("askpass-host", &host.host_pub);
    assert_eq!(code(&host.request("root", &[])), FAILED);
    drop(agent);

    // The packaged unit when the session did not import DISPLAY: the dialog is not even tried.
    let scratch = Scratch::new("askpass-nodisplay");
    let env = [("SSH_ASKPASS", askpass.to_str().unwrap())];
    let agent = Agent::start_configured(&scratch, toml, &env);
    let host = Host::setup(
        &scratch,
        "askpass-host",
        &agent.public_key_file(),
        &agent.socket.display().to_string(),
    );
    agent.add_host("askpass-host", &host.host_pub);
    assert_eq!(code(&host.request("root", &[])), UNAVAILABLE);
    let last = agent.audit().pop().unwrap();
    assert_eq!(last["decision"], "unavailable", "{last}");
}

#[test]
fn a_host_that_needs_verified_presence_is_not_approved_by_a_click() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new("host-presence");
    // The scripted approver approves; it is a program, so it is not a verified presence.
    let agent = Agent::start(&scratch);
    let strict = Host::setup(
        &scratch,
        "strict-host",
        &agent.public_key_file(),
        &agent.socket.display().to_string(),
    );
    run_ok(
        agent
            .nod(["hosts", "add", "strict-host"])
            .arg(&strict.host_pub)
            .args(["--presence", "verified"]),
    );
    assert_eq!(code(&strict.request("root", &[])), UNAVAILABLE);
    let last = agent.audit().pop().unwrap();
    assert_eq!(last["decision"], "unavailable", "{last}");
    assert_eq!(last["reason"], "presence_unavailable", "{last}");

    // Re-added without --presence, the host follows agent.toml (any) and is approved.
    agent.add_host("strict-host", &strict.host_pub);
    assert_eq!(code(&strict.request("root", &[])), APPROVED);
}

#[test]
fn a_key_that_needs_verified_presence_is_not_approved_by_a_program() {
    if !require(&["ssh-keygen"]) {
        return;
    }
    let scratch = Scratch::new("key-presence");
    // The scripted approver approves; it is a program, so it is not a verified presence.
    let agent = Agent::start(&scratch);
    let socket = agent.wait_for_ssh_socket();
    let dir = scratch.dir("d", 0o755);
    let public = run_ok(&mut agent.nod([
        "keys",
        "generate",
        "--name",
        "strict",
        "--presence",
        "verified",
    ]));
    let key = dir.join("strict");
    fs::write(key.with_extension("pub"), public).unwrap();
    let list = run_ok(&mut agent.nod(["keys", "list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("strict\t") && l.ends_with("\talways\tverified")),
        "{list}"
    );
    let data = dir.join("data.txt");
    fs::write(&data, "to be signed\n").unwrap();

    let out = sign_file(&socket, &key, &data);
    assert!(!out.status.success(), "signed without verified presence");
    assert!(agent.prompts().is_empty(), "{:?}", agent.prompts());
    let last = agent.audit().pop().unwrap();
    assert_eq!(last["service"], "ssh", "{last}");
    assert_eq!(last["action"], "sign", "{last}");
    assert_eq!(last["key_comment"], "strict", "{last}");
    assert_eq!(last["decision"], "unavailable", "{last}");
    assert_eq!(last["reason"], "presence_unavailable", "{last}");

    // The same key asking any presence is signed with after the approver says yes; the
    // running agent takes the change without a restart.
    run_ok(&mut agent.nod(["keys", "policy", "strict", "--presence", "any"]));
    let out = sign_file(&socket, &key, &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(data.with_extension("txt.sig").exists());
    assert_eq!(agent.prompts().len(), 1, "{:?}", agent.prompts());
    let last = agent.audit().pop().unwrap();
    assert_eq!(last["key_comment"], "strict", "{last}");
    assert_eq!(last["decision"], "approved", "{last}");
    assert_eq!(last["presence"], "program", "{last}");
}
