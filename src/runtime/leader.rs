//! Leader election on a `coordination.k8s.io/v1` Lease in the operator's own namespace.
//!
//! Own implementation on kube's `Api<Lease>` rather than `kube-lease-manager` (see
//! docs/operations.md for the reasons): it follows client-go's algorithm:
//! - every write is a `replace` carrying the `resourceVersion` that was read, so two candidates
//!   can never both win (the loser gets 409 Conflict);
//! - a candidate takes over a held Lease only after seeing the same record unchanged for
//!   `leaseDurationSeconds` on its *own* clock, so clock skew between nodes does not matter;
//! - the leader renews every `renew_interval` and steps down by itself when it could not renew
//!   for `renew_deadline` (< lease duration), before any standby may take over;
//! - `release` clears the holder, so a standby takes over within one `retry_period`.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::metrics::Metrics;
use crate::atlas::RequestGate;

pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid leader election settings: {0}")]
    InvalidConfig(String),
    #[error("leader election needs a Tokio runtime")]
    NoRuntime,
    #[error("leader election stopped before this replica became the leader")]
    Stopped,
    #[error("Kubernetes API error on Lease {lease}: {source}")]
    Kube {
        lease: String,
        #[source]
        source: kube::Error,
    },
}

/// Settings of one elector. Invariant (checked by [`LeaderElector::start`]):
/// `lease_duration > renew_deadline > renew_interval >= retry_period > 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// Unique per process: two processes with one identity would both believe they lead.
    pub identity: String,
    /// How long a Lease stays valid after its last renewal, as seen by standbys (15s).
    pub lease_duration: Duration,
    /// The leader steps down when it could not renew for this long (10s).
    pub renew_deadline: Duration,
    /// The leader renews this often (5s).
    pub renew_interval: Duration,
    /// Standbys try to acquire, and a failing leader retries, this often (2s, +20% jitter).
    pub retry_period: Duration,
}

