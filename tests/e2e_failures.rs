//! End to end, the failure reasons of the Ready condition (spec section 2): each one is
//! reported with its reason, a Warning event and (for Atlas failures) `status.atlasError`;
//! what only a user can fix makes no Atlas call until the user acts, and then recovers without
//! restarting anything. Real control plane, the operator binary, atlas-sim.
use testkit::require_cluster;

use std::time::{Duration, Instant};

use atlas_sim::CallKind;
use linktoken_operator::api::Reason;
use testkit::e2e::{
    CLIENT_ID, CLIENT_SECRET, Env, ORG, PRIVATE_KEY, PUBLIC_KEY, linktoken_yaml, status_fault,
};

const WAIT: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_secs(10);
const ORG_B: &str = "5f1e9b2a3c4d5e6f7a8b9c0e";

/// The Atlas error recorded in status: (httpStatus, errorCode).
async fn atlas_error(env: &Env, name: &str) -> (Option<i32>, Option<String>) {
    let st = env
        .get(name)
        .await
        .expect("LinkToken")
        .status
        .expect("status");
    let e = st.atlas_error.expect("status.atlasError");
    (e.http_status, e.error_code)
}

#[tokio::test]
async fn credentials_not_found_waits_without_atlas_calls_then_turns_ready_when_created() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-nocreds").await;
    // Stalled at once: the grace period for late credentials is tested in tests/kstatus.rs.
    env.start_operator(&["--credentials-grace=0s"]);
    env.linktoken("migration", ORG, &[]).await;
    env.wait_reason("migration", Reason::CredentialsNotFound, WAIT)
        .await;

    let checks = async {
        let (msg, stalled) = env.ready_message_and_stalled("migration").await;
        assert_eq!(stalled, "True", "only the user can help: Stalled");
        assert!(msg.contains("credentials Secret"), "{msg}");
        env.wait_event("migration", "CredentialsNotFound", "Warning", WAIT)
            .await;
    };
    tokio::join!(env.assert_quiet(QUIET), checks);
    assert_eq!(env.atlas_calls(), 0, "no Atlas call without credentials");

    // Created late: nothing is requeued for this reason, so only the Secret watch can bring
    // it back, and it must do so promptly.
    let created = Instant::now();
    env.api_key_secret("creds").await;
    env.wait_reason("migration", Reason::TokenIssued, Duration::from_secs(10))
        .await;
    eprintln!(
        "Ready {:?} after the credentials appeared",
        created.elapsed()
    );
    let token = env.token_in("migration", "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&token));
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&token, PRIVATE_KEY]).await;
}

#[tokio::test]
async fn credentials_invalid_for_a_missing_key_or_both_kinds_then_fixed_in_place() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-badcreds").await;
    env.put_secret("creds-missing", &[("publicApiKey", PUBLIC_KEY)])
        .await;
    env.put_secret(
        "creds-both",
        &[
            ("publicApiKey", PUBLIC_KEY),
            ("privateApiKey", PRIVATE_KEY),
            ("clientId", CLIENT_ID),
            ("clientSecret", CLIENT_SECRET),
        ],
    )
    .await;
    env.start_operator(&[]);
    env.apply_yaml(&linktoken_yaml("missing", ORG, &[], "creds-missing", ""))
        .await;
    env.apply_yaml(&linktoken_yaml("both", ORG_B, &[], "creds-both", ""))
        .await;
    env.wait_reason("missing", Reason::CredentialsInvalid, WAIT)
        .await;
    env.wait_reason("both", Reason::CredentialsInvalid, WAIT)
        .await;

    let checks = async {
        let (msg, stalled) = env.ready_message_and_stalled("missing").await;
        assert!(
            msg.contains("privateApiKey"),
            "names the missing key: {msg}"
        );
        assert_eq!(stalled, "True");
        let (msg, _) = env.ready_message_and_stalled("both").await;
        assert!(!msg.is_empty());
        env.wait_event("missing", "CredentialsInvalid", "Warning", WAIT)
            .await;
        env.wait_event("both", "CredentialsInvalid", "Warning", WAIT)
            .await;
    };
    tokio::join!(env.assert_quiet(QUIET), checks);
    assert_eq!(
        env.atlas_calls(),
        0,
        "no Atlas call with invalid credentials"
    );

    // Fixing the Secret in place (an update, no restart) is enough.
    env.update_secret_data(
        "creds-missing",
        &[("publicApiKey", PUBLIC_KEY), ("privateApiKey", PRIVATE_KEY)],
    )
    .await;
    env.wait_reason("missing", Reason::TokenIssued, Duration::from_secs(15))
        .await;
    let token = env.token_in("missing", "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&token));
    assert_eq!(
        env.wait_reason("both", Reason::CredentialsInvalid, WAIT)
            .await
            .status
            .and_then(|s| s.issued_for),
        None
    );
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&token, PRIVATE_KEY, CLIENT_SECRET])
        .await;
}

