//! Who may act at a source org (spec.source): a source org holds one link, so it has one
//! owner, chosen by the rules of the Atlas org's claim ([`super::index`]). Pure functions over
//! the LinkToken cache, unit-tested without a cluster.
//!
//! Two LinkTokens naming one source org (two Atlas orgs, any namespaces) would otherwise take
//! the link from each other: the second POST meets the first's link (409), DELETEs it and links
//! its own token, and the first, asking the status, reads the other's SYNCED. So:
//! - a LinkToken claims the source org its spec names once its credentials are usable (a
//!   spec claim), and the one `status.link` records while a link of its token may exist there
//!   (a token recorded as linked, or a POST in flight: a status claim);
//! - a status claim beats a spec claim; between two status claims the one that linked last
//!   holds the link; then the older object, namespace/name, uid: every replica agrees;
//! - the loser reports SourceOrgConflict and never POSTs or DELETEs at that source org, and
//!   deletion never removes a link another LinkToken holds there.
//!
//! A claim's key is a string (`source:{normalised url}#{orgId}`), so the watch that wakes the
//! waiters of a released Atlas org wakes the waiters of a released source org too.

use std::cmp::Ordering;
use std::sync::Arc;

use kube::ResourceExt;

use super::decide::OrgOwnership;
use super::index::{ClaimBasis, has_usable_credentials, order_key, reported_reason};
use crate::api::{LinkToken, Reason};
use crate::source::allow::normalize;

/// The claim key of a source org.
pub fn key(url: &str, org_id: &str) -> String {
    let url = normalize(url).unwrap_or_else(|| url.trim_end_matches('/').to_string());
    format!("source:{url}#{org_id}")
}

/// The source org spec.source names.
pub fn declared_key(lt: &LinkToken) -> Option<String> {
    lt.spec.source.as_ref().map(|s| key(&s.url, &s.org_id))
}

/// The source org where status.link says a link of this LinkToken's token may exist.
pub fn recorded_key(lt: &LinkToken) -> Option<String> {
    let link = lt.status.as_ref()?.link.as_ref()?;
    (link.token_sha256.is_some() || link.posting_sha256.is_some())
        .then(|| key(&link.url, &link.org_id))
}

/// False when the last reported outcome says the LinkToken cannot act at its source (its
/// source credentials or URL do not work): it claims nothing there, so a tenant without working
/// credentials of a source org cannot squat it. A token the source refused (SourceRejected) is
/// the token's problem, not the claim's.
fn usable_at_source(lt: &LinkToken) -> bool {
    has_usable_credentials(lt)
        && reported_reason(lt).is_none_or(|r| {
            r == Reason::SourceRejected || !Reason::SOURCE_USER_FIXABLE.contains(&r)
        })
}

/// `lt`'s claim on the source org `key`. One that waits in SourceOrgConflict yielded: what its
/// status still records keeps only its place in line (Spec).
pub fn claim(lt: &LinkToken, key: &str) -> Option<ClaimBasis> {
    let recorded = recorded_key(lt).is_some_and(|k| k == key);
    let declared = declared_key(lt).is_some_and(|k| k == key);
    if !recorded && !declared {
        return None;
    }
    if recorded && reported_reason(lt) != Some(Reason::SourceOrgConflict) {
        return Some(ClaimBasis::Status);
    }
    if lt.metadata.deletion_timestamp.is_some() || !usable_at_source(lt) {
        return None;
    }
    Some(ClaimBasis::Spec)
}

/// Every source org `lt` claims (to wake waiters when one goes away).
pub fn claimed(lt: &LinkToken) -> Vec<String> {
    let mut keys: Vec<String> = [recorded_key(lt), declared_key(lt)]
        .into_iter()
        .flatten()
        .collect();
    keys.dedup();
    keys.retain(|k| claim(lt, k).is_some());
    keys
}

