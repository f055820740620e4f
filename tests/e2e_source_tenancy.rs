//! What a LinkToken author who may not read Secrets can make the operator do at a source, end to
//! end on the real control plane (docs/security.md, "The threat model"):
//! - credentials and the token go only to source URLs the cluster admin allowed
//!   (`--allowed-source-urls`): a LinkToken naming another URL gets SourceNotAllowed, and a
//!   recording server at that URL receives no request at all, for API keys and service
//!   accounts, with or without a token Secret;
//! - the source's credentials Secret is never the Atlas credentials Secret (the API server
//!   refuses it);
//! - Linked=True means the source holds the current token: after a POST whose answer is
//!   unknown, a source whose view still reads SYNCED (it lags the revocation) does not make the
//!   operator record the new token as linked.
use testkit::require_cluster;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use atlas_sim::config::DEMO_EXTRA_ORG_IDS;
use atlas_sim::{FaultKind, FaultSpec, FaultTarget};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use linktoken_operator::api::{LinkToken, Reason};
use sha2::{Digest, Sha256};
use testkit::e2e::{CLIENT_ID, CLIENT_SECRET, Env, ORG, PRIVATE_KEY, condition, linktoken_yaml};
use testkit::eventually;

const WAIT: Duration = Duration::from_secs(45);
const SOURCE_ORG: &str = atlas_sim::config::DEMO_SOURCE_ORG_ID;
const SOURCE_PUBLIC: &str = atlas_sim::config::DEMO_SOURCE_PUBLIC_KEY;
const SOURCE_PRIVATE: &str = atlas_sim::config::DEMO_SOURCE_PRIVATE_KEY;

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The `source:` block of a LinkToken spec (indented for `linktoken_yaml`).
fn source_spec(url: &str, org: &str, creds: &str, extra: &str) -> String {
    format!(
        "  source:\n    url: \"{url}\"\n    orgId: \"{org}\"\n    credentialsSecretRef:\n      name: {creds}\n{extra}"
    )
}

/// A namespace with the Atlas credentials `creds` and the demo source key `source-creds`, and
/// an operator for it.
async fn source_env(c: &'static testkit::TestCluster, prefix: &str) -> Env {
    let mut env = Env::new(c, prefix).await;
    env.api_key_secret("creds").await;
    env.put_secret(
        "source-creds",
        &[
            ("publicApiKey", SOURCE_PUBLIC),
            ("privateApiKey", SOURCE_PRIVATE),
        ],
    )
    .await;
    env.start_operator(&[]);
    env
}

/// LinkToken `migration` (Atlas org ORG) linked to the demo source org at atlas-sim.
async fn apply_migration(env: &Env) {
    let url = env.sim.source_url().expect("source port");
    env.apply_yaml(&linktoken_yaml(
        "migration",
        ORG,
        &[],
        "creds",
        &source_spec(&url, SOURCE_ORG, "source-creds", ""),
    ))
    .await;
}

/// Everything a host received: method, path, headers and body of each request.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<String>>>);

