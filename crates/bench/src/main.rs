//! Benchmark: N LinkTokens applied at once on a real control plane, with atlas-sim in this
//! process and the release operator binary as its own process.
//!
//! `cargo build --release -p linktoken-operator && cargo run --release -p bench -- [--n 100,1000,5000] [--latency-ms 0,200] [--restart]
//!  [--concurrency 8] [--quiet-secs 60] [--json out.json]`
//!
//! For each (latency, concurrency, N): time until all are Ready, throughput, p50/p99
//! apply-to-Ready latency, Atlas calls per token, Kubernetes API writes per token (deltas of
//! kube-apiserver's `apiserver_request_total` for linktokens, secrets and events, minus the
//! benchmark's own LinkToken creates) and reads per token (GET/LIST/WATCH of linktokens,
//! secrets, leases and events, minus the benchmark's own LIST and WATCH), operator peak RSS and
//! CPU seconds, then Atlas calls and API writes per minute over a quiet period once everything
//! is Ready.
//!
//! Before each run, with no operator running, a calibration phase performs the operator's
//! per-token write mix itself at the same concurrency, as fast as the API server allows: that
//! is this machine's ceiling in tokens/s, and each run reports its fraction of it. With
//! `--calibration-floor` two more calibrations: the write mix with a controller's two watches
//! open, then with the two reads this operator adds on purpose (credentials GET, dry-run
//! Secret create): the most a controller, and this contract as we implement it, allow here.
//! The calibration writes what the operator writes, built by the operator's own code (status
//! objects from `with_outcome`, the Secret from `DesiredSecret`), so the ceiling prices the
//! same bytes the operator sends. Control-plane CPU per token (etcd, kube-apiserver,
//! kube-controller-manager, from /proc) is printed for each phase: on a small machine the API
//! server's CPU, not round trips, sets both ceilings.
//!
//! With `--restart`, after the quiet period the operator is killed and a new one started; the
//! run reports the time from its start to all N verified (its `linktoken_reconciles_total
//! {result="ready"}` reaching N, every LinkToken still Ready at the same observedGeneration),
//! and the Atlas calls and API writes during it (both should be 0).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use atlas_sim::{
    FaultKind, FaultSpec, FaultTarget, ORG_OWNER, OrgConfig, SimConfig, SimServer, roles,
};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, Namespace, ObjectReference, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use linktoken_operator::api::LinkToken;
use serde::Serialize;
use testkit::controlplane::{ControlPlane, Options};
use testkit::operator::{OperatorCommand, is_ready};

#[derive(Parser, Debug)]
#[command(name = "bench", about = "LinkToken operator benchmark")]
struct Args {
    /// LinkToken counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    n: Vec<usize>,
    /// atlas-sim latency per link-token call, comma-separated.
    #[arg(long = "latency-ms", value_delimiter = ',', default_value = "0,200")]
    latency_ms: Vec<u64>,
    /// Operator --concurrency values, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8")]
    concurrency: Vec<u16>,
    /// Namespaces the LinkTokens are spread over.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Quiet period after all are Ready, for the steady-state rates.
    #[arg(long = "quiet-secs", default_value_t = 60)]
    quiet_secs: u64,
    /// Give up on a run after this long.
    #[arg(long = "timeout-secs", default_value_t = 1800)]
    timeout_secs: u64,
    /// The operator binary (default: linktoken-operator next to this one; build it with
    /// `cargo build --release -p linktoken-operator`).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// LinkTokens in the calibration phase (the run's N, capped at this); 0 skips it.
    #[arg(long = "calibration-max", default_value_t = 1000)]
    calibration_max: usize,
    /// Status applies per token in the calibration's write mix (the operator's in-flight marker,
    /// then its result).
    #[arg(long = "calibration-status-applies", default_value_t = 2)]
    calibration_status_applies: usize,
    /// LinkTokens in an untimed warm-up of the same write mix before the calibrations: a
    /// fresh API server is slower for its first thousand or so writes, and without a warm-up
    /// the first calibration pays for it (0 skips it).
    #[arg(long = "calibration-warmup", default_value_t = 1000)]
    calibration_warmup: usize,
    /// Also measure two floors: the write mix while a controller's watches are open (one on
    /// the LinkTokens, one on the managed Secrets' metadata), and that plus the two reads this
    /// operator makes per token on purpose (a credentials Secret GET, a dry-run create of the
    /// token Secret before the Atlas call).
    #[arg(long = "calibration-floor")]
    calibration_floor: bool,
    /// After the quiet period, restart the operator and measure the time to all N verified.
    #[arg(long)]
    restart: bool,
}

#[derive(Serialize, Debug, Clone)]
struct RunResult {
    n: usize,
    latency_ms: u64,
    concurrency: u16,
    apply_secs: f64,
    all_ready_secs: f64,
    throughput_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    atlas_calls: u64,
    atlas_calls_per_token: f64,
    atlas_calls_by_status: BTreeMap<String, u64>,
    api_writes: u64,
    api_writes_per_token: f64,
    api_writes_by_resource: BTreeMap<String, u64>,
    api_reads: u64,
    api_reads_per_token: f64,
    api_reads_by_resource: BTreeMap<String, u64>,
    calibration: Option<Calibration>,
    /// throughput_per_sec / calibration.ceiling_per_sec.
    fraction_of_ceiling: Option<f64>,
    /// The write mix with a controller's watches open (`--calibration-floor`), and
    /// throughput_per_sec over it.
    watched: Option<Calibration>,
    fraction_of_watched: Option<f64>,
    /// That plus the credentials GET and the dry-run (`--calibration-floor`), and
    /// throughput_per_sec over it.
    floor: Option<Calibration>,
    fraction_of_floor: Option<f64>,
    restart: Option<Restart>,
    operator_peak_rss_mib: f64,
    operator_cpu_secs: f64,
    /// Control-plane CPU per token from the first create to all Ready (the benchmark's own
    /// creates and watch included), in ms.
    control_plane_cpu_ms_per_token: f64,
    quiet_secs: u64,
    steady_atlas_calls_per_min: f64,
    steady_api_writes_per_min: f64,
}

