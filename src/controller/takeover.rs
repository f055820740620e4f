//! Taking over another process's interrupted issue.
//!
//! `status.inFlight` names the attempt that wrote it. When that attempt is not one of this
//! process's (a former leader's, or this pod's predecessor's), its DELETE or POST may still be
//! on its way to Atlas: sent just before that process lost the Lease or died, and acted on
//! late. Revoking and reissuing at once would let such a request land after ours (a late DELETE
//! revokes the new token, which then sits in a Ready LinkToken; a late POST leaves a second
//! live link). So this process waits out that process's request timeout, plus a margin, before
//! it calls Atlas for that LinkToken, counted from its *own* first sight of the marker on its
//! monotonic clock: no remote timestamp and no clock skew enters the decision.
//!
//! The memory is per LinkToken and in memory only; a restart forgets and waits again, which is
//! the safe direction. The decision itself ([`remaining`]) is pure and feeds
//! [`decide`](super::decide::decide).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;

use crate::api::LinkToken;

/// Added to the request timeout: the time a request needs to reach Atlas once its timer has
/// started is not part of the timeout, and scheduling is not instant.
pub const MARGIN: Duration = Duration::from_secs(2);

/// How long another process's marker is left alone: a request it sent under the same
/// `--atlas-request-timeout` has been answered or given up on by then.
pub fn wait_for(request_timeout: Duration) -> Duration {
    request_timeout.saturating_add(MARGIN)
}

/// Who wrote the in-flight marker, as this process knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerOrigin {
    /// An attempt of this process: its requests were awaited (or cancelled) before this.
    Own,
    /// Another process; this process first saw the marker this long ago.
    Foreign { seen_for: Duration },
}

/// Time left before Atlas may be called over this marker; None: go ahead.
pub fn remaining(origin: Option<MarkerOrigin>, wait: Duration) -> Option<Duration> {
    match origin {
        Some(MarkerOrigin::Foreign { seen_for }) if seen_for < wait => Some(wait - seen_for),
        _ => None,
    }
}

/// Per LinkToken: the marker attempt this process last wrote or saw.
#[derive(Debug, Default)]
pub struct Markers {
    seen: Mutex<HashMap<ObjectRef<LinkToken>, Seen>>,
}

#[derive(Debug)]
struct Seen {
    attempt_id: Option<String>,
    own: bool,
    first: Instant,
}

impl Markers {
    /// This process is about to write a marker for `attempt_id`.
    pub fn own(&self, key: &ObjectRef<LinkToken>, attempt_id: &str) {
        self.lock().insert(
            key.clone(),
            Seen {
                attempt_id: Some(attempt_id.to_string()),
                own: true,
                first: Instant::now(),
            },
        );
    }

    /// The origin of the marker with `attempt_id`; the first sight of a marker this process
    /// did not write starts its wait.
    pub fn origin(&self, key: &ObjectRef<LinkToken>, attempt_id: Option<&str>) -> MarkerOrigin {
        let mut seen = self.lock();
        match seen.get(key) {
            Some(s) if s.attempt_id.as_deref() == attempt_id => {
                if s.own {
                    MarkerOrigin::Own
                } else {
                    MarkerOrigin::Foreign {
                        seen_for: s.first.elapsed(),
                    }
                }
            }
            _ => {
                seen.insert(
                    key.clone(),
                    Seen {
                        attempt_id: attempt_id.map(str::to_string),
                        own: false,
                        first: Instant::now(),
                    },
                );
                MarkerOrigin::Foreign {
                    seen_for: Duration::ZERO,
                }
            }
        }
    }

    pub fn forget(&self, key: &ObjectRef<LinkToken>) {
        self.lock().remove(key);
    }

    pub fn retain(&self, keep: impl Fn(&ObjectRef<LinkToken>) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<LinkToken>, Seen>> {
        // Single inserts and removes: a poisoned lock is still consistent.
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(32);

    #[test]
    fn only_a_foreign_marker_younger_than_the_wait_holds_atlas_calls() {
        let s = Duration::from_secs;
        let table: [(Option<MarkerOrigin>, Option<Duration>); 6] = [
            // No marker, or one of this process's own attempts: no wait.
            (None, None),
            (Some(MarkerOrigin::Own), None),
            // Another process's: the whole wait from first sight, then what is left of it.
            (Some(MarkerOrigin::Foreign { seen_for: s(0) }), Some(WAIT)),
            (Some(MarkerOrigin::Foreign { seen_for: s(30) }), Some(s(2))),
            // Waited out (exactly, or long ago).
            (Some(MarkerOrigin::Foreign { seen_for: WAIT }), None),
            (Some(MarkerOrigin::Foreign { seen_for: s(3600) }), None),
        ];
        for (origin, want) in table {
            assert_eq!(remaining(origin, WAIT), want, "{origin:?}");
        }
        assert_eq!(wait_for(s(30)), WAIT);
        assert_eq!(wait_for(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn the_wait_counts_from_this_process_s_first_sight_of_each_attempt() {
        let m = Markers::default();
        let a = ObjectRef::<LinkToken>::new("a").within("ns");
        let b = ObjectRef::<LinkToken>::new("b").within("ns");
        // A marker first seen now is foreign and fresh.
        assert_eq!(
            m.origin(&a, Some("old")),
            MarkerOrigin::Foreign {
                seen_for: Duration::ZERO
            }
        );
        std::thread::sleep(Duration::from_millis(20));
        let MarkerOrigin::Foreign { seen_for } = m.origin(&a, Some("old")) else {
            panic!("still foreign");
        };
        assert!(seen_for >= Duration::from_millis(20), "{seen_for:?}");
        // A different attempt starts its own wait; another LinkToken has its own memory.
        assert_eq!(
            m.origin(&a, Some("newer")),
            MarkerOrigin::Foreign {
                seen_for: Duration::ZERO
            }
        );
        assert!(matches!(m.origin(&b, None), MarkerOrigin::Foreign { .. }));
        // This process's own attempt never waits.
        m.own(&a, "mine");
        assert_eq!(m.origin(&a, Some("mine")), MarkerOrigin::Own);
        m.forget(&a);
        assert!(matches!(
            m.origin(&a, Some("mine")),
            MarkerOrigin::Foreign { .. }
        ));
        m.retain(|k| k.name == "b");
        assert_eq!(m.lock().len(), 1);
    }
}
