//! The source side of a live migration: the Cloud Manager / Ops Manager "Link with Atlas" API
//! (`/api/public/v1.0/orgs/{orgId}/liveExport/migrationLink`), served on a port of its own.
//!
//! A link is accepted only for a token the Atlas side minted and has not revoked, and its
//! status follows that token: SYNCED while it is live, NOT_SYNCED once it is revoked. The
//! simulator keeps only the token's sha256, never the token.
//!
//! Checks run in this order: authentication (401), query flags (400), orgId format (400), org
//! exists (404), Organization Owner of the source org (403), then the operation itself.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Value, json};

use super::auth::authenticate_with;
use super::config::{
    ApiKeyConfig, ORG_OWNER, ServiceAccountConfig, SimConfig, SourceOrgConfig, is_valid_org_id,
};
use super::digest::NonceStore;
use super::faults::CallKind;
use super::handlers::{
    bad_request, invalid_org_id, media_type, not_org_owner, parse_format, parse_object,
};
use super::reply::{PLAIN_JSON, Reply};
use super::state::{
    AdminError, Inner, OAuthAccounts, Principal, SimState, TokenStatus, sha256_hex,
};

/// Source-port calls kept in the admin history; older ones are dropped first.
const HISTORY_LIMIT: usize = 1000;

/// What `migrationLink/status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
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

    /// SYNCED only while the linked token is live on the Atlas side.
    fn of(token: &TokenStatus) -> SyncStatus {
        match token {
            TokenStatus::Live { .. } => SyncStatus::Synced,
            TokenStatus::Revoked { .. } | TokenStatus::Unknown => SyncStatus::NotSynced,
        }
    }
}

/// A source org's link to Atlas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceLink {
    pub token_sha256: String,
    /// The Atlas org that minted the token.
    pub atlas_org_id: String,
    pub linked_at: Timestamp,
}

/// One source-port call in the admin history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceCall {
    pub method: String,
    pub path: String,
    /// HTTP status; 0 when the connection was dropped by a fault.
    pub status: u16,
    /// The user name the call presented (a Digest `username`, a Basic user), never a secret:
    /// a test can prove no Atlas key id was ever sent here. None without one (a Bearer token,
    /// no Authorization header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The user name an Authorization header presents (Digest `username`, Basic user part).
pub fn presented_user(authorization: &str) -> Option<String> {
    let (scheme, rest) = authorization.trim().split_once(char::is_whitespace)?;
    if scheme.eq_ignore_ascii_case("digest") {
        // Not `parse_authorization`: a header missing other parameters still names its user.
        let at = rest.find("username=")? + "username=".len();
        let value = rest[at..].trim_start();
        let name = match value.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next()?,
            None => value.split([',', ' ']).next()?,
        };
        return Some(name.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        return Some(text.split(':').next()?.to_owned());
    }
    None
}

/// A source org in `GET /state`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceOrgSnapshot {
    pub name: String,
    pub linked: bool,
    /// Absent when not linked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub atlas_org_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<SyncStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<SourceLink>,
}

#[derive(Debug)]
pub(crate) struct SourceOrg {
    name: String,
    link: Option<SourceLink>,
}

#[derive(Debug)]
pub(crate) struct SourceState {
    orgs: BTreeMap<String, SourceOrg>,
    pub api_keys: HashMap<String, ApiKeyConfig>,
    /// Service accounts (Cloud Manager) and the bearer tokens this port minted.
    pub oauth: OAuthAccounts,
    /// Nonces of its own: the source side is another server, a nonce from the Atlas port
    /// means nothing here.
    pub nonces: NonceStore,
    pub history: VecDeque<SourceCall>,
}

impl SourceState {
    pub fn new(config: &SimConfig) -> Self {
        Self {
            orgs: config
                .source_orgs
                .iter()
                .map(|o| {
                    (
                        o.id.clone(),
                        SourceOrg {
                            name: o.name.clone(),
                            link: None,
                        },
                    )
                })
                .collect(),
            api_keys: config
                .source_api_keys
                .iter()
                .map(|k| (k.public_key.clone(), k.clone()))
                .collect(),
            oauth: OAuthAccounts::new(&config.source_service_accounts),
            nonces: NonceStore::new(Duration::from_secs(config.digest_nonce_lifetime_seconds)),
            history: VecDeque::new(),
        }
    }

