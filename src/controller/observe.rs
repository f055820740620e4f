//! Reads what `decide` needs: the credentials Secret, the token Secret(s), the org index and
//! the failure memory. Only GETs against the API server (the LinkToken is the one the
//! reconcile acts on: from the cache, or read fresh when the cache may lag).

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

use super::context::Context;
use super::decide::{self, CredentialsState, Observed, RetryHold, StalledAttempt};
use super::error::Error;
use super::index;
use super::secret::{self, DesiredSecret};
use crate::api::{LinkToken, ROTATE_ANNOTATION};
use crate::atlas::Credentials;

/// What was observed, plus the objects `act` needs to carry a decision out.
pub struct Observation {
    pub observed: Observed,
    pub credentials: Option<Credentials>,
    pub target: Option<Secret>,
    pub previous: Option<Secret>,
}

pub async fn observe(lt: &LinkToken, ctx: &Context) -> Result<Observation, Error> {
    let ns = lt.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let uid = lt.uid().ok_or(Error::MissingMetadata("uid"))?;
    let name = lt.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);

    let key = ObjectRef::from_obj(lt);
    let status = lt.status.clone().unwrap_or_default();
    let target_name = lt.spec.token_secret_name(&name);
    // A LinkToken that never started an issue holds no token anywhere, so its token Secret is
    // taken as absent without a read: the create that would follow (a dry-run first, before
    // any Atlas call) is refused with 409 if a Secret of that name exists, and then the next
    // reconcile reads it (`Versions::must_read_secret`).
    let never_issued = status.in_flight.is_none()
        && status.issued_for.is_none()
        && status.token_secret_name.is_none();
    let token_store = super::link::token_store(lt);
    let read_target = token_store == decide::TokenStore::Secret
        && (!never_issued || ctx.versions.must_read_secret(&key));
    // The token Secret is read alongside the credentials (two requests in flight, one round
    // trip) unless the last outcome said the credentials are unusable: a flood of
    // misconfigured LinkTokens, rechecked on a timer, then costs one read each.
    let creds_read = secrets.get_opt(&lt.spec.credentials_secret_ref.name);
    let (creds_secret, early_target) = if read_target && index::has_usable_credentials(lt) {
        let (c, t) = futures::try_join!(creds_read, secrets.get_opt(&target_name))?;
        (c, Some(t))
    } else {
        (creds_read.await?, None)
    };
    let (credentials_state, credentials, credentials_version) =
        read_credentials(creds_secret.as_ref());
    if let Some(c) = &credentials {
        // Kept for the finalizer, in case this Secret is deleted before the LinkToken.
        ctx.remember_credentials(&key, &lt.spec.credentials_secret_ref.name, c);
    }

    let target_key = lt.spec.token_secret_key().to_string();
    let previous_name = status
        .token_secret_name
        .clone()
        .filter(|n| *n != target_name);
    // Without usable credentials `decide` stops at the credentials check: skip the Secret
    // reads, which keeps a flood of misconfigured LinkTokens cheap.
    let usable = credentials_state == CredentialsState::Valid;
    // Without a token Secret (storeToken: false) there is none to read.
    let secret_store = token_store == decide::TokenStore::Secret;
    let target = match (usable && secret_store, read_target, early_target) {
        (false, _, _) | (true, false, _) => None,
        (true, true, Some(t)) => t,
        (true, true, None) => secrets.get_opt(&target_name).await?,
    };
    if usable && secret_store && read_target && target.is_none() {
        // Seen absent: a LinkToken that never issued may take it as absent again. One that
        // exists (a user's Secret in the way) keeps being read.
        ctx.versions.read_secret(&key);
    }
    let previous = match (&previous_name, usable && secret_store) {
        (Some(n), true) => secrets.get_opt(n).await?,
        _ => None,
    };

    let metadata_current = target
        .as_ref()
        .is_some_and(|s| secret_metadata_current(lt, s, &target_key, status.issued_at.as_deref()));
    let target_state = secret::observe(target.as_ref(), &uid, metadata_current);
    let previous_state =
        previous_name.map(|n| (n, secret::observe(previous.as_ref(), &uid, false)));

    let all = ctx.all_linktokens();
    let org = index::ownership(&all, lt);
    let held_by_others = index::held_by_others(&all, lt);
    // Or this process let a link there go unrevoked that nobody holds now: the same DELETE
    // first (the index cannot show it, its LinkToken is gone).
    let others_may_hold = index::others_may_hold(&all, lt) || ctx.left_live(&lt.spec.org_id);
    let rotate = lt.annotations().get(ROTATE_ANNOTATION).cloned();

    let memo = ctx.memo(&key);
    let now = std::time::Instant::now();
    let retry_hold = memo.retry.filter(|r| r.due > now).map(|r| RetryHold {
        reason: r.reason,
        generation: r.generation,
        credentials_version: r.credentials_version,
        rotate: r.rotate,
        // Never hold longer than the retry cap, whatever was stored.
        remaining: r.due.saturating_duration_since(now).min(ctx.backoff.max),
    });
    let last_stalled = memo.stalled.map(|s| StalledAttempt {
        reason: s.reason,
        generation: s.generation,
        credentials_version: s.credentials_version,
        rotate: s.rotate,
        resync_due: ctx.resync_due(s.at),
    });

    // The Ready reason this LinkToken last reported, parsed once for the three flags below.
    let reported = index::reported_reason(lt);
    let observed = Observed {
        generation: lt.meta().generation,
        org_id: lt.spec.org_id.clone(),
        access_list: lt.spec.access_list_ips.clone(),
        rotate,
        credentials: credentials_state,
        credentials_version,
        org,
        target_secret_name: target_name,
        target_secret_key: target_key,
        target_secret: target_state,
        previous_secret: previous_state,
        issued_for: status.issued_for.map(|i| decide::IssuedFor {
            org_id: i.org_id,
            access_list: i.access_list_ips,
            rotate: i.rotate,
            token_sha256: i.token_sha256,
        }),
        takeover_wait: super::takeover::remaining(
            status
                .in_flight
                .as_ref()
                .map(|f| ctx.markers.origin(&key, f.attempt_id.as_deref())),
            ctx.takeover_wait,
        ),
        in_flight: status.in_flight.map(|f| decide::InFlight {
            org_id: f.org_id,
            attempt_id: f.attempt_id,
            access_list_sha256: f.access_list_sha256,
            rotate: f.rotate,
        }),
        held_by_others,
        others_may_hold,
        reported_unusable: reported.is_some_and(|r| index::UNUSABLE.contains(&r)),
        reported_issuing: reported == Some(crate::api::Reason::Issuing),
        reported_conflict: reported == Some(crate::api::Reason::OrgConflict),
        last_stalled,
        retry_hold,
        token_store,
    };
    Ok(Observation {
        observed,
        credentials,
        target,
        previous,
    })
}