/// When `lt` last linked at the source its status records.
fn linked_at(lt: &LinkToken) -> Option<jiff::Timestamp> {
    let link = lt.status.as_ref()?.link.as_ref()?;
    crate::api::time::parse_rfc3339(link.linked_at.as_deref()?)
}

/// Less: `a` wins. Status before spec; between status claims the latest link; then age.
fn rank(a: &LinkToken, ab: ClaimBasis, b: &LinkToken, bb: ClaimBasis) -> Ordering {
    ab.cmp(&bb)
        .then_with(|| {
            if ab == ClaimBasis::Status && bb == ClaimBasis::Status {
                std::cmp::Reverse(linked_at(a)).cmp(&std::cmp::Reverse(linked_at(b)))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| order_key(a).cmp(&order_key(b)))
}

fn same(a: &LinkToken, b: &LinkToken) -> bool {
    a.metadata.uid == b.metadata.uid
}

/// The best claim on `key` among the others that outranks `lt`'s (`mine`).
fn winner<'a>(
    all: &'a [Arc<LinkToken>],
    lt: &LinkToken,
    key: &str,
    mine: Option<ClaimBasis>,
) -> Option<&'a Arc<LinkToken>> {
    all.iter()
        .filter(|o| !same(o, lt))
        .filter_map(|o| claim(o, key).map(|b| (o, b)))
        .filter(|(o, b)| mine.is_none_or(|m| rank(o, *b, lt, m) == Ordering::Less))
        .min_by(|(a, ab), (b, bb)| rank(a, *ab, b, *bb))
        .map(|(o, _)| o)
}

/// Whether `lt` may act at the source org its spec names. `lt` competes at least with its spec
/// claim (it reached the link step, so its credentials work); the owner is named only when it
/// is in the same namespace.
pub fn ownership(all: &[Arc<LinkToken>], lt: &LinkToken) -> OrgOwnership {
    let Some(key) = declared_key(lt) else {
        return OrgOwnership::Owner;
    };
    let mine = match claim(lt, &key) {
        Some(ClaimBasis::Status) => ClaimBasis::Status,
        _ => ClaimBasis::Spec,
    };
    match winner(all, lt, &key, Some(mine)) {
        Some(owner) => OrgOwnership::ConflictWith {
            same_namespace_name: (owner.namespace() == lt.namespace()).then(|| owner.name_any()),
        },
        None => OrgOwnership::Owner,
    }
}

/// `namespace/name` of the LinkToken that outranks `lt` at its spec's source org: for the
/// operator's log only (a tenant's status never names another namespace's objects).
pub fn owner_for_log(all: &[Arc<LinkToken>], lt: &LinkToken) -> Option<String> {
    let key = declared_key(lt)?;
    let mine = match claim(lt, &key) {
        Some(ClaimBasis::Status) => ClaimBasis::Status,
        _ => ClaimBasis::Spec,
    };
    winner(all, lt, &key, Some(mine))
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
}

/// True when another LinkToken holds the link at the source org `lt`'s status records (a
/// status claim that outranks `lt`'s): removing "our" recorded link there would remove theirs.
pub fn recorded_held_by_other(all: &[Arc<LinkToken>], lt: &LinkToken) -> bool {
    let Some(link) = lt.status.as_ref().and_then(|s| s.link.as_ref()) else {
        return false;
    };
    let key = key(&link.url, &link.org_id);
    let mine = claim(lt, &key);
    all.iter().filter(|o| !same(o, lt)).any(|o| {
        claim(o, &key) == Some(ClaimBasis::Status)
            && mine.is_none_or(|m| rank(o, ClaimBasis::Status, lt, m) == Ordering::Less)
    })
}

