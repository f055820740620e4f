//! Reads what `decide` needs: the credentials Secret, the token Secret(s), the org index and
//! the failure memory. Only GETs against the API server (the LinkToken comes from the cache).

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

    let creds_secret = secrets
        .get_opt(&lt.spec.credentials_secret_ref.name)
        .await?;
    let (credentials_state, credentials, credentials_version) =
        read_credentials(creds_secret.as_ref());
    if let Some(c) = &credentials {
        // Kept for the finalizer, in case this Secret is deleted before the LinkToken.
        ctx.remember_credentials(
            &ObjectRef::from_obj(lt),
            &lt.spec.credentials_secret_ref.name,
            c,
        );
    }

    let target_name = lt.spec.token_secret_name(&name);
    let target_key = lt.spec.token_secret_key().to_string();
    let status = lt.status.clone().unwrap_or_default();
    let previous_name = status
        .token_secret_name
        .clone()
        .filter(|n| *n != target_name);
    // Without usable credentials `decide` stops at the credentials check: skip the Secret
    // reads, which keeps a flood of misconfigured LinkTokens cheap.
    let usable = credentials_state == CredentialsState::Valid;
    let target = match usable {
        true => secrets.get_opt(&target_name).await?,
        false => None,
    };
    let previous = match (&previous_name, usable) {
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
    let others_may_hold = index::others_may_hold(&all, lt);
    let rotate = lt.annotations().get(ROTATE_ANNOTATION).cloned();

    let memo = ctx.memo(&ObjectRef::from_obj(lt));
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
        in_flight: status.in_flight.map(|f| decide::InFlight {
            org_id: f.org_id,
            attempt_id: f.attempt_id,
            access_list_sha256: f.access_list_sha256,
            rotate: f.rotate,
        }),
        held_by_others,
        others_may_hold,
        reported_unusable: !index::has_usable_credentials(lt),
        reported_issuing: index::reported_reason(lt) == Some(crate::api::Reason::Issuing),
        last_stalled,
        retry_hold,
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
