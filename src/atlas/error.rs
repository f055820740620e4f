//! Typed errors of the Atlas client and the parsing of Atlas error bodies.
//!
//! Nothing in here holds a credential or token: transport errors are summarised without URLs
//! or headers, and every text of an error body is sanitised when it is parsed
//! ([`remote_text::sanitize`]: one line, bounded, credential shapes redacted), because a
//! broken or hostile server (or a proxy) may send anything.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::observer::Endpoint;
use super::remote_text::{self, MAX_CODE_CHARS, MAX_TEXT_CHARS};

/// Most `badRequestDetail.fields` entries (and `parameters`) kept; Atlas names one or two, and
/// every one kept lengthens the condition message.
pub const MAX_FIELDS: usize = 5;

/// One entry of `badRequestDetail.fields`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct FieldViolation {
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// What the body of an error response was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    Empty,
    /// Parsed as JSON in the expected shape (possibly with every field absent or null).
    Json,
    /// Anything else (an HTML page from a proxy, truncated JSON, ...). Never echoed.
    NotJson,
}

/// A non-success HTTP answer from Atlas (API or token endpoint), with whatever the body said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: u16,
    /// ApiError `errorCode`; for the token endpoint the OAuth `error` (e.g. `invalid_client`).
    pub error_code: Option<String>,
    /// ApiError `detail`; for the token endpoint `error_description`.
    pub detail: Option<String>,
    /// ApiError `reason` (the HTTP reason phrase, as Atlas writes it).
    pub reason: Option<String>,
    /// The scalar `parameters` (strings sanitised), at most [`MAX_FIELDS`].
    pub parameters: Vec<serde_json::Value>,
    /// At most [`MAX_FIELDS`] entries of `badRequestDetail.fields`.
    pub fields: Vec<FieldViolation>,
    /// How many `fields` entries the body had beyond those kept.
    pub fields_omitted: usize,
    /// `Retry-After`, when sent (seconds or an HTTP date), clamped to the client's maximum.
    pub retry_after: Option<Duration>,
    pub body: BodyKind,
    /// ApiError `error`: the HTTP status repeated in the body, as Atlas writes it.
    pub error_status: Option<u16>,
}

/// ApiError, every field optional: in practice `errorCode`, `parameters` and others come back
/// null or absent.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiErrorBody {
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    error_code: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    parameters: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    bad_request_detail: Option<BadRequestDetail>,
}

#[derive(Deserialize)]
struct BadRequestDetail {
    #[serde(default)]
    fields: Option<Vec<FieldViolation>>,
}

/// OAuth error body (RFC 6749 5.2). Atlas may also answer the token endpoint with an ApiError
/// (e.g. from its gateway), so both shapes are accepted.
#[derive(Deserialize)]
struct OAuthErrorBody {
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    error_description: Option<String>,
}

fn code(s: Option<String>) -> Option<String> {
    remote_text::sanitize_opt(s.as_deref(), MAX_CODE_CHARS)
}

fn text(s: Option<String>) -> Option<String> {
    remote_text::sanitize_opt(s.as_deref(), MAX_TEXT_CHARS)
}

/// Scalars only (nothing shows them, but they are public data of the failure), strings
/// sanitised like a detail.
fn parameter(v: serde_json::Value) -> Option<serde_json::Value> {
    match v {
        serde_json::Value::String(s) => Some(remote_text::sanitize(&s, MAX_TEXT_CHARS).into()),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => None,
        scalar => Some(scalar),
    }
}

