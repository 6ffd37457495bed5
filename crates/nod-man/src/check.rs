//! What the man pages' tests need to hold hand-written roff to the code: the field names of a
//! serde struct (or the variant names of an enum) as serde itself knows them, and the
//! sections, tagged paragraphs and examples of a page as plain text.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// The names serde reads for a struct's fields (after `rename_all`), or an enum's variants.
/// `None` for any other type, e.g. one deserialized through `try_from` or `untagged`.
pub fn fields<'de, T: Deserialize<'de>>() -> Option<&'static [&'static str]> {
    match T::deserialize(Probe) {
        Err(ProbeError::Names(names)) => Some(names),
        _ => None,
    }
}

/// A deserializer that records the field (or variant) list it is asked for, and stops there.
struct Probe;

#[derive(Debug)]
enum ProbeError {
    Names(&'static [&'static str]),
    Other,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probe")
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        Self::Other
    }
}

impl<'de> Deserializer<'de> for Probe {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(ProbeError::Other)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        Err(ProbeError::Names(fields))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        Err(ProbeError::Names(variants))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map identifier ignored_any
    }
}

/// The options and commands of `cmd` that the pages would show without a word of help, as
/// `<command path> --<option>` and `<command path>`: every visible subcommand needs an about,
/// and every visible option other than the built-in `--help` and `--version` a help text.
pub fn undocumented(cmd: &clap::Command) -> Vec<String> {
    let mut cmd = cmd.clone().disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, cmd.get_name(), &mut out);
    out
}

fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let builtin = matches!(
            arg.get_action(),
            clap::ArgAction::Help
                | clap::ArgAction::HelpShort
                | clap::ArgAction::HelpLong
                | clap::ArgAction::Version
        );
        if !builtin && !arg.is_positional() && arg.get_help().is_none() {
            out.push(format!(
                "{path} --{}",
                arg.get_long().unwrap_or(arg.get_id().as_str())
            ));
        }
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_path = format!("{path} {}", sub.get_name());
        if sub.get_about().is_none() {
            out.push(sub_path.clone());
        }
        walk(sub, &sub_path, out);
    }
}

/// The body of section `name` (`.SH NAME` or `.SH "NAME"`), up to the next `.SH`.
pub fn section<'a>(page: &'a str, name: &str) -> Option<&'a str> {
    block(page, ".SH", name, &[".SH"])
}

/// The body of subsection `name` (`.SS`) in `text`, up to the next `.SS` or `.SH`.
pub fn subsection<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    block(text, ".SS", name, &[".SS", ".SH"])
}

fn block<'a>(text: &'a str, request: &str, name: &str, ends: &[&str]) -> Option<&'a str> {
    let mut start = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let l = line.trim_end();
        if let Some(s) = start {
            if ends.iter().any(|e| is_request(l, e)) {
                return Some(&text[s..offset]);
            }
        } else if is_request(l, request) && plain(l) == name {
            start = Some(offset + line.len());
        }
        offset += line.len();
    }
    start.map(|s| &text[s..])
}

fn is_request(line: &str, request: &str) -> bool {
    line.strip_prefix(request)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
}

/// The tagged paragraphs (`.TP`) of `text`: each tag and its body, as plain text. A body runs
/// to the next `.TP`, `.SS`, `.SH`, `.PP`, `.LP`, `.P` or `.EX`; inside `.RS` … `.RE` (an indented
/// list under one entry) everything, tags included, belongs to that entry's body.
pub fn tagged(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut lines = text.lines();
    let mut open = false;
    let mut depth = 0usize;
    while let Some(line) = lines.next() {
        if is_request(line, ".RS") {
            depth += 1;
        } else if is_request(line, ".RE") {
            depth = depth.saturating_sub(1);
        } else if depth == 0 && is_request(line, ".TP") {
            let tag = lines.next().map(plain).unwrap_or_default();
            out.push((tag, String::new()));
            open = true;
        } else if depth == 0
            && [".SS", ".SH", ".PP", ".LP", ".P", ".EX"]
                .iter()
                .any(|r| is_request(line, r))
        {
            open = false;
        } else if open && let Some((_, body)) = out.last_mut() {
            let text = plain(line);
            if !text.is_empty() {
                if !body.is_empty() {
                    body.push(' ');
                }
                body.push_str(&text);
            }
        }
    }
    out
}

