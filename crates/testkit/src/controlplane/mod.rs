//! A real, local Kubernetes control plane: etcd + kube-apiserver + kube-controller-manager on
//! free loopback ports in a temporary folder, for tests, scripts and people.
//!
//! - kube-apiserver runs with RBAC on, service-account token signing on (so TokenRequest
//!   works) and a static admin token in `system:masters`.
//! - kube-controller-manager runs the garbage-collector, namespace, serviceaccount,
//!   serviceaccount-token and clusterrole-aggregation controllers: owner-reference GC, namespace
//!   deletion and the aggregation of ClusterRoles into view/edit/admin are real.
//! - No kubelet or scheduler: Pods are accepted but never run, unless `Options::node_ip` asks
//!   for a control plane that serves a node (`crate::node`): the API server then listens on
//!   that address (Pods reach it through the `kubernetes` Service), authorizes with Node,RBAC,
//!   and the controller manager also publishes `kube-root-ca.crt` and runs the Deployment,
//!   ReplicaSet and node lifecycle controllers. Other tests keep the loopback-only control plane.
//!
//! Processes are torn down on `stop`/drop, by the kernel when a test process dies
//! (`Lifetime::TiedToProcess`), and at the latest by the sweep at the next start.

pub mod process;
pub mod sweep;
pub mod tools;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use process::Lifetime;
use process::Supervised;
pub use tools::Tools;

/// What can go wrong starting or driving the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{tool} not found (searched: {searched}); build the pinned tools with `bash scripts/build-tools.sh` \
         or point KUBEBUILDER_ASSETS at a folder holding them"
    )]
    ToolMissing { tool: String, searched: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {0}: {1}")]
    Spawn(String, String),
    #[error("{component} did not become ready within {waited:?}; its log is {log}:\n{tail}")]
    NotReady {
        component: String,
        waited: Duration,
        log: String,
        tail: String,
    },
    #[error("cannot generate the service-account signing key: {0}")]
    Key(String),
    /// The node (`crate::node`) cannot run here or failed a setup step.
    #[error("node: {0}")]
    Node(String),
}

impl Error {
    /// A component exited because its port was taken (the log says so).
    fn is_port_taken(&self) -> bool {
        matches!(self, Error::NotReady { tail, .. } if tail.contains("address already in use"))
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// One of the control plane's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Etcd,
    ApiServer,
    ControllerManager,
}

impl Component {
    fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::ApiServer => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
        }
    }
}

/// How to start a control plane.
#[derive(Clone, Debug)]
pub struct Options {
    pub lifetime: Lifetime,
    /// Folder that holds one sub-folder per run (swept when its owner is dead).
    pub state_root: PathBuf,
    /// An explicit run folder (the CLI's `--dir`); a fresh one under `state_root` otherwise.
    pub dir: Option<PathBuf>,
    /// How long each component may take to become ready.
    pub ready_timeout: Duration,
    /// Serve a node (`crate::node::Node`) whose address is this: the machine's own address,
    /// never loopback (the kubelet refuses it, and Pods reach the API server there).
    pub node_ip: Option<Ipv4Addr>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lifetime: Lifetime::TiedToProcess,
            state_root: default_state_root(),
            dir: None,
            ready_timeout: Duration::from_secs(90),
            node_ip: None,
        }
    }
}

/// `$TMPDIR/linktoken-controlplane`: where run folders live unless told otherwise.
pub fn default_state_root() -> PathBuf {
    std::env::temp_dir().join("linktoken-controlplane")
}

/// The admin user's bearer token. Loopback only, and the control plane lives minutes: a fixed
/// value keeps kubeconfigs reproducible without ever being a real credential.
const ADMIN_TOKEN: &str = "linktoken-controlplane-admin";

/// Service IPs; the `kubernetes` Service is 10.0.0.1.
const SERVICE_CIDR: &str = "10.0.0.0/24";

