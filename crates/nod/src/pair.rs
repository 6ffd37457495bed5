//! `nod pair <ssh-destination>`: pair this agent with a Linux host over ssh, in three steps,
//! each skipped when already done:
//! 1. fetch the host's public key and `host_id` (from its `/etc/nod/config.toml`) and allow
//!    the host here (the `nod hosts add` of docs/setup.md step 3);
//! 2. install this agent's public key as `<agents.d>/<name>.pub` on the host, through one
//!    `sudo` (one password prompt; `sudo -n` when there is no terminal);
//! 3. write a marked `RemoteForward` block into `~/.ssh/config`, leaving the rest of the file
//!    byte for byte as it was.
//!
//! What the host sends is trusted as much as the ssh connection to it: the host key fetched
//! here is pinned, so pair over a connection whose ssh host key you have verified.

use std::fs;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use nod_agent::keystore::Keystore;
use nod_agent::pam::hosts::HostsFile;
use nod_agent::paths::Paths;
use nod_proto::keys::format_public_key_file;
use nod_proto::parse_public_key_file;

use crate::remote::{self, HostConfig, hex_lower, shell_quote};

/// What `nod pair` was asked to do.
#[derive(Debug, Clone)]
pub struct PairArgs {
    pub dest: String,
    pub host_id: Option<String>,
    pub remote_uid: Option<u32>,
    /// File name (without `.pub`) of this agent's key on the host.
    pub name: Option<String>,
    /// The host's config file.
    pub host_config: String,
    /// The ssh config to use and to write the block into (default `~/.ssh/config`).
    pub ssh_config: Option<PathBuf>,
    /// Replace the key of a host that is already allowed with another key.
    pub replace_host_key: bool,
}

/// The comment `nod agent-key` puts above the key.
pub const AGENT_KEY_COMMENT: &str = "nod agent key. Install this file on each Linux host as\n\
                                     /etc/nod/agents.d/<name>.pub (owned by root, mode 0644).";

/// Marker lines around the block `nod pair` owns in the ssh config.
fn markers(dest: &str) -> (String, String) {
    (format!("# BEGIN nod {dest}"), format!("# END nod {dest}"))
}

/// The host part of `[user@]host`, which the `Host` line matches.
fn host_pattern(dest: &str) -> Result<String> {
    let host = dest.rsplit_once('@').map_or(dest, |(_, h)| h);
    if host.is_empty()
        || host.starts_with('-')
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:[]%".contains(c))
    {
        bail!("{dest:?} is not an ssh destination of the form [user@]host (or a Host alias)");
    }
    Ok(host.to_owned())
}

/// The ssh config text with the block for `dest` set to `block` (replaced if present, else
/// appended). Everything outside the markers is kept byte for byte.
pub fn with_block(text: &str, dest: &str, block: &str) -> Result<String> {
    let (begin, end) = markers(dest);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let start = lines.iter().position(|l| l.trim_end() == begin);
    match start {
        Some(s) => {
            let e = lines[s..]
                .iter()
                .position(|l| l.trim_end() == end)
                .map(|i| s + i)
                .ok_or_else(|| {
                    anyhow!("{begin:?} has no matching {end:?} line; fix the file by hand")
                })?;
            let mut out: String = lines[..s].concat();
            out.push_str(block);
            out.push_str(&lines[e + 1..].concat());
            Ok(out)
        }
        None => {
            let mut out = text.to_owned();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(block);
            Ok(out)
        }
    }
}

fn forward_block(dest: &str, host: &str, remote_socket: &str, local_socket: &Path) -> String {
    let (begin, end) = markers(dest);
    format!(
        "{begin}\n\
         # Written by `nod pair`; a later `nod pair {dest}` rewrites what is between these lines.\n\
         Host {host}\n\
         \x20   RemoteForward {remote_socket} {}\n\
         \x20   ExitOnForwardFailure yes\n\
         {end}\n",
        local_socket.display()
    )
}

