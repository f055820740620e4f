//! The operator's event publisher against a real API server. Events are published off the
//! reconcile's path (a reconcile does not wait for them); before the process exits it waits,
//! bounded, for those already started, so an event a reconcile decided on (TokenRevoked just
//! before the finalizer went) is not lost to a SIGTERM that came a moment later.
use testkit::require_cluster;

use std::time::Duration;

use kube::Resource;
use kube::runtime::events::{Event, EventType, Reporter};
use linktoken_operator::controller::events::Recorder;
use testkit::e2e::{Env, ORG};

#[tokio::test]
async fn every_background_event_is_published_once_flush_returns() {
    let c = require_cluster!();
    let env = Env::new(c, "events-flush").await;
    // No operator runs: the LinkToken is only what the events refer to.
    let lt = env.linktoken("migration", ORG, &[]).await;
    let recorder = Recorder::new(
        env.client.clone(),
        Reporter {
            controller: "linktoken-operator".into(),
            instance: None,
        },
    );
    // More than the publishes allowed in flight at once, so some still queue behind others
    // when flush is called.
    let n = 12;
    for i in 0..n {
        let ev = Event {
            type_: EventType::Normal,
            reason: "TokenIssued".into(),
            note: Some(format!("event {i}")),
            action: "Reconcile".into(),
            secondary: None,
        };
        recorder.publish_in_background(vec![ev], lt.object_ref(&()), "test/migration".into());
    }
    let unpublished = recorder.flush(Duration::from_secs(30)).await;
    assert_eq!(unpublished, 0, "flush waited for every publish");
    // Read at once, no polling: flush returning is the promise.
    let events = env.events("migration").await;
    let mut notes: Vec<String> = events.into_iter().map(|(_, _, note)| note).collect();
    notes.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("event {i}")).collect();
    want.sort();
    assert_eq!(notes, want, "each event published once, none lost");
}
