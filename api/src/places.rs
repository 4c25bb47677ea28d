//! Bounded places per key: how many connections (or streams) one peer
//! identity or one source cluster may hold open at once. Shared by the
//! sidecar's inbound port and the east-west gateway, so both count the
//! same way.
//!
//! A place is taken when the key is known (after the mTLS handshake) and
//! given back when its [`Place`] is dropped; keys with no open place are
//! forgotten, so the map is as small as the set of peers connected now.
//! Every place of a key also shares one count of that key's open streams
//! ([`Place::stream`]): a request takes a [`Stream`] with two atomic
//! operations and no lookup.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Open places per key, and the key's shared stream count.
#[derive(Debug)]
pub struct Places<K: Hash + Eq + Clone>(Mutex<HashMap<K, (usize, Arc<AtomicUsize>)>>);

impl<K: Hash + Eq + Clone> Default for Places<K> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

/// One open place of a key; given back when dropped.
#[derive(Debug)]
pub struct Place<K: Hash + Eq + Clone> {
    all: Arc<Places<K>>,
    key: K,
    streams: Arc<AtomicUsize>,
}

/// One open stream of a key; given back when dropped. It keeps its key's
/// entry alive: a stream may outlive every place of its key (an upgraded
/// connection's tunnel), and the next place of that key must count it.
#[derive(Debug)]
pub struct Stream<K: Hash + Eq + Clone> {
    all: Arc<Places<K>>,
    key: K,
    streams: Arc<AtomicUsize>,
}

impl<K: Hash + Eq + Clone> Drop for Stream<K> {
    fn drop(&mut self) {
        if self.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all.forget_if_idle(&self.key);
        }
    }
}

impl<K: Hash + Eq + Clone> Place<K> {
    /// One more open stream of this place's key, or `None` when the key
    /// holds `max` (over all its places).
    pub fn stream(&self, max: usize) -> Option<Stream<K>> {
        let before = self.streams.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.streams.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Stream {
            all: self.all.clone(),
            key: self.key.clone(),
            streams: self.streams.clone(),
        })
    }
}

impl<K: Hash + Eq + Clone> Places<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, (usize, Arc<AtomicUsize>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more of `key`, or `None` when it holds `max`.
    pub fn enter(self: &Arc<Self>, key: &K, max: usize) -> Option<Place<K>> {
        let mut open = self.lock();
        let (n, streams) = open.entry(key.clone()).or_default();
        if *n >= max {
            if *n == 0 && streams.load(Ordering::Acquire) == 0 {
                open.remove(key);
            }
            return None;
        }
        *n += 1;
        let streams = streams.clone();
        Some(Place {
            all: self.clone(),
            key: key.clone(),
            streams,
        })
    }

    /// Places `key` holds now.
    pub fn open(&self, key: &K) -> usize {
        self.lock().get(key).map_or(0, |(n, _)| *n)
    }

    /// Keys holding at least one place or stream.
    pub fn keys(&self) -> usize {
        self.lock().len()
    }

    /// Removes `key` when it holds neither places nor streams.
    fn forget_if_idle(&self, key: &K) {
        let mut open = self.lock();
        let idle = open
            .get(key)
            .is_some_and(|(n, s)| *n == 0 && s.load(Ordering::Acquire) == 0);
        if idle {
            open.remove(key);
        }
    }
}

impl<K: Hash + Eq + Clone> Drop for Place<K> {
    fn drop(&mut self) {
        let mut open = self.all.lock();
        if let Some((n, streams)) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 && streams.load(Ordering::Acquire) == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Set when a connection's first request arrives; checked at the
/// first-request deadline, which ends a connection that has not produced
/// one by then (an HTTP/2 preface trickled one byte at a time, or nothing).
#[derive(Debug, Clone, Default)]
pub struct FirstRequest(Arc<AtomicBool>);

impl FirstRequest {
    pub fn seen(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn was_seen(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_max_places_and_gets_them_back() {
        let all = Arc::new(Places::default());
        let (a, b) = ("flood".to_owned(), "web".to_owned());
        let held: Vec<_> = (0..3).filter_map(|_| all.enter(&a, 3)).collect();
        assert_eq!(held.len(), 3);
        assert!(all.enter(&a, 3).is_none(), "a fourth is refused");
        assert!(all.enter(&b, 3).is_some(), "other keys are unaffected");
        assert!(all.enter(&b, 0).is_none(), "max 0 admits none");
        drop(held);
        assert_eq!(all.open(&a), 0);
        assert_eq!(all.keys(), 0, "no entry is left behind");
        assert!(all.enter(&a, 3).is_some());
    }

    #[test]
    fn streams_are_counted_over_all_places_of_a_key() {
        let all = Arc::new(Places::default());
        let (a, b) = ("flood".to_owned(), "web".to_owned());
        let (p1, p2) = (all.enter(&a, 9).unwrap(), all.enter(&a, 9).unwrap());
        let q = all.enter(&b, 9).unwrap();
        let s1 = p1.stream(2).unwrap();
        let s2 = p2.stream(2).unwrap();
        assert!(p1.stream(2).is_none(), "the key holds 2 over both places");
        assert!(p2.stream(2).is_none());
        assert!(q.stream(2).is_some(), "other keys are unaffected");
        drop(s1);
        let s3 = p2.stream(2).expect("a stream given back is usable");
        drop((s2, s3));
        assert!(p1.stream(0).is_none(), "max 0 admits none");
        assert!(p1.stream(1).is_some());
    }

    /// A stream that outlives every place of its key (an upgraded
    /// connection's tunnel) still counts for the key's next place, and the
    /// key is forgotten once both are gone.
    #[test]
    fn a_stream_outliving_its_places_still_counts() {
        let all = Arc::new(Places::default());
        let a = "peer".to_owned();
        let place = all.enter(&a, 9).unwrap();
        let tunnel = place.stream(1).unwrap();
        drop(place);
        assert_eq!(all.keys(), 1, "the stream keeps the key");
        let next = all.enter(&a, 9).unwrap();
        assert!(next.stream(1).is_none(), "the lingering stream counts");
        drop(tunnel);
        assert!(next.stream(1).is_some());
        drop(next);
        assert_eq!(all.keys(), 0, "nothing is left behind");
        let p = all.enter(&a, 9).unwrap();
        let s = p.stream(1).unwrap();
        drop(s);
        drop(p);
        assert_eq!(all.keys(), 0);
    }
}
