//! End to end: org ownership is a claim (issue 13, defects 2 and 7). The promise checked after
//! every scenario: at most one live link per org in atlas-sim, and every Ready LinkToken's
//! Secret holds a token atlas-sim reports live (asked through the sim's admin API, as an
//! operator of a real Atlas would check the org's link).
use testkit::require_cluster;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use linktoken_operator::api::{LinkToken, Reason};
use testkit::e2e::{Env, ORG, PRIVATE_KEY, PUBLIC_KEY, linktoken_yaml, status_fault};
use testkit::eventually;

/// Two more orgs the demo API key owns (see `SimConfig::demo`).
const ORG_B: &str = "5f1e9b2a3c4d5e6f7a8b9c0e";
const ORG_C: &str = "5f1e9b2a3c4d5e6f7a8b9c0f";
/// An org atlas-sim does not know (POST answers 404).
const UNKNOWN_ORG: &str = "ffffffffffffffffffffffff";

/// Asks atlas-sim's admin API whether a token is live.
async fn live_in_sim(env: &Env, token: &str) -> bool {
    let body = serde_json::json!({ "linkToken": token }).to_string();
    let resp = reqwest::Client::new()
        .post(format!("{}/check-token", env.sim.admin_url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("admin API check-token");
    let text = resp.text().await.expect("admin API body");
    let v: serde_json::Value = serde_json::from_str(&text).expect("admin API json");
    v["live"] == serde_json::Value::Bool(true)
}

/// The promise after each scenario: at most one live link per org, and every Ready LinkToken
/// (of `namespaces`) has a live token in its Secret.
async fn assert_one_live_link_per_org_and_ready_means_live(env: &Env, namespaces: &[&str]) {
    env.assert_at_most_one_link_per_org();
    for ns in namespaces {
        let lts: Api<LinkToken> = Api::namespaced(env.client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(env.client.clone(), ns);
        for lt in lts.list(&Default::default()).await.expect("list").items {
            let name = lt.metadata.name.clone().unwrap_or_default();
            let ready = lt.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if !ready {
                continue;
            }
            let secret_name = lt.spec.token_secret_name(&name);
            let token = secrets
                .get_opt(&secret_name)
                .await
                .expect("get Secret")
                .and_then(|s| s.data?.get("linkToken").map(|v| v.0.clone()))
                .and_then(|v| String::from_utf8(v).ok())
                .unwrap_or_default();
            assert!(
                live_in_sim(env, &token).await,
                "{ns}/{name} reports Ready but its Secret's token is not live in atlas-sim"
            );
        }
    }
}

async fn ready_reason(env: &Env, name: &str) -> Option<String> {
    let lt = env.get(name).await?;
    lt.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason)
}

/// Creation timestamps have one-second resolution: wait so the next object is younger.
async fn next_second() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

/// X owns org A and Y waits for it; X's orgId is edited to an org where every POST fails.
/// Y must take over and stay Ready with a live token while X keeps failing (X must never
/// DELETE in A again).
async fn owner_moved_to_a_failing_org(prefix: &str, failing_org: &str, x_fails_with: Reason) {
    let c = require_cluster!();
    let mut env = Env::new(c, prefix).await;
    env.api_key_secret("creds").await;
    env.start_operator(&[]);
    env.linktoken("x", ORG, &["203.0.113.0/24"]).await;
    env.wait_ready("x").await;
    let x_token = env.token_in("x", "linkToken").await.expect("x token");
    next_second().await;
    env.linktoken("y", ORG, &["203.0.113.0/24"]).await;
    env.wait_reason("y", Reason::OrgConflict, Duration::from_secs(30))
        .await;

    if failing_org == ORG_B {
        // Every POST in B fails with 503: X retries with backoff for as long as it lives.
        env.fault(atlas_sim::FaultSpec {
            org_id: Some(ORG_B.into()),
            ..status_fault(503, "SERVICE_UNAVAILABLE", Some("POST"), None)
        });
    }
    env.patch_linktoken("x", serde_json::json!({"spec": {"orgId": failing_org}}))
        .await;

    env.wait_reason("y", Reason::TokenIssued, Duration::from_secs(30))
        .await;
    let y_token = env.token_in("y", "linkToken").await.expect("y token");
    assert!(
        live_in_sim(&env, &y_token).await,
        "y's token is live in atlas-sim"
    );
    assert!(
        !live_in_sim(&env, &x_token).await,
        "x revoked its link in the org it left"
    );
    env.wait_reason("x", x_fails_with, Duration::from_secs(30))
        .await;

    // Several of X's retries later, Y's token is still the org's live link.
    let calls_before = env.atlas_calls();
    tokio::time::sleep(Duration::from_secs(12)).await;
    if failing_org == ORG_B {
        assert!(
            env.atlas_calls() > calls_before + 1,
            "x kept retrying its failing org"
        );
    }
    assert!(
        live_in_sim(&env, &y_token).await,
        "y's token was revoked by x's retries"
    );
    assert_eq!(env.sim.state.live_links(ORG), 1);
    assert_eq!(
        env.token_in("y", "linkToken").await.as_deref(),
        Some(y_token.as_str())
    );
    assert_ne!(
        ready_reason(&env, "x").await.as_deref(),
        Some("TokenIssued"),
        "x keeps failing"
    );
    assert_one_live_link_per_org_and_ready_means_live(&env, &[&env.ns]).await;
    env.assert_no_secret_leaked(&[&x_token, &y_token, PRIVATE_KEY, PUBLIC_KEY])
        .await;
}

#[tokio::test]
async fn an_owner_moved_to_an_org_that_keeps_failing_never_revokes_the_new_owners_token() {
    owner_moved_to_a_failing_org("claims-5xx", ORG_B, Reason::AtlasUnavailable).await;
}

#[tokio::test]
async fn an_owner_moved_to_an_unknown_org_hands_its_org_to_the_waiting_linktoken() {
    owner_moved_to_a_failing_org("claims-404", UNKNOWN_ORG, Reason::OrgNotFound).await;
}

/// X owns A, Z owns C; X's orgId is moved to C. X must revoke its link in A and wait in
/// OrgConflict; Z's link in C stays the only one, live.
#[tokio::test]
async fn an_orgid_moved_into_a_conflicted_org_revokes_the_old_link_and_never_makes_a_second() {
    let c = require_cluster!();
    let mut env = Env::new(c, "claims-move").await;
    env.api_key_secret("creds").await;
    env.start_operator(&[]);
    // X is the older one: age alone would make it the owner of C.
    env.linktoken("x", ORG, &["203.0.113.0/24"]).await;
    env.wait_ready("x").await;
    next_second().await;
    env.linktoken("z", ORG_C, &["203.0.113.0/24"]).await;
    env.wait_ready("z").await;
    let x_token = env.token_in("x", "linkToken").await.expect("x token");
    let z_token = env.token_in("z", "linkToken").await.expect("z token");

    env.patch_linktoken("x", serde_json::json!({"spec": {"orgId": ORG_C}}))
        .await;
    env.wait_reason("x", Reason::OrgConflict, Duration::from_secs(30))
        .await;
    eventually(Duration::from_secs(10), "x's old link revoked", || async {
        (!live_in_sim(&env, &x_token).await).then_some(())
    })
    .await;
    assert_eq!(env.sim.state.live_links(ORG), 0, "nothing live in A");
    assert_eq!(env.sim.state.live_links(ORG_C), 1, "one link in C");
    assert!(
        live_in_sim(&env, &z_token).await,
        "z's link is the live one"
    );
    env.wait_event("x", "TokenRevoked", "Normal", Duration::from_secs(10))
        .await;

    // And it stays so: no churn, no second link.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(live_in_sim(&env, &z_token).await);
    assert_eq!(
        ready_reason(&env, "z").await.as_deref(),
        Some("TokenIssued")
    );
    assert_eq!(
        ready_reason(&env, "x").await.as_deref(),
        Some("OrgConflict")
    );
    assert_one_live_link_per_org_and_ready_means_live(&env, &[&env.ns]).await;

    // Deleting the waiting X never DELETEs in C (z holds the live link there).
    env.delete_linktoken("x").await;
    env.wait_linktoken_gone("x", Duration::from_secs(30)).await;
    assert!(
        live_in_sim(&env, &z_token).await,
        "z's link survived x's deletion"
    );
    assert_one_live_link_per_org_and_ready_means_live(&env, &[&env.ns]).await;
}

/// X's credentials are switched to a key that owns only org B and its orgId moved to B: the
/// revocation in A is refused (403). That is a RevocationSkipped warning naming A, not a
/// Stalled loop: X lets A go and becomes Ready in B.
#[tokio::test]
async fn a_refused_revocation_in_the_previous_org_is_a_warning_not_a_stall() {
    let c = require_cluster!();
    let mut env = Env::new(c, "claims-403").await;
    env.api_key_secret("creds").await;
    env.add_api_key(
        "pubonlyb",
        "private-key-only-b",
        ORG_B,
        atlas_sim::ORG_OWNER,
    );
    env.start_operator(&[]);
    env.linktoken("x", ORG, &["203.0.113.0/24"]).await;
    env.wait_ready("x").await;
    let old = env.token_in("x", "linkToken").await.expect("token");

    env.update_secret_data(
        "creds",
        &[
            ("publicApiKey", "pubonlyb"),
            ("privateApiKey", "private-key-only-b"),
        ],
    )
    .await;
    env.patch_linktoken("x", serde_json::json!({"spec": {"orgId": ORG_B}}))
        .await;
    env.wait_event("x", "RevocationSkipped", "Warning", Duration::from_secs(30))
        .await;
    let new = env.wait_new_token("x", &old, Duration::from_secs(30)).await;
    let lt = env.wait_ready("x").await;
    assert_eq!(
        lt.status
            .and_then(|s| s.issued_for)
            .map(|i| i.org_id)
            .as_deref(),
        Some(ORG_B)
    );
    assert!(live_in_sim(&env, &new).await);
    env.wait_events(
        "x",
        "a RevocationSkipped naming the previous org",
        Duration::from_secs(10),
        |events| {
            events
                .iter()
                .any(|(r, _, note)| r == "RevocationSkipped" && note.contains(ORG))
        },
    )
    .await;
    let (_, stalled) = env.ready_message_and_stalled("x").await;
    assert_ne!(stalled, "True");
    assert_one_live_link_per_org_and_ready_means_live(&env, &[&env.ns]).await;
    env.assert_no_secret_leaked(&[&old, &new, "private-key-only-b", PRIVATE_KEY])
        .await;
}

/// A LinkToken in `ns` (server-side apply).
async fn linktoken_in(env: &Env, ns: &str, name: &str, org: &str, creds: &str) {
    let lt: LinkToken =
        serde_saphyr::from_str(&linktoken_yaml(name, org, &["203.0.113.0/24"], creds, ""))
            .expect("yaml");
    let mut body = serde_json::to_value(&lt).expect("json");
    body["apiVersion"] = "atlasmigration.io/v1alpha1".into();
    body["kind"] = "LinkToken".into();
    let api: Api<LinkToken> = Api::namespaced(env.client.clone(), ns);
    api.patch(
        name,
        &PatchParams::apply("linktoken-tests").force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("apply LinkToken");
}

async fn reason_in(env: &Env, ns: &str, name: &str) -> Option<String> {
    let api: Api<LinkToken> = Api::namespaced(env.client.clone(), ns);
    api.get_opt(name)
        .await
        .ok()??
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason)
}

/// Starts the operator watching `namespaces` (the e2e spawner watches `env.ns`; it is
/// pointed at the comma-separated list for the spawn).
fn start_operator_for(env: &mut Env, namespaces: &[&str]) {
    let own = env.ns.clone();
    env.ns = namespaces.join(",");
    let op = env.spawn_operator(&[]);
    env.ns = own;
    env.operator = Some(op);
}

/// Tenants who may create LinkTokens only in their own namespace cannot squat an org: one
/// without any credentials Secret and one whose credentials Atlas rejects (401), both older,
/// do not block a real LinkToken for the same org in another namespace.
#[tokio::test]
async fn a_squatter_without_usable_credentials_does_not_block_a_real_linktoken() {
    let c = require_cluster!();
    let mut env = Env::new(c, "claims-good").await;
    let evil = c.namespace("claims-evil").await;
    env.api_key_secret("creds").await;
    env.put_secret_in(
        &evil,
        "bogus",
        &[("publicApiKey", "nobody"), ("privateApiKey", "not-a-key")],
    )
    .await;
    linktoken_in(&env, &evil, "no-creds", ORG, "missing").await;
    linktoken_in(&env, &evil, "bad-creds", ORG, "bogus").await;
    next_second().await;
    env.linktoken("real", ORG, &["203.0.113.0/24"]).await;

    let good = env.ns.clone();
    start_operator_for(&mut env, &[&good, &evil]);
    env.wait_ready("real").await;
    let token = env.token_in("real", "linkToken").await.expect("token");
    assert!(live_in_sim(&env, &token).await);
    // The one Atlas refused either still says so, or, looked at again after `real` issued,
    // waits behind `real`'s live link: never Ready, never the org's owner.
    eventually(Duration::from_secs(30), "squatters report", || async {
        let a = reason_in(&env, &evil, "no-creds").await?;
        let b = reason_in(&env, &evil, "bad-creds").await?;
        (a == "CredentialsNotFound" && (b == "AtlasUnauthorized" || b == "OrgConflict"))
            .then_some(())
    })
    .await;
    // Stable: the squatters never take the org back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(live_in_sim(&env, &token).await);
    assert_eq!(env.sim.state.live_links(ORG), 1);
    assert_one_live_link_per_org_and_ready_means_live(&env, &[&env.ns, &evil]).await;
}

/// kubectl with the cluster admin's kubeconfig; panics on failure, returns stdout.
fn kubectl(c: &testkit::TestCluster, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut cmd = c.kubectl();
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The operator's ClusterRole rules (deploy/linktoken-operator.yaml), under a unique name.
fn operator_cluster_role(name: &str) -> String {
    format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {name}
rules:
  - apiGroups: ["atlasmigration.io"]
    resources: ["linktokens"]
    verbs: ["get", "list", "watch", "patch"]
  - apiGroups: ["atlasmigration.io"]
    resources: ["linktokens/status"]
    verbs: ["patch"]
  - apiGroups: ["atlasmigration.io"]
    resources: ["linktokens/finalizers"]
    verbs: ["update"]
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
"#
    )
}

fn role_binding(ns: &str, role: &str, sa_ns: &str) -> String {
    format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: linktoken-operator
  namespace: {ns}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {role}
subjects:
  - kind: ServiceAccount
    name: linktoken-operator
    namespace: {sa_ns}
"#
    )
}

/// Two `--watch-namespaces` scopes, each with a LinkToken for the same org, created before
/// the operator starts; the second scope's cache syncs seconds after the first (its
/// RoleBinding arrives late, as with a per-namespace rollout). Ownership is decided only once
/// both caches are synced, so exactly one link is ever issued and the other LinkToken waits.
#[tokio::test]
async fn two_scopes_at_startup_with_the_same_org_make_exactly_one_live_link() {
    let c = require_cluster!();
    let mut env = Env::new(c, "claims-s1").await;
    let other = c.namespace("claims-s2").await;
    let own = env.ns.clone();
    env.api_key_secret("creds").await;
    env.put_secret_in(
        &other,
        "creds",
        &[("publicApiKey", PUBLIC_KEY), ("privateApiKey", PRIVATE_KEY)],
    )
    .await;
    // The older one lives in the scope that syncs late: a scope that reconciled before the
    // other's cache synced would see no rival and issue, and then the older one would too.
    linktoken_in(&env, &other, "first", ORG, "creds").await;
    next_second().await;
    env.linktoken("second", ORG, &["203.0.113.0/24"]).await;

    let role = format!("linktoken-operator-{own}");
    kubectl(
        c,
        &["apply", "-f", "-"],
        Some(&operator_cluster_role(&role)),
    );
    kubectl(
        c,
        &["apply", "-f", "-"],
        Some(&role_binding(&own, &role, &own)),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    kubectl(
        c,
        &["create", "serviceaccount", "linktoken-operator", "-n", &own],
        None,
    );
    let kubeconfig = c.service_account_kubeconfig(&own, "linktoken-operator", dir.path());
    env.ns = format!("{own},{other}");
    let op = env.spawn_operator_with_kubeconfig(&kubeconfig, &[]);
    env.ns = own.clone();
    env.operator = Some(op);

    // The first scope is synced, the second cannot even list: nothing may be issued yet.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        env.sim.state.live_links(ORG),
        0,
        "a LinkToken issued before every scope's cache was synced"
    );
    kubectl(
        c,
        &["apply", "-f", "-"],
        Some(&role_binding(&other, &role, &own)),
    );

    eventually(
        Duration::from_secs(60),
        "one Ready, one OrgConflict",
        || async {
            let a = reason_in(&env, &other, "first").await?;
            let b = reason_in(&env, &own, "second").await?;
            (a == "TokenIssued" && b == "OrgConflict").then_some(())
        },
    )
    .await;
    assert_eq!(env.sim.state.live_links(ORG), 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.sim.state.snapshot().orgs[ORG].issued,
        1,
        "exactly one link was ever issued for the org"
    );
    assert_one_live_link_per_org_and_ready_means_live(&env, &[&own, &other]).await;
    kubectl(c, &["delete", "clusterrole", &role], None);
}