impl Recorded {
    fn all(&self) -> Vec<String> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// A host that plays a source as an attacker would: it challenges for Digest, mints bearer
/// tokens, says SYNCED to everything, and records every byte it receives.
async fn recording_source() -> (String, Recorded) {
    let recorded = Recorded::default();
    let keep = recorded.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let keep = keep.clone();
        async move { record_and_answer(keep, req).await }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the recording source");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), recorded)
}

async fn record_and_answer(keep: Recorded, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let headers: Vec<String> = parts
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    if let Ok(mut v) = keep.0.lock() {
        v.push(format!(
            "{} {}\n{}\n{}",
            parts.method,
            parts.uri,
            headers.join("\n"),
            String::from_utf8_lossy(&body)
        ));
    }
    if parts.uri.path() == "/api/oauth/token" {
        let token = r#"{"access_token":"x","expires_in":3600,"token_type":"Bearer"}"#;
        return (StatusCode::OK, token).into_response();
    }
    if !parts.headers.contains_key(header::AUTHORIZATION) {
        let mut h = HeaderMap::new();
        h.insert(
            header::WWW_AUTHENTICATE,
            r#"Digest realm="MMS Public API", nonce="attacker", qop="auth", algorithm=MD5"#
                .parse()
                .expect("header"),
        );
        return (StatusCode::UNAUTHORIZED, h).into_response();
    }
    (StatusCode::OK, r#"{"status":"SYNCED"}"#).into_response()
}

/// Ready=False for `reason`, Stalled=True, and the Ready message.
async fn wait_stalled(env: &Env, name: &str, reason: Reason) -> String {
    let lt = env.wait_reason(name, reason, WAIT).await;
    assert_eq!(condition(&lt, "Ready").0, "False");
    assert_eq!(
        condition(&lt, "Stalled").0,
        "True",
        "{name}: only an admin can help"
    );
    condition(&lt, "Ready").2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_reaches_a_source_url_the_cluster_admin_did_not_allow() {
    let c = require_cluster!();
    let mut env = Env::new(c, "src-allow").await;
    let (url, recorded) = recording_source().await;
    let (org_b, org_c) = (DEMO_EXTRA_ORG_IDS[0], DEMO_EXTRA_ORG_IDS[1]);
    // The Atlas credentials of each kind, and source Secrets holding the very same values (an
    // author may name any Secret of the namespace, just not read it).
    env.api_key_secret("creds").await;
    env.put_secret(
        "sa-creds",
        &[("clientId", CLIENT_ID), ("clientSecret", CLIENT_SECRET)],
    )
    .await;
    env.put_secret(
        "key-copy",
        &[
            ("publicApiKey", testkit::e2e::PUBLIC_KEY),
            ("privateApiKey", PRIVATE_KEY),
        ],
    )
    .await;
    env.put_secret(
        "sa-copy",
        &[("clientId", CLIENT_ID), ("clientSecret", CLIENT_SECRET)],
    )
    .await;
    env.start_operator(&[]);
    let yaml = |name: &str, org: &str, atlas: &str, source: &str, extra: &str| {
        linktoken_yaml(
            name,
            org,
            &[],
            atlas,
            &source_spec(&url, SOURCE_ORG, source, extra),
        )
    };
    env.apply_yaml(&yaml("api-key", ORG, "creds", "key-copy", ""))
        .await;
    env.apply_yaml(&yaml("service-account", org_b, "sa-creds", "sa-copy", ""))
        .await;
    env.apply_yaml(&yaml(
        "in-transit",
        org_c,
        "creds",
        "key-copy",
        "    storeToken: false\n",
    ))
    .await;
    for name in ["api-key", "service-account", "in-transit"] {
        let message = wait_stalled(&env, name, Reason::SourceNotAllowed).await;
        assert!(
            message.contains("--allowed-source-urls") && message.contains(&url),
            "{name}: the message names the URL and the flag: {message}"
        );
        let lt = env.get(name).await.expect("LinkToken");
        assert_eq!(condition(&lt, "Linked").1, "SourceNotAllowed");
    }
    // Settled: another pass of each would have called by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        recorded.all(),
        Vec::<String>::new(),
        "the recording host received requests"
    );
    // storeToken: false checks the source before minting: no token exists only in memory.
    assert_eq!(
        env.sim.state.live_links(org_c),
        0,
        "nothing minted in transit"
    );
    env.assert_no_secret_leaked(&[PRIVATE_KEY, CLIENT_SECRET])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_atlas_credentials_secret_cannot_be_named_as_the_source_s() {
    let c = require_cluster!();
    let env = Env::new(c, "src-same-secret").await;
    let url = env.sim.source_url().expect("source port");
    let yaml = linktoken_yaml(
        "same",
        ORG,
        &[],
        "creds",
        &source_spec(&url, SOURCE_ORG, "creds", ""),
    );
    let lt: LinkToken = serde_saphyr::from_str(&yaml).expect("yaml");
    let err = env
        .linktokens()
        .create(&Default::default(), &lt)
        .await
        .expect_err("the API server refuses it");
    let text = err.to_string();
    assert!(
        text.contains("spec.source.credentialsSecretRef") && text.contains("another Secret"),
        "{text}"
    );
    // Any other Secret name is accepted.
    let ok = linktoken_yaml(
        "other",
        ORG,
        &[],
        "creds",
        &source_spec(&url, SOURCE_ORG, "source-creds", ""),
    );
    let lt: LinkToken = serde_saphyr::from_str(&ok).expect("yaml");
    env.linktokens()
        .create(&Default::default(), &lt)
        .await
        .expect("a distinct source Secret is valid");
}

/// T1 is linked. The rotation's POST of T2 fails (503) and, from then on, the source's status
/// reads SYNCED whatever it holds (its view lags the revocation of T1). Linked=True must still
/// mean the source holds T2: the operator posts T2 again instead of believing the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_is_never_reported_from_a_stale_synced_after_a_failed_post() {
    let c = require_cluster!();
    let env = source_env(c, "src-stale-synced").await;
    apply_migration(&env).await;
    env.wait_reason("migration", Reason::Linked, WAIT).await;
    let t1 = env.token_in("migration", "linkToken").await.expect("T1");

    let source_post_fails = FaultSpec {
        kind: FaultKind::Status,
        status: Some(503),
        body: Some(serde_json::json!({"error": 503, "errorCode": "SERVICE_UNAVAILABLE"})),
        headers: Default::default(),
        latency_ms: 0,
        count: Some(1),
        method: Some("POST".into()),
        org_id: Some(SOURCE_ORG.into()),
        target: FaultTarget::Source,
    };
    let stale_synced = FaultSpec {
        kind: FaultKind::Status,
        status: Some(200),
        body: Some(serde_json::json!({"status": "SYNCED"})),
        count: None,
        method: Some("GET".into()),
        ..source_post_fails.clone()
    };
    env.fault(source_post_fails);
    env.fault(stale_synced);
    env.rotate("migration", "stale-synced").await;

    let t2 = env.wait_new_token("migration", &t1, WAIT).await;
    let t2_sha = sha256_hex(t2.as_bytes());
    let lt = eventually(WAIT, "Linked with T2", || async {
        let lt = env.get("migration").await?;
        let issued = lt
            .status
            .as_ref()?
            .issued_for
            .as_ref()?
            .token_sha256
            .clone();
        (condition(&lt, "Linked").0 == "True" && issued.as_deref() == Some(t2_sha.as_str()))
            .then_some(lt)
    })
    .await;
    let held = env.sim.state.source_link(SOURCE_ORG).expect("linked");
    assert_eq!(
        held.token_sha256, t2_sha,
        "Linked=True while the source holds the revoked T1"
    );
    let recorded = lt.status.and_then(|s| s.link).expect("status.link");
    assert_eq!(recorded.token_sha256.as_deref(), Some(t2_sha.as_str()));
    assert!(env.revoked(&t1), "T1 is revoked in Atlas");
}

/// Applies `yaml` (a LinkToken) in namespace `ns`.
async fn apply_in(env: &Env, ns: &str, yaml: &str) {
    use kube::api::{Api, Patch, PatchParams};
    let lt: LinkToken = serde_saphyr::from_str(yaml).expect("yaml");
    let mut body = serde_json::to_value(&lt).expect("json");
    body["apiVersion"] = "atlasmigration.io/v1alpha1".into();
    body["kind"] = "LinkToken".into();
    let api: Api<LinkToken> = Api::namespaced(env.client.clone(), ns);
    api.patch(
        lt.metadata.name.as_deref().expect("name"),
        &PatchParams::apply("linktoken-tests").force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("apply LinkToken");
}

async fn get_in(env: &Env, ns: &str, name: &str) -> Option<LinkToken> {
    let api: kube::Api<LinkToken> = kube::Api::namespaced(env.client.clone(), ns);
    api.get_opt(name).await.ok()?
}

/// Authenticated source calls at `org` by method (a Digest client's unauthenticated probe,
/// answered 401 with the challenge, reaches nothing).
fn calls_at(env: &Env, method: &str, org: &str) -> usize {
    env.sim
        .state
        .source_calls()
        .iter()
        .filter(|c| c.method == method && c.path.contains(org) && c.status != 401)
        .count()
}

/// Two LinkTokens (two Atlas orgs, two namespaces) name one source org. One holds it; the other
/// reports SourceOrgConflict, never POSTs or DELETEs there, and never looks linked; when the
/// holder goes (its link removed at the source), the other takes over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_org_has_one_owner_and_the_other_calls_nothing_there() {
    let c = require_cluster!();
    let mut env = Env::new(c, "src-claim-a").await;
    let other_ns = c.namespace("src-claim-b").await;
    let url = env.sim.source_url().expect("source port");
    let key = [
        ("publicApiKey", SOURCE_PUBLIC),
        ("privateApiKey", SOURCE_PRIVATE),
    ];
    env.api_key_secret("creds").await;
    env.put_secret("source-creds", &key).await;
    env.api_key_secret_in(&other_ns, "creds").await;
    env.put_secret_in(&other_ns, "source-creds", &key).await;
    let own = env.ns.clone();
    env.ns = format!("{own},{other_ns}");
    let op = env.spawn_operator(&[]);
    env.ns = own.clone();
    env.operator = Some(op);

    let spec = |name: &str, org: &str| {
        linktoken_yaml(
            name,
            org,
            &[],
            "creds",
            &source_spec(&url, SOURCE_ORG, "source-creds", ""),
        )
    };
    env.apply_yaml(&spec("first", ORG)).await;
    env.wait_reason("first", Reason::Linked, WAIT).await;
    let first = env.token_in("first", "linkToken").await.expect("token");
    apply_in(&env, &other_ns, &spec("second", DEMO_EXTRA_ORG_IDS[0])).await;

    let second = eventually(WAIT, "second: SourceOrgConflict", || async {
        let lt = get_in(&env, &other_ns, "second").await?;
        (condition(&lt, "Ready").1 == "SourceOrgConflict").then_some(lt)
    })
    .await;
    assert_eq!(condition(&second, "Stalled").0, "True");
    assert_eq!(condition(&second, "Linked").0, "False");
    let message = condition(&second, "Ready").2;
    assert!(
        message.contains("another LinkToken") && !message.contains(&own),
        "another namespace's owner is not named: {message}"
    );
    // Settled: the second had its token and several passes to act by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = env.sim.state.source_link(SOURCE_ORG).expect("linked");
    assert_eq!(
        held.token_sha256,
        sha256_hex(first.as_bytes()),
        "the first's link"
    );
    assert_eq!(
        calls_at(&env, "POST", SOURCE_ORG),
        1,
        "only the first POSTed"
    );
    assert_eq!(calls_at(&env, "DELETE", SOURCE_ORG), 0, "nobody unlinked");
    let first_lt = env.get("first").await.expect("first");
    assert_eq!(condition(&first_lt, "Linked").0, "True");

    // The holder goes: it unlinks, and the waiter links its own token.
    env.delete_linktoken("first").await;
    env.wait_linktoken_gone("first", WAIT).await;
    let second = eventually(WAIT, "second: Linked", || async {
        let lt = get_in(&env, &other_ns, "second").await?;
        (condition(&lt, "Ready").1 == "Linked").then_some(lt)
    })
    .await;
    let sha = second
        .status
        .and_then(|s| s.issued_for)
        .and_then(|i| i.token_sha256)
        .expect("issued");
    let held = env.sim.state.source_link(SOURCE_ORG).expect("linked");
    assert_eq!(
        held.token_sha256, sha,
        "the source holds the second's token"
    );
    assert_eq!(
        calls_at(&env, "DELETE", SOURCE_ORG),
        1,
        "the first's unlink"
    );
}

/// A source that accepts TCP connections and never answers, holding each for as long as the
/// client waits. Counts the connections it took.
async fn tarpit() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the tarpit");
    let addr = listener.local_addr().expect("addr");
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = taken.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(conn);
        }
    });
    (format!("http://{addr}"), taken)
}

