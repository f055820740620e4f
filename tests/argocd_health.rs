//! The Argo CD health check of docs/gitops.md, run under Lua 5.1 (the language of Argo CD's
//! gopher-lua engine) over the cases in tests/argocd/linktoken/health_test.yaml, which follow
//! the layout of Argo CD's own `resource_customizations/<group>/<kind>/` tests.
//!
//! The script is read from the doc, so what users copy is what runs here. Argo CD hands the
//! script the object as the global `obj` and takes the table it returns; the harness does the
//! same with the `lua5.1` interpreter (Debian package `lua5.1`; `.ci/run` installs it).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use linktoken_operator::api::Reason;
use serde::Deserialize;
use serde_json::Value;

const HEALTH_KEY: &str = "resource.customizations.health.atlasmigration.io_LinkToken";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cases_dir() -> PathBuf {
    repo().join("tests/argocd/linktoken")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A Lua 5.1 interpreter: `$LUA`, else `lua5.1`, else a `lua` that reports 5.1. Missing: fails
/// under CI, skips loudly elsewhere (the policy of the other tool-dependent tests).
fn lua() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = std::env::var_os("LUA")
        .map(PathBuf::from)
        .into_iter()
        .chain(["lua5.1", "lua"].map(PathBuf::from))
        .collect();
    for c in &candidates {
        let Ok(out) = Command::new(c).arg("-v").output() else {
            continue;
        };
        // `lua -v` prints its version on stderr in 5.1, on stdout in later versions.
        let version = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if version.starts_with("Lua 5.1") {
            return Some(c.clone());
        }
    }
    let e = format!("no Lua 5.1 interpreter among {candidates:?}: apt-get install lua5.1");
    if in_ci() {
        panic!("CI=true and {e}");
    }
    eprintln!("\n!!!!!!!! SKIPPED: this test needs Lua 5.1:\n!!!!!!!! {e}\n");
    None
}

/// The health script exactly as docs/gitops.md shows it in the `argocd-cm` snippet.
fn health_script() -> String {
    let doc = std::fs::read_to_string(repo().join("docs/gitops.md")).expect("docs/gitops.md");
    let block = doc
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains(HEALTH_KEY))
        .expect("docs/gitops.md has a yaml block with the argocd-cm health key");
    let cm: Value = serde_saphyr::from_str(block).expect("the argocd-cm snippet is valid YAML");
    cm["data"][HEALTH_KEY]
        .as_str()
        .expect("the health key holds the script")
        .to_string()
}

