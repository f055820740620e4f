//! Graceful shutdown: one token, triggered by SIGTERM/SIGINT (or by code), awaited by every task.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("installing the {signal} handler failed: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("in-flight work did not finish within {0:?}")]
    DrainTimeout(Duration),
}

/// A shutdown token. Clones share the state; [`Shutdown::wait`] resolves for every clone once
/// [`Shutdown::trigger`] was called (also when it was called before `wait`).
#[derive(Clone, Debug)]
pub struct Shutdown {
    // A watch channel rather than Notify: its value is sticky, so late waiters never miss it.
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(false);
        Shutdown { tx: Arc::new(tx) }
    }

    /// Starts shutdown. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once shutdown has been triggered.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            // The sender lives as long as any Shutdown clone; if all are gone nobody can trigger
            // any more, which we treat as shutdown too rather than hanging forever.
            let _ = rx.wait_for(|triggered| *triggered).await;
        }
    }

    /// Triggers this token on the first SIGTERM or SIGINT. A second signal exits the process at
    /// once (status 130), for an operator at a terminal who does not want to wait for the drain.
    /// Must be called inside a Tokio runtime.
    pub fn listen_for_signals(&self) -> Result<tokio::task::JoinHandle<()>, ShutdownError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|source| ShutdownError::Signal {
            signal: "SIGTERM",
            source,
        })?;
        let mut int = signal(SignalKind::interrupt()).map_err(|source| ShutdownError::Signal {
            signal: "SIGINT",
            source,
        })?;
        let token = self.clone();
        Ok(tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(
                signal = name,
                "shutdown requested: no new work, draining in-flight reconciles"
            );
            token.trigger();
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::warn!(
                signal = name,
                "second signal: exiting without waiting for the drain"
            );
            std::process::exit(130);
        }))
    }
}

/// Runs `fut` (e.g. the controller's remaining work after shutdown was triggered) for at most
/// `timeout`, so a stuck reconcile cannot hold the pod past its termination grace period.
pub async fn drain<F: Future>(timeout: Duration, fut: F) -> Result<F::Output, ShutdownError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ShutdownError::DrainTimeout(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let s = Shutdown::new();
        let waiters: Vec<_> = (0..3).map(|_| tokio::spawn(s.clone().wait())).collect();
        assert!(!s.is_triggered());
        s.clone().trigger();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(1), w)
                .await
                .unwrap()
                .unwrap();
        }
        assert!(s.is_triggered());
        // A waiter that arrives after the trigger resolves at once.
        tokio::time::timeout(Duration::from_secs(1), s.wait())
            .await
            .unwrap();
        s.trigger(); // idempotent
    }

    #[tokio::test(start_paused = true)]
    async fn drain_bounds_the_wait() {
        assert_eq!(drain(Duration::from_secs(1), async { 7 }).await.unwrap(), 7);
        let err = drain(Duration::from_secs(5), std::future::pending::<()>())
            .await
            .unwrap_err();
        assert!(matches!(err, ShutdownError::DrainTimeout(d) if d == Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn sigterm_triggers_shutdown() {
        let s = Shutdown::new();
        let _task = s.listen_for_signals().unwrap();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
        tokio::time::timeout(Duration::from_secs(5), s.wait())
            .await
            .expect("SIGTERM should trigger shutdown");
    }
}
