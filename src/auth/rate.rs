//! Each identity's request rate, as a token bucket: `rate` requests a second on average,
//! `burst` at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// A request rate: `per_second` on average, up to `burst` at once. 0 per second: no limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// The buckets of every identity seen, by identity key.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// How many buckets are kept before idle ones are dropped (a full bucket is no different
/// from a new one, so forgetting it changes nothing).
const MAX_BUCKETS: usize = 4096;

impl RateLimiter {
    /// Takes one request from `key`'s bucket; false when it is empty.
    pub fn admit(&self, key: &str, rate: Rate, now: Instant) -> bool {
        if rate.per_second <= 0.0 {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.at).as_secs_f64() * rate.per_second < rate.burst
            });
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * rate.per_second;
        bucket.tokens = (bucket.tokens + refill).min(rate.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_is_admitted_then_the_rate_refills() {
        let limiter = RateLimiter::default();
        let rate = Rate {
            per_second: 10.0,
            burst: 3.0,
        };
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.admit("a", rate, t0)));
        assert!(!limiter.admit("a", rate, t0));
        assert!(limiter.admit("b", rate, t0), "buckets are per identity");
        assert!(limiter.admit("a", rate, t0 + Duration::from_millis(100)));
        assert!(!limiter.admit("a", rate, t0 + Duration::from_millis(100)));
        let unlimited = Rate {
            per_second: 0.0,
            burst: 0.0,
        };
        assert!((0..1000).all(|_| limiter.admit("c", unlimited, t0)));
    }
}
