//! `nod status`: what the running agent says of itself — its approvers and how strongly each
//! proves presence, its sockets, the prompts open now and the last decisions.

use anyhow::{Context, Result};
use nod_agent::audit::rfc3339;
use nod_agent::paths::Paths;
use nod_client::Client;
use nod_client::proto::Control;
use serde_json::Value;

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Prints the agent's status; `json` prints it as the agent sent it. Fails when no agent
/// answers, with where it looked and how to start one.
pub fn run(paths: &Paths, json: bool) -> Result<()> {
    let socket = paths.secrets_socket()?;
    let mut client = Client::connect(&socket).with_context(|| {
        format!(
            "no nod agent answers on {}; start it with `systemctl --user start nod-agent` or \
             `nod agent`",
            socket.display()
        )
    })?;
    let resp = client.control(Control::Status)?;
    let status = resp
        .agent
        .context("the agent sent no status; is it an older nod? restart it")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("agent: running, pid {}", status["pid"]);
    let approvers: Vec<String> = status["approvers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| format!("{} ({})", text(&x["name"]), text(&x["presence"])))
                .collect()
        })
        .unwrap_or_default();
    if approvers.is_empty() {
        println!(
            "approvers: NONE — nobody can be asked, so every request is answered unavailable; \
             run `nod doctor` for the fix"
        );
    } else {
        println!("approvers: {}", approvers.join(", then "));
    }
    if let Some(how) = status["approvers_chosen_by"].as_str() {
        println!(
            "approvers chosen by: {}",
            nod_agent::approvers::display_safe(how)
        );
    }
    if let Some(sockets) = status["sockets"].as_object() {
        for (name, path) in sockets {
            println!("socket {name}: {}", text(path));
        }
    }
    println!("secrets backend: {}", text(&status["secrets_backend"]));
    let open = status["open"].as_array().cloned().unwrap_or_default();
    if open.is_empty() {
        println!("open prompts: none");
    } else {
        println!("open prompts:");
        for o in open {
            println!(
                "  {} {} ({}), since {}: {}",
                text(&o["service"]),
                text(&o["kind"]),
                text(&o["state"]),
                rfc3339(o["since_ms"].as_u64().unwrap_or(0)),
                text(&o["summary"])
            );
        }
    }
    let recent = status["recent"].as_array().cloned().unwrap_or_default();
    if recent.is_empty() {
        println!("recent decisions: none since the agent started");
    } else {
        println!("recent decisions (newest last):");
        for r in recent {
            let mut how = text(&r["decision"]).to_owned();
            if let Some(p) = r["presence"].as_str() {
                how.push_str(&format!(" by {p}"));
            }
            if let Some(why) = r["reason"].as_str() {
                how.push_str(&format!(", {why}"));
            }
            println!(
                "  {} {} {how}: {}",
                rfc3339(r["time_ms"].as_u64().unwrap_or(0)),
                text(&r["service"]),
                text(&r["summary"])
            );
        }
    }
    Ok(())
}
