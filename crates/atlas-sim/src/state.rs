//! Shared simulator state: configured principals and orgs, live links, OAuth tokens, Digest
//! nonces, counters and faults. One mutex: every operation is short and in memory.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::config::{
    ApiKeyConfig, ConfigError, ORG_OWNER, OrgConfig, OrgRoles, RateLimitConfig,
    ServiceAccountConfig, SimConfig,
};
use super::digest::NonceStore;
use super::faults::{ActiveFault, CallKind, FaultQueue, FaultSpec, Port};
use super::ratelimit::TokenBucket;
use super::source::{SourceCall, SourceOrgSnapshot, SourceState};

/// Prefix of every link token the simulator mints (easy to spot in a leak).
pub const LINK_TOKEN_PREFIX: &str = "atlsim_lt_";

pub fn sha256_hex(input: &str) -> String {
    hex::encode(Sha256::digest(input.as_bytes()))
}

/// `n` random bytes, base64url without padding.
pub fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A new link token: 256 random bits, base64url, with a recognisable prefix.
pub fn new_link_token() -> String {
    format!("{LINK_TOKEN_PREFIX}{}", random_b64(32))
}

/// Who made an authenticated call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    ApiKey(String),
    ServiceAccount(String),
}

/// One live org link, standing for the API key Atlas embeds in each token.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    pub token_sha256: String,
    pub api_key_id: String,
    pub access_list_ips: Vec<String>,
    pub created_at: Timestamp,
}

#[derive(Debug)]
pub(crate) struct OrgState {
    pub name: String,
    pub migrating: bool,
    pub rate: RateLimitConfig,
    pub bucket: TokenBucket,
    pub links: Vec<Link>,
    pub issued: u64,
    pub revoked: u64,
    pub revoked_hashes: HashSet<String>,
}

