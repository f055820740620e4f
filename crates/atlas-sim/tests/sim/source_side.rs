//! The source side (Cloud Manager / Ops Manager `liveExport/migrationLink`) over loopback:
//! a hand-rolled Digest client in process, curl as an independent client, and the binary.

use std::process::Command;

use atlas_sim::config::{
    DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SOURCE_CLIENT_ID, DEMO_SOURCE_CLIENT_SECRET,
    DEMO_SOURCE_ORG_ID, DEMO_SOURCE_PRIVATE_KEY, DEMO_SOURCE_PUBLIC_KEY,
};
use atlas_sim::{CallKind, Port, SimConfig, SimHandle, SimServer, SimTls, SyncStatus};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{
    BODY, DigestClient, ORG, PASS, USER, admin_get, admin_post, client, link_path, loopback,
    oauth_token_at, ready_field, run_tool, sha256_hex, spawn_binary_ready, start, stop_binary,
};

const SRC_ORG: &str = DEMO_SOURCE_ORG_ID;
const SRC_USER: &str = DEMO_SOURCE_PUBLIC_KEY;
const SRC_PASS: &str = DEMO_SOURCE_PRIVATE_KEY;
const JSON: &str = "application/json";

fn link(org: &str) -> String {
    format!("/api/public/v1.0/orgs/{org}/liveExport/migrationLink")
}

fn status_path(org: &str) -> String {
    format!("{}/status", link(org))
}

fn source_url(h: &SimHandle) -> String {
    h.source_url()
        .expect("the demo config serves the source port")
}

/// A Digest client of the source port.
fn source_client(h: &SimHandle, user: &str, pass: &str) -> DigestClient {
    let mut c = DigestClient::new(&source_url(h), user, pass);
    c.content_type = JSON.to_owned();
    c
}

async fn send(c: &mut DigestClient, method: Method, path: &str, body: Option<&str>) -> super::Resp {
    c.send_with(method, path, Some(JSON), body).await
}

/// POSTs `token` to the org's migrationLink.
async fn post_token(c: &mut DigestClient, org: &str, token: &str) -> super::Resp {
    send(c, Method::POST, &link(org), Some(&token_body(token))).await
}

fn token_body(token: &str) -> String {
    json!({ "linkToken": token }).to_string()
}