/// The lines of every example block (`.EX` … `.EE`) in `text`, as plain text.
pub fn examples(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        if is_request(line, ".EX") {
            current = Some(Vec::new());
        } else if is_request(line, ".EE") {
            out.extend(current.take());
        } else if let Some(block) = current.as_mut()
            && !line.starts_with(".\\\"")
        {
            block.push(plain(line));
        }
    }
    out
}

/// The text a roff line shows: font changes dropped, escapes resolved, a macro line reduced to
/// its arguments (joined without spaces for the alternating-font macros), a comment or a layout
/// request to nothing.
pub fn plain(line: &str) -> String {
    if line.starts_with(".\\\"") || line.starts_with("'\\\"") {
        return String::new();
    }
    let Some(rest) = line.strip_prefix('.') else {
        return unescape(line);
    };
    let (request, args) = rest.split_once(' ').unwrap_or((rest, ""));
    let args = macro_args(args);
    match request {
        "B" | "I" | "SM" | "SB" | "SH" | "SS" | "SY" | "TP" | "IP" => unescape(&args.join(" ")),
        "BR" | "BI" | "IB" | "IR" | "RB" | "RI" => unescape(&args.concat()),
        "OP" => format!("[{}]", unescape(&args.join(" "))),
        _ => String::new(),
    }
}

fn macro_args(s: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return args;
        };
        let mut arg = String::new();
        if first == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        arg.push('"');
                    }
                    '"' => break,
                    c => arg.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                arg.push(c);
                chars.next();
            }
        }
        args.push(arg);
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('f') => match chars.next() {
                Some('(') => {
                    chars.next();
                    chars.next();
                }
                Some('[') => {
                    for c in chars.by_ref() {
                        if c == ']' {
                            break;
                        }
                    }
                }
                _ => {}
            },
            Some('(') => {
                let name: String = chars.by_ref().take(2).collect();
                out.push_str(match name.as_str() {
                    "aq" => "'",
                    "dq" => "\"",
                    "em" => "\u{2014}",
                    "en" => "\u{2013}",
                    "bu" => "\u{2022}",
                    "ga" => "`",
                    "ti" => "~",
                    "ha" => "^",
                    _ => "?",
                });
            }
            Some('-') => out.push('-'),
            Some('e') | Some('\\') => out.push('\\'),
            Some(' ') | Some('~') => out.push(' '),
            Some('&') | Some('c') | Some('%') | None => {}
            Some(other) => out.push(other),
        }
    }
    out
}

/// The words of a shell command line: quotes and backslashes as the shell reads them, nothing
/// expanded. Enough for the simple commands a man page shows.
pub fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// The docs a page's SEE ALSO names under `/usr/share/doc/<package>/`, as paths under the
/// source tree's `docs/`: `setup.md` for `/usr/share/doc/nod/setup.md.gz` or `setup.md.gz`,
/// `protocol/` for `protocol/`.
pub fn named_docs(page: &str) -> Vec<String> {
    let see_also: String = section(page, "SEE ALSO")
        .unwrap_or_default()
        .lines()
        .map(plain)
        .collect::<Vec<_>>()
        .join(" ");
    see_also
        .split([' ', ',', '(', ')'])
        .filter_map(|w| match w.strip_prefix("/usr/share/doc/") {
            Some(rest) => rest.split_once('/').map(|(_, file)| file),
            None => Some(w),
        })
        .filter(|w| w.ends_with(".md.gz") || (w.ends_with('/') && !w.starts_with('/')))
        .map(|w| w.trim_end_matches(".gz").to_owned())
        .collect()
}

