//! When to look at a LinkToken again, by outcome. Pure; the jitter comes in as a number.
//!
//! One policy, one path: an outcome becomes a [`Retry`] (an Atlas failure from its
//! `classify` hint unless fixed credentials could end it, anything else from its Ready
//! reason), and [`delay`] turns it and the
//! object's failure streak into a duration. `act`, `cleanup` and the controller's error
//! policy all go through `Context::retry_in`, which counts the streak and supplies the jitter.
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
use crate::atlas::{Classification, RetryHint};

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

/// When to look at a LinkToken again, as the retry policy sees an outcome. Built from an
/// Atlas failure's [`RetryHint`] (`classify`), or from the Ready reason of an outcome that
/// called nothing ([`Retry::for_reason`]); [`delay`] turns it into a duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Only a change of the LinkToken can help: no timer, its watch brings it back.
    OnChange,
    /// The slow resync (`--resync-interval`): healthy objects, and causes that may change in
    /// Atlas or elsewhere without an event here.
    Resync,
    /// A fixed short delay: something else is about to change (a claim being announced, an
    /// org's owner being deleted, our own write that lost a race).
    Soon(Duration),
    /// Transient trouble: exponential backoff over the failure streak, with jitter, capped.
    Backoff,
    /// Transient trouble with Retry-After: see [`after_retry_after`].
    After(Duration),
    /// A cause a new credentials Secret can end (not watched): rechecked on a timer that backs
    /// off over the streak, never later than the resync.
    Recheck,
}

impl Retry {
    /// The policy for an Atlas failure, from its classification.
    pub fn from_hint(hint: RetryHint) -> Retry {
        match hint {
            RetryHint::WaitForChange => Retry::OnChange,
            RetryHint::SlowResync => Retry::Resync,
            RetryHint::Backoff => Retry::Backoff,
            RetryHint::After(d) => Retry::After(d),
        }
    }

    /// The policy for a failed Atlas call classified as `class`. Atlas's hint says when Atlas
    /// itself may answer differently; where the fix may also be a new or corrected
    /// credentials Secret, which this controller reads but does not watch, the recheck timer
    /// of [`Retry::for_reason`] wins: otherwise fixed credentials would wait for the slow
    /// resync (or for an unrelated watch event) to be noticed.
    pub fn for_atlas_failure(class: Classification) -> Retry {
        match Retry::for_reason(class.reason) {
            Retry::Recheck => Retry::Recheck,
            _ => Retry::from_hint(class.retry),
        }
    }

    /// The policy for an outcome reported with `reason` without a fresh Atlas hint: Ready, a
    /// wait, a failure remembered from an earlier reconcile, a refused Secret write.
    pub fn for_reason(reason: Reason) -> Retry {
        match reason {
            Reason::TokenIssued | Reason::Linked => Retry::Resync,
            // The claim was just announced: issue once others can see it.
            Reason::Issuing => Retry::Soon(Duration::from_secs(1)),
            // A refused Secret write may clear on its own (a webhook back up, quota freed by
            // others): retried with backoff; the dry-run costs no Atlas call.
            Reason::AtlasRateLimited
            | Reason::AtlasUnavailable
            | Reason::RevocationBlocked
            | Reason::SecretWriteFailed
            // The source: unavailable, or not SYNCED yet (it may catch up; followed with
            // backoff, never polled in a tight loop).
            | Reason::SourceUnavailable
            | Reason::Linking
            | Reason::NotSynced => Retry::Backoff,
            // Fixed by a new or corrected credentials Secret (not watched: see above), or in
            // Atlas (the slow resync, decided in `decide`).
            Reason::CredentialsNotFound
            | Reason::CredentialsInvalid
            | Reason::AtlasUnauthorized
            | Reason::AtlasForbidden
            | Reason::OrgNotFound
            | Reason::SourceCredentialsNotFound
            | Reason::SourceConfigInvalid
            | Reason::SourceUnauthorized
            | Reason::SourceForbidden
            | Reason::SourceOrgNotFound
            | Reason::SourceRejected => Retry::Recheck,
            // The owner's deletion triggers a takeover directly; the resync is a safety net.
            Reason::OrgConflict | Reason::SecretConflict | Reason::SourceOrgConflict => {
                Retry::Resync
            }
            // Only a spec change fixes a rejected access list, and a source URL off the
            // allow-list (or the operator restarted with a new list, which reconciles all).
            Reason::AtlasRejected | Reason::SourceNotAllowed => Retry::OnChange,
        }
    }

    /// True when this outcome extends the failure streak (the backoff's `attempts`).
    pub fn counts_as_attempt(self) -> bool {
        matches!(self, Retry::Backoff | Retry::After(_) | Retry::Recheck)
    }

