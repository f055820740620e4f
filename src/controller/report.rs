//! Reporting an outcome. Every step of `act` and `cleanup` returns a [`Report`], data saying
//! what to record: status and Ready message, the resourceVersion that fences the write,
//! events, counters, what to remember of a failure, and when to look again. [`commit`] is the
//! one writer: status (server-side apply of the whole status with a resourceVersion
//! precondition, skipped when nothing changed), events (the Ready reason's Warning only when
//! it changes, so retries do not flood), metrics, failure memory, the retry delay. The only
//! status write outside it is the in-flight marker before the POST (`act::issue`), which must
//! land before Atlas is called.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::backoff::{self, Retry};
use super::conditions;
use super::context::{Context, LinkHoldMemo, RetryMemo, StalledMemo};
use super::error::Error;
use super::secret::FIELD_MANAGER;
use crate::api::{AtlasErrorStatus, LinkToken, LinkTokenStatus, Reason};
use crate::atlas::AtlasError;

/// What one step has to say, as data; [`commit`] writes it.
#[derive(Clone, Debug)]
pub struct Report {
    /// The Ready reason reported (and kept in the `linktoken_linktokens` gauge); None: the
    /// object lets go (deletion done), its gauge entry and failure memory go.
    pub reason: Option<Reason>,
    /// The status to record and its Ready message; None: status already says it.
    pub status: Option<(LinkTokenStatus, String)>,
    /// The resourceVersion the status write is conditioned on: the one the object was read at,
    /// or inside an issue attempt the one its marker write returned.
    pub fence: Option<String>,
    /// Events published after the status write: (type, reason, note).
    pub events: Vec<(EventType, &'static str, String)>,
    pub issued: bool,
    pub revoked: bool,
    pub memory: Memory,
    /// When to look again ([`backoff::delay`] via `Context::retry_in`).
    pub retry: Retry,
}

/// What the failure memory keeps of this outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Memory {
    /// Unchanged.
    Keep,
    /// Success: the failure streak and remembered failures end.
    Forget,
    /// A failed Atlas call with the inputs it happened with: a transient one is held until
    /// its retry is due, one only a user can fix is not repeated while they are unchanged.
    Failure {
        generation: Option<i64>,
        credentials_version: Option<String>,
        rotate: Option<String>,
    },
    /// A transient failure at the source with the inputs it happened with: the source is not
    /// called again until its retry is due while they are unchanged (`LinkHoldMemo`).
    SourceFailure {
        generation: Option<i64>,
        rotate: Option<String>,
        token_sha256: String,
    },
}

impl Report {
    /// Reports `reason` and looks again as `retry` says; writes nothing else yet.
    pub fn new(lt: &LinkToken, reason: Reason, retry: Retry) -> Report {
        Report {
            reason: Some(reason),
            status: None,
            fence: lt.resource_version(),
            events: Vec::new(),
            issued: false,
            revoked: false,
            memory: Memory::Keep,
            retry,
        }
    }

    /// Deletion is done: nothing left to look at.
    pub fn released() -> Report {
        Report {
            reason: None,
            status: None,
            fence: None,
            events: Vec::new(),
            issued: false,
            revoked: false,
            memory: Memory::Forget,
            retry: Retry::OnChange,
        }
    }

    /// Records `status` with the Ready condition for the reason and `message`.
    pub fn status(mut self, status: LinkTokenStatus, message: impl Into<String>) -> Report {
        self.status = Some((status, message.into()));
        self
    }

    /// Fences the status write at `rv` (the version the marker write returned).
    pub fn fenced_at(mut self, rv: Option<String>) -> Report {
        self.fence = rv;
        self
    }

    pub fn event(
        mut self,
        type_: EventType,
        reason: &'static str,
        note: impl Into<String>,
    ) -> Report {
        self.events.push((type_, reason, note.into()));
        self
    }

    pub fn warning(self, reason: &'static str, note: impl Into<String>) -> Report {
        self.event(EventType::Warning, reason, note)
    }

    pub fn memory(mut self, memory: Memory) -> Report {
        self.memory = memory;
        self
    }
}

