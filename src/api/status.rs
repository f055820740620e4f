//! `LinkToken` status: what the operator observed and did.
//!
//! Every field is optional or defaulted and skipped when empty, so the controller can write
//! status with server-side apply (a partial object) and readers tolerate older objects.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

/// Observed state of a LinkToken (kstatus-compatible: kubectl wait, Flux and Argo CD read the
/// conditions without plugins).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkTokenStatus {
    /// metadata.generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready (the Secret holds a token issued for the current spec), Reconciling (work in
    /// flight) and Stalled (only a user action can help), each with observedGeneration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = schema::conditions)]
    pub conditions: Vec<Condition>,

    /// Name of the Secret that holds the current token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_name: Option<String>,

    /// When the current token was issued (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub issued_at: Option<String>,

    /// What the current token was issued for; a difference from the spec (or the rotate
    /// annotation) means a new token is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_for: Option<IssuedFor>,

    /// Set while a token is being issued: a token may exist in Atlas for this organization, so
    /// the next issue revokes first. Makes issuing crash-safe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<InFlight>,

    /// The last Atlas failure; cleared on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atlas_error: Option<AtlasErrorStatus>,

    /// The link at the source (spec.source): where it may exist, with which token, its last
    /// reported status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<super::source::LinkStatus>,
}

/// The inputs the current token was issued for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedFor {
    /// Atlas organization the token was issued for.
    pub org_id: String,

    /// Access list the token was issued with.
    #[serde(default)]
    pub access_list_ips: Vec<String>,

    /// Value of the atlasmigration.io/rotate annotation when the token was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate: Option<String>,

    /// Hex SHA-256 of the current token, to notice a Secret that was changed by someone else
    /// (never the token itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

/// Crash-safety marker: an issue was started, so a token may exist in Atlas for this org.
/// It also says which attempt it was and what that attempt was for, so that after a crash the
/// token in the Secret is adopted only by the attempt that wrote it and only for the spec it
/// was issued for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InFlight {
    /// Atlas organization the issue was started for.
    pub org_id: String,

    /// When the issue was started (RFC 3339). Informational only: never used to decide
    /// adoption (clocks of different replicas disagree).
    #[schemars(extend("format" = "date-time"))]
    pub started_at: String,

    /// Random id of this issue attempt; the token Secret written by the attempt carries it in
    /// the atlasmigration.io/attempt-id annotation. Absent in markers written by older
    /// versions (such a marker is never adopted: the next issue revokes first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_id: Option<String>,

    /// Hex SHA-256 of the access list the attempt was issued with (sorted, deduplicated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_list_sha256: Option<String>,

    /// Value of the atlasmigration.io/rotate annotation the attempt was issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate: Option<String>,
}

/// The last failed Atlas call, as Atlas reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AtlasErrorStatus {
    /// HTTP status code, absent when no response arrived (timeout, connection or TLS failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,

    /// Atlas errorCode, for example ORG_NOT_FOUND or RATE_LIMITED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,

    /// Atlas detail message, or a description of the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_status_serializes_to_an_empty_object() {
        // Server-side apply of a partial status must not claim fields it does not set.
        assert_eq!(
            serde_json::to_value(LinkTokenStatus::default()).unwrap(),
            serde_json::json!({})
        );
        let back: LinkTokenStatus = serde_json::from_str("{}").unwrap();
        assert_eq!(back, LinkTokenStatus::default());
    }
}
