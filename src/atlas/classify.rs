//! The one mapping of every Atlas outcome onto a Ready reason (docs/conditions.md, "Ready
//! reasons") and a retry hint. Pure, so the controller and the tests agree on it without a server.

use std::time::Duration;

use crate::api::Reason;

use super::error::{ApiFailure, AtlasError};

/// What the controller was doing when the error happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// POST a new link token.
    Create,
    /// DELETE before issuing a new token (rotation, drift, spec change).
    Delete,
    /// DELETE while the LinkToken itself is being deleted (finalizer): Atlas being unavailable
    /// blocks revocation (`RevocationBlocked`) rather than issuance.
    Finalize,
}

/// When to look again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryHint {
    /// Only a change of the LinkToken or its credentials Secret can help: no polling.
    WaitForChange,
    /// Not retryable by itself, but the cause may change in Atlas without any event here (a role
    /// granted, an org created): look again at the slow resync interval.
    SlowResync,
    /// Exponential backoff with jitter, capped by the controller.
    Backoff,
    /// Atlas said when (Retry-After): not before this.
    After(Duration),
}

/// A Ready reason and when to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classification {
    pub reason: Reason,
    pub retry: RetryHint,
}

const fn c(reason: Reason, retry: RetryHint) -> Classification {
    Classification { reason, retry }
}

/// OAuth error codes that mean "these client credentials are not valid".
const OAUTH_UNAUTHORIZED: [&str; 3] = ["invalid_client", "invalid_grant", "unauthorized_client"];

/// The status a token-endpoint failure stands for, shared by the Atlas and the source
/// mappings: the OAuth codes that say the client credentials are wrong count as 401 (servers
/// send them with 400 or 401), `access_denied` as 403; anything else keeps its HTTP status.
pub fn token_endpoint_status(f: &ApiFailure) -> u16 {
    let code = f.error_code.as_deref().unwrap_or("");
    if OAUTH_UNAUTHORIZED.contains(&code) {
        401
    } else if code == "access_denied" {
        403
    } else {
        f.status
    }
}

