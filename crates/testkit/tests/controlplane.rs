//! The harness is real: garbage collection and namespace deletion are done by a real
//! kube-controller-manager, and a killed test process leaves no control plane behind.
use testkit::require_cluster;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use testkit::controlplane::{process, sweep};

#[tokio::test]
async fn garbage_collector_and_namespace_controller_run() {
    let c = require_cluster!();
    let client = c.client().await;
    let ns = c.namespace("harness").await;

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([("k".into(), "v".into())])),
                ..Default::default()
            },
        )
        .await
        .expect("create owner");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("dependent".into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "ConfigMap".into(),
                        name: "owner".into(),
                        uid: owner.metadata.uid.clone().expect("uid"),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create dependent");

    cms.delete("owner", &DeleteParams::default())
        .await
        .expect("delete owner");
    testkit::eventually(
        Duration::from_secs(60),
        "dependent Secret garbage-collected",
        || async {
            secrets
                .get_opt("dependent")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;

    let namespaces: Api<Namespace> = Api::all(client);
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
    testkit::eventually(Duration::from_secs(90), "namespace deleted", || async {
        namespaces.get_opt(&ns).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// A `controlplane run` killed with SIGKILL takes etcd, kube-apiserver and
/// kube-controller-manager with it (parent-death signal), and the sweep at the next start
/// finds nothing left to kill.
#[tokio::test]
async fn sigkilled_owner_leaves_no_control_plane_behind() {
    // Only the binaries are needed here, not the shared cluster; but honour the CI rule.
    let Some(_c) = testkit::cluster().await else {
        return;
    };
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("run");
    let mut runner = Command::new(env!("CARGO_BIN_EXE_controlplane"))
        .arg("run")
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn controlplane run");
    let start = Instant::now();
    while !dir.join("ready").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "second control plane not ready"
        );
        assert!(
            runner.try_wait().expect("wait").is_none(),
            "runner exited early"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pids = process::recorded_pids(&dir.join("pids"));
    assert_eq!(
        pids.len(),
        3,
        "etcd, kube-apiserver and kube-controller-manager recorded"
    );
    assert!(pids.iter().all(|p| process::pid_alive(*p)));

    runner.kill().expect("SIGKILL the runner");
    runner.wait().expect("reap runner");

    let start = Instant::now();
    while pids.iter().any(|p| alive_not_zombie(*p)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "control-plane processes survived their owner's SIGKILL: {:?}",
            pids.iter()
                .filter(|p| alive_not_zombie(**p))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What the next start does: nothing is left for the sweep to kill, and the folder goes.
    assert_eq!(sweep::sweep_dead_runs(root.path()), 0);
    assert!(!dir.exists(), "dead run folder swept");
}

/// The sweep alone (the last line of defence when no parent-death signal fired): a recorded
/// child of a dead owner is killed and its folder removed.
#[test]
fn sweep_kills_children_of_a_dead_owner() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("run-dead");
    std::fs::create_dir_all(&dir).expect("mkdir");
    // An owner pid that cannot be alive: a process we started and reaped.
    let mut gone = Command::new("true").spawn().expect("spawn true");
    gone.wait().expect("wait");
    std::fs::write(dir.join("owner.pid"), gone.id().to_string()).expect("owner");
    // A long-lived "component" whose command line names the run folder, like ours do.
    // `; true` keeps sh from exec'ing sleep, so the command line naming the folder stays;
    // its own process group lets the sweep take sleep down with it, like our components.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("sleep 300; true")
        .arg(dir.display().to_string())
        .process_group(0)
        .spawn()
        .expect("spawn sleeper");
    std::fs::write(dir.join("pids"), format!("{}\n", child.id())).expect("pids");
    // spawn() returns once the child called exec, but the kernel publishes the new command
    // line a moment later; real components have run for seconds before any sweep.
    let start = std::time::Instant::now();
    while !process::cmdline(child.id() as i32).is_some_and(|c| c.contains("run-dead")) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "sleeper never exec'd"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let killed = sweep::sweep_dead_runs(root.path());
    if killed != 1 {
        let _ = child.kill();
        panic!(
            "sweep killed {killed}; owner alive: {}; child cmdline: {:?}",
            sweep::owner_alive(&dir),
            process::cmdline(child.id() as i32)
        );
    }
    let status = child.wait().expect("reap sleeper");
    assert!(!status.success(), "sleeper was killed");
    assert!(!Path::new(&dir).exists());
}

/// Two test processes start control planes at once: one sweeps while the other has created its
/// run folder but not yet written `owner.pid`. That folder is being set up, not abandoned: the
/// sweep must leave it (and its children) alone. (Seen when two suites ran side by side: the
/// starting control plane lost its folder and kube-controller-manager died with no log.)
#[test]
fn a_run_folder_being_set_up_is_not_swept() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("run-starting");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("sleep 300; true")
        .arg(dir.display().to_string())
        .process_group(0)
        .spawn()
        .expect("spawn sleeper");
    std::fs::write(dir.join("pids"), format!("{}\n", child.id())).expect("pids");
    let start = std::time::Instant::now();
    while !process::cmdline(child.id() as i32).is_some_and(|c| c.contains("run-starting")) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "sleeper never exec'd"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let killed = sweep::sweep_dead_runs(root.path());
    let still_there = dir.exists();
    let alive = alive_not_zombie(child.id() as i32);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        killed, 0,
        "the sweep killed a starting control plane's child"
    );
    assert!(
        still_there,
        "the sweep removed a folder that was being set up"
    );
    assert!(
        alive,
        "the child of a starting control plane survives the sweep"
    );
}

fn alive_not_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.split(") ")
                .nth(1)
                .is_some_and(|rest| rest.starts_with('Z'))
        })
        .unwrap_or(false)
}
