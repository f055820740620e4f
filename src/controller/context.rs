//! What every reconcile shares: clients, the LinkToken cache, metrics, events, and a small
//! per-object memory of failures (for backoff and for not repeating user-fixable failures).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use kube::runtime::reflector::{ObjectRef, Store};

use super::backoff::{self, BackoffConfig, Retry};
use super::events::Recorder;
use super::versions::Versions;
use crate::api::{LinkToken, Reason};
use crate::atlas::{AtlasClient, AtlasError, Credentials, DeleteOutcome};
use crate::runtime::metrics::Metrics;

/// A reconcile's bound unless the process sets one: three calls at the default request
/// timeout (a DELETE, a POST and a source call).
pub const DEFAULT_RECONCILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

pub struct Context {
    pub client: Client,
    pub atlas: AtlasClient,
    /// The source side (spec.source): Cloud Manager / Ops Manager.
    pub source: crate::source::SourceClient,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// Every watched scope (the org index spans them all).
    pub scopes: Vec<Arc<Scope>>,
    pub backoff: BackoffConfig,
    /// How long after creation a missing credentials Secret is reported as Reconciling before
    /// Stalled (`--credentials-grace`, docs/conditions.md).
    pub credentials_grace: std::time::Duration,
    memo: Mutex<HashMap<ObjectRef<LinkToken>, Memo>>,
    /// Per LinkToken: the credentials Secret's name and the usable credentials last read from
    /// it. The finalizer revokes with them when that Secret is gone because the namespace is
    /// being deleted: the namespace controller deletes its Secrets at once while a LinkToken
    /// waits on its finalizer, and the link must still be revoked. In memory only (never
    /// written anywhere); dropped when the LinkToken goes.
    remembered_credentials: Mutex<HashMap<ObjectRef<LinkToken>, (String, Credentials)>>,
    /// The resourceVersions this process wrote or read, per LinkToken: when the cache is
    /// current, and which watch events only echo our own writes.
    pub versions: Versions,
    /// Orgs where this process let a link go unrevoked that no LinkToken holds any more (a
    /// `RevocationSkipped`: the credentials were gone or refused, e.g. a namespace deleted
    /// during a leader handover). The org's next issue DELETEs first, with its own
    /// credentials, so the org is back to one live link; any successful DELETE there clears
    /// it. In memory only, like the credentials above: a restart forgets (docs/lifecycle.md).
    left_live: Mutex<BTreeSet<String>>,
    /// How long one reconcile may run before it is cut off and retried with backoff.
    pub reconcile_timeout: std::time::Duration,
    /// In-flight markers this process wrote or first saw, and when (see `takeover`).
    pub markers: super::takeover::Markers,
    /// How long another process's in-flight marker is left alone (`takeover::wait_for`).
    pub takeover_wait: Duration,
}

/// One watched scope: all namespaces, or one of `--watch-namespaces`.
pub struct Scope {
    /// None: all namespaces.
    pub namespace: Option<String>,
    /// Its LinkToken cache.
    pub store: Store<LinkToken>,
    /// The first full list has arrived (readiness; no reconcile runs before every scope's).
    synced: AtomicBool,
}

impl Scope {
    pub fn new(namespace: Option<String>, store: Store<LinkToken>) -> Scope {
        Scope {
            namespace,
            store,
            synced: AtomicBool::new(false),
        }
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }
}

/// What the controller remembers of an object between reconciles (in memory only: after a
/// restart the worst case is one extra Atlas call per object).
#[derive(Clone, Debug, Default)]
pub struct Memo {
    /// Consecutive transient failures, for exponential backoff.
    pub attempts: u32,
    /// The last failure that only a user can fix, with the inputs it happened with.
    pub stalled: Option<StalledMemo>,
    /// The last transient failure (429, 5xx) and when its retry is due.
    pub retry: Option<RetryMemo>,
    /// The last transient failure at the source and when its retry is due.
    pub link_hold: Option<LinkHoldMemo>,
}

/// A transient source failure (5xx, 429, timeout, NOT_SYNCED) with what it happened with: the
/// source is not called again before `due` while they are unchanged, whatever else triggers a
/// reconcile (an annotation poked in a loop, a Secret touched). A spec change (a new
/// generation), a rotation or a new token is new work and goes at once.
#[derive(Clone, Debug)]
pub struct LinkHoldMemo {
    pub reason: Reason,
    pub generation: Option<i64>,
    pub rotate: Option<String>,
    pub token_sha256: String,
    pub due: Instant,
}

