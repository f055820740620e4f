//! HTTP endpoints of the process: `/metrics` on the metrics address, `/healthz` and `/readyz`
//! on the probe address (one listener serves all three when both addresses are equal).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::flags::BindAddress;
use super::metrics::{CONTENT_TYPE, Metrics};
use super::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding the {endpoint} endpoint to {addr} failed: {source}")]
    Bind {
        endpoint: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the {endpoint} server failed: {source}")]
    Serve {
        endpoint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the {endpoint} server task panicked or was cancelled")]
    Join { endpoint: &'static str },
}

/// Readiness of the process for `/readyz`: false until [`Readiness::set_ready`] (caches synced,
/// or standing by for the Lease). It also carries liveness for `/healthz`: once
/// [`Readiness::set_failed`] (the controller died), both probes fail for good. Cheap to clone;
/// clones share the flags.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_failed()
    }
    /// The process can no longer do its job (its controller ended): `/healthz` fails from now
    /// on, so a kubelet restarts it even if it did not manage to exit by itself.
    pub fn set_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    readiness: Readiness,
}

/// The running servers. Addresses are the bound ones (port 0 resolved), `None` when disabled.
#[derive(Debug)]
pub struct Servers {
    pub metrics_addr: Option<SocketAddr>,
    pub probe_addr: Option<SocketAddr>,
    tasks: Vec<(&'static str, JoinHandle<std::io::Result<()>>)>,
}

impl Servers {
    /// Waits until every server has stopped (after the shutdown token fired, or on error).
    pub async fn wait(self) -> Result<(), ServerError> {
        let mut first_err = None;
        for (endpoint, task) in self.tasks {
            let res = match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(source)) => Err(ServerError::Serve { endpoint, source }),
                Err(_) => Err(ServerError::Join { endpoint }),
            };
            if let Err(e) = res {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn metrics_routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics_handler))
}

fn probe_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Binds both addresses (so a busy port fails startup, not later), then serves until
/// `shutdown` fires. Must be called inside a Tokio runtime.
pub async fn serve(
    metrics_bind: BindAddress,
    probe_bind: BindAddress,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: Shutdown,
) -> Result<Servers, ServerError> {
    let state = AppState { metrics, readiness };
    let mut plan: Vec<(&'static str, SocketAddr, Router<AppState>)> = Vec::new();
    match (metrics_bind.socket_addr(), probe_bind.socket_addr()) {
        // Same explicit address: one listener, since binding it twice would fail.
        (Some(m), Some(p)) if m == p && m.port() != 0 => {
            plan.push(("metrics+probes", m, metrics_routes().merge(probe_routes())));
        }
        (m, p) => {
            if let Some(m) = m {
                plan.push(("metrics", m, metrics_routes()));
            }
            if let Some(p) = p {
                plan.push(("probes", p, probe_routes()));
            }
        }
    }

    let mut bound = Vec::new();
    for (endpoint, addr, router) in plan {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                endpoint,
                addr,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ServerError::Bind {
            endpoint,
            addr,
            source,
        })?;
        bound.push((endpoint, local, listener, router.with_state(state.clone())));
    }

    let mut servers = Servers {
        metrics_addr: None,
        probe_addr: None,
        tasks: Vec::new(),
    };
    for (endpoint, local, listener, app) in bound {
        if endpoint.starts_with("metrics") {
            servers.metrics_addr = Some(local);
        }
        if endpoint.ends_with("probes") {
            servers.probe_addr = Some(local);
        }
        tracing::info!(endpoint, addr = %local, "serving");
        let stop = shutdown.wait();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        });
        servers.tasks.push((endpoint, task));
    }
    Ok(servers)
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

/// Liveness: the process answers HTTP and its controller has not ended.
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    if state.readiness.is_failed() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: the controller stopped\n",
        )
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.readiness.is_failed() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the controller stopped\n",
        )
    } else if state.readiness.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: caches not synced\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_flag_is_shared_by_clones() {
        let r = Readiness::new();
        let c = r.clone();
        assert!(!r.is_ready());
        c.set_ready();
        assert!(r.is_ready());
        r.set_not_ready();
        assert!(!c.is_ready());
        c.set_ready();
        assert!(!r.is_failed());
        r.set_failed();
        assert!(c.is_failed() && !c.is_ready(), "failed is never ready");
    }

    #[tokio::test]
    async fn healthz_fails_once_the_controller_failed() {
        let readiness = Readiness::new();
        readiness.set_ready();
        let shutdown = Shutdown::new();
        let servers = serve(
            BindAddress::Disabled,
            BindAddress::Addr("127.0.0.1:0".parse().unwrap()),
            Metrics::new(),
            readiness.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let addr = servers.probe_addr.unwrap();
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        readiness.set_failed();
        assert!(get("/healthz").await.starts_with("HTTP/1.1 503"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        shutdown.trigger();
        servers.wait().await.unwrap();
    }
}
