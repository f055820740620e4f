//! The pure heart of the controller: given what was observed, what to do next.
//!
//! Nothing here does I/O. `observe` gathers an [`Observed`]; [`decide`] returns a [`Step`]
//! (named so it does not read like kube's scheduler `Action`); `act` carries it out. The
//! checks run in the order of the issuing path (docs/lifecycle.md, "Issue"):
//! credentials -> revoke in orgs the spec moved away from -> org conflict -> Secret conflict ->
//! is a (re)issue needed and why -> keep the Secret and status in shape. Each check is a small
//! named function, so the tests read like the tables of docs/lifecycle.md and
//! docs/conditions.md. Deletion has its own pure decision, [`decide_cleanup`]; both use
//! [`orgs_that_may_hold_a_token`].

use crate::api::Reason;

/// What the controller knows about the credentials Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialsState {
    Missing,
    /// Present but unusable; the message names the keys, never their values.
    Invalid(String),
    Valid,
}

/// Who manages the LinkToken's orgId in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrgOwnership {
    /// This LinkToken is the oldest one for its orgId.
    Owner,
    /// An older LinkToken manages it; its name is given only when in the same namespace.
    ConflictWith { same_namespace_name: Option<String> },
}

/// A Secret as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretState {
    Absent,
    /// Exists and is not controlled by this LinkToken: never touched.
    Foreign,
    /// Controlled by this LinkToken.
    Ours(OwnedSecret),
}

/// What matters of a token Secret this LinkToken controls.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OwnedSecret {
    /// sha256 of each data value that could be the token, by key.
    pub value_hashes: Vec<(String, String)>,
    /// The `atlasmigration.io/attempt-id` annotation: the issue attempt that wrote the token.
    pub attempt_id: Option<String>,
    /// True when labels, annotations and the data key already match the desired Secret.
    pub metadata_current: bool,
}

impl OwnedSecret {
    /// The key holding the value with this hash, if any.
    fn key_with_hash(&self, sha: &str) -> Option<&str> {
        self.value_hashes
            .iter()
            .find(|(_, h)| h == sha)
            .map(|(k, _)| k.as_str())
    }
}

/// What the current token was issued for (a copy of `status.issuedFor`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IssuedFor {
    pub org_id: String,
    pub access_list: Vec<String>,
    pub rotate: Option<String>,
    pub token_sha256: Option<String>,
}

/// The crash-safety marker (a copy of `status.inFlight`): which attempt, and what it was for.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct InFlight {
    pub org_id: String,
    pub attempt_id: Option<String>,
    pub access_list_sha256: Option<String>,
    pub rotate: Option<String>,
}

/// The outcome of an earlier failed attempt that only a user action can fix, remembered so a
/// reconcile that repeats the same inputs does not call Atlas again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StalledAttempt {
    pub reason: Reason,
    pub generation: Option<i64>,
    pub credentials_version: Option<String>,
    pub rotate: Option<String>,
    /// The slow resync for this reason is due: try again even with the same inputs.
    pub resync_due: bool,
}

/// A transient failure (429 with Retry-After, or 5xx backoff) whose retry time has not come
/// yet, with the inputs it happened with: another trigger (a watch event) must not make the
/// controller call Atlas earlier than it was told to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryHold {
    pub reason: Reason,
    pub generation: Option<i64>,
    pub credentials_version: Option<String>,
    pub rotate: Option<String>,
    /// Time left until the retry is due.
    pub remaining: std::time::Duration,
}