pub(super) fn read_credentials(
    secret: Option<&Secret>,
) -> (CredentialsState, Option<Credentials>, Option<String>) {
    let Some(secret) = secret else {
        return (CredentialsState::Missing, None, None);
    };
    let version = secret.metadata.resource_version.clone();
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .chain(
            // stringData is write-only in the API, but a Secret read back from some tools'
            // fixtures may carry it; accept it so such Secrets are not reported invalid.
            secret
                .string_data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
        )
        .collect();
    match Credentials::from_secret_data(&data) {
        Ok(c) => (CredentialsState::Valid, Some(c), version),
        Err(e) => (
            CredentialsState::Invalid(format!(
                "credentials Secret {}: {e}",
                secret.metadata.name.as_deref().unwrap_or_default()
            )),
            None,
            version,
        ),
    }
}

/// Would writing the desired Secret change anything? Uses the token value the Secret holds.
fn secret_metadata_current(lt: &LinkToken, s: &Secret, key: &str, issued_at: Option<&str>) -> bool {
    let Some(token) = s.data.as_ref().and_then(|d| d.get(key)) else {
        return false;
    };
    let Some(owner) = lt.controller_owner_ref(&()) else {
        return false;
    };
    let annotations = s.metadata.annotations.clone().unwrap_or_default();
    let issued_at = issued_at
        .map(str::to_string)
        .or_else(|| annotations.get(secret::ISSUED_AT_ANNOTATION).cloned())
        .unwrap_or_default();
    let name = lt.name_any();
    let ns = lt.namespace().unwrap_or_default();
    let ts = lt.spec.token_secret.as_ref();
    let desired = DesiredSecret {
        name: s.metadata.name.as_deref().unwrap_or_default(),
        namespace: &ns,
        key,
        token: &token.0,
        org_id: &lt.spec.org_id,
        issued_at: &issued_at,
        linktoken_name: &name,
        owner,
        user_labels: ts.and_then(|t| t.labels.as_ref()),
        user_annotations: ts.and_then(|t| t.annotations.as_ref()),
        attempt_id: None,
    };
    desired.is_current(s)
}
