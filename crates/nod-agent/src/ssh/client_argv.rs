//! What an `ssh` client's command line says about where it connects, for naming the
//! destination of a signature in a prompt. Only hints: a name is shown once a `known_hosts`
//! entry with the verified host key confirms it.

use std::fs;

/// ssh's options that take an argument (`ssh(1)` SYNOPSIS).
const SSH_OPTS_WITH_ARG: &str = "BbcDEeFIiJLlmOoPpQRSWw";

/// The names an `ssh` command line connects to, for matching hashed `known_hosts` entries:
/// the destination's host, and `[host]:port` when a port other than 22 is given. Names from
/// the command line are only hints: a name is shown only once a `known_hosts` entry with the
/// verified host key confirms it.
pub fn ssh_destination_candidates(argv: &[String]) -> Vec<String> {
    let mut port: Option<String> = None;
    let mut dest: Option<&str> = None;
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        if dest.is_some() {
            break;
        }
        let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            dest = Some(arg);
            continue;
        };
        if flags == "-" {
            dest = args.next().map(String::as_str);
            continue;
        }
        for (i, c) in flags.char_indices() {
            if SSH_OPTS_WITH_ARG.contains(c) {
                let rest = &flags[i + c.len_utf8()..];
                let value = if rest.is_empty() {
                    args.next().map(String::as_str)
                } else {
                    Some(rest)
                };
                match (c, value) {
                    ('p', Some(v)) => port = Some(v.to_owned()),
                    ('o', Some(v)) => {
                        if let Some((k, val)) = v.split_once(['=', ' '])
                            && k.eq_ignore_ascii_case("port")
                        {
                            port = Some(val.trim().to_owned());
                        }
                    }
                    _ => {}
                }
                break;
            }
        }
    }
    let Some(dest) = dest else {
        return Vec::new();
    };
    let mut host = dest;
    if let Some(rest) = host.strip_prefix("ssh://") {
        host = rest.split('/').next().unwrap_or(rest);
        host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        if let Some((h, p)) = host.rsplit_once(':').filter(|(h, _)| !h.ends_with(']'))
            && !h.contains(':')
        {
            port = Some(p.to_owned());
            host = h;
        }
    } else {
        host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Vec::new();
    }
    let mut out = vec![host.to_owned()];
    if let Some(p) = port.filter(|p| p != "22") {
        out.insert(0, format!("[{host}]:{p}"));
    }
    out
}

/// Longest `ssh -G` output read, in bytes.
const MAX_SSH_CONFIG: u64 = 64 * 1024;

/// How long `ssh -G` may take.
const SSH_CONFIG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The names the caller's `ssh` resolves its destination to through `ssh_config` (`Host`
/// aliases, `HostName`, `Port`, `HostKeyAlias`): what `ssh -G` with the caller's own arguments
/// prints. These are the names ssh itself looks up in `known_hosts`, which the command line
/// alone does not give when it names an alias.
///
/// Only a root-owned `ssh` that only root can write is run (the caller's own binary, from
/// `/proc/<pid>/exe`), without a shell, with stdin closed and a 2 s limit; `ssh -G` connects
/// nowhere, but it does run `Match exec` commands of the user's config, as the login did.
pub async fn ssh_config_candidates(exe: Option<&str>, argv: &[String]) -> Vec<String> {
    use std::os::unix::fs::MetadataExt as _;
    use tokio::io::AsyncReadExt as _;
    let Some(exe) = exe.filter(|e| e.rsplit('/').next() == Some("ssh")) else {
        return Vec::new();
    };
    let trusted = fs::metadata(exe).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0);
    if !trusted || argv.len() < 2 {
        return Vec::new();
    }
    let child = tokio::process::Command::new(exe)
        .arg("-G")
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else {
        return Vec::new();
    };
    let Some(stdout) = child.stdout.take() else {
        return Vec::new();
    };
    let mut text = String::new();
    let mut stdout = stdout.take(MAX_SSH_CONFIG);
    let read = stdout.read_to_string(&mut text);
    if !matches!(
        tokio::time::timeout(SSH_CONFIG_TIMEOUT, read).await,
        Ok(Ok(_))
    ) {
        return Vec::new();
    }
    let _ = tokio::time::timeout(SSH_CONFIG_TIMEOUT, child.wait()).await;
    resolved_names(&text)
}

/// From `ssh -G` output: the name ssh checks in `known_hosts` (`hostkeyalias`, else
/// `hostname`), as `[name]:port` when the port is not 22, and bare.
fn resolved_names(config: &str) -> Vec<String> {
    let value = |key: &str| {
        config.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().to_owned())
        })
    };
    let Some(name) = value("hostkeyalias").or_else(|| value("hostname")) else {
        return Vec::new();
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Vec::new();
    }
    let mut out = Vec::new();
    if let Some(port) = value("port").filter(|p| p != "22") {
        out.push(format!("[{name}]:{port}"));
    }
    out.push(name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn names_from_ssh_config_output() {
        let g = "user me\nhostname 10.0.0.5\nport 2222\nidentityfile ~/.ssh/id\n";
        assert_eq!(resolved_names(g), ["[10.0.0.5]:2222", "10.0.0.5"]);
        let g = "hostname 10.0.0.5\nport 22\nhostkeyalias prod.example\n";
        assert_eq!(resolved_names(g), ["prod.example"]);
        assert!(resolved_names("port 22\n").is_empty());
    }

    #[tokio::test]
    async fn only_a_root_owned_ssh_is_asked() {
        let argv = vec!["ssh".to_owned(), "host".to_owned()];
        assert!(
            ssh_config_candidates(Some("/bin/sh"), &argv)
                .await
                .is_empty()
        );
        assert!(ssh_config_candidates(None, &argv).await.is_empty());
        let fake = std::env::temp_dir().join(format!("nod-fake-{}/ssh", std::process::id()));
        fs::create_dir_all(fake.parent().unwrap()).unwrap();
        fs::write(&fake, "#!/bin/sh\necho hostname evil\n").unwrap();
        // Runnable, but group-writable (and, unless the tests run as root, not root's).
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o775)).unwrap();
        let fake_str = fake.to_str().unwrap();
        assert!(
            ssh_config_candidates(Some(fake_str), &argv)
                .await
                .is_empty()
        );
        fs::remove_dir_all(fake.parent().unwrap()).unwrap();
    }

    #[test]
    fn finds_ssh_destination_and_port() {
        assert_eq!(
            ssh_destination_candidates(&argv("ssh -p 2222 -o BatchMode=yes me@host.example cmd")),
            ["[host.example]:2222", "host.example"]
        );
        assert_eq!(
            ssh_destination_candidates(&argv("ssh -oPort=2200 -i key -v host")),
            ["[host]:2200", "host"]
        );
        assert_eq!(
            ssh_destination_candidates(&argv(
                "/usr/bin/ssh -o SendEnv=GIT_PROTOCOL git@github.com git-upload-pack 'x'"
            )),
            ["github.com"]
        );
        assert_eq!(
            ssh_destination_candidates(&argv("ssh ssh://u@h.example:2022/")),
            ["[h.example]:2022", "h.example"]
        );
        assert_eq!(
            ssh_destination_candidates(&argv("ssh -p")),
            Vec::<String>::new()
        );
        assert_eq!(ssh_destination_candidates(&[]), Vec::<String>::new());
    }
}
