//! Errors of a reconcile. Their Display goes to logs and events, so none carries a token or a
//! credential: Atlas errors are already redacted by the client, and Kubernetes errors name
//! objects and fields, never Secret values.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Deleting, and Atlas would not revoke yet: keep the finalizer, look again later.
    #[error("revocation blocked: {message}")]
    RevocationBlocked {
        message: String,
        retry_after: Duration,
    },
    /// Another write reached the LinkToken after this attempt's link marker (or, before the
    /// DELETE of a link the spec left, after this reconcile's read): another actor (or a spec
    /// edit) superseded it, so the source is not called with this attempt's view.
    #[error("the LinkToken changed during this attempt; the source was not called")]
    Superseded,
    /// The reconcile ran past its bound and was cut off, as a crash there would: every
    /// window of the issuing and linking sequence is safe to stop at (markers).
    #[error("the reconcile took longer than {}s and was stopped; it is retried with backoff", .0.as_secs())]
    TimedOut(Duration),
    #[error("LinkToken has no {0}")]
    MissingMetadata(&'static str),
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
}
