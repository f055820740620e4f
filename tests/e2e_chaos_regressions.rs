//! Violations the chaos driver found (crates/chaos, docs/chaos.md), each replayed here as the
//! smallest scenario that shows it, named with its seed. Real control plane, atlas-sim and
//! the operator binary.
use std::time::Duration;

use linktoken_operator::api::Reason;
use testkit::e2e::{Env, ORG, linktoken_yaml};
use testkit::operator::is_ready;
use testkit::require_cluster;

/// Chaos seed 4 (`cargo run -p chaos -- --seed 4 --duration 300s --workers 4`, 91 s in,
/// one-live-link-per-org): the credentials Secret of the LinkToken holding the org's link was
/// deleted, so its claim lapsed (docs/lifecycle.md, rule 3) and the LinkToken waiting for the
/// org took over and POSTed without a DELETE. The holder cannot revoke without credentials:
/// Atlas kept both links. The one taking over now revokes first.
#[tokio::test]
async fn seed_4_taking_over_from_a_holder_without_credentials_revokes_its_link_first() {
    let c = require_cluster!();
    let mut env = Env::new(c, "chaos-s4").await;
    env.api_key_secret("creds-a").await;
    env.api_key_secret("creds-b").await;
    env.start_operator(&[]);
    env.apply_yaml(&linktoken_yaml("holder", ORG, &[], "creds-a", ""))
        .await;
    env.wait_ready("holder").await;
    let held = env.token_in("holder", "linkToken").await.expect("token");
    env.apply_yaml(&linktoken_yaml("next", ORG, &[], "creds-b", ""))
        .await;
    env.wait_reason("next", Reason::OrgConflict, Duration::from_secs(30))
        .await;

    env.delete_secret("creds-a").await;
    // A Ready LinkToken notices missing credentials only when it is reconciled again (in the
    // chaos run: a leader change); any change of it does.
    env.patch_linktoken(
        "holder",
        serde_json::json!({"metadata": {"annotations": {"example.com/touched": "1"}}}),
    )
    .await;
    let start = std::time::Instant::now();
    loop {
        assert!(
            env.sim.state.live_links(ORG) <= 1,
            "two live links in the org during the takeover"
        );
        if env.get("next").await.is_some_and(|l| is_ready(&l)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "next did not take the org over"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    env.wait_reason(
        "holder",
        Reason::CredentialsNotFound,
        Duration::from_secs(10),
    )
    .await;
    assert!(env.revoked(&held), "the lapsed holder's token was revoked");
    assert_eq!(env.sim.state.live_links(ORG), 1);
    env.assert_invariants(&[]).await;
    env.assert_no_secret_leaked(&[&held]).await;
}
