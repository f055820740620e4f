//! Carries out what `decide` chose for a LinkToken that is not being deleted.
//!
//! The issuing order is the contract's crash-safe one: in-flight marker in status -> DELETE
//! where a token may exist -> POST -> Secret at once -> status. A crash anywhere leaves the
//! marker, and the next reconcile either adopts the stored token (written after the POST) or
//! DELETEs before POSTing again, so at most one link per org stays live.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::backoff;
use super::context::{Context, RetryMemo, StalledMemo};
use super::decide::{self, IssueWhy, SecretSource};
use super::error::Error;
use super::observe::Observation;
use super::report::{self, key_of, now_rfc3339, object_ref};
use super::secret::{self, DesiredSecret, FIELD_MANAGER};
use crate::api::{InFlight, IssuedFor, LinkToken, Reason};
use crate::atlas::{AtlasError, Operation, RetryHint, classify};

/// The result of one reconcile: what the scheduler should do, and the Ready reason reported.
pub struct Outcome {
    pub action: Action,
    pub reason: Reason,
}

pub async fn apply(lt: &LinkToken, ctx: &Context, obs: Observation) -> Result<Outcome, Error> {
    match decide::decide(&obs.observed) {
        decide::Action::Wait { reason, message } => wait(lt, ctx, reason, &message).await,
        decide::Action::Issue { why, revoke_orgs } => issue(lt, ctx, &obs, why, &revoke_orgs).await,
        decide::Action::RevokePrevious { revoke, skip } => {
            revoke_previous(lt, ctx, &obs, &revoke, &skip).await
        }
        decide::Action::Hold { reason, after } => {
            // Status already reports this failure; only the retry time is kept.
            ctx.metrics.track(&key_of(lt), Some(reason));
            Ok(Outcome {
                action: Action::requeue(after),
                reason,
            })
        }
        decide::Action::Adopt { token_key } => adopt(lt, ctx, &obs, &token_key).await,
        decide::Action::Keep {
            source,
            rewrite_secret,
            delete_previous,
        } => keep(lt, ctx, &obs, source, rewrite_secret, delete_previous).await,
    }
}

/// Nothing to do until something changes. An empty message means "the same stalled failure
/// as before": status already says so, and Atlas is not called again.
async fn wait(
    lt: &LinkToken,
    ctx: &Context,
    reason: Reason,
    message: &str,
) -> Result<Outcome, Error> {
    if !message.is_empty() {
        let status = lt.status.clone().unwrap_or_default();
        let status = report::with_outcome(lt, status, reason, message);
        report::outcome_event(ctx, lt, reason, message).await;
        report::write_status(ctx, lt, &status).await?;
    } else {
        ctx.metrics.track(&key_of(lt), Some(reason));
    }
    // While an org's owner is being deleted, look again soon: the takeover should not wait
    // for the slow resync if the deletion event was missed.
    let owner_leaving =
        reason == Reason::OrgConflict && super::index::owner_is_deleting(&ctx.all_linktokens(), lt);
    // Credentials rechecks back off per object; a success (`forget`) starts them over.
    let attempts = if backoff::credentials_may_fix(reason) {
        ctx.bump_attempts(&object_ref(lt))
    } else {
        1
    };
    let after = if owner_leaving {
        Some(Duration::from_secs(2))
    } else {
        backoff::requeue_after(reason, attempts, None, &ctx.backoff, rand::random())
    };
    Ok(Outcome {
        action: after.map_or_else(Action::await_change, Action::requeue),
        reason,
    })
}

