//! Wiring: the Atlas router (with the per-call log/counter/fault layer), the admin router,
//! and the in-process server handle.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::config::{ConfigError, SimConfig};
use super::conn::{ConnMeta, KillableListener};
use super::faults::{CallInfo, CallKind, FaultKind, FaultSpec};
use super::reply::{Dropped, ErrorCode, FaultApplied, Format, Reply};
use super::state::{CallRecord, SimState};
use super::tls::{SimTls, TlsListener};
use super::{admin, handlers, oauth};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct SimServer;

/// The Atlas port's server, plain or TLS.
type AtlasServe = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// A running simulator. Dropping it stops the servers too (without waiting).
pub struct SimHandle {
    /// e.g. `http://127.0.0.1:8090` (no trailing slash): the operator's `--atlas-url`.
    pub atlas_url: String,
    pub admin_url: String,
    pub atlas_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: SimState,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimHandle {
    /// Stops both servers: open connections get up to 5 s to finish, then are cut.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn wait_for_shutdown(mut rx: watch::Receiver<bool>) {
    // Resolves on `true` or when the sender is gone.
    let _ = rx.wait_for(|stop| *stop).await;
}

impl SimServer {
    /// Binds both ports (port 0 picks a free one) and serves until the handle is shut down.
    pub async fn start(
        config: SimConfig,
        atlas_addr: SocketAddr,
        admin_addr: SocketAddr,
    ) -> Result<SimHandle, SimError> {
        Self::start_with(config, atlas_addr, admin_addr, None).await
    }

    /// Like [`SimServer::start`], but the Atlas port speaks TLS with `tls`'s certificate
    /// (the admin port stays plain HTTP: it is the test's, not the client's). `atlas_url` is
    /// then `https://localhost:<port>`.
    pub async fn start_tls(
        config: SimConfig,
        atlas_addr: SocketAddr,
        admin_addr: SocketAddr,
        tls: &SimTls,
    ) -> Result<SimHandle, SimError> {
        Self::start_with(config, atlas_addr, admin_addr, Some(tls)).await
    }

    async fn start_with(
        config: SimConfig,
        atlas_addr: SocketAddr,
        admin_addr: SocketAddr,
        tls: Option<&SimTls>,
    ) -> Result<SimHandle, SimError> {
        let state = SimState::new(&config)?;
        let bind = |addr: SocketAddr| async move {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| SimError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| SimError::Bind { addr, source })?;
            Ok::<_, SimError>((listener, local))
        };
        let (atlas_listener, atlas_local) = bind(atlas_addr).await?;
        let (admin_listener, admin_local) = bind(admin_addr).await?;
        let (tx, rx) = watch::channel(false);

        let killable = KillableListener::new(atlas_listener);
        let router = atlas_router(state.clone());
        let atlas_url = match tls {
            None => format!("http://{atlas_local}"),
            Some(_) => format!("https://localhost:{}", atlas_local.port()),
        };
        let atlas: AtlasServe = match tls {
            None => Box::pin(
                axum::serve(
                    killable,
                    router.into_make_service_with_connect_info::<ConnMeta>(),
                )
                .with_graceful_shutdown(wait_for_shutdown(rx.clone()))
                .into_future(),
            ),
            Some(tls) => Box::pin(
                axum::serve(
                    TlsListener::new(killable, tls).map_err(|source| SimError::Bind {
                        addr: atlas_addr,
                        source,
                    })?,
                    router.into_make_service_with_connect_info::<ConnMeta>(),
                )
                .with_graceful_shutdown(wait_for_shutdown(rx.clone()))
                .into_future(),
            ),
        };
        let admin = axum::serve(admin_listener, admin::router(state.clone()))
            .with_graceful_shutdown(wait_for_shutdown(rx));
        let tasks = vec![
            tokio::spawn(async move {
                if let Err(e) = atlas.await {
                    tracing::error!(error = %e, "atlas server stopped");
                }
            }),
            tokio::spawn(async move {
                if let Err(e) = admin.await {
                    tracing::error!(error = %e, "admin server stopped");
                }
            }),
        ];
        Ok(SimHandle {
            atlas_url,
            admin_url: format!("http://{admin_local}"),
            atlas_addr: atlas_local,
            admin_addr: admin_local,
            state,
            shutdown: tx,
            tasks,
        })
    }
}

