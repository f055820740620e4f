//! End to end: the link at the source (spec.source) is fenced like issuing. An actor that wrote
//! its link marker and was then held (think: a leader that lost its Lease, a process frozen
//! by the node) while a fresh actor linked the LinkToken must, when it resumes, neither post
//! its stale view to the source nor overwrite the fresh actor's status. Two operator processes
//! act on the namespace: A holds at a pause point of the link step, B does the work meanwhile.
//! The DELETE of a link the spec left is held and fenced the same way.
use testkit::require_cluster;

use std::time::Duration;

use atlas_sim::{ApiKeyConfig, ORG_OWNER, SourceCall, SourceOrgConfig, SyncStatus, roles};
use linktoken_operator::api::{LinkToken, Reason};
use sha2::{Digest, Sha256};
use testkit::e2e::{Env, ORG, Operator, PRIVATE_KEY, linktoken_yaml};
use testkit::operator::PAUSE_ENV;

const WAIT: Duration = Duration::from_secs(60);
/// How long A is held: long enough for B to link (and relink after a rotation) meanwhile.
const STALE_PAUSE: &str = "25s";
/// The source org of atlas-sim's demo configuration and its Organization Owner key.
const SOURCE_ORG: &str = "6a1e9b2a3c4d5e6f7a8b9c0d";
const SOURCE_KEY: (&str, &str) = ("demosourcepublic", "demo-source-private-0000");
/// A second source org, and a key owning it, for a spec moved while A is held.
const OTHER_ORG: &str = "6a1e9b2a3c4d5e6f7a8b9c99";
const OTHER_KEY: (&str, &str) = ("movedsourcepublic", "moved-source-private-0000");

