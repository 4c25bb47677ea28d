//! What every connection and tunnel of one gateway shares: config,
//! identity, metrics, the admission index (exports and linked peers), the
//! per-source-cluster stream slots and the drain signal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, RwLock};

use strait_ca::{CertStore, SharedBundle};
use tokio::sync::watch;

use crate::config::GatewayConfig;
use crate::exports::Index;
use crate::metrics::Metrics;
use crate::tunnel::Tap;

/// What every connection of one gateway shares.
pub(crate) struct Shared {
    pub cfg: GatewayConfig,
    pub certs: CertStore,
    pub bundle: SharedBundle,
    pub metrics: Metrics,
    /// The gateway's own addresses: never a tunnel target.
    pub own: Vec<SocketAddr>,
    exports: RwLock<Arc<Index>>,
    /// Bumped on every new index: open tunnels re-check their admission.
    pub generation: watch::Sender<u64>,
    streams: Mutex<HashMap<String, usize>>,
    pub active: AtomicUsize,
    pub draining: watch::Sender<bool>,
    pub tap: Option<Tap>,
}

impl Shared {
    pub fn new(
        cfg: GatewayConfig,
        certs: CertStore,
        bundle: SharedBundle,
        own: Vec<SocketAddr>,
        index: Index,
        tap: Option<Tap>,
    ) -> Self {
        Self {
            cfg,
            certs,
            bundle,
            metrics: Metrics::new(),
            own,
            exports: RwLock::new(Arc::new(index)),
            generation: watch::channel(0).0,
            streams: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            draining: watch::channel(false).0,
            tap,
        }
    }

    pub fn exports(&self) -> Arc<Index> {
        self.exports
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Swaps in a new admission index; open tunnels that it no longer
    /// admits are closed by their own tasks.
    pub fn set_exports(&self, index: Index) {
        *self.exports.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Takes a stream slot for `cluster`, or `None` at its limit.
    pub fn acquire(self: &Arc<Self>, cluster: &str) -> Option<StreamPermit> {
        let mut m = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(cluster.to_owned()).or_default();
        if *n >= self.cfg.limits.max_streams_per_cluster {
            return None;
        }
        *n += 1;
        Some(StreamPermit {
            shared: self.clone(),
            cluster: cluster.to_owned(),
        })
    }
}

/// A per-source-cluster stream slot, released on drop.
pub(crate) struct StreamPermit {
    shared: Arc<Shared>,
    cluster: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut m = self
            .shared
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.cluster) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.cluster);
            }
        }
    }
}
