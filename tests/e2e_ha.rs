//! End to end, two replicas with leader election (spec section 6): only the Lease holder
//! reconciles; when it dies (SIGKILL, no release) the standby takes over once the Lease
//! expires, and a new LinkToken turns Ready. Real control plane, two operator processes,
//! atlas-sim.
use testkit::require_cluster;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use testkit::e2e::{Env, ORG, PRIVATE_KEY, linktoken_yaml};

const ORG_B: &str = "5f1e9b2a3c4d5e6f7a8b9c0e";
const LEASE: &str = "linktoken-e2e-leader";

fn leads(logs: &str) -> bool {
    logs.lines().any(|l| l.contains(" leading"))
}

fn reconciled(logs: &str) -> usize {
    logs.lines().filter(|l| l.contains("reconciled")).count()
}

#[tokio::test]
async fn only_the_leader_reconciles_and_the_standby_takes_over_when_it_dies() {
    let c = require_cluster!();
    let env = Env::new(c, "e2e-ha").await;
    env.api_key_secret("creds").await;
    let lease_ns = format!("--leader-election-namespace={}", env.ns);
    let lease_id = format!("--leader-election-id={LEASE}");
    let flags = ["--leader-elect", lease_ns.as_str(), lease_id.as_str()];
    let mut ops = [env.spawn_operator(&flags), env.spawn_operator(&flags)];

    let leader = testkit::eventually(Duration::from_secs(30), "a leader", || async {
        ops.iter().position(|o| leads(&o.logs()))
    })
    .await;
    let standby = 1 - leader;

    env.apply_yaml(&linktoken_yaml("first", ORG, &[], "creds", ""))
        .await;
    env.wait_ready("first").await;
    let first = env.token_in("first", "linkToken").await.expect("token");
    assert!(reconciled(&ops[leader].logs()) >= 1);
    let standby_logs = ops[standby].logs();
    assert!(!leads(&standby_logs), "two leaders at once");
    assert_eq!(
        reconciled(&standby_logs),
        0,
        "the standby reconciled while the leader held the Lease"
    );

    // The leader dies without releasing the Lease.
    ops[leader].kill();
    let killed = Instant::now();
    env.apply_yaml(&linktoken_yaml("second", ORG_B, &[], "creds", ""))
        .await;
    testkit::eventually(Duration::from_secs(30), "the standby leads", || async {
        leads(&ops[standby].logs()).then_some(())
    })
    .await;
    env.wait_ready("second").await;
    eprintln!(
        "takeover and Ready {:?} after the leader died",
        killed.elapsed()
    );
    let second = env.token_in("second", "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&second));
    assert!(
        env.sim.state.is_token_live(&first),
        "the first token is untouched"
    );
    assert_eq!(env.sim.state.live_links(ORG), 1);
    assert_eq!(env.sim.state.live_links(ORG_B), 1);

    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    let lease = leases
        .get(LEASE)
        .await
        .expect("the Lease is in the test namespace");
    let holder = lease.spec.and_then(|s| s.holder_identity).expect("holder");
    assert!(
        ops[standby].logs().contains(&holder),
        "the Lease names the new leader ({holder})"
    );

    env.assert_at_most_one_link_per_org();
    for o in &ops {
        let logs = o.logs();
        for s in [first.as_str(), second.as_str(), PRIVATE_KEY] {
            assert!(!logs.contains(s), "an operator log contains a secret value");
        }
    }
    env.assert_no_secret_leaked(&[&first, &second, PRIVATE_KEY])
        .await;
    ops.iter_mut().for_each(|o| o.kill());
}
