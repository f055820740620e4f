//! When to look at a LinkToken again, by outcome. Pure; the jitter comes in as a number.
//!
//! - Transient Atlas trouble (5xx, timeouts, RevocationBlocked) backs off exponentially with
//!   jitter, capped, so a sick Atlas is not hammered and a fleet does not retry in lockstep.
//! - 429 waits at least Retry-After when Atlas sends one.
//! - What only a user can fix is not polled: the watches on the LinkToken and its Secrets
//!   bring it back; a few reasons also get the slow resync the contract asks for.

use std::time::Duration;

use crate::api::Reason;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// First retry delay for transient failures.
    pub base: Duration,
    /// Cap for transient failures.
    pub max: Duration,
    /// Periodic resync of healthy LinkTokens, and the slow resync of some stalled ones.
    pub resync: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_secs(2),
            max: Duration::from_secs(300),
            resync: Duration::from_secs(600),
        }
    }
}

/// Requeue delay after an outcome; None = wait for a watch event only.
/// `attempts` counts consecutive transient failures (1 for the first); `jitter` is in [0, 1).
pub fn requeue_after(
    reason: Reason,
    attempts: u32,
    retry_after: Option<Duration>,
    cfg: &BackoffConfig,
    jitter: f64,
) -> Option<Duration> {
    match reason {
        Reason::TokenIssued => Some(cfg.resync),
        Reason::Issuing => Some(Duration::from_secs(1)),
        Reason::AtlasRateLimited => {
            let exp = exponential(attempts, cfg, jitter);
            Some(match retry_after {
                // Never earlier than Atlas asked; a little spread so a fleet does not return at once.
                Some(ra) => ra + Duration::from_secs_f64(jitter * 2.0),
                None => exp,
            })
        }
        // A refused Secret write may clear on its own (a webhook back up, quota freed by
        // others): retried with backoff; the dry-run costs no Atlas call.
        Reason::AtlasUnavailable | Reason::RevocationBlocked | Reason::SecretWriteFailed => {
            Some(exponential(attempts, cfg, jitter))
        }
        // Contract: "slow resync" for these (credentials may be fixed in Atlas, not in the cluster).
        Reason::AtlasUnauthorized | Reason::AtlasForbidden | Reason::OrgNotFound => {
            Some(cfg.resync)
        }
        // The owner's deletion triggers a takeover directly; the resync is a safety net.
        Reason::OrgConflict | Reason::SecretConflict => Some(cfg.resync),
        Reason::AtlasRejected | Reason::CredentialsNotFound | Reason::CredentialsInvalid => None,
    }
}

/// base * 2^(attempts-1), capped, then scaled into [0.8, 1.2) by the jitter.
pub fn exponential(attempts: u32, cfg: &BackoffConfig, jitter: f64) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    let raw = cfg.base.saturating_mul(1u32 << exp).min(cfg.max);
    raw.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
            resync: Duration::from_secs(600),
        }
    }

    #[test]
    fn transient_failures_back_off_exponentially_up_to_the_cap() {
        let d = |n| requeue_after(Reason::AtlasUnavailable, n, None, &cfg(), 0.5).unwrap();
        assert_eq!(d(1), Duration::from_secs(2));
        assert_eq!(d(2), Duration::from_secs(4));
        assert_eq!(d(5), Duration::from_secs(32));
        assert_eq!(d(6), Duration::from_secs(60));
        assert_eq!(d(1000), Duration::from_secs(60));
    }

    #[test]
    fn jitter_spreads_within_twenty_percent() {
        let lo = requeue_after(Reason::RevocationBlocked, 3, None, &cfg(), 0.0).unwrap();
        let hi = requeue_after(Reason::RevocationBlocked, 3, None, &cfg(), 0.999).unwrap();
        assert_eq!(lo, Duration::from_secs_f64(6.4));
        assert!(hi < Duration::from_secs_f64(9.6) && hi > Duration::from_secs_f64(9.5));
    }

    #[test]
    fn rate_limits_honour_retry_after() {
        let d = requeue_after(
            Reason::AtlasRateLimited,
            1,
            Some(Duration::from_secs(55)),
            &cfg(),
            0.0,
        );
        assert_eq!(d, Some(Duration::from_secs(55)));
        let d = requeue_after(
            Reason::AtlasRateLimited,
            1,
            Some(Duration::from_secs(120)),
            &cfg(),
            0.0,
        );
        assert_eq!(d, Some(Duration::from_secs(120)), "even beyond the cap");
        let d = requeue_after(Reason::AtlasRateLimited, 3, None, &cfg(), 0.5);
        assert_eq!(d, Some(Duration::from_secs(8)), "no Retry-After: backoff");
    }

    #[test]
    fn user_fixable_reasons_wait_for_a_change_or_a_slow_resync() {
        for r in [
            Reason::AtlasRejected,
            Reason::CredentialsNotFound,
            Reason::CredentialsInvalid,
        ] {
            assert_eq!(requeue_after(r, 1, None, &cfg(), 0.5), None, "{r}");
        }
        for r in [
            Reason::AtlasUnauthorized,
            Reason::AtlasForbidden,
            Reason::OrgNotFound,
            Reason::OrgConflict,
        ] {
            assert_eq!(
                requeue_after(r, 1, None, &cfg(), 0.5),
                Some(Duration::from_secs(600)),
                "{r}"
            );
        }
    }
}