/// Writes `text` to `path` atomically (temp in the same directory, fsync, rename), keeping the
/// file's mode (0600 for a new file). A symlinked config is written through to its target.
fn write_atomic_keep_mode(path: &Path, text: &str) -> Result<()> {
    let path = match fs::canonicalize(path) {
        Ok(real) => real,
        Err(_) => path.to_owned(),
    };
    let dir = path
        .parent()
        .context("the ssh config path has no directory")?;
    let mode = fs::metadata(&path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let tmp = dir.join(format!(
        ".{}.nod-pair.{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("config"),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

fn ssh(args: &PairArgs) -> Command {
    remote::ssh(args.ssh_config.as_deref())
}

/// Runs the POSIX shell `script` on the host without a terminal and returns its stdout.
fn remote_read(args: &PairArgs, script: &str) -> Result<String> {
    remote::read(args.ssh_config.as_deref(), &args.dest, script)
}

/// Splits `key=value` lines followed by a `---` line and a body.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .take_while(|l| *l != "---")
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn body(text: &str) -> &str {
    text.split_once("\n---\n").map_or("", |(_, b)| b)
}

/// The default name of this agent's key file on the host: `<user>@<hostname>`.
fn default_name() -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| "nod".to_owned(), |u| u.name);
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "workstation".into());
    let name = format!("{user}@{host}");
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._@-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An absolute path made of characters that mean nothing to a shell or to ssh_config.
fn plain_path(p: &str) -> bool {
    p.starts_with('/')
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-@+".contains(c))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
}

/// Runs `nod pair`; prints each step's outcome.
pub fn run(paths: &Paths, args: &PairArgs) -> Result<()> {
    let host_pattern = host_pattern(&args.dest)?;
    let name = args.name.clone().unwrap_or_else(default_name);
    if !valid_name(&name) {
        bail!("--name {name:?} is invalid: use up to 64 characters from A-Z a-z 0-9 . _ @ -");
    }
    let key = Keystore::open(paths).agent_key()?;
    let agent_pub = format_public_key_file(&key.public_key(), key.key_id(), AGENT_KEY_COMMENT);
    let local_socket = paths.approval_socket()?;
    let mut changed = 0;

    // 1. What the host is: its uid for us, and its config.
    let info = remote_read(
        args,
        &format!(
            "printf 'uid=%s\\nuser=%s\\n---\\n' \"$(id -u)\" \"$(id -un)\" && cat -- {}",
            shell_quote(&args.host_config)
        ),
    )
    .with_context(|| format!("cannot read {} on {}", args.host_config, args.dest))?;
    let config: HostConfig = toml::from_str(body(&info)).map_err(|e| {
        anyhow!(
            "{}:{} is not a nod host config: {e}; install the nod-helper package and write it as \
             docs/setup.md step 6 describes",
            args.dest,
            args.host_config
        )
    })?;
    if let Some(id) = &args.host_id
        && *id != config.host_id
    {
        bail!(
            "--host-id {id} does not match host_id = {:?} in {}:{}; the agent must know the host \
             by the id it claims",
            config.host_id,
            args.dest,
            args.host_config
        );
    }
    let remote_user = field(&info, "user").context("the host did not say who we are")?;
    let remote_uid = match args.remote_uid {
        Some(uid) => uid,
        None => field(&info, "uid")
            .and_then(|u| u.parse().ok())
            .context("the host did not say our uid")?,
    };
    let remote_socket = config
        .socket_path
        .replace("{uid}", &remote_uid.to_string())
        .replace("{user}", remote_user);
    let host_pub_path = config.public_key_path();
    let agents_dir = config.agent_pubkey_file.trim_end_matches('/').to_owned();
    let agent_file = format!("{agents_dir}/{name}.pub");
    // Both paths end up in a shell command or the ssh config, where spaces, quotes and `%`
    // tokens would change their meaning.
    for p in [&remote_socket, &agents_dir] {
        if !plain_path(p) {
            bail!(
                "{p:?} from the host's config is not an absolute path of plain characters \
                 (A-Z a-z 0-9 / . _ - @ +)"
            );
        }
    }
    if !plain_path(&local_socket.to_string_lossy()) {
        bail!(
            "the agent's socket path {} has characters an ssh config cannot carry as is; \
             set XDG_RUNTIME_DIR to a plain path",
            local_socket.display()
        );
    }

    // 2. The host's public key, and what is pinned there under our name today.
    let keys = remote_read(
        args,
        &format!(
            "if [ -d {dir} ]; then echo agents_dir=yes; else echo agents_dir=no; fi; \
             echo ---; cat -- {pubf} && echo --- && cat -- {af} 2>/dev/null; true",
            dir = shell_quote(&agents_dir),
            pubf = shell_quote(&host_pub_path),
            af = shell_quote(&agent_file)
        ),
    )?;
    if field(&keys, "agents_dir") != Some("yes") {
        bail!(
            "agent_pubkey_file = {agents_dir:?} on {} is not a directory; pairing installs one \
             file per agent, so set agent_pubkey_file = \"/etc/nod/agents.d\" and create that \
             directory (root, 0755)",
            args.dest
        );
    }
    let rest = body(&keys);
    let (host_pub, installed) = match rest.split_once("\n---\n") {
        Some((h, a)) => (h.to_owned(), Some(a.to_owned())),
        None => (rest.to_owned(), None),
    };
    if host_pub.trim().is_empty() {
        bail!(
            "cannot read {host_pub_path} on {}: create the host key with \
             `sudo nod-helper gen-key` (docs/setup.md step 5)",
            args.dest
        );
    }

    // Step 1: allow the host here.
    let parsed = parse_public_key_file(&host_pub)
        .map_err(|e| anyhow!("{}:{host_pub_path}: {e}", args.dest))?;
    let key_id = config.pinned_key_id(&parsed);
    let pins = key_id
        .as_ref()
        .map_or_else(|| "any key id".to_owned(), |id| format!("key id {id}"));
    let hosts_path = paths.hosts_file();
    let mut hosts = HostsFile::load(&hosts_path)?;
    let key_hex = hex_lower(parsed.key.as_bytes());
    let same = hosts
        .entries()
        .any(|e| e.id == config.host_id && e.public_key_hex == key_hex && e.key_id == key_id);
    if same {
        println!(
            "unchanged: host {} is already allowed with this key",
            config.host_id
        );
    } else {
        let pinned = hosts.entries().find(|e| e.id == config.host_id);
        if let Some(old) = pinned
            && old.public_key_hex != key_hex
            && !args.replace_host_key
        {
            bail!(
                "host {} is already allowed with another key ({}); {}:{host_pub_path} now \
                 holds another. A host key that changes is what an impostor would look \
                 like: find out why (was it regenerated with `nod-helper gen-key --force`?), \
                 then run again with --replace-host-key. Nothing was changed.",
                config.host_id,
                old.pins(),
                args.dest
            );
        }
        let replaced = pinned.is_some();
        hosts.add(
            &config.host_id,
            &host_pub,
            Path::new(&host_pub_path),
            key_id.as_deref(),
        )?;
        hosts.save(&hosts_path)?;
        changed += 1;
        println!(
            "{} host {} ({pins}) in {}",
            if replaced {
                "replaced the key of"
            } else {
                "allowed"
            },
            config.host_id,
            hosts_path.display()
        );
    }

    // Step 2: pin this agent on the host.
    if installed.as_deref() == Some(agent_pub.as_str()) {
        println!(
            "unchanged: {}:{agent_file} already pins this agent",
            args.dest
        );
    } else {
        install_agent_key(args, &agents_dir, &name, &agent_pub)?;
        changed += 1;
        println!("installed this agent's key as {}:{agent_file}", args.dest);
    }

    // Step 3: the RemoteForward block.
    let ssh_config = match &args.ssh_config {
        Some(p) => p.clone(),
        None => home_ssh_config()?,
    };
    let text = match fs::read_to_string(&ssh_config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", ssh_config.display())),
    };
    let block = forward_block(&args.dest, &host_pattern, &remote_socket, &local_socket);
    let new_text = with_block(&text, &args.dest, &block)?;
    if new_text == text {
        println!(
            "unchanged: {} already has the RemoteForward block",
            ssh_config.display()
        );
    } else {
        if let Some(dir) = ssh_config.parent()
            && !dir.exists()
        {
            fs::create_dir_all(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        write_atomic_keep_mode(&ssh_config, &new_text)?;
        changed += 1;
        println!(
            "wrote the RemoteForward block for {host_pattern} into {} ({remote_socket} -> {})",
            ssh_config.display(),
            local_socket.display()
        );
    }

    if changed == 0 {
        println!("nothing changed: {} is already paired", args.dest);
    } else {
        println!(
            "paired {}: log in with `ssh {}` while the agent runs; `nod doctor --host {}` checks both sides",
            args.dest, args.dest, args.dest
        );
    }
    Ok(())
}

fn home_ssh_config() -> Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|h| h.is_absolute())
        .context("HOME is not set; pass --ssh-config")?;
    Ok(home.join(".ssh/config"))
}

/// One `sudo` on the host doing every privileged step: write the key to a temp file in the
/// directory, root-owned 0644, and rename it into place.
fn install_agent_key(args: &PairArgs, dir: &str, name: &str, text: &str) -> Result<()> {
    let script = format!(
        "set -e; umask 022; d={d}; t=\"$d/.{name}.pub.nod-pair.$$\"; \
         printf '%s' {content} > \"$t\"; chown root:root \"$t\"; chmod 0644 \"$t\"; \
         mv -f \"$t\" \"$d/{name}.pub\"",
        d = shell_quote(dir),
        content = shell_quote(text),
    );
    let interactive = std::io::stdin().is_terminal();
    let mut cmd = ssh(args);
    let remote = if interactive {
        cmd.arg("-t");
        format!(
            "sudo -p {} sh -c {}",
            shell_quote("nod pair: [sudo] password for %u on %H to install the agent key: "),
            shell_quote(&script)
        )
    } else {
        cmd.args(["-o", "BatchMode=yes"]);
        format!("sudo -n sh -c {}", shell_quote(&script))
    };
    let status = cmd
        .args(["--", &args.dest, &remote])
        .status()
        .context("cannot run ssh")?;
    if !status.success() {
        bail!(
            "installing the agent key on {} through sudo failed ({status}); without a terminal \
             pair uses `sudo -n`, so run it from a terminal to type the password, or install \
             the `nod agent-key` output as {dir}/{name}.pub (root, 0644) by hand",
            args.dest
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_is_appended_and_rest_kept_byte_identical() {
        let text = "Host a\n  User x\n# trailing, no newline";
        let block = "# BEGIN nod h\nHost h\n# END nod h\n";
        let out = with_block(text, "h", block).unwrap();
        assert!(out.starts_with(text));
        assert!(out.ends_with(block));
        assert_eq!(with_block(&out, "h", block).unwrap(), out);
    }

    #[test]
    fn block_is_replaced_in_place() {
        let text = "Host a\n# BEGIN nod h\nold\n# END nod h\nHost b\n";
        let out = with_block(text, "h", "# BEGIN nod h\nnew\n# END nod h\n").unwrap();
        assert_eq!(out, "Host a\n# BEGIN nod h\nnew\n# END nod h\nHost b\n");
    }

    #[test]
    fn unterminated_block_is_an_error() {
        assert!(with_block("# BEGIN nod h\nx\n", "h", "b").is_err());
    }

    #[test]
    fn destination_host_pattern() {
        assert_eq!(host_pattern("alice@web-1").unwrap(), "web-1");
        assert_eq!(
            host_pattern("web-1.example.com").unwrap(),
            "web-1.example.com"
        );
        assert!(host_pattern("-oProxyCommand=x").is_err());
        assert!(host_pattern("a b").is_err());
    }

    #[test]
    fn only_plain_absolute_paths_pass() {
        assert!(plain_path("/run/user/1000/nod-agent.sock"));
        assert!(!plain_path("run/x"));
        assert!(!plain_path("/run/a b"));
        assert!(!plain_path("/run/%u"));
        assert!(!plain_path("/run/\"x"));
    }
}
