//! Ready condition reasons, exactly as docs/conditions.md ("Ready reasons") names them.

use std::fmt;

/// Why a LinkToken is (or is not) Ready. The string forms are part of the public API:
/// users, alerts and GitOps health checks match on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The Secret holds a token issued for the current spec (Ready=True).
    TokenIssued,
    /// Work is in flight.
    Issuing,
    /// The credentials Secret does not exist.
    CredentialsNotFound,
    /// Keys missing or empty, or both kinds of credentials present.
    CredentialsInvalid,
    /// Atlas answered 401.
    AtlasUnauthorized,
    /// Atlas answered 403 (not Organization Owner, caller IP not on the key's access list, ...).
    AtlasForbidden,
    /// Atlas answered 404 on POST.
    OrgNotFound,
    /// Atlas answered 400 or another 4xx.
    AtlasRejected,
    /// Atlas answered 429.
    AtlasRateLimited,
    /// 5xx, timeout, connection or TLS failure, unreadable body.
    AtlasUnavailable,
    /// An older LinkToken in the cluster already manages this orgId.
    OrgConflict,
    /// The target Secret exists and is not controlled by this LinkToken.
    SecretConflict,
    /// The API server refused to write the token Secret (ResourceQuota, an admission webhook,
    /// invalid or oversized metadata). Found by a dry-run before Atlas is called, so no token
    /// is minted for a Secret that cannot be written.
    SecretWriteFailed,
    /// Deleting, but Atlas refuses (409 active migration) or is unavailable.
    RevocationBlocked,
    /// spec.source is set and its org is linked with the current token, SYNCED (Ready=True).
    Linked,
    /// The token is current; handing it to the source (or waiting for SYNCED) is in flight.
    Linking,
    /// The source credentials Secret does not exist.
    SourceCredentialsNotFound,
    /// The source credentials Secret holds neither a complete API key nor a complete service
    /// account (or both), the source has no token endpoint for a service account, or the CA
    /// bundle is missing or not PEM.
    SourceConfigInvalid,
    /// The source (or its token endpoint) answered 401.
    SourceUnauthorized,
    /// The source (or its token endpoint) answered 403 (not Organization Owner of the source
    /// org, IP not allowed).
    SourceForbidden,
    /// The source answered 404 for its org.
    SourceOrgNotFound,
    /// The source refused the link with another 4xx (a token it does not accept, ...).
    SourceRejected,
    /// 5xx, 429, timeout, connection or TLS failure at the source.
    SourceUnavailable,
    /// The source reports the link NOT_SYNCED.
    NotSynced,
    /// spec.source.url is not on the operator's --allowed-source-urls: no request is made.
    SourceNotAllowed,
    /// Another LinkToken holds the claim on the source org (a source org holds one link).
    SourceOrgConflict,
}

impl Reason {
    pub const ALL: [Reason; 26] = [
        Reason::TokenIssued,
        Reason::Issuing,
        Reason::CredentialsNotFound,
        Reason::CredentialsInvalid,
        Reason::AtlasUnauthorized,
        Reason::AtlasForbidden,
        Reason::OrgNotFound,
        Reason::AtlasRejected,
        Reason::AtlasRateLimited,
        Reason::AtlasUnavailable,
        Reason::OrgConflict,
        Reason::SecretConflict,
        Reason::SecretWriteFailed,
        Reason::RevocationBlocked,
        Reason::Linked,
        Reason::Linking,
        Reason::SourceCredentialsNotFound,
        Reason::SourceConfigInvalid,
        Reason::SourceUnauthorized,
        Reason::SourceForbidden,
        Reason::SourceOrgNotFound,
        Reason::SourceRejected,
        Reason::SourceUnavailable,
        Reason::NotSynced,
        Reason::SourceNotAllowed,
        Reason::SourceOrgConflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TokenIssued => "TokenIssued",
            Reason::Issuing => "Issuing",
            Reason::CredentialsNotFound => "CredentialsNotFound",
            Reason::CredentialsInvalid => "CredentialsInvalid",
            Reason::AtlasUnauthorized => "AtlasUnauthorized",
            Reason::AtlasForbidden => "AtlasForbidden",
            Reason::OrgNotFound => "OrgNotFound",
            Reason::AtlasRejected => "AtlasRejected",
            Reason::AtlasRateLimited => "AtlasRateLimited",
            Reason::AtlasUnavailable => "AtlasUnavailable",
            Reason::OrgConflict => "OrgConflict",
            Reason::SecretConflict => "SecretConflict",
            Reason::SecretWriteFailed => "SecretWriteFailed",
            Reason::RevocationBlocked => "RevocationBlocked",
            Reason::Linked => "Linked",
            Reason::Linking => "Linking",
            Reason::SourceCredentialsNotFound => "SourceCredentialsNotFound",
            Reason::SourceConfigInvalid => "SourceConfigInvalid",
            Reason::SourceUnauthorized => "SourceUnauthorized",
            Reason::SourceForbidden => "SourceForbidden",
            Reason::SourceOrgNotFound => "SourceOrgNotFound",
            Reason::SourceRejected => "SourceRejected",
            Reason::SourceUnavailable => "SourceUnavailable",
            Reason::NotSynced => "NotSynced",
            Reason::SourceNotAllowed => "SourceNotAllowed",
            Reason::SourceOrgConflict => "SourceOrgConflict",
        }
    }

    /// True when only a user action (a change of spec, credentials or another object) can help:
    /// the kstatus `Stalled` condition, and no polling of Atlas.
    pub fn is_stalled(self) -> bool {
        matches!(
            self,
            Reason::CredentialsNotFound
                | Reason::CredentialsInvalid
                | Reason::AtlasUnauthorized
                | Reason::AtlasForbidden
                | Reason::OrgNotFound
                | Reason::AtlasRejected
                | Reason::OrgConflict
                | Reason::SecretConflict
                | Reason::SourceOrgConflict
        ) || Reason::SOURCE_USER_FIXABLE.contains(&self)
    }

    /// True when the whole declared state holds (Ready=True): the token is issued for the
    /// current spec and, when spec.source is set, its org is linked with it and SYNCED.
    pub fn is_ready(self) -> bool {
        matches!(self, Reason::TokenIssued | Reason::Linked)
    }

    /// True for the reasons of the link at the source (the Linked condition's reasons).
    pub fn is_link(self) -> bool {
        matches!(
            self,
            Reason::Linked
                | Reason::Linking
                | Reason::SourceUnavailable
                | Reason::NotSynced
                | Reason::SourceOrgConflict
        ) || Reason::SOURCE_USER_FIXABLE.contains(&self)
    }

    /// The link failures only a user can fix (credentials, access, the source's org, a token
    /// the source refuses): Stalled, rechecked on a backing-off timer.
    pub const SOURCE_USER_FIXABLE: [Reason; 7] = [
        Reason::SourceNotAllowed,
        Reason::SourceCredentialsNotFound,
        Reason::SourceConfigInvalid,
        Reason::SourceUnauthorized,
        Reason::SourceForbidden,
        Reason::SourceOrgNotFound,
        Reason::SourceRejected,
    ];

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_its_name() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        assert_eq!(Reason::parse("Nope"), None);
    }

    #[test]
    fn only_user_fixable_reasons_are_stalled() {
        assert!(!Reason::TokenIssued.is_stalled());
        assert!(!Reason::AtlasUnavailable.is_stalled());
        assert!(!Reason::AtlasRateLimited.is_stalled());
        assert!(!Reason::RevocationBlocked.is_stalled());
        assert!(Reason::SecretConflict.is_stalled());
    }
}
