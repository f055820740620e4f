//! The one check every Atlas and source request passes before it leaves the process.
//!
//! With leader election, only the replica that certainly holds the Lease may act on Atlas or a
//! source: a request sent after a standby may have taken over could land after that standby's
//! own calls (a late POST mints a link it does not know of; a late DELETE revokes its token).
//! The clients ask their gate right before each round trip; a closed gate refuses the call
//! with [`AtlasError::NotLeader`](super::AtlasError::NotLeader) and nothing is sent.

use std::fmt;
use std::sync::Arc;

/// Says whether a request may be sent now. Cheap and in memory: it is asked before every
/// round trip.
pub trait RequestGate: Send + Sync {
    fn may_send(&self) -> bool;
}

/// A client's gate: open when there is none (no leader election).
#[derive(Clone, Default)]
pub(crate) struct Gate(Option<Arc<dyn RequestGate>>);

impl Gate {
    pub(crate) fn new(gate: Arc<dyn RequestGate>) -> Gate {
        Gate(Some(gate))
    }

    pub(crate) fn check(&self) -> Result<(), super::AtlasError> {
        match &self.0 {
            Some(g) if !g.may_send() => Err(super::AtlasError::NotLeader),
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Gate(lease)"
        } else {
            "Gate(open)"
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::atlas::{AtlasClient, AtlasConfig, AtlasError, Credentials, LinkTokenValue};
    use crate::source::{SourceClient, SourceConfig, SourceError, Target};

    const ORG: &str = "0123456789abcdef01234567";

    struct Switch(AtomicBool);
    impl RequestGate for Switch {
        fn may_send(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A closed gate answers before anything is resolved or connected: the refusal comes back
    /// at once and typed, for every Atlas and source call.
    #[tokio::test]
    async fn a_closed_gate_refuses_every_call_unsent() {
        let closed = Arc::new(Switch(AtomicBool::new(false)));
        let creds = Credentials::api_key("pub", "priv");
        let sa = Credentials::service_account("id", "secret");
        let atlas = AtlasClient::new(AtlasConfig::default())
            .expect("client")
            .with_gate(closed.clone());
        for c in [&creds, &sa] {
            let post = atlas.create_link_token(c, ORG, &[]).await;
            assert!(matches!(post, Err(AtlasError::NotLeader)), "{post:?}");
            let delete = atlas.delete_link_token(c, ORG).await;
            assert!(matches!(delete, Err(AtlasError::NotLeader)), "{delete:?}");
        }
        let source = SourceClient::new(SourceConfig::default(), None).with_gate(closed);
        let target = Target {
            url: "https://cloud.mongodb.com",
            ca_pem: None,
        };
        let token = LinkTokenValue::new("dG9rZW4=".to_owned());
        for c in [&creds, &sa] {
            let link = source.link(target, c, ORG, &token).await;
            assert!(matches!(link, Err(SourceError::NotLeader)), "{link:?}");
            let status = source.status(target, c, ORG).await;
            assert!(matches!(status, Err(SourceError::NotLeader)), "{status:?}");
            let unlink = source.unlink(target, c, ORG).await;
            assert!(matches!(unlink, Err(SourceError::NotLeader)), "{unlink:?}");
        }
        assert!(format!("{:?}", Gate::default()).contains("open"));
        assert!(Gate::default().check().is_ok(), "no gate: always open");
    }
}
