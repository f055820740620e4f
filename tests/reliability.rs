//! Reliability under faults, on a real control plane with atlas-sim and the operator binary:
//! SIGKILL inside each window of the crash-safe issuing path, kube-apiserver and etcd restarts
//! mid-run, a sick Atlas (500, 429, timeouts, dropped connections, garbage), leader failover,
//! and hostile input. Every test checks what a user depends on: each LinkToken ends Ready,
//! its Secret holds a token that is live in Atlas, and each org has exactly one live link.
use testkit::require_cluster;

use std::collections::BTreeMap;

use std::time::{Duration, Instant};

use atlas_sim::{
    CallKind, FaultKind, FaultSpec, FaultTarget, ORG_OWNER, OrgConfig, SimConfig, roles,
};
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams};
use linktoken_operator::api::LinkToken;
use sha2::{Digest, Sha256};
use testkit::controlplane::{Component, ControlPlane, Options};
use testkit::e2e::{Env, ORG};
use testkit::operator::is_ready;
use testkit::{TestCluster, eventually};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// An operator process (the e2e `Operator`, SIGKILLed on drop) with the helpers these tests use.
struct Op(testkit::e2e::Operator);

impl Op {
    fn logs(&self) -> String {
        self.0.logs()
    }

    /// SIGKILL: no shutdown hook runs, no Lease is released.
    fn kill(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }

    fn running(&mut self) -> bool {
        matches!(self.0.child.try_wait(), Ok(None))
    }

