//! End to end, the adversarial cases of issue 13 that need signals and a real namespace
//! controller: a leader frozen (SIGSTOP) past its Lease while it holds a freshly minted token,
//! then thawed (SIGCONT) after the standby took over and issued; and a namespace deleted under a
//! Ready LinkToken, where the namespace controller deletes the credentials Secret while the
//! LinkToken waits on its finalizer. Each ends with `Env::assert_invariants`: at most one live
//! link per org, every Ready LinkToken's Secret holds a live token, foreign Secrets unchanged.
//! Real control plane (with kube-controller-manager), the operator binary, atlas-sim.
use testkit::require_cluster;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use testkit::e2e::{Env, ORG, Operator, PRIVATE_KEY, linktoken_yaml};

const ORG_B: &str = "5f1e9b2a3c4d5e6f7a8b9c0e";
const LEASE: &str = "linktoken-e2e-adversarial";
/// The operator's Lease duration (it has no flag for it): a standby may take over this long
/// after the last renewal it saw.
const LEASE_DURATION: Duration = Duration::from_secs(15);

fn signal(op: &Operator, sig: Signal) {
    kill(Pid::from_raw(op.pid() as i32), sig).expect("signal the operator");
}

fn leads(op: &Operator) -> bool {
    op.logs().lines().any(|l| l.contains(" leading"))
}

