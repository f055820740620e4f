//! End to end, a hostile or broken Atlas (issue 13, defect 1 and item 8) and a controller that
//! cannot die silently. A `Retry-After` of `u64::MAX` seconds, of a date in the year 9999, on
//! the POST, the DELETE or the OAuth token endpoint must neither kill the controller nor hold
//! an object for longer than `--retry-max-delay`; a 404 on DELETE that is not Atlas's is not
//! "already revoked"; a rotate annotation and a deletion are not held by a stored retry; a
//! controller that dies takes the process (and the Lease) with it; a replica that loses the
//! Lease aborts its in-flight work instead of finishing it. Real control plane, the operator
//! binary, atlas-sim.
use testkit::require_cluster;

use std::time::{Duration, Instant};

use atlas_sim::{CallKind, FaultKind, FaultSpec, FaultTarget};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use linktoken_operator::api::Reason;
use testkit::e2e::{CLIENT_ID, CLIENT_SECRET, Env, ORG, Operator, linktoken_yaml};

const ORG_B: &str = "5f1e9b2a3c4d5e6f7a8b9c0e";
/// `u64::MAX` seconds: overflowed every Duration/Instant sum it met.
const ABSURD: &str = "18446744073709551615";
/// An HTTP-date some 8000 years ahead: parsed fine, then held the object "until then".
const FAR_DATE: &str = "Fri, 31 Dec 9999 23:59:59 GMT";
/// The test spawner runs the operator with `--retry-max-delay=5s`: every retry is due within
/// that plus 2 s of jitter; this bound leaves room for two of them and a loaded machine.
const RECOVER: Duration = Duration::from_secs(45);

fn fault(
    kind: FaultKind,
    status: u16,
    retry_after: &str,
    method: Option<&str>,
    target: FaultTarget,
) -> FaultSpec {
    FaultSpec {
        kind,
        status: Some(status),
        body: None,
        headers: [("Retry-After".to_string(), retry_after.to_string())].into(),
        latency_ms: 0,
        count: Some(1),
        method: method.map(str::to_string),
        org_id: None,
        target,
    }
}

fn still_running(op: &mut Operator) {
    assert!(
        matches!(op.child.try_wait(), Ok(None)),
        "the operator exited: {:?}",
        op.child.try_wait()
    );
}

/// The operator still reconciles: a new LinkToken for another org (owned by the demo key too)
/// turns Ready.
async fn still_reconciles(env: &Env, name: &str) {
    env.apply_yaml(&linktoken_yaml(name, ORG_B, &[], "creds", ""))
        .await;
    env.wait_reason(name, Reason::TokenIssued, RECOVER).await;
}

#[tokio::test]
async fn absurd_and_http_date_retry_after_on_post_neither_kill_nor_wedge_the_controller() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-ra-post").await;
    env.api_key_secret("creds").await;
    // Oldest first: a 429 saying "in u64::MAX seconds", then a 503 saying "in the year 9999".
    env.fault(fault(
        FaultKind::Status,
        429,
        ABSURD,
        Some("POST"),
        FaultTarget::LinkTokens,
    ));
    env.fault(fault(
        FaultKind::Status,
        503,
        FAR_DATE,
        Some("POST"),
        FaultTarget::LinkTokens,
    ));
    env.start_operator(&[]);
    let started = Instant::now();
    env.linktoken("migration", ORG, &[]).await;

    // Both faults answered, each retried after at most --retry-max-delay (+ jitter).
    env.wait_reason("migration", Reason::TokenIssued, RECOVER)
        .await;
    eprintln!(
        "Ready {:?} after two hostile Retry-After",
        started.elapsed()
    );
    assert_eq!(
        env.sim.state.calls("POST", CallKind::LinkTokens, 429)
            + env.sim.state.calls("POST", CallKind::LinkTokens, 503),
        2
    );
    let token = env.token_in("migration", "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&token));
    still_running(env.operator.as_mut().expect("operator"));
    still_reconciles(&env, "second").await;
    env.assert_at_most_one_link_per_org();
}