fn sha(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A namespace with the Atlas credentials `creds`, the source credentials `source-creds`, and
/// LinkToken `migration` linked to SOURCE_ORG, first reconciled by A, an operator that holds
/// for STALE_PAUSE at `point`. Returns once A holds there.
async fn held_at(c: &'static testkit::TestCluster, prefix: &str, point: &str) -> (Env, Operator) {
    let (env, stale) = with_stale_operator(c, prefix, point).await;
    wait_holding(&stale, point).await;
    (env, stale)
}

/// Waits until A holds at `point`.
async fn wait_holding(stale: &Operator, point: &str) {
    testkit::eventually(WAIT, &format!("A holding at {point}"), || async {
        let logs = stale.logs();
        (logs.contains("pausing") && logs.contains(point)).then_some(())
    })
    .await;
}

/// As [`held_at`], without waiting for A to reach `point`.
async fn with_stale_operator(
    c: &'static testkit::TestCluster,
    prefix: &str,
    point: &str,
) -> (Env, Operator) {
    let env = Env::new(c, prefix).await;
    env.api_key_secret("creds").await;
    env.put_secret(
        "source-creds",
        &[
            ("publicApiKey", SOURCE_KEY.0),
            ("privateApiKey", SOURCE_KEY.1),
        ],
    )
    .await;
    let pause = format!("{point}={STALE_PAUSE}");
    let stale = env.spawn_operator_with_env(&env.cluster.kubeconfig, &[(PAUSE_ENV, &pause)], &[]);
    let url = env
        .sim
        .source_url()
        .expect("atlas-sim serves the source port");
    let source = format!(
        "  source:\n    url: \"{url}\"\n    orgId: \"{SOURCE_ORG}\"\n    credentialsSecretRef:\n      name: source-creds\n"
    );
    env.apply_yaml(&linktoken_yaml("migration", ORG, &[], "creds", &source))
        .await;
    (env, stale)
}

/// OTHER_ORG at the source, a key owning it, and its credentials Secret `other-creds`.
async fn add_other_org(env: &Env) {
    env.sim
        .state
        .add_source_org(SourceOrgConfig::new(OTHER_ORG, "the org the spec moves to"))
        .expect("add source org");
    env.sim
        .state
        .add_source_api_key(ApiKeyConfig::new(
            OTHER_KEY.0,
            OTHER_KEY.1,
            roles(OTHER_ORG, ORG_OWNER),
        ))
        .expect("add source key");
    env.put_secret(
        "other-creds",
        &[
            ("publicApiKey", OTHER_KEY.0),
            ("privateApiKey", OTHER_KEY.1),
        ],
    )
    .await;
}

/// Points spec.source at `org`, with the credentials Secret `creds`.
async fn move_source(env: &Env, org: &str, creds: &str) {
    env.patch_linktoken(
        "migration",
        serde_json::json!({"spec": {"source": {
            "orgId": org,
            "credentialsSecretRef": {"name": creds},
        }}}),
    )
    .await;
}

fn link_of(lt: &LinkToken) -> linktoken_operator::api::LinkStatus {
    lt.status
        .as_ref()
        .and_then(|s| s.link.clone())
        .expect("status.link")
}

fn issued_sha(lt: &LinkToken) -> String {
    lt.status
        .as_ref()
        .and_then(|s| s.issued_for.as_ref())
        .and_then(|i| i.token_sha256.clone())
        .expect("issuedFor.tokenSha256")
}

/// Waits until B reports Linked with the token whose hash is `want`, at `org`.
async fn wait_linked_with(env: &Env, want: &str, org: &str) -> LinkToken {
    testkit::eventually(WAIT, "linked with the expected token", || async {
        let lt = env.get("migration").await?;
        let link = lt.status.as_ref()?.link.clone()?;
        let ready = lt.status.as_ref()?.conditions.iter().find(|c| {
            c.type_ == "Ready" && c.status == "True" && c.reason == Reason::Linked.as_str()
        });
        (ready.is_some()
            && link.token_sha256.as_deref() == Some(want)
            && link.org_id == org
            && link.posting_sha256.is_none())
        .then_some(lt)
    })
    .await
}

/// Waits until A has resumed and its held attempt ended (it fails: nothing it was about to
/// write may land), then lets both operators settle.
async fn wait_stale_attempt_ended(stale: &Operator) {
    testkit::eventually(WAIT, "A's held attempt failing", || async {
        stale.logs().contains("reconcile failed").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
}

/// What a user depends on at the end: Ready and Linked True for the current generation, status
/// naming the live token as linked at `org`, that org holding exactly it and SYNCED, one live
/// token in the Atlas org. Returns the live token's hash.
async fn assert_linked_end_state(env: &Env, org: &str) -> String {
    let lt = env.get("migration").await.expect("LinkToken");
    let generation = lt.metadata.generation;
    for type_ in ["Ready", "Linked"] {
        let c = lt
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
            .unwrap_or_else(|| panic!("condition {type_}"));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.observed_generation),
            ("True", "Linked", generation),
            "{type_}: {}",
            c.message
        );
    }
    let live = issued_sha(&lt);
    assert_eq!(
        env.sim.state.live_token_hashes(ORG),
        vec![live.clone()],
        "one live token in the Atlas org: the one status records"
    );
    env.assert_at_most_one_link_per_org();
    let link = link_of(&lt);
    assert_eq!(link.token_sha256.as_deref(), Some(live.as_str()));
    assert_eq!(link.posting_sha256, None, "no marker left");
    assert_eq!(link.org_id, org);
    let at_source = env
        .sim
        .state
        .source_link(org)
        .expect("the source org is linked");
    assert_eq!(
        at_source.token_sha256, live,
        "the source holds the live token"
    );
    assert_eq!(env.sim.state.source_status(org), Some(SyncStatus::Synced));
    live
}

/// While A is held: B starts, links T1 (hash `t1_sha`), then a rotation makes it revoke T1,
/// issue T2 and relink with it. Then A resumes and its held attempt ends. Checks the end state
/// (T2 live, linked, recorded; T1 dead) and returns T1, T2 and the source calls made after
/// B's relink (A's, and the steady state's).
async fn b_relinks_while_a_is_held(
    env: &mut Env,
    stale: &Operator,
    t1_sha: &str,
) -> (String, String, Vec<SourceCall>) {
    env.start_operator(&[]);
    wait_linked_with(env, t1_sha, SOURCE_ORG).await;
    let t1 = env.token_in("migration", "linkToken").await.expect("T1");
    env.rotate("migration", "1").await;
    let t2 = env.wait_new_token("migration", &t1, WAIT).await;
    wait_linked_with(env, &sha(&t2), SOURCE_ORG).await;
    let before = env.sim.state.source_calls().len();

    wait_stale_attempt_ended(stale).await;
    let live = assert_linked_end_state(env, SOURCE_ORG).await;
    assert_eq!(
        live,
        sha(&t2),
        "status records B's T2 (not A's T1), the source holds it"
    );
    assert!(env.revoked(&t1), "T1 is dead in Atlas");
    let since = env.sim.state.source_calls().split_off(before);
    (t1, t2, since)
}

fn posts(calls: &[SourceCall]) -> Vec<&SourceCall> {
    calls.iter().filter(|c| c.method == "POST").collect()
}

/// A is held after writing its link marker (token T1), before its POST. B links T1, then a
/// rotation makes B revoke T1, issue T2 and relink with it. A resumes: it must not post T1 (a
/// source that checked "already linked" before the token would answer 409, and A would then
/// DELETE B's link), and its writes fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_actor_held_before_its_link_post_posts_nothing_after_a_newer_link() {
    let c = require_cluster!();
    let (mut env, mut stale) = held_at(c, "lfence-rotate", "before-link-post").await;
    let lt = env.get("migration").await.expect("LinkToken");
    let t1_sha = issued_sha(&lt);
    assert_eq!(
        link_of(&lt).posting_sha256.as_deref(),
        Some(t1_sha.as_str()),
        "A's marker names T1"
    );
    assert!(
        env.sim.state.source_link(SOURCE_ORG).is_none(),
        "A posted nothing"
    );

    let (t1, t2, since) = b_relinks_while_a_is_held(&mut env, &stale, &t1_sha).await;
    assert!(
        posts(&since).is_empty(),
        "A posted its stale token after B's link: {since:?}"
    );
    assert!(
        !since.iter().any(|c| c.method == "DELETE"),
        "nobody removed B's link: {since:?}"
    );
    assert_abandoned_before_the_source(&stale);
    stale.kill();
    env.assert_no_secret_leaked(&[&t1, &t2, SOURCE_KEY.1, PRIVATE_KEY])
        .await;
}

