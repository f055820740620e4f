//! The source-side client: Cloud Manager or Ops Manager,
//! `/api/public/v1.0/orgs/{orgId}/liveExport/migrationLink` (POST, GET `/status`, DELETE).
//!
//! It reuses the Atlas client's machinery: the Digest exchange with nonce reuse (realm "MMS
//! Public API", MD5, qop=auth) for an API key, the client-credentials bearer exchange with its
//! single-flight token cache for a service account (Cloud Manager; tokens from
//! `{url}/api/oauth/token`), the capped and observed round trip, typed failures with the
//! ApiError body parsed. What differs: the base URL comes from the LinkToken (an Ops Manager
//! lives anywhere) and so may its CA bundle, so one HTTP client is built per CA bundle and
//! kept (a handful per operator); roots are the platform's plus that bundle. Redirects are not
//! followed (an Authorization header never travels to another host); proxies from the
//! environment are honoured as for Atlas, never for a loopback source. A Digest nonce is
//! only ever used at the origin that issued it (`crate::atlas::nonces`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::allow::AllowedSources;
use super::error::SourceError;
use crate::atlas::client::{DigestAuth, digest_exchange, http_client, join, parse_base_url};
use crate::atlas::credentials::AuthParts;
use crate::atlas::gate::{Gate, RequestGate};
use crate::atlas::nonces::NonceCache;
use crate::atlas::oauth::{BearerAuth, TokenCache, bearer_exchange};
use crate::atlas::transport::{HttpClient, Incoming, Limits, Outgoing, is_loopback, round_trip};
use crate::atlas::{Credentials, Endpoint, LinkTokenValue, RequestObserver};

/// Entries beyond this drop the cache of HTTP clients wholesale (CA bundles churning).
const MAX_CLIENTS: usize = 64;

/// What the source says of an org's link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncStatus {
    Synced,
    NotSynced,
}

impl SyncStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::Synced => "SYNCED",
            SyncStatus::NotSynced => "NOT_SYNCED",
        }
    }
}

/// What a DELETE (or a status GET) found about the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unlinked {
    /// 2xx: the link is gone.
    Deleted,
    /// 404 with an ApiError that does not name the org: there was no link.
    NoLink,
}

/// Where to call: the LinkToken's source URL and the PEM CA bundle to trust beside the
/// platform's.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub url: &'a str,
    pub ca_pem: Option<&'a [u8]>,
}

/// Settings shared by every source call (timeouts, caps, user agent).
#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_retry_after: Duration,
    pub user_agent: String,
    /// Service-account bearer tokens: as `AtlasConfig`'s fields of the same names.
    pub token_renew_before: Duration,
    pub token_failure_cooldown: Duration,
    pub token_min_reuse: Duration,
    /// The only source URLs called: every other target is refused before any request
    /// (credentials and tokens never leave for a host the cluster admin did not allow).
    pub allowed: AllowedSources,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 64 * 1024,
            max_retry_after: Duration::from_secs(300),
            user_agent: crate::atlas::default_user_agent(),
            token_renew_before: Duration::from_secs(600),
            token_failure_cooldown: Duration::from_secs(5),
            token_min_reuse: Duration::from_secs(30),
            allowed: AllowedSources::default(),
        }
    }
}

struct Http {
    client: HttpClient,
    nonces: NonceCache,
}

/// The source client. Cheap to clone.
#[derive(Clone)]
pub struct SourceClient {
    inner: Arc<Inner>,
    gate: Gate,
}

impl Default for SourceClient {
    fn default() -> Self {
        SourceClient::new(SourceConfig::default(), None)
    }
}

struct Inner {
    config: SourceConfig,
    /// One HTTP client and nonce cache per CA bundle (by hash; None: platform roots only). The
    /// cache serves every source URL with that bundle: its nonces are kept by origin.
    clients: Mutex<HashMap<Option<[u8; 32]>, Arc<Http>>>,
    platform: OnceLock<Vec<CertificateDer<'static>>>,
    observer: Option<Arc<dyn RequestObserver>>,
    /// Service-account bearer tokens, by credentials and token endpoint.
    tokens: TokenCache,
}

