//! The operator as users run it: its image (scripts/build-image.sh, loaded with `ctr images
//! import`), installed with `helm install` into a namespace enforcing Pod Security
//! `restricted`, running as the chart's Pods on a real node (testkit::node: containerd,
//! kubelet, kube-scheduler, kube-proxy) against its own control plane.
//!
//! One node per machine, so this binary has one test function that walks the whole life of a
//! release: install, probes, a LinkToken issued from inside the Pod, leader failover, a rollout
//! restart, a CRD upgrade with `helm upgrade`, and `helm uninstall`. The operator's logs are
//! read with `kubectl logs`.
//!
//! Needs root, containerd, runc and the CNI plugins, the node's binaries and pause image
//! (`scripts/build-tools.sh`) and the image archive. Under CI=true a missing piece fails the
//! test; elsewhere it is skipped, saying so.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use atlas_sim::{SimConfig, SimServer};
use testkit::node::NodeCluster;

const RELEASE: &str = "lt";
const DEPLOYMENT: &str = "lt-linktoken-operator";
const LEASE: &str = "linktoken-operator-leader";
const OP_NS: &str = "linktoken-system";
const APP_NS: &str = "apps";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn archive() -> PathBuf {
    std::env::var_os("IMAGE_ARCHIVE").map_or_else(
        || repo().join("target/image/linktoken-operator-image.tar"),
        PathBuf::from,
    )
}

/// The node cluster and the reads this test makes of it.
struct Cluster(NodeCluster);

impl Cluster {
    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.0.kubectl(args)
    }

    fn kubectl_in(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        self.0.kubectl_stdin(args, stdin)
    }

    fn helm(&self, args: &[&str]) -> Result<String, String> {
        self.0.helm(args)
    }

    fn k(&self, args: &[&str]) -> String {
        self.kubectl(args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn jsonpath(&self, kind: &str, name: &str, ns: &str, path: &str) -> String {
        self.kubectl(&[
            "get",
            kind,
            name,
            "-n",
            ns,
            "-o",
            &format!("jsonpath={path}"),
        ])
        .unwrap_or_default()
    }

    fn ready_reason(&self, lt: &str) -> String {
        self.jsonpath(
            "linktoken",
            lt,
            APP_NS,
            "{.status.conditions[?(@.type==\"Ready\")].reason}",
        )
    }

    fn token(&self, secret: &str) -> String {
        self.jsonpath("secret", secret, APP_NS, "{.data.linkToken}")
    }

    /// Asks for a new token (the rotate annotation) and waits until the Secret holds one
    /// other than `old`.
    fn rotate(&self, value: &str, old: &str) -> String {
        self.k(&[
            "annotate",
            "linktoken",
            "migration",
            "-n",
            APP_NS,
            &format!("atlasmigration.io/rotate={value}"),
            "--overwrite",
        ]);
        wait_for(
            Duration::from_secs(60),
            &format!("a new token ({value})"),
            || Some(self.token("migration")).filter(|t| !t.is_empty() && t != old),
        )
    }

    /// The Pod holding the Lease (the identity is `<pod name>_<random>`).
    fn leader(&self) -> String {
        let id = self.jsonpath("lease", LEASE, OP_NS, "{.spec.holderIdentity}");
        id.rsplit_once('_')
            .map_or(id.clone(), |(pod, _)| pod.to_string())
    }

    /// The release's Pods that are not terminating.
    fn pods(&self) -> Vec<String> {
        self.k(&[
            "get",
            "pods",
            "-n",
            OP_NS,
            "-l",
            "app.kubernetes.io/name=linktoken-operator",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ])
        .lines()
        .filter(|l| l.split_whitespace().count() == 1)
        .map(|l| l.trim().to_string())
        .collect()
    }

    /// The operator's logs from every Pod of the release, as a user reads them.
    fn operator_logs(&self) -> String {
        self.kubectl(&[
            "logs",
            "-n",
            OP_NS,
            "-l",
            "app.kubernetes.io/name=linktoken-operator",
            "--prefix",
            "--tail=-1",
        ])
        .unwrap_or_else(|e| e)
    }
}

/// The org of the test's LinkToken has exactly one live link in atlas-sim: no token leaked
/// (a second one issued without revoking the first).
fn assert_one_live_link(sim: &atlas_sim::SimHandle, when: &str) {
    let live = sim
        .state
        .snapshot()
        .orgs
        .get("5f1e9b2a3c4d5e6f7a8b9c0d")
        .map_or(0, |o| o.live_links);
    assert_eq!(live, 1, "one live link for the org {when}");
}

/// Polls `f` until it returns Some, or panics naming `what`.
fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Prints the operator's logs and the node's state when the test fails, then tears down.
struct OnFailure<'a>(&'a Cluster);

