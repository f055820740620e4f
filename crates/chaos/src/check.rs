//! The invariants, as pure functions of what was observed: the driver collects the
//! observations (atlas-sim state, the API server's objects, the operators' logs) and calls
//! these. Each returns the violation's description, never a secret value.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use linktoken_operator::api::{DeletionPolicy, LINKED, LinkToken, RESERVED_PREFIX, Reason};
use linktoken_operator::controller::decide::OrgOwnership;
use linktoken_operator::controller::{index, source_claims};

/// Prefix of every link token atlas-sim mints: finding it anywhere outside a token Secret is a
/// leak, whichever token it is.
pub const TOKEN_PREFIX: &str = atlas_sim::state::LINK_TOKEN_PREFIX;

const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// A broken promise: which invariant, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
    /// Orgs whose atlas-sim call history explains it.
    pub orgs: Vec<String>,
    /// Source orgs whose source-port calls and link explain it.
    pub source_orgs: Vec<String>,
}

impl Violation {
    pub fn new(invariant: &'static str, detail: impl Into<String>) -> Violation {
        Violation {
            invariant,
            detail: detail.into(),
            orgs: Vec::new(),
            source_orgs: Vec::new(),
        }
    }

    pub fn orgs(mut self, orgs: impl IntoIterator<Item = String>) -> Violation {
        self.orgs.extend(orgs);
        self
    }

    pub fn source_orgs(mut self, orgs: impl IntoIterator<Item = String>) -> Violation {
        self.source_orgs.extend(orgs);
        self
    }
}

/// At most one live link per org (`live`: org -> live token hashes), not counting the links
/// the operator documents as left live on purpose (`excused`, see [`excused`]): a later
/// LinkToken for that org cannot know of them and adds its own.
pub fn one_link_per_org(
    live: &BTreeMap<String, Vec<String>>,
    excused: &BTreeSet<String>,
) -> Vec<Violation> {
    live.iter()
        .filter_map(|(org, hashes)| {
            let n = hashes.iter().filter(|h| !excused.contains(*h)).count();
            (n > 1).then(|| {
                Violation::new(
                    "one-live-link-per-org",
                    format!(
                        "org {org} has {n} live links ({} excused)",
                        hashes.len() - n
                    ),
                )
                .orgs([org.clone()])
            })
        })
        .collect()
}

/// A moment when an org had more than one live link that the checker could not excuse yet.
/// What excuses a link (a `RevocationSkipped` log line, the watch event of a Retain
/// LinkToken's deletion) reaches the checker a log scan or a watch event after atlas-sim shows
/// the second link, so a suspect is judged only after [`CONFIRM_AFTER`], against the links it
/// saw then: a transient second link that nothing excuses is still a violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspect {
    pub org: String,
    pub hashes: Vec<String>,
    pub seen: std::time::Instant,
}

/// How long the checker's own observations may lag the operator's (log scans run every 200 ms,
/// watch events arrive in well under a second).
pub const CONFIRM_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// The suspects of `live` (org -> live token hashes) that what is known now does not excuse.
pub fn suspects(
    live: &BTreeMap<String, Vec<String>>,
    excused: &BTreeSet<String>,
    seen: std::time::Instant,
) -> Vec<Suspect> {
    one_link_per_org(live, excused)
        .into_iter()
        .flat_map(|v| v.orgs)
        .filter_map(|org| {
            live.get(&org).map(|hashes| Suspect {
                org,
                hashes: hashes.clone(),
                seen,
            })
        })
        .collect()
}

/// What [`confirm`] made of the pending suspects.
#[derive(Debug, Default)]
pub struct Judged {
    pub violations: Vec<Violation>,
    /// Too young to judge.
    pub waiting: Vec<Suspect>,
    /// Orgs whose second link turned out excused (for the run's log).
    pub excused_orgs: Vec<String>,
}

/// Judges the suspects old enough (all of them with `all`).
pub fn confirm(
    pending: Vec<Suspect>,
    excused: &BTreeSet<String>,
    now: std::time::Instant,
    all: bool,
) -> Judged {
    let (due, waiting): (Vec<Suspect>, Vec<Suspect>) = pending
        .into_iter()
        .partition(|s| all || now.saturating_duration_since(s.seen) >= CONFIRM_AFTER);
    let mut judged = Judged {
        waiting,
        ..Judged::default()
    };
    for s in due {
        let org = s.org.clone();
        let v = one_link_per_org(&BTreeMap::from([(s.org, s.hashes)]), excused);
        if v.is_empty() {
            judged.excused_orgs.push(org);
        }
        judged.violations.extend(v);
    }
    judged
}

/// Whether the tokens of a LinkToken may stay live on purpose (docs/lifecycle.md): it was
/// deleted with `deletionPolicy: Retain`, or the operator reported `RevocationSkipped` for it
/// (`skipped`: credentials gone, a namespace deleted while the operator was down, Atlas
/// refusing the revocation with 401/403/404).
pub fn excused(h: &History, skipped: &BTreeSet<String>) -> bool {
    skipped.contains(&h.key) || (h.deleted && h.ever_retain)
}

