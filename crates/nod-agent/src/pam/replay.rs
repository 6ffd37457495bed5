//! Replay cache (docs/design.md §1, check 6): a request signature is remembered until the request
//! expires, so a captured request cannot be sent again to trigger a second prompt while it is
//! still fresh. After expiry the freshness check already refuses it.

use std::collections::{BTreeSet, HashMap};

/// Signatures remembered at most. A full cache refuses new requests instead of forgetting old
/// ones, because forgetting one would let it be replayed.
pub const DEFAULT_CAPACITY: usize = 16_384;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// This signature was already seen and has not expired.
    Replayed,
    /// Too many live requests are remembered already.
    Full,
}

/// Request signatures seen, with their expiry.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    seen: HashMap<[u8; 64], u64>,
    by_expiry: BTreeSet<(u64, [u8; 64])>,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    /// Records `signature` until `expires_at_ms`, or refuses it if it is already recorded.
    pub fn check_and_insert(
        &mut self,
        signature: &[u8; 64],
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), ReplayError> {
        self.purge(now_ms);
        if self.seen.contains_key(signature) {
            return Err(ReplayError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(ReplayError::Full);
        }
        self.seen.insert(*signature, expires_at_ms);
        self.by_expiry.insert((expires_at_ms, *signature));
        Ok(())
    }

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

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_signature_until_it_expires() {
        let mut cache = ReplayCache::new(10);
        let sig = [1u8; 64];
        assert_eq!(cache.check_and_insert(&sig, 1000, 0), Ok(()));
        assert_eq!(
            cache.check_and_insert(&sig, 1000, 500),
            Err(ReplayError::Replayed)
        );
        assert_eq!(
            cache.check_and_insert(&sig, 1000, 1000),
            Err(ReplayError::Replayed)
        );
        assert_eq!(cache.check_and_insert(&sig, 2000, 1001), Ok(()));
    }

    #[test]
    fn full_cache_refuses_instead_of_forgetting() {
        let mut cache = ReplayCache::new(2);
        cache.check_and_insert(&[1; 64], 100, 0).unwrap();
        cache.check_and_insert(&[2; 64], 200, 0).unwrap();
        assert_eq!(
            cache.check_and_insert(&[3; 64], 300, 0),
            Err(ReplayError::Full)
        );
        assert_eq!(
            cache.check_and_insert(&[1; 64], 100, 50),
            Err(ReplayError::Replayed)
        );
        // Once the first expires there is room again.
        assert_eq!(cache.check_and_insert(&[3; 64], 300, 101), Ok(()));
        assert_eq!(cache.len(), 2);
    }
}