async fn issue(
    lt: &LinkToken,
    ctx: &Context,
    obs: &Observation,
    why: IssueWhy,
    revoke_orgs: &[String],
) -> Result<Outcome, Error> {
    let Some(creds) = obs.credentials.as_ref() else {
        // decide only issues with valid credentials; stay total anyway.
        return wait(
            lt,
            ctx,
            Reason::CredentialsNotFound,
            "the credentials Secret is not readable",
        )
        .await;
    };
    let org = lt.spec.org_id.clone();
    // A marker for another org never reaches here: decide revokes previous orgs first
    // (RevokePrevious), so replacing the marker loses no record of a live token.
    let mut status = lt.status.clone().unwrap_or_default();

    // 1. The marker: from here on a token may exist in Atlas for this org.
    status.in_flight = Some(InFlight {
        org_id: org.clone(),
        started_at: now_rfc3339(),
    });
    let status_marked = report::with_outcome(lt, status.clone(), Reason::Issuing, why.describe());
    report::write_status(ctx, lt, &status_marked).await?;

    super::pause::point("before-revoke").await;
    // 2. DELETE wherever a token of ours may be live (Atlas keeps one link per org).
    for o in revoke_orgs {
        if let Err(e) = ctx.atlas.delete_link_token(creds, o).await {
            return atlas_failure(lt, ctx, obs, status_marked, e, Operation::Delete).await;
        }
    }

    super::pause::point("before-post").await;
    // 3. POST. Never retried in place: a retry goes through the marker and a DELETE.
    let token = match ctx
        .atlas
        .create_link_token(creds, &org, &lt.spec.access_list_ips)
        .await
    {
        Ok(t) => t,
        Err(e) => return atlas_failure(lt, ctx, obs, status_marked, e, Operation::Create).await,
    };

    super::pause::point("after-post").await;
    // 4. The Secret, at once: the token exists nowhere else.
    let issued_at = now_rfc3339();
    let target_name = obs.observed.target_secret_name.clone();
    let force = secret::take_back_fields(&obs.observed.target_secret);
    apply_secret(
        lt,
        ctx,
        &target_name,
        token.expose().as_bytes(),
        &issued_at,
        force,
    )
    .await?;

    super::pause::point("after-secret").await;
    // 5. Status: what the token was issued for; the marker goes.
    let mut done = status_marked;
    done.in_flight = None;
    done.atlas_error = None;
    done.issued_at = Some(issued_at);
    done.token_secret_name = Some(target_name);
    done.issued_for = Some(IssuedFor {
        org_id: org,
        access_list_ips: lt.spec.access_list_ips.clone(),
        rotate: obs.observed.rotate.clone(),
        token_sha256: Some(secret::token_sha256(token.expose().as_bytes())),
    });
    let message = "the token Secret holds a link token issued for the current spec";
    let done = report::with_outcome(lt, done, Reason::TokenIssued, message);
    report::write_status(ctx, lt, &done).await?;
    delete_previous_secret(lt, ctx, obs).await?;

    ctx.metrics.token_issued();
    ctx.forget(&object_ref(lt));
    let (ev, note) = if why.is_rotation() {
        (
            "TokenRotated",
            format!("issued a new link token: {}", why.describe()),
        )
    } else {
        ("TokenIssued", "issued a link token".to_string())
    };
    report::publish(ctx, lt, EventType::Normal, ev, &note).await;
    ctx.metrics.track(&key_of(lt), Some(Reason::TokenIssued));
    Ok(ready_outcome(ctx))
}

/// The spec moved away from orgs where a token of ours may be live: revoke there and drop
/// them from status, so this LinkToken stops claiming them and stops DELETEing there (another
/// LinkToken may take the org over and must not have its token revoked by our retries).
async fn revoke_previous(
    lt: &LinkToken,
    ctx: &Context,
    obs: &Observation,
    revoke: &[String],
    skip: &[String],
) -> Result<Outcome, Error> {
    let status = lt.status.clone().unwrap_or_default();
    let mut done: Vec<&String> = Vec::new();
    let mut revoked = 0usize;
    if !revoke.is_empty() {
        let Some(creds) = obs.credentials.as_ref() else {
            // decide only revokes with valid credentials; stay total anyway.
            return wait(
                lt,
                ctx,
                Reason::CredentialsNotFound,
                "the credentials Secret is not readable",
            )
            .await;
        };
        for org in revoke {
            match ctx.atlas.delete_link_token(creds, org).await {
                Ok(_) => {
                    revoked += 1;
                    done.push(org);
                }
                // The credentials cannot act on the old org (any more): nothing this
                // LinkToken can do there. Say so once and move on; a stall here would keep
                // claiming the old org forever.
                Err(e) if matches!(e.http_status(), Some(401 | 403 | 404)) => {
                    let note = format!(
                        "the link in the previous orgId {org} was not revoked: Atlas refused ({}); revoke it there if it still matters",
                        e.user_message()
                    );
                    tracing::warn!(linktoken = %key_of(lt), org = %org, "revocation skipped: {note}");
                    report::publish(ctx, lt, EventType::Warning, "RevocationSkipped", &note).await;
                    done.push(org);
                }
                Err(e) => return atlas_failure(lt, ctx, obs, status, e, Operation::Delete).await,
            }
        }
    }
    for org in skip {
        let note = format!(
            "the link in the previous orgId {org} was not revoked: another LinkToken holds the live link there"
        );
        report::publish(ctx, lt, EventType::Warning, "RevocationSkipped", &note).await;
        done.push(org);
    }
    let mut status = status;
    if status
        .issued_for
        .as_ref()
        .is_some_and(|i| done.contains(&&i.org_id))
    {
        // The token in the Secret is revoked (or belongs to an org we let go of): nothing is
        // issued for this LinkToken any more.
        status.issued_for = None;
        status.issued_at = None;
    }
    if status
        .in_flight
        .as_ref()
        .is_some_and(|f| done.contains(&&f.org_id))
    {
        status.in_flight = None;
    }
    status.atlas_error = None;
    let orgs: Vec<&str> = done.iter().map(|o| o.as_str()).collect();
    let message = format!(
        "spec.orgId moved to {}: let go of the previous orgId {}",
        lt.spec.org_id,
        orgs.join(", ")
    );
    let status = report::with_outcome(lt, status, Reason::Issuing, &message);
    report::write_status(ctx, lt, &status).await?;
    if revoked > 0 {
        ctx.metrics.token_revoked();
        report::publish(ctx, lt, EventType::Normal, "TokenRevoked", &message).await;
    }
    ctx.forget(&object_ref(lt));
    ctx.metrics.track(&key_of(lt), Some(Reason::Issuing));
    // Look again at once (fresh read): claim the new org or wait for it.
    Ok(Outcome {
        action: Action::requeue(Duration::from_millis(100)),
        reason: Reason::Issuing,
    })
}

