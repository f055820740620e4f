//! `atlas-sim`: a simulator of the Atlas link-token API (Digest and OAuth auth, POST/DELETE
//! linkTokens, ApiError bodies, rate limiting) and of the Cloud Manager / Ops Manager side
//! that takes the token (`liveExport/migrationLink`), with an admin API for state and fault
//! injection. Used by the operator's tests, the benchmark and the local demo; see
//! docs/atlas-sim.md.
//!
//! It models the worst case of the undocumented Atlas semantics: every POST adds one more live
//! link (with its own API key) and DELETE removes all of an org's links, so a leak shows up
//! as a live-link count above one.

mod admin;
mod auth;
pub mod config;
mod conn;
pub mod digest;
pub mod faults;
mod handlers;
mod oauth;
pub mod ratelimit;
mod reply;
mod server;
pub mod source;
pub mod state;
mod tls;

pub use config::{
    ApiKeyConfig, ConfigError, ORG_OWNER, OrgConfig, OrgRoles, RateLimitConfig,
    ServiceAccountConfig, SimConfig, SourceOrgConfig, roles,
};
pub use faults::{CallKind, FaultKind, FaultSpec, FaultTarget, Port};
pub use server::{SimError, SimHandle, SimListen, SimServer};
pub use source::{SourceCall, SourceLink, SyncStatus};
pub use state::{AdminError, CallRecord, SimState, StateSnapshot, TokenStatus};
pub use tls::{SimTls, TlsError};
