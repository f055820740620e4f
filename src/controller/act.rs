//! Carries out what `decide` chose for a LinkToken that is not being deleted.
//!
//! The issuing order is the crash-safe one of docs/lifecycle.md ("Crash recovery and
//! fencing"): dry-run of the Secret write -> in-flight marker in status -> DELETE where a token
//! may exist -> POST -> Secret at once -> status. A
//! crash anywhere leaves the marker, and the next reconcile either adopts the stored token
//! (written after the POST by the same attempt, for the same spec) or DELETEs before POSTing
//! again, so at most one link per org stays live.
//!
//! Every write is fenced: status by the LinkToken's resourceVersion (the marker at the version
//! read, the rest of the attempt at the version the marker write returned), the Secret by a
//! create when it was absent or by its observed resourceVersion and uid. A stale actor's
//! writes fail with 409 instead of overwriting a newer actor's.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::backoff::Retry;
use super::context::Context;
use super::decide::{self, IssueWhy, SecretSource, SecretState};
use super::error::Error;
use super::observe::Observation;
use super::report::{self, Memory, Report, key_of, now_rfc3339};
use super::secret::{self, DesiredSecret, FIELD_MANAGER};
use crate::api::{InFlight, IssuedFor, LinkToken, LinkTokenStatus, Reason};
use crate::atlas::{AtlasError, Operation, classify};

/// The result of one reconcile: what the scheduler should do, and the Ready reason reported.
pub struct Outcome {
    pub action: Action,
    pub reason: Reason,
}

/// What a step did: the report to commit, and whether the previous token Secret (after a
/// `tokenSecret.name` change) is deleted once the status naming the new one is written.
struct Done {
    report: Report,
    delete_previous: bool,
}

impl From<Report> for Done {
    fn from(report: Report) -> Done {
        Done {
            report,
            delete_previous: false,
        }
    }
}

pub async fn apply(lt: &LinkToken, ctx: &Context, obs: Observation) -> Result<Outcome, Error> {
    let done = match decide::decide(&obs.observed) {
        decide::Step::Wait { reason, message } => wait(lt, ctx, reason, message).into(),
        decide::Step::Issue { why, revoke_orgs } => issue(lt, ctx, &obs, why, &revoke_orgs).await?,
        decide::Step::RevokePrevious { revoke, skip } => {
            revoke_previous(lt, ctx, &obs, &revoke, &skip).await?.into()
        }
        // Status already reports this failure; only the retry time is kept.
        decide::Step::Hold { reason, after } => Report::new(lt, reason, Retry::Soon(after)).into(),
        decide::Step::Adopt { token_key } => adopt(lt, &obs, &token_key).into(),
        decide::Step::AwaitTakeover { remaining } => await_takeover(lt, remaining).into(),
        decide::Step::Abandon {
            revoke_orgs,
            reason,
            message,
        } => abandon(lt, ctx, &obs, &revoke_orgs, reason, message)
            .await
            .into(),
        decide::Step::Keep {
            source,
            rewrite_secret,
            delete_previous,
        } => keep(lt, ctx, &obs, source, rewrite_secret, delete_previous).await?,
    };
    // spec.source: a current token is handed to the source before Ready (see `link`).
    let done = Done {
        report: super::link::follow(lt, ctx, &obs, done.report).await?,
        delete_previous: done.delete_previous,
    };
    let reason = done.report.reason.unwrap_or(Reason::TokenIssued);
    let after = report::commit(ctx, lt, done.report).await?;
    if done.delete_previous {
        delete_previous_secret(lt, ctx, &obs).await?;
    }
    Ok(Outcome {
        action: schedule(after),
        reason,
    })
}