/// The token hashes of every excused LinkToken.
pub fn excused_hashes<'a>(
    histories: impl IntoIterator<Item = &'a History>,
    skipped: &BTreeSet<String>,
) -> BTreeSet<String> {
    histories
        .into_iter()
        .filter(|h| excused(h, skipped))
        .flat_map(|h| h.hashes.iter().cloned())
        .collect()
}

/// What the driver wrote into a Secret it created (a credentials Secret, a user's own): the
/// operator may read it, never mark it as its own or change its data. `data_written` holds
/// every data map the driver ever wrote to that object.
pub fn foreign_secret(
    s: &Secret,
    data_written: &[BTreeMap<String, ByteString>],
) -> Option<Violation> {
    let name = format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default()
    );
    let mut wrong = Vec::new();
    if let Some(labels) = &s.metadata.labels {
        if labels
            .get(MANAGED_BY)
            .is_some_and(|v| v == "linktoken-operator")
        {
            wrong.push("the operator's managed-by label".to_string());
        }
        wrong.extend(
            labels
                .keys()
                .filter(|k| k.starts_with(RESERVED_PREFIX))
                .map(|k| format!("label {k}")),
        );
    }
    if let Some(ann) = &s.metadata.annotations {
        wrong.extend(
            ann.keys()
                .filter(|k| k.starts_with(RESERVED_PREFIX))
                .map(|k| format!("annotation {k}")),
        );
    }
    if let Some(refs) = &s.metadata.owner_references {
        wrong.extend(
            refs.iter()
                .filter(|r| r.kind == "LinkToken")
                .map(|r| format!("an ownerReference to LinkToken {}", r.name)),
        );
    }
    let data = s.data.clone().unwrap_or_default();
    if !data_written.contains(&data) {
        let keys: Vec<&String> = data.keys().collect();
        wrong.push(format!("data the user never wrote (keys {keys:?})"));
    }
    (!wrong.is_empty()).then(|| {
        Violation::new(
            "foreign-secret-untouched",
            format!(
                "Secret {name} the operator did not create carries {}",
                wrong.join(", ")
            ),
        )
    })
}

/// Whether `text` holds a link token or one of `credentials` (never says which value).
pub fn leaks(text: &str, credentials: &[String]) -> bool {
    text.contains(TOKEN_PREFIX)
        || credentials
            .iter()
            .any(|c| !c.is_empty() && text.contains(c))
}

/// The most Atlas calls `link_tokens` LinkTokens and `actions` chaos actions may cause in a
/// window of `secs` seconds. Each LinkToken retries on its own backoff (0.5 s doubling to 5 s
/// here, so at most ~6 attempts in 10 s) and an attempt is a DELETE and a POST, each of which
/// may take a Digest challenge leg: 4 calls. Each action can start one more attempt for
/// every LinkToken (an org freed wakes its waiters). A hot loop blows this by orders of
/// magnitude; an honest backoff stays well inside.
pub fn call_budget(link_tokens: u64, actions: u64, secs: u64) -> u64 {
    let attempts_per_lt = secs.div_ceil(10) * 6;
    20 + link_tokens * 4 * (attempts_per_lt + actions)
}

/// None when the LinkToken has settled (nothing left in flight for its current spec), else
/// why not.
pub fn unsettled(lt: &LinkToken) -> Option<String> {
    if lt.metadata.deletion_timestamp.is_some() {
        return Some("still terminating".into());
    }
    let generation = lt.metadata.generation;
    let Some(st) = &lt.status else {
        return Some("no status".into());
    };
    let Some(ready) = st.conditions.iter().find(|c| c.type_ == "Ready") else {
        return Some("no Ready condition".into());
    };
    if ready.observed_generation != generation {
        return Some(format!(
            "Ready is for generation {:?}, not {generation:?}",
            ready.observed_generation
        ));
    }
    // SourceOrgConflict and SourceNotAllowed call nothing until something changes (a source
    // org that frees up is caught by `source_waiters_with_a_free_org`).
    let settled = [
        Reason::TokenIssued,
        Reason::Linked,
        Reason::OrgConflict,
        Reason::SecretConflict,
        Reason::SourceOrgConflict,
        Reason::SourceNotAllowed,
    ];
    if !settled.iter().any(|r| r.as_str() == ready.reason) {
        return Some(format!("Ready reason {}", ready.reason));
    }
    // A waiter in OrgConflict keeps its marker by design (it yielded: the owner's issue
    // revokes in the org first); anywhere else a marker is an issue still under way.
    if st.in_flight.is_some() && ready.reason != Reason::OrgConflict.as_str() {
        return Some("an issue is in flight".into());
    }
    if ready.reason == Reason::TokenIssued.as_str() || ready.reason == Reason::Linked.as_str() {
        let wanted = lt
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(linktoken_operator::api::ROTATE_ANNOTATION));
        let issued = st.issued_for.as_ref().and_then(|i| i.rotate.as_ref());
        if wanted.is_some() && wanted != issued {
            return Some("the rotate annotation is not acted on yet".into());
        }
    }
    None
}

