//! The Atlas client against fake Atlas servers on loopback (axum on 127.0.0.1:0, raw TCP where
//! HTTP must misbehave). The fake verifies Digest responses with the independent `digest_auth`
//! crate, so the client's own hashing is not checking itself. Every test is bounded in time.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use linktoken_operator::api::Reason;
use linktoken_operator::atlas::{
    AtlasClient, AtlasConfig, AtlasError, BodyKind, Credentials, DeleteOutcome, Endpoint,
    Operation, RequestObserver, RequestRecord, RetryHint, TransportKind, classify,
};

const ORG: &str = "0123456789abcdef01234567";
const PUB: &str = "pubkeyABC";
const PRIV: &str = "privkey-5e3f1d2c-0000-4000-8000-000000000001";
const CLIENT_ID: &str = "mdb_sa_id_0123";
const CLIENT_SECRET: &str = "mdb_sa_sk_SECRETSECRET";
const LINK_TOKEN: &str = "bGlua3Rva2VuLXNlY3JldC12YWx1ZQ==";
const MEDIA: &str = "application/vnd.atlas.2023-01-01+json";

/// Every test runs under this bound.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test exceeded its time bound");
}

fn api_key() -> Credentials {
    Credentials::api_key(PUB, PRIV)
}

fn service_account() -> Credentials {
    Credentials::service_account(CLIENT_ID, CLIENT_SECRET)
}

// ---------------------------------------------------------------------------------------------
// The fake Atlas.

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    delay: Duration,
}

impl Reply {
    fn new(status: u16, body: &str) -> Self {
        let mut headers = Vec::new();
        if !body.is_empty() {
            headers.push(("content-type", "application/json".to_owned()));
        }
        Reply {
            status,
            headers,
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
        }
    }
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.to_owned()));
        self
    }
    fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    headers: HeaderMap,
    body: Bytes,
}

enum TokenMode {
    Ok { expires_in: u64 },
    Fail(Reply),
}

struct Fake {
    /// Requests on the link-token path (every round trip, authenticated or not).
    api_requests: AtomicUsize,
    token_requests: AtomicUsize,
    require_auth: bool,
    nonce: Mutex<String>,
    nonce_counter: AtomicUsize,
    old_nonces: Mutex<HashSet<String>>,
    last_nc: Mutex<HashMap<String, u32>>,
    post: Mutex<Reply>,
    delete: Mutex<Reply>,
    token_mode: Mutex<TokenMode>,
    token_delay: Mutex<Duration>,
    valid_tokens: Mutex<HashSet<String>>,
    seen: Mutex<Vec<Seen>>,
}

impl Fake {
    fn new(require_auth: bool) -> Arc<Fake> {
        Arc::new(Fake {
            api_requests: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
            require_auth,
            nonce: Mutex::new("nonce-0".into()),
            nonce_counter: AtomicUsize::new(0),
            old_nonces: Mutex::new(HashSet::new()),
            last_nc: Mutex::new(HashMap::new()),
            post: Mutex::new(Reply::new(
                201,
                &format!(r#"{{"linkToken":"{LINK_TOKEN}"}}"#),
            )),
            delete: Mutex::new(Reply::new(204, "")),
            token_mode: Mutex::new(TokenMode::Ok { expires_in: 3600 }),
            token_delay: Mutex::new(Duration::ZERO),
            valid_tokens: Mutex::new(HashSet::new()),
            seen: Mutex::new(Vec::new()),
        })
    }

    fn set_post(&self, r: Reply) {
        *self.post.lock().unwrap() = r;
    }
    fn set_delete(&self, r: Reply) {
        *self.delete.lock().unwrap() = r;
    }
    fn api(&self) -> usize {
        self.api_requests.load(Ordering::SeqCst)
    }
    fn tokens(&self) -> usize {
        self.token_requests.load(Ordering::SeqCst)
    }
    /// Expires the current nonce: requests still using it get `stale=true`.
    fn rotate_nonce(&self) {
        let n = self.nonce_counter.fetch_add(1, Ordering::SeqCst) + 1;
        let mut cur = self.nonce.lock().unwrap();
        self.old_nonces.lock().unwrap().insert(cur.clone());
        *cur = format!("nonce-{n}");
    }
    fn challenge(&self, stale: bool) -> Response {
        let nonce = self.nonce.lock().unwrap().clone();
        let www = format!(
            r#"Digest realm="MMS Public API", domain="", nonce="{nonce}", algorithm=MD5, qop="auth", stale={stale}"#
        );
        let mut r = (
            StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            r#"{"error":401,"reason":"Unauthorized","detail":"You are not authorized for this resource.","errorCode":"UNEXPECTED_ERROR"}"#,
        )
            .into_response();
        r.headers_mut()
            .insert("www-authenticate", HeaderValue::from_str(&www).unwrap());
        r
    }

    /// Verifies an Authorization header; None = accepted.
    fn authenticate(&self, method: &Method, uri: &str, headers: &HeaderMap) -> Option<Response> {
        let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return Some(self.challenge(false));
        };
        if let Some(token) = auth.strip_prefix("Bearer ") {
            return if self.valid_tokens.lock().unwrap().contains(token) {
                None
            } else {
                Some(
                    (
                        StatusCode::UNAUTHORIZED,
                        r#"{"error":401,"errorCode":"UNEXPECTED_ERROR","detail":"Invalid token"}"#,
                    )
                        .into_response(),
                )
            };
        }
        let Ok(hdr) = digest_auth::AuthorizationHeader::parse(auth) else {
            return Some(self.challenge(false));
        };
        if hdr.username != PUB || hdr.uri != uri || hdr.realm != "MMS Public API" {
            return Some(self.challenge(false));
        }
        let current = self.nonce.lock().unwrap().clone();
        if hdr.nonce != current {
            let stale = self.old_nonces.lock().unwrap().contains(&hdr.nonce);
            return Some(self.challenge(stale));
        }
        let mut ctx = digest_auth::AuthContext::new_with_method(
            PUB,
            PRIV,
            hdr.uri.clone(),
            Option::<&[u8]>::None,
            digest_auth::HttpMethod(method.as_str().to_owned().into()),
        );
        ctx.set_custom_cnonce(hdr.cnonce.clone().unwrap_or_default());
        let mut expected = hdr.clone();
        expected.digest(&ctx);
        if expected.response != hdr.response || hdr.qop != Some(digest_auth::Qop::AUTH) {
            return Some(self.challenge(false));
        }
        // nc must increase per nonce (replay protection, as a strict server does).
        let mut last = self.last_nc.lock().unwrap();
        let prev = last.entry(hdr.nonce.clone()).or_insert(0);
        if hdr.nc <= *prev {
            return Some(self.challenge(false));
        }
        *prev = hdr.nc;
        None
    }
}