/// Nothing to do until something changes. An empty message means "the same stalled failure
/// as before": status already says so, and Atlas is not called again.
fn wait(lt: &LinkToken, ctx: &Context, reason: Reason, message: String) -> Report {
    // While an org's owner is being deleted, look again soon: the takeover should not wait
    // for the slow resync if the deletion event was missed.
    let all = ctx.all_linktokens();
    let owner_leaving = reason == Reason::OrgConflict && super::index::owner_is_deleting(&all, lt);
    if reason == Reason::OrgConflict && !message.is_empty() {
        let owner = super::index::org_owner(&all, &lt.spec.org_id)
            .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()));
        tracing::info!(linktoken = %report::key_of(lt), owner = owner.unwrap_or_default(),
            org_id = %lt.spec.org_id, "the orgId is claimed by another LinkToken");
    }
    // Credentials rechecks back off per object; a success (`forget`) starts them over.
    let retry = if owner_leaving {
        Retry::Soon(Duration::from_secs(2))
    } else {
        Retry::for_reason(reason)
    };
    let report = Report::new(lt, reason, retry);
    if message.is_empty() {
        return report;
    }
    report.status(lt.status.clone().unwrap_or_default(), message)
}

/// Another process's issue was in flight: its requests may still reach Atlas, so nothing is
/// sent for this LinkToken until they have timed out (`takeover`). The message stays the same
/// through the wait, so status is written once.
fn await_takeover(lt: &LinkToken, remaining: Duration) -> Report {
    let message = "an issue started by another operator process was interrupted; waiting for its requests to time out before revoking and reissuing";
    tracing::info!(linktoken = %key_of(lt), remaining_ms = remaining.as_millis() as u64, "{message}");
    Report::new(lt, Reason::Issuing, Retry::Soon(remaining))
        .status(lt.status.clone().unwrap_or_default(), message)
}

/// An interrupted issue that cannot complete: revoke where its token may be live, then drop
/// the marker and wait. A failed DELETE keeps the marker (and retries with backoff).
async fn abandon(
    lt: &LinkToken,
    ctx: &Context,
    obs: &Observation,
    revoke_orgs: &[String],
    reason: Reason,
    message: String,
) -> Report {
    let mut status = lt.status.clone().unwrap_or_default();
    if let Some(creds) = obs.credentials.as_ref() {
        for o in revoke_orgs {
            if let Err(e) = ctx.revoke_in(creds, o).await {
                return atlas_failure(lt, obs, status, e, Operation::Delete);
            }
        }
    }
    status.in_flight = None;
    status.atlas_error = None;
    Report::new(lt, reason, Retry::Resync).status(status, message)
}