#[tokio::test]
async fn absurd_and_http_date_retry_after_on_delete_do_not_block_the_revocation() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-ra-delete").await;
    env.api_key_secret("creds").await;
    env.start_operator(&[]);
    env.linktoken("migration", ORG, &[]).await;
    env.wait_ready("migration").await;
    let token = env.token_in("migration", "linkToken").await.expect("token");

    env.fault(fault(
        FaultKind::Status,
        429,
        ABSURD,
        Some("DELETE"),
        FaultTarget::LinkTokens,
    ));
    env.fault(fault(
        FaultKind::Status,
        503,
        FAR_DATE,
        Some("DELETE"),
        FaultTarget::LinkTokens,
    ));
    let deleted = Instant::now();
    env.delete_linktoken("migration").await;
    env.wait_linktoken_gone("migration", RECOVER).await;
    eprintln!(
        "revoked and released {:?} after the delete",
        deleted.elapsed()
    );
    assert_eq!(
        env.sim.state.calls("DELETE", CallKind::LinkTokens, 429)
            + env.sim.state.calls("DELETE", CallKind::LinkTokens, 503),
        2,
        "both faults were met"
    );
    assert!(
        !env.sim.state.is_token_live(&token),
        "the finalizer went only after the token was revoked"
    );
    still_running(env.operator.as_mut().expect("operator"));
    still_reconciles(&env, "second").await;
}

#[tokio::test]
async fn absurd_and_http_date_retry_after_on_the_token_endpoint_neither_kill_nor_wedge() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-ra-oauth").await;
    env.put_secret(
        "sa",
        &[("clientId", CLIENT_ID), ("clientSecret", CLIENT_SECRET)],
    )
    .await;
    env.api_key_secret("creds").await;
    env.fault(fault(
        FaultKind::Status,
        429,
        ABSURD,
        None,
        FaultTarget::Oauth,
    ));
    env.fault(fault(
        FaultKind::Garbage,
        503,
        FAR_DATE,
        None,
        FaultTarget::Oauth,
    ));
    env.start_operator(&[]);
    let started = Instant::now();
    env.apply_yaml(&linktoken_yaml("migration", ORG, &[], "sa", ""))
        .await;
    env.wait_reason("migration", Reason::TokenIssued, RECOVER)
        .await;
    eprintln!(
        "Ready {:?} after two hostile token-endpoint answers",
        started.elapsed()
    );
    assert_eq!(
        env.sim.state.calls("POST", CallKind::OauthToken, 429)
            + env.sim.state.calls("POST", CallKind::OauthToken, 503),
        2
    );
    let token = env.token_in("migration", "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&token));
    still_running(env.operator.as_mut().expect("operator"));
    still_reconciles(&env, "second").await;
    env.assert_at_most_one_link_per_org();
}

#[tokio::test]
async fn a_rotate_annotation_and_a_deletion_are_not_held_by_a_long_retry_after() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-ra-hold").await;
    env.api_key_secret("creds").await;
    // Atlas may legitimately ask for 10 minutes, and the operator may allow it.
    env.start_operator(&["--retry-max-delay=10m"]);
    env.linktoken("migration", ORG, &[]).await;
    env.wait_ready("migration").await;
    let first = env.token_in("migration", "linkToken").await.expect("token");

    env.fault(fault(
        FaultKind::Status,
        503,
        "600",
        Some("POST"),
        FaultTarget::LinkTokens,
    ));
    env.rotate("migration", "r1").await;
    env.wait_reason(
        "migration",
        Reason::AtlasUnavailable,
        Duration::from_secs(30),
    )
    .await;

    // A second rotation is a new user request: tried now, not in 10 minutes.
    let asked = Instant::now();
    env.rotate("migration", "r2").await;
    let second = env
        .wait_new_token("migration", &first, Duration::from_secs(20))
        .await;
    eprintln!("rotated {:?} after the second request", asked.elapsed());
    env.wait_ready("migration").await;
    assert!(!env.sim.state.is_token_live(&first));
    env.assert_at_most_one_link_per_org();

    // Another 10-minute hold; then the LinkToken is deleted: the revocation runs now.
    env.fault(fault(
        FaultKind::Status,
        503,
        "600",
        Some("POST"),
        FaultTarget::LinkTokens,
    ));
    env.rotate("migration", "r3").await;
    env.wait_reason(
        "migration",
        Reason::AtlasUnavailable,
        Duration::from_secs(30),
    )
    .await;
    let deleted = Instant::now();
    env.delete_linktoken("migration").await;
    env.wait_linktoken_gone("migration", Duration::from_secs(20))
        .await;
    eprintln!("deleted {:?} after the request", deleted.elapsed());
    assert!(!env.sim.state.is_token_live(&second));
    assert_eq!(env.sim.state.live_links(ORG), 0, "nothing left live");
    still_running(env.operator.as_mut().expect("operator"));
}