fn to_response(r: Reply) -> Response {
    let mut resp = Response::new(Body::from(r.body));
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap();
    for (n, v) in r.headers {
        resp.headers_mut()
            .insert(n, HeaderValue::from_str(&v).unwrap());
    }
    resp
}

async fn link_tokens(State(fake): State<Arc<Fake>>, req: Request) -> Response {
    fake.api_requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    fake.seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        headers: parts.headers.clone(),
        body,
    });
    let uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if fake.require_auth
        && let Some(denied) = fake.authenticate(&parts.method, &uri, &parts.headers)
    {
        return denied;
    }
    let reply = if parts.method == Method::POST {
        fake.post.lock().unwrap().clone()
    } else {
        fake.delete.lock().unwrap().clone()
    };
    tokio::time::sleep(reply.delay).await;
    to_response(reply)
}

async fn oauth_token(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let n = fake.token_requests.fetch_add(1, Ordering::SeqCst);
    let delay = *fake.token_delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    let form_ok = body.as_ref() == b"grant_type=client_credentials"
        && headers.get("content-type").map(|v| v.as_bytes())
            == Some(b"application/x-www-form-urlencoded");
    if headers.get("authorization").map(|v| v.as_bytes()) != Some(expected.as_bytes()) || !form_ok {
        return to_response(Reply::new(
            401,
            r#"{"error":"invalid_client","error_description":"Invalid credentials provided."}"#,
        ));
    }
    let mode = fake.token_mode.lock().unwrap();
    match &*mode {
        TokenMode::Ok { expires_in } => {
            let token = format!("eyJ.access-token-{n}");
            fake.valid_tokens.lock().unwrap().insert(token.clone());
            to_response(Reply::new(
                200,
                &format!(
                    r#"{{"access_token":"{token}","expires_in":{expires_in},"token_type":"Bearer"}}"#
                ),
            ))
        }
        TokenMode::Fail(r) => to_response(r.clone()),
    }
}

struct Server {
    fake: Arc<Fake>,
    url: String,
}

async fn start(fake: Arc<Fake>) -> Server {
    let app = Router::new()
        .route(
            "/api/atlas/v2/orgs/{org}/liveMigrations/linkTokens",
            any(link_tokens),
        )
        .route("/api/oauth/token", axum::routing::post(oauth_token))
        .with_state(fake.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        fake,
        url: format!("http://{addr}"),
    }
}

fn config(url: &str) -> AtlasConfig {
    AtlasConfig {
        connect_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(1500),
        ..AtlasConfig::with_base_url(url)
    }
}

fn client(url: &str) -> AtlasClient {
    AtlasClient::new(config(url)).unwrap()
}

/// (method, endpoint, status, errorCode) of one observed round trip.
type Observed = (String, Endpoint, Option<u16>, Option<String>);

#[derive(Default)]
struct Recorder {
    records: Mutex<Vec<Observed>>,
}

impl RequestObserver for Recorder {
    fn observe(&self, r: &RequestRecord<'_>) {
        self.records.lock().unwrap().push((
            r.method.to_owned(),
            r.endpoint,
            r.status,
            r.error_code.map(str::to_owned),
        ));
    }
}