async fn issue(
    lt: &LinkToken,
    ctx: &Context,
    obs: &Observation,
    why: IssueWhy,
    revoke_orgs: &[String],
) -> Result<Done, Error> {
    let Some(creds) = obs.credentials.as_ref() else {
        // decide only issues with valid credentials; stay total anyway.
        let message = "the credentials Secret is not readable".to_string();
        return Ok(wait(lt, ctx, Reason::CredentialsNotFound, message).into());
    };
    let Some(plan) = SecretWrite::plan(obs) else {
        // decide waits on a foreign Secret; stay total anyway.
        return Ok(foreign_secret(lt, ctx).into());
    };
    let org = lt.spec.org_id.clone();
    let target_name = obs.observed.target_secret_name.clone();
    let mut status = lt.status.clone().unwrap_or_default();
    // storeToken: false: no Secret to dry-run; the source must be able to take the token.
    let source_only = obs.observed.token_store != decide::TokenStore::Secret;
    if source_only && let Some(not_now) = super::link::preflight(lt, ctx).await {
        return Ok(not_now.into());
    }

    // 0. Would the API server accept the Secret? A quota, an admission webhook or invalid
    // metadata refusing it only after the POST would leave a minted org API key that every
    // retry revokes and mints again. A dry-run with a placeholder token costs no Atlas call,
    // and its error message cannot echo a real token, so it can go into the Ready message.
    let placeholder = [b'x'; DRY_RUN_TOKEN_LEN];
    let placeholder_attempt = "0".repeat(new_attempt_id().len());
    if !source_only
        && let Err(e) = write_secret(
            lt,
            ctx,
            &target_name,
            &placeholder,
            &now_rfc3339(),
            Some(&placeholder_attempt),
            &plan,
            true,
        )
        .await
    {
        return match SecretRefusal::of(&e) {
            // The Secret changed since it was observed, or exists though it was taken as
            // absent without a read: read it next time (its event requeues too).
            SecretRefusal::Changed => {
                ctx.versions.secret_exists(&report::object_ref(lt));
                Err(e)
            }
            SecretRefusal::Refused(detail) => {
                let message = format!(
                    "the API server refuses to write Secret {target_name} ({detail}); no token is issued until it can be written"
                );
                Ok(secret_write_failed(lt, status, message).into())
            }
        };
    }

    // A marker for another org never reaches here: decide revokes previous orgs first
    // (RevokePrevious), so replacing the marker loses no record of a live token.

    // 1. The marker: from here on a token may exist in Atlas for this org. It names this
    // attempt and what it is for, so crash recovery adopts only this attempt's token and only
    // for this spec; and it is written at the resourceVersion this reconcile read, so an actor
    // working from an older read (a leader that lost its Lease) fails here, before any Atlas
    // call. The one status write outside `report::commit`: it must land before the POST.
    let attempt_id = new_attempt_id();
    // Ours: a later reconcile of this process goes on from it without the takeover wait.
    ctx.markers.own(&report::object_ref(lt), &attempt_id);
    status.in_flight = Some(InFlight {
        org_id: org.clone(),
        started_at: now_rfc3339(),
        attempt_id: Some(attempt_id.clone()),
        access_list_sha256: Some(decide::access_list_sha256(&lt.spec.access_list_ips)),
        rotate: obs.observed.rotate.clone(),
    });
    let status_marked = report::with_outcome(
        lt,
        status.clone(),
        Reason::Issuing,
        why.describe(),
        ctx.credentials_grace,
    );
    let rv = lt.resource_version();
    // Every later status write of this attempt is fenced by the version this write returns.
    let rv = report::write_status_at(ctx, lt, &status_marked, rv.as_deref()).await?;

    super::pause::point("before-revoke").await;
    // 2. DELETE wherever a token of ours may be live (Atlas keeps one link per org).
    for o in revoke_orgs {
        if let Err(e) = ctx.revoke_in(creds, o).await {
            let failed = atlas_failure(lt, obs, status_marked, e, Operation::Delete);
            return Ok(failed.fenced_at(rv).into());
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
        Err(e) => {
            let failed = atlas_failure(lt, obs, status_marked, e, Operation::Create);
            return Ok(failed.fenced_at(rv).into());
        }
    };

    super::pause::point("after-post").await;
    if source_only {
        // The token exists only here: straight to the source, recorded as issued first.
        let sha = secret::token_sha256(token.expose().as_bytes());
        let mut issued = status_marked;
        issued.in_flight = None;
        issued.atlas_error = None;
        issued.issued_at = Some(now_rfc3339());
        issued.issued_for = Some(IssuedFor {
            org_id: org.clone(),
            access_list_ips: lt.spec.access_list_ips.clone(),
            rotate: obs.observed.rotate.clone(),
            token_sha256: Some(sha.clone()),
        });
        let failure = report::Memory::Failure {
            generation: obs.observed.generation,
            credentials_version: obs.observed.credentials_version.clone(),
            rotate: obs.observed.rotate.clone(),
        };
        let report = super::link::hand_over(lt, ctx, token, &sha, why, issued, rv, failure).await?;
        return Ok(report.into());
    }
    // 4. The Secret, at once: the token exists nowhere else. Created if it was observed
    // absent (one that appeared meanwhile is not ours to take), else updated only if it is
    // still the very object observed.
    let issued_at = now_rfc3339();
    if let Err(e) = write_secret(
        lt,
        ctx,
        &target_name,
        token.expose().as_bytes(),
        &issued_at,
        Some(&attempt_id),
        &plan,
        false,
    )
    .await
    {
        drop(token);
        let failed = secret_not_written(lt, ctx, obs, creds, status_marked, &plan, e).await?;
        return Ok(failed.fenced_at(rv).into());
    }

    super::pause::point("after-secret").await;
    // 5. Status: what the token was issued for; the marker goes (fenced by the marker's
    // version). Then the previous Secret, if the name changed.
    let sha = secret::token_sha256(token.expose().as_bytes());
    let (ev, note) = if why.is_rotation() {
        (
            "TokenRotated",
            format!("issued a new link token: {}", why.describe()),
        )
    } else {
        ("TokenIssued", "issued a link token".to_string())
    };
    let mut ready = ready(lt, obs, status_marked, Some((Some(issued_at), sha)))
        .fenced_at(rv)
        .event(EventType::Normal, ev, note);
    ready.issued = true;
    Ok(Done {
        report: ready,
        delete_previous: true,
    })
}

/// The one Ready report: the token Secret holds a token issued for the current spec. `issued`
/// (when it was issued, the token's hash) records a new or recovered token; without it the
/// recorded one stays.
fn ready(
    lt: &LinkToken,
    obs: &Observation,
    mut status: LinkTokenStatus,
    issued: Option<(Option<String>, String)>,
) -> Report {
    status.in_flight = None;
    status.atlas_error = None;
    status.token_secret_name = Some(obs.observed.target_secret_name.clone());
    if let Some((issued_at, sha)) = issued {
        status.issued_at = issued_at;
        status.issued_for = Some(IssuedFor {
            org_id: lt.spec.org_id.clone(),
            access_list_ips: lt.spec.access_list_ips.clone(),
            rotate: obs.observed.rotate.clone(),
            token_sha256: Some(sha),
        });
    }
    Report::new(
        lt,
        Reason::TokenIssued,
        Retry::for_reason(Reason::TokenIssued),
    )
    .status(
        status,
        "the token Secret holds a link token issued for the current spec",
    )
    .memory(Memory::Forget)
}

/// decide waits on a Secret that is not ours; the I/O steps stay total with this anyway.
fn foreign_secret(lt: &LinkToken, ctx: &Context) -> Report {
    let message = "the token Secret exists and is not controlled by this LinkToken".to_string();
    wait(lt, ctx, Reason::SecretConflict, message)
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
) -> Result<Report, Error> {
    let status = lt.status.clone().unwrap_or_default();
    let mut done: Vec<&String> = Vec::new();
    let mut revoked = 0usize;
    let mut skipped: Vec<String> = Vec::new();
    if !revoke.is_empty() {
        let Some(creds) = obs.credentials.as_ref() else {
            // decide only revokes with valid credentials; stay total anyway.
            let message = "the credentials Secret is not readable".to_string();
            return Ok(wait(lt, ctx, Reason::CredentialsNotFound, message));
        };
        for org in revoke {
            match ctx.revoke_in(creds, org).await {
                Ok(_) => {
                    revoked += 1;
                    done.push(org);
                }
                // The credentials cannot act on the old org (any more): nothing this
                // LinkToken can do there. Say so once and move on; a stall here would keep
                // claiming the old org forever. A gateway's 404 is not Atlas's word: retried.
                Err(e) if e.is_refusal_in_org() => {
                    ctx.note_left_live(org);
                    skipped.push(format!(
                        "the link in the previous orgId {org} was not revoked: Atlas refused ({}); revoke it there if it still matters",
                        e.user_message()
                    ));
                    done.push(org);
                }
                Err(e) => {
                    let mut failed = atlas_failure(lt, obs, status, e, Operation::Delete);
                    for note in skipped {
                        failed = failed.warning("RevocationSkipped", note);
                    }
                    return Ok(failed);
                }
            }
        }
    }
    for org in skip {
        skipped.push(format!(
            "the link in the previous orgId {org} was not revoked: another LinkToken holds the live link there"
        ));
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
    // Look again at once (fresh read): claim the new org or wait for it.
    let mut report = Report::new(lt, Reason::Issuing, Retry::Soon(Duration::from_millis(100)))
        .status(status, message.clone())
        .memory(Memory::Forget);
    for note in skipped {
        report = report.warning("RevocationSkipped", note);
    }
    if revoked > 0 {
        report.revoked = true;
        report = report.event(EventType::Normal, "TokenRevoked", message);
    }
    Ok(report)
}

/// Length of the placeholder token of the dry-run (longer than the tokens Atlas returns, so a
/// size limit that passes the dry-run passes the real write).
const DRY_RUN_TOKEN_LEN: usize = 2048;

/// A random id for one issue attempt (128 bits, hex).
fn new_attempt_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// How the token Secret is written, decided from what was observed.
enum SecretWrite {
    /// Observed absent: POST create, so a Secret that appeared since fails with 409
    /// AlreadyExists instead of being taken over.
    Create,
    /// Ours: server-side apply carrying the observed resourceVersion and uid, so a Secret
    /// changed, deleted or replaced since fails with 409 instead of being clobbered.
    Update {
        resource_version: String,
        uid: String,
        /// As observed: the create's `Update` entry of our manager is converted before the
        /// first apply (see `own_created_fields_as_applied`).
        managed_fields: Vec<ManagedFieldsEntry>,
    },
}

impl SecretWrite {
    /// None for a Secret that is not ours (never written).
    fn plan(obs: &Observation) -> Option<SecretWrite> {
        match &obs.observed.target_secret {
            SecretState::Absent => Some(SecretWrite::Create),
            SecretState::Ours(_) => {
                let meta = &obs.target.as_ref()?.metadata;
                Some(SecretWrite::Update {
                    resource_version: meta.resource_version.clone()?,
                    uid: meta.uid.clone()?,
                    managed_fields: meta.managed_fields.clone().unwrap_or_default(),
                })
            }
            SecretState::Foreign => None,
        }
    }
}

/// Why the API server did not write the token Secret.
enum SecretRefusal {
    /// It changed since observed (409: it appeared, or its resourceVersion moved on), or is
    /// gone or replaced (404; 422 on the immutable uid).
    Changed,
    /// Refused on its merits (quota, webhook, invalid or oversized): "HTTP code Reason: message".
    Refused(String),
}

impl SecretRefusal {
    fn of(e: &Error) -> SecretRefusal {
        match e {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                SecretRefusal::Changed
            }
            Error::Kube(kube::Error::Api(s)) if s.code == 422 && s.message.contains("uid") => {
                SecretRefusal::Changed
            }
            Error::Kube(kube::Error::Api(s)) => {
                // A webhook's message can be long; the condition message has a size limit.
                let message: String = s.message.chars().take(1024).collect();
                SecretRefusal::Refused(format!("HTTP {} {}: {message}", s.code, s.reason))
            }
            other => SecretRefusal::Refused(other.to_string()),
        }
    }

    /// The status code and reason only: the API server's message about a write that held a
    /// real token is not repeated (an admission webhook's message could quote the object).
    fn short(e: &Error) -> String {
        match e {
            Error::Kube(kube::Error::Api(s)) => format!("HTTP {} {}", s.code, s.reason),
            _ => "no response from the API server".to_string(),
        }
    }
}

/// The Secret write after the POST failed: the minted token is stored nowhere. The report is
/// fenced by the caller (the marker's version).
async fn secret_not_written(
    lt: &LinkToken,
    ctx: &Context,
    obs: &Observation,
    creds: &crate::atlas::Credentials,
    marked: LinkTokenStatus,
    plan: &SecretWrite,
    err: Error,
) -> Result<Report, Error> {
    let name = &obs.observed.target_secret_name;
    match (SecretRefusal::of(&err), plan) {
        (SecretRefusal::Changed, SecretWrite::Create) => {
            // Someone created the Secret while the POST was in flight. Whose is it?
            let api: Api<Secret> =
                Api::namespaced(ctx.client.clone(), &lt.namespace().unwrap_or_default());
            let uid = lt.uid().unwrap_or_default();
            let now = api.get_opt(name).await?;
            if now
                .as_ref()
                .is_some_and(|s| secret::is_controlled_by(s, &uid))
            {
                // Another actor of ours (a newer leader) wrote it: its token may be the live
                // link, so no DELETE here. The marker stays; the next reconcile sorts it out.
                return Err(err);
            }
            // A user's or a tool's Secret: never taken over. The token just minted would be
            // a live org API key that nobody holds: revoke it now.
            if let Err(e) = ctx.revoke_in(creds, &lt.spec.org_id).await {
                return Ok(atlas_failure(lt, obs, marked, e, Operation::Delete));
            }
            let mut status = marked;
            status.in_flight = None;
            let message = format!(
                "Secret {name} appeared while the token was being issued and is not controlled by this LinkToken; it is never overwritten, and the token just issued was revoked. Delete it or set spec.tokenSecret.name"
            );
            Ok(Report::new(lt, Reason::SecretConflict, Retry::Resync).status(status, message))
        }
        // Our Secret changed since observed (a stale actor, or an edit meanwhile): no write,
        // no DELETE (the newer state may hold the live link). The marker stays and forces a
        // DELETE before the next POST.
        (SecretRefusal::Changed, SecretWrite::Update { .. }) => Err(err),
        (SecretRefusal::Refused(_), _) => {
            // The same write passed the dry-run, so this is rare (a webhook that changed its
            // mind, quota used up meanwhile).
            let detail = SecretRefusal::short(&err);
            let message = format!(
                "the API server refused to write Secret {name} after the token was issued ({detail}); the token will be revoked before the next attempt"
            );
            Ok(secret_write_failed(lt, marked, message))
        }
    }
}

/// A refused Secret write (SecretWriteFailed), retried with backoff.
fn secret_write_failed(lt: &LinkToken, status: LinkTokenStatus, message: String) -> Report {
    let reason = Reason::SecretWriteFailed;
    tracing::info!(linktoken = %key_of(lt), reason = %reason, "token Secret not writable");
    Report::new(lt, reason, Retry::for_reason(reason)).status(status, message)
}

/// The Secret holds the token of an interrupted issue (written after its POST): record it.
fn adopt(lt: &LinkToken, obs: &Observation, key: &str) -> Report {
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
        .and_then(|a| a.get(secret::ISSUED_AT_ANNOTATION).cloned())
        // Anyone who can edit the Secret can edit its annotation; the CRD takes only RFC 3339
        // there, and a refused status write would wedge the LinkToken.
        .filter(|v| crate::api::time::parse_rfc3339(v).is_some())
        .or_else(|| Some(now_rfc3339()));
    let status = lt.status.clone().unwrap_or_default();
    let mut report = ready(
        lt,
        obs,
        status,
        Some((issued_at, secret::token_sha256(&value))),
    )
    .event(
        EventType::Normal,
        "TokenIssued",
        "recovered the link token of an interrupted issue",
    );
    report.issued = true;
    report
}

/// The token is current: keep the Secret in shape (rename, key, metadata) and report Ready.
async fn keep(
    lt: &LinkToken,
    ctx: &Context,
    obs: &Observation,
    source: SecretSource,
    rewrite: bool,
    delete_previous: bool,
) -> Result<Done, Error> {
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
        let Some(plan) = SecretWrite::plan(obs) else {
            return Ok(foreign_secret(lt, ctx).into());
        };
        if let Err(e) = write_secret(
            lt,
            ctx,
            &obs.observed.target_secret_name,
            &value,
            &issued_at,
            None,
            &plan,
            false,
        )
        .await
        {
            return match SecretRefusal::of(&e) {
                SecretRefusal::Changed => Err(e),
                SecretRefusal::Refused(_) => {
                    let detail = SecretRefusal::short(&e);
                    let message = format!(
                        "the API server refused to write Secret {} ({detail})",
                        obs.observed.target_secret_name
                    );
                    Ok(secret_write_failed(lt, status, message).into())
                }
            };
        }
    }
    Ok(Done {
        report: ready(lt, obs, status, None),
        delete_previous,
    })
}

