//! `nod-helper check-config`: load everything `request` would load and list every problem.

use std::io::Write;
use std::path::Path;

use nod_proto::keys::openssh_public_line;

use crate::config::{Config, PamUser, REPLAY_CACHE_IGNORED, own_key_pinned};
use crate::error::{EXIT_CONFIG, HelperError, one_line};
use crate::socket::check_socket;

/// Writes the report to `out` and returns the exit code: 0 when fine, 31 otherwise.
pub fn run(config_path: &Path, user: Option<&str>, out: &mut dyn Write) -> u8 {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let config = Config::load(config_path, &mut problems);
    let user = match user {
        Some(name) => PamUser::lookup(name),
        None => PamUser::current(),
    };
    let user = user.map_err(|e| problems.push(e)).ok();
    problems.extend(config.as_ref().and_then(own_key_pinned));

    if let (Some(config), Some(user)) = (&config, &user) {
        let socket = config.socket_path(user);
        match check_socket(&socket, user) {
            Ok(()) => notes.push(format!(
                "agent socket for {}: {} is present and owned by them",
                user.name,
                socket.display()
            )),
            // No forward right now is normal between sessions, not a config problem.
            Err(e @ HelperError::NoSocket { .. }) => notes.push(format!("note: {e}")),
            Err(e) => problems.push(e),
        }
    }

    let mut lines: Vec<String> = problems
        .iter()
        .map(|p| format!("problem: {}", one_line(&p.to_string())))
        .collect();
    if let Some(c) = &config {
        lines.push(format!("config: {}", c.path.display()));
        lines.push(format!("host_id: {}  hostname: {}", c.host_id, c.hostname));
        lines.push(format!("host key id: {}", c.key_id));
        lines.push(format!(
            "host public key: {}",
            openssh_public_line(&c.host_key.verifying_key(), "")
        ));
        for key in &c.agent_keys {
            lines.push(format!("pinned agent key: {}", key.describe()));
        }
        if let Some(dir) = &c.ignored_replay_cache_dir {
            notes.push(format!(
                "note: replay_cache_dir = {:?} is accepted and ignored: {REPLAY_CACHE_IGNORED}",
                dir.display().to_string()
            ));
        }
    }
    lines.extend(notes.iter().map(|n| one_line(n)));
    let ok = problems.is_empty();
    lines.push(if ok {
        "ok: no problems found".to_owned()
    } else {
        format!("{} problem(s) found", problems.len())
    });
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    if ok { 0 } else { EXIT_CONFIG }
}