/// The Secret holds the token of an interrupted issue (written after its POST): record it.
async fn adopt(
    lt: &LinkToken,
    ctx: &Context,
    obs: &Observation,
    key: &str,
) -> Result<Outcome, Error> {
    let value = obs
        .target
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone())
        .unwrap_or_default();
    let issued_at = obs
        .target
        .as_ref()
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(secret::ISSUED_AT_ANNOTATION).cloned());
    let mut status = lt.status.clone().unwrap_or_default();
    status.in_flight = None;
    status.atlas_error = None;
    status.issued_at = issued_at;
    status.token_secret_name = Some(obs.observed.target_secret_name.clone());
    status.issued_for = Some(IssuedFor {
        org_id: lt.spec.org_id.clone(),
        access_list_ips: lt.spec.access_list_ips.clone(),
        rotate: obs.observed.rotate.clone(),
        token_sha256: Some(secret::token_sha256(&value)),
    });
    let status = report::with_outcome(
        lt,
        status,
        Reason::TokenIssued,
        "the token Secret holds a link token issued for the current spec",
    );
    report::write_status(ctx, lt, &status).await?;
    ctx.metrics.token_issued();
    ctx.forget(&object_ref(lt));
    report::publish(
        ctx,
        lt,
        EventType::Normal,
        "TokenIssued",
        "recovered the link token of an interrupted issue",
    )
    .await;
    ctx.metrics.track(&key_of(lt), Some(Reason::TokenIssued));
    Ok(ready_outcome(ctx))
}

/// The token is current: keep the Secret in shape (rename, key, metadata) and report Ready.
async fn keep(
    lt: &LinkToken,
    ctx: &Context,
    obs: &Observation,
    source: SecretSource,
    rewrite: bool,
    delete_previous: bool,
) -> Result<Outcome, Error> {
    let status = lt.status.clone().unwrap_or_default();
    let issued_at = status.issued_at.clone().unwrap_or_else(now_rfc3339);
    if rewrite {
        let (from, key) = match &source {
            SecretSource::Target { key } => (obs.target.as_ref(), key),
            SecretSource::Previous { key, .. } => (obs.previous.as_ref(), key),
        };
        let value = from
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(key))
            .map(|v| v.0.clone())
            .unwrap_or_default();
        apply_secret(
            lt,
            ctx,
            &obs.observed.target_secret_name,
            &value,
            &issued_at,
            secret::take_back_fields(&obs.observed.target_secret),
        )
        .await?;
    }
    if delete_previous {
        delete_previous_secret(lt, ctx, obs).await?;
    }
    let mut status = status;
    status.token_secret_name = Some(obs.observed.target_secret_name.clone());
    status.atlas_error = None;
    status.in_flight = None;
    let status = report::with_outcome(
        lt,
        status,
        Reason::TokenIssued,
        "the token Secret holds a link token issued for the current spec",
    );
    report::write_status(ctx, lt, &status).await?;
    ctx.forget(&object_ref(lt));
    ctx.metrics.track(&key_of(lt), Some(Reason::TokenIssued));
    Ok(ready_outcome(ctx))
}

fn ready_outcome(ctx: &Context) -> Outcome {
    Outcome {
        action: Action::requeue(ctx.backoff.resync),
        reason: Reason::TokenIssued,
    }
}

