//! `linktoken-operator`: the process around the controller.
//!
//! Order of start-up: flags -> logging -> Kubernetes client -> probe/metrics servers (live at
//! once, ready after the caches sync) -> leader election (a standby waits here and reconciles
//! nothing) -> controllers. On SIGTERM: stop taking work, let in-flight reconciles finish
//! within --shutdown-timeout, release the Lease, exit 0. On leadership loss (also during that
//! drain): abort in-flight reconciles at once and exit non-zero; no Atlas or source request
//! leaves once the Lease is no longer certainly held (the clients' gate). If the controller
//! task ends by itself (a panic included): fail /healthz, release the Lease, exit non-zero
//! (see `runtime::supervise`).

use std::process::ExitCode;
use std::sync::Arc;

use futures::FutureExt;
use kube::runtime::events::Reporter;
use linktoken_operator::atlas::{
    AtlasClient, AtlasConfig, RequestGate, RequestObserver, RequestRecord,
};
use linktoken_operator::controller::events::Recorder;
use linktoken_operator::controller::{self, Context, RunConfig, Scopes, backoff::BackoffConfig};
use linktoken_operator::runtime::{
    Ended, Flags, LeaderElector, Metrics, Readiness, Shutdown, logging, serve, supervise,
};
use linktoken_operator::source::{SourceClient, SourceConfig};

/// Feeds every Atlas round trip into the Prometheus metrics.
struct AtlasMetrics(Metrics);

impl RequestObserver for AtlasMetrics {
    fn observe(&self, r: &RequestRecord<'_>) {
        self.0
            .observe_atlas_request(r.method, r.status, r.error_code, r.duration);
    }
}

/// The source client's round trips (spec.source), counted apart from Atlas's.
struct SourceMetrics(Metrics);

