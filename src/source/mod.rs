//! The source side of the link: Cloud Manager or Ops Manager, which receives the link token
//! (`/api/public/v1.0/orgs/{orgId}/liveExport/migrationLink`). No Kubernetes types in here.
//!
//! - [`client`]: [`SourceClient`], `link` / `status` / `unlink`, reusing the Atlas client's
//!   Digest, transport and typed-failure machinery; one HTTP client per CA bundle.
//! - [`error`]: [`SourceError`] and its one mapping onto the Linked reasons.
//! - [`allow`]: [`AllowedSources`], the cluster admin's list of the source URLs that may be
//!   called at all; the client refuses every other URL before any request.
pub mod allow;
pub mod client;
pub mod error;

pub use allow::AllowedSources;
pub use client::{SourceClient, SourceConfig, SyncStatus, Target, Unlinked};
pub use error::SourceError;
