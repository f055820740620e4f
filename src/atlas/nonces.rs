//! Digest nonce reuse: one cached challenge per credentials, with its nonce count.
//!
//! Reusing the server's nonce with an increasing `nc` makes the steady state one round trip per
//! call instead of two (challenge + answer). When the server stops accepting the nonce (401,
//! usually `stale=true`) the entry is replaced by the fresh challenge from that 401.

use std::collections::HashMap;
use std::sync::Mutex;

use super::credentials::Fingerprint;
use super::digest::Challenge;

/// Entries beyond this are dropped wholesale: a bound on memory when credentials churn, and the
/// cost of losing an entry is one extra round trip.
const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub(crate) struct NonceCache {
    entries: Mutex<HashMap<Fingerprint, (Challenge, u32)>>,
}

impl NonceCache {
    /// The cached challenge and the next nonce count for it, if any.
    pub(crate) fn next(&self, fp: &Fingerprint) -> Option<(Challenge, u32)> {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (ch, nc) = map.get_mut(fp)?;
        match nc.checked_add(1) {
            Some(next) => {
                *nc = next;
                Some((ch.clone(), next))
            }
            None => {
                map.remove(fp);
                None
            }
        }
    }

    /// Caches a fresh challenge; returns nonce count 1 for its first use.
    pub(crate) fn store(&self, fp: Fingerprint, ch: Challenge) -> u32 {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES && !map.contains_key(&fp) {
            map.clear();
        }
        map.insert(fp, (ch, 1));
        1
    }

    /// Forgets the entry if it still holds `nonce` (another call may have replaced it).
    pub(crate) fn forget(&self, fp: &Fingerprint, nonce: &str) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(fp).is_some_and(|(ch, _)| ch.nonce == nonce) {
            map.remove(fp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atlas::credentials::Credentials;
    use crate::atlas::digest::parse_challenge;

    #[test]
    fn counts_up_and_forgets_only_its_own_nonce() {
        let cache = NonceCache::default();
        let fp = Credentials::api_key("a", "b").fingerprint();
        assert!(cache.next(&fp).is_none());
        let ch = parse_challenge([r#"Digest realm="r", nonce="n1", qop="auth""#]).unwrap();
        assert_eq!(cache.store(fp, ch), 1);
        assert_eq!(cache.next(&fp).unwrap().1, 2);
        assert_eq!(cache.next(&fp).unwrap().1, 3);
        cache.forget(&fp, "other");
        assert_eq!(cache.next(&fp).unwrap().1, 4);
        cache.forget(&fp, "n1");
        assert!(cache.next(&fp).is_none());
    }
}