pub fn atlas_router(state: SimState) -> Router {
    Router::new()
        .route(
            "/api/atlas/v2/orgs/{org_id}/liveMigrations/linkTokens",
            any(handlers::link_tokens),
        )
        .route("/api/oauth/token", post(oauth::token))
        .route("/api/oauth/revoke", post(oauth::revoke))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), per_call))
        .with_state(state)
}

async fn not_found(uri: Uri) -> Response {
    Reply::error(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        format!("Cannot find resource {}.", uri.path()),
    )
    .render(Format::default())
}

/// Runs around every Atlas-port call: applies a matching fault, counts the call and logs one
/// line (method, path, status, errorCode, duration). Never logs headers, bodies or queries.
async fn per_call(State(state): State<SimState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let (kind, org_id) = CallKind::classify(&path);
    let fault = if req.headers().contains_key(AUTHORIZATION) {
        state.lock().faults.take(&CallInfo {
            method: &method,
            kind,
            org_id,
        })
    } else {
        None
    };
    let faulted = fault.is_some();
    let response = match fault {
        Some(f) => apply_fault(f, req, next).await,
        None => next.run(req).await,
    };
    let dropped = response.extensions().get::<Dropped>().is_some();
    let status = if dropped {
        0
    } else {
        response.status().as_u16()
    };
    state.record_call(&method, kind, status);
    let faulted = faulted || response.extensions().get::<FaultApplied>().is_some();
    let elapsed = start.elapsed();
    state.record_history(CallRecord {
        seq: 0,
        at: jiff::Timestamp::now(),
        method: method.clone(),
        kind,
        org_id: org_id.map(str::to_owned),
        status,
        fault: faulted,
        duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
    });
    let error_code = response
        .extensions()
        .get::<ErrorCode>()
        .map_or("-", |c| c.0.as_str());
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let status_text = if dropped {
        "dropped".to_owned()
    } else {
        status.to_string()
    };
    tracing::info!(
        method = %method,
        path = %path,
        status = %status_text,
        error_code = %error_code,
        duration_ms = %format!("{duration_ms:.1}"),
        fault = faulted,
        "atlas call"
    );
    response
}

const GARBAGE_BODY: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n";

async fn apply_fault(fault: FaultSpec, req: Request, next: Next) -> Response {
    if fault.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fault.latency_ms)).await;
    }
    let mut response = match fault.kind {
        FaultKind::Latency => return next.run(req).await,
        FaultKind::Drop => {
            if let Some(ConnectInfo(conn)) = req.extensions().get::<ConnectInfo<ConnMeta>>() {
                conn.kill();
            }
            let mut r = StatusCode::BAD_GATEWAY.into_response();
            r.extensions_mut().insert(Dropped);
            r
        }
        FaultKind::Garbage => {
            let status = fault
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            let body = match &fault.body {
                Some(Value::String(s)) => s.clone(),
                _ => GARBAGE_BODY.to_owned(),
            };
            (status, [(CONTENT_TYPE, "text/html")], body).into_response()
        }
        FaultKind::Status => {
            let status = fault
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            match &fault.body {
                None => Reply::error(status, "UNEXPECTED_ERROR", "Injected fault.")
                    .render(Format::default()),
                Some(Value::String(s)) => {
                    (status, [(CONTENT_TYPE, "text/plain")], s.clone()).into_response()
                }
                Some(v) => {
                    let mut r = (status, [(CONTENT_TYPE, "application/json")], v.to_string())
                        .into_response();
                    if let Some(code) = v.get("errorCode").and_then(Value::as_str) {
                        r.extensions_mut().insert(ErrorCode(code.to_owned()));
                    }
                    r
                }
            }
        }
    };
    for (k, v) in &fault.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            response.headers_mut().insert(k, v);
        }
    }
    response.extensions_mut().insert(FaultApplied);
    response
}