/// The one writer: commits `report` for `lt` and returns when to look again (None: on a watch
/// event only). A failed status write (409: the object changed, or a stale actor) returns the
/// error before any further event, counter or memory change.
pub async fn commit(
    ctx: &Context,
    lt: &LinkToken,
    report: Report,
) -> Result<Option<Duration>, Error> {
    let key = object_ref(lt);
    if let (Some(reason), Some((status, message))) = (report.reason, report.status.as_ref()) {
        let status = with_outcome(lt, status.clone(), reason, message, ctx.credentials_grace);
        outcome_event(ctx, lt, reason, message).await;
        write_status_at(ctx, lt, &status, report.fence.as_deref()).await?;
    }
    if report.issued {
        ctx.metrics.token_issued();
    }
    if report.revoked {
        ctx.metrics.token_revoked();
    }
    for (type_, reason, note) in &report.events {
        if *type_ == EventType::Warning {
            tracing::warn!(linktoken = %key_of(lt), reason, "{note}");
        }
    }
    // After the status write, as before, but off the reconcile's path: nothing waits on an
    // event (a failure to publish is only logged), and the next LinkToken gets this
    // reconcile's slot of --concurrency one API round trip sooner. One task per report keeps
    // its events in order.
    if !report.events.is_empty() {
        let events = report
            .events
            .iter()
            .map(|(type_, reason, note)| event(*type_, reason, note))
            .collect();
        ctx.recorder
            .publish_in_background(events, lt.object_ref(&()), key_of(lt));
    }
    ctx.metrics.track(&key_of(lt), report.reason);
    let retry = report.retry;
    // Within the credentials grace period, look again when it ends at the latest, so Stalled is
    // reported then and not one backed-off recheck later.
    let grace_left = report.reason.and_then(|reason| {
        conditions::credentials_grace_left(
            reason,
            lt.meta().creation_timestamp.as_ref(),
            &Time(jiff::Timestamp::now()),
            ctx.credentials_grace,
        )
    });
    let after = match report.memory {
        Memory::Keep => ctx.retry_in(&key, retry),
        Memory::SourceFailure {
            generation,
            rotate,
            token_sha256,
        } => {
            let after = ctx.retry_in(&key, retry);
            if let Some(delay) = after {
                ctx.remember_link_hold(
                    &key,
                    LinkHoldMemo {
                        reason: report.reason.unwrap_or(Reason::SourceUnavailable),
                        generation,
                        rotate,
                        token_sha256,
                        due: backoff::due_in(Instant::now(), delay),
                    },
                );
            }
            after
        }
        Memory::Forget => {
            ctx.forget(&key);
            ctx.retry_in(&key, retry)
        }
        Memory::Failure {
            generation,
            credentials_version,
            rotate,
        } => {
            let reason = report.reason.unwrap_or(Reason::AtlasUnavailable);
            if retry.holds() {
                let after = ctx.retry_in(&key, retry);
                // Other events (our own finalizer patch, a Secret touched) must not bring the
                // retry forward: decide holds until this is due.
                if let Some(delay) = after {
                    ctx.remember_retry(
                        &key,
                        RetryMemo {
                            reason,
                            generation,
                            credentials_version,
                            rotate,
                            due: backoff::due_in(Instant::now(), delay),
                        },
                    );
                }
                after
            } else {
                // Not transient: not retried while its inputs are unchanged (see decide).
                ctx.remember_stalled(
                    &key,
                    StalledMemo {
                        reason,
                        generation,
                        credentials_version,
                        rotate,
                        at: Instant::now(),
                    },
                );
                ctx.retry_in(&key, retry)
            }
        }
    };
    // A second past the end, so that look finds the period over.
    let grace_end = grace_left.map(|left| left + Duration::from_secs(1));
    let next = match (after, grace_end) {
        (Some(a), Some(g)) => Some(a.min(g)),
        (a, g) => a.or(g),
    };
    // One line per committed outcome at debug: what a stuck LinkToken was last told, and
    // when it will be looked at again without a watch event.
    tracing::debug!(linktoken = %key_of(lt), reason = ?report.reason, next = ?next, "reconciled");
    Ok(next)
}

/// Now, as RFC 3339 with milliseconds (ordering of in-flight markers and Secrets needs more
/// than whole seconds).
pub fn now_rfc3339() -> String {
    crate::api::time::now_rfc3339_millis()
}

