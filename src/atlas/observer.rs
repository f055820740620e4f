//! A hook for metrics: one record per HTTP round trip, with no secrets in it.

use std::fmt;
use std::time::Duration;

/// Which Atlas endpoint a round trip went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/api/atlas/v2/orgs/{orgId}/liveMigrations/linkTokens`
    LinkTokens,
    /// `/api/oauth/token`
    OAuthToken,
    /// The source's `/api/public/v1.0/orgs/{orgId}/liveExport/migrationLink[/status]`
    /// (Cloud Manager or Ops Manager).
    SourceLink,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::LinkTokens => "linkTokens",
            Endpoint::OAuthToken => "oauthToken",
            Endpoint::SourceLink => "migrationLink",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One HTTP round trip as seen by the client.
#[derive(Clone, Debug)]
pub struct RequestRecord<'a> {
    pub method: &'static str,
    pub endpoint: Endpoint,
    /// None when no response arrived (timeout, connection or TLS failure).
    pub status: Option<u16>,
    /// Atlas `errorCode` (or the OAuth `error`) of an error response, when it had one.
    pub error_code: Option<&'a str>,
    pub duration: Duration,
}

/// Called once per HTTP round trip (Digest challenges and token mints included), synchronously
/// on the request's task: implementations must be quick and must not block.
pub trait RequestObserver: Send + Sync {
    fn observe(&self, record: &RequestRecord<'_>);
}
