//! The harness's node is real and leaves nothing behind:
//! - a Pod of the pause image runs in a namespace enforcing Pod Security `restricted` with an
//!   address of the Pod network, the isolation rules are in place while it runs (from the Pod's
//!   network the API server answers through the `kubernetes` Service, and a connection to an
//!   address outside the machine is dropped by the node's rule), and after
//!   `Node::stop` no process, mount, network namespace, bridge, route, iptables rule or host
//!   path of the node remains;
//! - when the process that ran the node is killed (SIGKILL: no teardown runs, containerd's
//!   shims and the containers survive it), the sweep of dead runs removes the same things.
//!
//! One node per machine: the tests take a lock. Under CI=true a node that cannot run fails
//! them; elsewhere they are skipped, saying so.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use testkit::controlplane::process::{pid_alive, recorded_pids};
use testkit::controlplane::sweep;
use testkit::node::{self, NodeCluster};

static ONE_NODE: Mutex<()> = Mutex::new(());

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

/// What the node may change on the machine, as it was before it started.
struct Machine {
    iptables: Vec<String>,
    ip6tables: Vec<String>,
    host_paths: Vec<(&'static str, bool)>,
    netns: Vec<String>,
}

/// `iptables-save` without comments and counters.
fn rules(bin: &str) -> Vec<String> {
    sh(bin, &[])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.find(" [") {
            Some(i) if l.starts_with(':') => l[..i].to_string(),
            _ => l.to_string(),
        })
        .collect()
}

impl Machine {
    fn now() -> Machine {
        Machine {
            iptables: rules("iptables-save"),
            ip6tables: rules("ip6tables-save"),
            host_paths: [
                "/var/lib/kubelet",
                "/var/lib/cni",
                "/run/containerd",
                "/run/netns",
            ]
            .map(|p| (p, Path::new(p).exists()))
            .to_vec(),
            netns: std::fs::read_dir("/run/netns")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
        }
    }

    /// Nothing of the node in `node_dir` remains, and the machine is as it was.
    fn assert_as_before(&self, node_dir: &Path) {
        let dir = node_dir.display().to_string();
        let procs = sh("ps", &["-eo", "args"]);
        assert!(
            !procs.lines().any(|l| l.contains(&dir)),
            "no process (shims included) names the node's folder:\n{procs}"
        );
        assert!(
            !procs.lines().any(|l| l.trim() == "/pause"),
            "no container process is left:\n{procs}"
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mounts.contains(&dir), "no mount under the node's folder");
        assert!(
            !Path::new("/sys/class/net/lt-cni0").exists(),
            "the bridge is gone"
        );
        let routes = sh("ip", &["route", "show", "table", "all"]);
        assert!(!routes.contains("10.0.0.0/24"), "{routes}");
        assert!(!routes.contains("10.244.0.0/24"), "{routes}");
        assert_eq!(
            rules("iptables-save"),
            self.iptables,
            "iptables as before the node"
        );
        assert_eq!(
            rules("ip6tables-save"),
            self.ip6tables,
            "ip6tables as before the node"
        );
        for (p, existed) in &self.host_paths {
            assert_eq!(Path::new(p).exists(), *existed, "{p} as before the node");
        }
    }
}

fn skip(why: String) {
    assert!(!testkit::in_ci(), "CI=true and the node cannot run: {why}");
    eprintln!("\n!!!!!!!! SKIPPED: this test needs a real node: {why}\n");
}