/// The scheduler's action for a delay of the retry policy (None: wait for a watch event).
fn schedule(after: Option<Duration>) -> Action {
    after.map_or_else(Action::await_change, Action::requeue)
}

/// An Atlas failure as a report: reason, atlasError, the Warning when the reason changed,
/// remembered for backoff or for not repeating a failure only the user can fix. The in-flight
/// marker stays (`status` carries it).
fn atlas_failure(
    lt: &LinkToken,
    obs: &Observation,
    mut status: LinkTokenStatus,
    err: AtlasError,
    op: Operation,
) -> Report {
    let class = classify(&err, op);
    status.atlas_error = Some(report::atlas_error_status(&err));
    tracing::info!(linktoken = %key_of(lt), reason = %class.reason, http_status = ?err.http_status(),
        error_code = err.error_code().unwrap_or(""), "Atlas call failed");
    Report::new(lt, class.reason, Retry::for_atlas_failure(class))
        .status(status, err.user_message())
        .memory(Memory::Failure {
            generation: obs.observed.generation,
            credentials_version: obs.observed.credentials_version.clone(),
            rotate: obs.observed.rotate.clone(),
        })
}

/// Writes the whole token Secret (labels, annotations, ownerReference, data) as `plan` says:
/// create, or server-side apply fenced by the observed resourceVersion and uid. With `dry_run`
/// the API server runs every check (admission, quota, validation) and stores nothing.
#[allow(clippy::too_many_arguments)]
async fn write_secret(
    lt: &LinkToken,
    ctx: &Context,
    name: &str,
    token: &[u8],
    issued_at: &str,
    attempt_id: Option<&str>,
    plan: &SecretWrite,
    dry_run: bool,
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
        attempt_id,
    };
    let mut body = desired.build();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let key = report::object_ref(lt);
    match plan {
        SecretWrite::Create => {
            let pp = PostParams {
                dry_run,
                field_manager: Some(FIELD_MANAGER.into()),
            };
            let created = api.create(&pp, &body).await?;
            if !dry_run {
                ctx.versions
                    .wrote_secret(&key, created.metadata.resource_version.as_deref());
            }
        }
        SecretWrite::Update {
            resource_version,
            uid,
            managed_fields,
        } => {
            // The create's field ownership becomes an apply entry here, on the first update,
            // rather than with a second write after every create: only an apply can drop
            // fields it no longer writes, and most token Secrets are never updated.
            let converted = match dry_run {
                false => {
                    own_created_fields_as_applied(&api, name, resource_version, managed_fields)
                        .await
                }
                true => None,
            };
            if let Some(rv) = &converted {
                ctx.versions.wrote_secret(&key, Some(rv));
            }
            body.metadata.resource_version = converted.or_else(|| Some(resource_version.clone()));
            body.metadata.uid = Some(uid.clone());
            let mut value = serde_json::to_value(&body)?;
            if let Some(obj) = value.as_object_mut() {
                obj.insert("apiVersion".into(), "v1".into());
                obj.insert("kind".into(), "Secret".into());
            }
            // Forced: the Secret is ours (see `secret::take_back_fields`), and the preconditions
            // make sure it is still the very object observed.
            let mut pp = PatchParams::apply(FIELD_MANAGER).force();
            pp.dry_run = dry_run;
            let written = api.patch(name, &pp, &Patch::Apply(&value)).await?;
            if !dry_run {
                ctx.versions
                    .wrote_secret(&key, written.metadata.resource_version.as_deref());
            }
        }
    }
    Ok(())
}