/// Maps an error to its Ready reason. Every variant and status range is covered.
pub fn classify(err: &AtlasError, op: Operation) -> Classification {
    let unavailable = |retry_after: Option<Duration>| {
        let retry = retry_after.map_or(RetryHint::Backoff, RetryHint::After);
        match op {
            Operation::Finalize => c(Reason::RevocationBlocked, retry),
            Operation::Create | Operation::Delete => c(Reason::AtlasUnavailable, retry),
        }
    };
    let rate_limited = |retry_after: Option<Duration>| {
        c(
            Reason::AtlasRateLimited,
            retry_after.map_or(RetryHint::Backoff, RetryHint::After),
        )
    };
    match err {
        AtlasError::Api(f) => match f.status {
            401 => c(Reason::AtlasUnauthorized, RetryHint::SlowResync),
            403 => c(Reason::AtlasForbidden, RetryHint::SlowResync),
            // Atlas's own no-link answer never gets here (the client makes it `AlreadyAbsent`).
            // Any other 404 says the link is not known to be gone. Before an issue it is
            // retried (a POST now could leave two live links). While deleting, a gateway's 404
            // is retried too; Atlas's ApiError (an unknown org, RESOURCE_NOT_FOUND) is a
            // refusal: RevocationSkipped, remembered, never "revoked".
            404 if op == Operation::Delete
                || (op == Operation::Finalize && !f.is_atlas_api_error()) =>
            {
                unavailable(f.retry_after)
            }
            // On POST it means the org.
            404 => c(Reason::OrgNotFound, RetryHint::SlowResync),
            409 if op != Operation::Create => c(Reason::RevocationBlocked, RetryHint::Backoff),
            429 => rate_limited(f.retry_after),
            400..=499 => c(Reason::AtlasRejected, RetryHint::WaitForChange),
            // 5xx, and statuses Atlas never sends (1xx, 3xx: redirects are not followed), which
            // point at a proxy or gateway rather than at the LinkToken.
            _ => unavailable(f.retry_after),
        },
        AtlasError::ActiveMigration(_) => c(Reason::RevocationBlocked, RetryHint::Backoff),
        AtlasError::TokenEndpoint(f) => match token_endpoint_status(f) {
            401 => c(Reason::AtlasUnauthorized, RetryHint::SlowResync),
            403 => c(Reason::AtlasForbidden, RetryHint::SlowResync),
            429 => rate_limited(f.retry_after),
            // invalid_request, unsupported_grant_type, ...: nothing the LinkToken can
            // change, and retrying at once would not help either.
            400..=499 => c(Reason::AtlasRejected, RetryHint::SlowResync),
            _ => unavailable(f.retry_after),
        },
        AtlasError::Transport { .. }
        | AtlasError::BodyTooLarge { .. }
        | AtlasError::InvalidResponse { .. }
        | AtlasError::Config(_)
        // Never sent; the process is stopping (it lost the Lease), a new leader takes over.
        | AtlasError::NotLeader => unavailable(None),
        AtlasError::InvalidOrgId => c(Reason::AtlasRejected, RetryHint::WaitForChange),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atlas::error::{ApiFailure, TransportKind};
    use crate::atlas::observer::Endpoint;

    fn api(status: u16) -> ApiFailure {
        ApiFailure::from_api_body(status, b"", None)
    }

    fn with_retry(status: u16, secs: u64) -> ApiFailure {
        ApiFailure::from_api_body(status, b"", Some(Duration::from_secs(secs)))
    }

    fn oauth(status: u16, code: &str) -> ApiFailure {
        let body = format!(r#"{{"error":"{code}","error_description":"d"}}"#);
        ApiFailure::from_oauth_body(status, body.as_bytes(), None)
    }

    fn transport(kind: TransportKind) -> AtlasError {
        AtlasError::Transport {
            endpoint: Endpoint::LinkTokens,
            kind,
            detail: String::new(),
        }
    }

    #[test]
    fn classification_table() {
        use Operation::*;
        use Reason::*;
        use RetryHint::*;
        let s3 = Duration::from_secs(3);
        let table: Vec<(AtlasError, Operation, Reason, RetryHint)> = vec![
            (
                AtlasError::Api(Box::new(api(401))),
                Create,
                AtlasUnauthorized,
                SlowResync,
            ),
            (
                AtlasError::Api(Box::new(api(401))),
                Finalize,
                AtlasUnauthorized,
                SlowResync,
            ),
            (
                AtlasError::Api(Box::new(api(403))),
                Create,
                AtlasForbidden,
                SlowResync,
            ),
            (
                AtlasError::Api(Box::new(api(403))),
                Delete,
                AtlasForbidden,
                SlowResync,
            ),
            (
                AtlasError::Api(Box::new(api(404))),
                Create,
                OrgNotFound,
                SlowResync,
            ),
            // A 404 on DELETE that is not Atlas's ApiError (a gateway's): retried, never
            // taken for "already revoked" or "no such org".
            (
                AtlasError::Api(Box::new(api(404))),
                Delete,
                AtlasUnavailable,
                Backoff,
            ),
            (
                AtlasError::Api(Box::new(api(404))),
                Finalize,
                RevocationBlocked,
                Backoff,
            ),
            (
                AtlasError::Api(Box::new(ApiFailure::from_api_body(
                    404,
                    br#"{"message":"no route"}"#,
                    Some(s3),
                ))),
                Delete,
                AtlasUnavailable,
                After(s3),
            ),
            (
                AtlasError::Api(Box::new(ApiFailure::from_api_body(
                    404,
                    br#"{"error":404,"errorCode":"RESOURCE_NOT_FOUND"}"#,
                    None,
                ))),
                Delete,
                AtlasUnavailable,
                Backoff,
            ),
            // While deleting, an ApiError 404 that is not the no-link answer is a refusal
            // (RevocationSkipped, remembered), never "already revoked".
            (
                AtlasError::Api(Box::new(ApiFailure::from_api_body(
                    404,
                    br#"{"error":404,"errorCode":"RESOURCE_NOT_FOUND"}"#,
                    None,
                ))),
                Finalize,
                OrgNotFound,
                SlowResync,
            ),
            (
                AtlasError::Api(Box::new(api(400))),
                Create,
                AtlasRejected,
                WaitForChange,
            ),
            (
                AtlasError::Api(Box::new(api(406))),
                Create,
                AtlasRejected,
                WaitForChange,
            ),
            (
                AtlasError::Api(Box::new(api(409))),
                Create,
                AtlasRejected,
                WaitForChange,
            ),
            (
                AtlasError::Api(Box::new(api(410))),
                Delete,
                AtlasRejected,
                WaitForChange,
            ),
            (
                AtlasError::Api(Box::new(api(409))),
                Delete,
                RevocationBlocked,
                Backoff,
            ),
            (
                AtlasError::Api(Box::new(api(409))),
                Finalize,
                RevocationBlocked,
                Backoff,
            ),
            (
                AtlasError::ActiveMigration(Box::new(api(409))),
                Delete,
                RevocationBlocked,
                Backoff,
            ),
            (
                AtlasError::ActiveMigration(Box::new(api(409))),
                Finalize,
                RevocationBlocked,
                Backoff,
            ),
            (
                AtlasError::Api(Box::new(api(429))),
                Create,
                AtlasRateLimited,
                Backoff,
            ),
            (
                AtlasError::Api(Box::new(with_retry(429, 3))),
                Create,
                AtlasRateLimited,
                After(s3),
            ),
            (
                AtlasError::Api(Box::new(with_retry(429, 3))),
                Finalize,
                AtlasRateLimited,
                After(s3),
            ),
            (
                AtlasError::Api(Box::new(api(500))),
                Create,
                AtlasUnavailable,
                Backoff,
            ),
            (
                AtlasError::Api(Box::new(api(502))),
                Delete,
                AtlasUnavailable,
                Backoff,
            ),
            (
                AtlasError::Api(Box::new(with_retry(503, 3))),
                Create,
                AtlasUnavailable,
                After(s3),
            ),
            (
                AtlasError::Api(Box::new(api(503))),
                Finalize,
                RevocationBlocked,
                Backoff,
            ),
            (
                AtlasError::Api(Box::new(api(302))),
                Create,
                AtlasUnavailable,
                Backoff,
            ),
            (
                AtlasError::TokenEndpoint(Box::new(oauth(401, "invalid_client"))),
                Create,
                AtlasUnauthorized,
                SlowResync,
            ),
            (
                AtlasError::TokenEndpoint(Box::new(oauth(400, "invalid_client"))),
                Create,
                AtlasUnauthorized,
                SlowResync,
            ),
            (
                AtlasError::TokenEndpoint(Box::new(oauth(400, "invalid_grant"))),
                Delete,
                AtlasUnauthorized,
                SlowResync,
            ),
            (
                AtlasError::TokenEndpoint(Box::new(oauth(403, "access_denied"))),
                Create,
                AtlasForbidden,
                SlowResync,
            ),
            (
                AtlasError::TokenEndpoint(Box::new(api(401))),
                Create,
                AtlasUnauthorized,
                SlowResync,
            ),
            (
                AtlasError::TokenEndpoint(Box::new(api(403))),
                Create,
                AtlasForbidden,
                SlowResync,
            ),
            (
                AtlasError::TokenEndpoint(Box::new(api(429))),
                Create,
                AtlasRateLimited,
                Backoff,
            ),
            (
                AtlasError::TokenEndpoint(Box::new(with_retry(429, 3))),
                Finalize,
                AtlasRateLimited,
                After(s3),
            ),
            (
                AtlasError::TokenEndpoint(Box::new(oauth(400, "unsupported_grant_type"))),
                Create,
                AtlasRejected,
                SlowResync,
            ),
            (
                AtlasError::TokenEndpoint(Box::new(api(500))),
                Create,
                AtlasUnavailable,
                Backoff,
            ),
            (
                AtlasError::TokenEndpoint(Box::new(api(503))),
                Finalize,
                RevocationBlocked,
                Backoff,
            ),
            (
                transport(TransportKind::ConnectTimeout),
                Create,
                AtlasUnavailable,
                Backoff,
            ),
            (
                transport(TransportKind::Timeout),
                Create,
                AtlasUnavailable,
                Backoff,
            ),
            (
                transport(TransportKind::Connect),
                Delete,
                AtlasUnavailable,
                Backoff,
            ),
            (
                transport(TransportKind::Tls),
                Create,
                AtlasUnavailable,
                Backoff,
            ),
            (
                transport(TransportKind::BodyRead),
                Create,
                AtlasUnavailable,
                Backoff,
            ),
            (
                transport(TransportKind::Other),
                Create,
                AtlasUnavailable,
                Backoff,
            ),
            (
                transport(TransportKind::Timeout),
                Finalize,
                RevocationBlocked,
                Backoff,
            ),
            (
                AtlasError::BodyTooLarge {
                    endpoint: Endpoint::LinkTokens,
                    limit: 1,
                },
                Create,
                AtlasUnavailable,
                Backoff,
            ),
            (
                AtlasError::InvalidResponse {
                    endpoint: Endpoint::LinkTokens,
                    status: 201,
                    what: "x",
                },
                Create,
                AtlasUnavailable,
                Backoff,
            ),
            (
                AtlasError::InvalidResponse {
                    endpoint: Endpoint::OAuthToken,
                    status: 200,
                    what: "x",
                },
                Finalize,
                RevocationBlocked,
                Backoff,
            ),
            (
                AtlasError::Config("x".into()),
                Create,
                AtlasUnavailable,
                Backoff,
            ),
            (
                AtlasError::InvalidOrgId,
                Create,
                AtlasRejected,
                WaitForChange,
            ),
        ];
        for (err, op, reason, retry) in table {
            let got = classify(&err, op);
            assert_eq!(
                got,
                Classification { reason, retry },
                "{err:?} during {op:?}"
            );
        }
    }

    #[test]
    fn every_4xx_and_5xx_lands_on_an_atlas_reason() {
        for status in 100..600u16 {
            for op in [Operation::Create, Operation::Delete, Operation::Finalize] {
                let r = classify(&AtlasError::Api(Box::new(api(status))), op).reason;
                assert!(
                    matches!(
                        r,
                        Reason::AtlasUnauthorized
                            | Reason::AtlasForbidden
                            | Reason::OrgNotFound
                            | Reason::AtlasRejected
                            | Reason::AtlasRateLimited
                            | Reason::AtlasUnavailable
                            | Reason::RevocationBlocked
                    ),
                    "{status} {op:?} -> {r:?}"
                );
            }
        }
    }

    #[test]
    fn user_message_carries_code_and_detail_only() {
        let f = ApiFailure::from_api_body(
            409,
            br#"{"error":409,"errorCode":"CANNOT_DELETE_ORG_ACTIVE_LIVE_MIGRATION_ATLAS_ORG_LINK","detail":"Cannot delete organization link while there is active migration in following project ids: abc"}"#,
            None,
        );
        let m = AtlasError::ActiveMigration(Box::new(f)).user_message();
        assert!(m.contains("409"), "{m}");
        assert!(
            m.contains("CANNOT_DELETE_ORG_ACTIVE_LIVE_MIGRATION_ATLAS_ORG_LINK"),
            "{m}"
        );
        assert!(
            m.contains("active migration in following project ids: abc"),
            "{m}"
        );
        let m = AtlasError::Api(Box::new(with_retry(429, 55))).user_message();
        assert!(m.contains("429") && m.contains("retry after 55s"), "{m}");
        let m = transport(TransportKind::ConnectTimeout).user_message();
        assert!(m.contains("connect timeout"), "{m}");
    }
}