/// Waits until the Pod `pause` runs; its address.
fn wait_running(kubectl: impl Fn(&[&str]) -> Result<String, String>) -> String {
    let start = Instant::now();
    loop {
        let out = kubectl(&[
            "get",
            "pod",
            "pause",
            "-n",
            "restricted",
            "-o",
            "jsonpath={.status.phase} {.status.podIP}",
        ])
        .unwrap_or_else(|e| e);
        if let Some(ip) = out.strip_prefix("Running ") {
            eprintln!("pod Running in {:.1}s", start.elapsed().as_secs_f64());
            return ip.trim().to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the Pod did not run: {out}\n{}",
            kubectl(&["describe", "pod", "pause", "-n", "restricted"]).unwrap_or_else(|e| e)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_pod_runs_and_the_node_leaves_nothing_behind() {
    let _one = ONE_NODE.lock().unwrap_or_else(|p| p.into_inner());
    let before = Machine::now();
    let Some(mut c) = NodeCluster::start_or_skip("tests/node.rs") else {
        return;
    };
    c.kubectl_stdin(&["apply", "-f", "-"], POD)
        .unwrap_or_else(|e| panic!("{e}"));
    let pod_ip = wait_running(|a| c.kubectl(a));
    assert!(
        pod_ip.starts_with("10.244.0."),
        "an address of the Pod network: {pod_ip}"
    );
    // The isolation rules are in place while the node runs.
    let routes = sh("ip", &["route", "show", "table", "all"]);
    assert!(routes.contains("blackhole 10.0.0.0/24"), "{routes}");
    let rules = sh("iptables-save", &[]);
    assert!(
        rules.lines().any(|l| l
            .starts_with("-A FORWARD -s 10.244.0.0/24 ! -d 10.244.0.0/24 -m comment --comment")
            && l.ends_with("-j DROP")),
        "{rules}"
    );
    let api_port = c.cp.api_port().to_string();
    assert!(
        rules
            .lines()
            .any(|l| l.starts_with("-A INPUT ! -s 10.244.0.0/24 -d ")
                && l.contains(&format!(
                    "--dport {api_port} -m addrtype ! --src-type LOCAL"
                ))
                && l.ends_with("-j DROP")),
        "only this machine and its Pods may reach the API server:\n{rules}"
    );

    // From the Pod's network namespace (the host's tools, the Pod's network): the API server
    // through the `kubernetes` Service works; an address outside the machine (TEST-NET-2) is
    // dropped by the node's FORWARD rule, whose counter says so.
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .expect("/run/netns")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !before.netns.contains(n))
        .collect();
    assert_eq!(netns.len(), 1, "one Pod sandbox: {netns:?}");
    let connect = |addr: &str| {
        Command::new("ip")
            .args(["netns", "exec", &netns[0], "timeout", "3", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{addr}"))
            .status()
            .expect("ip netns exec")
            .success()
    };
    assert!(
        connect("10.0.0.1/443"),
        "the kubernetes Service from the Pod"
    );
    let drops = || -> u64 {
        sh("iptables", &["-w", "-L", "FORWARD", "-v", "-x", "-n"])
            .lines()
            .find(|l| l.contains("linktoken-node") && l.contains("DROP"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .expect("the node's FORWARD rule")
    };
    let dropped = drops();
    assert!(!connect("198.51.100.1/80"), "nothing outside the machine");
    assert!(
        drops() > dropped,
        "dropped by the node's rule, on this machine"
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
    before.assert_as_before(&node_dir);
}

#[test]
fn a_killed_owner_leaves_nothing_after_the_sweep() {
    let _one = ONE_NODE.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = node::can_run() {
        return skip(e.to_string());
    }
    let before = Machine::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let run_dir = dir.path().join("cluster");
    // The controlplane command's runner owns the control plane and the node, as a test
    // process would.
    let bin = env!("CARGO_BIN_EXE_controlplane");
    let out = Command::new(bin)
        .args(["start", "--node", "--dir"])
        .arg(&run_dir)
        .output()
        .expect("controlplane start");
    assert!(
        out.status.success(),
        "controlplane start --node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kubeconfig = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let tools = testkit::controlplane::Tools::locate().expect("tools");
    let kubectl = |args: &[&str], stdin: Option<&str>| -> Result<String, String> {
        use std::io::Write;
        let mut child = Command::new(&tools.kubectl)
            .env("KUBECONFIG", &kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut pipe = child.stdin.take().ok_or("stdin")?;
        pipe.write_all(stdin.unwrap_or("").as_bytes())
            .map_err(|e| e.to_string())?;
        drop(pipe);
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    kubectl(&["apply", "-f", "-"], Some(POD)).unwrap_or_else(|e| panic!("{e}"));
    wait_running(|a| kubectl(a, None));

    // SIGKILL to the owner: the kernel kills containerd, the kubelet and the rest; the shims
    // and the Pod's processes, the mounts, rules and route stay.
    let owner: i32 = std::fs::read_to_string(run_dir.join("owner.pid"))
        .expect("owner.pid")
        .trim()
        .parse()
        .expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(owner),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the owner");
    let start = Instant::now();
    while pid_alive(owner) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        Path::new("/sys/class/net/lt-cni0").exists(),
        "the killed run left its bridge (else this test proves nothing)"
    );

    let t = Instant::now();
    assert!(
        sweep::sweep_if_dead(&run_dir, true).is_some(),
        "the owner is dead: swept"
    );
    eprintln!("sweep in {:.1}s", t.elapsed().as_secs_f64());
    before.assert_as_before(&run_dir.join("node"));
    assert!(!run_dir.exists(), "the run folder is removed");
}