impl ApiFailure {
    /// Parses an Atlas API error body. Never fails: a body that is not an ApiError is recorded
    /// as `NotJson` (or `Empty`) and only the status is kept.
    pub fn from_api_body(status: u16, body: &[u8], retry_after: Option<Duration>) -> Self {
        let mut f = ApiFailure::bare(status, retry_after, body);
        if f.body == BodyKind::Empty {
            return f;
        }
        match serde_json::from_slice::<ApiErrorBody>(body) {
            Ok(b) => {
                f.body = BodyKind::Json;
                f.error_status = b
                    .error
                    .as_ref()
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok());
                f.error_code = code(b.error_code);
                f.detail = text(b.detail);
                f.reason = code(b.reason);
                f.parameters = b
                    .parameters
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(parameter)
                    .take(MAX_FIELDS)
                    .collect();
                let fields = b
                    .bad_request_detail
                    .and_then(|d| d.fields)
                    .unwrap_or_default();
                f.fields_omitted = fields.len().saturating_sub(MAX_FIELDS);
                f.fields = fields
                    .into_iter()
                    .take(MAX_FIELDS)
                    .map(|v| FieldViolation {
                        field: code(v.field),
                        description: text(v.description),
                    })
                    .collect();
            }
            Err(_) => f.body = BodyKind::NotJson,
        }
        f
    }

    /// Parses a token-endpoint error body: OAuth `{error, error_description}` or an ApiError.
    pub fn from_oauth_body(status: u16, body: &[u8], retry_after: Option<Duration>) -> Self {
        let api = ApiFailure::from_api_body(status, body, retry_after);
        if api.body != BodyKind::Json {
            return api;
        }
        match serde_json::from_slice::<OAuthErrorBody>(body) {
            Ok(OAuthErrorBody {
                error: Some(serde_json::Value::String(code)),
                error_description,
            }) => ApiFailure {
                error_code: self::code(Some(code)).or(api.error_code),
                detail: text(error_description).or(api.detail),
                ..api
            },
            _ => api,
        }
    }

    fn bare(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Self {
        ApiFailure {
            status,
            error_code: None,
            detail: None,
            reason: None,
            parameters: Vec::new(),
            fields: Vec::new(),
            fields_omitted: 0,
            retry_after,
            error_status: None,
            body: if body.iter().all(u8::is_ascii_whitespace) {
                BodyKind::Empty
            } else {
                BodyKind::NotJson
            },
        }
    }
}

/// The detail of Atlas's answer to a DELETE of an org's link tokens when the org has none, as
/// recorded from the live service (its errorCode has been null, then UNEXPECTED_ERROR).
pub const NO_LINK_DETAIL: &str = "Could not find the requested external organization link.";

impl ApiFailure {
    /// True only for Atlas's own "this org has no link" answer to a DELETE: a 404 ApiError with
    /// the recorded detail and no errorCode but the generic one. Any other 404 (a retired path,
    /// `RESOURCE_NOT_FOUND`, an org Atlas does not know, a gateway's page) says nothing about
    /// whether a link is still live, so it must never count as "already revoked".
    pub fn is_no_link_answer(&self) -> bool {
        self.status == 404
            && self.is_atlas_api_error()
            && matches!(self.error_code.as_deref(), None | Some("UNEXPECTED_ERROR"))
            && self.detail.as_deref().map(str::trim) == Some(NO_LINK_DETAIL)
    }

    /// True when the body is Atlas's own ApiError (JSON repeating the status in `error`, or
    /// naming an `errorCode`), not a page or JSON of some proxy or gateway in between. Atlas
    /// sends `"errorCode": null` on some 404s, so the repeated status is what identifies it.
    pub fn is_atlas_api_error(&self) -> bool {
        self.body == BodyKind::Json
            && (self.error_status == Some(self.status) || self.error_code.is_some())
    }
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(code) = &self.error_code {
            write!(f, " {code}")?;
        }
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        } else if let Some(reason) = &self.reason {
            write!(f, ": {reason}")?;
        }
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|v| {
                format!(
                    "{}: {}",
                    v.field.as_deref().unwrap_or("?"),
                    v.description.as_deref().unwrap_or("invalid")
                )
            })
            .collect();
        if !fields.is_empty() {
            let more = match self.fields_omitted {
                0 => String::new(),
                n => format!("; {n} more"),
            };
            write!(f, " ({}{more})", fields.join("; "))?;
        }
        match self.body {
            BodyKind::NotJson => write!(f, " (response body was not an Atlas error)")?,
            BodyKind::Empty if self.detail.is_none() => write!(f, " (empty response body)")?,
            _ => {}
        }
        if let Some(d) = self.retry_after {
            write!(f, " (retry after {}s)", d.as_secs())?;
        }
        Ok(())
    }
}

/// What went wrong below HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// No connection within the connect timeout.
    ConnectTimeout,
    /// The whole request (including reading the body) exceeded the request timeout.
    Timeout,
    /// Connection refused, reset, DNS failure, proxy failure.
    Connect,
    /// TLS handshake or certificate failure.
    Tls,
    /// The response started but its body could not be read.
    BodyRead,
    /// Anything else reqwest reports (request building, protocol errors).
    Other,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::ConnectTimeout => "connect timeout",
            TransportKind::Timeout => "request timeout",
            TransportKind::Connect => "connection failed",
            TransportKind::Tls => "TLS failure",
            TransportKind::BodyRead => "response body could not be read",
            TransportKind::Other => "HTTP failure",
        })
    }
}

