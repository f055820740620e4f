//! The Atlas Admin API client for live-migration link tokens. No Kubernetes types in here.
//!
//! - [`credentials`]: the credentials Secret shapes (API key -> Digest, service account ->
//!   OAuth client credentials) and their fingerprint.
//! - [`client`]: [`AtlasClient`], `create_link_token` / `delete_link_token`.
//! - `digest` / `nonces`: Digest challenge parsing, response hashing, nonce reuse.
//! - `oauth`: bearer-token minting and the single-flight token cache.
//! - `transport`: one HTTP round trip with a capped body, observed.
//! - [`gate`]: the leadership check before every Atlas and source request.
//! - [`tls`]: the roots the client trusts (the platform's, plus `--atlas-ca-file`).
//! - [`error`]: [`AtlasError`] and ApiError parsing; [`classify`](mod@classify): errors -> Ready
//!   reasons.
//! - `redact`: secret wrappers whose Debug/Display never show the value; URL user info and
//!   scheme credentials removed from text.
//! - [`remote_text`]: what a server sent, made one bounded, redacted line before anything shows
//!   it.
pub mod classify;
pub mod client;
pub mod config;
pub mod credentials;
mod digest;
pub mod error;
pub mod gate;
pub(crate) mod nonces;
pub(crate) mod oauth;
pub mod observer;
mod redact;
pub mod remote_text;
pub mod tls;
pub(crate) mod transport;

pub use classify::{Classification, Operation, RetryHint, classify};
pub use client::{AtlasClient, DeleteOutcome, MEDIA_TYPE};
pub use config::{AtlasConfig, DEFAULT_BASE_URL, default_user_agent};
pub use credentials::{Credentials, CredentialsError, CredentialsKind, Fingerprint};
pub use error::{ApiFailure, AtlasError, BodyKind, FieldViolation, TransportKind};
pub use gate::RequestGate;
pub use observer::{Endpoint, RequestObserver, RequestRecord};
pub use redact::{LinkTokenValue, redact_url_userinfo};
pub use tls::{TrustError, TrustRoots};