/// Ten LinkTokens in one namespace link to a tarpit while their author annotates them in a
/// loop; a LinkToken in another namespace must still turn Ready about as fast as on an idle
/// operator. Bound: READY_WITHIN, against a 10 s request timeout that each tarpit call waits out
/// and a --concurrency of 4 that the tarpit LinkTokens alone would fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_with_a_tarpit_source_does_not_slow_another_namespace() {
    const READY_WITHIN: Duration = Duration::from_secs(5);
    let c = require_cluster!();
    let mut env = Env::new(c, "fair-tenant").await;
    let hostile = c.namespace("fair-hostile").await;
    let (pit, taken) = tarpit().await;
    env.api_key_secret("creds").await;
    env.put_secret_in(
        &hostile,
        "source-creds",
        &[
            ("publicApiKey", SOURCE_PUBLIC),
            ("privateApiKey", SOURCE_PRIVATE),
        ],
    )
    .await;
    let sim_source = env.sim.source_url().expect("source port");
    let own = env.ns.clone();
    env.ns = format!("{own},{hostile}");
    let allowed = format!("--allowed-source-urls={sim_source},{pit}");
    let op = env.spawn_operator(&[
        "--concurrency=4",
        "--atlas-request-timeout=10s",
        "--atlas-connect-timeout=2s",
        &allowed,
    ]);
    env.ns = own;
    env.operator = Some(op);

    let names: Vec<String> = (0..10).map(|i| format!("pit-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let org = format!("b{i:07x}0000000000000000");
        env.add_owned_org(&org);
        let creds = format!("{name}-atlas");
        env.put_secret_in(
            &hostile,
            &creds,
            &[
                ("publicApiKey", &format!("pub{}", &org[..8])),
                ("privateApiKey", "private-key-of-a-test-org"),
            ],
        )
        .await;
        let source_org = format!("{i:0>24x}");
        apply_in(
            &env,
            &hostile,
            &linktoken_yaml(
                name,
                &org,
                &[],
                &creds,
                &source_spec(&pit, &source_org, "source-creds", ""),
            ),
        )
        .await;
    }
    eventually(
        WAIT,
        "the tarpit holding the hostile LinkTokens",
        || async { (taken.load(std::sync::atomic::Ordering::SeqCst) >= 4).then_some(()) },
    )
    .await;
    // Their author pokes them all the time (each annotation change is a reconcile trigger).
    let poking = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poker = {
        let api: kube::Api<LinkToken> = kube::Api::namespaced(env.client.clone(), &hostile);
        let names = names.clone();
        let poking = poking.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while poking.load(std::sync::atomic::Ordering::SeqCst) {
                for name in &names {
                    n += 1;
                    let patch =
                        serde_json::json!({"metadata": {"annotations": {"poke": n.to_string()}}});
                    let _ = api
                        .patch(
                            name,
                            &kube::api::PatchParams::default(),
                            &kube::api::Patch::Merge(&patch),
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = std::time::Instant::now();
    env.linktoken("healthy", ORG, &[]).await;
    env.wait_ready("healthy").await;
    let took = started.elapsed();
    poking.store(false, std::sync::atomic::Ordering::SeqCst);
    let _ = poker.await;
    eprintln!("the other namespace's LinkToken turned Ready in {took:?}");
    assert!(
        took <= READY_WITHIN,
        "another namespace's tarpit held the LinkToken back for {took:?}"
    );
    // The pokes did not make the operator hammer the tarpit: each LinkToken's source calls
    // wait for their backoff, not for the next annotation.
    let calls = taken.load(std::sync::atomic::Ordering::SeqCst);
    assert!(calls <= 40, "{calls} connections to the tarpit");
}

/// A source answering 503 to every POST while the LinkToken is annotated every 100 ms: the
/// source is called as the backoff says, not once per annotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pokes_do_not_bring_a_held_source_retry_forward() {
    let c = require_cluster!();
    let env = source_env(c, "src-hold").await;
    env.fault(FaultSpec {
        kind: FaultKind::Status,
        status: Some(503),
        body: Some(serde_json::json!({"error": 503, "errorCode": "SERVICE_UNAVAILABLE"})),
        headers: Default::default(),
        latency_ms: 0,
        count: None,
        method: Some("POST".into()),
        org_id: Some(SOURCE_ORG.into()),
        target: FaultTarget::Source,
    });
    apply_migration(&env).await;
    env.wait_reason("migration", Reason::SourceUnavailable, WAIT)
        .await;
    let before = calls_at(&env, "POST", SOURCE_ORG);
    let started = std::time::Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(8) {
        n += 1;
        env.patch_linktoken(
            "migration",
            serde_json::json!({"metadata": {"annotations": {"poke": n.to_string()}}}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let posts = calls_at(&env, "POST", SOURCE_ORG) - before;
    eprintln!("{n} pokes, {posts} POSTs at the source in 8 s");
    // The harness's backoff (500 ms doubling to 5 s) allows about 5 in 8 s.
    assert!(posts <= 8, "{posts} POSTs for {n} pokes");
    let lt = env.get("migration").await.expect("LinkToken");
    assert_eq!(condition(&lt, "Ready").1, "SourceUnavailable");
}

/// A namespace deleted with a linked LinkToken: the namespace controller deletes the source
/// credentials Secret while the LinkToken waits on its finalizer, so the link cannot be removed
/// at the source, and the Warning event cannot be created in a terminating namespace. The
/// operator says so where someone can see it: its log and a counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_left_by_a_namespace_deletion_is_logged_and_counted() {
    use k8s_openapi::api::core::v1::Namespace;
    let c = require_cluster!();
    let mut env = source_env(c, "src-ns-gone").await;
    apply_migration(&env).await;
    env.wait_reason("migration", Reason::Linked, WAIT).await;
    // The usual way it happens: the namespace controller deletes the Secrets while no operator
    // runs (a handover, a restart), and the LinkToken waits on its finalizer.
    env.operator.as_mut().expect("operator").kill();
    let nss: kube::Api<Namespace> = kube::Api::all(env.client.clone());
    nss.delete(&env.ns, &Default::default())
        .await
        .expect("delete the namespace");
    eventually(
        Duration::from_secs(60),
        "the source credentials deleted, the LinkToken terminating",
        || async {
            let creds = env.secrets().get_opt("source-creds").await.ok()?;
            let lt = env.get("migration").await?;
            (creds.is_none() && lt.metadata.deletion_timestamp.is_some()).then_some(())
        },
    )
    .await;
    env.start_operator(&[]);
    let metrics = env.operator.as_ref().expect("operator").metrics_url();
    let skipped = || async {
        let body = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        body.lines()
            .find(|l| l.starts_with("linktoken_source_unlinks_skipped_total "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
    };
    eventually(Duration::from_secs(90), "the namespace gone", || async {
        nss.get_opt(&env.ns).await.ok()?.is_none().then_some(())
    })
    .await;
    eventually(WAIT, "the skipped unlink counted", || async {
        (skipped().await? >= 1.0).then_some(())
    })
    .await;
    assert!(
        env.sim.state.source_link(SOURCE_ORG).is_some(),
        "the link is left at the source, as counted"
    );
    let logs = env.operator.as_ref().expect("operator").logs();
    assert!(
        logs.lines().any(|l| l.contains("UnlinkSkipped")
            && l.contains("the link at the source was not removed")
            && l.contains(SOURCE_ORG)),
        "a warning line names the LinkToken and the source org"
    );
    env.assert_no_secret_leaked(&[SOURCE_PRIVATE, PRIVATE_KEY])
        .await;
}