    fn is_owner(&self, principal: &Principal, org_id: &str) -> bool {
        let roles = match principal {
            Principal::ApiKey(k) => self.api_keys.get(k).map(|k| &k.roles),
            Principal::ServiceAccount(c) => self.oauth.service_accounts.get(c).map(|s| &s.roles),
        };
        roles
            .and_then(|r| r.get(org_id))
            .is_some_and(|roles| roles.iter().any(|r| r == ORG_OWNER))
    }

    pub fn reset(&mut self) {
        for org in self.orgs.values_mut() {
            org.link = None;
        }
        self.history.clear();
        self.oauth.stats.clear();
    }

    pub fn record(&mut self, call: SourceCall) {
        if self.history.len() >= HISTORY_LIMIT {
            self.history.pop_front();
        }
        self.history.push_back(call);
    }
}

impl Inner {
    /// Status of a source org's link: None when the org is unknown or not linked.
    fn source_status(&self, org_id: &str) -> Option<SyncStatus> {
        let link = self.source.orgs.get(org_id)?.link.as_ref()?;
        Some(SyncStatus::of(
            &self.token_status_by_hash(&link.token_sha256),
        ))
    }

    pub fn source_snapshot(&self) -> BTreeMap<String, SourceOrgSnapshot> {
        self.source
            .orgs
            .iter()
            .map(|(id, org)| {
                let snap = SourceOrgSnapshot {
                    name: org.name.clone(),
                    linked: org.link.is_some(),
                    atlas_org_id: org.link.as_ref().map(|l| l.atlas_org_id.clone()),
                    status: self.source_status(id),
                    link: org.link.clone(),
                };
                (id.clone(), snap)
            })
            .collect()
    }
}

impl SimState {
    /// SYNCED / NOT_SYNCED for a linked source org; None when it is unknown or not linked.
    pub fn source_status(&self, org_id: &str) -> Option<SyncStatus> {
        self.lock().source_status(org_id)
    }

    /// The source org's link (token sha256, Atlas org), if any.
    pub fn source_link(&self, org_id: &str) -> Option<SourceLink> {
        self.lock()
            .source
            .orgs
            .get(org_id)
            .and_then(|o| o.link.clone())
    }

    /// The source-port calls so far (at most the latest 1000), oldest first.
    pub fn source_calls(&self) -> Vec<SourceCall> {
        self.lock().source.history.iter().cloned().collect()
    }

    pub(crate) fn record_source_call(&self, call: SourceCall) {
        self.lock().source.record(call);
    }

    pub fn add_source_org(&self, org: SourceOrgConfig) -> Result<(), AdminError> {
        org.validate()?;
        let mut inner = self.lock();
        if inner.source.orgs.contains_key(&org.id) {
            return Err(AdminError::Conflict(format!(
                "source org {} exists",
                org.id
            )));
        }
        inner.source.orgs.insert(
            org.id,
            SourceOrg {
                name: org.name,
                link: None,
            },
        );
        Ok(())
    }

    pub fn add_source_service_account(&self, sa: ServiceAccountConfig) -> Result<(), AdminError> {
        self.lock().source.oauth.add(sa)
    }

    pub fn add_source_api_key(&self, key: ApiKeyConfig) -> Result<(), AdminError> {
        key.validate()?;
        let mut inner = self.lock();
        if inner.source.api_keys.contains_key(&key.public_key) {
            return Err(AdminError::Conflict(format!(
                "source API key {} exists",
                key.public_key
            )));
        }
        inner.source.api_keys.insert(key.public_key.clone(), key);
        Ok(())
    }
}