impl LeaderConfig {
    pub fn new(
        namespace: impl Into<String>,
        lease_name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaderConfig {
            namespace: namespace.into(),
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            renew_interval: DEFAULT_RENEW_INTERVAL,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// Sets the lease duration and scales the other timings in the default proportions
    /// (deadline 2/3, renew 1/3, retry 2/15: 15s -> 10s, 5s, 2s).
    pub fn with_lease_duration(mut self, lease_duration: Duration) -> Self {
        self.lease_duration = lease_duration;
        self.renew_deadline = lease_duration * 2 / 3;
        self.renew_interval = lease_duration / 3;
        self.retry_period = lease_duration * 2 / 15;
        self
    }

    /// Sets the three timings operators tune (the flags `--leader-election-lease-duration`,
    /// `-renew-deadline`, `-retry-period`, as in controller-runtime). The leader renews every
    /// half renew deadline, so one failed renewal still leaves a second try before it steps
    /// down; never more often than the retry period.
    pub fn with_timings(
        mut self,
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Self {
        self.lease_duration = lease_duration;
        self.renew_deadline = renew_deadline;
        self.retry_period = retry_period;
        self.renew_interval = (renew_deadline / 2).max(retry_period);
        self
    }

    pub fn validate(&self) -> Result<(), LeaderError> {
        let bad = |m: String| Err(LeaderError::InvalidConfig(m));
        if self.identity.trim().is_empty() {
            return bad("identity must not be empty".into());
        }
        if self.lease_duration < Duration::from_secs(1) {
            return bad(
                "lease duration must be at least 1s (the Lease stores whole seconds)".into(),
            );
        }
        if self.lease_duration.as_secs() > i32::MAX as u64 {
            return bad("lease duration is too large".into());
        }
        if self.retry_period.is_zero() {
            return bad("retry period must be greater than zero".into());
        }
        if !(self.lease_duration > self.renew_deadline
            && self.renew_deadline > self.renew_interval
            && self.renew_interval >= self.retry_period)
        {
            return bad(format!(
                "need lease duration ({:?}) > renew deadline ({:?}) > renew interval ({:?}) >= retry period ({:?})",
                self.lease_duration, self.renew_deadline, self.renew_interval, self.retry_period
            ));
        }
        Ok(())
    }

    /// Whole seconds stored in the Lease; standbys use this, so round up, never down.
    fn lease_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// `POD_NAME` (downward API) or the host name, plus a random suffix so that a restarted
/// process never mistakes its predecessor's Lease for its own.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "linktoken-operator".to_string());
    format!("{base}_{:08x}", rand::rng().random::<u32>())
}

/// This replica's hold on the Lease, as the gate of every Atlas and source request: open from
/// a successful renewal until the renew deadline counted from when that renewal was sent, shut
/// at once when leadership is lost or the election stops. It closes by itself at the deadline,
/// even before the campaign publishes the loss, so no request leaves after the point where
/// this replica steps down (which is before any standby may take over).
#[derive(Clone, Debug, Default)]
pub struct Leadership {
    held_until: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// True while this replica certainly holds the Lease.
    pub fn holds(&self) -> bool {
        self.lock().is_some_and(|until| Instant::now() < until)
    }

    fn set(&self, until: Option<Instant>) {
        *self.lock() = until;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // A single value, replaced whole: a poisoned lock is still consistent.
        self.held_until.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RequestGate for Leadership {
    fn may_send(&self) -> bool {
        self.holds()
    }
}

/// A running election. Leadership is published on a watch channel (`true` = this replica leads).
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderConfig,
    leading: watch::Receiver<bool>,
    hold: Leadership,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl LeaderElector {
    /// Validates `config` and starts campaigning in a background task.
    pub fn start(client: Client, config: LeaderConfig) -> Result<Self, LeaderError> {
        config.validate()?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| LeaderError::NoRuntime)?;
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let (leading_tx, leading) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let hold = Leadership::default();
        let task = handle.spawn(campaign(
            api.clone(),
            config.clone(),
            leading_tx,
            hold.clone(),
            stop_rx,
        ));
        Ok(LeaderElector {
            api,
            config,
            leading,
            hold,
            stop,
            task,
        })
    }

    /// The sketch's constructor: defaults scaled from `lease_duration`.
    pub fn new(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: impl Into<String>,
        lease_duration: Duration,
    ) -> Result<Self, LeaderError> {
        let config =
            LeaderConfig::new(namespace, lease_name, identity).with_lease_duration(lease_duration);
        Self::start(client, config)
    }

    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// The gate for Atlas and source requests: open only while this replica certainly holds
    /// the Lease.
    pub fn leadership(&self) -> Leadership {
        self.hold.clone()
    }

    /// A receiver of leadership changes, for `select!` loops.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Resolves once this replica leads. Cancel-safe: wrap it in `select!` with the shutdown.
    pub async fn wait_until_leader(&self) -> Result<(), LeaderError> {
        let mut rx = self.leading.clone();
        rx.wait_for(|leading| *leading)
            .await
            .map(|_| ())
            .map_err(|_| LeaderError::Stopped)
    }

    /// Resolves once this replica does not lead (at once if it does not lead now). After
    /// [`wait_until_leader`](Self::wait_until_leader), this is "leadership lost": stop
    /// reconciling at once, because a standby may take over after the lease duration.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.leading.clone();
        async move {
            // A closed channel means the campaign ended: not leading either.
            let _ = rx.wait_for(|leading| !*leading).await;
        }
    }

    /// Mirrors leadership into the `linktoken_leader` gauge until the election ends.
    pub fn mirror_to(&self, metrics: Metrics) -> JoinHandle<()> {
        let mut rx = self.leading.clone();
        tokio::spawn(async move {
            loop {
                let leading = *rx.borrow_and_update();
                metrics.set_leader(leading);
                if rx.changed().await.is_err() {
                    metrics.set_leader(false);
                    return;
                }
            }
        })
    }

    /// Stops campaigning and, if this replica holds the Lease, gives it up so a standby takes
    /// over within its retry period instead of waiting for the lease to expire. Call it after
    /// in-flight work has drained.
    pub async fn release(self) -> Result<(), LeaderError> {
        self.stop.send_replace(true);
        // The campaign only ends between API calls; a panic there is already logged.
        let _ = self.task.await;
        let lease_err = |source| LeaderError::Kube {
            lease: format!("{}/{}", self.config.namespace, self.config.lease_name),
            source,
        };
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.lease_name)
            .await
            .map_err(lease_err)?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        // As client-go does on release: no holder and a 1s duration, so every implementation
        // (ours acquires an unheld Lease at once) treats it as free.
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.config.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(identity = %self.config.identity, lease = %self.config.lease_name, "released the leader Lease");
                Ok(())
            }
            // Someone wrote the Lease since we read it: it is no longer ours to release.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(lease_err(e)),
        }
    }
}

