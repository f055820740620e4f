//! `LinkToken` spec: what the user asks for.
//!
//! Every validation the product contract promises is expressed in the schema (pattern, enum,
//! length and item limits, list types, CEL rules), so the API server rejects a bad object
//! before the controller ever sees it. Doc comments become the CRD's field descriptions and
//! `docs/reference.md`, so they are written for users.

// The printer columns repeat `type_ = "string"`, which clippy takes for a duplicated attribute;
// the lint does not honour an allow on the item itself.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DEFAULT_TOKEN_KEY;
use super::schema;
use super::status::LinkTokenStatus;

/// Desired state of a LinkToken: one Atlas live-migration link token for one Atlas
/// organization, stored in a Secret in the LinkToken's namespace.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "atlasmigration.io",
    version = "v1alpha1",
    kind = "LinkToken",
    plural = "linktokens",
    singular = "linktoken",
    shortname = "lt",
    // `kubectl get atlas` lists LinkTokens beside the Atlas Kubernetes Operator's resources,
    // which use the same category.
    category = "atlas",
    namespaced,
    status = "LinkTokenStatus",
    derive = "PartialEq",
    doc = "A MongoDB Atlas live-migration link token for one Atlas organization. The operator \
           issues the token with the referenced credentials and stores it in a Secret; deleting \
           the LinkToken revokes the token in Atlas unless deletionPolicy is Retain. Change the \
           annotation atlasmigration.io/rotate to revoke and reissue.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the token Secret holds a token issued for the current spec (and, with spec.source, the source holds it: Linked)"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Reason of the Ready condition"
    ),
    printcolumn(
        name = "Org",
        type_ = "string",
        json_path = ".spec.orgId",
        description = "Atlas organization ID"
    ),
    printcolumn(
        name = "Secret",
        type_ = "string",
        json_path = ".status.tokenSecretName",
        description = "Secret that holds the link token"
    ),
    // Wide columns (`kubectl get -o wide`): why a token is not Ready, and when it was issued.
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        description = "Message of the Ready condition",
        priority = "1"
    ),
    printcolumn(
        name = "Issued",
        type_ = "date",
        json_path = ".status.issuedAt",
        description = "When the current token was issued",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "Time since the LinkToken was created"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = spec_rules)]
pub struct LinkTokenSpec {
    /// ID of the Atlas organization to link: 24 lower-case hexadecimal characters, as shown in
    /// the Atlas UI under Organization Settings. Live-migration links are per organization, so
    /// only one LinkToken in the cluster manages a given orgId; younger ones report
    /// OrgConflict.
    #[schemars(regex(pattern = r"^([a-f0-9]{24})$"))]
    pub org_id: String,

    /// IP addresses or CIDR blocks (IPv4 or IPv6) of the migration hosts that may use the link
    /// token. Empty is allowed (Cloud Manager sources need none). Entries are unique; at most
    /// 200. Changing the list revokes the token and issues a new one.
    #[serde(default)]
    #[schemars(transform = schema::access_list)]
    pub access_list_ips: Vec<String>,

    /// Secret in the LinkToken's namespace holding Atlas credentials of an Organization Owner:
    /// either an API key (keys publicApiKey and privateApiKey) or a service account (keys
    /// clientId and clientSecret). These are the keys the Atlas Kubernetes Operator uses, so its
    /// Secrets work unchanged.
    pub credentials_secret_ref: CredentialsSecretRef,

    /// Where and how the link token is stored. Optional: by default the token goes to key
    /// linkToken of a Secret named like the LinkToken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<TokenSecretSpec>,

    /// What happens to the token in Atlas when the LinkToken is deleted: Delete revokes it,
    /// Retain leaves it in Atlas (and the link usable) and only removes the LinkToken.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Hand the token to its source: a Cloud Manager or Ops Manager organization (see
    /// docs/source-link.md). Optional: without it the token is only stored in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<super::source::SourceSpec>,
}

/// Rules across fields. The source's credentials Secret is never the Atlas credentials
/// Secret (both take the same keys): a LinkToken author who cannot read Secrets must not be
/// able to send the Atlas org's credentials to a source. The controller checks it again.
fn spec_rules(s: &mut schemars::Schema) {
    s.insert(
        "x-kubernetes-validations".into(),
        serde_json::json!([{
            "rule": "!has(self.source) || self.source.credentialsSecretRef.name != self.credentialsSecretRef.name",
            "message": "spec.source.credentialsSecretRef must name another Secret than credentialsSecretRef: the Atlas credentials never go to a source",
            "fieldPath": ".source.credentialsSecretRef.name"
        }]),
    );
}

