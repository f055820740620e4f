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
    let mut env = Env::new(c, "src-stale-synced").await;
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
    let url = env.sim.source_url().expect("source port");
    env.apply_yaml(&linktoken_yaml(
        "migration",
        ORG,
        &[],
        "creds",
        &source_spec(&url, SOURCE_ORG, "source-creds", ""),
    ))
    .await;
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
