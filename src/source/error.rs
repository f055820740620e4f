//! Typed errors of the source client and their one mapping onto the Linked reasons.
//!
//! Display is safe for conditions, events and logs: status, the source's errorCode and detail,
//! a transport summary without URL; never a credential or token (none is stored in an error).

use std::time::Duration;

use crate::api::Reason;
use crate::atlas::classify::token_endpoint_status;
use crate::atlas::{ApiFailure, AtlasError, TransportKind};

/// The token endpoint's refusal; a 404 or 405 (no such endpoint) says what it most likely
/// means: the source has no service accounts (Ops Manager offers API keys only).
fn token_endpoint_message(f: &ApiFailure) -> String {
    let hint = match f.status {
        404 | 405 => {
            "; this source offers no service accounts (Ops Manager has API keys only): use publicApiKey and privateApiKey"
        }
        _ => "",
    };
    format!(
        "the source's token endpoint (POST /api/oauth/token) refused the service account: {f}{hint}"
    )
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The source answered with a non-success status.
    #[error("the source answered {0}")]
    Api(Box<ApiFailure>),
    /// The service account's token request (`POST {url}/api/oauth/token`) failed: no call
    /// to the source was made.
    #[error("{}", token_endpoint_message(.0))]
    TokenEndpoint(Box<ApiFailure>),
    /// No (complete) HTTP response.
    #[error("the source request failed: {kind}{}", if .detail.is_empty() { String::new() } else { format!(" ({})", .detail) })]
    Transport { kind: TransportKind, detail: String },
    /// The response body exceeded the cap.
    #[error("the source's response body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// A success status with a body we cannot use.
    #[error("the source answered HTTP {status} with an unusable body: {what}")]
    InvalidResponse { status: u16, what: &'static str },
    /// spec.source.orgId is not 24 hex digits (it becomes part of a URL).
    #[error("spec.source.orgId must be 24 hexadecimal digits")]
    InvalidOrgId,
    /// The CA bundle is not usable PEM.
    #[error("{0}")]
    CaBundle(String),
    /// A URL or client problem (configuration).
    #[error("{0}")]
    Config(String),
    /// The URL is not on the operator's allow-list: no request was made.
    #[error(
        "{url} is not on the operator's --allowed-source-urls ({allowed}); a cluster admin must add it (chart value allowedSourceUrls) before the operator calls it"
    )]
    NotAllowed { url: String, allowed: String },
    /// Not sent: this replica does not certainly hold the leader Lease any more.
    #[error("request not sent: this replica no longer holds the leader Lease")]
    NotLeader,
}

impl From<AtlasError> for SourceError {
    fn from(e: AtlasError) -> Self {
        match e {
            AtlasError::Api(f) | AtlasError::ActiveMigration(f) => SourceError::Api(f),
            AtlasError::TokenEndpoint(f) => SourceError::TokenEndpoint(f),
            AtlasError::Transport { kind, detail, .. } => SourceError::Transport { kind, detail },
            AtlasError::BodyTooLarge { limit, .. } => SourceError::BodyTooLarge { limit },
            AtlasError::InvalidResponse { status, what, .. } => {
                SourceError::InvalidResponse { status, what }
            }
            AtlasError::InvalidOrgId => SourceError::InvalidOrgId,
            AtlasError::Config(c) => SourceError::Config(c),
            AtlasError::NotLeader => SourceError::NotLeader,
        }
    }
}

