//! The harness's node is real and leaves nothing behind: a Pod of the pause image runs in a
//! namespace enforcing Pod Security `restricted` with an address of the Pod network, and after
//! `Node::stop` no process, mount, network namespace, bridge, route or iptables rule of the
//! node remains.
//!
//! One node per machine: this binary has one test. Under CI=true a node that cannot run fails
//! it; elsewhere it is skipped, saying so.

use std::process::Command;
use std::time::{Duration, Instant};

use testkit::controlplane::process::{pid_alive, recorded_pids};
use testkit::node::NodeCluster;

fn kubectl(c: &NodeCluster, args: &[&str], stdin: Option<&str>) -> String {
    c.run(&c.cp.tools().kubectl, args, stdin)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const POD: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: restricted
  labels:
    pod-security.kubernetes.io/enforce: restricted
---
apiVersion: v1
kind: Pod
metadata:
  name: pause
  namespace: restricted
spec:
  containers:
  - name: pause
    image: localhost/linktoken-pause:1
    imagePullPolicy: Never
    securityContext:
      runAsNonRoot: true
      runAsUser: 65535
      allowPrivilegeEscalation: false
      capabilities: {drop: ["ALL"]}
      seccompProfile: {type: RuntimeDefault}
"#;

#[test]
fn a_pod_runs_and_the_node_leaves_nothing_behind() {
    let rules_before = sh("iptables-save", &[]);
    let Some(mut c) = NodeCluster::start_or_skip("tests/node.rs") else {
        return;
    };

    kubectl(&c, &["apply", "-f", "-"], Some(POD));
    let start = Instant::now();
    let pod_ip = loop {
        let out = kubectl(
            &c,
            &[
                "get",
                "pod",
                "pause",
                "-n",
                "restricted",
                "-o",
                "jsonpath={.status.phase} {.status.podIP}",
            ],
            None,
        );
        if let Some(ip) = out.strip_prefix("Running ") {
            break ip.trim().to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the Pod did not run: {out}\n{}\nkubelet log:\n{}",
            kubectl(&c, &["describe", "pod", "pause", "-n", "restricted"], None),
            testkit::controlplane::tail_of(&c.node.dir().join("kubelet.log"), 40)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        pod_ip.starts_with("10.244.0."),
        "an address of the Pod network: {pod_ip}"
    );
    eprintln!("pod Running in {:.1}s", start.elapsed().as_secs_f64());
    // The isolation rules are in place while the node runs.
    let routes = sh("ip", &["route", "show", "table", "all"]);
    assert!(routes.contains("blackhole 10.0.0.0/24"), "{routes}");
    let rules = sh("iptables-save", &[]);
    assert!(
        rules.contains("-A FORWARD -s 10.244.0.0/24 ! -d 10.244.0.0/24")
            && rules.contains("-j DROP"),
        "{rules}"
    );

    let pids = recorded_pids(&c.cp.dir().join("pids"));
    let node_dir = c.node.dir().to_path_buf();
    let t = Instant::now();
    c.node.stop();
    eprintln!("node teardown in {:.1}s", t.elapsed().as_secs_f64());

    // Only the control plane's processes are left.
    let cp_pids: Vec<i32> = c.cp.pids().into_iter().map(|(_, p)| p as i32).collect();
    for pid in pids.iter().filter(|p| !cp_pids.contains(p)) {
        assert!(!pid_alive(*pid), "node process {pid} still runs");
    }
    let procs = sh("ps", &["-eo", "args"]);
    let dir = node_dir.display().to_string();
    assert!(
        !procs.lines().any(|l| l.contains(&dir)),
        "no process (shims included) names the node's folder:\n{procs}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&dir), "no mount under the node's folder");
    assert!(
        !std::path::Path::new("/sys/class/net/lt-cni0").exists(),
        "the bridge is gone"
    );
    let routes = sh("ip", &["route", "show", "table", "all"]);
    assert!(!routes.contains("10.0.0.0/24"), "{routes}");
    assert!(!routes.contains("10.244.0.0/24"), "{routes}");
    // Every chain and rule is as it was (counters aside).
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.find(" [") {
                Some(i) if l.starts_with(':') => l[..i].to_string(),
                _ => l.to_string(),
            })
            .collect()
    };
    assert_eq!(
        strip(&sh("iptables-save", &[])),
        strip(&rules_before),
        "iptables as before the node"
    );
}