fn ips() -> Vec<String> {
    vec!["1.2.3.4".into(), "10.0.0.0/8".into()]
}

// ---------------------------------------------------------------------------------------------
// Digest.

#[tokio::test]
async fn digest_handshake_then_one_round_trip_per_call() {
    bounded(async {
        let s = start(Fake::new(true)).await;
        let rec = Arc::new(Recorder::default());
        let c = client(&s.url).with_observer(rec.clone());
        let token = c.create_link_token(&api_key(), ORG, &ips()).await.unwrap();
        assert_eq!(token.expose(), LINK_TOKEN);
        assert_eq!(
            s.fake.api(),
            2,
            "first call: unsigned request + answered challenge"
        );
        for _ in 0..10 {
            c.create_link_token(&api_key(), ORG, &ips()).await.unwrap();
        }
        assert_eq!(s.fake.api(), 12, "steady state: one round trip per create");
        let before = s.fake.api();
        assert_eq!(
            c.delete_link_token(&api_key(), ORG).await.unwrap(),
            DeleteOutcome::Deleted
        );
        assert_eq!(s.fake.api() - before, 1, "delete reuses the nonce too");
        println!(
            "MEASURED digest: first create {} round trips, steady state {} per create",
            2,
            (12 - 2) / 10
        );
        let recs = rec.records.lock().unwrap();
        assert_eq!(recs.len(), s.fake.api(), "observer sees every round trip");
        assert_eq!(
            recs[0],
            (
                "POST".into(),
                Endpoint::LinkTokens,
                Some(401),
                Some("UNEXPECTED_ERROR".into())
            )
        );
        assert_eq!(
            recs[1],
            ("POST".into(), Endpoint::LinkTokens, Some(201), None)
        );
        assert_eq!(recs.last().unwrap().0, "DELETE");
    })
    .await;
}

