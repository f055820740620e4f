//! End to end: the issuing path's writes are fenced. A Secret that appears during the POST is
//! never taken over; a stale actor's writes fail instead of overwriting a newer one's; a token
//! stored by an interrupted attempt is adopted only for the spec it was issued for; a Secret
//! the API server will refuse is found before any org API key is minted.
use testkit::require_cluster;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ResourceQuota, Secret};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use linktoken_operator::api::{LinkToken, Reason};
use testkit::e2e::{Env, ORG, Operator, PRIVATE_KEY};

const WAIT: Duration = Duration::from_secs(60);
/// How long the stale actor is held after its POST (long enough for the other to issue).
const STALE_PAUSE: Duration = Duration::from_secs(20);

/// An operator for this namespace that pauses at `point` of the issuing path for `dur`.
fn paused_operator(env: &Env, point: &str, dur: &str) -> Operator {
    let v = format!("{point}={dur}");
    env.spawn_operator_with_env(
        &env.cluster.kubeconfig,
        &[(testkit::operator::PAUSE_ENV, v.as_str())],
        &[],
    )
}

fn issued(env: &Env) -> u64 {
    env.sim
        .state
        .snapshot()
        .orgs
        .get(ORG)
        .map_or(0, |o| o.issued)
}

fn in_flight(lt: &LinkToken) -> bool {
    lt.status.as_ref().is_some_and(|s| s.in_flight.is_some())
}

#[tokio::test]
async fn a_secret_created_by_a_user_during_the_post_is_never_taken_over_and_the_minted_token_is_revoked()
 {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-fence-user").await;
    env.api_key_secret("creds").await;
    // The window between the POST and the Secret write, held open.
    env.operator = Some(paused_operator(&env, "after-post", "8s"));
    env.linktoken("migration", ORG, &["203.0.113.0/24"]).await;
    testkit::eventually(WAIT, "the token is minted (POST answered)", || async {
        (issued(&env) == 1).then_some(())
    })
    .await;

    // A user (or a GitOps tool) creates a Secret with the same name meanwhile: keys of their
    // own, no ownerReference.
    let theirs = Secret {
        metadata: ObjectMeta {
            name: Some("migration".into()),
            labels: Some(BTreeMap::from([("owner".into(), "team-a".into())])),
            annotations: Some(BTreeMap::from([("example.com/note".into(), "mine".into())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "config".into(),
            ByteString(b"user-data".to_vec()),
        )])),
        ..Default::default()
    };
    let before = env
        .secrets()
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create the user's Secret");

    let lt = env
        .wait_reason("migration", Reason::SecretConflict, WAIT)
        .await;
    let (msg, stalled) = env.ready_message_and_stalled("migration").await;
    assert!(msg.contains("migration"), "{msg}");
    assert_eq!(stalled, "True");
    assert!(
        !in_flight(&lt),
        "the marker is cleared once the token is revoked"
    );

    let after = env.secrets().get("migration").await.expect("secret");
    assert_eq!(
        serde_json::to_value(&after.metadata).expect("json"),
        serde_json::to_value(&before.metadata).expect("json"),
        "the user's Secret metadata (resourceVersion, labels, annotations, owners, managedFields) is unchanged"
    );
    assert_eq!(after.data, before.data, "the user's data is unchanged");
    assert_eq!(after.type_, before.type_);
    assert_eq!(
        env.sim.state.live_links(ORG),
        0,
        "the token minted for a Secret we cannot write was revoked"
    );
    assert_eq!(issued(&env), 1, "no other token was minted");
    env.assert_quiet(Duration::from_secs(5)).await;
    env.assert_no_secret_leaked(&[PRIVATE_KEY]).await;
}

