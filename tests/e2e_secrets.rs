//! End to end, the token Secret contract (spec section 3) and credentials changes: drift is
//! repaired by revoke + reissue, metadata changes are applied without a reissue, a rename moves
//! the token, a foreign Secret is never touched, and rotated credentials are used by the next
//! issue. Real control plane, the operator binary, atlas-sim.
use testkit::require_cluster;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use linktoken_operator::api::Reason;
use testkit::e2e::{CLIENT_ID, CLIENT_SECRET, Env, ORG, PRIVATE_KEY};

const WAIT: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_deleted_token_secret_is_reissued_and_the_old_link_revoked() {
    let Some((env, old)) = Env::ready("e2e-secret-del", &[], "").await else {
        return;
    };
    env.delete_secret("migration").await;
    let new = env.wait_new_token("migration", &old, WAIT).await;
    assert!(env.revoked(&old), "the lost token was revoked in Atlas");
    assert_eq!(env.sim.state.live_links(ORG), 1);
    env.wait_ready("migration").await;
    env.assert_quiet(Duration::from_secs(3)).await;
    assert_eq!(env.sim.state.snapshot().orgs[ORG].issued, 2, "one reissue");
    env.wait_event("migration", "TokenRotated", "Normal", WAIT)
        .await;
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&old, &new, PRIVATE_KEY])
        .await;
}

#[tokio::test]
async fn a_tampered_token_secret_is_reissued() {
    let Some((env, old)) = Env::ready("e2e-secret-tamper", &[], "").await else {
        return;
    };
    env.update_secret_data("migration", &[("linkToken", "edited-by-someone")])
        .await;
    let new = env.wait_new_token("migration", &old, WAIT).await;
    assert_ne!(new, "edited-by-someone");
    assert!(env.revoked(&old), "the previous token was revoked");
    assert_eq!(env.sim.state.live_links(ORG), 1);
    env.wait_ready("migration").await;
    // Exactly one reissue, then calm: no revoke/reissue loop over the edited field.
    env.assert_quiet(Duration::from_secs(3)).await;
    assert_eq!(env.sim.state.snapshot().orgs[ORG].issued, 2);
    env.wait_event("migration", "TokenRotated", "Normal", WAIT)
        .await;
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&old, &new, PRIVATE_KEY])
        .await;
}

#[tokio::test]
async fn label_and_annotation_changes_are_applied_without_a_reissue() {
    let Some((env, token)) = Env::ready(
        "e2e-secret-meta",
        &[],
        "  tokenSecret:\n    labels:\n      team: blue\n",
    )
    .await
    else {
        return;
    };
    let calls = env.atlas_calls();
    let s = env.secrets().get("migration").await.expect("secret");
    assert_eq!(
        s.metadata.labels.as_ref().and_then(|l| l.get("team")),
        Some(&"blue".to_string())
    );

    env.patch_linktoken(
        "migration",
        serde_json::json!({"spec": {"tokenSecret": {
            "labels": {"team": "green"},
            "annotations": {"example.com/owner": "migrations"}
        }}}),
    )
    .await;
    testkit::eventually(
        WAIT,
        "the Secret carries the new label and annotation",
        || async {
            let s = env.secrets().get("migration").await.ok()?;
            let label = s.metadata.labels.as_ref()?.get("team")?.clone();
            let ann = s
                .metadata
                .annotations
                .as_ref()?
                .get("example.com/owner")?
                .clone();
            (label == "green" && ann == "migrations").then_some(())
        },
    )
    .await;
    env.wait_ready("migration").await;

    // Someone else labels the Secret: theirs to keep, and never a reason to reissue.
    env.secrets()
        .patch(
            "migration",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"backup": "yes"}}})),
        )
        .await
        .expect("label secret");
    env.assert_quiet(QUIET).await;
    assert_eq!(
        env.atlas_calls(),
        calls,
        "no Atlas call for metadata changes"
    );
    assert_eq!(
        env.token_in("migration", "linkToken").await.as_deref(),
        Some(token.as_str()),
        "same token"
    );
    let s = env.secrets().get("migration").await.expect("secret");
    assert_eq!(
        s.metadata.labels.as_ref().and_then(|l| l.get("backup")),
        Some(&"yes".to_string()),
        "another manager's label stays"
    );
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&token, PRIVATE_KEY]).await;
}

#[tokio::test]
async fn renaming_the_token_secret_moves_the_token_without_a_reissue() {
    let Some((env, token)) = Env::ready("e2e-secret-rename", &[], "").await else {
        return;
    };
    let calls = env.atlas_calls();
    env.patch_linktoken(
        "migration",
        serde_json::json!({"spec": {"tokenSecret": {"name": "moved"}}}),
    )
    .await;
    let lt = env.wait_ready("migration").await;
    assert_eq!(
        lt.status.and_then(|s| s.token_secret_name).as_deref(),
        Some("moved")
    );
    assert_eq!(
        env.token_in("moved", "linkToken").await.as_deref(),
        Some(token.as_str()),
        "the same token, moved"
    );
    env.wait_secret_gone("migration", WAIT).await;
    assert_eq!(env.atlas_calls(), calls, "no reissue for a rename");
    assert!(env.sim.state.is_token_live(&token));
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&token, PRIVATE_KEY]).await;
}

