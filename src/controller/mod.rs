//! The LinkToken controller.
//!
//! - [`decide`]: pure, observed state -> next [`decide::Step`] (the policy chain), table-tested.
//! - [`observe`]: reads the credentials and token Secrets, the org index, the failure memory.
//! - [`act`] / [`cleanup`]: carry steps out (Atlas calls, the token Secret) and return what to
//!   report as a [`report::Report`]; [`report::commit`] writes status, events, metrics, failure
//!   memory and the retry delay in one place (only the in-flight marker is written by `act`).
//! - [`backoff`]: the one retry policy. [`secret`]: the token Secret; [`conditions`],
//!   [`index`]: pure helpers.
//!
//! Watches, per watched scope (all namespaces, or each of `--watch-namespaces`):
//! LinkTokens (filtered to generation, annotation and finalizer changes, so our own status
//! writes do not trigger reconciles), and the *metadata* of the token Secrets this operator
//! wrote (label `app.kubernetes.io/managed-by=linktoken-operator`; never their data, never any
//! other Secret), mapped back to their LinkTokens. Watch events that only echo this process's
//! own writes (its finalizer patch, its token Secret writes) start no reconcile
//! ([`versions`]). Credentials Secrets are read by name on each reconcile (a shared or
//! watched copy could miss a change the user made just before the one that triggered it) and
//! rechecked on a backing-off timer while they are the problem. A LinkToken that
//! lets go of an org (deleted, previous org revoked, credentials reported unusable) wakes the
//! others waiting for it (takeover). No reconcile runs before every scope's cache is synced:
//! org claims span the scopes.
pub mod act;
pub mod backoff;
pub mod cleanup;
pub mod conditions;
pub mod context;
pub mod decide;
pub mod error;
pub mod events;
pub mod fair;
pub mod index;
pub mod link;
pub mod observe;
pub mod pause;
pub mod report;
pub mod secret;
pub mod source_claims;
pub mod takeover;
pub mod versions;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, Predicate, WatchStreamExt, predicates, watcher};
use kube::{Client, ResourceExt};

pub use context::{Context, Scope};

use backoff::Retry;
pub use error::Error;

use crate::api::{FINALIZER, LinkToken};
use crate::runtime::metrics::ReconcileResult;

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub concurrency: u16,
}

/// Every watched scope with the writer of its cache, created before the controllers so the
/// shared context can see all LinkTokens (the org index spans namespaces); `run` consumes the
/// writers.
pub struct Scopes(Vec<(Arc<Scope>, reflector::store::Writer<LinkToken>)>);

impl Scopes {
    /// One scope per namespace; none: one scope for all namespaces.
    pub fn new(namespaces: &[String]) -> Scopes {
        let names: Vec<Option<String>> = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().cloned().map(Some).collect()
        };
        Scopes(
            names
                .into_iter()
                .map(|ns| {
                    let (store, writer) = reflector::store();
                    (Arc::new(Scope::new(ns, store)), writer)
                })
                .collect(),
        )
    }

    /// The scopes, for the shared context.
    pub fn scopes(&self) -> Vec<Arc<Scope>> {
        self.0.iter().map(|(s, _)| s.clone()).collect()
    }
}

