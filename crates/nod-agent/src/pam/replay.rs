//! Replay cache (docs/design.md §1, check 6): a request signature is remembered until the request
//! expires, so a captured request cannot be sent again to trigger a second prompt while it is
//! still fresh. After expiry the freshness check already refuses it.
//!
//! Each pinned host has a share of its own: a host that fills its share (it has the host key,
//! so it can sign as many requests as it likes) is refused, and the others are not. Only
//! requests whose signature verified under a pinned key get here, so the number of shares is
//! bounded by the allowlist.

use std::collections::{BTreeSet, HashMap};

/// Signatures remembered at most per host. A full share refuses new requests instead of
/// forgetting old ones, because forgetting one would let it be replayed. At the rate limit's
/// 20 prompts a minute and requests of at most ten minutes, a host needs 200.
pub const DEFAULT_SHARE: usize = 2_048;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// This signature was already seen and has not expired.
    Replayed,
    /// This host has too many live requests remembered already.
    Full,
}

#[derive(Debug, Default)]
struct Share {
    seen: HashMap<[u8; 64], u64>,
    by_expiry: BTreeSet<(u64, [u8; 64])>,
}

impl Share {
    /// Forgets every entry whose request has expired (`now > expires_at_ms`, as in the
    /// freshness check).
    fn purge(&mut self, now_ms: u64) {
        while let Some(&(expiry, sig)) = self.by_expiry.first() {
            if expiry >= now_ms {
                break;
            }
            self.by_expiry.pop_first();
            self.seen.remove(&sig);
        }
    }
}

/// Request signatures seen, with their expiry, per host.
#[derive(Debug)]
pub struct ReplayCache {
    share: usize,
    hosts: HashMap<String, Share>,
}

impl ReplayCache {
    /// A cache keeping at most `share` live signatures per host.
    pub fn new(share: usize) -> Self {
        Self {
            share,
            hosts: HashMap::new(),
        }
    }

    /// Records `signature` of a request from `host` until `expires_at_ms`, or refuses it if
    /// it is already recorded, or if the host's share is full.
    pub fn check_and_insert(
        &mut self,
        host: &str,
        signature: &[u8; 64],
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), ReplayError> {
        let share = self.hosts.entry(host.to_owned()).or_default();
        share.purge(now_ms);
        if share.seen.contains_key(signature) {
            return Err(ReplayError::Replayed);
        }
        if share.seen.len() >= self.share {
            return Err(ReplayError::Full);
        }
        share.seen.insert(*signature, expires_at_ms);
        share.by_expiry.insert((expires_at_ms, *signature));
        Ok(())
    }

    /// Live signatures remembered, over all hosts.
    pub fn len(&self) -> usize {
        self.hosts.values().map(|s| s.seen.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_signature_until_it_expires() {
        let mut cache = ReplayCache::new(10);
        let sig = [1u8; 64];
        assert_eq!(cache.check_and_insert("h", &sig, 1000, 0), Ok(()));
        assert_eq!(
            cache.check_and_insert("h", &sig, 1000, 500),
            Err(ReplayError::Replayed)
        );
        assert_eq!(
            cache.check_and_insert("h", &sig, 1000, 1000),
            Err(ReplayError::Replayed)
        );
        assert_eq!(cache.check_and_insert("h", &sig, 2000, 1001), Ok(()));
    }

    #[test]
    fn a_full_share_refuses_only_its_host_and_never_forgets() {
        let mut cache = ReplayCache::new(2);
        cache.check_and_insert("noisy", &[1; 64], 100, 0).unwrap();
        cache.check_and_insert("noisy", &[2; 64], 200, 0).unwrap();
        assert_eq!(
            cache.check_and_insert("noisy", &[3; 64], 300, 0),
            Err(ReplayError::Full)
        );
        assert_eq!(
            cache.check_and_insert("noisy", &[1; 64], 100, 50),
            Err(ReplayError::Replayed)
        );
        // Another host is not affected.
        assert_eq!(cache.check_and_insert("quiet", &[3; 64], 300, 0), Ok(()));
        // Once the first expires there is room again.
        assert_eq!(cache.check_and_insert("noisy", &[3; 64], 300, 101), Ok(()));
        assert_eq!(cache.len(), 3);
    }
}