#[tokio::test]
async fn a_gateway_404_on_delete_is_retried_not_taken_for_already_revoked() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-gw404").await;
    env.api_key_secret("creds").await;
    env.start_operator(&[]);
    env.linktoken("migration", ORG, &[]).await;
    env.wait_ready("migration").await;
    let token = env.token_in("migration", "linkToken").await.expect("token");

    // A proxy's 404 pages: HTML, then an empty text body. Neither comes from Atlas.
    let gateway = |kind: FaultKind, body: Option<serde_json::Value>| FaultSpec {
        kind,
        status: Some(404),
        body,
        headers: Default::default(),
        latency_ms: 0,
        count: Some(1),
        method: Some("DELETE".into()),
        org_id: None,
        target: FaultTarget::LinkTokens,
    };
    env.fault(gateway(FaultKind::Garbage, None));
    env.fault(gateway(FaultKind::Status, Some(serde_json::json!(""))));
    env.delete_linktoken("migration").await;
    env.wait_event(
        "migration",
        "RevocationBlocked",
        "Warning",
        Duration::from_secs(20),
    )
    .await;
    env.wait_linktoken_gone("migration", RECOVER).await;
    assert_eq!(
        env.sim.state.calls("DELETE", CallKind::LinkTokens, 404),
        2,
        "both gateway answers were met"
    );
    assert!(
        !env.sim.state.is_token_live(&token),
        "the link was revoked, not assumed gone"
    );
    still_running(env.operator.as_mut().expect("operator"));
}

/// A 404 on DELETE with Atlas's ApiError shape that is not Atlas's "no link" answer (a retired
/// or moved path: `RESOURCE_NOT_FOUND`) while the link is live.
fn not_the_no_link_answer(count: u64) -> FaultSpec {
    FaultSpec {
        kind: FaultKind::Status,
        status: Some(404),
        body: Some(serde_json::json!({
            "error": 404, "errorCode": "RESOURCE_NOT_FOUND", "reason": "Not Found",
            "detail": "Cannot find resource /api/atlas/v2/orgs/x/liveMigrations/linkTokens.",
            "parameters": []
        })),
        headers: Default::default(),
        latency_ms: 0,
        count: Some(count),
        method: Some("DELETE".into()),
        org_id: None,
        target: FaultTarget::LinkTokens,
    }
}

#[tokio::test]
async fn a_404_that_is_not_atlas_s_no_link_answer_is_never_reported_as_revoked() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-404-api").await;
    env.api_key_secret("creds").await;
    env.start_operator(&[]);
    env.linktoken("migration", ORG, &[]).await;
    env.wait_ready("migration").await;
    let token = env.token_in("migration", "linkToken").await.expect("token");

    // Atlas's ApiError, but not its no-link answer: the link's fate is unknown. Deletion is
    // not blocked by it (the documented RevocationSkipped), but nothing says "revoked".
    env.fault(not_the_no_link_answer(1));
    env.delete_linktoken("migration").await;
    env.wait_linktoken_gone("migration", RECOVER).await;
    let events = env.events("migration").await;
    assert!(
        events
            .iter()
            .any(|(reason, _, _)| reason == "RevocationSkipped"),
        "a RevocationSkipped warning: {events:?}"
    );
    assert!(
        !events.iter().any(|(reason, _, _)| reason == "TokenRevoked"),
        "no TokenRevoked for a link that is still live: {events:?}"
    );
    assert!(
        env.sim.state.is_token_live(&token),
        "the fault kept it live"
    );

    // The skipped link is remembered until a DELETE Atlas confirmed: the org's next issue
    // revokes it first, so the org never holds two live links.
    env.linktoken("next", ORG, &[]).await;
    env.wait_ready("next").await;
    assert!(
        !env.sim.state.is_token_live(&token),
        "revoked by the next issue"
    );
    assert_eq!(env.sim.state.live_links(ORG), 1, "one live link in the org");
    still_running(env.operator.as_mut().expect("operator"));
}

