//! The link at the source (spec.source), end to end: the operator binary on the real control
//! plane, atlas-sim serving both Atlas and the Cloud Manager / Ops Manager side. What a user
//! depends on:
//! - Ready means the whole declared state: the token is issued AND the source org is linked
//!   with it and reports SYNCED (reason Linked, condition Linked);
//! - a rotation re-links with the new token, and the old token is dead on both sides;
//! - deletion removes the link at the source before the token is revoked in Atlas;
//! - every source failure has its own reason, with the source's error code, and no hot loop;
//! - a SIGKILL inside the link's windows ends with one live token, linked once;
//! - an Ops Manager with a private CA is reached through spec.source.caBundle;
//! - no token or source credential appears in logs, events or status.
use testkit::require_cluster;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use atlas_sim::{
    ApiKeyConfig, FaultSpec, FaultTarget, ORG_OWNER, SimConfig, SimServer, SimTls, SourceOrgConfig,
    TokenStatus, roles,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{ObjectMeta, PostParams, WatchEvent, WatchParams};
use linktoken_operator::api::{LinkToken, Reason};
use linktoken_operator::atlas::{AtlasClient, AtlasConfig, Credentials};
use linktoken_operator::source::{AllowedSources, SourceClient, SourceConfig, Target};
use sha2::{Digest, Sha256};
use testkit::e2e::{Env, ORG, PRIVATE_KEY, PUBLIC_KEY, condition, linktoken_yaml, status_fault};
use testkit::eventually;
use testkit::kstatus::{kstatus_bin, kstatus_of};
use testkit::operator::PAUSE_ENV;

const WAIT: Duration = Duration::from_secs(45);
/// The demo source org and its Organization Owner key (atlas-sim's demo configuration).
const SOURCE_ORG: &str = "6a1e9b2a3c4d5e6f7a8b9c0d";
const SOURCE_PUBLIC: &str = "demosourcepublic";
const SOURCE_PRIVATE: &str = "demo-source-private-0000";

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn source_url(env: &Env) -> String {
    env.sim
        .source_url()
        .expect("atlas-sim serves the source port")
}

/// The `source:` block of a LinkToken spec (indented for `linktoken_yaml`).
fn source_spec(url: &str, org: &str, creds: &str, extra: &str) -> String {
    format!(
        "  source:\n    url: \"{url}\"\n    orgId: \"{org}\"\n    credentialsSecretRef:\n      name: {creds}\n{extra}"
    )
}

async fn source_key_secret(env: &Env, name: &str, private: &str) {
    env.put_secret(
        name,
        &[("publicApiKey", SOURCE_PUBLIC), ("privateApiKey", private)],
    )
    .await;
}

/// LinkToken `migration` (Atlas org ORG, credentials `creds`) linked to the demo source org with
/// `source-creds`, plus `extra` lines under `source:`.
async fn apply_migration(env: &Env, extra: &str) {
    let url = source_url(env);
    env.apply_yaml(&linktoken_yaml(
        "migration",
        ORG,
        &[],
        "creds",
        &source_spec(&url, SOURCE_ORG, "source-creds", extra),
    ))
    .await;
}

/// A LinkToken `name` for Atlas org `org`, linked to source org `source_org`.
async fn linked_token(env: &Env, name: &str, org: &str, source_org: &str, creds: &str) {
    let url = source_url(env);
    env.apply_yaml(&linktoken_yaml(
        name,
        org,
        &[],
        "creds",
        &source_spec(&url, source_org, creds, ""),
    ))
    .await;
}

/// Waits for Ready reason Linked, and checks what it promises: the Secret's token is live in
/// Atlas, the source org holds exactly that token and reports SYNCED, status records it.
async fn wait_linked(env: &Env, name: &str, source_org: &str) -> String {
    let lt = env.wait_reason(name, Reason::Linked, WAIT).await;
    assert_eq!(condition(&lt, "Ready").0, "True");
    assert_eq!(
        condition(&lt, "Linked").0,
        "True",
        "{:?}",
        condition(&lt, "Linked")
    );
    assert_eq!(condition(&lt, "Reconciling").0, "False");
    assert_eq!(condition(&lt, "Stalled").0, "False");
    let token = env.token_in(name, "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&token));
    let sha = sha256_hex(token.as_bytes());
    let link = env
        .sim
        .state
        .source_link(source_org)
        .expect("the source org is linked");
    assert_eq!(
        link.token_sha256, sha,
        "the source holds the Secret's token"
    );
    assert_eq!(
        env.sim.state.source_status(source_org),
        Some(atlas_sim::SyncStatus::Synced)
    );
    let st = lt.status.expect("status");
    let recorded = st.link.expect("status.link");
    assert_eq!(recorded.token_sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(recorded.posting_sha256, None, "no marker left");
    assert_eq!(recorded.sync_status.as_deref(), Some("SYNCED"));
    token
}

/// A namespace, atlas-sim, the credentials Secrets `creds` (Atlas) and `source-creds` (the demo
/// source key), and the operator started with `args`.
async fn source_env(c: &'static testkit::TestCluster, prefix: &str, args: &[&str]) -> Env {
    let mut env = Env::new(c, prefix).await;
    env.api_key_secret("creds").await;
    source_key_secret(&env, "source-creds", SOURCE_PRIVATE).await;
    env.start_operator(args);
    env
}

/// A namespace, atlas-sim, the operator, and LinkToken `migration` (Atlas org ORG) linked to
/// the demo source org; returns the linked token.
async fn linked_env(c: &'static testkit::TestCluster, prefix: &str) -> (Env, String) {
    let env = source_env(c, prefix, &[]).await;
    linked_token(&env, "migration", ORG, SOURCE_ORG, "source-creds").await;
    let token = wait_linked(&env, "migration", SOURCE_ORG).await;
    (env, token)
}

/// Source-port calls with this method and status so far.
fn source_calls(env: &Env, method: &str, status: u16) -> usize {
    env.sim
        .state
        .source_calls()
        .iter()
        .filter(|c| c.method == method && c.status == status)
        .count()
}

fn source_fault(status: u16, code: &str, method: Option<&str>, org: &str) -> FaultSpec {
    FaultSpec {
        org_id: Some(org.to_string()),
        target: FaultTarget::Source,
        ..status_fault(status, code, method, None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_end_to_end_with_api_keys_and_nothing_secret_leaks() {
    let c = require_cluster!();
    let (env, token) = linked_env(c, "src-linked").await;

    // Linked once: one accepted POST at the source, one live token in Atlas.
    assert_eq!(source_calls(&env, "POST", 200), 1);
    assert_eq!(env.sim.state.live_links(ORG), 1);
    env.wait_event("migration", "Linked", "Normal", WAIT).await;

    // The steady state asks the status, never posts again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(source_calls(&env, "POST", 200), 1);
    // Counted in a metric of their own, not as Atlas requests.
    let url = env.operator.as_ref().expect("operator").metrics_url();
    let metrics = reqwest::get(url)
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.lines().any(|l| l
            == r#"linktoken_source_requests_total{method="POST",status="200",error_code=""} 1"#),
        "{metrics}"
    );

    env.assert_no_secret_leaked(&[&token, SOURCE_PRIVATE, PRIVATE_KEY])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_relinks_and_the_old_token_is_dead_on_both_sides() {
    let c = require_cluster!();
    let (env, old) = linked_env(c, "src-rotate").await;

    env.rotate("migration", "1").await;
    let new = env.wait_new_token("migration", &old, WAIT).await;
    let new_linked = eventually(WAIT, "linked with the new token", || async {
        let t = wait_linked(&env, "migration", SOURCE_ORG).await;
        (t == new).then_some(t)
    })
    .await;
    assert_eq!(new_linked, new);
    // The old token: revoked in Atlas, and no longer what the source holds.
    assert!(env.revoked(&old), "the old token is revoked in Atlas");
    let link = env.sim.state.source_link(SOURCE_ORG).expect("link");
    assert_ne!(link.token_sha256, sha256_hex(old.as_bytes()));
    assert_eq!(env.sim.state.live_links(ORG), 1);
    // The source refused a second link (409) and the operator unlinked, then linked.
    assert!(
        source_calls(&env, "POST", 409) >= 1,
        "{:?}",
        env.sim.state.source_calls()
    );
    assert!(source_calls(&env, "DELETE", 204) >= 1);
    assert_eq!(source_calls(&env, "POST", 200), 2);
    env.wait_event("migration", "Relinked", "Normal", WAIT)
        .await;
    env.assert_no_secret_leaked(&[&old, &new, SOURCE_PRIVATE])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_unlinks_at_the_source_before_revoking_in_atlas() {
    let c = require_cluster!();
    let (env, token) = linked_env(c, "src-delete").await;

    // The source cannot unlink (503): the token must stay live in Atlas meanwhile, or the
    // source would be left linked to a dead token.
    env.fault(source_fault(
        503,
        "SERVICE_UNAVAILABLE",
        Some("DELETE"),
        SOURCE_ORG,
    ));
    env.delete_linktoken("migration").await;
    env.wait_reason("migration", Reason::RevocationBlocked, WAIT)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.sim.state.is_token_live(&token),
        "no revocation in Atlas before the source link is gone"
    );
    assert!(env.sim.state.source_link(SOURCE_ORG).is_some());

    env.sim.state.clear_faults();
    env.wait_linktoken_gone("migration", WAIT).await;
    assert!(env.sim.state.source_link(SOURCE_ORG).is_none(), "unlinked");
    assert!(env.revoked(&token), "then revoked");
    assert_eq!(env.sim.state.live_links(ORG), 0);
}

/// LinkToken `name` in an Atlas org of its own (the `i`th; one link per Atlas org, so each
/// LinkToken of a test needs one), with that org's API key, linked to `source_org` with the
/// source credentials Secret `creds`.
async fn own_linked_token(env: &Env, i: usize, name: &str, source_org: &str, creds: &str) {
    let org = format!("a{i:07x}0000000000000000");
    env.add_owned_org(&org);
    let key = format!("{name}-atlas");
    env.put_secret(
        &key,
        &[
            ("publicApiKey", &format!("pub{}", &org[..8])),
            ("privateApiKey", "private-key-of-a-test-org"),
        ],
    )
    .await;
    let url = source_url(env);
    env.apply_yaml(&linktoken_yaml(
        name,
        &org,
        &[],
        &key,
        &source_spec(&url, source_org, creds, ""),
    ))
    .await;
}

/// Adds source orgs `orgs` to atlas-sim and an API key `public` that is Organization Owner of
/// `owns`, with its credentials Secret `{public}-creds` (private key `{public}-private`).
async fn source_owner(env: &Env, public: &str, orgs: &[&str], owns: &[&str]) {
    for o in orgs {
        env.sim
            .state
            .add_source_org(SourceOrgConfig::new(o, "test source org"))
            .expect("add source org");
    }
    let private = format!("{public}-private");
    let roles = owns.iter().flat_map(|o| roles(o, ORG_OWNER)).collect();
    env.sim
        .state
        .add_source_api_key(ApiKeyConfig::new(public, &private, roles))
        .expect("add key");
    env.put_secret(
        &format!("{public}-creds"),
        &[("publicApiKey", public), ("privateApiKey", &private)],
    )
    .await;
}

/// One LinkToken per failure, each with its own Atlas org and source org. Each ends with its
/// reason (Stalled for what only a user can fix, Reconciling for transient trouble), the
/// message carries the source's error code where there is one, and the source is not polled
/// in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_failure_maps_to_its_reason_without_a_hot_loop() {
    let c = require_cluster!();
    let mut env = Env::new(c, "src-fail").await;
    env.api_key_secret("creds").await;
    source_key_secret(&env, "source-creds", SOURCE_PRIVATE).await;
    source_key_secret(&env, "wrong-creds", "not-the-private-key").await;
    // Both kinds of credentials in one Secret: which to use would be a guess.
    env.put_secret(
        "both-creds",
        &[
            ("publicApiKey", SOURCE_PUBLIC),
            ("privateApiKey", SOURCE_PRIVATE),
            ("clientId", "x"),
            ("clientSecret", "y"),
        ],
    )
    .await;
    // A key that exists but is Organization Owner of another source org only.
    let other_owned = "0000000000000000000000b1";
    let not_owner = "0000000000000000000000b2";
    source_owner(&env, "notowner", &[other_owned, not_owner], &[other_owned]).await;
    let rejected_org = "0000000000000000000000b3";
    let unavailable_org = "0000000000000000000000b4";
    let both = [rejected_org, unavailable_org];
    source_owner(&env, "owner2", &both, &both).await;
    env.fault(source_fault(
        400,
        "INVALID_LINK_TOKEN",
        Some("POST"),
        rejected_org,
    ));
    env.fault(source_fault(
        503,
        "SERVICE_UNAVAILABLE",
        None,
        unavailable_org,
    ));

    let unknown_org = "0000000000000000000000bf";
    // (name, source org, credentials Secret, reason, stalled, text the message must hold)
    let cases: [(&str, &str, &str, Reason, bool, &str); 7] = [
        (
            "unauthorized",
            SOURCE_ORG,
            "wrong-creds",
            Reason::SourceUnauthorized,
            true,
            "401",
        ),
        (
            "forbidden",
            not_owner,
            "notowner-creds",
            Reason::SourceForbidden,
            true,
            "403",
        ),
        (
            "org-not-found",
            unknown_org,
            "source-creds",
            Reason::SourceOrgNotFound,
            true,
            "404",
        ),
        (
            "rejected",
            rejected_org,
            "owner2-creds",
            Reason::SourceRejected,
            true,
            "INVALID_LINK_TOKEN",
        ),
        (
            "unavailable",
            unavailable_org,
            "owner2-creds",
            Reason::SourceUnavailable,
            false,
            "SERVICE_UNAVAILABLE",
        ),
        (
            "no-creds",
            SOURCE_ORG,
            "absent-creds",
            Reason::SourceCredentialsNotFound,
            true,
            "absent-creds",
        ),
        (
            "both-kinds",
            SOURCE_ORG,
            "both-creds",
            Reason::SourceConfigInvalid,
            true,
            "keep only one",
        ),
    ];
    // No grace for a missing credentials Secret: Stalled at once (the grace has its own test).
    env.start_operator(&["--credentials-grace=0s"]);
    for (i, (name, source_org, creds, ..)) in cases.iter().enumerate() {
        own_linked_token(&env, i, name, source_org, creds).await;
    }
    for (name, _, _, reason, stalled, text) in &cases {
        let lt = env.wait_reason(name, *reason, WAIT).await;
        let (ready, _, message) = condition(&lt, "Ready");
        assert_eq!(ready, "False", "{name}");
        let (linked, linked_reason, _) = condition(&lt, "Linked");
        assert_eq!(
            (linked.as_str(), linked_reason.as_str()),
            ("False", reason.as_str()),
            "{name}"
        );
        let want = if *stalled { "True" } else { "False" };
        assert_eq!(condition(&lt, "Stalled").0, want, "{name}: Stalled");
        assert_eq!(
            condition(&lt, "Reconciling").0,
            if *stalled { "False" } else { "True" },
            "{name}: Reconciling"
        );
        assert!(message.contains(text), "{name}: {message}");
        // The token was issued: only the link is missing.
        assert!(env.token_in(name, "linkToken").await.is_some(), "{name}");
    }
    // No hot loop: with --retry-base-delay=500ms and --retry-max-delay=5s, a backing-off
    // retry makes at most a handful of calls per LinkToken in 10 s.
    let before = env.sim.state.source_calls().len();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = env.sim.state.source_calls().len() - before;
    let per_token = during as f64 / cases.len() as f64;
    eprintln!(
        "source calls in {:.0?} over {} failing LinkTokens: {during}",
        started.elapsed(),
        cases.len()
    );
    assert!(
        per_token <= 8.0,
        "{during} source calls in 10 s: a hot loop"
    );
    env.assert_no_secret_leaked(&[
        SOURCE_PRIVATE,
        "not-the-private-key",
        "owner2-private",
        "notowner-private",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_refuses_a_cleartext_source_and_two_ca_refs() {
    let c = require_cluster!();
    let env = Env::new(c, "src-crd").await;
    let api = env.linktokens();
    let bad = |name: &str, source: &str| {
        let yaml = linktoken_yaml(name, ORG, &[], "creds", source);
        serde_saphyr::from_str::<LinkToken>(&yaml).expect("yaml")
    };
    for (name, source, want) in [
        (
            "cleartext",
            source_spec("http://opsmanager.example:8080", SOURCE_ORG, "s", ""),
            "https://",
        ),
        (
            "userinfo",
            source_spec("https://u:p@opsmanager.example", SOURCE_ORG, "s", ""),
            "user info",
        ),
        (
            "two-refs",
            source_spec(
                "https://opsmanager.example",
                SOURCE_ORG,
                "s",
                "    caBundle:\n      secretKeyRef: {name: a, key: ca.crt}\n      configMapKeyRef: {name: b, key: ca.crt}\n",
            ),
            "exactly one",
        ),
        (
            "bad-org",
            source_spec("https://opsmanager.example", "XYZ", "s", ""),
            "orgId",
        ),
    ] {
        let e = api
            .create(&PostParams::default(), &bad(name, &source))
            .await
            .expect_err(name);
        assert!(e.to_string().contains(want), "{name}: {e}");
    }
    // Loopback http (a local simulator) and the Cloud Manager default are accepted.
    let ok = bad(
        "loopback",
        &source_spec("http://127.0.0.1:8092", SOURCE_ORG, "s", ""),
    );
    api.create(&PostParams::default(), &ok)
        .await
        .expect("loopback http");
    let yaml = linktoken_yaml(
        "default-url",
        ORG,
        &[],
        "creds",
        &format!("  source:\n    orgId: \"{SOURCE_ORG}\"\n    credentialsSecretRef: {{name: s}}\n"),
    );
    let lt: LinkToken = serde_saphyr::from_str(&yaml).expect("yaml");
    let created = api
        .create(&PostParams::default(), &lt)
        .await
        .expect("default url");
    assert_eq!(
        created.spec.source.expect("source").url,
        "https://cloud.mongodb.com"
    );
}

/// An Ops Manager with a private CA: atlas-sim serves TLS with a CA generated for the test
/// (the operator trusts it for Atlas through --atlas-ca-file only). Without caBundle the
/// source is a TLS failure (SourceUnavailable, naming it); with the CA in a ConfigMap it links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ops_manager_with_a_private_ca_is_linked_through_the_ca_bundle() {
    let c = require_cluster!();
    c.apply_crd(&linktoken_operator::api::crd::crd()).await;
    let ns = c.namespace("src-tls").await;
    let client = c.client().await;
    let tls = SimTls::generate(&[]).expect("generate CA");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let sim = SimServer::start_tls(SimConfig::demo(), any, any, &tls)
        .await
        .expect("start atlas-sim with TLS");
    let url = sim.source_url().expect("source port");
    assert!(url.starts_with("https://"), "{url}");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &tls.ca_pem).expect("write CA");
    let mut env = Env {
        cluster: c,
        ns,
        client,
        sim,
        operator: None,
    };
    env.api_key_secret("creds").await;
    source_key_secret(&env, "source-creds", SOURCE_PRIVATE).await;
    let ca_arg = format!("--atlas-ca-file={}", ca_file.display());
    env.start_operator(&[&ca_arg]);
    env.apply_yaml(&linktoken_yaml(
        "migration",
        ORG,
        &[],
        "creds",
        &source_spec(&url, SOURCE_ORG, "source-creds", ""),
    ))
    .await;
    let lt = env
        .wait_reason("migration", Reason::SourceUnavailable, WAIT)
        .await;
    let message = condition(&lt, "Ready").2;
    assert!(
        message.contains("TLS") || message.contains("certificate"),
        "the message names the TLS problem: {message}"
    );

    let cms: kube::Api<ConfigMap> = kube::Api::namespaced(env.client.clone(), &env.ns);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("opsmanager-ca".into()),
            ..Default::default()
        },
        data: Some([("ca.crt".to_string(), tls.ca_pem.clone())].into()),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("ConfigMap");
    env.apply_yaml(&linktoken_yaml(
        "migration",
        ORG,
        &[],
        "creds",
        &source_spec(
            &url,
            SOURCE_ORG,
            "source-creds",
            "    caBundle:\n      configMapKeyRef: {name: opsmanager-ca, key: ca.crt}\n",
        ),
    ))
    .await;
    wait_linked(&env, "migration", SOURCE_ORG).await;
}

/// Kills the operator (SIGKILL) while it sleeps at `point` during the first link of a
/// LinkToken, lets `check` look at what the crash left, restarts it without the pause and
/// checks what a user depends on: Linked, one live token in Atlas, the source holding it and
/// never unlinked, with `posts` accepted POSTs (a POST whose answer the crash lost is sent
/// again: only a successful POST records a link).
async fn crash_in_link_at(point: &str, posts: usize, check: impl AsyncFnOnce(&Env)) {
    let Some(mut env) = paused_then_killed(point, "").await else {
        return;
    };
    check(&env).await;
    env.start_operator(&[]);
    wait_linked(&env, "migration", SOURCE_ORG).await;
    assert_eq!(env.sim.state.live_links(ORG), 1, "one live token");
    assert_eq!(source_calls(&env, "POST", 200), posts, "accepted POSTs");
    assert_eq!(source_calls(&env, "DELETE", 204), 0, "never unlinked");
}

/// Starts the operator with the pause hook at `point`, applies LinkToken `migration` with a
/// source (plus `extra` under `source:`), waits until the operator sleeps there and SIGKILLs
/// it. None without a control plane.
async fn paused_then_killed(point: &str, extra: &str) -> Option<Env> {
    let Some(c) = testkit::cluster().await else {
        eprintln!("SKIPPED: no control plane");
        return None;
    };
    let suffix = if extra.is_empty() { "" } else { "-transit" };
    let mut env = Env::new(c, &format!("src-{point}{suffix}")).await;
    env.api_key_secret("creds").await;
    source_key_secret(&env, "source-creds", SOURCE_PRIVATE).await;
    let pause = format!("{point}=300s");
    env.operator =
        Some(env.spawn_operator_with_env(&env.cluster.kubeconfig, &[(PAUSE_ENV, &pause)], &[]));
    apply_migration(&env, extra).await;
    eventually(
        WAIT,
        &format!("the operator pausing at {point}"),
        || async {
            let logs = env.operator.as_ref().map(|o| o.logs()).unwrap_or_default();
            (logs.contains("pausing") && logs.contains(point)).then_some(())
        },
    )
    .await;
    let lt = env.get("migration").await.expect("LinkToken");
    assert_ne!(condition(&lt, "Ready").0, "True", "not Ready while linking");
    if let Some(op) = env.operator.as_mut() {
        let _ = op.child.kill();
        let _ = op.child.wait();
    }
    Some(env)
}

/// storeToken: false, killed inside the hand-over: after the restart the source holds a live
/// token, the only live one in the Atlas org, with `posts` accepted POSTs; returns (Atlas
/// mints in total, whether the source held the token at the crash).
async fn crash_in_transit_at(point: &str, posts: usize) -> Option<(u64, bool)> {
    let mut env = paused_then_killed(point, "    storeToken: false\n").await?;
    let held = env.sim.state.source_link(SOURCE_ORG).is_some();
    assert_eq!(
        env.token_in("migration", "linkToken").await,
        None,
        "no Secret"
    );
    env.start_operator(&[]);
    let lt = env.wait_reason("migration", Reason::Linked, WAIT).await;
    let sha = lt
        .status
        .and_then(|s| s.issued_for)
        .and_then(|i| i.token_sha256)
        .expect("issued");
    assert_eq!(
        env.sim.state.live_token_hashes(ORG),
        vec![sha.clone()],
        "one live token"
    );
    let link = env.sim.state.source_link(SOURCE_ORG).expect("linked");
    assert_eq!(link.token_sha256, sha, "the source holds the live token");
    assert_eq!(source_calls(&env, "POST", 200), posts, "accepted POSTs");
    Some((mints(&env), held))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_token_false_killed_before_the_hand_over_reissues_and_links_once() {
    // The token was recorded (hash) and never reached the source: it is revoked and replaced.
    if let Some((minted, held)) = crash_in_transit_at("before-link-post", 1).await {
        assert!(!held, "nothing posted before the crash");
        assert_eq!(minted, 2, "the lost token is replaced");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_token_false_killed_after_the_hand_over_replaces_the_unconfirmed_token() {
    // The source took the token before the crash, but nothing can prove it after the restart:
    // its status names no token (SYNCED may be an older token's, its view lagging a
    // revocation), and the token is stored nowhere to post again. So it is revoked and a new
    // one handed over: two mints, two accepted POSTs, one live token, linked.
    if let Some((minted, held)) = crash_in_transit_at("after-link-post", 2).await {
        assert!(held, "posted before the crash");
        assert_eq!(minted, 2, "the unconfirmed token is replaced");
    }
}

/// The marker of the link as the crash left it: the hash of the token being posted.
async fn posting_marker(env: &Env) -> (Option<String>, String) {
    let lt = env.get("migration").await.expect("LinkToken");
    let token = env.token_in("migration", "linkToken").await.expect("token");
    let marker = lt
        .status
        .and_then(|s| s.link)
        .and_then(|l| l.posting_sha256);
    (marker, sha256_hex(token.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_token_is_issued_before_the_link_is_posted_links_once() {
    crash_in_link_at("before-link-post", 1, async |env: &Env| {
        let (marker, sha) = posting_marker(env).await;
        assert_eq!(
            marker,
            Some(sha),
            "the marker names the token about to be posted"
        );
        assert!(
            env.sim.state.source_link(SOURCE_ORG).is_none(),
            "nothing posted yet"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_link_is_posted_before_status_is_written_posts_it_again() {
    // The answer was lost with the process: the same token is posted again (the source
    // accepts a POST of the token it holds).
    crash_in_link_at("after-link-post", 2, async |env: &Env| {
        let (marker, sha) = posting_marker(env).await;
        assert_eq!(
            marker,
            Some(sha.clone()),
            "the status does not know the answer"
        );
        let link = env.sim.state.source_link(SOURCE_ORG).expect("posted");
        assert_eq!(link.token_sha256, sha);
        assert_eq!(source_calls(env, "POST", 200), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_atlas_post_before_the_secret_links_the_reissued_token_once() {
    crash_in_link_at("after-post", 1, async |env: &Env| {
        // The orphan token: live in Atlas, stored nowhere, never shown to the source.
        assert_eq!(env.sim.state.live_links(ORG), 1);
        assert!(env.sim.state.source_link(SOURCE_ORG).is_none());
    })
    .await;
}

/// Atlas POSTs (token mints) answered so far.
fn mints(env: &Env) -> u64 {
    env.sim
        .state
        .calls("POST", atlas_sim::CallKind::LinkTokens, 201)
}

/// The source's own API, as a person (or another tool) would call it.
fn source_client(env: &Env) -> (SourceClient, String, Credentials) {
    let url = source_url(env);
    let config = SourceConfig {
        allowed: AllowedSources::parse(&url).expect("the sim's source URL"),
        ..SourceConfig::default()
    };
    (
        SourceClient::new(config, None),
        url,
        Credentials::api_key(SOURCE_PUBLIC, SOURCE_PRIVATE),
    )
}

/// What the source reports is never hidden: a token revoked in Atlas behind the operator's back
/// turns the link NOT_SYNCED, reported as NotSynced (Ready False) until a rotation links a new
/// one; a link removed at the source is made again with the stored token (no new token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_synced_is_reported_and_a_link_removed_at_the_source_is_repaired() {
    let c = require_cluster!();
    let env = source_env(c, "src-drift", &["--resync-interval=2s"]).await;
    linked_token(&env, "migration", ORG, SOURCE_ORG, "source-creds").await;
    let token = wait_linked(&env, "migration", SOURCE_ORG).await;

    // Removed at the source: linked again with the same token at the next resync.
    let (source, url, creds) = source_client(&env);
    let target = Target {
        url: &url,
        ca_pem: None,
    };
    source
        .unlink(target, &creds, SOURCE_ORG)
        .await
        .expect("unlink at the source");
    eventually(WAIT, "linked again", || async {
        env.sim.state.source_link(SOURCE_ORG).map(|_| ())
    })
    .await;
    assert_eq!(wait_linked(&env, "migration", SOURCE_ORG).await, token);
    assert_eq!(
        mints(&env),
        1,
        "no new token for a link the stored one can repair"
    );

    // Revoked in Atlas by someone else: the source reports NOT_SYNCED, and so does Ready.
    let atlas = AtlasClient::new(AtlasConfig::with_base_url(env.sim.atlas_url.clone()))
        .expect("Atlas client");
    atlas
        .delete_link_token(&Credentials::api_key(PUBLIC_KEY, PRIVATE_KEY), ORG)
        .await
        .expect("revoke behind the operator's back");
    let lt = env.wait_reason("migration", Reason::NotSynced, WAIT).await;
    assert_eq!(condition(&lt, "Ready").0, "False");
    assert_eq!(condition(&lt, "Linked").1, "NotSynced");
    assert_eq!(condition(&lt, "Reconciling").0, "True");
    assert!(condition(&lt, "Ready").2.contains("rotate"));
    // A rotation is the fix: a new token, linked.
    env.rotate("migration", "after-revoke").await;
    let new = env.wait_new_token("migration", &token, WAIT).await;
    eventually(WAIT, "linked with the new token", || async {
        let t = wait_linked(&env, "migration", SOURCE_ORG).await;
        (t == new).then_some(())
    })
    .await;
}

/// storeToken: false: no Secret ever holds the token; Ready means the source holds it. A source
/// that cannot take a token costs no mint (the operator asks it first); a link lost at the
/// source is replaced by a new token, the lost one revoked; deletion unlinks, then revokes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_store_token_false_the_token_exists_only_in_transit() {
    let c = require_cluster!();
    let env = source_env(c, "src-transit", &["--resync-interval=2s"]).await;
    // The source is down at first: the token must not be minted meanwhile.
    env.fault(source_fault(503, "SERVICE_UNAVAILABLE", None, SOURCE_ORG));
    apply_migration(&env, "    storeToken: false\n").await;
    env.wait_reason("migration", Reason::SourceUnavailable, WAIT)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        mints(&env),
        0,
        "no token minted for a source that cannot take it"
    );
    env.sim.state.clear_faults();

    let lt = env.wait_reason("migration", Reason::Linked, WAIT).await;
    let st = lt.status.clone().expect("status");
    let sha = st
        .issued_for
        .as_ref()
        .and_then(|i| i.token_sha256.clone())
        .expect("issued");
    assert_eq!(st.token_secret_name, None, "no Secret named in status");
    assert_eq!(
        env.token_in("migration", "linkToken").await,
        None,
        "no token Secret"
    );
    assert_eq!(
        env.sim
            .state
            .source_link(SOURCE_ORG)
            .expect("linked")
            .token_sha256,
        sha
    );
    assert_eq!(env.sim.state.live_token_hashes(ORG), vec![sha.clone()]);
    assert_eq!(mints(&env), 1);
    // Steady: no new token at the resyncs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(mints(&env), 1);

    // Lost at the source: stored nowhere else, so a new token replaces it (the lost one
    // revoked first).
    let (source, url, creds) = source_client(&env);
    let target = Target {
        url: &url,
        ca_pem: None,
    };
    source
        .unlink(target, &creds, SOURCE_ORG)
        .await
        .expect("unlink at the source");
    let new_sha = eventually(WAIT, "a new token linked", || async {
        let l = env.sim.state.source_link(SOURCE_ORG)?;
        (l.token_sha256 != sha).then_some(l.token_sha256)
    })
    .await;
    assert!(matches!(
        env.sim.state.token_status_by_hash(&sha),
        TokenStatus::Revoked { .. }
    ));
    assert_eq!(env.sim.state.live_token_hashes(ORG), vec![new_sha.clone()]);
    env.wait_reason("migration", Reason::Linked, WAIT).await;

    env.delete_linktoken("migration").await;
    env.wait_linktoken_gone("migration", WAIT).await;
    assert!(env.sim.state.source_link(SOURCE_ORG).is_none(), "unlinked");
    assert_eq!(env.sim.state.live_links(ORG), 0, "revoked");
    env.assert_no_secret_leaked(&[SOURCE_PRIVATE]).await;
}

/// spec.source removed: the link goes at the source, the LinkToken is Ready as a plain one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_spec_source_removes_the_link() {
    let c = require_cluster!();
    let (env, token) = linked_env(c, "src-remove").await;
    env.apply_yaml(&linktoken_yaml("migration", ORG, &[], "creds", ""))
        .await;
    let lt = env
        .wait_reason("migration", Reason::TokenIssued, WAIT)
        .await;
    assert!(env.sim.state.source_link(SOURCE_ORG).is_none(), "unlinked");
    assert_eq!(lt.status.expect("status").link, None);
    assert_eq!(
        condition(&env.get("migration").await.expect("lt"), "Linked").0,
        ""
    );
    assert_eq!(
        env.token_in("migration", "linkToken").await,
        Some(token.clone())
    );
    assert!(
        env.sim.state.is_token_live(&token),
        "the token itself stays"
    );
    env.wait_event("migration", "Unlinked", "Normal", WAIT)
        .await;
}

/// What Flux and kpt see (the real kstatus library): Current only once the whole link holds;
/// a link failing for a transient reason is InProgress although the token is issued; one only a
/// user can fix is Failed, and stays Failed while the operator rechecks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kstatus_is_current_only_once_linked() {
    let c = require_cluster!();
    let Some(bin) = kstatus_bin(c) else {
        return;
    };
    let env = source_env(c, "src-kstatus", &["--credentials-grace=8s"]).await;
    source_key_secret(&env, "wrong-creds", "not-the-private-key").await;
    let flaky = "0000000000000000000000c1";
    source_owner(&env, "flaky", &[flaky], &[flaky]).await;
    env.fault(source_fault(503, "SERVICE_UNAVAILABLE", None, flaky));
    own_linked_token(&env, 0, "linked", SOURCE_ORG, "source-creds").await;
    own_linked_token(&env, 1, "unavailable", flaky, "flaky-creds").await;
    // Each its own source org: a source org has one owner (the others would wait in
    // SourceOrgConflict).
    let (refused, later) = ("0000000000000000000000c2", "0000000000000000000000c3");
    source_owner(&env, "others", &[refused, later], &[refused, later]).await;
    own_linked_token(&env, 2, "unauthorized", refused, "wrong-creds").await;
    // A source credentials Secret that a GitOps step delivers later: InProgress within
    // --credentials-grace, as for the Atlas one (then Failed).
    own_linked_token(&env, 3, "late", later, "late-creds").await;
    for (name, reason, want) in [
        ("linked", Reason::Linked, "Current"),
        ("unavailable", Reason::SourceUnavailable, "InProgress"),
        ("unauthorized", Reason::SourceUnauthorized, "Failed"),
        ("late", Reason::SourceCredentialsNotFound, "InProgress"),
    ] {
        env.wait_reason(name, reason, WAIT).await;
        let (status, message) = kstatus_of(&env, &bin, name);
        assert_eq!(status, want, "{name}: {message}");
        assert!(
            env.token_in(name, "linkToken").await.is_some(),
            "{name}: issued"
        );
    }
    // Failed stays Failed while the operator rechecks (one source call per recheck, on the
    // backing-off timer): a GitOps tool must not see it InProgress, then Failed again, at each
    // recheck. Every write of one recheck is watched, so this does not depend on when the test
    // happens to look.
    let shown = stalled_across_a_recheck(&env, "unauthorized").await;
    assert!(
        shown.iter().all(|(stalled, _)| stalled == "True"),
        "unauthorized: Stalled left True during a recheck: {shown:?}"
    );
    eventually(WAIT, "late: Failed once the grace is over", || async {
        (kstatus_of(&env, &bin, "late").0 == "Failed").then_some(())
    })
    .await;
}

/// (Stalled, Ready reason) of every write to LinkToken `name` (now SourceUnauthorized) up to
/// and including the one that records the answer of its next refused POST at the source.
async fn stalled_across_a_recheck(env: &Env, name: &str) -> Vec<(String, String)> {
    let lt = env
        .wait_reason(name, Reason::SourceUnauthorized, WAIT)
        .await;
    let refused = source_calls(env, "POST", 401);
    let rv = lt.resource_version().expect("resourceVersion");
    let wp = WatchParams::default().fields(&format!("metadata.name={name}"));
    let mut events = env
        .linktokens()
        .watch(&wp, &rv)
        .await
        .expect("watch")
        .boxed();
    let mut shown = Vec::new();
    let watched = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.try_next().await.expect("watch event") {
            let WatchEvent::Modified(lt) = event else {
                continue;
            };
            shown.push((condition(&lt, "Stalled").0, condition(&lt, "Ready").1));
            let marker = lt
                .status
                .as_ref()
                .and_then(|s| s.link.as_ref())
                .and_then(|l| l.posting_sha256.as_ref());
            if marker.is_none() && source_calls(env, "POST", 401) > refused {
                return;
            }
        }
    })
    .await;
    assert!(
        watched.is_ok(),
        "{name}: no recheck within {WAIT:?}: {shown:?}"
    );
    shown
}

/// storeToken: false and a source that answers but refuses the token: each refused hand-over
/// loses a token, so the next one waits like any failure only a user can fix (no mint per
/// retry), and the refusal stays the reason shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_token_false_with_a_refusing_source_does_not_mint_in_a_loop() {
    let c = require_cluster!();
    let env = source_env(c, "src-refused", &[]).await;
    env.fault(source_fault(
        400,
        "INVALID_LINK_TOKEN",
        Some("POST"),
        SOURCE_ORG,
    ));
    apply_migration(&env, "    storeToken: false\n").await;
    env.wait_reason("migration", Reason::SourceRejected, WAIT)
        .await;
    let after_first = mints(&env);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let lt = env.get("migration").await.expect("LinkToken");
    assert_eq!(condition(&lt, "Ready").1, "SourceRejected", "still shown");
    assert!(condition(&lt, "Ready").2.contains("INVALID_LINK_TOKEN"));
    assert_eq!(condition(&lt, "Stalled").0, "True");
    assert!(
        mints(&env) <= after_first + 1,
        "{} tokens minted for a source that refuses them",
        mints(&env)
    );
    // At most the last minted token is live, claimed by status (revoked before the next one).
    assert!(env.sim.state.live_links(ORG) <= 1);
}

/// deletionPolicy: Retain keeps the whole link: the token stays live in Atlas and the source
/// stays linked with it (and SYNCED); nothing is called at the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_keeps_the_link_and_the_token() {
    let c = require_cluster!();
    let (env, token) = linked_env(c, "src-retain").await;
    env.patch_linktoken(
        "migration",
        serde_json::json!({"spec": {"deletionPolicy": "Retain"}}),
    )
    .await;
    env.wait_reason("migration", Reason::Linked, WAIT).await;
    let deletes_before = source_calls(&env, "DELETE", 204);
    env.delete_linktoken("migration").await;
    env.wait_linktoken_gone("migration", WAIT).await;
    assert!(env.sim.state.is_token_live(&token), "the token stays live");
    assert_eq!(
        env.sim
            .state
            .source_link(SOURCE_ORG)
            .map(|l| l.token_sha256),
        Some(sha256_hex(token.as_bytes())),
        "the source stays linked with it"
    );
    assert_eq!(
        env.sim.state.source_status(SOURCE_ORG),
        Some(atlas_sim::SyncStatus::Synced)
    );
    assert_eq!(source_calls(&env, "DELETE", 204), deletes_before);
}
