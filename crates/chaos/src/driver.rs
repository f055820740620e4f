//! The chaos driver: runs two operator replicas (leader election) against the real control
//! plane and atlas-sim, applies the rounds of a seeded schedule, heals and checks at
//! quiescence after each round, and samples the invariants continuously meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use atlas_sim::{
    ApiKeyConfig, FaultKind, FaultSpec, FaultTarget, OrgConfig, Port, SimConfig, SimHandle,
    SimServer, SourceOrgConfig,
};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions,
};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use linktoken_operator::api::{LinkToken, ROTATE_ANNOTATION};
use nix::sys::signal::Signal;
use testkit::controlplane::{Component, ControlPlane};
use testkit::operator::{Operator, OperatorCommand, is_ready};

use crate::check::{self, History, Violation};
use crate::schedule::{
    self, Action, Fault, KEYS, LEASE_MS, NAMESPACES, ORGS, REPLICAS, SOURCE_ORGS, Shape,
    SourceFault,
};

/// Who may restart the control plane's components.
#[derive(Clone)]
pub enum Plane {
    /// A control plane this driver started.
    Own(Arc<Mutex<ControlPlane>>),
    /// The one testkit started for this process (`testkit::cluster()`), if it did.
    TestKit,
}

impl Plane {
    /// Stops `c`, waits `down`, starts it again and waits until it is ready (blocking).
    fn restart(&self, c: Component, down: Duration) -> Result<(), String> {
        let go = |cp: &mut ControlPlane| {
            cp.stop_component(c);
            std::thread::sleep(down);
            cp.start_component(c).map_err(|e| e.to_string())
        };
        match self {
            Plane::Own(cp) => go(&mut cp.lock().unwrap_or_else(|p| p.into_inner())),
            Plane::TestKit => match testkit::owned_control_plane() {
                Some(mut g) => match g.as_mut() {
                    Some(cp) => go(cp),
                    None => Err("no control plane of this process".into()),
                },
                None => Err("a shared control plane: not restarted".into()),
            },
        }
    }
}

pub struct Config {
    pub seed: u64,
    pub duration: Duration,
    pub shape: Shape,
    pub kubeconfig: PathBuf,
    pub operator_binary: PathBuf,
    pub plane: Plane,
    /// How long everything may take to settle once every fault is healed.
    pub settle_timeout: Duration,
    /// How long the probe LinkToken may take to turn Ready after a rotation at quiescence.
    pub probe_timeout: Duration,
    /// Print every step as it runs.
    pub verbose: bool,
    /// Plant a violation after the first quiescence (the driver itself puts the operator's
    /// managed-by label on a credentials Secret), to prove the checker reports one.
    pub plant_violation: bool,
}

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub rounds: u32,
    pub steps: usize,
    pub elapsed: Duration,
    /// The first violation, with everything printed about it.
    pub violation: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("atlas-sim: {0}")]
    Sim(String),
    #[error("operator: {0}")]
    Operator(String),
}

const LT_API_VERSION: &str = "atlasmigration.io/v1alpha1";
const CREDS: &str = "creds";
/// The source credentials Secret of every LinkToken namespace (never the Atlas one: CEL).
const SOURCE_CREDS: &str = "source-creds";
const PROBE: &str = "probe";
/// Namespace generations per slot: the operators watch exactly the run's namespaces (runs may
/// share a control plane), so the names are fixed up front and deletions stop at this cap.
const MAX_GENERATIONS: u32 = 6;
/// Every object the driver makes carries this label, so a run's leftovers can be found.
const RUN_LABEL: &str = "chaos.linktoken/run";

fn org_id(i: usize) -> String {
    format!("{:024x}", 0xc4a0_5000_0000_0000_0000_0000_u128 + i as u128)
}

fn source_org_id(i: usize) -> String {
    format!("{:024x}", 0x5ac0_5000_0000_0000_0000_0000_u128 + i as u128)
}

fn probe_org() -> String {
    org_id(ORGS)
}

/// The access lists the schedule picks from.
pub fn access_list(i: usize) -> Vec<&'static str> {
    match i {
        0 => vec![],
        1 => vec!["192.0.2.1"],
        _ => vec!["198.51.100.0/24", "192.0.2.7"],
    }
}

fn lt_name(lt: usize) -> String {
    format!("lt{lt}")
}

fn secret_name(lt: usize, variant: usize) -> String {
    if variant == 0 {
        lt_name(lt)
    } else {
        format!("lt{lt}-alt")
    }
}

/// One API key per `KEYS` slot, each Organization Owner of every org; and the source's key,
/// Organization Owner of every source org.
struct Keys {
    public: Vec<String>,
    private: Vec<String>,
    source_public: String,
    source_private: String,
}

impl Keys {
    fn new() -> Keys {
        let salt = format!("{:016x}", rand::random::<u64>());
        Keys {
            public: (0..KEYS).map(|k| format!("chaoskey{k}")).collect(),
            private: (0..KEYS)
                .map(|k| format!("chaos-private-{k}-{salt}"))
                .collect(),
            source_public: "chaossource".into(),
            source_private: format!("chaos-source-private-{salt}"),
        }
    }

    /// Every private key: none may show in a log, an event or a status.
    fn secrets(&self) -> Vec<String> {
        let mut all = self.private.clone();
        all.push(self.source_private.clone());
        all
    }

    fn source_data(&self) -> BTreeMap<String, ByteString> {
        [
            (
                "publicApiKey".to_string(),
                ByteString(self.source_public.clone().into_bytes()),
            ),
            (
                "privateApiKey".to_string(),
                ByteString(self.source_private.clone().into_bytes()),
            ),
        ]
        .into()
    }

    fn data(&self, k: usize) -> BTreeMap<String, ByteString> {
        let k = k % KEYS;
        [
            (
                "publicApiKey".to_string(),
                ByteString(self.public[k].clone().into_bytes()),
            ),
            (
                "privateApiKey".to_string(),
                ByteString(self.private[k].clone().into_bytes()),
            ),
        ]
        .into()
    }
}

fn sim_config(keys: &Keys) -> SimConfig {
    let orgs: Vec<String> = (0..=ORGS).map(org_id).collect();
    SimConfig {
        orgs: orgs
            .iter()
            .enumerate()
            .map(|(i, o)| OrgConfig::new(o, &format!("chaos-org-{i}")))
            .collect(),
        api_keys: (0..KEYS)
            .map(|k| {
                ApiKeyConfig::new(
                    &keys.public[k],
                    &keys.private[k],
                    orgs.iter()
                        .map(|o| (o.clone(), vec![atlas_sim::ORG_OWNER.to_string()]))
                        .collect(),
                )
            })
            .collect(),
        source_orgs: (0..SOURCE_ORGS)
            .map(|i| SourceOrgConfig::new(&source_org_id(i), &format!("chaos-source-org-{i}")))
            .collect(),
        source_api_keys: vec![ApiKeyConfig::new(
            &keys.source_public,
            &keys.source_private,
            (0..SOURCE_ORGS)
                .map(|i| (source_org_id(i), vec![atlas_sim::ORG_OWNER.to_string()]))
                .collect(),
        )],
        ..SimConfig::default()
    }
}

/// A driver-made Secret the operator must leave alone: every data map ever written to it.
#[derive(Default)]
struct Foreign {
    key: String,
    data: Vec<BTreeMap<String, ByteString>>,
    /// The driver is deleting it (so its disappearance is no violation).
    deleting: bool,
}

