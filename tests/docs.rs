//! The user documentation cannot rot.
//!
//! - `local_quickstart_runs_as_written`: every `sh` block between the `docs-test` markers of
//!   docs/quickstart-local.md runs, in order, with bash, against a fresh namespace of the real
//!   control plane, an atlas-sim with the demo config and the operator binary. The blocks carry
//!   their own checks (`kubectl wait`, `grep -q`, `test`); the test adds what a reader cannot see:
//!   no leaked Atlas link, no token or credential in any output, log, event or status.
//! - The rest need no cluster: the markers and blocks are there, every Ready reason is in the
//!   conditions table, every relative link in README.md and docs/ resolves, and the run script
//!   parses.
use testkit::require_cluster;

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use linktoken_operator::api::Reason;
use testkit::e2e::{CLIENT_SECRET, Env, PRIVATE_KEY};

const BEGIN: &str = "<!-- docs-test:begin -->";
const END: &str = "<!-- docs-test:end -->";
const BLOCK_TIMEOUT: Duration = Duration::from_secs(70);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// A fenced `sh` block between the markers: its first line number (1-based) and its text.
#[derive(Debug)]
struct Block {
    line: usize,
    text: String,
}

/// The `sh` blocks between the markers. Other fences (`text`, `yaml`, ...) are shown, not run.
fn tested_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut inside_markers = false;
    let mut current: Option<Block> = None;
    let mut in_other_fence = false;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_end();
        if let Some(block) = current.as_mut() {
            if trimmed == "```" {
                blocks.push(current.take().expect("block"));
            } else {
                block.text.push_str(line);
                block.text.push('\n');
            }
            continue;
        }
        if in_other_fence {
            in_other_fence = trimmed != "```";
            continue;
        }
        if trimmed == BEGIN {
            assert!(!inside_markers, "line {}: nested {BEGIN}", i + 1);
            inside_markers = true;
        } else if trimmed == END {
            assert!(inside_markers, "line {}: {END} without {BEGIN}", i + 1);
            inside_markers = false;
        } else if let Some(info) = trimmed.strip_prefix("```") {
            if inside_markers && info == "sh" {
                current = Some(Block {
                    line: i + 2,
                    text: String::new(),
                });
            } else {
                in_other_fence = true;
            }
        }
    }
    assert!(current.is_none(), "unterminated sh block");
    assert!(!inside_markers, "{BEGIN} without {END}");
    blocks
}

#[test]
fn the_quickstart_has_marked_shell_blocks() {
    let md = read("docs/quickstart-local.md");
    assert_eq!(md.matches(BEGIN).count(), 1, "exactly one {BEGIN}");
    assert_eq!(md.matches(END).count(), 1, "exactly one {END}");
    let blocks = tested_blocks(&md);
    assert!(
        blocks.len() >= 8,
        "expected the walk-through's blocks, got {}",
        blocks.len()
    );
    let all: String = blocks.iter().map(|b| b.text.as_str()).collect();
    for must in [
        "kubectl apply -f deploy/examples/",
        "kubectl wait --for=condition=Ready lt --all",
        "atlasmigration.io/rotate",
        "kubectl delete lt atlas-link",
        "kubectl delete lt migration-prod",
        "$METRICS_URL",
    ] {
        assert!(
            all.contains(must),
            "the tested blocks no longer contain {must:?}"
        );
    }
    // The extractor itself: blocks outside the markers and other languages are not run.
    let sample = "```sh\nno\n```\n<!-- docs-test:begin -->\n```text\nno\n```\n```sh\nyes 1\n```\n\n```sh\nyes 2\n```\n<!-- docs-test:end -->\n```sh\nno\n```\n";
    let got: Vec<_> = tested_blocks(sample).into_iter().map(|b| b.text).collect();
    assert_eq!(got, ["yes 1\n", "yes 2\n"]);
}

#[test]
fn every_ready_reason_is_in_the_conditions_table() {
    let md = read("docs/conditions.md");
    for r in Reason::ALL {
        let row = format!("| `{}`", r.as_str());
        assert!(
            md.lines().any(|l| l.starts_with(&row)),
            "docs/conditions.md has no table row for {r}"
        );
    }
    for extra in [
        "RevocationSkipped",
        "Stalled",
        "Reconciling",
        "observedGeneration",
    ] {
        assert!(
            md.contains(extra),
            "docs/conditions.md does not explain {extra}"
        );
    }
}

