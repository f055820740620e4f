//! POST and DELETE /api/atlas/v2/orgs/{orgId}/liveMigrations/linkTokens.
//!
//! Checks run in this order: authentication (401, never enveloped: a Digest client must see
//! the status), version in Accept (406), query flags (400), orgId format (400), org exists
//! (404), rate limit (429), Organization Owner (403), then the operation itself.

use std::net::IpAddr;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE, HeaderName, RETRY_AFTER};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::auth::authenticate;
use super::config::is_valid_org_id;
use super::ratelimit::Take;
use super::reply::{Format, Reply};
use super::state::{Link, SimState, new_link_token, sha256_hex};

pub const VERSION_MEDIA_TYPE: &str = "application/vnd.atlas.2023-01-01+json";
const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");

pub(crate) fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// True when some Accept entry names exactly the 2023-01-01 version. `application/json`,
/// `*/*` and a missing header get 406, as Atlas documents for a missing version.
fn accepts_version(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|entry| media_type(entry) == VERSION_MEDIA_TYPE)
}

fn not_acceptable() -> Reply {
    Reply::error(
        StatusCode::NOT_ACCEPTABLE,
        "INVALID_VERSION_DATE",
        "Invalid accept header or version date.",
    )
}

fn parse_bool_flag(query: Option<&str>, name: &str) -> Result<bool, Reply> {
    let Some(q) = query else { return Ok(false) };
    let mut value = false;
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        if k != name {
            continue;
        }
        value = match v.to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => {
                return Err(Reply::error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_QUERY_PARAMETER",
                    format!("Invalid query parameter {name} specified."),
                )
                .parameters(json!([name]))
                .bad_fields(&[(name.to_owned(), "must be true or false".to_owned())]));
            }
        };
    }
    Ok(value)
}

pub(crate) fn parse_format(query: Option<&str>) -> Result<Format, Reply> {
    Ok(Format {
        envelope: parse_bool_flag(query, "envelope")?,
        pretty: parse_bool_flag(query, "pretty")?,
    })
}

fn is_ip_or_cidr(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok() || s.parse::<ipnet::IpNet>().is_ok()
}

pub(crate) fn bad_request(
    code: &str,
    detail: String,
    param: Value,
    field: &str,
    desc: String,
) -> Reply {
    Reply::error(StatusCode::BAD_REQUEST, code, detail)
        .parameters(param)
        .bad_fields(&[(field.to_owned(), desc)])
}

/// Parses a required JSON object body whose only attribute may be `allowed`: 400
/// MALFORMED_JSON (empty or not JSON), INVALID_JSON (not an object) or INVALID_ATTRIBUTE.
pub(crate) fn parse_object(body: &[u8], allowed: &str) -> Result<Map<String, Value>, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad_request(
            "MALFORMED_JSON",
            "Received JSON is malformed.".into(),
            Value::Null,
            "body",
            "A request body is required.".into(),
        ));
    }
    // serde_json's messages name a position, never the input: a garbled secret stays out.
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        bad_request(
            "MALFORMED_JSON",
            "Received JSON is malformed.".into(),
            Value::Null,
            "body",
            e.to_string(),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(bad_request(
            "INVALID_JSON",
            "Received JSON does not match expected format.".into(),
            Value::Null,
            "body",
            "must be a JSON object".into(),
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| k.as_str() != allowed) {
        return Err(bad_request(
            "INVALID_ATTRIBUTE",
            format!("Invalid attribute {unknown} specified."),
            json!([unknown]),
            unknown,
            "unknown attribute".into(),
        ));
    }
    Ok(obj)
}

/// Validates the `TargetOrgRequest` body and returns its access list.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Vec<String>, Reply> {
    if let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        let mt = media_type(ct);
        if mt.starts_with("application/vnd.atlas.") && mt != VERSION_MEDIA_TYPE {
            return Err(not_acceptable());
        }
        if mt != VERSION_MEDIA_TYPE && mt != "application/json" {
            return Err(Reply::error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                format!("Unsupported Content-Type {mt}."),
            ));
        }
    }
    let obj = parse_object(body, "accessListIps")?;
    let items = match obj.get("accessListIps") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(bad_request(
                "INVALID_JSON_ATTRIBUTE",
                "Received JSON for the accessListIps attribute does not match expected format."
                    .into(),
                json!(["accessListIps"]),
                "accessListIps",
                "must be an array of strings".into(),
            ));
        }
    };
    let mut ips = Vec::with_capacity(items.len());
    let mut violations = Vec::new();
    let mut first: Option<Reply> = None;
    for (i, item) in items.iter().enumerate() {
        let field = format!("accessListIps[{i}]");
        match item.as_str() {
            Some(s) if is_ip_or_cidr(s) => ips.push(s.to_owned()),
            Some(s) => {
                violations.push((
                    field,
                    format!("The address {s} must be in valid IP address or CIDR notation."),
                ));
                first.get_or_insert_with(|| {
                    Reply::error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_IP_ADDRESS_OR_CIDR_NOTATION",
                        format!("The address {s} must be in valid IP address or CIDR notation."),
                    )
                    .parameters(json!([s]))
                });
            }
            None => {
                violations.push((field, "must be a string".to_owned()));
                first.get_or_insert_with(|| {
                    Reply::error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_JSON_ATTRIBUTE",
                        "Received JSON for the accessListIps attribute does not match expected format.",
                    )
                    .parameters(json!(["accessListIps"]))
                });
            }
        }
    }
    match first {
        Some(reply) => Err(reply.bad_fields(&violations)),
        None => Ok(ips),
    }
}

