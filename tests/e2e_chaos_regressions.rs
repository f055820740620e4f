//! Violations the chaos driver found (crates/chaos, docs/chaos.md), each replayed here as the
//! smallest scenario that shows it, named with its seed. Real control plane, atlas-sim and
//! the operator binary.
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use linktoken_operator::api::{LinkToken, Reason};
use linktoken_operator::controller::secret::token_sha256;
use testkit::e2e::{Env, ORG, PRIVATE_KEY, linktoken_yaml};

const ORG_B: &str = atlas_sim::config::DEMO_EXTRA_ORG_IDS[0];
use testkit::operator::is_ready;

/// `holder` (credentials `creds-a`) Ready in ORG, `next` (`creds-b`) waiting for it; then
/// `creds-a` is deleted and `holder` reconciled (so its claim lapses). Returns the holder's
/// token. None when no control plane is available outside CI.
async fn holder_loses_its_credentials(prefix: &str) -> Option<(Env, String)> {
    let c = testkit::cluster().await?;
    let mut env = Env::new(c, prefix).await;
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
    // chaos runs: a leader change); any change of it does.
    env.patch_linktoken(
        "holder",
        serde_json::json!({"metadata": {"annotations": {"example.com/touched": "1"}}}),
    )
    .await;
    Some((env, held))
}

/// [`holder_loses_its_credentials`], then `next` Ready: it took the org over and revoked the
/// holder's link (returned).
async fn next_took_over_from_the_holder(prefix: &str) -> Option<(Env, String)> {
    let (env, first) = holder_loses_its_credentials(prefix).await?;
    env.wait_ready("next").await;
    assert!(
        env.revoked(&first),
        "the takeover revoked the holder's link"
    );
    Some((env, first))
}