/// Everything `decide` looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub generation: Option<i64>,
    pub org_id: String,
    pub access_list: Vec<String>,
    pub rotate: Option<String>,
    pub credentials: CredentialsState,
    pub credentials_version: Option<String>,
    pub org: OrgOwnership,
    /// The Secret named by the spec (`tokenSecret.name`, defaulting to the LinkToken's name).
    pub target_secret_name: String,
    pub target_secret_key: String,
    pub target_secret: SecretState,
    /// `status.tokenSecretName` when it differs from the target (a rename), and that Secret.
    pub previous_secret: Option<(String, SecretState)>,
    pub issued_for: Option<IssuedFor>,
    pub in_flight: Option<InFlight>,
    /// Orgs where this LinkToken's status says a token may be live but another LinkToken
    /// holds the live link (index::held_by_others): never DELETEd by this one.
    pub held_by_others: Vec<String>,
    /// Another LinkToken's status says a token of it may be live in the spec org
    /// (index::others_may_hold): an issue DELETEs there first.
    pub others_may_hold: bool,
    /// This LinkToken's last reported reason says its credentials cannot act
    /// (index::UNUSABLE), so other LinkTokens do not count its claim yet.
    pub reported_unusable: bool,
    /// This LinkToken's last reported reason is `Issuing`.
    pub reported_issuing: bool,
    /// This LinkToken's last reported reason is `OrgConflict`: it yielded the org, and
    /// whatever token its status records was revoked by the LinkToken that held it.
    pub reported_conflict: bool,
    pub last_stalled: Option<StalledAttempt>,
    pub retry_hold: Option<RetryHold>,
    /// Where the token lives: its Secret (the default), or only at the source
    /// (`spec.source.storeToken: false`; see docs/source-link.md).
    pub token_store: TokenStore,
    /// `in_flight` was written by another process, whose requests may still land this much
    /// longer (`takeover::remaining`): no Atlas call for this LinkToken until then.
    pub takeover_wait: Option<std::time::Duration>,
}

/// Where the current token is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TokenStore {
    /// In the token Secret.
    #[default]
    Secret,
    /// Nowhere but at the source: `at_source` when status.link says the source holds the
    /// issued token (or a POST of it was in flight: the link step asks the source).
    SourceOnly { at_source: bool },
}

/// Why a new token is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueWhy {
    /// Never issued.
    NoToken,
    /// An issue was interrupted before its token was stored.
    Interrupted,
    /// The token Secret was deleted.
    SecretDeleted,
    /// The token in the Secret no longer matches the hash of the issued one.
    SecretTampered,
    AccessListChanged,
    OrgChanged,
    RotateRequested,
    /// `storeToken: false` and the source does not hold the issued token (a hand-over that
    /// failed, or a link removed at the source): it is stored nowhere, so a new one is due.
    NotAtSource,
    /// The credentials work again after being reported unusable: the token may have been
    /// revoked meanwhile by a LinkToken that took the org over.
    CredentialsRestored,
    /// The org is this LinkToken's again after it waited in `OrgConflict`: the LinkToken that
    /// held it meanwhile revoked every link there, the recorded token included.
    OrgRegained,
}

impl IssueWhy {
    /// True when a token existed before and this replaces it (a rotation, for events).
    pub fn is_rotation(self) -> bool {
        !matches!(self, IssueWhy::NoToken)
    }

    pub fn describe(self) -> &'static str {
        match self {
            IssueWhy::NoToken => "no token issued yet",
            IssueWhy::Interrupted => "an earlier issue was interrupted before its token was stored",
            IssueWhy::SecretDeleted => "the token Secret was deleted",
            IssueWhy::SecretTampered => "the token in the Secret no longer matches the issued one",
            IssueWhy::AccessListChanged => "spec.accessListIps changed",
            IssueWhy::OrgChanged => "spec.orgId changed",
            IssueWhy::RotateRequested => "the atlasmigration.io/rotate annotation changed",
            IssueWhy::NotAtSource => {
                "the token is stored nowhere (spec.source.storeToken: false) and the source does not hold it"
            }
            IssueWhy::CredentialsRestored => {
                "the credentials work again; the org may have been taken over and the token revoked meanwhile"
            }
            IssueWhy::OrgRegained => {
                "the orgId is this LinkToken's again; the LinkToken that held it meanwhile revoked the recorded token"
            }
        }
    }
}