/// Asserts that the page's SEE ALSO names at least one doc and that each is in `docs_dir`
/// (the source tree's `docs/`, which the packages ship).
pub fn assert_named_docs_exist(page: &str, docs_dir: &std::path::Path) {
    let named = named_docs(page);
    assert!(!named.is_empty());
    for doc in named {
        let path = docs_dir.join(&doc);
        assert!(path.exists(), "{} is not in docs/", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    #[allow(dead_code)]
    struct Sample {
        socket_path: String,
        rate_limit: Option<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    #[allow(dead_code)]
    enum Backend {
        Auto,
        SecretService,
    }

    #[test]
    fn fields_are_the_names_serde_reads() {
        assert_eq!(
            fields::<Sample>().unwrap(),
            ["socket-path", "rate-limit"].as_slice()
        );
        assert_eq!(
            fields::<Backend>().unwrap(),
            ["auto", "secret-service"].as_slice()
        );
        assert_eq!(fields::<String>(), None);
    }

    const PAGE: &str = ".TH X 5\n.SH NAME\nx \\- y\n.SH \"EXIT STATUS\"\n.TP\n.B 10\nunavailable:\n\
        \\fBPAM_AUTHINFO_UNAVAIL\\fR\n.IP\nmore\n.TP\n.BR 20 \" (denied)\"\nhard\n.PP\nafter\n\
        .SS \"[approval]\"\n.TP\n.B kind\none of:\n.RS\n.TP\n.B tty\nterminal\n.RE\n.IP\nDefault: auto.\n.EX\n$ nod pair \\-\\-name \"a b\"\n.\\\" comment\n.EE\n.SH FILES\n/etc\n";

    #[test]
    fn sections_and_tagged_paragraphs_read_as_plain_text() {
        assert_eq!(section(PAGE, "NAME"), Some("x \\- y\n"));
        let exit = section(PAGE, "EXIT STATUS").unwrap();
        assert_eq!(
            tagged(exit),
            [
                (
                    "10".to_owned(),
                    "unavailable: PAM_AUTHINFO_UNAVAIL more".to_owned()
                ),
                ("20 (denied)".to_owned(), "hard".to_owned()),
                (
                    "kind".to_owned(),
                    "one of: tty terminal Default: auto.".to_owned()
                ),
            ]
        );
        assert_eq!(section(PAGE, "FILES"), Some("/etc\n"));
        assert_eq!(section(PAGE, "SEE ALSO"), None);
        let approval = subsection(exit, "[approval]").unwrap();
        assert_eq!(
            tagged(approval),
            [(
                "kind".to_owned(),
                "one of: tty terminal Default: auto.".to_owned()
            )]
        );
        assert_eq!(examples(approval), [["$ nod pair --name \"a b\""]]);
    }

    #[test]
    fn named_docs_are_the_doc_files_see_also_names() {
        let page = ".SH \"SEE ALSO\"\n.BR nod (1)\n.PP\n.I /usr/share/doc/nod/\nholds\n\
            .I setup.md.gz\n(a, b),\n.I protocol/\nand\n.I /usr/share/doc/nod\\-helper/x.md.gz\n";
        assert_eq!(named_docs(page), ["setup.md", "protocol/", "x.md"]);
    }

    #[test]
    fn shell_words_follow_the_shell_quoting() {
        assert_eq!(
            shell_words(r#"nod pair --name "a b" 'c d' e\ f"#),
            ["nod", "pair", "--name", "a b", "c d", "e f"]
        );
        assert_eq!(shell_words(r#"x "" y"#), ["x", "", "y"]);
    }

    #[test]
    fn plain_drops_fonts_and_resolves_escapes() {
        assert_eq!(plain("\\fB\\-\\-user\\fR \\fIUSER\\fR"), "--user USER");
        assert_eq!(plain(".BR nod (1),"), "nod(1),");
        assert_eq!(plain(".OP \\-\\-x ID"), "[--x ID]");
        assert_eq!(plain(".\\\" note"), "");
        assert_eq!(plain("\\(aqa\\(aq \\e \\&."), "'a' \\ .");
    }
}