impl OrgState {
    fn new(org: &OrgConfig, default_rate: RateLimitConfig, now: Instant) -> Self {
        let rate = org.rate_limit.unwrap_or(default_rate);
        Self {
            name: org.name.clone(),
            migrating: org.migrating,
            rate,
            bucket: TokenBucket::new(rate, now),
            links: Vec::new(),
            issued: 0,
            revoked: 0,
            revoked_hashes: HashSet::new(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct BearerToken {
    pub client_id: String,
    pub expires_at: Instant,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OauthStats {
    pub minted: u64,
    pub revoked: u64,
}

/// One server's service accounts and the bearer tokens it minted for them: the Atlas port
/// and the source port each have their own (a token from one means nothing to the other).
#[derive(Debug, Default)]
pub(crate) struct OAuthAccounts {
    pub service_accounts: HashMap<String, ServiceAccountConfig>,
    /// Live bearer tokens by sha256 (the simulator keeps no token in clear).
    pub bearer: HashMap<String, BearerToken>,
    pub stats: BTreeMap<String, OauthStats>,
}

impl OAuthAccounts {
    pub fn new(accounts: &[ServiceAccountConfig]) -> Self {
        OAuthAccounts {
            service_accounts: accounts
                .iter()
                .map(|s| (s.client_id.clone(), s.clone()))
                .collect(),
            ..Default::default()
        }
    }

    /// Live (unexpired) bearer tokens of one service account; drops expired ones on the way.
    pub fn live_bearer_count(&mut self, client_id: &str, now: Instant) -> usize {
        self.bearer.retain(|_, t| t.expires_at > now);
        self.bearer
            .values()
            .filter(|t| t.client_id == client_id)
            .count()
    }

    /// Live tokens and counters per client, for `GET /state`.
    pub fn snapshot(&mut self, now: Instant) -> BTreeMap<String, OauthSnapshot> {
        self.bearer.retain(|_, t| t.expires_at > now);
        let mut live: BTreeMap<String, usize> = BTreeMap::new();
        for t in self.bearer.values() {
            *live.entry(t.client_id.clone()).or_insert(0) += 1;
        }
        let mut clients: Vec<String> = self.stats.keys().cloned().collect();
        clients.extend(live.keys().cloned());
        clients
            .into_iter()
            .map(|c| {
                let stats = self.stats.get(&c).copied().unwrap_or_default();
                let live = live.get(&c).copied().unwrap_or(0);
                (
                    c,
                    OauthSnapshot {
                        minted: stats.minted,
                        revoked: stats.revoked,
                        live,
                    },
                )
            })
            .collect()
    }

    pub fn add(&mut self, sa: ServiceAccountConfig) -> Result<(), AdminError> {
        sa.validate()?;
        if self.service_accounts.contains_key(&sa.client_id) {
            return Err(AdminError::Conflict(format!(
                "service account {} exists",
                sa.client_id
            )));
        }
        self.service_accounts.insert(sa.client_id.clone(), sa);
        Ok(())
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub orgs: BTreeMap<String, OrgState>,
    pub api_keys: HashMap<String, ApiKeyConfig>,
    pub default_rate: RateLimitConfig,
    pub nonces: NonceStore,
    pub oauth: OAuthAccounts,
    pub calls: BTreeMap<(String, CallKind, u16), u64>,
    /// The last `CALL_HISTORY_LIMIT` calls, oldest first.
    pub history: VecDeque<CallRecord>,
    pub faults: FaultQueue,
    /// The Cloud Manager / Ops Manager side (its own orgs, keys, nonces and links).
    pub source: SourceState,
}

/// How many calls the history keeps: enough to explain a failure minutes back, bounded so a
/// long-running simulator does not grow without end.
pub const CALL_HISTORY_LIMIT: usize = 20_000;

/// One call on the Atlas port, as the history keeps it (never a header, body or token).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    /// Sequence number since the simulator started (survives the bound: gaps show evictions).
    pub seq: u64,
    pub at: Timestamp,
    pub method: String,
    pub kind: CallKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// 0 = connection dropped by a fault.
    pub status: u16,
    /// A fault answered (or delayed) the call.
    pub fault: bool,
    pub duration_ms: u64,
}

impl Inner {
    /// Where the link token with this sha256 stands on the Atlas side.
    pub fn token_status_by_hash(&self, sha256: &str) -> TokenStatus {
        for (id, org) in &self.orgs {
            if org.links.iter().any(|l| l.token_sha256 == sha256) {
                return TokenStatus::Live { org_id: id.clone() };
            }
            if org.revoked_hashes.contains(sha256) {
                return TokenStatus::Revoked { org_id: id.clone() };
            }
        }
        TokenStatus::Unknown
    }

    pub fn roles_of(&self, principal: &Principal) -> Option<&OrgRoles> {
        match principal {
            Principal::ApiKey(k) => self.api_keys.get(k).map(|c| &c.roles),
            Principal::ServiceAccount(c) => self.oauth.service_accounts.get(c).map(|c| &c.roles),
        }
    }

    pub fn is_owner(&self, principal: &Principal, org_id: &str) -> bool {
        self.roles_of(principal)
            .and_then(|r| r.get(org_id))
            .is_some_and(|roles| roles.iter().any(|r| r == ORG_OWNER))
    }
}

/// Errors of the runtime configuration calls (admin API and in-process accessors).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
}

impl From<ConfigError> for AdminError {
    fn from(e: ConfigError) -> Self {
        AdminError::Invalid(e.to_string())
    }
}

/// Where a link token stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "status"
)]
pub enum TokenStatus {
    Live { org_id: String },
    Revoked { org_id: String },
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrgSnapshot {
    pub name: String,
    pub migrating: bool,
    pub live_links: usize,
    pub live_token_sha256: Vec<String>,
    pub links: Vec<Link>,
    pub issued: u64,
    pub revoked: u64,
    pub rate_limit: RateLimitConfig,
    pub rate_limit_remaining: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallCount {
    pub method: String,
    pub kind: CallKind,
    /// HTTP status; 0 when the connection was dropped by a fault.
    pub status: u16,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OauthSnapshot {
    pub minted: u64,
    pub revoked: u64,
    pub live: usize,
}

/// What `GET /state` returns.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateSnapshot {
    pub orgs: BTreeMap<String, OrgSnapshot>,
    pub calls: Vec<CallCount>,
    pub calls_total: u64,
    pub oauth: BTreeMap<String, OauthSnapshot>,
    pub faults: Vec<ActiveFault>,
    /// Source-side orgs: linked or not, to which Atlas org, SYNCED or NOT_SYNCED.
    pub source_orgs: BTreeMap<String, SourceOrgSnapshot>,
    /// The latest source-port calls, oldest first (method, path, status; nothing secret).
    pub source_calls: Vec<SourceCall>,
    /// Service-account tokens of the source port, as `oauth` for the Atlas port.
    pub source_oauth: BTreeMap<String, OauthSnapshot>,
}

/// Cheap-to-clone handle on the simulator state.
#[derive(Debug, Clone)]
pub struct SimState {
    inner: Arc<Mutex<Inner>>,
}

impl SimState {
    pub fn new(config: &SimConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let now = Instant::now();
        let orgs = config
            .orgs
            .iter()
            .map(|o| (o.id.clone(), OrgState::new(o, config.rate_limit, now)))
            .collect();
        let inner = Inner {
            orgs,
            api_keys: config
                .api_keys
                .iter()
                .map(|k| (k.public_key.clone(), k.clone()))
                .collect(),
            default_rate: config.rate_limit,
            nonces: NonceStore::new(Duration::from_secs(config.digest_nonce_lifetime_seconds)),
            oauth: OAuthAccounts::new(&config.service_accounts),
            calls: BTreeMap::new(),
            history: VecDeque::new(),
            faults: FaultQueue::default(),
            source: SourceState::new(config),
        };
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Poison-safe: a panic elsewhere must not wedge the simulator; the state stays usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn live_links(&self, org_id: &str) -> usize {
        self.lock().orgs.get(org_id).map_or(0, |o| o.links.len())
    }

    pub fn live_token_hashes(&self, org_id: &str) -> Vec<String> {
        self.lock().orgs.get(org_id).map_or_else(Vec::new, |o| {
            o.links.iter().map(|l| l.token_sha256.clone()).collect()
        })
    }

    pub fn token_status_by_hash(&self, sha256: &str) -> TokenStatus {
        self.lock().token_status_by_hash(sha256)
    }

    pub fn token_status(&self, link_token: &str) -> TokenStatus {
        self.token_status_by_hash(&sha256_hex(link_token))
    }

    pub fn is_token_live(&self, link_token: &str) -> bool {
        matches!(self.token_status(link_token), TokenStatus::Live { .. })
    }

    /// Calls answered with `status` for `method` and endpoint `kind` (status 0 = dropped).
    pub fn calls(&self, method: &str, kind: CallKind, status: u16) -> u64 {
        self.lock()
            .calls
            .get(&(method.to_ascii_uppercase(), kind, status))
            .copied()
            .unwrap_or(0)
    }

    /// Calls answered on both API ports (Atlas and source).
    pub fn calls_total(&self) -> u64 {
        self.lock().calls.values().sum()
    }

    /// Calls answered on one API port.
    pub fn calls_on(&self, port: Port) -> u64 {
        self.lock()
            .calls
            .iter()
            .filter(|((_, kind, _), _)| kind.port() == port)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn oauth_tokens_minted(&self, client_id: &str) -> u64 {
        self.lock()
            .oauth
            .stats
            .get(client_id)
            .map_or(0, |s| s.minted)
    }

    pub(crate) fn record_call(&self, method: &str, kind: CallKind, status: u16) {
        *self
            .lock()
            .calls
            .entry((method.to_owned(), kind, status))
            .or_insert(0) += 1;
    }

    /// Appends one call to the bounded history.
    pub(crate) fn record_history(&self, mut record: CallRecord) {
        let mut inner = self.lock();
        record.seq = inner.history.back().map_or(1, |r| r.seq + 1);
        if inner.history.len() >= CALL_HISTORY_LIMIT {
            inner.history.pop_front();
        }
        inner.history.push_back(record);
    }

    /// The calls kept in the history, oldest first; with `org_id`, only link-token calls for
    /// that org.
    pub fn call_history(&self, org_id: Option<&str>) -> Vec<CallRecord> {
        self.lock()
            .history
            .iter()
            .filter(|r| org_id.is_none_or(|o| r.org_id.as_deref() == Some(o)))
            .cloned()
            .collect()
    }

    pub fn snapshot(&self) -> StateSnapshot {
        let now = Instant::now();
        let mut inner = self.lock();
        let oauth = inner.oauth.snapshot(now);
        let source_oauth = inner.source.oauth.snapshot(now);
        let orgs = inner
            .orgs
            .iter_mut()
            .map(|(id, o)| {
                let snap = OrgSnapshot {
                    name: o.name.clone(),
                    migrating: o.migrating,
                    live_links: o.links.len(),
                    live_token_sha256: o.links.iter().map(|l| l.token_sha256.clone()).collect(),
                    links: o.links.clone(),
                    issued: o.issued,
                    revoked: o.revoked,
                    rate_limit: o.rate,
                    rate_limit_remaining: o.bucket.remaining(now),
                };
                (id.clone(), snap)
            })
            .collect();
        let calls: Vec<CallCount> = inner
            .calls
            .iter()
            .map(|((method, kind, status), count)| CallCount {
                method: method.clone(),
                kind: *kind,
                status: *status,
                count: *count,
            })
            .collect();
        StateSnapshot {
            orgs,
            calls_total: calls.iter().map(|c| c.count).sum(),
            calls,
            oauth,
            faults: inner.faults.list(),
            source_orgs: inner.source_snapshot(),
            source_calls: inner.source.history.iter().cloned().collect(),
            source_oauth,
        }
    }

    pub fn add_org(&self, org: OrgConfig) -> Result<(), AdminError> {
        org.validate()?;
        let mut inner = self.lock();
        if inner.orgs.contains_key(&org.id) {
            return Err(AdminError::Conflict(format!("org {} exists", org.id)));
        }
        let state = OrgState::new(&org, inner.default_rate, Instant::now());
        inner.orgs.insert(org.id, state);
        Ok(())
    }

    pub fn add_api_key(&self, key: ApiKeyConfig) -> Result<(), AdminError> {
        key.validate()?;
        let mut inner = self.lock();
        if inner.api_keys.contains_key(&key.public_key) {
            return Err(AdminError::Conflict(format!(
                "API key {} exists",
                key.public_key
            )));
        }
        inner.api_keys.insert(key.public_key.clone(), key);
        Ok(())
    }

    pub fn add_service_account(&self, sa: ServiceAccountConfig) -> Result<(), AdminError> {
        self.lock().oauth.add(sa)
    }

    pub fn set_migrating(&self, org_id: &str, migrating: bool) -> Result<(), AdminError> {
        let mut inner = self.lock();
        let org = inner
            .orgs
            .get_mut(org_id)
            .ok_or_else(|| AdminError::NotFound(format!("org {org_id} not found")))?;
        org.migrating = migrating;
        Ok(())
    }

    pub fn add_fault(&self, spec: FaultSpec) -> Result<u64, AdminError> {
        spec.validate().map_err(AdminError::Invalid)?;
        Ok(self.lock().faults.add(spec))
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    pub fn faults(&self) -> Vec<ActiveFault> {
        self.lock().faults.list()
    }

    /// Clears links (both sides), revocation history, counters, the source call history,
    /// rate-limit buckets and faults. Keeps the configuration (orgs, principals, migrating
    /// flags) and live nonces and bearer tokens, so that a client's cached session survives a
    /// reset between test cases.
    pub fn reset(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        for org in inner.orgs.values_mut() {
            org.links.clear();
            org.revoked_hashes.clear();
            org.issued = 0;
            org.revoked = 0;
            org.bucket = TokenBucket::new(org.rate, now);
        }
        inner.calls.clear();
        inner.history.clear();
        inner.oauth.stats.clear();
        inner.faults.clear();
        inner.source.reset();
    }

    pub(crate) fn new_api_key_id() -> String {
        random_hex(12)
    }
}
