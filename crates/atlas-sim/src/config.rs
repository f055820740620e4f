//! Simulator configuration: orgs, principals (API keys, service accounts) and limits.
//!
//! Loadable from YAML (camelCase keys). Secrets in here are test fixtures, but `Debug` still
//! redacts them so that a stray `{:?}` in a log line never prints one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The only org role that may mint or revoke link tokens.
pub const ORG_OWNER: &str = "ORG_OWNER";

/// Demo org used by `SimConfig::demo()` (and the local demo scripts).
/// The orgs of the service-account and custom-Secret examples.
pub const DEMO_EXTRA_ORG_IDS: [&str; 2] = ["5f1e9b2a3c4d5e6f7a8b9c0e", "5f1e9b2a3c4d5e6f7a8b9c0f"];
pub const DEMO_ORG_ID: &str = "5f1e9b2a3c4d5e6f7a8b9c0d";
pub const DEMO_PUBLIC_KEY: &str = "demopublic";
pub const DEMO_PRIVATE_KEY: &str = "demo-private-key-0000";
pub const DEMO_CLIENT_ID: &str = "mdb_sa_id_demo";
pub const DEMO_CLIENT_SECRET: &str = "mdb_sa_sk_demo";
/// The demo Cloud Manager / Ops Manager org (source side) and its Organization Owner API key.
pub const DEMO_SOURCE_ORG_ID: &str = "6a1e9b2a3c4d5e6f7a8b9c0d";
pub const DEMO_SOURCE_PUBLIC_KEY: &str = "demosourcepublic";
pub const DEMO_SOURCE_PRIVATE_KEY: &str = "demo-source-private-0000";
/// The source side's demo service account (Cloud Manager), Organization Owner of the source org.
pub const DEMO_SOURCE_CLIENT_ID: &str = "mdb_sa_id_source_demo";
pub const DEMO_SOURCE_CLIENT_SECRET: &str = "mdb_sa_sk_source_demo_0000";

/// Roles of a principal, keyed by org id (e.g. `{"5f1e...": ["ORG_OWNER"]}`).
pub type OrgRoles = BTreeMap<String, Vec<String>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimConfig {
    #[serde(default)]
    pub orgs: Vec<OrgConfig>,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccountConfig>,
    /// Cloud Manager / Ops Manager orgs served on the source port (a namespace of their own:
    /// an id here is not an Atlas org).
    #[serde(default)]
    pub source_orgs: Vec<SourceOrgConfig>,
    /// Digest API keys of the source side; roles are keyed by source org id.
    #[serde(default)]
    pub source_api_keys: Vec<ApiKeyConfig>,
    /// Service accounts of the source side (Cloud Manager), with their own token endpoint
    /// on the source port; roles are keyed by source org id.
    #[serde(default)]
    pub source_service_accounts: Vec<ServiceAccountConfig>,
    /// Default per-org token bucket (orgs may override it).
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// How long a Digest nonce stays valid; afterwards a correct response gets `stale=true`.
    #[serde(default = "default_nonce_lifetime")]
    pub digest_nonce_lifetime_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrgConfig {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// While true, DELETE answers 409 CANNOT_DELETE_ORG_ACTIVE_LIVE_MIGRATION_ATLAS_ORG_LINK.
    #[serde(default)]
    pub migrating: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
}

/// A Cloud Manager / Ops Manager organization (the source side of a live migration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceOrgConfig {
    pub id: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub public_key: String,
    pub private_key: String,
    #[serde(default)]
    pub roles: OrgRoles,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountConfig {
    pub client_id: String,
    pub client_secret: String,
    #[serde(default)]
    pub roles: OrgRoles,
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime_seconds: u64,
    /// Atlas allows 100 active access tokens per service account.
    #[serde(default = "default_max_active_tokens")]
    pub max_active_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    #[serde(default = "default_refill")]
    pub refill_per_minute: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            capacity: default_capacity(),
            refill_per_minute: default_refill(),
        }
    }
}

fn default_nonce_lifetime() -> u64 {
    300
}
fn default_token_lifetime() -> u64 {
    3600
}
fn default_max_active_tokens() -> usize {
    100
}
fn default_capacity() -> u32 {
    500
}
fn default_refill() -> u32 {
    250
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            orgs: Vec::new(),
            api_keys: Vec::new(),
            service_accounts: Vec::new(),
            source_orgs: Vec::new(),
            source_api_keys: Vec::new(),
            source_service_accounts: Vec::new(),
            rate_limit: RateLimitConfig::default(),
            digest_nonce_lifetime_seconds: default_nonce_lifetime(),
        }
    }
}

impl fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("public_key", &self.public_key)
            .field("private_key", &"<redacted>")
            .field("roles", &self.roles)
            .finish()
    }
}

impl fmt::Debug for ServiceAccountConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountConfig")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("roles", &self.roles)
            .field("token_lifetime_seconds", &self.token_lifetime_seconds)
            .field("max_active_tokens", &self.max_active_tokens)
            .finish()
    }
}

impl ApiKeyConfig {
    pub fn new(public_key: &str, private_key: &str, roles: OrgRoles) -> Self {
        Self {
            public_key: public_key.to_owned(),
            private_key: private_key.to_owned(),
            roles,
        }
    }
}

impl ServiceAccountConfig {
    pub fn new(client_id: &str, client_secret: &str, roles: OrgRoles) -> Self {
        Self {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            roles,
            token_lifetime_seconds: default_token_lifetime(),
            max_active_tokens: default_max_active_tokens(),
        }
    }
}

