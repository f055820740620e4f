//! Black-box tests of atlas-sim over loopback HTTP. Digest responses are computed here by
//! hand (md5), and curl and Python's urllib act as independent clients. The source side
//! (Cloud Manager / Ops Manager) is tested in `sim/source_side.rs`, with these helpers.

// Not tests/source_side.rs: that would also be built as a test target of its own.
#[path = "sim/source_side.rs"]
mod source_side;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use atlas_sim::{self, CallKind, OrgConfig, RateLimitConfig, SimConfig, SimHandle, SimServer};
use base64::Engine as _;
use md5::{Digest as _, Md5};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

const ORG: &str = "5f1e9b2a3c4d5e6f7a8b9c0d";
const OTHER_ORG: &str = "aaaaaaaaaaaaaaaaaaaaaaaa";
const UNKNOWN_ORG: &str = "0123456789abcdef01234567";
const USER: &str = "demopublic";
const PASS: &str = "demo-private-key-0000";
const VERSION: &str = "application/vnd.atlas.2023-01-01+json";

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

async fn start(config: SimConfig) -> SimHandle {
    SimServer::start(config, loopback(), loopback())
        .await
        .expect("sim starts")
}

fn demo_with_other_org() -> SimConfig {
    let mut c = SimConfig::demo();
    c.orgs.push(OrgConfig::new(OTHER_ORG, "other"));
    c
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn link_path(org: &str) -> String {
    format!("/api/atlas/v2/orgs/{org}/liveMigrations/linkTokens")
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Digest Authorization value computed by hand (RFC 7616, MD5, qop=auth).
fn digest_auth(method: &str, uri: &str, user: &str, pass: &str, nonce: &str, nc: u32) -> String {
    let cnonce = "0a4f113b9c8d7e6f";
    let ha1 = md5_hex(&format!("{user}:MMS Public API:{pass}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let nc = format!("{nc:08x}");
    let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"MMS Public API\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=\"MD5\", qop=auth, nc={nc}, cnonce=\"{cnonce}\""
    )
}

/// (nonce, stale) of a WWW-Authenticate Digest challenge.
fn parse_challenge(resp: &reqwest::Response) -> (String, bool) {
    let h = resp
        .headers()
        .get("www-authenticate")
        .expect("challenge header")
        .to_str()
        .expect("ascii");
    let nonce = h
        .split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("nonce")
        .to_owned();
    (nonce, h.ends_with("stale=true"))
}

struct Resp {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("json {e}: {}", self.text))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn into_resp(r: reqwest::Response) -> Resp {
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    Resp {
        status,
        headers,
        text,
    }
}

/// A hand-rolled Digest client that keeps its nonce and counts nc, like the operator's.
struct DigestClient {
    http: reqwest::Client,
    base: String,
    user: String,
    pass: String,
    /// Content-Type of request bodies.
    content_type: String,
    nonce: Option<String>,
    nc: u32,
}

impl DigestClient {
    fn new(base: &str, user: &str, pass: &str) -> Self {
        Self {
            http: client(),
            base: base.to_owned(),
            user: user.to_owned(),
            pass: pass.to_owned(),
            content_type: VERSION.to_owned(),
            nonce: None,
            nc: 0,
        }
    }

    fn request(
        &self,
        method: &Method,
        path_and_query: &str,
        accept: Option<&str>,
        body: Option<&str>,
        auth: Option<String>,
    ) -> reqwest::RequestBuilder {
        let mut rb = self
            .http
            .request(method.clone(), format!("{}{path_and_query}", self.base));
        if let Some(a) = accept {
            rb = rb.header("Accept", a);
        }
        if let Some(b) = body {
            rb = rb
                .header("Content-Type", &self.content_type)
                .body(b.to_owned());
        }
        if let Some(a) = auth {
            rb = rb.header("Authorization", a);
        }
        rb
    }

    /// Sends with the cached nonce (challenging first when there is none or it went stale).
    async fn send_with(
        &mut self,
        method: Method,
        path_and_query: &str,
        accept: Option<&str>,
        body: Option<&str>,
    ) -> Resp {
        for _ in 0..3 {
            if self.nonce.is_none() {
                let r = self
                    .request(&method, path_and_query, accept, body, None)
                    .send()
                    .await
                    .expect("challenge");
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
                self.nonce = Some(parse_challenge(&r).0);
                self.nc = 0;
            }
            self.nc += 1;
            let nonce = self.nonce.clone().expect("nonce");
            let auth = digest_auth(
                method.as_str(),
                path_and_query,
                &self.user,
                &self.pass,
                &nonce,
                self.nc,
            );
            let r = self
                .request(&method, path_and_query, accept, body, Some(auth))
                .send()
                .await
                .expect("send");
            if r.status() == StatusCode::UNAUTHORIZED && parse_challenge(&r).1 {
                self.nonce = None;
                continue;
            }
            return into_resp(r).await;
        }
        panic!("stale loop");
    }

    async fn send(&mut self, method: Method, path_and_query: &str, body: Option<&str>) -> Resp {
        self.send_with(method, path_and_query, Some(VERSION), body)
            .await
    }
}

async fn admin_get(h: &SimHandle, path: &str) -> Resp {
    into_resp(
        client()
            .get(format!("{}{path}", h.admin_url))
            .send()
            .await
            .expect("admin"),
    )
    .await
}

async fn admin_post(h: &SimHandle, path: &str, body: Value) -> Resp {
    into_resp(
        client()
            .post(format!("{}{path}", h.admin_url))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("admin"),
    )
    .await
}

async fn admin_delete(h: &SimHandle, path: &str) -> Resp {
    into_resp(
        client()
            .delete(format!("{}{path}", h.admin_url))
            .send()
            .await
            .expect("admin"),
    )
    .await
}

async fn oauth_token(h: &SimHandle, id: &str, secret: &str) -> Resp {
    oauth_token_at(&h.atlas_url, id, secret).await
}

/// `POST {base}/api/oauth/token` with Basic client credentials (either port).
async fn oauth_token_at(base: &str, id: &str, secret: &str) -> Resp {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    into_resp(
        client()
            .post(format!("{base}/api/oauth/token"))
            .header("Authorization", format!("Basic {basic}"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .expect("token"),
    )
    .await
}

async fn bearer_call(h: &SimHandle, method: Method, org: &str, token: &str) -> Resp {
    let mut rb = client()
        .request(method.clone(), format!("{}{}", h.atlas_url, link_path(org)))
        .header("Accept", VERSION)
        .header("Authorization", format!("Bearer {token}"));
    if method == Method::POST {
        rb = rb
            .header("Content-Type", VERSION)
            .body(r#"{"accessListIps":[]}"#);
    }
    into_resp(rb.send().await.expect("bearer call")).await
}

const BODY: &str = r#"{"accessListIps":["192.0.2.10","10.1.0.0/16"]}"#;

#[tokio::test]
async fn challenge_header_and_401_body_match_atlas() {
    let h = start(SimConfig::demo()).await;
    let r = client()
        .post(format!("{}{}", h.atlas_url, link_path(ORG)))
        .header("Accept", VERSION)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let (nonce, stale) = parse_challenge(&r);
    assert_eq!(nonce.len(), 32);
    assert!(!stale);
    assert_eq!(
        challenge,
        format!(
            "Digest realm=\"MMS Public API\", domain=\"\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\", stale=false"
        )
    );
    let body: Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
    assert_eq!(
        body,
        json!({"error":401,"reason":"Unauthorized","detail":"You are not authorized for this resource.","errorCode":"UNEXPECTED_ERROR"})
    );
    // Wrong password and unknown user are refused with a fresh, non-stale challenge.
    for (user, pass) in [(USER, "wrong"), ("nobody", PASS)] {
        let mut c = DigestClient::new(&h.atlas_url, user, pass);
        let r = c.send(Method::POST, &link_path(ORG), Some(BODY)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{user}");
        assert!(
            r.header("www-authenticate")
                .expect("challenge")
                .ends_with("stale=false")
        );
    }
    assert_eq!(h.state.live_links(ORG), 0);
}

#[tokio::test]
async fn worst_case_link_semantics_over_digest() {
    let h = start(SimConfig::demo()).await;
    let mut c = DigestClient::new(&h.atlas_url, USER, PASS);
    let r1 = c.send(Method::POST, &link_path(ORG), Some(BODY)).await;
    assert_eq!(r1.status, StatusCode::CREATED, "{}", r1.text);
    assert_eq!(
        r1.header("content-type"),
        Some("application/vnd.atlas.2023-01-01+json;charset=utf-8")
    );
    assert_eq!(r1.header("ratelimit-limit"), Some("500"));
    assert_eq!(r1.header("ratelimit-remaining"), Some("499"));
    let t1 = r1.json()["linkToken"].as_str().expect("token").to_owned();
    // 256 random bits in base64url are 43 characters, after the prefix.
    assert!(t1.starts_with("atlsim_lt_") && t1.len() >= 10 + 43, "{t1}");
    let r2 = c.send(Method::POST, &link_path(ORG), Some(r#"{}"#)).await;
    assert_eq!(r2.status, StatusCode::CREATED);
    let t2 = r2.json()["linkToken"].as_str().expect("token").to_owned();
    assert_ne!(t1, t2);
    // The second POST used the same nonce with nc=2: nonce reuse is accepted.
    assert_eq!(c.nc, 2);

    assert_eq!(h.state.live_links(ORG), 2);
    let mut hashes = h.state.live_token_hashes(ORG);
    hashes.sort();
    let mut expected = vec![sha256_hex(&t1), sha256_hex(&t2)];
    expected.sort();
    assert_eq!(hashes, expected);
    assert!(h.state.is_token_live(&t1) && h.state.is_token_live(&t2));

    let d = c.send(Method::DELETE, &link_path(ORG), None).await;
    assert_eq!(d.status, StatusCode::NO_CONTENT);
    assert!(d.text.is_empty());
    assert_eq!(h.state.live_links(ORG), 0);
    assert!(!h.state.is_token_live(&t1) && !h.state.is_token_live(&t2));

    let d2 = c.send(Method::DELETE, &link_path(ORG), None).await;
    assert_eq!(d2.status, StatusCode::NOT_FOUND);
    assert_eq!(d2.header("content-type"), Some("application/json"));
    assert_eq!(
        d2.json(),
        json!({"detail":"Could not find the requested external organization link.","error":404,"errorCode":"UNEXPECTED_ERROR","parameters":null,"reason":"Not Found"})
    );

    // Admin view agrees, and answers token checks by value and by hash.
    let s = admin_get(&h, "/state").await.json();
    assert_eq!(s["orgs"][ORG]["liveLinks"], 0);
    assert_eq!(s["orgs"][ORG]["issued"], 2);
    assert_eq!(s["orgs"][ORG]["revoked"], 2);
    let chk = admin_post(&h, "/check-token", json!({"linkToken": t1}))
        .await
        .json();
    assert_eq!(chk["live"], false);
    assert_eq!(chk["status"], "revoked");
    assert_eq!(
        admin_get(&h, "/tokens/00ff").await.json()["status"],
        "unknown"
    );
    assert_eq!(
        h.state.calls("POST", CallKind::LinkTokens, 201),
        2,
        "calls counted"
    );
    assert_eq!(h.state.calls("DELETE", CallKind::LinkTokens, 404), 1);
}

#[tokio::test]
async fn replayed_nc_and_stale_nonce_are_refused() {
    let mut config = SimConfig::demo();
    config.digest_nonce_lifetime_seconds = 1;
    let h = start(config).await;
    let http = client();
    let url = format!("{}{}", h.atlas_url, link_path(ORG));
    let r = http.delete(&url).send().await.expect("probe");
    let (nonce, _) = parse_challenge(&r);
    let send = |nonce: String, nc: u32| {
        let http = http.clone();
        let url = url.clone();
        async move {
            http.delete(&url)
                .header("Accept", VERSION)
                .header(
                    "Authorization",
                    digest_auth("DELETE", &link_path(ORG), USER, PASS, &nonce, nc),
                )
                .send()
                .await
                .expect("send")
        }
    };
    assert_eq!(send(nonce.clone(), 1).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(send(nonce.clone(), 3).await.status(), StatusCode::NOT_FOUND);
    // nc 3 again, then a lower nc: both replays.
    for nc in [3, 2] {
        let r = send(nonce.clone(), nc).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "nc {nc}");
        assert!(!parse_challenge(&r).1, "replay is not stale");
    }
    // A nonce the server never issued, with a correct response: stale=true.
    let r = send("ffffffffffffffffffffffffffffffff".into(), 1).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(parse_challenge(&r).1);
    // After the lifetime the same nonce is stale even with a fresh nc.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = send(nonce.clone(), 4).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(parse_challenge(&r).1, "expired nonce answered stale=true");
    // And the client recovers with the new nonce.
    let (fresh, _) = parse_challenge(&r);
    assert_eq!(send(fresh, 1).await.status(), StatusCode::NOT_FOUND);
    // A digest computed for another uri is refused.
    let r2 = http.delete(&url).send().await.expect("probe");
    let (n2, _) = parse_challenge(&r2);
    let r = http
        .delete(&url)
        .header("Accept", VERSION)
        .header(
            "Authorization",
            digest_auth("DELETE", &link_path(OTHER_ORG), USER, PASS, &n2, 1),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn oauth_flow_errors_and_bearer_expiry() {
    let h = start(SimConfig::demo()).await;
    let r = oauth_token(&h, "mdb_sa_id_demo", "mdb_sa_sk_demo").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(token.split('.').count(), 3, "JWT-shaped");
    let p = bearer_call(&h, Method::POST, ORG, &token).await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.text);
    assert_eq!(h.state.live_links(ORG), 1);
    assert_eq!(h.state.oauth_tokens_minted("mdb_sa_id_demo"), 1);

    // Errors are OAuth-shaped.
    let bad = oauth_token(&h, "mdb_sa_id_demo", "wrong").await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        bad.json(),
        json!({"error":"invalid_client","error_description":"Invalid credentials provided."})
    );
    let basic = base64::engine::general_purpose::STANDARD.encode("mdb_sa_id_demo:mdb_sa_sk_demo");
    for (form, code) in [
        ("grant_type=password", "unsupported_grant_type"),
        ("scope=x", "invalid_request"),
    ] {
        let r = into_resp(
            client()
                .post(format!("{}/api/oauth/token", h.atlas_url))
                .header("Authorization", format!("Basic {basic}"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(form)
                .send()
                .await
                .expect("send"),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{form}");
        assert_eq!(r.json()["error"], code);
    }
    let unknown = bearer_call(&h, Method::POST, ORG, "not-a-token").await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);

    // Revoke: the token stops working at once.
    let rv = into_resp(
        client()
            .post(format!("{}/api/oauth/revoke", h.atlas_url))
            .header("Authorization", format!("Basic {basic}"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!("token={token}&token_type_hint=access_token"))
            .send()
            .await
            .expect("revoke"),
    )
    .await;
    assert_eq!(rv.status, StatusCode::OK);
    assert_eq!(
        bearer_call(&h, Method::POST, ORG, &token).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Expiry: a service account added at runtime with a 1 s token lifetime.
    let add = admin_post(
        &h,
        "/service-accounts",
        json!({"clientId":"short","clientSecret":"s3cret","roles":{ORG:["ORG_OWNER"]},"tokenLifetimeSeconds":1}),
    )
    .await;
    assert_eq!(add.status, StatusCode::CREATED, "{}", add.text);
    let t = oauth_token(&h, "short", "s3cret").await.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(
        bearer_call(&h, Method::DELETE, ORG, &t).await.status,
        StatusCode::NO_CONTENT
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let expired = bearer_call(&h, Method::DELETE, ORG, &t).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert_eq!(expired.json()["errorCode"], "UNEXPECTED_ERROR");
}

#[tokio::test]
async fn oauth_active_token_cap_is_100() {
    let h = start(SimConfig::demo()).await;
    let mut tokens = Vec::new();
    for i in 0..100 {
        let r = oauth_token(&h, "mdb_sa_id_demo", "mdb_sa_sk_demo").await;
        assert_eq!(r.status, StatusCode::OK, "token {i}");
        tokens.push(r.json()["access_token"].as_str().expect("t").to_owned());
    }
    let r = oauth_token(&h, "mdb_sa_id_demo", "mdb_sa_sk_demo").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["error"], "access_denied");
    assert!(
        r.json()["error_description"]
            .as_str()
            .expect("desc")
            .starts_with("Access Token limit reached")
    );
    // Revoking one frees a slot.
    let basic = base64::engine::general_purpose::STANDARD.encode("mdb_sa_id_demo:mdb_sa_sk_demo");
    let rv = client()
        .post(format!("{}/api/oauth/revoke", h.atlas_url))
        .header("Authorization", format!("Basic {basic}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("token={}", tokens[0]))
        .send()
        .await
        .expect("revoke");
    assert_eq!(rv.status(), StatusCode::OK);
    assert_eq!(
        oauth_token(&h, "mdb_sa_id_demo", "mdb_sa_sk_demo")
            .await
            .status,
        StatusCode::OK
    );
    let s = admin_get(&h, "/state").await.json();
    assert_eq!(s["oauth"]["mdb_sa_id_demo"]["live"], 100);
    assert_eq!(s["oauth"]["mdb_sa_id_demo"]["minted"], 101);
}

#[tokio::test]
async fn version_header_is_required() {
    let h = start(SimConfig::demo()).await;
    let mut c = DigestClient::new(&h.atlas_url, USER, PASS);
    for accept in [
        None,
        Some("application/json"),
        Some("*/*"),
        Some("application/vnd.atlas.2025-03-12+json"),
    ] {
        let r = c
            .send_with(Method::POST, &link_path(ORG), accept, Some(BODY))
            .await;
        assert_eq!(r.status, StatusCode::NOT_ACCEPTABLE, "{accept:?}");
        assert_eq!(r.json()["errorCode"], "INVALID_VERSION_DATE");
        assert_eq!(r.json()["error"], 406);
    }
    // A body declared as another version is refused too.
    let r = c
        .request(&Method::POST, &link_path(ORG), Some(VERSION), None, None)
        .send()
        .await
        .expect("probe");
    let (nonce, _) = parse_challenge(&r);
    let r = c
        .http
        .post(format!("{}{}", h.atlas_url, link_path(ORG)))
        .header("Accept", VERSION)
        .header("Content-Type", "application/vnd.atlas.2099-01-01+json")
        .header(
            "Authorization",
            digest_auth("POST", &link_path(ORG), USER, PASS, &nonce, 1),
        )
        .body(BODY)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE);
    assert_eq!(h.state.live_links(ORG), 0);
}

#[tokio::test]
async fn delete_conflicts_while_migrating() {
    let h = start(SimConfig::demo()).await;
    let mut c = DigestClient::new(&h.atlas_url, USER, PASS);
    assert_eq!(
        c.send(Method::POST, &link_path(ORG), Some(BODY))
            .await
            .status,
        StatusCode::CREATED
    );
    let m = admin_post(
        &h,
        &format!("/orgs/{ORG}/migrating"),
        json!({"migrating": true}),
    )
    .await;
    assert_eq!(m.status, StatusCode::OK);
    let r = c.send(Method::DELETE, &link_path(ORG), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(
        r.json()["errorCode"],
        "CANNOT_DELETE_ORG_ACTIVE_LIVE_MIGRATION_ATLAS_ORG_LINK"
    );
    assert_eq!(h.state.live_links(ORG), 1, "409 removes nothing");
    admin_post(
        &h,
        &format!("/orgs/{ORG}/migrating"),
        json!({"migrating": false}),
    )
    .await;
    assert_eq!(
        c.send(Method::DELETE, &link_path(ORG), None).await.status,
        StatusCode::NO_CONTENT
    );
    let unknown = admin_post(
        &h,
        &format!("/orgs/{UNKNOWN_ORG}/migrating"),
        json!({"migrating": true}),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let mut config = SimConfig::demo();
    config.orgs[0].rate_limit = Some(RateLimitConfig {
        capacity: 2,
        refill_per_minute: 1,
    });
    config.orgs.push(OrgConfig::new(OTHER_ORG, "other"));
    config.api_keys[0]
        .roles
        .insert(OTHER_ORG.to_owned(), vec!["ORG_OWNER".to_owned()]);
    let h = start(config).await;
    let mut c = DigestClient::new(&h.atlas_url, USER, PASS);
    let a = c.send(Method::POST, &link_path(ORG), Some(BODY)).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.header("ratelimit-limit"), Some("2"));
    assert_eq!(a.header("ratelimit-remaining"), Some("1"));
    let b = c.send(Method::DELETE, &link_path(ORG), None).await;
    assert_eq!(b.status, StatusCode::NO_CONTENT);
    assert_eq!(b.header("ratelimit-remaining"), Some("0"));
    let r = c.send(Method::POST, &link_path(ORG), Some(BODY)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("secs");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(r.header("ratelimit-limit"), Some("2"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(r.json()["errorCode"], "RATE_LIMITED_TOKEN_BUCKET");
    assert_eq!(h.state.live_links(ORG), 0, "a limited POST mints nothing");
    // Buckets are per org: the other org still has its full default capacity.
    let o = c
        .send(Method::POST, &link_path(OTHER_ORG), Some(BODY))
        .await;
    assert_eq!(o.status, StatusCode::CREATED);
    assert_eq!(o.header("ratelimit-limit"), Some("500"));
}

#[tokio::test]
async fn non_owner_gets_403_and_unknown_org_404() {
    let h = start(demo_with_other_org()).await;
    let add = admin_post(
        &h,
        "/api-keys",
        json!({"publicKey":"member","privateKey":"member-secret","roles":{ORG:["ORG_MEMBER"]}}),
    )
    .await;
    assert_eq!(add.status, StatusCode::CREATED, "{}", add.text);
    let mut member = DigestClient::new(&h.atlas_url, "member", "member-secret");
    for m in [Method::POST, Method::DELETE] {
        let body = (m == Method::POST).then_some(BODY);
        let r = member.send(m.clone(), &link_path(ORG), body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{m}");
        assert_eq!(r.json()["error"], 403);
    }
    // The demo key owns ORG only.
    let mut owner = DigestClient::new(&h.atlas_url, USER, PASS);
    let r = owner
        .send(Method::POST, &link_path(OTHER_ORG), Some(BODY))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = owner
        .send(Method::POST, &link_path(UNKNOWN_ORG), Some(BODY))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["errorCode"], "RESOURCE_NOT_FOUND");
    // Service accounts are checked the same way.
    admin_post(
        &h,
        "/service-accounts",
        json!({"clientId":"sa_member","clientSecret":"x","roles":{ORG:["ORG_READ_ONLY"]}}),
    )
    .await;
    let t = oauth_token(&h, "sa_member", "x").await.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(
        bearer_call(&h, Method::POST, ORG, &t).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(h.state.live_links(ORG), 0);
    assert_eq!(h.state.live_links(OTHER_ORG), 0);
}

#[tokio::test]
async fn bad_requests_carry_bad_request_detail() {
    let h = start(SimConfig::demo()).await;
    let mut c = DigestClient::new(&h.atlas_url, USER, PASS);
    let r = c
        .send(Method::POST, &link_path("not-an-org"), Some(BODY))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["badRequestDetail"]["fields"][0]["field"], "orgId");
    let cases: [(&str, &str, &str); 7] = [
        ("{", "MALFORMED_JSON", "body"),
        ("", "MALFORMED_JSON", "body"),
        (
            r#"{"accessListIps":"1.2.3.4"}"#,
            "INVALID_JSON_ATTRIBUTE",
            "accessListIps",
        ),
        (
            r#"{"accessListIps":["1.2.3.4",7]}"#,
            "INVALID_JSON_ATTRIBUTE",
            "accessListIps[1]",
        ),
        (
            r#"{"accessListIps":["300.1.1.1"]}"#,
            "INVALID_IP_ADDRESS_OR_CIDR_NOTATION",
            "accessListIps[0]",
        ),
        (
            r#"{"accessListIps":["10.0.0.0/40"]}"#,
            "INVALID_IP_ADDRESS_OR_CIDR_NOTATION",
            "accessListIps[0]",
        ),
        (r#"{"accessList":[]}"#, "INVALID_ATTRIBUTE", "accessList"),
    ];
    for (body, code, field) in cases {
        let r = c.send(Method::POST, &link_path(ORG), Some(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let j = r.json();
        assert_eq!(j["errorCode"], code, "{body}");
        assert_eq!(j["error"], 400);
        assert_eq!(j["badRequestDetail"]["fields"][0]["field"], field, "{body}");
        assert!(j["badRequestDetail"]["fields"][0]["description"].is_string());
    }
    assert_eq!(h.state.live_links(ORG), 0, "no 400 mints a link");
    // IPv6 addresses and CIDR blocks are fine; so is an empty list.
    let ok = c
        .send(
            Method::POST,
            &link_path(ORG),
            Some(r#"{"accessListIps":["2001:db8::1","2001:db8::/32","203.0.113.0/24"]}"#),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
    let links = admin_get(&h, "/state").await.json()["orgs"][ORG]["links"].clone();
    assert_eq!(links[0]["accessListIps"][1], "2001:db8::/32");
}

#[tokio::test]
async fn envelope_and_pretty() {
    let h = start(SimConfig::demo()).await;
    let mut c = DigestClient::new(&h.atlas_url, USER, PASS);
    let path = format!("{}?envelope=true&pretty=true", link_path(ORG));
    let r = c.send(Method::POST, &path, Some(BODY)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("\n  "), "pretty: {}", r.text);
    let j = r.json();
    assert_eq!(j["status"], 201);
    assert!(
        j["content"]["linkToken"]
            .as_str()
            .expect("token")
            .starts_with("atlsim_lt_")
    );
    let path = format!("{}?envelope=true", link_path(ORG));
    let d = c.send(Method::DELETE, &path, None).await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(d.json(), json!({"status":204,"content":null}));
    assert!(!d.text.contains('\n'), "compact without pretty");
    let e = c.send(Method::DELETE, &path, None).await;
    assert_eq!(e.status, StatusCode::OK);
    assert_eq!(e.json()["status"], 404);
    assert_eq!(e.json()["content"]["errorCode"], "UNEXPECTED_ERROR");
    let p = c
        .send(
            Method::POST,
            &format!("{}?pretty=true", link_path(ORG)),
            Some(BODY),
        )
        .await;
    assert_eq!(p.status, StatusCode::CREATED);
    assert!(p.text.contains("\n  \"linkToken\""));
    let bad = c
        .send(
            Method::DELETE,
            &format!("{}?envelope=yes", link_path(ORG)),
            None,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["errorCode"], "INVALID_QUERY_PARAMETER");
}

#[tokio::test]
async fn injected_faults() {
    let h = start(SimConfig::demo()).await;
    let mut c = DigestClient::new(&h.atlas_url, USER, PASS);

    // Status: the next POST only; DELETE is untouched.
    let f = admin_post(
        &h,
        "/faults",
        json!({"kind":"status","status":503,"count":1,"method":"POST","headers":{"Retry-After":"7"}}),
    )
    .await;
    assert_eq!(f.status, StatusCode::CREATED, "{}", f.text);
    assert_eq!(
        c.send(Method::DELETE, &link_path(ORG), None).await.status,
        StatusCode::NOT_FOUND
    );
    let r = c.send(Method::POST, &link_path(ORG), Some(BODY)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.json()["error"], 503);
    assert_eq!(h.state.live_links(ORG), 0, "a faulted POST mints nothing");
    assert_eq!(
        c.send(Method::POST, &link_path(ORG), Some(BODY))
            .await
            .status,
        StatusCode::CREATED
    );

    // Custom JSON body, only for another org: does not fire for ORG.
    admin_post(
        &h,
        "/faults",
        json!({"kind":"status","status":500,"count":1,"orgId":UNKNOWN_ORG,"body":{"error":500}}),
    )
    .await;
    assert_eq!(
        c.send(Method::DELETE, &link_path(ORG), None).await.status,
        StatusCode::NO_CONTENT
    );
    let r = c.send(Method::DELETE, &link_path(UNKNOWN_ORG), None).await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::INTERNAL_SERVER_ERROR, json!({"error":500}))
    );

    // Latency.
    admin_post(
        &h,
        "/faults",
        json!({"kind":"latency","latencyMs":400,"count":1}),
    )
    .await;
    let t0 = Instant::now();
    let r = c.send(Method::DELETE, &link_path(ORG), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );

    // Garbage body from a "proxy".
    admin_post(&h, "/faults", json!({"kind":"garbage","count":1})).await;
    let r = c.send(Method::POST, &link_path(ORG), Some(BODY)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert!(serde_json::from_str::<Value>(&r.text).is_err());

    // Dropped connection: no response at all.
    admin_post(
        &h,
        "/faults",
        json!({"kind":"drop","count":1,"method":"POST"}),
    )
    .await;
    let probe = client()
        .post(format!("{}{}", h.atlas_url, link_path(ORG)))
        .send()
        .await
        .expect("probe");
    let (nonce, _) = parse_challenge(&probe);
    let err = client()
        .post(format!("{}{}", h.atlas_url, link_path(ORG)))
        .header("Accept", VERSION)
        .header("Content-Type", VERSION)
        .header(
            "Authorization",
            digest_auth("POST", &link_path(ORG), USER, PASS, &nonce, 1),
        )
        .body(BODY)
        .send()
        .await
        .expect_err("connection dropped");
    assert!(!err.is_timeout() && !err.is_status(), "{err:?}");
    assert_eq!(h.state.calls("POST", CallKind::LinkTokens, 0), 1);
    assert_eq!(h.state.live_links(ORG), 0, "a dropped POST mints nothing");

    // An unlimited fault lasts until DELETE /faults.
    admin_post(&h, "/faults", json!({"kind":"status","status":502})).await;
    for _ in 0..3 {
        assert_eq!(
            c.send(Method::DELETE, &link_path(ORG), None).await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    assert_eq!(
        admin_get(&h, "/faults")
            .await
            .json()
            .as_array()
            .expect("list")
            .len(),
        1
    );
    assert_eq!(
        admin_delete(&h, "/faults").await.status,
        StatusCode::NO_CONTENT
    );
    // Back to the real answer (no link left).
    assert_eq!(
        c.send(Method::DELETE, &link_path(ORG), None).await.status,
        StatusCode::NOT_FOUND
    );
    // OAuth endpoint faults.
    admin_post(
        &h,
        "/faults",
        json!({"kind":"status","status":429,"count":1,"target":"oauth"}),
    )
    .await;
    assert_eq!(
        oauth_token(&h, "mdb_sa_id_demo", "mdb_sa_sk_demo")
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Invalid fault specs are refused.
    let bad = admin_post(&h, "/faults", json!({"kind":"status"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad = admin_post(&h, "/faults", json!({"kind":"explode"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn reset_clears_links_and_counters_but_keeps_config() {
    let h = start(SimConfig::demo()).await;
    admin_post(
        &h,
        "/api-keys",
        json!({"publicKey":"k2","privateKey":"p2","roles":{ORG:["ORG_OWNER"]}}),
    )
    .await;
    admin_post(
        &h,
        &format!("/orgs/{ORG}/migrating"),
        json!({"migrating": true}),
    )
    .await;
    let mut c = DigestClient::new(&h.atlas_url, "k2", "p2");
    assert_eq!(
        c.send(Method::POST, &link_path(ORG), Some(BODY))
            .await
            .status,
        StatusCode::CREATED
    );
    admin_post(&h, "/faults", json!({"kind":"status","status":500})).await;
    assert_eq!(
        admin_post(&h, "/reset", json!({})).await.status,
        StatusCode::NO_CONTENT
    );
    let s = admin_get(&h, "/state").await.json();
    assert_eq!(s["orgs"][ORG]["liveLinks"], 0);
    assert_eq!(s["orgs"][ORG]["issued"], 0);
    assert_eq!(s["orgs"][ORG]["migrating"], true, "config kept");
    assert_eq!(s["callsTotal"], 0);
    assert_eq!(s["faults"], json!([]));
    // The runtime-added key still works, with the same cached nonce.
    assert_eq!(
        c.send(Method::POST, &link_path(ORG), Some(BODY))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(h.state.live_links(ORG), 1);
}

#[tokio::test]
async fn admin_api_validates_input() {
    let h = start(SimConfig::demo()).await;
    assert_eq!(admin_get(&h, "/healthz").await.text, "ok");
    let r = admin_post(&h, "/orgs", json!({"id": ORG})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = admin_post(&h, "/orgs", json!({"id": "XYZ"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = admin_post(&h, "/orgs", json!({"id": OTHER_ORG, "name": "o"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(admin_get(&h, "/state").await.json()["orgs"][OTHER_ORG].is_object());
    let r = admin_post(
        &h,
        "/api-keys",
        json!({"publicKey": USER, "privateKey": "x"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = admin_post(&h, "/api-keys", json!({"publicKey": "k"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // The state never carries a secret.
    let text = admin_get(&h, "/state").await.text;
    assert!(!text.contains(PASS) && !text.contains("mdb_sa_sk_demo"));
}

#[test]
fn config_loads_from_yaml() {
    let yaml = format!(
        "orgs:\n  - id: {ORG}\n    name: a\n    migrating: true\n    rateLimit: {{capacity: 3, refillPerMinute: 6}}\napiKeys:\n  - publicKey: pk\n    privateKey: sk\n    roles: {{{ORG}: [ORG_OWNER]}}\nserviceAccounts:\n  - clientId: c\n    clientSecret: s\n    roles: {{{ORG}: [ORG_MEMBER]}}\n    tokenLifetimeSeconds: 60\nrateLimit:\n  capacity: 10\ndigestNonceLifetimeSeconds: 30\n"
    );
    let c = SimConfig::from_yaml(&yaml).expect("loads");
    assert!(c.orgs[0].migrating);
    assert_eq!(c.rate_limit.capacity, 10);
    assert_eq!(c.rate_limit.refill_per_minute, 250, "default kept");
    assert_eq!(c.service_accounts[0].max_active_tokens, 100);
    assert!(!format!("{c:?}").contains("sk\""), "Debug redacts secrets");
    assert!(SimConfig::from_yaml("orgs:\n  - id: nothex\n").is_err());
    assert!(SimConfig::from_yaml("bogus: 1\n").is_err());
    // The demo knows one org per example in deploy/examples, each owned by the demo key and
    // service account.
    let demo = SimConfig::demo();
    assert_eq!(demo.orgs[0].id, ORG);
    let ids: Vec<&str> = demo.orgs.iter().map(|o| o.id.as_str()).collect();
    for example in [
        "api-key.yaml",
        "service-account.yaml",
        "custom-secret-retain.yaml",
    ] {
        let text = std::fs::read_to_string(format!(
            "{}/../../deploy/examples/{example}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("example");
        let org = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("orgId: "))
            .expect("orgId in example");
        assert!(
            ids.contains(&org),
            "{example}: org {org} unknown to atlas-sim --demo"
        );
        for roles in [&demo.api_keys[0].roles, &demo.service_accounts[0].roles] {
            assert_eq!(
                roles.get(org),
                Some(&vec![atlas_sim::ORG_OWNER.to_string()]),
                "{example}"
            );
        }
    }
    assert_eq!(demo.api_keys[0].public_key, USER);
    assert_eq!(demo.service_accounts[0].client_id, "mdb_sa_id_demo");
}

fn run_tool(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn curl_digest_client() {
    let h = start(SimConfig::demo()).await;
    let url = format!("{}{}", h.atlas_url, link_path(ORG));
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        run_tool(Command::new("curl").args([
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "10",
            "--digest",
            "-u",
            &format!("{USER}:{PASS}"),
            "-H",
            &format!("Accept: {VERSION}"),
            "-H",
            &format!("Content-Type: {VERSION}"),
            "-X",
            "POST",
            "--data",
            r#"{"accessListIps":["198.51.100.7"]}"#,
            "-w",
            "\n%{http_code}",
            &url,
        ]))
    })
    .await
    .expect("join");
    assert!(ok, "curl failed: {err}");
    let (body, code) = out.rsplit_once('\n').expect("status line");
    assert_eq!(code, "201", "{out}");
    let token = serde_json::from_str::<Value>(body).expect("json")["linkToken"]
        .as_str()
        .expect("token")
        .to_owned();
    assert!(h.state.is_token_live(&token));
    // curl with a wrong password gets the 401.
    let url = format!("{}{}", h.atlas_url, link_path(ORG));
    let (_, out, _) = tokio::task::spawn_blocking(move || {
        run_tool(Command::new("curl").args([
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "10",
            "--digest",
            "-u",
            "demopublic:nope",
            "-H",
            &format!("Accept: {VERSION}"),
            "-X",
            "DELETE",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ]))
    })
    .await
    .expect("join");
    assert_eq!(out, "401");
    assert_eq!(h.state.live_links(ORG), 1);
}

fn python_client(args: Vec<String>) -> (bool, String, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sim_client.py");
    run_tool(Command::new("python3").arg(script).args(args))
}

#[tokio::test]
async fn python_urllib_digest_and_oauth_clients() {
    let h = start(SimConfig::demo()).await;
    let base = h.atlas_url.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        python_client(
            ["digest", &base, ORG, USER, PASS]
                .map(str::to_owned)
                .to_vec(),
        )
    })
    .await
    .expect("join");
    assert!(ok, "python digest: {out}{err}");
    assert!(
        out.contains("post 201") && out.contains("delete 204") && out.contains("delete-again 404"),
        "{out}"
    );
    assert_eq!(h.state.live_links(ORG), 0);
    assert_eq!(h.state.calls("POST", CallKind::LinkTokens, 201), 1);

    let base = h.atlas_url.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        python_client(
            ["oauth", &base, ORG, "mdb_sa_id_demo", "mdb_sa_sk_demo"]
                .map(str::to_owned)
                .to_vec(),
        )
    })
    .await
    .expect("join");
    assert!(ok, "python oauth: {out}{err}");
    assert!(out.contains("after-revoke 401"), "{out}");
    assert_eq!(h.state.live_links(ORG), 1);
    assert_eq!(h.state.oauth_tokens_minted("mdb_sa_id_demo"), 1);
}

/// Runs the real binary; returns (child, atlas_url, admin_url).
async fn spawn_binary(args: &[&str]) -> (tokio::process::Child, String, String) {
    let (child, line) = spawn_binary_ready(args).await;
    let field = |name: &str| ready_field(&line, name).expect("url in ready line");
    (child, field("atlas_url="), field("admin_url="))
}

/// The value of `name` (e.g. `"atlas_url="`) in the ready line.
fn ready_field(line: &str, name: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name))
        .map(str::to_owned)
}

/// Runs the real binary; returns the child and its ready line.
async fn spawn_binary_ready(args: &[&str]) -> (tokio::process::Child, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_atlas-sim"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn atlas-sim");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("ready line in time")
        .expect("read")
        .expect("a line");
    assert!(line.starts_with("atlas-sim ready"), "{line}");
    (child, line)
}

async fn stop_binary(mut child: tokio::process::Child) -> String {
    use tokio::io::AsyncReadExt;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status}");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .await
        .expect("stderr");
    err
}

#[tokio::test]
async fn binary_demo_serves_and_logs_no_secrets() {
    // A free source port: --demo alone would take the fixed 8092, which a local demo may hold.
    let (child, atlas_url, admin_url) =
        spawn_binary(&["--demo", "--source-listen", "127.0.0.1:0"]).await;
    let mut c = DigestClient::new(&atlas_url, USER, PASS);
    let r = c.send(Method::POST, &link_path(ORG), Some(BODY)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let token = r.json()["linkToken"].as_str().expect("token").to_owned();
    let state: Value = serde_json::from_str(
        &client()
            .get(format!("{admin_url}/state"))
            .send()
            .await
            .expect("state")
            .text()
            .await
            .expect("body"),
    )
    .expect("json");
    assert_eq!(state["orgs"][ORG]["liveLinks"], 1);
    assert_eq!(state["orgs"][ORG]["liveTokenSha256"][0], sha256_hex(&token));
    let basic = base64::engine::general_purpose::STANDARD.encode("mdb_sa_id_demo:mdb_sa_sk_demo");
    let t = client()
        .post(format!("{atlas_url}/api/oauth/token"))
        .header("Authorization", format!("Basic {basic}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .expect("token");
    assert_eq!(t.status(), StatusCode::OK);
    let access: Value = serde_json::from_str(&t.text().await.expect("body")).expect("json");
    let access = access["access_token"].as_str().expect("t").to_owned();

    let logs = stop_binary(child).await;
    assert!(logs.contains("atlas call"), "{logs}");
    assert!(
        logs.contains("status=201") && logs.contains("status=401"),
        "{logs}"
    );
    assert!(logs.contains("error_code=UNEXPECTED_ERROR"), "{logs}");
    for secret in [
        token.as_str(),
        access.as_str(),
        PASS,
        "mdb_sa_sk_demo",
        "Digest ",
        "Basic ",
    ] {
        assert!(!logs.contains(secret), "log leaks {secret:.12}…");
    }
}

#[tokio::test]
async fn binary_reads_yaml_config_and_rate_limit_flags() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("sim.yaml");
    std::fs::write(
        &path,
        format!("orgs:\n  - id: {ORG}\napiKeys:\n  - publicKey: {USER}\n    privateKey: {PASS}\n    roles: {{{ORG}: [ORG_OWNER]}}\n"),
    )
    .expect("write");
    let (child, line) = spawn_binary_ready(&[
        "--config",
        path.to_str().expect("utf8"),
        "--rate-limit-capacity",
        "1",
        "--rate-limit-refill-per-minute",
        "1",
    ])
    .await;
    // The source port is off unless asked for (or --demo).
    assert_eq!(ready_field(&line, "source_url="), None, "{line}");
    let atlas_url = ready_field(&line, "atlas_url=").expect("atlas_url");
    let mut c = DigestClient::new(&atlas_url, USER, PASS);
    assert_eq!(
        c.send(Method::DELETE, &link_path(ORG), None).await.status,
        StatusCode::NOT_FOUND
    );
    let r = c.send(Method::DELETE, &link_path(ORG), None).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("ratelimit-limit"), Some("1"));
    stop_binary(child).await;
    // A bad config file is refused with exit code 2.
    std::fs::write(&path, "orgs: [{id: nope}]\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_atlas-sim"))
        .args([
            "--config",
            path.to_str().expect("utf8"),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn the_call_history_lists_each_call_of_an_org_in_order_with_faults_marked() {
    let h = start(demo_with_other_org()).await;
    let mut c = DigestClient::new(&h.atlas_url, USER, PASS);
    let r = admin_post(
        &h,
        "/faults",
        json!({"kind": "status", "status": 503, "count": 1, "method": "POST", "orgId": ORG}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        c.send(Method::POST, &link_path(ORG), Some(BODY))
            .await
            .status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        c.send(Method::POST, &link_path(ORG), Some(BODY))
            .await
            .status,
        StatusCode::CREATED
    );
    c.send(Method::DELETE, &link_path(OTHER_ORG), None).await;
    let mine = h.state.call_history(Some(ORG));
    let authed: Vec<(String, u16, bool)> = mine
        .iter()
        .filter(|r| r.status != 401)
        .map(|r| (r.method.clone(), r.status, r.fault))
        .collect();
    assert_eq!(
        authed,
        vec![("POST".into(), 503, true), ("POST".into(), 201, false)]
    );
    assert!(mine.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(h.state.call_history(None).len() > mine.len());
    let r = admin_get(&h, &format!("/calls?orgId={ORG}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json().as_array().map(Vec::len), Some(mine.len()));
    let text = r.json().to_string();
    assert!(!text.contains("atlsim_lt_"), "the history holds no token");
    h.state.reset();
    assert!(h.state.call_history(None).is_empty());
}
