//! Packaging: the Helm chart, the plain manifests in deploy/ and the RBAC they grant, checked
//! with helm and a real control plane.
//!
//! - lint, schema and rendering need only helm; everything that asks the API server goes
//!   through `testkit::cluster()`.
//! - The RBAC proof runs the operator binary out of cluster with a kubeconfig that holds
//!   nothing but a token of the chart's ServiceAccount, through the whole issue/revoke flow.
use testkit::require_cluster;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use serde_json::{Value, json};
use testkit::controlplane::Tools;
use testkit::e2e::{Env, ORG, PRIVATE_KEY, PUBLIC_KEY};

const CHART: &str = "charts/linktoken-operator";
/// Every external command gets this long; a hung helm or kubectl fails the test instead.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    repo().join(CHART)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// helm, for the tests that need no control plane. Same policy as `testkit::cluster()`: a
/// missing tool fails under CI and skips loudly elsewhere.
fn helm_bin() -> Option<PathBuf> {
    let found = Tools::locate().map_err(|e| e.to_string()).and_then(|t| {
        t.helm
            .ok_or_else(|| "helm not found: run `bash scripts/build-tools.sh`".to_string())
    });
    match found {
        Ok(h) => Some(h),
        Err(e) if in_ci() => panic!("CI=true and helm is unavailable: {e}"),
        Err(e) => {
            eprintln!("\n!!!!!!!! SKIPPED: this test needs helm:\n!!!!!!!! {e}\n");
            None
        }
    }
}

/// Runs `cmd` (with `stdin` fed in, if any) and returns its output, killing it after
/// COMMAND_TIMEOUT.
fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    use std::io::Write;
    let what = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        let input = input.to_string();
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{what} did not finish within {COMMAND_TIMEOUT:?}");
        }
    }
}

/// Runs `cmd` and returns stdout; panics with stderr when it fails.
fn run_ok(cmd: Command, stdin: Option<&str>) -> String {
    let what = format!("{cmd:?}");
    let out = run(cmd, stdin);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// `helm template` of the chart with the values in `values_yaml`; Err(stderr) when it fails.
fn template(helm: &Path, release: &str, ns: &str, values_yaml: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, values_yaml).expect("write values");
    let mut cmd = Command::new(helm);
    cmd.args(["template", release])
        .arg(chart())
        .args(["--namespace", ns, "-f"])
        .arg(&values);
    let out = run(cmd, None);
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("utf-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The objects of a multi-document YAML stream (empty documents skipped).
fn docs(yaml: &str) -> Vec<Value> {
    // Empty and null documents are skipped by the parser.
    serde_saphyr::from_multiple::<Value>(yaml).expect("yaml documents")
}

fn kinds(objs: &[Value]) -> Vec<(String, String, String)> {
    objs.iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or_default().to_string(),
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objs, kind);
    assert_eq!(found.len(), 1, "exactly one {kind} in {:?}", kinds(objs));
    found[0]
}

/// True for the ClusterRoles that extend Kubernetes' standard roles (not the operator's own).
fn is_aggregated(o: &Value) -> bool {
    o["metadata"]["labels"].as_object().is_some_and(|l| {
        l.keys()
            .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
    })
}

/// The operator's own ClusterRoles (the aggregated view/edit roles left out).
fn operator_cluster_roles(objs: &[Value]) -> Vec<&Value> {
    find(objs, "ClusterRole")
        .into_iter()
        .filter(|o| !is_aggregated(o))
        .collect()
}

/// The aggregated ClusterRoles as (name suffix, aggregation labels set to "true", grants).
fn aggregated_roles(objs: &[Value]) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut out: Vec<_> = find(objs, "ClusterRole")
        .into_iter()
        .filter(|o| is_aggregated(o))
        .map(|o| {
            let name = o["metadata"]["name"].as_str().unwrap_or_default();
            let suffix = name.rsplit('-').next().unwrap_or_default().to_string();
            let labels = o["metadata"]["labels"]
                .as_object()
                .expect("labels")
                .iter()
                .filter(|(k, v)| k.starts_with("rbac.authorization.k8s.io/") && *v == "true")
                .map(|(k, _)| {
                    k.trim_start_matches("rbac.authorization.k8s.io/")
                        .to_string()
                })
                .collect();
            (suffix, labels, grants(&o["rules"]))
        })
        .collect();
    out.sort();
    out
}

/// `group/resource:verb` for every combination a rule list grants, sorted.
fn grants(rules: &Value) -> Vec<String> {
    let mut grants = Vec::new();
    for r in rules.as_array().expect("rules") {
        for g in r["apiGroups"].as_array().expect("groups") {
            for res in r["resources"].as_array().expect("resources") {
                for v in r["verbs"].as_array().expect("verbs") {
                    grants.push(format!(
                        "{}/{}:{}",
                        g.as_str().unwrap_or_default(),
                        res.as_str().unwrap_or_default(),
                        v.as_str().unwrap_or_default()
                    ));
                }
            }
        }
    }
    grants.sort();
    grants
}