impl Drop for OnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let c = self.0;
            eprintln!("---- kubectl logs (operator) ----\n{}", c.operator_logs());
            eprintln!(
                "---- pods ----\n{}",
                c.kubectl(&["get", "pods", "-A", "-o", "wide"])
                    .unwrap_or_else(|e| e)
            );
            eprintln!(
                "---- events in {OP_NS} ----\n{}",
                c.kubectl(&["get", "events", "-n", OP_NS])
                    .unwrap_or_else(|e| e)
            );
            eprintln!("node logs: {}", c.0.node.dir().display());
        }
    }
}

const CREDS: &str = r#"apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: apps
stringData:
  publicApiKey: demopublic
  privateApiKey: demo-private-key-0000
"#;

const LINKTOKEN: &str = r#"apiVersion: atlasmigration.io/v1alpha1
kind: LinkToken
metadata:
  name: migration
  namespace: apps
spec:
  orgId: "5f1e9b2a3c4d5e6f7a8b9c0d"
  accessListIps: ["192.0.2.10"]
  credentialsSecretRef:
    name: creds
"#;

/// A copy of the chart whose CRD has gained an optional field `spec.comment`, as a new
/// release of the chart would: the upgrade path users take.
fn chart_with_new_field(dir: &Path) -> PathBuf {
    let dst = dir.join("linktoken-operator");
    let src = repo().join("charts/linktoken-operator");
    let status = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&dst)
        .status()
        .expect("cp");
    assert!(status.success());
    let crd_path = dst.join("crds/linktoken.yaml");
    let crd = std::fs::read_to_string(&crd_path).expect("crd");
    // The first property of spec, at its indentation: insert a sibling before it.
    let marker = "          spec:\n            description:";
    let at = crd.find(marker).expect("the CRD's spec schema");
    let props = crd[at..]
        .find("            properties:\n")
        .expect("spec properties")
        + at;
    let line_end = props + "            properties:\n".len();
    let field = "              comment:\n                description: A note for people (added in the upgraded chart)\n                type: string\n";
    let new_crd = format!("{}{}{}", &crd[..line_end], field, &crd[line_end..]);
    std::fs::write(&crd_path, new_crd).expect("write crd");
    let chart_yaml = dst.join("Chart.yaml");
    let c = std::fs::read_to_string(&chart_yaml).expect("Chart.yaml");
    std::fs::write(&chart_yaml, c.replace("version: 0.1.0", "version: 0.1.1")).expect("write");
    dst
}

