//! The link at the source with a Cloud Manager service account (clientId/clientSecret in the
//! source credentials Secret), end to end: the operator binary on the real control plane,
//! atlas-sim serving Atlas and the source side (whose port mints its own bearer tokens at
//! `/api/oauth/token`). What a user depends on:
//! - a service account links the source org as an API key does (Ready, reason Linked), with
//!   one token minted and reused, not one per call;
//! - a wrong client secret is SourceUnauthorized, without a hot loop on the token endpoint,
//!   and the link is made once the Secret is fixed (the credentials recheck timer);
//! - a source with no token endpoint (Ops Manager) is SourceConfigInvalid, saying to use an
//!   API key;
//! - no client secret, bearer token or link token appears in logs, events or status.
use testkit::require_cluster;

use std::time::{Duration, Instant};

use atlas_sim::config::{DEMO_SOURCE_CLIENT_ID, DEMO_SOURCE_CLIENT_SECRET, DEMO_SOURCE_ORG_ID};
use atlas_sim::{CallKind, FaultSpec, FaultTarget, SyncStatus};
use linktoken_operator::api::Reason;
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