/// `POST|DELETE .../liveExport/migrationLink` and `GET .../liveExport/migrationLink/status`
/// (told apart by the path).
pub async fn migration_link(
    State(state): State<SimState>,
    method: Method,
    Path(org_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_uri = super::handlers::digest_uri(&uri);
    let mut inner = state.lock();
    let source = &mut inner.source;
    let user = match authenticate_with(
        &source.api_keys,
        &mut source.nonces,
        &mut source.oauth,
        method.as_str(),
        &request_uri,
        &headers,
    ) {
        Ok(user) => user,
        Err((failure, reply)) => {
            tracing::debug!(?failure, "source authentication failed");
            return reply.render_as(Default::default(), PLAIN_JSON);
        }
    };
    let format = match parse_format(uri.query()) {
        Ok(f) => f,
        Err(reply) => return reply.render_as(Default::default(), PLAIN_JSON),
    };
    let (endpoint, _) = CallKind::classify_source(uri.path());
    handle(
        &mut inner, endpoint, &method, &org_id, &user, &headers, &body,
    )
    .render_as(format, PLAIN_JSON)
}

fn link_not_found(org_id: &str) -> Reply {
    Reply::error(
        StatusCode::NOT_FOUND,
        "MIGRATION_LINK_NOT_FOUND",
        format!("No migration link exists for organization {org_id}."),
    )
    .parameters(json!([org_id]))
}

fn status_body(status: SyncStatus) -> Option<Value> {
    Some(json!({ "status": status.as_str() }))
}

/// The decision for one authenticated call, on the locked state.
fn handle(
    inner: &mut Inner,
    endpoint: CallKind,
    method: &Method,
    org_id: &str,
    user: &Principal,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    if !is_valid_org_id(org_id) {
        return invalid_org_id(org_id);
    }
    if !inner.source.orgs.contains_key(org_id) {
        // A code that names the org, unlike the Atlas side's RESOURCE_NOT_FOUND: a client must
        // tell "no such org" from MIGRATION_LINK_NOT_FOUND ("no link") on the same 404.
        return Reply::error(
            StatusCode::NOT_FOUND,
            "ORG_NOT_FOUND",
            format!("No organization with ID {org_id} exists."),
        )
        .parameters(json!([org_id]));
    }
    if !inner.source.is_owner(user, org_id) {
        return not_org_owner();
    }
    match (endpoint, method) {
        (CallKind::SourceLink, &Method::POST) => post_link(inner, org_id, headers, body),
        (CallKind::SourceLink, &Method::DELETE) => {
            let link = inner
                .source
                .orgs
                .get_mut(org_id)
                .and_then(|o| o.link.take());
            match link {
                Some(_) => Reply::success(StatusCode::NO_CONTENT, None),
                None => link_not_found(org_id),
            }
        }
        (CallKind::SourceLinkStatus, &Method::GET) => match inner.source_status(org_id) {
            Some(status) => Reply::success(StatusCode::OK, status_body(status)),
            None => link_not_found(org_id),
        },
        _ => Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("Method {method} is not allowed on this resource."),
        ),
    }
}

fn post_link(inner: &mut Inner, org_id: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
    let token = match parse_link_body(headers, body) {
        Ok(t) => t,
        Err(reply) => return reply,
    };
    let sha = sha256_hex(&token);
    // The token is checked before the org's current link: a dead token is refused as such
    // even when it is the one already linked.
    let TokenStatus::Live {
        org_id: atlas_org_id,
    } = inner.token_status_by_hash(&sha)
    else {
        // Never echoes the token: it is a credential even when dead.
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "INVALID_LINK_TOKEN",
            "The link token is invalid, expired or revoked.",
        );
    };
    let Some(org) = inner.source.orgs.get_mut(org_id) else {
        return link_not_found(org_id);
    };
    match &org.link {
        Some(link) if link.token_sha256 == sha => {}
        Some(_) => {
            return Reply::error(
                StatusCode::CONFLICT,
                "MIGRATION_LINK_ALREADY_EXISTS",
                format!(
                    "Organization {org_id} is already linked to Atlas with another link token; delete that link first."
                ),
            )
            .parameters(json!([org_id]));
        }
        None => {
            org.link = Some(SourceLink {
                token_sha256: sha,
                atlas_org_id,
                linked_at: Timestamp::now(),
            });
        }
    }
    Reply::success(StatusCode::OK, status_body(SyncStatus::Synced))
}

