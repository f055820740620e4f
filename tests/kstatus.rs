//! What Flux (`wait: true`, Kustomization health) and kpt (`live apply`) see of a LinkToken:
//! the real kstatus library (`sigs.k8s.io/cli-utils/pkg/kstatus/status`, built by
//! `scripts/build-tools.sh` as `kstatus` from `tools/kstatus`) run on live LinkTokens, as
//! `kubectl get -o json` returns them, in every state docs/gitops.md and docs/conditions.md
//! promise.
use testkit::require_cluster;

use std::time::Duration;

use linktoken_operator::api::Reason;
use testkit::e2e::{Env, ORG, linktoken_yaml, status_fault};
use testkit::eventually;
use testkit::kstatus::{kstatus_bin, kstatus_of};
use testkit::operator::PAUSE_ENV;

/// An org atlas-sim does not know (POST answers 404).
const UNKNOWN_ORG: &str = "ffffffffffffffffffffffff";
/// An org no other LinkToken of the test claims (credentials are looked up first anyway).
const OTHER_ORG: &str = "5f1e9b2a3c4d5e6f7a8b9c0f";
/// An org added for the LinkToken whose Secret lands late, with its own API key (see
/// `Env::add_owned_org`).
const LATE_ORG: &str = "5f1e9b2a3c4d5e6f7a8b9c10";
/// The operator's `--credentials-grace` in these tests.
const GRACE: Duration = Duration::from_secs(8);
/// An org of the demo key whose every link-token call answers 503.
const FLAKY_ORG: &str = "5f1e9b2a3c4d5e6f7a8b9c0e";