/// The machine's ceiling: the operator's per-token write mix done by the benchmark itself.
#[derive(Serialize, Debug, Clone)]
struct Calibration {
    n: usize,
    concurrency: u16,
    secs: f64,
    ceiling_per_sec: f64,
    api_writes_per_token: f64,
    api_writes_by_resource: BTreeMap<String, u64>,
    /// Control-plane CPU (etcd, kube-apiserver, kube-controller-manager) per token while the
    /// write mix ran, in ms.
    control_plane_cpu_ms_per_token: f64,
    /// The same while the calibration created its LinkTokens (untimed): about what the
    /// benchmark's own creates cost inside the operator's run.
    create_cpu_ms_per_token: f64,
}

/// A restart with nothing to do.
#[derive(Serialize, Debug, Clone)]
struct Restart {
    /// Process start to "caches synced" in its log.
    caches_synced_secs: f64,
    /// Process start to `linktoken_reconciles_total{result="ready"}` >= N.
    all_verified_secs: f64,
    reconciles_ready: u64,
    /// LinkTokens still Ready at the observedGeneration they had before the restart.
    unchanged: usize,
    atlas_calls: u64,
    api_writes: u64,
    api_writes_by_resource: BTreeMap<String, u64>,
    api_reads: u64,
    api_reads_by_resource: BTreeMap<String, u64>,
    peak_rss_mib: f64,
    cpu_secs: f64,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The pids of etcd, kube-apiserver and kube-controller-manager, set once at start: the
/// control plane's CPU per token is what the operator and the calibration really compete for
/// on a small machine.
static CONTROL_PLANE_PIDS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();

/// CPU seconds (utime + stime) the control plane's processes have used so far.
fn control_plane_cpu_secs() -> f64 {
    CONTROL_PLANE_PIDS
        .get()
        .map_or(0.0, |pids| pids.iter().map(|p| proc_usage(*p).1).sum())
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The control plane is started from the main thread (its children die with the process).
    let t = Instant::now();
    let cp = ControlPlane::start(Options::default())?;
    let _ = CONTROL_PLANE_PIDS.set(cp.pids().into_iter().map(|(_, pid)| pid).collect());
    eprintln!(
        "control plane ready in {:.1}s at {}",
        t.elapsed().as_secs_f64(),
        cp.api_url()
    );
    let operator = match &args.operator {
        Some(p) => p.clone(),
        None => testkit::operator::binary()?,
    };
    let kubeconfig = cp.kubeconfig_path().to_path_buf();
    let result = rt.block_on(run_all(&args, &kubeconfig, &operator));
    drop(cp);
    let results = result?;
    print_table(&results);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

async fn run_all(
    args: &Args,
    kubeconfig: &std::path::Path,
    operator: &std::path::Path,
) -> Result<Vec<RunResult>, Error> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;
    let client = Client::try_from(cfg)?;
    testkit::install_crd(&client, &linktoken_operator::api::crd::crd(), "bench").await?;
    let mut results = Vec::new();
    let mut run_id = 0;
    for &latency in &args.latency_ms {
        for &conc in &args.concurrency {
            for &n in &args.n {
                run_id += 1;
                eprintln!("--- run {run_id}: N={n} latency={latency}ms concurrency={conc}");
                let r = run_one(
                    args, &client, kubeconfig, operator, run_id, n, latency, conc,
                )
                .await?;
                print_table(std::slice::from_ref(&r));
                results.push(r);
            }
        }
    }
    Ok(results)
}

#[allow(clippy::too_many_arguments)]
async fn run_one(
    args: &Args,
    client: &Client,
    kubeconfig: &std::path::Path,
    operator: &std::path::Path,
    run_id: usize,
    n: usize,
    latency_ms: u64,
    concurrency: u16,
) -> Result<RunResult, Error> {
    // The write-mix ceiling, then (with --calibration-floor) the two floors.
    if args.calibration_max > 0 && args.calibration_warmup > 0 {
        let w = calibrate(
            client,
            run_id,
            args.calibration_warmup,
            concurrency,
            args.calibration_status_applies,
            Mix::Warmup,
        )
        .await?;
        eprintln!(
            "  {}: {} tokens in {:.1}s = {:.1} tokens/s",
            Mix::Warmup.what(),
            w.n,
            w.secs,
            w.ceiling_per_sec
        );
    }
    let mut ceilings = Vec::new();
    for mix in [Mix::Bare, Mix::Watched, Mix::ContractFloor] {
        if args.calibration_max == 0 || (mix != Mix::Bare && !args.calibration_floor) {
            ceilings.push(None);
            continue;
        }
        let c = calibrate(
            client,
            run_id,
            n.min(args.calibration_max),
            concurrency,
            args.calibration_status_applies,
            mix,
        )
        .await?;
        eprintln!(
            "  {}: {} tokens in {:.1}s = {:.1} tokens/s",
            mix.what(),
            c.n,
            c.secs,
            c.ceiling_per_sec
        );
        ceilings.push(Some(c));
    }
    let floor = ceilings.pop().flatten();
    let controller_floor = ceilings.pop().flatten();
    let calibration = ceilings.pop().flatten();

    // One org per LinkToken (Atlas keeps one link per org), one API key owning all of them.
    let orgs: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{:024x}",
                0xbe00_0000_0000_u64 + (run_id as u64) * 0x100_0000 + i as u64
            )
        })
        .collect();
    let mut sim_cfg = SimConfig::demo();
    for o in &orgs {
        sim_cfg.orgs.push(OrgConfig::new(o, "bench"));
        sim_cfg.api_keys[0].roles.extend(roles(o, ORG_OWNER));
    }
    let any = "127.0.0.1:0".parse()?;
    let sim = SimServer::start(sim_cfg, any, any).await?;
    if latency_ms > 0 {
        sim.state.add_fault(FaultSpec {
            kind: FaultKind::Latency,
            status: None,
            body: None,
            headers: BTreeMap::new(),
            latency_ms,
            count: None,
            method: None,
            org_id: None,
            target: FaultTarget::LinkTokens,
        })?;
    }

    let namespaces: Vec<String> = (0..args.namespaces)
        .map(|i| format!("bench-{run_id}-{i}"))
        .collect();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    for ns in &namespaces {
        ns_api
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta {
                        name: Some(ns.clone()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await?;
        let creds = Secret {
            metadata: ObjectMeta {
                name: Some("creds".into()),
                ..Default::default()
            },
            data: Some(
                [
                    ("publicApiKey", atlas_sim::config::DEMO_PUBLIC_KEY),
                    ("privateApiKey", atlas_sim::config::DEMO_PRIVATE_KEY),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
            ),
            ..Default::default()
        };
        Api::<Secret>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &creds)
            .await?;
    }

    let watched: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    let mut op = OperatorCommand::new(operator, kubeconfig, &sim.atlas_url, &watched)
        .args([format!("--concurrency={concurrency}")])
        .spawn()?;
    op.wait_for_log("caches synced", Duration::from_secs(60))
        .await?;

    // Watch for Ready before applying anything.
    let label = format!("bench-run={run_id}");
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let lt_all: Api<LinkToken> = Api::all(client.clone());
    // The benchmark's own LISTs and WATCHes, subtracted from the operator's reads.
    let own_lists = Arc::new(AtomicU64::new(0));
    let own_lists_w = own_lists.clone();
    let own_watches = Arc::new(AtomicU64::new(0));
    let own_watches_w = own_watches.clone();
    // A watch (one LIST, then a WATCH resumed from the last version seen), not polling: a
    // poll LISTs every LinkToken each time, which at N=1000 every 250 ms cost the API server
    // about a third of a core during the run (none during the calibration), and its
    // period was the resolution of the reported latencies.
    let watch = tokio::spawn(async move {
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut note = |lt: &LinkToken| {
            if !is_ready(lt) {
                return true;
            }
            let key = format!("{}/{}", lt.namespace().unwrap_or_default(), lt.name_any());
            !(seen.insert(key.clone()) && ready_tx.send((key, Instant::now())).is_err())
        };
        let mut from: Option<String> = None;
        loop {
            let version = match from.take() {
                Some(v) => v,
                None => {
                    let lp = kube::api::ListParams::default().labels(&label);
                    own_lists_w.fetch_add(1, Ordering::Relaxed);
                    match lt_all.list(&lp).await {
                        Ok(list) => {
                            if !list.items.iter().all(&mut note) {
                                return;
                            }
                            list.metadata.resource_version.unwrap_or_default()
                        }
                        Err(e) => {
                            eprintln!("  (listing LinkTokens failed: {e})");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                }
            };
            let wp = kube::api::WatchParams::default()
                .labels(&label)
                .timeout(290);
            own_watches_w.fetch_add(1, Ordering::Relaxed);
            let mut events = match lt_all.watch(&wp, &version).await {
                Ok(events) => events.boxed(),
                Err(e) => {
                    eprintln!("  (watching LinkTokens failed: {e})");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut last = Some(version);
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(kube::api::WatchEvent::Added(lt) | kube::api::WatchEvent::Modified(lt)) => {
                        last = lt.resource_version();
                        if !note(&lt) {
                            return;
                        }
                    }
                    Ok(kube::api::WatchEvent::Deleted(lt)) => last = lt.resource_version(),
                    Ok(kube::api::WatchEvent::Bookmark(b)) => {
                        last = Some(b.metadata.resource_version);
                    }
                    // Too old (410) or another error: list again.
                    Ok(kube::api::WatchEvent::Error(_)) | Err(_) => {
                        last = None;
                        break;
                    }
                }
            }
            from = last;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let lists0 = own_lists.load(Ordering::Relaxed);
    let watches0 = own_watches.load(Ordering::Relaxed);
    let requests0 = api_requests(client).await?;
    let calls0 = sim.state.calls_total();
    let by_status0 = calls_by_status(&sim.state);

    // Apply all at once (64 requests in flight).
    let cp_cpu0 = control_plane_cpu_secs();
    let t0 = Instant::now();
    let applied: HashMap<String, Instant> = futures::stream::iter(0..n)
        .map(|i| {
            let ns = namespaces[i % namespaces.len()].clone();
            let org = orgs[i].clone();
            let client = client.clone();
            async move {
                let name = format!("lt-{i:05}");
                let lt: LinkToken = serde_json::from_value(serde_json::json!({
                    "apiVersion": "atlasmigration.io/v1alpha1", "kind": "LinkToken",
                    "metadata": {"name": name, "labels": {"bench-run": run_id.to_string()}},
                    "spec": {"orgId": org, "accessListIps": ["203.0.113.0/24"],
                        "credentialsSecretRef": {"name": "creds"}}
                }))?;
                Api::<LinkToken>::namespaced(client, &ns)
                    .create(&PostParams::default(), &lt)
                    .await?;
                Ok::<_, Error>((format!("{ns}/{name}"), Instant::now()))
            }
        })
        .buffer_unordered(64)
        .try_collect()
        .await?;
    let apply_secs = t0.elapsed().as_secs_f64();
    eprintln!("  applied {n} in {apply_secs:.1}s");

    let mut ready: HashMap<String, Instant> = HashMap::new();
    let deadline = t0 + Duration::from_secs(args.timeout_secs);
    let mut last_report = Instant::now();
    while ready.len() < n {
        match tokio::time::timeout_at(deadline.into(), ready_rx.recv()).await {
            Ok(Some((k, at))) => {
                ready.entry(k).or_insert(at);
            }
            Ok(None) => return Err("watch ended".into()),
            Err(_) => {
                return Err(format!("timed out: {} of {n} Ready", ready.len()).into());
            }
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {} / {n} Ready after {:.0}s",
                ready.len(),
                t0.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    let cp_cpu = control_plane_cpu_secs() - cp_cpu0;
    let all_ready = ready
        .values()
        .max()
        .map_or(0.0, |t| (*t - t0).as_secs_f64());
    let mut lat: Vec<f64> = ready
        .iter()
        .map(|(k, r)| {
            let a = applied.get(k).copied().unwrap_or(t0);
            r.saturating_duration_since(a).as_secs_f64() * 1000.0
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];

    // Let in-flight writes (events) land, then take the issuing deltas.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lists1 = own_lists.load(Ordering::Relaxed);
    let watches1 = own_watches.load(Ordering::Relaxed);
    let requests1 = api_requests(client).await?;
    let calls1 = sim.state.calls_total();
    let by_status1 = calls_by_status(&sim.state);
    let (rss, cpu) = proc_usage(op.pid());

    let (mut by_resource, mut reads_by_resource) = split(diff(&requests1, &requests0));
    // The benchmark's own writes: one LinkToken create each.
    if let Some(v) = by_resource.get_mut("POST linktokens") {
        *v = v.saturating_sub(n as u64);
    }
    by_resource.retain(|_, v| *v > 0);
    let api_total: u64 = by_resource.values().sum();
    // The benchmark's own reads: its LISTs and WATCHes of LinkTokens (across namespaces).
    if let Some(v) = reads_by_resource.get_mut("LIST linktokens") {
        *v = v.saturating_sub(lists1 - lists0);
    }
    if let Some(v) = reads_by_resource.get_mut("WATCH linktokens") {
        *v = v.saturating_sub(watches1 - watches0);
    }
    reads_by_resource.retain(|_, v| *v > 0);
    let reads_total: u64 = reads_by_resource.values().sum();
    let atlas_calls = calls1 - calls0;

    // Steady state.
    let quiet = Duration::from_secs(args.quiet_secs);
    tokio::time::sleep(quiet).await;
    let requests2 = api_requests(client).await?;
    let calls2 = sim.state.calls_total();
    let quiet_writes: u64 = split(diff(&requests2, &requests1)).0.values().sum();
    let per_min = |x: u64| x as f64 * 60.0 / quiet.as_secs_f64().max(1.0);
    let (rss2, cpu2) = proc_usage(op.pid());
    op.kill();
    // The watch stops before a restart, so the restart's reads are the operator's only.
    watch.abort();

    let restart = if args.restart {
        let r = restart_phase(
            args,
            client,
            kubeconfig,
            operator,
            &sim,
            &watched,
            run_id,
            n,
            concurrency,
        )
        .await?;
        eprintln!(
            "  restart: all {n} verified {:.1}s after start ({} unchanged), {} Atlas calls, {} API writes, {} reads",
            r.all_verified_secs, r.unchanged, r.atlas_calls, r.api_writes, r.api_reads
        );
        Some(r)
    } else {
        None
    };
    sim.shutdown().await;
    let throughput = n as f64 / all_ready.max(1e-9);

    Ok(RunResult {
        n,
        latency_ms,
        concurrency,
        apply_secs,
        all_ready_secs: all_ready,
        throughput_per_sec: throughput,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
        atlas_calls,
        atlas_calls_per_token: atlas_calls as f64 / n as f64,
        atlas_calls_by_status: diff(&by_status1, &by_status0),
        api_writes: api_total,
        api_writes_per_token: api_total as f64 / n as f64,
        api_writes_by_resource: by_resource,
        api_reads: reads_total,
        api_reads_per_token: reads_total as f64 / n as f64,
        api_reads_by_resource: reads_by_resource,
        fraction_of_ceiling: calibration
            .as_ref()
            .map(|c| throughput / c.ceiling_per_sec.max(1e-9)),
        calibration,
        fraction_of_watched: controller_floor
            .as_ref()
            .map(|c| throughput / c.ceiling_per_sec.max(1e-9)),
        watched: controller_floor,
        fraction_of_floor: floor
            .as_ref()
            .map(|c| throughput / c.ceiling_per_sec.max(1e-9)),
        floor,
        restart,
        operator_peak_rss_mib: rss.max(rss2),
        operator_cpu_secs: cpu.max(cpu2),
        control_plane_cpu_ms_per_token: cp_cpu * 1000.0 / n as f64,
        quiet_secs: args.quiet_secs,
        steady_atlas_calls_per_min: per_min(calls2 - calls1),
        steady_api_writes_per_min: per_min(quiet_writes),
    })
}

/// Peak RSS (MiB, VmHWM) and CPU seconds (utime + stime) of a process.
fn proc_usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the command name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (rss_kib / 1024.0, (ticks(11) + ticks(12)) / hz.max(1.0))
}

const READ_VERBS: [&str; 3] = ["GET", "LIST", "WATCH"];

/// `apiserver_request_total` requests ("VERB resource[/subresource]" -> count): writes to the
/// resources the operator writes (linktokens (+status), secrets, events), and reads (GET, LIST,
/// WATCH) of those and of leases. A WATCH is counted by kube-apiserver when it ends, so watches
/// still open at the end of a window are not in its delta.
async fn api_requests(client: &Client) -> Result<BTreeMap<String, u64>, Error> {
    let req = axum::http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let l = parse_labels(labels);
        let verb = l.get("verb").map(String::as_str).unwrap_or("");
        let resource = l.get("resource").map(String::as_str).unwrap_or("");
        let write = matches!(
            verb,
            "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION"
        );
        let wanted = if write {
            matches!(resource, "linktokens" | "secrets" | "events")
        } else {
            READ_VERBS.contains(&verb)
                && matches!(resource, "linktokens" | "secrets" | "leases" | "events")
        };
        if !wanted {
            continue;
        }
        let sub = l.get("subresource").map(String::as_str).unwrap_or("");
        let key = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        let v: f64 = value.trim().parse().unwrap_or(0.0);
        *out.entry(key).or_insert(0) += v as u64;
    }
    Ok(out)
}

/// (writes, reads) of an `api_requests` map.
fn split(m: BTreeMap<String, u64>) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    m.into_iter().partition(|(k, _)| {
        !READ_VERBS
            .iter()
            .any(|v| k.split_whitespace().next() == Some(v))
    })
}

/// What a calibration performs per token on top of the operator's write mix.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mix {
    /// The write mix alone, untimed, before the others.
    Warmup,
    /// The write mix alone: the machine's ceiling.
    Bare,
    /// The write mix while a controller's watches are open: one on the LinkTokens and one on
    /// the managed Secrets' metadata.
    Watched,
    /// That plus the two reads this operator makes per token on purpose: the credentials
    /// Secret GET (never cached: docs/security.md) and the dry-run create of the token Secret
    /// before the Atlas call.
    ContractFloor,
}

impl Mix {
    fn what(self) -> &'static str {
        match self {
            Mix::Warmup => "warm-up (write mix, not counted)",
            Mix::Bare => "ceiling (write mix)",
            Mix::Watched => "controller floor (plus its watches)",
            Mix::ContractFloor => "contract floor (plus credentials GET and dry-run)",
        }
    }

    fn namespace_prefix(self) -> &'static str {
        match self {
            Mix::Warmup => "bench-warmup",
            Mix::Bare => "bench-cal",
            Mix::Watched => "bench-watched",
            Mix::ContractFloor => "bench-floor",
        }
    }

    /// A controller's watches.
    fn controller(self) -> bool {
        matches!(self, Mix::Watched | Mix::ContractFloor)
    }

    /// The credentials GET and the dry-run create.
    fn reads(self) -> bool {
        self == Mix::ContractFloor
    }
}

/// The operator's per-token write mix, with no operator, at `concurrency` tokens at a time:
/// finalizer merge patch, status server-side apply (the in-flight marker), Secret create,
/// status apply (the result), one event. The LinkTokens are created first, untimed, in a
/// namespace of their own that no operator watches.
async fn calibrate(
    client: &Client,
    run_id: usize,
    n: usize,
    concurrency: u16,
    status_applies: usize,
    mix: Mix,
) -> Result<Calibration, Error> {
    let ns = format!("{}-{run_id}", mix.namespace_prefix());
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    let lts: Api<LinkToken> = Api::namespaced(client.clone(), &ns);
    if mix.reads() {
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(
                &PostParams::default(),
                &Secret {
                    metadata: ObjectMeta {
                        name: Some("creds".into()),
                        ..Default::default()
                    },
                    string_data: Some(
                        [("publicApiKey", "floor"), ("privateApiKey", "floor")]
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    ),
                    ..Default::default()
                },
            )
            .await?;
    }
    let create_cpu0 = control_plane_cpu_secs();
    let created: Vec<LinkToken> = futures::stream::iter(0..n)
        .map(|i| {
            let lts = lts.clone();
            async move {
                let name = format!("cal-{i:05}");
                let lt: LinkToken = serde_json::from_value(serde_json::json!({
                    "apiVersion": "atlasmigration.io/v1alpha1", "kind": "LinkToken",
                    "metadata": {"name": name},
                    "spec": {"orgId": format!("{:024x}", i), "accessListIps": ["203.0.113.0/24"],
                        "credentialsSecretRef": {"name": "creds"}}
                }))?;
                Ok::<_, Error>(lts.create(&PostParams::default(), &lt).await?)
            }
        })
        .buffer_unordered(64)
        .try_collect()
        .await?;

    let create_cpu = control_plane_cpu_secs() - create_cpu0;
    let watches = if mix.controller() {
        Some(controller_watches(client, &ns).await?)
    } else {
        None
    };
    let requests0 = api_requests(client).await?;
    let cpu0 = control_plane_cpu_secs();
    let t0 = Instant::now();
    futures::stream::iter(created)
        .map(|lt| {
            let client = client.clone();
            let ns = ns.clone();
            async move { calibrate_one(&client, &ns, lt, status_applies, mix).await }
        })
        .buffer_unordered(usize::from(concurrency.max(1)))
        .try_collect::<Vec<()>>()
        .await?;
    let secs = t0.elapsed().as_secs_f64();
    let mix_cpu = control_plane_cpu_secs() - cpu0;
    if let Some(w) = watches {
        w.abort();
    }
    // Let in-flight requests be counted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let requests1 = api_requests(client).await?;
    let (writes, _) = split(diff(&requests1, &requests0));
    let total: u64 = writes.values().sum();
    Ok(Calibration {
        n,
        concurrency,
        secs,
        ceiling_per_sec: n as f64 / secs.max(1e-9),
        api_writes_per_token: total as f64 / n.max(1) as f64,
        api_writes_by_resource: writes,
        control_plane_cpu_ms_per_token: mix_cpu * 1000.0 / n.max(1) as f64,
        create_cpu_ms_per_token: create_cpu * 1000.0 / n.max(1) as f64,
    })
}

/// The watches a controller of this contract holds while it works: its LinkTokens (whole
/// objects) and the metadata of the Secrets it manages, from the current version on, drained
/// until aborted.
async fn controller_watches(
    client: &Client,
    ns: &str,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let lts: Api<LinkToken> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let lp = kube::api::ListParams::default().limit(1);
    let lt_version = lts
        .list_metadata(&lp)
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let selector = linktoken_operator::controller::secret::managed_selector();
    let secret_version = secrets
        .list_metadata(&lp.clone().labels(&selector))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let wp = kube::api::WatchParams::default().timeout(290);
    let lt_events = lts.watch(&wp, &lt_version).await?;
    let secret_events = secrets
        .watch_metadata(&wp.clone().labels(&selector), &secret_version)
        .await?;
    Ok(tokio::spawn(async move {
        let a = lt_events.for_each(|_| async {});
        let b = secret_events.for_each(|_| async {});
        futures::join!(a, b);
    }))
}

/// One token's writes, as the operator makes them: the same finalizer patch (with its
/// resourceVersion), the same status objects (built by the operator's own `with_outcome`:
/// three conditions, the in-flight marker, then issuedFor), the same Secret (built by
/// `DesiredSecret`: labels, annotations, ownerReference), then an event.
async fn calibrate_one(
    client: &Client,
    ns: &str,
    lt: LinkToken,
    status_applies: usize,
    mix: Mix,
) -> Result<(), Error> {
    use linktoken_operator::api::{InFlight, IssuedFor, LinkTokenStatus, Reason};
    use linktoken_operator::controller::decide::{IssueWhy, access_list_sha256};
    use linktoken_operator::controller::report::{now_rfc3339, with_outcome};
    use linktoken_operator::controller::secret::{DesiredSecret, FIELD_MANAGER, token_sha256};

    let name = lt.name_any();
    let lts: Api<LinkToken> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let finalizer_patch = Patch::Merge(serde_json::json!({
        "metadata": {
            "finalizers": [linktoken_operator::api::FINALIZER],
            "resourceVersion": lt.resource_version(),
        }
    }));
    let merge = PatchParams::default();
    let finalizer = lts.patch(&name, &merge, &finalizer_patch);
    let mut lt = if mix.reads() {
        // The credentials are read on each reconcile, alongside the finalizer patch.
        futures::try_join!(finalizer, secrets.get("creds"))?.0
    } else {
        finalizer.await?
    };
    let grace = Duration::from_secs(60);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let apply_status = |lt: &LinkToken, status: &LinkTokenStatus| {
        serde_json::json!({
            "apiVersion": "atlasmigration.io/v1alpha1", "kind": "LinkToken",
            "metadata": {"resourceVersion": lt.resource_version()},
            "status": status,
        })
    };
    let attempt_id = hex::encode(rand::random::<[u8; 16]>());
    let mut status = LinkTokenStatus {
        in_flight: Some(InFlight {
            org_id: lt.spec.org_id.clone(),
            started_at: now_rfc3339(),
            attempt_id: Some(attempt_id.clone()),
            access_list_sha256: Some(access_list_sha256(&lt.spec.access_list_ips)),
            rotate: None,
        }),
        ..Default::default()
    };
    for _ in 0..status_applies.saturating_sub(1) {
        let marked = with_outcome(
            &lt,
            status.clone(),
            Reason::Issuing,
            IssueWhy::NoToken.describe(),
            grace,
        );
        lt = lts
            .patch_status(&name, &pp, &Patch::Apply(apply_status(&lt, &marked)))
            .await?;
        status = marked;
    }
    // A token of Atlas's length; never a real one.
    let token = [b'c'; 53];
    let issued_at = now_rfc3339();
    let secret_name = format!("{name}-token");
    let owner = lt
        .controller_owner_ref(&())
        .ok_or("a created LinkToken without uid")?;
    let secret = DesiredSecret {
        name: &secret_name,
        namespace: ns,
        key: lt.spec.token_secret_key(),
        token: &token,
        org_id: &lt.spec.org_id,
        issued_at: &issued_at,
        linktoken_name: &name,
        owner,
        user_labels: None,
        user_annotations: None,
        attempt_id: Some(&attempt_id),
    }
    .build();
    let create = |dry_run: bool| PostParams {
        dry_run,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    if mix.reads() {
        // Would the API server take the Secret? Asked before the Atlas call.
        secrets.create(&create(true), &secret).await?;
    }
    secrets.create(&create(false), &secret).await?;
    if status_applies > 0 {
        status.in_flight = None;
        status.token_secret_name = Some(secret_name.clone());
        status.issued_at = Some(issued_at.clone());
        status.issued_for = Some(IssuedFor {
            org_id: lt.spec.org_id.clone(),
            access_list_ips: lt.spec.access_list_ips.clone(),
            rotate: None,
            token_sha256: Some(token_sha256(&token)),
        });
        let ready = with_outcome(
            &lt,
            status,
            Reason::TokenIssued,
            "the token Secret holds a link token issued for the current spec",
            grace,
        );
        lts.patch_status(&name, &pp, &Patch::Apply(apply_status(&lt, &ready)))
            .await?;
    }
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("atlasmigration.io/v1alpha1".into()),
            kind: Some("LinkToken".into()),
            name: Some(name.clone()),
            namespace: Some(ns.into()),
            uid: lt.metadata.uid.clone(),
            ..Default::default()
        },
        reason: Some("TokenIssued".into()),
        message: Some("issued a link token for org in the calibration".into()),
        type_: Some("Normal".into()),
        reporting_component: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    Api::<Event>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &event)
        .await?;
    Ok(())
}

/// Kills nothing itself: the previous operator is already gone. Starts a new one over the N
/// Ready LinkTokens and measures what it costs to verify them.
#[allow(clippy::too_many_arguments)]
async fn restart_phase(
    args: &Args,
    client: &Client,
    kubeconfig: &std::path::Path,
    operator: &std::path::Path,
    sim: &atlas_sim::SimHandle,
    watched: &[&str],
    run_id: usize,
    n: usize,
    concurrency: u16,
) -> Result<Restart, Error> {
    let lt_all: Api<LinkToken> = Api::all(client.clone());
    let lp = kube::api::ListParams::default().labels(&format!("bench-run={run_id}"));
    let before = ready_generations(&lt_all.list(&lp).await?.items);
    let requests0 = api_requests(client).await?;
    let calls0 = sim.state.calls_total();

    let t0 = Instant::now();
    let mut op = OperatorCommand::new(operator, kubeconfig, &sim.atlas_url, watched)
        .args([format!("--concurrency={concurrency}")])
        .spawn()?;
    let log = op.log.clone();
    let addr =
        tokio::task::spawn_blocking(move || testkit::operator::logged_endpoint(&log, "metrics"))
            .await??;
    op.wait_for_log("caches synced", Duration::from_secs(args.timeout_secs))
        .await?;
    let caches_synced_secs = t0.elapsed().as_secs_f64();
    let deadline = t0 + Duration::from_secs(args.timeout_secs);
    let mut reconciles_ready = 0;
    let mut rss_cpu = (0.0, 0.0);
    while reconciles_ready < n as u64 {
        if Instant::now() > deadline {
            return Err(format!("restart: {reconciles_ready} of {n} verified").into());
        }
        rss_cpu = proc_usage(op.pid());
        let a = addr.clone();
        let text = tokio::task::spawn_blocking(move || scrape(&a)).await??;
        reconciles_ready = metric_value(&text, r#"linktoken_reconciles_total{result="ready"}"#);
        if reconciles_ready < n as u64 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let all_verified_secs = t0.elapsed().as_secs_f64();
    // Let any write the new process would make land before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests1 = api_requests(client).await?;
    let calls1 = sim.state.calls_total();
    let after = ready_generations(&lt_all.list(&lp).await?.items);
    let (rss, cpu) = proc_usage(op.pid());
    op.kill();
    let unchanged = before
        .iter()
        .filter(|(k, g)| after.get(*k) == Some(*g))
        .count();
    let (writes, mut reads) = split(diff(&requests1, &requests0));
    // The benchmark's own two LISTs (before and after).
    if let Some(v) = reads.get_mut("LIST linktokens") {
        *v = v.saturating_sub(2);
    }
    reads.retain(|_, v| *v > 0);
    Ok(Restart {
        caches_synced_secs,
        all_verified_secs,
        reconciles_ready,
        unchanged,
        atlas_calls: calls1 - calls0,
        api_writes: writes.values().sum(),
        api_writes_by_resource: writes,
        api_reads: reads.values().sum(),
        api_reads_by_resource: reads,
        peak_rss_mib: rss.max(rss_cpu.0),
        cpu_secs: cpu.max(rss_cpu.1),
    })
}

/// "namespace/name" -> observedGeneration of each Ready LinkToken.
fn ready_generations(items: &[LinkToken]) -> BTreeMap<String, i64> {
    items
        .iter()
        .filter(|lt| is_ready(lt))
        .map(|lt| {
            (
                format!("{}/{}", lt.namespace().unwrap_or_default(), lt.name_any()),
                lt.status
                    .as_ref()
                    .and_then(|s| s.observed_generation)
                    .unwrap_or(-1),
            )
        })
        .collect()
}

/// GET http://{addr}/metrics (plain HTTP/1.0 on loopback: no client library needed).
fn scrape(addr: &str) -> Result<String, Error> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The value of the sample line starting with `series` (exact labels), 0 when absent.
fn metric_value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn parse_labels(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for part in s.split("\",") {
        if let Some((k, v)) = part.split_once("=\"") {
            out.insert(k.trim().to_string(), v.trim_end_matches('"').to_string());
        }
    }
    out
}

fn calls_by_status(state: &atlas_sim::SimState) -> BTreeMap<String, u64> {
    let snap = serde_json::to_value(state.snapshot()).unwrap_or_default();
    let mut out = BTreeMap::new();
    if let Some(calls) = snap.get("calls").and_then(|c| c.as_array()) {
        for c in calls {
            let key = format!(
                "{} {} {}",
                c.get("method").and_then(|v| v.as_str()).unwrap_or(""),
                c.get("kind").and_then(|v| v.as_str()).unwrap_or(""),
                c.get("status").and_then(|v| v.as_u64()).unwrap_or(0)
            );
            let n = c.get("count").and_then(|v| v.as_u64()).unwrap_or(0);
            *out.entry(key).or_insert(0) += n;
        }
    }
    out
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn print_table(rs: &[RunResult]) {
    println!(
        "{:>6} {:>7} {:>5} {:>9} {:>9} {:>9} {:>6} {:>9} {:>9} {:>11} {:>10} {:>9} {:>8} {:>9} {:>13} {:>13}",
        "N",
        "lat_ms",
        "conc",
        "ready_s",
        "tok/s",
        "ceil/s",
        "frac",
        "p50_ms",
        "p99_ms",
        "atlas/tok",
        "writes/tok",
        "reads/tok",
        "rss_MiB",
        "cpu_s",
        "idle_atl/min",
        "idle_wr/min"
    );
    for r in rs {
        println!(
            "{:>6} {:>7} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>6.2} {:>9.0} {:>9.0} {:>11.2} {:>10.2} {:>9.2} {:>8.1} {:>9.1} {:>13.1} {:>13.1}",
            r.n,
            r.latency_ms,
            r.concurrency,
            r.all_ready_secs,
            r.throughput_per_sec,
            r.calibration
                .as_ref()
                .map_or(f64::NAN, |c| c.ceiling_per_sec),
            r.fraction_of_ceiling.unwrap_or(f64::NAN),
            r.p50_ms,
            r.p99_ms,
            r.atlas_calls_per_token,
            r.api_writes_per_token,
            r.api_reads_per_token,
            r.operator_peak_rss_mib,
            r.operator_cpu_secs,
            r.steady_atlas_calls_per_min,
            r.steady_api_writes_per_min
        );
    }
    for r in rs {
        println!(
            "  N={} writes: {:?}; reads: {:?}",
            r.n, r.api_writes_by_resource, r.api_reads_by_resource
        );
        if let Some(c) = &r.calibration {
            println!(
                "  N={} ceiling: {} tokens' write mix at concurrency {} in {:.1}s = {:.1} tokens/s ({:.2} writes/token: {:?})",
                r.n,
                c.n,
                c.concurrency,
                c.secs,
                c.ceiling_per_sec,
                c.api_writes_per_token,
                c.api_writes_by_resource
            );
            for (mix, f, frac) in [
                (Mix::Watched, &r.watched, r.fraction_of_watched),
                (Mix::ContractFloor, &r.floor, r.fraction_of_floor),
            ] {
                let (Some(f), Some(frac)) = (f, frac) else {
                    continue;
                };
                println!(
                    "  N={} {}: {} tokens at concurrency {} in {:.1}s = {:.1} tokens/s = {:.2} of the ceiling ({:.2} writes/token, control-plane CPU {:.1} ms/token); the operator reaches {:.2} of it",
                    r.n,
                    mix.what(),
                    f.n,
                    f.concurrency,
                    f.secs,
                    f.ceiling_per_sec,
                    f.ceiling_per_sec / c.ceiling_per_sec.max(1e-9),
                    f.api_writes_per_token,
                    f.control_plane_cpu_ms_per_token,
                    frac
                );
            }
            println!(
                "  N={} control-plane CPU per token: calibration mix {:.1} ms (+ {:.1} ms per LinkToken create); operator run {:.1} ms (creates and the benchmark's watch included), operator {:.1} ms",
                r.n,
                c.control_plane_cpu_ms_per_token,
                c.create_cpu_ms_per_token,
                r.control_plane_cpu_ms_per_token,
                r.operator_cpu_secs * 1000.0 / r.n as f64
            );
        }
        if let Some(x) = &r.restart {
            println!(
                "  N={} restart: caches synced {:.1}s, all {} verified {:.1}s after process start ({} unchanged); Atlas calls {}, API writes {} {:?}, reads {} {:?}; peak RSS {:.1} MiB, CPU {:.1}s",
                r.n,
                x.caches_synced_secs,
                x.reconciles_ready,
                x.all_verified_secs,
                x.unchanged,
                x.atlas_calls,
                x.api_writes,
                x.api_writes_by_resource,
                x.api_reads,
                x.api_reads_by_resource,
                x.peak_rss_mib,
                x.cpu_secs
            );
        }
    }
}