    async fn wait_log(&self, needle: &str, within: Duration) {
        let start = Instant::now();
        while !self.logs().contains(needle) {
            if start.elapsed() > within {
                panic!(
                    "no operator log line {needle:?} within {within:?}; log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Starts the operator for `env`'s namespace with fast retries, extra env vars and flags.
/// Must be called from an async worker thread (PDEATHSIG is tied to the spawning thread).
fn spawn_op(env: &Env, vars: &[(&str, &str)], extra: &[&str]) -> Op {
    Op(env.spawn_operator_with_env(&env.cluster.kubeconfig, vars, extra))
}

/// `n` extra orgs (24 hex digits), all owned by the demo API key that `api_key_secret` uses.
fn sim_with_orgs(n: usize) -> (SimConfig, Vec<String>) {
    let mut cfg = SimConfig::demo();
    let base: u64 = 0xa1_0000_0000 + u64::from(rand::random::<u16>()) * 0x1_0000;
    let orgs: Vec<String> = (0..n)
        .map(|i| format!("{:024x}", base + i as u64))
        .collect();
    for o in &orgs {
        cfg.orgs.push(OrgConfig::new(o, "reliability"));
        cfg.api_keys[0].roles.extend(roles(o, ORG_OWNER));
    }
    (cfg, orgs)
}

fn lt_name(i: usize) -> String {
    format!("lt-{i:03}")
}

/// Creates LinkTokens `lt-000..` (one per org), 8 at a time.
/// The tests that load the machine (dozens to a thousand LinkTokens, a second control plane)
/// run one at a time: on 2 cores, overlapping them measures the machine, not the operator.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn create_many(env: &Env, orgs: &[String]) {
    futures::stream::iter(orgs.iter().enumerate())
        .for_each_concurrent(8, |(i, org)| async move {
            env.linktoken(&lt_name(i), org, &["203.0.113.0/24"]).await;
        })
        .await;
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

async fn ready_count(env: &Env) -> usize {
    match env.linktokens().list(&ListParams::default()).await {
        Ok(l) => l.items.iter().filter(|lt| is_ready(lt)).count(),
        // The API server may be restarting.
        Err(_) => 0,
    }
}

async fn wait_all_ready(env: &Env, n: usize, within: Duration) {
    eventually(within, &format!("all {n} LinkTokens Ready"), || async {
        (ready_count(env).await == n).then_some(())
    })
    .await;
}

/// What a user depends on, for every LinkToken of the namespace: Ready, its Secret holds the
/// token recorded in status, that token is live in Atlas, and its org has exactly one live
/// link (no leak, no second token).
async fn assert_converged(env: &Env) {
    let list = env
        .linktokens()
        .list(&ListParams::default())
        .await
        .expect("list");
    assert!(!list.items.is_empty());
    for lt in &list.items {
        let name = lt.name_any();
        assert!(is_ready(lt), "{name} not Ready: {:?}", lt.status);
        let st = lt.status.as_ref().expect("status");
        assert!(st.in_flight.is_none(), "{name}: marker left");
        let secret = st.token_secret_name.clone().expect("tokenSecretName");
        let token = env
            .token_in(&secret, "linkToken")
            .await
            .unwrap_or_else(|| panic!("{name}: no token in Secret {secret}"));
        assert!(
            env.sim.state.is_token_live(&token),
            "{name}: the Secret's token is not live in Atlas"
        );
        assert_eq!(
            st.issued_for
                .as_ref()
                .and_then(|i| i.token_sha256.clone())
                .as_deref(),
            Some(sha256_hex(token.as_bytes()).as_str()),
            "{name}: status records another token than the Secret holds"
        );
        assert_eq!(
            env.sim.state.live_links(&lt.spec.org_id),
            1,
            "{name}: org {} must have exactly one live link",
            lt.spec.org_id
        );
    }
}

fn posts(env: &Env) -> u64 {
    env.sim.state.calls("POST", CallKind::LinkTokens, 201)
}

fn fault(kind: FaultKind, status: Option<u16>, org: &str) -> FaultSpec {
    FaultSpec {
        kind,
        status,
        body: None,
        headers: BTreeMap::new(),
        latency_ms: 0,
        count: None,
        method: None,
        org_id: Some(org.to_string()),
        target: FaultTarget::LinkTokens,
    }
}

// ---------------------------------------------------------------------------------------------
// SIGKILL inside each window of an issue
// ---------------------------------------------------------------------------------------------

/// Kills the operator while it sleeps at `point` (LINKTOKEN_TEST_PAUSE) during the first issue
/// of a LinkToken, checks the state the crash left, restarts it without the pause, and checks
/// it converges. Returns (token POSTs before the restart, token POSTs in total).
async fn crash_at(point: &str, check: impl AsyncFnOnce(&Env)) -> Option<(Env, u64, u64)> {
    let c = testkit::cluster().await?;
    let env = Env::new(c, &format!("rel-{point}")).await;
    env.api_key_secret("creds").await;
    let pause = format!("{point}=300s");
    let mut op = spawn_op(&env, &[(testkit::operator::PAUSE_ENV, &pause)], &[]);
    env.linktoken("mig", ORG, &["203.0.113.0/24"]).await;
    op.wait_log("pausing", Duration::from_secs(30)).await;
    // The operator sits in the window; the marker is in status.
    let lt = env.get("mig").await.expect("LinkToken");
    let st = lt.status.clone().expect("status");
    assert!(
        st.in_flight.is_some(),
        "marker written before any Atlas call"
    );
    assert!(!is_ready(&lt), "not Ready while an issue is in flight");
    op.kill();
    check(&env).await;
    let before = posts(&env);

    let _op2 = spawn_op(&env, &[], &[]);
    env.wait_ready("mig").await;
    assert_converged(&env).await;
    let total = posts(&env);
    Some((env, before, total))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_before_the_post_then_restart_issues_exactly_one_link() {
    let started = Instant::now();
    let Some((_env, before, total)) = crash_at("before-post", async |env: &Env| {
        assert_eq!(env.sim.state.live_links(ORG), 0, "nothing POSTed yet");
        assert!(env.secrets().get_opt("mig").await.expect("get").is_none());
    })
    .await
    else {
        return;
    };
    assert_eq!((before, total), (0, 1), "one POST, after the restart");
    eprintln!(
        "before-post window: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_post_before_the_secret_revokes_the_orphan_and_reissues() {
    let started = Instant::now();
    let Some((env, before, total)) = crash_at("after-post", async |env: &Env| {
        // The orphan: live in Atlas, stored nowhere.
        assert_eq!(env.sim.state.live_links(ORG), 1);
        assert!(env.secrets().get_opt("mig").await.expect("get").is_none());
    })
    .await
    else {
        return;
    };
    // Two POSTs and one live link (checked in crash_at): the orphan was DELETEd first.
    assert_eq!((before, total), (1, 2), "the restart POSTs once more");
    assert!(env.sim.state.calls("DELETE", CallKind::LinkTokens, 204) >= 1);
    eprintln!("after-post window: {:.1}s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_secret_before_status_adopts_the_stored_token() {
    let started = Instant::now();
    let stored = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let s2 = stored.clone();
    let Some((env, before, total)) = crash_at("after-secret", async move |env: &Env| {
        assert_eq!(env.sim.state.live_links(ORG), 1);
        let token = env
            .token_in("mig", "linkToken")
            .await
            .expect("Secret written before the crash");
        assert!(env.sim.state.is_token_live(&token));
        *s2.lock().unwrap() = Some(token);
    })
    .await
    else {
        return;
    };
    assert_eq!(
        (before, total),
        (1, 1),
        "the stored token is adopted: no second POST"
    );
    let kept = stored.lock().unwrap().clone();
    assert_eq!(env.token_in("mig", "linkToken").await, kept);
    eprintln!(
        "after-secret window: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// A rotation killed after its DELETE (the old token is revoked, the Secret still holds it):
/// the LinkToken is never Ready with that revoked token, and the restart issues a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_killed_after_its_delete_is_never_ready_with_the_revoked_token() {
    let started = Instant::now();
    let c = require_cluster!();
    let env = Env::new(c, "rel-rotate").await;
    env.api_key_secret("creds").await;
    let mut op = spawn_op(&env, &[], &[]);
    env.linktoken("mig", ORG, &["203.0.113.0/24"]).await;
    env.wait_ready("mig").await;
    let old = env.token_in("mig", "linkToken").await.expect("token");
    op.kill();

    let pause = "before-post=300s";
    let mut op = spawn_op(&env, &[(testkit::operator::PAUSE_ENV, pause)], &[]);
    env.linktokens()
        .patch(
            "mig",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {linktoken_operator::api::ROTATE_ANNOTATION: "1"}}
            })),
        )
        .await
        .expect("annotate");
    op.wait_log("pausing", Duration::from_secs(30)).await;
    assert!(
        !env.sim.state.is_token_live(&old),
        "the rotation's DELETE ran"
    );
    assert_eq!(env.sim.state.live_links(ORG), 0);
    op.kill();
    let lt = env.get("mig").await.expect("LinkToken");
    assert!(
        !is_ready(&lt),
        "Ready while the Secret holds a revoked token: {:?}",
        lt.status
    );
    assert_eq!(
        env.token_in("mig", "linkToken").await.as_deref(),
        Some(old.as_str()),
        "(the Secret still holds the revoked token)"
    );

    // Restart; sample until Ready that Ready never goes with the revoked token.
    let _op = spawn_op(&env, &[], &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lt = env.get("mig").await.expect("LinkToken");
        let token = env.token_in("mig", "linkToken").await;
        if is_ready(&lt) {
            let token = token.expect("token");
            // The Secret read follows the LinkToken read: Ready only ever comes after the
            // Secret holds the new token.
            assert_ne!(token, old, "Ready with the revoked token");
            break;
        }
        assert!(Instant::now() < deadline, "not Ready after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_converged(&env).await;
    eprintln!("rotation window: {:.1}s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// kube-apiserver and etcd restarts while 50 LinkTokens are being issued
// ---------------------------------------------------------------------------------------------

/// Runs a blocking control-plane operation off the async workers (the in-process atlas-sim
/// keeps serving meanwhile).
async fn restart(mut cp: ControlPlane, c: Component) -> ControlPlane {
    let t = Instant::now();
    let cp = tokio::task::spawn_blocking(move || {
        cp.stop_component(c);
        // Down for a moment, as in a real restart; reconciles in flight hit the outage.
        std::thread::sleep(Duration::from_secs(2));
        cp.start_component(c).map(|_| cp)
    })
    .await
    .expect("join")
    .unwrap_or_else(|e| panic!("restart {c:?}: {e}"));
    eprintln!("restarted {c:?} in {:.1}s", t.elapsed().as_secs_f64());
    cp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_then_etcd_restart_while_50_issue_all_converge_without_leaks() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let shared = require_cluster!();
    // A dedicated control plane: restarting the shared one would disturb the other tests.
    let cp = tokio::task::spawn_blocking(|| ControlPlane::start(Options::default()))
        .await
        .expect("join")
        .expect("dedicated control plane");
    let cluster: &'static TestCluster = Box::leak(Box::new(TestCluster {
        kubeconfig: cp.kubeconfig_path().to_path_buf(),
        tools: shared.tools.clone(),
        audit_log: Some(cp.audit_log_path()),
    }));
    let (cfg, orgs) = sim_with_orgs(50);
    let env = Env::with_sim_config(cluster, "rel-restart", cfg).await;
    env.api_key_secret("creds").await;
    // Slow POSTs and little concurrency stretch the issuing over the restarts.
    let mut slow = fault(FaultKind::Latency, None, "");
    slow.org_id = None;
    slow.latency_ms = 400;
    slow.method = Some("POST".into());
    env.sim.state.add_fault(slow).expect("fault");
    let mut op = spawn_op(&env, &[], &["--concurrency=2"]);
    create_many(&env, &orgs).await;

    eventually(Duration::from_secs(120), "5 POSTs", || async {
        (posts(&env) >= 5).then_some(())
    })
    .await;
    let at_api = (posts(&env), ready_count(&env).await);
    let cp = restart(cp, Component::ApiServer).await;

    eventually(Duration::from_secs(180), "25 Ready", || async {
        (ready_count(&env).await >= 25).then_some(())
    })
    .await;
    let at_etcd = (posts(&env), ready_count(&env).await);
    assert!(
        at_etcd.1 < 50,
        "issuing still under way at the etcd restart"
    );
    let cp = restart(cp, Component::Etcd).await;

    wait_all_ready(&env, 50, Duration::from_secs(240)).await;
    assert_converged(&env).await;
    assert!(op.running(), "the operator survived both restarts");
    eprintln!(
        "restarts: (POSTs, Ready) at apiserver restart {at_api:?}, at etcd restart {at_etcd:?}; POSTs total {} for 50 LinkTokens; {:.1}s",
        posts(&env),
        started.elapsed().as_secs_f64()
    );
    drop(op);
    tokio::task::spawn_blocking(move || drop(cp))
        .await
        .expect("join");
}

// ---------------------------------------------------------------------------------------------
// A sick Atlas: 500, 429, timeouts, dropped connections and garbage for 30 s
// ---------------------------------------------------------------------------------------------

/// Most attempts one LinkToken can make in `window` when every attempt fails transiently:
/// delays base*2^(n-1) capped at max, times the smallest jitter factor 0.8 (backoff.rs).
fn backoff_attempts(window: Duration, base: Duration, max: Duration) -> u64 {
    let mut attempts = 1;
    let mut t = Duration::ZERO;
    loop {
        let exp = (attempts - 1).min(20) as u32;
        let d = base.saturating_mul(1 << exp).min(max).mul_f64(0.8);
        t += d;
        if t > window {
            return attempts;
        }
        attempts += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sick_atlas_for_30s_causes_no_crash_and_no_hot_loop_and_all_converge_after() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let c = require_cluster!();
    let (cfg, orgs) = sim_with_orgs(50);
    let env = Env::with_sim_config(c, "rel-faults", cfg).await;
    env.api_key_secret("creds").await;
    // Five kinds of trouble, ten orgs each, on every link-token call (POST and DELETE).
    for (i, org) in orgs.iter().enumerate() {
        let f = match i % 5 {
            0 => fault(FaultKind::Status, Some(500), org),
            1 => {
                let mut f = fault(FaultKind::Status, Some(429), org);
                f.headers.insert("Retry-After".into(), "1".into());
                f
            }
            2 => {
                // A timeout: the answer would come after the operator gave up.
                let mut f = fault(FaultKind::Status, Some(503), org);
                f.latency_ms = 2500;
                f
            }
            3 => fault(FaultKind::Drop, None, org),
            _ => fault(FaultKind::Garbage, None, org),
        };
        env.sim.state.add_fault(f).expect("fault");
    }
    let base = Duration::from_millis(500);
    let max = Duration::from_secs(5);
    let mut op = spawn_op(&env, &[], &["--atlas-request-timeout=1s"]);
    let sick_from = Instant::now();
    create_many(&env, &orgs).await;
    let window = Duration::from_secs(30);
    tokio::time::sleep(window.saturating_sub(sick_from.elapsed())).await;
    let window = sick_from.elapsed();

    let failed = |s: u16| {
        env.sim.state.calls("POST", CallKind::LinkTokens, s)
            + env.sim.state.calls("DELETE", CallKind::LinkTokens, s)
    };
    let counts: Vec<(u16, u64)> = [500, 429, 503, 0, 502]
        .iter()
        .map(|&s| (s, failed(s)))
        .collect();
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    assert!(op.running(), "the operator survived: {}", op.logs());
    assert_eq!(posts(&env), 0, "nothing got through");
    assert_eq!(ready_count(&env).await, 0);
    // Budget per LinkToken: 40 back off exponentially; the 10 rate-limited ones wait
    // Retry-After (1 s) each time. An attempt is at most a DELETE and a POST.
    let backoff = backoff_attempts(window, base, max);
    let rate_limited = window.as_secs() + 1;
    let budget = 2 * (40 * backoff + 10 * rate_limited);
    // Attempts per LinkToken, from the operator's one log line per failed Atlas call (this
    // also counts the timeouts, which atlas-sim cannot: the client hung up first).
    let logs = op.logs();
    let failed_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("Atlas call failed"))
        .collect();
    let mut per_lt = Vec::new();
    for i in 0..orgs.len() {
        let key = format!("linktoken={}/{} ", env.ns, lt_name(i));
        let n = failed_lines.iter().filter(|l| l.contains(&key)).count() as u64;
        let cap = if i % 5 == 1 { rate_limited } else { backoff };
        assert!(
            n <= cap,
            "{}: {n} failed attempts in {window:?} > budget {cap}",
            lt_name(i)
        );
        // Retried, not given up on.
        assert!(
            n >= 2,
            "{}: only {n} attempts in {window:?}; its log lines:\n{}",
            lt_name(i),
            logs.lines()
                .filter(|l| l.contains(&key))
                .collect::<Vec<_>>()
                .join("\n")
        );
        per_lt.push(n);
    }
    eprintln!(
        "faults: {total} failed Atlas calls recorded by atlas-sim in {:.1}s by status {counts:?} (budget {budget}); attempts per LinkToken {per_lt:?} (budget {backoff} backoff, {rate_limited} rate-limited)",
        window.as_secs_f64()
    );
    assert!(
        total <= budget,
        "hot loop: {total} failed calls > budget {budget}"
    );
    // Each LinkToken reports the trouble it meets (or, mid-attempt, that it is Issuing again).
    let list = env
        .linktokens()
        .list(&ListParams::default())
        .await
        .expect("list");
    let mut seen = BTreeMap::new();
    for lt in &list.items {
        let i: usize = lt.name_any()[3..].parse().expect("index");
        let want = if i % 5 == 1 {
            "AtlasRateLimited"
        } else {
            "AtlasUnavailable"
        };
        let reason = lt
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.reason.clone())
            .unwrap_or_default();
        assert!(
            reason == want || reason == "Issuing",
            "{}: {reason}, want {want}",
            lt.name_any()
        );
        if reason == want {
            *seen.entry(i % 5).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), 5, "every kind of trouble is reported: {seen:?}");

    env.sim.state.clear_faults();
    let healed = Instant::now();
    wait_all_ready(&env, 50, Duration::from_secs(120)).await;
    eprintln!(
        "faults: all 50 Ready {:.1}s after healing; {:.1}s in all",
        healed.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_converged(&env).await;
    assert!(op.running());
}

// ---------------------------------------------------------------------------------------------
// Leader failover
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_is_replaced_within_the_lease_and_nothing_is_lost_or_duplicated() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let c = require_cluster!();
    let (cfg, orgs) = sim_with_orgs(20);
    let env = Env::with_sim_config(c, "rel-leader", cfg).await;
    env.api_key_secret("creds").await;
    let mut slow = fault(FaultKind::Latency, None, "");
    slow.org_id = None;
    slow.latency_ms = 400;
    slow.method = Some("POST".into());
    env.sim.state.add_fault(slow).expect("fault");
    let lease_ns = format!("--leader-election-namespace={}", env.ns);
    let flags = [
        "--leader-elect",
        lease_ns.as_str(),
        "--leader-election-id=linktoken-rel",
        "--concurrency=2",
    ];
    let mut a = spawn_op(&env, &[], &flags);
    a.wait_log("became the leader", Duration::from_secs(30))
        .await;
    let b = spawn_op(&env, &[], &flags);
    b.wait_log("waiting for leadership", Duration::from_secs(30))
        .await;
    create_many(&env, &orgs).await;
    eventually(Duration::from_secs(120), "5 POSTs", || async {
        (posts(&env) >= 5).then_some(())
    })
    .await;
    let before = (posts(&env), ready_count(&env).await);
    assert!(before.1 < 20, "the leader was killed mid-run");
    a.kill();
    let killed = Instant::now();
    // The Lease (15 s) runs out at most 15 s after the kill (the last renewal was before it);
    // the standby looks every retry period (2 s).
    let bound = Duration::from_secs(15 + 2 + 1);
    eventually(bound, "the standby leads", || async {
        b.logs().contains("became the leader").then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    assert!(
        b.logs().matches("became the leader").count() == 1,
        "{}",
        b.logs()
    );
    wait_all_ready(&env, 20, Duration::from_secs(240)).await;
    assert_converged(&env).await;
    // Duplicates: at most the issues in flight at the kill (concurrency 2) are POSTed again.
    assert!(posts(&env) <= 20 + 2, "{} POSTs for 20", posts(&env));
    eprintln!(
        "leader: killed at (POSTs, Ready) {before:?}; standby led after {:.1}s; {} POSTs for 20; {:.1}s",
        takeover.as_secs_f64(),
        posts(&env),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------------

/// A DNS-subdomain name of exactly 253 characters.
fn name_253() -> String {
    let n = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    assert_eq!(n.len(), 253);
    n
}

/// 200 distinct IPv4 /32 entries: the access list limit.
fn ips_200() -> Vec<String> {
    (0..200).map(|i| format!("198.51.100.{i}/32")).collect()
}

/// Time from create to Ready for a plain LinkToken.
async fn time_to_ready(env: &Env, name: &str, org: &str, within: Duration) -> Duration {
    let t = Instant::now();
    env.linktoken(name, org, &["203.0.113.9"]).await;
    env.wait_reason(name, linktoken_operator::api::Reason::TokenIssued, within)
        .await;
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_limits_unicode_and_1000_broken_linktokens_do_not_starve_the_healthy() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let c = require_cluster!();
    let (cfg, orgs) = sim_with_orgs(5);
    let env = Env::with_sim_config(c, "rel-hostile", cfg).await;
    env.api_key_secret("creds").await;
    let mut op = spawn_op(&env, &[], &[]);

    // Before the flood: how fast a healthy LinkToken turns Ready on an idle operator.
    let idle = time_to_ready(&env, "healthy-idle", &orgs[0], Duration::from_secs(30)).await;

    // 1000 LinkTokens pointing at one credentials Secret that does not exist, 16 at a time.
    let flood = Instant::now();
    let created = futures::stream::iter(0..1000)
        .map(|i| {
            let env = &env;
            async move {
                // Distinct (unknown) orgs: these never reach Atlas anyway.
                let org = format!("{:024x}", 0xbad0_0000_u64 + i);
                env.apply_yaml(&format!(
                    "apiVersion: atlasmigration.io/v1alpha1\nkind: LinkToken\nmetadata:\n  name: broken-{i:04}\nspec:\n  orgId: \"{org}\"\n  accessListIps: [\"203.0.113.0/24\"]\n  credentialsSecretRef:\n    name: missing-creds\n"
                ))
                .await;
            }
        })
        .buffer_unordered(16)
        .count()
        .await;
    assert_eq!(created, 1000);
    let flood_created = flood.elapsed();
    // A healthy LinkToken created right behind the flood, while the operator works through it.
    let busy = time_to_ready(&env, "healthy-busy", &orgs[1], Duration::from_secs(60)).await;

    // At the limits: 200 access-list entries, a 253-character name, unicode annotation values.
    let long = name_253();
    let ips = serde_json::to_string(&ips_200()).expect("json");
    env.apply_yaml(&format!(
        "apiVersion: atlasmigration.io/v1alpha1\nkind: LinkToken\nmetadata:\n  name: {long}\n  labels:\n    team: data-platform\n  annotations:\n    note: \"Migración ✓ 日本語 🚀 Ünïcödé\"\nspec:\n  orgId: \"{}\"\n  accessListIps: {ips}\n  credentialsSecretRef:\n    name: creds\n  tokenSecret:\n    labels:\n      team: data-platform\n    annotations:\n      description: \"Jeton de migration — 移行トークン 🔑\"\n      empty: \"\"\n",
        orgs[2]
    ))
    .await;
    let lt = env
        .wait_reason(
            &long,
            linktoken_operator::api::Reason::TokenIssued,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(
        lt.status
            .as_ref()
            .and_then(|s| s.issued_for.as_ref())
            .map(|i| i.access_list_ips.len()),
        Some(200)
    );
    let secret = env.secrets().get(&long).await.expect("token Secret");
    let ann = secret.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        ann.get("description").map(String::as_str),
        Some("Jeton de migration — 移行トークン 🔑")
    );
    assert_eq!(ann.get("empty").map(String::as_str), Some(""));
    assert_eq!(
        secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("team"))
            .map(String::as_str),
        Some("data-platform")
    );

    // Unicode is not a valid label value: the API server refuses it at admission, so it can
    // never reach the Secret write.
    let bad: Result<LinkToken, _> = env
        .linktokens()
        .patch(
            "unicode-label",
            &PatchParams::apply("linktoken-tests"),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "atlasmigration.io/v1alpha1", "kind": "LinkToken",
                "metadata": {"name": "unicode-label"},
                "spec": {"orgId": orgs[3], "accessListIps": ["203.0.113.0/24"],
                    "credentialsSecretRef": {"name": "creds"},
                    "tokenSecret": {"labels": {"team": "données"}}}
            })),
        )
        .await;
    assert!(
        matches!(&bad, Err(kube::Error::Api(s)) if s.code == 422),
        "{bad:?}"
    );
    // 201 entries: refused too.
    let mut too_many = ips_200();
    too_many.push("192.0.2.1".into());
    let bad: Result<LinkToken, _> = env
        .linktokens()
        .patch(
            "too-many-ips",
            &PatchParams::apply("linktoken-tests"),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "atlasmigration.io/v1alpha1", "kind": "LinkToken",
                "metadata": {"name": "too-many-ips"},
                "spec": {"orgId": orgs[3], "accessListIps": too_many,
                    "credentialsSecretRef": {"name": "creds"}}
            })),
        )
        .await;
    assert!(
        matches!(&bad, Err(kube::Error::Api(s)) if s.code == 422),
        "{bad:?}"
    );

    // Every broken one is reported, none reached Atlas, and nothing is polled in a loop.
    eventually(
        Duration::from_secs(120),
        "1000 CredentialsNotFound",
        || async {
            let list = env.linktokens().list(&ListParams::default()).await.ok()?;
            let n = list
                .items
                .iter()
                .filter(|lt| {
                    lt.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.reason == "CredentialsNotFound")
                    })
                })
                .count();
            (n == 1000).then_some(())
        },
    )
    .await;
    let all_done = flood.elapsed();
    // After the flood: still quick.
    let after = time_to_ready(&env, "healthy-after", &orgs[4], Duration::from_secs(30)).await;
    assert_eq!(
        posts(&env),
        4,
        "one POST per healthy LinkToken; none for the broken"
    );
    assert!(op.running(), "the operator survived the flood");
    eprintln!(
        "hostile: Ready in {:.2}s idle, {:.2}s behind 1000 broken (created in {:.1}s, all reported after {:.1}s), {:.2}s after; {:.1}s in all",
        idle.as_secs_f64(),
        busy.as_secs_f64(),
        flood_created.as_secs_f64(),
        all_done.as_secs_f64(),
        after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    // The work queue is first-in first-out, so a LinkToken created during the flood waits for
    // the broken ones queued before it, --concurrency at a time; each costs a few cheap API
    // calls and no Atlas call, so that wait stays bounded.
    assert!(
        busy < Duration::from_secs(60),
        "a healthy LinkToken waited {busy:?} behind the broken ones (flood created in {flood_created:?}, worked through in {all_done:?})"
    );
    assert!(after < Duration::from_secs(5), "{after:?}");
    op.kill();
}
