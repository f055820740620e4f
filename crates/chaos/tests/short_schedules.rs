//! CI's chaos: a few short schedules (two fixed seeds and one random seed, printed) against the
//! real control plane, atlas-sim and two operator replicas. Fails on any violation, and under
//! CI=true when the control plane or the operator binary is missing. Long schedules: README.
use std::time::Duration;

use chaos::schedule::Shape;

/// Seeds that must always pass (a seed that once found a violation gets its own named test).
const FIXED: [u64; 2] = [1, 20261130];

/// Runs `seed` for `duration` on this process's control plane; None when skipped.
async fn run_seed(seed: u64, duration: Duration, plant: bool) -> Option<chaos::Outcome> {
    let c = testkit::cluster().await?;
    let binary = match testkit::operator::binary() {
        Ok(b) => b,
        Err(e) if testkit::in_ci() => panic!("CI=true and {e}"),
        Err(e) => {
            eprintln!("\n!!!!!!!! SKIPPED: {e}\n");
            return None;
        }
    };
    let cfg = chaos::Config {
        seed,
        duration,
        shape: Shape::short(3),
        kubeconfig: c.kubeconfig.clone(),
        operator_binary: binary,
        plane: chaos::Plane::TestKit,
        settle_timeout: Duration::from_secs(120),
        probe_timeout: Duration::from_secs(60),
        verbose: false,
        plant_violation: plant,
    };
    let outcome = chaos::run(cfg)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    eprintln!(
        "seed {seed}: {} rounds, {} steps in {:.0}s",
        outcome.rounds,
        outcome.steps,
        outcome.elapsed.as_secs_f64()
    );
    Some(outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_chaos_schedules_break_no_invariant() {
    testkit::require_cluster!();
    let random = rand::random::<u64>();
    eprintln!(
        "chaos: this run's random seed is {random} (replay: cargo run -p chaos -- --seed {random} --duration 30s --workers 3 --short)"
    );
    for seed in FIXED.into_iter().chain([random]) {
        let Some(outcome) = run_seed(seed, Duration::from_secs(30), false).await else {
            return;
        };
        if let Some(report) = outcome.violation {
            panic!("seed {seed} broke an invariant:{report}");
        }
    }
}

/// The checker is not blind: a foreign Secret given the operator's label is reported, with the
/// seed and the schedule, and the run stops there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_violation_is_reported_with_its_seed() {
    testkit::require_cluster!();
    let Some(outcome) = run_seed(77, Duration::from_secs(20), true).await else {
        return;
    };
    let report = outcome
        .violation
        .expect("the planted violation is reported");
    assert!(report.contains("foreign-secret-untouched"), "{report}");
    assert!(report.contains("seed 77"), "{report}");
    assert!(
        report.contains("planted"),
        "the schedule so far is printed: {report}"
    );
    assert_eq!(outcome.steps, 0, "the run stops at the violation");
}
