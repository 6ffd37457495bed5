//! nod-agent.toml(5) held to `AgentConfig`: every table, key and value the agent reads is
//! documented, every documented key is read, the defaults and limits are the code's, and every
//! example loads.

use nod_agent::approvers::{ApproverChoice, Environment, SessionAddress, select};
use nod_agent::config::{
    AgentConfig, ApprovalConfig, ApproverConfig, ApproverKind, KindSetting, KindWord,
    PresenceConfig, Required, SecretsBackend, SecretsConfig, SshConfig,
};
use nod_man::check;

const PAGE: &str = include_str!("../man/nod-agent.toml.5.in");

/// Each table of agent.toml and the keys serde reads in it.
fn tables() -> Vec<(&'static str, &'static [&'static str])> {
    check::fields::<AgentConfig>()
        .unwrap()
        .iter()
        .map(|&table| {
            let keys = match table {
                "approver" => check::fields::<ApproverConfig>(),
                "presence" => check::fields::<PresenceConfig>(),
                "approval" => check::fields::<ApprovalConfig>(),
                "secrets" => check::fields::<SecretsConfig>(),
                "ssh" => check::fields::<SshConfig>(),
                other => panic!(
                    "agent.toml has a table [{other}]: document it in nod-agent.toml(5) and add it here"
                ),
            };
            (table, keys.unwrap())
        })
        .collect()
}

/// The entries of `[table]` in KEYS: key name → its text (tag and body).
fn entries(table: &str) -> Vec<(String, String)> {
    let keys = check::section(PAGE, "KEYS").unwrap();
    let text = check::subsection(keys, &format!("[{table}]"))
        .unwrap_or_else(|| panic!("KEYS has no [{table}]"));
    check::tagged(text)
        .into_iter()
        .map(|(tag, body)| {
            let key = tag.split(' ').next().unwrap_or_default().to_owned();
            (key, format!("{tag} {body}"))
        })
        .collect()
}

fn entry(table: &str, key: &str) -> String {
    entries(table)
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no entry for [{table}] {key}"))
        .1
}

#[test]
fn every_table_and_key_is_documented_and_every_documented_key_is_read() {
    let keys = check::section(PAGE, "KEYS").unwrap();
    let documented: Vec<String> = keys
        .lines()
        .filter(|l| l.starts_with(".SS"))
        .map(check::plain)
        .collect();
    let mut read: Vec<String> = tables().iter().map(|(t, _)| format!("[{t}]")).collect();
    let mut sorted = documented.clone();
    sorted.sort();
    read.sort();
    assert_eq!(sorted, read, "the tables");
    for (table, keys) in tables() {
        let documented: Vec<String> = entries(table).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            documented, keys,
            "the keys of [{table}], in the order serde reads them"
        );
    }
}

#[test]
fn every_value_of_each_key_is_documented() {
    let kind = entry("approver", "kind");
    for value in
        std::iter::once("auto").chain(check::fields::<ApproverKind>().unwrap().iter().copied())
    {
        assert!(
            kind.contains(value),
            "[approver] kind: {value} is not documented"
        );
    }
    for key in check::fields::<PresenceConfig>().unwrap() {
        let text = entry("presence", key);
        for value in check::fields::<Required>().unwrap() {
            assert!(
                text.contains(&format!("\"{value}\"")),
                "[presence] {key}: {value}"
            );
        }
    }
    let backend = entry("secrets", "backend");
    for value in check::fields::<SecretsBackend>().unwrap() {
        assert!(
            backend.contains(&format!("\"{value}\"")),
            "[secrets] backend: {value}"
        );
    }
}

/// The example that sets every key to its default.
fn defaults_example() -> String {
    let examples = check::section(PAGE, "EXAMPLES").unwrap();
    let intro = examples
        .find("Every key at its default")
        .expect("the defaults example");
    check::examples(&examples[intro..])
        .into_iter()
        .next()
        .unwrap()
        .join("\n")
}