/// The LinkTokens that report `OrgConflict` although, by the operator's own ownership rule
/// (`index::ownership`), nobody else claims their org any more: the holder moved to another
/// org, was deleted or revoked, and the waiter's next reconcile takes the org over. Such a
/// waiter is not settled yet (found by chaos seed 9: the holder's move freed the org just as
/// everything else looked settled, and the takeover's POST fell into the quiet check).
pub fn waiters_with_a_free_org(all: &[LinkToken]) -> Vec<String> {
    free_waiters(all, Reason::OrgConflict, index::ownership, |lt| {
        format!("org {}", lt.spec.org_id)
    })
}

/// The same for `SourceOrgConflict` and the operator's source-org rule
/// (`source_claims::ownership`): a waiter whose source org nobody else claims takes it over
/// next.
pub fn source_waiters_with_a_free_org(all: &[LinkToken]) -> Vec<String> {
    free_waiters(
        all,
        Reason::SourceOrgConflict,
        source_claims::ownership,
        |lt| {
            format!(
                "source org {}",
                lt.spec.source.as_ref().map_or("?", |s| s.org_id.as_str())
            )
        },
    )
}

fn free_waiters(
    all: &[LinkToken],
    reason: Reason,
    ownership: fn(&[std::sync::Arc<LinkToken>], &LinkToken) -> OrgOwnership,
    what: impl Fn(&LinkToken) -> String,
) -> Vec<String> {
    let all: Vec<std::sync::Arc<LinkToken>> =
        all.iter().cloned().map(std::sync::Arc::new).collect();
    all.iter()
        .filter(|lt| {
            lt.metadata.deletion_timestamp.is_none()
                && index::reported_reason(lt) == Some(reason)
                && ownership(&all, lt) == OrgOwnership::Owner
        })
        .map(|lt| {
            format!(
                "{}/{}: {}, but nobody else claims {} (it takes over next)",
                lt.metadata.namespace.as_deref().unwrap_or_default(),
                lt.metadata.name.as_deref().unwrap_or_default(),
                reason.as_str(),
                what(lt)
            )
        })
        .collect()
}

/// A LinkToken's promise that its source org holds its current token: `Linked=True` for its
/// current generation, not terminating (a deletion unlinks first and reports it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkClaim {
    pub key: String,
    pub uid: String,
    pub resource_version: String,
    pub atlas_org: String,
    /// status.issuedFor.orgId: where the current token was minted (differs from `atlas_org`
    /// while an org edit is under way).
    pub issued_org: Option<String>,
    pub source_url: String,
    pub source_org: String,
    /// status.issuedFor.tokenSha256: the current token.
    pub token_sha256: Option<String>,
}

/// The claim `lt` makes now, if any.
pub fn link_claim(lt: &LinkToken) -> Option<LinkClaim> {
    if lt.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let source = lt.spec.source.as_ref()?;
    let st = lt.status.as_ref()?;
    let linked = st.conditions.iter().find(|c| c.type_ == LINKED)?;
    if linked.status != "True" || linked.observed_generation != lt.metadata.generation {
        return None;
    }
    Some(LinkClaim {
        key: format!(
            "{}/{}",
            lt.metadata.namespace.as_deref().unwrap_or_default(),
            lt.metadata.name.as_deref().unwrap_or_default()
        ),
        uid: lt.metadata.uid.clone().unwrap_or_default(),
        resource_version: lt.metadata.resource_version.clone().unwrap_or_default(),
        atlas_org: lt.spec.org_id.clone(),
        issued_org: st.issued_for.as_ref().map(|i| i.org_id.clone()),
        source_url: source.url.trim_end_matches('/').to_string(),
        source_org: source.org_id.clone(),
        token_sha256: st.issued_for.as_ref().and_then(|i| i.token_sha256.clone()),
    })
}

/// A broken promise found by sampling, with the object versions it rests on: it counts only if
/// it still stands [`CONFIRM_AFTER`] later on the same versions (the watch that shows a
/// LinkToken's status lags the simulator's state, so a status already superseded when atlas-sim
/// changed may still be the latest the checker saw).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What it is about (one problem per key at a time).
    pub key: String,
    /// (uid, resourceVersion) of every LinkToken status it rests on.
    pub versions: Vec<(String, String)>,
    pub violation: Violation,
}

