//! The token Secret as docs/lifecycle.md ("The token Secret") describes it: name, labels,
//! annotations, ownership, hash.
//!
//! Everything here is pure: it builds the desired Secret and reads what matters out of an
//! observed one. Writing happens in `act` under [`FIELD_MANAGER`]: a Secret observed absent is
//! created (POST, so one that appeared meanwhile is a conflict, never taken over); our own is
//! updated with server-side apply carrying the observed resourceVersion and uid.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use sha2::{Digest, Sha256};

use super::decide::{OwnedSecret, SecretState};

pub const FIELD_MANAGER: &str = "linktoken-operator";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "linktoken-operator";
pub const LINKTOKEN_LABEL: &str = "atlasmigration.io/linktoken";
pub const ORG_ID_ANNOTATION: &str = "atlasmigration.io/org-id";
pub const ISSUED_AT_ANNOTATION: &str = "atlasmigration.io/issued-at";
pub const TOKEN_SHA256_ANNOTATION: &str = "atlasmigration.io/token-sha256";
/// The issue attempt that wrote the token (equal to `status.inFlight.attemptId` of that
/// attempt): crash recovery adopts the stored token only when they match.
pub const ATTEMPT_ID_ANNOTATION: &str = "atlasmigration.io/attempt-id";

/// The label selector of every Secret this operator writes (what its Secret watch lists).
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")
}

/// Hex sha256 of a token: stored in status and on the Secret, never the token itself.
pub fn token_sha256(token: &[u8]) -> String {
    hex::encode(Sha256::digest(token))
}

/// A label value naming the LinkToken. Label values hold 63 characters and LinkToken names up
/// to 253, so a longer name becomes its first 54 characters, a dash and 8 hex characters of its
/// hash: valid for every valid name, and still unique in practice. The ownerReference carries
/// the full name.
pub fn linktoken_label_value(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let hash = hex::encode(Sha256::digest(name.as_bytes()));
    let prefix: String = name.chars().take(54).collect();
    // A DNS-subdomain name has only [a-z0-9.-]; the prefix may end in '.' or '-', which is
    // fine inside a label value because the hash follows.
    format!("{prefix}-{}", &hash[..8])
}

/// What the desired token Secret is made of.
pub struct DesiredSecret<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub key: &'a str,
    pub token: &'a [u8],
    pub org_id: &'a str,
    pub issued_at: &'a str,
    pub linktoken_name: &'a str,
    pub owner: OwnerReference,
    pub user_labels: Option<&'a BTreeMap<String, String>>,
    pub user_annotations: Option<&'a BTreeMap<String, String>>,
    /// The issue attempt writing this token; None when the Secret is only kept in shape.
    pub attempt_id: Option<&'a str>,
}

impl DesiredSecret<'_> {
    pub fn labels(&self) -> BTreeMap<String, String> {
        // The user's first, so the operator's own keys always win (the CRD also rejects
        // user keys under atlasmigration.io/).
        let mut labels = self.user_labels.cloned().unwrap_or_default();
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
        labels.insert(
            LINKTOKEN_LABEL.into(),
            linktoken_label_value(self.linktoken_name),
        );
        labels
    }

    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut annotations = self.user_annotations.cloned().unwrap_or_default();
        annotations.insert(ORG_ID_ANNOTATION.into(), self.org_id.into());
        annotations.insert(ISSUED_AT_ANNOTATION.into(), self.issued_at.into());
        annotations.insert(TOKEN_SHA256_ANNOTATION.into(), token_sha256(self.token));
        if let Some(a) = self.attempt_id {
            annotations.insert(ATTEMPT_ID_ANNOTATION.into(), a.into());
        }
        annotations
    }

    /// The full Secret for server-side apply: every field the operator owns.
    pub fn build(&self) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.into()),
                namespace: Some(self.namespace.into()),
                labels: Some(self.labels()),
                annotations: Some(self.annotations()),
                owner_references: Some(vec![self.owner.clone()]),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                self.key.to_string(),
                ByteString(self.token.to_vec()),
            )])),
            ..Default::default()
        }
    }

    /// True when `current` already carries what `build` would write (so no write is needed):
    /// our labels and annotations with these values and the token at `key`. Fields other
    /// managers added are theirs: they are not drift, and a rewrite would not remove them
    /// anyway (so treating them as drift would rewrite forever).
    pub fn is_current(&self, current: &Secret) -> bool {
        let has_all = |want: BTreeMap<String, String>, have: &Option<BTreeMap<String, String>>| {
            let have = have.as_ref();
            want.iter()
                .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
        };
        let data_ok = current
            .data
            .as_ref()
            .is_some_and(|d| d.get(self.key).is_some_and(|v| v.0 == self.token));
        data_ok
            && has_all(self.labels(), &current.metadata.labels)
            && has_all(self.annotations(), &current.metadata.annotations)
    }
}

/// Classifies an observed Secret for `decide`: absent, foreign, or ours (with its value hashes).
/// `owner_uid` is the LinkToken's uid; only a Secret with a *controller* ownerReference to it
/// is ours.
pub fn observe(
    secret: Option<&Secret>,
    owner_uid: &str,
    desired_metadata_current: bool,
) -> SecretState {
    let Some(secret) = secret else {
        return SecretState::Absent;
    };
    if !is_controlled_by(secret, owner_uid) {
        return SecretState::Foreign;
    }
    let value_hashes = secret
        .data
        .as_ref()
        .map(|d| {
            d.iter()
                .map(|(k, v)| (k.clone(), token_sha256(&v.0)))
                .collect()
        })
        .unwrap_or_default();
    let attempt_id = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ATTEMPT_ID_ANNOTATION).cloned());
    SecretState::Ours(OwnedSecret {
        value_hashes,
        attempt_id,
        metadata_current: desired_metadata_current,
    })
}

