//! The link-token client: URLs, media types, authentication flows and response mapping.
//!
//! Shared by all reconciles (cheap to clone: one `Arc`). Proxies: `HTTPS_PROXY` / `HTTP_PROXY`
//! / `ALL_PROXY` and `NO_PROXY` (upper or lower case) from the environment are honoured as
//! reqwest reads them, except that a loopback destination never goes through a proxy (see
//! [`HttpClient`]). Roots: see [`super::tls`]. Redirects are not followed, so an Authorization
//! header never travels to another host.

use std::fmt;
use std::sync::Arc;

use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE,
};
use reqwest::{Method, Url};
use serde::Deserialize;

use super::config::AtlasConfig;
use super::credentials::{AuthParts, Credentials, Fingerprint};
use super::digest;
use super::error::AtlasError;
use super::gate::{Gate, RequestGate};
use super::nonces::NonceCache;
use super::oauth::{self, BearerAuth, TokenCache};
use super::observer::{Endpoint, RequestObserver};
use super::redact::LinkTokenValue;
use super::tls::TrustRoots;
use super::transport::{HttpClient, Incoming, Limits, Outgoing, round_trip};

/// The only resource version of the link-token operations. Sent as Accept, and as the
/// Content-Type of the POST body; Atlas answers 406 to a missing or unknown version.
pub const MEDIA_TYPE: &str = "application/vnd.atlas.2023-01-01+json";

/// What a DELETE found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// 2xx (204 in practice): the org's link and its API key are gone.
    Deleted,
    /// 404 from Atlas itself: there was no link.
    AlreadyAbsent,
}

struct Inner {
    http: HttpClient,
    base: Url,
    token_url: Url,
    limits: Limits,
    nonces: NonceCache,
    tokens: TokenCache,
}

/// Typed async client for the Atlas link-token endpoints.
#[derive(Clone)]
pub struct AtlasClient {
    inner: Arc<Inner>,
    observer: Option<Arc<dyn RequestObserver>>,
    gate: Gate,
}