/// One attempt's outcome.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Leading,
    Following { holder: Option<String> },
}

/// What a standby last saw of the Lease, and when (on its own monotonic clock).
#[derive(Debug)]
struct Observed {
    record: (Option<String>, Option<Timestamp>, Option<i32>),
    since: Instant,
}

async fn campaign(
    api: Api<Lease>,
    config: LeaderConfig,
    leading: watch::Sender<bool>,
    hold: Leadership,
    mut stop: watch::Receiver<bool>,
) {
    let mut observed: Option<Observed> = None;
    let mut last_renewal = Instant::now();
    loop {
        let was_leading = *leading.borrow();
        // Every attempt is bounded: a hung request must not keep a leader from stepping down.
        let budget = if was_leading {
            config.renew_deadline.saturating_sub(last_renewal.elapsed())
        } else {
            config.renew_deadline
        };
        // The renewal counts from when its request is sent, not from when the answer comes
        // back: a standby starts its clock when it sees the new record, which can be any time
        // after the write was sent, so a slow answer must not stretch our validity.
        let attempt_sent = Instant::now();
        let outcome = if budget.is_zero() {
            Err("renew deadline reached".to_string())
        } else {
            match tokio::time::timeout(budget, try_acquire_or_renew(&api, &config, &mut observed))
                .await
            {
                Ok(Ok(a)) => Ok(a),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {budget:?}")),
            }
        };

        let renewed = matches!(outcome, Ok(Attempt::Leading));
        match outcome {
            Ok(Attempt::Leading) => {
                last_renewal = attempt_sent;
                hold.set(attempt_sent.checked_add(config.renew_deadline));
                if !was_leading {
                    tracing::info!(identity = %config.identity, lease = %config.lease_name, "became the leader");
                    leading.send_replace(true);
                }
            }
            Ok(Attempt::Following { holder }) => {
                if was_leading {
                    tracing::warn!(identity = %config.identity, holder = ?holder, "lost the leader Lease to another replica");
                    hold.set(None);
                    leading.send_replace(false);
                } else {
                    tracing::debug!(holder = ?holder, "standing by: the Lease is held");
                }
            }
            Err(error) => {
                if was_leading && last_renewal.elapsed() >= config.renew_deadline {
                    tracing::error!(%error, identity = %config.identity, deadline = ?config.renew_deadline,
                        "could not renew the leader Lease in time: stepping down");
                    hold.set(None);
                    leading.send_replace(false);
                } else if was_leading {
                    tracing::warn!(%error, "renewing the leader Lease failed; retrying");
                } else {
                    tracing::warn!(%error, "acquiring the leader Lease failed; retrying");
                }
            }
        }

        let pause = if renewed {
            config.renew_interval
        } else {
            let jittered = config
                .retry_period
                .mul_f64(1.0 + rand::rng().random_range(0.0..0.2));
            if *leading.borrow() {
                // Retry a failing renewal early enough to step down right at the deadline.
                jittered.min(config.renew_deadline.saturating_sub(last_renewal.elapsed()))
            } else {
                jittered
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    hold.set(None);
    leading.send_replace(false);
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaderConfig,
    observed: &mut Option<Observed>,
) -> Result<Attempt, kube::Error> {
    let now = Timestamp::now();
    let Some(mut lease) = api.get_opt(&config.lease_name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.lease_name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(config.lease_seconds()),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Leading),
            // Another candidate created it first.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Following { holder: None }),
            Err(e) => Err(e),
        };
    };

    let spec = lease.spec.take().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = (
        holder.clone(),
        spec.renew_time.as_ref().map(|t| t.0),
        spec.lease_duration_seconds,
    );
    let seen = match observed.take() {
        Some(o) if o.record == record => o,
        _ => Observed {
            record,
            since: Instant::now(),
        },
    };
    let seen_for = seen.since.elapsed();
    *observed = Some(seen);

    let ours = holder.as_deref() == Some(config.identity.as_str());
    if let (false, Some(h)) = (ours, &holder) {
        let valid_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map_or(config.lease_duration, Duration::from_secs);
        if seen_for < valid_for {
            return Ok(Attempt::Following {
                holder: Some(h.clone()),
            });
        }
        tracing::info!(previous = %h, "the leader Lease expired; taking over");
    }

    let transitions = spec.lease_transitions.unwrap_or(0);
    let mut new_spec = spec;
    new_spec.holder_identity = Some(config.identity.clone());
    new_spec.lease_duration_seconds = Some(config.lease_seconds());
    new_spec.renew_time = Some(MicroTime(now));
    if !ours {
        new_spec.acquire_time = Some(MicroTime(now));
        new_spec.lease_transitions = Some(transitions.saturating_add(1));
    }
    lease.spec = Some(new_spec);
    // `lease.metadata.resource_version` is the one we read: the write fails with 409 if anyone
    // else wrote in between, which is what makes the election safe.
    match api
        .replace(&config.lease_name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(Attempt::Leading),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Following { holder }),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_timings_are_valid_and_scale() {
        let c = LeaderConfig::new("ns", "lease", "me");
        c.validate().unwrap();
        assert_eq!(c.lease_seconds(), 15);
        let s = c.clone().with_lease_duration(Duration::from_secs(15));
        assert_eq!(s, c);
        let short =
            LeaderConfig::new("ns", "lease", "me").with_lease_duration(Duration::from_secs(3));
        short.validate().unwrap();
        assert_eq!(short.renew_deadline, Duration::from_secs(2));
        assert_eq!(short.renew_interval, Duration::from_secs(1));
        assert_eq!(short.retry_period, Duration::from_millis(400));
    }

    #[test]
    fn explicit_timings_keep_the_defaults_and_renew_at_half_the_deadline() {
        let d = LeaderConfig::new("ns", "lease", "me");
        let same = d.clone().with_timings(
            DEFAULT_LEASE_DURATION,
            DEFAULT_RENEW_DEADLINE,
            DEFAULT_RETRY_PERIOD,
        );
        assert_eq!(same, d);
        let slow = d.clone().with_timings(
            Duration::from_secs(60),
            Duration::from_secs(40),
            Duration::from_secs(5),
        );
        slow.validate().unwrap();
        assert_eq!(slow.renew_interval, Duration::from_secs(20));
        // A retry period above half the deadline sets the renew interval (still < deadline).
        let eager = d.clone().with_timings(
            Duration::from_secs(15),
            Duration::from_secs(10),
            Duration::from_secs(8),
        );
        eager.validate().unwrap();
        assert_eq!(eager.renew_interval, Duration::from_secs(8));
        for (lease, deadline, retry) in [(15, 15, 2), (10, 15, 2), (15, 10, 10), (15, 10, 12)] {
            let c = d.clone().with_timings(
                Duration::from_secs(lease),
                Duration::from_secs(deadline),
                Duration::from_secs(retry),
            );
            assert!(c.validate().is_err(), "{lease}s {deadline}s {retry}s");
        }
    }

    #[test]
    fn rejects_inconsistent_timings() {
        let mut c = LeaderConfig::new("ns", "lease", "me");
        c.renew_deadline = c.lease_duration;
        assert!(matches!(c.validate(), Err(LeaderError::InvalidConfig(_))));
        let c =
            LeaderConfig::new("ns", "lease", "me").with_lease_duration(Duration::from_millis(500));
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("at least 1s")
        );
        let c = LeaderConfig::new("ns", "lease", " ");
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_gate_is_open_only_until_the_deadline_of_the_last_renewal() {
        let hold = Leadership::default();
        assert!(!hold.may_send(), "closed before the first renewal");
        hold.set(Instant::now().checked_add(Duration::from_secs(60)));
        assert!(hold.may_send());
        let clone = hold.clone();
        hold.set(Some(Instant::now()));
        assert!(
            !clone.may_send(),
            "closed at the deadline, without a published loss"
        );
        hold.set(Instant::now().checked_add(Duration::from_secs(60)));
        hold.set(None);
        assert!(!clone.may_send(), "closed on loss");
    }

    #[test]
    fn identities_are_unique_per_process_start() {
        let a = default_identity();
        let b = default_identity();
        assert_ne!(a, b);
        assert!(a.contains('_'));
    }
}