impl SourceOrgConfig {
    pub fn new(id: &str, name: &str) -> Self {
        Self {
            id: id.to_owned(),
            name: name.to_owned(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        // Cloud Manager and Ops Manager org ids are ObjectIds too.
        if !is_valid_org_id(&self.id) {
            return Err(ConfigError::Invalid(format!(
                "source org id {:?} is not 24 lowercase hex digits",
                self.id
            )));
        }
        Ok(())
    }
}

impl OrgConfig {
    pub fn new(id: &str, name: &str) -> Self {
        Self {
            id: id.to_owned(),
            name: name.to_owned(),
            migrating: false,
            rate_limit: None,
        }
    }
}

/// Validates each item and refuses an id listed twice.
fn unique<T>(
    items: &[T],
    what: &str,
    validate: fn(&T) -> Result<(), ConfigError>,
    id: fn(&T) -> &String,
) -> Result<(), ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for item in items {
        validate(item)?;
        if !seen.insert(id(item)) {
            return Err(ConfigError::Invalid(format!(
                "duplicate {what} {}",
                id(item)
            )));
        }
    }
    Ok(())
}

/// `{org_id: [role]}` for one org.
pub fn roles(org_id: &str, role: &str) -> OrgRoles {
    BTreeMap::from([(org_id.to_owned(), vec![role.to_owned()])])
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing config YAML: {0}")]
    Parse(#[from] serde_saphyr::Error),
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Atlas org ids are 24 lowercase hex digits (`^([a-f0-9]{24})$`).
pub fn is_valid_org_id(id: &str) -> bool {
    id.len() == 24 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl RateLimitConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.capacity == 0 || self.refill_per_minute == 0 {
            return Err(ConfigError::Invalid(
                "rate limit capacity and refillPerMinute must be positive".into(),
            ));
        }
        Ok(())
    }
}

impl OrgConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_valid_org_id(&self.id) {
            return Err(ConfigError::Invalid(format!(
                "org id {:?} is not 24 lowercase hex digits",
                self.id
            )));
        }
        if let Some(rl) = &self.rate_limit {
            rl.validate()?;
        }
        Ok(())
    }
}

impl ApiKeyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.public_key.is_empty() || self.private_key.is_empty() {
            return Err(ConfigError::Invalid(
                "API keys need a non-empty publicKey and privateKey".into(),
            ));
        }
        Ok(())
    }
}

impl ServiceAccountConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.client_id.is_empty() || self.client_secret.is_empty() {
            return Err(ConfigError::Invalid(
                "service accounts need a non-empty clientId and clientSecret".into(),
            ));
        }
        if self.token_lifetime_seconds == 0 || self.max_active_tokens == 0 {
            return Err(ConfigError::Invalid(
                "tokenLifetimeSeconds and maxActiveTokens must be positive".into(),
            ));
        }
        Ok(())
    }
}

impl SimConfig {
    /// The local-demo configuration: three orgs (one per example in deploy/examples, since
    /// Atlas keeps one link per org), one API key and one service account, both Organization
    /// Owner of all three; on the source side one org and one API key and one service account
    /// that own it.
    pub fn demo() -> Self {
        let owner_of_all = || {
            let mut r = roles(DEMO_ORG_ID, ORG_OWNER);
            for org in DEMO_EXTRA_ORG_IDS {
                r.extend(roles(org, ORG_OWNER));
            }
            r
        };
        let mut orgs = vec![OrgConfig::new(DEMO_ORG_ID, "demo-org")];
        orgs.extend(
            DEMO_EXTRA_ORG_IDS
                .iter()
                .enumerate()
                .map(|(i, id)| OrgConfig::new(id, &format!("demo-org-{}", i + 2))),
        );
        Self {
            orgs,
            api_keys: vec![ApiKeyConfig::new(
                DEMO_PUBLIC_KEY,
                DEMO_PRIVATE_KEY,
                owner_of_all(),
            )],
            service_accounts: vec![ServiceAccountConfig::new(
                DEMO_CLIENT_ID,
                DEMO_CLIENT_SECRET,
                owner_of_all(),
            )],
            source_orgs: vec![SourceOrgConfig::new(DEMO_SOURCE_ORG_ID, "demo-source-org")],
            source_api_keys: vec![ApiKeyConfig::new(
                DEMO_SOURCE_PUBLIC_KEY,
                DEMO_SOURCE_PRIVATE_KEY,
                roles(DEMO_SOURCE_ORG_ID, ORG_OWNER),
            )],
            source_service_accounts: vec![ServiceAccountConfig::new(
                DEMO_SOURCE_CLIENT_ID,
                DEMO_SOURCE_CLIENT_SECRET,
                roles(DEMO_SOURCE_ORG_ID, ORG_OWNER),
            )],
            ..Self::default()
        }
    }

    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: SimConfig = serde_saphyr::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.rate_limit.validate()?;
        if self.digest_nonce_lifetime_seconds == 0 {
            return Err(ConfigError::Invalid(
                "digestNonceLifetimeSeconds must be positive".into(),
            ));
        }
        unique(&self.orgs, "org id", OrgConfig::validate, |o| &o.id)?;
        unique(&self.api_keys, "API key", ApiKeyConfig::validate, |k| {
            &k.public_key
        })?;
        unique(
            &self.service_accounts,
            "service account",
            ServiceAccountConfig::validate,
            |s| &s.client_id,
        )?;
        unique(
            &self.source_orgs,
            "source org id",
            SourceOrgConfig::validate,
            |o| &o.id,
        )?;
        unique(
            &self.source_api_keys,
            "source API key",
            ApiKeyConfig::validate,
            |k| &k.public_key,
        )?;
        unique(
            &self.source_service_accounts,
            "source service account",
            ServiceAccountConfig::validate,
            |s| &s.client_id,
        )?;
        Ok(())
    }
}
