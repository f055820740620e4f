//! Per-org token bucket, as Atlas documents for the Cloud Migration Service endpoint set
//! (capacity 500, refill 250 per 60 s, shared by POST and DELETE).

use std::time::Instant;

use super::config::RateLimitConfig;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    refill_per_sec: f64,
    tokens: f64,
    last: Instant,
}

/// Outcome of taking one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Allowed; `remaining` whole tokens are left.
    Allowed { limit: u32, remaining: u32 },
    /// Refused; a token will be available in `retry_after` seconds (rounded up, at least 1).
    Limited { limit: u32, retry_after: u64 },
}

impl TokenBucket {
    pub fn new(config: RateLimitConfig, now: Instant) -> Self {
        let capacity = f64::from(config.capacity);
        Self {
            capacity,
            refill_per_sec: f64::from(config.refill_per_minute) / 60.0,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.refill_per_sec).min(self.capacity);
        self.last = now;
    }

    pub fn limit(&self) -> u32 {
        // Capacity came from a u32, so the cast cannot truncate.
        self.capacity as u32
    }

    pub fn remaining(&mut self, now: Instant) -> u32 {
        self.refill(now);
        self.tokens.floor() as u32
    }

    pub fn try_take(&mut self, now: Instant) -> Take {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Take::Allowed {
                limit: self.limit(),
                remaining: self.tokens.floor() as u32,
            }
        } else {
            let wait = (1.0 - self.tokens) / self.refill_per_sec;
            Take::Limited {
                limit: self.limit(),
                retry_after: (wait.ceil() as u64).max(1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn drains_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            RateLimitConfig {
                capacity: 2,
                refill_per_minute: 60,
            },
            t0,
        );
        assert_eq!(
            b.try_take(t0),
            Take::Allowed {
                limit: 2,
                remaining: 1
            }
        );
        assert_eq!(
            b.try_take(t0),
            Take::Allowed {
                limit: 2,
                remaining: 0
            }
        );
        assert_eq!(
            b.try_take(t0),
            Take::Limited {
                limit: 2,
                retry_after: 1
            }
        );
        assert!(matches!(
            b.try_take(t0 + Duration::from_millis(1100)),
            Take::Allowed { .. }
        ));
    }
}