/// Reference to a Secret in the LinkToken's own namespace. There is deliberately no namespace
/// field: a LinkToken can only use credentials its namespace already holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the credentials Secret (a DNS subdomain name, at most 253 characters).
    #[schemars(transform = schema::secret_name)]
    pub name: String,
}

/// Template of the Secret that receives the link token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSecretSpec {
    /// Name of the Secret (same namespace) that receives the token. Defaults to the
    /// LinkToken's name. The operator never overwrites a Secret it does not control
    /// (SecretConflict). Changing it moves the token to the new Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = schema::secret_name)]
    pub name: Option<String>,

    /// Data key of the token in the Secret: letters, digits, '-', '_' and '.', at most 253
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = schema::secret_key)]
    pub key: Option<String>,

    /// Extra labels for the token Secret. Keys under atlasmigration.io/ are reserved for the
    /// operator. Changing them updates the Secret without reissuing the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = schema::labels)]
    pub labels: Option<BTreeMap<String, String>>,

    /// Extra annotations for the token Secret. Keys under atlasmigration.io/ are reserved for
    /// the operator. Changing them updates the Secret without reissuing the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = schema::annotations)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What happens to the token in Atlas when its LinkToken is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Revoke the token in Atlas, then remove the LinkToken.
    #[default]
    Delete,
    /// Leave the token in Atlas and only remove the LinkToken.
    Retain,
}

impl LinkTokenSpec {
    /// Name of the Secret that receives the token: `tokenSecret.name`, else the LinkToken's name.
    pub fn token_secret_name(&self, link_token_name: &str) -> String {
        self.token_secret
            .as_ref()
            .and_then(|t| t.name.as_deref())
            .unwrap_or(link_token_name)
            .to_string()
    }

    /// Data key of the token in the Secret: `tokenSecret.key`, else [`DEFAULT_TOKEN_KEY`].
    pub fn token_secret_key(&self) -> &str {
        self.token_secret
            .as_ref()
            .and_then(|t| t.key.as_deref())
            .unwrap_or(DEFAULT_TOKEN_KEY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(token_secret: Option<TokenSecretSpec>) -> LinkTokenSpec {
        LinkTokenSpec {
            org_id: "5f1e9b2a3c4d5e6f7a8b9c0d".into(),
            credentials_secret_ref: CredentialsSecretRef {
                name: "creds".into(),
            },
            token_secret,
            ..Default::default()
        }
    }

    #[test]
    fn the_derive_uses_the_group_constant() {
        use kube::Resource;
        // The derive takes the group as a literal; this keeps it and `GROUP` in step.
        assert_eq!(LinkToken::group(&()), crate::api::GROUP);
        assert_eq!(LinkToken::version(&()), crate::api::VERSION);
        assert_eq!(LinkToken::kind(&()), crate::api::KIND);
    }

    #[test]
    fn token_secret_defaults_to_the_link_token_name_and_key() {
        let s = spec(None);
        assert_eq!(s.token_secret_name("my-lt"), "my-lt");
        assert_eq!(s.token_secret_key(), "linkToken");
        let s = spec(Some(TokenSecretSpec::default()));
        assert_eq!(s.token_secret_name("my-lt"), "my-lt");
        assert_eq!(s.token_secret_key(), "linkToken");
    }

    #[test]
    fn token_secret_name_and_key_can_be_overridden() {
        let s = spec(Some(TokenSecretSpec {
            name: Some("other".into()),
            key: Some("token.txt".into()),
            ..Default::default()
        }));
        assert_eq!(s.token_secret_name("my-lt"), "other");
        assert_eq!(s.token_secret_key(), "token.txt");
    }

    #[test]
    fn yaml_uses_camel_case_and_fills_defaults() {
        let s: LinkTokenSpec = serde_saphyr::from_str(
            "orgId: 5f1e9b2a3c4d5e6f7a8b9c0d\ncredentialsSecretRef: {name: creds}\n",
        )
        .unwrap();
        assert_eq!(s, spec(None));
        assert_eq!(s.deletion_policy, DeletionPolicy::Delete);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "orgId": "5f1e9b2a3c4d5e6f7a8b9c0d",
                "accessListIps": [],
                "credentialsSecretRef": {"name": "creds"},
                "deletionPolicy": "Delete",
            })
        );
    }
}
