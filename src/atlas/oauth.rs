//! Service-account bearer tokens: minting (OAuth 2.0 client credentials) and a per-credentials
//! cache with single flight.
//!
//! The token endpoint is rate limited and an account may hold at most 100 live tokens, so a
//! token is minted once per credentials and reused until shortly before it expires; concurrent
//! callers wait on one mint instead of starting their own (an async mutex per credentials,
//! held across the mint). A failed mint is remembered for a short cool-down (or Retry-After), so
//! a burst of reconciles sharing bad credentials costs one request, not one each.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use serde::Deserialize;
use tokio::time::Instant;

use super::credentials::Fingerprint;
use super::error::AtlasError;
use super::observer::{Endpoint, RequestObserver};
use super::redact::BearerToken;
use super::transport::{HttpClient, Incoming, Limits, Outgoing, round_trip};

/// Lifetime assumed when the endpoint omits `expires_in` (Atlas documents 3600 s).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Slots beyond this trigger a sweep of idle ones (credentials that rotated away).
const MAX_SLOTS: usize = 4096;

/// A freshly minted token.
pub(crate) struct Minted {
    pub token: BearerToken,
    pub lifetime: Duration,
}

struct Cached {
    token: BearerToken,
    renew_at: Instant,
    expires_at: Instant,
}

#[derive(Default)]
struct Slot {
    token: Option<Cached>,
    failure: Option<(Instant, AtlasError)>,
}

pub(crate) struct TokenCache {
    slots: Mutex<HashMap<Fingerprint, Arc<tokio::sync::Mutex<Slot>>>>,
    renew_before: Duration,
    failure_cooldown: Duration,
    /// Longest cool-down a failure's Retry-After may impose.
    max_cooldown: Duration,
    /// Shortest reuse of a minted token (see `AtlasConfig::token_min_reuse`).
    min_reuse: Duration,
}

impl TokenCache {
    pub(crate) fn new(
        renew_before: Duration,
        failure_cooldown: Duration,
        max_cooldown: Duration,
        min_reuse: Duration,
    ) -> Self {
        TokenCache {
            slots: Mutex::new(HashMap::new()),
            renew_before,
            failure_cooldown,
            max_cooldown,
            min_reuse,
        }
    }

    fn slot(&self, fp: &Fingerprint) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut map = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SLOTS && !map.contains_key(fp) {
            // Idle slots (nobody holds or waits on them) are cheap to lose: a mint at worst.
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        map.entry(*fp).or_default().clone()
    }

    /// A valid token for these credentials, minting one if needed. The bool says whether it
    /// was minted by this call (a 401 with a fresh token is not worth another mint).
    pub(crate) async fn get<F, Fut>(
        &self,
        fp: &Fingerprint,
        mint: F,
    ) -> Result<(BearerToken, bool), AtlasError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Minted, AtlasError>>,
    {
        let slot = self.slot(fp);
        let mut slot = slot.lock().await;
        let now = Instant::now();
        if let Some(c) = &slot.token
            && now < c.renew_at
        {
            return Ok((c.token.clone(), false));
        }
        if let Some((until, err)) = &slot.failure {
            if now < *until {
                return self.fallback(&slot, now).ok_or_else(|| err.clone());
            }
            slot.failure = None;
        }
        match mint().await {
            Ok(m) => {
                let now = Instant::now();
                let (reuse, valid) = cache_lifetime(m.lifetime, self.renew_before, self.min_reuse);
                slot.token = Some(Cached {
                    token: m.token.clone(),
                    renew_at: later(now, reuse),
                    expires_at: later(now, valid),
                });
                Ok((m.token, true))
            }
            Err(err) => {
                let now = Instant::now();
                // Retry-After is clamped when parsed; clamp again so no caller can make a
                // remote value wedge these credentials.
                let cooldown = err
                    .retry_after()
                    .unwrap_or(self.failure_cooldown)
                    .min(self.max_cooldown);
                slot.failure = Some((later(now, cooldown), err.clone()));
                // Renewal failed but the old token still works: keep using it.
                self.fallback(&slot, now).ok_or(err)
            }
        }
    }

    fn fallback(&self, slot: &Slot, now: Instant) -> Option<(BearerToken, bool)> {
        slot.token
            .as_ref()
            .filter(|c| now < c.expires_at)
            .map(|c| (c.token.clone(), false))
    }

    /// Drops `token` if it is still the cached one (Atlas rejected it before its expiry).
    pub(crate) async fn invalidate(&self, fp: &Fingerprint, token: &BearerToken) {
        let slot = self.slot(fp);
        let mut slot = slot.lock().await;
        if slot.token.as_ref().is_some_and(|c| &c.token == token) {
            slot.token = None;
        }
    }
}

/// Who mints a service account's bearer tokens, where, and the cache they are kept in.
pub(crate) struct BearerAuth<'a> {
    pub tokens: &'a TokenCache,
    /// The cache key: the credentials' fingerprint, scoped to the token endpoint when one
    /// cache serves several servers (the same account minted at two hosts is two tokens).
    pub fp: Fingerprint,
    pub http: &'a HttpClient,
    pub limits: Limits,
    pub observer: Option<&'a dyn RequestObserver>,
    pub token_url: &'a Url,
    pub client_id: &'a str,
    pub client_secret: &'a str,
}

