//! Views over the LinkToken cache: who holds a claim on an orgId, and which LinkTokens a
//! Secret concerns. Pure functions over a slice, so they are unit-tested without a cluster.
//!
//! Ownership of an org is a *claim* (see docs/lifecycle.md, "Who manages an orgId"):
//! - a LinkToken claims every org in {spec.orgId, status.issuedFor.orgId,
//!   status.inFlight.orgId};
//! - a claim backed by status (a token may be live there) beats one from the spec alone, so an
//!   edit of someone's spec never hands its live org to another LinkToken before it revoked;
//! - a LinkToken whose last reported outcome says its credentials cannot act (missing,
//!   invalid, 401, 403, 404) claims nothing: a tenant cannot squat an org it cannot use;
//! - ties go to the older object, then namespace/name, then uid (creationTimestamp has
//!   one-second resolution), so every replica and reconcile agree.

use std::cmp::Ordering;
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::conditions;
use super::decide::{OrgOwnership, orgs_that_may_hold_a_token};
use crate::api::{LinkToken, Reason};

/// How strongly a LinkToken claims an org.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClaimBasis {
    /// status.issuedFor or status.inFlight names the org: a token of it may be live there.
    Status,
    /// Only spec.orgId names the org (it waits, or has not issued yet).
    Spec,
}

/// Reasons that say the LinkToken's credentials cannot act on its org. Observable from the
/// index (the Ready condition the operator wrote), so every reconcile sees the same claims.
pub const UNUSABLE: [Reason; 5] = [
    Reason::CredentialsNotFound,
    Reason::CredentialsInvalid,
    Reason::AtlasUnauthorized,
    Reason::AtlasForbidden,
    Reason::OrgNotFound,
];

/// The Ready reason the operator last reported, if any.
pub fn reported_reason(lt: &LinkToken) -> Option<Reason> {
    lt.status
        .as_ref()
        .and_then(|s| conditions::ready_of(&s.conditions))
        .and_then(|(r, _)| Reason::parse(r))
}

/// True unless the last reported outcome says the credentials cannot act (a LinkToken never
/// reconciled yet counts as usable: it is treated as a claimant until it reports otherwise).
pub fn has_usable_credentials(lt: &LinkToken) -> bool {
    reported_reason(lt).is_none_or(|r| !UNUSABLE.contains(&r))
}

/// The orgs where a token of `lt` may be live (from its status).
pub fn status_orgs(lt: &LinkToken) -> Vec<String> {
    let st = lt.status.as_ref();
    orgs_that_may_hold_a_token(
        st.and_then(|s| s.issued_for.as_ref())
            .map(|i| i.org_id.as_str()),
        st.and_then(|s| s.in_flight.as_ref())
            .map(|f| f.org_id.as_str()),
    )
}

/// True when `lt` names `org` in its spec or in a status field that can back a claim.
fn names_org(lt: &LinkToken, org: &str) -> bool {
    lt.spec.org_id == org || status_names_org(lt, org)
}

/// `status_orgs(lt).contains(org)` without building the list: asked of every cached
/// LinkToken on every reconcile.
fn status_names_org(lt: &LinkToken, org: &str) -> bool {
    let st = lt.status.as_ref();
    st.and_then(|s| s.issued_for.as_ref())
        .is_some_and(|i| i.org_id == org)
        || st
            .and_then(|s| s.in_flight.as_ref())
            .is_some_and(|f| f.org_id == org)
}

/// `lt`'s claim on `org`, if any. A LinkToken that waits in OrgConflict yielded: whatever its
/// status still records is a stale token another owner has since replaced, so it keeps only
/// its place in line (Spec). One being deleted with nothing to revoke claims nothing.
pub fn claim(lt: &LinkToken, org: &str) -> Option<ClaimBasis> {
    // Every reconcile asks this of every cached LinkToken: answer the common case (it does
    // not name the org at all) without parsing conditions or allocating.
    if !names_org(lt, org) {
        return None;
    }
    if !has_usable_credentials(lt) {
        return None;
    }
    let in_status = status_orgs(lt).iter().any(|o| o == org);
    if in_status && reported_reason(lt) != Some(Reason::OrgConflict) {
        return Some(ClaimBasis::Status);
    }
    if lt.metadata.deletion_timestamp.is_some() {
        return None;
    }
    (in_status || lt.spec.org_id == org).then_some(ClaimBasis::Spec)
}

