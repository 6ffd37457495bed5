//! Plain text (clap's help, with Markdown-style `code` spans) to roff.

/// Escapes text for a roff line: backslashes, minus signs (so options and paths copy as ASCII
/// `-`), and a leading `.` or `'`, which would make the line a request.
pub fn escape(s: &str) -> String {
    let out = s.replace('\\', "\\e").replace('-', "\\-");
    if out.starts_with('.') || out.starts_with('\'') {
        format!("\\&{out}")
    } else {
        out
    }
}

/// Escapes text for a quoted macro argument, where a `"` would end it.
pub fn escape_arg(s: &str) -> String {
    escape(s).replace('"', "\\(dq")
}

/// One paragraph of text: escaped, `code` spans in bold, each source line its own roff line.
pub fn text(s: &str) -> String {
    let mut out = Vec::new();
    for line in s.lines() {
        let mut roff = String::new();
        for (i, part) in line.split('`').enumerate() {
            // Odd parts are inside backticks; after an unpaired backtick the rest of the line
            // is bold.
            if i % 2 == 1 {
                roff.push_str("\\fB");
                roff.push_str(
                    &escape(part)
                        .trim_start_matches("\\&")
                        .replace('\'', "\\(aq"),
                );
                roff.push_str("\\fR");
            } else if roff.is_empty() {
                roff.push_str(&escape(part));
            } else {
                roff.push_str(escape(part).trim_start_matches("\\&"));
            }
        }
        out.push(roff.trim_end().to_owned());
    }
    out.join("\n")
}

/// The paragraphs of a help text (separated by blank lines), each as roff. clap drops the full
/// stop of a one-line help; a man page's sentences get it back.
pub fn paragraphs(s: &str) -> Vec<String> {
    s.split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            if p.ends_with(|c: char| c.is_alphanumeric() || c == ')' || c == '`') {
                text(&format!("{p}."))
            } else {
                text(p)
            }
        })
        .collect()
}

/// The first sentence of a help text, for a NAME line: without its full stop and code marks,
/// and starting in lower case unless it starts with an acronym.
pub fn first_sentence(s: &str) -> String {
    let first = s
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .replace('\n', " ")
        .replace('`', "");
    let end = first
        .match_indices(". ")
        .map(|(i, _)| i)
        .find(|&i| !first[..i].ends_with("e.g") && !first[..i].ends_with("i.e"))
        .unwrap_or(first.len());
    let sentence = first[..end].trim_end_matches('.').trim();
    let mut chars = sentence.chars();
    match (chars.next(), chars.next()) {
        (Some(a), Some(b)) if a.is_uppercase() && !b.is_uppercase() => a
            .to_lowercase()
            .chain(sentence[a.len_utf8()..].chars())
            .collect(),
        _ => sentence.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_requests_backslashes_and_minus_signs() {
        assert_eq!(escape(".hidden"), "\\&.hidden");
        assert_eq!(escape("'quoted"), "\\&'quoted");
        assert_eq!(escape("a\\b --x"), "a\\eb \\-\\-x");
        assert_eq!(escape_arg("say \"hi\""), "say \\(dqhi\\(dq");
    }

    #[test]
    fn code_spans_are_bold_and_lines_stay_lines() {
        assert_eq!(
            text("run `nod pair`\n.now"),
            "run \\fBnod pair\\fR\n\\&.now"
        );
        assert_eq!(text("`.x` y"), "\\fB.x\\fR y");
        assert_eq!(text("open `x"), "open \\fBx\\fR");
        assert_eq!(text("it's `a'b`"), "it's \\fBa\\(aqb\\fR");
    }

    #[test]
    fn paragraphs_end_with_a_full_stop() {
        assert_eq!(
            paragraphs("The id\n\nRun `x`"),
            ["The id.", "Run \\fBx\\fR."]
        );
        assert_eq!(paragraphs("Done?\n\n"), ["Done?"]);
    }

    #[test]
    fn first_sentence_stops_at_the_first_full_stop() {
        assert_eq!(first_sentence("Pair a host. Safe.\n\nMore."), "pair a host");
        assert_eq!(first_sentence("Print the `key`."), "print the key");
        assert_eq!(first_sentence("SSH helpers."), "SSH helpers");
        assert_eq!(first_sentence("Use e.g. this. Then"), "use e.g. this");
    }
}
