//! End to end, what a broken or hostile server sends stays bounded (hardening defect 5):
//! - random errorCodes (and unusual statuses) answered by Atlas and by the source add no
//!   metric series of their own: they all land in `error_code="other"` and a status class;
//! - a huge `detail` full of newlines, ANSI escapes, NUL, a URL with a password and an echoed
//!   bearer token reaches the Ready condition, `status.atlasError` / `status.link.sourceError`
//!   and the Warning event only as one clipped, redacted line, and no log line of the operator
//!   carries any of it; a body past the size cap is not shown at all.
//!
//! Real control plane, the operator binary, atlas-sim on both its Atlas and its source ports.
use testkit::require_cluster;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use atlas_sim::config::{
    DEMO_EXTRA_ORG_IDS, DEMO_SOURCE_ORG_ID, DEMO_SOURCE_PRIVATE_KEY, DEMO_SOURCE_PUBLIC_KEY,
};
use atlas_sim::{FaultKind, FaultSpec, FaultTarget};
use linktoken_operator::api::{LinkToken, Reason};
use sha2::{Digest, Sha256};
use testkit::e2e::{Env, ORG, condition, linktoken_yaml};
use testkit::eventually;

const WAIT: Duration = Duration::from_secs(120);
const FAMILIES: [&str; 2] = [
    "linktoken_atlas_requests_total",
    "linktoken_source_requests_total",
];
/// The bounds docs/security.md promises for remote text, in characters.
const MAX_CODE: usize = 64;
const MAX_DETAIL: usize = 256;
/// The response body cap of the Atlas and source clients (64 KiB).
const BODY_CAP: usize = 64 * 1024;

/// The series (labels) of one counter family in a scrape.
fn series(scrape: &str, family: &str) -> BTreeSet<String> {
    let prefix = format!("{family}{{");
    scrape
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit_once(' ').map(|(labels, _)| labels.to_string()))
        .collect()
}

async fn scrape(url: &str) -> String {
    reqwest::get(url)
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics body")
}

/// xorshift64: enough to make codes nobody could have listed; the seed is printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Shaped like an Atlas code (upper case, digits, underscores), so only a closed set keeps
    /// it out of the labels.
    fn code(&mut self) -> String {
        format!("E{:016X}_{:04X}", self.next(), self.next() & 0xffff)
    }
}

/// Statuses a gateway or a hostile server may answer, each retried (never a 4xx that would
/// stall the LinkToken): known ones, and 520 / 599, which are no status the operator names.
const FAULT_STATUSES: [u16; 6] = [500, 502, 503, 520, 599, 429];

fn fault(target: FaultTarget, org: &str, status: u16, body: serde_json::Value) -> FaultSpec {
    FaultSpec {
        kind: FaultKind::Status,
        status: Some(status),
        body: Some(body),
        headers: Default::default(),
        latency_ms: 0,
        count: Some(1),
        method: Some("POST".into()),
        org_id: Some(org.into()),
        target,
    }
}

fn source_spec(env: &Env) -> String {
    let url = env
        .sim
        .source_url()
        .expect("atlas-sim serves the source port");
    format!(
        "  source:\n    url: \"{url}\"\n    orgId: \"{DEMO_SOURCE_ORG_ID}\"\n    credentialsSecretRef:\n      name: source-creds\n"
    )
}

/// A namespace, atlas-sim, the Atlas credentials `creds` and the demo source key's
/// `source-creds`.
async fn env_with_source(c: &'static testkit::TestCluster, prefix: &str) -> Env {
    let env = Env::new(c, prefix).await;
    env.api_key_secret("creds").await;
    env.put_secret(
        "source-creds",
        &[
            ("publicApiKey", DEMO_SOURCE_PUBLIC_KEY),
            ("privateApiKey", DEMO_SOURCE_PRIVATE_KEY),
        ],
    )
    .await;
    env
}