#[test]
fn the_defaults_example_sets_every_key_to_the_code_s_default() {
    let text = defaults_example();
    let parsed = AgentConfig::parse(&text, std::path::Path::new("defaults")).unwrap();
    let default = AgentConfig::default();
    assert_eq!(parsed.approval, default.approval);
    assert_eq!(parsed.presence, default.presence);
    assert_eq!(parsed.secrets, default.secrets);
    assert_eq!(parsed.ssh, default.ssh);
    assert_eq!(
        parsed.approver.kind.and_then(|k| k.chain()),
        None,
        "kind = auto"
    );
    assert_eq!(default.approver.kind.and_then(|k| k.chain()), None);
    let table: toml::Table = toml::from_str(&text).unwrap();
    for (name, keys) in tables() {
        for key in keys {
            let Some(value) = table.get(name).and_then(|t| t.get(key)) else {
                assert_eq!(
                    (name, *key),
                    ("approver", "command"),
                    "[{name}] {key} has a default and is missing from the example"
                );
                continue;
            };
            let shown = match value {
                toml::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let text = entry(name, key);
            assert!(
                text.contains(&format!("Default: {shown}")),
                "[{name}] {key}: the entry says another default than {shown}: {text}"
            );
        }
    }
}

#[test]
fn documented_limits_are_enforced() {
    let load = |text: &str| AgentConfig::parse(text, std::path::Path::new("limits"));
    let skew = entry("approval", "allowed_future_skew_ms");
    let max: u64 = skew
        .split("at most ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("allowed_future_skew_ms gives its maximum");
    assert!(load(&format!("[approval]\nallowed_future_skew_ms = {max}")).is_ok());
    assert!(load(&format!("[approval]\nallowed_future_skew_ms = {}", max + 1)).is_err());
    for key in ["rate_limit_burst", "rate_limit_per_minute"] {
        assert!(entry("approval", key).contains("at least 1"), "{key}");
        assert!(load(&format!("[approval]\n{key} = 1")).is_ok());
        assert!(load(&format!("[approval]\n{key} = 0")).is_err());
    }
    assert!(entry("approver", "kind").contains("cannot be part of a list"));
    assert!(load("[approver]\nkind = [\"auto\", \"tty\"]").is_err());
}

#[test]
fn every_example_loads() {
    let examples = check::examples(check::section(PAGE, "EXAMPLES").unwrap());
    assert!(examples.len() >= 3);
    for block in examples {
        let text = block.join("\n");
        if let Err(e) = AgentConfig::parse(&text, std::path::Path::new("example")) {
            panic!("{e}\n{text}");
        }
    }
}

/// An environment where every approver `auto` knows of could reach the person. Field by field
/// on top of the default, so that a new thing `auto` looks for compiles here: set it too.
#[allow(clippy::field_reassign_with_default)]
fn everything_available() -> Environment {
    let mut env = Environment::default();
    env.stdin_is_tty = true;
    env.has_display = true;
    env.askpass = Some("/usr/bin/ssh-askpass".into());
    env.session_bus = Some(SessionAddress::Variable(
        "unix:path=/run/user/1000/bus".into(),
    ));
    env
}

/// The kinds listed under `[approver] kind` (the `.RS` list), each with its text.
fn kinds() -> Vec<(String, String)> {
    let keys = check::section(PAGE, "KEYS").unwrap();
    let approver = check::subsection(keys, "[approver]").unwrap();
    let start = approver.find(".RS\n").expect("the list of kinds") + 4;
    let end = start + approver[start..].find(".RE\n").unwrap();
    check::tagged(&approver[start..end])
}

#[test]
fn each_kind_is_listed_with_the_presence_its_approver_proves() {
    let listed = kinds();
    let names: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
    let mut want = vec!["auto"];
    want.extend(check::fields::<ApproverKind>().unwrap());
    assert_eq!(names, want, "the kinds, in the order of ApproverKind");
    let env = everything_available();
    let mut verified = Vec::new();
    for (name, text) in &listed[1..] {
        let kind: ApproverKind = name.parse().unwrap();
        let config = ApproverConfig {
            kind: Some(KindSetting::One(KindWord::Kind(kind))),
            command: Some(vec!["/usr/bin/true".into()]),
        };
        let chain = select(&ApproverChoice::default(), &config, &env).unwrap();
        let presence = chain[0].presence();
        assert!(
            text.contains(&format!("Presence: {}", presence.as_str())),
            "{name} proves {}: {text}",
            presence.as_str()
        );
        if presence.is_verified() {
            verified.push(name.clone());
        }
    }
    let keys = check::section(PAGE, "KEYS").unwrap();
    let presence: String = check::subsection(keys, "[presence]")
        .unwrap()
        .lines()
        .map(check::plain)
        .collect::<Vec<_>>()
        .join(" ");
    let named = presence
        .split("verified accepts only")
        .nth(1)
        .and_then(|s| s.split("not one").next())
        .expect("[presence] says what verified accepts");
    for kind in check::fields::<ApproverKind>().unwrap() {
        assert_eq!(
            named.contains(kind),
            verified.iter().any(|v| v == kind),
            "[presence]: verified accepts {kind}? {named}"
        );
    }
}

#[test]
fn auto_names_the_kinds_it_can_choose() {
    let env = everything_available();
    let chosen: Vec<String> = nod_agent::approvers::auto_chain(&env)
        .into_iter()
        .map(|k| format!("{k:?}").to_lowercase())
        .collect();
    let auto = &kinds()[0].1;
    let never = auto
        .split("never chosen by auto")
        .next()
        .and_then(|s| s.rsplit_once("says so when it starts."))
        .map(|(_, s)| s)
        .expect("auto says which kinds it never chooses");
    for kind in check::fields::<ApproverKind>().unwrap() {
        if *kind == "command" {
            continue;
        }
        let is_chosen = chosen.iter().any(|c| c == kind);
        assert_eq!(
            auto.contains(kind) && !never.contains(kind),
            is_chosen,
            "auto: {kind} is {}chosen: {auto}",
            if is_chosen { "" } else { "not " }
        );
    }
}
