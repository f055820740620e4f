//! The link at the source (spec.source): hand the issued token to Cloud Manager or Ops Manager
//! and follow the link until SYNCED. docs/source-link.md explains the choices.
//!
//! [`decide_link`] is pure (what the spec declares, what status.link records, the current
//! token's hash -> [`LinkStep`]), as is [`linked_condition`]. [`follow`] carries a step out
//! after the issuing path reported the token current (Ready reason TokenIssued), and turns that
//! report into the link's: Ready is True only once the source org is linked with the current
//! token and SYNCED.
//!
//! Crash safety, in the issuing path's marker discipline: before a POST to the source the
//! hash of the token being posted is written to `status.link.postingSha256` (with the source's
//! URL and org, so deletion knows where a link may exist); the status recording the source's
//! answer clears it. After a crash in between, the next reconcile asks the source's status
//! before posting again, so the org is linked once. A new token is never linked in the
//! reconcile that issued it: that one records the token (status), the next one links it, so
//! every state a crash can leave is one of the rows of [`decide_link`]. The marker write is
//! fenced (resourceVersion), and so, as far as a source without preconditions allows, are the
//! calls after it: a POST (or the DELETE before a relink) goes out only while a fresh read
//! shows the marker is still the LinkToken's latest write ([`fence_holds`]), so an actor held
//! after its marker never posts a stale view over another actor's link. The DELETE of a link
//! the spec left (spec.source moved or removed) is fenced the same way, at the version the
//! reconcile read ([`unlink_fence`]).

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::events::EventType;
use std::collections::BTreeMap;
use std::time::Duration;

use super::backoff::Retry;
use super::conditions;
use super::context::Context;
use super::decide::{IssueWhy, OrgOwnership, TokenStore};
use super::error::Error;
use super::observe::Observation;
use super::report::{self, Report, now_rfc3339};
use super::secret;
use super::source_claims;
use crate::api::{
    AtlasErrorStatus, CaBundleRef, LINKED, LinkStatus, LinkToken, LinkTokenStatus,
    ROTATE_ANNOTATION, Reason, SourceSpec,
};
use crate::atlas::{Credentials, LinkTokenValue};
use crate::source::{SourceError, SyncStatus, Target, Unlinked};

/// Where the spec says the link should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    pub url: String,
    pub org_id: String,
}

/// The next step at the source, once the token is current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkStep {
    /// No source declared and none recorded: nothing to do.
    Nothing,
    /// A link is recorded where the spec no longer points (spec.source removed or moved):
    /// DELETE it there (with the credentials recorded), drop status.link, then look again.
    UnlinkRecorded,
    /// A record where the spec no longer points, of no link: neither a token linked there nor
    /// a POST in flight (the last one was refused). Drop it without calling the source: a
    /// DELETE there would remove whatever link the org holds, another LinkToken's.
    ForgetRecorded,
    /// POST the current token (never linked with it, or a drifted link).
    Post,
    /// Ask the source's status: the org was linked with the current token, or a POST with it
    /// may have reached the source before a crash (its marker).
    Check { posted_before_crash: bool },
}

/// The link decision.
pub fn decide_link(
    declared: Option<&Declared>,
    recorded: Option<&LinkStatus>,
    token_sha256: &str,
) -> LinkStep {
    let left = |r: &LinkStatus| match r.token_sha256.is_some() || r.posting_sha256.is_some() {
        true => LinkStep::UnlinkRecorded,
        false => LinkStep::ForgetRecorded,
    };
    match (declared, recorded) {
        (None, None) => LinkStep::Nothing,
        (None, Some(r)) => left(r),
        (Some(d), Some(r)) if r.url != d.url || r.org_id != d.org_id => left(r),
        (Some(_), Some(r)) if r.token_sha256.as_deref() == Some(token_sha256) => LinkStep::Check {
            posted_before_crash: false,
        },
        (Some(_), Some(r)) if r.posting_sha256.as_deref() == Some(token_sha256) => {
            LinkStep::Check {
                posted_before_crash: true,
            }
        }
        (Some(_), _) => LinkStep::Post,
    }
}

/// Whether an attempt whose link marker write returned `marker` may still call the source,
/// given the LinkToken read fresh (`None`: gone). Only while no write reached it since the
/// marker: any other write (another actor's marker or answer, a spec edit, a rotation, a
/// deletion) means this attempt's view is stale. Without a version to compare, it may not.
pub fn fence_holds(marker: Option<&str>, now: Option<&LinkToken>) -> bool {
    marker.is_some() && marker == now.and_then(|lt| lt.metadata.resource_version.as_deref())
}

/// The version a DELETE of the link recorded where the spec no longer points is fenced at:
/// this reconcile's last fenced write (`fence`, the version its report would be written at),
/// else the version it read. Unlike a POST, that DELETE has no marker of its own (a crash
/// after it only repeats it: the org then has no link, which counts as removed).
pub fn unlink_fence<'a>(fence: Option<&'a str>, read: Option<&'a str>) -> Option<&'a str> {
    fence.or(read)
}

/// Whether the link marker's write keeps the refusal the LinkToken shows (`shown`: the Ready
/// reason, and whether it was reported for the current generation) instead of showing Linking.
/// A refusal only a user can fix (the source answered 401, 403, an unknown org, or refused the
/// token) is rechecked with one call to the source per recheck; until that call's answer says
/// otherwise the refusal stands. Showing Linking meanwhile would turn kstatus's Failed into
/// InProgress and back at every recheck, which a GitOps tool waiting on the LinkToken reads
/// as progress. After a spec change (a new generation) the attempt is new work: Linking.
pub fn marker_keeps_refusal(shown: Option<Reason>, same_generation: bool) -> bool {
    same_generation
        && matches!(
            shown,
            Some(
                Reason::SourceUnauthorized
                    | Reason::SourceForbidden
                    | Reason::SourceOrgNotFound
                    | Reason::SourceRejected
            )
        )
}

/// What a status check found, and what follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// SYNCED with the current token: Linked.
    Linked,
    /// Linked with the current token, but the source says NOT_SYNCED: reported, followed.
    NotSynced,
    /// POST the current token (the link is gone, or holds an older token).
    Post,
}

/// After a status answer. `None`: the source has no link. A link recorded with the current
/// token that vanished at the source (drift) is linked again. After a POST whose answer is
/// unknown (a crash, a timeout, a 5xx, an attempt superseded before it posted) nothing the
/// status says proves which token the source holds: it names no token, and a source's view
/// may lag a revocation, reading SYNCED for the token revoked before this one was minted. So
/// the current token is recorded as linked only from a successful POST of it: post again.
pub fn after_check(status: Option<SyncStatus>, posted_before_crash: bool) -> CheckOutcome {
    match (status, posted_before_crash) {
        (_, true) | (None, false) => CheckOutcome::Post,
        (Some(SyncStatus::Synced), false) => CheckOutcome::Linked,
        (Some(SyncStatus::NotSynced), false) => CheckOutcome::NotSynced,
    }
}

