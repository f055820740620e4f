//! The source side of the link: `spec.source` (where the token is handed over: Cloud Manager
//! or an Ops Manager) and `status.link` (what the operator did there). See docs/source-link.md.

use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::schema;
use super::spec::CredentialsSecretRef;

/// Cloud Manager. Ops Manager is self-hosted: its URL is given per LinkToken.
pub const CLOUD_MANAGER_URL: &str = "https://cloud.mongodb.com";

/// The source organization (Cloud Manager or Ops Manager) the link token is handed to. When
/// set, the operator links the source org with the token (POST
/// /api/public/v1.0/orgs/{orgId}/liveExport/migrationLink), follows the link's status until
/// SYNCED, re-links after every rotation and unlinks before revoking on deletion. The Linked
/// condition reports it; Ready is True only once the link is SYNCED.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// Base URL of the source: https://cloud.mongodb.com (Cloud Manager, the default) or an Ops
    /// Manager's https://{host}:{port}. http:// only for a loopback address (a local simulator).
    /// No user info, query or fragment.
    #[serde(default = "default_url")]
    #[schemars(transform = source_url)]
    pub url: String,

    /// ID of the source organization (Cloud Manager or Ops Manager): 24 lower-case hexadecimal
    /// characters.
    #[schemars(regex(pattern = r"^([a-f0-9]{24})$"))]
    pub org_id: String,

    /// Secret in the LinkToken's namespace holding credentials of an Organization Owner of the
    /// source org: a programmatic API key (keys publicApiKey and privateApiKey; HTTP Digest) or,
    /// for Cloud Manager, a service account (keys clientId and clientSecret; OAuth 2.0 client
    /// credentials at {url}/api/oauth/token). Exactly one kind.
    pub credentials_secret_ref: CredentialsSecretRef,

    /// Certificate authorities (PEM) to trust for the source, in addition to the platform's:
    /// an Ops Manager with a private CA. A key of a Secret or of a ConfigMap in the LinkToken's
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleRef>,

    /// Whether the token is also stored in the token Secret (the default). false: the token
    /// exists only in transit, from Atlas to the source; no Secret is written. Trade-off: a
    /// token that is stored nowhere cannot be handed over again, so a failed hand-over or a
    /// link removed at the source costs a new token (revoke, then issue), and nobody can ever
    /// read it. See docs/source-link.md.
    #[serde(default = "yes")]
    #[schemars(transform = default_true)]
    pub store_token: bool,
}

fn yes() -> bool {
    true
}

fn default_true(s: &mut Schema) {
    s.insert("default".into(), json!(true));
}

/// Where a PEM CA bundle is read from: exactly one of secretKeyRef and configMapKeyRef.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = one_of_ca_refs)]
pub struct CaBundleRef {
    /// A key of a Secret in the LinkToken's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
    /// A key of a ConfigMap in the LinkToken's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
}

/// A key of an object in the LinkToken's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// Name of the object.
    #[schemars(transform = schema::secret_name)]
    pub name: String,
    /// Data key holding the PEM certificates.
    #[schemars(transform = ca_key)]
    pub key: String,
}

fn default_url() -> String {
    CLOUD_MANAGER_URL.to_string()
}

/// `spec.source.url`: https, or http for loopback only; no user info, query or fragment. The
/// controller checks it again before any call (an object stored before this rule existed).
fn source_url(s: &mut Schema) {
    s.insert("default".into(), json!(CLOUD_MANAGER_URL));
    s.insert("minLength".into(), json!(8));
    s.insert("maxLength".into(), json!(512));
    s.insert(
        "x-kubernetes-validations".into(),
        json!([
            {
                "rule": "isURL(self) && (url(self).getScheme() == 'https' || (url(self).getScheme() == 'http' && url(self).getHostname() in ['127.0.0.1', 'localhost', '::1']))",
                "message": "must be an https:// URL (http:// only for 127.0.0.1, localhost or [::1])"
            },
            {
                "rule": "!self.contains('@') && !self.contains('?') && !self.contains('#')",
                "message": "must not contain user info, a query or a fragment"
            }
        ]),
    );
}

fn ca_key(s: &mut Schema) {
    s.insert("minLength".into(), json!(1));
    s.insert("maxLength".into(), json!(253));
    s.insert("pattern".into(), json!(schema::SECRET_KEY_PATTERN));
}

fn one_of_ca_refs(s: &mut Schema) {
    s.insert(
        "x-kubernetes-validations".into(),
        json!([{
            "rule": "has(self.secretKeyRef) != has(self.configMapKeyRef)",
            "message": "set exactly one of secretKeyRef and configMapKeyRef"
        }]),
    );
}

/// What the operator did at the source (status.link).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    /// Base URL of the source where a link of this LinkToken may exist.
    pub url: String,

    /// Source organization where a link of this LinkToken may exist. Kept until the link is
    /// deleted there, so deletion (and a change of spec.source) unlinks it first.
    pub org_id: String,

    /// Name of the credentials Secret used there (to unlink after spec.source changed).
    pub credentials_secret_name: String,

    /// Hex SHA-256 of the token the source org was linked with (the source answered 200);
    /// never the token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,

    /// Crash-safety marker: hex SHA-256 of the token a POST to the source was started with.
    /// Written before the POST; cleared with the status that records its answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posting_sha256: Option<String>,

    /// The link's status as the source last reported it: SYNCED or NOT_SYNCED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_status: Option<String>,

    /// When the source org was last linked (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub linked_at: Option<String>,

    /// The last failure of a call to the source; cleared on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_error: Option<super::AtlasErrorStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_defaults_to_cloud_manager() {
        let s: SourceSpec = serde_json::from_value(json!({
            "orgId": "6a1e9b2a3c4d5e6f7a8b9c0d",
            "credentialsSecretRef": {"name": "source-key"},
        }))
        .unwrap();
        assert_eq!(s.url, CLOUD_MANAGER_URL);
        assert_eq!(s.ca_bundle, None);
        assert!(s.store_token, "the token is stored unless asked not to");
    }
}