/// Reports an Atlas failure: reason, atlasError, event; remembers it for backoff or for not
/// repeating a failure only the user can fix. The in-flight marker stays.
async fn atlas_failure(
    lt: &LinkToken,
    ctx: &Context,
    obs: &Observation,
    status: crate::api::LinkTokenStatus,
    err: AtlasError,
    op: Operation,
) -> Result<Outcome, Error> {
    let class = classify(&err, op);
    let message = err.user_message();
    let mut status = status;
    status.atlas_error = Some(report::atlas_error_status(&err));
    let status = report::with_outcome(lt, status, class.reason, &message);
    report::outcome_event(ctx, lt, class.reason, &message).await;
    report::write_status(ctx, lt, &status).await?;
    let key = object_ref(lt);
    let after = match class.retry {
        RetryHint::WaitForChange | RetryHint::SlowResync => {
            ctx.remember_stalled(
                &key,
                StalledMemo {
                    reason: class.reason,
                    generation: obs.observed.generation,
                    credentials_version: obs.observed.credentials_version.clone(),
                    rotate: obs.observed.rotate.clone(),
                    at: std::time::Instant::now(),
                },
            );
            (class.retry == RetryHint::SlowResync).then_some(ctx.backoff.resync)
        }
        RetryHint::Backoff => {
            let n = ctx.bump_attempts(&key);
            Some(backoff::exponential(n, &ctx.backoff, rand::random()))
        }
        RetryHint::After(d) => {
            let n = ctx.bump_attempts(&key);
            Some(backoff::after_retry_after(
                d,
                backoff::exponential(n, &ctx.backoff, rand::random()),
                &ctx.backoff,
                Duration::from_millis(rand::random_range(0..2000)),
            ))
        }
    };
    if let Some(delay) =
        after.filter(|_| matches!(class.retry, RetryHint::Backoff | RetryHint::After(_)))
    {
        // Other events (our own finalizer patch, a Secret touched) must not bring the retry
        // forward: decide holds until this is due.
        ctx.remember_retry(
            &key,
            RetryMemo {
                reason: class.reason,
                generation: obs.observed.generation,
                credentials_version: obs.observed.credentials_version.clone(),
                rotate: obs.observed.rotate.clone(),
                due: backoff::due_in(std::time::Instant::now(), delay),
            },
        );
    }
    tracing::info!(linktoken = %key_of(lt), reason = %class.reason, http_status = ?err.http_status(),
        error_code = err.error_code().unwrap_or(""), retry_in = ?after, "Atlas call failed");
    Ok(Outcome {
        action: after.map_or_else(Action::await_change, Action::requeue),
        reason: class.reason,
    })
}

/// Server-side apply of the whole token Secret (labels, annotations, ownerReference, data).
async fn apply_secret(
    lt: &LinkToken,
    ctx: &Context,
    name: &str,
    token: &[u8],
    issued_at: &str,
    force: bool,
) -> Result<(), Error> {
    let ns = lt.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let owner = lt
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    let lt_name = lt.name_any();
    let ts = lt.spec.token_secret.as_ref();
    let desired = DesiredSecret {
        name,
        namespace: &ns,
        key: lt.spec.token_secret_key(),
        token,
        org_id: &lt.spec.org_id,
        issued_at,
        linktoken_name: &lt_name,
        owner,
        user_labels: ts.and_then(|t| t.labels.as_ref()),
        user_annotations: ts.and_then(|t| t.annotations.as_ref()),
    };
    let mut body = serde_json::to_value(desired.build())?;
    if let Some(obj) = body.as_object_mut() {
        obj.insert("apiVersion".into(), "v1".into());
        obj.insert("kind".into(), "Secret".into());
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    // Forced only on a Secret we control (see `secret::take_back_fields`); otherwise a field
    // another manager owns fails the apply instead of being taken.
    let mut pp = PatchParams::apply(FIELD_MANAGER);
    pp.force = force;
    api.patch(name, &pp, &Patch::Apply(&body)).await?;
    Ok(())
}

/// After a `tokenSecret.name` change: delete the old Secret, only if we control it (the uid
/// precondition makes sure it is the very object we looked at).
async fn delete_previous_secret(
    lt: &LinkToken,
    ctx: &Context,
    obs: &Observation,
) -> Result<(), Error> {
    let (Some(prev), Some(uid)) = (obs.previous.as_ref(), lt.uid()) else {
        return Ok(());
    };
    if !secret::is_controlled_by(prev, &uid) {
        return Ok(());
    }
    let ns = lt.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: prev.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&prev.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
