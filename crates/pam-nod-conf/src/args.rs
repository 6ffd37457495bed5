//! The module arguments: `conf=PATH`, `helper=PATH`, `timeout_ms=N` and `debug`.
//!
//! An unknown, repeated or malformed argument is an error, never ignored: a typo must not
//! quietly change what the line means (`debg` would otherwise turn debugging off, and a
//! misspelt `conf=` key would fall back to the default config).

use std::fmt;
use std::path::PathBuf;

/// Default `conf=`.
pub const DEFAULT_CONF: &str = "/etc/nod/config.toml";
/// Default `helper=`.
pub const DEFAULT_HELPER: &str = "/usr/bin/nod-helper";
/// Default `timeout_ms=`.
pub const DEFAULT_TIMEOUT_MS: u32 = 30_000;
/// Largest accepted `timeout_ms=`: five minutes is already longer than anyone waits at a prompt.
pub const MAX_TIMEOUT_MS: u32 = 300_000;

/// The parsed module arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub conf: PathBuf,
    pub helper: PathBuf,
    pub timeout_ms: u32,
    pub debug: bool,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            conf: PathBuf::from(DEFAULT_CONF),
            helper: PathBuf::from(DEFAULT_HELPER),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            debug: false,
        }
    }
}

/// A module argument that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    Unknown(String),
    Repeated(String),
    NotUtf8,
    NotAbsolute { name: &'static str, value: String },
    BadTimeout(String),
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(a) => write!(
                f,
                "unknown module argument {a:?} — valid arguments are conf=PATH, helper=PATH, \
                 timeout_ms=N and debug; fix the pam_nod.so line in /etc/pam.d"
            ),
            Self::Repeated(a) => write!(
                f,
                "module argument {a:?} is given more than once — keep one in the pam_nod.so line"
            ),
            Self::NotUtf8 => write!(
                f,
                "a module argument is not valid UTF-8 — fix the pam_nod.so line in /etc/pam.d"
            ),
            Self::NotAbsolute { name, value } => write!(
                f,
                "{name}={value:?} is not an absolute path — use a full path starting with /"
            ),
            Self::BadTimeout(v) => write!(
                f,
                "timeout_ms={v:?} is not a whole number of milliseconds in 1..={MAX_TIMEOUT_MS} \
                 — e.g. timeout_ms=30000"
            ),
        }
    }
}

impl std::error::Error for ArgError {}

/// Parses the module arguments, each as the bytes PAM passes. Every argument must be known,
/// and given at most once.
pub fn parse_args<'a>(args: impl IntoIterator<Item = &'a [u8]>) -> Result<Args, ArgError> {
    let mut out = Args::default();
    let (mut conf, mut helper, mut timeout, mut debug) = (false, false, false, false);
    for arg in args {
        let arg = std::str::from_utf8(arg).map_err(|_| ArgError::NotUtf8)?;
        let (key, value) = match arg.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (arg, None),
        };
        let seen = match (key, value) {
            ("conf", Some(v)) => {
                out.conf = absolute("conf", v)?;
                &mut conf
            }
            ("helper", Some(v)) => {
                out.helper = absolute("helper", v)?;
                &mut helper
            }
            ("timeout_ms", Some(v)) => {
                out.timeout_ms = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_TIMEOUT_MS).contains(n))
                    .ok_or_else(|| ArgError::BadTimeout(v.to_owned()))?;
                &mut timeout
            }
            ("debug", None) => {
                out.debug = true;
                &mut debug
            }
            _ => return Err(ArgError::Unknown(arg.to_owned())),
        };
        if std::mem::replace(seen, true) {
            return Err(ArgError::Repeated(key.to_owned()));
        }
    }
    Ok(out)
}

fn absolute(name: &'static str, value: &str) -> Result<PathBuf, ArgError> {
    if value.starts_with('/') {
        Ok(PathBuf::from(value))
    } else {
        Err(ArgError::NotAbsolute {
            name,
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(args: &[&str]) -> Result<Args, ArgError> {
        parse_args(args.iter().map(|a| a.as_bytes()))
    }

    #[test]
    fn no_args_give_the_documented_defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.conf, Path::new("/etc/nod/config.toml"));
        assert_eq!(a.helper, Path::new("/usr/bin/nod-helper"));
        assert_eq!(a.timeout_ms, 30_000);
        assert!(!a.debug);
    }

    #[test]
    fn all_args_are_parsed() {
        let a = parse(&[
            "conf=/etc/nod/other.toml",
            "helper=/opt/nod/bin/nod-helper",
            "timeout_ms=5000",
            "debug",
        ])
        .unwrap();
        assert_eq!(
            a,
            Args {
                conf: "/etc/nod/other.toml".into(),
                helper: "/opt/nod/bin/nod-helper".into(),
                timeout_ms: 5000,
                debug: true,
            }
        );
    }

    #[test]
    fn unknown_or_misspelt_args_are_refused() {
        for bad in [
            "debg",
            "timeout=5000",
            "conf",
            "helper",
            "debug=1",
            "",
            "Conf=/x",
        ] {
            assert!(
                matches!(parse(&[bad]), Err(ArgError::Unknown(_))),
                "{bad:?} was accepted"
            );
        }
        let msg = parse(&["debg"]).unwrap_err().to_string();
        assert!(msg.contains("debg") && msg.contains("conf=PATH"), "{msg}");
    }

    #[test]
    fn repeated_args_are_refused() {
        assert_eq!(
            parse(&["debug", "debug"]).unwrap_err(),
            ArgError::Repeated("debug".into())
        );
        assert_eq!(
            parse(&["conf=/a", "conf=/b"]).unwrap_err(),
            ArgError::Repeated("conf".into())
        );
    }

    #[test]
    fn relative_paths_are_refused() {
        assert!(matches!(
            parse(&["helper=nod-helper"]),
            Err(ArgError::NotAbsolute { name: "helper", .. })
        ));
        assert!(matches!(
            parse(&["conf=etc/nod/config.toml"]),
            Err(ArgError::NotAbsolute { name: "conf", .. })
        ));
        assert!(matches!(
            parse(&["conf="]),
            Err(ArgError::NotAbsolute { .. })
        ));
    }

    #[test]
    fn timeout_must_be_in_range() {
        assert_eq!(parse(&["timeout_ms=1"]).unwrap().timeout_ms, 1);
        assert_eq!(parse(&["timeout_ms=300000"]).unwrap().timeout_ms, 300_000);
        for bad in [
            "0",
            "300001",
            "-1",
            "1e3",
            "",
            " 5",
            "99999999999",
            "3O000",
            "30s",
        ] {
            let arg = format!("timeout_ms={bad}");
            assert_eq!(
                parse(&[&arg]).unwrap_err(),
                ArgError::BadTimeout(bad.into()),
                "{arg}"
            );
        }
    }

    #[test]
    fn non_utf8_arg_is_refused() {
        let arg: &[u8] = b"conf=/\xff";
        assert_eq!(parse_args([arg]).unwrap_err(), ArgError::NotUtf8);
    }
}