/// The broken link promises in `claims`, given what the sim shows: `source_url` is the only
/// source the operator may call, `held(org)` the token sha256 that source org is linked with,
/// `live(sha)` whether that token is live in Atlas.
pub fn link_problems(
    claims: &[LinkClaim],
    source_url: &str,
    held: &dyn Fn(&str) -> Option<String>,
    live: &dyn Fn(&str) -> bool,
) -> Vec<Problem> {
    let source_url = source_url.trim_end_matches('/');
    let prefix = |h: &str| h.get(..12).unwrap_or(h).to_string();
    let mut out = Vec::new();
    let mut by_org: BTreeMap<(String, String), Vec<&LinkClaim>> = BTreeMap::new();
    for c in claims {
        by_org
            .entry((c.source_url.clone(), c.source_org.clone()))
            .or_default()
            .push(c);
        let wrong = if c.source_url != source_url {
            Some(format!("for {}, a source it may not call", c.source_url))
        } else {
            match &c.token_sha256 {
                None => Some("with no token recorded".to_string()),
                Some(h) => match held(&c.source_org) {
                    Some(x) if x == *h && live(h) => None,
                    Some(x) if x == *h => {
                        Some(format!("but its token {}… is not live in Atlas", prefix(h)))
                    }
                    Some(x) => Some(format!(
                        "but source org {} holds token {}…, not its current {}…",
                        c.source_org,
                        prefix(&x),
                        prefix(h)
                    )),
                    None => Some(format!("but source org {} holds no link", c.source_org)),
                },
            }
        };
        if let Some(why) = wrong {
            out.push(Problem {
                key: format!("linked:{}", c.uid),
                versions: vec![(c.uid.clone(), c.resource_version.clone())],
                violation: Violation::new(
                    "linked-holds-current-token",
                    format!("LinkToken {} reports Linked=True {why}", c.key),
                )
                .orgs(
                    [c.atlas_org.clone()]
                        .into_iter()
                        .chain(c.issued_org.clone()),
                )
                .source_orgs([c.source_org.clone()]),
            });
        }
    }
    for ((url, org), cs) in by_org.into_iter().filter(|(_, cs)| cs.len() > 1) {
        let keys: Vec<&str> = cs.iter().map(|c| c.key.as_str()).collect();
        out.push(Problem {
            key: format!("one-linker:{url}#{org}"),
            versions: cs
                .iter()
                .map(|c| (c.uid.clone(), c.resource_version.clone()))
                .collect(),
            violation: Violation::new(
                "source-org-one-linker",
                format!(
                    "{} LinkTokens report Linked=True for source org {org} at {url}: {keys:?}",
                    cs.len()
                ),
            )
            .orgs(cs.iter().map(|c| c.atlas_org.clone()))
            .source_orgs([org.clone()]),
        });
    }
    out
}

/// Problems seen now (`current`) against the ones pending since an earlier sample: a problem
/// seen again on the same versions [`CONFIRM_AFTER`] after it was first seen is a violation;
/// one not seen again, or seen on newer versions, starts over. Returns (pending, violations).
pub fn standing(
    pending: Vec<(Problem, std::time::Instant)>,
    current: Vec<Problem>,
    now: std::time::Instant,
) -> (Vec<(Problem, std::time::Instant)>, Vec<Violation>) {
    let mut kept = Vec::new();
    let mut violations = Vec::new();
    for c in current {
        let since = pending
            .iter()
            .find(|(p, _)| p.key == c.key && p.versions == c.versions)
            .map_or(now, |(_, t)| *t);
        if now.saturating_duration_since(since) >= CONFIRM_AFTER {
            violations.push(c.violation.clone());
        }
        kept.push((c, since));
    }
    (kept, violations)
}

/// No Atlas credential goes anywhere but Atlas: the listener at the disallowed source URL was
/// never connected to, and no Atlas key id (`atlas_ids`) was presented to the source.
pub fn atlas_credentials_stay_home(
    trap_connections: u64,
    trap_url: &str,
    source_users: &[String],
    atlas_ids: &[String],
) -> Option<Violation> {
    if trap_connections > 0 {
        return Some(Violation::new(
            "no-atlas-credential-off-atlas",
            format!(
                "{trap_connections} connection(s) to {trap_url}, a source URL the operator is not allowed to call"
            ),
        ));
    }
    let shown: BTreeSet<&String> = source_users
        .iter()
        .filter(|u| atlas_ids.contains(u))
        .collect();
    (!shown.is_empty()).then(|| {
        Violation::new(
            "no-atlas-credential-off-atlas",
            format!("the source was presented the Atlas credential id(s) {shown:?}"),
        )
    })
}

/// The most source-port calls `link_tokens` LinkTokens with a `spec.source` may cause in
/// `secs` seconds: an attempt there is a POST, a DELETE and a POST after a 409, and a status
/// GET, each with its Digest challenge, so twice an Atlas attempt's calls.
pub fn source_call_budget(link_tokens: u64, actions: u64, secs: u64) -> u64 {
    2 * call_budget(link_tokens, actions, secs)
}

/// What the checker remembers of one LinkToken (by uid) across its life.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub key: String,
    /// Every token sha256 its status ever recorded.
    pub hashes: BTreeSet<String>,
    /// Orgs it ever named or recorded.
    pub orgs: BTreeSet<String>,
    /// It was ever `deletionPolicy: Retain` (its tokens may stay live on purpose).
    pub ever_retain: bool,
    pub deleted: bool,
}

impl History {
    pub fn observe(&mut self, lt: &LinkToken, key: String) {
        self.key = key;
        if lt.spec.deletion_policy == DeletionPolicy::Retain {
            self.ever_retain = true;
        }
        self.orgs.insert(lt.spec.org_id.clone());
        if let Some(i) = lt.status.as_ref().and_then(|s| s.issued_for.as_ref()) {
            self.orgs.insert(i.org_id.clone());
            if let Some(h) = &i.token_sha256 {
                self.hashes.insert(h.clone());
            }
        }
    }
}