/// The Linked condition for a status being written, or None when no source is declared (and
/// the reason is not about one). `declared`: None without spec.source, else whether the token
/// status records is the one for the current spec with no issue in flight. A link reason sets
/// it. Any other reason (issuing, an Atlas failure) keeps it, but never keeps True unless the
/// token is current and status.link still records it as SYNCED: from the in-flight marker of a
/// rotation on (its DELETE revokes the linked token), and once the spec asks for another token
/// (an orgId edit that cannot be acted on yet), the old link is not reported as healthy.
pub fn linked_condition(
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
    declared: Option<bool>,
    status: &LinkTokenStatus,
    reason: Reason,
    message: &str,
) -> Option<Condition> {
    let make = |ok: bool, r: &str, m: &str| {
        conditions::condition(previous, generation, now, LINKED, ok, r, m)
    };
    if reason.is_link() {
        return Some(make(reason == Reason::Linked, reason.as_str(), message));
    }
    let token_current = declared?;
    let holds = token_current
        && status.link.as_ref().is_some_and(|l| {
            l.sync_status.as_deref() == Some(SyncStatus::Synced.as_str())
                && l.token_sha256.is_some()
                && l.token_sha256
                    == status
                        .issued_for
                        .as_ref()
                        .and_then(|i| i.token_sha256.clone())
        });
    let before = previous.iter().find(|c| c.type_ == LINKED);
    Some(match before {
        Some(c) if c.status == "True" && holds => make(true, &c.reason, &c.message),
        Some(c) if c.status == "False" => make(false, &c.reason, &c.message),
        _ => make(
            false,
            Reason::Linking.as_str(),
            "waiting for a link token issued for the current spec",
        ),
    })
}

fn declared(spec: Option<&SourceSpec>) -> Option<Declared> {
    spec.map(|s| Declared {
        url: s.url.trim_end_matches('/').to_string(),
        org_id: s.org_id.clone(),
    })
}

/// Where the token is kept: its Secret, or (`spec.source.storeToken: false`) only at the
/// source, which holds it when status.link records the issued token as linked, or as being
/// posted when a crash interrupted the hand-over (the link step then asks the source).
pub fn token_store(lt: &LinkToken) -> TokenStore {
    if lt.spec.source.as_ref().is_none_or(|s| s.store_token) {
        return TokenStore::Secret;
    }
    let status = lt.status.as_ref();
    let issued = status
        .and_then(|s| s.issued_for.as_ref())
        .and_then(|i| i.token_sha256.as_deref());
    let at_source = issued.is_some_and(|sha| {
        status.and_then(|s| s.link.as_ref()).is_some_and(|l| {
            l.token_sha256.as_deref() == Some(sha) || l.posting_sha256.as_deref() == Some(sha)
        })
    });
    TokenStore::SourceOnly { at_source }
}

/// Carries the link out after the issuing path's report. Only a report that says the token is
/// current (TokenIssued) is followed; any other passes through unchanged.
pub async fn follow(
    lt: &LinkToken,
    ctx: &Context,
    obs: &Observation,
    report: Report,
) -> Result<Report, Error> {
    if report.reason != Some(Reason::TokenIssued) {
        return Ok(report);
    }
    let Some((mut status, _)) = report.status.clone() else {
        return Ok(report);
    };
    if token_store(lt) != TokenStore::Secret {
        // No Secret holds the token: status names none.
        status.token_secret_name = None;
    }
    let want = declared(lt.spec.source.as_ref());
    if want.is_none() && status.link.is_none() {
        return Ok(report);
    }
    if let (true, Some(d)) = (report.issued, want.as_ref()) {
        // A new token: record it first (this report), link it in the next reconcile, so the
        // status naming the token always lands before the source sees it.
        let org = d.org_id.clone();
        let mut r = report;
        r.reason = Some(Reason::Linking);
        r.retry = Retry::Soon(Duration::from_millis(200));
        r.status = Some((
            status,
            format!("a new link token is issued; handing it to source org {org} next"),
        ));
        return Ok(r);
    }
    let sha = status
        .issued_for
        .as_ref()
        .and_then(|i| i.token_sha256.clone())
        .unwrap_or_default();
    let step = decide_link(want.as_ref(), status.link.as_ref(), &sha);
    let run = Run {
        lt,
        ctx,
        base: report,
        status,
    };
    if let Some(r) = run
        .held_elsewhere(&step)
        .or_else(|| run.held_for_retry(&step))
    {
        return Ok(r);
    }
    match step {
        LinkStep::Nothing => Ok(run.base),
        LinkStep::UnlinkRecorded => run.unlink_recorded().await,
        LinkStep::ForgetRecorded => Ok(run.forget_recorded()),
        LinkStep::Post => run.post(obs, &sha).await,
        LinkStep::Check {
            posted_before_crash,
        } => run.check(obs, &sha, posted_before_crash).await,
    }
}

/// One link step: the issuing path's Ready report, and the status it would write.
struct Run<'a> {
    lt: &'a LinkToken,
    ctx: &'a Context,
    base: Report,
    status: LinkTokenStatus,
}

/// The source's access as read for this LinkToken.
struct Access {
    creds: Credentials,
    ca: Option<Vec<u8>>,
}

