//! `--concurrency` shared fairly between namespaces.
//!
//! A reconcile holds its permit for its whole run, and a source or Atlas that never answers
//! keeps it for up to the request timeout per call. With one first-come queue, a namespace with
//! many LinkTokens pointed at such a host (a tarpit, or just a slow Ops Manager) would hold every
//! permit, and every other namespace's LinkTokens would wait behind it. So:
//! - a free permit goes to the waiting namespace that holds the fewest (ties: who asked first),
//!   so busy namespaces share the permits evenly;
//! - with two permits or more, one namespace never holds them all: one is always left for the
//!   others, so a single namespace cannot make another's reconciles wait for its slow calls.
//!
//! [`next_grant`] is the pure choice; [`FairPermits`] is the queue around it. Work-conserving:
//! a namespace alone may use all but the reserved permit without waiting for anyone.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// How many permits one namespace may hold at once out of `total`: all but one, so another
/// namespace always finds one (a single permit cannot be shared: it is the whole of it).
pub fn per_namespace_cap(total: usize) -> usize {
    if total >= 2 { total - 1 } else { total }
}

/// The waiter to grant a free permit to: among the waiters whose namespace is under its cap,
/// the one whose namespace holds the fewest permits, the earliest of those. `waiting` is in
/// arrival order; `held` counts the permits each namespace holds now.
pub fn next_grant(held: &HashMap<String, usize>, waiting: &[&str], cap: usize) -> Option<usize> {
    let holds = |ns: &str| held.get(ns).copied().unwrap_or(0);
    waiting
        .iter()
        .enumerate()
        .filter(|(_, ns)| holds(ns) < cap)
        .min_by_key(|(i, ns)| (holds(ns), *i))
        .map(|(i, _)| i)
}

struct Waiter {
    namespace: String,
    grant: oneshot::Sender<FairPermit>,
}

struct State {
    held: HashMap<String, usize>,
    in_use: usize,
    waiting: VecDeque<Waiter>,
}

struct Shared {
    total: usize,
    state: Mutex<State>,
}

/// The process's reconcile permits, shared fairly between namespaces. Cheap to clone.
#[derive(Clone)]
pub struct FairPermits {
    shared: Arc<Shared>,
}

/// One reconcile's permit; released on drop (also when the reconcile is cancelled).
pub struct FairPermit {
    shared: Arc<Shared>,
    namespace: String,
}

impl FairPermits {
    pub fn new(total: usize) -> Self {
        FairPermits {
            shared: Arc::new(Shared {
                total: total.max(1),
                state: Mutex::new(State {
                    held: HashMap::new(),
                    in_use: 0,
                    waiting: VecDeque::new(),
                }),
            }),
        }
    }

    /// Waits for a permit for a reconcile in `namespace`.
    pub async fn acquire(&self, namespace: &str) -> FairPermit {
        let rx = {
            let mut st = self.shared.lock();
            let cap = per_namespace_cap(self.shared.total);
            let holds = st.held.get(namespace).copied().unwrap_or(0);
            // Nobody queued before this one (or only namespaces at their cap): take a free
            // permit now.
            let ahead = st
                .waiting
                .iter()
                .any(|w| st.held.get(&w.namespace).copied().unwrap_or(0) < cap);
            if st.in_use < self.shared.total && holds < cap && !ahead {
                return self.shared.grant_locked(&mut st, namespace.to_string());
            }
            let (tx, rx) = oneshot::channel();
            st.waiting.push_back(Waiter {
                namespace: namespace.to_string(),
                grant: tx,
            });
            rx
        };
        match rx.await {
            Ok(permit) => permit,
            // The queue is dropped only with the last handle, and a handle is held here.
            Err(_) => FairPermit {
                shared: self.shared.clone(),
                namespace: String::new(),
            },
        }
    }