/// A's held attempt ended on its fresh read, not on a refusal by the source.
fn assert_abandoned_before_the_source(stale: &Operator) {
    assert!(
        stale.logs().contains("the source was not called"),
        "A's attempt ended before calling the source"
    );
}

/// A is held before its POST to SOURCE_ORG; meanwhile spec.source moves to OTHER_ORG and B
/// links the (same, live) token there. A resumes with the old spec in hand: posting would link
/// SOURCE_ORG with a live token that no status records, so no deletion would ever remove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_actor_held_before_its_link_post_does_not_link_a_source_the_spec_left() {
    let c = require_cluster!();
    let (mut env, mut stale) = held_at(c, "lfence-moved", "before-link-post").await;
    add_other_org(&env).await;
    let t1_sha = issued_sha(&env.get("migration").await.expect("LinkToken"));
    move_source(&env, OTHER_ORG, "other-creds").await;

    env.start_operator(&[]);
    wait_linked_with(&env, &t1_sha, OTHER_ORG).await;

    wait_stale_attempt_ended(&stale).await;
    let live = assert_linked_end_state(&env, OTHER_ORG).await;
    assert_eq!(live, t1_sha, "no reissue for a moved source");
    assert!(
        env.sim.state.source_link(SOURCE_ORG).is_none(),
        "the org the spec left holds no link (A did not post there)"
    );
    let to_left_org = env
        .sim
        .state
        .source_calls()
        .into_iter()
        .filter(|c| c.method == "POST" && c.path.contains(SOURCE_ORG))
        .count();
    assert_eq!(to_left_org, 0, "no POST ever reached the org the spec left");
    assert_abandoned_before_the_source(&stale);
    let token = env.token_in("migration", "linkToken").await.expect("token");
    stale.kill();
    env.assert_no_secret_leaked(&[&token, SOURCE_KEY.1, OTHER_KEY.1, PRIVATE_KEY])
        .await;
}

