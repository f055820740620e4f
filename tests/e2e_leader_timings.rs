//! End to end, the leader-election timing flags: the Lease carries the configured duration, and
//! after the leader dies (SIGKILL, no release) the standby takes over after that duration, not
//! the default 15s. Real control plane, two operator processes.
use testkit::require_cluster;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use testkit::e2e::Env;

const LEASE: &str = "linktoken-e2e-timings";

fn leads(logs: &str) -> bool {
    logs.lines().any(|l| l.contains(" leading"))
}

#[tokio::test]
async fn a_shorter_lease_duration_shortens_the_takeover() {
    let c = require_cluster!();
    let env = Env::new(c, "e2e-leader-timings").await;
    let lease_ns = format!("--leader-election-namespace={}", env.ns);
    let lease_id = format!("--leader-election-id={LEASE}");
    let flags = [
        "--leader-elect",
        lease_ns.as_str(),
        lease_id.as_str(),
        "--leader-election-lease-duration=4s",
        "--leader-election-renew-deadline=3s",
        "--leader-election-retry-period=500ms",
    ];
    let mut ops = [env.spawn_operator(&flags), env.spawn_operator(&flags)];
    let leader = testkit::eventually(Duration::from_secs(30), "a leader", || async {
        ops.iter().position(|o| leads(&o.logs()))
    })
    .await;
    let standby = 1 - leader;

    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    let lease = leases.get(LEASE).await.expect("the Lease");
    let spec = lease.spec.expect("Lease spec");
    assert_eq!(spec.lease_duration_seconds, Some(4));
    let first_holder = spec.holder_identity.expect("a holder");

    ops[leader].kill();
    let killed = Instant::now();
    testkit::eventually(Duration::from_secs(30), "the standby leads", || async {
        leads(&ops[standby].logs()).then_some(())
    })
    .await;
    let took = killed.elapsed();
    eprintln!("takeover {took:?} after the leader died (lease 4s)");
    // A standby waits one full lease duration on its own clock after it last saw a change: at
    // least 4s, and well under the 15s the default would take.
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(12),
        "takeover after {took:?}"
    );
    let holder = leases
        .get(LEASE)
        .await
        .expect("the Lease")
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a holder");
    assert_ne!(holder, first_holder, "the standby holds the Lease");
}
