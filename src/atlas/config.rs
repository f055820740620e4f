//! Client configuration. The base URL is operator configuration only (never per resource), so a
//! resource author cannot send an org's credentials to a host of their choosing.

use std::path::PathBuf;
use std::time::Duration;

/// Default Atlas (commercial). Atlas for Government is `https://cloud.mongodbgov.com`.
pub const DEFAULT_BASE_URL: &str = "https://cloud.mongodb.com";

#[derive(Clone, Debug)]
pub struct AtlasConfig {
    /// Scheme, host and optional path prefix; the API and token paths are appended to it.
    pub base_url: String,
    /// Bound on establishing a connection (TCP + TLS).
    pub connect_timeout: Duration,
    /// Bound on a whole round trip, reading the body included.
    pub request_timeout: Duration,
    /// Largest response body read; bigger bodies are an error, never an allocation.
    pub max_body_bytes: usize,
    pub user_agent: String,
    /// A bearer token is renewed this long before it expires (at most a third of its lifetime
    /// before, so short-lived tokens are still used for a while).
    pub token_renew_before: Duration,
    /// After the token endpoint fails, callers sharing the credentials get the same error for
    /// this long (or for Retry-After, when given) instead of each minting again.
    pub token_failure_cooldown: Duration,
    /// Longest `Retry-After` honoured (the operator's `--retry-max-delay`): a longer one, or
    /// an absurd one, is clamped to this when the response is parsed.
    pub max_retry_after: Duration,
    /// Shortest time a minted bearer token is reused, whatever `expires_in` says: an endpoint
    /// answering `expires_in: 0` must not make every request mint a token (the endpoint is rate
    /// limited and an account holds at most 100 live tokens). If the token really dies sooner,
    /// Atlas answers 401 and the client mints once more.
    pub token_min_reuse: Duration,
    /// PEM certificates trusted as roots in addition to the platform's (`--atlas-ca-file`).
    pub ca_file: Option<PathBuf>,
}

impl Default for AtlasConfig {
    fn default() -> Self {
        AtlasConfig {
            base_url: DEFAULT_BASE_URL.to_owned(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 64 * 1024,
            user_agent: default_user_agent(),
            token_renew_before: Duration::from_secs(600),
            token_failure_cooldown: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(300),
            token_min_reuse: Duration::from_secs(30),
            ca_file: None,
        }
    }
}

impl AtlasConfig {
    /// Defaults with another base URL.
    pub fn with_base_url(base_url: impl Into<String>) -> Self {
        AtlasConfig {
            base_url: base_url.into(),
            ..AtlasConfig::default()
        }
    }
}

/// `linktoken-operator/<version>`.
pub fn default_user_agent() -> String {
    format!("linktoken-operator/{}", env!("CARGO_PKG_VERSION"))
}