impl fmt::Debug for AtlasClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtlasClient")
            .field("base_url", &self.inner.base.as_str())
            .field("observer", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TargetOrg {
    link_token: Option<String>,
}

impl AtlasClient {
    pub fn new(config: AtlasConfig) -> Result<Self, AtlasError> {
        let base = parse_base_url(&config.base_url)?;
        let token_url = join(&base, &["api", "oauth", "token"])?;
        let trust = TrustRoots::load(config.ca_file.as_deref(), base.scheme() == "https")
            .map_err(|e| AtlasError::Config(e.to_string()))?;
        tracing::info!(
            platform_roots = trust.platform,
            platform_skipped = trust.platform_skipped,
            ca_file_roots = trust.ca_file,
            "Atlas TLS roots loaded"
        );
        if !trust.platform_errors.is_empty() {
            tracing::warn!(errors = ?trust.platform_errors, "reading the platform's CA store failed in part");
        }
        let http = http_client(
            &trust.certs,
            config.connect_timeout,
            config.request_timeout,
            &config.user_agent,
        )?;
        Ok(AtlasClient {
            inner: Arc::new(Inner {
                http,
                base,
                token_url,
                limits: Limits {
                    max_body_bytes: config.max_body_bytes,
                    max_retry_after: config.max_retry_after,
                },
                nonces: NonceCache::default(),
                tokens: TokenCache::new(
                    config.token_renew_before,
                    config.token_failure_cooldown,
                    config.max_retry_after,
                    config.token_min_reuse,
                ),
            }),
            observer: None,
            gate: Gate::default(),
        })
    }

    /// Reports every HTTP round trip (for metrics).
    pub fn with_observer(mut self, observer: Arc<dyn RequestObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Asked right before every request (the OAuth token request included): a closed gate
    /// refuses it with [`AtlasError::NotLeader`], unsent.
    pub fn with_gate(mut self, gate: Arc<dyn RequestGate>) -> Self {
        self.gate = Gate::new(gate);
        self
    }

    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// `POST /api/atlas/v2/orgs/{orgId}/liveMigrations/linkTokens` with
    /// `{"accessListIps": [...]}`. Any 2xx is success (Atlas documents 200 and sends 201).
    ///
    /// Never retried blindly: each accepted POST mints an Atlas API key. The body is sent again
    /// only inside the Digest handshake, after a 401 (which Atlas answers before acting).
    pub async fn create_link_token(
        &self,
        creds: &Credentials,
        org_id: &str,
        access_list: &[String],
    ) -> Result<LinkTokenValue, AtlasError> {
        let url = self.link_tokens_url(org_id)?;
        let body = serde_json::to_vec(&serde_json::json!({ "accessListIps": access_list }))
            .map_err(|e| AtlasError::Config(format!("request body: {e}")))?;
        let resp = self.send(creds, Method::POST, &url, Some(&body)).await?;
        if let Some(failure) = resp.failure {
            return Err(AtlasError::Api(Box::new(failure)));
        }
        let invalid = |what| AtlasError::InvalidResponse {
            endpoint: Endpoint::LinkTokens,
            status: resp.status,
            what,
        };
        let parsed: TargetOrg = serde_json::from_slice(&resp.body)
            .map_err(|_| invalid("not a TargetOrg JSON object"))?;
        parsed
            .link_token
            .filter(|t| !t.is_empty())
            .map(LinkTokenValue::new)
            .ok_or_else(|| invalid("no linkToken"))
    }

    /// `DELETE /api/atlas/v2/orgs/{orgId}/liveMigrations/linkTokens`: 2xx -> `Deleted`,
    /// Atlas's own no-link answer ([`ApiFailure::is_no_link_answer`]) -> `AlreadyAbsent`, 409 ->
    /// `AtlasError::ActiveMigration`. Any other 404 (a gateway's, a moved path's, an errorCode
    /// that names something else) proves nothing about the link, so it stays an error
    /// (classified as retryable): a live link is never taken for revoked.
    pub async fn delete_link_token(
        &self,
        creds: &Credentials,
        org_id: &str,
    ) -> Result<DeleteOutcome, AtlasError> {
        let url = self.link_tokens_url(org_id)?;
        let resp = self.send(creds, Method::DELETE, &url, None).await?;
        match (resp.status, resp.failure) {
            (_, None) => Ok(DeleteOutcome::Deleted),
            (404, Some(f)) if f.is_no_link_answer() => Ok(DeleteOutcome::AlreadyAbsent),
            (409, Some(f)) => Err(AtlasError::ActiveMigration(Box::new(f))),
            (_, Some(f)) => Err(AtlasError::Api(Box::new(f))),
        }
    }

    fn link_tokens_url(&self, org_id: &str) -> Result<Url, AtlasError> {
        // The orgId becomes a path segment: check it here too, not only in the CRD schema.
        if org_id.len() != 24 || !org_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AtlasError::InvalidOrgId);
        }
        join(
            &self.inner.base,
            &[
                "api",
                "atlas",
                "v2",
                "orgs",
                org_id,
                "liveMigrations",
                "linkTokens",
            ],
        )
    }

    async fn send(
        &self,
        creds: &Credentials,
        method: Method,
        url: &Url,
        body: Option<&[u8]>,
    ) -> Result<Incoming, AtlasError> {
        self.gate.check()?;
        let fp = creds.fingerprint();
        match creds.auth_parts() {
            AuthParts::Digest { username, password } => {
                self.send_digest(fp, username, password, method, url, body)
                    .await
            }
            AuthParts::ClientCredentials {
                client_id,
                client_secret,
            } => {
                self.send_bearer(fp, client_id, client_secret, method, url, body)
                    .await
            }
        }
    }

    /// Digest with nonce reuse: see [`digest_exchange`].
    async fn send_digest(
        &self,
        fp: Fingerprint,
        username: &str,
        password: &str,
        method: Method,
        url: &Url,
        body: Option<&[u8]>,
    ) -> Result<Incoming, AtlasError> {
        let auth = DigestAuth {
            nonces: &self.inner.nonces,
            fp,
            username,
            password,
        };
        digest_exchange(auth, &method, url, |header| {
            self.api_request(method.clone(), url, body, header)
        })
        .await
    }

    /// Bearer with a cached token: see [`oauth::bearer_exchange`].
    async fn send_bearer(
        &self,
        fp: Fingerprint,
        client_id: &str,
        client_secret: &str,
        method: Method,
        url: &Url,
        body: Option<&[u8]>,
    ) -> Result<Incoming, AtlasError> {
        let auth = BearerAuth {
            tokens: &self.inner.tokens,
            fp,
            http: &self.inner.http,
            limits: self.inner.limits,
            observer: self.observer.as_deref(),
            token_url: &self.inner.token_url,
            client_id,
            client_secret,
        };
        oauth::bearer_exchange(auth, |header| {
            self.api_request(method.clone(), url, body, header)
        })
        .await
    }

    async fn api_request(
        &self,
        method: Method,
        url: &Url,
        body: Option<&[u8]>,
        auth: Option<HeaderValue>,
    ) -> Result<Incoming, AtlasError> {
        // Again per round trip: a Digest or bearer exchange may wait between them.
        self.gate.check()?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MEDIA_TYPE));
        if body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
        }
        if let Some(mut auth) = auth {
            auth.set_sensitive(true);
            headers.insert(AUTHORIZATION, auth);
        }
        round_trip(
            &self.inner.http,
            self.inner.limits,
            self.observer.as_deref(),
            Outgoing {
                method,
                url,
                headers,
                body,
                endpoint: Endpoint::LinkTokens,
            },
        )
        .await
    }
}

