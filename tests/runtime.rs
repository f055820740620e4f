//! The process runtime over real sockets: probes, metrics, shutdown.

use std::time::Duration;

use linktoken_operator::api::Reason;
use linktoken_operator::runtime::flags::parse_bind_address;
use linktoken_operator::runtime::{BindAddress, Metrics, Readiness, Shutdown, serve};

fn loopback_any_port() -> BindAddress {
    parse_bind_address("127.0.0.1:0").unwrap()
}

async fn get(url: String) -> (u16, String, String) {
    let resp = reqwest::get(&url).await.unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ctype, resp.text().await.unwrap())
}

#[tokio::test]
async fn probes_and_metrics_over_http_then_shutdown_stops_the_servers() {
    let metrics = Metrics::new();
    let readiness = Readiness::new();
    let shutdown = Shutdown::new();
    let servers = serve(
        loopback_any_port(),
        loopback_any_port(),
        metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let m = servers.metrics_addr.expect("metrics enabled");
    let p = servers.probe_addr.expect("probes enabled");
    assert_ne!(m.port(), 0, "port 0 is resolved to the bound port");
    assert_ne!(m, p, "two listeners");

    // Liveness is unconditional; readiness waits for set_ready.
    let (status, _, _) = get(format!("http://{p}/healthz")).await;
    assert_eq!(status, 200);
    let (status, _, body) = get(format!("http://{p}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    readiness.set_ready();
    let (status, _, _) = get(format!("http://{p}/readyz")).await;
    assert_eq!(status, 200);

    // Metrics are served on their own address only, in the encoder's format.
    metrics.observe_reconcile("ready", Duration::from_millis(12));
    metrics.track("ns/a", Some(Reason::TokenIssued));
    let (status, ctype, body) = get(format!("http://{m}/metrics")).await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(
        body.lines()
            .any(|l| l == r#"linktoken_reconciles_total{result="ready"} 1"#),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l == r#"linktoken_linktokens{reason="TokenIssued"} 1"#),
        "{body}"
    );
    let (status, _, _) = get(format!("http://{p}/metrics")).await;
    assert_eq!(status, 404);
    let (status, _, _) = get(format!("http://{m}/healthz")).await;
    assert_eq!(status, 404);

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), servers.wait())
        .await
        .expect("servers stop after shutdown")
        .unwrap();
    assert!(
        reqwest::get(format!("http://{p}/healthz")).await.is_err(),
        "probe port is closed"
    );
    assert!(
        reqwest::get(format!("http://{m}/metrics")).await.is_err(),
        "metrics port is closed"
    );
}

#[tokio::test]
async fn disabled_endpoints_bind_nothing() {
    let shutdown = Shutdown::new();
    let servers = serve(
        BindAddress::Disabled,
        loopback_any_port(),
        Metrics::new(),
        Readiness::new(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert_eq!(servers.metrics_addr, None);
    assert!(servers.probe_addr.is_some());
    shutdown.trigger();
    servers.wait().await.unwrap();
}

#[tokio::test]
async fn one_listener_when_both_addresses_are_equal() {
    // Find a free port, release it, then ask for it on both endpoints.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = parse_bind_address(&format!("127.0.0.1:{port}")).unwrap();
    let shutdown = Shutdown::new();
    let servers = serve(
        addr,
        addr,
        Metrics::new(),
        Readiness::new(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert_eq!(servers.metrics_addr, servers.probe_addr);
    let a = servers.metrics_addr.unwrap();
    assert_eq!(get(format!("http://{a}/metrics")).await.0, 200);
    assert_eq!(get(format!("http://{a}/healthz")).await.0, 200);
    shutdown.trigger();
    servers.wait().await.unwrap();
}

#[tokio::test]
async fn a_busy_port_fails_startup_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = parse_bind_address(&taken.local_addr().unwrap().to_string()).unwrap();
    let err = serve(
        BindAddress::Disabled,
        addr,
        Metrics::new(),
        Readiness::new(),
        Shutdown::new(),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("binding the probes endpoint"), "{msg}");
}