/// One request with a bearer token, shared by the Atlas and the source clients: the cached
/// token (or one minted now). A 401 with a token that came from the cache (revoked or expired
/// early at the server) drops it and tries once with a new one; the server refuses a 401
/// request before acting on it, so the resend cannot duplicate a POST. `send` makes one round
/// trip with the given Authorization header.
pub(crate) async fn bearer_exchange<F, Fut>(
    auth: BearerAuth<'_>,
    send: F,
) -> Result<Incoming, AtlasError>
where
    F: Fn(Option<HeaderValue>) -> Fut,
    Fut: Future<Output = Result<Incoming, AtlasError>>,
{
    let mint_once = || {
        mint(
            auth.http,
            auth.limits,
            auth.observer,
            auth.token_url,
            auth.client_id,
            auth.client_secret,
        )
    };
    let (token, fresh) = auth.tokens.get(&auth.fp, mint_once).await?;
    let resp = send(bearer(&token)).await?;
    if resp.status != 401 || fresh {
        return Ok(resp);
    }
    auth.tokens.invalidate(&auth.fp, &token).await;
    let (token, _) = auth.tokens.get(&auth.fp, mint_once).await?;
    send(bearer(&token)).await
}

fn bearer(token: &BearerToken) -> Option<HeaderValue> {
    // Checked when minted; a failure here would only mean an unauthenticated request (-> 401).
    HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()
}

/// How long a token with this lifetime is reused before renewal, and how long it may still be
/// used when renewal fails: a margin before expiry, never more than a third of the lifetime
/// early (a short-lived token is still reused for most of its life), and at least `min_reuse`.
fn cache_lifetime(
    lifetime: Duration,
    renew_before: Duration,
    min_reuse: Duration,
) -> (Duration, Duration) {
    let margin = renew_before.min(lifetime / 3);
    let reuse = lifetime.saturating_sub(margin).max(min_reuse);
    (reuse, lifetime.max(reuse))
}

/// `now + d`, saturating far in the future instead of panicking on overflow.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    token_type: Option<String>,
}

