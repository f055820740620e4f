//! A real node for the control plane: containerd (CRI) + kubelet + kube-scheduler + kube-proxy,
//! so that Pods run, as users run the operator (its image, the chart's Pod spec, probes,
//! in-cluster config). Started and torn down like the control plane: free loopback ports, a
//! folder inside the control plane's run folder, processes tied to the test process, and a
//! teardown that removes exactly what it created (`guard`).
//!
//! One node per machine: the kubelet, containerd 1.6's shims and the CNI plugins use fixed
//! host paths. `Node::start` refuses to start a second one (the bridge or the blackhole route
//! already exists).
//!
//! Needs root, containerd, runc and the CNI plugins (Debian: containerd, runc,
//! containernetworking-plugins), and kubelet, kube-scheduler, kube-proxy and the pause image
//! from `scripts/build-tools.sh`. `Node::check` says what is missing.

pub mod guard;

use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::controlplane::process::{self, Lifetime, Supervised};
use crate::controlplane::{ControlPlane, Error, Options, free_port, http_ok, tail};
use guard::Guard;

/// The Pod network (one bridge, host-local IPAM). Disjoint from the service CIDR and from
/// the machine's networks.
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The bridge the CNI plugin creates.
const BRIDGE: &str = "lt-cni0";
/// The Node's name: the API server reaches the kubelet by host name (logs, exec), so it must
/// resolve; the kubelet listens on loopback only.
pub const NODE_NAME: &str = "localhost";
/// The sandbox image's name inside the archive `scripts/build-tools.sh` writes.
const PAUSE_IMAGE: &str = "localhost/linktoken-pause:1";
const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The machine's own address: the source address of its default route (`LINKTOKEN_NODE_IP`
/// overrides). Connecting a UDP socket sends nothing; it only asks the routing table.
pub fn machine_ip() -> Result<Ipv4Addr, Error> {
    if let Some(v) = std::env::var_os("LINKTOKEN_NODE_IP") {
        return v
            .to_string_lossy()
            .parse()
            .map_err(|e| Error::Node(format!("LINKTOKEN_NODE_IP: {e}")));
    }
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| Error::io("bind a UDP socket", e))?;
    // TEST-NET-2: never contacted (UDP connect sends no packet).
    sock.connect("198.51.100.1:9")
        .map_err(|e| Error::Node(format!("this machine has no default route: {e}")))?;
    match sock
        .local_addr()
        .map_err(|e| Error::io("local address", e))?
        .ip()
    {
        std::net::IpAddr::V4(ip) if !ip.is_loopback() => Ok(ip),
        other => Err(Error::Node(format!(
            "the default route's address {other} cannot serve a node (set LINKTOKEN_NODE_IP)"
        ))),
    }
}

/// The node's binaries, all present.
struct NodeTools {
    kubelet: PathBuf,
    kube_scheduler: PathBuf,
    kube_proxy: PathBuf,
    pause_image: PathBuf,
    containerd: PathBuf,
    ctr: PathBuf,
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A running node.
pub struct Node {
    dir: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    ctr: PathBuf,
    kube_proxy: PathBuf,
    socket: PathBuf,
    pids_file: PathBuf,
    ip: Ipv4Addr,
    containerd: Option<Supervised>,
    kube_proxy_proc: Option<Supervised>,
    scheduler: Option<Supervised>,
    kubelet: Option<Supervised>,
    guard: Option<Guard>,
    /// How long the start took (empty folder to Node Ready with the root CA published).
    pub start_time: Duration,
}

impl Node {
    /// Whether a node can run here; the reason when not.
    pub fn check(cp: &ControlPlane) -> Result<(), Error> {
        Self::tools(cp).map(|_| ())
    }

