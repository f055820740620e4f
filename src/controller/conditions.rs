//! kstatus-compatible conditions: Ready, Reconciling, Stalled, each with observedGeneration,
//! computed by one function that keeps lastTransitionTime when a status does not change.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::Reason;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// Time left, for an object created at `created`, of the grace period in which a missing
/// credentials Secret (Atlas's, or the source's) is reported as Reconciling instead of Stalled (docs/conditions.md: a
/// Secret delivered by ExternalSecret or a later GitOps step lands after the LinkToken, and
/// kstatus would call the LinkToken Failed meanwhile). None for any other reason, without a
/// creation time, or once the period is over.
pub fn credentials_grace_left(
    reason: Reason,
    created: Option<&Time>,
    now: &Time,
    grace: Duration,
) -> Option<Duration> {
    // The source's credentials Secret (spec.source) arrives the same ways.
    if !matches!(
        reason,
        Reason::CredentialsNotFound | Reason::SourceCredentialsNotFound
    ) {
        return None;
    }
    let age = now.0.duration_since(created?.0);
    // A creation time in the future (clock skew) counts as just created.
    let age = Duration::try_from(age).unwrap_or(Duration::ZERO);
    grace.checked_sub(age).filter(|left| !left.is_zero())
}

/// Conditions for an outcome. Reconciling=True while the controller keeps working on its own
/// (issuing, retrying a transient failure, waiting out `in_grace` for credentials): kstatus
/// reads that as InProgress; Stalled=True as Failed.
pub fn compute(
    previous: &[Condition],
    generation: Option<i64>,
    reason: Reason,
    message: &str,
    now: &Time,
    in_grace: bool,
) -> Vec<Condition> {
    let ready = reason.is_ready();
    let stalled = reason.is_stalled() && !in_grace;
    let reconciling = !ready && !stalled;
    let make = |type_: &str, status: bool, reason_str: &str, msg: &str| {
        condition(previous, generation, now, type_, status, reason_str, msg)
    };
    vec![
        make(READY, ready, reason.as_str(), message),
        make(
            RECONCILING,
            reconciling,
            if reconciling { reason.as_str() } else { "Idle" },
            if reconciling { message } else { "" },
        ),
        make(
            STALLED,
            stalled,
            if stalled {
                reason.as_str()
            } else {
                "NotStalled"
            },
            if stalled { message } else { "" },
        ),
    ]
}

/// One condition; lastTransitionTime is kept from `previous` when its status is unchanged.
pub fn condition(
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: last.unwrap_or_else(|| now.clone()),
    }
}

/// The Ready condition's reason and message, if any.
pub fn ready_of(conditions: &[Condition]) -> Option<(&str, &str)> {
    conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| (c.reason.as_str(), c.message.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn get<'a>(cs: &'a [Condition], t: &str) -> &'a Condition {
        cs.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn kstatus_reads_each_reason_the_right_way() {
        let now = t("2026-11-28T10:00:00Z");
        let ready = compute(&[], Some(3), Reason::TokenIssued, "ok", &now, false);
        assert_eq!(get(&ready, READY).status, "True");
        assert_eq!(get(&ready, RECONCILING).status, "False");
        assert_eq!(get(&ready, STALLED).status, "False");
        assert!(ready.iter().all(|c| c.observed_generation == Some(3)));

        let retrying = compute(&[], Some(3), Reason::AtlasUnavailable, "503", &now, false);
        assert_eq!(get(&retrying, READY).status, "False");
        assert_eq!(get(&retrying, RECONCILING).status, "True");
        assert_eq!(get(&retrying, STALLED).status, "False");

        let stuck = compute(&[], Some(3), Reason::AtlasForbidden, "403", &now, false);
        assert_eq!(get(&stuck, STALLED).status, "True");
        assert_eq!(get(&stuck, STALLED).reason, "AtlasForbidden");
        assert_eq!(get(&stuck, RECONCILING).status, "False");
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let first = compute(
            &[],
            Some(1),
            Reason::AtlasUnavailable,
            "a",
            &t("2026-11-28T10:00:00Z"),
            false,
        );
        let again = compute(
            &first,
            Some(1),
            Reason::AtlasRateLimited,
            "b",
            &t("2026-11-28T10:05:00Z"),
            false,
        );
        assert_eq!(
            get(&again, READY).last_transition_time,
            t("2026-11-28T10:00:00Z")
        );
        let ready = compute(
            &again,
            Some(1),
            Reason::TokenIssued,
            "c",
            &t("2026-11-28T10:06:00Z"),
            false,
        );
        assert_eq!(
            get(&ready, READY).last_transition_time,
            t("2026-11-28T10:06:00Z")
        );
    }

    #[test]
    fn missing_credentials_are_reconciling_within_the_grace_period_then_stalled() {
        let grace = Duration::from_secs(120);
        let created = t("2026-11-28T10:00:00Z");
        let early = t("2026-11-28T10:01:00Z");
        let late = t("2026-11-28T10:02:00Z");
        let left = |reason, now: &Time| credentials_grace_left(reason, Some(&created), now, grace);
        assert_eq!(
            left(Reason::CredentialsNotFound, &early),
            Some(Duration::from_secs(60))
        );
        assert_eq!(left(Reason::CredentialsNotFound, &late), None, "over");
        assert_eq!(
            left(Reason::SourceCredentialsNotFound, &early),
            Some(Duration::from_secs(60)),
            "the source's credentials Secret too"
        );
        assert_eq!(left(Reason::OrgNotFound, &early), None, "other reasons");
        assert_eq!(
            left(Reason::CredentialsInvalid, &early),
            None,
            "present but wrong"
        );
        assert_eq!(
            credentials_grace_left(Reason::CredentialsNotFound, None, &early, grace),
            None,
            "no creation time"
        );
        assert_eq!(
            credentials_grace_left(
                Reason::CredentialsNotFound,
                Some(&created),
                &early,
                Duration::ZERO
            ),
            None,
            "disabled"
        );

        let waiting = compute(&[], Some(1), Reason::CredentialsNotFound, "m", &early, true);
        assert_eq!(get(&waiting, READY).status, "False");
        assert_eq!(get(&waiting, READY).reason, "CredentialsNotFound");
        assert_eq!(get(&waiting, RECONCILING).status, "True");
        assert_eq!(get(&waiting, STALLED).status, "False");
        let stalled = compute(
            &waiting,
            Some(1),
            Reason::CredentialsNotFound,
            "m",
            &late,
            false,
        );
        assert_eq!(get(&stalled, RECONCILING).status, "False");
        assert_eq!(get(&stalled, STALLED).status, "True");
    }
}