/// Every org `lt` claims (for waking waiters when a claim goes away).
pub fn claimed_orgs(lt: &LinkToken) -> Vec<String> {
    let mut orgs = status_orgs(lt);
    if !orgs.contains(&lt.spec.org_id) {
        orgs.push(lt.spec.org_id.clone());
    }
    orgs.retain(|o| claim(lt, o).is_some());
    orgs
}

/// The tie-break between claims of equal standing: age, then namespace/name, then uid.
pub fn order_key(lt: &LinkToken) -> (Option<jiff::Timestamp>, String, String, String) {
    (
        lt.metadata.creation_timestamp.as_ref().map(|t| t.0),
        lt.namespace().unwrap_or_default(),
        lt.name_any(),
        lt.metadata.uid.clone().unwrap_or_default(),
    )
}

/// When `lt` last acted in `org` according to its status: the issue of its current token
/// there, or the start of an issue there (its marker), whichever is later.
fn last_activity(lt: &LinkToken, org: &str) -> Option<jiff::Timestamp> {
    let st = lt.status.as_ref()?;
    let issued = st
        .issued_for
        .as_ref()
        .filter(|i| i.org_id == org)
        .and(st.issued_at.as_deref());
    let started = st
        .in_flight
        .as_ref()
        .filter(|f| f.org_id == org)
        .map(|f| f.started_at.as_str());
    [issued, started]
        .into_iter()
        .flatten()
        .filter_map(crate::api::time::parse_rfc3339)
        .max()
}

/// Orders two claims on `org`: Less means `lt` wins. Status before spec. Between two status
/// claims (left behind by a race, or by an operator version that decided by age alone), the
/// LinkToken that acted in the org last holds the live link (every issue revokes before it
/// POSTs, so the latest POST is the live one); it must not be revoked by the other. Then age.
fn rank(
    lt: &LinkToken,
    basis: ClaimBasis,
    other: &LinkToken,
    other_basis: ClaimBasis,
    org: &str,
) -> Ordering {
    basis
        .cmp(&other_basis)
        .then_with(|| {
            if basis == ClaimBasis::Status && other_basis == ClaimBasis::Status {
                // Later first; a claim with no readable time ranks after one with a time.
                std::cmp::Reverse(last_activity(lt, org))
                    .cmp(&std::cmp::Reverse(last_activity(other, org)))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| order_key(lt).cmp(&order_key(other)))
}

/// The LinkToken whose claim on `org` wins: status before spec, then the oldest.
pub fn org_owner<'a>(all: &'a [Arc<LinkToken>], org_id: &str) -> Option<&'a Arc<LinkToken>> {
    all.iter()
        .filter_map(|lt| claim(lt, org_id).map(|b| (lt, b)))
        .min_by(|(a, ab), (b, bb)| rank(a, *ab, b, *bb, org_id))
        .map(|(lt, _)| lt)
}

fn same(a: &LinkToken, b: &LinkToken) -> bool {
    a.metadata.uid == b.metadata.uid
}

/// Ownership of `lt`'s spec orgId as `decide` needs it. `lt` itself competes at least with
/// its spec claim (its credentials were just found valid), with its status claim only when
/// everyone else would count it too (so a LinkToken whose credentials were fixed after a 401
/// cannot use a stale marker to outrank the org's live owner). The owner is named only when
/// it lives in the same namespace: a namespace must not learn the names of another's objects.
pub fn ownership(all: &[Arc<LinkToken>], lt: &LinkToken) -> OrgOwnership {
    let org = lt.spec.org_id.as_str();
    let mine = match claim(lt, org) {
        Some(ClaimBasis::Status) => ClaimBasis::Status,
        _ => ClaimBasis::Spec,
    };
    let winner = all
        .iter()
        .filter(|o| !same(o, lt))
        .filter_map(|o| claim(o, org).map(|b| (o, b)))
        .filter(|(o, b)| rank(o, *b, lt, mine, org) == Ordering::Less)
        .min_by(|(a, ab), (b, bb)| rank(a, *ab, b, *bb, org));
    match winner {
        Some((owner, _)) => OrgOwnership::ConflictWith {
            same_namespace_name: (owner.namespace() == lt.namespace()).then(|| owner.name_any()),
        },
        None => OrgOwnership::Owner,
    }
}

