//! Wiring: the Atlas and source routers (with the per-call log/counter/fault layer), the
//! admin router, and the in-process server handle.

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
use super::faults::{CallInfo, CallKind, FaultKind, FaultSpec, Port};
use super::reply::{Dropped, ErrorCode, FaultApplied, Format, Reply};
use super::source::SourceCall;
use super::state::{CallRecord, SimState};
use super::tls::{SimTls, TlsListener};
use super::{admin, handlers, oauth, source};

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

/// An API port's server (Atlas or source), plain or TLS.
type ApiServe = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// Where the simulator listens. Port 0 picks a free port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimListen {
    pub atlas: SocketAddr,
    pub admin: SocketAddr,
    /// The Cloud Manager / Ops Manager (source) port; None = not served.
    pub source: Option<SocketAddr>,
}

/// A running simulator. Dropping it stops the servers too (without waiting).
pub struct SimHandle {
    /// e.g. `http://127.0.0.1:8090` (no trailing slash): the operator's `--atlas-url`.
    pub atlas_url: String,
    pub admin_url: String,
    pub atlas_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The source port, when served.
    pub source_addr: Option<SocketAddr>,
    pub state: SimState,
    source_url: Option<String>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimHandle {
    /// The Cloud Manager / Ops Manager base URL (no trailing slash; the API is under
    /// `/api/public/v1.0`), e.g. `http://127.0.0.1:8092`; None when the source port is off.
    pub fn source_url(&self) -> Option<String> {
        self.source_url.clone()
    }

    /// Stops the servers: open connections get up to 5 s to finish, then are cut.
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

/// The in-process default: a source port on a free port of the Atlas address's IP when the
/// configuration has source orgs (so a test using `SimConfig::demo()` gets one), none else.
fn default_listen(config: &SimConfig, atlas: SocketAddr, admin: SocketAddr) -> SimListen {
    SimListen {
        atlas,
        admin,
        source: (!config.source_orgs.is_empty()).then(|| SocketAddr::new(atlas.ip(), 0)),
    }
}

impl SimServer {
    /// Binds the ports (port 0 picks a free one) and serves until the handle is shut down.
    /// The source port is served (on a free port) when `config` has source orgs.
    pub async fn start(
        config: SimConfig,
        atlas_addr: SocketAddr,
        admin_addr: SocketAddr,
    ) -> Result<SimHandle, SimError> {
        let listen = default_listen(&config, atlas_addr, admin_addr);
        Self::start_listen(config, listen, None).await
    }

    /// Like [`SimServer::start`], but the Atlas and source ports speak TLS with `tls`'s
    /// certificate (the admin port stays plain HTTP: it is the test's, not the client's).
    /// `atlas_url` (and `source_url()`) are then `https://localhost:<port>`.
    pub async fn start_tls(
        config: SimConfig,
        atlas_addr: SocketAddr,
        admin_addr: SocketAddr,
        tls: &SimTls,
    ) -> Result<SimHandle, SimError> {
        let listen = default_listen(&config, atlas_addr, admin_addr);
        Self::start_listen(config, listen, Some(tls)).await
    }

    /// Binds exactly the ports in `listen`; with `tls`, the Atlas and source ports speak TLS.
    pub async fn start_listen(
        config: SimConfig,
        listen: SimListen,
        tls: Option<&SimTls>,
    ) -> Result<SimHandle, SimError> {
        let SimListen {
            atlas: atlas_addr,
            admin: admin_addr,
            source: source_addr,
        } = listen;
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

        let url = |local: SocketAddr| match tls {
            None => format!("http://{local}"),
            Some(_) => format!("https://localhost:{}", local.port()),
        };
        let atlas_url = url(atlas_local);
        let atlas = serve_api(atlas_listener, atlas_router(state.clone()), tls, rx.clone())
            .map_err(|source| SimError::Bind {
                addr: atlas_addr,
                source,
            })?;
        let mut source_local = None;
        let mut source_serve = None;
        if let Some(addr) = source_addr {
            let (listener, local) = bind(addr).await?;
            source_local = Some(local);
            source_serve = Some(
                serve_api(listener, source_router(state.clone()), tls, rx.clone())
                    .map_err(|source| SimError::Bind { addr, source })?,
            );
        }
        let admin = axum::serve(admin_listener, admin::router(state.clone()))
            .with_graceful_shutdown(wait_for_shutdown(rx));
        let mut tasks = vec![
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
        if let Some(source) = source_serve {
            tasks.push(tokio::spawn(async move {
                if let Err(e) = source.await {
                    tracing::error!(error = %e, "source server stopped");
                }
            }));
        }
        Ok(SimHandle {
            atlas_url,
            admin_url: format!("http://{admin_local}"),
            atlas_addr: atlas_local,
            admin_addr: admin_local,
            source_addr: source_local,
            source_url: source_local.map(url),
            state,
            shutdown: tx,
            tasks,
        })
    }
}

/// Serves one API port (Atlas or source): cuttable connections for drop faults, plain or TLS.
fn serve_api(
    listener: TcpListener,
    router: Router,
    tls: Option<&SimTls>,
    rx: watch::Receiver<bool>,
) -> std::io::Result<ApiServe> {
    let killable = KillableListener::new(listener);
    let service = router.into_make_service_with_connect_info::<ConnMeta>();
    Ok(match tls {
        None => Box::pin(
            axum::serve(killable, service)
                .with_graceful_shutdown(wait_for_shutdown(rx))
                .into_future(),
        ),
        Some(tls) => Box::pin(
            axum::serve(TlsListener::new(killable, tls)?, service)
                .with_graceful_shutdown(wait_for_shutdown(rx))
                .into_future(),
        ),
    })
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
        .layer(middleware::from_fn_with_state(
            CallCtx {
                state: state.clone(),
                port: Port::Atlas,
            },
            per_call,
        ))
        .with_state(state)
}

/// The Cloud Manager / Ops Manager port: the three migrationLink calls, and the service
/// accounts' token endpoints.
pub fn source_router(state: SimState) -> Router {
    Router::new()
        .route(
            "/api/public/v1.0/orgs/{org_id}/liveExport/migrationLink",
            any(source::migration_link),
        )
        .route(
            "/api/public/v1.0/orgs/{org_id}/liveExport/migrationLink/status",
            any(source::migration_link),
        )
        // Cloud Manager service accounts mint bearer tokens at the source's own endpoint.
        .route("/api/oauth/token", post(oauth::source_token))
        .route("/api/oauth/revoke", post(oauth::source_revoke))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            CallCtx {
                state: state.clone(),
                port: Port::Source,
            },
            per_call,
        ))
        .with_state(state)
}

/// What the per-call layer needs: the state and which port it wraps.
#[derive(Clone)]
struct CallCtx {
    state: SimState,
    port: Port,
}

async fn not_found(uri: Uri) -> Response {
    Reply::error(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        format!("Cannot find resource {}.", uri.path()),
    )
    .render(Format::default())
}

/// Runs around every Atlas- and source-port call: applies a matching fault, counts the call
/// (and keeps source calls in the admin history) and logs one line (method, path, status,
/// errorCode, duration). Never logs headers, bodies or queries.
async fn per_call(
    State(CallCtx { state, port }): State<CallCtx>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let (kind, org_id) = match port {
        Port::Atlas => CallKind::classify(&path),
        Port::Source => CallKind::classify_source(&path),
    };
    let user = match port {
        Port::Source => req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(source::presented_user),
        Port::Atlas => None,
    };
    let fault = if req.headers().contains_key(AUTHORIZATION) {
        state.lock().faults.take(&CallInfo {
            port,
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
    match port {
        Port::Source => state.record_source_call(SourceCall {
            method: method.clone(),
            path: path.clone(),
            status,
            user,
        }),
        // The call history (GET /calls) is the Atlas port's: link tokens per Atlas org.
        Port::Atlas => state.record_history(CallRecord {
            seq: 0,
            at: jiff::Timestamp::now(),
            method: method.clone(),
            kind,
            org_id: org_id.map(str::to_owned),
            status,
            fault: faulted,
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        }),
    }
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
        "{}",
        match port {
            Port::Atlas => "atlas call",
            Port::Source => "source call",
        }
    );
    response
}

const GARBAGE_BODY: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n";

async fn apply_fault(fault: FaultSpec, req: Request, next: Next) -> Response {
    if fault.kind == FaultKind::Detached {
        // Its own task: the connection closing drops this future, not the call's handling.
        let latency = Duration::from_millis(fault.latency_ms);
        let call = tokio::spawn(async move {
            tokio::time::sleep(latency).await;
            next.run(req).await
        });
        return call
            .await
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    if fault.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fault.latency_ms)).await;
    }
    let mut response = match fault.kind {
        FaultKind::Latency | FaultKind::Detached => return next.run(req).await,
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
