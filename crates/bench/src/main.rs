//! Benchmark: N LinkTokens applied at once on a real control plane, with atlas-sim in this
//! process and the release operator binary as its own process.
//!
//! `cargo build --release -p linktoken-operator && cargo run --release -p bench -- [--n 100,1000,5000] [--latency-ms 0,200]
//!  [--concurrency 8] [--quiet-secs 60] [--json out.json]`
//!
//! For each (latency, concurrency, N): time until all are Ready, throughput, p50/p99
//! apply-to-Ready latency, Atlas calls per token, Kubernetes API writes per token (deltas of
//! kube-apiserver's `apiserver_request_total` for linktokens, secrets and events, minus the
//! benchmark's own LinkToken creates), operator peak RSS and CPU seconds, then Atlas calls and
//! API writes per minute over a quiet period once everything is Ready.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use atlas_sim::{
    FaultKind, FaultSpec, FaultTarget, ORG_OWNER, OrgConfig, SimConfig, SimServer, roles,
};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
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
    operator_peak_rss_mib: f64,
    operator_cpu_secs: f64,
    quiet_secs: u64,
    steady_atlas_calls_per_min: f64,
    steady_api_writes_per_min: f64,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The control plane is started from the main thread (its children die with the process).
    let t = Instant::now();
    let cp = ControlPlane::start(Options::default())?;
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
    // Polls (list by label) rather than watches: simple, and its resolution (below) is part
    // of the reported latency.
    let poll_every = if n > 1000 {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(250)
    };
    let watch = tokio::spawn(async move {
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        loop {
            let lp = kube::api::ListParams::default().labels(&label);
            let listed = lt_all.list(&lp).await;
            if let Err(e) = &listed {
                eprintln!("  (listing LinkTokens failed: {e})");
            }
            if let Ok(list) = listed {
                if std::env::var_os("BENCH_DEBUG").is_some() {
                    eprintln!(
                        "  poll: {} listed, {} ready",
                        list.items.len(),
                        list.items.iter().filter(|l| is_ready(l)).count()
                    );
                }
                let now = Instant::now();
                for lt in list.items.iter().filter(|lt| is_ready(lt)) {
                    let key = format!("{}/{}", lt.namespace().unwrap_or_default(), lt.name_any());
                    if seen.insert(key.clone()) && ready_tx.send((key, now)).is_err() {
                        return;
                    }
                }
            }
            tokio::time::sleep(poll_every).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let writes0 = api_writes(client).await?;
    let calls0 = sim.state.calls_total();
    let by_status0 = calls_by_status(&sim.state);

    // Apply all at once (64 requests in flight).
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
    let writes1 = api_writes(client).await?;
    let calls1 = sim.state.calls_total();
    let by_status1 = calls_by_status(&sim.state);
    let (rss, cpu) = proc_usage(op.pid());

    let mut by_resource = diff(&writes1, &writes0);
    // The benchmark's own writes: one LinkToken create each.
    if let Some(v) = by_resource.get_mut("POST linktokens") {
        *v = v.saturating_sub(n as u64);
    }
    by_resource.retain(|_, v| *v > 0);
    let api_total: u64 = by_resource.values().sum();
    let atlas_calls = calls1 - calls0;

    // Steady state.
    let quiet = Duration::from_secs(args.quiet_secs);
    tokio::time::sleep(quiet).await;
    let writes2 = api_writes(client).await?;
    let calls2 = sim.state.calls_total();
    let quiet_writes: u64 = diff(&writes2, &writes1).values().sum();
    let per_min = |x: u64| x as f64 * 60.0 / quiet.as_secs_f64().max(1.0);
    let (rss2, cpu2) = proc_usage(op.pid());

    op.kill();
    watch.abort();
    sim.shutdown().await;

    Ok(RunResult {
        n,
        latency_ms,
        concurrency,
        apply_secs,
        all_ready_secs: all_ready,
        throughput_per_sec: n as f64 / all_ready.max(1e-9),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
        atlas_calls,
        atlas_calls_per_token: atlas_calls as f64 / n as f64,
        atlas_calls_by_status: diff(&by_status1, &by_status0),
        api_writes: api_total,
        api_writes_per_token: api_total as f64 / n as f64,
        api_writes_by_resource: by_resource,
        operator_peak_rss_mib: rss.max(rss2),
        operator_cpu_secs: cpu.max(cpu2),
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

/// `apiserver_request_total` write requests ("VERB resource[/subresource]" -> count) for the
/// resources the operator writes: linktokens (+status), secrets and events.
async fn api_writes(client: &Client) -> Result<BTreeMap<String, u64>, Error> {
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
        if !matches!(
            verb,
            "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION"
        ) {
            continue;
        }
        let resource = l.get("resource").map(String::as_str).unwrap_or("");
        if !matches!(resource, "linktokens" | "secrets" | "events") {
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
        "{:>6} {:>7} {:>5} {:>9} {:>9} {:>9} {:>9} {:>11} {:>10} {:>8} {:>9} {:>13} {:>13}",
        "N",
        "lat_ms",
        "conc",
        "ready_s",
        "tok/s",
        "p50_ms",
        "p99_ms",
        "atlas/tok",
        "writes/tok",
        "rss_MiB",
        "cpu_s",
        "idle_atl/min",
        "idle_wr/min"
    );
    for r in rs {
        println!(
            "{:>6} {:>7} {:>5} {:>9.1} {:>9.1} {:>9.0} {:>9.0} {:>11.2} {:>10.2} {:>8.1} {:>9.1} {:>13.1} {:>13.1}",
            r.n,
            r.latency_ms,
            r.concurrency,
            r.all_ready_secs,
            r.throughput_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.atlas_calls_per_token,
            r.api_writes_per_token,
            r.operator_peak_rss_mib,
            r.operator_cpu_secs,
            r.steady_atlas_calls_per_min,
            r.steady_api_writes_per_min
        );
    }
}
