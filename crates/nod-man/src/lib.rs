//! nod's man pages.
//!
//! Each page is hand-written roff (`crates/<crate>/man/*.in`). A program's own page carries
//! marker lines that [`render`] replaces with text rendered from the program's clap
//! definition: the synopsis, the options and the reference of every command. So the options a
//! page lists are the options the program takes, and they cannot drift apart. [`fill`] does the
//! rest of the pages (config files, the PAM module), which have no command line.
//!
//! What is hand-written (descriptions, files, exit codes, examples, config keys) is held to the
//! code by each crate's tests, with the helpers in [`check`]: every config key of the serde
//! structs is documented and every documented key exists, every example parses, every exit code
//! is listed with the PAM result it gives.
//!
//! Markers, each alone on a line of the template: `.\" @SYNOPSIS@`, `.\" @OPTIONS@` (the
//! program's own options), `.\" @COMMANDS@` (every visible subcommand, depth first). `@VERSION@`
//! anywhere is replaced by the program's version.

#![forbid(unsafe_code)]

pub mod check;
mod roff;

use std::fmt;

use clap::{Arg, ArgAction, Command};

/// A rendered page: its file name (`nod.1`, `nod-pair.1`) and its roff text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub file_name: String,
    pub text: String,
}

/// A template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A marker the page needs is not in the template.
    MissingMarker(&'static str),
    /// A marker or `@VERSION@` was left in a page that has no command line to fill it from.
    LeftOver(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingMarker(m) => write!(f, "the man page template lacks the line {m}"),
            Self::LeftOver(m) => write!(f, "the man page template still contains {m}"),
        }
    }
}

impl std::error::Error for Error {}

const SYNOPSIS: &str = ".\\\" @SYNOPSIS@";
const OPTIONS: &str = ".\\\" @OPTIONS@";
const COMMANDS: &str = ".\\\" @COMMANDS@";
const VERSION: &str = "@VERSION@";

/// Renders the program's page from `template` (file name `<name>.<section>`), and one page per
/// visible top-level subcommand (`<name>-<sub>.<section>`: its synopsis, description, options
/// and subcommands, and a pointer to the main page).
pub fn render(cmd: Command, section: &str, template: &str) -> Result<Vec<Page>, Error> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let name = cmd.get_name().to_owned();
    let version = cmd.get_version().unwrap_or_default().to_owned();

    let mut text = String::new();
    let mut seen = [false; 3];
    for line in template.lines() {
        match line.trim_end() {
            SYNOPSIS => {
                seen[0] = true;
                synopsis(&cmd, &name, &mut text);
            }
            OPTIONS => {
                seen[1] = true;
                options(&cmd, true, &mut text);
            }
            COMMANDS => {
                seen[2] = true;
                for sub in visible_subcommands(&cmd) {
                    commands(sub, &name, &mut text);
                }
            }
            _ => {
                text.push_str(&line.replace(VERSION, &version));
                text.push('\n');
            }
        }
    }
    for (seen, marker) in seen.iter().zip([SYNOPSIS, OPTIONS, COMMANDS]) {
        if !seen {
            return Err(Error::MissingMarker(marker));
        }
    }

    let mut pages = vec![Page {
        file_name: format!("{name}.{section}"),
        text,
    }];
    for sub in visible_subcommands(&cmd) {
        pages.push(subcommand_page(sub, &name, section, &version));
    }
    Ok(pages)
}

/// A page without a command line: `@VERSION@` replaced, and no marker allowed.
pub fn fill(template: &str, version: &str) -> Result<String, Error> {
    for marker in [SYNOPSIS, OPTIONS, COMMANDS] {
        if template.lines().any(|l| l.trim_end() == marker) {
            return Err(Error::LeftOver(marker.to_owned()));
        }
    }
    Ok(template.replace(VERSION, version))
}

fn visible_subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

fn is_builtin(arg: &Arg) -> bool {
    matches!(
        arg.get_action(),
        ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
    )
}

