//! The service-account OAuth 2.0 endpoints: `POST /api/oauth/token` (client credentials) and
//! `POST /api/oauth/revoke`, on the Atlas port and on the source port (Cloud Manager service
//! accounts), each against its own accounts and tokens. Errors use OAuth bodies
//! `{"error", "error_description"}`.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;

use super::reply::ErrorCode;
use super::state::{BearerToken, Inner, OAuthAccounts, SimState, random_b64, sha256_hex};

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = (
        status,
        [(CONTENT_TYPE, "application/json")],
        json!({"error": error, "error_description": description}).to_string(),
    )
        .into_response();
    r.extensions_mut().insert(ErrorCode(error.to_owned()));
    r
}

fn invalid_client() -> Response {
    oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "Invalid credentials provided.",
    )
}

/// `Authorization: Basic base64(clientId:clientSecret)`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// Which server's service accounts a call is for: the Atlas port's or the source port's.
type Accounts = fn(&mut Inner) -> &mut OAuthAccounts;

fn atlas(inner: &mut Inner) -> &mut OAuthAccounts {
    &mut inner.oauth
}

fn source(inner: &mut Inner) -> &mut OAuthAccounts {
    &mut inner.source.oauth
}

/// Checks Basic credentials against the configured service accounts; returns the client id.
fn authenticate_client(accounts: &OAuthAccounts, headers: &HeaderMap) -> Option<String> {
    let (id, secret) = basic_credentials(headers)?;
    let sa = accounts.service_accounts.get(&id)?;
    super::digest::constant_time_eq(sa.client_secret.as_bytes(), secret.as_bytes()).then_some(id)
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

fn form_value(body: &[u8], key: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// A JWT-shaped opaque token (Atlas hands out JWTs; clients must not parse them, but a
/// realistic shape catches clients that choke on dots or length).
fn new_access_token(client_id: &str, lifetime: u64) -> String {
    let now = jiff::Timestamp::now().as_second();
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(
        json!({
            "sub": client_id,
            "iat": now,
            "exp": now.saturating_add(i64::try_from(lifetime).unwrap_or(i64::MAX)),
            "jti": random_b64(16),
        })
        .to_string(),
    );
    format!("{header}.{payload}.{}", random_b64(64))
}

/// `POST /api/oauth/token` on the Atlas port.
pub async fn token(State(state): State<SimState>, headers: HeaderMap, body: Bytes) -> Response {
    mint(&state, atlas, &headers, &body)
}

/// `POST /api/oauth/token` on the source port (Cloud Manager service accounts).
pub async fn source_token(
    State(state): State<SimState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    mint(&state, source, &headers, &body)
}

/// `POST /api/oauth/revoke` on the Atlas port.
pub async fn revoke(State(state): State<SimState>, headers: HeaderMap, body: Bytes) -> Response {
    revoke_in(&state, atlas, &headers, &body)
}

/// `POST /api/oauth/revoke` on the source port.
pub async fn source_revoke(
    State(state): State<SimState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    revoke_in(&state, source, &headers, &body)
}

fn mint(state: &SimState, accounts: Accounts, headers: &HeaderMap, body: &[u8]) -> Response {
    let mut inner = state.lock();
    let accounts = accounts(&mut inner);
    let Some(client_id) = authenticate_client(accounts, headers) else {
        return invalid_client();
    };
    if !is_form(headers) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded.",
        );
    }
    match form_value(body, "grant_type").as_deref() {
        None | Some("") => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing grant_type parameter.",
            );
        }
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Only the client_credentials grant type is supported.",
            );
        }
    }
    let now = Instant::now();
    let Some(sa) = accounts.service_accounts.get(&client_id) else {
        return invalid_client();
    };
    let (lifetime, cap) = (sa.token_lifetime_seconds, sa.max_active_tokens);
    if accounts.live_bearer_count(&client_id, now) >= cap {
        return oauth_error(
            StatusCode::FORBIDDEN,
            "access_denied",
            "Access Token limit reached. Please use the existing Access Tokens or create a new Service Account.",
        );
    }
    let token = new_access_token(&client_id, lifetime);
    accounts.bearer.insert(
        sha256_hex(&token),
        BearerToken {
            client_id: client_id.clone(),
            expires_at: now + Duration::from_secs(lifetime),
        },
    );
    accounts.stats.entry(client_id).or_default().minted += 1;
    drop(inner);
    let mut r = (
        StatusCode::OK,
        [(CONTENT_TYPE, "application/json")],
        json!({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}).to_string(),
    )
        .into_response();
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// RFC 7009: 200 whether or not the token was live; only the owning client can revoke it.
fn revoke_in(state: &SimState, accounts: Accounts, headers: &HeaderMap, body: &[u8]) -> Response {
    let mut inner = state.lock();
    let accounts = accounts(&mut inner);
    let Some(client_id) = authenticate_client(accounts, headers) else {
        return invalid_client();
    };
    if !is_form(headers) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded.",
        );
    }
    let Some(token) = form_value(body, "token").filter(|t| !t.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing token parameter.",
        );
    };
    let hash = sha256_hex(&token);
    if accounts
        .bearer
        .get(&hash)
        .is_some_and(|t| t.client_id == client_id)
    {
        accounts.bearer.remove(&hash);
        accounts.stats.entry(client_id).or_default().revoked += 1;
    }
    StatusCode::OK.into_response()
}
