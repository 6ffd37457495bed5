//! nod-helper(8) and nod-helper.toml(5), as `nod-helper generate-man` writes them, held to the
//! code: the exit codes, the config keys and their defaults, and every example.

use std::collections::BTreeSet;

use clap::{CommandFactory, Parser};
use nod_man::check;

use crate::cli::Cli;
use crate::config::{
    DEFAULT_CONFIG_PATH, DEFAULT_SERVICE, DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS, RawConfig,
};
use crate::error::*;

fn page(name: &str) -> String {
    crate::assets::man_pages()
        .unwrap()
        .into_iter()
        .find(|p| p.file_name == name)
        .unwrap_or_else(|| panic!("generate-man writes no {name}"))
        .text
}

fn tags(text: &str) -> Vec<String> {
    check::tagged(text).into_iter().map(|(t, _)| t).collect()
}

/// The example command lines of a page that run `nod-helper` (after `$ ` and an optional
/// `sudo`), with `\` line continuations joined.
fn helper_examples(page: &str) -> Vec<Vec<String>> {
    let examples = check::section(page, "EXAMPLES").unwrap();
    let mut out = Vec::new();
    for block in check::examples(examples) {
        let joined = block.join("\n").replace("\\\n", " ");
        for line in joined.lines() {
            let Some(cmd) = line.strip_prefix("$ ") else {
                continue;
            };
            let mut words = check::shell_words(cmd);
            if words.first().is_some_and(|w| w == "sudo") {
                words.remove(0);
            }
            if words.first().is_some_and(|w| w == "nod-helper") {
                out.push(words);
            }
        }
    }
    out
}

#[test]
fn writes_the_helper_module_and_config_pages_in_their_sections() {
    let names: Vec<String> = crate::assets::man_pages()
        .unwrap()
        .into_iter()
        .map(|p| p.file_name)
        .collect();
    for name in [
        "nod-helper.8",
        "nod-helper-request.8",
        "nod-helper-doctor.8",
        "pam_nod.8",
        "nod-helper.toml.5",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    for p in crate::assets::man_pages().unwrap() {
        assert!(!p.text.contains("@VERSION@"), "{}", p.file_name);
        assert!(
            p.text.contains(env!("CARGO_PKG_VERSION")),
            "{} names the version",
            p.file_name
        );
    }
}

#[test]
fn every_example_command_line_parses() {
    for name in ["nod-helper.8", "nod-helper.toml.5"] {
        let examples = helper_examples(&page(name));
        assert!(!examples.is_empty(), "{name} has nod-helper examples");
        for words in examples {
            if let Err(e) = Cli::try_parse_from(&words) {
                panic!("{name}: example `{}` does not parse: {e}", words.join(" "));
            }
        }
    }
}

#[test]
fn exit_status_lists_every_request_code_and_the_other_commands_codes() {
    let page = page("nod-helper.8");
    let exit = check::section(&page, "EXIT STATUS").unwrap();
    let request = check::subsection(exit, "nod-helper request").unwrap();
    let codes = [
        EXIT_APPROVED,
        EXIT_UNAVAILABLE,
        EXIT_CANCELLED,
        EXIT_FAILED,
        EXIT_DENIED,
        EXIT_AUTH,
        EXIT_CONFIG,
        EXIT_PROTOCOL,
    ];
    let want: Vec<String> = codes.iter().map(u8::to_string).collect();
    assert_eq!(tags(request), want);

    // `request --help` gives the same list.
    let cmd = Cli::command();
    let help = cmd
        .find_subcommand("request")
        .and_then(|c| c.get_about())
        .unwrap()
        .to_string();
    for code in &want[1..] {
        assert!(
            help.contains(&format!("{code} ")),
            "--help lacks {code}: {help}"
        );
    }

    let usage = Cli::try_parse_from(["nod-helper", "--no-such-flag"])
        .unwrap_err()
        .exit_code();
    let others = check::subsection(exit, "Other commands").unwrap();
    let want: BTreeSet<String> = [0, i32::from(EXIT_GEN_KEY), usage, i32::from(EXIT_CONFIG)]
        .iter()
        .map(i32::to_string)
        .collect();
    assert_eq!(tags(others).into_iter().collect::<BTreeSet<_>>(), want);
}

#[test]
fn files_name_the_default_config() {
    let page = page("nod-helper.8");
    let files = tags(check::section(&page, "FILES").unwrap());
    assert!(files.iter().any(|f| f == DEFAULT_CONFIG_PATH), "{files:?}");
}

/// The `.TP` entries of KEYS: key name → its text.
fn keys() -> Vec<(String, String)> {
    let page = page("nod-helper.toml.5");
    check::tagged(check::section(&page, "KEYS").unwrap())
        .into_iter()
        .map(|(tag, body)| (tag.split(' ').next().unwrap_or_default().to_owned(), body))
        .collect()
}

fn body(key: &str) -> String {
    keys()
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no entry for {key}"))
        .1
}

#[test]
fn every_config_key_is_documented_and_every_documented_key_is_read() {
    let read: Vec<&str> = check::fields::<RawConfig>().unwrap().to_vec();
    let documented: Vec<String> = keys().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        documented, read,
        "KEYS lists the keys in the order RawConfig reads them"
    );
}

