//! The product ends where the tree says it does: the operator crate ships none of its harness,
//! and the binary users run has no test hook in it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Crates only the harness may use: the harness crates themselves and what only they need.
const HARNESS_ONLY: &[&str] = &[
    "atlas-sim",
    "testkit",
    "bench",
    "chaos",
    "rcgen",
    "tempfile",
    "digest_auth",
    "nix",
];

#[test]
fn operator_runtime_dependencies_hold_no_harness_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "--offline",
            "-p",
            "linktoken-operator",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&"linktoken-operator"),
        "unexpected tree:\n{tree}"
    );
    assert!(names.contains(&"kube"), "unexpected tree:\n{tree}");
    for harness in HARNESS_ONLY {
        assert!(
            !names.contains(harness),
            "the operator's runtime dependencies include {harness}:\n{tree}"
        );
    }
}

/// The release binary (built by scripts/test.sh with default features, as the image is) must
/// not contain the fault-injection pause hook: neither its variable name nor its log line.
#[test]
fn release_binary_has_no_fault_injection_hook() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let bin = target.join("release/linktoken-operator");
    if !bin.is_file() {
        let msg = format!(
            "{} is missing: build it with `cargo build --release -p linktoken-operator` (scripts/test.sh does)",
            bin.display()
        );
        if testkit::in_ci() {
            panic!("CI=true: {msg}");
        }
        eprintln!("\n!!!!!!!! SKIPPED: {msg}\n");
        return;
    }
    let bytes = std::fs::read(&bin).expect("read release binary");
    assert!(
        contains(&bytes, b"linktoken-operator/"),
        "sanity: the release binary should carry its user agent"
    );
    for needle in [
        &b"LINKTOKEN_TEST_PAUSE"[..],
        b"the issuing path will pause",
        b"injected panic",
    ] {
        assert!(
            !contains(&bytes, needle),
            "{} contains {:?}: the pause hook was compiled in",
            bin.display(),
            String::from_utf8_lossy(needle)
        );
    }
    // The image's static build (scripts/build-image.sh) is what users run: the same check.
    let image_bin = root().join("target/image/x86_64-unknown-linux-gnu/release/linktoken-operator");
    if let Ok(bytes) = std::fs::read(&image_bin) {
        for needle in [&b"LINKTOKEN_TEST_PAUSE"[..], b"injected panic"] {
            assert!(
                !contains(&bytes, needle),
                "{} contains {:?}: the pause hook was compiled into the image",
                image_bin.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    // The debug binary the tests run is built with the hook: the check above can fail.
    let debug = bin
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("debug/linktoken-operator"));
    if let Some(debug) = debug.filter(|p| p.is_file()) {
        let bytes = std::fs::read(&debug).expect("read debug binary");
        assert!(
            contains(&bytes, b"LINKTOKEN_TEST_PAUSE"),
            "the test build of the operator should have the hook (fault-injection feature)"
        );
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