fn scoped<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs one controller per scope until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(
    ctx: Arc<Context>,
    scopes: Scopes,
    cfg: RunConfig,
    shutdown: crate::runtime::Shutdown,
) {
    // `--concurrency` bounds the reconciles of the whole process, shared fairly between
    // namespaces (see `fair`): the controllers themselves are unbounded, so a reconcile of
    // every namespace is queued for a permit rather than stuck behind one namespace's.
    let permits = fair::FairPermits::new(usize::from(cfg.concurrency.max(1)));
    let mut wake_senders = Vec::new();
    let mut wake_receivers = Vec::new();
    for _ in &scopes.0 {
        let (tx, rx) = mpsc::unbounded::<ObjectRef<LinkToken>>();
        wake_senders.push(tx);
        wake_receivers.push(rx);
    }
    let mut runs = Vec::new();
    for ((scope, writer), wake_rx) in scopes.0.into_iter().zip(wake_receivers) {
        let client = ctx.client.clone();
        let lt_api: Api<LinkToken> = scoped(&client, &scope.namespace);
        let secret_api: Api<PartialObjectMeta<Secret>> = scoped(&client, &scope.namespace);
        let senders = wake_senders.clone();
        let ctx_for_wake = ctx.clone();
        let reader = scope.store.clone();
        // The orgs each LinkToken of this scope claimed when last seen (by uid), so a claim
        // that goes away (status change: a previous org revoked, credentials reported
        // unusable) wakes the LinkTokens waiting for that org. Status writes do not trigger
        // reconciles (see the predicate below), so without this a waiter would sleep until
        // the slow resync.
        let mut claims: HashMap<String, Vec<String>> = HashMap::new();
        // Lists are consistent reads (not `any_semantic`, which may be served from an older
        // watch cache): reconciles act on this cache without reading the object again unless
        // it may lag this process's own writes (see `versions`), so a list must hold every
        // write an earlier process (a previous leader) completed. managedFields are dropped:
        // nothing reads them, and they are a large part of each cached object. Pages of 100:
        // a page is decoded whole (with managedFields) before anything is dropped, and every
        // scope lists at once at start-up, so the page size sets the start-up peak of memory.
        let linktokens = reflector::reflector(
            writer,
            watcher(lt_api, watcher::Config::default().page_size(100)).modify(|lt| {
                lt.metadata.managed_fields = None;
            }),
        )
        .default_backoff()
        .inspect(move |ev| {
            if let Ok(watcher::Event::InitDone) = ev {
                scope.mark_synced();
                // A relist drops objects deleted while the watch was down, without a
                // delete event: forget them too.
                ctx_for_wake.prune_vanished();
            }
            let released: Option<(&LinkToken, Vec<String>)> = match ev {
                Ok(watcher::Event::Apply(lt) | watcher::Event::InitApply(lt)) => {
                    let now = claim_keys(lt);
                    let before = claims
                        .insert(lt.uid().unwrap_or_default(), now.clone())
                        .unwrap_or_default();
                    let gone: Vec<String> =
                        before.into_iter().filter(|o| !now.contains(o)).collect();
                    (!gone.is_empty()).then_some((lt, gone))
                }
                // The owner of an org went away: forget it, and wake the others so one
                // takes over now.
                Ok(watcher::Event::Delete(lt)) => {
                    ctx_for_wake.vanished(&ObjectRef::from_obj(lt));
                    let mut gone = claims
                        .remove(&lt.uid().unwrap_or_default())
                        .unwrap_or_default();
                    gone.extend(claim_keys(lt));
                    gone.push(lt.spec.org_id.clone());
                    gone.extend(source_claims::declared_key(lt));
                    Some((lt, gone))
                }
                _ => None,
            };
            if let Some((lt, orgs)) = released {
                for r in waiters(&ctx_for_wake.all_linktokens(), &orgs, lt) {
                    for tx in &senders {
                        let _ = tx.unbounded_send(r.clone());
                    }
                }
            }
        })
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(predicates::annotations)
                .combine(predicates::finalizers),
            Default::default(),
        )
        // The echo of this process's own write (the finalizer patch) brings nothing new:
        // the reconcile that wrote it already acted on that state.
        .try_filter({
            let ctx = ctx.clone();
            move |lt| {
                let echo = ctx.versions.is_echo(
                    &ObjectRef::from_obj(lt),
                    lt.metadata.resource_version.as_deref(),
                );
                futures::future::ready(!echo)
            }
        });
        let ctx_for_map = ctx.clone();
        // Only the token Secrets this operator wrote (its managed-by label), metadata only:
        // their deletion or tampering is drift to repair. Credentials Secrets are never listed
        // or watched; each reconcile reads its one by name (see backoff::Retry::Recheck).
        let token_secrets = watcher::Config::default()
            .labels(&secret::managed_selector())
            .any_semantic();
        let secrets = watcher(secret_api, token_secrets)
            .default_backoff()
            .touched_objects();
        let controller = Controller::for_stream(linktokens, reader)
            .watches_stream(secrets, move |s: PartialObjectMeta<Secret>| {
                let ns = s.namespace().unwrap_or_default();
                let rv = s.metadata.resource_version.as_deref();
                // A Secret at a version this process wrote for a LinkToken is no news to it.
                let mut refs =
                    index::linktokens_for_secret(&ctx_for_map.all_linktokens(), &ns, &s.name_any());
                refs.retain(|r| !ctx_for_map.versions.is_echo(r, rv));
                refs
            })
            .reconcile_on(wake_rx)
            .with_config(ControllerConfig::default())
            .graceful_shutdown_on(shutdown.wait())
            .run(
                {
                    let permits = permits.clone();
                    move |lt, ctx| {
                        let permits = permits.clone();
                        async move {
                            let _permit =
                                permits.acquire(&lt.namespace().unwrap_or_default()).await;
                            reconcile(lt, ctx).await
                        }
                    }
                },
                error_policy,
                ctx.clone(),
            )
            .for_each(|res| async move {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "controller event");
                }
            });
        runs.push(controller.boxed());
    }
    futures::future::join_all(runs).await;
}

impl Context {
    /// Every LinkToken of every watched scope.
    pub fn all_linktokens(&self) -> Vec<Arc<LinkToken>> {
        self.scopes.iter().flat_map(|s| s.store.state()).collect()
    }