/// The status of `lt` with conditions and observedGeneration set for `reason`.
pub fn with_outcome(
    lt: &LinkToken,
    mut status: LinkTokenStatus,
    reason: Reason,
    message: &str,
    credentials_grace: Duration,
) -> LinkTokenStatus {
    let previous = lt
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let generation = lt.meta().generation;
    let now = Time(jiff::Timestamp::now());
    let in_grace = conditions::credentials_grace_left(
        reason,
        lt.meta().creation_timestamp.as_ref(),
        &now,
        credentials_grace,
    )
    .is_some();
    status.conditions = conditions::compute(&previous, generation, reason, message, &now, in_grace);
    let declared = lt
        .spec
        .source
        .is_some()
        .then(|| token_is_current(lt, &status) && !claim_lapses(reason));
    if let Some(linked) = super::link::linked_condition(
        &previous, generation, &now, declared, &status, reason, message,
    ) {
        status.conditions.push(linked);
    }
    status.observed_generation = generation;
    status
}

/// Whether the LinkToken's claim on its org lapses with this outcome (it waits for another
/// owner, or its credentials cannot act): another LinkToken may issue in the org at any moment,
/// revoking this one's token without writing this status, so Linked is not kept True.
fn claim_lapses(reason: Reason) -> bool {
    reason == Reason::OrgConflict || super::index::UNUSABLE.contains(&reason)
}

/// Whether `status` records a token issued for `lt`'s current spec (org, access list, rotate
/// value) with no issue in flight, and its link where spec.source points: the only link a
/// Linked=True may be kept for. The marker of a rotation is written before its DELETE revokes
/// the linked token; a spec.source moved elsewhere is not linked until linked there.
fn token_is_current(lt: &LinkToken, status: &LinkTokenStatus) -> bool {
    let rotate = lt.annotations().get(crate::api::ROTATE_ANNOTATION);
    let linked_where_declared = match (lt.spec.source.as_ref(), status.link.as_ref()) {
        (Some(s), Some(l)) => l.url == s.url.trim_end_matches('/') && l.org_id == s.org_id,
        _ => false,
    };
    linked_where_declared
        && status.in_flight.is_none()
        && status.issued_for.as_ref().is_some_and(|i| {
            i.org_id == lt.spec.org_id
                && super::decide::same_set(&i.access_list_ips, &lt.spec.access_list_ips)
                && i.rotate.as_ref() == rotate
        })
}

/// Writes `status` with server-side apply carrying `metadata.resourceVersion`: the API server
/// refuses the write (409) when the LinkToken changed since that version. This fences a stale
/// actor (a leader that lost its Lease, a reconcile working from an old read): its write fails
/// instead of overwriting what a newer actor recorded, e.g. erasing its in-flight marker.
/// Nothing is written when `status` equals the current one at the version `lt` was read
/// (`with_outcome` keeps condition timestamps when nothing changed), so a steady state costs
/// no write. Returns the resourceVersion after the write (the given one when nothing was
/// written), the precondition of the next write of the same reconcile.
pub async fn write_status_at(
    ctx: &Context,
    lt: &LinkToken,
    status: &LinkTokenStatus,
    resource_version: Option<&str>,
) -> Result<Option<String>, Error> {
    if lt.status.as_ref() == Some(status) && resource_version == lt.resource_version().as_deref() {
        return Ok(resource_version.map(str::to_string));
    }
    let ns = lt.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<LinkToken> = Api::namespaced(ctx.client.clone(), &ns);
    let mut body = serde_json::json!({
        "apiVersion": LinkToken::api_version(&()),
        "kind": LinkToken::kind(&()),
        "status": status,
    });
    if let Some(rv) = resource_version {
        body["metadata"] = serde_json::json!({ "resourceVersion": rv });
    }
    let key = object_ref(lt);
    match api
        .patch_status(
            &lt.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(written) => {
            ctx.versions
                .wrote(&key, written.metadata.resource_version.as_deref());
            Ok(written.resource_version())
        }
        Err(e) => {
            ctx.versions.write_failed(&key);
            Err(e.into())
        }
    }
}

/// The Ready reason currently recorded on the object.
pub fn current_reason(lt: &LinkToken) -> Option<Reason> {
    lt.status
        .as_ref()
        .and_then(|s| conditions::ready_of(&s.conditions))
        .and_then(|(r, _)| Reason::parse(r))
}