    /// Permits held now by `namespace` (for tests and the benchmark).
    pub fn held_by(&self, namespace: &str) -> usize {
        self.shared.lock().held.get(namespace).copied().unwrap_or(0)
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Counters only: a poisoned lock still holds consistent numbers.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn grant_locked(self: &Arc<Self>, st: &mut State, namespace: String) -> FairPermit {
        *st.held.entry(namespace.clone()).or_insert(0) += 1;
        st.in_use += 1;
        FairPermit {
            shared: self.clone(),
            namespace,
        }
    }

    /// A permit came back: hand it (and any other free one) to the next waiters.
    fn release(self: &Arc<Self>, namespace: &str) {
        let mut st = self.lock();
        if let Some(n) = st.held.get_mut(namespace) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.held.remove(namespace);
            }
        }
        st.in_use = st.in_use.saturating_sub(1);
        let cap = per_namespace_cap(self.total);
        while st.in_use < self.total {
            let order: Vec<&str> = st.waiting.iter().map(|w| w.namespace.as_str()).collect();
            let Some(i) = next_grant(&st.held, &order, cap) else {
                break;
            };
            let Some(w) = st.waiting.remove(i) else {
                break;
            };
            if w.grant.is_closed() {
                // Its reconcile was cancelled while waiting.
                continue;
            }
            let permit = self.grant_locked(&mut st, w.namespace);
            // If the waiter went away in between, the permit comes back through its drop,
            // which needs this lock: release it first by deferring the send's failure.
            if let Err(permit) = w.grant.send(permit) {
                drop(st);
                drop(permit);
                return;
            }
        }
    }
}

impl Drop for FairPermit {
    fn drop(&mut self) {
        if !self.namespace.is_empty() {
            self.shared.release(&self.namespace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn held(pairs: &[(&str, usize)]) -> HashMap<String, usize> {
        pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn a_free_permit_goes_to_the_namespace_holding_the_fewest() {
        // (what, held, waiting in arrival order, cap, granted)
        type Row<'a> = (
            &'a str,
            HashMap<String, usize>,
            Vec<&'a str>,
            usize,
            Option<usize>,
        );
        let rows: Vec<Row> = vec![
            ("nobody waits", held(&[("a", 3)]), vec![], 7, None),
            (
                "first come among equals",
                held(&[]),
                vec!["a", "b"],
                7,
                Some(0),
            ),
            (
                "the namespace holding fewer goes first, whoever asked first",
                held(&[("a", 6), ("b", 1)]),
                vec!["a", "a", "a", "b"],
                7,
                Some(3),
            ),
            (
                "a namespace holding none beats one holding some",
                held(&[("a", 1)]),
                vec!["a", "c"],
                7,
                Some(1),
            ),
            (
                "a namespace at its cap waits even when it asked first",
                held(&[("a", 7)]),
                vec!["a", "b"],
                7,
                Some(1),
            ),
            (
                "only capped namespaces wait: nobody",
                held(&[("a", 7)]),
                vec!["a", "a"],
                7,
                None,
            ),
        ];
        for (what, held, waiting, cap, want) in rows {
            assert_eq!(next_grant(&held, &waiting, cap), want, "{what}");
        }
    }

    #[test]
    fn one_namespace_never_holds_every_permit() {
        assert_eq!(per_namespace_cap(8), 7);
        assert_eq!(per_namespace_cap(2), 1);
        assert_eq!(per_namespace_cap(1), 1, "a single permit cannot be shared");
    }

    #[tokio::test]
    async fn a_namespace_that_fills_its_share_leaves_a_permit_for_another() {
        let permits = FairPermits::new(4);
        let mut busy = Vec::new();
        for _ in 0..3 {
            busy.push(permits.acquire("hostile").await);
        }
        // The hostile namespace's fourth reconcile waits (cap 3), and keeps waiting...
        let fourth = {
            let p = permits.clone();
            tokio::spawn(async move { p.acquire("hostile").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!fourth.is_finished(), "capped");
        // ...while another namespace gets the reserved permit at once.
        let other = tokio::time::timeout(Duration::from_millis(200), permits.acquire("tenant"))
            .await
            .expect("the other namespace is not queued behind the hostile one");
        assert_eq!(permits.held_by("tenant"), 1);
        drop(other);
        drop(busy.pop());
        let fourth = tokio::time::timeout(Duration::from_millis(200), fourth)
            .await
            .expect("granted when one comes back")
            .expect("task");
        assert_eq!(permits.held_by("hostile"), 3);
        drop(fourth);
        drop(busy);
        assert_eq!(permits.held_by("hostile"), 0);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_loses_no_permit() {
        let permits = FairPermits::new(2);
        let a = permits.acquire("a").await;
        let b = permits.acquire("b").await;
        let waiting = {
            let p = permits.clone();
            tokio::spawn(async move { p.acquire("c").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(a);
        drop(b);
        // Both permits are free again.
        let x = permits.acquire("x").await;
        let y = tokio::time::timeout(Duration::from_millis(200), permits.acquire("y"))
            .await
            .expect("free");
        assert_eq!(permits.held_by("x") + permits.held_by("y"), 2);
        drop((x, y));
    }
}