/// What the executor and the sampler share.
#[derive(Default)]
struct Shared {
    violations: Vec<Violation>,
    /// Second live links in an org not judged yet (see [`check::Suspect`]).
    suspects: Vec<check::Suspect>,
    histories: HashMap<String, History>,
    /// By uid.
    foreign: HashMap<String, Foreign>,
    /// Namespaces the driver deleted.
    deleted_namespaces: BTreeSet<String>,
    /// `ns/name` of LinkTokens the operator logged a RevocationSkipped for.
    skipped: BTreeSet<String>,
    actions: u64,
    /// By uid: the Linked=True promises the watch shows now.
    claims: HashMap<String, check::LinkClaim>,
    /// Uids of LinkTokens with a spec.source (for the source call budget).
    with_source: BTreeSet<String>,
    /// Broken link promises seen, not judged yet (see [`check::standing`]).
    link_pending: Vec<(check::Problem, Instant)>,
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(s: &SharedRef) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// One operator replica and what the driver knows of its process.
struct Replica {
    index: usize,
    op: Option<Operator>,
    incarnation: u32,
    frozen_until: Option<Instant>,
    respawn_at: Option<Instant>,
    /// How far its current log was scanned.
    offset: u64,
    partial: String,
    tail: VecDeque<String>,
}

struct Driver {
    cfg: Config,
    client: Client,
    sim: SimHandle,
    keys: Keys,
    tag: String,
    gens: [u32; NAMESPACES],
    replicas: Vec<Replica>,
    shared: SharedRef,
    started: Instant,
    log: Vec<String>,
    round: u32,
    /// Quiescences so far: each rotates the probe to a new value.
    quiescences: u32,
    /// atlas-sim's source port: the one source the operators are allowed to call.
    source_url: String,
    trap: Trap,
}

/// A listener at a source URL the operators are not allowed to call: it only counts the
/// connections it gets (there must be none).
#[derive(Clone)]
struct Trap {
    url: String,
    hits: Arc<AtomicU64>,
}

impl Trap {
    async fn start() -> Result<(Trap, tokio::task::JoinHandle<()>), DriverError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| DriverError::Sim(format!("recording listener: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| DriverError::Sim(format!("recording listener: {e}")))?
            .port();
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            // Accepted and dropped at once: nothing is read, nothing answered.
            while let Ok((conn, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
        Ok((
            Trap {
                url: format!("http://127.0.0.1:{port}"),
                hits,
            },
            task,
        ))
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Runs the schedule of `cfg.seed` for `cfg.duration` (the last round is finished) and checks.
pub async fn run(cfg: Config) -> Result<Outcome, DriverError> {
    let kc = kube::config::Kubeconfig::read_from(&cfg.kubeconfig)
        .map_err(|e| DriverError::Kubeconfig(e.to_string()))?;
    let kcfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| DriverError::Kubeconfig(e.to_string()))?;
    let client = Client::try_from(kcfg)?;
    testkit::install_crd(&client, &linktoken_operator::api::crd::crd(), "chaos")
        .await
        .map_err(DriverError::Kubeconfig)?;
    let keys = Keys::new();
    let any = "127.0.0.1:0"
        .parse()
        .map_err(|_| DriverError::Sim("address".into()))?;
    let sim = SimServer::start(sim_config(&keys), any, any)
        .await
        .map_err(|e| DriverError::Sim(e.to_string()))?;
    let source_url = sim
        .source_url()
        .ok_or_else(|| DriverError::Sim("no source port".into()))?;
    let (trap, trap_task) = Trap::start().await?;
    let tag = format!("chaos-{:05x}", rand::random::<u32>() & 0xfffff);
    let mut d = Driver {
        cfg,
        client,
        sim,
        keys,
        tag,
        gens: [0; NAMESPACES],
        replicas: (0..REPLICAS)
            .map(|index| Replica {
                index,
                op: None,
                incarnation: 0,
                frozen_until: None,
                respawn_at: None,
                offset: 0,
                partial: String::new(),
                tail: VecDeque::new(),
            })
            .collect(),
        shared: Arc::default(),
        started: Instant::now(),
        log: Vec::new(),
        round: 0,
        quiescences: 0,
        source_url,
        trap,
    };
    let result = d.run_rounds().await;
    d.teardown().await;
    trap_task.abort();
    result
}

impl Driver {
    fn ns(&self, slot: usize) -> String {
        format!("{}-n{slot}g{}", self.tag, self.gens[slot])
    }

    fn system_ns(&self) -> String {
        format!("{}-sys", self.tag)
    }

    fn probe_ns(&self) -> String {
        format!("{}-probe", self.tag)
    }

    fn ours(&self, ns: &str) -> bool {
        ns.starts_with(&format!("{}-", self.tag))
    }

    fn note(&mut self, line: String) {
        let line = format!(
            "[{:7.1}s r{}] {line}",
            self.started.elapsed().as_secs_f64(),
            self.round
        );
        if self.cfg.verbose {
            eprintln!("{line}");
        }
        self.log.push(line);
    }

    async fn run_rounds(&mut self) -> Result<Outcome, DriverError> {
        eprintln!(
            "chaos: seed {} duration {:?} workers {} run {}",
            self.cfg.seed, self.cfg.duration, self.cfg.shape.workers, self.tag
        );
        self.create_namespace(&self.system_ns()).await?;
        self.create_namespace(&self.probe_ns()).await?;
        self.put_credentials(&self.probe_ns(), 0).await;
        for slot in 0..NAMESPACES {
            let ns = self.ns(slot);
            self.create_namespace(&ns).await?;
            self.put_credentials(&ns, 0).await;
            self.put_source_credentials(&ns).await;
        }
        self.apply_probe().await?;
        for r in 0..REPLICAS {
            self.spawn(r)?;
        }
        let sampler = tokio::spawn(sample(
            self.client.clone(),
            self.sim.state.clone(),
            self.shared.clone(),
            Watched {
                tag: self.tag.clone(),
                source_url: self.source_url.clone(),
                trap: self.trap.clone(),
                atlas_ids: self.keys.public.clone(),
            },
        ));
        let mut steps = 0;
        let mut violation = None;
        // The first quiescence proves the fresh system works before any chaos.
        if let Some(v) = self.quiesce().await {
            violation = Some(v);
        }
        if violation.is_none() && self.cfg.plant_violation {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns(0));
            let patch = serde_json::json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "linktoken-operator"}}});
            let r = api
                .patch(CREDS, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            self.note(format!(
                "planted: the operator's label on a credentials Secret ({})",
                r.is_ok()
            ));
            self.pause(Duration::from_secs(3)).await;
            violation = self.first_violation();
        }
        while violation.is_none() && self.started.elapsed() < self.cfg.duration {
            let round = schedule::round(self.cfg.seed, self.round, &self.cfg.shape);
            for (i, step) in round.steps.iter().enumerate() {
                let outcome = self.act(step.action).await;
                steps += 1;
                lock(&self.shared).actions += 1;
                self.note(format!("#{i} {:?} -> {outcome}", step.action));
                self.pause(Duration::from_millis(step.pause_ms)).await;
                if let Some(v) = self.first_violation() {
                    violation = Some(v);
                    break;
                }
            }
            if violation.is_none() {
                violation = self.quiesce().await;
            }
            if violation.is_none() {
                eprintln!(
                    "chaos: round {} ok ({} steps, {:.0}s elapsed, {} Atlas calls, {} source calls)",
                    self.round,
                    round.steps.len(),
                    self.started.elapsed().as_secs_f64(),
                    self.sim.state.calls_on(Port::Atlas),
                    self.sim.state.calls_on(Port::Source)
                );
                self.round += 1;
            }
        }
        sampler.abort();
        if violation.is_some() {
            // The logs up to the moment of the violation, for the report.
            for r in 0..REPLICAS {
                self.scan_log(r);
            }
        }
        let report = violation.map(|v| self.report(&v));
        if let Some(r) = &report {
            eprintln!("{r}");
        }
        Ok(Outcome {
            seed: self.cfg.seed,
            rounds: self.round,
            steps,
            elapsed: self.started.elapsed(),
            violation: report,
        })
    }

    fn first_violation(&self) -> Option<Violation> {
        lock(&self.shared).violations.first().cloned()
    }

    /// Sleeps `d` while keeping the replicas as the schedule wants them (thaw, respawn) and
    /// scanning their logs.
    async fn pause(&mut self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            self.service();
            let now = Instant::now();
            if now >= until {
                return;
            }
            tokio::time::sleep((until - now).min(Duration::from_millis(200))).await;
        }
    }

