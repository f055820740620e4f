//! The source client against hand-rolled Digest servers on loopback (axum on 127.0.0.1:0): what
//! it sends to which host. Each server issues a nonce of its own, verifies Digest responses
//! with the independent `digest_auth` crate and records every Authorization header it
//! receives. Every test is bounded in time.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

use linktoken_operator::atlas::{Credentials, LinkTokenValue};
use linktoken_operator::source::{
    AllowedSources, SourceClient, SourceConfig, SyncStatus, Target, Unlinked,
};

const ORG: &str = "6a1e9b2a3c4d5e6f7a8b9c0d";
const PUB: &str = "sourcepublic";
const PRIV: &str = "source-private-5e3f1d2c-0000-4000-8000-000000000002";
const REALM: &str = "MMS Public API";

/// A Cloud Manager / Ops Manager double that answers every path of the link API once the
/// request carries a valid Digest response for a nonce it issued itself.
struct DigestServer {
    url: String,
    /// The nonce this server issues (one per server, so whose nonce a header carries is plain).
    nonce: String,
    /// Every Authorization header received, in order.
    seen: Mutex<Vec<String>>,
}

impl DigestServer {
    async fn start(name: &str) -> Arc<DigestServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = Arc::new(DigestServer {
            url: format!("http://{addr}"),
            nonce: format!("nonce-issued-by-{name}-{}", addr.port()),
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(answer).with_state(server.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        server
    }

    fn target(&self) -> Target<'_> {
        Target {
            url: &self.url,
            ca_pem: None,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("seen").clone()
    }

    /// The nonces of every Authorization header this server received.
    fn nonces_received(&self) -> HashSet<String> {
        self.seen()
            .iter()
            .filter_map(|h| digest_auth::AuthorizationHeader::parse(h).ok())
            .map(|h| h.nonce)
            .collect()
    }

    fn challenge(&self) -> Response {
        let www = format!(
            r#"Digest realm="{REALM}", domain="", nonce="{}", algorithm=MD5, qop="auth", stale=false"#,
            self.nonce
        );
        let mut r = (
            StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            r#"{"error":401,"reason":"Unauthorized","detail":"You are not authorized for this resource.","errorCode":"UNEXPECTED_ERROR"}"#,
        )
            .into_response();
        r.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_str(&www).expect("header"),
        );
        r
    }

    /// True when `auth` is a correct Digest response to this server's own nonce.
    fn accepts(&self, method: &str, uri: &str, auth: &str) -> bool {
        let Ok(hdr) = digest_auth::AuthorizationHeader::parse(auth) else {
            return false;
        };
        if hdr.username != PUB || hdr.uri != uri || hdr.realm != REALM || hdr.nonce != self.nonce {
            return false;
        }
        let mut ctx = digest_auth::AuthContext::new_with_method(
            PUB,
            PRIV,
            hdr.uri.clone(),
            Option::<&[u8]>::None,
            digest_auth::HttpMethod(method.to_owned().into()),
        );
        ctx.set_custom_cnonce(hdr.cnonce.clone().unwrap_or_default());
        let mut expected = hdr.clone();
        expected.digest(&ctx);
        expected.response == hdr.response
    }
}

async fn answer(State(server): State<Arc<DigestServer>>, req: Request) -> Response {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let method = req.method().as_str().to_owned();
    let Some(auth) = auth else {
        return server.challenge();
    };
    server.seen.lock().expect("seen").push(auth.clone());
    if !server.accepts(&method, &uri, &auth) {
        return server.challenge();
    }
    match method.as_str() {
        "DELETE" => StatusCode::NO_CONTENT.into_response(),
        _ => (
            StatusCode::OK,
            [("content-type", "application/json")],
            r#"{"status":"SYNCED"}"#,
        )
            .into_response(),
    }
}

/// A client whose cluster admin allows both servers.
fn client(a: &DigestServer, b: &DigestServer) -> SourceClient {
    let allowed = format!("{},{}", a.url, b.url);
    SourceClient::new(
        SourceConfig {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(5),
            allowed: AllowedSources::parse(&allowed).expect("loopback URLs"),
            ..SourceConfig::default()
        },
        None,
    )
}

/// Two LinkTokens with the same source API key and no CA bundle share one HTTP client and one
/// nonce cache, but not their nonces: what one source issued is never signed for the other (a
/// Digest response for host A, sent to host B, is a credential B could replay to A).
#[tokio::test]
async fn a_nonce_one_source_issued_is_never_sent_to_another() {
    let within = Duration::from_secs(20);
    tokio::time::timeout(within, async {
        let a = DigestServer::start("a").await;
        let b = DigestServer::start("b").await;
        let source = client(&a, &b);
        let creds = Credentials::api_key(PUB, PRIV);
        let token = LinkTokenValue::new("bGlua3Rva2VuLXNlY3JldC12YWx1ZQ==".to_owned());

        // A's nonce is learnt, then reused at A (one round trip, nc 2).
        for _ in 0..2 {
            let st = source.status(a.target(), &creds, ORG).await.expect("A");
            assert_eq!(st, Some(SyncStatus::Synced));
        }
        assert_eq!(a.seen().len(), 2, "A: the handshake, then the nonce reused");

        // B, then A and B again, with every method of the link API.
        let st = source.status(b.target(), &creds, ORG).await.expect("B");
        assert_eq!(st, Some(SyncStatus::Synced));
        let linked = source.link(b.target(), &creds, ORG, &token).await;
        assert_eq!(linked.expect("B link"), Some(SyncStatus::Synced));
        let gone = source.unlink(a.target(), &creds, ORG).await.expect("A");
        assert_eq!(gone, Unlinked::Deleted);
        let gone = source.unlink(b.target(), &creds, ORG).await.expect("B");
        assert_eq!(gone, Unlinked::Deleted);

        let at_a = a.nonces_received();
        let at_b = b.nonces_received();
        assert_eq!(
            at_b,
            HashSet::from([b.nonce.clone()]),
            "B received a nonce A issued: {:#?}",
            b.seen()
        );
        assert_eq!(
            at_a,
            HashSet::from([a.nonce.clone()]),
            "A received a nonce B issued: {:#?}",
            a.seen()
        );
        // Each host kept its own nonce reuse: no extra handshake after the first one.
        assert_eq!(a.seen().len(), 3, "{:#?}", a.seen());
        assert_eq!(b.seen().len(), 3, "{:#?}", b.seen());
    })
    .await
    .expect("test exceeded its time bound");
}
