//! Deletion: the finalizer's job. What to do is decided by the pure
//! [`decide::decide_cleanup`] (table-tested); this file carries it out. `Retain` lets go
//! without calling Atlas (and keeps the Secret); `Delete` revokes, but never in an org where
//! another LinkToken holds the live link (it would revoke that one's token). Deletion is never
//! blocked forever by something only a user can fix: missing credentials, 401, 403 or another
//! 4xx end in a `RevocationSkipped` warning and the finalizer goes; only 409 (active
//! migration), 429 and an unavailable Atlas keep it (`RevocationBlocked`, retried as the one
//! retry policy says), and `deletionPolicy: Retain` releases even then. What happened is a
//! [`Report`] committed by `report::commit`, like the rest of the controller's outcomes.

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
use super::report::{self, Report};
use super::secret;
use crate::api::{DeletionPolicy, LinkToken, LinkTokenStatus, Reason};
use crate::atlas::{Credentials, DeleteOutcome, Operation, classify};

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

    let report = match step {
        CleanupStep::Retain { had_token } => {
            orphan_token_secret(lt, ctx, &ns).await?;
            let released = Report::released();
            if had_token {
                released.event(
                    EventType::Normal,
                    "TokenRetained",
                    "deletionPolicy is Retain: the link token stays valid in Atlas and its Secret is kept",
                )
            } else {
                released
            }
        }
        CleanupStep::Release { skipped } => held_elsewhere(Report::released(), &skipped),
        CleanupStep::SkipNoCredentials { orgs } => Report::released().warning(
            "RevocationSkipped",
            format!("the credentials Secret is missing or invalid, so the link token in orgId {} could not be revoked in Atlas; revoke it there (DELETE .../liveMigrations/linkTokens) if it still matters", orgs.join(", ")),
        ),
        CleanupStep::Revoke { revoke, skipped } => {
            let report = held_elsewhere(Report::released(), &skipped);
            match creds {
                Some(creds) => revoke_all(lt, ctx, &creds, &revoke, status, report).await,
                // decide_cleanup revokes only with valid credentials; stay total anyway.
                None => report,
            }
        }
    };
    let blocked = report
        .reason
        .map(|_| report.status.as_ref().map(|(_, m)| m.clone()));
    let after = report::commit(ctx, lt, report).await?;
    match blocked {
        // Atlas would not revoke yet: the finalizer stays and the retry policy says when.
        Some(message) => Err(Error::RevocationBlocked {
            message: message.unwrap_or_default(),
            retry_after: after.unwrap_or(ctx.backoff.max),
        }),
        None => Ok(Action::await_change()),
    }
}

/// DELETE in each org. Ends in `released` (with TokenRevoked, or a RevocationSkipped warning
/// for a refusal only a user can act on), or in a RevocationBlocked report that keeps the
/// finalizer (409, 429, Atlas unavailable).
async fn revoke_all(
    lt: &LinkToken,
    ctx: &Context,
    creds: &Credentials,
    revoke: &[String],
    mut status: LinkTokenStatus,
    released: Report,
) -> Report {
    for org in revoke {
        match ctx.atlas.delete_link_token(creds, org).await {
            Ok(DeleteOutcome::Deleted) | Ok(DeleteOutcome::AlreadyAbsent) => {}
            Err(e) => {
                let class = classify(&e, Operation::Finalize);
                let message = e.user_message();
                if class.reason != Reason::RevocationBlocked
                    && class.reason != Reason::AtlasRateLimited
                {
                    return released.warning("RevocationSkipped", format!("Atlas refused the revocation in orgId {org} ({message}); the finalizer is released so deletion is not blocked; revoke the link in Atlas if it still matters"));
                }
                status.atlas_error = Some(report::atlas_error_status(&e));
                let message = format!(
                    "{message}; retrying. Set spec.deletionPolicy: Retain to delete without revoking"
                );
                // 409 and 5xx back off, 429 waits for its Retry-After: always a timed retry.
                let retry = match Retry::from_hint(class.retry) {
                    r if r.holds() => r,
                    _ => Retry::Backoff,
                };
                let mut blocked =
                    Report::new(lt, Reason::RevocationBlocked, retry).status(status, message);
                // Events already due (orgs held elsewhere) are not lost with the retry.
                blocked.events = released.events;
                return blocked;
            }
        }
    }
    let mut done = released.event(
        EventType::Normal,
        "TokenRevoked",
        "revoked the link token in Atlas",
    );
    done.revoked = true;
    done
}

/// Orgs left alone because another LinkToken holds the live link there: say which.
fn held_elsewhere(mut report: Report, orgs: &[String]) -> Report {
    for org in orgs {
        report = report.warning(
            "RevocationSkipped",
            format!("the link in orgId {org} was not revoked: another LinkToken holds the live link there"),
        );
    }
    report
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
