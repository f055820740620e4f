//! End to end: `linktoken_reconciles_total{result}` carries exactly the documented values
//! (ready, requeue, stalled, error, deleted), and a run that produces each outcome counts it
//! under its own name, so an alert written from docs/operations.md fires. Real control plane,
//! the operator binary, atlas-sim.
use testkit::require_cluster;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use kube::api::{ObjectMeta, PostParams};
use linktoken_operator::api::{LinkToken, Reason};
use linktoken_operator::runtime::metrics::ReconcileResult;
use testkit::e2e::{Env, ORG, linktoken_yaml, status_fault};

const ORG_B: &str = "5f1e9b2a3c4d5e6f7a8b9c0e";
/// Orgs of their own for the LinkTokens that never reach Atlas, so no two compete for an org.
const ORG_C: &str = "5f1e9b2a3c4d5e6f7a8b9c1a";
const ORG_D: &str = "5f1e9b2a3c4d5e6f7a8b9c1b";

/// `result` label value -> count, from one scrape.
async fn reconciles_by_result(url: &str) -> BTreeMap<String, f64> {
    let text = reqwest::get(url)
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    text.lines()
        .filter_map(|l| l.strip_prefix("linktoken_reconciles_total{result=\""))
        .filter_map(|rest| {
            let (result, count) = rest.split_once("\"} ")?;
            Some((result.to_string(), count.trim().parse().ok()?))
        })
        .collect()
}

/// A ValidatingAdmissionPolicy that refuses any finalizer on the LinkToken `blocked` of `ns`,
/// so the operator's finalizer patch fails on the Kubernetes API: a reconcile error.
fn deny_finalizers_yaml(ns: &str) -> String {
    format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: deny-finalizer-{ns}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: ["atlasmigration.io"]
      apiVersions: ["*"]
      operations: ["CREATE", "UPDATE"]
      resources: ["linktokens"]
  matchConditions:
  - name: only-blocked
    expression: "object.metadata.name == 'blocked'"
  validations:
  - expression: "!has(object.metadata.finalizers) || size(object.metadata.finalizers) == 0"
    message: "no finalizers on this LinkToken (test policy)"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: deny-finalizer-{ns}
spec:
  policyName: deny-finalizer-{ns}
  validationActions: ["Deny"]
  matchResources:
    namespaceSelector:
      matchLabels:
        kubernetes.io/metadata.name: {ns}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_reconcile_result_is_counted_under_its_own_name() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-metrics").await;
    env.api_key_secret("creds").await;

    // The policy first, and proven in force (a dry-run create with a finalizer is refused)
    // before the LinkToken it targets exists.
    let mut apply = c
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kubectl");
    apply
        .stdin
        .take()
        .expect("stdin")
        .write_all(deny_finalizers_yaml(&env.ns).as_bytes())
        .expect("write policy");
    assert!(apply.wait().expect("kubectl").success(), "policy applied");
    let probe: LinkToken =
        serde_saphyr::from_str(&linktoken_yaml("blocked", ORG_D, &[], "creds", "")).expect("yaml");
    let probe = LinkToken {
        metadata: ObjectMeta {
            finalizers: Some(vec!["example.com/probe".into()]),
            ..probe.metadata
        },
        ..probe
    };
    testkit::eventually(Duration::from_secs(30), "the policy in force", || {
        let api = env.linktokens();
        let probe = probe.clone();
        async move {
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            api.create(&dry, &probe).await.is_err().then_some(())
        }
    })
    .await;

    // A 503 on the first POSTs for ORG_B makes `retry` requeue on a timer.
    let mut unavailable = status_fault(503, "SERVICE_UNAVAILABLE", Some("POST"), Some(2));
    unavailable.org_id = Some(ORG_B.into());
    env.fault(unavailable);
    // No grace for a missing credentials Secret: `nocreds` is Stalled (and counted) at once.
    let op = env.start_operator(&["--credentials-grace=0s"]);
    let url = op.metrics_url();
    let at_start = reconciles_by_result(&url).await;
    let documented: Vec<&str> = ReconcileResult::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        at_start.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut d = documented.clone();
            d.sort();
            d
        },
        "every documented result, and only those, exists from startup"
    );
    assert!(at_start.values().all(|v| *v == 0.0), "{at_start:?}");

    env.linktoken("ok", ORG, &[]).await; // ready
    env.apply_yaml(&linktoken_yaml("retry", ORG_B, &[], "creds", ""))
        .await; // requeue, then ready
    env.apply_yaml(&linktoken_yaml("nocreds", ORG_C, &[], "missing", ""))
        .await; // stalled: CredentialsNotFound
    env.apply_yaml(&linktoken_yaml("blocked", ORG_D, &[], "creds", ""))
        .await; // error: the finalizer patch is refused
    env.wait_ready("ok").await;
    env.wait_ready("retry").await;
    env.wait_reason(
        "nocreds",
        Reason::CredentialsNotFound,
        Duration::from_secs(60),
    )
    .await;
    env.delete_linktoken("ok").await; // deleted
    env.wait_linktoken_gone("ok", Duration::from_secs(60)).await;

    let counts = testkit::eventually(Duration::from_secs(60), "every result counted", || {
        let url = url.clone();
        async move {
            let counts = reconciles_by_result(&url).await;
            ReconcileResult::ALL
                .iter()
                .all(|r| counts.get(r.as_str()).is_some_and(|v| *v > 0.0))
                .then_some(counts)
        }
    })
    .await;
    let mut seen: Vec<&str> = counts.keys().map(String::as_str).collect();
    seen.sort();
    let mut expected = documented;
    expected.sort();
    assert_eq!(seen, expected, "no undocumented result value: {counts:?}");

    let _ = c
        .kubectl()
        .args([
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            &format!("deny-finalizer-{}", env.ns),
            "--ignore-not-found",
        ])
        .status();
}