impl std::fmt::Debug for SourceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceClient").finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct StatusBody {
    status: Option<String>,
}

impl SourceClient {
    pub fn new(config: SourceConfig, observer: Option<Arc<dyn RequestObserver>>) -> Self {
        SourceClient {
            inner: Arc::new(Inner {
                tokens: TokenCache::new(
                    config.token_renew_before,
                    config.token_failure_cooldown,
                    config.max_retry_after,
                    config.token_min_reuse,
                ),
                config,
                clients: Mutex::new(HashMap::new()),
                platform: OnceLock::new(),
                observer,
            }),
            gate: Gate::default(),
        }
    }

    /// Asked right before every request, as the Atlas client's: a closed gate refuses it with
    /// [`SourceError::NotLeader`], unsent.
    pub fn with_gate(mut self, gate: Arc<dyn RequestGate>) -> Self {
        self.gate = Gate::new(gate);
        self
    }

    /// `POST …/migrationLink` with `{"linkToken": …}`: the source org is linked with the token.
    /// Returns the status the source reports in its answer.
    pub async fn link(
        &self,
        target: Target<'_>,
        creds: &Credentials,
        org_id: &str,
        token: &LinkTokenValue,
    ) -> Result<Option<SyncStatus>, SourceError> {
        let url = link_url(target.url, org_id, false)?;
        let body = serde_json::to_vec(&serde_json::json!({ "linkToken": token.expose() }))
            .map_err(|e| SourceError::Config(format!("request body: {e}")))?;
        let resp = self
            .send(target, creds, Method::POST, &url, Some(&body))
            .await?;
        if let Some(f) = resp.failure {
            return Err(SourceError::Api(Box::new(f)));
        }
        Ok(parse_status(&resp.body))
    }

    /// `GET …/migrationLink/status`: None when the org has no link (404 not naming the org).
    pub async fn status(
        &self,
        target: Target<'_>,
        creds: &Credentials,
        org_id: &str,
    ) -> Result<Option<SyncStatus>, SourceError> {
        let url = link_url(target.url, org_id, true)?;
        let resp = self.send(target, creds, Method::GET, &url, None).await?;
        match resp.failure {
            None => parse_status(&resp.body)
                .map(Some)
                .ok_or(SourceError::InvalidResponse {
                    status: resp.status,
                    what: "no status SYNCED or NOT_SYNCED",
                }),
            Some(f) if is_no_link(&f) => Ok(None),
            Some(f) => Err(SourceError::Api(Box::new(f))),
        }
    }

    /// `DELETE …/migrationLink`: 2xx -> Deleted, 404 not naming the org -> NoLink.
    pub async fn unlink(
        &self,
        target: Target<'_>,
        creds: &Credentials,
        org_id: &str,
    ) -> Result<Unlinked, SourceError> {
        let url = link_url(target.url, org_id, false)?;
        let resp = self.send(target, creds, Method::DELETE, &url, None).await?;
        match resp.failure {
            None => Ok(Unlinked::Deleted),
            Some(f) if is_no_link(&f) => Ok(Unlinked::NoLink),
            Some(f) => Err(SourceError::Api(Box::new(f))),
        }
    }