pub fn is_controlled_by(secret: &Secret, owner_uid: &str) -> bool {
    secret
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.controller == Some(true) && r.uid == owner_uid)
        })
}

/// Whether writing the token Secret takes back fields another manager changed (a forced
/// server-side apply). Yes for a Secret this LinkToken controls: someone who edited its token
/// or our labels (`kubectl edit`, a replace) becomes a co-owner of those fields, and an
/// unforced apply would then fail on every attempt, after each attempt had already revoked and
/// reissued the token in Atlas. No otherwise: a Secret that appeared since it was observed
/// must make the apply fail, never be taken over.
pub fn take_back_fields(observed: &SecretState) -> bool {
    matches!(observed, SecretState::Ours(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_secret_we_control_is_written_with_force() {
        assert!(take_back_fields(&SecretState::Ours(OwnedSecret::default())));
        assert!(!take_back_fields(&SecretState::Absent));
        assert!(!take_back_fields(&SecretState::Foreign));
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "atlasmigration.io/v1alpha1".into(),
            kind: "LinkToken".into(),
            name: "lt".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn desired<'a>(labels: Option<&'a BTreeMap<String, String>>) -> DesiredSecret<'a> {
        DesiredSecret {
            name: "lt",
            namespace: "ns",
            key: "linkToken",
            token: b"tok",
            org_id: "5f1e9b2a3c4d5e6f7a8b9c0d",
            issued_at: "2026-11-28T10:00:00Z",
            linktoken_name: "lt",
            owner: owner(),
            user_labels: labels,
            user_annotations: None,
            attempt_id: Some("attempt-1"),
        }
    }

    #[test]
    fn label_values_are_valid_for_every_valid_name() {
        let long = format!("{}.{}", "a".repeat(200), "b".repeat(52));
        for name in [
            "lt",
            &"x".repeat(63),
            &"y".repeat(64),
            &long,
            &format!("{}-{}", "z".repeat(53), "w".repeat(20)),
        ] {
            let v = linktoken_label_value(name);
            assert!(v.len() <= 63, "{v}");
            let first = v.chars().next().unwrap();
            let last = v.chars().last().unwrap();
            assert!(
                first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric(),
                "{v}"
            );
            assert!(
                v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                "{v}"
            );
        }
        assert_ne!(
            linktoken_label_value(&format!("{}a", "q".repeat(70))),
            linktoken_label_value(&format!("{}b", "q".repeat(70)))
        );
    }

    #[test]
    fn the_operator_labels_win_over_the_users() {
        let user = BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), "someone-else".to_string()),
            ("team".to_string(), "migrations".to_string()),
        ]);
        let labels = desired(Some(&user)).labels();
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert_eq!(labels["team"], "migrations");
        assert_eq!(labels[LINKTOKEN_LABEL], "lt");
    }

    #[test]
    fn the_secret_carries_the_hash_never_the_token_in_metadata() {
        let s = desired(None).build();
        let ann = s.metadata.annotations.clone().unwrap();
        assert_eq!(ann[TOKEN_SHA256_ANNOTATION], token_sha256(b"tok"));
        assert!(ann.values().all(|v| v != "tok"));
        assert_eq!(s.data.unwrap()["linkToken"].0, b"tok");
        assert_eq!(
            s.metadata.owner_references.unwrap()[0].controller,
            Some(true)
        );
    }

    #[test]
    fn the_secret_carries_the_attempt_id_that_crash_recovery_matches() {
        let s = desired(None).build();
        match observe(Some(&s), "uid-1", true) {
            SecretState::Ours(o) => assert_eq!(o.attempt_id.as_deref(), Some("attempt-1")),
            other => panic!("{other:?}"),
        }
        let kept = DesiredSecret {
            attempt_id: None,
            ..desired(None)
        };
        assert!(
            !kept.annotations().contains_key(ATTEMPT_ID_ANNOTATION),
            "keeping a Secret in shape writes no attempt id"
        );
    }

    #[test]
    fn only_a_controller_reference_to_this_linktoken_makes_a_secret_ours() {
        let d = desired(None);
        let mut s = d.build();
        assert!(matches!(
            observe(Some(&s), "uid-1", true),
            SecretState::Ours(_)
        ));
        assert_eq!(observe(Some(&s), "uid-2", true), SecretState::Foreign);
        s.metadata.owner_references.as_mut().unwrap()[0].controller = Some(false);
        assert_eq!(observe(Some(&s), "uid-1", true), SecretState::Foreign);
        assert_eq!(observe(None, "uid-1", true), SecretState::Absent);
    }

    #[test]
    fn is_current_notices_metadata_and_data_drift() {
        let d = desired(None);
        let mut s = d.build();
        assert!(d.is_current(&s));
        s.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("extra".into(), "ok".into());
        assert!(
            d.is_current(&s),
            "someone else's extra labels are not drift"
        );
        s.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(ORG_ID_ANNOTATION);
        assert!(!d.is_current(&s));
        let mut s2 = d.build();
        s2.data
            .as_mut()
            .unwrap()
            .insert("linkToken".into(), ByteString(b"x".to_vec()));
        assert!(!d.is_current(&s2));
    }
}
