//! Bounded cost per peer on the inbound port: open mTLS connections per
//! verified peer identity, and the deadline for a connection's first
//! request.
//!
//! What it is: a counter per SPIFFE ID, taken after the handshake (the
//! identity is known only then) and given back when the connection ends;
//! and the flag the connection loop checks at the first-request deadline,
//! which ends a connection that has not produced a request by then (an
//! HTTP/2 preface trickled one byte at a time, or nothing at all). What it is not: a rate limit, or a
//! limit per source cluster (the inbound port sees a caller's identity,
//! not the intermediate that signed it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use strait_api::SpiffeId;

/// Open connections per peer identity.
#[derive(Debug, Default)]
pub(crate) struct PeerConnections(Mutex<HashMap<SpiffeId, usize>>);

/// One open connection of a peer; gives its place back when dropped.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    all: Arc<PeerConnections>,
    id: SpiffeId,
}

impl PeerConnections {
    /// A place for one more connection of `id`, or `None` when it holds
    /// `max` already.
    pub(crate) fn enter(self: &Arc<Self>, id: &SpiffeId, max: usize) -> Option<PeerSlot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(id.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            all: self.clone(),
            id: id.clone(),
        })
    }

    /// Connections `id` holds now.
    #[cfg(test)]
    fn open(&self, id: &SpiffeId) -> usize {
        let open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        open.get(id).copied().unwrap_or(0)
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.all.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.id);
            }
        }
    }
}

/// Set by the request handler when a connection's first request arrives.
#[derive(Debug, Clone, Default)]
pub(crate) struct FirstRequest(Arc<AtomicBool>);

impl FirstRequest {
    pub(crate) fn seen(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub(crate) fn was_seen(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_holds_at_most_max_connections_and_gets_them_back() {
        let all = Arc::new(PeerConnections::default());
        let a: SpiffeId = "spiffe://strait.local/ns/a/sa/flood".parse().unwrap();
        let b: SpiffeId = "spiffe://strait.local/ns/b/sa/web".parse().unwrap();
        let held: Vec<PeerSlot> = (0..3).filter_map(|_| all.enter(&a, 3)).collect();
        assert_eq!(held.len(), 3);
        assert!(all.enter(&a, 3).is_none(), "a fourth is refused");
        assert!(all.enter(&b, 3).is_some(), "other peers are unaffected");
        drop(held);
        assert_eq!(all.open(&a), 0);
        assert!(all.0.lock().unwrap().is_empty(), "no entry is left behind");
        assert!(all.enter(&a, 3).is_some());
    }
}