    async fn send(
        &self,
        target: Target<'_>,
        creds: &Credentials,
        method: Method,
        url: &Url,
        body: Option<&[u8]>,
    ) -> Result<Incoming, SourceError> {
        self.check_allowed(target.url)?;
        let http = self.http(target.ca_pem)?;
        let limits = Limits {
            max_body_bytes: self.inner.config.max_body_bytes,
            max_retry_after: self.inner.config.max_retry_after,
        };
        let observer = self.inner.observer.as_deref();
        self.gate.check()?;
        let gate = &self.gate;
        let client = &http.client;
        let request = |header: Option<HeaderValue>| {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
            if body.is_some() {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            if let Some(mut h) = header {
                h.set_sensitive(true);
                headers.insert(AUTHORIZATION, h);
            }
            let method = method.clone();
            async move {
                // Again per round trip: a Digest or bearer exchange may wait between them.
                gate.check()?;
                round_trip(
                    client,
                    limits,
                    observer,
                    Outgoing {
                        method,
                        url,
                        headers,
                        body,
                        endpoint: Endpoint::SourceLink,
                    },
                )
                .await
            }
        };
        let resp = match creds.auth_parts() {
            AuthParts::Digest { username, password } => {
                let auth = DigestAuth {
                    nonces: &http.nonces,
                    fp: creds.fingerprint(),
                    username,
                    password,
                };
                digest_exchange(auth, &method, url, request).await?
            }
            // A service account (Cloud Manager): the same client-credentials flow as for
            // Atlas, against the source's own token endpoint.
            AuthParts::ClientCredentials {
                client_id,
                client_secret,
            } => {
                let token_url = token_url(target.url)?;
                let auth = BearerAuth {
                    tokens: &self.inner.tokens,
                    fp: creds.fingerprint().scoped(token_url.as_str()),
                    http: &http.client,
                    limits,
                    observer,
                    token_url: &token_url,
                    client_id,
                    client_secret,
                };
                bearer_exchange(auth, request).await?
            }
        };
        Ok(resp)
    }

    /// Err(NotAllowed) for a URL off the cluster admin's list: checked before anything is
    /// built, resolved or sent, for every call (link, status, unlink, the token endpoint).
    pub fn check_allowed(&self, url: &str) -> Result<(), SourceError> {
        let allowed = &self.inner.config.allowed;
        if allowed.permits(url) {
            return Ok(());
        }
        Err(SourceError::NotAllowed {
            url: url.trim_end_matches('/').to_string(),
            allowed: allowed.to_string(),
        })
    }

    /// The HTTP client for this CA bundle, built on first use.
    fn http(&self, ca_pem: Option<&[u8]>) -> Result<Arc<Http>, SourceError> {
        let key = ca_pem.map(|pem| <[u8; 32]>::from(Sha256::digest(pem)));
        let mut clients = self.inner.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = clients.get(&key) {
            return Ok(h.clone());
        }
        let extra = match ca_pem {
            Some(pem) => {
                crate::atlas::tls::parse_ca_pem("spec.source.caBundle", pem).map_err(|e| {
                    // The shared parser words its errors for the operator's flag.
                    SourceError::CaBundle(e.to_string().replacen("--atlas-ca-file ", "", 1))
                })?
            }
            None => Vec::new(),
        };
        let platform = self.inner.platform.get_or_init(|| {
            rustls_native_certs::load_native_certs()
                .certs
                .into_iter()
                .filter(|c| rustls::RootCertStore::empty().add(c.clone()).is_ok())
                .collect()
        });
        let cfg = &self.inner.config;
        let roots: Vec<CertificateDer<'static>> =
            platform.iter().chain(extra.iter()).cloned().collect();
        let client = http_client(
            &roots,
            cfg.connect_timeout,
            cfg.request_timeout,
            &cfg.user_agent,
        )?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let http = Arc::new(Http {
            client,
            nonces: NonceCache::default(),
        });
        clients.insert(key, http.clone());
        Ok(http)
    }
}

/// `{base}/api/oauth/token`: where a service account's bearer tokens are minted (Cloud
/// Manager documents `https://cloud.mongodb.com/api/oauth/token`).
fn token_url(base: &str) -> Result<Url, SourceError> {
    let base = parse_base_url(base).map_err(|e| SourceError::Config(e.to_string()))?;
    join(&base, &["api", "oauth", "token"]).map_err(|e| SourceError::Config(e.to_string()))
}

/// `{base}/api/public/v1.0/orgs/{orgId}/liveExport/migrationLink[/status]`. The URL is checked
/// again here (the CRD rules may postdate a stored object): https, or http to loopback only.
pub fn link_url(base: &str, org_id: &str, status: bool) -> Result<Url, SourceError> {
    if org_id.len() != 24 || !org_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SourceError::InvalidOrgId);
    }
    let base = parse_base_url(base).map_err(|e| SourceError::Config(e.to_string()))?;
    if base.scheme() == "http" && !is_loopback(&base) {
        return Err(SourceError::Config(format!(
            "source URL {base}: http:// is only allowed for a loopback address; use https://"
        )));
    }
    let mut segments = vec![
        "api",
        "public",
        "v1.0",
        "orgs",
        org_id,
        "liveExport",
        "migrationLink",
    ];
    if status {
        segments.push("status");
    }
    join(&base, &segments).map_err(|e| SourceError::Config(e.to_string()))
}

