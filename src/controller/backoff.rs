//! When to look at a LinkToken again, by outcome. Pure; the jitter comes in as a number.
//!
//! - Transient Atlas trouble (5xx, timeouts, RevocationBlocked) backs off exponentially with
//!   jitter, capped, so a sick Atlas is not hammered and a fleet does not retry in lockstep.
//! - 429 waits at least Retry-After when Atlas sends one.
//! - What only a change of the LinkToken can fix is not polled: its watch brings it back.
//! - What a change of the credentials Secret can fix is rechecked on a timer that backs off
//!   (base, doubling, capped at the retry cap): credentials Secrets are read by name, never
//!   watched (so the operator lists and watches no Secret but its own token Secrets). A
//!   recheck is two GETs; Atlas is called again only when the Secret changed, or at the slow
//!   resync (`--resync-interval`).

use std::time::{Duration, Instant};

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
                Some(ra) => {
                    ra.saturating_add(Duration::from_secs_f64(jitter.clamp(0.0, 1.0) * 2.0))
                }
                None => exp,
            })
        }
        // A refused Secret write may clear on its own (a webhook back up, quota freed by
        // others): retried with backoff; the dry-run costs no Atlas call.
        Reason::AtlasUnavailable | Reason::RevocationBlocked | Reason::SecretWriteFailed => {
            Some(exponential(attempts, cfg, jitter))
        }
        // Fixed by a new or corrected credentials Secret (not watched: see above), or in Atlas
        // (the slow resync, decided in `decide`).
        Reason::CredentialsNotFound
        | Reason::CredentialsInvalid
        | Reason::AtlasUnauthorized
        | Reason::AtlasForbidden
        | Reason::OrgNotFound => Some(exponential(attempts, cfg, jitter).min(cfg.resync)),
        // The owner's deletion triggers a takeover directly; the resync is a safety net.
        Reason::OrgConflict | Reason::SecretConflict => Some(cfg.resync),
        Reason::AtlasRejected => None,
    }
}

/// The failures a change of the credentials Secret can end: the operator rechecks them on a
/// timer, since it does not watch credentials Secrets.
pub fn credentials_may_fix(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::CredentialsNotFound
            | Reason::CredentialsInvalid
            | Reason::AtlasUnauthorized
            | Reason::AtlasForbidden
            | Reason::OrgNotFound
    )
}

/// The delay after a failure that carried Retry-After `ra`: never earlier than Atlas asked,
/// never later than the retry cap (`--retry-max-delay`) whatever it asked, never sooner than
/// `floor` (the exponential backoff of this failure streak, so `Retry-After: 0` answered again
/// and again cannot make a hot loop), plus `spread` so a fleet does not come back at once.
/// Retry-After is clamped when parsed already; clamping here again keeps this total for any
/// input (no overflow, no hold of months).
pub fn after_retry_after(
    ra: Duration,
    floor: Duration,
    cfg: &BackoffConfig,
    spread: Duration,
) -> Duration {
    ra.max(floor).min(cfg.max).saturating_add(spread)
}

/// `now + delay`, or a century from now if that does not fit in an `Instant` (never a panic).
pub fn due_in(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
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
    fn absurd_retry_after_values_are_capped_and_never_overflow() {
        let spread = Duration::from_millis(1999);
        for ra in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::from_secs(10 * 365 * 24 * 3600),
        ] {
            let d = after_retry_after(ra, Duration::ZERO, &cfg(), spread);
            assert_eq!(d, Duration::from_secs(60) + spread, "{ra:?}");
            assert!(due_in(Instant::now(), d) > Instant::now());
            let r = requeue_after(Reason::AtlasRateLimited, 1, Some(ra), &cfg(), 0.999);
            assert!(r.is_some(), "{ra:?}");
        }
        assert_eq!(
            after_retry_after(
                Duration::from_secs(3),
                Duration::from_secs(2),
                &cfg(),
                Duration::ZERO
            ),
            Duration::from_secs(3)
        );
        // Retry-After: 0, again and again: the streak's backoff still applies.
        let zero = |n| {
            after_retry_after(
                Duration::ZERO,
                exponential(n, &cfg(), 0.5),
                &cfg(),
                Duration::ZERO,
            )
        };
        assert_eq!(zero(1), Duration::from_secs(2));
        assert_eq!(zero(4), Duration::from_secs(16));
        assert_eq!(zero(100), Duration::from_secs(60));
        // An Instant cannot hold now + Duration::MAX: saturate instead of panicking.
        let now = Instant::now();
        assert!(due_in(now, Duration::MAX) > now + Duration::from_secs(365 * 24 * 3600));
    }

    #[test]
    fn user_fixable_reasons_wait_for_a_change_or_a_slow_resync() {
        assert_eq!(
            requeue_after(Reason::AtlasRejected, 1, None, &cfg(), 0.5),
            None,
            "only a spec change fixes a rejected access list: the LinkToken watch brings it back"
        );
        assert_eq!(
            requeue_after(Reason::OrgConflict, 1, None, &cfg(), 0.5),
            Some(Duration::from_secs(600)),
            "the owner's deletion wakes a waiting LinkToken; the resync is a safety net"
        );
    }

    #[test]
    fn credentials_failures_are_rechecked_on_a_backing_off_timer() {
        for r in [
            Reason::CredentialsNotFound,
            Reason::CredentialsInvalid,
            Reason::AtlasUnauthorized,
            Reason::AtlasForbidden,
            Reason::OrgNotFound,
        ] {
            let at = |n| requeue_after(r, n, None, &cfg(), 0.0).expect("rechecked");
            assert!(at(1) < at(3), "{r}: backs off");
            assert!(
                at(1) <= Duration::from_secs(2),
                "{r}: the first recheck is quick"
            );
            assert!(at(50) <= cfg().max, "{r}: capped at the retry cap");
            assert!(at(50) <= cfg().resync, "{r}: never later than the resync");
        }
    }
}