/// A create records its fields under an `Update` entry of our field manager, and a later
/// server-side apply (an `Apply` entry) cannot remove fields another entry owns: a renamed
/// data key or a label dropped from `spec.tokenSecret` would stay forever. Turn the create's
/// entry into an `Apply` entry (what `kubectl` does when it upgrades client-side apply,
/// `k8s.io/client-go/util/csaupgrade`), fenced by the resourceVersion observed. Returns the
/// Secret's new resourceVersion when it converted. Best effort: on failure the apply that
/// follows is still fenced by the version observed, only such leftovers can remain.
async fn own_created_fields_as_applied(
    api: &Api<Secret>,
    name: &str,
    resource_version: &str,
    entries: &[ManagedFieldsEntry],
) -> Option<String> {
    let mut entries = entries.to_vec();
    let mut changed = false;
    for e in &mut entries {
        if e.manager.as_deref() == Some(FIELD_MANAGER)
            && e.operation.as_deref() == Some("Update")
            && e.subresource.is_none()
        {
            e.operation = Some("Apply".into());
            changed = true;
        }
    }
    if !changed {
        return None;
    }
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": resource_version,
            "managedFields": entries,
        }
    });
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match api.patch(name, &pp, &Patch::Merge(&patch)).await {
        Ok(patched) => patched.metadata.resource_version,
        Err(e) => {
            tracing::debug!(secret = %name, error = %e, "could not convert the create's field ownership to apply");
            None
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AtlasErrorStatus, CredentialsSecretRef, LinkTokenSpec};
    use crate::atlas::{Endpoint, TransportKind};
    use decide::{CredentialsState, Observed, OrgOwnership};

    const ORG: &str = "5f1e9b2a3c4d5e6f7a8b9c0d";

    fn lt() -> LinkToken {
        let mut l = LinkToken::new(
            "lt",
            LinkTokenSpec {
                org_id: ORG.into(),
                access_list_ips: vec!["10.0.0.0/24".into()],
                credentials_secret_ref: CredentialsSecretRef {
                    name: "creds".into(),
                },
                token_secret: None,
                deletion_policy: Default::default(),
                source: None,
            },
        );
        l.metadata.namespace = Some("ns".into());
        l.metadata.resource_version = Some("41".into());
        l
    }

    fn obs() -> Observation {
        Observation {
            observed: Observed {
                generation: Some(3),
                org_id: ORG.into(),
                access_list: vec!["10.0.0.0/24".into()],
                rotate: Some("r2".into()),
                credentials: CredentialsState::Valid,
                credentials_version: Some("7".into()),
                org: OrgOwnership::Owner,
                target_secret_name: "new-name".into(),
                target_secret_key: "linkToken".into(),
                target_secret: SecretState::Absent,
                previous_secret: None,
                issued_for: None,
                in_flight: None,
                held_by_others: vec![],
                others_may_hold: false,
                reported_unusable: false,
                reported_issuing: false,
                reported_conflict: false,
                last_stalled: None,
                retry_hold: None,
                token_store: decide::TokenStore::Secret,
                takeover_wait: None,
            },
            credentials: None,
            target: None,
            previous: None,
        }
    }

    /// A status in the middle of an attempt: marker, an earlier failure, the old Secret name.
    fn marked() -> LinkTokenStatus {
        LinkTokenStatus {
            in_flight: Some(InFlight {
                org_id: ORG.into(),
                started_at: "2026-11-30T06:00:00.000Z".into(),
                attempt_id: Some("a".into()),
                access_list_sha256: None,
                rotate: None,
            }),
            atlas_error: Some(AtlasErrorStatus::default()),
            token_secret_name: Some("old-name".into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_ready_status_is_built_in_one_place_for_issue_adopt_and_keep() {
        let (lt, obs) = (lt(), obs());
        // Issue and adopt: a new token, recorded with what it was issued for.
        let r = ready(&lt, &obs, marked(), Some((Some("t".into()), "sha".into())));
        assert_eq!(r.reason, Some(Reason::TokenIssued));
        assert_eq!(r.retry, Retry::Resync);
        assert_eq!(r.memory, Memory::Forget);
        assert_eq!(r.fence.as_deref(), Some("41"), "fenced at the version read");
        let (status, _) = r.status.expect("status is written");
        assert_eq!(status.in_flight, None, "the marker goes");
        assert_eq!(status.atlas_error, None);
        assert_eq!(status.token_secret_name.as_deref(), Some("new-name"));
        assert_eq!(status.issued_at.as_deref(), Some("t"));
        let issued = status.issued_for.expect("issued for");
        assert_eq!(issued.org_id, ORG);
        assert_eq!(issued.access_list_ips, ["10.0.0.0/24"]);
        assert_eq!(issued.rotate.as_deref(), Some("r2"));
        assert_eq!(issued.token_sha256.as_deref(), Some("sha"));
        // Keep: the recorded token stays as it is.
        let mut before = marked();
        before.issued_at = Some("earlier".into());
        let (status, _) = ready(&lt, &obs, before, None).status.expect("status");
        assert_eq!(status.issued_at.as_deref(), Some("earlier"));
        assert_eq!(status.issued_for, None);
        assert_eq!(status.in_flight, None);
    }

    #[test]
    fn an_atlas_failure_keeps_the_marker_and_is_remembered_with_its_inputs() {
        let (lt, obs) = (lt(), obs());
        let transient = AtlasError::Transport {
            endpoint: Endpoint::LinkTokens,
            kind: TransportKind::Timeout,
            detail: String::new(),
        };
        let r = atlas_failure(&lt, &obs, marked(), transient, Operation::Create)
            .fenced_at(Some("42".into()));
        assert_eq!(r.reason, Some(Reason::AtlasUnavailable));
        assert_eq!(r.retry, Retry::Backoff);
        assert_eq!(r.fence.as_deref(), Some("42"), "the marker write's version");
        assert_eq!(
            r.memory,
            Memory::Failure {
                generation: Some(3),
                credentials_version: Some("7".into()),
                rotate: Some("r2".into()),
            }
        );
        let (status, _) = r.status.expect("status");
        assert!(status.in_flight.is_some(), "the marker stays");
        assert!(status.atlas_error.is_some());
        let r = atlas_failure(
            &lt,
            &obs,
            marked(),
            AtlasError::InvalidOrgId,
            Operation::Create,
        );
        assert_eq!(r.reason, Some(Reason::AtlasRejected));
        assert_eq!(r.retry, Retry::OnChange);
    }
}