impl LinkHoldMemo {
    /// How long the source is still held for an attempt with these inputs at `now`; None:
    /// not held (due, or the inputs changed).
    pub fn remaining(
        &self,
        generation: Option<i64>,
        rotate: Option<&str>,
        token_sha256: &str,
        now: Instant,
    ) -> Option<Duration> {
        let unchanged = self.generation == generation
            && self.rotate.as_deref() == rotate
            && self.token_sha256 == token_sha256;
        let left = self.due.saturating_duration_since(now);
        (unchanged && !left.is_zero()).then_some(left)
    }
}

#[derive(Clone, Debug)]
pub struct RetryMemo {
    pub reason: Reason,
    pub generation: Option<i64>,
    pub credentials_version: Option<String>,
    /// The rotate annotation at the failure: a new value is a user action, tried at once.
    pub rotate: Option<String>,
    pub due: Instant,
}

#[derive(Clone, Debug)]
pub struct StalledMemo {
    pub reason: Reason,
    pub generation: Option<i64>,
    pub credentials_version: Option<String>,
    pub rotate: Option<String>,
    pub at: Instant,
}

impl Context {
    pub fn new(
        client: Client,
        atlas: AtlasClient,
        metrics: Metrics,
        recorder: Recorder,
        scopes: &super::Scopes,
        backoff: BackoffConfig,
        credentials_grace: std::time::Duration,
    ) -> Self {
        Context {
            client,
            atlas,
            source: crate::source::SourceClient::new(Default::default(), None),
            metrics,
            recorder,
            scopes: scopes.scopes(),
            backoff,
            credentials_grace,
            memo: Mutex::new(HashMap::new()),
            remembered_credentials: Mutex::new(HashMap::new()),
            versions: Versions::default(),
            left_live: Mutex::new(BTreeSet::new()),
            reconcile_timeout: DEFAULT_RECONCILE_TIMEOUT,
            markers: Default::default(),
            takeover_wait: super::takeover::wait_for(Duration::from_secs(30)),
        }
    }

    pub fn memo(&self, key: &ObjectRef<LinkToken>) -> Memo {
        self.lock().get(key).cloned().unwrap_or_default()
    }

    /// When to look at `key` again after an outcome: the one retry policy
    /// ([`backoff::delay`]) over this object's failure streak, which the outcome extends when
    /// it counts as an attempt.
    pub fn retry_in(&self, key: &ObjectRef<LinkToken>, retry: Retry) -> Option<Duration> {
        let attempts = if retry.counts_as_attempt() {
            self.bump_attempts(key)
        } else {
            1
        };
        backoff::delay(retry, attempts, &self.backoff, rand::random())
    }

    /// Counts one more transient failure and returns the new count.
    fn bump_attempts(&self, key: &ObjectRef<LinkToken>) -> u32 {
        let mut m = self.lock();
        let e = m.entry(key.clone()).or_default();
        e.attempts = e.attempts.saturating_add(1);
        e.attempts
    }

    pub fn remember_stalled(&self, key: &ObjectRef<LinkToken>, stalled: StalledMemo) {
        let mut m = self.lock();
        let e = m.entry(key.clone()).or_default();
        e.stalled = Some(stalled);
        e.attempts = 0;
        e.retry = None;
    }

    /// Remembers when the source may be called again after a transient failure.
    pub fn remember_link_hold(&self, key: &ObjectRef<LinkToken>, hold: LinkHoldMemo) {
        self.lock().entry(key.clone()).or_default().link_hold = Some(hold);
    }

    /// Remembers when a transient failure may be retried.
    pub fn remember_retry(&self, key: &ObjectRef<LinkToken>, retry: RetryMemo) {
        self.lock().entry(key.clone()).or_default().retry = Some(retry);
    }

    /// Success (or the object is gone): forget failures.
    pub fn forget(&self, key: &ObjectRef<LinkToken>) {
        self.lock().remove(key);
    }

    /// Remembers the usable credentials a LinkToken just read from Secret `secret`.
    pub fn remember_credentials(
        &self,
        key: &ObjectRef<LinkToken>,
        secret: &str,
        credentials: &Credentials,
    ) {
        self.creds_lock()
            .insert(key.clone(), (secret.to_string(), credentials.clone()));
    }

    /// The credentials last read for this LinkToken from Secret `secret`, if any.
    pub fn remembered_credentials(
        &self,
        key: &ObjectRef<LinkToken>,
        secret: &str,
    ) -> Option<Credentials> {
        self.creds_lock()
            .get(key)
            .filter(|(name, _)| name == secret)
            .map(|(_, c)| c.clone())
    }