/// Mints a link token on the Atlas side, as the operator does.
async fn mint(h: &SimHandle) -> String {
    let mut atlas = DigestClient::new(&h.atlas_url, USER, PASS);
    let r = atlas.send(Method::POST, &link_path(ORG), Some(BODY)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.json()["linkToken"].as_str().expect("token").to_owned()
}

/// Revokes every link token of ORG on the Atlas side.
async fn revoke_all(h: &SimHandle) {
    let mut atlas = DigestClient::new(&h.atlas_url, USER, PASS);
    let r = atlas.send(Method::DELETE, &link_path(ORG), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
}

#[tokio::test]
async fn link_status_follows_the_atlas_token() {
    let h = start(SimConfig::demo()).await;
    let token = mint(&h).await;
    let mut c = source_client(&h, SRC_USER, SRC_PASS);

    // No link yet.
    let r = send(&mut c, Method::GET, &status_path(SRC_ORG), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["errorCode"], "MIGRATION_LINK_NOT_FOUND");

    let r = post_token(&mut c, SRC_ORG, &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json(), json!({"status": "SYNCED"}));
    assert_eq!(r.header("content-type"), Some(JSON));
    let r = send(&mut c, Method::GET, &status_path(SRC_ORG), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"status": "SYNCED"}));
    // The same token again: idempotent.
    let r = post_token(&mut c, SRC_ORG, &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Another live token while linked: 409, and the first link stays.
    let second = mint(&h).await;
    let r = post_token(&mut c, SRC_ORG, &second).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.json()["errorCode"], "MIGRATION_LINK_ALREADY_EXISTS");
    assert_eq!(
        h.state.source_link(SRC_ORG).map(|l| l.token_sha256),
        Some(sha256_hex(&token))
    );

    // Admin state: linked, to which Atlas org, SYNCED; the call history; never the token.
    let state = admin_get(&h, "/state").await;
    let src = &state.json()["sourceOrgs"][SRC_ORG];
    assert_eq!(src["linked"], true, "{}", state.text);
    assert_eq!(src["atlasOrgId"], ORG);
    assert_eq!(src["status"], "SYNCED");
    assert_eq!(src["link"]["tokenSha256"], sha256_hex(&token));
    let calls = state.json()["sourceCalls"].clone();
    assert!(
        calls.as_array().is_some_and(
            // The user the call presented is recorded too (never a secret).
            |c| c.contains(
                &json!({"method": "POST", "path": link(SRC_ORG), "status": 409, "user": SRC_USER})
            )
        ),
        "{calls}"
    );
    for secret in [&token, &second] {
        assert!(!state.text.contains(secret.as_str()), "state leaks a token");
    }

    // Revoked on the Atlas side: NOT_SYNCED, reported rather than hidden.
    revoke_all(&h).await;
    let r = send(&mut c, Method::GET, &status_path(SRC_ORG), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"status": "NOT_SYNCED"}));
    assert_eq!(h.state.source_status(SRC_ORG), Some(SyncStatus::NotSynced));
    let state = admin_get(&h, "/state").await;
    assert_eq!(state.json()["sourceOrgs"][SRC_ORG]["status"], "NOT_SYNCED");

    // A revoked or never-minted token is refused, without echoing it.
    for dead in [token.as_str(), "atlsim_lt_never-minted"] {
        let r = post_token(&mut c, SRC_ORG, dead).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert_eq!(r.json()["errorCode"], "INVALID_LINK_TOKEN");
        assert!(!r.text.contains(dead));
    }

    // Unlink: 204, then 404 for DELETE and status.
    let r = send(&mut c, Method::DELETE, &link(SRC_ORG), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(r.text.is_empty());
    let r = send(&mut c, Method::DELETE, &link(SRC_ORG), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["errorCode"], "MIGRATION_LINK_NOT_FOUND");
    let r = send(&mut c, Method::GET, &status_path(SRC_ORG), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A fresh token links again after the unlink (rotation: DELETE, then POST).
    let third = mint(&h).await;
    let r = post_token(&mut c, SRC_ORG, &third).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(h.state.calls("POST", CallKind::SourceLink, 200), 3);
    assert_eq!(h.state.calls("GET", CallKind::SourceLinkStatus, 404), 2);
    // Per-port totals: every source call so far, and the Atlas calls (3 mints + 1 revoke,
    // each a challenge and an answer) apart.
    let source_calls = h.state.source_calls().len() as u64;
    assert_eq!(h.state.calls_on(Port::Source), source_calls);
    assert_eq!(h.state.calls_on(Port::Atlas), 8);
    assert_eq!(h.state.calls_total(), source_calls + 8);
}

#[tokio::test]
async fn source_auth_roles_orgs_and_bodies() {
    let h = start(SimConfig::demo()).await;
    let token = mint(&h).await;
    let body = token_body(&token);

    // Unauthenticated: the Digest challenge of realm "MMS Public API".
    let r = client()
        .post(format!("{}{}", source_url(&h), link(SRC_ORG)))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = r.headers()["www-authenticate"].to_str().expect("ascii");
    assert!(
        challenge.starts_with("Digest realm=\"MMS Public API\"")
            && challenge.contains("algorithm=MD5")
            && challenge.contains("qop=\"auth\""),
        "{challenge}"
    );
    // A wrong key, an unknown key and an Atlas key (the two sides have their own keys).
    for (user, pass) in [(SRC_USER, "wrong"), ("nobody", SRC_PASS), (USER, PASS)] {
        let mut c = source_client(&h, user, pass);
        let r = send(&mut c, Method::POST, &link(SRC_ORG), Some(&body)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{user}");
        assert_eq!(r.json()["errorCode"], "UNEXPECTED_ERROR");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|c| c.contains("realm=\"MMS Public API\""))
        );
    }

    // Authenticated but not Organization Owner of the source org: 403.
    let added = admin_post(
        &h,
        "/source-api-keys",
        json!({"publicKey": "member", "privateKey": "member-secret", "roles": {SRC_ORG: ["ORG_MEMBER"]}}),
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    let mut member = source_client(&h, "member", "member-secret");
    for (method, path, body) in [
        (Method::POST, link(SRC_ORG), Some(body.as_str())),
        (Method::GET, status_path(SRC_ORG), None),
        (Method::DELETE, link(SRC_ORG), None),
    ] {
        let r = send(&mut member, method, &path, body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(r.json()["errorCode"], "USER_UNAUTHORIZED");
    }

    // Unknown org (an Atlas org id is not a source org), bad org id, other method.
    let mut c = source_client(&h, SRC_USER, SRC_PASS);
    for org in ["0123456789abcdef01234567", ORG] {
        let r = send(&mut c, Method::POST, &link(org), Some(&body)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{org}");
        assert_eq!(r.json()["errorCode"], "ORG_NOT_FOUND");
    }
    let r = send(&mut c, Method::GET, &status_path("nope"), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["errorCode"], "INVALID_PATH_PARAMETER");
    let r = send(&mut c, Method::PUT, &link(SRC_ORG), Some(&body)).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // Bodies.
    for (bad, code) in [
        ("", "MALFORMED_JSON"),
        ("{}", "MISSING_ATTRIBUTE"),
        (r#"{"linkToken": 7}"#, "INVALID_JSON_ATTRIBUTE"),
        (r#"{"token": "x"}"#, "INVALID_ATTRIBUTE"),
    ] {
        let r = send(&mut c, Method::POST, &link(SRC_ORG), Some(bad)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.json()["errorCode"], code, "{bad}");
    }
    assert!(h.state.source_link(SRC_ORG).is_none(), "nothing linked");

    // Runtime configuration of the source side.
    let other = "6a1e9b2a3c4d5e6f7a8b9c0e";
    let r = admin_post(&h, "/source-orgs", json!({"id": other, "name": "second"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = admin_post(&h, "/source-orgs", json!({"id": other})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = admin_post(&h, "/source-orgs", json!({"id": "nope"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // The demo key owns only the demo source org.
    let r = send(&mut c, Method::POST, &link(other), Some(&body)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn faults_hit_source_calls() {
    let h = start(SimConfig::demo()).await;
    let token = mint(&h).await;
    let body = token_body(&token);
    let mut c = source_client(&h, SRC_USER, SRC_PASS);

    // `any` stays on the Atlas port; `source` targets the source port.
    admin_post(&h, "/faults", json!({"kind": "status", "status": 500})).await;
    let r = send(&mut c, Method::GET, &status_path(SRC_ORG), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "no Atlas fault here");
    let r = client()
        .delete(format!("{}/faults", h.admin_url))
        .send()
        .await
        .expect("clear");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let f = admin_post(
        &h,
        "/faults",
        json!({"kind": "status", "status": 503, "count": 1, "method": "POST", "target": "source",
               "headers": {"Retry-After": "4"}}),
    )
    .await;
    assert_eq!(f.status, StatusCode::CREATED, "{}", f.text);
    let r = send(&mut c, Method::POST, &link(SRC_ORG), Some(&body)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("retry-after"), Some("4"));
    assert!(
        h.state.source_link(SRC_ORG).is_none(),
        "a faulted POST links nothing"
    );
    let r = send(&mut c, Method::POST, &link(SRC_ORG), Some(&body)).await;
    assert_eq!(r.status, StatusCode::OK, "the fault was used up");

    // Drop: the connection closes without an answer; the status call then works again.
    admin_post(
        &h,
        "/faults",
        json!({"kind": "drop", "count": 1, "target": "source", "orgId": SRC_ORG}),
    )
    .await;
    // The fault answers before authentication, so any Authorization header triggers it.
    let auth_err = client()
        .get(format!("{}{}", source_url(&h), status_path(SRC_ORG)))
        .header("Authorization", "Digest username=\"x\"")
        .send()
        .await;
    assert!(auth_err.is_err(), "the connection was dropped");
    let r = send(&mut c, Method::GET, &status_path(SRC_ORG), None).await;
    assert_eq!(r.json(), json!({"status": "SYNCED"}));
    assert_eq!(h.state.calls("GET", CallKind::SourceLinkStatus, 0), 1);
    assert!(
        h.state
            .source_calls()
            .iter()
            .any(|call| call.status == 503 && call.method == "POST")
    );

    // Garbage from a proxy in front of Ops Manager.
    admin_post(
        &h,
        "/faults",
        json!({"kind": "garbage", "count": 1, "target": "source"}),
    )
    .await;
    let r = send(&mut c, Method::GET, &status_path(SRC_ORG), None).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.text.contains("<html>"));
}

/// A call on the source port with a bearer token.
async fn bearer_source(
    h: &SimHandle,
    method: Method,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> super::Resp {
    let mut rb = client()
        .request(method, format!("{}{path}", source_url(h)))
        .header("Accept", JSON)
        .bearer_auth(token);
    if let Some(b) = body {
        rb = rb.header("Content-Type", JSON).body(b.to_owned());
    }
    super::into_resp(rb.send().await.expect("source call")).await
}

fn access_token(r: &super::Resp) -> String {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

#[tokio::test]
async fn service_accounts_of_the_source_port_mint_and_use_their_own_tokens() {
    let h = start(SimConfig::demo()).await;
    let src = source_url(&h);
    let token = mint(&h).await;

    // Minted at the source port, the token works there, with the roles of the source side.
    let bearer =
        access_token(&oauth_token_at(&src, DEMO_SOURCE_CLIENT_ID, DEMO_SOURCE_CLIENT_SECRET).await);
    let r = bearer_source(
        &h,
        Method::POST,
        &link(SRC_ORG),
        &bearer,
        Some(&token_body(&token)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = bearer_source(&h, Method::GET, &status_path(SRC_ORG), &bearer, None).await;
    assert_eq!(r.json(), json!({"status": "SYNCED"}));
    let s = admin_get(&h, "/state").await.json();
    assert_eq!(s["sourceOauth"][DEMO_SOURCE_CLIENT_ID]["minted"], 1);
    assert_eq!(s["sourceOauth"][DEMO_SOURCE_CLIENT_ID]["live"], 1);
    assert!(
        s["oauth"].get(DEMO_SOURCE_CLIENT_ID).is_none(),
        "the Atlas port minted nothing"
    );

    // Each server knows only its own accounts and tokens.
    let r = oauth_token_at(
        &h.atlas_url,
        DEMO_SOURCE_CLIENT_ID,
        DEMO_SOURCE_CLIENT_SECRET,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "invalid_client");
    let r = oauth_token_at(&src, DEMO_SOURCE_CLIENT_ID, "wrong").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "invalid_client");
    let atlas_bearer =
        access_token(&oauth_token_at(&h.atlas_url, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET).await);
    let r = bearer_source(&h, Method::GET, &status_path(SRC_ORG), &atlas_bearer, None).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "an Atlas token is nothing here"
    );
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.starts_with("Digest"))
    );

    // Faults: `sourceOauth` hits the source port's token endpoint only.
    let f = admin_post(
        &h,
        "/faults",
        json!({"kind": "status", "status": 503, "count": 1, "target": "sourceOauth"}),
    )
    .await;
    assert_eq!(f.status, StatusCode::CREATED, "{}", f.text);
    let r = oauth_token_at(&h.atlas_url, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET).await;
    assert_eq!(r.status, StatusCode::OK, "not the Atlas port's");
    let r = bearer_source(&h, Method::GET, &status_path(SRC_ORG), &bearer, None).await;
    assert_eq!(r.status, StatusCode::OK, "not the migrationLink calls");
    let r = oauth_token_at(&src, DEMO_SOURCE_CLIENT_ID, DEMO_SOURCE_CLIENT_SECRET).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.state.calls("POST", CallKind::SourceOauthToken, 503), 1);

    // Revoked at the source port: refused there from then on.
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{DEMO_SOURCE_CLIENT_ID}:{DEMO_SOURCE_CLIENT_SECRET}"
        ))
    };
    let r = client()
        .post(format!("{src}/api/oauth/revoke"))
        .header("Authorization", format!("Basic {basic}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("token={bearer}&token_type_hint=access_token"))
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), StatusCode::OK);
    let r = bearer_source(&h, Method::GET, &status_path(SRC_ORG), &bearer, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn reset_clears_source_links_and_history() {
    let h = start(SimConfig::demo()).await;
    let token = mint(&h).await;
    let mut c = source_client(&h, SRC_USER, SRC_PASS);
    let r = post_token(&mut c, SRC_ORG, &token).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = admin_post(&h, "/reset", json!({})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(h.state.source_link(SRC_ORG).is_none());
    assert!(h.state.source_calls().is_empty());
    // The client's nonce survives the reset, like the Atlas side's.
    let r = send(&mut c, Method::GET, &status_path(SRC_ORG), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn no_source_port_without_source_orgs() {
    let mut config = SimConfig::demo();
    config.source_orgs.clear();
    let h = start(config).await;
    assert_eq!(h.source_url(), None);
    assert_eq!(h.source_addr, None);
}

/// curl's answer as (status, headers and body as text).
fn curl(args: &[&str]) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--noproxy", "*", "--max-time", "10", "-i"])
        .args(args)
        .args(["-w", "\n%{http_code}"]);
    let (ok, out, err) = run_tool(&mut cmd);
    assert!(ok, "curl failed: {err}");
    let (text, code) = out.rsplit_once('\n').expect("status line");
    (code.to_owned(), text.to_owned())
}

/// The JSON body after the last header block of `curl -i` output.
fn body_of(text: &str) -> Value {
    let body = text.rsplit("\r\n\r\n").next().unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("json {e}: {text}"))
}

/// curl --digest against the source port: `args` after the credentials.
async fn curl_source(user: &str, pass: &str, args: Vec<String>) -> (String, String) {
    let userpass = format!("{user}:{pass}");
    tokio::task::spawn_blocking(move || {
        let mut all = vec!["--digest", "-u", userpass.as_str()];
        all.extend(args.iter().map(String::as_str));
        curl(&all)
    })
    .await
    .expect("join")
}

fn post_args(url: &str, token: &str) -> Vec<String> {
    [
        "-H",
        "Content-Type: application/json",
        "-X",
        "POST",
        "--data",
        &token_body(token),
        url,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn method_args(method: &str, url: &str) -> Vec<String> {
    ["-X", method, url].map(str::to_owned).to_vec()
}

#[tokio::test]
async fn curl_digest_client_on_the_source_port() {
    let h = start(SimConfig::demo()).await;
    let base = source_url(&h);
    let link_url = format!("{base}{}", link(SRC_ORG));
    let status_url = format!("{base}{}", status_path(SRC_ORG));
    let token = mint(&h).await;

    let (code, out) = curl_source(SRC_USER, SRC_PASS, post_args(&link_url, &token)).await;
    assert_eq!(code, "200", "{out}");
    assert_eq!(body_of(&out), json!({"status": "SYNCED"}));
    let (code, out) = curl_source(SRC_USER, SRC_PASS, method_args("GET", &status_url)).await;
    assert_eq!(
        (code.as_str(), body_of(&out)),
        ("200", json!({"status": "SYNCED"}))
    );
    let (code, _) = curl_source(SRC_USER, SRC_PASS, post_args(&link_url, &token)).await;
    assert_eq!(code, "200", "same token again");
    let second = mint(&h).await;
    let (code, out) = curl_source(SRC_USER, SRC_PASS, post_args(&link_url, &second)).await;
    assert_eq!(code, "409", "{out}");
    assert_eq!(body_of(&out)["errorCode"], "MIGRATION_LINK_ALREADY_EXISTS");

    revoke_all(&h).await;
    let (code, out) = curl_source(SRC_USER, SRC_PASS, method_args("GET", &status_url)).await;
    assert_eq!(
        (code.as_str(), body_of(&out)),
        ("200", json!({"status": "NOT_SYNCED"}))
    );
    let (code, out) = curl_source(SRC_USER, SRC_PASS, post_args(&link_url, &token)).await;
    assert_eq!(code, "400", "{out}");
    assert_eq!(body_of(&out)["errorCode"], "INVALID_LINK_TOKEN");

    let (code, _) = curl_source(SRC_USER, SRC_PASS, method_args("DELETE", &link_url)).await;
    assert_eq!(code, "204");
    let (code, out) = curl_source(SRC_USER, SRC_PASS, method_args("DELETE", &link_url)).await;
    assert_eq!(code, "404", "{out}");
    assert_eq!(body_of(&out)["errorCode"], "MIGRATION_LINK_NOT_FOUND");

    // Wrong key: 401 with the realm; unknown org: 404; not an owner: 403.
    let (code, out) = curl_source(SRC_USER, "wrong", method_args("GET", &status_url)).await;
    assert_eq!(code, "401", "{out}");
    assert!(
        out.contains("WWW-Authenticate: Digest realm=\"MMS Public API\"")
            || out.contains("www-authenticate: Digest realm=\"MMS Public API\""),
        "{out}"
    );
    let unknown = format!("{base}{}", status_path("0123456789abcdef01234567"));
    let (code, out) = curl_source(SRC_USER, SRC_PASS, method_args("GET", &unknown)).await;
    assert_eq!(code, "404");
    assert_eq!(body_of(&out)["errorCode"], "ORG_NOT_FOUND");
    h.state
        .add_source_api_key(atlas_sim::ApiKeyConfig::new(
            "member",
            "member-secret",
            atlas_sim::roles(SRC_ORG, "ORG_MEMBER"),
        ))
        .expect("member key");
    let (code, _) = curl_source("member", "member-secret", method_args("GET", &status_url)).await;
    assert_eq!(code, "403");
}

#[tokio::test]
async fn curl_service_account_client_on_the_source_port() {
    let h = start(SimConfig::demo()).await;
    let base = source_url(&h);
    let token = mint(&h).await;
    let (code, out) = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            // As the Cloud Manager docs show: Basic client credentials, a form body.
            curl(&[
                "-u",
                &format!("{DEMO_SOURCE_CLIENT_ID}:{DEMO_SOURCE_CLIENT_SECRET}"),
                "-H",
                "Content-Type: application/x-www-form-urlencoded",
                "--data",
                "grant_type=client_credentials",
                &format!("{base}/api/oauth/token"),
            ])
        }
    })
    .await
    .expect("join");
    assert_eq!(code, "200", "{out}");
    let body = body_of(&out);
    assert_eq!(body["token_type"], "Bearer");
    let bearer = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let auth = format!("Authorization: Bearer {bearer}");
    let link_url = format!("{base}{}", link(SRC_ORG));
    let (code, out) = tokio::task::spawn_blocking(move || {
        let mut args = vec!["-H".to_owned(), auth];
        args.extend(post_args(&link_url, &token));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    })
    .await
    .expect("join");
    assert_eq!(code, "200", "{out}");
    assert_eq!(body_of(&out), json!({"status": "SYNCED"}));
}

#[tokio::test]
async fn tls_serves_the_source_port_with_the_same_ca() {
    let tls = SimTls::generate(&[]).expect("generate CA");
    let h = SimServer::start_tls(SimConfig::demo(), loopback(), loopback(), &tls)
        .await
        .expect("sim starts");
    let base = source_url(&h);
    assert!(base.starts_with("https://localhost:"), "{base}");
    let token = mint_tls(&h, &tls).await;
    let dir = tempfile::tempdir().expect("tmp");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).expect("write CA");
    let ca = ca.to_str().expect("utf8").to_owned();
    let link_url = format!("{base}{}", link(SRC_ORG));
    let mut args = vec!["--cacert".to_owned(), ca.clone()];
    args.extend(post_args(&link_url, &token));
    let (code, out) = curl_source(SRC_USER, SRC_PASS, args).await;
    assert_eq!(code, "200", "{out}");
    assert_eq!(body_of(&out), json!({"status": "SYNCED"}));
    // Without the CA, curl refuses the certificate.
    let url = link_url.clone();
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        run_tool(Command::new("curl").args(["-sS", "--noproxy", "*", "--max-time", "10", &url]))
    })
    .await
    .expect("join");
    assert!(!ok, "an untrusted certificate must fail");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

/// Mints a token over the TLS Atlas port (trusting only the generated CA).
async fn mint_tls(h: &SimHandle, tls: &SimTls) -> String {
    let http = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).expect("pem"))
        .build()
        .expect("client");
    let mut atlas = DigestClient::new(&h.atlas_url, USER, PASS);
    atlas.http = http;
    let r = atlas.send(Method::POST, &link_path(ORG), Some(BODY)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.json()["linkToken"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn binary_serves_the_source_port_and_logs_no_secrets() {
    let (child, line) = spawn_binary_ready(&["--demo", "--source-listen", "127.0.0.1:0"]).await;
    let atlas_url = ready_field(&line, "atlas_url=").expect("atlas_url");
    let base = ready_field(&line, "source_url=").expect("source_url in the ready line");
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");
    let mut atlas = DigestClient::new(&atlas_url, USER, PASS);
    let r = atlas.send(Method::POST, &link_path(ORG), Some(BODY)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let token = r.json()["linkToken"].as_str().expect("token").to_owned();
    let mut c = DigestClient::new(&base, SRC_USER, SRC_PASS);
    c.content_type = JSON.to_owned();
    let r = post_token(&mut c, SRC_ORG, &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = send(&mut c, Method::GET, &status_path(SRC_ORG), None).await;
    assert_eq!(r.json(), json!({"status": "SYNCED"}));
    let mut wrong = DigestClient::new(&base, SRC_USER, "wrong");
    wrong.content_type = JSON.to_owned();
    let r = post_token(&mut wrong, SRC_ORG, &token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let logs = stop_binary(child).await;
    assert!(logs.contains("source call"), "{logs}");
    assert!(
        logs.contains(&link(SRC_ORG)) && logs.contains("status=200") && logs.contains("status=401"),
        "{logs}"
    );
    for secret in [token.as_str(), SRC_PASS, PASS, "Digest "] {
        assert!(!logs.contains(secret), "log leaks {secret:.12}…");
    }
}

#[test]
fn source_config_loads_from_yaml() {
    let yaml = format!(
        "sourceOrgs:\n  - id: {SRC_ORG}\n    name: cm\nsourceApiKeys:\n  - publicKey: spk\n    privateKey: ssk\n    roles: {{{SRC_ORG}: [ORG_OWNER]}}\n"
    );
    let c = SimConfig::from_yaml(&yaml).expect("loads");
    assert_eq!(c.source_orgs[0].name, "cm");
    assert_eq!(c.source_api_keys[0].public_key, "spk");
    assert!(!format!("{c:?}").contains("ssk"), "Debug redacts secrets");
    for bad in [
        "sourceOrgs:\n  - id: nothex\n".to_owned(),
        format!("sourceOrgs:\n  - id: {SRC_ORG}\n  - id: {SRC_ORG}\n"),
        "sourceApiKeys:\n  - {publicKey: a, privateKey: b}\n  - {publicKey: a, privateKey: c}\n"
            .to_owned(),
        "sourceOrgs:\n  - id: 6a1e9b2a3c4d5e6f7a8b9c0d\n    extra: 1\n".to_owned(),
    ] {
        assert!(SimConfig::from_yaml(&bad).is_err(), "{bad}");
    }
    let demo = SimConfig::demo();
    assert_eq!(demo.source_orgs[0].id, SRC_ORG);
    assert_eq!(demo.source_api_keys[0].public_key, SRC_USER);
    assert_eq!(demo.source_api_keys[0].private_key, SRC_PASS);
}

#[tokio::test]
async fn atlas_nonces_and_bearer_tokens_mean_nothing_on_the_source_port() {
    let h = start(SimConfig::demo()).await;
    // A nonce the Atlas port handed out, used correctly on the source port: stale there.
    let mut atlas = DigestClient::new(&h.atlas_url, USER, PASS);
    let r = atlas.send(Method::DELETE, &link_path(ORG), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let nonce = atlas.nonce.clone().expect("atlas nonce");
    let path = status_path(SRC_ORG);
    let auth = super::digest_auth("GET", &path, SRC_USER, SRC_PASS, &nonce, 1);
    let r = client()
        .get(format!("{}{path}", source_url(&h)))
        .header("Authorization", auth)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        super::parse_challenge(&r).1,
        "stale=true: retry with a source nonce"
    );
    // A service-account bearer token of the Atlas side is refused (no service accounts here).
    let t = super::oauth_token(&h, "mdb_sa_id_demo", "mdb_sa_sk_demo").await;
    let bearer = t.json()["access_token"].as_str().expect("token").to_owned();
    let r = client()
        .get(format!("{}{path}", source_url(&h)))
        .header("Authorization", format!("Bearer {bearer}"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The source client itself gets through (404: nothing linked yet).
    let mut c = source_client(&h, SRC_USER, SRC_PASS);
    assert_eq!(
        send(&mut c, Method::GET, &path, None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn python_urllib_digest_client_on_the_source_port() {
    let h = start(SimConfig::demo()).await;
    let token = mint(&h).await;
    let base = source_url(&h);
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        super::python_client(
            ["source", &base, SRC_ORG, SRC_USER, SRC_PASS, &token]
                .map(str::to_owned)
                .to_vec(),
        )
    })
    .await
    .expect("join");
    assert!(ok, "python source: {out}{err}");
    for line in [
        "link 200 SYNCED",
        "status 200 SYNCED",
        "unlink 204",
        "unlink-again 404 MIGRATION_LINK_NOT_FOUND",
        "status-after 404 MIGRATION_LINK_NOT_FOUND",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    assert!(h.state.source_link(SRC_ORG).is_none());
}

#[tokio::test]
async fn a_status_fault_can_answer_not_synced() {
    // How a test makes the source report NOT_SYNCED while the token is still live.
    let h = start(SimConfig::demo()).await;
    let token = mint(&h).await;
    let mut c = source_client(&h, SRC_USER, SRC_PASS);
    assert_eq!(
        post_token(&mut c, SRC_ORG, &token).await.status,
        StatusCode::OK
    );
    let f = admin_post(
        &h,
        "/faults",
        json!({"kind": "status", "status": 200, "body": {"status": "NOT_SYNCED"}, "count": 1,
               "method": "GET", "target": "source"}),
    )
    .await;
    assert_eq!(f.status, StatusCode::CREATED, "{}", f.text);
    let r = send(&mut c, Method::GET, &status_path(SRC_ORG), None).await;
    assert_eq!(r.json(), json!({"status": "NOT_SYNCED"}));
    let r = send(&mut c, Method::GET, &status_path(SRC_ORG), None).await;
    assert_eq!(r.json(), json!({"status": "SYNCED"}));
}