/// A running control plane.
pub struct ControlPlane {
    dir: PathBuf,
    kubeconfig: PathBuf,
    api_url: String,
    tools: Tools,
    lifetime: Lifetime,
    ports: Ports,
    etcd: Option<Supervised>,
    apiserver: Option<Supervised>,
    controller_manager: Option<Supervised>,
    ready_timeout: Duration,
    node_ip: Option<Ipv4Addr>,
}

#[derive(Clone, Copy, Debug)]
struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    apiserver: u16,
    controller_manager: u16,
}

impl Ports {
    fn pick() -> Result<Ports, Error> {
        Ok(Ports {
            etcd_client: free_port()?,
            etcd_peer: free_port()?,
            apiserver: free_port()?,
            controller_manager: free_port()?,
        })
    }
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits until the API serves
    /// and the controllers work (the `default` ServiceAccount exists). Blocking.
    pub fn start(opts: Options) -> Result<ControlPlane, Error> {
        let tools = Tools::locate()?;
        std::fs::create_dir_all(&opts.state_root)
            .map_err(|e| Error::io(format!("create {}", opts.state_root.display()), e))?;
        sweep::sweep_dead_runs(&opts.state_root);
        let dir = match &opts.dir {
            Some(d) => d.clone(),
            None => opts.state_root.join(format!(
                "run-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            )),
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| Error::io(format!("resolve {}", dir.display()), e))?;
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string())
            .map_err(|e| Error::io("write owner.pid", e))?;
        let _ = std::fs::remove_file(dir.join("pids"));

        write_static_files(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        let mut cp = ControlPlane {
            dir,
            kubeconfig,
            api_url: String::new(),
            tools,
            lifetime: opts.lifetime,
            ports: Ports::pick()?,
            etcd: None,
            apiserver: None,
            controller_manager: None,
            ready_timeout: opts.ready_timeout,
            node_ip: opts.node_ip,
        };
        // A port checked free can still be taken before the component binds it (another
        // server started meanwhile): then start again on new ports, a few times.
        let mut attempt = 1;
        loop {
            cp.use_ports()?;
            match cp.start_components() {
                Ok(()) => return Ok(cp),
                Err(e) if attempt < 3 && e.is_port_taken() => {
                    attempt += 1;
                    cp.stop(true);
                    // etcd bootstrapped its member with the old peer URL.
                    let _ = std::fs::remove_dir_all(cp.dir.join("etcd"));
                    cp.ports = Ports::pick()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Points the API URL and the kubeconfig at the current ports.
    fn use_ports(&mut self) -> Result<(), Error> {
        let api_host = self.node_ip.unwrap_or(Ipv4Addr::LOCALHOST);
        self.api_url = format!("https://{api_host}:{}", self.ports.apiserver);
        std::fs::write(&self.kubeconfig, kubeconfig_yaml(&self.api_url))
            .map_err(|e| Error::io("write kubeconfig", e))
    }

    fn start_components(&mut self) -> Result<(), Error> {
        self.start_component(Component::Etcd)?;
        self.start_component(Component::ApiServer)?;
        self.start_component(Component::ControllerManager)
    }

    /// The admin kubeconfig.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The run folder (logs, data, kubeconfig).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA that signed the API server's serving certificate (generated by the API server
    /// at its first start, in its cert dir).
    pub fn root_ca_path(&self) -> PathBuf {
        self.dir.join("apiserver-certs").join("apiserver.crt")
    }

    /// kube-apiserver's audit log (JSON lines): every list and watch of Secrets.
    pub fn audit_log_path(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The API server's port.
    pub fn api_port(&self) -> u16 {
        self.ports.apiserver
    }

    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// The node address this control plane serves (`Options::node_ip`).
    pub fn node_ip(&self) -> Option<Ipv4Addr> {
        self.node_ip
    }

    /// The service CIDR (the `kubernetes` Service is its first address).
    pub fn service_cidr(&self) -> &'static str {
        SERVICE_CIDR
    }

    /// Pids of the running components, for tests that check teardown.
    pub fn pids(&self) -> Vec<(Component, u32)> {
        [
            (Component::Etcd, &self.etcd),
            (Component::ApiServer, &self.apiserver),
            (Component::ControllerManager, &self.controller_manager),
        ]
        .into_iter()
        .filter_map(|(c, s)| s.as_ref().map(|s| (c, s.pid())))
        .collect()
    }

    /// Stops one component (SIGTERM, then SIGKILL after a grace period).
    pub fn stop_component(&mut self, c: Component) {
        if let Some(mut p) = self.slot(c).take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Starts one component (again) on the same ports and data, and waits until it is ready.
    pub fn start_component(&mut self, c: Component) -> Result<(), Error> {
        self.stop_component(c);
        let log = self.dir.join(format!("{}.log", c.name()));
        let cmd = self.command(c);
        let child = process::spawn(c.name(), cmd, &log, &self.dir.join("pids"), self.lifetime)?;
        *self.slot(c) = Some(child);
        let started = Instant::now();
        let deadline = started + self.ready_timeout;
        loop {
            if self.is_ready(c) {
                return Ok(());
            }
            let exited = self.slot(c).as_mut().is_some_and(|p| !p.is_running());
            if exited || Instant::now() > deadline {
                return Err(Error::NotReady {
                    component: c.name().to_string(),
                    waited: started.elapsed(),
                    log: log.display().to_string(),
                    tail: tail(&log, 30),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops everything; removes the run folder unless it was named explicitly (`keep_dir`).
    pub fn stop(&mut self, keep_dir: bool) {
        self.stop_component(Component::ControllerManager);
        self.stop_component(Component::ApiServer);
        self.stop_component(Component::Etcd);
        if !keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn slot(&mut self, c: Component) -> &mut Option<Supervised> {
        match c {
            Component::Etcd => &mut self.etcd,
            Component::ApiServer => &mut self.apiserver,
            Component::ControllerManager => &mut self.controller_manager,
        }
    }

    fn command(&self, c: Component) -> Command {
        let d = &self.dir;
        let p = self.ports;
        match c {
            Component::Etcd => {
                let mut cmd = Command::new(&self.tools.etcd);
                let client = format!("http://127.0.0.1:{}", p.etcd_client);
                let peer = format!("http://127.0.0.1:{}", p.etcd_peer);
                cmd.arg(format!("--name=linktoken-{}", p.etcd_client))
                    .arg(format!("--data-dir={}", d.join("etcd").display()))
                    .arg(format!("--listen-client-urls={client}"))
                    .arg(format!("--advertise-client-urls={client}"))
                    .arg(format!("--listen-peer-urls={peer}"))
                    .arg(format!("--initial-advertise-peer-urls={peer}"))
                    .arg(format!(
                        "--initial-cluster=linktoken-{}={peer}",
                        p.etcd_client
                    ))
                    // Test data is disposable: skipping fsync makes etcd several times faster.
                    .arg("--unsafe-no-fsync=true")
                    .arg("--log-level=warn");
                cmd
            }
            Component::ApiServer => {
                let mut cmd = Command::new(&self.tools.kube_apiserver);
                // Serving a node, Pods reach the API server through the `kubernetes` Service,
                // whose endpoint is the advertised address (the generated serving certificate
                // then also covers it and the Service's IP); the kubelet is authorized by the
                // Node authorizer.
                let (address, authorization) = match self.node_ip {
                    Some(ip) => (ip.to_string(), "Node,RBAC"),
                    None => (Ipv4Addr::LOCALHOST.to_string(), "RBAC"),
                };
                if self.node_ip.is_none() {
                    // The `kubernetes` Service would point at a loopback address, which
                    // Endpoints validation rejects; nothing here needs that Service.
                    cmd.arg("--endpoint-reconciler-type=none");
                }
                cmd.arg(format!("--etcd-servers=http://127.0.0.1:{}", p.etcd_client))
                    .arg(format!("--secure-port={}", p.apiserver))
                    .arg(format!("--bind-address={address}"))
                    .arg(format!("--advertise-address={address}"))
                    .arg(format!(
                        "--cert-dir={}",
                        d.join("apiserver-certs").display()
                    ))
                    .arg(format!(
                        "--token-auth-file={}",
                        d.join("tokens.csv").display()
                    ))
                    .arg(format!("--authorization-mode={authorization}"))
                    // As strict as production clusters that enable it: setting
                    // blockOwnerDeletion needs update on the owner's finalizers.
                    .arg("--enable-admission-plugins=OwnerReferencesPermissionEnforcement")
                    .arg(format!(
                        "--service-account-key-file={}",
                        d.join("sa.pub").display()
                    ))
                    .arg(format!(
                        "--service-account-signing-key-file={}",
                        d.join("sa.key").display()
                    ))
                    .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
                    .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
                    .arg("--allow-privileged=true")
                    .arg("--profiling=false")
                    // Who listed and watched Secrets, with which selector: tests prove from it
                    // what the operator reads (audit-policy.yaml logs only that).
                    .arg(format!(
                        "--audit-policy-file={}",
                        d.join("audit-policy.yaml").display()
                    ))
                    .arg(format!(
                        "--audit-log-path={}",
                        d.join("audit.log").display()
                    ))
                    .arg("--audit-log-format=json")
                    .arg("--v=0");
                cmd
            }
            Component::ControllerManager => {
                let mut cmd = Command::new(&self.tools.kube_controller_manager);
                let mut controllers = String::from(
                    "garbagecollector,namespace,serviceaccount,serviceaccount-token,clusterrole-aggregation",
                );
                if self.node_ip.is_some() {
                    // Without the `kube-root-ca.crt` ConfigMap no Pod with a token volume
                    // starts; without the Deployment and ReplicaSet controllers a Deployment
                    // makes no Pods; without the node lifecycle controller the kubelet's
                    // registration taint (not-ready) stays and nothing is scheduled. The serving certificate the API server generated is
                    // self-signed and carries its CA: that is the cluster's root CA.
                    controllers.push_str(
                        ",root-ca-certificate-publisher-controller,deployment-controller,replicaset-controller,node-lifecycle-controller",
                    );
                    cmd.arg(format!("--root-ca-file={}", self.root_ca_path().display()));
                }
                cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
                    // A restart would otherwise wait for its own Lease to expire.
                    .arg("--leader-elect=false")
                    .arg(format!("--controllers={controllers}"))
                    .arg(format!(
                        "--service-account-private-key-file={}",
                        d.join("sa.key").display()
                    ))
                    .arg("--use-service-account-credentials=false")
                    .arg("--bind-address=127.0.0.1")
                    .arg(format!("--secure-port={}", p.controller_manager))
                    .arg(format!("--cert-dir={}", d.join("kcm-certs").display()))
                    .arg("--v=0");
                cmd
            }
        }
    }

    fn is_ready(&self, c: Component) -> bool {
        match c {
            // etcd answers /health once it can serve.
            Component::Etcd => http_ok(&format!(
                "http://127.0.0.1:{}/health",
                self.ports.etcd_client
            )),
            Component::ApiServer => kubectl_ok(self, &["get", "--raw", "/readyz"]),
            // The serviceaccount controller creating `default` proves the controllers run.
            Component::ControllerManager => {
                kubectl_ok(self, &["get", "serviceaccount", "default", "-n", "default"])
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop(self.lifetime == Lifetime::Detached);
    }
}

fn kubectl_ok(cp: &ControlPlane, args: &[&str]) -> bool {
    Command::new(&cp.tools.kubectl)
        .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
        .arg("--request-timeout=5s")
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A plain-HTTP GET on loopback without pulling an HTTP client into the harness.
pub(crate) fn http_ok(url: &str) -> bool {
    use std::io::{Read, Write};
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

/// A port nothing listens on, for a server started next. Chosen below the kernel's ephemeral
/// range: a port from bind(0) lies inside it, and between this check and the server's own bind
/// any outgoing connection on the machine may take it as its source port (seen in CI: the API
/// server exited with "address already in use"). Below the range only an explicit bind takes
/// a port. Falls back to bind(0) when the range leaves no room below it.
pub(crate) fn free_port() -> Result<u16, Error> {
    const FLOOR: u16 = 10_000;
    let below = ephemeral_range_start();
    if below > FLOOR + 1_000 {
        for _ in 0..200 {
            let port = rand::random_range(FLOOR..below);
            // Free on loopback and on the wildcard address (the node binds both ways).
            if TcpListener::bind(("127.0.0.1", port)).is_ok()
                && TcpListener::bind(("0.0.0.0", port)).is_ok()
            {
                return Ok(port);
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::io("find a free loopback port", e))
}

/// The first port the kernel hands out as a source port (Linux's ip_local_port_range; 32768
/// when it cannot be read).
fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(32_768)
}

fn write_static_files(dir: &Path) -> Result<(), Error> {
    // Static token file: token,user,uid,"groups".
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{ADMIN_TOKEN},linktoken-admin,linktoken-admin,\"system:masters\"\n"),
    )
    .map_err(|e| Error::io("write tokens.csv", e))?;
    // Only the requests a test asks about: list and watch of Secrets, at Metadata level (the
    // request line, user and user agent; never a Secret's data).
    std::fs::write(
        dir.join("audit-policy.yaml"),
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"RequestReceived\"]\nrules:\n- level: Metadata\n  verbs: [\"list\", \"watch\"]\n  resources:\n  - group: \"\"\n    resources: [\"secrets\"]\n- level: None\n",
    )
    .map_err(|e| Error::io("write audit-policy.yaml", e))?;
    let key_path = dir.join("sa.key");
    if !key_path.exists() {
        // ECDSA P-256 in PKCS#8 PEM: kube-apiserver signs and verifies service-account tokens
        // with it, kube-controller-manager signs legacy token Secrets with it.
        let key = rcgen::KeyPair::generate().map_err(|e| Error::Key(e.to_string()))?;
        std::fs::write(&key_path, key.serialize_pem()).map_err(|e| Error::io("write sa.key", e))?;
        // The verifying side reads public keys only (PKCS#8 private keys are not among the
        // formats --service-account-key-file accepts).
        std::fs::write(dir.join("sa.pub"), key.public_key_pem())
            .map_err(|e| Error::io("write sa.pub", e))?;
    }
    Ok(())
}

fn kubeconfig_yaml(api_url: &str) -> String {
    // The serving certificate is self-signed and regenerated per run; the API listens on
    // loopback only, so skipping verification costs nothing here.
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: linktoken-local
  cluster:
    server: {api_url}
    insecure-skip-tls-verify: true
users:
- name: linktoken-admin
  user:
    token: {ADMIN_TOKEN}
contexts:
- name: linktoken-local
  context:
    cluster: linktoken-local
    user: linktoken-admin
    namespace: default
current-context: linktoken-local
"
    )
}

/// The last `lines` lines of a log file (for failure messages).
pub fn tail_of(path: &Path, lines: usize) -> String {
    tail(path, lines)
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ports handed to the control plane and the node never come from the range the kernel
    /// gives outgoing connections, so no client socket can take one before the server binds.
    #[test]
    fn free_ports_lie_below_the_ephemeral_range() {
        let start = ephemeral_range_start();
        if start <= 11_000 {
            eprintln!("ephemeral range starts at {start}: no room below it, bind(0) is used");
            return;
        }
        for _ in 0..50 {
            let port = free_port().expect("a free port");
            assert!(
                (10_000..start).contains(&port),
                "{port} vs range start {start}"
            );
        }
    }

    #[test]
    fn a_taken_port_is_recognised_in_the_components_log() {
        let not_ready = |tail: &str| Error::NotReady {
            component: "kube-apiserver".into(),
            waited: Duration::from_millis(300),
            log: "kube-apiserver.log".into(),
            tail: tail.into(),
        };
        assert!(not_ready("failed to listen on 127.0.0.1:39591: listen tcp 127.0.0.1:39591: bind: address already in use").is_port_taken());
        assert!(!not_ready("etcdserver: request timed out").is_port_taken());
    }
}