/// Every way a call to Atlas can fail (failure bodies boxed to keep `Result`s small). `Display` is safe for conditions, events and logs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AtlasError {
    /// The link-token endpoint answered with a non-success status.
    #[error("Atlas answered {0}")]
    Api(Box<ApiFailure>),
    /// DELETE answered 409: a live migration is using the link (usually
    /// CANNOT_DELETE_ORG_ACTIVE_LIVE_MIGRATION_ATLAS_ORG_LINK).
    #[error("Atlas refused to revoke the link token while a migration is active: {0}")]
    ActiveMigration(Box<ApiFailure>),
    /// The OAuth token endpoint refused to mint a token for the service account.
    #[error("Atlas token endpoint refused the service account: {0}")]
    TokenEndpoint(Box<ApiFailure>),
    /// No (complete) HTTP response.
    #[error("Atlas {endpoint} request failed: {kind}{}", if .detail.is_empty() { String::new() } else { format!(" ({})", .detail) })]
    Transport {
        endpoint: Endpoint,
        kind: TransportKind,
        /// A short cause chain, without URL.
        detail: String,
    },
    /// The response body exceeded the configured cap; it was not read further.
    #[error("Atlas {endpoint} response body exceeds {limit} bytes")]
    BodyTooLarge { endpoint: Endpoint, limit: usize },
    /// A success status with a body we cannot use (e.g. no `linkToken`, not JSON).
    #[error("Atlas {endpoint} answered HTTP {status} with an unusable body: {what}")]
    InvalidResponse {
        endpoint: Endpoint,
        status: u16,
        what: &'static str,
    },
    /// The orgId is not 24 hex digits; refused before any request (it becomes part of a URL).
    #[error("orgId must be 24 hexadecimal digits")]
    InvalidOrgId,
    /// The client could not be built (operator configuration).
    #[error("Atlas client configuration: {0}")]
    Config(String),
    /// Not sent: this replica does not certainly hold the leader Lease any more.
    #[error("request not sent: this replica no longer holds the leader Lease")]
    NotLeader,
}

impl AtlasError {
    /// True when Atlas itself refused to act in the org for these credentials: 401, 403, or a
    /// 404 carrying Atlas's ApiError (an org the key cannot see). A gateway's 404 (no ApiError)
    /// never reached Atlas and proves nothing: it is not a refusal but trouble on the way.
    pub fn is_refusal_in_org(&self) -> bool {
        match self {
            AtlasError::Api(f) | AtlasError::TokenEndpoint(f) => {
                matches!(f.status, 401 | 403) || (f.status == 404 && f.is_atlas_api_error())
            }
            _ => false,
        }
    }

    /// HTTP status, when Atlas answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            AtlasError::Api(f) | AtlasError::ActiveMigration(f) | AtlasError::TokenEndpoint(f) => {
                Some(f.status)
            }
            AtlasError::InvalidResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The failure body Atlas sent, when there was one.
    pub fn failure(&self) -> Option<&ApiFailure> {
        match self {
            AtlasError::Api(f) | AtlasError::ActiveMigration(f) | AtlasError::TokenEndpoint(f) => {
                Some(f.as_ref())
            }
            _ => None,
        }
    }

    pub fn error_code(&self) -> Option<&str> {
        self.failure().and_then(|f| f.error_code.as_deref())
    }

    pub fn detail(&self) -> Option<&str> {
        self.failure().and_then(|f| f.detail.as_deref())
    }

    pub fn retry_after(&self) -> Option<Duration> {
        self.failure().and_then(|f| f.retry_after)
    }

    /// A message for a Ready condition or an event: status, errorCode and detail when there are
    /// any; never a credential or token (none is ever stored in an error).
    pub fn user_message(&self) -> String {
        self.to_string()
    }
}

