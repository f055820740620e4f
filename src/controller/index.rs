//! Views over the LinkToken cache: who owns an orgId, and which LinkTokens a Secret concerns.
//! Pure functions over a slice, so they are unit-tested without a cluster.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::decide::OrgOwnership;
use crate::api::LinkToken;

/// The LinkToken that manages `org_id`: the oldest one (creation time, then namespace/name, so
/// every replica and every reconcile agree). Deleting ones still count: their revocation (a
/// DELETE of the org's link) must finish before another LinkToken issues for the org, or it
/// would revoke the newcomer's token.
pub fn org_owner<'a>(all: &'a [Arc<LinkToken>], org_id: &str) -> Option<&'a Arc<LinkToken>> {
    all.iter()
        .filter(|lt| lt.spec.org_id == org_id)
        .min_by(|a, b| age_key(a).cmp(&age_key(b)))
}

fn age_key(lt: &LinkToken) -> (Option<jiff::Timestamp>, String, String) {
    (
        lt.metadata.creation_timestamp.as_ref().map(|t| t.0),
        lt.namespace().unwrap_or_default(),
        lt.name_any(),
    )
}

/// Ownership of `lt`'s orgId as `decide` needs it. The owner is named only when it lives in the
/// same namespace: a namespace must not learn the names of another's objects.
pub fn ownership(all: &[Arc<LinkToken>], lt: &LinkToken) -> OrgOwnership {
    match org_owner(all, &lt.spec.org_id) {
        Some(owner) if owner.metadata.uid != lt.metadata.uid => OrgOwnership::ConflictWith {
            same_namespace_name: (owner.namespace() == lt.namespace()).then(|| owner.name_any()),
        },
        _ => OrgOwnership::Owner,
    }
}

/// True when the LinkToken that owns `lt`'s org is being deleted (so a takeover is near).
pub fn owner_is_deleting(all: &[Arc<LinkToken>], lt: &LinkToken) -> bool {
    org_owner(all, &lt.spec.org_id).is_some_and(|o| o.metadata.deletion_timestamp.is_some())
}

/// LinkTokens that a change of Secret `namespace/name` concerns: those that name it as their
/// credentials, as their token Secret, or held their token in it before a rename.
pub fn linktokens_for_secret(
    all: &[Arc<LinkToken>],
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<LinkToken>> {
    all.iter()
        .filter(|lt| lt.namespace().as_deref() == Some(namespace))
        .filter(|lt| {
            lt.spec.credentials_secret_ref.name == name
                || lt.spec.token_secret_name(&lt.name_any()) == name
                || lt
                    .status
                    .as_ref()
                    .and_then(|s| s.token_secret_name.as_deref())
                    == Some(name)
        })
        .map(|lt| ObjectRef::from_obj(lt.as_ref()))
        .collect()
}

/// The other LinkTokens for the same orgId (to wake them when the owner goes).
pub fn same_org_others(all: &[Arc<LinkToken>], gone: &LinkToken) -> Vec<ObjectRef<LinkToken>> {
    all.iter()
        .filter(|lt| lt.spec.org_id == gone.spec.org_id && lt.metadata.uid != gone.metadata.uid)
        .map(|lt| ObjectRef::from_obj(lt.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CredentialsSecretRef, LinkTokenSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn lt(ns: &str, name: &str, org: &str, created: &str) -> Arc<LinkToken> {
        let mut l = LinkToken::new(
            name,
            LinkTokenSpec {
                org_id: org.into(),
                access_list_ips: vec![],
                credentials_secret_ref: CredentialsSecretRef {
                    name: "creds".into(),
                },
                token_secret: None,
                deletion_policy: Default::default(),
            },
        );
        l.metadata.namespace = Some(ns.into());
        l.metadata.uid = Some(format!("{ns}/{name}"));
        l.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
        Arc::new(l)
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn the_oldest_linktoken_owns_the_org() {
        let all = vec![
            lt("ns1", "second", A, "2026-11-28T10:00:05Z"),
            lt("ns1", "first", A, "2026-11-28T10:00:00Z"),
            lt("ns2", "other-org", B, "2026-11-28T09:00:00Z"),
        ];
        assert_eq!(ownership(&all, &all[1]), OrgOwnership::Owner);
        assert_eq!(ownership(&all, &all[2]), OrgOwnership::Owner);
        assert_eq!(
            ownership(&all, &all[0]),
            OrgOwnership::ConflictWith {
                same_namespace_name: Some("first".into())
            }
        );
    }

    #[test]
    fn an_owner_in_another_namespace_is_not_named() {
        let all = vec![
            lt("team-a", "first", A, "2026-11-28T10:00:00Z"),
            lt("team-b", "late", A, "2026-11-28T11:00:00Z"),
        ];
        assert_eq!(
            ownership(&all, &all[1]),
            OrgOwnership::ConflictWith {
                same_namespace_name: None
            }
        );
    }

    #[test]
    fn ties_in_creation_time_are_broken_by_name_the_same_way_everywhere() {
        let all = vec![
            lt("ns", "b", A, "2026-11-28T10:00:00Z"),
            lt("ns", "a", A, "2026-11-28T10:00:00Z"),
        ];
        assert_eq!(ownership(&all, &all[1]), OrgOwnership::Owner);
        assert!(matches!(
            ownership(&all, &all[0]),
            OrgOwnership::ConflictWith { .. }
        ));
    }

    #[test]
    fn a_secret_maps_to_the_linktokens_that_use_it() {
        let all = vec![
            lt("ns", "x", A, "2026-11-28T10:00:00Z"),
            lt("other", "y", B, "2026-11-28T10:00:00Z"),
        ];
        assert_eq!(linktokens_for_secret(&all, "ns", "creds").len(), 1);
        assert_eq!(
            linktokens_for_secret(&all, "ns", "x").len(),
            1,
            "token Secret defaults to the name"
        );
        assert!(linktokens_for_secret(&all, "ns", "unrelated").is_empty());
        assert_eq!(linktokens_for_secret(&all, "other", "creds").len(), 1);
    }
}