/// A has posted T1 and is held before recording the answer. B confirms the link, then a
/// rotation makes B revoke T1 and relink with T2. A resumes: its status write (T1 linked,
/// marker cleared) must fail, leaving B's record of T2, and A makes no further source call
/// that disturbs T2's link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_actor_held_after_its_link_post_does_not_overwrite_the_newer_link() {
    let c = require_cluster!();
    let (mut env, mut stale) = held_at(c, "lfence-posted", "after-link-post").await;
    let t1_sha = issued_sha(&env.get("migration").await.expect("LinkToken"));
    let held = env.sim.state.source_link(SOURCE_ORG).expect("A posted T1");
    assert_eq!(held.token_sha256, t1_sha);

    let (t1, t2, since) = b_relinks_while_a_is_held(&mut env, &stale, &t1_sha).await;
    assert!(
        !since.iter().any(|c| c.method != "GET"),
        "after B's relink only status reads reach the source: {since:?}"
    );
    // A's POST of T1; B's POST of T1 again (A's answer is unknown to it, and only a
    // successful POST records a link); B's relink: 409, DELETE, POST.
    let accepted = env
        .sim
        .state
        .source_calls()
        .iter()
        .filter(|c| c.method == "POST" && c.status == 200)
        .count();
    assert_eq!(accepted, 3, "{:?}", env.sim.state.source_calls());
    stale.kill();
    env.assert_no_secret_leaked(&[&t1, &t2, SOURCE_KEY.1, PRIVATE_KEY])
        .await;
}

/// A links T1 at SOURCE_ORG; spec.source moves to OTHER_ORG, and A is held just before its
/// DELETE of the link at SOURCE_ORG, the org the spec left. Meanwhile B follows the spec there,
/// and the spec moves back: B links SOURCE_ORG again. A resumes with its old view: its DELETE
/// would remove B's link, which status records as Linked, until a later status check found
/// it gone. A reads the LinkToken fresh first and calls nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_actor_held_before_unlinking_a_source_the_spec_left_keeps_the_newer_link() {
    let c = require_cluster!();
    let (mut env, mut stale) =
        with_stale_operator(c, "lfence-unlink", "before-source-unlink").await;
    let t1_sha = testkit::eventually(WAIT, "A issuing T1", || async {
        let lt = env.get("migration").await?;
        lt.status
            .as_ref()?
            .issued_for
            .as_ref()?
            .token_sha256
            .clone()
    })
    .await;
    wait_linked_with(&env, &t1_sha, SOURCE_ORG).await;
    add_other_org(&env).await;
    move_source(&env, OTHER_ORG, "other-creds").await;
    wait_holding(&stale, "before-source-unlink").await;
    assert!(
        env.sim.state.source_link(SOURCE_ORG).is_some(),
        "A removed nothing yet"
    );

    env.start_operator(&[]);
    wait_linked_with(&env, &t1_sha, OTHER_ORG).await;
    move_source(&env, SOURCE_ORG, "source-creds").await;
    wait_linked_with(&env, &t1_sha, SOURCE_ORG).await;
    let before = env.sim.state.source_calls().len();

    wait_stale_attempt_ended(&stale).await;
    let live = assert_linked_end_state(&env, SOURCE_ORG).await;
    assert_eq!(live, t1_sha, "no reissue for a moved source");
    let since = env.sim.state.source_calls().split_off(before);
    assert!(
        !since.iter().any(|c| c.method != "GET"),
        "after B linked SOURCE_ORG again only status reads reach the source: {since:?}"
    );
    assert!(
        env.sim.state.source_link(OTHER_ORG).is_none(),
        "B removed the link at the org the spec left in turn"
    );
    assert_abandoned_before_the_source(&stale);
    let token = env.token_in("migration", "linkToken").await.expect("token");
    stale.kill();
    env.assert_no_secret_leaked(&[&token, SOURCE_KEY.1, OTHER_KEY.1, PRIVATE_KEY])
        .await;
}
