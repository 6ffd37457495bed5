//! nod(1), as `nod generate-man` writes it, held to the code: every command and option is in
//! the reference, every example parses, the files are the agent's, the exit codes are right.

use clap::{CommandFactory, Parser};
use nod_agent::keystore::{AGENT_KEY_SEALED, SSH_KEYS_FILE, USER_CA_FILE, WRAP_KEY_FILE};
use nod_agent::paths::Paths;
use nod_man::check;

use crate::Cli;

fn page(name: &str) -> String {
    crate::assets::man_pages(Cli::command())
        .unwrap()
        .into_iter()
        .find(|p| p.file_name == name)
        .unwrap_or_else(|| panic!("generate-man writes no {name}"))
        .text
}

/// The commands an example line runs: the line after `$ `, split at `|`, `;` and `&&`, and the
/// contents of each `$(…)`.
fn commands(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line.to_owned();
    while let Some(start) = rest.find("$(") {
        let Some(len) = rest[start..].find(')') else {
            break;
        };
        out.push(rest[start + 2..start + len].to_owned());
        rest.replace_range(start..start + len + 1, "X");
    }
    for part in rest.split(['|', ';']).flat_map(|p| p.split("&&")) {
        out.push(part.trim().to_owned());
    }
    out
}

fn without_redirections(words: Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        match w.as_str() {
            ">" | ">>" | "<" => {
                words.next();
            }
            w if w.starts_with('>') || w.starts_with('<') => {}
            _ => out.push(w),
        }
    }
    out
}

/// Every `nod …` command line in the page's examples, as words.
fn nod_examples(page: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for block in check::examples(check::section(page, "EXAMPLES").unwrap()) {
        for line in block {
            let Some(line) = line.strip_prefix("$ ") else {
                continue;
            };
            for cmd in commands(line) {
                let mut words = without_redirections(check::shell_words(&cmd));
                while words.first().is_some_and(|w| w == "exec" || w == "eval") {
                    words.remove(0);
                }
                if words.first().is_some_and(|w| w == "nod") {
                    out.push(words);
                }
            }
        }
    }
    out
}

#[test]
fn every_example_command_line_parses() {
    let examples = nod_examples(&page("nod.1"));
    assert!(examples.len() >= 12, "{} nod examples", examples.len());
    for words in examples {
        if let Err(e) = Cli::try_parse_from(&words) {
            panic!("example `{}` does not parse: {e}", words.join(" "));
        }
    }
}

/// Every visible command under `cmd`, with its path (`nod hosts add`).
fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let p = format!("{path} {}", sub.get_name());
        out.push((p.clone(), sub.clone()));
        walk(sub, &p, out);
    }
}

#[test]
fn the_reference_has_every_command_and_every_option() {
    let page = page("nod.1");
    let reference = check::section(&page, "COMMANDS").unwrap();
    let mut all = Vec::new();
    // As the pages show it: without clap's `help` subcommands (`--help` is described once).
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    walk(&cmd, "nod", &mut all);
    assert!(all.len() > 20, "{} commands", all.len());
    for (path, sub) in &all {
        let text = check::subsection(reference, path)
            .unwrap_or_else(|| panic!("no .SS \"{path}\" in nod(1)"));
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long().filter(|l| *l != "help") {
                let flag = format!("--{long}");
                assert!(
                    check::tagged(text).iter().any(|(t, _)| t.contains(&flag)),
                    "{path}: {flag} is not documented"
                );
            }
        }
        let synopsis = check::section(&page, "SYNOPSIS").unwrap();
        let runnable = sub.get_subcommands().all(|s| s.is_hide_set());
        assert_eq!(
            synopsis.contains(&format!(".SY \"{}\"", path.replace('-', "\\-"))),
            runnable,
            "{path} in the synopsis"
        );
    }
}

#[test]
fn files_name_every_file_of_the_agent() {
    let page = page("nod.1");
    let files = check::section(&page, "FILES").unwrap();
    let text: String = files
        .lines()
        .map(check::plain)
        .collect::<Vec<_>>()
        .join("\n");
    let p = Paths::under(std::path::Path::new("/R"));
    let name = |path: std::path::PathBuf| path.file_name().unwrap().to_string_lossy().into_owned();
    let mut names = vec![
        name(p.agent_config()),
        name(p.hosts_file()),
        name(p.audit_log()),
        name(p.approval_socket().unwrap()),
        name(p.ssh_agent_socket().unwrap()),
        name(p.secrets_socket().unwrap()),
    ];
    names.extend([AGENT_KEY_SEALED, SSH_KEYS_FILE, USER_CA_FILE, WRAP_KEY_FILE].map(str::to_owned));
    let secrets =
        nod_agent::secrets::SecretsFiles::new(&p, &nod_agent::keystore::Keystore::open(&p));
    names.extend([secrets.store, secrets.policy, secrets.pending].map(name));
    for n in names {
        assert!(text.contains(&n), "FILES lacks {n}");
    }
}

#[test]
fn exit_status_lists_success_failure_and_usage_error() {
    let usage = Cli::try_parse_from(["nod", "--no-such-flag"])
        .unwrap_err()
        .exit_code();
    let page = page("nod.1");
    let tags: Vec<String> = check::tagged(check::section(&page, "EXIT STATUS").unwrap())
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(tags, ["0".to_owned(), "1".to_owned(), usage.to_string()]);
}

#[test]
fn writes_the_main_page_one_per_command_and_the_config_page() {
    let pages = crate::assets::man_pages(Cli::command()).unwrap();
    let names: Vec<&str> = pages.iter().map(|p| p.file_name.as_str()).collect();
    for name in [
        "nod.1",
        "nod-agent.1",
        "nod-pair.1",
        "nod-doctor.1",
        "nod-agent.toml.5",
        "nod-tpm.1",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    for p in &pages {
        assert!(!p.text.contains("@VERSION@"), "{}", p.file_name);
        assert!(
            p.text.contains(env!("CARGO_PKG_VERSION")),
            "{}",
            p.file_name
        );
    }
}

#[test]
fn every_command_and_option_has_a_help_text_for_the_reference() {
    assert_eq!(check::undocumented(&Cli::command()), Vec::<String>::new());
}

#[test]
fn the_docs_see_also_names_are_shipped() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    check::assert_named_docs_exist(&page("nod.1"), &docs);
}
