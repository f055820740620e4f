//! Deletion: the finalizer's job. What to do is decided by the pure
//! [`decide::decide_cleanup`] (table-tested); this file carries it out. `Retain` lets go
//! without calling Atlas (and keeps the Secret), except to revoke the orphan of an interrupted
//! issue that no Secret holds; `Delete` revokes, but never in an org where
//! another LinkToken holds the live link (it would revoke that one's token). Deletion is never
//! blocked forever by something only a user can fix: missing credentials, 401, 403 or another
//! 4xx end in a `RevocationSkipped` warning and the finalizer goes (except in a namespace being
//! deleted: its credentials Secret is deleted while the LinkToken waits here, so the
//! credentials last read revoke); only 409 (active migration), 429 and an unavailable Atlas keep
//! it (`RevocationBlocked`, retried as the one
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
use super::report::{self, Report, object_ref};
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
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    // With Retain, an unfinished issue's token is kept only if the token Secret holds it (the
    // attempt id it was written with matches the marker); otherwise it is an orphan.
    let in_flight_recorded = match (&status.in_flight, retain) {
        (Some(marker), true) => {
            let name = status
                .token_secret_name
                .clone()
                .unwrap_or_else(|| lt.spec.token_secret_name(&lt.name_any()));
            let written = secrets.get_opt(&name).await?;
            let attempt = written
                .as_ref()
                .filter(|s| {
                    lt.uid()
                        .is_some_and(|uid| secret::is_controlled_by(s, &uid))
                })
                .and_then(|s| s.annotations().get(secret::ATTEMPT_ID_ANNOTATION).cloned());
            marker.attempt_id.is_some() && attempt == marker.attempt_id
        }
        _ => false,
    };
    // The credentials are read only when something may have to be revoked.
    let may_revoke = if retain {
        in_flight_org
            .as_ref()
            .is_some_and(|o| !in_flight_recorded && !held_by_others.contains(o))
    } else {
        decide::orgs_that_may_hold_a_token(issued_org.as_deref(), in_flight_org.as_deref())
            .iter()
            .any(|o| !held_by_others.contains(o))
    };
    let (credentials, creds) = if may_revoke {
        let creds_secret = secrets
            .get_opt(&lt.spec.credentials_secret_ref.name)
            .await?;
        let (state, creds, _) = read_credentials(creds_secret.as_ref());
        let remembered =
            ctx.remembered_credentials(&object_ref(lt), &lt.spec.credentials_secret_ref.name);
        // Only asked when it could matter: one dry-run request.
        let terminating = state == CredentialsState::Missing
            && remembered.is_some()
            && namespace_terminating(&secrets).await?;
        credentials_for_cleanup(state, creds, remembered, terminating)
    } else {
        (CredentialsState::Missing, None)
    };
    let step = decide::decide_cleanup(&CleanupObserved {
        retain,
        issued_org,
        in_flight_org,
        held_by_others,
        credentials,
        in_flight_recorded,
        takeover_wait: super::takeover::remaining(
            status
                .in_flight
                .as_ref()
                .map(|f| ctx.markers.origin(&object_ref(lt), f.attempt_id.as_deref())),
            ctx.takeover_wait,
        ),
    });

    let report = match step {
        CleanupStep::Retain {
            had_token,
            revoke_orphan,
        } => {
            let released = match revoke_orphan {
                Some(org) => {
                    revoke_unfinished_issue(ctx, creds.as_ref(), &org, Report::released()).await
                }
                None => Report::released(),
            };
            orphan_token_secret(lt, ctx, &ns).await?;
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
        CleanupStep::AwaitTakeover { remaining } => {
            let message = "an issue started by another operator process was interrupted; waiting for its requests to time out before revoking";
            tracing::info!(linktoken = %report::key_of(lt), remaining_ms = remaining.as_millis() as u64, "{message}");
            Report::new(lt, Reason::RevocationBlocked, Retry::Soon(remaining))
                .status(status.clone(), message)
        }
        CleanupStep::Release { skipped } => {
            let mut report = held_elsewhere(Report::released(), &skipped);
            match super::link::unlink_before_revoke(lt, ctx).await {
                Ok(notes) => report.events.extend(notes),
                Err(blocked) => return finish(lt, ctx, blocked).await,
            }
            report
        }
        CleanupStep::SkipNoCredentials { orgs } => {
            for org in &orgs {
                ctx.note_left_live(org);
            }
            // The source has credentials of its own: its link is removed (or, when those are
            // gone too, counted and logged as left) whatever happened to the Atlas ones.
            let mut report = Report::released().warning(
                "RevocationSkipped",
                format!("the credentials Secret is missing or invalid, so the link token in orgId {} could not be revoked in Atlas; revoke it there (DELETE .../liveMigrations/linkTokens) if it still matters", orgs.join(", ")),
            );
            match super::link::unlink_before_revoke(lt, ctx).await {
                Ok(notes) => report.events.extend(notes),
                Err(blocked) => return finish(lt, ctx, blocked).await,
            }
            report
        }
        CleanupStep::Revoke { revoke, skipped } => {
            let mut report = held_elsewhere(Report::released(), &skipped);
            // The source link goes first (a revoked token would leave it NOT_SYNCED).
            match super::link::unlink_before_revoke(lt, ctx).await {
                Ok(notes) => report.events.extend(notes),
                Err(blocked) => return finish(lt, ctx, blocked).await,
            }
            match creds {
                Some(creds) => revoke_all(lt, ctx, &creds, &revoke, status, report).await,
                // decide_cleanup revokes only with valid credentials; stay total anyway.
                None => report,
            }
        }
    };
    finish(lt, ctx, report).await
}