#[tokio::test]
async fn atlas_unauthorized_stalls_without_polling_and_recovers_when_credentials_are_fixed() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-401").await;
    let wrong = "wrong-private-key-1234";
    env.put_secret(
        "creds",
        &[("publicApiKey", PUBLIC_KEY), ("privateApiKey", wrong)],
    )
    .await;
    env.start_operator(&[]);
    env.linktoken("migration", ORG, &[]).await;
    env.wait_reason("migration", Reason::AtlasUnauthorized, WAIT)
        .await;
    let checks = async {
        assert_eq!(atlas_error(&env, "migration").await.0, Some(401));
        let (_, stalled) = env.ready_message_and_stalled("migration").await;
        assert_eq!(stalled, "True");
        env.wait_event("migration", "AtlasUnauthorized", "Warning", WAIT)
            .await;
    };
    tokio::join!(env.assert_quiet(QUIET), checks);
    assert_eq!(env.sim.state.live_links(ORG), 0);

    // Credentials fixed in place: the stalled LinkToken recovers on the Secret's change.
    env.update_secret_data(
        "creds",
        &[("publicApiKey", PUBLIC_KEY), ("privateApiKey", PRIVATE_KEY)],
    )
    .await;
    env.wait_reason("migration", Reason::TokenIssued, Duration::from_secs(15))
        .await;
    let lt = env.get("migration").await.expect("LinkToken");
    assert_eq!(
        lt.status.expect("status").atlas_error,
        None,
        "atlasError is cleared on success"
    );
    let token = env.token_in("migration", "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&token));
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&token, PRIVATE_KEY, wrong])
        .await;
}

#[tokio::test]
async fn atlas_forbidden_for_a_key_that_is_not_organization_owner() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-403").await;
    let member_private = "member-private-key-5678";
    env.add_api_key("memberpub", member_private, ORG, "ORG_MEMBER");
    env.put_secret(
        "creds",
        &[
            ("publicApiKey", "memberpub"),
            ("privateApiKey", member_private),
        ],
    )
    .await;
    env.start_operator(&[]);
    env.linktoken("migration", ORG, &[]).await;
    env.wait_reason("migration", Reason::AtlasForbidden, WAIT)
        .await;
    let checks = async {
        assert_eq!(atlas_error(&env, "migration").await.0, Some(403));
        let (msg, stalled) = env.ready_message_and_stalled("migration").await;
        assert!(
            msg.contains("USER_UNAUTHORIZED"),
            "carries the errorCode: {msg}"
        );
        assert_eq!(stalled, "True");
        env.wait_event("migration", "AtlasForbidden", "Warning", WAIT)
            .await;
    };
    tokio::join!(env.assert_quiet(QUIET), checks);
    assert_eq!(env.sim.state.live_links(ORG), 0, "no link was created");
    assert_eq!(env.sim.state.calls("POST", CallKind::LinkTokens, 403), 1);
    env.assert_no_secret_leaked(&[member_private, PRIVATE_KEY])
        .await;
}

#[tokio::test]
async fn org_not_found_for_an_unknown_org() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-404").await;
    let unknown = "0123456789abcdef01234567";
    env.api_key_secret("creds").await;
    env.start_operator(&[]);
    env.linktoken("migration", unknown, &[]).await;
    env.wait_reason("migration", Reason::OrgNotFound, WAIT)
        .await;
    let checks = async {
        assert_eq!(atlas_error(&env, "migration").await.0, Some(404));
        env.wait_event("migration", "OrgNotFound", "Warning", WAIT)
            .await;
    };
    tokio::join!(env.assert_quiet(QUIET), checks);
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[PRIVATE_KEY]).await;
}

