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
}

impl Reason {
    pub const ALL: [Reason; 14] = [
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
        )
    }

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