#[test]
fn the_chart_runs_the_operator_image_on_a_real_node() {
    let test_start = Instant::now();
    if !archive().is_file() {
        assert!(
            !testkit::in_ci(),
            "CI=true and no image archive at {}: scripts/test.sh builds it first",
            archive().display()
        );
        eprintln!(
            "\n!!!!!!!! SKIPPED: tests/e2e_node.rs needs the image archive {} (bash scripts/build-image.sh)\n",
            archive().display()
        );
        return;
    }
    let Some(c) = NodeCluster::start_or_skip("tests/e2e_node.rs") else {
        return;
    };
    let c = Cluster(c);
    let _on_failure = OnFailure(&c);
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    let t = Instant::now();
    c.0.node
        .import_image(&archive())
        .expect("ctr images import");
    eprintln!(
        "e2e_node: image imported in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // atlas-sim on the machine's own address: the one place outside the Pod network a Pod
    // may reach.
    let ip = c.0.node.ip();
    let sim = rt
        .block_on(SimServer::start(
            SimConfig::demo(),
            format!("{ip}:0").parse().expect("addr"),
            "127.0.0.1:0".parse().expect("addr"),
        ))
        .expect("atlas-sim");

    // The release namespace enforces the restricted Pod Security Standard.
    c.kubectl_in(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {OP_NS}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n    pod-security.kubernetes.io/enforce-version: latest\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {APP_NS}\n"
        ),
    )
    .expect("namespaces");

    // ---- helm install, Pods Ready through their probes ----
    let chart = repo().join("charts/linktoken-operator");
    let chart = chart.to_str().expect("utf-8 path");
    let atlas_url = format!("atlasUrl={}", sim.atlas_url);
    let values: Vec<&str> = vec![
        "--set",
        "image.repository=linktoken-operator",
        "--set",
        "image.tag=dev",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        &atlas_url,
        // atlas-sim speaks plain HTTP on the machine's address.
        "--set",
        "allowInsecureAtlasUrl=true",
        "--set",
        "replicas=2",
        "--set",
        "leaderElection.leaseDuration=6s",
        "--set",
        "leaderElection.renewDeadline=4s",
        "--set",
        "leaderElection.retryPeriod=1s",
    ];
    let t = Instant::now();
    let mut install = vec![
        "install",
        RELEASE,
        chart,
        "-n",
        OP_NS,
        "--wait",
        "--timeout=3m",
    ];
    install.extend(&values);
    let out = c.helm(&install).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "e2e_node: helm install --wait took {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert!(out.contains("STATUS: deployed"), "{out}");
    // helm's --wait accepts a Deployment with maxUnavailable Pods not Ready yet: wait for both.
    wait_for(
        Duration::from_secs(60),
        "both replicas Ready through their readiness probes",
        || {
            (c.jsonpath("deployment", DEPLOYMENT, OP_NS, "{.status.readyReplicas}") == "2")
                .then_some(())
        },
    );
    let restarts = c.k(&[
        "get",
        "pods",
        "-n",
        OP_NS,
        "-o",
        "jsonpath={.items[*].status.containerStatuses[*].restartCount}",
    ]);
    assert!(
        restarts.split_whitespace().all(|r| r == "0"),
        "no liveness restarts: {restarts}"
    );
    // The image's binary, run in the Pod the way the chart runs it.
    let version = c.k(&[
        "exec",
        "-n",
        OP_NS,
        &format!("deploy/{DEPLOYMENT}"),
        "--",
        "/usr/local/bin/linktoken-operator",
        "--version",
    ]);
    assert!(version.contains("linktoken-operator"), "{version}");

    // ---- a LinkToken turns Ready, issued by the operator in the Pod ----
    c.kubectl_in(&["apply", "-f", "-"], CREDS).expect("creds");
    c.kubectl_in(&["apply", "--server-side", "-f", "-"], LINKTOKEN)
        .expect("LinkToken");
    wait_for(
        Duration::from_secs(60),
        "LinkToken Ready (TokenIssued)",
        || (c.ready_reason("migration") == "TokenIssued").then_some(()),
    );
    let token = wait_for(Duration::from_secs(10), "token Secret", || {
        Some(c.token("migration")).filter(|t| !t.is_empty())
    });
    let plain = |b64: &str| {
        let out = Command::new("base64")
            .arg("-d")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut ch| {
                use std::io::Write;
                ch.stdin.take().expect("stdin").write_all(b64.as_bytes())?;
                ch.wait_with_output()
            })
            .expect("base64");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let live = plain(&token);
    assert!(
        sim.state.is_token_live(&live),
        "the token in the Secret is live in atlas-sim: the Pod reached it"
    );
    let leader = wait_for(Duration::from_secs(30), "a Lease holder", || {
        Some(c.leader()).filter(|l| !l.is_empty())
    });
    let logs = c.operator_logs();
    assert!(
        logs.contains("apps/migration"),
        "kubectl logs shows the reconcile of the LinkToken:\n{logs}"
    );
    assert!(!logs.contains(&live), "the token never reaches the logs");
    assert!(
        !logs.contains("demo-private-key-0000"),
        "credentials never reach the logs"
    );

    // ---- the leader's Pod is deleted: the standby takes over and keeps reconciling ----
    let pods = c.pods();
    assert!(pods.contains(&leader), "{leader} in {pods:?}");
    let standby = pods
        .iter()
        .find(|p| **p != leader)
        .cloned()
        .expect("a standby");
    // Cordoned, the node takes no replacement Pod: the Lease can only go to the standby
    // (else the replacement may win the race for it).
    c.k(&["cordon", testkit::node::NODE_NAME]);
    c.k(&["delete", "pod", &leader, "-n", OP_NS, "--wait=false"]);
    let t = Instant::now();
    wait_for(
        Duration::from_secs(60),
        "the standby holds the Lease",
        || (c.leader() == standby).then_some(()),
    );
    eprintln!(
        "e2e_node: standby took the Lease {:.1}s after the leader's Pod was deleted",
        t.elapsed().as_secs_f64()
    );
    let token2 = c.rotate("after-failover", &token);
    c.k(&["uncordon", testkit::node::NODE_NAME]);
    assert_one_live_link(&sim, "after the failover");
    assert!(sim.state.is_token_live(&plain(&token2)));
    assert!(
        !sim.state.is_token_live(&live),
        "the new leader revoked the rotated token"
    );

    // ---- kubectl rollout restart loses nothing ----
    c.k(&[
        "rollout",
        "restart",
        &format!("deployment/{DEPLOYMENT}"),
        "-n",
        OP_NS,
    ]);
    c.k(&[
        "rollout",
        "status",
        &format!("deployment/{DEPLOYMENT}"),
        "-n",
        OP_NS,
        "--timeout=180s",
    ]);
    assert_eq!(
        c.token("migration"),
        token2,
        "the token survived the restart"
    );
    assert_eq!(c.ready_reason("migration"), "TokenIssued");
    assert!(sim.state.is_token_live(&plain(&token2)));
    assert_one_live_link(&sim, "after the rollout restart");
    let token3 = c.rotate("after-restart", &token2);

    // ---- helm upgrade to a chart whose CRD gained an optional field ----
    let tmp = tempfile::tempdir().expect("tempdir");
    let new_chart = chart_with_new_field(tmp.path());
    let new_chart = new_chart.to_str().expect("utf-8 path");
    // docs/install.md's upgrade: the CRD first (helm upgrade never changes crds/), then the
    // release. Helm created the CRD, so its field manager owns .spec.versions: taking them
    // over needs --force-conflicts.
    let crds = c
        .helm(&["show", "crds", new_chart])
        .expect("helm show crds");
    let without_force = c.kubectl_in(&["apply", "--server-side", "-f", "-"], &crds);
    assert!(
        without_force
            .as_ref()
            .is_err_and(|e| e.contains("conflict")),
        "without --force-conflicts the apply conflicts with helm's field manager: {without_force:?}"
    );
    c.kubectl_in(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        &crds,
    )
    .unwrap_or_else(|e| panic!("the documented CRD upgrade: {e}"));
    let mut upgrade = vec![
        "upgrade",
        RELEASE,
        new_chart,
        "-n",
        OP_NS,
        "--wait",
        "--timeout=3m",
    ];
    upgrade.extend(&values);
    c.helm(&upgrade).unwrap_or_else(|e| panic!("{e}"));
    let chart_label = c.jsonpath(
        "deployment",
        DEPLOYMENT,
        OP_NS,
        "{.metadata.labels.helm\\.sh/chart}",
    );
    assert_eq!(chart_label, "linktoken-operator-0.1.1");
    wait_for(Duration::from_secs(30), "the new field is served", || {
        c.kubectl(&[
            "patch",
            "linktoken",
            "migration",
            "-n",
            APP_NS,
            "--type=merge",
            "-p",
            r#"{"spec":{"comment":"kept by the upgraded CRD"}}"#,
        ])
        .ok()?;
        (c.jsonpath("linktoken", "migration", APP_NS, "{.spec.comment}")
            == "kept by the upgraded CRD")
            .then_some(())
    });
    assert_eq!(c.token("migration"), token3, "the LinkToken kept its token");
    wait_for(Duration::from_secs(60), "Ready after the upgrade", || {
        (c.ready_reason("migration") == "TokenIssued").then_some(())
    });

    // ---- helm uninstall leaves what docs/install.md says ----
    let logs = c.operator_logs();
    assert!(
        !logs.contains(&plain(&token3)),
        "the token never reaches the logs"
    );
    c.helm(&["uninstall", RELEASE, "-n", OP_NS, "--wait", "--timeout=2m"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        c.kubectl(&["get", "deployment", DEPLOYMENT, "-n", OP_NS])
            .is_err(),
        "the Deployment is gone"
    );
    c.kubectl(&["get", "crd", "linktokens.atlasmigration.io"])
        .expect("helm uninstall never deletes the CRD");
    c.kubectl(&["get", "linktoken", "migration", "-n", APP_NS])
        .expect("LinkTokens stay");
    assert_eq!(c.token("migration"), token3, "the token Secret stays");
    assert!(
        sim.state.is_token_live(&plain(&token3)),
        "uninstalling the operator revokes nothing"
    );
    assert_one_live_link(&sim, "after helm upgrade and uninstall");

    drop(_on_failure);
    eprintln!(
        "e2e_node: test body {:.1}s (wall time with start)",
        test_start.elapsed().as_secs_f64()
    );
}