/// Records the reason in metrics and, when it changed, emits an event: Warning for failures.
async fn outcome_event(ctx: &Context, lt: &LinkToken, reason: Reason, message: &str) {
    ctx.metrics.track(&key_of(lt), Some(reason));
    if current_reason(lt) == Some(reason)
        || reason == Reason::Issuing
        || reason == Reason::Linking
        || reason.is_ready()
    {
        return;
    }
    publish(ctx, lt, EventType::Warning, reason.as_str(), message).await;
}

/// Publishes an event; a failure to publish is logged, never fatal to the reconcile.
async fn publish(ctx: &Context, lt: &LinkToken, type_: EventType, reason: &str, note: &str) {
    let ev = event(type_, reason, note);
    if let Err(e) = ctx.recorder.publish(&ev, &lt.object_ref(&())).await {
        tracing::warn!(linktoken = %key_of(lt), reason, error = %e, "could not publish event");
    }
}

fn event(type_: EventType, reason: &str, note: &str) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(note, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    }
}

/// `namespace/name`, the key used in logs and metrics.
pub fn key_of(lt: &LinkToken) -> String {
    format!("{}/{}", lt.namespace().unwrap_or_default(), lt.name_any())
}

pub fn object_ref(lt: &LinkToken) -> ObjectRef<LinkToken> {
    ObjectRef::from_obj(lt)
}

/// The `atlasError` status block of a failure.
pub fn atlas_error_status(e: &AtlasError) -> AtlasErrorStatus {
    AtlasErrorStatus {
        http_status: e.http_status().map(i32::from),
        error_code: e.error_code().map(str::to_string),
        detail: e.detail().map(str::to_string),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{InFlight, IssuedFor, LinkStatus, LinkTokenSpec, SourceSpec};

    const URL: &str = "https://om.example:8443";
    const ORG: &str = "5f1e9b2a3c4d5e6f7a8b9c0d";
    const SRC: &str = "6a1e9b2a3c4d5e6f7a8b9c0d";

    fn lt(source_org: &str) -> LinkToken {
        LinkToken::new(
            "lt",
            LinkTokenSpec {
                org_id: ORG.into(),
                source: Some(SourceSpec {
                    url: format!("{URL}/"),
                    org_id: source_org.into(),
                    credentials_secret_ref: Default::default(),
                    ca_bundle: None,
                    store_token: true,
                }),
                ..Default::default()
            },
        )
    }

    fn status(issued_org: &str, linked_org: &str, in_flight: bool) -> LinkTokenStatus {
        LinkTokenStatus {
            issued_for: Some(IssuedFor {
                org_id: issued_org.into(),
                token_sha256: Some("t".into()),
                ..Default::default()
            }),
            in_flight: in_flight.then(|| InFlight {
                org_id: ORG.into(),
                ..Default::default()
            }),
            link: Some(LinkStatus {
                url: URL.into(),
                org_id: linked_org.into(),
                token_sha256: Some("t".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn linked_is_kept_only_for_the_token_and_the_source_the_spec_asks_for() {
        let other = "0000000000000000000000aa";
        // (what, LinkToken, status, kept)
        let rows = [
            (
                "the current token, linked where declared",
                lt(SRC),
                status(ORG, SRC, false),
                true,
            ),
            (
                "a rotation's marker is written",
                lt(SRC),
                status(ORG, SRC, true),
                false,
            ),
            ("the orgId moved", lt(SRC), status(other, SRC, false), false),
            (
                "spec.source moved to another org",
                lt(other),
                status(ORG, SRC, false),
                false,
            ),
        ];
        for (what, l, st, kept) in rows {
            assert_eq!(token_is_current(&l, &st), kept, "{what}");
        }
        // Waiting for another owner, or credentials that cannot act: another LinkToken may
        // take the org (and revoke this token) without writing this status.
        for lapses in [
            Reason::OrgConflict,
            Reason::CredentialsNotFound,
            Reason::AtlasForbidden,
        ] {
            assert!(claim_lapses(lapses), "{lapses}");
        }
        for holds in [
            Reason::TokenIssued,
            Reason::AtlasUnavailable,
            Reason::Issuing,
        ] {
            assert!(!claim_lapses(holds), "{holds}");
        }
    }
}