/// The DELETE before a rotation's POST meets the same 404: no POST may follow (the old link is
/// live, a POST would leave two), and the memory of a skipped revocation is not cleared by it.
#[tokio::test]
async fn a_rotation_whose_delete_meets_a_foreign_404_does_not_mint_a_second_live_link() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-404-rotate").await;
    env.api_key_secret("creds").await;
    env.start_operator(&[]);
    env.linktoken("migration", ORG, &[]).await;
    env.wait_ready("migration").await;
    let token = env.token_in("migration", "linkToken").await.expect("token");
    let posts = env.sim.state.calls("POST", CallKind::LinkTokens, 201);

    env.fault(not_the_no_link_answer(2));
    env.rotate("migration", "after-a-foreign-404").await;
    let rotated = env.wait_new_token("migration", &token, RECOVER).await;
    assert_eq!(env.sim.state.live_links(ORG), 1, "one live link in the org");
    assert!(
        !env.sim.state.is_token_live(&token),
        "the old token is revoked"
    );
    assert!(env.sim.state.is_token_live(&rotated));
    assert_eq!(
        env.sim.state.calls("DELETE", CallKind::LinkTokens, 404),
        2,
        "both 404s were met before the rotation went through"
    );
    assert_eq!(
        env.sim.state.calls("POST", CallKind::LinkTokens, 201),
        posts + 1,
        "one POST, after a DELETE Atlas confirmed"
    );
    still_running(env.operator.as_mut().expect("operator"));
}

/// orgId moves to another org while the old org's DELETE meets a gateway's 404 page: the old
/// org is retried, never dropped as "refused" with its token live.
#[tokio::test]
async fn a_gateway_404_while_revoking_the_previous_org_is_retried() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-gw404-prev").await;
    env.api_key_secret("creds").await;
    env.start_operator(&[]);
    env.linktoken("migration", ORG, &[]).await;
    env.wait_ready("migration").await;
    let old = env.token_in("migration", "linkToken").await.expect("token");

    env.fault(FaultSpec {
        kind: FaultKind::Garbage,
        status: Some(404),
        body: None,
        headers: Default::default(),
        latency_ms: 0,
        count: Some(2),
        method: Some("DELETE".into()),
        org_id: Some(ORG.into()),
        target: FaultTarget::LinkTokens,
    });
    env.patch_linktoken("migration", serde_json::json!({"spec": {"orgId": ORG_B}}))
        .await;
    let new = env.wait_new_token("migration", &old, RECOVER).await;
    assert_eq!(
        env.sim.state.calls("DELETE", CallKind::LinkTokens, 404),
        2,
        "both gateway answers were met"
    );
    assert!(
        !env.sim.state.is_token_live(&old),
        "the previous org's token was revoked, not skipped"
    );
    assert_eq!(
        env.sim.state.live_links(ORG),
        0,
        "nothing left in the old org"
    );
    assert!(env.sim.state.is_token_live(&new));
    let events = env.events("migration").await;
    assert!(
        !events
            .iter()
            .any(|(reason, _, _)| reason == "RevocationSkipped"),
        "a gateway's 404 is no refusal: {events:?}"
    );
    still_running(env.operator.as_mut().expect("operator"));
}

const LEASE: &str = "linktoken-e2e-hostile";

async fn lease_holder(env: &Env) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    leases
        .get_opt(LEASE)
        .await
        .expect("get Lease")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

#[tokio::test]
async fn a_dead_controller_releases_the_lease_and_exits_non_zero() {
    let c = require_cluster!();
    let env = Env::new(c, "e2e-death").await;
    env.api_key_secret("creds").await;
    let lease_ns = format!("--leader-election-namespace={}", env.ns);
    let lease_id = format!("--leader-election-id={LEASE}");
    // The test hook makes the reconcile panic just before its POST.
    let mut op = env.spawn_operator_with_env(
        &env.cluster.kubeconfig,
        &[(testkit::operator::PAUSE_ENV, "before-post=panic")],
        &["--leader-elect", &lease_ns, &lease_id],
    );
    testkit::eventually(Duration::from_secs(30), "the operator leads", || async {
        lease_holder(&env).await
    })
    .await;
    env.linktoken("migration", ORG, &[]).await;

    let status = op
        .wait_exit(Duration::from_secs(30))
        .expect("a process whose controller died must exit, not linger");
    assert!(!status.success(), "exit status {status:?}");
    let logs = op.logs();
    assert!(
        logs.contains("the controller stopped unexpectedly"),
        "{logs}"
    );
    assert_eq!(
        lease_holder(&env).await,
        None,
        "the Lease was released, so a standby takes over at once"
    );
    assert_eq!(
        env.sim.state.calls("POST", CallKind::LinkTokens, 201),
        0,
        "it died before the POST"
    );

    // A healthy replica takes over at once and finishes the interrupted issue.
    let taken = Instant::now();
    let _op2 = env.spawn_operator(&["--leader-elect", &lease_ns, &lease_id]);
    env.wait_ready("migration").await;
    eprintln!("a new replica made it Ready {:?} later", taken.elapsed());
    env.assert_at_most_one_link_per_org();
}