/// Commits the deletion's report: released, or blocked (the finalizer stays).
async fn finish(lt: &LinkToken, ctx: &Context, report: Report) -> Result<Action, Error> {
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
        None => {
            // Released: nothing is kept about it any more (its delete event does the same).
            ctx.forget_credentials(&object_ref(lt));
            Ok(Action::await_change())
        }
    }
}

/// Retain, but an interrupted issue may have minted a token no Secret holds: nobody can use it
/// and nobody would ever revoke it. Best effort: a refusal is a warning, deletion goes on.
async fn revoke_unfinished_issue(
    ctx: &Context,
    creds: Option<&Credentials>,
    org: &str,
    released: Report,
) -> Report {
    // No note_left_live here: the org may hold this LinkToken's retained token, and an issue
    // DELETEing first there would revoke it too (Atlas revokes every link of the org).
    let Some(creds) = creds else {
        return released.warning("RevocationSkipped", format!("an unfinished issue may have left a link token in orgId {org} that no Secret holds, and the credentials Secret is missing or invalid, so it was not revoked; revoke it in Atlas if it matters"));
    };
    match ctx.revoke_in(creds, org).await {
        Ok(_) => {
            let mut done = released.event(
                EventType::Normal,
                "TokenRevoked",
                format!("revoked the link token of an unfinished issue in orgId {org}: no Secret held it (deletionPolicy Retain keeps only the token in the Secret)"),
            );
            done.revoked = true;
            done
        }
        Err(e) => released.warning("RevocationSkipped", format!("an unfinished issue may have left a link token in orgId {org} that no Secret holds; Atlas refused its revocation ({}); revoke it there if it matters", e.user_message())),
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
        match ctx.revoke_in(creds, org).await {
            Ok(DeleteOutcome::Deleted) | Ok(DeleteOutcome::AlreadyAbsent) => {}
            Err(e) => {
                let class = classify(&e, Operation::Finalize);
                let message = e.user_message();
                if class.reason != Reason::RevocationBlocked
                    && class.reason != Reason::AtlasRateLimited
                {
                    ctx.note_left_live(org);
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

/// The credentials the finalizer revokes with: the Secret's as read now. When the Secret is
/// gone because the whole namespace is being deleted, the ones last read from it: the namespace
/// controller deletes Secrets at once while the LinkToken waits on this finalizer, and nobody
/// asked for the link to be left live. A user who deleted the credentials Secret themselves
/// withdrew the operator's access: then, as documented, nothing is revoked. A Secret that is
/// there but invalid is what the user wants now: nothing remembered overrides it.
fn credentials_for_cleanup(
    read: CredentialsState,
    creds: Option<Credentials>,
    remembered: Option<Credentials>,
    namespace_terminating: bool,
) -> (CredentialsState, Option<Credentials>) {
    match (read, remembered) {
        (CredentialsState::Missing, Some(r)) if namespace_terminating => {
            (CredentialsState::Valid, Some(r))
        }
        (read, _) => (read, creds),
    }
}

/// Is this namespace being deleted? Asked with a dry-run create of a Secret (a call the
/// operator's RBAC already allows, so no read access to Namespaces is needed): the API server's
/// NamespaceLifecycle admission refuses it with the cause `NamespaceTerminating`. Nothing is
/// stored; any other answer (created, already exists, ...) means no.
async fn namespace_terminating(secrets: &Api<Secret>) -> Result<bool, Error> {
    let probe = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("linktoken-operator-namespace-probe".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let pp = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    match secrets.create(&pp, &probe).await {
        Err(kube::Error::Api(s)) => Ok(is_namespace_terminating(&s)),
        Ok(_) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn is_namespace_terminating(s: &kube::core::Status) -> bool {
    s.code == 403
        && s.details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(public: &str) -> Credentials {
        let data = [
            ("publicApiKey".to_string(), public.as_bytes().to_vec()),
            ("privateApiKey".to_string(), b"private".to_vec()),
        ]
        .into_iter()
        .collect();
        Credentials::from_secret_data(&data).expect("credentials")
    }

    #[test]
    fn in_a_terminating_namespace_a_deleted_credentials_secret_is_replaced_by_memory() {
        let (state, c) =
            credentials_for_cleanup(CredentialsState::Missing, None, Some(creds("a")), true);
        assert_eq!(state, CredentialsState::Valid);
        assert!(c.is_some());
    }

    #[test]
    fn a_credentials_secret_a_user_deleted_stays_missing() {
        let (state, c) =
            credentials_for_cleanup(CredentialsState::Missing, None, Some(creds("a")), false);
        assert_eq!(state, CredentialsState::Missing);
        assert!(c.is_none());
    }

    #[test]
    fn only_the_namespace_terminating_cause_counts() {
        // As the API server answers a create in a terminating namespace.
        let status = |code: u16, cause: &str| -> kube::core::Status {
            serde_json::from_value(serde_json::json!({
                "code": code,
                "message": "forbidden",
                "reason": "Forbidden",
                "details": {"causes": [{"reason": cause, "message": "namespace is being terminated"}]}
            }))
            .expect("status")
        };
        assert!(is_namespace_terminating(&status(
            403,
            "NamespaceTerminating"
        )));
        assert!(!is_namespace_terminating(&status(403, "")));
        assert!(!is_namespace_terminating(&status(
            409,
            "NamespaceTerminating"
        )));
        assert!(!is_namespace_terminating(&kube::core::Status::default()));
    }

    #[test]
    fn without_a_memory_a_deleted_credentials_secret_stays_missing() {
        let (state, c) = credentials_for_cleanup(CredentialsState::Missing, None, None, true);
        assert_eq!(state, CredentialsState::Missing);
        assert!(c.is_none());
    }

    #[test]
    fn an_invalid_credentials_secret_is_not_overridden_by_memory() {
        let invalid = CredentialsState::Invalid("bad".into());
        let (state, c) = credentials_for_cleanup(invalid.clone(), None, Some(creds("a")), true);
        assert_eq!(state, invalid);
        assert!(c.is_none());
    }

    #[test]
    fn a_valid_credentials_secret_is_used_as_read() {
        let (state, c) = credentials_for_cleanup(
            CredentialsState::Valid,
            Some(creds("now")),
            Some(creds("old")),
            true,
        );
        assert_eq!(state, CredentialsState::Valid);
        assert_eq!(
            format!("{:?}", c.expect("creds")),
            format!("{:?}", creds("now"))
        );
    }
}