    /// True for transient failures whose retry time `decide` holds to (other events, such as
    /// our own finalizer patch, must not bring it forward).
    pub fn holds(self) -> bool {
        matches!(self, Retry::Backoff | Retry::After(_))
    }
}

/// The one retry policy: the delay before looking again; None = wait for a watch event only.
/// `attempts` is the failure streak including this failure (1 for the first; it matters only
/// where [`Retry::counts_as_attempt`]); `jitter` is in [0, 1): it spreads backoff within
/// +-20% and adds up to 2 s after a Retry-After, so a fleet does not come back at once.
pub fn delay(retry: Retry, attempts: u32, cfg: &BackoffConfig, jitter: f64) -> Option<Duration> {
    match retry {
        Retry::OnChange => None,
        Retry::Resync => Some(cfg.resync),
        Retry::Soon(d) => Some(d),
        Retry::Backoff => Some(exponential(attempts, cfg, jitter)),
        Retry::After(ra) => Some(after_retry_after(
            ra,
            exponential(attempts, cfg, jitter),
            cfg,
            Duration::from_secs_f64(jitter.clamp(0.0, 1.0) * 2.0),
        )),
        Retry::Recheck => Some(exponential(attempts, cfg, jitter).min(cfg.resync)),
    }
}

/// The delay after a failure that carried Retry-After `ra`: never earlier than Atlas asked,
/// never later than the retry cap (`--retry-max-delay`) whatever it asked, never sooner than
/// `floor` (the exponential backoff of this failure streak, so `Retry-After: 0` answered again
/// and again cannot make a hot loop), plus `spread` so a fleet does not come back at once.
/// Retry-After is clamped when parsed already; clamping here again keeps this total for any
/// input (no overflow, no hold of months).
fn after_retry_after(
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

    /// Every Atlas failure a corrected credentials Secret can end is rechecked on the timer,
    /// whatever Atlas hinted; the others keep Atlas's hint (Retry-After, backoff, no poll).
    #[test]
    fn atlas_failures_fixed_by_credentials_are_rechecked() {
        use crate::atlas::error::{ApiFailure, AtlasError};
        use crate::atlas::{Operation, classify};
        let failure = |status: u16, retry_after: Option<u64>| {
            AtlasError::Api(Box::new(ApiFailure::from_api_body(
                status,
                b"",
                retry_after.map(Duration::from_secs),
            )))
        };
        let rows = [
            (failure(401, None), Retry::Recheck),
            (failure(403, None), Retry::Recheck),
            (failure(404, None), Retry::Recheck),
            (failure(429, Some(7)), Retry::After(Duration::from_secs(7))),
            (failure(503, None), Retry::Backoff),
            (failure(400, None), Retry::OnChange),
        ];
        for (err, want) in rows {
            let class = classify(&err, Operation::Create);
            assert_eq!(Retry::for_atlas_failure(class), want, "{err:?}");
        }
    }

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
            resync: Duration::from_secs(600),
        }
    }

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    /// Classify -> hint -> delay: one row per hint `classify` can give, and per outcome
    /// reported without one. (retry, attempts, jitter, expected delay, why)
    #[test]
    fn the_retry_policy_table() {
        let ra = Retry::After;
        let rows: &[(Retry, u32, f64, Option<Duration>, &str)] = &[
            (
                Retry::OnChange,
                5,
                0.5,
                None,
                "only a change of the LinkToken helps",
            ),
            (
                Retry::Resync,
                5,
                0.5,
                secs(600),
                "the slow resync, whatever the streak",
            ),
            (
                Retry::Soon(Duration::from_secs(2)),
                9,
                0.9,
                secs(2),
                "fixed, no jitter",
            ),
            (Retry::Backoff, 1, 0.5, secs(2), "first retry: base"),
            (Retry::Backoff, 2, 0.5, secs(4), "doubles"),
            (Retry::Backoff, 5, 0.5, secs(32), "doubles"),
            (Retry::Backoff, 6, 0.5, secs(60), "capped at the retry cap"),
            (Retry::Backoff, 1000, 0.5, secs(60), "capped, no overflow"),
            (
                ra(Duration::from_secs(55)),
                1,
                0.0,
                secs(55),
                "never earlier than asked",
            ),
            (
                ra(Duration::from_secs(120)),
                1,
                0.0,
                secs(60),
                "never later than the cap",
            ),
            (
                ra(Duration::ZERO),
                4,
                0.5,
                secs(17),
                "Retry-After: 0 still backs off, +1 s spread",
            ),
            (
                ra(Duration::MAX),
                1,
                0.0,
                secs(60),
                "absurd values are capped",
            ),
            (
                Retry::Recheck,
                1,
                0.5,
                secs(2),
                "credentials: the first recheck is quick",
            ),
            (Retry::Recheck, 4, 0.5, secs(16), "credentials: backs off"),
            (Retry::Recheck, 50, 0.5, secs(60), "credentials: capped"),
        ];
        for (retry, attempts, jitter, want, why) in rows {
            assert_eq!(
                delay(*retry, *attempts, &cfg(), *jitter),
                *want,
                "{retry:?} #{attempts}: {why}"
            );
        }
    }

    #[test]
    fn every_hint_of_classify_has_its_policy() {
        assert_eq!(Retry::from_hint(RetryHint::WaitForChange), Retry::OnChange);
        assert_eq!(Retry::from_hint(RetryHint::SlowResync), Retry::Resync);
        assert_eq!(Retry::from_hint(RetryHint::Backoff), Retry::Backoff);
        let d = Duration::from_secs(7);
        assert_eq!(Retry::from_hint(RetryHint::After(d)), Retry::After(d));
    }

    /// One row per Ready reason: when an outcome reported with it (and no fresh Atlas hint)
    /// is looked at again.
    #[test]
    fn every_reason_has_its_policy() {
        let rows = [
            (Reason::TokenIssued, Retry::Resync),
            (Reason::Issuing, Retry::Soon(Duration::from_secs(1))),
            (Reason::AtlasRateLimited, Retry::Backoff),
            (Reason::AtlasUnavailable, Retry::Backoff),
            (Reason::RevocationBlocked, Retry::Backoff),
            (Reason::SecretWriteFailed, Retry::Backoff),
            (Reason::CredentialsNotFound, Retry::Recheck),
            (Reason::CredentialsInvalid, Retry::Recheck),
            (Reason::AtlasUnauthorized, Retry::Recheck),
            (Reason::AtlasForbidden, Retry::Recheck),
            (Reason::OrgNotFound, Retry::Recheck),
            (Reason::OrgConflict, Retry::Resync),
            (Reason::SecretConflict, Retry::Resync),
            (Reason::AtlasRejected, Retry::OnChange),
        ];
        for (reason, want) in rows {
            assert_eq!(Retry::for_reason(reason), want, "{reason}");
        }
    }

    #[test]
    fn only_failures_extend_the_streak_and_only_transient_ones_hold() {
        let d = Duration::from_secs(1);
        for (retry, counts, holds) in [
            (Retry::OnChange, false, false),
            (Retry::Resync, false, false),
            (Retry::Soon(d), false, false),
            (Retry::Backoff, true, true),
            (Retry::After(d), true, true),
            (Retry::Recheck, true, false),
        ] {
            assert_eq!(retry.counts_as_attempt(), counts, "{retry:?}");
            assert_eq!(retry.holds(), holds, "{retry:?}");
        }
    }

    #[test]
    fn jitter_spreads_within_twenty_percent() {
        let lo = delay(Retry::Backoff, 3, &cfg(), 0.0).unwrap();
        let hi = delay(Retry::Backoff, 3, &cfg(), 0.999).unwrap();
        assert_eq!(lo, Duration::from_secs_f64(6.4));
        assert!(hi < Duration::from_secs_f64(9.6) && hi > Duration::from_secs_f64(9.5));
        // After a Retry-After: up to 2 s later, never earlier.
        let ra = Duration::from_secs(30);
        let late = delay(Retry::After(ra), 1, &cfg(), 0.999).unwrap();
        assert!(late >= ra && late < ra + Duration::from_secs(2));
    }

    #[test]
    fn credentials_rechecks_are_never_later_than_the_resync() {
        let short = BackoffConfig {
            resync: Duration::from_secs(30),
            ..cfg()
        };
        assert_eq!(delay(Retry::Recheck, 50, &short, 0.5), secs(30));
        assert_eq!(delay(Retry::Backoff, 50, &short, 0.5), secs(60));
    }

    #[test]
    fn absurd_retry_after_values_are_capped_and_never_overflow() {
        for ra in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::from_secs(10 * 365 * 24 * 3600),
        ] {
            let d = delay(Retry::After(ra), u32::MAX, &cfg(), 0.999).unwrap();
            assert!(
                d >= Duration::from_secs(60) && d < Duration::from_secs(62),
                "{ra:?}"
            );
            assert!(due_in(Instant::now(), d) > Instant::now());
        }
        // An Instant cannot hold now + Duration::MAX: saturate instead of panicking.
        let now = Instant::now();
        assert!(due_in(now, Duration::MAX) > now + Duration::from_secs(365 * 24 * 3600));
    }
}
