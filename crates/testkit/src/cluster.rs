//! One real control plane per test process, a namespace per test.
//!
//! `cluster()` returns the control plane named by `LINKTOKEN_TEST_KUBECONFIG` when set (so a
//! script can share one across test binaries), else starts one for this process on first use.
//! When the binaries are missing: under `CI=true` the test fails; elsewhere it is skipped with
//! a loud message. Nothing here mocks the API server.
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::controlplane::{ControlPlane, Options, Tools};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// A reachable control plane and the tools that go with it.
pub struct TestCluster {
    pub kubeconfig: PathBuf,
    pub tools: Tools,
    /// kube-apiserver's audit log of Secret lists and watches; None for a shared control
    /// plane this process did not start.
    pub audit_log: Option<PathBuf>,
}

static CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();
/// The control plane this process started (None when it uses a shared one), kept here so the
/// exit hook and restart tests can reach it.
static OWNED: Mutex<Option<ControlPlane>> = Mutex::new(None);

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The control plane for this test, or None (skip) outside CI when none can be had.
pub async fn cluster() -> Option<&'static TestCluster> {
    // Starting blocks for a while; do it on a plain thread so no async runtime is stalled
    // and the spawner thread (see controlplane::process) is not a test thread.
    let result = CLUSTER.get_or_init(|| {
        std::thread::spawn(init)
            .join()
            .unwrap_or_else(|_| Err("control-plane start panicked".into()))
    });
    match result {
        Ok(c) => Some(c),
        Err(e) if in_ci() => panic!("CI=true and the control plane is unavailable: {e}"),
        Err(e) => {
            eprintln!(
                "\n!!!!!!!! SKIPPED: this test needs a real control plane and none is available:\n!!!!!!!! {e}\n"
            );
            None
        }
    }
}

/// `let Some(c) = require_cluster!() else { return };` in one word.
#[macro_export]
macro_rules! require_cluster {
    () => {
        match $crate::cluster().await {
            Some(c) => c,
            None => return,
        }
    };
}

fn init() -> Result<TestCluster, String> {
    let tools = Tools::locate().map_err(|e| e.to_string())?;
    if let Some(kc) = std::env::var_os("LINKTOKEN_TEST_KUBECONFIG") {
        return Ok(TestCluster {
            kubeconfig: PathBuf::from(kc),
            tools,
            audit_log: None,
        });
    }
    let started = Instant::now();
    let cp = ControlPlane::start(Options::default()).map_err(|e| e.to_string())?;
    eprintln!(
        "test support: control plane ready in {:.1}s at {} ({})",
        started.elapsed().as_secs_f64(),
        cp.api_url(),
        cp.dir().display()
    );
    let kubeconfig = cp.kubeconfig_path().to_path_buf();
    let audit_log = cp.audit_log_path();
    *OWNED.lock().unwrap_or_else(|p| p.into_inner()) = Some(cp);
    // SAFETY: registering a plain extern "C" function; it runs once at process exit.
    unsafe {
        libc::atexit(stop_owned);
    }
    Ok(TestCluster {
        kubeconfig,
        tools,
        audit_log: Some(audit_log),
    })
}

extern "C" fn stop_owned() {
    if let Ok(mut g) = OWNED.lock()
        && let Some(mut cp) = g.take()
    {
        cp.stop(false);
    }
}

/// The control plane this process owns, for tests that restart its components. None when
/// the tests run against a shared one.
pub fn owned_control_plane() -> Option<MutexGuard<'static, Option<ControlPlane>>> {
    let g = OWNED.lock().unwrap_or_else(|p| p.into_inner());
    g.is_some().then_some(g)
}

impl TestCluster {
    /// A fresh client (each tokio test has its own runtime, so clients are not shared).
    pub async fn client(&self) -> kube::Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        kube::Client::try_from(cfg).expect("client")
    }

    /// Creates a namespace named `<prefix>-<random>` and returns its name.
    pub async fn namespace(&self, prefix: &str) -> String {
        let name = unique(prefix);
        let api: Api<Namespace> = Api::all(self.client().await);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("linktoken-test".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        name
    }

    /// kubectl with this cluster's kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.tools.kubectl);
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// helm with this cluster's kubeconfig; panics when helm was not built.
    pub fn helm(&self) -> Command {
        let helm = self
            .tools
            .helm
            .as_ref()
            .expect("helm not found: run `bash scripts/build-tools.sh`");
        let mut c = Command::new(helm);
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// A kubeconfig for this API server whose only credential is a fresh token (TokenRequest,
    /// `kubectl create token`) of ServiceAccount `sa` in `ns`, written into `dir`: what a Pod
    /// of that ServiceAccount may do, and nothing more.
    pub fn service_account_kubeconfig(&self, ns: &str, sa: &str, dir: &Path) -> PathBuf {
        let run = |args: &[&str]| -> String {
            let out = self.kubectl().args(args).output().expect("run kubectl");
            assert!(
                out.status.success(),
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let token = run(&["create", "token", sa, "-n", ns, "--duration=1h"]);
        let admin = run(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "--flatten",
            "-o",
            "json",
        ]);
        let admin: serde_json::Value = serde_json::from_str(&admin).expect("kubeconfig json");
        let kc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"].clone()}],
            "users": [{"name": sa, "user": {"token": token.trim()}}],
            "contexts": [{"name": "sa", "context": {"cluster": "c", "user": sa, "namespace": ns}}],
            "current-context": "sa",
        });
        let path = dir.join(format!("{sa}.kubeconfig"));
        std::fs::write(&path, serde_json::to_string_pretty(&kc).expect("json"))
            .expect("write kubeconfig");
        path
    }

    /// Installs (server-side apply) a CRD and waits until it is Established.
    pub async fn apply_crd(&self, crd: &CustomResourceDefinition) {
        let client = self.client().await;
        install_crd(&client, crd, "linktoken-tests")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Server-side applies `crd` as `manager` and waits (30 s at most) until it is Established.
pub async fn install_crd(
    client: &kube::Client,
    crd: &CustomResourceDefinition,
    manager: &str,
) -> Result<(), String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().ok_or("the CRD has no name")?;
    api.patch(
        &name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(crd),
    )
    .await
    .map_err(|e| format!("apply CRD {name}: {e}"))?;
    let start = Instant::now();
    loop {
        let established = api
            .get(&name)
            .await
            .ok()
            .and_then(|c| c.status?.conditions)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(format!("CRD {name} not Established within 30s"));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// `<prefix>-<8 random hex>`: a name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// Polls `f` until it returns Some, or panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}
