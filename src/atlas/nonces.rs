//! Digest nonce reuse: one cached challenge per credentials and origin, with its nonce count.
//!
//! Reusing the server's nonce with an increasing `nc` makes the steady state one round trip per
//! call instead of two (challenge + answer). When the server stops accepting the nonce (401,
//! usually `stale=true`) the entry is replaced by the fresh challenge from that 401.
//!
//! A nonce belongs to the origin (scheme, host, port) that issued it. The source client serves
//! every LinkToken's source URL from one cache, and a response signed with one server's nonce
//! is a valid Authorization for that server: sent to another host, it could be replayed to the
//! first one. So every entry is keyed by the request URL's origin as well as the credentials,
//! and a nonce is only ever signed for the origin it came from.

use std::collections::HashMap;
use std::sync::Mutex;

use url::{Origin, Url};

use super::credentials::Fingerprint;
use super::digest::Challenge;

/// Entries beyond this are dropped wholesale: a bound on memory when credentials churn, and the
/// cost of losing an entry is one extra round trip.
const MAX_ENTRIES: usize = 4096;

/// Whose nonce: the credentials signing with it and the origin that issued it. The origin comes
/// from the request URL: the URL parser lower-cases the host and fills in the scheme's default
/// port, so `https://h` and `https://h:443` are one origin.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    fp: Fingerprint,
    origin: Origin,
}

impl Key {
    fn new(fp: Fingerprint, url: &Url) -> Key {
        Key {
            fp,
            origin: url.origin(),
        }
    }
}

#[derive(Default)]
pub(crate) struct NonceCache {
    entries: Mutex<HashMap<Key, (Challenge, u32)>>,
}

impl NonceCache {
    /// The challenge cached for these credentials at `url`'s origin and the next nonce count
    /// for it, if any.
    pub(crate) fn next(&self, fp: &Fingerprint, url: &Url) -> Option<(Challenge, u32)> {
        let key = Key::new(*fp, url);
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (ch, nc) = map.get_mut(&key)?;
        match nc.checked_add(1) {
            Some(next) => {
                *nc = next;
                Some((ch.clone(), next))
            }
            None => {
                map.remove(&key);
                None
            }
        }
    }

    /// Caches a fresh challenge that `url`'s origin issued; returns nonce count 1 for its first
    /// use.
    pub(crate) fn store(&self, fp: Fingerprint, url: &Url, ch: Challenge) -> u32 {
        let key = Key::new(fp, url);
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(key, (ch, 1));
        1
    }

    /// Forgets the entry for `url`'s origin if it still holds `nonce` (another call may have
    /// replaced it).
    pub(crate) fn forget(&self, fp: &Fingerprint, url: &Url, nonce: &str) {
        let key = Key::new(*fp, url);
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&key).is_some_and(|(ch, _)| ch.nonce == nonce) {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atlas::credentials::Credentials;
    use crate::atlas::digest::parse_challenge;

    fn challenge(nonce: &str) -> Challenge {
        parse_challenge([format!(r#"Digest realm="r", nonce="{nonce}", qop="auth""#).as_str()])
            .unwrap()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn empty_cache() -> (NonceCache, Fingerprint) {
        (
            NonceCache::default(),
            Credentials::api_key("a", "b").fingerprint(),
        )
    }

    #[test]
    fn counts_up_and_forgets_only_its_own_nonce() {
        let (cache, fp) = empty_cache();
        let u = url("https://om.example/api/x");
        assert!(cache.next(&fp, &u).is_none());
        assert_eq!(cache.store(fp, &u, challenge("n1")), 1);
        assert_eq!(cache.next(&fp, &u).unwrap().1, 2);
        assert_eq!(cache.next(&fp, &u).unwrap().1, 3);
        cache.forget(&fp, &u, "other");
        assert_eq!(cache.next(&fp, &u).unwrap().1, 4);
        cache.forget(&fp, &u, "n1");
        assert!(cache.next(&fp, &u).is_none());
    }

    #[test]
    fn a_nonce_is_only_offered_to_the_origin_that_issued_it() {
        let (cache, fp) = empty_cache();
        let issuer = url("https://om-a.example:8443/api/public/v1.0/orgs/x/liveExport");
        cache.store(fp, &issuer, challenge("from-a"));
        for other in [
            "https://om-b.example:8443/api/public/v1.0/orgs/x/liveExport",
            "https://om-a.example/api/public/v1.0/orgs/x/liveExport",
            "https://om-a.example:9443/api/public/v1.0/orgs/x/liveExport",
            "http://om-a.example:8443/api/public/v1.0/orgs/x/liveExport",
            "https://sub.om-a.example:8443/api",
            "https://127.0.0.1:8443/api",
        ] {
            assert!(cache.next(&fp, &url(other)).is_none(), "{other}");
            // Forgetting at another origin leaves the issuer's entry alone.
            cache.forget(&fp, &url(other), "from-a");
        }
        // The same origin, however the URL spells it: another path, an upper-case host.
        let (ch, nc) = cache
            .next(&fp, &url("https://OM-A.example:8443/api/oauth/token"))
            .unwrap();
        assert_eq!((ch.nonce.as_str(), nc), ("from-a", 2));
        // The other credentials never see it either.
        let other_fp = Credentials::api_key("a", "c").fingerprint();
        assert!(cache.next(&other_fp, &issuer).is_none());
    }

    #[test]
    fn each_origin_keeps_its_own_nonce_and_count() {
        let (cache, fp) = empty_cache();
        let a = url("http://127.0.0.1:8092/x");
        let b = url("http://127.0.0.1:8093/x");
        cache.store(fp, &a, challenge("from-a"));
        cache.store(fp, &b, challenge("from-b"));
        assert_eq!(cache.next(&fp, &a).unwrap().0.nonce, "from-a");
        assert_eq!(cache.next(&fp, &a).unwrap().1, 3);
        let (ch, nc) = cache.next(&fp, &b).unwrap();
        assert_eq!((ch.nonce.as_str(), nc), ("from-b", 2));
        cache.forget(&fp, &a, "from-a");
        assert!(cache.next(&fp, &a).is_none());
        assert_eq!(cache.next(&fp, &b).unwrap().0.nonce, "from-b");
    }

    #[test]
    fn the_default_port_is_the_same_origin() {
        let (cache, fp) = empty_cache();
        cache.store(fp, &url("https://cloud.mongodb.com/api"), challenge("n"));
        assert!(
            cache
                .next(&fp, &url("https://cloud.mongodb.com:443/api/public"))
                .is_some()
        );
    }
}