/// The operator container's env as name -> value (downward-API entries as "fieldRef:PATH").
fn container_env(deploy: &Value) -> BTreeMap<String, String> {
    deploy["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            let v = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some(p) => format!("fieldRef:{p}"),
                None => e["value"].as_str().unwrap_or_default().to_string(),
            };
            (e["name"].as_str().expect("env name").to_string(), v)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Without a control plane
// ---------------------------------------------------------------------------------------------

/// The chart's CRD is the generated one, byte for byte (crds/linktoken.yaml is itself checked
/// against the Rust types by the api tests).
#[test]
fn chart_crd_is_the_generated_crd() {
    let generated = linktoken_operator::api::crd::crd_yaml().expect("crd yaml");
    let in_chart = std::fs::read_to_string(chart().join("crds/linktoken.yaml"))
        .expect("charts/linktoken-operator/crds/linktoken.yaml");
    let checked_in = std::fs::read_to_string(repo().join("crds/linktoken.yaml")).expect("crds");
    assert!(
        in_chart == generated && in_chart == checked_in,
        "charts/linktoken-operator/crds/linktoken.yaml differs from the generated CRD; run:\n  \
         cargo run --bin crdgen -- --write && bash scripts/render-deploy.sh"
    );
}

#[test]
fn chart_lints_clean() {
    let Some(helm) = helm_bin() else { return };
    let mut cmd = Command::new(&helm);
    cmd.args(["lint", "--strict"]).arg(chart());
    run_ok(cmd, None);
    // The non-default branches lint too.
    let mut cmd = Command::new(&helm);
    cmd.args(["lint", "--strict"]).arg(chart()).args([
        "--set",
        "replicas=3,watchNamespaces={a,b},serviceMonitor.enabled=true,networkPolicy.enabled=true",
    ]);
    run_ok(cmd, None);
    let mut cmd = Command::new(&helm);
    cmd.args(["lint", "--strict"]).arg(chart()).args([
        "--set",
        "serviceAccount.automount=false,rbac.aggregateClusterRoles=false,\
         extraVolumes[0].name=ca,extraVolumes[0].configMap.name=ca,\
         extraVolumeMounts[0].name=ca,extraVolumeMounts[0].mountPath=/etc/ca,\
         extraArgs={--atlas-ca-file=/etc/ca/ca.crt}",
    ]);
    run_ok(cmd, None);
}

/// values.schema.json (and the template's own checks) turn bad values into install-time
/// errors naming the value.
#[test]
fn bad_values_are_rejected() {
    let Some(helm) = helm_bin() else { return };
    let cases: &[(&str, &str)] = &[
        // Two reconcilers at once could POST twice for one org and orphan an Atlas API key.
        (
            "replicas: 2\nleaderElection:\n  enabled: false\n",
            "leaderElection",
        ),
        ("logFormat: yaml\n", "logFormat"),
        ("atlasUrl: ftp://cloud.mongodb.com\n", "atlasUrl"),
        ("atlasUrl: https://user:pw@cloud.mongodb.com\n", "atlasUrl"),
        ("atlasUrl: https://cloud.mongodb.com/?x=1\n", "atlasUrl"),
        // Cleartext credentials to a remote host: only when explicitly allowed.
        (
            "atlasUrl: http://atlas.example.com\n",
            "allowInsecureAtlasUrl",
        ),
        ("allowInsecureAtlasUrl: \"yes\"\n", "allowInsecureAtlasUrl"),
        ("watchNamespaces: [Team_A]\n", "watchNamespaces"),
        ("watchNamespaces: team-a\n", "watchNamespaces"),
        ("replica: 2\n", "replica"),
        ("replicas: two\n", "replicas"),
        ("image:\n  digest: latest\n", "digest"),
        ("image:\n  pullPolicy: Sometimes\n", "pullPolicy"),
        ("resyncInterval: \"10\"\n", "resyncInterval"),
        ("concurrency: 0\n", "concurrency"),
        ("metrics:\n  port: 70000\n", "port"),
        ("leaderElection:\n  leaseName: Bad_Name\n", "leaseName"),
        (
            "leaderElection:\n  leaseDuration: \"15\"\n",
            "leaseDuration",
        ),
        ("leaderElection:\n  renewDeadline: 10\n", "renewDeadline"),
        ("leaderElection:\n  retryPeriod: 2 s\n", "retryPeriod"),
        ("commonLabels:\n  team: 7\n", "team"),
        ("env:\n  - value: x\n", "name"),
        (
            "serviceMonitor:\n  enabled: true\nmetrics:\n  service:\n    enabled: false\n",
            "metrics.service.enabled",
        ),
        // The conventions of cert-manager's and external-secrets' charts, typed.
        ("enabled: \"yes\"\n", "enabled"),
        ("revisionHistoryLimit: -1\n", "revisionHistoryLimit"),
        ("serviceAccount:\n  automount: \"no\"\n", "automount"),
        (
            "rbac:\n  aggregateClusterRoles: 1\n",
            "aggregateClusterRoles",
        ),
        ("extraArgs: --concurrency=2\n", "extraArgs"),
        ("extraArgs: [2]\n", "extraArgs"),
        ("extraEnv:\n  - value: x\n", "extraEnv"),
        ("extraVolumes:\n  - configMap: {name: ca}\n", "extraVolumes"),
        ("extraVolumeMounts:\n  - name: ca\n", "mountPath"),
        ("serviceMonitor:\n  namespace: Monitoring\n", "namespace"),
        (
            "serviceMonitor:\n  relabelings: {action: drop}\n",
            "relabelings",
        ),
        (
            "serviceMonitor:\n  metricRelabelings: [drop]\n",
            "metricRelabelings",
        ),
    ];
    let mut failures = Vec::new();
    for (values, mention) in cases {
        match template(&helm, "lt", "linktoken-system", values) {
            Ok(_) => failures.push(format!("accepted:\n{values}")),
            Err(e) if !e.contains(mention) => {
                failures.push(format!("rejected without naming {mention:?}:\n{values}{e}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
    // And the good ones pass.
    template(&helm, "lt", "linktoken-system", "replicas: 2\n").expect("replicas 2");
    // An umbrella chart's `condition: linktoken-operator.enabled` passes `enabled` down.
    for enabled in ["true", "false"] {
        template(
            &helm,
            "lt",
            "linktoken-system",
            &format!("enabled: {enabled}\n"),
        )
        .unwrap_or_else(|e| panic!("enabled: {enabled}: {e}"));
    }
    template(
        &helm,
        "lt",
        "linktoken-system",
        "atlasUrl: https://cloud.mongodbgov.com\nwatchNamespaces: [a, b-2]\nlogFormat: text\n",
    )
    .expect("gov + namespaces");
    template(
        &helm,
        "lt",
        "linktoken-system",
        "atlasUrl: http://127.0.0.1:8090\n",
    )
    .expect("http to loopback");
    template(
        &helm,
        "lt",
        "linktoken-system",
        "atlasUrl: http://[::1]:8090\n",
    )
    .expect("http to IPv6 loopback");
}

/// The leader-election timings reach the operator as its environment, and the operator itself
/// refuses an inconsistent set (which the schema, checking each value alone, cannot see) at
/// start-up, naming the flags, before it talks to any API server.
#[test]
fn leader_election_timings_are_values_the_operator_checks() {
    let Some(helm) = helm_bin() else { return };
    let render = |values: &str| {
        let objs = docs(&template(&helm, "lt", "linktoken-system", values).expect("template"));
        container_env(one(&objs, "Deployment"))
    };
    let env =
        render("leaderElection:\n  leaseDuration: 1m\n  renewDeadline: 40s\n  retryPeriod: 5s\n");
    assert_eq!(env["LINKTOKEN_LEADER_ELECTION_LEASE_DURATION"], "1m");
    assert_eq!(env["LINKTOKEN_LEADER_ELECTION_RENEW_DEADLINE"], "40s");
    assert_eq!(env["LINKTOKEN_LEADER_ELECTION_RETRY_PERIOD"], "5s");

    let bad = render("leaderElection:\n  leaseDuration: 10s\n  renewDeadline: 10s\n");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_linktoken-operator"));
    cmd.env_clear()
        .envs(bad.iter().filter(|(k, _)| k.starts_with("LINKTOKEN_")))
        // No cluster anywhere: the process must stop on its flags before looking for one.
        .env("KUBECONFIG", "/nonexistent");
    let out = run(cmd, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "--leader-election-renew-deadline (10s) must be less than --leader-election-lease-duration (10s)"
        ),
        "{stderr}"
    );
}

/// deploy/ is exactly what scripts/render-deploy.sh renders from the chart today.
#[test]
fn deploy_manifests_match_the_chart() {
    let Some(helm) = helm_bin() else { return };
    let out = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("bash");
    cmd.current_dir(repo())
        .env("HELM", &helm)
        .arg("scripts/render-deploy.sh")
        .arg(out.path());
    run_ok(cmd, None);
    let mut drifted = Vec::new();
    for entry in std::fs::read_dir(out.path()).expect("read rendered") {
        let name = entry.expect("entry").file_name();
        let fresh = std::fs::read_to_string(out.path().join(&name)).expect("rendered");
        let checked_in = std::fs::read_to_string(repo().join("deploy").join(&name));
        if checked_in.ok().as_deref() != Some(fresh.as_str()) {
            drifted.push(name.to_string_lossy().into_owned());
        }
    }
    assert!(
        drifted.is_empty(),
        "deploy/{drifted:?} differ from the chart; regenerate with:\n  bash scripts/render-deploy.sh"
    );
    // The plain manifests hold the CRD, the namespace and the operator, with its defaults.
    let objs = docs(
        &["namespace.yaml", "crd.yaml", "linktoken-operator.yaml"]
            .iter()
            .map(|f| std::fs::read_to_string(repo().join("deploy").join(f)).expect("deploy"))
            .collect::<Vec<_>>()
            .join("\n---\n"),
    );
    one(&objs, "CustomResourceDefinition");
    let ns = one(&objs, "Namespace");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    one(&objs, "Deployment");
    assert_eq!(operator_cluster_roles(&objs).len(), 1);
}

/// Default values: what the chart renders and why, object by object.
#[test]
fn default_values_render_a_restricted_least_privilege_operator() {
    let Some(helm) = helm_bin() else { return };
    let objs = docs(&template(&helm, "linktoken-operator", "ops", "").expect("template"));
    let mut got: Vec<_> = kinds(&objs)
        .into_iter()
        .map(|(k, ns, n)| format!("{k}/{ns}/{n}"))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "ClusterRole//linktoken-operator",
            "ClusterRole//linktoken-operator-edit",
            "ClusterRole//linktoken-operator-view",
            "ClusterRoleBinding//linktoken-operator",
            "Deployment/ops/linktoken-operator",
            "Role/ops/linktoken-operator-leader-election",
            "RoleBinding/ops/linktoken-operator-leader-election",
            "Service/ops/linktoken-operator-metrics",
            "ServiceAccount/ops/linktoken-operator",
        ],
        "no PDB with one replica, no ServiceMonitor or NetworkPolicy unless asked"
    );

    let d = one(&objs, "Deployment");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["revisionHistoryLimit"], 5);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "linktoken-operator");
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert!(pod["volumes"].is_null(), "no volumes by default");
    assert_eq!(
        one(&objs, "ServiceAccount")["automountServiceAccountToken"],
        true
    );
    let c = &pod["containers"][0];
    assert_eq!(
        c["image"],
        "ghcr.io/linktoken-operator/linktoken-operator:0.1.0"
    );
    let env = container_env(d);
    assert_eq!(env["POD_NAME"], "fieldRef:metadata.name");
    assert_eq!(env["POD_NAMESPACE"], "fieldRef:metadata.namespace");
    assert_eq!(env["LINKTOKEN_ATLAS_URL"], "https://cloud.mongodb.com");
    assert_eq!(env["LINKTOKEN_WATCH_NAMESPACES"], "");
    assert_eq!(env["LINKTOKEN_LEADER_ELECT"], "true");
    assert_eq!(
        env["LINKTOKEN_LEADER_ELECTION_ID"],
        "linktoken-operator-leader"
    );
    assert_eq!(env["LINKTOKEN_LEADER_ELECTION_LEASE_DURATION"], "15s");
    assert_eq!(env["LINKTOKEN_LEADER_ELECTION_RENEW_DEADLINE"], "10s");
    assert_eq!(env["LINKTOKEN_LEADER_ELECTION_RETRY_PERIOD"], "2s");
    assert_eq!(env["LINKTOKEN_METRICS_BIND_ADDRESS"], ":8080");
    assert_eq!(env["LINKTOKEN_HEALTH_PROBE_BIND_ADDRESS"], ":8081");
    assert_eq!(env["LINKTOKEN_LOG_FORMAT"], "json");
    assert!(!env.contains_key("LINKTOKEN_ALLOW_INSECURE_ATLAS_URL"));
    assert!(c["args"].is_null());
    assert!(c["volumeMounts"].is_null());
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let ports: Vec<_> = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default(),
                p["containerPort"].as_u64(),
            )
        })
        .collect();
    assert_eq!(ports, [("metrics", Some(8080)), ("probes", Some(8081))]);
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert!(c["resources"]["limits"]["memory"].is_string());

    // RBAC: no wildcard, no cluster-scoped resource, no verb the operator never calls.
    let operator_roles = operator_cluster_roles(&objs);
    assert_eq!(operator_roles.len(), 1);
    assert_eq!(
        grants(&operator_roles[0]["rules"]),
        [
            "/configmaps:get",
            "/secrets:create",
            "/secrets:delete",
            "/secrets:get",
            "/secrets:list",
            "/secrets:patch",
            "/secrets:watch",
            "atlasmigration.io/linktokens/finalizers:update",
            "atlasmigration.io/linktokens/status:patch",
            "atlasmigration.io/linktokens:get",
            "atlasmigration.io/linktokens:list",
            "atlasmigration.io/linktokens:patch",
            "atlasmigration.io/linktokens:watch",
            "events.k8s.io/events:create",
            "events.k8s.io/events:patch",
        ]
    );
    // Aggregated into the standard roles: view reads LinkTokens, edit and admin manage them;
    // nobody but the operator writes their status.
    assert_eq!(
        aggregated_roles(&objs),
        [
            (
                "edit".to_string(),
                vec![
                    "aggregate-to-admin".to_string(),
                    "aggregate-to-edit".to_string()
                ],
                vec![
                    "atlasmigration.io/linktokens:create".to_string(),
                    "atlasmigration.io/linktokens:delete".to_string(),
                    "atlasmigration.io/linktokens:deletecollection".to_string(),
                    "atlasmigration.io/linktokens:patch".to_string(),
                    "atlasmigration.io/linktokens:update".to_string(),
                ]
            ),
            (
                "view".to_string(),
                vec![
                    "aggregate-to-admin".to_string(),
                    "aggregate-to-edit".to_string(),
                    "aggregate-to-view".to_string()
                ],
                vec![
                    "atlasmigration.io/linktokens/status:get".to_string(),
                    "atlasmigration.io/linktokens/status:list".to_string(),
                    "atlasmigration.io/linktokens/status:watch".to_string(),
                    "atlasmigration.io/linktokens:get".to_string(),
                    "atlasmigration.io/linktokens:list".to_string(),
                    "atlasmigration.io/linktokens:watch".to_string(),
                ]
            ),
        ]
    );
    let lease_rules = &one(&objs, "Role")["rules"];
    assert_eq!(
        lease_rules[0]["resourceNames"],
        json!(["linktoken-operator-leader"])
    );
    assert_eq!(lease_rules[0]["verbs"], json!(["get", "update"]));
    assert_eq!(lease_rules[1]["verbs"], json!(["create"]));
    // Every rule carries a comment saying why (checked in the template source).
    let helpers = std::fs::read_to_string(chart().join("templates/_helpers.tpl")).expect("tpl");
    let rules_src = helpers
        .split("define \"linktoken-operator.rules\"")
        .nth(1)
        .expect("rules block");
    let rules_src = &rules_src[..rules_src.find("{{- end }}").expect("end")];
    let lines: Vec<&str> = rules_src.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("- apiGroups") {
            assert!(
                i > 0 && lines[i - 1].starts_with('#'),
                "RBAC rule without a comment: {l}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// On the control plane
// ---------------------------------------------------------------------------------------------

/// A minimal ServiceMonitor CRD, so `--dry-run=server` can accept the chart's ServiceMonitor
/// without installing prometheus-operator.
const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#;

/// Assertions on the objects one value set renders.
type Check = Box<dyn Fn(&[Value])>;

/// Each value set renders objects the API server accepts (server-side dry run, so admission
/// and schema validation run), and renders what it promises.
#[tokio::test]
async fn value_sets_render_objects_the_api_server_accepts() {
    let c = require_cluster!();
    let helm = c
        .tools
        .helm
        .clone()
        .expect("helm: run `bash scripts/build-tools.sh`");
    let started = Instant::now();
    let ns = c.namespace("helm-values").await;
    let team_a = c.namespace("helm-team-a").await;
    let team_b = c.namespace("helm-team-b").await;
    run_ok(
        c.kubectl_cmd(&["apply", "--server-side", "-f", "-"]),
        Some(SERVICE_MONITOR_CRD),
    );
    run_ok(
        c.kubectl_cmd(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/servicemonitors.monitoring.coreos.com",
        ]),
        None,
    );

    let sets: Vec<(&str, String, Check)> = vec![
        (
            "defaults",
            String::new(),
            Box::new(|objs: &[Value]| {
                assert_eq!(operator_cluster_roles(objs).len(), 1);
                assert_eq!(aggregated_roles(objs).len(), 2);
                assert!(find(objs, "PodDisruptionBudget").is_empty());
            }),
        ),
        (
            "watchNamespaces",
            format!("watchNamespaces: [{team_a}, {team_b}]\n"),
            Box::new({
                let (a, b, ns) = (team_a.clone(), team_b.clone(), ns.clone());
                move |objs: &[Value]| {
                    assert!(operator_cluster_roles(objs).is_empty(), "no ClusterRole");
                    // Tenants' view/edit roles still cover LinkTokens in their namespaces.
                    assert_eq!(aggregated_roles(objs).len(), 2);
                    assert!(find(objs, "ClusterRoleBinding").is_empty());
                    let mut roles: Vec<_> = find(objs, "Role")
                        .iter()
                        .map(|r| r["metadata"]["namespace"].as_str().unwrap_or_default().to_string())
                        .collect();
                    roles.sort();
                    let mut want = vec![a.clone(), b.clone(), ns.clone()];
                    want.sort();
                    assert_eq!(roles, want, "a Role per watched namespace + the Lease Role");
                    let env = container_env(one(objs, "Deployment"));
                    assert_eq!(env["LINKTOKEN_WATCH_NAMESPACES"], format!("{a},{b}"));
                }
            }),
        ),
        (
            "replicas 2 + PDB",
            "replicas: 2\n".into(),
            Box::new(|objs: &[Value]| {
                let pdb = one(objs, "PodDisruptionBudget");
                assert_eq!(pdb["spec"]["minAvailable"], 1);
                let d = one(objs, "Deployment");
                assert_eq!(d["spec"]["replicas"], 2);
                assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
            }),
        ),
        (
            "serviceMonitor + networkPolicy",
            "serviceMonitor:\n  enabled: true\n  labels: {release: prom}\nnetworkPolicy:\n  enabled: true\n  sourcePorts: [8443]\n  metricsFrom:\n    - namespaceSelector:\n        matchLabels: {kubernetes.io/metadata.name: monitoring}\natlasUrl: http://atlas-sim.atlas:9000\nallowInsecureAtlasUrl: true\n".into(),
            Box::new(|objs: &[Value]| {
                let env = container_env(one(objs, "Deployment"));
                assert_eq!(env["LINKTOKEN_ALLOW_INSECURE_ATLAS_URL"], "true");
                let sm = one(objs, "ServiceMonitor");
                assert_eq!(sm["metadata"]["labels"]["release"], "prom");
                assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
                let np = one(objs, "NetworkPolicy");
                let ports: Vec<_> = np["spec"]["egress"][1]["ports"]
                    .as_array()
                    .expect("egress ports")
                    .iter()
                    .map(|p| p["port"].as_u64().unwrap_or_default())
                    .collect();
                assert_eq!(
                    ports,
                    [443, 6443, 8443, 9000],
                    "API server ports + an Ops Manager source's + the Atlas URL's port"
                );
                assert!(np["spec"]["ingress"][0]["from"].is_array());
            }),
        ),
        (
            "custom resources, labels, scheduling, env and args",
            r#"
image: {repository: registry.example.com/lt, digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000"}
resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {cpu: 500m, memory: 256Mi}}
commonLabels: {team: migrations}
commonAnnotations: {owner: dba}
podLabels: {tier: control}
podAnnotations: {example.com/scrape: "yes"}
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: ops, effect: NoSchedule}]
affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/arch, operator: In, values: [amd64, arm64]}]}]}}}
env: [{name: HTTPS_PROXY, value: "http://proxy:3128"}]
args: ["--concurrency=2"]
logFormat: text
"#
            .into(),
            Box::new(|objs: &[Value]| {
                for o in objs {
                    assert_eq!(o["metadata"]["labels"]["team"], "migrations", "{}", o["kind"]);
                    assert_eq!(o["metadata"]["annotations"]["owner"], "dba", "{}", o["kind"]);
                }
                let d = one(objs, "Deployment");
                let t = &d["spec"]["template"];
                assert_eq!(t["metadata"]["labels"]["tier"], "control");
                assert_eq!(t["metadata"]["annotations"]["example.com/scrape"], "yes");
                let c = &t["spec"]["containers"][0];
                assert_eq!(
                    c["image"],
                    "registry.example.com/lt@sha256:0000000000000000000000000000000000000000000000000000000000000000"
                );
                assert_eq!(c["resources"]["limits"]["cpu"], "500m");
                assert_eq!(c["args"], json!(["--concurrency=2"]));
                assert_eq!(container_env(d)["HTTPS_PROXY"], "http://proxy:3128");
                assert_eq!(t["spec"]["nodeSelector"]["kubernetes.io/os"], "linux");
                assert_eq!(t["spec"]["tolerations"][0]["key"], "dedicated");
                assert!(t["spec"]["affinity"]["nodeAffinity"].is_object());
            }),
        ),
        (
            "ecosystem conventions: extra args/env/volumes, automount off, monitor placement",
            format!(
                r#"
enabled: true
revisionHistoryLimit: 2
serviceAccount: {{automount: false}}
rbac: {{aggregateClusterRoles: false}}
args: ["--concurrency=2"]
extraArgs: ["--resync-interval=5m"]
env: [{{name: LEGACY, value: "1"}}]
extraEnv:
  - {{name: HTTPS_PROXY, value: "http://proxy.infra:3128"}}
  - {{name: NO_PROXY, value: "10.0.0.0/8,.svc,.cluster.local"}}
extraVolumes:
  - {{name: corporate-ca, configMap: {{name: corporate-ca}}}}
extraVolumeMounts:
  - {{name: corporate-ca, mountPath: /etc/linktoken/ca, readOnly: true}}
serviceMonitor:
  enabled: true
  namespace: {team_a}
  relabelings: [{{action: replace, targetLabel: team, replacement: migrations}}]
  metricRelabelings: [{{action: drop, sourceLabels: [__name__], regex: "go_.*"}}]
"#
            ),
            Box::new({
                let (a, ns) = (team_a.clone(), ns.clone());
                move |objs: &[Value]| {
                    assert!(aggregated_roles(objs).is_empty(), "aggregateClusterRoles: false");
                    let d = one(objs, "Deployment");
                    assert_eq!(d["spec"]["revisionHistoryLimit"], 2);
                    let pod = &d["spec"]["template"]["spec"];
                    let c = &pod["containers"][0];
                    // The old names keep working; the extra lists come after them.
                    assert_eq!(c["args"], json!(["--concurrency=2", "--resync-interval=5m"]));
                    let env = container_env(d);
                    assert_eq!(env["LEGACY"], "1");
                    assert_eq!(env["HTTPS_PROXY"], "http://proxy.infra:3128");
                    assert_eq!(env["NO_PROXY"], "10.0.0.0/8,.svc,.cluster.local");
                    // Automount off: nothing implicit, the same credentials mounted explicitly
                    // where the in-cluster client reads them.
                    assert_eq!(one(objs, "ServiceAccount")["automountServiceAccountToken"], false);
                    assert_eq!(pod["automountServiceAccountToken"], false);
                    let volumes: Vec<_> = pod["volumes"]
                        .as_array()
                        .expect("volumes")
                        .iter()
                        .map(|v| v["name"].as_str().unwrap_or_default())
                        .collect();
                    assert_eq!(volumes, ["kube-api-access", "corporate-ca"]);
                    let sources = &pod["volumes"][0]["projected"]["sources"];
                    assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
                    assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
                    assert_eq!(sources[2]["downwardAPI"]["items"][0]["path"], "namespace");
                    let mounts: Vec<_> = c["volumeMounts"]
                        .as_array()
                        .expect("volumeMounts")
                        .iter()
                        .map(|m| m["mountPath"].as_str().unwrap_or_default())
                        .collect();
                    assert_eq!(
                        mounts,
                        ["/var/run/secrets/kubernetes.io/serviceaccount", "/etc/linktoken/ca"]
                    );
                    let sm = one(objs, "ServiceMonitor");
                    assert_eq!(sm["metadata"]["namespace"], a.as_str());
                    assert_eq!(sm["spec"]["namespaceSelector"]["matchNames"], json!([ns]));
                    let ep = &sm["spec"]["endpoints"][0];
                    assert_eq!(ep["relabelings"][0]["targetLabel"], "team");
                    assert_eq!(ep["metricRelabelings"][0]["action"], "drop");
                }
            }),
        ),
    ];

    for (name, values, check) in &sets {
        let rendered = template(&helm, &format!("dry-{}", testkit::unique("r")), &ns, values)
            .unwrap_or_else(|e| panic!("{name}: helm template failed:\n{e}"));
        check(&docs(&rendered));
        let out = run(
            c.kubectl_cmd(&["apply", "--dry-run=server", "-f", "-"]),
            Some(&rendered),
        );
        assert!(
            out.status.success(),
            "{name}: the API server rejected the rendered objects:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("value sets: {:.1}s", started.elapsed().as_secs_f64());
}

/// `helm install` into a namespace that enforces Pod Security "restricted": the objects exist
/// as rendered, and a Pod made from the Deployment's template is admitted (while a
/// non-compliant variant is refused, so the check is live).
#[tokio::test]
async fn helm_install_in_a_restricted_namespace() {
    let c = require_cluster!();
    let started = Instant::now();
    let ns = c.namespace("helm-install").await;
    run_ok(
        c.kubectl_cmd(&[
            "label",
            "namespace",
            &ns,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
        ]),
        None,
    );
    let release = testkit::unique("lt");
    let mut cmd = c.helm();
    cmd.args(["install", &release]).arg(chart()).args([
        "--namespace",
        &ns,
        "--skip-crds",
        "--set",
        "replicas=2",
    ]);
    let out = run(cmd, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "helm install: {stderr}");
    assert!(
        !stderr.contains("PodSecurity"),
        "Pod Security warning: {stderr}"
    );

    let fullname = format!("{release}-linktoken-operator");
    let client = c.client().await;
    let deploy: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = deploy.get(&fullname).await.expect("Deployment installed");
    let spec = d.spec;
    assert_eq!(spec.replicas, Some(2));
    for (kind, namespaced) in [
        ("serviceaccount", true),
        ("service", true),
        ("poddisruptionbudget", true),
        ("clusterrole", false),
        ("clusterrolebinding", false),
    ] {
        let name = if kind == "service" {
            format!("{fullname}-metrics")
        } else {
            fullname.clone()
        };
        let mut args = vec!["get", kind, name.as_str()];
        if namespaced {
            args.extend(["-n", ns.as_str()]);
        }
        run_ok(c.kubectl_cmd(&args), None);
    }
    for kind in ["role", "rolebinding"] {
        run_ok(
            c.kubectl_cmd(&[
                "get",
                kind,
                &format!("{fullname}-leader-election"),
                "-n",
                &ns,
            ]),
            None,
        );
    }
    let status = run_ok(
        c.helm_cmd(&["status", &release, "-n", &ns, "-o", "json"]),
        None,
    );
    let status: Value = serde_json::from_str(&status).expect("helm status json");
    assert_eq!(status["info"]["status"], "deployed");

    // Pod Security "restricted": the pod the Deployment would create is admitted.
    let template = spec.template;
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let pod = |spec: PodSpec| Pod {
        metadata: ObjectMeta {
            name: Some("psa-check".into()),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    };
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let compliant = template.spec.clone().expect("pod spec");
    pods.create(&dry, &pod(compliant.clone()))
        .await
        .expect("a restricted namespace admits the chart's pod");
    // Control: the same pod with privilege escalation allowed is refused, so the namespace
    // really enforces the profile.
    let mut bad = compliant;
    if let Some(sc) = bad.containers[0].security_context.as_mut() {
        sc.allow_privilege_escalation = Some(true);
    }
    let err = pods
        .create(&dry, &pod(bad))
        .await
        .expect_err("a non-compliant pod must be refused");
    assert!(err.to_string().contains("PodSecurity"), "{err}");

    run_ok(
        c.helm_cmd(&["uninstall", &release, "-n", &ns, "--wait", "--timeout=60s"]),
        None,
    );
    eprintln!("install: {:.1}s", started.elapsed().as_secs_f64());
}

/// The aggregated ClusterRoles reach tenants through Kubernetes' own roles: a ServiceAccount
/// bound to `view` in its namespace reads LinkTokens there, one bound to `edit` also creates and
/// deletes them, and neither can write their status (the operator's).
#[tokio::test]
async fn standard_view_and_edit_roles_cover_link_tokens() {
    let c = require_cluster!();
    let helm = c
        .tools
        .helm
        .clone()
        .expect("helm: run `bash scripts/build-tools.sh`");
    c.apply_crd(&linktoken_operator::api::crd::crd()).await;
    let ns = c.namespace("helm-tenant").await;
    let release = testkit::unique("agg");
    let mut cmd = Command::new(&helm);
    cmd.args(["template", &release])
        .arg(chart())
        .args(["--show-only", "templates/aggregate-clusterroles.yaml"]);
    let rendered = run_ok(cmd, None);
    run_ok(c.kubectl_cmd(&["apply", "-f", "-"]), Some(&rendered));
    for (sa, role) in [("viewer", "view"), ("editor", "edit")] {
        run_ok(
            c.kubectl_cmd(&["create", "serviceaccount", sa, "-n", &ns]),
            None,
        );
        run_ok(
            c.kubectl_cmd(&[
                "create",
                "rolebinding",
                sa,
                &format!("--clusterrole={role}"),
                &format!("--serviceaccount={ns}:{sa}"),
                "-n",
                &ns,
            ]),
            None,
        );
    }
    let viewer = format!("system:serviceaccount:{ns}:viewer");
    let editor = format!("system:serviceaccount:{ns}:editor");
    let lt = "linktokens.atlasmigration.io";
    let lt_status = "linktokens.atlasmigration.io/status";

    // The clusterrole-aggregation controller copies the rules into view/edit/admin shortly
    // after the ClusterRoles appear.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(can_i(c, &viewer, "list", lt, Some(&ns)) && can_i(c, &editor, "create", lt, Some(&ns)))
    {
        assert!(
            Instant::now() < deadline,
            "view/edit never gained the LinkToken rules (clusterrole-aggregation)"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut wrong = Vec::new();
    for (who, verb, resource, want) in [
        (&viewer, "get", lt, true),
        (&viewer, "watch", lt, true),
        (&viewer, "get", lt_status, true),
        (&viewer, "create", lt, false),
        (&viewer, "delete", lt, false),
        (&viewer, "patch", lt_status, false),
        (&editor, "get", lt, true),
        (&editor, "update", lt, true),
        (&editor, "patch", lt, true),
        (&editor, "delete", lt, true),
        (&editor, "deletecollection", lt, true),
        (&editor, "patch", lt_status, false),
        (&editor, "update", lt_status, false),
    ] {
        if can_i(c, who, verb, resource, Some(&ns)) != want {
            wrong.push(format!("{who} {verb} {resource}: expected {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // And for real: the editor creates a LinkToken, the viewer lists it (by the category too).
    let manifest = format!(
        "apiVersion: atlasmigration.io/v1alpha1\nkind: LinkToken\nmetadata:\n  name: tenant\n\
         spec:\n  orgId: \"{ORG}\"\n  credentialsSecretRef:\n    name: atlas-api-key\n"
    );
    run_ok(
        c.kubectl_cmd(&["create", "-n", &ns, "--as", &editor, "-f", "-"]),
        Some(&manifest),
    );
    // A fresh discovery cache: kubectl resolves the category from (cached) discovery.
    let cache = tempfile::tempdir().expect("tempdir");
    let mut get = c.kubectl_cmd(&["get", "atlas", "-n", &ns, "--as", &viewer, "-o", "name"]);
    get.arg("--cache-dir").arg(cache.path());
    let listed = run_ok(get, None);
    assert_eq!(listed.trim(), "linktoken.atlasmigration.io/tenant");

    // Cluster-scoped: remove them so other tests see the standard roles unchanged.
    run_ok(
        c.kubectl_cmd(&["delete", "--wait=false", "-f", "-"]),
        Some(&rendered),
    );
}

/// `kubectl auth can-i` as the ServiceAccount: true when allowed.
fn can_i(c: &testkit::TestCluster, sa: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    // `kubectl auth can-i VERB RES/NAME` reads a name after the slash, so subresources go in
    // --subresource.
    let (resource, sub) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (resource, None),
    };
    let sub_flag = sub.map(|s| format!("--subresource={s}"));
    let mut args = vec!["auth", "can-i", verb, resource, "--as", sa];
    if let Some(f) = sub_flag.as_deref() {
        args.push(f);
    }
    match ns {
        Some(n) => args.extend(["-n", n]),
        None => args.push("--all-namespaces"),
    }
    let out = run(c.kubectl_cmd(&args), None);
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "kubectl auth can-i {verb} {resource}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Installs the chart for `env`'s namespace and runs the whole issue/revoke flow with the
/// operator authenticated as the chart's ServiceAccount only. Returns (release namespace,
/// ServiceAccount user name, Lease name).
async fn issue_and_revoke_as_the_chart_service_account(
    env: &mut Env,
    values: &str,
    prefix: &str,
) -> (String, String, String) {
    let c = env.cluster;
    let op_ns = c.namespace(prefix).await;
    let release = testkit::unique("lt");
    let fullname = format!("{release}-linktoken-operator");
    let lease = format!("{release}-leader");
    let dir = tempfile::tempdir().expect("tempdir");
    let values_file = dir.path().join("values.yaml");
    std::fs::write(
        &values_file,
        format!("{values}leaderElection:\n  enabled: true\n  leaseName: {lease}\n"),
    )
    .expect("values");
    let mut cmd = c.helm();
    cmd.args(["install", &release])
        .arg(chart())
        .args(["--namespace", &op_ns, "--skip-crds", "-f"])
        .arg(&values_file);
    run_ok(cmd, None);

    let kubeconfig = c.service_account_kubeconfig(&op_ns, &fullname, dir.path());
    // The token really is all the operator has: the API server refuses it anything else.
    let mut cmd = Command::new(&c.tools.kubectl);
    cmd.env("KUBECONFIG", &kubeconfig)
        .args(["get", "configmaps", "-n", &op_ns]);
    let out = run(cmd, None);
    assert!(
        !out.status.success(),
        "the token must not read ConfigMaps in {op_ns}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Forbidden"));

    env.api_key_secret("creds").await;
    let op = env.spawn_operator_with_kubeconfig(
        &kubeconfig,
        &[
            "--leader-elect",
            &format!("--leader-election-namespace={op_ns}"),
            &format!("--leader-election-id={lease}"),
        ],
    );
    env.operator = Some(op);
    env.linktoken("migration", ORG, &["203.0.113.0/24"]).await;
    let lt = env.wait_ready("migration").await;
    assert_eq!(
        lt.status.and_then(|s| s.token_secret_name).as_deref(),
        Some("migration")
    );
    let token = env
        .token_in("migration", "linkToken")
        .await
        .expect("token in the Secret");
    assert!(
        env.sim.state.is_token_live(&token),
        "the Secret holds the live token"
    );

    // It leads through the chart's Lease Role.
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &op_ns);
    let held = leases
        .get(&lease)
        .await
        .expect("Lease created by the operator");
    assert!(
        held.spec
            .and_then(|s| s.holder_identity)
            .is_some_and(|h| !h.is_empty()),
        "the Lease has a holder"
    );

    env.linktokens()
        .delete("migration", &DeleteParams::default())
        .await
        .expect("delete LinkToken");
    testkit::eventually(Duration::from_secs(30), "LinkToken gone", || async {
        env.get("migration").await.is_none().then_some(())
    })
    .await;
    assert_eq!(
        env.sim.state.live_links(ORG),
        0,
        "the link was revoked in Atlas"
    );
    // Both recorded with the chart's RBAC.
    env.wait_events(
        "migration",
        "TokenIssued and TokenRevoked",
        Duration::from_secs(10),
        |events| {
            ["TokenIssued", "TokenRevoked"]
                .iter()
                .all(|reason| events.iter().any(|(r, _, _)| r == reason))
        },
    )
    .await;
    // No call was refused on the way (a refused event or status write would not stop the
    // flow, so look at the log too).
    let logs = env.operator.as_ref().map(|o| o.logs()).unwrap_or_default();
    assert!(
        !logs.contains("forbidden") && !logs.contains("Forbidden"),
        "the operator was refused something:\n{logs}"
    );
    env.assert_no_secret_leaked(&[&token, PRIVATE_KEY, PUBLIC_KEY])
        .await;
    if let Some(mut op) = env.operator.take() {
        op.terminate(Duration::from_secs(15));
    }
    let sa = format!("system:serviceaccount:{op_ns}:{fullname}");
    (op_ns, sa, lease)
}

/// watchNamespaces mode: the operator issues and revokes with nothing but the chart's Roles,
/// and the ServiceAccount can do nothing else (no Secrets elsewhere, no cluster-wide access,
/// no verbs it never calls).
#[tokio::test]
async fn namespaced_rbac_is_enough_and_no_more() {
    let c = require_cluster!();
    let started = Instant::now();
    let mut env = Env::new(c, "helm-rbac-ns").await;
    let ns = env.ns.clone();
    let (op_ns, sa, lease_name) = issue_and_revoke_as_the_chart_service_account(
        &mut env,
        &format!("watchNamespaces: [{ns}]\n"),
        "helm-op-ns",
    )
    .await;
    let other = c.namespace("helm-other").await;

    let lease = |verb| can_i(c, &sa, verb, "leases.coordination.k8s.io", Some(&op_ns));
    let allowed = [
        ("get", "linktokens.atlasmigration.io", Some(ns.as_str())),
        ("list", "linktokens.atlasmigration.io", Some(&ns)),
        ("watch", "linktokens.atlasmigration.io", Some(&ns)),
        ("patch", "linktokens.atlasmigration.io", Some(&ns)),
        ("patch", "linktokens.atlasmigration.io/status", Some(&ns)),
        (
            "update",
            "linktokens.atlasmigration.io/finalizers",
            Some(&ns),
        ),
        ("get", "configmaps", Some(&ns)),
        ("get", "secrets", Some(&ns)),
        ("list", "secrets", Some(&ns)),
        ("watch", "secrets", Some(&ns)),
        ("create", "secrets", Some(&ns)),
        ("patch", "secrets", Some(&ns)),
        ("delete", "secrets", Some(&ns)),
        ("create", "events.events.k8s.io", Some(&ns)),
        ("patch", "events.events.k8s.io", Some(&ns)),
    ];
    for (verb, res, n) in allowed {
        assert!(
            can_i(c, &sa, verb, res, n),
            "{sa} should be allowed {verb} {res} in {n:?}"
        );
    }
    assert!(lease("create"));
    let denied = [
        // Secrets anywhere but the watched namespace.
        ("get", "secrets", Some(other.as_str())),
        ("list", "secrets", Some(&other)),
        ("get", "secrets", Some("default")),
        ("get", "secrets", Some(&op_ns)),
        ("list", "secrets", None),
        ("watch", "secrets", None),
        // LinkTokens: never created, updated or deleted by the operator, nor elsewhere.
        ("delete", "linktokens.atlasmigration.io", Some(&ns)),
        ("create", "linktokens.atlasmigration.io", Some(&ns)),
        ("update", "linktokens.atlasmigration.io", Some(&ns)),
        ("list", "linktokens.atlasmigration.io", Some(&other)),
        ("list", "linktokens.atlasmigration.io", None),
        ("update", "secrets", Some(&ns)),
        ("deletecollection", "secrets", Some(&ns)),
        // ConfigMaps (a source CA bundle): get only, only in the watched namespace.
        ("list", "configmaps", Some(&ns)),
        ("get", "configmaps", Some(other.as_str())),
        // Nothing else.
        ("create", "pods", Some(&ns)),
        ("create", "events", Some(&ns)),
        ("list", "leases.coordination.k8s.io", Some(&op_ns)),
        ("patch", "leases.coordination.k8s.io", Some(&op_ns)),
        ("delete", "leases.coordination.k8s.io", Some(&op_ns)),
        ("get", "leases.coordination.k8s.io", Some(&ns)),
        (
            "list",
            "customresourcedefinitions.apiextensions.k8s.io",
            None,
        ),
        ("*", "*", Some(&ns)),
    ];
    for (verb, res, n) in denied {
        assert!(
            !can_i(c, &sa, verb, res, n),
            "{sa} must not {verb} {res} in {n:?}"
        );
    }
    // The Lease rule is limited to the chart's Lease name.
    let mut cmd = c.kubectl();
    cmd.args(["auth", "can-i", "update"])
        .arg(format!("leases.coordination.k8s.io/{lease_name}"))
        .args(["--as", &sa, "-n", &op_ns]);
    assert!(run(cmd, None).status.success(), "update of its own Lease");
    let mut cmd = c.kubectl();
    cmd.args([
        "auth",
        "can-i",
        "update",
        "leases.coordination.k8s.io/someone-else",
    ])
    .args(["--as", &sa, "-n", &op_ns]);
    assert!(!run(cmd, None).status.success(), "update of another Lease");
    eprintln!("namespaced RBAC: {:.1}s", started.elapsed().as_secs_f64());
}

/// All-namespaces mode (the default): the ClusterRole carries the same flow, grants the
/// cluster-wide list/watch the watchers need, and nothing beyond the operator's calls.
#[tokio::test]
async fn cluster_wide_rbac_is_enough_and_no_more() {
    let c = require_cluster!();
    let started = Instant::now();
    let mut env = Env::new(c, "helm-rbac-all").await;
    // The operator itself still watches only the test's namespace (tests share the cluster);
    // the permissions are the ClusterRole's.
    let (_op_ns, sa, _lease) =
        issue_and_revoke_as_the_chart_service_account(&mut env, "", "helm-op-all").await;
    for res in ["secrets", "linktokens.atlasmigration.io"] {
        for verb in ["list", "watch"] {
            assert!(can_i(c, &sa, verb, res, None), "cluster-wide {verb} {res}");
        }
    }
    for (verb, res) in [
        ("delete", "linktokens.atlasmigration.io"),
        ("create", "linktokens.atlasmigration.io"),
        ("update", "secrets"),
        ("list", "configmaps"),
        ("watch", "configmaps"),
        ("create", "pods"),
        ("list", "leases.coordination.k8s.io"),
        ("create", "leases.coordination.k8s.io"),
        ("list", "namespaces"),
        ("*", "*"),
    ] {
        assert!(
            !can_i(c, &sa, verb, res, None),
            "{sa} must not {verb} {res}"
        );
    }
    eprintln!("cluster-wide RBAC: {:.1}s", started.elapsed().as_secs_f64());
}

/// Why the Secret rule has `create`: a server-side apply that creates the object is also
/// authorized as a create, so `patch` alone cannot write a new token Secret.
#[tokio::test]
async fn server_side_apply_creating_a_secret_needs_create() {
    let c = require_cluster!();
    let ns = c.namespace("helm-ssa").await;
    let rbac = format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: ssa, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: ssa, namespace: {ns}}}
rules:
  - {{apiGroups: [""], resources: [secrets], verbs: [get, patch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: ssa, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: ssa}}
subjects: [{{kind: ServiceAccount, name: ssa, namespace: {ns}}}]
"#
    );
    run_ok(c.kubectl_cmd(&["apply", "-f", "-"]), Some(&rbac));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = c.service_account_kubeconfig(&ns, "ssa", dir.path());
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: applied}\nstringData: {k: v}\n";
    let apply = || {
        let mut cmd = Command::new(&c.tools.kubectl);
        cmd.env("KUBECONFIG", &kubeconfig).args([
            "apply",
            "--server-side",
            "--field-manager=linktoken-operator",
            "-n",
            &ns,
            "-f",
            "-",
        ]);
        run(cmd, Some(secret))
    };
    // A new RoleBinding reaches the authorizer's cache within moments: until then the refusal
    // names patch; once it is in effect, the refusal names create.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (ok, err) = loop {
        let out = apply();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success()
            || err.contains("cannot create resource")
            || Instant::now() > deadline
        {
            break (out.status.success(), err);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(!ok, "patch alone must not create a Secret");
    assert!(err.contains("cannot create resource \"secrets\""), "{err}");

    run_ok(
        c.kubectl_cmd(&[
            "patch",
            "role",
            "ssa",
            "-n",
            &ns,
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/rules/0/verbs/-","value":"create"}]"#,
        ]),
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = apply();
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "apply with create+patch: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Once it exists, patch alone updates it (create is only for the first write).
    run_ok(
        c.kubectl_cmd(&[
            "patch",
            "role",
            "ssa",
            "-n",
            &ns,
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/rules/0/verbs","value":["get","patch"]}]"#,
        ]),
        None,
    );
    let changed = secret.replace("k: v", "k: w");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut cmd = Command::new(&c.tools.kubectl);
        cmd.env("KUBECONFIG", &kubeconfig).args([
            "apply",
            "--server-side",
            "--field-manager=linktoken-operator",
            "-n",
            &ns,
            "-f",
            "-",
        ]);
        let out = run(cmd, Some(&changed));
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "apply to an existing Secret with patch only: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Small conveniences on the cluster for this file.
trait ClusterCmd {
    fn kubectl_cmd(&self, args: &[&str]) -> Command;
    fn helm_cmd(&self, args: &[&str]) -> Command;
}

impl ClusterCmd for testkit::TestCluster {
    fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = self.kubectl();
        c.args(args);
        c
    }
    fn helm_cmd(&self, args: &[&str]) -> Command {
        let mut c = self.helm();
        c.args(args);
        c
    }
}