async fn wait_exit(op: &mut Operator, within: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Ok(Some(s)) = op.child.try_wait() {
            return Some(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test]
async fn a_frozen_leader_thawed_after_a_takeover_never_overwrites_the_new_leaders_token() {
    let c = require_cluster!();
    let env = Env::new(c, "e2e-frozen").await;
    env.api_key_secret("creds").await;
    env.put_secret("user-config", &[("config.yaml", "mine: true")])
        .await;
    let foreign = [
        ("creds", env.snapshot_secret("creds").await),
        ("user-config", env.snapshot_secret("user-config").await),
    ];
    let lease_ns = format!("--leader-election-namespace={}", env.ns);
    let lease_id = format!("--leader-election-id={LEASE}");
    let flags = ["--leader-elect", lease_ns.as_str(), lease_id.as_str()];

    // The first replica leads; it will hold the minted token for 20 s before writing it.
    let mut old = env.spawn_operator_with_env(
        &env.cluster.kubeconfig,
        &[(testkit::operator::PAUSE_ENV, "after-post=20s")],
        &flags,
    );
    testkit::eventually(
        Duration::from_secs(30),
        "the first replica leads",
        || async { leads(&old).then_some(()) },
    )
    .await;
    let mut new = env.spawn_operator(&flags);

    env.apply_yaml(&linktoken_yaml("migration", ORG, &[], "creds", ""))
        .await;
    testkit::eventually(
        Duration::from_secs(30),
        "the leader holds a minted token",
        || async { old.logs().contains("pausing").then_some(()) },
    )
    .await;
    // Frozen with a live link that no Secret records yet.
    signal(&old, Signal::SIGSTOP);
    let frozen = Instant::now();
    assert_eq!(env.sim.state.live_links(ORG), 1, "the POST succeeded");

    // The standby takes over once the Lease expires, finds the in-flight marker, revokes the
    // unrecorded link and issues its own.
    testkit::eventually(Duration::from_secs(45), "the standby leads", || async {
        leads(&new).then_some(())
    })
    .await;
    let lt = env
        .wait_reason(
            "migration",
            linktoken_operator::api::Reason::TokenIssued,
            Duration::from_secs(45),
        )
        .await;
    eprintln!("the standby issued {:?} after the freeze", frozen.elapsed());
    let token = env.token_in("migration", "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&token));
    assert_eq!(env.sim.state.live_links(ORG), 1);
    let secret_before = env.secrets().get("migration").await.expect("Secret");
    let status_before = serde_json::to_value(&lt.status).expect("json");

    // Thaw it past both its pause and its Lease: whatever it tries now must fail.
    let stopped_for = LEASE_DURATION + Duration::from_secs(10);
    tokio::time::sleep(stopped_for.saturating_sub(frozen.elapsed())).await;
    signal(&old, Signal::SIGCONT);
    let thawed = Instant::now();
    let status = wait_exit(&mut old, Duration::from_secs(20))
        .await
        .expect("a leader that lost its Lease exits");
    eprintln!(
        "the thawed leader exited {:?} after SIGCONT: {status:?}",
        thawed.elapsed()
    );
    assert!(!status.success(), "exit status {status:?}");
    for l in old
        .logs()
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        eprintln!("  old leader: {}", l.chars().take(300).collect::<String>());
    }

    // Nothing it held reached the cluster: the new leader's Secret and status are as they were.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let secret_after = env.secrets().get("migration").await.expect("Secret");
    assert_eq!(
        secret_after.data, secret_before.data,
        "token Secret overwritten"
    );
    assert_eq!(
        secret_after.metadata.resource_version, secret_before.metadata.resource_version,
        "the old leader wrote the token Secret"
    );
    let lt = env.get("migration").await.expect("LinkToken");
    assert_eq!(
        serde_json::to_value(&lt.status).expect("json"),
        status_before,
        "the old leader wrote the status"
    );
    assert!(testkit::operator::is_ready(&lt));
    assert_eq!(env.sim.state.live_links(ORG), 1);
    assert!(env.sim.state.is_token_live(&token));

    // The Lease is the new leader's: the old one did not take it back on its way out.
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    let holder = leases
        .get(LEASE)
        .await
        .expect("Lease")
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a holder");
    assert!(
        new.logs().contains(&holder) && !old.logs().contains(&holder),
        "the Lease names {holder}, not the new leader"
    );

    // The new leader still reconciles.
    assert!(
        matches!(new.child.try_wait(), Ok(None)),
        "the new leader exited"
    );
    env.apply_yaml(&linktoken_yaml("second", ORG_B, &[], "creds", ""))
        .await;
    env.wait_ready("second").await;
    env.assert_invariants(&foreign).await;
    let second = env.token_in("second", "linkToken").await.expect("token");
    for o in [&old, &new] {
        let logs = o.logs();
        for s in [token.as_str(), second.as_str(), PRIVATE_KEY] {
            assert!(!logs.contains(s), "an operator log contains a secret value");
        }
    }
    new.kill();
}

/// Deletes the test namespace as a user would, without waiting.
fn delete_namespace(env: &Env) {
    let out = env
        .cluster
        .kubectl()
        .args(["delete", "namespace", &env.ns, "--wait=false"])
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl delete namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn wait_namespace_gone(env: &Env, within: Duration) {
    let nss: Api<Namespace> = Api::all(env.client.clone());
    testkit::eventually(within, "the namespace is gone", || async {
        nss.get_opt(&env.ns).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// Bound for a namespace deletion with one revocation: the namespace controller's passes plus a
/// retry of the operator on a loaded machine.
const NS_GONE: Duration = Duration::from_secs(90);

#[tokio::test]
async fn deleting_the_namespace_revokes_the_link() {
    let Some((mut env, token)) = Env::ready("e2e-nsdel", &[], "").await else {
        return;
    };
    delete_namespace(&env);
    let deleted = Instant::now();
    wait_namespace_gone(&env, NS_GONE).await;
    eprintln!("namespace gone {:?} after the delete", deleted.elapsed());
    assert!(
        env.revoked(&token),
        "the namespace is gone but its link is still live in atlas-sim"
    );
    assert_eq!(env.sim.state.live_links(ORG), 0);
    env.assert_invariants(&[]).await;
    let op = env.operator.as_mut().expect("operator");
    assert!(
        matches!(op.child.try_wait(), Ok(None)),
        "the operator exited"
    );
}

#[tokio::test]
async fn deleting_the_namespace_revokes_the_link_even_when_the_credentials_secret_goes_first() {
    let Some((mut env, token)) = Env::ready("e2e-nsdel-creds", &[], "").await else {
        return;
    };
    // The operator is slow to react (frozen here; loaded, or its watch reconnecting, in life):
    // the namespace controller deletes the credentials Secret while the LinkToken waits on its
    // finalizer.
    let op = env.operator.as_ref().expect("operator");
    signal(op, Signal::SIGSTOP);
    delete_namespace(&env);
    let deleted = Instant::now();
    testkit::eventually(
        Duration::from_secs(60),
        "the credentials Secret deleted, the LinkToken terminating",
        || async {
            let creds = env.secrets().get_opt("creds").await.ok()?;
            let lt = env.get("migration").await?;
            (creds.is_none() && lt.metadata.deletion_timestamp.is_some()).then_some(())
        },
    )
    .await;
    signal(op, Signal::SIGCONT);

    wait_namespace_gone(&env, NS_GONE).await;
    eprintln!("namespace gone {:?} after the delete", deleted.elapsed());
    assert!(
        env.revoked(&token),
        "the credentials Secret went first and the link was left live in atlas-sim"
    );
    assert_eq!(env.sim.state.live_links(ORG), 0);
    env.assert_invariants(&[]).await;
    env.assert_no_secret_leaked(&[&token, PRIVATE_KEY]).await;
    let op = env.operator.as_mut().expect("operator");
    assert!(
        matches!(op.child.try_wait(), Ok(None)),
        "the operator exited"
    );
}