#[tokio::test]
async fn a_stale_actors_writes_fail_instead_of_overwriting_the_newer_actors_token() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-fence-stale").await;
    env.api_key_secret("creds").await;
    // Actor A (think: a leader that lost its Lease) is held between its POST and its writes.
    let mut stale = paused_operator(&env, "after-post", &format!("{}s", STALE_PAUSE.as_secs()));
    env.linktoken("migration", ORG, &["203.0.113.0/24"]).await;
    testkit::eventually(WAIT, "A's token is minted", || async {
        (issued(&env) == 1).then_some(())
    })
    .await;
    let stale_resumes = std::time::Instant::now() + STALE_PAUSE;
    let stale_token_sha = env.sim.state.snapshot().orgs[ORG].live_token_sha256[0].clone();

    // Actor B (the new leader) sees A's marker: it revokes first, then issues.
    env.start_operator(&[]);
    let lt = env.wait_ready("migration").await;
    let fresh = env.token_in("migration", "linkToken").await.expect("token");
    let fresh_sha = lt
        .status
        .as_ref()
        .and_then(|s| s.issued_for.as_ref())
        .and_then(|i| i.token_sha256.clone())
        .expect("issuedFor.tokenSha256");
    assert_ne!(fresh_sha, stale_token_sha);
    let secret_before = env.secrets().get("migration").await.expect("secret");

    // A wakes up and tries to write its (revoked) token: both writes must fail.
    tokio::time::sleep_until((stale_resumes + Duration::from_secs(5)).into()).await;
    let lt = env.wait_ready("migration").await;
    assert_eq!(
        lt.status
            .as_ref()
            .and_then(|s| s.issued_for.as_ref())
            .and_then(|i| i.token_sha256.clone())
            .as_deref(),
        Some(fresh_sha.as_str()),
        "status still records B's token"
    );
    assert_eq!(
        env.token_in("migration", "linkToken").await.as_deref(),
        Some(fresh.as_str()),
        "the Secret still holds B's token"
    );
    let secret_after = env.secrets().get("migration").await.expect("secret");
    assert_eq!(
        secret_after.metadata.resource_version, secret_before.metadata.resource_version,
        "A did not write the Secret"
    );
    assert!(env.sim.state.is_token_live(&fresh), "B's token is live");
    assert_eq!(env.sim.state.live_links(ORG), 1);
    env.assert_at_most_one_link_per_org();
    assert!(
        stale.logs().contains("reconcile failed"),
        "A's attempt failed (and was logged)"
    );
    stale.kill();
    env.assert_no_secret_leaked(&[&fresh, PRIVATE_KEY]).await;
}

#[tokio::test]
async fn a_spec_changed_while_the_operator_was_down_after_the_secret_write_gets_a_fresh_token() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-fence-adopt").await;
    env.api_key_secret("creds").await;
    // Crash window: the Secret is written, the final status is not.
    env.operator = Some(paused_operator(&env, "after-secret", "120s"));
    env.linktoken("migration", ORG, &["203.0.113.0/24"]).await;
    let old = testkit::eventually(WAIT, "the Secret holds the first token", || async {
        env.token_in("migration", "linkToken").await
    })
    .await;
    let lt = env.get("migration").await.expect("LinkToken");
    assert!(
        in_flight(&lt),
        "the marker is still set (status not yet written)"
    );
    if let Some(op) = env.operator.as_mut() {
        op.kill();
    }

    // While the operator is down, the access list is edited.
    env.patch_linktoken(
        "migration",
        serde_json::json!({"spec": {"accessListIps": ["198.51.100.0/24"]}}),
    )
    .await;
    env.start_operator(&[]);
    let lt = env.wait_ready("migration").await;
    let issued_for = lt
        .status
        .as_ref()
        .and_then(|s| s.issued_for.clone())
        .expect("issuedFor");
    assert_eq!(
        issued_for.access_list_ips,
        vec!["198.51.100.0/24".to_string()]
    );
    let new = env.token_in("migration", "linkToken").await.expect("token");
    assert_ne!(
        new, old,
        "the token issued for the old access list is not adopted for the new one"
    );
    assert!(env.sim.state.is_token_live(&new));
    assert!(
        !env.sim.state.is_token_live(&old),
        "the old token was revoked"
    );
    assert_eq!(env.sim.state.live_links(ORG), 1);
    let link = &env.sim.state.snapshot().orgs[ORG].links[0];
    assert_eq!(
        link.access_list_ips,
        vec!["198.51.100.0/24".to_string()],
        "the live link has the new access list"
    );
    env.assert_no_secret_leaked(&[&old, &new, PRIVATE_KEY])
        .await;
}