impl Run<'_> {
    fn source(&self) -> Option<&SourceSpec> {
        self.lt.spec.source.as_ref()
    }

    /// The report when another LinkToken holds the source org this step would call: a
    /// SourceOrgConflict for a POST or a status check at the declared org (nothing is called
    /// there), or, for the removal of a link recorded where the spec no longer points, the
    /// record dropped without a DELETE (that DELETE would remove the other's link). None: go on.
    fn held_elsewhere(&self, step: &LinkStep) -> Option<Report> {
        let all = self.ctx.all_linktokens();
        match step {
            LinkStep::Post | LinkStep::Check { .. } => {
                let spec = self.source()?;
                let OrgOwnership::ConflictWith {
                    same_namespace_name,
                } = source_claims::ownership(&all, self.lt)
                else {
                    return None;
                };
                tracing::info!(linktoken = %report::key_of(self.lt),
                    owner = source_claims::owner_for_log(&all, self.lt).unwrap_or_default(),
                    source_org = %spec.org_id, "the source org is claimed by another LinkToken");
                let holder = match same_namespace_name {
                    Some(name) => format!("LinkToken {name}"),
                    None => "another LinkToken".to_string(),
                };
                let message = format!(
                    "source org {} at {} is claimed by {holder}: a source org holds one link, so this LinkToken calls nothing there until that one lets go of it",
                    spec.org_id,
                    spec.url.trim_end_matches('/')
                );
                Some(self.report(Reason::SourceOrgConflict, message, self.status.clone()))
            }
            LinkStep::UnlinkRecorded if source_claims::recorded_held_by_other(&all, self.lt) => {
                let recorded = self.status.link.as_ref()?;
                let note = format!(
                    "the link of source org {} was not removed: another LinkToken holds the link there now",
                    recorded.org_id
                );
                let mut status = self.status.clone();
                status.link = None;
                let mut r = self.report(
                    Reason::Linking,
                    "the previous source link belongs to another LinkToken now; looking again"
                        .into(),
                    status,
                );
                r.retry = Retry::Soon(Duration::from_millis(200));
                Some(r.warning("UnlinkSkipped", note))
            }
            _ => None,
        }
    }

    /// The report of the link: `reason` with `message`, `status` recorded.
    fn report(&self, reason: Reason, message: String, status: LinkTokenStatus) -> Report {
        let mut r = self.base.clone();
        r.reason = Some(reason);
        r.retry = Retry::for_reason(reason);
        r.status = Some((status, message));
        // Only a held link ends the failure streak: until then the retries back off (the
        // issuing path's report forgets it, as its own work succeeded). A transient failure
        // holds the source until its retry is due.
        r.memory = match reason {
            Reason::Linked => report::Memory::Forget,
            Reason::SourceUnavailable | Reason::NotSynced => report::Memory::SourceFailure {
                generation: self.lt.metadata.generation,
                rotate: self.lt.annotations().get(ROTATE_ANNOTATION).cloned(),
                token_sha256: self.current_sha(),
            },
            _ => report::Memory::Keep,
        };
        r
    }

    /// The hash of the token this step links (the one issued for the current spec).
    fn current_sha(&self) -> String {
        self.status
            .issued_for
            .as_ref()
            .and_then(|i| i.token_sha256.clone())
            .unwrap_or_default()
    }

    /// The source was refused for a transient failure whose retry is not due yet and nothing
    /// changed since: the failure shown stays, nothing is called, look again when it is due.
    fn held_for_retry(&self, step: &LinkStep) -> Option<Report> {
        if !matches!(step, LinkStep::Post | LinkStep::Check { .. }) {
            return None;
        }
        let hold = self.ctx.memo(&report::object_ref(self.lt)).link_hold?;
        let rotate = self.lt.annotations().get(ROTATE_ANNOTATION).cloned();
        let left = hold.remaining(
            self.lt.metadata.generation,
            rotate.as_deref(),
            &self.current_sha(),
            std::time::Instant::now(),
        )?;
        let shown = self
            .lt
            .status
            .as_ref()
            .and_then(|s| conditions::ready_of(&s.conditions))
            .filter(|(r, _)| *r == hold.reason.as_str())
            .map(|(_, m)| m.to_string())?;
        let mut r = self.report(hold.reason, shown, self.status.clone());
        r.memory = report::Memory::Keep;
        r.retry = Retry::Soon(left);
        Some(r)
    }

    fn failed(&self, mut status: LinkTokenStatus, e: &SourceError, doing: &str) -> Report {
        let reason = e.reason();
        if let Some(l) = status.link.as_mut() {
            l.source_error = Some(source_error_status(e));
        }
        let hint = hint(reason);
        tracing::info!(linktoken = %report::key_of(self.lt), reason = %reason,
            http_status = ?e.http_status(), error_code = e.error_code().unwrap_or(""), "source call failed");
        let mut r = self.report(reason, format!("{doing}: {e}{hint}"), status);
        if let Some(after) = e.retry_after() {
            r.retry = Retry::After(after);
        }
        r
    }

    async fn access(&self, spec: &SourceSpec) -> Result<Access, Report> {
        let ns = self.lt.namespace().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &ns);
        let wait = |reason: Reason, message: String| {
            let mut status = self.status.clone();
            if let Some(l) = status.link.as_mut() {
                l.source_error = None;
            }
            self.report(reason, message, status)
        };
        if let Err(e) = self.ctx.source.check_allowed(&spec.url) {
            return Err(wait(Reason::SourceNotAllowed, e.to_string()));
        }
        let name = &spec.credentials_secret_ref.name;
        if *name == self.lt.spec.credentials_secret_ref.name {
            // The API server refuses this (CEL); an object stored before that rule must not
            // send the Atlas org's credentials to the source either.
            return Err(wait(
                Reason::SourceConfigInvalid,
                format!(
                    "spec.source.credentialsSecretRef names the Atlas credentials Secret {name}; the source needs credentials of its own"
                ),
            ));
        }
        let creds_secret = match secrets.get_opt(name).await {
            Ok(s) => s,
            Err(e) => {
                return Err(wait(
                    Reason::SourceUnavailable,
                    format!("reading the source credentials Secret {name}: {e}"),
                ));
            }
        };
        let Some(creds_secret) = creds_secret else {
            return Err(wait(
                Reason::SourceCredentialsNotFound,
                format!("the source credentials Secret {name} does not exist; waiting for it"),
            ));
        };
        let creds = match source_credentials(&secret_data(&creds_secret)) {
            Ok(c) => c,
            Err(why) => {
                return Err(wait(
                    Reason::SourceConfigInvalid,
                    format!("source credentials Secret {name}: {why}"),
                ));
            }
        };
        let ca = match &spec.ca_bundle {
            None => None,
            Some(r) => match read_ca(self.ctx, &ns, r).await {
                Ok(pem) => Some(pem),
                Err(why) => return Err(wait(Reason::SourceConfigInvalid, why)),
            },
        };
        Ok(Access { creds, ca })
    }

    /// The token the Secret holds (its hash is the issued one), from the target Secret or the
    /// previous one during a rename.
    fn token(obs: &Observation, sha: &str) -> Option<LinkTokenValue> {
        [obs.target.as_ref(), obs.previous.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.data.as_ref())
            .flat_map(|d| d.values())
            .find(|v| secret::token_sha256(&v.0) == sha)
            .and_then(|v| std::str::from_utf8(&v.0).ok())
            .map(|t| LinkTokenValue::new(t.to_string()))
    }

    /// [`fence_holds`] on the LinkToken read fresh from the API server (a consistent read,
    /// not the cache, which may lag another actor's writes). Err(Superseded) otherwise: the
    /// attempt ends without calling the source, and the next reconcile reads the object fresh.
    async fn confirm_fence(&self, marker: Option<&str>) -> Result<(), Error> {
        let ns = self
            .lt
            .namespace()
            .ok_or(Error::MissingMetadata("namespace"))?;
        let api: Api<LinkToken> = Api::namespaced(self.ctx.client.clone(), &ns);
        let now = api.get_opt(&self.lt.name_any()).await?;
        if fence_holds(marker, now.as_ref()) {
            return Ok(());
        }
        self.ctx.versions.write_failed(&report::object_ref(self.lt));
        tracing::info!(linktoken = %report::key_of(self.lt),
            "the LinkToken changed during this attempt; not calling the source");
        Err(Error::Superseded)
    }

    /// The Ready reason and message the link marker's write shows ([`marker_keeps_refusal`]).
    fn marker_outcome(&self, spec: &SourceSpec) -> (Reason, String) {
        let ready = self
            .lt
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::READY));
        let shown = report::current_reason(self.lt);
        let same_generation =
            ready.is_some_and(|c| c.observed_generation == self.lt.metadata.generation);
        match (shown, ready) {
            (Some(r), Some(c)) if marker_keeps_refusal(shown, same_generation) => {
                (r, c.message.clone())
            }
            _ => (
                Reason::Linking,
                format!("handing the link token to source org {}", spec.org_id),
            ),
        }
    }

    fn recorded(&self, spec: &SourceSpec) -> LinkStatus {
        let mut l = self.status.link.clone().unwrap_or_default();
        l.url = spec.url.trim_end_matches('/').to_string();
        l.org_id = spec.org_id.clone();
        l.credentials_secret_name = spec.credentials_secret_ref.name.clone();
        l
    }

    async fn check(
        self,
        obs: &Observation,
        sha: &str,
        posted_before_crash: bool,
    ) -> Result<Report, Error> {
        let Some(spec) = self.source().cloned() else {
            return Ok(self.base);
        };
        let access = match self.access(&spec).await {
            Ok(a) => a,
            Err(r) => return Ok(r),
        };
        let target = Target {
            url: &spec.url,
            ca_pem: access.ca.as_deref(),
        };
        let answer = self
            .ctx
            .source
            .status(target, &access.creds, &spec.org_id)
            .await;
        let mut status = self.status.clone();
        let mut link = self.recorded(&spec);
        match answer {
            Err(e) => {
                status.link = Some(link);
                Ok(self.failed(status, &e, "asking the source for the link's status"))
            }
            Ok(s) => match after_check(s, posted_before_crash) {
                CheckOutcome::Linked => {
                    // The token was recorded from the POST that linked it (its event was
                    // published then); the source now reports it SYNCED.
                    link.sync_status = Some(SyncStatus::Synced.as_str().into());
                    link.source_error = None;
                    status.link = Some(link);
                    Ok(self.report(Reason::Linked, linked_message(&spec), status))
                }
                CheckOutcome::NotSynced => {
                    link.sync_status = Some(SyncStatus::NotSynced.as_str().into());
                    link.source_error = None;
                    status.link = Some(link);
                    Ok(self.report(
                        Reason::NotSynced,
                        format!(
                            "source org {} reports the link NOT_SYNCED although it holds the current token; if the token was revoked in Atlas, rotate (annotate atlasmigration.io/rotate) to issue and link a new one",
                            spec.org_id
                        ),
                        status,
                    ))
                }
                CheckOutcome::Post => {
                    let run = Run { status, ..self };
                    run.post(obs, sha).await
                }
            },
        }
    }

    /// The current token from its Secret, then [`Run::post_with`]. With storeToken: false
    /// no Secret holds it: the link is recorded as lost, and the next reconcile reissues
    /// (revoking it first).
    async fn post(self, obs: &Observation, sha: &str) -> Result<Report, Error> {
        let Some(spec) = self.source().cloned() else {
            return Ok(self.base);
        };
        let Some(token) = Self::token(obs, sha) else {
            let mut status = self.status.clone();
            let message = if spec.store_token {
                // The Secret changed under us; its watch event brings a fresh look.
                "the token Secret changed; looking again".to_string()
            } else {
                if let Some(l) = status.link.as_mut() {
                    l.token_sha256 = None;
                    l.posting_sha256 = None;
                }
                format!(
                    "source org {} does not hold the token, which is stored nowhere else (storeToken: false): a new one is issued and linked",
                    spec.org_id
                )
            };
            // A failure already reported (the hand-over that lost the token) stays the reason
            // shown while the next issue waits out its retry.
            let shown = report::current_reason(self.lt).filter(|r| is_link_failure(*r));
            let (reason, message) = match (shown, self.lt.status.as_ref()) {
                (Some(r), Some(st)) => (
                    r,
                    conditions::ready_of(&st.conditions)
                        .map(|(_, m)| m.to_string())
                        .unwrap_or(message),
                ),
                _ => (Reason::Linking, message),
            };
            let mut r = self.report(reason, message, status);
            r.retry = Retry::Soon(Duration::from_millis(200));
            return Ok(r);
        };
        let access = match self.access(&spec).await {
            Ok(a) => a,
            Err(r) => return Ok(r),
        };
        self.post_with(&spec, &access, token, sha).await
    }

    /// Marker, POST (a 409 from a link with another token: DELETE, then POST once more),
    /// then the status recording the answer.
    async fn post_with(
        self,
        spec: &SourceSpec,
        access: &Access,
        token: LinkTokenValue,
        sha: &str,
    ) -> Result<Report, Error> {
        let mut status = self.status.clone();
        let relink = status
            .link
            .as_ref()
            .is_some_and(|l| l.token_sha256.is_some());
        let mut link = self.recorded(spec);
        link.posting_sha256 = Some(sha.to_string());
        status.link = Some(link.clone());
        // The marker: from here a link with this token may exist at the source.
        let (reason, message) = self.marker_outcome(spec);
        let marked = report::with_outcome(
            self.lt,
            status.clone(),
            reason,
            &message,
            self.ctx.credentials_grace,
        );
        let rv =
            report::write_status_at(self.ctx, self.lt, &marked, self.base.fence.as_deref()).await?;
        let marker = rv.clone();
        let run = Run {
            base: self.base.clone().fenced_at(rv),
            ..self
        };
        super::pause::point("before-link-post").await;
        // The marker write was fenced, but the POST cannot be: the source takes no
        // precondition. Between the two this actor may have been held (a lost Lease, a frozen
        // process) while another linked, rotated, or followed a spec that moved or dropped the
        // source; posting this attempt's view would then link a token or an org no status
        // records. So the POST goes out only while the marker is still the LinkToken's latest
        // write, read fresh. What remains is the one round trip between that read and the POST.
        run.confirm_fence(marker.as_deref()).await?;
        let target = Target {
            url: &spec.url,
            ca_pem: access.ca.as_deref(),
        };
        let source = &run.ctx.source;
        let mut answer = source
            .link(target, &access.creds, &spec.org_id, &token)
            .await;
        if answer.as_ref().is_err_and(SourceError::is_already_linked) {
            // Linked with another token (the one before a rotation): unlink, then link. The
            // DELETE removes whatever link the org holds, possibly one another actor just
            // made: the fence is confirmed again first.
            run.confirm_fence(marker.as_deref()).await?;
            answer = match source.unlink(target, &access.creds, &spec.org_id).await {
                Ok(_) => {
                    source
                        .link(target, &access.creds, &spec.org_id, &token)
                        .await
                }
                Err(e) => Err(e),
            };
        }
        drop(token);
        super::pause::point("after-link-post").await;
        match answer {
            Err(e) => {
                // The source answered the POST and refused it: it does not hold the token. (A
                // 5xx or no answer proves nothing: the marker stays and the status is asked.)
                if e.http_status().is_some_and(|s| (400..500).contains(&s))
                    && let Some(l) = status.link.as_mut()
                {
                    l.posting_sha256 = None;
                }
                Ok(run.failed(status, &e, "linking the source org"))
            }
            Ok(sync) => {
                link.token_sha256 = Some(sha.to_string());
                link.posting_sha256 = None;
                link.sync_status = sync.map(|s| s.as_str().to_string());
                link.source_error = None;
                link.linked_at = Some(now_rfc3339());
                status.link = Some(link);
                let (ev, note) = if relink {
                    (
                        "Relinked",
                        format!("linked source org {} with the new token", spec.org_id),
                    )
                } else {
                    ("Linked", linked_message(spec))
                };
                let r = if sync == Some(SyncStatus::Synced) {
                    run.report(Reason::Linked, linked_message(spec), status)
                } else {
                    run.report(
                        Reason::Linking,
                        format!(
                            "source org {} accepted the token; waiting for SYNCED",
                            spec.org_id
                        ),
                        status,
                    )
                };
                Ok(r.event(EventType::Normal, ev, note))
            }
        }
    }

    /// spec.source was removed or moved from where no link of this LinkToken exists: forget
    /// the record, then look again.
    fn forget_recorded(self) -> Report {
        let mut status = self.status.clone();
        status.link = None;
        let mut r = self.report(
            Reason::Linking,
            "the previous source held no link of this LinkToken; looking again".into(),
            status,
        );
        r.retry = Retry::Soon(Duration::from_millis(200));
        r
    }

    /// spec.source was removed or moved: delete the recorded link, then forget it.
    async fn unlink_recorded(self) -> Result<Report, Error> {
        let Some(recorded) = self.status.link.clone() else {
            return Ok(self.base);
        };
        let outcome = match unlink_access(self.ctx, self.lt, &recorded).await {
            Ok(access) => {
                super::pause::point("before-source-unlink").await;
                // The DELETE removes whatever link the org holds. An actor held since its read
                // (a lost Lease, a frozen process) while another followed the spec away and
                // back, linking this org again, would remove that link, and the status
                // recording it would say Linked until the next status check. So the DELETE
                // goes out only while nothing has written the LinkToken since this
                // reconcile's read (or its last fenced write), read fresh.
                let read = self.lt.resource_version();
                let fence = unlink_fence(self.base.fence.as_deref(), read.as_deref());
                self.confirm_fence(fence).await?;
                unlink_at(self.ctx, &recorded, &access).await
            }
            Err(known) => known,
        };
        let mut status = self.status.clone();
        match outcome {
            Unlink::Done(note) | Unlink::Skipped(note) => {
                status.link = None;
                let mut r = self.report(
                    Reason::Linking,
                    "the previous source link is removed; looking again".into(),
                    status,
                );
                r.retry = Retry::Soon(Duration::from_millis(200));
                Ok(match note.skipped {
                    true => r.warning("UnlinkSkipped", note.text),
                    false => r.event(EventType::Normal, "Unlinked", note.text),
                })
            }
            Unlink::Blocked(e) => Ok(self.failed(status, &e, "removing the previous source link")),
        }
    }
}