/// Validates `{"linkToken": "<non-empty string>"}` and returns the token.
fn parse_link_body(headers: &HeaderMap, body: &[u8]) -> Result<String, Reply> {
    if let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        let mt = media_type(ct);
        if mt != "application/json" {
            return Err(Reply::error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                format!("Unsupported Content-Type {mt}."),
            ));
        }
    }
    let obj = parse_object(body, "linkToken")?;
    match obj.get("linkToken") {
        None | Some(Value::Null) => Err(bad_request(
            "MISSING_ATTRIBUTE",
            "The required attribute linkToken was not specified.".into(),
            json!(["linkToken"]),
            "linkToken",
            "is required".into(),
        )),
        Some(Value::String(t)) if !t.trim().is_empty() => Ok(t.clone()),
        Some(_) => Err(bad_request(
            "INVALID_JSON_ATTRIBUTE",
            "Received JSON for the linkToken attribute does not match expected format.".into(),
            json!(["linkToken"]),
            "linkToken",
            "must be a non-empty string".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        DEMO_CLIENT_ID, DEMO_ORG_ID, DEMO_SOURCE_CLIENT_ID, DEMO_SOURCE_ORG_ID,
        DEMO_SOURCE_PUBLIC_KEY, roles,
    };
    use crate::state::{Link, new_link_token};

    /// A demo state with one live Atlas token; returns (state, token).
    fn state_with_token() -> (SimState, String) {
        let state = SimState::new(&SimConfig::demo()).expect("demo config");
        let token = new_link_token();
        state
            .lock()
            .orgs
            .get_mut(DEMO_ORG_ID)
            .expect("demo org")
            .links
            .push(Link {
                token_sha256: sha256_hex(&token),
                api_key_id: SimState::new_api_key_id(),
                access_list_ips: Vec::new(),
                created_at: Timestamp::now(),
            });
        (state, token)
    }

    fn call(state: &SimState, endpoint: CallKind, method: Method, body: &str) -> Reply {
        handle(
            &mut state.lock(),
            endpoint,
            &method,
            DEMO_SOURCE_ORG_ID,
            &Principal::ApiKey(DEMO_SOURCE_PUBLIC_KEY.into()),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    fn post(state: &SimState, token: &str) -> Reply {
        let body = json!({ "linkToken": token }).to_string();
        call(state, CallKind::SourceLink, Method::POST, &body)
    }

    #[test]
    fn link_follows_the_atlas_token() {
        let (state, token) = state_with_token();
        let r = post(&state, &token);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, status_body(SyncStatus::Synced));
        assert_eq!(post(&state, &token).status, StatusCode::OK, "idempotent");
        let link = state.source_link(DEMO_SOURCE_ORG_ID).expect("linked");
        assert_eq!(link.atlas_org_id, DEMO_ORG_ID);
        assert_eq!(link.token_sha256, sha256_hex(&token));
        assert_eq!(
            state.source_status(DEMO_SOURCE_ORG_ID),
            Some(SyncStatus::Synced)
        );

        // Revoked on the Atlas side: NOT_SYNCED, and the same token is now refused.
        {
            let mut inner = state.lock();
            let org = inner.orgs.get_mut(DEMO_ORG_ID).expect("org");
            let removed = std::mem::take(&mut org.links);
            org.revoked_hashes
                .extend(removed.into_iter().map(|l| l.token_sha256));
        }
        let r = call(&state, CallKind::SourceLinkStatus, Method::GET, "");
        assert_eq!(r.body, status_body(SyncStatus::NotSynced));
        assert_eq!(r.error_code, None);
        assert_eq!(
            post(&state, &token).error_code.as_deref(),
            Some("INVALID_LINK_TOKEN")
        );

        let r = call(&state, CallKind::SourceLink, Method::DELETE, "");
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        for (endpoint, method) in [
            (CallKind::SourceLink, Method::DELETE),
            (CallKind::SourceLinkStatus, Method::GET),
        ] {
            let r = call(&state, endpoint, method, "");
            assert_eq!(r.status, StatusCode::NOT_FOUND);
            assert_eq!(r.error_code.as_deref(), Some("MIGRATION_LINK_NOT_FOUND"));
        }
    }

    #[test]
    fn another_token_while_linked_conflicts() {
        let (state, token) = state_with_token();
        assert_eq!(post(&state, &token).status, StatusCode::OK);
        let (other_state, other) = state_with_token();
        drop(other_state);
        // `other` is unknown to `state`: refused as a token before any conflict.
        assert_eq!(
            post(&state, &other).error_code.as_deref(),
            Some("INVALID_LINK_TOKEN")
        );
        let second = new_link_token();
        state
            .lock()
            .orgs
            .get_mut(DEMO_ORG_ID)
            .expect("org")
            .links
            .push(Link {
                token_sha256: sha256_hex(&second),
                api_key_id: SimState::new_api_key_id(),
                access_list_ips: Vec::new(),
                created_at: Timestamp::now(),
            });
        let r = post(&state, &second);
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(
            r.error_code.as_deref(),
            Some("MIGRATION_LINK_ALREADY_EXISTS")
        );
        assert_eq!(
            state
                .source_link(DEMO_SOURCE_ORG_ID)
                .map(|l| l.token_sha256),
            Some(sha256_hex(&token)),
            "the first link stays"
        );
    }

    #[test]
    fn owner_role_org_and_method_checks() {
        let (state, token) = state_with_token();
        state
            .add_source_api_key(ApiKeyConfig::new(
                "member",
                "p",
                roles(DEMO_SOURCE_ORG_ID, "ORG_MEMBER"),
            ))
            .expect("key");
        let body = json!({ "linkToken": token }).to_string();
        let mut inner = state.lock();
        let mut run = |org: &str, user: &str, method: Method| {
            handle(
                &mut inner,
                CallKind::SourceLink,
                &method,
                org,
                &Principal::ApiKey(user.into()),
                &HeaderMap::new(),
                body.as_bytes(),
            )
        };
        let r = run(DEMO_SOURCE_ORG_ID, "member", Method::POST);
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let r = run(
            "0123456789abcdef01234567",
            DEMO_SOURCE_PUBLIC_KEY,
            Method::POST,
        );
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.error_code.as_deref(), Some("ORG_NOT_FOUND"));
        // An Atlas org id is not a source org.
        let r = run(DEMO_ORG_ID, DEMO_SOURCE_PUBLIC_KEY, Method::POST);
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = run("nope", DEMO_SOURCE_PUBLIC_KEY, Method::POST);
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let r = run(DEMO_SOURCE_ORG_ID, DEMO_SOURCE_PUBLIC_KEY, Method::PUT);
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn service_accounts_of_the_source_port_own_by_role() {
        let (state, token) = state_with_token();
        state
            .add_source_service_account(ServiceAccountConfig::new(
                "member_sa",
                "s",
                roles(DEMO_SOURCE_ORG_ID, "ORG_MEMBER"),
            ))
            .expect("member");
        let body = json!({ "linkToken": token }).to_string();
        let mut inner = state.lock();
        let mut run = |client: &str| {
            handle(
                &mut inner,
                CallKind::SourceLink,
                &Method::POST,
                DEMO_SOURCE_ORG_ID,
                &Principal::ServiceAccount(client.into()),
                &HeaderMap::new(),
                body.as_bytes(),
            )
        };
        assert_eq!(run("member_sa").status, StatusCode::FORBIDDEN);
        // The Atlas port's service account is nobody here.
        assert_eq!(run(DEMO_CLIENT_ID).status, StatusCode::FORBIDDEN);
        assert_eq!(run(DEMO_SOURCE_CLIENT_ID).status, StatusCode::OK);
    }

    #[test]
    fn body_validation() {
        let h = HeaderMap::new();
        assert_eq!(
            parse_link_body(&h, br#"{"linkToken":"t"}"#).expect("valid"),
            "t"
        );
        for (bad, code) in [
            (&b""[..], "MALFORMED_JSON"),
            (b"{", "MALFORMED_JSON"),
            (b"[]", "INVALID_JSON"),
            (b"{}", "MISSING_ATTRIBUTE"),
            (br#"{"linkToken":1}"#, "INVALID_JSON_ATTRIBUTE"),
            (br#"{"linkToken":" "}"#, "INVALID_JSON_ATTRIBUTE"),
            (br#"{"linkToken":"t","x":1}"#, "INVALID_ATTRIBUTE"),
        ] {
            let r = parse_link_body(&h, bad).expect_err("invalid");
            assert_eq!(r.error_code.as_deref(), Some(code), "{bad:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let r = parse_link_body(&h, br#"{"linkToken":"t"}"#).expect_err("media type");
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn the_presented_user_is_read_from_digest_and_basic_never_bearer() {
        assert_eq!(
            presented_user(r#"Digest username="k1", realm="r", nonce="n""#).as_deref(),
            Some("k1")
        );
        assert_eq!(
            presented_user("Digest realm=\"r\", username=k2, nonce=\"n\"").as_deref(),
            Some("k2")
        );
        // "client:secret": only the client id is kept.
        assert_eq!(
            presented_user("Basic Y2xpZW50OnNlY3JldA==").as_deref(),
            Some("client")
        );
        assert_eq!(presented_user("Bearer abc"), None);
        assert_eq!(presented_user("Digest nonce=\"n\""), None);
        assert_eq!(presented_user("junk"), None);
    }

    #[test]
    fn history_is_bounded() {
        let mut s = SourceState::new(&SimConfig::demo());
        for i in 0..(HISTORY_LIMIT + 5) {
            s.record(SourceCall {
                method: "GET".into(),
                path: format!("/{i}"),
                status: 200,
                user: None,
            });
        }
        assert_eq!(s.history.len(), HISTORY_LIMIT);
        assert_eq!(s.history.front().map(|c| c.path.as_str()), Some("/5"));
    }
}