/// Whether `lt`'s spec.source names one of `keys` (claims that went away: wake it).
pub fn waiting_for(lt: &LinkToken, keys: &[String]) -> bool {
    declared_key(lt).is_some_and(|k| keys.contains(&k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LinkStatus, LinkTokenSpec, LinkTokenStatus, SourceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    const URL: &str = "https://om.example:8443";
    const SRC: &str = "6a1e9b2a3c4d5e6f7a8b9c0d";
    const OTHER: &str = "6a1e9b2a3c4d5e6f7a8b9c0e";

    fn lt(ns: &str, name: &str, created: &str, source_org: Option<&str>) -> LinkToken {
        let mut l = LinkToken::new(
            name,
            LinkTokenSpec {
                org_id: format!("{:0>24}", name.len()),
                source: source_org.map(|o| SourceSpec {
                    url: URL.into(),
                    org_id: o.into(),
                    credentials_secret_ref: Default::default(),
                    ca_bundle: None,
                    store_token: true,
                }),
                ..Default::default()
            },
        );
        l.metadata.namespace = Some(ns.into());
        l.metadata.uid = Some(format!("{ns}/{name}"));
        l.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
        l
    }

    /// status.link at (URL, org): linked with a token at `linked_at`, or a POST in flight.
    fn linked(mut l: LinkToken, org: &str, linked_at: Option<&str>, posting: bool) -> LinkToken {
        let st = l.status.get_or_insert_with(LinkTokenStatus::default);
        st.link = Some(LinkStatus {
            url: format!("{URL}/"),
            org_id: org.into(),
            credentials_secret_name: "s".into(),
            token_sha256: linked_at.map(|_| "t".into()),
            posting_sha256: posting.then(|| "p".into()),
            linked_at: linked_at.map(Into::into),
            ..Default::default()
        });
        l
    }

    fn reporting(mut l: LinkToken, r: Reason) -> LinkToken {
        let st = l.status.get_or_insert_with(LinkTokenStatus::default);
        st.conditions = vec![Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: r.as_str().into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time("2026-12-01T00:00:00Z".parse().unwrap()),
        }];
        l
    }

    fn owner_of(all: &[Arc<LinkToken>]) -> Vec<bool> {
        all.iter()
            .map(|l| ownership(all, l) == OrgOwnership::Owner)
            .collect()
    }

    const T0: &str = "2026-12-01T10:00:00Z";
    const T1: &str = "2026-12-01T11:00:00Z";

    #[test]
    fn one_owner_per_source_org_by_the_rules_of_the_atlas_org() {
        // (description, LinkTokens, who owns the source org their spec names)
        let rows: Vec<(&str, Vec<LinkToken>, Vec<bool>)> = vec![
            (
                "spec claims: the older one",
                vec![
                    lt("a", "young", T1, Some(SRC)),
                    lt("b", "old", T0, Some(SRC)),
                ],
                vec![false, true],
            ),
            (
                "a recorded link beats age",
                vec![
                    linked(lt("a", "young", T1, Some(SRC)), SRC, Some(T1), false),
                    lt("b", "old", T0, Some(SRC)),
                ],
                vec![true, false],
            ),
            (
                "a POST in flight is a status claim too",
                vec![
                    linked(lt("a", "young", T1, Some(SRC)), SRC, None, true),
                    lt("b", "old", T0, Some(SRC)),
                ],
                vec![true, false],
            ),
            (
                "a link recorded without a token or marker claims nothing beyond the spec",
                vec![
                    linked(lt("a", "young", T1, Some(SRC)), SRC, None, false),
                    lt("b", "old", T0, Some(SRC)),
                ],
                vec![false, true],
            ),
            (
                "two recorded links (a race): the latest holds it",
                vec![
                    linked(lt("a", "old", T0, Some(SRC)), SRC, Some(T0), false),
                    linked(lt("b", "young", T1, Some(SRC)), SRC, Some(T1), false),
                ],
                vec![false, true],
            ),
            (
                "other source orgs do not compete",
                vec![
                    lt("a", "young", T1, Some(SRC)),
                    lt("b", "old", T0, Some(OTHER)),
                ],
                vec![true, true],
            ),
            (
                "a LinkToken whose source credentials do not work claims nothing",
                vec![
                    lt("a", "young", T1, Some(SRC)),
                    reporting(lt("b", "old", T0, Some(SRC)), Reason::SourceUnauthorized),
                ],
                vec![true, true],
            ),
            (
                "nor one whose Atlas credentials do not work",
                vec![
                    lt("a", "young", T1, Some(SRC)),
                    reporting(lt("b", "old", T0, Some(SRC)), Reason::AtlasForbidden),
                ],
                vec![true, true],
            ),
            (
                "nor one off the allow-list",
                vec![
                    lt("a", "young", T1, Some(SRC)),
                    reporting(lt("b", "old", T0, Some(SRC)), Reason::SourceNotAllowed),
                ],
                vec![true, true],
            ),
            (
                "a waiter's stale record keeps only its place in line",
                vec![
                    reporting(
                        linked(lt("a", "young", T1, Some(SRC)), SRC, Some(T1), false),
                        Reason::SourceOrgConflict,
                    ),
                    linked(lt("b", "old", T0, Some(SRC)), SRC, Some(T0), false),
                ],
                vec![false, true],
            ),
            (
                "a spec moved away still holds the recorded link until it is removed",
                vec![
                    linked(lt("a", "moved", T1, Some(OTHER)), SRC, Some(T1), false),
                    lt("b", "old", T0, Some(SRC)),
                ],
                vec![true, false],
            ),
        ];
        for (what, lts, want) in rows {
            let all: Vec<Arc<LinkToken>> = lts.into_iter().map(Arc::new).collect();
            assert_eq!(owner_of(&all), want, "{what}");
        }
    }

    #[test]
    fn the_owner_is_named_only_in_its_own_namespace() {
        let all: Vec<Arc<LinkToken>> = vec![
            Arc::new(lt("team-a", "first", T0, Some(SRC))),
            Arc::new(lt("team-b", "late", T1, Some(SRC))),
            Arc::new(lt("team-a", "later", T1, Some(SRC))),
        ];
        assert_eq!(
            ownership(&all, &all[1]),
            OrgOwnership::ConflictWith {
                same_namespace_name: None
            }
        );
        assert_eq!(
            ownership(&all, &all[2]),
            OrgOwnership::ConflictWith {
                same_namespace_name: Some("first".into())
            }
        );
    }

    #[test]
    fn deletion_never_removes_a_link_another_linktoken_holds() {
        let holder = linked(lt("b", "holder", T0, Some(SRC)), SRC, Some(T1), false);
        // Its record is older than the holder's link: the holder linked since (the 409 path).
        let left = linked(lt("a", "left", T0, Some(SRC)), SRC, Some(T0), false);
        let all: Vec<Arc<LinkToken>> = vec![Arc::new(holder), Arc::new(left)];
        assert!(recorded_held_by_other(&all, &all[1]));
        assert!(!recorded_held_by_other(&all, &all[0]));
        let alone: Vec<Arc<LinkToken>> = vec![all[1].clone()];
        assert!(!recorded_held_by_other(&alone, &alone[0]));
    }

    #[test]
    fn keys_normalise_the_url_and_wake_the_waiters() {
        assert_eq!(
            key("https://OM.example:8443/", SRC),
            key("https://om.example:8443", SRC)
        );
        assert_eq!(
            key("https://cloud.mongodb.com:443", SRC),
            key("https://cloud.mongodb.com", SRC)
        );
        assert_ne!(key(URL, SRC), key(URL, OTHER));
        let holder = linked(lt("a", "h", T0, Some(SRC)), SRC, Some(T0), false);
        assert_eq!(claimed(&holder), vec![key(URL, SRC)]);
        let moved = linked(lt("a", "m", T0, Some(OTHER)), SRC, Some(T0), false);
        assert_eq!(claimed(&moved), vec![key(URL, SRC), key(URL, OTHER)]);
        let waiter = lt("b", "w", T1, Some(SRC));
        assert!(waiting_for(&waiter, &claimed(&holder)));
        assert!(!waiting_for(&lt("b", "x", T1, None), &claimed(&holder)));
    }
}