    fn tools(cp: &ControlPlane) -> Result<NodeTools, Error> {
        if cp.node_ip().is_none() {
            return Err(Error::Node(
                "the control plane was not started to serve a node (Options::node_ip)".into(),
            ));
        }
        node_tools(cp.tools())
    }
}

/// Whether a node can run on this machine (root, the packages, the built tools); the reason
/// when not. Starts nothing.
pub fn can_run() -> Result<(), Error> {
    node_tools(&crate::controlplane::Tools::locate()?).map(|_| ())
}

fn node_tools(t: &crate::controlplane::Tools) -> Result<NodeTools, Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::Node(
            "needs root (containerd, network namespaces, iptables)".into(),
        ));
    }
    let built = |p: &Option<PathBuf>, what: &str| {
        p.clone().ok_or_else(|| {
            Error::Node(format!(
                "{what} not found: build it with `bash scripts/build-tools.sh`"
            ))
        })
    };
    let installed = |name: &str| {
        in_path(name).ok_or_else(|| {
                Error::Node(format!(
                    "{name} not found (Debian: apt-get install containerd runc containernetworking-plugins)"
                ))
            })
    };
    installed("runc")?;
    if !Path::new(CNI_BIN_DIR).join("bridge").is_file() {
        return Err(Error::Node(format!(
            "no CNI plugins in {CNI_BIN_DIR} (Debian: apt-get install containernetworking-plugins)"
        )));
    }
    if in_path("iptables").is_none() || in_path("ip").is_none() {
        return Err(Error::Node("iptables and ip (iproute2) are needed".into()));
    }
    Ok(NodeTools {
        kubelet: built(&t.kubelet, "kubelet")?,
        kube_scheduler: built(&t.kube_scheduler, "kube-scheduler")?,
        kube_proxy: built(&t.kube_proxy, "kube-proxy")?,
        pause_image: built(&t.pause_image, "the pause image (pause.tar)")?,
        containerd: installed("containerd")?,
        ctr: installed("ctr")?,
    })
}

impl Node {
    /// Starts containerd, kube-proxy, kube-scheduler and the kubelet against `cp` and waits
    /// until the Node is Ready and Pods can mount the root CA. Blocking.
    pub fn start(cp: &ControlPlane, ready_timeout: Duration) -> Result<Node, Error> {
        let started = Instant::now();
        let tools = Self::tools(cp)?;
        let ip = cp
            .node_ip()
            .ok_or_else(|| Error::Node("no node address".into()))?;
        let dir = cp.dir().join("node");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let run_id = cp
            .dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let guard = Guard::install(
            cp.service_cidr(),
            POD_CIDR,
            BRIDGE,
            &run_id,
            &dir.join("guard.json"),
            std::net::SocketAddrV4::new(ip, cp.api_port()),
        )?;
        let mut node = Node {
            socket: dir.join("containerd/containerd.sock"),
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            kubectl: cp.tools().kubectl.clone(),
            ctr: tools.ctr.clone(),
            kube_proxy: tools.kube_proxy.clone(),
            pids_file: cp.dir().join("pids"),
            dir,
            ip,
            containerd: None,
            kube_proxy_proc: None,
            scheduler: None,
            kubelet: None,
            guard: Some(guard),
            start_time: Duration::ZERO,
        };
        node.boot(&tools, ready_timeout)?;
        node.start_time = started.elapsed();
        Ok(node)
    }