    /// Judges the second live links seen by the sampler once the logs and watches had time
    /// to say what excuses them (all of them with `all`, after a fresh scan of the logs).
    fn confirm_suspects(&mut self, all: bool) {
        if all {
            for r in 0..REPLICAS {
                self.scan_log(r);
            }
        }
        let excused_orgs = {
            let mut sh = lock(&self.shared);
            let excused = check::excused_hashes(sh.histories.values(), &sh.skipped);
            let pending = std::mem::take(&mut sh.suspects);
            let judged = check::confirm(pending, &excused, Instant::now(), all);
            sh.suspects = judged.waiting;
            sh.violations.extend(judged.violations);
            judged.excused_orgs
        };
        for org in excused_orgs {
            self.note(format!(
                "org {org} had a second live link, excused (Retain or RevocationSkipped)"
            ));
        }
    }

    fn service(&mut self) {
        let now = Instant::now();
        for r in 0..REPLICAS {
            self.scan_log(r);
            if self.replicas[r].frozen_until.is_some_and(|t| t <= now) {
                self.replicas[r].frozen_until = None;
                self.signal(r, Signal::SIGCONT);
                self.note(format!("replica {r} thawed (SIGCONT)"));
            }
            let exited = self.replicas[r]
                .op
                .as_mut()
                .and_then(|o| o.child.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.scan_log(r);
                self.replicas[r].op = None;
                self.replicas[r].respawn_at = Some(now + Duration::from_secs(1));
                self.note(format!("replica {r} exited: {status}"));
            }
            if self.replicas[r].op.is_none()
                && self.replicas[r].respawn_at.is_some_and(|t| t <= now)
                && let Err(e) = self.spawn(r)
            {
                self.note(format!("replica {r} did not start: {e}"));
                self.replicas[r].respawn_at = Some(now + Duration::from_secs(2));
            }
        }
        // After the scans above: what excuses a suspect is read by now.
        self.confirm_suspects(false);
    }

    fn spawn(&mut self, r: usize) -> Result<(), DriverError> {
        let lease_ns = format!("--leader-election-namespace={}", self.system_ns());
        let lease = format!("--leader-election-lease-duration={LEASE_MS}ms");
        let mut watched = vec![self.probe_ns()];
        for slot in 0..NAMESPACES {
            for g in 0..MAX_GENERATIONS {
                watched.push(format!("{}-n{slot}g{g}", self.tag));
            }
        }
        let watched: Vec<&str> = watched.iter().map(String::as_str).collect();
        let op = OperatorCommand::new(
            &self.cfg.operator_binary,
            &self.cfg.kubeconfig,
            &self.sim.atlas_url,
            &watched,
        )
        .rust_log("info,linktoken_operator=debug")
        .args([
            "--leader-elect".to_string(),
            lease_ns,
            "--leader-election-id=chaos".into(),
            lease,
            format!("--leader-election-renew-deadline={}ms", LEASE_MS * 2 / 3),
            "--leader-election-retry-period=1s".into(),
            "--retry-base-delay=500ms".into(),
            "--retry-max-delay=5s".into(),
            "--atlas-request-timeout=4s".into(),
            "--atlas-connect-timeout=2s".into(),
            "--shutdown-timeout=3s".into(),
            format!("--allowed-source-urls={}", self.source_url),
        ])
        .spawn()
        .map_err(|e| DriverError::Operator(e.to_string()))?;
        let rep = &mut self.replicas[r];
        rep.op = Some(op);
        rep.incarnation += 1;
        rep.respawn_at = None;
        rep.frozen_until = None;
        rep.offset = 0;
        rep.partial.clear();
        let inc = rep.incarnation;
        self.note(format!("replica {r} started (incarnation {inc})"));
        Ok(())
    }