/// The arguments shown for `cmd`: visible ones, and `--help`/`--version` only for the program
/// itself.
fn shown_args(cmd: &Command, root: bool) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(move |a| !a.is_hide_set() && (root || !is_builtin(a)))
}

/// One `.SY` block per runnable command under `cmd` (a command with subcommands is not
/// runnable on its own, unless it also takes arguments).
fn synopsis(cmd: &Command, path: &str, out: &mut String) {
    let subs: Vec<&Command> = visible_subcommands(cmd).collect();
    if subs.is_empty() || shown_args(cmd, false).any(Arg::is_positional) {
        usage(cmd, path, out);
    }
    for sub in subs {
        synopsis(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

fn usage(cmd: &Command, path: &str, out: &mut String) {
    out.push_str(&format!(".SY \"{}\"\n", roff::escape_arg(path)));
    let args: Vec<&Arg> = shown_args(cmd, false).collect();
    for arg in args.iter().filter(|a| !a.is_positional()) {
        let flag = roff::escape(&flag_name(arg));
        match (arg.is_required_set(), value_name(arg)) {
            (false, None) => out.push_str(&format!(".OP {flag}\n")),
            (false, Some(v)) => {
                out.push_str(&format!(".OP {flag} \"{}\"\n", roff::escape_arg(&v)));
            }
            (true, None) => out.push_str(&format!("\\fB{flag}\\fR\n")),
            (true, Some(v)) => {
                out.push_str(&format!("\\fB{flag}\\fR \\fI{}\\fR\n", roff::escape(&v)))
            }
        }
    }
    for arg in args.iter().filter(|a| a.is_positional()) {
        let v = roff::escape(&value_name(arg).unwrap_or_default());
        let more = if takes_many(arg) { " \\&..." } else { "" };
        if arg.is_required_set() {
            out.push_str(&format!("\\fI{v}\\fR{more}\n"));
        } else {
            out.push_str(&format!("[\\fI{v}\\fR{more}]\n"));
        }
    }
    out.push_str(".YS\n");
}

/// `--long`, else `-s`.
fn flag_name(arg: &Arg) -> String {
    match (arg.get_long(), arg.get_short()) {
        (Some(l), _) => format!("--{l}"),
        (None, Some(s)) => format!("-{s}"),
        (None, None) => arg.get_id().to_string(),
    }
}

fn value_name(arg: &Arg) -> Option<String> {
    if !arg.get_action().takes_values() {
        return None;
    }
    Some(match arg.get_value_names() {
        Some(names) if !names.is_empty() => names
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => arg.get_id().as_str().to_uppercase(),
    })
}

fn takes_many(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
        || arg.get_num_args().is_some_and(|n| n.max_values() > 1)
}

/// A `.TP` entry per shown argument of `cmd`.
fn options(cmd: &Command, root: bool, out: &mut String) {
    let args: Vec<&Arg> = shown_args(cmd, root).collect();
    let (positional, flags): (Vec<&Arg>, Vec<&Arg>) =
        args.into_iter().partition(|a| a.is_positional());
    for arg in flags {
        let mut tag = Vec::new();
        if let Some(s) = arg.get_short() {
            tag.push(format!("\\fB\\-{}\\fR", roff::escape(&s.to_string())));
        }
        if let Some(l) = arg.get_long() {
            tag.push(format!("\\fB\\-\\-{}\\fR", roff::escape(l)));
        }
        let mut tag = tag.join(", ");
        if let Some(v) = value_name(arg) {
            tag.push_str(&format!(" \\fI{}\\fR", roff::escape(&v)));
        }
        entry(&tag, arg, out);
    }
    for arg in positional {
        if arg.get_help().is_none() && arg.get_long_help().is_none() {
            continue;
        }
        let tag = format!(
            "\\fI{}\\fR",
            roff::escape(&value_name(arg).unwrap_or_default())
        );
        entry(&tag, arg, out);
    }
}

fn entry(tag: &str, arg: &Arg, out: &mut String) {
    out.push_str(".TP\n");
    out.push_str(tag);
    out.push('\n');
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let mut notes = Vec::new();
    if takes_many(arg) && !arg.is_positional() && !help.contains("repeatable") {
        notes.push("May be given more than once.".to_owned());
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() && arg.get_action().takes_values() {
        notes.push(format!("Default: `{}`.", defaults.join(",")));
    }
    if arg.get_action().takes_values() && !arg.is_hide_possible_values_set() {
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !values.is_empty() {
            notes.push(format!("One of {}.", values.join(", ")));
        }
    }
    let mut paragraphs = roff::paragraphs(&help);
    if !notes.is_empty() {
        paragraphs.push(roff::text(&notes.join(" ")));
    }
    if !paragraphs.is_empty() {
        out.push_str(&paragraphs.join("\n.IP\n"));
        out.push('\n');
    }
}

fn about(cmd: &Command) -> String {
    cmd.get_long_about()
        .or(cmd.get_about())
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// `.SS "<path>"`, the command's description and options, then each subcommand the same way.
fn commands(cmd: &Command, parent: &str, out: &mut String) {
    let path = format!("{parent} {}", cmd.get_name());
    out.push_str(&format!(".SS \"{}\"\n", roff::escape_arg(&path)));
    let about = roff::paragraphs(&about(cmd));
    if !about.is_empty() {
        out.push_str(&about.join("\n.PP\n"));
        out.push('\n');
    }
    options(cmd, false, out);
    for sub in visible_subcommands(cmd) {
        commands(sub, &path, out);
    }
}

fn subcommand_page(cmd: &Command, parent: &str, section: &str, version: &str) -> Page {
    let page_name = format!("{parent}-{}", cmd.get_name());
    let path = format!("{parent} {}", cmd.get_name());
    let mut out = String::new();
    out.push_str(&format!(
        ".TH \"{}\" \"{section}\" \"\" \"{parent} {}\" \"{parent} manual\"\n",
        roff::escape_arg(&page_name.to_uppercase()),
        roff::escape_arg(version)
    ));
    out.push_str(".nh\n.SH NAME\n");
    out.push_str(&format!(
        "{} \\- {}\n",
        roff::escape(&page_name),
        roff::escape(&roff::first_sentence(&about(cmd)))
    ));
    out.push_str(".SH SYNOPSIS\n");
    synopsis(cmd, &path, &mut out);
    out.push_str(".SH DESCRIPTION\n");
    out.push_str(&roff::paragraphs(&about(cmd)).join("\n.PP\n"));
    out.push('\n');
    if shown_args(cmd, false).next().is_some() {
        out.push_str(".SH OPTIONS\n");
        options(cmd, false, &mut out);
    }
    let subs: Vec<&Command> = visible_subcommands(cmd).collect();
    if !subs.is_empty() {
        out.push_str(".SH COMMANDS\n");
        for sub in subs {
            commands(sub, &path, &mut out);
        }
    }
    out.push_str(&format!(
        ".SH \"SEE ALSO\"\n.BR {} ({section}),\nwhich also lists the files, the environment and the exit status.\n",
        roff::escape(parent)
    ));
    Page {
        file_name: format!("{page_name}.{section}"),
        text: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, Subcommand};

    /// A tool.
    #[derive(Debug, Parser)]
    #[command(name = "tool", version = "1.2.3")]
    struct Cli {
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(Debug, Subcommand)]
    enum Cmd {
        /// Pair a host. Safe to run again.
        ///
        /// Second paragraph with `code` and a -dash.
        Pair {
            /// Where to go.
            dest: String,
            /// The id.
            #[arg(long, value_name = "ID")]
            host_id: Option<String>,
            /// A path.
            #[arg(long, default_value = "/etc/x.toml")]
            config: String,
            #[arg(long, required = true)]
            user: String,
            /// Repeat me.
            #[arg(long)]
            read: Vec<String>,
            /// Secret.
            #[arg(long, hide = true)]
            hidden: bool,
        },
        /// Hosts.
        Hosts {
            #[command(subcommand)]
            command: HostsCmd,
        },
        #[command(hide = true)]
        Internal,
    }

    #[derive(Debug, Subcommand)]
    enum HostsCmd {
        /// List them.
        List,
    }

    const TEMPLATE: &str = ".TH TOOL 1 \"\" \"tool @VERSION@\"\n.SH SYNOPSIS\n.\\\" @SYNOPSIS@\n\
        .SH OPTIONS\n.\\\" @OPTIONS@\n.SH COMMANDS\n.\\\" @COMMANDS@\n.SH FILES\n.nf\n/etc/x\n.fi\n";

    fn pages() -> Vec<Page> {
        use clap::CommandFactory;
        render(Cli::command(), "1", TEMPLATE).unwrap()
    }

    #[test]
    fn renders_the_main_page_and_one_per_visible_subcommand() {
        let names: Vec<String> = pages().into_iter().map(|p| p.file_name).collect();
        assert_eq!(names, ["tool.1", "tool-pair.1", "tool-hosts.1"]);
    }

    #[test]
    fn fills_every_marker_from_the_clap_definition() {
        let main = &pages()[0].text;
        assert!(
            main.starts_with(".TH TOOL 1 \"\" \"tool 1.2.3\"\n"),
            "{main}"
        );
        assert!(!main.contains('@'), "{main}");
        assert!(main.contains(".SY \"tool pair\"\n"), "{main}");
        assert!(main.contains(".OP \\-\\-host\\-id \"ID\"\n"), "{main}");
        assert!(
            main.contains("\\fB\\-\\-user\\fR \\fIUSER\\fR\n"),
            "required: {main}"
        );
        assert!(main.contains("\\fIDEST\\fR\n.YS\n"), "{main}");
        assert!(main.contains(".SY \"tool hosts list\"\n.YS\n"), "{main}");
        assert!(
            !main.contains(".SY \"tool hosts\"\n"),
            "not runnable: {main}"
        );
        assert!(
            main.contains("\\fB\\-V\\fR, \\fB\\-\\-version\\fR"),
            "{main}"
        );
        assert!(
            main.contains(".SS \"tool hosts list\"\nList them.\n"),
            "{main}"
        );
        assert!(main.contains("Default: \\fB/etc/x.toml\\fR."), "{main}");
        assert!(
            main.contains("Repeat me.\n.IP\nMay be given more than once."),
            "{main}"
        );
        assert!(main.contains("with \\fBcode\\fR and a \\-dash."), "{main}");
        assert!(
            !main.contains("hidden") && !main.contains("internal"),
            "{main}"
        );
        assert!(main.ends_with(".SH FILES\n.nf\n/etc/x\n.fi\n"), "{main}");
    }

    #[test]
    fn subcommand_pages_name_the_main_page() {
        let pair = &pages()[1].text;
        assert!(
            pair.contains(".nh\n.SH NAME\ntool\\-pair \\- pair a host\n"),
            "{pair}"
        );
        assert!(pair.contains(".BR tool (1),"), "{pair}");
        let hosts = &pages()[2].text;
        assert!(
            hosts.contains(".SH COMMANDS\n.SS \"tool hosts list\""),
            "{hosts}"
        );
    }

    #[test]
    fn a_template_without_a_marker_is_refused() {
        use clap::CommandFactory;
        let t = TEMPLATE.replace(".\\\" @OPTIONS@\n", "");
        assert_eq!(
            render(Cli::command(), "1", &t).unwrap_err(),
            Error::MissingMarker(OPTIONS)
        );
        assert!(fill(TEMPLATE, "1").is_err());
        assert_eq!(fill("x @VERSION@ y", "1.0").unwrap(), "x 1.0 y");
    }
}