    /// A link in `org` may stay live with nobody holding it (see `left_live`).
    pub fn note_left_live(&self, org: &str) {
        self.left_live_lock().insert(org.to_string());
    }

    /// True when this process let a link in `org` go unrevoked and nobody has DELETEd there
    /// since.
    pub fn left_live(&self, org: &str) -> bool {
        self.left_live_lock().contains(org)
    }

    /// DELETE in `org` (Atlas revokes every link there): nothing is left live in it after a
    /// success, whatever earlier deletions skipped.
    pub async fn revoke_in(
        &self,
        creds: &Credentials,
        org: &str,
    ) -> Result<DeleteOutcome, AtlasError> {
        let outcome = self.atlas.delete_link_token(creds, org).await?;
        self.left_live_lock().remove(org);
        Ok(outcome)
    }

    fn left_live_lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // Single inserts and removes: a poisoned lock is still consistent.
        self.left_live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The LinkToken is released or gone: its credentials are no longer kept.
    pub fn forget_credentials(&self, key: &ObjectRef<LinkToken>) {
        self.creds_lock().remove(key);
    }

    /// An object is gone: drop everything kept about it (failure memory, credentials and its
    /// place in the `linktoken_linktokens` gauge), so none grows with objects that no longer
    /// exist.
    pub fn vanished(&self, key: &ObjectRef<LinkToken>) {
        self.forget(key);
        self.forget_credentials(key);
        self.versions.forget(key);
        self.markers.forget(key);
        self.metrics.track(
            &format!(
                "{}/{}",
                key.namespace.as_deref().unwrap_or_default(),
                key.name
            ),
            None,
        );
    }

    /// Drops memory and gauge entries of objects in none of the caches (deleted while a watch
    /// was down: the relist drops them without a delete event).
    pub fn prune_vanished(&self) {
        let present: std::collections::HashSet<ObjectRef<LinkToken>> = self
            .scopes
            .iter()
            .flat_map(|s| s.store.state())
            .map(|lt| ObjectRef::from_obj(lt.as_ref()))
            .collect();
        self.lock().retain(|k, _| present.contains(k));
        self.creds_lock().retain(|k, _| present.contains(k));
        self.versions.retain(|k| present.contains(k));
        self.markers.retain(|k| present.contains(k));
        let keys: std::collections::HashSet<String> = present
            .iter()
            .map(|k| format!("{}/{}", k.namespace.as_deref().unwrap_or_default(), k.name))
            .collect();
        self.metrics.retain_tracked(|k| keys.contains(k));
    }

    /// True when the stalled memo is older than the slow resync.
    pub fn resync_due(&self, since: Instant) -> bool {
        since.elapsed() >= self.backoff.resync.saturating_sub(Duration::from_secs(1))
    }

    fn creds_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<LinkToken>, (String, Credentials)>> {
        // Single inserts and removes: a poisoned lock is still consistent.
        self.remembered_credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<LinkToken>, Memo>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.memo.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_failure_holds_the_source_until_due_unless_the_inputs_change() {
        let now = Instant::now();
        let hold = LinkHoldMemo {
            reason: Reason::SourceUnavailable,
            generation: Some(3),
            rotate: Some("r1".into()),
            token_sha256: "t1".into(),
            due: now + Duration::from_secs(10),
        };
        let left = |generation, rotate: Option<&str>, sha: &str, at: Instant| {
            hold.remaining(generation, rotate, sha, at)
        };
        // (what, generation, rotate, token, when, held?)
        let rows = [
            (
                "a poke: same inputs, not due",
                Some(3),
                Some("r1"),
                "t1",
                now,
                true,
            ),
            (
                "due",
                Some(3),
                Some("r1"),
                "t1",
                now + Duration::from_secs(10),
                false,
            ),
            (
                "a spec change is new work",
                Some(4),
                Some("r1"),
                "t1",
                now,
                false,
            ),
            (
                "a rotation is new work",
                Some(3),
                Some("r2"),
                "t1",
                now,
                false,
            ),
            (
                "a new token is new work",
                Some(3),
                Some("r1"),
                "t2",
                now,
                false,
            ),
            (
                "the rotate annotation removed",
                Some(3),
                None,
                "t1",
                now,
                false,
            ),
        ];
        for (what, generation, rotate, sha, at, held) in rows {
            assert_eq!(left(generation, rotate, sha, at).is_some(), held, "{what}");
        }
        assert_eq!(
            left(Some(3), Some("r1"), "t1", now + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
    }
}