#[tokio::test]
async fn a_resource_quota_forbidding_secrets_means_no_atlas_call_and_a_clear_reason() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-fence-quota").await;
    env.api_key_secret("creds").await;
    let quotas: kube::Api<ResourceQuota> = kube::Api::namespaced(env.client.clone(), &env.ns);
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "no-more-secrets"},
        "spec": {"hard": {"secrets": "1"}}
    }))
    .expect("quota");
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("create quota");
    // Quota admission enforces status.hard against status.used, which the resourcequota
    // controller computes; the test control plane does not run that controller, so record
    // what it would (the credentials Secret is the one Secret in the namespace).
    quotas
        .patch_status(
            "no-more-secrets",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "status": {"hard": {"secrets": "1"}, "used": {"secrets": "1"}}
            })),
        )
        .await
        .expect("quota status");
    // The API server's quota admission sees a new quota through its own cache: wait until it
    // refuses a Secret before the operator starts.
    testkit::eventually(WAIT, "the quota is enforced", || async {
        let probe = Secret {
            metadata: ObjectMeta {
                name: Some("probe".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        match env.secrets().create(&dry, &probe).await {
            Err(kube::Error::Api(s)) if s.code == 403 => Some(()),
            _ => None,
        }
    })
    .await;
    env.start_operator(&[]);
    env.linktoken("migration", ORG, &["203.0.113.0/24"]).await;

    env.wait_reason("migration", Reason::SecretWriteFailed, WAIT)
        .await;
    let (msg, stalled) = env.ready_message_and_stalled("migration").await;
    assert!(
        msg.contains("Secret migration") && msg.contains("quota"),
        "the Ready message names the Secret and the cause: {msg}"
    );
    assert_eq!(stalled, "False");
    let lt = env.get("migration").await.expect("LinkToken");
    assert!(!in_flight(&lt), "no marker: nothing was started in Atlas");
    env.wait_event("migration", "SecretWriteFailed", "Warning", WAIT)
        .await;
    // Retries (with backoff) keep failing at the dry-run: Atlas is never called.
    env.assert_quiet(Duration::from_secs(8)).await;
    assert_eq!(env.atlas_calls(), 0, "no call to Atlas at all");
    assert_eq!(issued(&env), 0);

    // Once the quota allows it, the token is issued.
    quotas
        .delete("no-more-secrets", &DeleteParams::default())
        .await
        .expect("delete quota");
    env.wait_ready("migration").await;
    let token = env.token_in("migration", "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&token));
    assert_eq!(issued(&env), 1, "exactly one token was minted");
    env.assert_no_secret_leaked(&[&token, PRIVATE_KEY]).await;
}

/// The preconditions the fencing relies on, checked on the real API server: a server-side apply
/// of `status` carrying an old `metadata.resourceVersion` is refused with 409 (and one carrying
/// the current version is accepted); a server-side apply of a Secret carrying an old
/// resourceVersion is refused with 409 even when forced; a create of an existing Secret is
/// refused with 409 AlreadyExists.
#[tokio::test]
async fn server_side_apply_with_a_stale_resource_version_is_refused() {
    let c = require_cluster!();
    let env = Env::new(c, "e2e-fence-rv").await;
    let lt = env.linktoken("migration", ORG, &["203.0.113.0/24"]).await;
    let old_rv = lt.metadata.resource_version.clone().expect("rv");
    env.patch_linktoken(
        "migration",
        serde_json::json!({"metadata": {"labels": {"edited": "yes"}}}),
    )
    .await;
    let status_at = |rv: String| {
        serde_json::json!({
            "apiVersion": "atlasmigration.io/v1alpha1",
            "kind": "LinkToken",
            "metadata": {"resourceVersion": rv},
            "status": {"tokenSecretName": "written-by-a-stale-actor"},
        })
    };
    let pp = PatchParams::apply("linktoken-operator").force();
    let stale = env
        .linktokens()
        .patch_status("migration", &pp, &Patch::Apply(status_at(old_rv)))
        .await;
    assert!(
        matches!(&stale, Err(kube::Error::Api(s)) if s.code == 409),
        "a status apply at an old resourceVersion is refused: {stale:?}"
    );
    let now = env.get("migration").await.expect("LinkToken");
    assert_eq!(
        now.status.and_then(|s| s.token_secret_name),
        None,
        "nothing was written"
    );
    let current_rv = now.metadata.resource_version.clone().expect("rv");
    env.linktokens()
        .patch_status("migration", &pp, &Patch::Apply(status_at(current_rv)))
        .await
        .expect("a status apply at the current resourceVersion is accepted");

    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("s".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".into(), ByteString(b"v1".to_vec()))])),
        ..Default::default()
    };
    let created = env
        .secrets()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create");
    let again = env.secrets().create(&PostParams::default(), &secret).await;
    assert!(
        matches!(&again, Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists"),
        "{again:?}"
    );
    env.secrets()
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"k": "djI="}})),
        )
        .await
        .expect("someone else edits the Secret");
    let apply = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "s",
            "resourceVersion": created.metadata.resource_version,
            "uid": created.metadata.uid,
        },
        "data": {"k": "c3RhbGU="},
    });
    let stale = env.secrets().patch("s", &pp, &Patch::Apply(apply)).await;
    assert!(
        matches!(&stale, Err(kube::Error::Api(s)) if s.code == 409),
        "a forced Secret apply at an old resourceVersion is refused: {stale:?}"
    );
    assert_eq!(
        env.token_in("s", "k").await.as_deref(),
        Some("v2"),
        "the edit survives"
    );
}