/// The next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing can be done until something changes; no Atlas call. Report `reason`.
    Wait { reason: Reason, message: String },
    /// Issue a new token: DELETE in each of `revoke_orgs` first (a token may exist there),
    /// then POST, write the Secret, then status.
    Issue {
        why: IssueWhy,
        revoke_orgs: Vec<String>,
    },
    /// An interrupted issue cannot be completed (its target Secret is not ours): DELETE in each
    /// of `revoke_orgs` (its token may be live there and is stored nowhere), clear the marker,
    /// then report `reason` and wait like [`Step::Wait`].
    Abandon {
        revoke_orgs: Vec<String>,
        reason: Reason,
        message: String,
    },
    /// The Secret holds a token written by an interrupted issue after its POST: keep it and
    /// record it in status (no Atlas call).
    Adopt { token_key: String },
    /// The spec moved away from orgs where a token of this LinkToken may be live: DELETE in
    /// each of `revoke` (a 401/403 there is a warning, not a stall), skip `skip` (another
    /// LinkToken holds the live link there), drop them from status, then look again. Comes
    /// before the org check: an OrgConflict wait never keeps an old link live.
    RevokePrevious {
        revoke: Vec<String>,
        skip: Vec<String>,
    },
    /// A transient failure's retry is not due yet: no Atlas call; look again `after` (status
    /// already reports `reason`).
    Hold {
        reason: Reason,
        after: std::time::Duration,
    },
    /// Another process's in-flight marker is too recent to act on: its DELETE or POST may still
    /// land. No Atlas call; report Issuing and look again `remaining` from now.
    AwaitTakeover { remaining: std::time::Duration },
    /// The token is current; (re)write the Secret from `source` when its name, key or metadata
    /// differ from the desired ones, delete the previous Secret after a rename, and report
    /// Ready.
    Keep {
        source: SecretSource,
        rewrite_secret: bool,
        delete_previous: bool,
    },
}

/// Where the current token value is read from when the Secret is rewritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// The target Secret, at this key.
    Target { key: String },
    /// The previous Secret (after a `tokenSecret.name` change), at this key.
    Previous { name: String, key: String },
}

/// The decision.
pub fn decide(o: &Observed) -> Step {
    let step = decide_step(o);
    // Whatever would call Atlas waits while another process's requests may still land.
    match (&step, o.takeover_wait) {
        (Step::Issue { .. }, Some(remaining)) => Step::AwaitTakeover { remaining },
        (Step::Abandon { revoke_orgs, .. }, Some(remaining)) if !revoke_orgs.is_empty() => {
            Step::AwaitTakeover { remaining }
        }
        (Step::RevokePrevious { revoke, .. }, Some(remaining)) if !revoke.is_empty() => {
            Step::AwaitTakeover { remaining }
        }
        _ => step,
    }
}

fn decide_step(o: &Observed) -> Step {
    if let Some(wait) = check_credentials(o) {
        return wait;
    }
    if let Some(revoke) = check_previous_orgs(o) {
        // A failed revocation there is not repeated before its delay, nor (another 4xx) with
        // unchanged inputs.
        return check_stalled_attempt(o)
            .or_else(|| check_retry_hold(o))
            .unwrap_or(revoke);
    }
    if let Some(wait) = check_org(o) {
        return wait;
    }
    if let Some(wait) = check_target_secret(o) {
        return wait;
    }
    if let Some(adopt) = check_interrupted_issue(o) {
        return adopt;
    }
    match issue_needed(o) {
        Some(why) => {
            if let Some(wait) = check_stalled_attempt(o) {
                return wait;
            }
            if let Some(hold) = check_retry_hold(o) {
                return hold;
            }
            if let Some(announce) = check_claim_visible(o) {
                return announce;
            }
            let mut revoke_orgs: Vec<String> = may_hold(o)
                .into_iter()
                .filter(|org| !o.held_by_others.contains(org))
                .collect();
            // A token left live in the org by a LinkToken whose claim lapsed (it cannot revoke
            // it): DELETE removes every link of the org, so it goes before this POST.
            if o.others_may_hold && !revoke_orgs.contains(&o.org_id) {
                revoke_orgs.push(o.org_id.clone());
            }
            Step::Issue { why, revoke_orgs }
        }
        None => keep(o),
    }
}