fn parse_status(body: &[u8]) -> Option<SyncStatus> {
    let parsed: StatusBody = serde_json::from_slice(body).ok()?;
    match parsed.status.as_deref() {
        Some("SYNCED") => Some(SyncStatus::Synced),
        Some("NOT_SYNCED") => Some(SyncStatus::NotSynced),
        _ => None,
    }
}

/// A 404 that means "this org has no link" rather than "no such org": the source's own
/// ApiError (a proxy's 404 proves nothing) whose errorCode does not name an org. The codes
/// are undocumented; see docs/source-link.md for what is assumed.
fn is_no_link(f: &crate::atlas::ApiFailure) -> bool {
    f.status == 404
        && f.is_atlas_api_error()
        && !f
            .error_code
            .as_deref()
            .is_some_and(|c| c.contains("ORG") && !c.contains("LINK"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atlas::ApiFailure;

    #[test]
    fn urls_are_the_public_api_paths_and_refuse_bad_input() {
        let u = link_url("https://om.example:8443", "6a1e9b2a3c4d5e6f7a8b9c0d", false).unwrap();
        assert_eq!(
            u.as_str(),
            "https://om.example:8443/api/public/v1.0/orgs/6a1e9b2a3c4d5e6f7a8b9c0d/liveExport/migrationLink"
        );
        let u = link_url("http://127.0.0.1:8092/", "6a1e9b2a3c4d5e6f7a8b9c0d", true).unwrap();
        assert_eq!(
            u.path(),
            "/api/public/v1.0/orgs/6a1e9b2a3c4d5e6f7a8b9c0d/liveExport/migrationLink/status"
        );
        assert_eq!(
            link_url("https://x", "../../oauth", false),
            Err(SourceError::InvalidOrgId)
        );
        for bad in [
            "http://om.example",
            "https://u:pw@om.example",
            "ftp://om",
            "https://om/?a=1",
        ] {
            let e = link_url(bad, "6a1e9b2a3c4d5e6f7a8b9c0d", false).unwrap_err();
            assert!(matches!(e, SourceError::Config(_)), "{bad}: {e}");
            assert!(!e.to_string().contains("pw"), "{e}");
        }
    }

    #[test]
    fn a_404_means_no_link_unless_it_names_the_org_or_is_not_the_sources() {
        let f = |body: &[u8]| ApiFailure::from_api_body(404, body, None);
        assert!(is_no_link(&f(
            br#"{"error":404,"errorCode":"MIGRATION_LINK_NOT_FOUND"}"#
        )));
        assert!(is_no_link(&f(br#"{"error":404,"errorCode":null}"#)));
        assert!(!is_no_link(&f(
            br#"{"error":404,"errorCode":"ORG_NOT_FOUND"}"#
        )));
        assert!(!is_no_link(&f(b"<html>not found</html>")));
        assert!(!is_no_link(&f(b"")));
    }

    #[test]
    fn status_bodies() {
        assert_eq!(
            parse_status(br#"{"status":"SYNCED"}"#),
            Some(SyncStatus::Synced)
        );
        assert_eq!(
            parse_status(br#"{"status":"NOT_SYNCED"}"#),
            Some(SyncStatus::NotSynced)
        );
        assert_eq!(parse_status(br#"{"status":"WHAT"}"#), None);
        assert_eq!(parse_status(b"nope"), None);
    }
}