#[tokio::test]
async fn a_replica_that_loses_the_lease_aborts_in_flight_work_and_exits_non_zero() {
    let c = require_cluster!();
    let env = Env::new(c, "e2e-loss").await;
    env.api_key_secret("creds").await;
    let lease_ns = format!("--leader-election-namespace={}", env.ns);
    let lease_id = format!("--leader-election-id={LEASE}");
    // The reconcile waits 20 s before its POST; the drain on SIGTERM would allow 30 s.
    let mut op = env.spawn_operator_with_env(
        &env.cluster.kubeconfig,
        &[(testkit::operator::PAUSE_ENV, "before-post=20s")],
        &[
            "--leader-elect",
            &lease_ns,
            &lease_id,
            "--shutdown-timeout=30s",
        ],
    );
    testkit::eventually(Duration::from_secs(30), "the operator leads", || async {
        lease_holder(&env).await
    })
    .await;
    env.linktoken("migration", ORG, &[]).await;
    testkit::eventually(Duration::from_secs(30), "the reconcile paused", || async {
        op.logs().contains("pausing").then_some(())
    })
    .await;

    // Another replica takes the Lease (as after a network partition of this one).
    env.take_lease(LEASE, "another-replica").await;
    let taken = Instant::now();

    // It notices at its next renewal (every 5 s) and stops at once: well before the paused
    // reconcile would POST, and far sooner than a drain.
    let status = op
        .wait_exit(Duration::from_secs(12))
        .expect("the old leader exits right after noticing, without draining");
    eprintln!("exited {:?} after the Lease was taken", taken.elapsed());
    assert!(!status.success(), "exit status {status:?}");
    // The paused reconcile was aborted, not finished: no POST, now or later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.sim.state.calls("POST", CallKind::LinkTokens, 201),
        0,
        "a replica that lost the Lease issued a token"
    );
    assert_eq!(env.sim.state.live_links(ORG), 0);
    assert_eq!(
        lease_holder(&env).await.as_deref(),
        Some("another-replica"),
        "the new holder's Lease is left alone"
    );
}

/// The `linktoken_linktokens` gauge for one reason.
async fn gauge(url: &str, reason: Reason) -> Option<i64> {
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    let prefix = format!("linktoken_linktokens{{reason=\"{}\"}} ", reason.as_str());
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn a_linktoken_that_vanishes_without_cleanup_leaves_the_gauge() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-vanish").await;
    env.start_operator(&[]);
    // No credentials Secret: both wait in CredentialsNotFound, without Atlas calls.
    for name in ["gone", "stays"] {
        env.apply_yaml(&linktoken_yaml(name, ORG, &[], "missing", ""))
            .await;
        env.wait_reason(name, Reason::CredentialsNotFound, Duration::from_secs(30))
            .await;
    }
    let op = env.operator.as_ref().expect("operator");
    let url = op.metrics_url();
    testkit::eventually(Duration::from_secs(10), "the gauge counts 2", || async {
        (gauge(&url, Reason::CredentialsNotFound).await == Some(2)).then_some(())
    })
    .await;

    // While the operator is frozen, someone strips the finalizer and deletes "gone": the
    // object disappears without the operator's cleanup ever running for it.
    let pid = nix::unistd::Pid::from_raw(op.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    env.patch_linktoken(
        "gone",
        serde_json::json!({"metadata": {"finalizers": null}}),
    )
    .await;
    env.delete_linktoken("gone").await;
    env.wait_linktoken_gone("gone", Duration::from_secs(10))
        .await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");

    testkit::eventually(
        Duration::from_secs(15),
        "the vanished LinkToken leaves the gauge",
        || async { (gauge(&url, Reason::CredentialsNotFound).await == Some(1)).then_some(()) },
    )
    .await;
    still_running(env.operator.as_mut().expect("operator"));
}