#[tokio::test]
async fn kstatus_computes_what_the_docs_promise_for_every_state() {
    let c = require_cluster!();
    let Some(bin) = kstatus_bin(c) else { return };
    let mut env = Env::new(c, "kstatus").await;
    env.api_key_secret("creds").await;
    env.add_owned_org(LATE_ORG);
    let mut flaky = status_fault(503, "SERVICE_UNAVAILABLE", None, None);
    flaky.org_id = Some(FLAKY_ORG.to_string());
    env.fault(flaky);

    // No operator yet: no status at all. kstatus has nothing to judge and answers Current, so
    // a Flux `wait: true` alone passes before any token exists (docs/gitops.md: use
    // healthCheckExprs on Ready).
    env.apply_yaml(&linktoken_yaml("early", ORG, &["10.0.0.1"], "creds", ""))
        .await;
    let (status, msg) = kstatus_of(&env, &bin, "early");
    assert_eq!(status, "Current", "no status yet: {msg}");

    env.start_operator(&[&format!("--credentials-grace={}s", GRACE.as_secs())]);

    // Ready=True (TokenIssued) for the current generation: Current.
    env.wait_ready("early").await;
    let (status, msg) = kstatus_of(&env, &bin, "early");
    assert_eq!(status, "Current", "Ready: {msg}");

    // Terminal failures (Stalled=True): Failed, with the condition's message.
    env.apply_yaml(&linktoken_yaml(
        "unknown-org",
        UNKNOWN_ORG,
        &["10.0.0.1"],
        "creds",
        "",
    ))
    .await;
    env.wait_reason("unknown-org", Reason::OrgNotFound, Duration::from_secs(30))
        .await;
    let (status, msg) = kstatus_of(&env, &bin, "unknown-org");
    assert_eq!(status, "Failed", "OrgNotFound: {msg}");

    // "early" already manages ORG: this younger one is refused.
    env.apply_yaml(&linktoken_yaml("second", ORG, &["10.0.0.1"], "creds", ""))
        .await;
    env.wait_reason("second", Reason::OrgConflict, Duration::from_secs(30))
        .await;
    let (status, msg) = kstatus_of(&env, &bin, "second");
    assert_eq!(status, "Failed", "OrgConflict: {msg}");

    // A missing credentials Secret: InProgress within the grace period (an ExternalSecret may
    // still deliver it), Failed after it (docs/conditions.md).
    env.apply_yaml(&linktoken_yaml(
        "no-creds",
        OTHER_ORG,
        &["10.0.0.1"],
        "missing",
        "",
    ))
    .await;
    env.wait_reason(
        "no-creds",
        Reason::CredentialsNotFound,
        Duration::from_secs(30),
    )
    .await;
    let (status, msg) = kstatus_of(&env, &bin, "no-creds");
    assert_eq!(status, "InProgress", "CredentialsNotFound in grace: {msg}");
    let msg = eventually(
        GRACE + Duration::from_secs(20),
        "no-creds Failed after the grace period",
        || async {
            let (status, msg) = kstatus_of(&env, &bin, "no-creds");
            (status == "Failed").then_some(msg)
        },
    )
    .await;
    assert!(msg.contains("does not exist"), "Failed message: {msg}");

    // The Secret lands during the grace period (an ExternalSecret's first sync): the LinkToken
    // goes from InProgress to Current without ever being Failed, so a Flux Kustomization
    // that applies both waits instead of failing.
    env.apply_yaml(&linktoken_yaml(
        "late-creds",
        LATE_ORG,
        &["10.0.0.1"],
        "late",
        "",
    ))
    .await;
    env.wait_reason(
        "late-creds",
        Reason::CredentialsNotFound,
        Duration::from_secs(30),
    )
    .await;
    let (status, msg) = kstatus_of(&env, &bin, "late-creds");
    assert_eq!(status, "InProgress", "before the Secret lands: {msg}");
    env.put_secret(
        "late",
        &[
            ("publicApiKey", "pub5f1e9b2a"),
            ("privateApiKey", "private-key-of-a-test-org"),
        ],
    )
    .await;
    env.wait_ready("late-creds").await;
    let (status, msg) = kstatus_of(&env, &bin, "late-creds");
    assert_eq!(status, "Current", "after the Secret landed: {msg}");

    // A transient Atlas failure (503) is retried: InProgress, never Failed.
    env.apply_yaml(&linktoken_yaml(
        "flaky",
        FLAKY_ORG,
        &["10.0.0.1"],
        "creds",
        "",
    ))
    .await;
    env.wait_reason("flaky", Reason::AtlasUnavailable, Duration::from_secs(30))
        .await;
    let (status, msg) = kstatus_of(&env, &bin, "flaky");
    assert_eq!(status, "InProgress", "503: {msg}");
}

/// The operator's first write on a new LinkToken, before any Atlas call, is Reconciling
/// (`Issuing`, with the in-flight marker): from the first reconcile on, kstatus says InProgress
/// and a Flux `wait: true` waits. (Before that first reconcile, or with no operator running,
/// there is no status and kstatus says Current: see the test above and docs/gitops.md.)
#[tokio::test]
async fn the_first_write_is_in_progress_before_atlas_is_called() {
    let c = require_cluster!();
    let Some(bin) = kstatus_bin(c) else { return };
    let mut env = Env::new(c, "kstatus-first").await;
    env.api_key_secret("creds").await;
    // Hold every issue just before its POST, long enough to look.
    let op = env.spawn_operator_with_env(
        &env.cluster.kubeconfig,
        &[(PAUSE_ENV, "before-post=15s")],
        &[],
    );
    env.operator = Some(op);
    env.apply_yaml(&linktoken_yaml("first", ORG, &["10.0.0.1"], "creds", ""))
        .await;
    env.wait_reason("first", Reason::Issuing, Duration::from_secs(30))
        .await;
    assert_eq!(
        env.atlas_calls(),
        0,
        "the status came before any Atlas call"
    );
    let (status, msg) = kstatus_of(&env, &bin, "first");
    assert_eq!(status, "InProgress", "first write: {msg}");
    env.wait_ready("first").await;
    let (status, msg) = kstatus_of(&env, &bin, "first");
    assert_eq!(status, "Current", "then Ready: {msg}");
}
