//! End to end, the lifecycle (spec section 4): rotation by annotation, an access-list change,
//! one LinkToken per org with takeover, and deletion with Delete, Retain, an active migration
//! (409) and missing credentials. Real control plane, the operator binary, atlas-sim.
use testkit::require_cluster;

use std::time::{Duration, Instant};

use atlas_sim::CallKind;
use linktoken_operator::api::Reason;
use testkit::e2e::{Env, ORG, PRIVATE_KEY, linktoken_yaml};

const WAIT: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_rotate_annotation_issues_a_new_token_and_revokes_the_old_one() {
    let Some((env, old)) = Env::ready("e2e-rotate", &[], "").await else {
        return;
    };
    env.rotate("migration", "1").await;
    let new = env.wait_new_token("migration", &old, WAIT).await;
    assert!(env.revoked(&old), "the old token was revoked in atlas-sim");
    assert_eq!(env.sim.state.live_links(ORG), 1);
    let lt = env.wait_ready("migration").await;
    assert_eq!(
        lt.status
            .and_then(|s| s.issued_for)
            .and_then(|i| i.rotate)
            .as_deref(),
        Some("1")
    );
    env.wait_event("migration", "TokenRotated", "Normal", WAIT)
        .await;

    // The same value again is no rotation.
    let calls = env.atlas_calls();
    env.rotate("migration", "1").await;
    env.patch_linktoken(
        "migration",
        serde_json::json!({"metadata": {"labels": {"unrelated": "change"}}}),
    )
    .await;
    env.assert_quiet(Duration::from_secs(3)).await;
    assert_eq!(env.atlas_calls(), calls);
    assert_eq!(
        env.token_in("migration", "linkToken").await.as_deref(),
        Some(new.as_str())
    );
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&old, &new, PRIVATE_KEY])
        .await;
}

#[tokio::test]
async fn an_access_list_change_reissues_with_the_new_list() {
    let Some((env, old)) = Env::ready("e2e-acl", &["203.0.113.0/24"], "").await else {
        return;
    };
    env.patch_linktoken(
        "migration",
        serde_json::json!({"spec": {"accessListIps": ["198.51.100.7", "2001:db8::/64"]}}),
    )
    .await;
    let new = env.wait_new_token("migration", &old, WAIT).await;
    assert!(env.revoked(&old));
    let snap = env.sim.state.snapshot();
    let links = &snap.orgs[ORG].links;
    assert_eq!(links.len(), 1);
    assert_eq!(
        links[0].access_list_ips,
        vec!["198.51.100.7".to_string(), "2001:db8::/64".to_string()],
        "the new token was issued for the new list"
    );
    let lt = env.wait_ready("migration").await;
    assert_eq!(
        lt.status
            .and_then(|s| s.issued_for)
            .map(|i| i.access_list_ips),
        Some(vec![
            "198.51.100.7".to_string(),
            "2001:db8::/64".to_string()
        ])
    );
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&old, &new, PRIVATE_KEY])
        .await;
}

#[tokio::test]
async fn two_linktokens_for_one_org_conflict_and_the_younger_takes_over_when_the_owner_goes() {
    let Some((env, first_token)) = Env::ready("e2e-orgconflict", &[], "").await else {
        return;
    };
    env.apply_yaml(&linktoken_yaml("second", ORG, &[], "creds", ""))
        .await;
    env.wait_reason("second", Reason::OrgConflict, WAIT).await;
    let checks = async {
        let (msg, stalled) = env.ready_message_and_stalled("second").await;
        assert!(
            msg.contains("LinkToken migration"),
            "names the owner: {msg}"
        );
        assert_eq!(stalled, "True");
        env.wait_event("second", "OrgConflict", "Warning", WAIT)
            .await;
    };
    tokio::join!(env.assert_quiet(QUIET), checks);
    assert!(
        env.secrets()
            .get_opt("second")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        env.sim.state.is_token_live(&first_token),
        "the owner's token is untouched"
    );

    env.delete_linktoken("migration").await;
    let started = Instant::now();
    env.wait_reason("second", Reason::TokenIssued, Duration::from_secs(15))
        .await;
    eprintln!("takeover after {:?}", started.elapsed());
    let second_token = env.token_in("second", "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&second_token));
    assert!(
        env.revoked(&first_token),
        "the owner revoked its token on deletion"
    );
    assert_eq!(env.sim.state.live_links(ORG), 1);
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&first_token, &second_token, PRIVATE_KEY])
        .await;
}

