//! Authentication of Atlas API calls and of source-side calls: HTTP Digest (API keys) or
//! Bearer (service accounts), each port with its own keys, nonces, accounts and tokens.

use std::collections::HashMap;
use std::time::Instant;

use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};

use super::config::ApiKeyConfig;
use super::digest::{self, NonceCheck, NonceStore, REALM};
use super::reply::Reply;
use super::state::{OAuthAccounts, Principal, SimState, sha256_hex};

/// Why a call was refused; only for the debug log, never sent to the client (Atlas answers
/// every failure with the same body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    UnknownPrincipal,
    BadResponse,
    UriMismatch,
    StaleNonce,
    ReplayedNonceCount,
    ExpiredBearer,
}

/// Authenticates an Atlas-port call. `request_uri` is the request target (path and query)
/// that a Digest `uri` parameter must match.
pub fn authenticate(
    state: &SimState,
    method: &str,
    request_uri: &str,
    headers: &HeaderMap,
) -> Result<Principal, (AuthFailure, Reply)> {
    let mut inner = state.lock();
    let inner = &mut *inner;
    authenticate_with(
        &inner.api_keys,
        &mut inner.nonces,
        &mut inner.oauth,
        method,
        request_uri,
        headers,
    )
}

/// Authenticates a call against one server's principals (the Atlas port's or the source
/// port's): Bearer with a token that server minted, or Digest with one of its API keys.
pub fn authenticate_with(
    keys: &HashMap<String, ApiKeyConfig>,
    nonces: &mut NonceStore,
    oauth: &mut OAuthAccounts,
    method: &str,
    request_uri: &str,
    headers: &HeaderMap,
) -> Result<Principal, (AuthFailure, Reply)> {
    let now = Instant::now();
    let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let failure = match header {
        None => AuthFailure::Missing,
        Some(value) => {
            let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
            if scheme.eq_ignore_ascii_case("bearer") {
                let hash = sha256_hex(rest.trim());
                match oauth.bearer.get(&hash) {
                    Some(t) if t.expires_at > now => {
                        let client = t.client_id.clone();
                        if oauth.service_accounts.contains_key(&client) {
                            return Ok(Principal::ServiceAccount(client));
                        }
                        AuthFailure::UnknownPrincipal
                    }
                    Some(_) => {
                        oauth.bearer.remove(&hash);
                        AuthFailure::ExpiredBearer
                    }
                    None => AuthFailure::UnknownPrincipal,
                }
            } else if scheme.eq_ignore_ascii_case("digest") {
                match check_digest(keys, nonces, method, request_uri, value, now) {
                    Ok(user) => return Ok(Principal::ApiKey(user)),
                    Err(f) => f,
                }
            } else {
                AuthFailure::Malformed
            }
        }
    };
    Err((failure, unauthorized(nonces, failure, now)))
}

/// The 401 answer: the Atlas body and a Digest challenge with a fresh nonce.
pub fn unauthorized(nonces: &mut NonceStore, failure: AuthFailure, now: Instant) -> Reply {
    let nonce = nonces.issue(now);
    let stale = failure == AuthFailure::StaleNonce;
    Reply::error(
        StatusCode::UNAUTHORIZED,
        "UNEXPECTED_ERROR",
        "You are not authorized for this resource.",
    )
    .header(WWW_AUTHENTICATE, digest::challenge(&nonce, stale))
}

/// Checks a Digest Authorization value; returns the public key it was made with.
fn check_digest(
    keys: &HashMap<String, ApiKeyConfig>,
    nonces: &mut NonceStore,
    method: &str,
    request_uri: &str,
    value: &str,
    now: Instant,
) -> Result<String, AuthFailure> {
    let p = digest::parse_authorization(value).ok_or(AuthFailure::Malformed)?;
    if p.realm != REALM
        || p.qop.as_deref() != Some("auth")
        || p.algorithm
            .as_deref()
            .is_some_and(|a| !a.eq_ignore_ascii_case("MD5"))
        || p.cnonce.is_none()
    {
        return Err(AuthFailure::Malformed);
    }
    let nc =
        p.nc.as_deref()
            .and_then(|nc| u64::from_str_radix(nc, 16).ok())
            .ok_or(AuthFailure::Malformed)?;
    let key = keys.get(&p.username).ok_or(AuthFailure::UnknownPrincipal)?;
    let expected = digest::expected_response(&p, method, &key.private_key);
    if !digest::constant_time_eq(
        expected.as_bytes(),
        p.response.to_ascii_lowercase().as_bytes(),
    ) {
        return Err(AuthFailure::BadResponse);
    }
    // Checked after the response so that only a holder of the key learns about the uri.
    if p.uri != request_uri {
        return Err(AuthFailure::UriMismatch);
    }
    match nonces.check(&p.nonce, nc, now) {
        NonceCheck::Fresh => Ok(p.username),
        NonceCheck::Stale => Err(AuthFailure::StaleNonce),
        NonceCheck::Replayed => Err(AuthFailure::ReplayedNonceCount),
    }
}
