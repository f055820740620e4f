//! The link at the source with a Cloud Manager service account (clientId/clientSecret in the
//! source credentials Secret), end to end: the operator binary on the real control plane,
//! atlas-sim serving Atlas and the source side (whose port mints its own bearer tokens at
//! `/api/oauth/token`). What a user depends on:
//! - a service account links the source org as an API key does (Ready, reason Linked),
//!   re-links on rotation and unlinks before the revocation on deletion, with one bearer token
//!   minted and reused, not one per call;
//! - a wrong client secret is SourceUnauthorized, without a hot loop on the token endpoint,
//!   and the link is made once the Secret is fixed (the credentials recheck timer);
//! - a source with no token endpoint (Ops Manager) is SourceConfigInvalid, saying to use an
//!   API key;
//! - no client secret, bearer token or link token appears in logs, events or status.
//!
//! The source client alone against atlas-sim (no control plane): one bearer token per account
//! and source, a token the source stops accepting replaced once, a wrong secret refused at the
//! token endpoint with one request per burst.
use testkit::require_cluster;

use std::time::{Duration, Instant};

use atlas_sim::config::{
    DEMO_ORG_ID, DEMO_PRIVATE_KEY, DEMO_PUBLIC_KEY, DEMO_SOURCE_CLIENT_ID,
    DEMO_SOURCE_CLIENT_SECRET, DEMO_SOURCE_ORG_ID,
};
use atlas_sim::{
    CallKind, FaultSpec, FaultTarget, ORG_OWNER, ServiceAccountConfig, SimConfig, SyncStatus, roles,
};
use linktoken_operator::api::Reason;
use linktoken_operator::atlas::{AtlasClient, AtlasConfig, Credentials, LinkTokenValue};
use linktoken_operator::source::{AllowedSources, SourceClient, SourceConfig, Target};
use sha2::{Digest, Sha256};
use testkit::e2e::{Env, ORG, PRIVATE_KEY, condition, linktoken_yaml, status_fault};
use testkit::eventually;

const WAIT: Duration = Duration::from_secs(45);
const WRONG_SECRET: &str = "mdb_sa_sk_not-the-secret";

/// Env with the Atlas credentials Secret `creds` and the source credentials Secret
/// `source-creds` holding the demo source service account with `secret`; operator started.
async fn sa_env(c: &'static testkit::TestCluster, prefix: &str, secret: &str) -> Env {
    let mut env = Env::new(c, prefix).await;
    env.api_key_secret("creds").await;
    env.put_secret(
        "source-creds",
        &[
            ("clientId", DEMO_SOURCE_CLIENT_ID),
            ("clientSecret", secret),
        ],
    )
    .await;
    env.start_operator(&[]);
    env
}

/// LinkToken `migration` (Atlas org ORG) linked to the demo source org with `source-creds`.
async fn apply_migration(env: &Env) {
    let url = env
        .sim
        .source_url()
        .expect("atlas-sim serves the source port");
    let source = format!(
        "  source:\n    url: \"{url}\"\n    orgId: \"{DEMO_SOURCE_ORG_ID}\"\n    credentialsSecretRef:\n      name: source-creds\n"
    );
    env.apply_yaml(&linktoken_yaml("migration", ORG, &[], "creds", &source))
        .await;
}

/// Waits for Linked and checks it holds: the Secret's token is the one the source org holds,
/// SYNCED. Returns the token.
async fn wait_linked(env: &Env) -> String {
    let lt = env.wait_reason("migration", Reason::Linked, WAIT).await;
    assert_eq!(condition(&lt, "Ready").0, "True");
    assert_eq!(condition(&lt, "Linked").0, "True");
    let token = env.token_in("migration", "linkToken").await.expect("token");
    let link = env
        .sim
        .state
        .source_link(DEMO_SOURCE_ORG_ID)
        .expect("the source org is linked");
    assert_eq!(link.token_sha256, hex::encode(Sha256::digest(&token)));
    assert_eq!(
        env.sim.state.source_status(DEMO_SOURCE_ORG_ID),
        Some(SyncStatus::Synced)
    );
    token
}

/// Token requests the source port answered with `status`.
fn token_requests(env: &Env, status: u16) -> u64 {
    env.sim
        .state
        .calls("POST", CallKind::SourceOauthToken, status)
}