#[tokio::test]
async fn deletion_with_delete_revokes_and_with_retain_keeps_the_link_and_the_secret() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-delete").await;
    let org_b = "5f1e9b2a3c4d5e6f7a8b9c0e";
    env.api_key_secret("creds").await;
    env.start_operator(&[]);
    env.apply_yaml(&linktoken_yaml("deleted", ORG, &[], "creds", ""))
        .await;
    env.apply_yaml(&linktoken_yaml(
        "retained",
        org_b,
        &[],
        "creds",
        "  deletionPolicy: Retain\n",
    ))
    .await;
    env.wait_ready("deleted").await;
    env.wait_ready("retained").await;
    let deleted_token = env.token_in("deleted", "linkToken").await.expect("token");
    let retained_token = env.token_in("retained", "linkToken").await.expect("token");

    // Delete: revoked in Atlas, the Secret garbage-collected through its ownerReference.
    env.delete_linktoken("deleted").await;
    env.wait_linktoken_gone("deleted", WAIT).await;
    assert!(env.revoked(&deleted_token));
    assert_eq!(env.sim.state.live_links(ORG), 0);
    env.wait_event("deleted", "TokenRevoked", "Normal", WAIT)
        .await;

    // Retain: no Atlas call; the Secret stays, no longer owned (so GC keeps it).
    let calls = env.atlas_calls();
    env.delete_linktoken("retained").await;
    env.wait_linktoken_gone("retained", WAIT).await;
    assert_eq!(env.atlas_calls(), calls, "Retain makes no Atlas call");
    assert!(env.sim.state.is_token_live(&retained_token));
    let s = env.secrets().get("retained").await.expect("Secret kept");
    assert!(
        s.metadata.owner_references.unwrap_or_default().is_empty(),
        "the kept Secret has no ownerReference left"
    );
    assert_eq!(
        env.token_in("retained", "linkToken").await.as_deref(),
        Some(retained_token.as_str())
    );

    env.wait_secret_gone("deleted", Duration::from_secs(45))
        .await;
    assert!(
        env.secrets()
            .get_opt("retained")
            .await
            .expect("get")
            .is_some(),
        "garbage collection ran and the retained Secret survived it"
    );
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&deleted_token, &retained_token, PRIVATE_KEY])
        .await;
}

#[tokio::test]
async fn deletion_during_an_active_migration_is_blocked_then_released() {
    let Some((env, token)) = Env::ready("e2e-delete-409", &[], "").await else {
        return;
    };
    env.sim.state.set_migrating(ORG, true).expect("migrating");
    env.delete_linktoken("migration").await;
    env.wait_reason("migration", Reason::RevocationBlocked, WAIT)
        .await;
    let lt = env.get("migration").await.expect("still there");
    let st = lt.status.expect("status");
    let err = st.atlas_error.expect("atlasError");
    assert_eq!(err.http_status, Some(409));
    assert_eq!(
        err.error_code.as_deref(),
        Some("CANNOT_DELETE_ORG_ACTIVE_LIVE_MIGRATION_ATLAS_ORG_LINK")
    );
    env.wait_event("migration", "RevocationBlocked", "Warning", WAIT)
        .await;
    // Retried with backoff while blocked, and the link is kept.
    testkit::eventually(WAIT, "a retry of the blocked revocation", || async {
        (env.sim.state.calls("DELETE", CallKind::LinkTokens, 409) >= 2).then_some(())
    })
    .await;
    assert!(env.sim.state.is_token_live(&token));

    env.sim
        .state
        .set_migrating(ORG, false)
        .expect("not migrating");
    env.wait_linktoken_gone("migration", Duration::from_secs(15))
        .await;
    assert!(env.revoked(&token), "revoked once the migration ended");
    assert_eq!(env.sim.state.live_links(ORG), 0);
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&token, PRIVATE_KEY]).await;
}

#[tokio::test]
async fn deletion_without_credentials_warns_revocation_skipped_and_releases() {
    let Some((env, token)) = Env::ready("e2e-delete-nocreds", &[], "").await else {
        return;
    };
    env.delete_secret("creds").await;
    let calls = env.atlas_calls();
    env.delete_linktoken("migration").await;
    env.wait_linktoken_gone("migration", WAIT).await;
    env.wait_event("migration", "RevocationSkipped", "Warning", WAIT)
        .await;
    assert_eq!(
        env.atlas_calls(),
        calls,
        "no Atlas call without credentials"
    );
    assert!(
        env.sim.state.is_token_live(&token),
        "nothing could revoke it; the warning says so"
    );
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&token, PRIVATE_KEY]).await;
}
