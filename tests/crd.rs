//! The LinkToken CRD on a real API server: the examples are accepted, invalid objects are
//! rejected by the API server itself (schema and CEL, not the controller) with a message that
//! names the field, the status schema holds everything the controller writes (timestamps as
//! RFC 3339 date-times), and `kubectl get lt` (and `kubectl get atlas`) shows the printer
//! columns.
use testkit::require_cluster;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kube::api::{Api, Patch, PatchParams, PostParams};
use linktoken_operator::api::{
    AtlasErrorStatus, CredentialsSecretRef, InFlight, IssuedFor, LinkStatus, LinkToken,
    LinkTokenSpec, LinkTokenStatus, crd,
};
use serde_json::{Value, json};

const ORG: &str = "5f1e9b2a3c4d5e6f7a8b9c0d";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Installs the checked-in CRD the way a user would (the drift test in src/api keeps it equal
/// to what the types generate) and waits until the API server serves it.
async fn install_crd(c: &testkit::TestCluster) {
    c.apply_crd(&crd::crd()).await;
    let out = run(
        c.kubectl()
            .args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(repo(crd::CRD_PATH)),
        None,
    );
    assert!(out.status.success(), "kubectl apply crds/: {}", text(&out));
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("kubectl output")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A valid LinkToken manifest named `name`, with `spec` merged over a valid base spec
/// (a `null` removes a field).
fn manifest(name: &str, spec_overrides: Value) -> Value {
    let mut spec = json!({
        "orgId": ORG,
        "accessListIps": ["203.0.113.10"],
        "credentialsSecretRef": {"name": "atlas-api-key"},
    });
    merge(&mut spec, spec_overrides);
    json!({
        "apiVersion": "atlasmigration.io/v1alpha1",
        "kind": "LinkToken",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// JSON merge patch (RFC 7396) semantics.
fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p,
    }
}

#[tokio::test]
async fn examples_are_accepted_with_client_and_server_side_apply() {
    let c = require_cluster!();
    install_crd(c).await;
    let examples = repo("deploy/examples");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "expected at least 3 examples, found {files:?}"
    );

    for server_side in [false, true] {
        let ns = c
            .namespace(if server_side {
                "examples-ssa"
            } else {
                "examples"
            })
            .await;
        // The whole directory, as the README tells users to apply it.
        let mut cmd = c.kubectl();
        cmd.args(["apply", "-n", &ns, "-f"]).arg(&examples);
        if server_side {
            cmd.arg("--server-side");
        }
        let out = run(&mut cmd, None);
        assert!(
            out.status.success(),
            "apply (server-side={server_side}): {}",
            text(&out)
        );

        // Every LinkToken reads back into the Rust types, with the schema defaults applied.
        let api: Api<LinkToken> = Api::namespaced(c.client().await, &ns);
        let list = api
            .list(&Default::default())
            .await
            .expect("list LinkTokens");
        let mut names: Vec<_> = list
            .items
            .iter()
            .map(|l| l.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["atlas-link", "atlas-link-sa", "migration-prod"]);
        let retain = api.get("migration-prod").await.unwrap();
        assert_eq!(
            retain.spec.deletion_policy,
            linktoken_operator::api::DeletionPolicy::Retain
        );
        assert_eq!(
            retain.spec.token_secret_name("migration-prod"),
            "mongomirror-link-token"
        );
        assert_eq!(retain.spec.token_secret_key(), "link-token.txt");
        let sa = api.get("atlas-link-sa").await.unwrap();
        assert_eq!(
            sa.spec.deletion_policy,
            linktoken_operator::api::DeletionPolicy::Delete
        );
        assert!(sa.spec.access_list_ips.is_empty());

        // Every LinkToken's credentials Secret is in the examples too.
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(c.client().await, &ns);
        for lt in &list.items {
            let name = &lt.spec.credentials_secret_ref.name;
            assert!(
                secrets.get_opt(name).await.unwrap().is_some(),
                "Secret {name} missing"
            );
        }
    }
}

/// One invalid manifest: what to change in a valid spec (or the whole object), and the texts
/// the API server's answer must contain (the offending field, and what is wrong with it).
struct Invalid {
    what: &'static str,
    spec: Value,
    expect: &'static [&'static str],
}

fn invalid_cases() -> Vec<Invalid> {
    let many: Vec<String> = (0..201)
        .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
        .collect();
    let case = |what, spec, expect| Invalid { what, spec, expect };
    vec![
        case(
            "orgId too short",
            json!({"orgId": "5f1e9b2a3c4d5e6f7a8b9c0"}),
            &["spec.orgId", "should match"],
        ),
        case(
            "orgId too long",
            json!({"orgId": "5f1e9b2a3c4d5e6f7a8b9c0d0"}),
            &["spec.orgId", "should match"],
        ),
        case(
            "orgId upper case",
            json!({"orgId": "5F1E9B2A3C4D5E6F7A8B9C0D"}),
            &["spec.orgId", "should match"],
        ),
        case(
            "orgId not hex",
            json!({"orgId": "5f1e9b2a3c4d5e6f7a8b9c0g"}),
            &["spec.orgId", "should match"],
        ),
        case(
            "orgId missing",
            json!({"orgId": null}),
            &["spec.orgId", "Required value"],
        ),
        case(
            "IPv4 octet out of range",
            json!({"accessListIps": ["256.1.1.1"]}),
            &["spec.accessListIps[0]", "IPv4 or IPv6 address or CIDR"],
        ),
        case(
            "IPv4 with three octets",
            json!({"accessListIps": ["203.0.113.10", "10.0.0"]}),
            &["spec.accessListIps[1]", "IPv4 or IPv6 address or CIDR"],
        ),
        case(
            "IPv4 with leading zero",
            json!({"accessListIps": ["010.0.0.1"]}),
            &["spec.accessListIps[0]", "IPv4 or IPv6 address or CIDR"],
        ),
        case(
            "IPv6 with two ::",
            json!({"accessListIps": ["2001:db8::1::2"]}),
            &["spec.accessListIps[0]", "IPv4 or IPv6 address or CIDR"],
        ),
        case(
            "IPv6 with a bad group",
            json!({"accessListIps": ["2001:db8::g"]}),
            &["spec.accessListIps[0]", "IPv4 or IPv6 address or CIDR"],
        ),
        case(
            "IPv4 CIDR prefix too long",
            json!({"accessListIps": ["10.0.0.0/33"]}),
            &["spec.accessListIps[0]", "IPv4 or IPv6 address or CIDR"],
        ),
        case(
            "IPv6 CIDR prefix too long",
            json!({"accessListIps": ["2001:db8::/129"]}),
            &["spec.accessListIps[0]", "IPv4 or IPv6 address or CIDR"],
        ),
        case(
            "host name instead of an address",
            json!({"accessListIps": ["mongo.example.com"]}),
            &["spec.accessListIps[0]", "IPv4 or IPv6 address or CIDR"],
        ),
        case(
            "empty access list entry",
            json!({"accessListIps": [""]}),
            &["spec.accessListIps[0]"],
        ),
        case(
            "duplicate access list entries",
            json!({"accessListIps": ["10.0.0.1", "10.0.0.1"]}),
            &["spec.accessListIps[1]", "Duplicate value"],
        ),
        case(
            "201 access list entries",
            json!({"accessListIps": many}),
            &["spec.accessListIps", "201", "200"],
        ),
        case(
            "empty credentials Secret name",
            json!({"credentialsSecretRef": {"name": ""}}),
            &["spec.credentialsSecretRef.name"],
        ),
        case(
            "credentials Secret name not a DNS name",
            json!({"credentialsSecretRef": {"name": "Atlas_Key"}}),
            &["spec.credentialsSecretRef.name", "should match"],
        ),
        case(
            "credentialsSecretRef missing",
            json!({"credentialsSecretRef": null}),
            &["spec.credentialsSecretRef", "Required value"],
        ),
        case(
            "namespace smuggled into credentialsSecretRef",
            json!({"credentialsSecretRef": {"name": "k", "namespace": "other"}}),
            &["unknown field", "spec.credentialsSecretRef.namespace"],
        ),
        case(
            "token Secret name not a DNS name",
            json!({"tokenSecret": {"name": "My.Token"}}),
            &["spec.tokenSecret.name", "should match"],
        ),
        case(
            "token Secret key with a space",
            json!({"tokenSecret": {"key": "link token"}}),
            &["spec.tokenSecret.key", "should match"],
        ),
        case(
            "token Secret key with a slash",
            json!({"tokenSecret": {"key": "a/b"}}),
            &["spec.tokenSecret.key", "should match"],
        ),
        case(
            "token Secret key '..'",
            json!({"tokenSecret": {"key": ".."}}),
            &["spec.tokenSecret.key", "must not be '.' or start with '..'"],
        ),
        case(
            "token Secret key too long",
            json!({"tokenSecret": {"key": "k".repeat(254)}}),
            &["spec.tokenSecret.key", "253"],
        ),
        case(
            "reserved label key",
            json!({"tokenSecret": {"labels": {"team": "a", "atlasmigration.io/linktoken": "x"}}}),
            &[
                "spec.tokenSecret.labels",
                "Forbidden",
                "label keys under atlasmigration.io/ are reserved",
            ],
        ),
        case(
            "reserved annotation key",
            json!({"tokenSecret": {"annotations": {"atlasmigration.io/token-sha256": "x"}}}),
            &[
                "spec.tokenSecret.annotations",
                "Forbidden",
                "annotation keys under atlasmigration.io/ are reserved",
            ],
        ),
        case(
            "invalid label value",
            json!({"tokenSecret": {"labels": {"team": "-data-"}}}),
            &["spec.tokenSecret.labels.team", "should match"],
        ),
        case(
            "unknown deletionPolicy",
            json!({"deletionPolicy": "Orphan"}),
            &[
                "spec.deletionPolicy",
                "Unsupported value",
                "\"Delete\", \"Retain\"",
            ],
        ),
        case(
            "deletionPolicy in the wrong case",
            json!({"deletionPolicy": "delete"}),
            &["spec.deletionPolicy", "Unsupported value"],
        ),
        case(
            "unknown spec field (per-resource Atlas URL)",
            json!({"atlasUrl": "https://evil.example.com"}),
            &["unknown field", "spec.atlasUrl"],
        ),
        case(
            "unknown tokenSecret field",
            json!({"tokenSecret": {"type": "kubernetes.io/tls"}}),
            &["unknown field", "spec.tokenSecret.type"],
        ),
        case(
            "accessListIps not a list",
            json!({"accessListIps": "10.0.0.1"}),
            &["spec.accessListIps", "array"],
        ),
    ]
}

#[tokio::test]
async fn the_api_server_rejects_invalid_link_tokens_naming_the_field() {
    let c = require_cluster!();
    install_crd(c).await;
    let ns = c.namespace("invalid").await;
    let cases = invalid_cases();
    assert!(cases.len() >= 20);

    let mut failures = vec![];
    for (i, case) in cases.iter().enumerate() {
        let name = format!("invalid-{i}");
        let body = serde_json::to_string(&manifest(&name, case.spec.clone())).unwrap();
        // Plain `kubectl apply`: its defaults (strict field validation) are what users get.
        let out = run(
            c.kubectl().args(["apply", "-n", &ns, "-f", "-"]),
            Some(&body),
        );
        let said = text(&out);
        if out.status.success() {
            failures.push(format!("{}: accepted: {said}", case.what));
        } else if let Some(missing) = case.expect.iter().find(|e| !said.contains(*e)) {
            failures.push(format!("{}: answer lacks {missing:?}: {said}", case.what));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Nothing slipped in.
    let out = run(
        c.kubectl().args(["get", "lt", "-n", &ns, "-o", "name"]),
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
}

/// The other side of the table: valid edge cases must pass, so the rules above do not reject
/// too much.
#[tokio::test]
async fn the_api_server_accepts_valid_edge_cases() {
    let c = require_cluster!();
    install_crd(c).await;
    let ns = c.namespace("valid").await;
    let full: Vec<String> = (0..200).map(|i| format!("10.1.{}.0/24", i)).collect();
    let cases = [
        ("no access list", json!({"accessListIps": null})),
        ("empty access list", json!({"accessListIps": []})),
        ("200 entries", json!({"accessListIps": full})),
        (
            "IPv6 address and CIDR, IPv4 CIDR",
            json!({"accessListIps": ["2001:db8::1", "2001:db8::/32", "0.0.0.0/0"]}),
        ),
        (
            "253-character dotted Secret name",
            json!({"credentialsSecretRef": {"name": format!("{}.{}", "a".repeat(126), "b".repeat(126))}}),
        ),
        (
            "Secret key with dots, dashes, underscores",
            json!({"tokenSecret": {"key": ".link_token-1.txt"}}),
        ),
        (
            "labels and annotations outside the reserved prefix",
            json!({"tokenSecret": {
            "labels": {"app.kubernetes.io/part-of": "migration", "atlasmigration.io": "no-slash", "empty": ""},
            "annotations": {"example.com/atlasmigration.io/x": "anything goes here: /\n"}}}),
        ),
        ("Retain", json!({"deletionPolicy": "Retain"})),
    ];
    for (i, (what, spec)) in cases.into_iter().enumerate() {
        let body = serde_json::to_string(&manifest(&format!("valid-{i}"), spec)).unwrap();
        let out = run(
            c.kubectl().args(["apply", "-n", &ns, "-f", "-"]),
            Some(&body),
        );
        assert!(out.status.success(), "{what}: rejected: {}", text(&out));
    }
    // Explicit nulls (what an empty YAML key gives) are accepted: CEL rules skip them.
    let mut nulls = manifest("valid-nulls", json!({}));
    nulls["spec"]["accessListIps"] = Value::Null;
    nulls["spec"]["tokenSecret"] =
        json!({"name": null, "key": null, "labels": null, "annotations": null});
    let out = run(
        c.kubectl().args(["apply", "-n", &ns, "-f", "-"]),
        Some(&nulls.to_string()),
    );
    assert!(
        out.status.success(),
        "explicit nulls: rejected: {}",
        text(&out)
    );

    // Defaults are filled in by the API server.
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        c.client().await,
        &ns,
        &kube::api::ApiResource::erase::<LinkToken>(&()),
    );
    let no_list = raw.get("valid-0").await.unwrap();
    assert_eq!(no_list.data["spec"]["accessListIps"], json!([]));
    assert_eq!(no_list.data["spec"]["deletionPolicy"], "Delete");
    let templated = raw.get("valid-6").await.unwrap();
    assert_eq!(templated.data["spec"]["tokenSecret"]["key"], "linkToken");
    let api: Api<LinkToken> = Api::namespaced(c.client().await, &ns);
    let lt = api.get("valid-nulls").await.unwrap();
    assert_eq!(lt.spec.access_list_ips, Vec::<String>::new());
    assert_eq!(lt.spec.token_secret_key(), "linkToken");
    assert_eq!(lt.spec.token_secret_name("valid-nulls"), "valid-nulls");
}

fn full_status() -> LinkTokenStatus {
    let condition = |type_: &str, status: &str, reason: &str| {
        serde_json::from_value(json!({
            "type": type_,
            "status": status,
            "reason": reason,
            "message": format!("{type_} is {status}"),
            "observedGeneration": 1,
            "lastTransitionTime": "2025-06-01T12:00:00Z",
        }))
        .unwrap()
    };
    LinkTokenStatus {
        observed_generation: Some(1),
        conditions: vec![
            condition("Ready", "False", "AtlasRateLimited"),
            condition("Reconciling", "True", "AtlasRateLimited"),
            condition("Stalled", "False", "AtlasRateLimited"),
        ],
        token_secret_name: Some("atlas-link".into()),
        issued_at: Some("2025-06-01T11:59:58Z".into()),
        issued_for: Some(IssuedFor {
            org_id: ORG.into(),
            access_list_ips: vec!["203.0.113.10".into(), "2001:db8::/32".into()],
            rotate: Some("1717243200".into()),
            token_sha256: Some(
                "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            ),
        }),
        in_flight: Some(InFlight {
            org_id: ORG.into(),
            started_at: "2025-06-01T12:00:00Z".into(),
            attempt_id: Some("7c3f0a9e2b5d4e61".into()),
            access_list_sha256: Some(
                "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".into(),
            ),
            rotate: Some("1717243200".into()),
        }),
        atlas_error: Some(AtlasErrorStatus {
            http_status: Some(429),
            error_code: Some("RATE_LIMITED".into()),
            detail: Some(
                "Resource /api/atlas/v2/orgs/x is limited to 250 requests every 1 minutes.".into(),
            ),
        }),
        link: Some(LinkStatus {
            url: "https://opsmanager.example:8443".into(),
            org_id: "6a1e9b2a3c4d5e6f7a8b9c0d".into(),
            credentials_secret_name: "source-api-key".into(),
            token_sha256: Some(
                "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            ),
            posting_sha256: Some(
                "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".into(),
            ),
            sync_status: Some("SYNCED".into()),
            linked_at: Some("2025-06-01T12:00:01Z".into()),
            source_error: Some(AtlasErrorStatus {
                http_status: Some(409),
                error_code: Some("MIGRATION_LINK_ALREADY_EXISTS".into()),
                detail: None,
            }),
        }),
    }
}

fn link_token(name: &str) -> LinkToken {
    LinkToken::new(
        name,
        LinkTokenSpec {
            org_id: ORG.into(),
            access_list_ips: vec!["203.0.113.10".into()],
            credentials_secret_ref: CredentialsSecretRef {
                name: "atlas-api-key".into(),
            },
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn status_subresource_holds_every_status_field() {
    let c = require_cluster!();
    install_crd(c).await;
    let ns = c.namespace("status").await;
    let api: Api<LinkToken> = Api::namespaced(c.client().await, &ns);
    api.create(&PostParams::default(), &link_token("s"))
        .await
        .expect("create");

    // Server-side apply of the status, as the controller does it. Pruning would silently drop
    // any field the schema lacks, so reading back equal proves the schema admits them all.
    let status = full_status();
    let patch = json!({
        "apiVersion": "atlasmigration.io/v1alpha1",
        "kind": "LinkToken",
        "status": status,
    });
    let pp = PatchParams::apply("linktoken-operator").force();
    api.patch_status("s", &pp, &Patch::Apply(&patch))
        .await
        .expect("apply status");
    let got = api.get_status("s").await.expect("get");
    assert_eq!(got.status.as_ref(), Some(&status));

    // Timestamps are date-times: a client writing anything else is refused by the API server,
    // so readers (and the Issued column) can rely on RFC 3339.
    for (field, bad) in [
        ("issuedAt", json!({"issuedAt": "yesterday"})),
        (
            "inFlight.startedAt",
            json!({"inFlight": {"orgId": ORG, "startedAt": "noon"}}),
        ),
    ] {
        let patch = json!({
            "apiVersion": "atlasmigration.io/v1alpha1",
            "kind": "LinkToken",
            "status": bad,
        });
        let err = api
            .patch_status(
                "s",
                &PatchParams::apply("bad-clock").force(),
                &Patch::Apply(&patch),
            )
            .await
            .expect_err("a timestamp that is not a date-time must be refused");
        assert!(
            err.to_string().contains(field) && err.to_string().contains("date-time"),
            "{field}: {err}"
        );
    }

    // Conditions are a map keyed by type: another manager applying only Ready takes over that
    // entry in place and leaves Reconciling and Stalled alone.
    let ready_only = json!({
        "apiVersion": "atlasmigration.io/v1alpha1",
        "kind": "LinkToken",
        "status": {"conditions": [status.conditions[0]]},
    });
    api.patch_status(
        "s",
        &PatchParams::apply("someone-else").force(),
        &Patch::Apply(&ready_only),
    )
    .await
    .expect("apply Ready only");
    let got = api.get_status("s").await.unwrap().status.unwrap();
    assert_eq!(
        got.conditions.len(),
        3,
        "conditions are a map keyed by type"
    );

    // The spec is untouched by status writes, and status is untouched by spec writes.
    let mut lt = api.get("s").await.unwrap();
    lt.spec.access_list_ips.push("198.51.100.0/24".into());
    let lt = api
        .replace("s", &PostParams::default(), &lt)
        .await
        .expect("replace spec");
    assert_eq!(
        lt.status.as_ref().map(|s| s.issued_for.clone()),
        Some(status.issued_for.clone())
    );
}

#[tokio::test]
async fn kubectl_get_shows_the_printer_columns() {
    let c = require_cluster!();
    install_crd(c).await;
    let ns = c.namespace("columns").await;
    let api: Api<LinkToken> = Api::namespaced(c.client().await, &ns);
    api.create(&PostParams::default(), &link_token("printed"))
        .await
        .expect("create");
    let mut status = full_status();
    status.conditions[0] = serde_json::from_value(json!({
        "type": "Ready", "status": "True", "reason": "TokenIssued", "message": "ok",
        "lastTransitionTime": "2025-06-01T12:00:00Z",
    }))
    .unwrap();
    let patch =
        json!({"apiVersion": "atlasmigration.io/v1alpha1", "kind": "LinkToken", "status": status});
    api.patch_status(
        "printed",
        &PatchParams::apply("t").force(),
        &Patch::Apply(&patch),
    )
    .await
    .expect("status");

    let out = run(c.kubectl().args(["get", "lt", "-n", &ns]), None);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(
        lines[0],
        ["NAME", "READY", "REASON", "ORG", "SECRET", "AGE"],
        "{stdout}"
    );
    assert_eq!(
        lines[1][..5],
        ["printed", "True", "TokenIssued", ORG, "atlas-link"],
        "{stdout}"
    );
    // `-o wide` adds the Ready message and when the token was issued.
    let out = run(
        c.kubectl().args(["get", "lt", "-n", &ns, "-o", "wide"]),
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "NAME", "READY", "REASON", "ORG", "SECRET", "MESSAGE", "ISSUED", "AGE"
        ],
        "{stdout}"
    );
    assert_eq!(
        lines[1][..6],
        ["printed", "True", "TokenIssued", ORG, "atlas-link", "ok"],
        "{stdout}"
    );
    // The category: `kubectl get atlas` lists LinkTokens beside the Atlas Kubernetes
    // Operator's resources, whose CRDs use the category `atlas` too. A stand-in kind in a
    // test-owned group plays AtlasProject, so a cluster with the real operator is not touched.
    let stand_in = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: atlasprojects.ako-stand-in.linktoken.test
spec:
  group: ako-stand-in.linktoken.test
  names: {kind: AtlasProject, plural: atlasprojects, singular: atlasproject, categories: [atlas]}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;
    let out = run(c.kubectl().args(["apply", "-f", "-"]), Some(stand_in));
    assert!(out.status.success(), "{}", text(&out));
    let out = run(
        c.kubectl().args([
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/atlasprojects.ako-stand-in.linktoken.test",
        ]),
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let project = "apiVersion: ako-stand-in.linktoken.test/v1\nkind: AtlasProject\nmetadata:\n  name: project\n";
    let out = run(
        c.kubectl().args(["apply", "-n", &ns, "-f", "-"]),
        Some(project),
    );
    assert!(out.status.success(), "{}", text(&out));
    // A fresh discovery cache: categories are resolved from discovery, which kubectl caches
    // on disk across calls.
    let cache = tempfile::tempdir().expect("tempdir");
    let out = run(
        c.kubectl()
            .args(["get", "atlas", "-n", &ns, "-o", "name", "--cache-dir"])
            .arg(cache.path()),
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let mut listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "atlasproject.ako-stand-in.linktoken.test/project",
            "linktoken.atlasmigration.io/printed"
        ],
        "{}",
        text(&out)
    );
    let _ = run(
        c.kubectl().args([
            "delete",
            "--wait=false",
            "crd/atlasprojects.ako-stand-in.linktoken.test",
        ]),
        None,
    );
    // The short name, the plural and the kind all resolve.
    for resource in ["linktokens", "linktoken", "linktokens.atlasmigration.io"] {
        let out = run(
            c.kubectl()
                .args(["get", resource, "printed", "-n", &ns, "-o", "name"]),
            None,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "linktoken.atlasmigration.io/printed",
            "{}",
            text(&out)
        );
    }
}