/// 400 for an orgId that is not 24 lowercase hex digits.
pub(crate) fn invalid_org_id(org_id: &str) -> Reply {
    bad_request(
        "INVALID_PATH_PARAMETER",
        format!("Invalid path parameter orgId specified: {org_id}."),
        json!(["orgId"]),
        "orgId",
        "must match ^([a-f0-9]{24})$".into(),
    )
}

fn org_not_found(org_id: &str) -> Reply {
    Reply::error(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        format!("No organization with ID {org_id} exists."),
    )
    .parameters(json!([org_id]))
}

/// 403 for a caller without ORG_OWNER on the org.
pub(crate) fn not_org_owner() -> Reply {
    Reply::error(
        StatusCode::FORBIDDEN,
        "USER_UNAUTHORIZED",
        "Current user is not authorized to perform this action: the Organization Owner role is required.",
    )
}

/// The request URI as a Digest client signs it: path and query (both ports check it).
pub(crate) fn digest_uri(uri: &Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned())
}

pub async fn link_tokens(
    State(state): State<SimState>,
    method: Method,
    Path(org_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_uri = digest_uri(&uri);
    let principal = match authenticate(&state, method.as_str(), &request_uri, &headers) {
        Ok(p) => p,
        Err((failure, reply)) => {
            tracing::debug!(?failure, "authentication failed");
            return reply.render(Format::default());
        }
    };
    if !accepts_version(&headers) {
        return not_acceptable().render(Format::default());
    }
    let format = match parse_format(uri.query()) {
        Ok(f) => f,
        Err(reply) => return reply.render(Format::default()),
    };
    let reply = handle(&state, &method, &org_id, &principal, &headers, &body);
    reply.render(format)
}

fn handle(
    state: &SimState,
    method: &Method,
    org_id: &str,
    principal: &super::state::Principal,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    if !is_valid_org_id(org_id) {
        return invalid_org_id(org_id);
    }
    let now = Instant::now();
    let mut inner = state.lock();
    let owner = inner.is_owner(principal, org_id);
    let Some(org) = inner.orgs.get_mut(org_id) else {
        return org_not_found(org_id);
    };
    let (limit, remaining) = match org.bucket.try_take(now) {
        Take::Allowed { limit, remaining } => (limit, remaining),
        Take::Limited { limit, retry_after } => {
            let refill = org.rate.refill_per_minute;
            return Reply::error(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED_TOKEN_BUCKET",
                format!(
                    "Rate limit exceeded for api/atlas/v2/orgs. Please retry after {retry_after} seconds. Request capacity: {limit}. Refill rate: {refill} per 60 seconds."
                ),
            )
            .parameters(json!(["api/atlas/v2/orgs", retry_after, limit, refill, 60]))
            .header(RETRY_AFTER, retry_after)
            .header(RATELIMIT_LIMIT, limit)
            .header(RATELIMIT_REMAINING, 0);
        }
    };
    let reply = if !owner {
        not_org_owner()
    } else if *method == Method::POST {
        match parse_body(headers, body) {
            Err(reply) => reply,
            Ok(access_list_ips) => {
                let token = new_link_token();
                org.links.push(Link {
                    token_sha256: sha256_hex(&token),
                    api_key_id: SimState::new_api_key_id(),
                    access_list_ips,
                    created_at: jiff::Timestamp::now(),
                });
                org.issued += 1;
                Reply::success(StatusCode::CREATED, Some(json!({ "linkToken": token })))
            }
        }
    } else if *method == Method::DELETE {
        if org.migrating {
            Reply::error(
                StatusCode::CONFLICT,
                "CANNOT_DELETE_ORG_ACTIVE_LIVE_MIGRATION_ATLAS_ORG_LINK",
                "Cannot delete organization link while there is active migration in following project ids: [5f1e9b2a3c4d5e6f7a8b9c0e]",
            )
            .parameters(json!(["[5f1e9b2a3c4d5e6f7a8b9c0e]"]))
        } else if org.links.is_empty() {
            Reply::error(
                StatusCode::NOT_FOUND,
                "UNEXPECTED_ERROR",
                "Could not find the requested external organization link.",
            )
            .parameters(Value::Null)
        } else {
            // Worst case of the undocumented semantics: DELETE removes every link of the org.
            let removed = std::mem::take(&mut org.links);
            org.revoked += removed.len() as u64;
            org.revoked_hashes
                .extend(removed.into_iter().map(|l| l.token_sha256));
            Reply::success(StatusCode::NO_CONTENT, None)
        }
    } else {
        Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("Method {method} is not allowed on this resource."),
        )
    };
    reply
        .header(RATELIMIT_LIMIT, limit)
        .header(RATELIMIT_REMAINING, remaining)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn accept_header_needs_the_exact_version() {
        let mut h = HeaderMap::new();
        assert!(!accepts_version(&h));
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!accepts_version(&h));
        h.insert(
            ACCEPT,
            HeaderValue::from_static(
                "application/json, application/vnd.atlas.2023-01-01+json;charset=utf-8",
            ),
        );
        assert!(accepts_version(&h));
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.atlas.2025-03-12+json"),
        );
        assert!(!accepts_version(&h));
    }

    #[test]
    fn body_validation() {
        let h = HeaderMap::new();
        assert_eq!(
            parse_body(&h, br#"{"accessListIps":["1.2.3.4","10.0.0.0/8","::1"]}"#)
                .expect("valid")
                .len(),
            3
        );
        assert!(parse_body(&h, b"{}").expect("valid").is_empty());
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            br#"{"accessListIps":"1.2.3.4"}"#,
            br#"{"accessListIps":[1]}"#,
            br#"{"accessListIps":["1.2.3.400"]}"#,
            br#"{"accessListIps":["10.0.0.0/33"]}"#,
            br#"{"other":1}"#,
        ] {
            assert!(
                parse_body(&h, bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