fn check_credentials(o: &Observed) -> Option<Step> {
    match &o.credentials {
        CredentialsState::Valid => None,
        CredentialsState::Missing => Some(Step::Wait {
            reason: Reason::CredentialsNotFound,
            message: "the credentials Secret does not exist; waiting for it".into(),
        }),
        CredentialsState::Invalid(why) => Some(Step::Wait {
            reason: Reason::CredentialsInvalid,
            message: why.clone(),
        }),
    }
}

/// Orgs other than the spec's where a token of ours may be live: revoke them first.
fn check_previous_orgs(o: &Observed) -> Option<Step> {
    let previous: Vec<String> = may_hold(o)
        .into_iter()
        .filter(|org| *org != o.org_id)
        .collect();
    if previous.is_empty() {
        return None;
    }
    let (skip, revoke) = previous
        .into_iter()
        .partition(|org| o.held_by_others.contains(org));
    Some(Step::RevokePrevious { revoke, skip })
}

fn check_org(o: &Observed) -> Option<Step> {
    match &o.org {
        OrgOwnership::Owner => None,
        OrgOwnership::ConflictWith {
            same_namespace_name,
        } => {
            let who = match same_namespace_name {
                Some(name) => format!("LinkToken {name}"),
                // Which namespace (and so which tenant) manages an org is the operator log's,
                // not a tenant's status: no hint of where.
                None => "another LinkToken".into(),
            };
            Some(Step::Wait {
                reason: Reason::OrgConflict,
                message: format!(
                    "{who} already manages orgId {}; Atlas keeps one link per org. This LinkToken takes over when that one lets go of the org (deleted, or its orgId moved and its link there revoked)",
                    o.org_id
                ),
            })
        }
    }
}

fn check_target_secret(o: &Observed) -> Option<Step> {
    // Without a token Secret (storeToken: false) no Secret can be in the way.
    if o.target_secret != SecretState::Foreign || o.token_store != TokenStore::Secret {
        return None;
    }
    let reason = Reason::SecretConflict;
    let message = format!(
        "Secret {} exists and is not controlled by this LinkToken; it is never overwritten. Delete it or set spec.tokenSecret.name",
        o.target_secret_name
    );
    // A marker here means a token may have been minted for a Secret that turned out to be
    // someone else's (it appeared during the POST, and revoking at once failed): revoke it
    // before waiting, or it would stay live while this LinkToken waits.
    Some(match &o.in_flight {
        Some(f) => Step::Abandon {
            revoke_orgs: vec![f.org_id.clone()],
            reason,
            message,
        },
        None => Step::Wait { reason, message },
    })
}

/// After a crash between writing the Secret and writing status, the Secret holds the token of
/// the interrupted issue: every issue DELETEs before its POST, so that token is the one live
/// link and re-issuing would only churn. It is adopted only under [`adoptable`]; otherwise the
/// issue is redone (DELETE, then POST), which also revokes the stored token.
fn check_interrupted_issue(o: &Observed) -> Option<Step> {
    if o.token_store != TokenStore::Secret {
        // No Secret holds an interrupted issue's token: it is reissued (DELETE first).
        return None;
    }
    let flight = o.in_flight.as_ref()?;
    let SecretState::Ours(s) = &o.target_secret else {
        return None;
    };
    if !adoptable(
        flight,
        s.attempt_id.as_deref(),
        &o.org_id,
        &o.access_list,
        o.rotate.as_deref(),
    ) {
        return None;
    }
    let (key, _) = s
        .value_hashes
        .iter()
        .find(|(k, _)| k == &o.target_secret_key)?;
    Some(Step::Adopt {
        token_key: key.clone(),
    })
}

