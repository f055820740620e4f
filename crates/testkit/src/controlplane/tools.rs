//! Where the control-plane and packaging binaries are.
//!
//! Lookup order, so that the same binaries serve anyone:
//! 1. controller-runtime envtest's variables: `TEST_ASSET_KUBE_APISERVER`, `TEST_ASSET_ETCD`,
//!    `TEST_ASSET_KUBECTL` name single binaries; `KUBEBUILDER_ASSETS` names a folder.
//! 2. `LINKTOKEN_TOOLS_DIR`, a folder.
//! 3. The cache folder that `scripts/build-tools.sh` fills (it prints it with `--print-dir`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::Error;

/// Absolute paths of every tool the harness and the tests use.
#[derive(Clone, Debug)]
pub struct Tools {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kubectl: PathBuf,
    /// helm is needed by the packaging tests only.
    pub helm: Option<PathBuf>,
    /// The kstatus checker (`tools/kstatus`, the cli-utils status library Flux and kpt use);
    /// needed by the GitOps status tests only.
    pub kstatus: Option<PathBuf>,
    /// The node's binaries (`crate::node`); needed by the node tests only.
    pub kubelet: Option<PathBuf>,
    pub kube_scheduler: Option<PathBuf>,
    pub kube_proxy: Option<PathBuf>,
    /// The node's sandbox image, a docker-archive (`scripts/build-tools.sh` builds it).
    pub pause_image: Option<PathBuf>,
}

impl Tools {
    /// Finds every tool, or says which one is missing and how to build it.
    pub fn locate() -> Result<Tools, Error> {
        let dirs = candidate_dirs();
        let find = |name: &str, env_var: Option<&str>| -> Option<PathBuf> {
            if let Some(var) = env_var
                && let Some(p) = std::env::var_os(var).map(PathBuf::from)
                && is_executable(&p)
            {
                return Some(p);
            }
            dirs.iter().map(|d| d.join(name)).find(|p| is_executable(p))
        };
        let need = |name: &str, env_var: Option<&str>| {
            find(name, env_var).ok_or_else(|| Error::ToolMissing {
                tool: name.to_string(),
                searched: dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        };
        Ok(Tools {
            etcd: need("etcd", Some("TEST_ASSET_ETCD"))?,
            kube_apiserver: need("kube-apiserver", Some("TEST_ASSET_KUBE_APISERVER"))?,
            kube_controller_manager: need(
                "kube-controller-manager",
                Some("TEST_ASSET_KUBE_CONTROLLER_MANAGER"),
            )?,
            kubectl: need("kubectl", Some("TEST_ASSET_KUBECTL"))?,
            helm: find("helm", Some("TEST_ASSET_HELM")),
            kstatus: find("kstatus", None),
            kubelet: find("kubelet", None),
            kube_scheduler: find("kube-scheduler", None),
            kube_proxy: find("kube-proxy", None),
            pause_image: dirs
                .iter()
                .map(|d| d.join("pause.tar"))
                .find(|p| p.is_file()),
        })
    }
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["KUBEBUILDER_ASSETS", "LINKTOKEN_TOOLS_DIR"] {
        if let Some(d) = std::env::var_os(var) {
            dirs.push(PathBuf::from(d));
        }
    }
    if let Some(d) = build_script_dir() {
        dirs.push(d);
    }
    dirs
}

/// Asks the build script where it puts (or would put) the binaries, so the pinned versions
/// live in exactly one place.
fn build_script_dir() -> Option<PathBuf> {
    // The repository root is two levels above this crate (crates/testkit).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-tools.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-dir")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