/// A Lua expression for a JSON value, as Argo CD converts the object into a Lua table (JSON
/// null becomes an absent key).
fn lua_literal(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => {
            out.push('"');
            for ch in s.chars() {
                match ch {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c if (c as u32) < 0x20 => {
                        let _ = write!(out, "\\{}", c as u32);
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        Value::Array(items) => {
            out.push('{');
            for item in items {
                lua_literal(item, out);
                out.push(',');
            }
            out.push('}');
        }
        Value::Object(map) => {
            out.push('{');
            for (k, item) in map.iter().filter(|(_, v)| !v.is_null()) {
                out.push('[');
                lua_literal(&Value::String(k.clone()), out);
                out.push_str("]=");
                lua_literal(item, out);
                out.push(',');
            }
            out.push('}');
        }
    }
}

#[derive(Debug, PartialEq, Eq, Deserialize)]
struct HealthStatus {
    status: String,
    message: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    health_status: HealthStatus,
    input_path: String,
}

#[derive(Debug, Deserialize)]
struct HealthTest {
    tests: Vec<Case>,
}

fn load_cases() -> Vec<(Case, Value)> {
    let text =
        std::fs::read_to_string(cases_dir().join("health_test.yaml")).expect("health_test.yaml");
    let spec: HealthTest = serde_saphyr::from_str(&text).expect("health_test.yaml format");
    spec.tests
        .into_iter()
        .map(|case| {
            let path = cases_dir().join(&case.input_path);
            let input = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let obj: Value = serde_saphyr::from_str(&input)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (case, obj)
        })
        .collect()
}

/// Runs the script on `obj` the way Argo CD does; Err(stderr) when the script fails.
fn run_health(lua: &Path, script: &str, obj: &Value) -> Result<HealthStatus, String> {
    let mut program = String::from("obj = ");
    lua_literal(obj, &mut program);
    // Argo CD runs the script as a chunk and takes its return value; a function body is the
    // same chunk, with `return` allowed anywhere.
    let _ = write!(
        program,
        "\nlocal function health()\n{script}\nend\nlocal hs = health()\n\
         io.write(tostring(hs.status), \"\\n\", tostring(hs.message))\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("health.lua");
    std::fs::write(&file, program).expect("write lua");
    let out = Command::new(lua).arg(&file).output().expect("run lua");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let (status, message) = stdout.split_once('\n').expect("status and message");
    Ok(HealthStatus {
        status: status.to_string(),
        message: message.to_string(),
    })
}

/// Every case in health_test.yaml gives the expected health and message, and none crashes.
#[test]
fn argocd_health_check_runs_under_lua_5_1_for_every_case() {
    let Some(lua) = lua() else { return };
    let script = health_script();
    let cases = load_cases();
    assert!(
        cases.len() >= Reason::ALL.len() + 3,
        "{} cases",
        cases.len()
    );
    let mut failures = Vec::new();
    for (case, obj) in &cases {
        match run_health(&lua, &script, obj) {
            Ok(got) if got == case.health_status => {}
            Ok(got) => failures.push(format!(
                "{}: expected {:?}, got {got:?}",
                case.input_path, case.health_status
            )),
            Err(e) => failures.push(format!("{}: the script failed: {e}", case.input_path)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The cases cover every Ready reason of src/api/reason.rs, with the conditions the operator
/// writes for it (Stalled for the reasons only a user can fix, Reconciling for the others), and
/// expect the health GitOps users are told about: Healthy, Degraded, Progressing.
#[test]
fn health_cases_cover_every_ready_reason_as_the_operator_writes_it() {
    let cases = load_cases();
    let mut covered = BTreeSet::new();
    for (case, obj) in &cases {
        // A status of an older generation is checked by its own case (Progressing).
        if obj["status"]["observedGeneration"] != obj["metadata"]["generation"] {
            continue;
        }
        let Some(ready) = condition(obj, "Ready") else {
            continue;
        };
        let Some(reason) = ready["reason"].as_str().and_then(Reason::parse) else {
            continue;
        };
        let stalled = reason.is_stalled();
        let is_ready = reason.is_ready();
        let status = |c: Option<&Value>| c.and_then(|c| c["status"].as_str()).map(String::from);
        let flag = |b: bool| Some(if b { "True" } else { "False" }.to_string());
        let what = &case.input_path;
        assert_eq!(status(Some(ready)), flag(is_ready), "{what}: Ready");
        assert_eq!(
            status(condition(obj, "Stalled")),
            flag(stalled),
            "{what}: Stalled"
        );
        assert_eq!(
            status(condition(obj, "Reconciling")),
            flag(!stalled && !is_ready),
            "{what}: Reconciling"
        );
        let want = if is_ready {
            "Healthy"
        } else if stalled {
            "Degraded"
        } else {
            "Progressing"
        };
        assert_eq!(case.health_status.status, want, "{what}");
        covered.insert(reason);
    }
    let missing: Vec<_> = Reason::ALL
        .iter()
        .filter(|r| !covered.contains(r))
        .collect();
    assert!(missing.is_empty(), "no health case for {missing:?}");
    // And the cases that once crashed or mislead: no status, an old generation, no reason.
    for input in [
        "testdata/no-status.yaml",
        "testdata/stale-generation.yaml",
        "testdata/stalled-without-reason.yaml",
        "testdata/ready-false-without-reason.yaml",
    ] {
        assert!(
            cases.iter().any(|(c, _)| c.input_path == input),
            "missing case {input}"
        );
    }
}