/// One line on a LinkToken's history for a report: its key, its tokens (hash prefixes) and
/// why its links may be excused.
pub fn describe(h: &History, skipped: &BTreeSet<String>) -> String {
    let tokens: Vec<&str> = h.hashes.iter().map(|x| x.get(..12).unwrap_or(x)).collect();
    format!(
        "{}{}{}{} tokens {:?}",
        h.key,
        if h.deleted { " (deleted)" } else { "" },
        if h.ever_retain { " (ever Retain)" } else { "" },
        if skipped.contains(&h.key) {
            " (RevocationSkipped)"
        } else {
            ""
        },
        tokens
    )
}

/// A deleted LinkToken that was never Retain left none of its tokens live, unless the operator
/// said it skipped the revocation (`skipped`: a documented outcome, e.g. credentials deleted
/// first; see docs/lifecycle.md).
pub fn deleted_left_no_link(
    h: &History,
    live: &BTreeSet<String>,
    skipped: bool,
) -> Option<Violation> {
    if !h.deleted || h.ever_retain || skipped {
        return None;
    }
    let n = h.hashes.iter().filter(|x| live.contains(*x)).count();
    (n > 0).then(|| {
        Violation::new(
            "deleted-left-no-link",
            format!(
                "LinkToken {} (deletionPolicy Delete) is gone but {n} of its tokens are still live",
                h.key
            ),
        )
        .orgs(h.orgs.iter().cloned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn data(v: &str) -> BTreeMap<String, ByteString> {
        [("k".to_string(), ByteString(v.as_bytes().to_vec()))].into()
    }

    fn secret(d: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("s".into()),
                namespace: Some("n".into()),
                ..Default::default()
            },
            data: Some(data(d)),
            ..Default::default()
        }
    }

    #[test]
    fn a_foreign_secret_as_written_is_fine() {
        assert_eq!(foreign_secret(&secret("a"), &[data("x"), data("a")]), None);
    }

    #[test]
    fn a_foreign_secret_with_new_data_labels_or_owner_is_a_violation() {
        let v = foreign_secret(&secret("b"), &[data("a")]).expect("data changed");
        assert!(v.detail.contains("data the user never wrote"));
        let mut s = secret("a");
        s.metadata.labels =
            Some([(MANAGED_BY.to_string(), "linktoken-operator".to_string())].into());
        assert!(foreign_secret(&s, &[data("a")]).is_some());
        let mut s = secret("a");
        s.metadata.labels =
            Some([("atlasmigration.io/linktoken".to_string(), "x".to_string())].into());
        assert!(foreign_secret(&s, &[data("a")]).is_some());
        let mut s = secret("a");
        s.metadata.owner_references = Some(vec![OwnerReference {
            kind: "LinkToken".into(),
            name: "lt".into(),
            ..Default::default()
        }]);
        assert!(foreign_secret(&s, &[data("a")]).is_some());
        let mut s = secret("a");
        s.metadata.labels = Some([("app".to_string(), "mine".to_string())].into());
        assert_eq!(
            foreign_secret(&s, &[data("a")]),
            None,
            "a user label is fine"
        );
    }

    fn spec(org: &str) -> linktoken_operator::api::LinkTokenSpec {
        linktoken_operator::api::LinkTokenSpec {
            org_id: org.into(),
            access_list_ips: vec![],
            credentials_secret_ref: linktoken_operator::api::CredentialsSecretRef {
                name: "c".into(),
            },
            token_secret: None,
            deletion_policy: Default::default(),
            source: None,
        }
    }

    /// The Ready condition for `reason` at `generation` (True only for TokenIssued).
    fn ready(
        reason: Reason,
        generation: i64,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Ready".into(),
            status: if reason == Reason::TokenIssued {
                "True"
            } else {
                "False"
            }
            .into(),
            reason: reason.as_str().into(),
            message: String::new(),
            observed_generation: Some(generation),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ),
        }
    }

    #[test]
    fn an_org_conflict_waiter_with_a_marker_is_settled_an_issuing_one_is_not() {
        let mut lt = LinkToken::new("lt", spec("o"));
        lt.metadata.generation = Some(2);
        let with = |reason: Reason| linktoken_operator::api::LinkTokenStatus {
            in_flight: Some(linktoken_operator::api::InFlight {
                org_id: "o".into(),
                ..Default::default()
            }),
            conditions: vec![ready(reason, 2)],
            ..Default::default()
        };
        lt.status = Some(with(Reason::OrgConflict));
        assert_eq!(unsettled(&lt), None);
        lt.status = Some(with(Reason::SecretConflict));
        assert!(unsettled(&lt).is_some());
    }

    /// `lt` in namespace "ns", generation 1, created `second` s after a fixed instant.
    fn aged(mut lt: LinkToken, name: &str, second: i64) -> LinkToken {
        lt.metadata.namespace = Some("ns".into());
        lt.metadata.uid = Some(format!("uid-{name}"));
        lt.metadata.generation = Some(1);
        lt.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(1_700_000_000 + second).expect("time"),
            ));
        lt
    }

    #[test]
    fn a_waiter_is_unsettled_once_nobody_else_claims_its_org() {
        let lt = |name: &str, second: i64, spec_org: &str, issued: Option<&str>, reason: Reason| {
            let mut lt = aged(LinkToken::new(name, spec(spec_org)), name, second);
            lt.status = Some(linktoken_operator::api::LinkTokenStatus {
                issued_for: issued.map(|o| linktoken_operator::api::IssuedFor {
                    org_id: o.into(),
                    ..Default::default()
                }),
                conditions: vec![ready(reason, 1)],
                ..Default::default()
            });
            lt
        };
        let waiter = lt("waiter", 10, "o", None, Reason::OrgConflict);
        let holder = lt("holder", 0, "o", Some("o"), Reason::TokenIssued);
        assert_eq!(
            waiters_with_a_free_org(&[holder, waiter.clone()]),
            Vec::<String>::new(),
            "the holder still holds the org: the waiter has settled"
        );
        // The holder moved to another org (seed 9): the waiter takes over next.
        let moved = lt("holder", 0, "p", Some("p"), Reason::TokenIssued);
        let free = waiters_with_a_free_org(&[moved, waiter.clone()]);
        assert_eq!(free.len(), 1, "{free:?}");
        assert!(free[0].starts_with("ns/waiter:"), "{free:?}");
        // The holder is gone altogether: the same.
        assert_eq!(waiters_with_a_free_org(&[waiter]).len(), 1);
    }

    #[test]
    fn leaks_finds_any_link_token_and_the_credentials() {
        assert!(leaks("x atlsim_lt_abc y", &[]));
        assert!(leaks("key=private-1", &["private-1".into()]));
        assert!(!leaks(
            "token sha256 abcd",
            &["private-1".into(), String::new()]
        ));
    }

    #[test]
    fn the_call_budget_grows_with_work_and_time() {
        assert!(call_budget(0, 0, 10) >= 20);
        assert!(call_budget(6, 0, 10) < call_budget(6, 3, 10));
        assert!(call_budget(6, 0, 10) < call_budget(6, 0, 20));
        // Six LinkTokens with no action in ten seconds: a hot loop (hundreds) is caught.
        assert!(call_budget(6, 0, 10) < 200);
    }

    #[test]
    fn one_link_per_org_flags_only_orgs_above_one_not_counting_excused_links() {
        let live: BTreeMap<String, Vec<String>> = [
            ("a".to_string(), vec!["1".to_string()]),
            ("b".to_string(), vec!["2".to_string(), "3".to_string()]),
            ("c".to_string(), vec![]),
            ("d".to_string(), vec!["4".to_string(), "5".to_string()]),
        ]
        .into();
        let v = one_link_per_org(&live, &["5".to_string()].into());
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].orgs, vec!["b".to_string()]);
    }

    #[test]
    fn a_second_link_is_judged_after_the_checkers_lag_with_what_is_known_then() {
        let t0 = std::time::Instant::now();
        let live = BTreeMap::from([
            ("o1".to_string(), vec!["a".to_string(), "b".to_string()]),
            ("o2".to_string(), vec!["c".to_string()]),
        ]);
        let found = suspects(&live, &BTreeSet::new(), t0);
        assert_eq!(found.len(), 1, "only the org with two links: {found:?}");
        assert_eq!(found[0].org, "o1");
        // Too young: it waits, whatever is known.
        let j = confirm(found.clone(), &BTreeSet::new(), t0, false);
        assert!(j.violations.is_empty() && j.excused_orgs.is_empty());
        assert_eq!(j.waiting, found);
        // Old enough, and a RevocationSkipped scanned meanwhile excuses "a": no violation.
        let later = t0 + CONFIRM_AFTER;
        let j = confirm(found.clone(), &["a".to_string()].into(), later, false);
        assert!(j.violations.is_empty() && j.waiting.is_empty(), "{j:?}");
        assert_eq!(j.excused_orgs, ["o1"]);
        // Old enough and still unexcused: the violation, even if the link is gone by now.
        let j = confirm(found.clone(), &BTreeSet::new(), later, false);
        assert_eq!(j.violations.len(), 1);
        assert!(
            j.violations[0].detail.contains("2 live links"),
            "{}",
            j.violations[0].detail
        );
        assert!(j.waiting.is_empty() && j.excused_orgs.is_empty());
        // `all` judges the young ones too (the end of a run).
        let j = confirm(found, &BTreeSet::new(), t0, true);
        assert_eq!(j.violations.len(), 1);
    }

    #[test]
    fn only_retained_deleted_or_skipped_link_tokens_are_excused() {
        let h = History {
            key: "n/lt".into(),
            hashes: ["h1".to_string()].into(),
            ..Default::default()
        };
        let none = BTreeSet::new();
        assert!(!excused(&h, &none));
        let retain_alive = History {
            ever_retain: true,
            ..h.clone()
        };
        assert!(
            !excused(&retain_alive, &none),
            "a live Retain LinkToken revokes on reissue"
        );
        let retain_deleted = History {
            deleted: true,
            ..retain_alive
        };
        assert!(excused(&retain_deleted, &none));
        assert!(excused(&h, &["n/lt".to_string()].into()));
        assert_eq!(
            excused_hashes([&h, &retain_deleted], &none),
            ["h1".to_string()].into()
        );
    }

    #[test]
    fn a_deleted_link_token_is_checked_unless_retained_or_skipped() {
        let h = History {
            key: "n/lt".into(),
            hashes: ["h1".to_string()].into(),
            orgs: ["o".to_string()].into(),
            ever_retain: false,
            deleted: true,
        };
        let live: BTreeSet<String> = ["h1".to_string()].into();
        assert!(deleted_left_no_link(&h, &live, false).is_some());
        assert!(deleted_left_no_link(&h, &live, true).is_none());
        assert!(deleted_left_no_link(&h, &BTreeSet::new(), false).is_none());
        let retained = History {
            ever_retain: true,
            ..h.clone()
        };
        assert!(deleted_left_no_link(&retained, &live, false).is_none());
        let alive = History {
            deleted: false,
            ..h
        };
        assert!(deleted_left_no_link(&alive, &live, false).is_none());
    }

    fn claim(name: &str, rv: &str, org: &str, hash: &str) -> LinkClaim {
        LinkClaim {
            key: format!("ns/{name}"),
            uid: format!("uid-{name}"),
            resource_version: rv.into(),
            atlas_org: "a".into(),
            issued_org: Some("a".into()),
            source_url: "http://127.0.0.1:9".into(),
            source_org: org.into(),
            token_sha256: Some(hash.into()),
        }
    }

    #[test]
    fn linked_means_the_source_org_holds_the_live_current_token() {
        let url = "http://127.0.0.1:9/";
        let held = |org: &str| (org == "s1").then(|| "h1".to_string());
        let live = |h: &str| h == "h1";
        let ok = claim("a", "1", "s1", "h1");
        assert!(link_problems(std::slice::from_ref(&ok), url, &held, &live).is_empty());
        // The source holds another token (the one before a rotation, a lagging SYNCED).
        let stale = claim("a", "2", "s1", "h2");
        let p = link_problems(&[stale], url, &held, &live);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].violation.invariant, "linked-holds-current-token");
        assert!(p[0].violation.detail.contains("holds token h1"), "{p:?}");
        assert_eq!(p[0].violation.source_orgs, ["s1"]);
        // Nothing linked there.
        let p = link_problems(&[claim("a", "1", "s2", "h1")], url, &held, &live);
        assert!(p[0].violation.detail.contains("holds no link"), "{p:?}");
        // Held, but revoked in Atlas.
        let dead = |_: &str| false;
        let p = link_problems(std::slice::from_ref(&ok), url, &held, &dead);
        assert!(p[0].violation.detail.contains("not live in Atlas"), "{p:?}");
        // Linked at a URL the operator may not call.
        let mut other = ok.clone();
        other.source_url = "http://127.0.0.1:1".into();
        let p = link_problems(&[other], url, &held, &live);
        assert!(p[0].violation.detail.contains("may not call"), "{p:?}");
    }

    #[test]
    fn two_linked_claims_on_one_source_org_are_a_violation() {
        let url = "http://127.0.0.1:9";
        let held = |_: &str| Some("h1".to_string());
        let live = |_: &str| true;
        let a = claim("a", "1", "s1", "h1");
        let b = claim("b", "7", "s1", "h1");
        let c = claim("c", "3", "s2", "h1");
        let p = link_problems(&[a, b, c], url, &held, &live);
        let one: Vec<&Problem> = p
            .iter()
            .filter(|p| p.violation.invariant == "source-org-one-linker")
            .collect();
        assert_eq!(one.len(), 1, "{p:?}");
        assert_eq!(
            one[0].versions,
            [
                ("uid-a".to_string(), "1".to_string()),
                ("uid-b".to_string(), "7".to_string())
            ]
        );
        assert!(
            one[0].violation.detail.contains("ns/a") && one[0].violation.detail.contains("ns/b")
        );
    }

    #[test]
    fn a_sampled_problem_counts_only_if_it_stands_on_the_same_versions() {
        let t0 = std::time::Instant::now();
        let url = "u";
        let held = |_: &str| None;
        let live = |_: &str| true;
        let seen = |rv: &str| link_problems(&[claim("a", rv, "s", "h")], url, &held, &live);
        let (pending, v) = standing(Vec::new(), seen("1"), t0);
        assert!(v.is_empty());
        assert_eq!(pending.len(), 1);
        // Still the same status a moment later: not yet.
        let (pending, v) = standing(pending, seen("1"), t0 + CONFIRM_AFTER / 2);
        assert!(v.is_empty());
        // A newer status (the operator moved on; the watch had lagged): starts over.
        let (moved, v) = standing(pending.clone(), seen("2"), t0 + CONFIRM_AFTER);
        assert!(v.is_empty());
        assert_eq!(moved[0].1, t0 + CONFIRM_AFTER);
        // Gone: forgotten.
        let (gone, v) = standing(pending.clone(), Vec::new(), t0 + CONFIRM_AFTER);
        assert!(v.is_empty() && gone.is_empty());
        // The same status, the same problem, CONFIRM_AFTER later: the violation.
        let (_, v) = standing(pending, seen("1"), t0 + CONFIRM_AFTER);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].invariant, "linked-holds-current-token");
    }

    #[test]
    fn atlas_credentials_reach_neither_a_disallowed_url_nor_the_source() {
        let atlas = ["chaoskey0".to_string(), "chaoskey1".to_string()];
        let users = ["chaossrc0".to_string()];
        assert_eq!(atlas_credentials_stay_home(0, "t", &users, &atlas), None);
        let v = atlas_credentials_stay_home(2, "http://127.0.0.1:5", &users, &atlas)
            .expect("the trap was called");
        assert!(v.detail.contains("2 connection(s)"), "{}", v.detail);
        let shown = ["chaossrc0".to_string(), "chaoskey1".to_string()];
        let v = atlas_credentials_stay_home(0, "t", &shown, &atlas).expect("an Atlas key id");
        assert!(v.detail.contains("chaoskey1"), "{}", v.detail);
        assert!(source_call_budget(2, 0, 10) > call_budget(2, 0, 10));
    }

    fn with_source(mut lt: LinkToken, org: &str) -> LinkToken {
        lt.spec.source = Some(linktoken_operator::api::SourceSpec {
            url: "http://127.0.0.1:9".into(),
            org_id: org.into(),
            credentials_secret_ref: linktoken_operator::api::CredentialsSecretRef {
                name: "sc".into(),
            },
            ca_bundle: None,
            store_token: true,
        });
        lt
    }

    fn condition(
        type_: &str,
        status: &str,
        reason: Reason,
        generation: i64,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: type_.into(),
            status: status.into(),
            ..ready(reason, generation)
        }
    }

    #[test]
    fn a_claim_is_linked_true_for_the_current_generation_and_not_terminating() {
        let mut lt = with_source(LinkToken::new("lt", spec("o")), "s1");
        lt.metadata.namespace = Some("ns".into());
        lt.metadata.generation = Some(3);
        lt.metadata.resource_version = Some("9".into());
        lt.status = Some(linktoken_operator::api::LinkTokenStatus {
            issued_for: Some(linktoken_operator::api::IssuedFor {
                org_id: "o".into(),
                token_sha256: Some("h".into()),
                ..Default::default()
            }),
            conditions: vec![condition(LINKED, "True", Reason::Linked, 3)],
            ..Default::default()
        });
        let c = link_claim(&lt).expect("a claim");
        assert_eq!(
            (
                c.key.as_str(),
                c.source_org.as_str(),
                c.token_sha256.as_deref()
            ),
            ("ns/lt", "s1", Some("h"))
        );
        let mut older = lt.clone();
        older.metadata.generation = Some(4);
        assert_eq!(link_claim(&older), None, "Linked for a spec since changed");
        let mut going = lt.clone();
        going.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert_eq!(link_claim(&going), None);
        let mut linking = lt.clone();
        if let Some(st) = linking.status.as_mut() {
            st.conditions = vec![condition(LINKED, "False", Reason::Linking, 3)];
        }
        assert_eq!(link_claim(&linking), None);
        let mut unsourced = lt;
        unsourced.spec.source = None;
        assert_eq!(link_claim(&unsourced), None);
    }

    #[test]
    fn linked_and_source_refusals_that_call_nothing_are_settled() {
        for (reason, settled) in [
            (Reason::Linked, true),
            (Reason::SourceNotAllowed, true),
            (Reason::SourceOrgConflict, true),
            (Reason::Linking, false),
            (Reason::SourceUnavailable, false),
        ] {
            let mut lt = LinkToken::new("lt", spec("o"));
            lt.metadata.generation = Some(1);
            lt.status = Some(linktoken_operator::api::LinkTokenStatus {
                conditions: vec![ready(reason, 1)],
                ..Default::default()
            });
            assert_eq!(unsettled(&lt).is_none(), settled, "{reason:?}");
        }
    }

    #[test]
    fn a_source_waiter_is_unsettled_once_nobody_else_claims_its_source_org() {
        let lt = |name: &str, second: i64, source: Option<&str>, reason: Reason| {
            let mut lt = aged(LinkToken::new(name, spec(name)), name, second);
            if let Some(org) = source {
                lt = with_source(lt, org);
            }
            lt.status = Some(linktoken_operator::api::LinkTokenStatus {
                conditions: vec![ready(reason, 1)],
                ..Default::default()
            });
            lt
        };
        let waiter = lt("waiter", 10, Some("s"), Reason::SourceOrgConflict);
        let holder = lt("holder", 0, Some("s"), Reason::Linking);
        assert!(source_waiters_with_a_free_org(&[holder, waiter.clone()]).is_empty());
        let unsourced = lt("holder", 0, None, Reason::TokenIssued);
        let free = source_waiters_with_a_free_org(&[unsourced, waiter]);
        assert_eq!(free.len(), 1, "{free:?}");
        assert!(free[0].starts_with("ns/waiter:"), "{free:?}");
    }
}