/// The orgs among `lt`'s status orgs where *another* LinkToken holds the live link: its claim
/// there is backed by status and outranks `lt`'s (or `lt` claims nothing there). Neither a
/// revocation of a previous org nor the finalizer DELETEs in these: it would revoke the other's
/// live token.
pub fn held_by_others(all: &[Arc<LinkToken>], lt: &LinkToken) -> Vec<String> {
    status_orgs(lt)
        .into_iter()
        .filter(|org| {
            let mine = claim(lt, org);
            all.iter().filter(|o| !same(o, lt)).any(|o| {
                claim(o, org) == Some(ClaimBasis::Status)
                    && match mine {
                        Some(ClaimBasis::Status) => {
                            rank(o, ClaimBasis::Status, lt, ClaimBasis::Status, org)
                                == Ordering::Less
                        }
                        _ => true,
                    }
            })
        })
        .collect()
}

/// True when another LinkToken's status says a token of it may be live in `lt`'s spec org.
/// `lt` only issues there as the org's owner, so such a token is nobody's live link any more:
/// that LinkToken's claim lapsed (its credentials stopped working, so it cannot revoke) or it
/// yielded. The issue must DELETE in the org before its POST, or Atlas keeps both links
/// (found by chaos seed 4: a holder's credentials Secret deleted, the waiter took over).
pub fn others_may_hold(all: &[Arc<LinkToken>], lt: &LinkToken) -> bool {
    all.iter()
        .filter(|o| !same(o, lt))
        .any(|o| status_names_org(o, &lt.spec.org_id))
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
        .filter(|lt| lt.metadata.namespace.as_deref() == Some(namespace))
        .filter(|lt| {
            // Compared without building the default name: this runs over every cached
            // LinkToken for each Secret event.
            let token_secret = lt
                .spec
                .token_secret
                .as_ref()
                .and_then(|t| t.name.as_deref())
                .or(lt.metadata.name.as_deref());
            lt.spec.credentials_secret_ref.name == name
                || token_secret == Some(name)
                || lt
                    .status
                    .as_ref()
                    .and_then(|s| s.token_secret_name.as_deref())
                    == Some(name)
        })
        .map(|lt| ObjectRef::from_obj(lt.as_ref()))
        .collect()
}