/// Parses `Retry-After`: delta-seconds, or an HTTP date (converted to a delay from now), never
/// more than `max`. The header comes from the network: a value near `u64::MAX` seconds, a date
/// in the year 9999 or a number too long for any integer type must neither overflow the time
/// arithmetic that follows (a panic there ends the controller) nor hold an object for years.
/// So every well-formed value is clamped here, once, to `max` (`--retry-max-delay`).
/// True for a well-formed RFC 2822 date-time (zone aside) in the year 9999.
fn in_last_year_of_calendar(v: &str) -> bool {
    v.rsplit_once(' ')
        .and_then(|(civil, _zone)| jiff::fmt::strtime::parse("%a, %d %b %Y %H:%M:%S", civil).ok())
        .and_then(|tm| tm.to_datetime().ok())
        .is_some_and(|dt| dt.year() == 9999)
}

pub(crate) fn parse_retry_after(value: &str, max: Duration) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64 is still "a very long time", not "no hint".
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(max));
    }
    // An HTTP-date (RFC 9110) is an RFC 2822 date-time; a past one means "now".
    let when = match jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(v) {
        Ok(when) => when,
        // jiff's timestamps end early on 9999-12-31 (every offset must fit); a well-formed
        // date after that is as late as it gets.
        Err(_) if in_last_year_of_calendar(v) => return Some(max),
        Err(_) => return None,
    };
    let delta = when.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(delta).unwrap_or(Duration::ZERO).min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_api_error() {
        let body = br#"{"error":400,"errorCode":"VALIDATION_ERROR","detail":"bad ip","reason":"Bad Request","parameters":["x",1],"badRequestDetail":{"fields":[{"field":"accessListIps[0]","description":"not an IP"}]}}"#;
        let f = ApiFailure::from_api_body(400, body, None);
        assert_eq!(f.body, BodyKind::Json);
        assert_eq!(f.error_code.as_deref(), Some("VALIDATION_ERROR"));
        assert_eq!(f.detail.as_deref(), Some("bad ip"));
        assert_eq!(f.reason.as_deref(), Some("Bad Request"));
        assert_eq!(f.parameters.len(), 2);
        assert_eq!(f.fields[0].field.as_deref(), Some("accessListIps[0]"));
        let shown = f.to_string();
        assert!(shown.contains("VALIDATION_ERROR") && shown.contains("bad ip"));
        assert!(shown.contains("accessListIps[0]: not an IP"), "{shown}");
    }

    #[test]
    fn all_null_and_recorded_bodies() {
        let f = ApiFailure::from_api_body(
            404,
            br#"{"error":null,"errorCode":null,"detail":null,"reason":null,"parameters":null,"badRequestDetail":null}"#,
            None,
        );
        assert_eq!(f.body, BodyKind::Json);
        assert_eq!((f.error_code, f.detail, f.reason), (None, None, None));
        assert!(f.parameters.is_empty() && f.fields.is_empty());
        // As recorded from the live service (research 1.3).
        let f = ApiFailure::from_api_body(404, br#"{"detail":"Could not find the requested external organization link.","error":404,"errorCode":"UNEXPECTED_ERROR","parameters":null,"reason":"Not Found"}"#, None);
        assert_eq!(f.error_code.as_deref(), Some("UNEXPECTED_ERROR"));
        // badRequestDetail with null fields, fields with nulls.
        let f = ApiFailure::from_api_body(
            400,
            br#"{"badRequestDetail":{"fields":[{"field":null}]}}"#,
            None,
        );
        assert_eq!(f.fields.len(), 1);
        assert_eq!(
            ApiFailure::from_api_body(400, br#"{}"#, None).body,
            BodyKind::Json
        );
    }

    #[test]
    fn non_json_and_empty_bodies() {
        let f = ApiFailure::from_api_body(
            502,
            b"<html><body>Bad gateway secret-ish</body></html>",
            None,
        );
        assert_eq!(f.body, BodyKind::NotJson);
        assert_eq!(f.error_code, None);
        assert!(!f.to_string().contains("html"), "body must not be echoed");
        for b in [
            &b""[..],
            b"  \n",
            b"null",
            b"[1,2]",
            b"\"str\"",
            b"{\"errorCode\": 5}",
        ] {
            let f = ApiFailure::from_api_body(500, b, None);
            assert_ne!(f.body, BodyKind::Json, "{:?}", String::from_utf8_lossy(b));
        }
        assert_eq!(
            ApiFailure::from_api_body(500, b"", None).body,
            BodyKind::Empty
        );
    }

    #[test]
    fn only_atlas_api_errors_are_recognised_as_such() {
        let atlas = |b: &[u8]| ApiFailure::from_api_body(404, b, None).is_atlas_api_error();
        // As recorded from the live service, with and without errorCode.
        assert!(atlas(
            br#"{"detail":"Could not find the requested external organization link.","error":404,"errorCode":"UNEXPECTED_ERROR","parameters":null,"reason":"Not Found"}"#
        ));
        assert!(atlas(
            br#"{"detail":"Could not find the requested external organization link.","error":404,"errorCode":null,"parameters":null,"reason":"Not Found"}"#
        ));
        assert!(atlas(br#"{"errorCode":"RESOURCE_NOT_FOUND"}"#));
        // A gateway's 404: no body, HTML, or JSON of another shape.
        assert!(!atlas(b""));
        assert!(!atlas(b"<html>404 Not Found</html>"));
        assert!(!atlas(br#"{"message":"Not Found"}"#));
        assert!(!atlas(br#"{}"#));
        assert!(!atlas(br#"{"error":"not_found"}"#));
        assert!(!atlas(br#"{"error":502}"#));
    }

    #[test]
    fn only_atlas_s_own_no_link_answer_means_already_revoked() {
        let no_link =
            |status: u16, b: &[u8]| ApiFailure::from_api_body(status, b, None).is_no_link_answer();
        // As recorded from the live service, with and without errorCode.
        assert!(no_link(
            404,
            br#"{"detail":"Could not find the requested external organization link.","error":404,"errorCode":"UNEXPECTED_ERROR","parameters":null,"reason":"Not Found"}"#
        ));
        assert!(no_link(
            404,
            br#"{"detail":"Could not find the requested external organization link.","error":404,"errorCode":null,"parameters":null,"reason":"Not Found"}"#
        ));
        // A retired or moved path, another resource, an org Atlas does not know, a gateway.
        for other in [
            &br#"{"detail":"Cannot find resource /api/atlas/v2/orgs/x/liveMigrations/linkTokens.","error":404,"errorCode":"RESOURCE_NOT_FOUND","reason":"Not Found"}"#[..],
            br#"{"detail":"Could not find the requested external organization link.","error":404,"errorCode":"ORG_NOT_FOUND"}"#,
            br#"{"detail":"Organization not found.","error":404,"errorCode":null}"#,
            br#"{"error":404,"errorCode":"UNEXPECTED_ERROR"}"#,
            br#"{"message":"Could not find the requested external organization link."}"#,
            b"Could not find the requested external organization link.",
            b"",
        ] {
            assert!(!no_link(404, other), "{}", String::from_utf8_lossy(other));
        }
        // The right words with another status are not it either.
        assert!(!no_link(
            400,
            br#"{"detail":"Could not find the requested external organization link.","error":400}"#
        ));
    }

    #[test]
    fn only_atlas_refuses_in_an_org_a_gateway_s_404_does_not() {
        let api = |status: u16, b: &[u8]| {
            AtlasError::Api(Box::new(ApiFailure::from_api_body(status, b, None)))
        };
        assert!(api(401, b"").is_refusal_in_org());
        assert!(api(403, br#"{"error":403}"#).is_refusal_in_org());
        assert!(api(404, br#"{"error":404,"errorCode":"RESOURCE_NOT_FOUND"}"#).is_refusal_in_org());
        assert!(!api(404, b"<html>404</html>").is_refusal_in_org());
        assert!(!api(404, b"").is_refusal_in_org());
        assert!(!api(500, br#"{"error":500}"#).is_refusal_in_org());
        assert!(!api(409, br#"{"error":409}"#).is_refusal_in_org());
    }

    #[test]
    fn every_remote_text_is_sanitised_when_parsed() {
        let hostile = "line\n\u{1b}[31mred\0 https://u:pw@h/ ".repeat(2000);
        let body = serde_json::json!({
            "error": 400,
            "errorCode": format!("EVIL_{hostile}"),
            "detail": hostile,
            "reason": hostile,
            "parameters": [hostile, 1, [2], {"a": 3}, null, "x", "y", "z", "w"],
            "badRequestDetail": {"fields": (0..40)
                .map(|i| serde_json::json!({"field": format!("f{i}\n{hostile}"), "description": hostile}))
                .collect::<Vec<_>>()},
        })
        .to_string();
        let f = ApiFailure::from_api_body(400, body.as_bytes(), None);
        let clean = |s: &str, max: usize| {
            assert!(s.chars().count() <= max, "{} chars", s.chars().count());
            assert!(!s.chars().any(char::is_control), "{s:?}");
            assert!(!s.contains("[31m") && !s.contains("pw@"), "{s:?}");
            assert!(s.ends_with(remote_text::ELLIPSIS), "{s:?}");
        };
        clean(f.error_code.as_deref().unwrap(), MAX_CODE_CHARS);
        clean(f.detail.as_deref().unwrap(), MAX_TEXT_CHARS);
        clean(f.reason.as_deref().unwrap(), MAX_CODE_CHARS);
        assert_eq!(
            (f.fields.len(), f.fields_omitted),
            (MAX_FIELDS, 40 - MAX_FIELDS)
        );
        for v in &f.fields {
            clean(v.field.as_deref().unwrap(), MAX_CODE_CHARS);
            clean(v.description.as_deref().unwrap(), MAX_TEXT_CHARS);
        }
        assert_eq!(f.parameters.len(), MAX_FIELDS);
        assert!(f.parameters.iter().all(|p| !p.is_array() && !p.is_object()));
        clean(f.parameters[0].as_str().unwrap(), MAX_TEXT_CHARS);
        let shown = f.to_string();
        assert!(shown.contains("; 35 more)"), "{shown}");
        assert!(!shown.chars().any(char::is_control));
        // The token endpoint's OAuth shape goes through the same function.
        let body = serde_json::json!({"error": format!("invalid_client\n{hostile}"), "error_description": hostile});
        let f = ApiFailure::from_oauth_body(401, body.to_string().as_bytes(), None);
        clean(f.error_code.as_deref().unwrap(), MAX_CODE_CHARS);
        clean(f.detail.as_deref().unwrap(), MAX_TEXT_CHARS);
        // Nothing printable left: absent, as if it had not been sent.
        let f = ApiFailure::from_api_body(
            404,
            br#"{"error":404,"errorCode":"\n\u001b[0m","detail":" "}"#,
            None,
        );
        assert_eq!((f.error_code, f.detail), (None, None));
    }

    #[test]
    fn oauth_error_bodies() {
        let f = ApiFailure::from_oauth_body(
            401,
            br#"{"error":"invalid_client","error_description":"Invalid credentials provided."}"#,
            None,
        );
        assert_eq!(f.error_code.as_deref(), Some("invalid_client"));
        assert_eq!(f.detail.as_deref(), Some("Invalid credentials provided."));
        // ApiError shape on the token endpoint.
        let f = ApiFailure::from_oauth_body(
            500,
            br#"{"error":500,"errorCode":"UNEXPECTED_ERROR"}"#,
            None,
        );
        assert_eq!(f.error_code.as_deref(), Some("UNEXPECTED_ERROR"));
        let f = ApiFailure::from_oauth_body(429, b"slow down", Some(Duration::from_secs(3)));
        assert_eq!(f.body, BodyKind::NotJson);
        assert_eq!(f.retry_after, Some(Duration::from_secs(3)));
    }

    const MAX: Duration = Duration::from_secs(300);

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("55", MAX), Some(Duration::from_secs(55)));
        assert_eq!(parse_retry_after(" 0 ", MAX), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", MAX), None);
        assert_eq!(parse_retry_after("-3", MAX), None);
        assert_eq!(parse_retry_after("", MAX), None);
        assert_eq!(parse_retry_after("1.5", MAX), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", MAX),
            Some(Duration::ZERO)
        );
        let future = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(
                &(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120)),
            )
            .unwrap();
        let d = parse_retry_after(&future, MAX).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120));
    }

    #[test]
    fn hostile_retry_after_values_are_clamped_to_the_maximum() {
        for v in [
            "18446744073709551615",
            "18446744073709551614",
            "99999999999999999999999999999999",
            "31536000000",
            "301",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Sat, 01 Jan 2050 00:00:00 +0000",
        ] {
            assert_eq!(parse_retry_after(v, MAX), Some(MAX), "{v}");
        }
        assert_eq!(parse_retry_after("300", MAX), Some(MAX));
        assert_eq!(
            parse_retry_after("7", Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
        // Whatever was parsed can be added to now and to a jitter without overflowing.
        let d = parse_retry_after("18446744073709551615", MAX).unwrap();
        let _ = std::time::Instant::now() + d + Duration::from_secs(2);
    }
}
