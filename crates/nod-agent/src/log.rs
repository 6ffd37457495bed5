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