/// storeToken: false, issuing: a source that cannot take the token must be found out before
/// a token is minted (a token stored nowhere is lost when the hand-over fails). Reads the
/// source's credentials and CA and asks its link status; None: go ahead.
pub async fn preflight(lt: &LinkToken, ctx: &Context) -> Option<Report> {
    let spec = lt.spec.source.as_ref()?;
    let status = lt.status.clone().unwrap_or_default();
    let run = Run {
        lt,
        ctx,
        base: Report::new(lt, Reason::Linking, Retry::Backoff),
        status,
    };
    // A token stored nowhere must not be minted for a source org another LinkToken holds.
    if let Some(r) = run.held_elsewhere(&LinkStep::Post) {
        return Some(r);
    }
    let access = match run.access(spec).await {
        Ok(a) => a,
        Err(r) => return Some(r),
    };
    let target = Target {
        url: &spec.url,
        ca_pem: access.ca.as_deref(),
    };
    match ctx.source.status(target, &access.creds, &spec.org_id).await {
        Ok(_) => None,
        Err(e) => {
            let mut status = run.status.clone();
            status.link = Some(run.recorded(spec));
            Some(run.failed(
                status,
                &e,
                "checking the source before issuing (storeToken: false)",
            ))
        }
    }
}

/// storeToken: false, right after the Atlas POST: the token exists only in memory, so it goes
/// to the source in this reconcile. `issued` is the status recording the new token (issue
/// marker cleared: from here a crash leaves a token status knows of, which the next issue
/// revokes first), written with the link's marker before the POST to the source; `fence` is
/// the version the issue marker's write returned. A failed hand-over loses the token, and the
/// next issue mints another: `failure` (the issuing inputs) is remembered with the failure, so
/// that issue waits like one after an Atlas failure (backoff, or until the inputs change or
/// the slow resync for what only a user can fix) instead of minting in a loop.
#[allow(clippy::too_many_arguments)]
pub async fn hand_over(
    lt: &LinkToken,
    ctx: &Context,
    token: LinkTokenValue,
    sha: &str,
    why: IssueWhy,
    mut issued: LinkTokenStatus,
    fence: Option<String>,
    failure: report::Memory,
) -> Result<Report, Error> {
    issued.token_secret_name = None;
    let (ev, note) = if why.is_rotation() {
        (
            "TokenRotated",
            format!("issued a new link token: {}", why.describe()),
        )
    } else {
        ("TokenIssued", "issued a link token".to_string())
    };
    let mut base = Report::new(lt, Reason::Linking, Retry::Backoff)
        .fenced_at(fence)
        .event(EventType::Normal, ev, note)
        .memory(report::Memory::Forget);
    base.issued = true;
    let run = Run {
        lt,
        ctx,
        base,
        status: issued,
    };
    let Some(spec) = run.source().cloned() else {
        return Ok(run.base);
    };
    let access = match run.access(&spec).await {
        Ok(a) => a,
        Err(r) => return Ok(r.memory(failure)),
    };
    let r = run.post_with(&spec, &access, token, sha).await?;
    Ok(match r.reason {
        Some(Reason::Linked | Reason::Linking) | None => r,
        Some(_) => r.memory(failure),
    })
}

