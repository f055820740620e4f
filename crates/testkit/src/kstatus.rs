//! What GitOps tools see of a LinkToken: the real kstatus library
//! (`sigs.k8s.io/cli-utils/pkg/kstatus/status`, built by `scripts/build-tools.sh` as `kstatus`
//! from `tools/kstatus`) run on a live object, as `kubectl get -o json` returns it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::TestCluster;
use crate::e2e::Env;

/// The kstatus binary. Same policy as the control plane: missing fails under CI, skips loudly
/// elsewhere.
pub fn kstatus_bin(c: &TestCluster) -> Option<PathBuf> {
    match &c.tools.kstatus {
        Some(p) => Some(p.clone()),
        None if crate::in_ci() => {
            panic!("CI=true and kstatus is unavailable: run `bash scripts/build-tools.sh`")
        }
        None => {
            eprintln!(
                "\n!!!!!!!! SKIPPED: this test needs kstatus: run `bash scripts/build-tools.sh`\n"
            );
            None
        }
    }
}

/// kstatus's (status, message) for a live LinkToken, read with kubectl like a GitOps tool would.
pub fn kstatus_of(env: &Env, bin: &PathBuf, name: &str) -> (String, String) {
    let out = env
        .cluster
        .kubectl()
        .args(["get", "linktoken", name, "-n", &env.ns, "-o", "json"])
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kstatus");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&out.stdout)
        .expect("write to kstatus");
    let res = child.wait_with_output().expect("kstatus output");
    assert!(
        res.status.success(),
        "kstatus: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&res.stdout).expect("kstatus json");
    (
        v["status"].as_str().unwrap_or_default().to_string(),
        v["message"].as_str().unwrap_or_default().to_string(),
    )
}