/// Relative links of README.md and docs/*.md point at files that exist.
#[test]
fn relative_links_resolve() {
    let mut files = vec![repo().join("README.md")];
    for e in std::fs::read_dir(repo().join("docs")).expect("docs/") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    let mut broken = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        let dir = f.parent().expect("dir");
        for target in markdown_links(&text) {
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            if !dir.join(path).exists() {
                broken.push(format!("{}: {target}", f.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Targets of `[text](target)` links, outside code fences and inline code.
fn markdown_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        // Inline code (`[a-z](x)` in a regex) is not a link.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn the_run_script_parses() {
    let script = "scripts/run-local.sh";
    let out = Command::new("bash")
        .arg("-n")
        .arg(repo().join(script))
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs one block with bash; returns its combined output, or panics with it.
fn run_block(block: &Block, env: &[(&str, String)], path: &str) -> String {
    let script = format!("set -euo pipefail\n{}", block.text);
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("out");
    let out = std::fs::File::create(&out_path).expect("out");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&script)
        .current_dir(repo())
        .env("PATH", path)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("out"))
        .stderr(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn bash");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if started.elapsed() > BLOCK_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut output = String::new();
    std::fs::File::open(&out_path)
        .expect("open out")
        .read_to_string(&mut output)
        .expect("read out");
    eprintln!(
        "--- docs/quickstart-local.md:{} ({:.1}s)\n{}{}",
        block.line,
        started.elapsed().as_secs_f64(),
        indent(&block.text, "$ "),
        indent(&output, "  ")
    );
    match status {
        Some(s) if s.success() => output,
        Some(s) => panic!(
            "the block at docs/quickstart-local.md:{} failed ({s}):\n{}\noutput:\n{output}",
            block.line, block.text
        ),
        None => panic!(
            "the block at docs/quickstart-local.md:{} did not finish within {BLOCK_TIMEOUT:?}:\n{}\noutput:\n{output}",
            block.line, block.text
        ),
    }
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}\n")).collect()
}

/// Every token the operator's Secrets in `ns` hold right now.
async fn current_tokens(client: &kube::Client, ns: &str) -> Vec<String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=linktoken-operator"))
        .await
        .expect("list Secrets");
    list.items
        .into_iter()
        .flat_map(|s| s.data.unwrap_or_default().into_values())
        .filter_map(|v| String::from_utf8(v.0).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_quickstart_runs_as_written() {
    let c = require_cluster!();
    let started = Instant::now();
    let blocks = tested_blocks(&read("docs/quickstart-local.md"));

    let mut env = Env::new(c, "docs-quickstart").await;
    let log = env.start_operator(&[]).log.clone();
    let metrics_url = format!(
        "http://{}/metrics",
        testkit::operator::logged_endpoint(&log, "metrics").expect("metrics address")
    );

    // The reader's shell: kubectl of the pinned tools first on PATH, a kubeconfig whose context
    // points at the test's namespace, and the variables `source .local/env` would set.
    let tools_dir = c.tools.kubectl.parent().expect("tools dir").to_path_buf();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::copy(&c.kubeconfig, &kubeconfig).expect("copy kubeconfig");
    let set_ns = c
        .kubectl()
        .env("KUBECONFIG", &kubeconfig)
        .args(["config", "set-context", "--current"])
        .arg(format!("--namespace={}", env.ns))
        .output()
        .expect("kubectl config");
    assert!(set_ns.status.success(), "{set_ns:?}");
    let path = format!(
        "{}:{}",
        tools_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let vars = [
        ("KUBECONFIG", kubeconfig.display().to_string()),
        (
            "ATLAS_SIM_ADMIN",
            env.sim.admin_url.trim_end_matches('/').to_string(),
        ),
        ("ATLAS_URL", env.sim.atlas_url.to_string()),
        (
            "ATLAS_SIM_SOURCE",
            env.sim.source_url().expect("atlas-sim's source side"),
        ),
        ("METRICS_URL", metrics_url),
    ];

    let mut outputs = String::new();
    let mut tokens = BTreeSet::new();
    for block in &blocks {
        let out = tokio::task::block_in_place(|| run_block(block, &vars, &path));
        outputs.push_str(&out);
        tokens.extend(current_tokens(&env.client, &env.ns).await);
    }

    // What the reader cannot see from the blocks' own checks.
    assert!(tokens.len() >= 3, "tokens seen: {}", tokens.len());
    for t in &tokens {
        assert!(
            !outputs.contains(t.as_str()),
            "a quick-start block printed a link token"
        );
    }
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.extend([PRIVATE_KEY, CLIENT_SECRET, "demo-source-private-0000"]);
    env.assert_no_secret_leaked(&secrets).await;
    // One live link per org, as the walk-through leaves them: `early` (after atlas-link was
    // revoked), atlas-link-sa, and migration-prod's retained token.
    for org in [
        "5f1e9b2a3c4d5e6f7a8b9c0d",
        "5f1e9b2a3c4d5e6f7a8b9c0e",
        "5f1e9b2a3c4d5e6f7a8b9c0f",
    ] {
        assert_eq!(env.sim.state.live_links(org), 1, "live links of org {org}");
    }
    let elapsed = started.elapsed();
    eprintln!("docs quick start: {} blocks in {elapsed:.1?}", blocks.len());
    assert!(
        elapsed < Duration::from_secs(90),
        "the quick start took {elapsed:?}"
    );
}