#[tokio::test]
async fn digest_stale_nonce_recovers_with_one_extra_round_trip() {
    bounded(async {
        let s = start(Fake::new(true)).await;
        let c = client(&s.url);
        c.create_link_token(&api_key(), ORG, &[]).await.unwrap();
        c.create_link_token(&api_key(), ORG, &[]).await.unwrap();
        assert_eq!(s.fake.api(), 3);
        s.fake.rotate_nonce();
        c.create_link_token(&api_key(), ORG, &[]).await.unwrap();
        assert_eq!(
            s.fake.api(),
            5,
            "stale=true: rejected + answered fresh challenge"
        );
        c.create_link_token(&api_key(), ORG, &[]).await.unwrap();
        assert_eq!(s.fake.api(), 6, "back to one round trip with the new nonce");
        // The stale 401 carried the POST body; the server never acted on it (it was a 401),
        // and it was sent only as part of the handshake.
        let seen = s.fake.seen.lock().unwrap();
        assert!(
            seen.iter()
                .all(|r| r.body.as_ref() == br#"{"accessListIps":[]}"#)
        );
    })
    .await;
}

#[tokio::test]
async fn digest_wrong_key_is_unauthorized_after_exactly_one_retry() {
    bounded(async {
        let s = start(Fake::new(true)).await;
        let c = client(&s.url);
        let bad = Credentials::api_key(PUB, "wrong-private-key");
        let err = c.create_link_token(&bad, ORG, &[]).await.unwrap_err();
        assert_eq!(s.fake.api(), 2);
        assert_eq!(err.http_status(), Some(401));
        assert_eq!(err.error_code(), Some("UNEXPECTED_ERROR"));
        let cl = classify(&err, Operation::Create);
        assert_eq!(cl.reason, Reason::AtlasUnauthorized);
        let msg = err.user_message();
        assert!(
            msg.contains("401") && msg.contains("not authorized"),
            "{msg}"
        );
        assert!(
            !msg.contains("wrong-private-key") && !msg.contains(PUB),
            "{msg}"
        );
        // A failed key is not cached: the next call starts a fresh handshake.
        let _ = c.create_link_token(&bad, ORG, &[]).await.unwrap_err();
        assert_eq!(s.fake.api(), 4);
        // The good key has its own nonce state and works.
        c.create_link_token(&api_key(), ORG, &[]).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn non_401_failures_are_never_resent() {
    bounded(async {
        let s = start(Fake::new(true)).await;
        let c = client(&s.url);
        c.create_link_token(&api_key(), ORG, &[]).await.unwrap();
        let before = s.fake.api();
        s.fake.set_post(Reply::new(
            500,
            r#"{"error":500,"errorCode":"UNEXPECTED_ERROR"}"#,
        ));
        let err = c.create_link_token(&api_key(), ORG, &[]).await.unwrap_err();
        assert_eq!(
            classify(&err, Operation::Create).reason,
            Reason::AtlasUnavailable
        );
        assert_eq!(
            s.fake.api() - before,
            1,
            "a 500 on POST is not retried in place"
        );
        s.fake
            .set_post(Reply::new(201, "{}").delayed(Duration::from_secs(3)));
        let err = c.create_link_token(&api_key(), ORG, &[]).await.unwrap_err();
        assert!(
            matches!(
                err,
                AtlasError::Transport {
                    kind: TransportKind::Timeout,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            s.fake.api() - before,
            2,
            "a timed-out POST is not retried in place"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Status codes of the contract (Digest creds; the fake requires auth).

async fn digest_server() -> (Server, AtlasClient) {
    let s = start(Fake::new(true)).await;
    let c = client(&s.url);
    (s, c)
}

#[tokio::test]
async fn create_accepts_201_and_200() {
    bounded(async {
        let (s, c) = digest_server().await;
        assert_eq!(
            c.create_link_token(&api_key(), ORG, &ips())
                .await
                .unwrap()
                .expose(),
            LINK_TOKEN
        );
        s.fake.set_post(Reply::new(200, r#"{"linkToken":"other"}"#));
        assert_eq!(
            c.create_link_token(&api_key(), ORG, &ips())
                .await
                .unwrap()
                .expose(),
            "other"
        );
    })
    .await;
}

#[tokio::test]
async fn delete_204_and_404() {
    bounded(async {
        let (s, c) = digest_server().await;
        assert_eq!(c.delete_link_token(&api_key(), ORG).await.unwrap(), DeleteOutcome::Deleted);
        s.fake.set_delete(Reply::new(404, r#"{"detail":"Could not find the requested external organization link.","error":404,"errorCode":"UNEXPECTED_ERROR","parameters":null,"reason":"Not Found"}"#));
        assert_eq!(c.delete_link_token(&api_key(), ORG).await.unwrap(), DeleteOutcome::AlreadyAbsent);
        // Atlas sometimes sends errorCode null: the repeated status still identifies it.
        s.fake.set_delete(Reply::new(404, r#"{"detail":"Could not find the requested external organization link.","error":404,"errorCode":null,"parameters":null,"reason":"Not Found"}"#));
        assert_eq!(c.delete_link_token(&api_key(), ORG).await.unwrap(), DeleteOutcome::AlreadyAbsent);
        // A 404 from something in between (no body, a gateway's HTML or JSON) proves nothing
        // about the link: an error, retried, never "already revoked".
        for body in ["", "<html><body>404 Not Found</body></html>", r#"{"message":"Not Found"}"#] {
            s.fake.set_delete(Reply::new(404, body));
            let err = c.delete_link_token(&api_key(), ORG).await.unwrap_err();
            assert_eq!(err.http_status(), Some(404), "{body:?}");
            assert_eq!(classify(&err, Operation::Delete).reason, Reason::AtlasUnavailable, "{body:?}");
            assert_eq!(classify(&err, Operation::Finalize).reason, Reason::RevocationBlocked, "{body:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn error_statuses_map_to_reasons() {
    bounded(async {
        let (s, c) = digest_server().await;
        let cases: Vec<(Reply, Reason, Option<&str>)> = vec![
            (
                Reply::new(400, r#"{"error":400,"errorCode":"VALIDATION_ERROR","detail":"Invalid IP","reason":"Bad Request","badRequestDetail":{"fields":[{"field":"accessListIps[0]","description":"must be an IP or CIDR"}]}}"#),
                Reason::AtlasRejected,
                Some("VALIDATION_ERROR"),
            ),
            (Reply::new(403, r#"{"error":403,"errorCode":"USER_UNAUTHORIZED","detail":"not an org owner"}"#), Reason::AtlasForbidden, Some("USER_UNAUTHORIZED")),
            (Reply::new(404, r#"{"error":404,"errorCode":"RESOURCE_NOT_FOUND","detail":"no org"}"#), Reason::OrgNotFound, Some("RESOURCE_NOT_FOUND")),
            (Reply::new(406, r#"{"error":406,"errorCode":"INVALID_VERSION_DATE"}"#), Reason::AtlasRejected, Some("INVALID_VERSION_DATE")),
            (Reply::new(429, r#"{"error":429,"errorCode":"RATE_LIMITED_TOKEN_BUCKET","parameters":["api/atlas/v2/orgs",55,10,5,60]}"#).header("retry-after", "55"), Reason::AtlasRateLimited, Some("RATE_LIMITED_TOKEN_BUCKET")),
            (Reply::new(500, r#"{"error":500,"errorCode":"UNEXPECTED_ERROR"}"#), Reason::AtlasUnavailable, Some("UNEXPECTED_ERROR")),
            (Reply::new(503, "").header("retry-after", "7"), Reason::AtlasUnavailable, None),
            (Reply::new(502, "<html><body><h1>502 Bad Gateway</h1></body></html>").header("content-type", "text/html"), Reason::AtlasUnavailable, None),
        ];
        for (reply, reason, code) in cases {
            let status = reply.status;
            s.fake.set_post(reply);
            let err = c.create_link_token(&api_key(), ORG, &ips()).await.unwrap_err();
            assert_eq!(err.http_status(), Some(status), "{err:?}");
            assert_eq!(err.error_code(), code, "{status}");
            assert_eq!(classify(&err, Operation::Create).reason, reason, "{status}");
            let msg = err.user_message();
            if let Some(code) = code {
                assert!(msg.contains(code), "{msg}");
            }
            match status {
                400 => {
                    let f = err.failure().unwrap();
                    assert_eq!(f.fields.len(), 1);
                    assert!(msg.contains("accessListIps[0]: must be an IP or CIDR"), "{msg}");
                }
                429 => {
                    assert_eq!(err.retry_after(), Some(Duration::from_secs(55)));
                    assert_eq!(classify(&err, Operation::Create).retry, RetryHint::After(Duration::from_secs(55)));
                }
                503 => {
                    assert_eq!(err.failure().unwrap().body, BodyKind::Empty);
                    assert_eq!(classify(&err, Operation::Create).retry, RetryHint::After(Duration::from_secs(7)));
                }
                502 => {
                    assert_eq!(err.failure().unwrap().body, BodyKind::NotJson);
                    assert!(!msg.contains("<html>"), "{msg}");
                }
                _ => {}
            }
        }
        // 429 without Retry-After: backoff.
        s.fake.set_post(Reply::new(429, r#"{"error":429,"errorCode":"RATE_LIMITED"}"#));
        let err = c.create_link_token(&api_key(), ORG, &[]).await.unwrap_err();
        assert_eq!(classify(&err, Operation::Create).retry, RetryHint::Backoff);
    })
    .await;
}

#[tokio::test]
async fn delete_409_is_active_migration() {
    bounded(async {
        let (s, c) = digest_server().await;
        s.fake.set_delete(Reply::new(409, r#"{"error":409,"errorCode":"CANNOT_DELETE_ORG_ACTIVE_LIVE_MIGRATION_ATLAS_ORG_LINK","detail":"Cannot delete organization link while there is active migration in following project ids: 5f0f1f2f3f4f5f6f7f8f9fa0","reason":"Conflict"}"#));
        let err = c.delete_link_token(&api_key(), ORG).await.unwrap_err();
        assert!(matches!(err, AtlasError::ActiveMigration(_)), "{err:?}");
        for op in [Operation::Delete, Operation::Finalize] {
            assert_eq!(classify(&err, op).reason, Reason::RevocationBlocked);
        }
        assert!(err.user_message().contains("CANNOT_DELETE_ORG_ACTIVE_LIVE_MIGRATION_ATLAS_ORG_LINK"));
        s.fake.set_delete(Reply::new(500, ""));
        let err = c.delete_link_token(&api_key(), ORG).await.unwrap_err();
        assert_eq!(classify(&err, Operation::Finalize).reason, Reason::RevocationBlocked);
        assert_eq!(classify(&err, Operation::Delete).reason, Reason::AtlasUnavailable);
    })
    .await;
}

#[tokio::test]
async fn headers_and_body_sent() {
    bounded(async {
        let s = start(Fake::new(false)).await;
        let c = client(&s.url);
        c.create_link_token(&api_key(), ORG, &ips()).await.unwrap();
        c.delete_link_token(&api_key(), ORG).await.unwrap();
        let seen = s.fake.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        let ua = format!("linktoken-operator/{}", env!("CARGO_PKG_VERSION"));
        for r in &seen {
            assert_eq!(r.headers.get("accept").unwrap(), MEDIA);
            assert_eq!(r.headers.get("user-agent").unwrap(), ua.as_str());
        }
        assert_eq!(seen[0].method, Method::POST);
        assert_eq!(seen[0].headers.get("content-type").unwrap(), MEDIA);
        let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"accessListIps": ["1.2.3.4", "10.0.0.0/8"]})
        );
        assert_eq!(seen[1].method, Method::DELETE);
        assert!(seen[1].headers.get("content-type").is_none());
        assert!(seen[1].body.is_empty());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Bodies.

#[tokio::test]
async fn garbage_and_oversized_bodies() {
    bounded(async {
        let s = start(Fake::new(false)).await;
        let c = client(&s.url);
        for body in [
            "not json",
            r#"{"linkToken":null}"#,
            r#"{"linkToken":""}"#,
            "[]",
            "",
        ] {
            s.fake.set_post(Reply::new(201, body));
            let err = c.create_link_token(&api_key(), ORG, &[]).await.unwrap_err();
            assert!(
                matches!(err, AtlasError::InvalidResponse { status: 201, .. }),
                "{body}: {err:?}"
            );
            assert_eq!(
                classify(&err, Operation::Create).reason,
                Reason::AtlasUnavailable
            );
        }
        // Declared length over the cap: refused before reading.
        let big = format!(r#"{{"linkToken":"{}"}}"#, "x".repeat(100 * 1024));
        s.fake.set_post(Reply::new(201, &big));
        let err = c.create_link_token(&api_key(), ORG, &[]).await.unwrap_err();
        assert!(
            matches!(err, AtlasError::BodyTooLarge { limit: 65536, .. }),
            "{err:?}"
        );
        assert_eq!(
            classify(&err, Operation::Create).reason,
            Reason::AtlasUnavailable
        );
        // Error bodies are capped too.
        s.fake.set_post(Reply::new(500, &big));
        let err = c.create_link_token(&api_key(), ORG, &[]).await.unwrap_err();
        assert!(matches!(err, AtlasError::BodyTooLarge { .. }), "{err:?}");
    })
    .await;
}

/// A raw HTTP server that writes `response` to every connection (and then waits or closes).
async fn raw_server(response: &'static [u8], hold: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(response).await;
                tokio::time::sleep(hold).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn chunked_body_over_the_cap_stops_at_the_cap() {
    bounded(async {
        // An endless chunked body: the client must stop at 64 KiB, not read forever.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicUsize::new(0));
        let w = written.clone();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let _ = sock.read(&mut buf).await;
            let _ = sock
                .write_all(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let chunk = format!("{:x}\r\n{}\r\n", 4096, "y".repeat(4096));
            while sock.write_all(chunk.as_bytes()).await.is_ok() {
                if w.fetch_add(4096, Ordering::SeqCst) > 64 << 20 {
                    break;
                }
            }
        });
        let c = client(&format!("http://{addr}"));
        let err = c.create_link_token(&api_key(), ORG, &[]).await.unwrap_err();
        assert!(matches!(err, AtlasError::BodyTooLarge { .. }), "{err:?}");
        assert!(written.load(Ordering::SeqCst) < 8 << 20, "client kept reading");
    })
    .await;
}

#[tokio::test]
async fn truncated_body_is_a_body_read_error() {
    bounded(async {
        let url = raw_server(
            b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{\"linkTo",
            Duration::ZERO,
        )
        .await;
        let err = client(&url).create_link_token(&api_key(), ORG, &[]).await.unwrap_err();
        assert!(matches!(err, AtlasError::Transport { kind: TransportKind::BodyRead, .. }), "{err:?}");
        assert_eq!(classify(&err, Operation::Create).reason, Reason::AtlasUnavailable);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Timeouts and transport failures.

#[tokio::test]
async fn slow_response_hits_the_total_timeout() {
    bounded(async {
        let s = start(Fake::new(false)).await;
        s.fake
            .set_post(Reply::new(201, "{}").delayed(Duration::from_secs(5)));
        let c = AtlasClient::new(AtlasConfig {
            request_timeout: Duration::from_millis(300),
            ..config(&s.url)
        })
        .unwrap();
        let t = Instant::now();
        let err = c.create_link_token(&api_key(), ORG, &[]).await.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(
            matches!(
                err,
                AtlasError::Transport {
                    kind: TransportKind::Timeout,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            classify(&err, Operation::Create).reason,
            Reason::AtlasUnavailable
        );
        assert_eq!(
            classify(&err, Operation::Finalize).reason,
            Reason::RevocationBlocked
        );
    })
    .await;
}

#[tokio::test]
async fn slow_body_hits_the_total_timeout() {
    bounded(async {
        let url = raw_server(
            b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"link",
            Duration::from_secs(5),
        )
        .await;
        let c = AtlasClient::new(AtlasConfig {
            request_timeout: Duration::from_millis(300),
            ..config(&url)
        })
        .unwrap();
        let t = Instant::now();
        let err = c.create_link_token(&api_key(), ORG, &[]).await.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(matches!(err, AtlasError::Transport { kind: TransportKind::Timeout, .. }), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn connect_timeout() {
    bounded(async {
        // A listener whose accept queue is full drops further SYNs, so connect() hangs: the
        // loopback way to reach the connect timeout.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = sock.local_addr().unwrap();
        let _listener = sock.listen(0).unwrap();
        let mut fillers = Vec::new();
        let mut saturated = false;
        for _ in 0..64 {
            match tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                Ok(Ok(s)) => fillers.push(s),
                _ => {
                    saturated = true;
                    break;
                }
            }
        }
        if !saturated {
            println!("SKIPPED connect_timeout: this kernel accepts beyond the backlog");
            return;
        }
        let c = client(&format!("http://{addr}"));
        let t = Instant::now();
        let err = c.create_link_token(&api_key(), ORG, &[]).await.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(
            matches!(
                err,
                AtlasError::Transport {
                    kind: TransportKind::ConnectTimeout,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            classify(&err, Operation::Create).reason,
            Reason::AtlasUnavailable
        );
    })
    .await;
}

#[tokio::test]
async fn refused_connection_and_tls_failure() {
    bounded(async {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = client(&format!("http://127.0.0.1:{port}"))
            .create_link_token(&api_key(), ORG, &[])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                AtlasError::Transport {
                    kind: TransportKind::Connect,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            classify(&err, Operation::Create).reason,
            Reason::AtlasUnavailable
        );
        // https:// against a plain-HTTP server: the TLS handshake fails.
        let s = start(Fake::new(false)).await;
        let err = client(&s.url.replace("http://", "https://"))
            .create_link_token(&api_key(), ORG, &[])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                AtlasError::Transport {
                    kind: TransportKind::Tls,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            classify(&err, Operation::Create).reason,
            Reason::AtlasUnavailable
        );
        assert!(
            !err.user_message().contains(ORG),
            "no URL in transport errors"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Service accounts.

#[tokio::test]
async fn service_account_mints_once_and_reuses() {
    bounded(async {
        let s = start(Fake::new(true)).await;
        let rec = Arc::new(Recorder::default());
        let c = client(&s.url).with_observer(rec.clone());
        for _ in 0..10 {
            assert_eq!(c.create_link_token(&service_account(), ORG, &[]).await.unwrap().expose(), LINK_TOKEN);
        }
        c.delete_link_token(&service_account(), ORG).await.unwrap();
        assert_eq!(s.fake.tokens(), 1);
        assert_eq!(s.fake.api(), 11, "one round trip per call");
        println!("MEASURED service account: first create 2 round trips (mint + POST), steady state 1 per create");
        let recs = rec.records.lock().unwrap();
        assert_eq!(recs[0], ("POST".into(), Endpoint::OAuthToken, Some(200), None));
        assert_eq!(recs[1], ("POST".into(), Endpoint::LinkTokens, Some(201), None));
        assert_eq!(recs.len(), 12);
    })
    .await;
}

#[tokio::test]
async fn fifty_concurrent_creates_share_one_mint() {
    bounded(async {
        let s = start(Fake::new(true)).await;
        *s.fake.token_delay.lock().unwrap() = Duration::from_millis(200);
        let c = client(&s.url);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.create_link_token(&service_account(), ORG, &[]).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(
            s.fake.tokens(),
            1,
            "exactly one mint for 50 concurrent calls"
        );
        assert_eq!(s.fake.api(), 50);
    })
    .await;
}

#[tokio::test]
async fn short_lived_tokens_are_renewed() {
    bounded(async {
        let s = start(Fake::new(true)).await;
        *s.fake.token_mode.lock().unwrap() = TokenMode::Ok { expires_in: 3 };
        // Below the default reuse floor (30 s): lowered so the renewal logic shows in seconds.
        let c = AtlasClient::new(AtlasConfig {
            token_min_reuse: Duration::from_secs(1),
            ..config(&s.url)
        })
        .unwrap();
        c.create_link_token(&service_account(), ORG, &[])
            .await
            .unwrap();
        c.create_link_token(&service_account(), ORG, &[])
            .await
            .unwrap();
        assert_eq!(s.fake.tokens(), 1, "reused while fresh");
        // Renewal is due at 2/3 of the lifetime (2 s), well before expiry (3 s).
        tokio::time::sleep(Duration::from_millis(2200)).await;
        c.create_link_token(&service_account(), ORG, &[])
            .await
            .unwrap();
        assert_eq!(s.fake.tokens(), 2, "renewed before expiry");
    })
    .await;
}

#[tokio::test]
async fn expires_in_zero_does_not_mint_a_token_per_call() {
    bounded(async {
        let s = start(Fake::new(true)).await;
        *s.fake.token_mode.lock().unwrap() = TokenMode::Ok { expires_in: 0 };
        let c = client(&s.url);
        for _ in 0..5 {
            c.create_link_token(&service_account(), ORG, &[])
                .await
                .unwrap();
        }
        assert_eq!(s.fake.tokens(), 1, "one mint, reused for the floor");
        assert_eq!(s.fake.api(), 5);
    })
    .await;
}

#[tokio::test]
async fn token_revoked_at_atlas_is_reminted_once() {
    bounded(async {
        let s = start(Fake::new(true)).await;
        let c = client(&s.url);
        c.create_link_token(&service_account(), ORG, &[])
            .await
            .unwrap();
        s.fake.valid_tokens.lock().unwrap().clear();
        c.create_link_token(&service_account(), ORG, &[])
            .await
            .unwrap();
        assert_eq!(s.fake.tokens(), 2);
        assert_eq!(
            s.fake.api(),
            3,
            "401 with the cached token, then success with a new one"
        );
    })
    .await;
}

#[tokio::test]
async fn token_endpoint_refusals() {
    bounded(async {
        let cases: Vec<(Reply, Reason, Option<&str>)> = vec![
            (
                Reply::new(429, r#"{"error":"rate_limited","error_description":"slow down"}"#).header("retry-after", "7"),
                Reason::AtlasRateLimited,
                Some("rate_limited"),
            ),
            (
                Reply::new(401, r#"{"error":"invalid_client","error_description":"Invalid credentials provided."}"#),
                Reason::AtlasUnauthorized,
                Some("invalid_client"),
            ),
            (
                Reply::new(403, r#"{"error":"access_denied","error_description":"Access Token limit reached. Please use the existing Access Tokens or create a new Service Account."}"#),
                Reason::AtlasForbidden,
                Some("access_denied"),
            ),
            (Reply::new(500, "oops"), Reason::AtlasUnavailable, None),
        ];
        for (reply, reason, code) in cases {
            let s = start(Fake::new(true)).await;
            let status = reply.status;
            *s.fake.token_mode.lock().unwrap() = TokenMode::Fail(reply);
            let rec = Arc::new(Recorder::default());
            let c = client(&s.url).with_observer(rec.clone());
            let err = c.create_link_token(&service_account(), ORG, &[]).await.unwrap_err();
            assert!(matches!(err, AtlasError::TokenEndpoint(_)), "{err:?}");
            assert_eq!(err.http_status(), Some(status));
            assert_eq!(err.error_code(), code);
            assert_eq!(classify(&err, Operation::Create).reason, reason, "{status}");
            if status == 429 {
                assert_eq!(classify(&err, Operation::Create).retry, RetryHint::After(Duration::from_secs(7)));
            }
            let msg = err.user_message();
            assert!(!msg.contains(CLIENT_SECRET) && !msg.contains(CLIENT_ID), "{msg}");
            // Callers right behind share the failure instead of minting again.
            let _ = c.create_link_token(&service_account(), ORG, &[]).await.unwrap_err();
            assert_eq!(s.fake.tokens(), 1, "{status}: no mint per call");
            assert_eq!(s.fake.api(), 0, "no API call without a token");
            let recs = rec.records.lock().unwrap();
            assert_eq!(recs.len(), 1);
            assert_eq!(recs[0].1, Endpoint::OAuthToken);
            assert_eq!(recs[0].3.as_deref(), code);
        }
        // Real credential check: a wrong secret is refused by the fake's token endpoint.
        let s = start(Fake::new(true)).await;
        let err = client(&s.url)
            .create_link_token(&Credentials::service_account(CLIENT_ID, "nope"), ORG, &[])
            .await
            .unwrap_err();
        assert_eq!(classify(&err, Operation::Create).reason, Reason::AtlasUnauthorized);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Redaction and misc.

#[tokio::test]
async fn nothing_secret_is_printed() {
    bounded(async {
        let s = start(Fake::new(true)).await;
        let c = client(&s.url);
        let token = c.create_link_token(&api_key(), ORG, &[]).await.unwrap();
        let sa = service_account();
        let ak = api_key();
        for shown in [
            format!("{token:?}"),
            format!("{token}"),
            format!("{ak:?}"),
            format!("{ak}"),
            format!("{sa:?}"),
            format!("{sa:#?}"),
            format!("{c:?}"),
        ] {
            for secret in [LINK_TOKEN, PUB, PRIV, CLIENT_ID, CLIENT_SECRET] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        assert_eq!(token.expose(), LINK_TOKEN);
    })
    .await;
}

#[tokio::test]
async fn invalid_org_id_makes_no_request() {
    bounded(async {
        let s = start(Fake::new(false)).await;
        let err = client(&s.url)
            .create_link_token(&api_key(), "../../oauth/token", &[])
            .await
            .unwrap_err();
        assert_eq!(err, AtlasError::InvalidOrgId);
        assert_eq!(s.fake.api(), 0);
    })
    .await;
}

/// Concurrent calls reusing one Digest nonce reach a server out of nc order; atlas-sim, like a
/// strict server, refuses a count that is not greater than the last one it accepted. Every
/// call must still succeed. (The benchmark found 2 of 100 LinkTokens stuck in
/// AtlasUnauthorized when a retry's fresh nonce was shared before the server accepted it; this
/// test does not hit that exact interleaving every time, the benchmark does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_digest_calls_survive_out_of_order_nonce_counts() {
    use atlas_sim::{SimConfig, SimServer, config::DEMO_ORG_ID};
    let any = "127.0.0.1:0".parse().expect("addr");
    let sim = SimServer::start(SimConfig::demo(), any, any)
        .await
        .expect("sim");
    let client = AtlasClient::new(AtlasConfig::with_base_url(
        url::Url::parse(&sim.atlas_url).expect("url"),
    ))
    .expect("client");
    let creds = Credentials::api_key(
        atlas_sim::config::DEMO_PUBLIC_KEY,
        atlas_sim::config::DEMO_PRIVATE_KEY,
    );
    // Calls trickle in (as reconciles do), so new calls pick up a nonce while older ones on
    // it are still in flight.
    let calls = (0..200u64).map(|i| {
        let (client, creds) = (client.clone(), creds.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis((i * 7919) % 400)).await;
            client.create_link_token(&creds, DEMO_ORG_ID, &[]).await
        })
    });
    let results = futures::future::join_all(calls).await;
    let failed: Vec<_> = results
        .into_iter()
        .filter_map(|r| r.expect("join").err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 200 failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(sim.state.live_links(DEMO_ORG_ID), 200);
}