/// The Secret is created with a plain create (never taken over) and later updated with
/// server-side apply: what the operator stops writing (a renamed key, a label dropped from
/// the spec) must still disappear, as it did when every write was an apply.
#[tokio::test]
async fn fields_the_operator_stops_writing_leave_the_created_secret() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-fence-fields").await;
    env.api_key_secret("creds").await;
    env.start_operator(&[]);
    env.apply_yaml(&testkit::e2e::linktoken_yaml(
        "migration",
        ORG,
        &["203.0.113.0/24"],
        "creds",
        "  tokenSecret:\n    labels:\n      team: blue\n",
    ))
    .await;
    env.wait_ready("migration").await;
    let token = env.token_in("migration", "linkToken").await.expect("token");
    let calls = env.atlas_calls();

    env.patch_linktoken(
        "migration",
        serde_json::json!({"spec": {"tokenSecret": {"key": "token", "labels": null}}}),
    )
    .await;
    testkit::eventually(WAIT, "the token under the new key only", || async {
        let s = env.secrets().get("migration").await.ok()?;
        let data = s.data.clone()?;
        let labels = s.metadata.labels.clone().unwrap_or_default();
        (data.get("token").map(|v| v.0.clone()) == Some(token.clone().into_bytes())
            && !data.contains_key("linkToken")
            && !labels.contains_key("team"))
        .then_some(())
    })
    .await;
    env.wait_ready("migration").await;
    assert_eq!(env.atlas_calls(), calls, "no reissue for a key change");
    env.assert_no_secret_leaked(&[&token, PRIVATE_KEY]).await;
}

/// As above, but revoking the token minted for the user's Secret fails once: the marker stays,
/// and the next reconcile revokes before it settles on SecretConflict (no live link is left
/// behind while the LinkToken waits).
#[tokio::test]
async fn a_failed_revocation_after_a_secret_conflict_is_retried_before_waiting() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-fence-abandon").await;
    env.api_key_secret("creds").await;
    env.fault(testkit::e2e::status_fault(
        503,
        "SERVICE_UNAVAILABLE",
        Some("DELETE"),
        Some(1),
    ));
    env.operator = Some(paused_operator(&env, "after-post", "8s"));
    env.linktoken("migration", ORG, &[]).await;
    testkit::eventually(WAIT, "the token is minted", || async {
        (issued(&env) == 1).then_some(())
    })
    .await;
    let theirs = Secret {
        metadata: ObjectMeta {
            name: Some("migration".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("config".into(), "user-data".into())])),
        ..Default::default()
    };
    let before = env
        .secrets()
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create the user's Secret");
    let lt = env
        .wait_reason("migration", Reason::SecretConflict, WAIT)
        .await;
    assert!(
        !in_flight(&lt),
        "the marker is cleared once the token is revoked"
    );
    assert_eq!(env.sim.state.live_links(ORG), 0, "no live link is left");
    assert_eq!(
        env.sim.state.snapshot().orgs[ORG].revoked,
        1,
        "the minted token was revoked on the retry"
    );
    assert_eq!(
        env.sim
            .state
            .calls("DELETE", atlas_sim::CallKind::LinkTokens, 503),
        1,
        "the first revocation failed (the fault was used)"
    );
    let after = env.secrets().get("migration").await.expect("secret");
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(after.data, before.data);
    env.assert_quiet(Duration::from_secs(5)).await;
}