struct Note {
    skipped: bool,
    text: String,
}

/// What unlinking found.
enum Unlink {
    /// Deleted, or there was none.
    Done(Note),
    /// It could not be deleted for a reason only a user can fix (credentials, 401/403, an
    /// unknown org, a bad CA bundle): a warning, never a block.
    Skipped(Note),
    /// Transient trouble: retry.
    Blocked(SourceError),
}

/// DELETE the recorded link at the source, with the credentials Secret recorded with it.
async fn unlink(ctx: &Context, lt: &LinkToken, recorded: &LinkStatus) -> Unlink {
    match unlink_access(ctx, lt, recorded).await {
        Ok(access) => unlink_at(ctx, recorded, &access).await,
        Err(known) => known,
    }
}

/// The note of a link that is left at the source: why, and how to remove it by hand.
fn unlink_skipped(recorded: &LinkStatus, why: String) -> Unlink {
    Unlink::Skipped(Note {
        skipped: true,
        text: format!(
            "the link of source org {} was not removed: {why}; remove it there (DELETE /api/public/v1.0/orgs/{}/liveExport/migrationLink) if it still matters",
            recorded.org_id, recorded.org_id
        ),
    })
}

/// The credentials (recorded with the link) and CA to remove the recorded link with; Err: the
/// outcome is known without calling the source.
async fn unlink_access(
    ctx: &Context,
    lt: &LinkToken,
    recorded: &LinkStatus,
) -> Result<Access, Unlink> {
    let skipped = |why: String| Err(unlink_skipped(recorded, why));
    if let Err(e) = ctx.source.check_allowed(&recorded.url) {
        return skipped(e.to_string());
    }
    if recorded.credentials_secret_name == lt.spec.credentials_secret_ref.name {
        return skipped(format!(
            "its credentials Secret {} is the Atlas credentials Secret, which never goes to a source",
            recorded.credentials_secret_name
        ));
    }
    let ns = lt.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let creds = match secrets.get_opt(&recorded.credentials_secret_name).await {
        Ok(Some(s)) => match source_credentials(&secret_data(&s)) {
            Ok(c) => c,
            Err(why) => return skipped(why),
        },
        Ok(None) => {
            return skipped(format!(
                "the source credentials Secret {} does not exist",
                recorded.credentials_secret_name
            ));
        }
        Err(e) => {
            return Err(Unlink::Blocked(SourceError::Config(format!(
                "reading the source credentials Secret: {e}"
            ))));
        }
    };
    // The CA bundle of the current spec when it still names the same source.
    let ca = match lt.spec.source.as_ref() {
        Some(s) if s.url.trim_end_matches('/') == recorded.url => match &s.ca_bundle {
            Some(r) => read_ca(ctx, &ns, r).await.ok(),
            None => None,
        },
        _ => None,
    };
    Ok(Access { creds, ca })
}