/// Polls (every 25 ms) until `next` is Ready, failing the moment ORG has two live links.
async fn next_takes_the_org_over_with_never_two_links(env: &Env) {
    let start = std::time::Instant::now();
    loop {
        assert!(
            env.sim.state.live_links(ORG) <= 1,
            "two live links in the org during the takeover"
        );
        if env.get("next").await.is_some_and(|l| is_ready(&l)) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "next did not take the org over"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Chaos seed 4 (`cargo run -p chaos -- --seed 4 --duration 300s --workers 4`, 91 s in,
/// one-live-link-per-org): the credentials Secret of the LinkToken holding the org's link was
/// deleted, so its claim lapsed (docs/lifecycle.md, rule 3) and the LinkToken waiting for the
/// org took over and POSTed without a DELETE. The holder cannot revoke without credentials:
/// Atlas kept both links. The one taking over now revokes first.
#[tokio::test]
async fn seed_4_taking_over_from_a_holder_without_credentials_revokes_its_link_first() {
    let Some((env, held)) = holder_loses_its_credentials("chaos-s4").await else {
        return;
    };
    next_takes_the_org_over_with_never_two_links(&env).await;
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

/// Chaos seed 1 (CI's short schedule, after the seed 4 fix; ready-token-live): while a Ready
/// LinkToken's credentials Secret was gone, the LinkToken waiting for its org took it over
/// (revoking the link), then was deleted. When the credentials came back, the first one
/// reported Ready again with the token it had recorded, which was no longer live. It now
/// reissues once its credentials work again.
#[tokio::test]
async fn seed_1_a_holder_whose_credentials_come_back_after_a_takeover_is_not_ready_with_a_dead_token()
 {
    let Some((env, first)) = next_took_over_from_the_holder("chaos-s1").await else {
        return;
    };
    env.delete_linktoken("next").await;
    env.wait_linktoken_gone("next", Duration::from_secs(30))
        .await;

    env.api_key_secret("creds-a").await;
    let token = testkit::eventually(
        Duration::from_secs(30),
        "holder Ready with a live token",
        || async {
            let l = env.get("holder").await?;
            if !is_ready(&l) {
                return None;
            }
            let t = env.token_in("holder", "linkToken").await?;
            env.sim.state.is_token_live(&t).then_some(t)
        },
    )
    .await;
    assert_ne!(token, first);
    assert_eq!(env.sim.state.live_links(ORG), 1);
    env.assert_invariants(&[]).await;
    env.assert_no_secret_leaked(&[&first, &token]).await;
}

/// Chaos seed 14433375897223761593 (CI's short schedule: `cargo run -p chaos -- --seed
/// 14433375897223761593 --duration 30s --workers 3 --short`; one-live-link-per-org): the
/// namespace of the LinkToken holding an org's link was deleted while no operator led (the
/// leader killed, the standby not holding the Lease yet). The namespace controller deleted the
/// credentials Secret, so the operator that came next had nothing to revoke with and released
/// the finalizer with `RevocationSkipped` (documented: docs/lifecycle.md, "Deleting a
/// namespace"); the org's waiter in another namespace then POSTed next to the skipped link.
/// The skip is still what happens, but the org's next owner now DELETEs first: one live link.
#[tokio::test]
async fn seed_14433375897223761593_a_link_skipped_in_a_deleted_namespace_is_revoked_by_the_next_owner()
 {
    let Some(c) = testkit::cluster().await else {
        return;
    };
    let mut env = Env::new(c, "chaos-s144").await;
    let own = env.ns.clone();
    let doomed = c.namespace("chaos-s144-doomed").await;
    env.api_key_secret("creds").await;
    env.api_key_secret_in(&doomed, "creds").await;
    let doomed_secrets: Api<Secret> = Api::namespaced(env.client.clone(), &doomed);
    // One operator watching both namespaces (the spawner watches `env.ns`).
    env.ns = format!("{own},{doomed}");
    env.start_operator(&[]);
    env.ns = own.clone();

    let doomed_lts: Api<LinkToken> = Api::namespaced(env.client.clone(), &doomed);
    let mut holder: LinkToken =
        serde_saphyr::from_str(&linktoken_yaml("holder", ORG, &[], "creds", "")).expect("yaml");
    holder.metadata.namespace = Some(doomed.clone());
    doomed_lts
        .create(&PostParams::default(), &holder)
        .await
        .expect("create holder");
    testkit::eventually(Duration::from_secs(30), "holder Ready", || async {
        doomed_lts
            .get_opt("holder")
            .await
            .ok()?
            .filter(is_ready)
            .map(|_| ())
    })
    .await;
    let held = doomed_secrets
        .get("holder")
        .await
        .ok()
        .and_then(|s| s.data)
        .and_then(|d| d.get("linkToken").cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
        .expect("the holder's token");
    env.apply_yaml(&linktoken_yaml("next", ORG, &[], "creds", ""))
        .await;
    env.wait_reason("next", Reason::OrgConflict, Duration::from_secs(30))
        .await;

    // No operator runs while the namespace goes: its controller deletes the credentials
    // Secret, the holder waits on its finalizer.
    env.operator.as_mut().expect("operator").kill();
    let nss: Api<Namespace> = Api::all(env.client.clone());
    nss.delete(&doomed, &DeleteParams::default())
        .await
        .expect("delete the namespace");
    testkit::eventually(
        Duration::from_secs(60),
        "the credentials Secret deleted, the holder terminating",
        || async {
            let creds = doomed_secrets.get_opt("creds").await.ok()?;
            let lt = doomed_lts.get_opt("holder").await.ok()??;
            (creds.is_none() && lt.metadata.deletion_timestamp.is_some()).then_some(())
        },
    )
    .await;

    env.ns = format!("{own},{doomed}");
    env.start_operator(&[]);
    env.ns = own.clone();
    next_takes_the_org_over_with_never_two_links(&env).await;
    testkit::eventually(Duration::from_secs(90), "the namespace is gone", || async {
        nss.get_opt(&doomed).await.ok()?.is_none().then_some(())
    })
    .await;
    let op = env.operator.as_ref().expect("operator");
    assert!(
        op.logs()
            .lines()
            .any(|l| l.contains("RevocationSkipped") && l.contains(&format!("{doomed}/holder"))),
        "the skipped revocation is still reported in the log"
    );
    assert!(
        env.revoked(&held),
        "the skipped link was revoked by the next owner"
    );
    assert_eq!(env.sim.state.live_links(ORG), 1);
    env.assert_invariants(&[]).await;
    env.assert_no_secret_leaked(&[&held, PRIVATE_KEY]).await;
}

/// Chaos seed 8456493263140631753 (`--short`, ready-token-live): the holder's credentials
/// were deleted, the waiting LinkToken took the org over (revoking the holder's link); the
/// credentials came back while the org was taken, so the holder waited in `OrgConflict` with
/// its dead token still recorded. When the new owner moved to another org, the holder owned the
/// org again and reported Ready with that dead token. It now reissues.
#[tokio::test]
async fn seed_8456493263140631753_a_holder_that_regains_its_org_after_waiting_is_not_ready_with_a_dead_token()
 {
    let Some((env, first)) = next_took_over_from_the_holder("chaos-s845").await else {
        return;
    };
    env.api_key_secret("creds-a").await;
    env.wait_reason("holder", Reason::OrgConflict, Duration::from_secs(30))
        .await;

    // The new owner moves away (revoking its link in ORG): the org is the holder's again.
    env.patch_linktoken("next", serde_json::json!({"spec": {"orgId": ORG_B}}))
        .await;
    let token = testkit::eventually(
        Duration::from_secs(30),
        "holder Ready with a live token",
        || async {
            let l = env.get("holder").await?;
            assert!(
                !is_ready(&l)
                    || l.status
                        .as_ref()
                        .and_then(|s| s.issued_for.as_ref())
                        .and_then(|i| i.token_sha256.as_deref())
                        != Some(token_sha256(first.as_bytes()).as_str()),
                "the holder reports Ready with the token the takeover revoked"
            );
            if !is_ready(&l) {
                return None;
            }
            let t = env.token_in("holder", "linkToken").await?;
            env.sim.state.is_token_live(&t).then_some(t)
        },
    )
    .await;
    assert_ne!(token, first);
    env.wait_ready("next").await;
    assert_eq!(env.sim.state.live_links(ORG), 1);
    assert_eq!(env.sim.state.live_links(ORG_B), 1);
    env.assert_invariants(&[]).await;
    env.assert_no_secret_leaked(&[&first, &token]).await;
}
