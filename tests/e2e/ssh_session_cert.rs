//! A session certificate from `nod ssh session` logs in to a real sshd that trusts nod's user
//! CA (`TrustedUserCAKeys`), with one approval for the certificate and none for the logins,
//! and stops working once it expires.
//!
//! Needs root (a login user and sshd) and the OpenSSH tools; skipped without them, except
//! under `CI=true`, where it fails.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nod_e2e::{Agent, Scratch, TestUser, require, run_ok, spawn_sshd};

fn out(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// sshd on a free loopback port that trusts `ca_line` for user certificates and has no
/// authorized_keys at all, so only a certificate can log in.
struct CertSshd {
    child: std::process::Child,
    port: u16,
}

impl CertSshd {
    fn start(scratch: &Scratch, user: &TestUser, ca_line: &str) -> Self {
        let dir = scratch.dir("sshd-cert", 0o755);
        let ca = dir.join("trusted_user_ca.pub");
        fs::write(&ca, ca_line).unwrap();
        fs::set_permissions(&ca, fs::Permissions::from_mode(0o644)).unwrap();
        let (child, port) = spawn_sshd(
            &dir,
            user,
            &format!(
                "AuthorizedKeysFile none\nTrustedUserCAKeys {}\n",
                ca.display()
            ),
            "",
        );
        Self { child, port }
    }

    /// `ssh user@127.0.0.1 echo …` with only the nod agent's identities.
    fn login(&self, user: &TestUser, agent: &Agent) -> Output {
        Command::new("ssh")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &agent.home)
            .env("SSH_AUTH_SOCK", agent.ssh_socket())
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
                "IdentityFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-p",
            ])
            .arg(self.port.to_string())
            .arg(format!("{}@127.0.0.1", user.name))
            .arg("echo cert-login-ok")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for CertSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn session_certificate_logs_in_to_sshd_with_trusted_user_ca_keys_until_it_expires() {
    if !require(&[
        "sshd",
        "ssh",
        "ssh-keygen",
        "ssh-add",
        "useradd",
        "chpasswd",
    ]) {
        return;
    }
    let scratch = Scratch::new("cert");
    let user = TestUser::ensure("nod-e2e-cert", "Unused-pw-4711");
    let agent = Agent::start(&scratch);
    let ca_line = run_ok(&mut agent.nod(["keys", "ca", "init"]));
    let sshd = CertSshd::start(&scratch, &user, &ca_line);

    // No certificate yet: no identity the server accepts.
    let o = sshd.login(&user, &agent);
    assert!(!o.status.success(), "{}", out(&o));

    let started = Instant::now();
    run_ok(&mut agent.nod([
        "ssh",
        "session",
        "--principals",
        &user.name,
        "--validity",
        "8s",
    ]));
    assert_eq!(agent.prompts().len(), 1);
    assert_eq!(agent.prompts()[0]["kind"], "ssh-session-cert");

    for _ in 0..2 {
        let o = sshd.login(&user, &agent);
        assert!(o.status.success(), "{}", out(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("cert-login-ok"));
    }
    assert_eq!(agent.prompts().len(), 1, "the logins asked nothing");

    std::thread::sleep(Duration::from_secs(9).saturating_sub(started.elapsed()));
    let o = sshd.login(&user, &agent);
    assert!(
        !o.status.success(),
        "expired certificate still logs in: {}",
        out(&o)
    );
    assert_eq!(agent.prompts().len(), 1);
}
