//! `ssh-add -x` / `-X`: the agent locked with a passphrase, and guessing it made slow.
//!
//! The passphrase is kept only as an argon2id hash (memory-hard, so a copy of the agent's
//! memory does not give it away cheaply), and wrong guesses are throttled for the whole agent,
//! not per connection: attempts are served one at a time, each failure doubles the wait before
//! the next attempt (1 s, 2 s, … up to 10 s, as OpenSSH's agent does), and after
//! [`LOCKOUT_AFTER`] failures in a row unlocking is refused for [`LOCKOUT`].

use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, Version};
use subtle::ConstantTimeEq;
use tokio::time::Instant;
use zeroize::Zeroizing;

/// Failures in a row after which unlocking is refused for a while.
pub const LOCKOUT_AFTER: u32 = 10;
/// How long unlocking is refused after that.
pub const LOCKOUT: Duration = Duration::from_secs(600);
/// The longest wait after a failure.
const MAX_DELAY: Duration = Duration::from_secs(10);

/// argon2id with 19 MiB and two passes (OWASP's first recommendation): about 30 ms here.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, Some(32)).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The argon2id hash of the lock passphrase; compared in constant time.
#[derive(Debug)]
pub struct LockHash {
    salt: [u8; 16],
    hash: Zeroizing<[u8; 32]>,
}

fn digest(salt: &[u8; 16], passphrase: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    argon2()
        .hash_password_into(passphrase, salt, out.as_mut())
        .ok()?;
    Some(out)
}

impl LockHash {
    /// Hashes `passphrase` (blocking, tens of milliseconds); `None` if hashing failed, in which
    /// case the agent is not locked.
    pub fn new(passphrase: &[u8]) -> Option<Self> {
        let mut salt = [0u8; 16];
        getrandom::getrandom(&mut salt).ok()?;
        Some(Self {
            salt,
            hash: digest(&salt, passphrase)?,
        })
    }

    /// Whether `passphrase` is the one (blocking, as long as [`LockHash::new`]).
    pub fn matches(&self, passphrase: &[u8]) -> bool {
        digest(&self.salt, passphrase).is_some_and(|other| bool::from(self.hash.ct_eq(&*other)))
    }
}

/// What an unlock attempt may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Try, after waiting until then.
    TryAt(Instant),
    /// Refused without trying: too many failures in a row, until then.
    LockedOut(Instant),
}

/// Failures of unlocking, for the whole agent.
#[derive(Debug, Default)]
pub struct Throttle {
    failures: u32,
    next_try: Option<Instant>,
    locked_out_until: Option<Instant>,
}

impl Throttle {
    /// When the next attempt may be made.
    pub fn admit(&self, now: Instant) -> Admission {
        if let Some(until) = self.locked_out_until
            && until > now
        {
            return Admission::LockedOut(until);
        }
        Admission::TryAt(self.next_try.map_or(now, |t| t.max(now)))
    }

    /// Records a failed attempt at `now`; true when it starts a lockout.
    pub fn failed(&mut self, now: Instant) -> bool {
        self.failures += 1;
        let exp = self.failures.saturating_sub(1).min(10);
        let delay = Duration::from_secs(1u64 << exp).min(MAX_DELAY);
        self.next_try = Some(now + delay);
        if self.failures >= LOCKOUT_AFTER {
            self.locked_out_until = Some(now + LOCKOUT);
            self.failures = 0;
            return true;
        }
        false
    }

    /// A successful unlock clears the record.
    pub fn succeeded(&mut self) {
        *self = Self::default();
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_passphrase_matches_only_itself() {
        let hash = LockHash::new(b"correct horse").unwrap();
        assert!(hash.matches(b"correct horse"));
        assert!(!hash.matches(b"correct hors"));
        assert!(!hash.matches(b""));
    }

    #[test]
    fn each_failure_doubles_the_wait_up_to_ten_seconds_then_locks_out() {
        let t0 = Instant::now();
        let mut t = Throttle::default();
        assert_eq!(t.admit(t0), Admission::TryAt(t0));
        let mut waits = Vec::new();
        for i in 0..LOCKOUT_AFTER - 1 {
            assert!(!t.failed(t0));
            let Admission::TryAt(at) = t.admit(t0) else {
                panic!("locked out after {i} failures")
            };
            waits.push((at - t0).as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 10, 10, 10, 10, 10]);
        assert!(t.failed(t0));
        assert!(matches!(t.admit(t0), Admission::LockedOut(_)));
        assert!(matches!(
            t.admit(t0 + LOCKOUT + Duration::from_secs(11)),
            Admission::TryAt(_)
        ));
        t.succeeded();
        assert_eq!(t.failures(), 0);
    }
}
