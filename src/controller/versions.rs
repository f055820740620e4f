//! What this process knows of each LinkToken's resourceVersion, so that a reconcile reads the
//! object again only when the cache may lag this controller's own writes, and a watch event
//! that only echoes one of them (the finalizer patch, a status write, the token Secret write)
//! starts no reconcile.
//!
//! Why the cache is enough otherwise: the LinkToken reflector's first list is a consistent
//! read (never served from an older watch cache), so it holds every write any earlier process
//! completed; after that the only writes this process can know of and the cache miss are its
//! own, and those are recorded here. A write that failed or whose outcome is unknown (a
//! timeout) leaves the object "unsure": the next reconcile reads it fresh. Every write stays
//! fenced by the version acted on (a stale view fails with 409 before any Atlas call).
//!
//! resourceVersions are opaque strings; here they are compared for equality only. They are
//! kept as numbers when they parse as one (kube-apiserver's are), which keeps the memory per
//! object small; one that does not parse is never recorded, which is the safe default (a
//! fresh read, an echo reconciled).

use std::collections::HashMap;
use std::sync::Mutex;

use kube::runtime::reflector::ObjectRef;

use crate::api::LinkToken;

/// How many of an object's own writes are remembered as echoes: one issue writes the
/// finalizer, the marker, the token Secret and the final status.
const ECHOES: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Last {
    /// The version of this process's last write or fresh read.
    Known(u64),
    /// A write failed or timed out: the object may be at a version nobody recorded.
    Unsure,
}

#[derive(Debug)]
struct Entry {
    last: Option<Last>,
    /// Versions this process produced (ring buffer; 0 = empty slot).
    echoes: [u64; ECHOES],
    next: usize,
    /// A token Secret taken as absent without a read turned out to exist (its create was
    /// refused with 409): read it until a read has seen it.
    read_secret: bool,
}

impl Entry {
    fn new() -> Entry {
        Entry {
            last: None,
            echoes: [0; ECHOES],
            next: 0,
            read_secret: false,
        }
    }

    fn echo(&mut self, rv: u64) {
        self.echoes[self.next] = rv;
        self.next = (self.next + 1) % ECHOES;
    }
}

/// The key as stored: name and namespace only. An `ObjectRef` made from an object also carries
/// its resourceVersion and uid (ignored by its equality and hash), which would be kept for
/// every LinkToken for nothing.
fn bare(key: &ObjectRef<LinkToken>) -> ObjectRef<LinkToken> {
    let k = ObjectRef::new(&key.name);
    match &key.namespace {
        Some(ns) => k.within(ns),
        None => k,
    }
}

fn parse(rv: Option<&str>) -> Option<u64> {
    rv.and_then(|v| v.parse::<u64>().ok()).filter(|v| *v > 0)
}

#[derive(Debug, Default)]
pub struct Versions {
    map: Mutex<HashMap<ObjectRef<LinkToken>, Entry>>,
}

impl Versions {
    /// True when acting on the cached object at `cached_rv` is as good as reading it again:
    /// this process never wrote it, or the cache holds exactly the version it last wrote or read.
    pub fn cache_is_current(&self, key: &ObjectRef<LinkToken>, cached_rv: Option<&str>) -> bool {
        match self.lock().get(key).and_then(|e| e.last) {
            None => true,
            Some(Last::Unsure) => false,
            Some(Last::Known(rv)) => parse(cached_rv) == Some(rv),
        }
    }

    /// A fresh read returned the object at `rv`.
    pub fn read(&self, key: &ObjectRef<LinkToken>, rv: Option<&str>) {
        let last = parse(rv).map_or(Last::Unsure, Last::Known);
        self.lock().entry(bare(key)).or_insert_with(Entry::new).last = Some(last);
    }

    /// A write of the LinkToken (metadata or status) returned `rv`.
    pub fn wrote(&self, key: &ObjectRef<LinkToken>, rv: Option<&str>) {
        let mut m = self.lock();
        let e = m.entry(bare(key)).or_insert_with(Entry::new);
        match parse(rv) {
            Some(v) => {
                e.last = Some(Last::Known(v));
                e.echo(v);
            }
            None => e.last = Some(Last::Unsure),
        }
    }

    /// A write of the LinkToken failed or its outcome is unknown.
    pub fn write_failed(&self, key: &ObjectRef<LinkToken>) {
        self.lock().entry(bare(key)).or_insert_with(Entry::new).last = Some(Last::Unsure);
    }

