//! Event publishing without kube's `Recorder` cache.
//!
//! kube's `Recorder` keeps every event it published for six minutes, to turn a repeat of the
//! same event on the same object into a PATCH of its series, and sweeps that whole cache on
//! every publish. This controller already publishes a Warning only when the Ready reason
//! changes (report::commit), and its Normal events (TokenIssued, ...) are one per token: the
//! cache would hold one event per LinkToken (several MiB at a few thousand) and the sweep
//! makes each publish cost time proportional to them, for no aggregation. Each publish here
//! goes through a fresh `Recorder` with an empty cache: one create, nothing kept.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, Reporter};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// Background publishes in flight at once, for the whole process: each holds an API
/// connection, and issuing must not open one more per token when the API server is slow.
const BACKGROUND: usize = 2;

#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    background: Arc<Semaphore>,
    /// The background publishes not finished yet, so that an exiting process can wait for
    /// them: an event the reconcile already decided on (TokenRevoked after a finalizer was
    /// removed) must not vanish because SIGTERM came a moment later.
    pending: TaskTracker,
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Recorder {
        Recorder {
            client,
            reporter,
            background: Arc::new(Semaphore::new(BACKGROUND)),
            pending: TaskTracker::new(),
        }
    }

    /// Publishes `events` in order without making the caller wait (a failure is logged under
    /// `key`), at most [`BACKGROUND`] at a time.
    pub fn publish_in_background(
        &self,
        events: Vec<Event>,
        reference: ObjectReference,
        key: String,
    ) {
        let this = self.clone();
        self.pending.spawn(async move {
            // Never closed: the semaphore lives as long as the recorder.
            let _permit = this.background.clone().acquire_owned().await.ok();
            for ev in events {
                if let Err(e) = this.publish(&ev, &reference).await {
                    tracing::warn!(linktoken = %key, reason = %ev.reason, error = %e, "could not publish event");
                }
            }
        });
    }

    /// Waits, at most `within`, for the background publishes already started; returns how
    /// many were still unfinished when the time ran out (0: all were published or failed).
    /// Publishes started after this call are still run, and not waited for.
    pub async fn flush(&self, within: Duration) -> usize {
        self.pending.close();
        let done = tokio::time::timeout(within, self.pending.wait()).await;
        if done.is_ok() { 0 } else { self.pending.len() }
    }

    /// Creates the event (events.k8s.io/v1), as kube's `Recorder::publish` does for a first
    /// occurrence.
    pub async fn publish(
        &self,
        ev: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        kube::runtime::events::Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(ev, reference)
            .await
    }
}