/// The HTTP clients of the Atlas and source clients: rustls with exactly `roots`, the
/// timeouts, our User-Agent, no redirects (an Authorization header never travels to another
/// host), the environment's proxies except for loopback ([`HttpClient`]).
pub(crate) fn http_client(
    roots: &[rustls::pki_types::CertificateDer<'static>],
    connect_timeout: std::time::Duration,
    request_timeout: std::time::Duration,
    user_agent: &str,
) -> Result<HttpClient, AtlasError> {
    let roots = roots
        .iter()
        .map(|cert| reqwest::Certificate::from_der(cert.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AtlasError::Config(format!("root certificate: {e}")))?;
    HttpClient::build(|| {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            // Only the roots given, whatever reqwest features another crate enables.
            .tls_built_in_root_certs(false);
        for cert in &roots {
            builder = builder.add_root_certificate(cert.clone());
        }
        builder
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .user_agent(user_agent)
            .redirect(reqwest::redirect::Policy::none())
    })
    .map_err(|e| AtlasError::Config(format!("HTTP client: {e}")))
}

/// Who signs a Digest exchange, and the nonce cache it reuses.
pub(crate) struct DigestAuth<'a> {
    pub nonces: &'a NonceCache,
    pub fp: Fingerprint,
    pub username: &'a str,
    pub password: &'a str,
}

/// Digest with nonce reuse, shared by the Atlas and the source clients (both speak realm "MMS
/// Public API"). Steady state: one round trip, signed with the cached nonce and the next nc.
/// On a 401 carrying a challenge (a stale or refused nonce, or the answer to an unsigned first
/// request) the fresh challenge is answered once; a second 401 stands. `send` makes one round
/// trip with the given Authorization header.
pub(crate) async fn digest_exchange<F, Fut>(
    auth: DigestAuth<'_>,
    method: &Method,
    url: &Url,
    send: F,
) -> Result<Incoming, AtlasError>
where
    F: Fn(Option<HeaderValue>) -> Fut,
    Fut: std::future::Future<Output = Result<Incoming, AtlasError>>,
{
    let DigestAuth {
        nonces,
        fp,
        username,
        password,
    } = auth;
    let uri = request_uri(url);
    let sign = |ch: &digest::Challenge, nc: u32| {
        let value = digest::authorization(
            ch,
            username,
            password,
            method.as_str(),
            &uri,
            nc,
            &digest::new_cnonce(),
        );
        HeaderValue::from_str(&value).ok()
    };
    // Keyed by the URL's origin too: a nonce is signed only for the server that issued it.
    let cached = nonces.next(&fp, url);
    let used_nonce = cached.as_ref().map(|(ch, _)| ch.nonce.clone());
    let header = cached.and_then(|(ch, nc)| sign(&ch, nc));
    let first = send(header).await?;
    if first.status != 401 {
        return Ok(first);
    }
    if let Some(nonce) = &used_nonce {
        nonces.forget(&fp, url, nonce);
    }
    let challenge = digest::parse_challenge(
        first
            .headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let Some(ch) = challenge else {
        // A 401 without a challenge we can answer: the 401 is the answer.
        return Ok(first);
    };
    // The fresh nonce is used privately (nc=1) and shared only once the server accepted
    // it: concurrent calls reusing one nonce can reach the server out of nc order, and a
    // server that insists on increasing nc refuses the late one. Sharing the fresh nonce
    // before this answer would let that race hit the retry too.
    let Some(header) = sign(&ch, 1) else {
        return Ok(first);
    };
    let second = send(Some(header)).await?;
    if second.status != 401 {
        nonces.store(fp, url, ch);
    }
    Ok(second)
}

/// The Digest `uri`: path and query exactly as sent.
fn request_uri(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

pub(crate) fn parse_base_url(raw: &str) -> Result<Url, AtlasError> {
    // Errors name the URL without any user info: a password typed into it must not be logged.
    let shown = super::redact::redact_url_userinfo(raw.trim());
    let url = Url::parse(raw.trim())
        .map_err(|e| AtlasError::Config(format!("base URL {shown:?}: {e}")))?;
    let bad = |why: &str| Err(AtlasError::Config(format!("base URL {shown:?}: {why}")));
    if !matches!(url.scheme(), "https" | "http") {
        return bad("scheme must be https (or http for a local simulator)");
    }
    if url.host_str().is_none_or(str::is_empty) || url.cannot_be_a_base() {
        return bad("no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad("must not contain credentials");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return bad("must not have a query or fragment");
    }
    Ok(url)
}

/// Appends path segments (percent-encoded) to the base, keeping any path prefix it has.
pub(crate) fn join(base: &Url, segments: &[&str]) -> Result<Url, AtlasError> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| AtlasError::Config("base URL cannot take a path".into()))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_with_a_password_is_refused_without_echoing_it() {
        for url in [
            "https://user:hunter2pw@cloud.mongodb.com",
            "ftp://user:hunter2pw@cloud.mongodb.com",
            "https://user:hunter2pw@host:badport",
        ] {
            let e = AtlasClient::new(AtlasConfig::with_base_url(url)).unwrap_err();
            let shown = e.to_string();
            assert!(!shown.contains("hunter2pw"), "{shown}");
            assert!(!format!("{e:?}").contains("hunter2pw"), "{e:?}");
            assert!(shown.contains("base URL"), "{shown}");
        }
    }

    #[test]
    fn urls_keep_prefixes_and_validate_org_ids() {
        let c = AtlasClient::new(AtlasConfig::default()).unwrap();
        assert_eq!(
            c.link_tokens_url("0123456789abcdef01234567")
                .unwrap()
                .as_str(),
            "https://cloud.mongodb.com/api/atlas/v2/orgs/0123456789abcdef01234567/liveMigrations/linkTokens"
        );
        assert_eq!(
            c.inner.token_url.as_str(),
            "https://cloud.mongodb.com/api/oauth/token"
        );
        for bad in [
            "",
            "0123",
            "../../../../api/oauth/tok",
            "0123456789abcdef0123456g",
            "0123456789abcdef01234567/",
        ] {
            assert_eq!(
                c.link_tokens_url(bad),
                Err(AtlasError::InvalidOrgId),
                "{bad}"
            );
        }
        let c =
            AtlasClient::new(AtlasConfig::with_base_url("http://127.0.0.1:8080/prefix/")).unwrap();
        assert_eq!(
            c.link_tokens_url("0123456789abcdef01234567")
                .unwrap()
                .path(),
            "/prefix/api/atlas/v2/orgs/0123456789abcdef01234567/liveMigrations/linkTokens"
        );
        for bad in [
            "ftp://x",
            "not a url",
            "https://u:p@host",
            "https://host/?a=b",
            "mailto:x@y",
        ] {
            assert!(
                matches!(
                    AtlasClient::new(AtlasConfig::with_base_url(bad)),
                    Err(AtlasError::Config(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn digest_uri_is_path_and_query() {
        let u = Url::parse("http://h/a/b?x=1").unwrap();
        assert_eq!(request_uri(&u), "/a/b?x=1");
    }
}
