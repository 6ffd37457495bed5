//! Rate limit per host|service|user (docs/design.md §1, check 7): a token bucket, so a burst of a
//! few prompts is fine but a host cannot flood the person with prompts until one is approved
//! by mistake.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Buckets kept before full (idle) ones are forgotten.
const MAX_BUCKETS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets keyed by a caller string.
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    per_second: f64,
    buckets: HashMap<String, Bucket>,
}

impl RateLimiter {
    /// `burst` requests at once, refilled at `per_minute`.
    pub fn new(burst: u32, per_minute: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_minute.max(1)) / 60.0,
            buckets: HashMap::new(),
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }

    /// Takes one token from `key`'s bucket; false when it is empty.
    pub fn try_take(&mut self, key: &str, now: Instant) -> bool {
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(key) {
            self.forget_full(now);
        }
        let bucket = self.buckets.get(key).copied().unwrap_or(Bucket {
            tokens: self.burst,
            at: now,
        });
        let tokens = self.refilled(bucket, now);
        let allowed = tokens >= 1.0;
        self.buckets.insert(
            key.to_owned(),
            Bucket {
                tokens: if allowed { tokens - 1.0 } else { tokens },
                at: now,
            },
        );
        allowed
    }

    /// Drops buckets that have refilled completely: they are the same as a new bucket.
    fn forget_full(&mut self, now: Instant) {
        let burst = self.burst;
        let per_second = self.per_second;
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + elapsed * per_second < burst
        });
    }

    /// Time until `key` may go again (zero if it may now).
    pub fn retry_after(&self, key: &str, now: Instant) -> Duration {
        let Some(bucket) = self.buckets.get(key) else {
            return Duration::ZERO;
        };
        let missing = 1.0 - self.refilled(*bucket, now);
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_refills_at_the_rate() {
        let mut rl = RateLimiter::new(3, 60);
        let t0 = Instant::now();
        assert!((0..3).all(|_| rl.try_take("h|sudo|alice", t0)));
        assert!(!rl.try_take("h|sudo|alice", t0));
        assert!(rl.retry_after("h|sudo|alice", t0) > Duration::ZERO);
        // Another user on the same host has a bucket of their own.
        assert!(rl.try_take("h|sudo|bob", t0));
        // 60/min is one per second.
        assert!(!rl.try_take("h|sudo|alice", t0 + Duration::from_millis(500)));
        assert!(rl.try_take("h|sudo|alice", t0 + Duration::from_millis(1600)));
        assert!(!rl.try_take("h|sudo|alice", t0 + Duration::from_millis(1700)));
    }

    #[test]
    fn refill_never_exceeds_the_burst() {
        let mut rl = RateLimiter::new(2, 60);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3600);
        assert!(rl.try_take("k", t0));
        assert!(rl.try_take("k", later));
        assert!(rl.try_take("k", later));
        assert!(!rl.try_take("k", later));
    }

    #[test]
    fn forgets_idle_buckets_when_many() {
        let mut rl = RateLimiter::new(1, 60);
        let t0 = Instant::now();
        for i in 0..MAX_BUCKETS {
            assert!(rl.try_take(&format!("k{i}"), t0));
        }
        let later = t0 + Duration::from_secs(5);
        assert!(rl.try_take("new", later));
        assert!(rl.buckets.len() < MAX_BUCKETS);
    }
}
