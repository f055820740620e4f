//! Typed errors of the source client and their one mapping onto the Linked reasons.
//!
//! Display is safe for conditions, events and logs: status, the source's errorCode and detail,
//! a transport summary without URL; never a credential or token (none is stored in an error).

use std::time::Duration;

use crate::api::Reason;
use crate::atlas::{ApiFailure, AtlasError, TransportKind};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The source answered with a non-success status.
    #[error("the source answered {0}")]
    Api(Box<ApiFailure>),
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
}

impl From<AtlasError> for SourceError {
    fn from(e: AtlasError) -> Self {
        match e {
            AtlasError::Api(f) | AtlasError::ActiveMigration(f) | AtlasError::TokenEndpoint(f) => {
                SourceError::Api(f)
            }
            AtlasError::Transport { kind, detail, .. } => SourceError::Transport { kind, detail },
            AtlasError::BodyTooLarge { limit, .. } => SourceError::BodyTooLarge { limit },
            AtlasError::InvalidResponse { status, what, .. } => {
                SourceError::InvalidResponse { status, what }
            }
            AtlasError::InvalidOrgId => SourceError::InvalidOrgId,
            AtlasError::Config(c) => SourceError::Config(c),
        }
    }
}

impl SourceError {
    pub fn http_status(&self) -> Option<u16> {
        match self {
            SourceError::Api(f) => Some(f.status),
            SourceError::InvalidResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn error_code(&self) -> Option<&str> {
        match self {
            SourceError::Api(f) => f.error_code.as_deref(),
            _ => None,
        }
    }

    pub fn detail(&self) -> Option<&str> {
        match self {
            SourceError::Api(f) => f.detail.as_deref(),
            _ => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SourceError::Api(f) => f.retry_after,
            _ => None,
        }
    }

    /// True for a 409 from a POST: the org is already linked with another token.
    pub fn is_already_linked(&self) -> bool {
        self.http_status() == Some(409)
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
            SourceError::Transport { .. }
            | SourceError::BodyTooLarge { .. }
            | SourceError::InvalidResponse { .. } => Reason::SourceUnavailable,
            SourceError::InvalidOrgId | SourceError::CaBundle(_) | SourceError::Config(_) => {
                Reason::SourceConfigInvalid
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, body: &[u8]) -> SourceError {
        SourceError::Api(Box::new(ApiFailure::from_api_body(status, body, None)))
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
    }
}