#[tokio::test]
async fn atlas_rejected_waits_for_a_spec_change() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-400").await;
    env.api_key_secret("creds").await;
    env.fault(status_fault(400, "INVALID_ATTRIBUTE", Some("POST"), None));
    env.start_operator(&[]);
    env.linktoken("migration", ORG, &["203.0.113.7"]).await;
    env.wait_reason("migration", Reason::AtlasRejected, WAIT)
        .await;
    let checks = async {
        assert_eq!(
            atlas_error(&env, "migration").await,
            (Some(400), Some("INVALID_ATTRIBUTE".into()))
        );
        let (msg, stalled) = env.ready_message_and_stalled("migration").await;
        assert!(msg.contains("INVALID_ATTRIBUTE"), "{msg}");
        assert_eq!(stalled, "True");
        env.wait_event("migration", "AtlasRejected", "Warning", WAIT)
            .await;
    };
    tokio::join!(env.assert_quiet(QUIET), checks);

    // The user changes the spec (Atlas now accepts it): a new attempt, Ready.
    env.sim.state.clear_faults();
    env.patch_linktoken(
        "migration",
        serde_json::json!({"spec": {"accessListIps": ["203.0.113.8"]}}),
    )
    .await;
    let lt = env.wait_ready("migration").await;
    assert_eq!(
        lt.status
            .and_then(|s| s.issued_for)
            .map(|i| i.access_list_ips),
        Some(vec!["203.0.113.8".to_string()])
    );
    let token = env.token_in("migration", "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&token));
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&token, PRIVATE_KEY]).await;
}

#[tokio::test]
async fn atlas_rate_limited_retries_no_earlier_than_retry_after() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-429").await;
    env.api_key_secret("creds").await;
    let mut fault = status_fault(429, "RATE_LIMITED", Some("POST"), Some(1));
    fault.headers.insert("Retry-After".into(), "3".into());
    env.fault(fault);
    env.start_operator(&[]);
    env.linktoken("migration", ORG, &[]).await;

    // The moment the 429 is answered, and the calls made so far.
    let (limited_at, calls_then) = testkit::eventually(WAIT, "the 429", || async {
        (env.sim.state.calls("POST", CallKind::LinkTokens, 429) == 1)
            .then(|| (Instant::now(), env.atlas_calls()))
    })
    .await;
    env.wait_reason("migration", Reason::AtlasRateLimited, WAIT)
        .await;
    let next_call = testkit::eventually(WAIT, "the retry after the 429", || async {
        (env.atlas_calls() > calls_then).then(Instant::now)
    })
    .await;
    let waited = next_call - limited_at;
    assert!(
        waited >= Duration::from_millis(2800),
        "retried {waited:?} after a 429 with Retry-After: 3"
    );
    env.wait_ready("migration").await;
    let token = env.token_in("migration", "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&token));
    assert_eq!(env.sim.state.live_links(ORG), 1);
    env.wait_event(
        "migration",
        "AtlasRateLimited",
        "Warning",
        Duration::from_secs(10),
    )
    .await;
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&token, PRIVATE_KEY]).await;
}

#[tokio::test]
async fn atlas_unavailable_backs_off_and_turns_ready_when_atlas_heals() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-500").await;
    env.api_key_secret("creds").await;
    env.fault(status_fault(500, "UNEXPECTED_ERROR", Some("POST"), None));
    env.start_operator(&[]);
    env.linktoken("migration", ORG, &[]).await;
    env.wait_reason("migration", Reason::AtlasUnavailable, WAIT)
        .await;
    assert_eq!(atlas_error(&env, "migration").await.0, Some(500));
    let (_, stalled) = env.ready_message_and_stalled("migration").await;
    assert_eq!(stalled, "False", "Atlas may heal by itself: not Stalled");

    // It keeps retrying, with backoff (base 500ms, cap 5s): a few attempts in 8 s, not a storm.
    let before = env.sim.state.calls("POST", CallKind::LinkTokens, 500);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let retries = env.sim.state.calls("POST", CallKind::LinkTokens, 500) - before;
    assert!(
        (1..=8).contains(&retries),
        "{retries} POST retries in 8s against an unavailable Atlas"
    );
    assert_eq!(
        env.events("migration")
            .await
            .iter()
            .filter(|(r, _, _)| r == "AtlasUnavailable")
            .count(),
        1,
        "one Warning event, not one per retry"
    );

    env.sim.state.clear_faults();
    env.wait_reason("migration", Reason::TokenIssued, Duration::from_secs(15))
        .await;
    let token = env.token_in("migration", "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&token));
    assert_eq!(env.sim.state.live_links(ORG), 1);
    env.assert_at_most_one_link_per_org();
    env.assert_no_secret_leaked(&[&token, PRIVATE_KEY]).await;
}