impl SourceError {
    pub fn http_status(&self) -> Option<u16> {
        match self {
            SourceError::Api(f) | SourceError::TokenEndpoint(f) => Some(f.status),
            SourceError::InvalidResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn error_code(&self) -> Option<&str> {
        match self {
            SourceError::Api(f) | SourceError::TokenEndpoint(f) => f.error_code.as_deref(),
            _ => None,
        }
    }

    pub fn detail(&self) -> Option<&str> {
        match self {
            SourceError::Api(f) | SourceError::TokenEndpoint(f) => f.detail.as_deref(),
            _ => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SourceError::Api(f) | SourceError::TokenEndpoint(f) => f.retry_after,
            _ => None,
        }
    }

    /// True for a 409 from a POST: the org is already linked with another token.
    pub fn is_already_linked(&self) -> bool {
        matches!(self, SourceError::Api(f) if f.status == 409)
    }

    /// The Linked reason of this failure. Transient trouble (5xx, 429, transport, a body we
    /// cannot read) is SourceUnavailable and backs off; what only a user can fix stalls.
    pub fn reason(&self) -> Reason {
        match self {
            SourceError::Api(f) => match f.status {
                401 => Reason::SourceUnauthorized,
                403 => Reason::SourceForbidden,
                // Only the source's own ApiError proves the org is unknown; a proxy's 404 is
                // transient trouble on the way.
                404 if f.is_atlas_api_error() => Reason::SourceOrgNotFound,
                404 | 408 | 429 => Reason::SourceUnavailable,
                400..=499 => Reason::SourceRejected,
                _ => Reason::SourceUnavailable,
            },
            SourceError::TokenEndpoint(f) => match token_endpoint_status(f) {
                401 => Reason::SourceUnauthorized,
                403 => Reason::SourceForbidden,
                // No token endpoint at that URL: a source without service accounts.
                404 | 405 => Reason::SourceConfigInvalid,
                408 | 429 => Reason::SourceUnavailable,
                400..=499 => Reason::SourceRejected,
                _ => Reason::SourceUnavailable,
            },
            SourceError::Transport { .. }
            | SourceError::BodyTooLarge { .. }
            | SourceError::InvalidResponse { .. }
            | SourceError::NotLeader => Reason::SourceUnavailable,
            SourceError::InvalidOrgId | SourceError::CaBundle(_) | SourceError::Config(_) => {
                Reason::SourceConfigInvalid
            }
            SourceError::NotAllowed { .. } => Reason::SourceNotAllowed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, body: &[u8]) -> SourceError {
        SourceError::Api(Box::new(ApiFailure::from_api_body(status, body, None)))
    }

    fn token(status: u16, code: &str) -> SourceError {
        let body = if code.is_empty() {
            String::new()
        } else {
            format!(r#"{{"error":"{code}","error_description":"d"}}"#)
        };
        SourceError::TokenEndpoint(Box::new(ApiFailure::from_oauth_body(
            status,
            body.as_bytes(),
            None,
        )))
    }

    #[test]
    fn every_failure_maps_to_its_reason() {
        let cases = [
            (api(401, b""), Reason::SourceUnauthorized),
            (
                api(
                    403,
                    br#"{"error":403,"errorCode":"USER_CANNOT_ACCESS_ORGANIZATION"}"#,
                ),
                Reason::SourceForbidden,
            ),
            (
                api(404, br#"{"error":404,"errorCode":"ORG_NOT_FOUND"}"#),
                Reason::SourceOrgNotFound,
            ),
            (api(404, b"<html/>"), Reason::SourceUnavailable),
            (
                api(400, br#"{"error":400,"errorCode":"INVALID_LINK_TOKEN"}"#),
                Reason::SourceRejected,
            ),
            (
                api(
                    409,
                    br#"{"error":409,"errorCode":"MIGRATION_LINK_ALREADY_EXISTS"}"#,
                ),
                Reason::SourceRejected,
            ),
            (api(429, b""), Reason::SourceUnavailable),
            (api(503, b""), Reason::SourceUnavailable),
            (
                SourceError::Transport {
                    kind: TransportKind::Tls,
                    detail: "unknown issuer".into(),
                },
                Reason::SourceUnavailable,
            ),
            (
                SourceError::CaBundle("no certificate".into()),
                Reason::SourceConfigInvalid,
            ),
            (token(401, "invalid_client"), Reason::SourceUnauthorized),
            (token(400, "invalid_client"), Reason::SourceUnauthorized),
            (token(400, "invalid_grant"), Reason::SourceUnauthorized),
            (token(403, "access_denied"), Reason::SourceForbidden),
            (token(400, "invalid_request"), Reason::SourceRejected),
            (token(429, ""), Reason::SourceUnavailable),
            (token(503, ""), Reason::SourceUnavailable),
            (
                SourceError::TokenEndpoint(Box::new(ApiFailure::from_oauth_body(
                    404,
                    br#"{"error":404,"errorCode":"RESOURCE_NOT_FOUND"}"#,
                    None,
                ))),
                Reason::SourceConfigInvalid,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.reason(), want, "{e}");
        }
    }

    #[test]
    fn messages_carry_the_source_error_code_and_name_the_source() {
        let e = api(
            400,
            br#"{"error":400,"errorCode":"INVALID_LINK_TOKEN","detail":"not a live token"}"#,
        );
        let m = e.to_string();
        assert!(
            m.starts_with("the source answered HTTP 400 INVALID_LINK_TOKEN"),
            "{m}"
        );
        assert!(m.contains("not a live token"), "{m}");
        // A missing token endpoint tells the user what to use instead.
        let m = SourceError::TokenEndpoint(Box::new(ApiFailure::from_oauth_body(404, b"", None)))
            .to_string();
        assert!(
            m.contains("token endpoint") && m.contains("publicApiKey and privateApiKey"),
            "{m}"
        );
        assert!(!token(409, "x").is_already_linked());
    }
}
