//! Deletion: the finalizer's job. What to do is decided by the pure
//! [`decide::decide_cleanup`] (table-tested); this file carries it out. `Retain` lets go
//! without calling Atlas (and keeps the Secret); `Delete` revokes, but never in an org where
//! another LinkToken holds the live link (it would revoke that one's token). Deletion is never blocked forever by something only a user can fix:
//! missing credentials, 401, 403 or another 4xx end in a `RevocationSkipped` warning and the
//! finalizer goes; only 409 (active migration), 429 and an unavailable Atlas keep it
//! (`RevocationBlocked`, retried with backoff), and `deletionPolicy: Retain` releases even then.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::backoff::Retry;
use super::context::Context;
use super::decide::{self, CleanupObserved, CleanupStep, CredentialsState};
use super::error::Error;
use super::index;
use super::observe::read_credentials;
use super::report::{self, key_of, object_ref};
use super::secret;
use crate::api::{DeletionPolicy, LinkToken, Reason};
use crate::atlas::{DeleteOutcome, Operation, classify};

/// Carries out the deletion decision; `Ok` means the finalizer may go.
pub async fn cleanup(lt: &LinkToken, ctx: &Context) -> Result<Action, Error> {
    let ns = lt.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let status = lt.status.clone().unwrap_or_default();
    let retain = lt.spec.deletion_policy == DeletionPolicy::Retain;
    let issued_org = status.issued_for.as_ref().map(|i| i.org_id.clone());
    let in_flight_org = status.in_flight.as_ref().map(|f| f.org_id.clone());
    let held_by_others = index::held_by_others(&ctx.all_linktokens(), lt);
    // The credentials are read only when something may have to be revoked.
    let may_revoke = !retain
        && decide::orgs_that_may_hold_a_token(issued_org.as_deref(), in_flight_org.as_deref())
            .iter()
            .any(|o| !held_by_others.contains(o));
    let (credentials, creds) = if may_revoke {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        let creds_secret = secrets
            .get_opt(&lt.spec.credentials_secret_ref.name)
            .await?;
        let (state, creds, _) = read_credentials(creds_secret.as_ref());
        (state, creds)
    } else {
        (CredentialsState::Missing, None)
    };
    let step = decide::decide_cleanup(&CleanupObserved {
        retain,
        issued_org,
        in_flight_org,
        held_by_others,
        credentials,
    });

    let (revoke, held) = match step {
        CleanupStep::Retain { had_token } => {
            orphan_token_secret(lt, ctx, &ns).await?;
            if had_token {
                report::publish(
                    ctx,
                    lt,
                    EventType::Normal,
                    "TokenRetained",
                    "deletionPolicy is Retain: the link token stays valid in Atlas and its Secret is kept",
                )
                .await;
            }
            return Ok(released(ctx, lt));
        }
        CleanupStep::Release { skipped } => {
            held_elsewhere(ctx, lt, &skipped).await;
            return Ok(released(ctx, lt));
        }
        CleanupStep::SkipNoCredentials { orgs } => {
            skipped(ctx, lt, &format!("the credentials Secret is missing or invalid, so the link token in orgId {} could not be revoked in Atlas; revoke it there (DELETE .../liveMigrations/linkTokens) if it still matters", orgs.join(", "))).await;
            return Ok(released(ctx, lt));
        }
        CleanupStep::Revoke { revoke, skipped } => (revoke, skipped),
    };
    held_elsewhere(ctx, lt, &held).await;
    let Some(creds) = creds else {
        // decide_cleanup revokes only with valid credentials; stay total anyway.
        return Ok(released(ctx, lt));
    };

    for org in &revoke {
        match ctx.atlas.delete_link_token(&creds, org).await {
            Ok(DeleteOutcome::Deleted) | Ok(DeleteOutcome::AlreadyAbsent) => {}
            Err(e) => {
                let class = classify(&e, Operation::Finalize);
                let message = e.user_message();
                if class.reason != Reason::RevocationBlocked
                    && class.reason != Reason::AtlasRateLimited
                {
                    skipped(ctx, lt, &format!("Atlas refused the revocation in orgId {org} ({message}); the finalizer is released so deletion is not blocked; revoke the link in Atlas if it still matters")).await;
                    return Ok(released(ctx, lt));
                }
                let mut status = status.clone();
                status.atlas_error = Some(report::atlas_error_status(&e));
                let message = format!(
                    "{message}; retrying. Set spec.deletionPolicy: Retain to delete without revoking"
                );
                let status = report::with_outcome(lt, status, Reason::RevocationBlocked, &message);
                report::outcome_event(ctx, lt, Reason::RevocationBlocked, &message).await;
                report::write_status(ctx, lt, &status).await?;
                // 409 and 5xx back off, 429 waits for its Retry-After: always a timed retry.
                let retry = match Retry::from_hint(class.retry) {
                    r if r.holds() => r,
                    _ => Retry::Backoff,
                };
                let retry_after = ctx
                    .retry_in(&object_ref(lt), retry)
                    .unwrap_or(ctx.backoff.max);
                return Err(Error::RevocationBlocked {
                    message,
                    retry_after,
                });
            }
        }
    }
    ctx.metrics.token_revoked();
    report::publish(
        ctx,
        lt,
        EventType::Normal,
        "TokenRevoked",
        "revoked the link token in Atlas",
    )
    .await;
    Ok(released(ctx, lt))
}

/// Orgs left alone because another LinkToken holds the live link there: say which.
async fn held_elsewhere(ctx: &Context, lt: &LinkToken, orgs: &[String]) {
    for org in orgs {
        skipped(ctx, lt, &format!("the link in orgId {org} was not revoked: another LinkToken holds the live link there")).await;
    }
}

fn released(ctx: &Context, lt: &LinkToken) -> Action {
    ctx.forget(&object_ref(lt));
    ctx.metrics.track(&key_of(lt), None);
    Action::await_change()
}

async fn skipped(ctx: &Context, lt: &LinkToken, note: &str) {
    tracing::warn!(linktoken = %key_of(lt), "revocation skipped: {note}");
    report::publish(ctx, lt, EventType::Warning, "RevocationSkipped", note).await;
}

/// With Retain the token stays valid, so its Secret must survive the LinkToken: drop our
/// ownerReference (garbage collection would delete it otherwise). Only a Secret we control.
async fn orphan_token_secret(lt: &LinkToken, ctx: &Context, ns: &str) -> Result<(), Error> {
    let Some(uid) = lt.uid() else { return Ok(()) };
    let name = lt
        .status
        .as_ref()
        .and_then(|s| s.token_secret_name.clone())
        .unwrap_or_else(|| lt.spec.token_secret_name(&lt.name_any()));
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let Some(s) = api.get_opt(&name).await? else {
        return Ok(());
    };
    if !secret::is_controlled_by(&s, &uid) {
        return Ok(());
    }
    let remaining: Vec<_> = s
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.uid != uid)
        .collect();
    let patch = serde_json::json!({
        "metadata": {
            "ownerReferences": remaining,
            "resourceVersion": s.metadata.resource_version,
        }
    });
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}