impl RequestObserver for SourceMetrics {
    fn observe(&self, r: &RequestRecord<'_>) {
        self.0
            .observe_source_request(r.method, r.status, r.error_code);
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags = Flags::parse_and_validate();
    if let Err(e) = logging::init(flags.log_format) {
        eprintln!("linktoken-operator: {e}");
        return ExitCode::from(2);
    }
    match run(flags).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "linktoken-operator stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags) -> Result<(), String> {
    let version = env!("CARGO_PKG_VERSION");
    let mut kube_config = kube::Config::infer()
        .await
        .map_err(|e| format!("Kubernetes client: {e}"))?;
    // Named in the API server's audit log and metrics, so a cluster admin can see exactly
    // which requests are the operator's.
    let user_agent = format!("linktoken-operator/{version}");
    kube_config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_str(&user_agent).map_err(|e| format!("user agent: {e}"))?,
    ));
    let client =
        kube::Client::try_from(kube_config).map_err(|e| format!("Kubernetes client: {e}"))?;
    let server = client
        .apiserver_version()
        .await
        .map_err(|e| format!("Kubernetes API server unreachable: {e}"))?;
    tracing::info!(version, kubernetes = %server.git_version, atlas_url = %flags.atlas_url,
        allowed_source_urls = %flags.allowed_source_urls,
        namespaces = ?flags.watch_namespaces.names(), "linktoken-operator starting");

    let shutdown = Shutdown::new();
    shutdown.listen_for_signals().map_err(|e| e.to_string())?;
    let metrics = Metrics::new();
    let readiness = Readiness::new();
    let servers = serve(
        flags.metrics_bind_address,
        flags.health_probe_bind_address,
        metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    tracing::info!(metrics = ?servers.metrics_addr, probes = ?servers.probe_addr, "serving metrics and probes");

    let atlas = AtlasClient::new(AtlasConfig {
        connect_timeout: flags.atlas_connect_timeout,
        request_timeout: flags.atlas_request_timeout,
        max_retry_after: flags.retry_max_delay,
        ca_file: flags.atlas_ca_file.clone(),
        ..AtlasConfig::with_base_url(flags.atlas_url.clone())
    })
    .map_err(|e| e.to_string())?
    .with_observer(Arc::new(AtlasMetrics(metrics.clone())));

    let elector = if flags.leader_elect {
        let cfg = flags.leader_config(linktoken_operator::runtime::leader::default_identity());
        let elector = LeaderElector::start(client.clone(), cfg).map_err(|e| e.to_string())?;
        elector.mirror_to(metrics.clone());
        // A standby is healthy and ready: a rolling update must be able to start the new pod
        // while the old one still holds the Lease.
        readiness.set_ready();
        tracing::info!(identity = elector.identity(), "waiting for leadership");
        tokio::select! {
            r = elector.wait_until_leader() => r.map_err(|e| e.to_string())?,
            _ = shutdown.wait() => {
                let _ = elector.release().await;
                return servers.wait().await.map_err(|e| e.to_string());
            }
        }
        tracing::info!(identity = elector.identity(), "leading");
        Some(elector)
    } else {
        None
    };

    // Past the Lease, no Atlas or source request leaves the process (docs/operations.md).
    let gate = elector
        .as_ref()
        .map(|e| Arc::new(e.leadership()) as Arc<dyn RequestGate>);
    let atlas = match gate.clone() {
        Some(g) => atlas.with_gate(g),
        None => atlas,
    };

    let namespaces = flags.watch_namespaces.names().to_vec();
    let scopes = Scopes::new(&namespaces);
    let reporter = Reporter {
        controller: "linktoken-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let mut ctx = Context::new(
        client.clone(),
        atlas,
        metrics.clone(),
        Recorder::new(client.clone(), reporter),
        &scopes,
        BackoffConfig {
            base: flags.retry_base_delay,
            max: flags.retry_max_delay,
            resync: flags.resync_interval,
        },
        flags.credentials_grace,
    );
    // The source side (spec.source) is bounded like Atlas.
    ctx.source = SourceClient::new(
        SourceConfig {
            connect_timeout: flags.atlas_connect_timeout,
            request_timeout: flags.atlas_request_timeout,
            max_retry_after: flags.retry_max_delay,
            allowed: flags.allowed_source_urls.clone(),
            ..SourceConfig::default()
        },
        Some(Arc::new(SourceMetrics(metrics.clone()))),
    );
    // Three calls at the request timeout (a DELETE, a POST, a source call) plus their
    // connections: a reconcile that takes longer waits on a host that does not answer.
    ctx.reconcile_timeout = (flags.atlas_request_timeout + flags.atlas_connect_timeout) * 3;
    if let Some(g) = gate {
        ctx.source = ctx.source.clone().with_gate(g);
    }
    // Another process's in-flight marker: its requests may still land until they time out.
    ctx.takeover_wait = controller::takeover::wait_for(flags.atlas_request_timeout);
    let ctx = Arc::new(ctx);

    // The controller's own stop token: triggered by shutdown and by leadership loss.
    let stop = Shutdown::new();
    let lost = match elector.as_ref() {
        Some(e) => e.lost().boxed(),
        None => std::future::pending().boxed(),
    };
    {
        let ctx = ctx.clone();
        let readiness = readiness.clone();
        readiness.set_not_ready();
        tokio::spawn(async move {
            ctx.wait_until_synced().await;
            readiness.set_ready();
            tracing::info!("caches synced; ready");
        });
    }
    let cfg = RunConfig {
        concurrency: flags.concurrency,
    };
    let controllers = tokio::spawn(controller::run(ctx.clone(), scopes, cfg, stop.clone()));
    let ended = supervise(
        controllers,
        shutdown.clone(),
        stop,
        lost,
        flags.shutdown_timeout,
    )
    .await;
    readiness.set_not_ready();
    match &ended {
        Ended::Shutdown { drained: true } => tracing::info!("in-flight reconciles finished"),
        Ended::Shutdown { drained: false } => {
            tracing::warn!(timeout = ?flags.shutdown_timeout, "shutdown timeout: exiting with reconciles in flight")
        }
        Ended::LeadershipLost => {
            tracing::error!("leadership lost: in-flight reconciles aborted; exiting")
        }
        Ended::ControllerDied(why) => {
            // Until the process is gone, /healthz says so (if the exit below hangs, the
            // kubelet restarts it).
            readiness.set_failed();
            tracing::error!(reason = %why, "the controller stopped unexpectedly; releasing the Lease and exiting");
        }
    }
    // Events the stopped reconciles already decided on (published off their path), bounded:
    // the Lease release and the exit must fit in terminationGracePeriodSeconds.
    let flush_within = match ended {
        Ended::Shutdown { .. } => std::time::Duration::from_secs(2),
        _ => std::time::Duration::from_secs(1),
    };
    let unpublished = ctx.recorder.flush(flush_within).await;
    if unpublished > 0 {
        tracing::warn!(unpublished, "exiting with events not yet published");
    }
    if let Some(elector) = elector {
        // After a loss the API server may be what failed: do not wait long for it.
        let bound = if ended == Ended::LeadershipLost {
            std::time::Duration::from_secs(3)
        } else {
            std::time::Duration::from_secs(15)
        };
        match tokio::time::timeout(bound, elector.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the Lease"),
            Err(_) => tracing::warn!("releasing the Lease timed out"),
        }
    }
    shutdown.trigger();
    let _ = servers.wait().await;
    match ended {
        Ended::LeadershipLost => return Err("leadership lost".into()),
        Ended::ControllerDied(why) => return Err(why),
        Ended::Shutdown { .. } => {}
    }
    tracing::info!("stopped");
    Ok(())
}