    /// A write of one of the LinkToken's Secrets returned `rv`: its watch event is an echo.
    pub fn wrote_secret(&self, key: &ObjectRef<LinkToken>, rv: Option<&str>) {
        if let Some(v) = parse(rv) {
            self.lock()
                .entry(bare(key))
                .or_insert_with(Entry::new)
                .echo(v);
        }
    }

    /// True when an object at `rv` (the LinkToken, or one of its Secrets) is what one of this
    /// process's own writes for `key` produced: its watch event brings nothing new.
    pub fn is_echo(&self, key: &ObjectRef<LinkToken>, rv: Option<&str>) -> bool {
        let Some(v) = parse(rv) else {
            return false;
        };
        self.lock().get(key).is_some_and(|e| e.echoes.contains(&v))
    }

    /// A create of the token Secret was refused because one exists (or it changed since it
    /// was read): the next reconcile reads it rather than taking it as absent.
    pub fn secret_exists(&self, key: &ObjectRef<LinkToken>) {
        self.lock()
            .entry(bare(key))
            .or_insert_with(Entry::new)
            .read_secret = true;
    }

    /// True when the token Secret must be read even for a LinkToken that never issued.
    pub fn must_read_secret(&self, key: &ObjectRef<LinkToken>) -> bool {
        self.lock().get(key).is_some_and(|e| e.read_secret)
    }

    /// The token Secret was read.
    pub fn read_secret(&self, key: &ObjectRef<LinkToken>) {
        if let Some(e) = self.lock().get_mut(key) {
            e.read_secret = false;
        }
    }

    pub fn forget(&self, key: &ObjectRef<LinkToken>) {
        self.lock().remove(key);
    }

    pub fn retain(&self, keep: impl Fn(&ObjectRef<LinkToken>) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<LinkToken>, Entry>> {
        // Single inserts and field updates: a poisoned lock is still consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectRef<LinkToken> {
        ObjectRef::new(name).within("ns")
    }

    #[test]
    fn an_object_this_process_never_wrote_is_taken_from_the_cache() {
        let v = Versions::default();
        assert!(v.cache_is_current(&key("a"), Some("10")));
        assert!(v.cache_is_current(&key("a"), None));
    }

    #[test]
    fn after_a_write_only_the_written_version_is_current() {
        let v = Versions::default();
        let k = key("a");
        v.wrote(&k, Some("11"));
        assert!(v.cache_is_current(&k, Some("11")));
        assert!(
            !v.cache_is_current(&k, Some("10")),
            "the cache lags our own write"
        );
        assert!(
            !v.cache_is_current(&k, Some("12")),
            "someone else wrote since"
        );
        v.read(&k, Some("12"));
        assert!(v.cache_is_current(&k, Some("12")));
    }

    #[test]
    fn a_failed_write_makes_the_next_reconcile_read_fresh() {
        let v = Versions::default();
        let k = key("a");
        v.wrote(&k, Some("11"));
        v.write_failed(&k);
        assert!(!v.cache_is_current(&k, Some("11")));
        v.wrote(&k, Some("not-a-number"));
        assert!(
            !v.cache_is_current(&k, Some("not-a-number")),
            "an unparsable version is never trusted"
        );
    }

    #[test]
    fn echoes_of_own_writes_are_recognised_and_others_are_not() {
        let v = Versions::default();
        let k = key("a");
        v.wrote(&k, Some("11"));
        v.wrote_secret(&k, Some("12"));
        v.wrote(&k, Some("13"));
        for rv in ["11", "12", "13"] {
            assert!(v.is_echo(&k, Some(rv)), "{rv}");
        }
        assert!(!v.is_echo(&k, Some("14")), "a user's edit");
        assert!(!v.is_echo(&key("b"), Some("11")), "another object");
        assert!(!v.is_echo(&k, None));
        // Only the last few are kept.
        for rv in 20..20 + ECHOES as u64 {
            v.wrote(&k, Some(&rv.to_string()));
        }
        assert!(!v.is_echo(&k, Some("11")));
        v.forget(&k);
        assert!(!v.is_echo(&k, Some("20")));
        assert!(!v.must_read_secret(&k));
        v.secret_exists(&k);
        assert!(v.must_read_secret(&k));
        v.read_secret(&k);
        assert!(!v.must_read_secret(&k));
        assert!(v.cache_is_current(&k, Some("1")));
    }
}
