//! Supervision of the controller task: the process must not outlive its controller.
//!
//! A controller that ends while the process stays up (a panic in a reconcile, a stream that
//! finished) reconciles nothing, yet a live process keeps the Lease renewed and `/healthz`
//! green, so no standby takes over and nothing restarts it. So whatever ends first decides how
//! the process stops:
//! - shutdown (SIGTERM): stop taking work and let in-flight reconciles finish within the drain
//!   timeout, unless leadership is lost meanwhile (then as below);
//! - leadership lost: abort in-flight reconciles at once (a standby may already act; finishing
//!   them would race it) and exit non-zero;
//! - the controller task ended by itself: exit non-zero (the caller fails `/healthz` and
//!   releases the Lease first).

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::shutdown::{Shutdown, drain};

/// Why the controller stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was requested; `drained` says whether in-flight work finished in time.
    Shutdown { drained: bool },
    /// Leadership was lost; in-flight work was aborted.
    LeadershipLost,
    /// The controller task ended although nobody asked it to (it returned, or panicked).
    ControllerDied(String),
}

impl Ended {
    /// Only a requested shutdown is a clean exit.
    pub fn is_clean(&self) -> bool {
        matches!(self, Ended::Shutdown { .. })
    }
}

/// Waits for the first of: `shutdown`, `lost`, or the end of `task`. `stop` is the token the
/// controller stops taking work on; it is triggered on shutdown and on leadership loss.
pub async fn supervise<T, L>(
    mut task: JoinHandle<T>,
    shutdown: Shutdown,
    stop: Shutdown,
    lost: L,
    drain_timeout: Duration,
) -> Ended
where
    T: Send + 'static,
    L: Future<Output = ()>,
{
    let mut lost = std::pin::pin!(lost);
    tokio::select! {
        // When several are ready at once, a requested stop explains the others.
        biased;
        _ = &mut lost => {
            stop.trigger();
            abort(task).await
        }
        _ = shutdown.wait() => {
            stop.trigger();
            // The drain is no licence to outlive the Lease: a reconcile that finishes after a
            // standby took over would race it, so a loss during the drain aborts at once.
            tokio::select! {
                biased;
                _ = &mut lost => abort(task).await,
                drained = drain(drain_timeout, &mut task) => {
                    let drained = drained.is_ok();
                    if !drained {
                        task.abort();
                    }
                    Ended::Shutdown { drained }
                }
            }
        }
        res = &mut task => Ended::ControllerDied(match res {
            Ok(_) => "the controller task returned".to_string(),
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                format!("the controller task panicked: {msg}")
            }
            Err(_) => "the controller task was cancelled".to_string(),
        }),
    }
}

/// Leadership lost: the reconcile futures are dropped, which cancels their requests where they
/// are.
async fn abort<T>(task: JoinHandle<T>) -> Ended {
    task.abort();
    let _ = task.await;
    Ended::LeadershipLost
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Sets its flag when dropped: shows that a task's future was dropped (aborted).
    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn pending_forever() -> impl Future<Output = ()> {
        std::future::pending()
    }

    #[tokio::test]
    async fn a_panicking_controller_is_reported_not_waited_for() {
        let task = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("overflow when adding durations");
        });
        let ended = tokio::time::timeout(
            Duration::from_secs(5),
            supervise(
                task,
                Shutdown::new(),
                Shutdown::new(),
                pending_forever(),
                Duration::from_secs(25),
            ),
        )
        .await
        .expect("supervise must return when the controller dies");
        match &ended {
            Ended::ControllerDied(m) => assert!(m.contains("overflow when adding"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(!ended.is_clean());
    }

    #[tokio::test]
    async fn a_controller_that_returns_by_itself_is_a_death_too() {
        let task = tokio::spawn(async {});
        let ended = supervise(
            task,
            Shutdown::new(),
            Shutdown::new(),
            pending_forever(),
            Duration::from_secs(25),
        )
        .await;
        assert!(matches!(ended, Ended::ControllerDied(_)), "{ended:?}");
    }

    #[tokio::test]
    async fn leadership_loss_aborts_in_flight_work_at_once() {
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = DropFlag(dropped.clone());
        // A reconcile that would take far longer than any drain.
        let task = tokio::spawn(async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let stop = Shutdown::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let lost = async move {
            let _ = rx.await;
        };
        let started = std::time::Instant::now();
        let sup = tokio::spawn(supervise(
            task,
            Shutdown::new(),
            stop.clone(),
            lost,
            Duration::from_secs(25),
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(2), sup)
            .await
            .expect("no drain on leadership loss")
            .unwrap();
        assert_eq!(ended, Ended::LeadershipLost);
        assert!(!ended.is_clean());
        assert!(dropped.load(Ordering::SeqCst), "in-flight work was aborted");
        assert!(stop.is_triggered());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn leadership_lost_during_the_drain_aborts_at_once() {
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = DropFlag(dropped.clone());
        // A reconcile the drain would wait for (its POST still to come).
        let task = tokio::spawn(async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let shutdown = Shutdown::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let lost = async move {
            let _ = rx.await;
        };
        let sup = tokio::spawn(supervise(
            task,
            shutdown.clone(),
            Shutdown::new(),
            lost,
            Duration::from_secs(25),
        ));
        shutdown.trigger();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!dropped.load(Ordering::SeqCst), "draining");
        tx.send(()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(2), sup)
            .await
            .expect("the loss ends the drain")
            .unwrap();
        assert_eq!(ended, Ended::LeadershipLost);
        assert!(dropped.load(Ordering::SeqCst), "in-flight work was aborted");
    }

    #[tokio::test]
    async fn shutdown_drains_in_flight_work_within_the_timeout() {
        let shutdown = Shutdown::new();
        let stop = Shutdown::new();
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        let stop_seen = stop.clone();
        let task = tokio::spawn(async move {
            stop_seen.wait().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            f.store(true, Ordering::SeqCst);
        });
        shutdown.trigger();
        let ended = supervise(
            task,
            shutdown.clone(),
            stop,
            pending_forever(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(ended, Ended::Shutdown { drained: true });
        assert!(ended.is_clean());
        assert!(finished.load(Ordering::SeqCst), "the drain let it finish");

        // A reconcile stuck past the timeout does not hold the process.
        let shutdown = Shutdown::new();
        let task = tokio::spawn(std::future::pending::<()>());
        shutdown.trigger();
        let ended = supervise(
            task,
            shutdown,
            Shutdown::new(),
            pending_forever(),
            Duration::from_millis(50),
        )
        .await;
        assert_eq!(ended, Ended::Shutdown { drained: false });
    }
}