/// The adoption rule. The stored token is adopted only when
/// - the Secret was written by *this* attempt (its attempt-id annotation equals the marker's):
///   a Secret written before the marker holds an older token that the attempt's DELETE has
///   revoked, and a Secret another actor wrote belongs to another attempt; and
/// - the attempt was for the current spec (org, access-list hash, rotate value): after a spec
///   change while the operator was down, adopting would report Ready with a token issued for
///   the old access list, or silently drop a requested rotation.
///
/// No timestamps: clocks of different replicas (and of the API server) disagree. A marker
/// without an attempt id (written by an older version) is never adopted.
pub fn adoptable(
    marker: &InFlight,
    secret_attempt_id: Option<&str>,
    org_id: &str,
    access_list: &[String],
    rotate: Option<&str>,
) -> bool {
    let Some(attempt) = marker.attempt_id.as_deref() else {
        return false;
    };
    secret_attempt_id == Some(attempt)
        && marker.org_id == org_id
        && marker.access_list_sha256.as_deref() == Some(access_list_sha256(access_list).as_str())
        && marker.rotate.as_deref() == rotate
}

/// Hex SHA-256 of an access list as a set (sorted, deduplicated, each entry followed by `\n`), so the
/// marker can say what an attempt was for without repeating the list.
pub fn access_list_sha256(list: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut v: Vec<&str> = list.iter().map(String::as_str).collect();
    v.sort_unstable();
    v.dedup();
    let mut h = Sha256::new();
    for entry in v {
        // Each entry terminated, so [] and [""] differ.
        h.update(entry.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// The policy chain: the first reason that calls for a new token wins.
fn issue_needed(o: &Observed) -> Option<IssueWhy> {
    let Some(issued) = &o.issued_for else {
        return Some(if o.in_flight.is_some() {
            IssueWhy::Interrupted
        } else {
            IssueWhy::NoToken
        });
    };
    if o.in_flight.is_some() {
        return Some(IssueWhy::Interrupted);
    }
    if issued.org_id != o.org_id {
        return Some(IssueWhy::OrgChanged);
    }
    if !same_set(&issued.access_list, &o.access_list) {
        return Some(IssueWhy::AccessListChanged);
    }
    if issued.rotate != o.rotate {
        return Some(IssueWhy::RotateRequested);
    }
    // While the credentials were reported unusable the org was nobody's claim, and a LinkToken
    // that took it over revoked every link there first (index::others_may_hold): the recorded
    // token may be dead, and Atlas cannot be asked. Reissue once they work again: first the
    // claim is announced (Issuing, check_claim_visible), then this sees that report and issues
    // (chaos seed 1, after the seed 4 fix). Issuing with a token recorded and no marker is
    // reported by nothing else that keeps the token: a previous-org revocation drops it.
    if o.reported_unusable || o.reported_issuing {
        return Some(IssueWhy::CredentialsRestored);
    }
    // A LinkToken waits in OrgConflict only behind one that holds the org, and taking or
    // holding an org revokes every link there first: a recorded token is dead by the time this
    // one owns the org again (index::claim already treats it as stale). Keeping it would
    // report Ready with a dead token (chaos seed 8456493263140631753).
    if o.reported_conflict {
        return Some(IssueWhy::OrgRegained);
    }
    if let TokenStore::SourceOnly { at_source } = o.token_store {
        return (!at_source).then_some(IssueWhy::NotAtSource);
    }
    match current_token_location(o) {
        TokenLocation::Found(_) => None,
        TokenLocation::Gone => Some(IssueWhy::SecretDeleted),
        TokenLocation::Mismatch => Some(IssueWhy::SecretTampered),
    }
}

enum TokenLocation {
    Found(SecretSource),
    /// No Secret holds it (deleted).
    Gone,
    /// A Secret of ours exists but holds another value.
    Mismatch,
}

/// Where the issued token is now: in the target Secret, or (during a rename) the previous one.
fn current_token_location(o: &Observed) -> TokenLocation {
    let Some(sha) = o
        .issued_for
        .as_ref()
        .and_then(|i| i.token_sha256.as_deref())
    else {
        return TokenLocation::Mismatch;
    };
    let mut seen_ours = false;
    if let SecretState::Ours(s) = &o.target_secret {
        seen_ours = true;
        if let Some(key) = s.key_with_hash(sha) {
            return TokenLocation::Found(SecretSource::Target { key: key.into() });
        }
    }
    if let Some((name, SecretState::Ours(s))) = &o.previous_secret {
        seen_ours = true;
        if let Some(key) = s.key_with_hash(sha) {
            return TokenLocation::Found(SecretSource::Previous {
                name: name.clone(),
                key: key.into(),
            });
        }
    }
    if seen_ours {
        TokenLocation::Mismatch
    } else {
        TokenLocation::Gone
    }
}

/// Others ignore this LinkToken's claim while its status says its credentials cannot act. Its
/// credentials work now: report that first (Issuing, looked at again in a second) and issue
/// only then, so a LinkToken deciding at the same moment sees the claim instead of issuing
/// in the same org.
fn check_claim_visible(o: &Observed) -> Option<Step> {
    o.reported_unusable.then(|| Step::Wait {
        reason: Reason::Issuing,
        message: format!(
            "the credentials are usable; claiming orgId {} before issuing",
            o.org_id
        ),
    })
}

/// A failure only a user can fix is not retried while its inputs are unchanged.
fn check_stalled_attempt(o: &Observed) -> Option<Step> {
    let last = o.last_stalled.as_ref()?;
    let unchanged = last.generation == o.generation
        && last.credentials_version == o.credentials_version
        && last.rotate == o.rotate;
    (unchanged && !last.resync_due).then(|| Step::Wait {
        reason: last.reason,
        message: String::new(),
    })
}

/// A 429 or 5xx is retried when its delay is over, not when some other event happens to
/// trigger a reconcile first. A change of the spec, of the credentials or of the rotate
/// annotation is a user action and is tried at once.
fn check_retry_hold(o: &Observed) -> Option<Step> {
    let hold = o.retry_hold.as_ref()?;
    let unchanged = hold.generation == o.generation
        && hold.credentials_version == o.credentials_version
        && hold.rotate == o.rotate;
    (unchanged && !hold.remaining.is_zero()).then_some(Step::Hold {
        reason: hold.reason,
        after: hold.remaining,
    })
}

/// THE rule for "the orgs that may hold a token" of a LinkToken, shared by issuing, by the
/// claim index and by deletion: the org its current token was issued in, and the org of an
/// interrupted issue (its marker). Each gets a DELETE before the next POST, and on deletion,
/// so no link is orphaned.
pub fn orgs_that_may_hold_a_token(
    issued_for: Option<&str>,
    in_flight: Option<&str>,
) -> Vec<String> {
    let mut orgs: Vec<String> = Vec::new();
    for org in [issued_for, in_flight].into_iter().flatten() {
        if !orgs.iter().any(|o| o == org) {
            orgs.push(org.to_string());
        }
    }
    orgs
}

fn may_hold(o: &Observed) -> Vec<String> {
    orgs_that_may_hold_a_token(
        o.issued_for.as_ref().map(|i| i.org_id.as_str()),
        o.in_flight.as_ref().map(|f| f.org_id.as_str()),
    )
}

/// What the finalizer sees of a LinkToken being deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanupObserved {
    pub retain: bool,
    /// status.issuedFor.orgId and status.inFlight.orgId.
    pub issued_org: Option<String>,
    pub in_flight_org: Option<String>,
    /// Orgs where another LinkToken holds the live link (index::held_by_others).
    pub held_by_others: Vec<String>,
    pub credentials: CredentialsState,
    /// The token Secret holds the token of the in-flight attempt (its attempt-id annotation
    /// matches the marker): that token is somebody's to use, not an orphan.
    pub in_flight_recorded: bool,
    /// As [`Observed::takeover_wait`]: the marker is another process's, whose requests may
    /// still land this much longer (a late POST after our DELETE would leave a live link
    /// nobody holds).
    pub takeover_wait: Option<std::time::Duration>,
}

/// The finalizer's next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CleanupStep {
    /// deletionPolicy Retain: keep the token and its Secret (drop our ownerReference), let go.
    /// `had_token`: a token may be live (worth a TokenRetained event). `revoke_orphan`: an
    /// unfinished issue may have minted a token that no Secret holds, so nobody can use it and
    /// nobody would ever revoke it: revoke it first (best effort: a refusal is a warning, never
    /// a block).
    Retain {
        had_token: bool,
        revoke_orphan: Option<String>,
    },
    /// Nothing of ours can be live in Atlas (never issued, or only waited on an OrgConflict):
    /// let go without calling Atlas. `skipped`: orgs left alone because another LinkToken
    /// holds the live link there (each named in a RevocationSkipped warning).
    Release { skipped: Vec<String> },
    /// A token may be live but the credentials cannot be read: warn (RevocationSkipped) and
    /// let go, so deletion is never blocked by something only a user can fix.
    SkipNoCredentials { orgs: Vec<String> },
    /// DELETE in each of `revoke`, then let go; `skipped` as in Release.
    Revoke {
        revoke: Vec<String>,
        skipped: Vec<String>,
    },
    /// A DELETE is due but another process's requests may still land: the finalizer stays,
    /// look again `remaining` from now.
    AwaitTakeover { remaining: std::time::Duration },
}

/// The deletion contract (docs/lifecycle.md, "Deletion"), one rule per row of its table.
pub fn decide_cleanup(o: &CleanupObserved) -> CleanupStep {
    let step = decide_cleanup_step(o);
    match (&step, o.takeover_wait) {
        (CleanupStep::Revoke { .. }, Some(remaining))
        | (
            CleanupStep::Retain {
                revoke_orphan: Some(_),
                ..
            },
            Some(remaining),
        ) => CleanupStep::AwaitTakeover { remaining },
        _ => step,
    }
}

fn decide_cleanup_step(o: &CleanupObserved) -> CleanupStep {
    let orgs = orgs_that_may_hold_a_token(o.issued_org.as_deref(), o.in_flight_org.as_deref());
    if o.retain {
        let revoke_orphan = o
            .in_flight_org
            .clone()
            .filter(|org| !o.in_flight_recorded && !o.held_by_others.contains(org));
        return CleanupStep::Retain {
            had_token: !orgs.is_empty(),
            revoke_orphan,
        };
    }
    let (skipped, revoke): (Vec<String>, Vec<String>) = orgs
        .into_iter()
        .partition(|org| o.held_by_others.contains(org));
    if revoke.is_empty() {
        return CleanupStep::Release { skipped };
    }
    if o.credentials != CredentialsState::Valid {
        return CleanupStep::SkipNoCredentials { orgs: revoke };
    }
    CleanupStep::Revoke { revoke, skipped }
}

fn keep(o: &Observed) -> Step {
    if o.token_store != TokenStore::Secret {
        // Nothing to write: the token is kept nowhere but at the source.
        return Step::Keep {
            source: SecretSource::Target {
                key: o.target_secret_key.clone(),
            },
            rewrite_secret: false,
            delete_previous: false,
        };
    }
    let source = match current_token_location(o) {
        TokenLocation::Found(s) => s,
        // issue_needed returned None, so the token was found; keep the type total anyway.
        _ => SecretSource::Target {
            key: o.target_secret_key.clone(),
        },
    };
    let rewrite_secret = match (&source, &o.target_secret) {
        (SecretSource::Previous { .. }, _) => true,
        (SecretSource::Target { key }, SecretState::Ours(s)) => {
            key != &o.target_secret_key || !s.metadata_current
        }
        (SecretSource::Target { .. }, _) => true,
    };
    let delete_previous = matches!(&o.previous_secret, Some((_, SecretState::Ours(_))));
    Step::Keep {
        source,
        rewrite_secret,
        delete_previous,
    }
}

pub(crate) fn same_set(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<&String> = a.iter().collect();
    let mut b: Vec<&String> = b.iter().collect();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    a == b
}

#[cfg(test)]
mod tests;