/// The DELETE of the recorded link.
async fn unlink_at(ctx: &Context, recorded: &LinkStatus, access: &Access) -> Unlink {
    let skipped = |why: String| unlink_skipped(recorded, why);
    let target = Target {
        url: &recorded.url,
        ca_pem: access.ca.as_deref(),
    };
    match ctx
        .source
        .unlink(target, &access.creds, &recorded.org_id)
        .await
    {
        Ok(Unlinked::Deleted) => Unlink::Done(Note {
            skipped: false,
            text: format!("removed the link of source org {}", recorded.org_id),
        }),
        Ok(Unlinked::NoLink) => Unlink::Done(Note {
            skipped: false,
            text: format!("source org {} had no link any more", recorded.org_id),
        }),
        Err(e) if e.reason() == Reason::SourceUnavailable => Unlink::Blocked(e),
        Err(e) => skipped(format!("the source refused ({e})")),
    }
}

/// Deletion: the link at the source goes before the token is revoked in Atlas (a revoked
/// token would leave the source linked to nothing, NOT_SYNCED). Ok(notes): go on with the
/// revocation, publishing the notes; Err(report): transient trouble at the source, the
/// finalizer stays (RevocationBlocked, retried with backoff).
pub async fn unlink_before_revoke(
    lt: &LinkToken,
    ctx: &Context,
) -> Result<Vec<(EventType, &'static str, String)>, Report> {
    let Some(recorded) = lt.status.as_ref().and_then(|s| s.link.clone()) else {
        return Ok(Vec::new());
    };
    if source_claims::recorded_held_by_other(&ctx.all_linktokens(), lt) {
        let note = format!(
            "the link of source org {} was not removed: another LinkToken holds the link there",
            recorded.org_id
        );
        return Ok(vec![(EventType::Normal, "UnlinkSkipped", note)]);
    }
    match unlink(ctx, lt, &recorded).await {
        Unlink::Done(n) => Ok(vec![(EventType::Normal, "Unlinked", n.text)]),
        Unlink::Skipped(n) => {
            // The Warning event cannot be created in a namespace being deleted (the usual
            // cause: the source credentials Secret went with it), so the log and a counter
            // say it too.
            ctx.metrics.source_unlink_skipped();
            tracing::warn!(linktoken = %report::key_of(lt), source_org = %recorded.org_id,
                url = %recorded.url, reason = "UnlinkSkipped", "the link at the source was not removed");
            Ok(vec![(EventType::Warning, "UnlinkSkipped", n.text)])
        }
        Unlink::Blocked(e) => {
            let mut status = lt.status.clone().unwrap_or_default();
            if let Some(l) = status.link.as_mut() {
                l.source_error = Some(source_error_status(&e));
            }
            let message = format!(
                "removing the link at the source before revoking the token: {e}; retrying. Set spec.deletionPolicy: Retain to delete without unlinking or revoking"
            );
            Err(Report::new(lt, Reason::RevocationBlocked, Retry::Backoff).status(status, message))
        }
    }
}

/// A reason saying the link failed (not Linked, not in flight).
fn is_link_failure(r: Reason) -> bool {
    r.is_link() && !matches!(r, Reason::Linked | Reason::Linking)
}

fn linked_message(spec: &SourceSpec) -> String {
    format!(
        "source org {} is linked with the current link token (SYNCED)",
        spec.org_id
    )
}

/// What to do, by reason, appended to a failure message.
fn hint(reason: Reason) -> &'static str {
    match reason {
        Reason::SourceUnauthorized => {
            "; check publicApiKey/privateApiKey in the source credentials Secret"
        }
        Reason::SourceForbidden => {
            "; the API key must be Organization Owner of the source org, and its access list must allow the operator's address"
        }
        Reason::SourceOrgNotFound => "; check spec.source.orgId and spec.source.url",
        Reason::SourceRejected => {
            "; if the source does not accept the token, rotate it (annotate atlasmigration.io/rotate)"
        }
        _ => "",
    }
}

fn source_error_status(e: &SourceError) -> AtlasErrorStatus {
    AtlasErrorStatus {
        http_status: e.http_status().map(i32::from),
        error_code: e.error_code().map(str::to_string),
        detail: Some(
            e.detail()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string()),
        ),
    }
}

fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// Source credentials: an API key (Digest, realm "MMS Public API") or a Cloud Manager
/// service account (clientId/clientSecret, bearer tokens from `{url}/api/oauth/token`), with
/// the Atlas credentials Secret's rules (exactly one complete kind). The message names keys,
/// never values.
fn source_credentials(data: &BTreeMap<String, Vec<u8>>) -> Result<Credentials, String> {
    Credentials::from_secret_data(data).map_err(|e| e.to_string())
}

/// The PEM CA bundle from a Secret or ConfigMap key; the error names the object and key.
async fn read_ca(ctx: &Context, ns: &str, r: &CaBundleRef) -> Result<Vec<u8>, String> {
    let missing = |kind: &str, name: &str, key: &str| {
        format!("spec.source.caBundle: {kind} {name} has no key {key} (or does not exist)")
    };
    if let Some(k) = &r.secret_key_ref {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        let s = api
            .get_opt(&k.name)
            .await
            .map_err(|e| format!("reading Secret {}: {e}", k.name))?;
        return s
            .and_then(|s| s.data.and_then(|mut d| d.remove(&k.key)))
            .map(|v| v.0)
            .ok_or_else(|| missing("Secret", &k.name, &k.key));
    }
    if let Some(k) = &r.config_map_key_ref {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
        let c = api
            .get_opt(&k.name)
            .await
            .map_err(|e| format!("reading ConfigMap {}: {e}", k.name))?;
        return c
            .and_then(|c| c.data.and_then(|mut d| d.remove(&k.key)))
            .map(String::into_bytes)
            .ok_or_else(|| missing("ConfigMap", &k.name, &k.key));
    }
    Err("spec.source.caBundle names neither a Secret nor a ConfigMap".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::IssuedFor;

    const URL: &str = "https://om.example:8443";
    const ORG: &str = "6a1e9b2a3c4d5e6f7a8b9c0d";

    fn d() -> Declared {
        Declared {
            url: URL.into(),
            org_id: ORG.into(),
        }
    }

    fn rec(token: Option<&str>, posting: Option<&str>) -> LinkStatus {
        LinkStatus {
            url: URL.into(),
            org_id: ORG.into(),
            credentials_secret_name: "src".into(),
            token_sha256: token.map(Into::into),
            posting_sha256: posting.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn the_link_decision_table() {
        let check = |crash| LinkStep::Check {
            posted_before_crash: crash,
        };
        let cases: Vec<(Option<Declared>, Option<LinkStatus>, LinkStep)> = vec![
            // No source: nothing, or remove the link left behind.
            (None, None, LinkStep::Nothing),
            (None, Some(rec(Some("t1"), None)), LinkStep::UnlinkRecorded),
            // Never linked: post.
            (Some(d()), None, LinkStep::Post),
            (Some(d()), Some(rec(None, None)), LinkStep::Post),
            // Linked with the current token: follow its status.
            (Some(d()), Some(rec(Some("t1"), None)), check(false)),
            // Rotated: the link holds the old token; post the new one.
            (Some(d()), Some(rec(Some("t0"), None)), LinkStep::Post),
            // Crash after the marker: ask before posting again.
            (Some(d()), Some(rec(Some("t0"), Some("t1"))), check(true)),
            (Some(d()), Some(rec(None, Some("t1"))), check(true)),
            // A marker of an older token does not count.
            (Some(d()), Some(rec(None, Some("t0"))), LinkStep::Post),
        ];
        for (declared, recorded, want) in cases {
            assert_eq!(
                decide_link(declared.as_ref(), recorded.as_ref(), "t1"),
                want,
                "{declared:?} {recorded:?}"
            );
        }
        // A record of no link (the last POST was refused) is forgotten, never DELETEd: the
        // org may hold another LinkToken's link.
        assert_eq!(
            decide_link(None, Some(&rec(None, None)), "t1"),
            LinkStep::ForgetRecorded
        );
        assert_eq!(
            decide_link(None, Some(&rec(None, Some("t0"))), "t1"),
            LinkStep::UnlinkRecorded,
            "a POST in flight may have linked"
        );
        // The spec moved to another org or URL: the old link goes first.
        let moved = Declared {
            org_id: "0000000000000000000000aa".into(),
            ..d()
        };
        assert_eq!(
            decide_link(Some(&moved), Some(&rec(Some("t1"), None)), "t1"),
            LinkStep::UnlinkRecorded
        );
        let other_url = Declared {
            url: "https://cloud.mongodb.com".into(),
            ..d()
        };
        assert_eq!(
            decide_link(Some(&other_url), Some(&rec(Some("t1"), None)), "t1"),
            LinkStep::UnlinkRecorded
        );
    }

    #[test]
    fn a_status_answer_decides_what_follows() {
        use SyncStatus::*;
        assert_eq!(after_check(Some(Synced), false), CheckOutcome::Linked);
        // After a POST whose answer is unknown, SYNCED may be the link of the token revoked
        // before this one (a source's view lags): only a successful POST records it.
        assert_eq!(after_check(Some(Synced), true), CheckOutcome::Post);
        // NOT_SYNCED with the current token is reported, never hidden by a re-post.
        assert_eq!(after_check(Some(NotSynced), false), CheckOutcome::NotSynced);
        // After a crash mid-POST, NOT_SYNCED is the old token's link: post the new one.
        assert_eq!(after_check(Some(NotSynced), true), CheckOutcome::Post);
        // The link vanished at the source (drift) or never landed: post.
        assert_eq!(after_check(None, false), CheckOutcome::Post);
        assert_eq!(after_check(None, true), CheckOutcome::Post);
    }

    #[test]
    fn the_source_is_called_only_while_the_link_marker_is_the_latest_write() {
        let at = |rv: &str| {
            let mut lt = LinkToken::new("lt", Default::default());
            lt.metadata.resource_version = Some(rv.into());
            lt
        };
        assert!(fence_holds(Some("41"), Some(&at("41"))));
        // Another actor wrote (its marker, its answer, a rotation), or the spec changed.
        assert!(!fence_holds(Some("41"), Some(&at("45"))));
        // The LinkToken is gone.
        assert!(!fence_holds(Some("41"), None));
        // No version to compare: nothing proves the view current.
        assert!(!fence_holds(None, Some(&at("41"))));
        assert!(!fence_holds(
            None,
            Some(&LinkToken::new("lt", Default::default()))
        ));
    }

    #[test]
    fn a_recheck_of_a_refusal_keeps_it_shown_while_the_source_is_asked_again() {
        for refused in [
            Reason::SourceUnauthorized,
            Reason::SourceForbidden,
            Reason::SourceOrgNotFound,
            Reason::SourceRejected,
        ] {
            assert!(refused.is_stalled(), "{refused}: kstatus Failed");
            assert!(marker_keeps_refusal(Some(refused), true), "{refused}");
            // A new generation (the user changed the spec) is new work: Linking.
            assert!(!marker_keeps_refusal(Some(refused), false), "{refused}");
        }
        // A first link, a relink, a transient failure, a Secret that now exists: Linking.
        for other in [
            None,
            Some(Reason::TokenIssued),
            Some(Reason::Linked),
            Some(Reason::Linking),
            Some(Reason::NotSynced),
            Some(Reason::SourceUnavailable),
            Some(Reason::SourceCredentialsNotFound),
            Some(Reason::SourceConfigInvalid),
        ] {
            assert!(!marker_keeps_refusal(other, true), "{other:?}");
        }
    }

    #[test]
    fn the_link_the_spec_left_is_removed_only_while_the_read_is_the_latest_write() {
        // Fenced at this reconcile's last fenced write when there is one, else at its read.
        assert_eq!(unlink_fence(Some("52"), Some("50")), Some("52"));
        assert_eq!(unlink_fence(None, Some("50")), Some("50"));
        assert_eq!(unlink_fence(None, None), None);
        let at = |rv: &str| {
            let mut lt = LinkToken::new("lt", Default::default());
            lt.metadata.resource_version = Some(rv.into());
            lt
        };
        assert!(fence_holds(unlink_fence(None, Some("50")), Some(&at("50"))));
        // Another actor followed the spec away and back (its writes moved the version on).
        assert!(!fence_holds(
            unlink_fence(None, Some("50")),
            Some(&at("61"))
        ));
        // No version at all: nothing proves the view current, so no DELETE.
        assert!(!fence_holds(unlink_fence(None, None), Some(&at("50"))));
    }

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn status(link_sha: Option<&str>, sync: &str, issued_sha: &str) -> LinkTokenStatus {
        LinkTokenStatus {
            issued_for: Some(IssuedFor {
                token_sha256: Some(issued_sha.into()),
                ..Default::default()
            }),
            link: Some(LinkStatus {
                token_sha256: link_sha.map(Into::into),
                sync_status: Some(sync.into()),
                ..rec(None, None)
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_linked_condition_is_never_kept_true_for_an_old_token() {
        let now = t("2026-11-30T09:00:00Z");
        let st = status(Some("t1"), "SYNCED", "t1");
        let linked = linked_condition(&[], Some(1), &now, Some(true), &st, Reason::Linked, "ok")
            .expect("declared");
        assert_eq!(
            (linked.status.as_str(), linked.reason.as_str()),
            ("True", "Linked")
        );

        // An Atlas failure while the link still holds the current token: stays True.
        let prev = vec![linked.clone()];
        let c = linked_condition(
            &prev,
            Some(1),
            &now,
            Some(true),
            &st,
            Reason::AtlasUnavailable,
            "x",
        )
        .unwrap();
        assert_eq!(c.status, "True");
        assert_eq!(c.last_transition_time, linked.last_transition_time);

        // A rotation issued a new token: the old link is not reported as healthy.
        let rotated = status(Some("t1"), "SYNCED", "t2");
        let c = linked_condition(
            &prev,
            Some(2),
            &now,
            Some(true),
            &rotated,
            Reason::Issuing,
            "x",
        )
        .unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Linking"));

        // A rotation's marker is written (its DELETE revokes the linked token next), or the
        // spec asks for another token that cannot be issued yet (an orgId edit while the
        // credentials are missing): the old link is not reported as healthy.
        for reason in [Reason::Issuing, Reason::CredentialsNotFound] {
            let c = linked_condition(&prev, Some(2), &now, Some(false), &st, reason, "x").unwrap();
            assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Linking"));
        }

        // Failures at the source set it.
        let c = linked_condition(
            &prev,
            Some(2),
            &now,
            Some(true),
            &st,
            Reason::NotSynced,
            "m",
        )
        .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NotSynced")
        );

        // No source: no condition.
        assert!(
            linked_condition(
                &[],
                Some(1),
                &now,
                None,
                &LinkTokenStatus::default(),
                Reason::TokenIssued,
                ""
            )
            .is_none()
        );
    }

    #[test]
    fn without_a_token_secret_the_token_is_current_while_the_source_holds_it() {
        let lt = |store: bool, link: Option<LinkStatus>| {
            let mut l = LinkToken::new(
                "lt",
                crate::api::LinkTokenSpec {
                    source: Some(SourceSpec {
                        url: URL.into(),
                        org_id: ORG.into(),
                        credentials_secret_ref: Default::default(),
                        ca_bundle: None,
                        store_token: store,
                    }),
                    ..Default::default()
                },
            );
            l.status = Some(LinkTokenStatus {
                issued_for: Some(IssuedFor {
                    token_sha256: Some("t1".into()),
                    ..Default::default()
                }),
                link,
                ..Default::default()
            });
            l
        };
        assert_eq!(token_store(&lt(true, None)), TokenStore::Secret);
        let only = |at_source| TokenStore::SourceOnly { at_source };
        assert_eq!(token_store(&lt(false, None)), only(false));
        assert_eq!(
            token_store(&lt(false, Some(rec(Some("t1"), None)))),
            only(true)
        );
        // A crash during the hand-over: the link step asks the source.
        assert_eq!(
            token_store(&lt(false, Some(rec(None, Some("t1"))))),
            only(true)
        );
        // Linked with an older token: the issued one is stored nowhere.
        assert_eq!(
            token_store(&lt(false, Some(rec(Some("t0"), None)))),
            only(false)
        );
    }

    #[test]
    fn source_credentials_are_an_api_key_or_a_service_account() {
        use crate::atlas::CredentialsKind;
        let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        let kind = |pairs: &[(&str, &str)]| source_credentials(&data(pairs)).map(|c| c.kind());
        assert_eq!(
            kind(&[("publicApiKey", "p"), ("privateApiKey", "s3cr3t")]),
            Ok(CredentialsKind::ApiKey)
        );
        assert_eq!(
            kind(&[("clientId", "i"), ("clientSecret", "s3cr3t")]),
            Ok(CredentialsKind::ServiceAccount)
        );
        for (pairs, says) in [
            (
                &[
                    ("publicApiKey", "p"),
                    ("privateApiKey", "s3cr3t"),
                    ("clientId", "i"),
                    ("clientSecret", "s3cr3t"),
                ][..],
                "keep only one",
            ),
            (&[("clientId", "i")][..], "clientSecret"),
            (&[("clientSecret", "s3cr3t")][..], "clientId"),
            (&[("publicApiKey", "p")][..], "privateApiKey"),
        ] {
            let e = source_credentials(&data(pairs)).unwrap_err();
            assert!(e.contains(says) && !e.contains("s3cr3t"), "{e}");
        }
    }
}