#[test]
fn the_keys_documented_as_required_are_the_required_ones() {
    let required: Vec<String> = keys()
        .into_iter()
        .filter(|(_, b)| b.starts_with("Required."))
        .map(|(k, _)| k)
        .collect();
    let value = |k: &str| format!("{k} = \"/x\"\n");
    let all: String = required.iter().map(|k| value(k)).collect();
    toml::from_str::<RawConfig>(&all).expect("the required keys alone load");
    for k in &required {
        let without: String = required
            .iter()
            .filter(|r| *r != k)
            .map(|r| value(r))
            .collect();
        let err = toml::from_str::<RawConfig>(&without)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("missing field `{k}`")), "{k}: {err}");
    }
    for (k, b) in keys() {
        if !required.contains(&k) {
            assert!(
                b.contains("Default: ") || k == "replay_cache_dir",
                "{k} is optional, so its entry gives the default: {b}"
            );
        }
    }
}

#[test]
fn defaults_and_limits_are_the_code_s() {
    assert!(body("timeout_ms").contains(&format!("Default: {DEFAULT_TIMEOUT_MS}.")));
    assert!(body("timeout_ms").contains(&format!("from 1 to {MAX_TIMEOUT_MS}")));
    assert!(body("service").contains(&format!("Default: {DEFAULT_SERVICE}.")));
    assert!(
        body("allowed_future_skew_ms")
            .contains(&format!("Default: {}.", nod_proto::DEFAULT_FUTURE_SKEW_MS))
    );
    assert!(body("host_id").contains(&format!(
        "1 to {} characters",
        nod_proto::keys::MAX_HOST_ID_LEN
    )));
    assert!(body("replay_cache_dir").contains("ignored"));
}

#[test]
fn every_config_example_loads() {
    let page = page("nod-helper.toml.5");
    let mut n = 0;
    for block in check::examples(check::section(&page, "EXAMPLES").unwrap()) {
        if block.iter().any(|l| l.starts_with("$ ")) {
            continue;
        }
        let text = block.join("\n");
        if let Err(e) = toml::from_str::<RawConfig>(&text) {
            panic!("example does not load: {e}\n{text}");
        }
        n += 1;
    }
    assert!(n >= 2, "{n} config examples");
}

#[test]
fn a_helper_not_run_as_root_is_documented_as_unavailable() {
    let page = page("nod-helper.8");
    let exit = check::section(&page, "EXIT STATUS").unwrap();
    let request = check::tagged(check::subsection(exit, "nod-helper request").unwrap());
    let code = HelperError::NotRoot { uid: 1000 }.exit_code().to_string();
    let (_, body) = request
        .iter()
        .find(|(t, _)| *t == code)
        .expect("the code a helper that is not root exits with");
    assert!(body.contains("does not run as root"), "exit {code}: {body}");
    assert_eq!(code, EXIT_UNAVAILABLE.to_string());
}

#[test]
fn every_command_and_option_has_a_help_text_for_the_reference() {
    assert_eq!(check::undocumented(&Cli::command()), Vec::<String>::new());
}

#[test]
fn the_docs_see_also_names_are_shipped() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    check::assert_named_docs_exist(&page("nod-helper.8"), &docs);
}