#[tokio::test]
async fn a_foreign_secret_at_the_target_name_is_a_conflict_and_left_untouched() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-secret-foreign").await;
    env.api_key_secret("creds").await;
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("migration".into()),
            labels: Some(BTreeMap::from([("owner".into(), "someone-else".into())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "linkToken".into(),
            ByteString(b"not-from-the-operator".to_vec()),
        )])),
        ..Default::default()
    };
    let before = env
        .secrets()
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create foreign secret");
    env.start_operator(&[]);
    env.linktoken("migration", ORG, &[]).await;
    env.wait_reason("migration", Reason::SecretConflict, WAIT)
        .await;
    let checks = async {
        let (msg, stalled) = env.ready_message_and_stalled("migration").await;
        assert!(msg.contains("migration"), "{msg}");
        assert_eq!(stalled, "True");
        env.wait_event("migration", "SecretConflict", "Warning", WAIT)
            .await;
    };
    tokio::join!(env.assert_quiet(QUIET), checks);
    assert_eq!(
        env.atlas_calls(),
        0,
        "nothing is issued into a Secret we cannot write"
    );
    let after = env.secrets().get("migration").await.expect("secret");
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "the foreign Secret was not written"
    );
    assert_eq!(after.data, before.data);
    assert_eq!(after.metadata.labels, before.metadata.labels);
    assert_eq!(after.metadata.annotations, before.metadata.annotations);
    assert_eq!(
        after.metadata.owner_references,
        before.metadata.owner_references
    );
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[PRIVATE_KEY]).await;
}

#[tokio::test]
async fn rotated_credentials_are_used_by_the_next_issue_without_a_reissue_of_their_own() {
    let Some((env, old)) = Env::ready("e2e-creds-rotate", &[], "").await else {
        return;
    };
    let calls = env.atlas_calls();
    // The credentials Secret now holds the service account (another valid Org Owner).
    env.update_secret_data(
        "creds",
        &[("clientId", CLIENT_ID), ("clientSecret", CLIENT_SECRET)],
    )
    .await;
    env.assert_quiet(Duration::from_secs(5)).await;
    assert_eq!(
        env.atlas_calls(),
        calls,
        "a credentials change alone does not reissue"
    );
    assert_eq!(env.sim.state.oauth_tokens_minted(CLIENT_ID), 0);

    env.rotate("migration", "after-credentials-rotation").await;
    let new = env.wait_new_token("migration", &old, WAIT).await;
    assert!(
        env.sim.state.oauth_tokens_minted(CLIENT_ID) >= 1,
        "the new credentials (service account) were used"
    );
    assert!(env.revoked(&old));
    env.wait_ready("migration").await;
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&old, &new, PRIVATE_KEY, CLIENT_SECRET])
        .await;
}

/// What the operator reads of the cluster's Secrets, from kube-apiserver's audit log: it lists
/// and watches only its own token Secrets (by the managed-by label), never credentials Secrets
/// or anyone else's; yet it still finds a credentials Secret created after its LinkToken, by
/// reading it by name.
#[tokio::test]
async fn the_operator_lists_and_watches_only_its_own_token_secrets() {
    let c = require_cluster!();
    let Some(audit_log) = c.audit_log.clone() else {
        eprintln!("\n!!!!!!!! SKIPPED: a shared control plane has no audit log here\n");
        return;
    };
    let mut env = Env::new(c, "e2e-secret-reads").await;
    env.put_secret("unrelated", &[("password", "not-for-the-operator")])
        .await;
    env.start_operator(&[]);
    // The LinkToken first: its credentials Secret appears later (a GitOps order).
    env.linktoken("migration", ORG, &[]).await;
    env.wait_reason("migration", Reason::CredentialsNotFound, WAIT)
        .await;
    env.api_key_secret("creds").await;
    env.wait_ready("migration").await;

    let selector = "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dlinktoken-operator";
    let reads: Vec<(String, String)> =
        testkit::eventually(WAIT, "the operator's Secret watch", || {
            let audit_log = audit_log.clone();
            async move {
                let text = std::fs::read_to_string(&audit_log).ok()?;
                let reads: Vec<(String, String)> = text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter(|e| {
                        e["userAgent"]
                            .as_str()
                            .is_some_and(|ua| ua.starts_with("linktoken-operator/"))
                            && e["objectRef"]["resource"] == "secrets"
                    })
                    .map(|e| {
                        (
                            e["verb"].as_str().unwrap_or_default().to_string(),
                            e["requestURI"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect();
                reads
                    .iter()
                    .any(|(verb, _)| verb == "watch")
                    .then_some(reads)
            }
        })
        .await;
    for (verb, uri) in &reads {
        assert!(
            uri.contains(selector),
            "the operator ran {verb} {uri} without its managed-by selector"
        );
        // Every operator of this test process runs with --watch-namespaces (other tests run
        // theirs beside this one): none may list Secrets cluster-wide.
        assert!(
            uri.starts_with("/api/v1/namespaces/"),
            "an operator watching namespaces listed Secrets cluster-wide: {verb} {uri}"
        );
    }
}