/// The other LinkTokens whose spec names one of `orgs` (to wake them when a claim there goes
/// away: the owner was deleted, revoked its previous org, or reported unusable credentials).
pub fn waiting_for(
    all: &[Arc<LinkToken>],
    orgs: &[String],
    except: &LinkToken,
) -> Vec<ObjectRef<LinkToken>> {
    all.iter()
        .filter(|lt| orgs.contains(&lt.spec.org_id) && !same(lt, except))
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
                source: None,
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

    fn with_status(
        l: Arc<LinkToken>,
        issued: Option<&str>,
        in_flight: Option<&str>,
        reason: Option<Reason>,
    ) -> Arc<LinkToken> {
        let mut l = (*l).clone();
        let mut st = crate::api::LinkTokenStatus {
            issued_for: issued.map(|o| crate::api::IssuedFor {
                org_id: o.into(),
                ..Default::default()
            }),
            in_flight: in_flight.map(|o| crate::api::InFlight {
                org_id: o.into(),
                started_at: "2026-11-28T10:00:00Z".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        if let Some(r) = reason {
            st.conditions = vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: r.as_str().into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time("2026-11-28T10:00:00Z".parse().unwrap()),
            }];
        }
        l.status = Some(st);
        Arc::new(l)
    }

    fn conflict(all: &[Arc<LinkToken>], i: usize) -> bool {
        matches!(ownership(all, &all[i]), OrgOwnership::ConflictWith { .. })
    }

    #[test]
    fn a_claim_backed_by_status_beats_age() {
        // x (older) moved its spec to B but has not revoked A yet; y issued in A meanwhile
        // cannot happen: y waits until x let go of A.
        let x = with_status(
            lt("ns", "x", B, "2026-11-28T10:00:00Z"),
            Some(A),
            None,
            Some(Reason::AtlasUnavailable),
        );
        let y = lt("ns", "y", A, "2026-11-28T09:00:00Z");
        let all = vec![x, y];
        assert!(conflict(&all, 1), "y waits for x to revoke A");
        assert_eq!(org_owner(&all, A).map(|o| o.name_any()), Some("x".into()));
        // x revoked A (status no longer names it): y owns A.
        let x = with_status(
            lt("ns", "x", B, "2026-11-28T10:00:00Z"),
            None,
            Some(B),
            Some(Reason::AtlasUnavailable),
        );
        let all = vec![x, all[1].clone()];
        assert!(!conflict(&all, 1));
        assert!(held_by_others(&all, &all[0]).is_empty());
    }

    #[test]
    fn between_two_status_claims_the_latest_issuer_holds_the_link() {
        // Left behind by an operator that decided by age alone: x (older) moved to B but its
        // status still names A; y took A over and issued later. x must not revoke A.
        let mut x = (*with_status(
            lt("ns", "x", B, "2026-11-28T09:00:00Z"),
            Some(A),
            Some(B),
            Some(Reason::AtlasUnavailable),
        ))
        .clone();
        if let Some(st) = x.status.as_mut() {
            st.issued_at = Some("2026-11-28T09:00:05Z".into());
            if let Some(f) = st.in_flight.as_mut() {
                f.started_at = "2026-11-28T12:00:00Z".into();
            }
        }
        let mut y = (*with_status(
            lt("ns", "y", A, "2026-11-28T10:00:00Z"),
            Some(A),
            None,
            Some(Reason::TokenIssued),
        ))
        .clone();
        if let Some(st) = y.status.as_mut() {
            st.issued_at = Some("2026-11-28T11:00:00Z".into());
        }
        let all = vec![Arc::new(x), Arc::new(y)];
        assert_eq!(held_by_others(&all, &all[0]), vec![A.to_string()]);
        assert!(held_by_others(&all, &all[1]).is_empty());
        assert!(!conflict(&all, 1), "y keeps A");
        assert_eq!(org_owner(&all, A).map(|o| o.name_any()), Some("y".into()));
    }

    #[test]
    fn a_marker_is_a_claim_too() {
        let x = with_status(
            lt("ns", "x", A, "2026-11-28T11:00:00Z"),
            None,
            Some(A),
            Some(Reason::Issuing),
        );
        let y = lt("ns", "y", A, "2026-11-28T09:00:00Z");
        let all = vec![x, y];
        assert!(!conflict(&all, 0));
        assert!(conflict(&all, 1));
    }

    #[test]
    fn a_linktoken_without_usable_credentials_claims_nothing() {
        for r in UNUSABLE {
            let squatter = with_status(
                lt("evil", "s", A, "2026-11-28T09:00:00Z"),
                None,
                None,
                Some(r),
            );
            let real = lt("good", "r", A, "2026-11-28T10:00:00Z");
            let all = vec![squatter, real];
            assert!(!conflict(&all, 1), "{r}: the squatter does not block");
            assert!(claimed_orgs(&all[0]).is_empty(), "{r}");
        }
        // Not reconciled yet: counted until it reports (so two fresh LinkTokens agree).
        let fresh = lt("evil", "s", A, "2026-11-28T09:00:00Z");
        let real = lt("good", "r", A, "2026-11-28T10:00:00Z");
        assert!(conflict(&[fresh, real.clone()], 1));
        // Waiting or failing transiently still holds its place in line.
        for r in [
            Reason::OrgConflict,
            Reason::AtlasUnavailable,
            Reason::AtlasRateLimited,
        ] {
            let other = with_status(lt("a", "o", A, "2026-11-28T09:00:00Z"), None, None, Some(r));
            assert!(conflict(&[other, real.clone()], 1), "{r}");
        }
    }

    #[test]
    fn a_token_another_linktoken_may_hold_in_the_org_is_seen() {
        // The holder's credentials went away: it claims nothing, its token is still live.
        let holder = with_status(
            lt("a", "holder", A, "2026-11-28T09:00:00Z"),
            Some(A),
            None,
            Some(Reason::CredentialsNotFound),
        );
        let next = lt("b", "next", A, "2026-11-28T10:00:00Z");
        let all = vec![holder, next];
        assert!(!conflict(&all, 1), "the next LinkToken takes the org over");
        assert!(others_may_hold(&all, &all[1]));
        assert!(
            !others_may_hold(&all, &all[0]),
            "its own status does not count"
        );
        let elsewhere = lt("b", "next", B, "2026-11-28T10:00:00Z");
        assert!(!others_may_hold(
            &[all[0].clone(), elsewhere.clone()],
            &elsewhere
        ));
    }

    #[test]
    fn a_waiter_keeps_only_its_place_in_line_whatever_its_status_says() {
        // w waits in OrgConflict with a stale issuedFor A (its token was replaced by o's).
        let w = with_status(
            lt("ns", "w", A, "2026-11-28T09:00:00Z"),
            Some(A),
            None,
            Some(Reason::OrgConflict),
        );
        let o = with_status(
            lt("ns", "o", A, "2026-11-28T10:00:00Z"),
            Some(A),
            None,
            Some(Reason::TokenIssued),
        );
        let all = vec![w, o];
        assert!(conflict(&all, 0));
        assert!(!conflict(&all, 1));
        // Deleting w must not DELETE in A: o holds the live link there.
        assert_eq!(held_by_others(&all, &all[0]), vec![A.to_string()]);
        assert!(held_by_others(&all, &all[1]).is_empty());
    }

    #[test]
    fn a_stale_marker_of_failed_credentials_does_not_outrank_the_live_owner() {
        // s (older) wrote a marker, then Atlas answered 401; r issued meanwhile. When s's
        // credentials work again, s must wait, not POST a second link.
        let s = with_status(
            lt("evil", "s", A, "2026-11-28T09:00:00Z"),
            None,
            Some(A),
            Some(Reason::AtlasUnauthorized),
        );
        let r = with_status(
            lt("good", "r", A, "2026-11-28T10:00:00Z"),
            Some(A),
            None,
            Some(Reason::TokenIssued),
        );
        let all = vec![s, r];
        assert!(conflict(&all, 0));
        assert!(!conflict(&all, 1));
        assert_eq!(held_by_others(&all, &all[0]), vec![A.to_string()]);
    }

    #[test]
    fn a_deleting_linktoken_with_nothing_to_revoke_claims_nothing() {
        let mut d = (*lt("ns", "d", A, "2026-11-28T09:00:00Z")).clone();
        d.metadata.deletion_timestamp = Some(Time("2026-11-28T12:00:00Z".parse().unwrap()));
        let d = Arc::new(d);
        let y = lt("ns", "y", A, "2026-11-28T10:00:00Z");
        assert!(!conflict(&[d.clone(), y.clone()], 1));
        // With a token to revoke it holds the org until its finalizer is done.
        let d = with_status(d, Some(A), None, Some(Reason::RevocationBlocked));
        assert!(conflict(&[d, y], 1));
    }

    #[test]
    fn same_second_ties_are_broken_by_uid_when_names_match() {
        let mut a1 = (*lt("ns", "same", A, "2026-11-28T10:00:00Z")).clone();
        a1.metadata.uid = Some("uid-1".into());
        let mut a2 = a1.clone();
        a2.metadata.uid = Some("uid-2".into());
        let all = vec![Arc::new(a2), Arc::new(a1)];
        assert!(conflict(&all, 0));
        assert!(!conflict(&all, 1));
    }

    #[test]
    fn waiters_are_found_by_spec_org() {
        let all = vec![
            lt("ns", "x", A, "2026-11-28T10:00:00Z"),
            lt("ns", "y", A, "2026-11-28T10:00:01Z"),
            lt("ns", "z", B, "2026-11-28T10:00:01Z"),
        ];
        let w = waiting_for(&all, &[A.to_string()], &all[0]);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].name, "y");
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
