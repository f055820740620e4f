//! End to end, no request of a leader lands after its Lease moved (spec section 10): a new
//! leader leaves another process's in-flight issue alone until that process's requests timed
//! out, and a leader draining after SIGTERM stops at once when it loses the Lease. Real control
//! plane, operator processes, atlas-sim with a late-acting DELETE.
use testkit::require_cluster;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use atlas_sim::{CallKind, FaultKind, FaultSpec, FaultTarget};
use linktoken_operator::api::Reason;
use testkit::e2e::{Env, ORG, Operator};

const LEASE: &str = "linktoken-e2e-fencing";

/// Short timings, so a takeover takes about a second instead of 15.
fn flags(ns: &str) -> Vec<String> {
    vec![
        "--leader-elect".into(),
        format!("--leader-election-namespace={ns}"),
        format!("--leader-election-id={LEASE}"),
        "--leader-election-lease-duration=3s".into(),
        "--leader-election-renew-deadline=2s".into(),
        "--leader-election-retry-period=500ms".into(),
    ]
}

fn leads(op: &Operator) -> bool {
    op.logs().lines().any(|l| l.contains(" leading"))
}

#[tokio::test]
async fn a_late_delete_of_the_old_leader_never_revokes_the_new_leader_s_token() {
    let c = require_cluster!();
    let env = Env::new(c, "e2e-late-delete").await;
    env.api_key_secret("creds").await;
    let mut args = flags(&env.ns);
    // The drain gives up on the DELETE at once; the standby takes over right after.
    args.push("--shutdown-timeout=1s".into());
    args.push("--atlas-request-timeout=12s".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut ops = [env.spawn_operator(&args), env.spawn_operator(&args)];
    let leader = testkit::eventually(Duration::from_secs(30), "a leader", || async {
        ops.iter().position(leads)
    })
    .await;
    let standby = 1 - leader;
    env.linktoken("mig", ORG, &[]).await;
    env.wait_ready("mig").await;

    // The rotation's DELETE reaches Atlas, which acts on it 9 s later, whatever the caller
    // does meanwhile.
    env.sim
        .state
        .add_fault(FaultSpec {
            kind: FaultKind::Detached,
            status: None,
            body: None,
            headers: BTreeMap::new(),
            latency_ms: 9_000,
            count: Some(1),
            method: Some("DELETE".into()),
            org_id: Some(ORG.into()),
            target: FaultTarget::LinkTokens,
        })
        .expect("fault");
    env.rotate("mig", "r1").await;
    testkit::eventually(Duration::from_secs(20), "the DELETE in flight", || async {
        env.sim.state.faults().is_empty().then_some(())
    })
    .await;
    let delete_sent = Instant::now();

    // The leader stops while its DELETE is in flight; the standby takes over.
    ops[leader].sigterm();
    ops[leader]
        .wait_exit(Duration::from_secs(10))
        .expect("the old leader exits");
    testkit::eventually(Duration::from_secs(20), "the standby leads", || async {
        leads(&ops[standby]).then_some(())
    })
    .await;

    // Past the moment the old DELETE lands, and Ready again.
    env.wait_reason("mig", Reason::TokenIssued, Duration::from_secs(40))
        .await;
    let landed = Duration::from_secs(11);
    if let Some(left) = landed.checked_sub(delete_sent.elapsed()) {
        tokio::time::sleep(left).await;
    }
    eprintln!(
        "Ready and checked {:?} after the DELETE was sent",
        delete_sent.elapsed()
    );
    let lt = env.get("mig").await.expect("LinkToken");
    assert!(testkit::operator::is_ready(&lt), "Ready");
    let token = env.token_in("mig", "linkToken").await.expect("token");
    assert!(
        env.sim.state.is_token_live(&token),
        "the LinkToken is Ready with a token the old leader's late DELETE revoked"
    );
    assert_eq!(env.sim.state.live_links(ORG), 1);
    assert!(
        ops[standby]
            .logs()
            .contains("waiting for its requests to time out"),
        "the new leader waited for the old one's requests"
    );
    ops.iter_mut().for_each(|o| o.kill());
}

#[tokio::test]
async fn a_leader_that_loses_the_lease_while_draining_sends_nothing_more() {
    let c = require_cluster!();
    let env = Env::new(c, "e2e-drain-loss").await;
    env.api_key_secret("creds").await;
    let mut args = flags(&env.ns);
    // The drain would let the paused reconcile finish: it POSTs 15 s after pausing.
    args.push("--shutdown-timeout=30s".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut op = env.spawn_operator_with_env(
        &env.cluster.kubeconfig,
        &[(testkit::operator::PAUSE_ENV, "before-post=15s")],
        &args,
    );
    testkit::eventually(Duration::from_secs(30), "the operator leads", || async {
        leads(&op).then_some(())
    })
    .await;
    env.linktoken("migration", ORG, &[]).await;
    op.wait_for_log("pausing", Duration::from_secs(30))
        .await
        .expect("the reconcile paused before its POST");
    let paused = Instant::now();

    op.sigterm();
    op.wait_for_log("shutdown requested", Duration::from_secs(5))
        .await
        .expect("the drain started");
    // Another replica takes the Lease while this one drains.
    env.take_lease(LEASE, "another-replica").await;

    let status = op
        .wait_exit(Duration::from_secs(8))
        .expect("the draining leader exits once it notices the loss, before its POST");
    eprintln!("exited {:?} after the pause began", paused.elapsed());
    assert!(!status.success(), "exit status {status:?}");
    // Past the end of the pause: the POST never went out.
    if let Some(left) = Duration::from_secs(18).checked_sub(paused.elapsed()) {
        tokio::time::sleep(left).await;
    }
    assert_eq!(
        env.sim.state.calls("POST", CallKind::LinkTokens, 201),
        0,
        "a leader that lost the Lease while draining issued a token"
    );
    assert_eq!(env.sim.state.live_links(ORG), 0);
}