/// `POST {base}/api/oauth/token` with Basic auth and `grant_type=client_credentials`.
pub(crate) async fn mint(
    http: &HttpClient,
    limits: Limits,
    observer: Option<&dyn RequestObserver>,
    token_url: &Url,
    client_id: &str,
    client_secret: &str,
) -> Result<Minted, AtlasError> {
    // RFC 6749 2.3.1: id and secret are form-urlencoded before Basic encoding (as the Go SDK's
    // oauth2 AuthStyleInHeader does); a no-op for Atlas' alphanumeric ids and secrets.
    let user: String = url::form_urlencoded::byte_serialize(client_id.as_bytes()).collect();
    let pass: String = url::form_urlencoded::byte_serialize(client_secret.as_bytes()).collect();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let mut auth = HeaderValue::from_str(&format!("Basic {basic}")).map_err(|_| {
        AtlasError::Config("service account id or secret is not a valid header".into())
    })?;
    auth.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, auth);
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let resp = round_trip(
        http,
        limits,
        observer,
        Outgoing {
            method: Method::POST,
            url: token_url,
            headers,
            body: Some(b"grant_type=client_credentials"),
            endpoint: Endpoint::OAuthToken,
        },
    )
    .await?;
    if let Some(failure) = resp.failure {
        return Err(AtlasError::TokenEndpoint(Box::new(failure)));
    }
    let invalid = |what| AtlasError::InvalidResponse {
        endpoint: Endpoint::OAuthToken,
        status: resp.status,
        what,
    };
    let parsed: TokenResponse =
        serde_json::from_slice(&resp.body).map_err(|_| invalid("not a token response"))?;
    let token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid("no access_token"))?;
    if parsed
        .token_type
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
    {
        return Err(invalid("token_type is not Bearer"));
    }
    let lifetime = match parsed.expires_in {
        None | Some(serde_json::Value::Null) => DEFAULT_LIFETIME,
        Some(v) => {
            let secs = v
                .as_f64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse::<f64>().ok()))
                .filter(|s| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| invalid("expires_in is not a number of seconds"))?;
            Duration::from_secs_f64(secs.min(DEFAULT_LIFETIME.as_secs_f64() * 24.0))
        }
    };
    // Check the header value once here, so a token that cannot be sent fails the mint, not
    // every later request.
    if HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
        return Err(invalid("access_token is not a valid header value"));
    }
    Ok(Minted {
        token: BearerToken::new(token),
        lifetime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atlas::credentials::Credentials;
    use crate::atlas::error::ApiFailure;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MAX: Duration = Duration::from_secs(300);
    const MIN_REUSE: Duration = Duration::from_secs(30);

    fn fp() -> Fingerprint {
        Credentials::service_account("id", "secret").fingerprint()
    }

    #[tokio::test(start_paused = true)]
    async fn reuses_then_renews_before_expiry() {
        let cache = TokenCache::new(
            Duration::from_secs(600),
            Duration::from_secs(5),
            MAX,
            MIN_REUSE,
        );
        let mints = AtomicUsize::new(0);
        let mint = || async {
            let n = mints.fetch_add(1, Ordering::SeqCst);
            Ok(Minted {
                token: BearerToken::new(format!("t{n}")),
                lifetime: Duration::from_secs(3600),
            })
        };
        let (t, fresh) = cache.get(&fp(), mint).await.unwrap();
        assert!(fresh);
        assert_eq!(t.expose(), "t0");
        tokio::time::advance(Duration::from_secs(2999)).await;
        let (t, fresh) = cache.get(&fp(), mint).await.unwrap();
        assert_eq!((t.expose(), fresh), ("t0", false));
        tokio::time::advance(Duration::from_secs(2)).await; // past 3600 - 600
        let (t, _) = cache.get(&fp(), mint).await.unwrap();
        assert_eq!(t.expose(), "t1");
        assert_eq!(mints.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_shared_for_the_cooldown_and_old_token_is_kept() {
        let cache = TokenCache::new(
            Duration::from_secs(600),
            Duration::from_secs(5),
            MAX,
            MIN_REUSE,
        );
        let mints = AtomicUsize::new(0);
        let fail = || async {
            mints.fetch_add(1, Ordering::SeqCst);
            Err::<Minted, _>(AtlasError::TokenEndpoint(Box::new(
                ApiFailure::from_oauth_body(429, b"", None),
            )))
        };
        assert!(cache.get(&fp(), fail).await.is_err());
        assert!(cache.get(&fp(), fail).await.is_err());
        assert_eq!(
            mints.load(Ordering::SeqCst),
            1,
            "cooldown shares the failure"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(cache.get(&fp(), fail).await.is_err());
        assert_eq!(mints.load(Ordering::SeqCst), 2);

        // A token in its renewal window survives a failed renewal.
        let cache = TokenCache::new(
            Duration::from_secs(600),
            Duration::from_secs(5),
            MAX,
            MIN_REUSE,
        );
        let ok = || async {
            Ok(Minted {
                token: BearerToken::new("old"),
                lifetime: Duration::from_secs(3600),
            })
        };
        cache.get(&fp(), ok).await.unwrap();
        tokio::time::advance(Duration::from_secs(3300)).await;
        let (t, fresh) = cache.get(&fp(), fail).await.unwrap();
        assert_eq!((t.expose(), fresh), ("old", false));
        // Invalidation drops it.
        cache.invalidate(&fp(), &t).await;
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(cache.get(&fp(), fail).await.is_err());
    }

    #[test]
    fn tiny_lifetimes_are_reused_for_a_floor() {
        let renew = Duration::from_secs(600);
        assert_eq!(
            cache_lifetime(Duration::ZERO, renew, MIN_REUSE),
            (MIN_REUSE, MIN_REUSE)
        );
        assert_eq!(
            cache_lifetime(Duration::from_secs(1), renew, MIN_REUSE),
            (MIN_REUSE, MIN_REUSE)
        );
        assert_eq!(
            cache_lifetime(Duration::from_secs(3600), renew, MIN_REUSE),
            (Duration::from_secs(3000), Duration::from_secs(3600))
        );
        assert_eq!(
            cache_lifetime(Duration::from_secs(90), renew, MIN_REUSE),
            (Duration::from_secs(60), Duration::from_secs(90))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expires_in_zero_does_not_mint_per_call() {
        let cache = TokenCache::new(
            Duration::from_secs(600),
            Duration::from_secs(5),
            MAX,
            MIN_REUSE,
        );
        let mints = AtomicUsize::new(0);
        let mint = || async {
            let n = mints.fetch_add(1, Ordering::SeqCst);
            Ok(Minted {
                token: BearerToken::new(format!("t{n}")),
                lifetime: Duration::ZERO,
            })
        };
        for _ in 0..10 {
            cache.get(&fp(), mint).await.unwrap();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(mints.load(Ordering::SeqCst), 1, "one mint, reused");
        tokio::time::advance(MIN_REUSE).await;
        cache.get(&fp(), mint).await.unwrap();
        assert_eq!(mints.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_absurd_retry_after_on_the_token_endpoint_neither_panics_nor_wedges() {
        let cache = TokenCache::new(
            Duration::from_secs(600),
            Duration::from_secs(5),
            MAX,
            MIN_REUSE,
        );
        let mints = AtomicUsize::new(0);
        let fail = || async {
            mints.fetch_add(1, Ordering::SeqCst);
            // Not clamped at parse (as if built by hand): the cache clamps again.
            Err::<Minted, _>(AtlasError::TokenEndpoint(Box::new(
                ApiFailure::from_oauth_body(429, b"", Some(Duration::MAX)),
            )))
        };
        assert!(cache.get(&fp(), fail).await.is_err());
        tokio::time::advance(MAX + Duration::from_secs(1)).await;
        assert!(cache.get(&fp(), fail).await.is_err());
        assert_eq!(mints.load(Ordering::SeqCst), 2, "tried again after the cap");
    }
}
