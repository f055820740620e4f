//! `chaos --seed S --duration D [--workers N]`: starts a control plane of its own, atlas-sim
//! and two operator replicas, applies the seeded schedule for D, and exits 1 on the first
//! violation (after printing the seed, the schedule so far and the org's Atlas calls).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use testkit::controlplane::{ControlPlane, Options};

#[derive(Parser)]
#[command(about = "Seeded chaos schedules against the operator, with an invariant checker")]
struct Args {
    /// The schedule's seed [default: a random one, printed].
    #[arg(long)]
    seed: Option<u64>,
    /// How long to run (rounds are finished): e.g. 90s, 30m, 2h.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    duration: Duration,
    /// LinkToken slots per namespace (two namespaces, three orgs).
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// No kube-apiserver / etcd restarts.
    #[arg(long)]
    no_control_plane_restarts: bool,
    /// CI's short rounds (fewer steps, shorter pauses, no control-plane restarts): replays a
    /// seed that the short_schedules test reported.
    #[arg(long)]
    short: bool,
    /// Print every step as it runs.
    #[arg(long, short)]
    verbose: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("bad duration unit in {s} (s, m, h)")),
    };
    Ok(Duration::from_secs(secs))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    let binary = match testkit::operator::binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let cp = match ControlPlane::start(Options::default()) {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("chaos: control plane: {e}");
            return ExitCode::from(2);
        }
    };
    let kubeconfig = cp.kubeconfig_path().to_path_buf();
    let plane = Arc::new(Mutex::new(cp));
    let mut shape = if args.short {
        chaos::schedule::Shape::short(args.workers)
    } else {
        chaos::schedule::Shape::long(args.workers)
    };
    shape.control_plane_restarts &= !args.no_control_plane_restarts;
    let cfg = chaos::Config {
        seed,
        duration: args.duration,
        shape,
        kubeconfig,
        operator_binary: binary,
        plane: chaos::Plane::Own(plane.clone()),
        settle_timeout: Duration::from_secs(150),
        probe_timeout: Duration::from_secs(60),
        verbose: args.verbose,
        plant_violation: false,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(chaos::run(cfg));
    drop(rt);
    plane.lock().unwrap_or_else(|p| p.into_inner()).stop(false);
    match result {
        Ok(o) => {
            eprintln!(
                "chaos: seed {} ran {:.0}s, {} rounds, {} steps: {}",
                o.seed,
                o.elapsed.as_secs_f64(),
                o.rounds,
                o.steps,
                if o.violation.is_some() {
                    "VIOLATION"
                } else {
                    "no violation"
                }
            );
            if o.violation.is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("chaos: seed {seed}: {e}");
            ExitCode::from(2)
        }
    }
}
