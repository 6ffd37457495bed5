//! When a signature needs the person (docs/design.md §2 "Approval policy per key").
//!
//! - `always`: every signature is approved.
//! - `remember`: one approval grants signatures for the same key × caller × destination until
//!   the grant's TTL runs out. The caller is the program (`/proc/<pid>/exe`) plus its session
//!   id and controlling tty (`/proc/<pid>/stat`), so the same `ssh` binary in another terminal
//!   or session is asked again.
//! - `never`: no prompt, as with OpenSSH's agent.
//!
//! Keys added with plain `ssh-add` are `never`, or `always` with `-c`. Persistent keys carry
//! the policy set with `nod keys policy`.
//!
//! Identical requests that arrive while one is being prompted for (same key, caller,
//! destination and data, [`request_id`]) share that prompt, and prompts are rate-limited per
//! key × caller ([`rate_key`]); both are done by the decision core.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

pub use crate::caller::chain::{CallerScope, parse_stat};
pub use crate::duration::{format_duration, parse_duration};
pub use crate::keystore::ssh::{DEFAULT_REMEMBER_TTL, Policy};
use crate::lock;

/// Grants kept before expired ones are swept.
const MAX_GRANTS: usize = 4096;

/// What a `remember` grant covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrantScope {
    /// The key's public blob.
    pub key: Vec<u8>,
    pub caller: CallerScope,
    /// The verified session-bind host key of the connection, when there is one.
    pub destination: Option<Vec<u8>>,
}

/// A request's identity for sharing one prompt among identical concurrent requests.
pub fn request_id(scope: &GrantScope, data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        &scope.key[..],
        scope.caller.exe.as_deref().unwrap_or("").as_bytes(),
        &scope.caller.session.unwrap_or(-1).to_be_bytes(),
        &scope.caller.tty.unwrap_or(-1).to_be_bytes(),
        scope.destination.as_deref().unwrap_or(b""),
        data,
    ] {
        h.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The live `remember` grants of one agent.
#[derive(Debug, Default)]
pub struct Approvals {
    grants: Mutex<HashMap<GrantScope, Instant>>,
}

impl Approvals {
    /// Whether a live grant covers `scope`.
    pub fn granted(&self, scope: &GrantScope, now: Instant) -> bool {
        scope.caller.known()
            && lock(&self.grants)
                .get(scope)
                .is_some_and(|until| *until > now)
    }

    /// Remembers an approval for `ttl`.
    pub fn grant(&self, scope: GrantScope, ttl: Duration, now: Instant) {
        if !scope.caller.known() {
            return;
        }
        let mut grants = lock(&self.grants);
        if grants.len() >= MAX_GRANTS {
            grants.retain(|_, until| *until > now);
        }
        grants.insert(scope, now + ttl);
    }

    /// Forgets every grant for `key` (its policy changed or it was removed).
    pub fn revoke_key(&self, key: &[u8]) {
        lock(&self.grants).retain(|scope, _| scope.key != key);
    }

    /// Forgets every grant (the keystore changed).
    pub fn revoke_all(&self) {
        lock(&self.grants).clear();
    }
}

/// The prompt rate-limit bucket of a request: key × caller, so a looping client cannot wear
/// the person down.
pub fn rate_key(scope: &GrantScope) -> String {
    format!(
        "{}|{}|{:?}|{:?}",
        hex::encode(&scope.key),
        scope.caller.exe.as_deref().unwrap_or(""),
        scope.caller.session,
        scope.caller.tty
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(exe: &str) -> GrantScope {
        GrantScope {
            key: vec![1, 2, 3],
            caller: CallerScope {
                exe: Some(exe.into()),
                session: Some(7),
                tty: Some(34816),
            },
            destination: None,
        }
    }

    #[test]
    fn policy_words_and_ttls_parse() {
        assert_eq!(Policy::parse("always", None), Ok(Policy::Always));
        assert_eq!(Policy::parse("never", None), Ok(Policy::Never));
        assert_eq!(
            Policy::parse("remember", None),
            Ok(Policy::Remember(DEFAULT_REMEMBER_TTL))
        );
        assert_eq!(
            Policy::parse("remember", Some(Duration::from_secs(5))).map(|p| p.to_string()),
            Ok("remember 5s".into())
        );
        assert!(Policy::parse("never", Some(Duration::from_secs(5))).is_err());
        assert!(Policy::parse("sometimes", None).is_err());
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("8h"), Ok(Duration::from_secs(8 * 3600)));
        assert!(parse_duration("8x").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(61)), "61s");
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "1234 (a) b (c)) S 1 1234 1200 34817 1234 4194304 0";
        assert_eq!(parse_stat(stat), Some((1200, 34817)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn grant_covers_only_its_scope_and_time() {
        let approvals = Approvals::default();
        let now = Instant::now();
        approvals.grant(scope("/usr/bin/ssh"), Duration::from_secs(10), now);
        assert!(approvals.granted(&scope("/usr/bin/ssh"), now));
        assert!(!approvals.granted(&scope("/usr/bin/git"), now));
        let mut other_tty = scope("/usr/bin/ssh");
        other_tty.caller.tty = Some(1);
        assert!(!approvals.granted(&other_tty, now));
        assert!(!approvals.granted(&scope("/usr/bin/ssh"), now + Duration::from_secs(11)));
        approvals.revoke_key(&[1, 2, 3]);
        assert!(!approvals.granted(&scope("/usr/bin/ssh"), now));
    }

    #[test]
    fn unknown_callers_get_no_grant() {
        let approvals = Approvals::default();
        let mut s = scope("/usr/bin/ssh");
        s.caller.exe = None;
        approvals.grant(s.clone(), Duration::from_secs(10), Instant::now());
        assert!(!approvals.granted(&s, Instant::now()));
    }
}