    fn boot(&mut self, tools: &NodeTools, timeout: Duration) -> Result<(), Error> {
        let d = self.dir.clone();
        let write = |name: &str, text: String| {
            std::fs::write(d.join(name), text).map_err(|e| Error::io(format!("write {name}"), e))
        };
        std::fs::create_dir_all(d.join("cni")).map_err(|e| Error::io("create cni dir", e))?;
        write("containerd.toml", containerd_config(&d))?;
        write("cni/10-linktoken.conflist", cni_config(&d))?;
        let kubelet_port = free_port()?;
        let kubelet_healthz = free_port()?;
        write(
            "kubelet.yaml",
            kubelet_config(&d, &self.socket, kubelet_port, kubelet_healthz),
        )?;

        let mut cmd = Command::new(&tools.containerd);
        cmd.arg("--config").arg(d.join("containerd.toml"));
        self.containerd = Some(self.spawn("containerd", cmd)?);
        self.wait("containerd", "containerd", timeout, |n| {
            n.ctr(&["version"]).is_ok()
        })?;
        self.import_image(&tools.pause_image)?;

        let metrics = free_port()?;
        let healthz = free_port()?;
        let mut cmd = Command::new(&tools.kube_proxy);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--cluster-cidr={POD_CIDR}"))
            .arg("--proxy-mode=iptables")
            // Leave the machine's conntrack table size, OOM scores and route_localnet alone.
            .arg("--conntrack-max-per-core=0")
            .arg("--oom-score-adj=0")
            .arg("--iptables-localhost-nodeports=false")
            .arg(format!("--metrics-bind-address=127.0.0.1:{metrics}"))
            .arg(format!("--healthz-bind-address=127.0.0.1:{healthz}"));
        self.kube_proxy_proc = Some(self.spawn("kube-proxy", cmd)?);

        let port = free_port()?;
        let mut cmd = Command::new(&tools.kube_scheduler);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!(
                "--authentication-kubeconfig={}",
                self.kubeconfig.display()
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                self.kubeconfig.display()
            ))
            // A restart would otherwise wait for its own Lease to expire.
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!(
                "--cert-dir={}",
                d.join("scheduler-certs").display()
            ));
        self.scheduler = Some(self.spawn("kube-scheduler", cmd)?);

        let mut cmd = Command::new(&tools.kubelet);
        cmd.arg(format!("--config={}", d.join("kubelet.yaml").display()))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={}", self.ip))
            .arg(format!("--root-dir={}", d.join("kubelet").display()))
            .arg(format!("--cert-dir={}", d.join("kubelet-certs").display()))
            .arg("--v=1");
        self.kubelet = Some(self.spawn("kubelet", cmd)?);

        self.wait("the Node Ready", "kubelet", timeout, |n| {
            n.kubectl(&[
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .is_ok_and(|s| s.trim() == "True")
        })?;
        // The registration taint (not-ready) is lifted by the node lifecycle controller.
        self.wait(
            "the Node schedulable",
            "kube-controller-manager",
            timeout,
            |n| {
                n.kubectl(&["get", "node", NODE_NAME, "-o", "jsonpath={.spec.taints}"])
                    .is_ok_and(|s| s.trim().is_empty())
            },
        )?;
        self.wait("kube-proxy healthy", "kube-proxy", timeout, |_| {
            http_ok(&format!("http://127.0.0.1:{healthz}/healthz"))
        })?;
        // Pods with a service-account token need the root CA ConfigMap in their namespace.
        self.wait(
            "kube-root-ca.crt in default",
            "kube-controller-manager",
            timeout,
            |n| {
                n.kubectl(&["get", "configmap", "kube-root-ca.crt", "-n", "default"])
                    .is_ok()
            },
        )?;
        Ok(())
    }

    fn spawn(&self, name: &str, cmd: Command) -> Result<Supervised, Error> {
        let log = self.dir.join(format!("{name}.log"));
        process::spawn(name, cmd, &log, &self.pids_file, Lifetime::TiedToProcess)
    }

    /// Polls `ready` every 200 ms; fails with a log when a process of the node exited (its
    /// own) or the time is up (`log`: the component that makes `what` happen).
    fn wait(
        &mut self,
        what: &str,
        log: &str,
        timeout: Duration,
        ready: impl Fn(&Node) -> bool,
    ) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            if ready(self) {
                return Ok(());
            }
            let dead = [
                &mut self.containerd,
                &mut self.kube_proxy_proc,
                &mut self.scheduler,
                &mut self.kubelet,
            ]
            .into_iter()
            .flatten()
            .find_map(|p| (!p.is_running()).then(|| p.name.clone()));
            if dead.is_some() || start.elapsed() > timeout {
                let (why, log) = match &dead {
                    Some(name) => (
                        format!("{name} exited"),
                        self.dir.join(format!("{name}.log")),
                    ),
                    // The controller manager logs in the control plane's folder.
                    None if log == "kube-controller-manager" => (
                        "timed out".to_string(),
                        self.pids_file.with_file_name("kube-controller-manager.log"),
                    ),
                    None => ("timed out".to_string(), self.dir.join(format!("{log}.log"))),
                };
                return Err(Error::NotReady {
                    component: format!("{what} ({why})"),
                    waited: start.elapsed(),
                    log: log.display().to_string(),
                    tail: tail(&log, 30),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The node's address (the machine's own): listeners that Pods must reach bind it.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The run folder of the node (component logs, Pod logs, configs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Imports a docker-archive into the CRI's image store (`ctr images import`), as a user
    /// loads an image into a cluster without a registry.
    pub fn import_image(&self, archive: &Path) -> Result<(), Error> {
        let path = archive.display().to_string();
        self.ctr(&["images", "import", &path]).map(|_| ())
    }

    /// `ctr` against this node's containerd, in the CRI's namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<String, Error> {
        let sock = self.socket.display().to_string();
        let mut all = vec!["--address", sock.as_str(), "--namespace", "k8s.io"];
        all.extend_from_slice(args);
        output(&self.ctr, &all)
    }

    fn kubectl(&self, args: &[&str]) -> Result<String, Error> {
        let kc = format!("--kubeconfig={}", self.kubeconfig.display());
        let mut all = vec![kc.as_str(), "--request-timeout=10s"];
        all.extend_from_slice(args);
        output(&self.kubectl, &all)
    }

    /// Tears the node down: no new Pods are scheduled, every Pod on the node is deleted (the
    /// kubelet stops its containers and releases its network), then the processes stop and
    /// whatever is left of containers, mounts, rules and host paths is removed.
    pub fn stop(&mut self) {
        if self.guard.is_none() {
            return;
        }
        if let Some(mut p) = self.scheduler.take() {
            p.stop(Duration::from_secs(5));
        }
        if self.kubelet.as_mut().is_some_and(|p| p.is_running()) {
            let _ = self.kubectl(&[
                "delete",
                "pods",
                "--all",
                "--all-namespaces",
                "--grace-period=2",
                "--wait=false",
            ]);
            // A Pod object goes away once the kubelet has stopped its containers, torn down
            // its sandbox (network included) and unmounted its volumes.
            let field = format!("--field-selector=spec.nodeName={NODE_NAME}");
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline
                && self
                    .kubectl(&["get", "pods", "--all-namespaces", &field, "-o", "name"])
                    .is_ok_and(|s| !s.trim().is_empty())
            {
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        if let Some(mut p) = self.kubelet.take() {
            p.stop(Duration::from_secs(10));
        }
        if let Some(mut p) = self.kube_proxy_proc.take() {
            p.stop(Duration::from_secs(5));
        }
        // kube-proxy's own cleanup of the chains and rules it made.
        let _ = Command::new(&self.kube_proxy)
            .arg("--cleanup")
            .arg("--proxy-mode=iptables")
            .output();
        self.remove_leftover_containers();
        if let Some(mut p) = self.containerd.take() {
            p.stop(Duration::from_secs(10));
        }
        guard::unmount_under(&self.dir);
        if let Some(mut g) = self.guard.take() {
            g.remove();
        }
    }

    /// Containers the kubelet did not stop in time (containerd lists only its own, under
    /// this node's root): kill their tasks and delete them.
    fn remove_leftover_containers(&self) {
        let Ok(ids) = self.ctr(&["containers", "list", "-q"]) else {
            return;
        };
        for id in ids.lines().map(str::trim).filter(|s| !s.is_empty()) {
            let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
            let _ = self.ctr(&["tasks", "delete", "--force", id]);
            let _ = self.ctr(&["containers", "delete", id]);
        }
    }
}

/// Undoes what a node left behind when the process that ran it died without a teardown
/// (SIGKILL; the kernel then killed containerd, the kubelet and the rest, but not containerd's
/// shims and the containers they run). Everything is found from the run folder: the containers
/// are the ones containerd's state there names (killed through their cgroups), the shims are
/// the processes serving that containerd's socket, and the machine-wide changes are undone from
/// the record `Guard` kept. Called by the sweep of dead runs.
pub fn sweep_dead(run_dir: &Path) {
    let dir = run_dir.join("node");
    if !dir.is_dir() {
        return;
    }
    let socket = dir.join("containerd/containerd.sock").display().to_string();
    let tasks = dir.join("containerd/state/io.containerd.runtime.v2.task");
    let ids: Vec<String> = std::fs::read_dir(&tasks)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|ns| std::fs::read_dir(ns.path()).into_iter().flatten().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let kill = |pid: i32| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    // The containers' processes: every pid in their cgroups.
    for id in &ids {
        for controller in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let procs = controller
                .path()
                .join("k8s.io")
                .join(id)
                .join("cgroup.procs");
            for pid in std::fs::read_to_string(&procs)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
            {
                kill(pid);
            }
        }
    }
    // The shims serving this containerd's socket.
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if process::cmdline(pid).is_some_and(|c| {
            c.contains("containerd-shim") && c.contains(&format!("-address {socket} "))
        }) {
            kill(pid);
        }
    }
    // The killed processes must be gone before their mounts and cgroups can go.
    std::thread::sleep(Duration::from_millis(500));
    guard::unmount_under(run_dir);
    if let Some(mut g) = Guard::load(&dir.join("guard.json")) {
        g.remove();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A control plane started to serve a node, and the node. The node is declared first so that
/// it is torn down first: it deletes its Pods through the API server.
pub struct NodeCluster {
    pub node: Node,
    pub cp: ControlPlane,
}

impl NodeCluster {
    /// Starts both. When this machine cannot run a node (not root, a package or a built tool
    /// missing): under CI=true panics, elsewhere prints a loud SKIPPED line naming `test` and
    /// returns None. A node that can run but fails to start always panics.
    pub fn start_or_skip(test: &str) -> Option<NodeCluster> {
        let skip = |why: String| -> Option<NodeCluster> {
            assert!(
                !crate::in_ci(),
                "CI=true and {test} cannot run a node here: {why}"
            );
            eprintln!("\n!!!!!!!! SKIPPED: {test} needs a real node: {why}\n");
            None
        };
        let ip = match machine_ip() {
            Ok(ip) => ip,
            Err(e) => return skip(e.to_string()),
        };
        let started = Instant::now();
        let cp = match ControlPlane::start(Options {
            node_ip: Some(ip),
            ..Options::default()
        }) {
            Ok(cp) => cp,
            Err(e @ Error::ToolMissing { .. }) => return skip(e.to_string()),
            Err(e) => panic!("the control plane did not start: {e}"),
        };
        if let Err(e) = Node::check(&cp) {
            return skip(e.to_string());
        }
        let cp_time = started.elapsed();
        let node = Node::start(&cp, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("the node did not start: {e}"));
        eprintln!(
            "{test}: control plane ready in {:.1}s, node in {:.1}s (Ready, schedulable, root CA published), at {}",
            cp_time.as_secs_f64(),
            node.start_time.as_secs_f64(),
            cp.dir().display()
        );
        Some(NodeCluster { node, cp })
    }

    /// Runs `bin` with this cluster's kubeconfig, `stdin` as its input; its stdout, or an
    /// error with both outputs.
    pub fn run(&self, bin: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = Command::new(bin)
            .env("KUBECONFIG", self.cp.kubeconfig_path())
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .map_err(|e| format!("stdin: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{} {}: {}{}",
                bin.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.run(&self.cp.tools().kubectl, args, None)
    }

    /// kubectl reading `stdin` (e.g. `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        self.run(&self.cp.tools().kubectl, args, Some(stdin))
    }

    pub fn helm(&self, args: &[&str]) -> Result<String, String> {
        let helm = self.cp.tools().helm.clone().ok_or("helm was not built")?;
        self.run(&helm, args, None)
    }
}

fn output(bin: &Path, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| Error::io(format!("run {}", bin.display()), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Node(format!(
            "{} {}: {}",
            bin.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// containerd 1.6 (config version 2): everything under the run folder except what 1.6 keeps
/// at fixed paths (the shims' sockets in /run/containerd).
fn containerd_config(d: &Path) -> String {
    let c = d.join("containerd");
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
# Snapshotters this machine has no use for.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{ttrpc}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  # No registry is reachable: the sandbox image is imported before the kubelet starts.
  sandbox_image = "{PAUSE_IMAGE}"
  # The machine's capability bounding set lacks CAP_SYS_RESOURCE: nothing may lower
  # oom_score_adj (the CRI asks -998 for sandboxes), and runc fails without this.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni}"
"#,
        root = c.join("root").display(),
        state = c.join("state").display(),
        sock = c.join("containerd.sock").display(),
        ttrpc = c.join("containerd.sock.ttrpc").display(),
        opt = c.join("opt").display(),
        cni = d.join("cni").display(),
    )
}

/// A bridge with host-local IPAM (its state in the run folder) and no masquerade: Pods reach
/// the machine's own address through the bridge's gateway and nothing beyond (`guard`).
fn cni_config(d: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "linktoken",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": d.join("cni-ipam").display().to_string(),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
    .to_string()
}

/// The kubelet's configuration: cgroup v1 with cgroupfs and no QoS hierarchy (this machine
/// runs no systemd), its API on loopback with anonymous access (the API server has no kubelet
/// client certificate; nothing else can reach loopback), eviction and image GC relaxed (a
/// shared build machine's disk is often above the default thresholds).
fn kubelet_config(d: &Path, socket: &Path, port: u16, healthz: u16) -> String {
    let endpoint = format!("unix://{}", socket.display());
    serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz,
        "authentication": {
            "anonymous": {"enabled": true},
            "webhook": {"enabled": false},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": false,
        "enforceNodeAllocatable": [],
        "failSwapOn": false,
        "failCgroupV1": false,
        "containerRuntimeEndpoint": endpoint,
        "imageServiceEndpoint": endpoint,
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        // `podLogsDir`: the field is named so (`podLogsDirectory` is silently ignored).
        "podLogsDir": d.join("pod-logs").display().to_string(),
        "serializeImagePulls": false,
        "resolvConf": "/etc/resolv.conf",
    })
    .to_string()
}
