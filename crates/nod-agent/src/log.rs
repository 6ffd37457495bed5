//! One line per event on stderr. The agent runs in the foreground, so stderr is where the person
//! (or the systemd journal) reads it; no logging framework is needed for that.

/// Writes one log line. Values that came from the wire must be passed through `{:?}` so a
/// hostile host id cannot inject newlines or terminal escapes into the log.
macro_rules! event {
    ($($arg:tt)*) => {
        eprintln!("nod-agent: {}", format_args!($($arg)*))
    };
}

pub(crate) use event;

/// An error and its causes on one line, `what: cause: cause`, for the command line. A cause
/// whose text the line already holds is left out: most messages here embed their source
/// (`"cannot read {path}: {source}"`) and also return it from `source()`, and printing the
/// whole chain would then say it twice.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
