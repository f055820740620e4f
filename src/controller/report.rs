//! Reporting an outcome: status (server-side apply of the whole status with a resourceVersion
//! precondition, skipped when nothing changed), events (only when the Ready reason changes, so retries do not flood), metrics.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::conditions;
use super::context::Context;
use super::error::Error;
use super::secret::FIELD_MANAGER;
use crate::api::{AtlasErrorStatus, LinkToken, LinkTokenStatus, Reason};
use crate::atlas::AtlasError;

/// Now, as RFC 3339 with milliseconds (ordering of in-flight markers and Secrets needs more
/// than whole seconds).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The status of `lt` with conditions and observedGeneration set for `reason`.
pub fn with_outcome(
    lt: &LinkToken,
    mut status: LinkTokenStatus,
    reason: Reason,
    message: &str,
) -> LinkTokenStatus {
    let previous = lt
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let generation = lt.meta().generation;
    status.conditions = conditions::compute(
        &previous,
        generation,
        reason,
        message,
        &Time(jiff::Timestamp::now()),
    );
    status.observed_generation = generation;
    status
}

/// Writes `status` unless it equals the current one (conditions compare without their
/// timestamps, which `with_outcome` keeps when nothing changed), fenced by the resourceVersion
/// `lt` was read at.
pub async fn write_status(
    ctx: &Context,
    lt: &LinkToken,
    status: &LinkTokenStatus,
) -> Result<(), Error> {
    let rv = lt.resource_version();
    write_status_at(ctx, lt, status, rv.as_deref()).await?;
    Ok(())
}

/// Writes `status` with server-side apply carrying `metadata.resourceVersion`: the API server
/// refuses the write (409) when the LinkToken changed since that version. This fences a stale
/// actor (a leader that lost its Lease, a reconcile working from an old read): its write fails
/// instead of overwriting what a newer actor recorded, e.g. erasing its in-flight marker.
/// Returns the resourceVersion after the write (the given one when nothing was written), the
/// precondition of the next write of the same reconcile.
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
    let written = api
        .patch_status(
            &lt.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    Ok(written.resource_version())
}

/// The Ready reason currently recorded on the object.
pub fn current_reason(lt: &LinkToken) -> Option<Reason> {
    lt.status
        .as_ref()
        .and_then(|s| conditions::ready_of(&s.conditions))
        .and_then(|(r, _)| Reason::parse(r))
}

/// Records the reason in metrics and, when it changed, emits an event: Warning for failures.
pub async fn outcome_event(ctx: &Context, lt: &LinkToken, reason: Reason, message: &str) {
    ctx.metrics.track(&key_of(lt), Some(reason));
    if current_reason(lt) == Some(reason)
        || reason == Reason::Issuing
        || reason == Reason::TokenIssued
    {
        return;
    }
    publish(ctx, lt, EventType::Warning, reason.as_str(), message).await;
}

/// Publishes an event; a failure to publish is logged, never fatal to the reconcile.
pub async fn publish(ctx: &Context, lt: &LinkToken, type_: EventType, reason: &str, note: &str) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(note, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &lt.object_ref(&())).await {
        tracing::warn!(linktoken = %key_of(lt), reason, error = %e, "could not publish event");
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
        detail: e.detail().map(|d| truncate(d, 512)),
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
