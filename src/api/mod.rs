//! The `LinkToken` API (`atlasmigration.io/v1alpha1`): resource types, the CRD generated from
//! them, its field reference, and the condition reasons of the product contract.
//!
//! - [`spec`]: `LinkTokenSpec` and the `LinkToken` custom resource (kube derive).
//! - [`status`]: `LinkTokenStatus` and its parts.
//! - [`schema`]: the schema refinements (CEL rules, list types, limits) the derive cannot express.
//! - [`crd`]: the CRD and its checked-in YAML under `crds/`.
//! - [`reference`]: `docs/reference.md`, rendered from the CRD's schema.
//! - [`reason`]: the Ready reasons.
pub mod crd;
pub mod reason;
pub mod reference;
pub mod schema;
pub mod source;
pub mod spec;
pub mod status;
pub mod time;

pub use reason::Reason;
pub use source::{CaBundleRef, KeyRef, LinkStatus, SourceSpec};
pub use spec::{CredentialsSecretRef, DeletionPolicy, LinkToken, LinkTokenSpec, TokenSecretSpec};
pub use status::{AtlasErrorStatus, InFlight, IssuedFor, LinkTokenStatus};

/// API group of the LinkToken resource.
pub const GROUP: &str = "atlasmigration.io";
/// API version of the LinkToken resource.
pub const VERSION: &str = "v1alpha1";
/// Kind of the LinkToken resource.
pub const KIND: &str = "LinkToken";
/// Label and annotation keys under this prefix belong to the operator.
pub const RESERVED_PREFIX: &str = "atlasmigration.io/";
/// Any change of this annotation's value revokes the token and issues a new one.
pub const ROTATE_ANNOTATION: &str = "atlasmigration.io/rotate";
/// Finalizer that revokes the token in Atlas before the LinkToken goes away.
pub const FINALIZER: &str = "atlasmigration.io/revoke-token";
/// Data key of the token in its Secret when `tokenSecret.key` is not set.
pub const DEFAULT_TOKEN_KEY: &str = "linkToken";

/// Condition type: the Secret holds a token issued for the current spec.
pub const READY: &str = "Ready";
/// Condition type (kstatus): work is in flight.
pub const RECONCILING: &str = "Reconciling";
/// Condition type (kstatus): only a user action can help.
pub const STALLED: &str = "Stalled";
/// Condition type: the source org (spec.source) is linked with the current token and SYNCED.
pub const LINKED: &str = "Linked";