fn linked_with(lt: &LinkToken, sha: &str) -> bool {
    let ready = condition(lt, "Ready");
    ready.0 == "True"
        && ready.1 == Reason::Linked.as_str()
        && lt
            .status
            .as_ref()
            .and_then(|s| s.link.as_ref())
            .and_then(|l| l.token_sha256.as_deref())
            == Some(sha)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_error_codes_on_both_sides_add_no_series() {
    let c = require_cluster!();
    let mut env = env_with_source(c, "e2e-codes").await;
    // Fast retries: 81 failed attempts in a few seconds each way.
    let url = env
        .start_operator(&["--retry-base-delay=50ms", "--retry-max-delay=200ms"])
        .metrics_url();
    env.apply_yaml(&linktoken_yaml(
        "migration",
        ORG,
        &[],
        "creds",
        &source_spec(&env),
    ))
    .await;
    env.wait_reason("migration", Reason::Linked, WAIT).await;
    let old = env.token_in("migration", "linkToken").await.expect("token");
    let before = scrape(&url).await;

    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("error-code seed {seed:#x}");
    let mut rng = Rng(seed);
    let mut codes = Vec::new();
    // 40 on the next POSTs to Atlas, 41 on the POSTs to the source after them: 81, as seen.
    for (target, org, n) in [
        (FaultTarget::LinkTokens, ORG, 40),
        (FaultTarget::Source, DEMO_SOURCE_ORG_ID, 41),
    ] {
        for i in 0..n {
            let code = rng.code();
            let status = FAULT_STATUSES[i % FAULT_STATUSES.len()];
            env.fault(fault(
                target,
                org,
                status,
                serde_json::json!({"error": status, "errorCode": code, "detail": "injected"}),
            ));
            codes.push(code);
        }
    }
    env.rotate("migration", "random-codes").await;

    // Every fault answered, then the new token issued and linked.
    eventually(WAIT, "every injected fault answered", || async {
        env.sim.state.faults().is_empty().then_some(())
    })
    .await;
    eventually(WAIT, "linked with the new token", || async {
        let token = env.token_in("migration", "linkToken").await?;
        let lt = env.get("migration").await?;
        let sha = hex::encode(Sha256::digest(token.as_bytes()));
        (token != old && linked_with(&lt, &sha)).then_some(())
    })
    .await;
    let after = scrape(&url).await;

    for code in &codes {
        assert!(
            !after.contains(code.as_str()),
            "a random errorCode became a label value: {code}\n{after}"
        );
    }
    for family in FAMILIES {
        let (b, a) = (series(&before, family), series(&after, family));
        let new: Vec<&String> = a.difference(&b).collect();
        eprintln!(
            "{family}: {} series before, {} new: {new:#?}",
            b.len(),
            new.len()
        );
        // The injected answers fold into five series (500, 502, 503, 429 and 5xx, each with
        // `other`); the rotation's own calls (the DELETE in Atlas, the source's 409 and
        // unlink) may add a few of their own: far fewer than one per code.
        let other = new
            .iter()
            .filter(|s| s.contains(r#"error_code="other""#))
            .count();
        assert!(other <= 5, "{family}: {other} new `other` series: {new:#?}");
        assert!(
            new.len() <= 12,
            "{family} grew by {} series for {} random codes: {new:#?}",
            new.len(),
            codes.len()
        );
        for s in &a {
            assert!(
                !s.contains(r#"status="520""#) && !s.contains(r#"status="599""#),
                "a status outside the documented set became a label value: {s}"
            );
        }
        assert!(
            a.iter()
                .any(|s| s.contains(r#"status="5xx""#) && s.contains(r#"error_code="other""#)),
            "{family}: no 5xx/other series in\n{after}"
        );
    }
}

/// A `detail` as hostile as fits under the body cap, the same unit again and again: every
/// control character and escape a terminal or log pipeline acts on, multibyte text, a URL with
/// a password, an echoed bearer token. It starts with DETAIL-START and ends with DETAIL-END.
fn hostile_detail(budget: usize) -> String {
    let unit = "line\r\n\u{1b}[31mred\u{1b}[0m\u{0}nul\ttab \u{1b}]0;title\u{7} é日🦀\u{202e}rtl https://user:hunter2@evil.example/ Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzZWNyZXQifQ.c2ln ";
    let mut d = String::from("DETAIL-START ");
    // JSON escapes make the control characters longer on the wire: measure what is sent.
    while serde_json::to_string(&d).map_or(0, |s| s.len()) + 2 * unit.len() < budget {
        d.push_str(unit);
    }
    d.push_str("DETAIL-END");
    d
}

fn hostile_body(status: u16, budget: usize) -> serde_json::Value {
    let detail = hostile_detail(budget);
    serde_json::json!({
        "error": status,
        "errorCode": format!("EVIL\n\u{1b}[2J_{}", "X".repeat(200)),
        "detail": detail,
        "reason": "Bad\u{0}Request\n",
        "parameters": ["param\n\u{1b}[31m", 1],
        "badRequestDetail": {"fields": (0..20)
            .map(|i| serde_json::json!({"field": format!("f{i}\n\u{1b}[1m"), "description": "desc\r\nmore"}))
            .collect::<Vec<_>>()},
    })
}

/// What every place that shows remote text must hold to.
fn assert_clean(what: &str, text: &str, max_chars: usize) {
    assert!(
        !text.chars().any(char::is_control),
        "{what} holds a control character: {text:?}"
    );
    for bad in [
        "[31m",
        "[2J",
        "]0;",
        "\u{202e}",
        "hunter2",
        "eyJzdWIi",
        "DETAIL-END",
    ] {
        assert!(!text.contains(bad), "{what} holds {bad:?}: {text:?}");
    }
    assert!(
        text.chars().count() <= max_chars,
        "{what} is {} characters long: {text:?}",
        text.chars().count()
    );
}

/// The detail clipped as documented: its start kept, ending with the ellipsis.
fn assert_clipped_detail(what: &str, detail: Option<&str>) {
    let detail = detail.unwrap_or_else(|| panic!("{what}: no detail"));
    assert_clean(what, detail, MAX_DETAIL);
    assert!(
        detail.starts_with("DETAIL-START line red nul tab é日🦀 rtl https://[redacted]@evil.example/ Bearer [redacted] "),
        "{what}: {detail:?}"
    );
    assert!(detail.ends_with('…'), "{what}: {detail:?}");
}

fn assert_clipped_code(what: &str, code: Option<&str>) {
    let code = code.unwrap_or_else(|| panic!("{what}: no errorCode"));
    assert_clean(what, code, MAX_CODE);
    assert!(
        code.starts_with("EVIL _XXX") && code.ends_with('…'),
        "{what}: {code:?}"
    );
}

async fn warning_note(env: &Env, name: &str, reason: Reason) -> String {
    let events = env
        .wait_events(name, "its Warning", Duration::from_secs(30), |evs| {
            evs.iter()
                .any(|(r, t, _)| r == reason.as_str() && t == "Warning")
        })
        .await;
    events
        .into_iter()
        .find(|(r, t, _)| r == reason.as_str() && t == "Warning")
        .map(|(_, _, note)| note)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_reaches_status_conditions_events_and_logs_only_clipped_and_on_one_line() {
    let c = require_cluster!();
    let mut env = env_with_source(c, "e2e-text").await;
    let [org_source, org_huge] = DEMO_EXTRA_ORG_IDS;
    // The Atlas side refuses `atlas-side`'s POST; the source refuses `source-side`'s link:
    // both answers as hostile as fits under the cap.
    let body = hostile_body(400, BODY_CAP - 4096);
    assert!(body.to_string().len() < BODY_CAP);
    env.fault(fault(FaultTarget::LinkTokens, ORG, 400, body.clone()));
    env.fault(fault(FaultTarget::Source, DEMO_SOURCE_ORG_ID, 400, body));
    // `huge` gets a 100 KB answer: past the cap, so none of it may show.
    let huge = hostile_body(503, 100 * 1024);
    assert!(huge.to_string().len() > BODY_CAP);
    env.fault(FaultSpec {
        count: None,
        ..fault(FaultTarget::LinkTokens, org_huge, 503, huge)
    });
    env.start_operator(&[]);
    env.apply_yaml(&linktoken_yaml("atlas-side", ORG, &[], "creds", ""))
        .await;
    env.apply_yaml(&linktoken_yaml(
        "source-side",
        org_source,
        &[],
        "creds",
        &source_spec(&env),
    ))
    .await;
    env.apply_yaml(&linktoken_yaml("huge", org_huge, &[], "creds", ""))
        .await;

    // Atlas's refusal: the Ready message, status.atlasError and the Warning event.
    let lt = env
        .wait_reason("atlas-side", Reason::AtlasRejected, WAIT)
        .await;
    let (_, _, message) = condition(&lt, "Ready");
    eprintln!("atlas-side Ready message: {message}");
    assert_clean("the Ready message", &message, 4096);
    assert!(
        message.contains("DETAIL-START") && message.contains("15 more"),
        "{message}"
    );
    let err = lt
        .status
        .as_ref()
        .and_then(|s| s.atlas_error.clone())
        .expect("atlasError");
    assert_eq!(err.http_status, Some(400));
    assert_clipped_detail("status.atlasError.detail", err.detail.as_deref());
    assert_clipped_code("status.atlasError.errorCode", err.error_code.as_deref());
    let note = warning_note(&env, "atlas-side", Reason::AtlasRejected).await;
    assert_clean("the Warning event", &note, 4096);
    assert!(note.contains("DETAIL-START"), "{note}");

    // The source's refusal: the same, in status.link.sourceError.
    let lt = env
        .wait_reason("source-side", Reason::SourceRejected, WAIT)
        .await;
    let (_, _, message) = condition(&lt, "Ready");
    assert_clean("the source's Ready message", &message, 4096);
    assert!(message.contains("DETAIL-START"), "{message}");
    let err = lt
        .status
        .as_ref()
        .and_then(|s| s.link.as_ref())
        .and_then(|l| l.source_error.clone())
        .expect("status.link.sourceError");
    assert_clipped_detail("status.link.sourceError.detail", err.detail.as_deref());
    assert_clipped_code(
        "status.link.sourceError.errorCode",
        err.error_code.as_deref(),
    );
    let note = warning_note(&env, "source-side", Reason::SourceRejected).await;
    assert_clean("the source's Warning event", &note, 4096);

    // Past the cap: reported as too large, nothing of it shown.
    let lt = env
        .wait_reason("huge", Reason::AtlasUnavailable, WAIT)
        .await;
    let (_, _, message) = condition(&lt, "Ready");
    assert!(message.contains("exceeds 65536 bytes"), "{message}");
    assert!(
        !message.contains("DETAIL") && !message.contains("EVIL"),
        "{message}"
    );

    // The log: one line per event, none of it forged or coloured by the server.
    let logs = env.operator.as_ref().expect("operator").logs();
    // The failed calls are logged with their errorCode, sanitised like the status's.
    assert!(logs.contains("EVIL _XXX"), "the refusals are logged");
    for line in logs.lines() {
        assert_clean("an operator log line", line, usize::MAX);
        assert!(
            !line.starts_with("red") && !line.starts_with("nul"),
            "a forged log line: {line}"
        );
    }
    env.assert_no_secret_leaked(&["hunter2", DEMO_SOURCE_PRIVATE_KEY])
        .await;
}
