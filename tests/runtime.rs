//! The process runtime over real sockets: probes, metrics, shutdown; and Lease leader election
//! against a real API server (through the testkit crate).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use linktoken_operator::api::Reason;
use linktoken_operator::runtime::flags::parse_bind_address;
use linktoken_operator::runtime::{
    BindAddress, LeaderConfig, LeaderElector, Metrics, Readiness, Shutdown, serve,
};

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
    metrics.observe_reconcile(
        linktoken_operator::runtime::metrics::ReconcileResult::Ready,
        Duration::from_millis(12),
    );
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

// ---- Leader election against a real API server (testkit) ----

/// Short timings so the test takes seconds: lease 3s, renew deadline 2s, renew 1s, retry 0.4s.
const TEST_LEASE: Duration = Duration::from_secs(3);

fn elector(client: kube::Client, ns: &str, lease: &str, id: &str) -> LeaderElector {
    let cfg = LeaderConfig::new(ns, lease, id).with_lease_duration(TEST_LEASE);
    LeaderElector::start(client, cfg).unwrap()
}

async fn holder(api: &Api<Lease>, name: &str) -> (Option<String>, i32) {
    let spec = api.get(name).await.unwrap().spec.unwrap_or_default();
    (spec.holder_identity, spec.lease_transitions.unwrap_or(0))
}

/// Waits until exactly one of the two leads, then checks it keeps leading (renewals work and
/// the standby never steals a live Lease) for two lease durations. Returns (leader, standby).
async fn one_leader(a: LeaderElector, b: LeaderElector) -> (LeaderElector, LeaderElector) {
    testkit::eventually(
        Duration::from_secs(15),
        "one of two electors leads",
        || async { (a.is_leader() || b.is_leader()).then_some(()) },
    )
    .await;
    let a_leads = a.is_leader();
    let deadline = Instant::now() + TEST_LEASE * 2;
    while Instant::now() < deadline {
        assert_eq!(a.is_leader(), a_leads, "leadership flapped");
        assert_ne!(
            a.is_leader(),
            b.is_leader(),
            "exactly one leader at any time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if a_leads { (a, b) } else { (b, a) }
}

#[tokio::test]
async fn two_electors_one_leader_and_release_hands_over_at_once() {
    let Some(cluster) = testkit::cluster().await else {
        return;
    };
    let client = cluster.client().await;
    let ns = cluster.namespace("leader").await;
    let api: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let a = elector(client.clone(), &ns, "lt-leader", "replica-a");
    let b = elector(client.clone(), &ns, "lt-leader", "replica-b");

    let (leader, standby) = one_leader(a, b).await;
    let (h, transitions) = holder(&api, "lt-leader").await;
    assert_eq!(h.as_deref(), Some(leader.identity()));

    let lost = leader.lost();
    let released_at = Instant::now();
    leader.release().await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), lost)
        .await
        .expect("the released leader reports it no longer leads");
    tokio::time::timeout(TEST_LEASE, standby.wait_until_leader())
        .await
        .expect("the standby leads within the lease duration after a release")
        .unwrap();
    let took = released_at.elapsed();
    assert!(took < TEST_LEASE, "takeover took {took:?}");
    let (h, t2) = holder(&api, "lt-leader").await;
    assert_eq!(h.as_deref(), Some(standby.identity()));
    assert_eq!(t2, transitions + 1, "leaseTransitions counts the handover");

    standby.release().await.unwrap();
    assert_eq!(
        holder(&api, "lt-leader").await.0,
        None,
        "released Lease has no holder"
    );
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_only_after_its_lease_expires() {
    let Some(cluster) = testkit::cluster().await else {
        return;
    };
    let client = cluster.client().await;
    let ns = cluster.namespace("leader-crash").await;
    let api: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let a = elector(client.clone(), &ns, "lt-leader", "replica-a");
    let b = elector(client.clone(), &ns, "lt-leader", "replica-b");
    let (leader, standby) = one_leader(a, b).await;
    let leader_id = leader.identity().to_string();

    // Dropping without release = the process died: renewals stop, the Lease stays held.
    drop(leader);
    let crashed_at = Instant::now();
    tokio::time::timeout(TEST_LEASE * 4, standby.wait_until_leader())
        .await
        .expect("the standby takes over an expired Lease")
        .unwrap();
    let took = crashed_at.elapsed();
    // The last renewal was at most one renew interval (1s) before the crash, and the standby
    // waits a full lease duration after last seeing it change.
    assert!(
        took >= TEST_LEASE - Duration::from_millis(1500),
        "took over a live Lease after only {took:?}"
    );
    let (h, _) = holder(&api, "lt-leader").await;
    assert_eq!(h.as_deref(), Some(standby.identity()));
    assert_ne!(h.as_deref(), Some(leader_id.as_str()));
    standby.release().await.unwrap();
}