/// Bearer tokens the source port minted for the demo service account.
fn minted(env: &Env) -> u64 {
    env.sim
        .state
        .snapshot()
        .source_oauth
        .get(DEMO_SOURCE_CLIENT_ID)
        .map_or(0, |s| s.minted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_manager_service_account_links_end_to_end_and_nothing_secret_leaks() {
    let c = require_cluster!();
    let env = sa_env(c, "src-sa", DEMO_SOURCE_CLIENT_SECRET).await;
    apply_migration(&env).await;
    let token = wait_linked(&env).await;
    let links = env
        .sim
        .state
        .source_calls()
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/migrationLink") && c.status == 200)
        .count();
    assert_eq!(links, 1, "linked once");

    assert_eq!(minted(&env), 1);

    // A rotation relinks (the source refuses a second link, the operator unlinks, then links)
    // with the cached bearer token: no mint per call.
    env.rotate("migration", "1").await;
    let new = env.wait_new_token("migration", &token, WAIT).await;
    let relinked = eventually(WAIT, "linked with the new token", || async {
        let t = wait_linked(&env).await;
        (t == new).then_some(t)
    })
    .await;
    assert_eq!(relinked, new);
    let source_calls = env.sim.state.source_calls();
    assert!(
        source_calls
            .iter()
            .any(|c| c.method == "DELETE" && c.status == 204),
        "{source_calls:?}"
    );
    assert!(
        source_calls.len() >= 4,
        "link, refused link, unlink, link: {source_calls:?}"
    );
    assert_eq!(minted(&env), 1, "one bearer token, reused");
    assert_eq!(token_requests(&env, 200), 1);

    // Deletion: unlinked at the source with the service account, then revoked in Atlas.
    env.delete_linktoken("migration").await;
    env.wait_linktoken_gone("migration", WAIT).await;
    assert!(
        env.sim.state.source_link(DEMO_SOURCE_ORG_ID).is_none(),
        "unlinked"
    );
    assert!(env.revoked(&new), "then revoked");
    env.wait_event("migration", "Unlinked", "Normal", WAIT)
        .await;

    env.assert_no_secret_leaked(&[&token, &new, DEMO_SOURCE_CLIENT_SECRET, PRIVATE_KEY])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_is_unauthorized_without_a_hot_loop_and_links_once_fixed() {
    let c = require_cluster!();
    let env = sa_env(c, "src-sa-wrong", WRONG_SECRET).await;
    apply_migration(&env).await;
    let lt = env
        .wait_reason("migration", Reason::SourceUnauthorized, WAIT)
        .await;
    let (linked, reason, message) = condition(&lt, "Linked");
    assert_eq!(
        (linked.as_str(), reason.as_str()),
        ("False", "SourceUnauthorized")
    );
    assert_eq!(
        condition(&lt, "Stalled").0,
        "True",
        "only a user can fix it"
    );
    assert!(
        message.contains("token endpoint") && message.contains("invalid_client"),
        "{message}"
    );
    // The token was issued in Atlas: only the link is missing, and nothing reached the
    // migrationLink endpoint without a bearer token.
    assert!(env.token_in("migration", "linkToken").await.is_some());
    assert!(env.sim.state.source_link(DEMO_SOURCE_ORG_ID).is_none());

    // No hot loop: rechecked on a backing-off timer, a handful of token requests at most.
    let before = token_requests(&env, 401);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = token_requests(&env, 401) - before;
    eprintln!(
        "token requests with a wrong secret in {:.0?}: {during}",
        started.elapsed()
    );
    assert!(during <= 8, "{during} token requests in 10 s: a hot loop");
    assert_eq!(minted(&env), 0);

    // Fixed in place (not a new Secret: the Secret is not watched): linked on the recheck.
    env.update_secret_data(
        "source-creds",
        &[
            ("clientId", DEMO_SOURCE_CLIENT_ID),
            ("clientSecret", DEMO_SOURCE_CLIENT_SECRET),
        ],
    )
    .await;
    let token = wait_linked(&env).await;
    assert_eq!(minted(&env), 1);

    env.assert_no_secret_leaked(&[&token, WRONG_SECRET, DEMO_SOURCE_CLIENT_SECRET, PRIVATE_KEY])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_without_a_token_endpoint_says_to_use_an_api_key() {
    let c = require_cluster!();
    let env = sa_env(c, "src-sa-om", DEMO_SOURCE_CLIENT_SECRET).await;
    // An Ops Manager has no /api/oauth/token: its 404 (the source's ApiError) stands in.
    env.fault(FaultSpec {
        target: FaultTarget::SourceOauth,
        ..status_fault(404, "RESOURCE_NOT_FOUND", Some("POST"), None)
    });
    apply_migration(&env).await;
    let lt = env
        .wait_reason("migration", Reason::SourceConfigInvalid, WAIT)
        .await;
    let (_, _, message) = condition(&lt, "Ready");
    assert!(
        message.contains("publicApiKey and privateApiKey") && message.contains("404"),
        "{message}"
    );
    assert_eq!(condition(&lt, "Stalled").0, "True");
    assert!(env.sim.state.source_link(DEMO_SOURCE_ORG_ID).is_none());
    env.assert_no_secret_leaked(&[DEMO_SOURCE_CLIENT_SECRET, PRIVATE_KEY])
        .await;
}

// ---- The source client alone, against atlas-sim (no control plane) --------------------------

/// atlas-sim on loopback (demo config: the source port with the demo service account).
async fn sim() -> atlas_sim::SimHandle {
    let any = "127.0.0.1:0".parse().expect("addr");
    atlas_sim::SimServer::start(SimConfig::demo(), any, any)
        .await
        .expect("atlas-sim")
}

/// A live link token minted on `h`'s Atlas side.
async fn atlas_token(h: &atlas_sim::SimHandle) -> LinkTokenValue {
    AtlasClient::new(AtlasConfig::with_base_url(&h.atlas_url))
        .expect("client")
        .create_link_token(
            &Credentials::api_key(DEMO_PUBLIC_KEY, DEMO_PRIVATE_KEY),
            DEMO_ORG_ID,
            &[],
        )
        .await
        .expect("token")
}

fn source_minted(h: &atlas_sim::SimHandle, client: &str) -> u64 {
    h.state
        .snapshot()
        .source_oauth
        .get(client)
        .map_or(0, |s| s.minted)
}

/// The token cache is keyed by account and source: the same account at two sources is two
/// tokens; a token the source stops accepting (expired early) is replaced once, not looped on.
/// A client whose cluster admin allows these source URLs.
fn allowing(urls: &str) -> SourceConfig {
    SourceConfig {
        allowed: AllowedSources::parse(urls).expect("source URLs"),
        ..SourceConfig::default()
    }
}

#[tokio::test]
async fn the_source_client_mints_per_source_and_remints_a_rejected_token_once() {
    let (a, b) = (sim().await, sim().await);
    let sa = Credentials::service_account(DEMO_SOURCE_CLIENT_ID, DEMO_SOURCE_CLIENT_SECRET);
    let url_a = a.source_url().expect("source port");
    let url_b = b.source_url().expect("source port");
    let client = SourceClient::new(allowing(&format!("{url_a},{url_b}")), None);
    let (ta, tb) = (
        Target {
            url: &url_a,
            ca_pem: None,
        },
        Target {
            url: &url_b,
            ca_pem: None,
        },
    );
    let token = atlas_token(&a).await;
    let linked = client
        .link(ta, &sa, DEMO_SOURCE_ORG_ID, &token)
        .await
        .expect("link");
    assert_eq!(linked, Some(linktoken_operator::source::SyncStatus::Synced));
    for _ in 0..3 {
        client
            .status(ta, &sa, DEMO_SOURCE_ORG_ID)
            .await
            .expect("status");
    }
    assert_eq!(source_minted(&a, DEMO_SOURCE_CLIENT_ID), 1, "reused");
    // Another source, the same account: a token of its own (b's status: no link there).
    let none = client
        .status(tb, &sa, DEMO_SOURCE_ORG_ID)
        .await
        .expect("status at b");
    assert_eq!(none, None);
    assert_eq!(source_minted(&b, DEMO_SOURCE_CLIENT_ID), 1);
    // Back at the first source: its token is still cached (b's did not replace it).
    for t in [ta, tb, ta] {
        client
            .status(t, &sa, DEMO_SOURCE_ORG_ID)
            .await
            .expect("status");
    }
    assert_eq!(source_minted(&a, DEMO_SOURCE_CLIENT_ID), 1);
    assert_eq!(source_minted(&b, DEMO_SOURCE_CLIENT_ID), 1);

    // An account whose tokens die after 1 s, sooner than the client's shortest reuse: the
    // source answers 401 to the cached token, the client mints once more and succeeds.
    let mut short = ServiceAccountConfig::new(
        "mdb_sa_id_short",
        "mdb_sa_sk_short",
        roles(DEMO_SOURCE_ORG_ID, ORG_OWNER),
    );
    short.token_lifetime_seconds = 1;
    a.state.add_source_service_account(short).expect("add");
    let short = Credentials::service_account("mdb_sa_id_short", "mdb_sa_sk_short");
    client
        .status(ta, &short, DEMO_SOURCE_ORG_ID)
        .await
        .expect("status");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let st = client
        .status(ta, &short, DEMO_SOURCE_ORG_ID)
        .await
        .expect("status after expiry");
    assert_eq!(st, Some(linktoken_operator::source::SyncStatus::Synced));
    assert_eq!(source_minted(&a, "mdb_sa_id_short"), 2, "one re-mint");
}

#[tokio::test]
async fn a_wrong_client_secret_fails_at_the_token_endpoint_naming_no_secret() {
    let h = sim().await;
    let url = h.source_url().expect("source port");
    let client = SourceClient::new(allowing(&url), None);
    let target = Target {
        url: &url,
        ca_pem: None,
    };
    let wrong = Credentials::service_account(DEMO_SOURCE_CLIENT_ID, WRONG_SECRET);
    let e = client
        .status(target, &wrong, DEMO_SOURCE_ORG_ID)
        .await
        .expect_err("refused");
    assert_eq!(e.reason(), Reason::SourceUnauthorized);
    assert_eq!(e.error_code(), Some("invalid_client"));
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(WRONG_SECRET), "{shown}");
    assert!(!shown.contains(DEMO_SOURCE_CLIENT_ID), "{shown}");
    // No call reached the migrationLink endpoint.
    assert!(
        h.state
            .source_calls()
            .iter()
            .all(|c| c.path == "/api/oauth/token")
    );
    // The failure is shared for a cool-down: a burst of reconciles costs one request.
    for _ in 0..5 {
        assert!(
            client
                .status(target, &wrong, DEMO_SOURCE_ORG_ID)
                .await
                .is_err()
        );
    }
    assert_eq!(
        h.state.calls("POST", CallKind::SourceOauthToken, 401),
        1,
        "one token request for the burst"
    );
}
