//! The admin API (its own port, JSON): state, token checks, runtime configuration, faults.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::config::{ApiKeyConfig, OrgConfig, ServiceAccountConfig, SourceOrgConfig};
use super::faults::FaultSpec;
use super::state::{AdminError, SimState, TokenStatus, sha256_hex};

pub fn router(state: SimState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/state", get(get_state))
        .route("/calls", get(get_calls))
        .route("/tokens/{sha256}", get(get_token))
        .route("/check-token", post(check_token))
        .route("/orgs", post(add_org))
        .route("/orgs/{org_id}/migrating", post(set_migrating))
        .route("/api-keys", post(add_api_key))
        .route("/service-accounts", post(add_service_account))
        .route("/source-orgs", post(add_source_org))
        .route("/source-api-keys", post(add_source_api_key))
        .route("/source-service-accounts", post(add_source_service_account))
        .route(
            "/faults",
            post(add_fault).get(list_faults).delete(clear_faults),
        )
        .route("/reset", post(reset))
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn admin_error(e: AdminError) -> Response {
    let status = match e {
        AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
        AdminError::Conflict(_) => StatusCode::CONFLICT,
        AdminError::NotFound(_) => StatusCode::NOT_FOUND,
    };
    error(status, e.to_string())
}

/// Parses a JSON body ourselves so that errors come back as JSON with the serde message.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn bad(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallsQuery {
    org_id: Option<String>,
}

async fn get_calls(
    State(state): State<SimState>,
    axum::extract::Query(q): axum::extract::Query<CallsQuery>,
) -> Response {
    Json(state.call_history(q.org_id.as_deref())).into_response()
}

async fn get_state(State(state): State<SimState>) -> Response {
    Json(state.snapshot()).into_response()
}

fn token_answer(sha256: String, status: TokenStatus) -> Response {
    let live = matches!(status, TokenStatus::Live { .. });
    let mut body = serde_json::to_value(&status).unwrap_or_else(|_| json!({}));
    if let Some(m) = body.as_object_mut() {
        m.insert("live".into(), json!(live));
        m.insert("sha256".into(), json!(sha256));
    }
    Json(body).into_response()
}

async fn get_token(State(state): State<SimState>, Path(sha256): Path<String>) -> Response {
    let sha256 = sha256.to_ascii_lowercase();
    let status = state.token_status_by_hash(&sha256);
    token_answer(sha256, status)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CheckToken {
    link_token: String,
}

async fn check_token(State(state): State<SimState>, body: Bytes) -> Response {
    match parse::<CheckToken>(&body) {
        Ok(req) => {
            let sha = sha256_hex(&req.link_token);
            let status = state.token_status_by_hash(&sha);
            token_answer(sha, status)
        }
        Err(e) => bad(e),
    }
}

/// Parses a configuration item, adds it with `add`, and answers 201 with `{field: id}`.
fn create<T: DeserializeOwned>(
    state: &SimState,
    body: &[u8],
    field: &str,
    id: fn(&T) -> String,
    add: fn(&SimState, T) -> Result<(), AdminError>,
) -> Response {
    let item = match parse::<T>(body) {
        Ok(item) => item,
        Err(e) => return bad(e),
    };
    let id = id(&item);
    match add(state, item) {
        Ok(()) => (StatusCode::CREATED, Json(json!({ field: id }))).into_response(),
        Err(e) => admin_error(e),
    }
}

async fn add_org(State(state): State<SimState>, body: Bytes) -> Response {
    create(
        &state,
        &body,
        "id",
        |o: &OrgConfig| o.id.clone(),
        SimState::add_org,
    )
}

async fn add_api_key(State(state): State<SimState>, body: Bytes) -> Response {
    create(
        &state,
        &body,
        "publicKey",
        |k: &ApiKeyConfig| k.public_key.clone(),
        SimState::add_api_key,
    )
}

async fn add_service_account(State(state): State<SimState>, body: Bytes) -> Response {
    create(
        &state,
        &body,
        "clientId",
        |s: &ServiceAccountConfig| s.client_id.clone(),
        SimState::add_service_account,
    )
}

async fn add_source_org(State(state): State<SimState>, body: Bytes) -> Response {
    create(
        &state,
        &body,
        "id",
        |o: &SourceOrgConfig| o.id.clone(),
        SimState::add_source_org,
    )
}

async fn add_source_service_account(State(state): State<SimState>, body: Bytes) -> Response {
    create(
        &state,
        &body,
        "clientId",
        |s: &ServiceAccountConfig| s.client_id.clone(),
        SimState::add_source_service_account,
    )
}

async fn add_source_api_key(State(state): State<SimState>, body: Bytes) -> Response {
    create(
        &state,
        &body,
        "publicKey",
        |k: &ApiKeyConfig| k.public_key.clone(),
        SimState::add_source_api_key,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Migrating {
    migrating: bool,
}

async fn set_migrating(
    State(state): State<SimState>,
    Path(org_id): Path<String>,
    body: Bytes,
) -> Response {
    let req = match parse::<Migrating>(&body) {
        Ok(m) => m,
        Err(e) => return bad(e),
    };
    match state.set_migrating(&org_id, req.migrating) {
        Ok(()) => Json(json!({ "orgId": org_id, "migrating": req.migrating })).into_response(),
        Err(e) => admin_error(e),
    }
}

async fn add_fault(State(state): State<SimState>, body: Bytes) -> Response {
    let spec = match parse::<FaultSpec>(&body) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    match state.add_fault(spec) {
        Ok(id) => (StatusCode::CREATED, Json(json!({ "id": id }))).into_response(),
        Err(e) => admin_error(e),
    }
}

async fn list_faults(State(state): State<SimState>) -> Response {
    Json(state.faults()).into_response()
}

async fn clear_faults(State(state): State<SimState>) -> StatusCode {
    state.clear_faults();
    StatusCode::NO_CONTENT
}

async fn reset(State(state): State<SimState>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}
