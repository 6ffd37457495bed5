//! An `/etc/pam.d` service file read as Linux-PAM reads it, so `doctor` sees the very module
//! arguments `pam_nod.so` will be given.
//!
//! The rules are libpam's (`pam_handlers.c`: `_pam_assemble_line`, `_pam_parse_conf_file`;
//! `pam_misc.c`: `_pam_StrTok`, `_pam_mkargv`):
//! - a physical line that is blank, or whose first non-blank character is `#`, is skipped,
//!   even in the middle of a continued line;
//! - the first `#` anywhere ends the logical line;
//! - a line ending in `\` (before trailing blanks) continues on the next one, the backslash
//!   becoming a space;
//! - tokens are separated by spaces, tabs and newlines only (a `\r` stays part of a token);
//! - a token that starts with `[` runs to the first `]` not written `\]`, brackets dropped and
//!   `\]` read as `]`: so a control `[a=b c=d]` is one token, and so is a module argument
//!   `[conf=/etc/my nod.toml]`;
//! - a type may start with `-` (skip the line if the module is missing) and is compared
//!   without regard to case.

/// One logical line of a service file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PamLine {
    /// The physical line it starts on, from 1.
    pub number: usize,
    /// The type as written, without a leading `-`.
    pub kind: String,
    /// The control: a word, or the inside of `[…]`.
    pub control: String,
    pub module: String,
    pub args: Vec<String>,
    /// The logical line as libpam assembled it (comment cut, continuations joined).
    pub text: String,
}

impl PamLine {
    /// Whether this is an `auth` line (any case, with or without `-`).
    pub fn is_auth(&self) -> bool {
        self.kind.eq_ignore_ascii_case("auth")
    }

    /// Whether the module is `pam_nod.so`, by bare name or by path.
    pub fn is_pam_nod(&self) -> bool {
        self.module.rsplit('/').next() == Some("pam_nod.so")
    }
}

/// The logical lines of `text` with a type, a control and a module. `@include` lines and
/// lines libpam itself would reject (too few fields) are left out.
pub fn parse(text: &str) -> Vec<PamLine> {
    assemble(text)
        .into_iter()
        .filter_map(|(number, line)| {
            let mut tokens = tokens(&line).into_iter();
            let kind = tokens.next()?;
            if kind.starts_with('@') {
                return None;
            }
            let kind = kind.strip_prefix('-').unwrap_or(&kind).to_owned();
            let control = tokens.next()?;
            let module = tokens.next()?;
            Some(PamLine {
                number,
                kind,
                control,
                module,
                args: tokens.collect(),
                text: line.trim().to_owned(),
            })
        })
        .collect()
}

/// Joins physical lines into logical ones, as `_pam_assemble_line` does; each with the number
/// of its first physical line. A file that ends inside a continued line loses that line, as
/// libpam reports it as an incomplete read.
fn assemble(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = None;
    for (i, raw) in text.split('\n').enumerate() {
        let s = raw.trim_start_matches([' ', '\t']);
        if s.is_empty() || s.starts_with('#') {
            continue;
        }
        let first = *start.get_or_insert(i + 1);
        if let Some(hash) = s.find('#') {
            current.push_str(&s[..hash]);
        } else if let Some(body) = s.trim_end_matches([' ', '\t']).strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        } else {
            current.push_str(s);
        }
        out.push((first, std::mem::take(&mut current)));
        start = None;
    }
    out
}

/// Splits a logical line into tokens, as `_pam_StrTok` with the separators " \t\n".
fn tokens(line: &str) -> Vec<String> {
    let is_sep = |c: char| matches!(c, ' ' | '\t' | '\n');
    let mut out = Vec::new();
    let mut rest = line;
    loop {
        rest = rest.trim_start_matches(is_sep);
        if rest.is_empty() {
            return out;
        }
        if let Some(inner) = rest.strip_prefix('[') {
            let mut token = String::new();
            let mut chars = inner.char_indices().peekable();
            let mut end = inner.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' if chars.peek().map(|&(_, n)| n) == Some(']') => {
                        token.push(']');
                        chars.next();
                    }
                    ']' => {
                        end = i + 1;
                        break;
                    }
                    c => token.push(c),
                }
            }
            out.push(token);
            rest = &inner[end.min(inner.len())..];
        } else {
            let end = rest.find(is_sep).unwrap_or(rest.len());
            out.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recommended_line_has_a_bracketed_control_and_one_argument() {
        let lines = parse(
            "#%PAM-1.0\n\
             auth [success=done authinfo_unavail=ignore default=die] pam_nod.so conf=/etc/nod/config.toml\n\
             @include common-auth\n",
        );
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert_eq!(l.number, 2);
        assert!(l.is_auth() && l.is_pam_nod());
        assert_eq!(
            l.control,
            "success=done authinfo_unavail=ignore default=die"
        );
        assert_eq!(l.args, ["conf=/etc/nod/config.toml"]);
    }

    #[test]
    fn a_hash_anywhere_ends_the_line_and_comment_lines_do_not_end_a_continuation() {
        let lines = parse(
            "auth required pam_nod.so \\\n\
             # a comment in between\n\
             \n\
             \tconf=/etc/nod/c.toml debug# trailing\n\
             -AUTH optional /lib/security/pam_nod.so [conf=/etc/my nod.toml] [a\\]b]x\n",
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].number, 1);
        assert_eq!(lines[0].args, ["conf=/etc/nod/c.toml", "debug"]);
        assert!(lines[1].is_auth() && lines[1].is_pam_nod());
        assert_eq!(lines[1].kind, "AUTH");
        assert_eq!(lines[1].args, ["conf=/etc/my nod.toml", "a]b", "x"]);
    }

    #[test]
    fn a_carriage_return_stays_part_of_the_last_argument() {
        let lines = parse("auth required pam_nod.so debug\r\n");
        assert_eq!(lines[0].args, ["debug\r"]);
    }

    #[test]
    fn a_file_that_ends_inside_a_continuation_loses_that_line() {
        assert!(parse("auth required pam_nod.so \\").is_empty());
        assert!(parse("auth required").is_empty());
    }

    #[test]
    fn an_unterminated_bracket_runs_to_the_end_of_the_line() {
        let lines = parse("auth [default=die pam_nod.so debug\n");
        assert!(lines.is_empty(), "no module after the control: {lines:?}");
    }
}
