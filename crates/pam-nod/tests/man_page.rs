//! pam_nod(8), and the PAM results in nod-helper(8)'s exit status, held to the module: every
//! argument it takes with its default, every result and the outcomes that lead to it, and the
//! module arguments of every example line.

use std::ffi::CString;

use pam_nod::{
    Args, DEFAULT_CONF, DEFAULT_HELPER, DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS, Outcome, pam_result,
    parse_args,
};

const PAGE: &str = include_str!("../man/pam_nod.8.in");
const HELPER_PAGE: &str = include_str!("../../nod-helper/man/nod-helper.8.in");

fn parse(args: &[&str]) -> Result<Args, pam_nod::ArgError> {
    let owned: Vec<CString> = args.iter().map(|a| CString::new(*a).unwrap()).collect();
    let refs: Vec<&std::ffi::CStr> = owned.iter().map(CString::as_c_str).collect();
    parse_args(&refs)
}

fn result_name(outcome: &Outcome) -> String {
    format!("{:?}", pam_result(outcome))
}

#[test]
fn options_are_the_module_arguments_with_their_defaults() {
    // Naming every field: a new argument does not compile here until it is documented.
    let Args {
        conf,
        helper,
        timeout_ms,
        debug,
    } = Args::default();
    assert_eq!(conf.to_str(), Some(DEFAULT_CONF));
    assert_eq!(helper.to_str(), Some(DEFAULT_HELPER));
    assert_eq!(timeout_ms, DEFAULT_TIMEOUT_MS);
    assert!(!debug);
    let want = [
        ("conf=PATH", Some(DEFAULT_CONF.to_owned())),
        ("helper=PATH", Some(DEFAULT_HELPER.to_owned())),
        ("timeout_ms=N", Some(DEFAULT_TIMEOUT_MS.to_string())),
        ("debug", None),
    ];
    let options = nod_man::check::tagged(nod_man::check::section(PAGE, "OPTIONS").unwrap());
    let tags: Vec<&str> = options.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(tags, want.each_ref().map(|(t, _)| *t));
    for ((tag, body), (_, default)) in options.iter().zip(want) {
        if let Some(d) = default {
            assert!(body.contains(&format!("Default: {d}.")), "{tag}: {body}");
        }
        let example = tag.replace("PATH", "/etc/nod/x").replace('N', "1000");
        assert!(parse(&[&example]).is_ok(), "{example} is accepted");
        let synopsis = nod_man::check::section(PAGE, "SYNOPSIS").unwrap();
        let synopsis: String = synopsis.lines().map(nod_man::check::plain).collect();
        assert!(
            synopsis.contains(&format!("[{tag}]")),
            "{tag} in the synopsis"
        );
    }
    let (_, timeout) = &options[2];
    assert!(
        timeout.contains(&format!("from 1 to {MAX_TIMEOUT_MS}")),
        "{timeout}"
    );
    assert!(parse(&[&format!("timeout_ms={MAX_TIMEOUT_MS}")]).is_ok());
    assert!(parse(&[&format!("timeout_ms={}", MAX_TIMEOUT_MS + 1)]).is_err());
}

/// The exit codes a text names as numbers.
fn codes(text: &str) -> Vec<i32> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
fn return_values_are_the_results_each_outcome_gives() {
    let values = nod_man::check::tagged(nod_man::check::section(PAGE, "RETURN VALUES").unwrap());
    let body = |result: &str| {
        values
            .iter()
            .find(|(t, _)| t == result)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("RETURN VALUES lacks {result}"))
    };
    let other = values
        .iter()
        .find(|(_, b)| b.starts_with("Any other exit code"))
        .map(|(t, _)| t.clone())
        .expect("one result is for any other exit code");
    for code in 0..=255 {
        let result = result_name(&Outcome::Exited(code));
        if codes(&body(&result)).contains(&code) {
            continue;
        }
        assert_eq!(
            result, other,
            "exit code {code} gives {result}, and the page does not say so"
        );
    }
    for (result, text) in &values {
        for code in codes(text) {
            assert_eq!(
                &result_name(&Outcome::Exited(code)),
                result,
                "exit code {code}"
            );
        }
    }
    // The outcomes that are not an exit code, each with the words its entry uses. Naming every
    // variant: a new outcome does not compile here until it is documented.
    for outcome in [
        Outcome::Exited(0),
        Outcome::TimedOut,
        Outcome::Signaled(9),
        Outcome::BadArgs,
        Outcome::NoUser,
        Outcome::HelperUnsafe,
        Outcome::SpawnFailed,
    ] {
        let words = match outcome {
            Outcome::Exited(_) => continue,
            Outcome::TimedOut => "killed",
            Outcome::Signaled(_) => "signal",
            Outcome::BadArgs => "module argument is wrong",
            Outcome::NoUser => "no PAM user",
            Outcome::HelperUnsafe => "refused as unsafe",
            Outcome::SpawnFailed => "could not be started",
        };
        let text = body(&result_name(&outcome));
        assert!(text.contains(words), "{outcome:?}: {text}");
    }
}

#[test]
fn nod_helper_exit_status_names_the_pam_result_of_each_code() {
    let exit = nod_man::check::section(HELPER_PAGE, "EXIT STATUS").unwrap();
    let request = nod_man::check::subsection(exit, "nod-helper request").unwrap();
    let entries = nod_man::check::tagged(request);
    assert_eq!(entries.len(), 8);
    for (code, body) in entries {
        let result = result_name(&Outcome::Exited(code.parse().unwrap()));
        assert!(
            body.contains(&result),
            "nod-helper(8) exit {code} gives {result}: {body}"
        );
        for other in ["PAM_SUCCESS", "PAM_AUTHINFO_UNAVAIL", "PAM_AUTH_ERR"] {
            assert!(
                other == result || !body.contains(other),
                "exit {code}: {body}"
            );
        }
    }
}

#[test]
fn every_example_pam_line_has_valid_module_arguments() {
    let examples = nod_man::check::examples(nod_man::check::section(PAGE, "EXAMPLES").unwrap());
    let mut n = 0;
    for line in examples.iter().flatten() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words.iter().position(|w| *w == "pam_nod.so") else {
            continue;
        };
        assert_eq!(
            words.get(1).copied(),
            Some("[success=done"),
            "the recommended control: {line}"
        );
        assert!(line.contains("[success=done authinfo_unavail=ignore default=die]"));
        if let Err(e) = parse(&words[at + 1..]) {
            panic!("{line}: {e}");
        }
        n += 1;
    }
    assert!(n >= 2, "{n} pam_nod.so lines");
}