    /// True when some watched scope's cache holds this object.
    pub fn in_cache(&self, key: &ObjectRef<LinkToken>) -> bool {
        self.scopes.iter().any(|s| s.store.get(key).is_some())
    }

    /// True once every scope's cache has its first full list.
    pub fn all_synced(&self) -> bool {
        self.scopes.iter().all(|s| s.is_synced())
    }

    /// Resolves once every scope's cache has its first full list. Read from the watch
    /// streams (their InitDone event), not from `Store::wait_until_ready`: that signal wakes
    /// a single waiter, and the controller itself is already waiting on it.
    pub async fn wait_until_synced(&self) {
        while !self.all_synced() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// How one reconcile ended, before it becomes a scheduler action and a metric.
enum Reconciled {
    /// The LinkToken lives: the reason its Ready condition reports.
    Live(act::Outcome),
    /// The LinkToken is gone or being deleted and nothing is left to do for it.
    Deleted(Action),
}

impl Reconciled {
    /// The result label; `stalled` exactly when the Stalled condition says so (a missing
    /// credentials Secret within its grace period is Reconciling, so `requeue`).
    fn metric(&self, lt: &LinkToken, credentials_grace: Duration) -> ReconcileResult {
        let in_grace = |reason| {
            conditions::credentials_grace_left(
                reason,
                lt.metadata.creation_timestamp.as_ref(),
                &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
                credentials_grace,
            )
            .is_some()
        };
        match self {
            Reconciled::Live(out) if out.reason.is_ready() => ReconcileResult::Ready,
            Reconciled::Live(out) if out.reason.is_stalled() && !in_grace(out.reason) => {
                ReconcileResult::Stalled
            }
            Reconciled::Live(_) => ReconcileResult::Requeue,
            Reconciled::Deleted(_) => ReconcileResult::Deleted,
        }
    }
}

/// The metric of a reconcile that failed: Atlas refusing a revocation for now is a timed
/// retry like any other; everything else is an error of the reconcile itself.
fn error_metric(e: &Error) -> ReconcileResult {
    match e {
        Error::RevocationBlocked { .. } => ReconcileResult::Requeue,
        _ => ReconcileResult::Error,
    }
}

/// One reconcile: finalizer bookkeeping, then apply or cleanup; one log line per outcome.
async fn reconcile(lt: Arc<LinkToken>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Ownership of an org is decided over every scope's LinkTokens: a scope whose cache is
    // not synced yet would look empty, and a LinkToken could issue in an org another one
    // already holds. Nothing runs before every scope is synced (no Atlas call, no write).
    if !ctx.all_synced() {
        tracing::debug!(linktoken = %report::key_of(&lt), "waiting for every watched scope's cache to sync");
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let started = Instant::now();
    let key = report::key_of(&lt);
    // Bounded: a host that answers slowly at every step (a tarpit) must not hold a permit for
    // a chain of request timeouts.
    let bound = ctx.reconcile_timeout;
    let result = match tokio::time::timeout(bound, reconcile_inner(&lt, &ctx)).await {
        Ok(r) => r,
        Err(_) => Err(Error::TimedOut(bound)),
    };
    let elapsed = started.elapsed();
    let duration_ms = elapsed.as_millis() as u64;
    match result {
        Ok(done) => {
            let metric = done.metric(&lt, ctx.credentials_grace);
            ctx.metrics.observe_reconcile(metric, elapsed);
            match done {
                Reconciled::Live(out) => {
                    tracing::info!(linktoken = %key, reason = %out.reason, result = %metric,
                        duration_ms, "reconciled");
                    Ok(out.action)
                }
                Reconciled::Deleted(action) => {
                    tracing::info!(linktoken = %key, result = %metric, duration_ms, "reconciled");
                    Ok(action)
                }
            }
        }
        Err(e) => {
            let metric = error_metric(&e);
            ctx.metrics.observe_reconcile(metric, elapsed);
            tracing::warn!(linktoken = %key, error = %e, result = %metric, duration_ms,
                "reconcile failed");
            Err(e)
        }
    }
}

async fn reconcile_inner(cached: &LinkToken, ctx: &Context) -> Result<Reconciled, Error> {
    // The cache can lag this controller's own writes from the previous reconcile. Acting on a
    // stale status could POST without the DELETE that guards against a second live link, or
    // revoke too little on deletion: unless the cache holds the version this process last
    // wrote or read (or it never wrote the object), read it fresh (one GET).
    let key = report::object_ref(cached);
    let fresh;
    let lt = if ctx
        .versions
        .cache_is_current(&key, cached.metadata.resource_version.as_deref())
    {
        cached
    } else {
        let ns = cached
            .namespace()
            .ok_or(Error::MissingMetadata("namespace"))?;
        let api: Api<LinkToken> = Api::namespaced(ctx.client.clone(), &ns);
        let Some(got) = api.get_opt(&cached.name_any()).await? else {
            ctx.vanished(&key);
            return Ok(Reconciled::Deleted(Action::await_change()));
        };
        ctx.versions
            .read(&key, got.metadata.resource_version.as_deref());
        fresh = got;
        &fresh
    };
    let finalizers = lt.finalizers();
    let has_finalizer = finalizers.iter().any(|f| f == FINALIZER);
    if lt.metadata.deletion_timestamp.is_some() {
        if !has_finalizer {
            ctx.vanished(&report::object_ref(lt));
            return Ok(Reconciled::Deleted(Action::await_change()));
        }
        let action = cleanup::cleanup(lt, ctx).await?;
        remove_finalizer(lt, ctx).await?;
        return Ok(Reconciled::Deleted(action));
    }
    // Status writes are fenced by the resourceVersion read here, so act on the object as the
    // finalizer patch returned it. The patch and observe's reads go out together (one round
    // trip less per new LinkToken): the patch, fenced at the version observed, changes nothing
    // observe looks at, or fails and the observation is dropped.
    let with_finalizer;
    let (lt, obs) = if has_finalizer {
        (lt, observe::observe(lt, ctx).await?)
    } else {
        let (patched, obs) = futures::try_join!(add_finalizer(lt, ctx), observe::observe(lt, ctx))?;
        with_finalizer = patched;
        (&with_finalizer, obs)
    };
    act::apply(lt, ctx, obs).await.map(Reconciled::Live)
}

/// Merge patches carrying the resourceVersion: the API server refuses them if the object
/// changed meanwhile (the next event retries), so another writer's finalizer is never lost.
async fn add_finalizer(lt: &LinkToken, ctx: &Context) -> Result<LinkToken, Error> {
    let mut list = lt.finalizers().to_vec();
    list.push(FINALIZER.to_string());
    patch_finalizers(lt, ctx, list).await
}

async fn remove_finalizer(lt: &LinkToken, ctx: &Context) -> Result<(), Error> {
    let list: Vec<String> = lt
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    match patch_finalizers(lt, ctx, list).await {
        // Already gone: nothing left to do.
        Err(Error::Kube(kube::Error::Api(s))) if s.code == 404 => Ok(()),
        other => other.map(|_| ()),
    }
}

async fn patch_finalizers(
    lt: &LinkToken,
    ctx: &Context,
    list: Vec<String>,
) -> Result<LinkToken, Error> {
    let ns = lt.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<LinkToken> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "metadata": { "finalizers": list, "resourceVersion": lt.resource_version() }
    });
    let key = report::object_ref(lt);
    match api
        .patch(
            &lt.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(patched) => {
            ctx.versions
                .wrote(&key, patched.metadata.resource_version.as_deref());
            Ok(patched)
        }
        Err(e) => {
            ctx.versions.write_failed(&key);
            Err(e.into())
        }
    }
}

fn error_policy(lt: Arc<LinkToken>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = report::object_ref(&lt);
    let retry = match err {
        // cleanup already applied the retry policy to Atlas's answer.
        Error::RevocationBlocked { retry_after, .. } => return Action::requeue(*retry_after),
        // A conflict means the object changed under us; its watch event reconciles it anyway.
        Error::Kube(kube::Error::Api(s)) if s.code == 409 => Retry::Soon(Duration::from_secs(1)),
        // The same, found by the link step's fresh read before a source call.
        Error::Superseded if ctx.in_cache(&key) => Retry::Soon(Duration::from_secs(1)),
        // The object went away meanwhile (its writes failed with 404): keep nothing about it.
        _ if !ctx.in_cache(&key) => {
            ctx.vanished(&key);
            return Action::await_change();
        }
        _ => Retry::Backoff,
    };
    ctx.retry_in(&key, retry)
        .map_or_else(Action::await_change, Action::requeue)
}

/// What `lt` claims: its Atlas orgs and its source org (keys of both kinds in one list, so one
/// diff finds every claim that went away).
fn claim_keys(lt: &LinkToken) -> Vec<String> {
    let mut keys = index::claimed_orgs(lt);
    keys.extend(source_claims::claimed(lt));
    keys
}

/// The LinkTokens (but `except`) waiting for one of the released `keys`: an Atlas org their
/// spec names, or their spec's source org.
fn waiters(
    all: &[Arc<LinkToken>],
    keys: &[String],
    except: &LinkToken,
) -> Vec<ObjectRef<LinkToken>> {
    let mut refs = index::waiting_for(all, keys, except);
    for lt in all {
        let r = ObjectRef::from_obj(lt.as_ref());
        if lt.metadata.uid != except.metadata.uid
            && source_claims::waiting_for(lt, keys)
            && !refs.contains(&r)
        {
            refs.push(r);
        }
    }
    refs
}
