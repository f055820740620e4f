//! End to end: `deletionPolicy: Retain` keeps the token a user can use, never an orphan. An
//! issue interrupted between its POST and the Secret write leaves a live link no Secret holds;
//! deleting the LinkToken with Retain must revoke that one (nobody could ever use or revoke
//! it), and still keep what the Secret holds. Real control plane, the operator binary (killed
//! inside the window by the fault-injection pause hook), atlas-sim.
use testkit::require_cluster;

use std::time::Duration;

use linktoken_operator::api::LinkToken;
use testkit::e2e::{Env, ORG};

const WAIT: Duration = Duration::from_secs(60);

fn in_flight(lt: &LinkToken) -> bool {
    lt.status.as_ref().is_some_and(|s| s.in_flight.is_some())
}

#[tokio::test]
async fn retain_revokes_the_orphan_of_an_interrupted_issue_and_lets_go() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-retain-orphan").await;
    env.api_key_secret("creds").await;
    let mut op = env.spawn_operator_with_env(
        &env.cluster.kubeconfig,
        &[(testkit::operator::PAUSE_ENV, "after-post=60s")],
        &[],
    );
    env.linktoken("migration", ORG, &[]).await;
    testkit::eventually(WAIT, "a link minted, its Secret not written", || async {
        let lt = env.get("migration").await?;
        (env.sim.state.live_links(ORG) == 1 && in_flight(&lt)).then_some(())
    })
    .await;
    // Killed inside the window: the minted link is live and recorded nowhere but the marker.
    op.kill();
    assert!(
        env.secrets()
            .get_opt("migration")
            .await
            .expect("get")
            .is_none(),
        "no Secret holds the minted token"
    );

    env.patch_linktoken(
        "migration",
        serde_json::json!({"spec": {"deletionPolicy": "Retain"}}),
    )
    .await;
    env.delete_linktoken("migration").await;
    env.start_operator(&[]);
    env.wait_linktoken_gone("migration", WAIT).await;
    assert_eq!(
        env.sim.state.live_links(ORG),
        0,
        "the orphan link of the interrupted issue was revoked"
    );
    env.wait_event(
        "migration",
        "TokenRevoked",
        "Normal",
        Duration::from_secs(10),
    )
    .await;
}
