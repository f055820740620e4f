//! End to end: the operator binary, a real control plane and atlas-sim. A LinkToken turns
//! Ready, its Secret holds the token atlas-sim issued, and deleting it revokes the link.
use testkit::require_cluster;

use std::time::Duration;

use kube::api::DeleteParams;
use testkit::e2e::{Env, ORG, PRIVATE_KEY, PUBLIC_KEY};

#[tokio::test]
async fn a_linktoken_turns_ready_with_the_token_atlas_issued_and_is_revoked_on_delete() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-issue").await;
    env.api_key_secret("creds").await;
    env.start_operator(&[]);
    env.linktoken("migration", ORG, &["203.0.113.0/24"]).await;

    let lt = env.wait_ready("migration").await;
    let status = lt.status.expect("status");
    assert_eq!(status.token_secret_name.as_deref(), Some("migration"));
    let token = env
        .token_in("migration", "linkToken")
        .await
        .expect("token in Secret");
    assert!(
        env.sim.state.is_token_live(&token),
        "the Secret holds the live token"
    );
    assert_eq!(env.sim.state.live_links(ORG), 1);
    assert_eq!(
        status.issued_for.expect("issuedFor").access_list_ips,
        vec!["203.0.113.0/24".to_string()]
    );

    env.linktokens()
        .delete("migration", &DeleteParams::default())
        .await
        .expect("delete");
    testkit::eventually(Duration::from_secs(30), "LinkToken gone", || async {
        env.get("migration").await.is_none().then_some(())
    })
    .await;
    assert_eq!(
        env.sim.state.live_links(ORG),
        0,
        "the link was revoked in Atlas"
    );
    testkit::eventually(
        Duration::from_secs(60),
        "token Secret garbage-collected",
        || async {
            env.secrets()
                .get_opt("migration")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    env.wait_event(
        "migration",
        "TokenIssued",
        "Normal",
        Duration::from_secs(10),
    )
    .await;
    env.wait_event(
        "migration",
        "TokenRevoked",
        "Normal",
        Duration::from_secs(10),
    )
    .await;
    env.assert_no_secret_leaked(&[&token, PRIVATE_KEY, PUBLIC_KEY])
        .await;
}
