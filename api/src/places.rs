//! Bounded places per key: how many connections (or streams) one peer
//! identity or one source cluster may hold open at once. Shared by the
//! sidecar's inbound port and the east-west gateway, so both count the
//! same way.
//!
//! A place is taken when the key is known (after the mTLS handshake) and
//! given back when its [`Place`] is dropped; keys with no open place are
//! forgotten, so the map is as small as the set of peers connected now.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Open places per key.
#[derive(Debug)]
pub struct Places<K: Hash + Eq + Clone>(Mutex<HashMap<K, usize>>);

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
}

impl<K: Hash + Eq + Clone> Places<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more of `key`, or `None` when it holds `max`.
    pub fn enter(self: &Arc<Self>, key: &K, max: usize) -> Option<Place<K>> {
        let mut open = self.lock();
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= max {
            if *n == 0 {
                open.remove(key);
            }
            return None;
        }
        *n += 1;
        Some(Place {
            all: self.clone(),
            key: key.clone(),
        })
    }

    /// Places `key` holds now.
    pub fn open(&self, key: &K) -> usize {
        self.lock().get(key).copied().unwrap_or(0)
    }

    /// Keys holding at least one place.
    pub fn keys(&self) -> usize {
        self.lock().len()
    }
}

impl<K: Hash + Eq + Clone> Drop for Place<K> {
    fn drop(&mut self) {
        let mut open = self.all.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
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
}