    fn signal(&mut self, r: usize, s: Signal) {
        if let Some(op) = &self.replicas[r].op {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(op.pid()).unwrap_or(0));
            let _ = nix::sys::signal::kill(pid, s);
        }
    }

    /// Reads what replica `r` logged since the last scan: a link token or a credential in
    /// a line is a violation, a panic too; RevocationSkipped warnings are remembered.
    fn scan_log(&mut self, r: usize) {
        let Some(op) = &self.replicas[r].op else {
            return;
        };
        let Ok(mut f) = std::fs::File::open(&op.log) else {
            return;
        };
        let rep = &mut self.replicas[r];
        if f.seek(SeekFrom::Start(rep.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else {
            return;
        };
        rep.offset += n as u64;
        rep.partial.push_str(&String::from_utf8_lossy(&buf));
        let Some(end) = rep.partial.rfind('\n') else {
            return;
        };
        let complete: String = rep.partial.drain(..=end).collect();
        let creds = self.keys.secrets();
        let mut shared = lock(&self.shared);
        for line in complete.lines() {
            if check::leaks(line, &creds) {
                shared.violations.push(Violation::new(
                    "no-secret-in-logs",
                    format!("replica {r} logged a link token or credential (line withheld)"),
                ));
                continue;
            }
            if line.contains("panicked") {
                shared.violations.push(Violation::new(
                    "operator-panicked",
                    format!("replica {r}: {line}"),
                ));
            }
            if line.contains("RevocationSkipped")
                && let Some(i) = line.find("linktoken=")
            {
                let key: String = line[i + 10..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                shared.skipped.insert(key);
            }
            if rep.tail.len() >= 200 {
                rep.tail.pop_front();
            }
            rep.tail
                .push_back(format!("[{r}.{}] {line}", rep.incarnation));
        }
    }

    async fn create_namespace(&self, name: &str) -> Result<(), DriverError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(RUN_LABEL.to_string(), self.tag.clone())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns).await?;
        Ok(())
    }

    /// Creates the credentials Secret of `ns` with key `k` (a new object) and registers it as
    /// one the operator must leave alone.
    async fn put_credentials(&self, ns: &str, k: usize) -> String {
        self.create_user_secret(ns, CREDS, self.keys.data(k), None)
            .await
    }

    /// The source credentials Secret of `ns`, also one the operator must leave alone.
    async fn put_source_credentials(&self, ns: &str) -> String {
        self.create_user_secret(ns, SOURCE_CREDS, self.keys.source_data(), None)
            .await
    }

    /// A spec.source for the merge patch of a source step.
    fn source_patch(&self, url: &str, org: usize) -> serde_json::Value {
        serde_json::json!({"spec": {"source": {
            "url": url,
            "orgId": source_org_id(org),
            "credentialsSecretRef": {"name": SOURCE_CREDS},
        }}})
    }

    async fn create_user_secret(
        &self,
        ns: &str,
        name: &str,
        data: BTreeMap<String, ByteString>,
        labels: Option<BTreeMap<String, String>>,
    ) -> String {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let s = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels,
                ..Default::default()
            },
            data: Some(data.clone()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &s).await {
            Ok(created) => {
                if let Some(uid) = created.metadata.uid {
                    lock(&self.shared).foreign.insert(
                        uid,
                        Foreign {
                            key: format!("{ns}/{name}"),
                            data: vec![data],
                            deleting: false,
                        },
                    );
                }
                "created".into()
            }
            Err(e) => format!("not created: {}", short(&e)),
        }
    }

    /// Deletes a Secret only if it is a driver-made one (`foreign == true`) or only if it is
    /// the operator's (`foreign == false`), by uid precondition.
    async fn delete_secret(&self, ns: &str, name: &str, foreign: bool) -> String {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let s = match api.get_opt(name).await {
            Ok(Some(s)) => s,
            Ok(None) => return "absent".into(),
            Err(e) => return format!("get failed: {}", short(&e)),
        };
        let uid = s.metadata.uid.clone().unwrap_or_default();
        {
            let mut sh = lock(&self.shared);
            match sh.foreign.get_mut(&uid) {
                Some(f) if foreign => f.deleting = true,
                None if !foreign => {}
                _ => return "not the kind asked for: left".into(),
            }
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => "deleted".into(),
            Err(e) => format!("delete failed: {}", short(&e)),
        }
    }

    fn lt_body(
        &self,
        lt: usize,
        org: &str,
        ips: usize,
        secret: usize,
        retain: bool,
    ) -> serde_json::Value {
        let mut spec = serde_json::json!({
            "orgId": org,
            "accessListIps": access_list(ips),
            "credentialsSecretRef": {"name": CREDS},
            "deletionPolicy": if retain { "Retain" } else { "Delete" },
        });
        if secret != 0 {
            spec["tokenSecret"] = serde_json::json!({"name": secret_name(lt, secret)});
        }
        serde_json::json!({
            "apiVersion": LT_API_VERSION,
            "kind": "LinkToken",
            "metadata": {"name": lt_name(lt), "labels": {RUN_LABEL: self.tag}},
            "spec": spec,
        })
    }

    async fn apply_probe(&self) -> Result<(), DriverError> {
        let api: Api<LinkToken> = Api::namespaced(self.client.clone(), &self.probe_ns());
        let mut body = self.lt_body(0, &probe_org(), 0, 0, false);
        body["metadata"]["name"] = PROBE.into();
        api.patch(
            PROBE,
            &PatchParams::apply("chaos").force(),
            &Patch::Apply(&body),
        )
        .await?;
        Ok(())
    }

    async fn merge_lt(&self, ns: &str, lt: usize, patch: serde_json::Value) -> String {
        let api: Api<LinkToken> = Api::namespaced(self.client.clone(), ns);
        match api.get_opt(&lt_name(lt)).await {
            Ok(None) => return "absent".into(),
            Err(e) => return format!("get failed: {}", short(&e)),
            Ok(Some(_)) => {}
        }
        match api
            .patch(&lt_name(lt), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => "patched".into(),
            Err(e) => format!("patch failed: {}", short(&e)),
        }
    }

    /// The name of the Secret a LinkToken writes, as its spec says now.
    async fn target_secret(&self, ns: &str, lt: usize) -> Option<String> {
        let api: Api<LinkToken> = Api::namespaced(self.client.clone(), ns);
        let l = api.get_opt(&lt_name(lt)).await.ok()??;
        Some(l.spec.token_secret_name(&lt_name(lt)))
    }

    /// A Status fault for `count` calls (what it answers is filled in by the caller).
    fn counted_fault(count: u64, org_id: Option<String>, target: FaultTarget) -> FaultSpec {
        FaultSpec {
            kind: FaultKind::Status,
            status: None,
            body: None,
            headers: Default::default(),
            latency_ms: 0,
            count: Some(count),
            method: None,
            org_id,
            target,
        }
    }

    fn source_fault_spec(fault: SourceFault, count: u64, org: Option<usize>) -> FaultSpec {
        let mut f = Self::counted_fault(count, org.map(source_org_id), FaultTarget::Source);
        match fault {
            SourceFault::ServerError { status, method } => {
                f.status = Some(status);
                f.method = method.map(str::to_owned);
            }
            SourceFault::Drop => f.kind = FaultKind::Drop,
            SourceFault::Latency { latency_ms } => {
                f.kind = FaultKind::Latency;
                f.latency_ms = latency_ms;
            }
            SourceFault::LaggingSynced => {
                f.status = Some(200);
                f.method = Some("GET".into());
                f.body = Some(serde_json::json!({"status": "SYNCED"}));
                // "For a while": more status checks than the other faults' calls.
                f.count = Some(count * 3);
            }
        }
        f
    }

    fn fault_spec(fault: Fault, count: u64, org: Option<usize>) -> FaultSpec {
        let mut f = Self::counted_fault(count, org.map(org_id), FaultTarget::LinkTokens);
        match fault {
            Fault::ServerError { status } => f.status = Some(status),
            Fault::RateLimited { retry_after } => {
                f.status = Some(429);
                f.body = Some(
                    serde_json::json!({"error": 429, "errorCode": "RATE_LIMITED", "detail": "injected", "reason": "Too Many Requests"}),
                );
                if let Some(Some(v)) = schedule::RETRY_AFTERS.get(retry_after) {
                    f.headers.insert("Retry-After".into(), (*v).into());
                }
            }
            Fault::Timeout => {
                // Longer than --atlas-request-timeout; the answer (never read) changes nothing.
                f.status = Some(503);
                f.latency_ms = 5_000;
            }
            Fault::Drop => f.kind = FaultKind::Drop,
            Fault::SlowPost { latency_ms } => {
                f.kind = FaultKind::Latency;
                f.latency_ms = latency_ms;
                f.method = Some("POST".into());
            }
            Fault::DeleteConflict => {
                f.status = Some(409);
                f.method = Some("DELETE".into());
                f.body = Some(
                    serde_json::json!({"error": 409, "errorCode": "CANNOT_DELETE_ORG_ACTIVE_LIVE_MIGRATION_ATLAS_ORG_LINK", "detail": "injected", "reason": "Conflict"}),
                );
            }
        }
        f
    }

    /// Carries out one action; returns what happened (failures are part of chaos, not errors).
    async fn act(&mut self, a: Action) -> String {
        match a {
            Action::CreateLinkToken { ns, lt, org, ips, secret, retain } => {
                let ns = self.ns(ns);
                let api: Api<LinkToken> = Api::namespaced(self.client.clone(), &ns);
                let body = self.lt_body(lt, &org_id(org), ips, secret, retain);
                match api
                    .patch(&lt_name(lt), &PatchParams::apply("chaos").force(), &Patch::Apply(&body))
                    .await
                {
                    Ok(_) => "applied".into(),
                    Err(e) => format!("apply failed: {}", short(&e)),
                }
            }
            Action::DeleteLinkToken { ns, lt } => {
                let api: Api<LinkToken> = Api::namespaced(self.client.clone(), &self.ns(ns));
                match api.delete(&lt_name(lt), &DeleteParams::default()).await {
                    Ok(_) => "deleting".into(),
                    Err(e) => format!("delete failed: {}", short(&e)),
                }
            }
            Action::EditOrg { ns, lt, org } => {
                self.merge_lt(&self.ns(ns), lt, serde_json::json!({"spec": {"orgId": org_id(org)}}))
                    .await
            }
            Action::EditAccessList { ns, lt, ips } => {
                self.merge_lt(&self.ns(ns), lt, serde_json::json!({"spec": {"accessListIps": access_list(ips)}}))
                    .await
            }
            Action::Rotate { ns, lt, value } => {
                self.merge_lt(
                    &self.ns(ns),
                    lt,
                    serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: value.to_string()}}}),
                )
                .await
            }
            Action::RenameTokenSecret { ns, lt, secret } => {
                self.merge_lt(
                    &self.ns(ns),
                    lt,
                    serde_json::json!({"spec": {"tokenSecret": {"name": secret_name(lt, secret)}}}),
                )
                .await
            }
            Action::DeleteCredentials { ns } => self.delete_secret(&self.ns(ns), CREDS, true).await,
            Action::RecreateCredentials { ns, key } => {
                let ns = self.ns(ns);
                let d = self.delete_secret(&ns, CREDS, true).await;
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
                for _ in 0..50 {
                    if matches!(api.get_opt(CREDS).await, Ok(None)) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let c = self.put_credentials(&ns, key).await;
                format!("{d}, {c}")
            }
            Action::RotateCredentials { ns, key } => {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns(ns));
                let mut s = match api.get_opt(CREDS).await {
                    Ok(Some(s)) => s,
                    Ok(None) => return "absent".into(),
                    Err(e) => return format!("get failed: {}", short(&e)),
                };
                let data = self.keys.data(key);
                let uid = s.metadata.uid.clone().unwrap_or_default();
                // Registered before the write, so the sampler never sees data it does not know.
                match lock(&self.shared).foreign.get_mut(&uid) {
                    Some(f) => f.data.push(data.clone()),
                    None => return "not ours: left".into(),
                }
                s.data = Some(data);
                match api.replace(CREDS, &PostParams::default(), &s).await {
                    Ok(_) => "updated".into(),
                    Err(e) => format!("update failed: {}", short(&e)),
                }
            }
            Action::DeleteTokenSecret { ns, lt } => {
                let ns = self.ns(ns);
                match self.target_secret(&ns, lt).await {
                    Some(name) => self.delete_secret(&ns, &name, false).await,
                    None => "no LinkToken".into(),
                }
            }
            Action::TamperTokenSecret { ns, lt } => {
                let ns = self.ns(ns);
                let Some(name) = self.target_secret(&ns, lt).await else {
                    return "no LinkToken".into();
                };
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
                let mut s = match api.get_opt(&name).await {
                    Ok(Some(s)) => s,
                    Ok(None) => return "no Secret".into(),
                    Err(e) => return format!("get failed: {}", short(&e)),
                };
                if lock(&self.shared).foreign.contains_key(s.uid().as_deref().unwrap_or_default()) {
                    return "a user's Secret: left".into();
                }
                let data = s.data.get_or_insert_default();
                data.insert("linkToken".into(), ByteString(b"tampered-by-chaos".to_vec()));
                match api.replace(&name, &PostParams::default(), &s).await {
                    Ok(_) => "tampered".into(),
                    Err(e) => format!("update failed: {}", short(&e)),
                }
            }
            Action::SquatSecret { ns, lt, secret } => {
                let ns = self.ns(ns);
                let data: BTreeMap<String, ByteString> = [
                    ("linkToken".to_string(), ByteString(b"a-user-value".to_vec())),
                    ("note".to_string(), ByteString(b"mine".to_vec())),
                ]
                .into();
                let labels = [("app".to_string(), "user".to_string())].into();
                self.create_user_secret(&ns, &secret_name(lt, secret), data, Some(labels))
                    .await
            }
            Action::UnsquatSecret { ns, lt, secret } => {
                self.delete_secret(&self.ns(ns), &secret_name(lt, secret), true).await
            }
            Action::DeleteNamespace { ns: slot } => {
                if self.gens[slot] + 1 >= MAX_GENERATIONS {
                    return "generation cap reached: left".into();
                }
                let old = self.ns(slot);
                lock(&self.shared).deleted_namespaces.insert(old.clone());
                let api: Api<Namespace> = Api::all(self.client.clone());
                let d = match api.delete(&old, &DeleteParams::default()).await {
                    Ok(_) => "deleting".to_string(),
                    Err(e) => format!("delete failed: {}", short(&e)),
                };
                self.gens[slot] += 1;
                let new = self.ns(slot);
                let c = match self.create_namespace(&new).await {
                    Ok(()) => {
                        let c = self.put_credentials(&new, 0).await;
                        let sc = self.put_source_credentials(&new).await;
                        format!("{c}, source credentials {sc}")
                    }
                    Err(e) => format!("namespace not created: {e}"),
                };
                format!("{old} {d}; {new} with credentials {c}")
            }
            Action::KillOperator { replica, down_ms } => {
                self.scan_log(replica);
                let rep = &mut self.replicas[replica];
                match rep.op.take() {
                    Some(mut op) => {
                        op.kill();
                        rep.frozen_until = None;
                        rep.respawn_at = Some(Instant::now() + Duration::from_millis(down_ms));
                        "killed".into()
                    }
                    None => "not running".into(),
                }
            }
            Action::FreezeOperator { replica, ms } => {
                if self.replicas[replica].op.is_none() || self.replicas[replica].frozen_until.is_some() {
                    return "not running or frozen already".into();
                }
                self.signal(replica, Signal::SIGSTOP);
                self.replicas[replica].frozen_until = Some(Instant::now() + Duration::from_millis(ms));
                "frozen".into()
            }
            Action::RestartOperator { replica } => {
                if self.replicas[replica].frozen_until.take().is_some() {
                    self.signal(replica, Signal::SIGCONT);
                }
                let status = match self.replicas[replica].op.as_mut() {
                    Some(op) => op.terminate(Duration::from_secs(10)),
                    None => return "not running".into(),
                };
                self.scan_log(replica);
                if let Some(mut op) = self.replicas[replica].op.take() {
                    op.kill();
                }
                match self.spawn(replica) {
                    Ok(()) => format!("stopped ({status:?}) and started"),
                    Err(e) => {
                        self.replicas[replica].respawn_at = Some(Instant::now() + Duration::from_secs(2));
                        format!("stopped ({status:?}), start failed: {e}")
                    }
                }
            }
            Action::RestartApiServer { down_ms } => self.restart(Component::ApiServer, down_ms).await,
            Action::RestartEtcd { down_ms } => self.restart(Component::Etcd, down_ms).await,
            Action::AtlasFault { fault, count, org } => {
                match self.sim.state.add_fault(Self::fault_spec(fault, count, org)) {
                    Ok(id) => format!("fault {id} added"),
                    Err(e) => format!("fault refused: {e}"),
                }
            }
            Action::SetSource { ns, lt, org } => {
                let patch = self.source_patch(&self.source_url, org);
                let slot = ns;
                let ns = self.ns(slot);
                let api: Api<LinkToken> = Api::namespaced(self.client.clone(), &ns);
                if matches!(api.get_opt(&lt_name(lt)).await, Ok(None)) {
                    // Absent: created with a source (by a field manager of its own, so a later
                    // re-apply of the rest of the spec keeps the source).
                    let mut body = self.lt_body(lt, &org_id((slot + lt) % ORGS), 0, 0, false);
                    body["spec"]["source"] = patch["spec"]["source"].clone();
                    return match api
                        .patch(&lt_name(lt), &PatchParams::apply("chaos-source").force(), &Patch::Apply(&body))
                        .await
                    {
                        Ok(_) => "created with a source".into(),
                        Err(e) => format!("apply failed: {}", short(&e)),
                    };
                }
                self.merge_lt(&ns, lt, patch).await
            }
            Action::DisallowedSource { ns, lt } => {
                let patch = self.source_patch(&self.trap.url, 0);
                self.merge_lt(&self.ns(ns), lt, patch).await
            }
            Action::RemoveSource { ns, lt } => {
                self.merge_lt(&self.ns(ns), lt, serde_json::json!({"spec": {"source": null}}))
                    .await
            }
            Action::RotateLinked { pick, value } => self.rotate_linked(pick, value).await,
            Action::SourceFault { fault, count, org } => {
                match self.sim.state.add_fault(Self::source_fault_spec(fault, count, org)) {
                    Ok(id) => format!("source fault {id} added"),
                    Err(e) => format!("source fault refused: {e}"),
                }
            }
        }
    }

    /// Rotates one of the run's LinkTokens that reports Linked=True now.
    async fn rotate_linked(&self, pick: usize, value: u32) -> String {
        let api: Api<LinkToken> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(&format!("{RUN_LABEL}={}", self.tag));
        let linked: Vec<LinkToken> = match api.list(&lp).await {
            Ok(l) => l
                .items
                .into_iter()
                .filter(|l| l.namespace().is_some_and(|n| self.ours(&n)))
                .filter(|l| check::link_claim(l).is_some())
                .collect(),
            Err(e) => return format!("list failed: {}", short(&e)),
        };
        let Some(l) = linked.get(pick % linked.len().max(1)) else {
            return "none Linked".into();
        };
        let ns = l.namespace().unwrap_or_default();
        let api: Api<LinkToken> = Api::namespaced(self.client.clone(), &ns);
        let patch = serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: format!("linked-{value}")}}});
        match api
            .patch(
                &l.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => format!("{ns}/{} rotated", l.name_any()),
            Err(e) => format!("patch failed: {}", short(&e)),
        }
    }

    async fn restart(&mut self, c: Component, down_ms: u64) -> String {
        let plane = self.cfg.plane.clone();
        let t = Instant::now();
        let mut job =
            tokio::task::spawn_blocking(move || plane.restart(c, Duration::from_millis(down_ms)));
        // Keep thawing and respawning replicas while the component is down.
        let r = loop {
            tokio::select! {
                r = &mut job => break r,
                _ = tokio::time::sleep(Duration::from_millis(200)) => self.service(),
            }
        };
        match r {
            Ok(Ok(())) => format!("restarted in {:.1}s", t.elapsed().as_secs_f64()),
            Ok(Err(e)) => format!("not restarted: {e}"),
            Err(e) => format!("restart task failed: {e}"),
        }
    }

    /// Heals every fault, lets everything settle, and checks every invariant.
    async fn quiesce(&mut self) -> Option<Violation> {
        let t = Instant::now();
        self.sim.state.clear_faults();
        let now = Instant::now();
        for r in 0..REPLICAS {
            if self.replicas[r].frozen_until.is_some() {
                self.replicas[r].frozen_until = Some(now);
            }
            if self.replicas[r].op.is_none() {
                self.replicas[r].respawn_at = Some(now);
            }
        }
        self.service();
        for slot in 0..NAMESPACES {
            let ns = self.ns(slot);
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
            if matches!(api.get_opt(CREDS).await, Ok(None)) {
                let c = self.put_credentials(&ns, 0).await;
                self.note(format!("heal: credentials of {ns} {c}"));
            }
            if matches!(api.get_opt(SOURCE_CREDS).await, Ok(None)) {
                let c = self.put_source_credentials(&ns).await;
                self.note(format!("heal: source credentials of {ns} {c}"));
            }
        }
        // Liveness: the probe LinkToken takes a rotation.
        self.quiescences += 1;
        let value = format!("q{}", self.quiescences);
        let probe_api: Api<LinkToken> = Api::namespaced(self.client.clone(), &self.probe_ns());
        let patch = serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: value}}});
        let deadline = Instant::now() + self.cfg.probe_timeout;
        let mut patched = false;
        loop {
            if !patched {
                patched = probe_api
                    .patch(PROBE, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok();
            }
            let done = patched
                && probe_api
                    .get_opt(PROBE)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|l| {
                        is_ready(&l)
                            && l.status
                                .as_ref()
                                .and_then(|s| s.issued_for.as_ref())
                                .and_then(|i| i.rotate.as_deref())
                                == Some(value.as_str())
                    });
            if done {
                break;
            }
            if Instant::now() > deadline {
                return Some(
                    Violation::new(
                        "liveness-probe",
                        format!("the probe LinkToken did not take rotation {value} within {:?} with both replicas running", self.cfg.probe_timeout),
                    )
                    .orgs([probe_org()]),
                );
            }
            self.pause(Duration::from_millis(250)).await;
        }
        let probe_s = t.elapsed().as_secs_f64();
        // Settle: every LinkToken done, every deleted namespace gone.
        let deadline = Instant::now() + self.cfg.settle_timeout;
        let lts = loop {
            let (lts, pending) = self.unsettled().await;
            if pending.is_empty() {
                break lts;
            }
            if Instant::now() > deadline {
                let orgs: Vec<String> = lts.iter().map(|l| l.spec.org_id.clone()).collect();
                return Some(
                    Violation::new(
                        "liveness-settle",
                        format!(
                            "not settled {:?} after every fault was healed: {}",
                            self.cfg.settle_timeout,
                            pending.join("; ")
                        ),
                    )
                    .orgs(orgs),
                );
            }
            self.pause(Duration::from_millis(500)).await;
        };
        let settle_s = t.elapsed().as_secs_f64();
        self.confirm_suspects(true);
        if let Some(v) = self.first_violation() {
            return Some(v);
        }
        let v = self.check_quiescent(&lts).await;
        if v.is_none() {
            self.note(format!(
                "quiescent: probe {probe_s:.1}s, settled {settle_s:.1}s, checked {:.1}s, {} LinkTokens, {} Linked",
                t.elapsed().as_secs_f64(),
                lts.len(),
                lts.iter().filter(|l| check::link_claim(l).is_some()).count()
            ));
            let sourced: Vec<String> = lts
                .iter()
                .filter(|l| l.spec.source.is_some())
                .map(|l| {
                    format!(
                        "{}/{} {}",
                        l.namespace().unwrap_or_default(),
                        l.name_any(),
                        linktoken_operator::controller::index::reported_reason(l)
                            .map_or("-", |r| r.as_str())
                    )
                })
                .collect();
            self.note(format!("with a source: {}", sourced.join(", ")));
        }
        v
    }

    /// The run's LinkTokens, and what is not settled yet (LinkTokens and namespaces).
    async fn unsettled(&self) -> (Vec<LinkToken>, Vec<String>) {
        let mut pending = Vec::new();
        let api: Api<LinkToken> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(&format!("{RUN_LABEL}={}", self.tag));
        let lts = match api.list(&lp).await {
            Ok(l) => l.items,
            Err(e) => return (Vec::new(), vec![format!("list failed: {}", short(&e))]),
        };
        let mut mine = lts;
        mine.retain(|l| l.namespace().is_some_and(|n| self.ours(&n)));
        for l in &mine {
            if let Some(why) = check::unsettled(l) {
                pending.push(format!(
                    "{}/{}: {why}",
                    l.namespace().unwrap_or_default(),
                    l.name_any()
                ));
            }
        }
        pending.extend(check::waiters_with_a_free_org(&mine));
        pending.extend(check::source_waiters_with_a_free_org(&mine));
        let ns_api: Api<Namespace> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(&format!("{RUN_LABEL}={}", self.tag));
        match ns_api.list(&lp).await {
            Ok(list) => {
                for n in list.items {
                    if n.metadata.deletion_timestamp.is_some() {
                        pending.push(format!("namespace {} still terminating", n.name_any()));
                    }
                }
            }
            Err(e) => pending.push(format!("namespace list failed: {}", short(&e))),
        }
        (mine, pending)
    }

    async fn check_quiescent(&mut self, lts: &[LinkToken]) -> Option<Violation> {
        let orgs: Vec<String> = (0..=ORGS).map(org_id).collect();
        let live: BTreeMap<String, Vec<String>> = orgs
            .iter()
            .map(|o| (o.clone(), self.sim.state.live_token_hashes(o)))
            .collect();
        let excused = {
            let sh = lock(&self.shared);
            check::excused_hashes(sh.histories.values(), &sh.skipped)
        };
        if let Some(v) = check::one_link_per_org(&live, &excused).into_iter().next() {
            return Some(v);
        }
        // Every Ready LinkToken's Secret holds a token live in its org.
        for l in lts.iter().filter(|l| is_ready(l)) {
            let ns = l.namespace().unwrap_or_default();
            let name = l.name_any();
            let secret = l
                .status
                .as_ref()
                .and_then(|s| s.token_secret_name.clone())
                .unwrap_or_else(|| l.spec.token_secret_name(&name));
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
            let token = match api.get_opt(&secret).await {
                Ok(s) => s
                    .and_then(|s| s.data)
                    .and_then(|d| d.get(l.spec.token_secret_key()).cloned())
                    .and_then(|b| String::from_utf8(b.0).ok()),
                Err(_) => continue,
            };
            let ok = token.as_deref().is_some_and(|t| {
                matches!(self.sim.state.token_status(t), atlas_sim::TokenStatus::Live { org_id } if org_id == l.spec.org_id)
            });
            if !ok {
                return Some(
                    Violation::new(
                        "ready-token-live",
                        format!("LinkToken {ns}/{name} is Ready but Secret {secret} holds no token live in org {}", l.spec.org_id),
                    )
                    .orgs([l.spec.org_id.clone()]),
                );
            }
        }
        // Linked means the source org holds the live current token, one linker per source org:
        // everything has settled, so no lag is tolerated.
        let claims: Vec<check::LinkClaim> = lts.iter().filter_map(check::link_claim).collect();
        if let Some(p) = link_problems(&self.sim.state, &claims, &self.source_url)
            .into_iter()
            .next()
        {
            return Some(p.violation);
        }
        if let Some(v) = credentials_check(&self.sim.state, &self.trap, &self.keys.public) {
            return Some(v);
        }
        // Foreign Secrets: a full list, in case the watch missed an event.
        let api: Api<Secret> = Api::all(self.client.clone());
        if let Ok(list) = api.list(&ListParams::default()).await {
            let sh = lock(&self.shared);
            for s in list.items {
                if let Some(f) = s.metadata.uid.as_ref().and_then(|u| sh.foreign.get(u))
                    && let Some(v) = check::foreign_secret(&s, &f.data)
                {
                    return Some(v);
                }
            }
        }
        // Every live link belongs to a LinkToken that holds it now, or to one whose deletion
        // or move the operator documented (Retain, RevocationSkipped).
        let present: BTreeSet<String> = lts.iter().filter_map(|l| l.uid()).collect();
        let live_hashes: BTreeMap<String, String> = orgs
            .iter()
            .flat_map(|o| {
                self.sim
                    .state
                    .live_token_hashes(o)
                    .into_iter()
                    .map(move |h| (h, o.clone()))
            })
            .collect();
        let live_set: BTreeSet<String> = live_hashes.keys().cloned().collect();
        {
            let mut sh = lock(&self.shared);
            for (uid, h) in sh.histories.iter_mut() {
                if !present.contains(uid) && !h.key.starts_with(&format!("{}-probe/", self.tag)) {
                    h.deleted = true;
                }
            }
            let skipped = sh.skipped.clone();
            for h in sh.histories.values() {
                if let Some(v) = check::deleted_left_no_link(h, &live_set, skipped.contains(&h.key))
                {
                    return Some(v);
                }
            }
            let current: BTreeSet<String> = lts
                .iter()
                .filter_map(|l| l.status.as_ref()?.issued_for.as_ref()?.token_sha256.clone())
                .collect();
            for (hash, org) in &live_hashes {
                if current.contains(hash) {
                    continue;
                }
                let owner = sh.histories.values().find(|h| h.hashes.contains(hash));
                let excused = owner.is_some_and(|h| check::excused(h, &skipped));
                if !excused {
                    let who = owner.map_or("no LinkToken ever recorded it".to_string(), |h| {
                        format!(
                            "last held by {}{}",
                            h.key,
                            if h.deleted { " (deleted)" } else { "" }
                        )
                    });
                    return Some(
                        Violation::new(
                            "no-orphan-link",
                            format!("a live link in org {org} is held by no LinkToken: {who}"),
                        )
                        .orgs([org.clone()]),
                    );
                }
            }
            // Checked deleted ones are done with (a revoked token stays revoked); excused ones
            // are kept: their live links must not count against the next LinkToken of the org.
            sh.histories
                .retain(|_, h| !h.deleted || check::excused(h, &skipped));
        }
        // No token or credential in any event or status.
        let creds = self.keys.secrets();
        let ev: Api<k8s_openapi::api::events::v1::Event> = Api::all(self.client.clone());
        if let Ok(list) = ev.list(&ListParams::default()).await {
            for e in list
                .items
                .iter()
                .filter(|e| e.namespace().is_some_and(|n| self.ours(&n)))
            {
                let text = serde_json::to_string(e).unwrap_or_default();
                if check::leaks(&text, &creds) {
                    return Some(Violation::new(
                        "no-secret-in-events",
                        format!(
                            "an event in {} holds a link token or credential",
                            e.namespace().unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        for l in lts {
            if check::leaks(
                &serde_json::to_string(&l.status).unwrap_or_default(),
                &creds,
            ) {
                return Some(Violation::new(
                    "no-secret-in-status",
                    format!(
                        "the status of {}/{} holds a link token or credential",
                        l.namespace().unwrap_or_default(),
                        l.name_any()
                    ),
                ));
            }
        }
        // Settled means quiet: no Atlas call while nothing changes.
        let before = self.sim.state.calls_total();
        // Paused, not slept: the replicas' logs stay read, so a report shows what made a call.
        self.pause(Duration::from_secs(5)).await;
        let after = self.sim.state.calls_total();
        if after != before {
            let orgs: BTreeSet<String> = self
                .sim
                .state
                .call_history(None)
                .iter()
                .rev()
                .take(usize::try_from(after - before).unwrap_or(0))
                .filter_map(|c| c.org_id.clone())
                .collect();
            return Some(
                Violation::new(
                    "atlas-quiet-when-settled",
                    format!(
                        "{} Atlas or source call(s) in 5 s with everything settled and no fault",
                        after - before
                    ),
                )
                .orgs(orgs)
                .source_orgs((0..SOURCE_ORGS).map(source_org_id)),
            );
        }
        None
    }

    /// The violation's report, most telling part first (CI shows a report's beginning): the
    /// org's Atlas calls and who holds each live link, the operators' logs, then the schedule.
    fn report(&self, v: &Violation) -> String {
        let mut out = format!(
            "\n==== CHAOS VIOLATION: {} ====\n{}\nseed {} (run {}), round {}, {:.0}s into the run\nreproduce: cargo run -p chaos -- --seed {} --duration {}s {}\n",
            v.invariant,
            v.detail,
            self.cfg.seed,
            self.tag,
            self.round,
            self.started.elapsed().as_secs_f64(),
            self.cfg.seed,
            self.cfg.duration.as_secs(),
            self.cfg.shape.replay_flags(),
        );
        let sh = lock(&self.shared);
        let orgs: BTreeSet<&String> = v.orgs.iter().collect();
        for org in orgs {
            let calls = self.sim.state.call_history(Some(org));
            let lines = calls.iter().map(|c| {
                format!(
                    "#{} {} {} {} {}ms{}",
                    c.seq,
                    c.at,
                    c.method,
                    c.status,
                    c.duration_ms,
                    if c.fault { " (fault)" } else { "" }
                )
            });
            section(
                &mut out,
                &format!("atlas-sim calls for org {org}"),
                lines,
                120,
            );
            out.push_str(&format!(
                "  live links now: {}\n",
                self.sim.state.live_links(org)
            ));
            for hash in self.sim.state.live_token_hashes(org) {
                let holder = sh.histories.values().find(|h| h.hashes.contains(&hash));
                out.push_str(&format!(
                    "  live token sha256 {}…: {}\n",
                    hash.get(..12).unwrap_or(&hash),
                    holder.map_or("no LinkToken status ever recorded it".to_string(), |h| {
                        check::describe(h, &sh.skipped)
                    })
                ));
            }
            for h in sh.histories.values().filter(|h| h.orgs.contains(org)) {
                out.push_str(&format!(
                    "  named the org: {}\n",
                    check::describe(h, &sh.skipped)
                ));
            }
        }
        drop(sh);
        let source_orgs: BTreeSet<&String> = v.source_orgs.iter().collect();
        let calls = self.sim.state.source_calls();
        for org in source_orgs {
            let lines = calls
                .iter()
                .filter(|c| c.path.contains(org.as_str()))
                .map(|c| {
                    let who = c.user.as_deref().map(|u| format!(" as {u}"));
                    format!(
                        "{} {} {}{}",
                        c.method,
                        c.path,
                        c.status,
                        who.unwrap_or_default()
                    )
                });
            section(
                &mut out,
                &format!("source calls for source org {org}"),
                lines,
                60,
            );
            out.push_str(&format!(
                "  link now: {}\n",
                self.sim
                    .state
                    .source_link(org)
                    .map_or("none".to_string(), |l| format!(
                        "token sha256 {}… of Atlas org {}",
                        l.token_sha256.get(..12).unwrap_or(&l.token_sha256),
                        l.atlas_org_id
                    ))
            ));
        }
        for r in &self.replicas {
            out.push_str(&format!(
                "---- replica {} log (last {} lines) ----\n",
                r.index,
                r.tail.len().min(80)
            ));
            for l in r.tail.iter().skip(r.tail.len().saturating_sub(80)) {
                out.push_str(l);
                out.push('\n');
            }
        }
        out.push_str(&format!(
            "---- schedule so far ({} entries) ----\n",
            self.log.len()
        ));
        for l in &self.log {
            out.push_str(l);
            out.push('\n');
        }
        out
    }

    /// Stops the replicas and removes what the run created (finalizers first: no operator is
    /// left to release them).
    async fn teardown(&mut self) {
        for r in 0..REPLICAS {
            if self.replicas[r].frozen_until.take().is_some() {
                self.signal(r, Signal::SIGCONT);
            }
            if let Some(mut op) = self.replicas[r].op.take() {
                op.kill();
            }
        }
        let api: Api<LinkToken> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(&format!("{RUN_LABEL}={}", self.tag));
        if let Ok(list) = api.list(&lp).await {
            for l in list.items {
                let ns_api: Api<LinkToken> =
                    Api::namespaced(self.client.clone(), &l.namespace().unwrap_or_default());
                let _ = ns_api
                    .patch(
                        &l.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
            }
        }
        let ns_api: Api<Namespace> = Api::all(self.client.clone());
        if let Ok(list) = ns_api.list(&lp).await {
            for n in list.items {
                let _ = ns_api.delete(&n.name_any(), &DeleteParams::default()).await;
            }
        }
    }
}

/// A report section: a title with how many of its lines are shown, then the last `limit`.
fn section(out: &mut String, title: &str, lines: impl Iterator<Item = String>, limit: usize) {
    let lines: Vec<String> = lines.collect();
    out.push_str(&format!(
        "---- {title} (last {} of {}) ----\n",
        lines.len().min(limit),
        lines.len()
    ));
    for l in lines.iter().skip(lines.len().saturating_sub(limit)) {
        out.push_str("  ");
        out.push_str(l);
        out.push('\n');
    }
}

fn short(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
        other => other.to_string().chars().take(120).collect(),
    }
}

/// The broken link promises of `claims` against what the sim's source and Atlas hold now.
fn link_problems(
    sim: &atlas_sim::SimState,
    claims: &[check::LinkClaim],
    source_url: &str,
) -> Vec<check::Problem> {
    let held = |org: &str| sim.source_link(org).map(|l| l.token_sha256);
    let live = |h: &str| {
        matches!(
            sim.token_status_by_hash(h),
            atlas_sim::TokenStatus::Live { .. }
        )
    };
    check::link_problems(claims, source_url, &held, &live)
}

/// Whether an Atlas credential went anywhere but Atlas (the recording listener, the source).
fn credentials_check(
    sim: &atlas_sim::SimState,
    trap: &Trap,
    atlas_ids: &[String],
) -> Option<Violation> {
    let users: Vec<String> = sim
        .source_calls()
        .into_iter()
        .filter_map(|c| c.user)
        .collect();
    check::atlas_credentials_stay_home(trap.hits(), &trap.url, &users, atlas_ids)
}

/// What the sampler needs to know of the run besides the clients.
struct Watched {
    tag: String,
    source_url: String,
    trap: Trap,
    /// Atlas API key public ids: none may be presented to the source.
    atlas_ids: Vec<String>,
}

/// The continuous half of the checker: watches LinkTokens and Secrets (their histories, the
/// foreign Secrets, statuses, Linked promises), and every half second atlas-sim's live links,
/// source links and call rates, and the recording listener.
async fn sample(client: Client, sim: atlas_sim::SimState, shared: SharedRef, w: Watched) {
    let tag = w.tag.clone();
    let ours = move |ns: &str| ns.starts_with(&format!("{tag}-"));
    let ours2 = ours.clone();
    let lts = watcher::watcher(
        Api::<LinkToken>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .filter_map(|e| async move { e.ok() })
    .map(|e| Either::Lt(Box::new(e)));
    let secrets = watcher::watcher(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .filter_map(|e| async move { e.ok() })
    .map(Either::Secret);
    let ticks = futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some((Either::Tick, ()))
    });
    let mut all = Box::pin(futures::stream::select(
        futures::stream::select(lts, secrets),
        ticks,
    ));
    let orgs: Vec<String> = (0..=ORGS).map(org_id).collect();
    let mut window = (
        Instant::now(),
        sim.calls_on(Port::Atlas),
        0u64,
        sim.calls_on(Port::Source),
    );
    while let Some(item) = all.next().await {
        let mut sh = lock(&shared);
        match item {
            Either::Lt(e) => match *e {
                Event::Apply(l) | Event::InitApply(l) => {
                    let ns = l.namespace().unwrap_or_default();
                    if !ours(&ns) {
                        continue;
                    }
                    let key = format!("{ns}/{}", l.name_any());
                    if let Some(uid) = l.uid() {
                        sh.histories
                            .entry(uid.clone())
                            .or_default()
                            .observe(&l, key.clone());
                        match check::link_claim(&l) {
                            Some(c) => sh.claims.insert(uid.clone(), c),
                            None => sh.claims.remove(&uid),
                        };
                        if l.spec.source.is_some() {
                            sh.with_source.insert(uid);
                        } else {
                            sh.with_source.remove(&uid);
                        }
                    }
                    if check::leaks(&serde_json::to_string(&l.status).unwrap_or_default(), &[]) {
                        sh.violations.push(Violation::new(
                            "no-secret-in-status",
                            format!("the status of {key} holds a link token"),
                        ));
                    }
                }
                Event::Delete(l) => {
                    if let Some(uid) = l.uid() {
                        sh.claims.remove(&uid);
                        sh.with_source.remove(&uid);
                    }
                    if let Some(h) = l.uid().and_then(|u| sh.histories.get_mut(&u)) {
                        h.deleted = true;
                    }
                }
                _ => {}
            },
            Either::Secret(Event::Apply(s) | Event::InitApply(s)) => {
                if let Some(f) = s.uid().and_then(|u| sh.foreign.get(&u))
                    && let Some(v) = check::foreign_secret(&s, &f.data)
                {
                    sh.violations.push(v);
                }
            }
            Either::Secret(Event::Delete(s)) => {
                let ns = s.namespace().unwrap_or_default();
                let gone_with_ns = sh.deleted_namespaces.contains(&ns);
                if let Some(f) = s.uid().and_then(|u| sh.foreign.remove(&u))
                    && !f.deleting
                    && !gone_with_ns
                    && ours2(&ns)
                {
                    sh.violations.push(Violation::new(
                        "foreign-secret-untouched",
                        format!("Secret {} the operator did not create was deleted", f.key),
                    ));
                }
            }
            Either::Tick => {
                let live: BTreeMap<String, Vec<String>> = orgs
                    .iter()
                    .map(|o| (o.clone(), sim.live_token_hashes(o)))
                    .collect();
                let excused = check::excused_hashes(sh.histories.values(), &sh.skipped);
                for s in check::suspects(&live, &excused, Instant::now()) {
                    if !sh
                        .suspects
                        .iter()
                        .any(|p| p.org == s.org && p.hashes == s.hashes)
                    {
                        sh.suspects.push(s);
                    }
                }
                // Linked promises against the source's links, judged on standing.
                let claims: Vec<check::LinkClaim> = sh.claims.values().cloned().collect();
                let current = link_problems(&sim, &claims, &w.source_url);
                let pending = std::mem::take(&mut sh.link_pending);
                let (pending, found) = check::standing(pending, current, Instant::now());
                sh.link_pending = pending;
                sh.violations.extend(found);
                if let Some(v) = credentials_check(&sim, &w.trap, &w.atlas_ids) {
                    sh.violations.push(v);
                }
                if window.0.elapsed() >= Duration::from_secs(10) {
                    let calls = sim.calls_on(Port::Atlas);
                    let source_calls = sim.calls_on(Port::Source);
                    let n_lts = sh.histories.values().filter(|h| !h.deleted).count() as u64;
                    let n_sourced = sh.with_source.len() as u64;
                    let actions = sh.actions - window.2;
                    let secs = window.0.elapsed().as_secs();
                    let budget = check::call_budget(n_lts, actions, secs);
                    if calls - window.1 > budget {
                        sh.violations.push(Violation::new(
                            "atlas-call-budget",
                            format!("{} Atlas calls in {secs} s for {n_lts} LinkTokens and {actions} actions (budget {budget})", calls - window.1),
                        ).orgs(orgs.clone()));
                    }
                    let budget = check::source_call_budget(n_sourced, actions, secs);
                    if source_calls - window.3 > budget {
                        sh.violations.push(
                            Violation::new(
                                "source-call-budget",
                                format!("{} source calls in {secs} s for {n_sourced} LinkTokens with a source and {actions} actions (budget {budget})", source_calls - window.3),
                            )
                            .source_orgs((0..SOURCE_ORGS).map(source_org_id)),
                        );
                    }
                    window = (Instant::now(), calls, sh.actions, source_calls);
                }
            }
            _ => {}
        }
    }
}

// One item of the sampler's merged streams, moved once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Either {
    Lt(Box<Event<LinkToken>>),
    Secret(Event<Secret>),
    Tick,
}
