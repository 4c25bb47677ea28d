//! What every connection and tunnel of one gateway shares: config,
//! identity, metrics, the admission index (exports and linked peers), the
//! connection and tunnel places per peer identity and per source cluster,
//! and the drain signal.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};

use strait_api::SpiffeId;
use strait_api::places::{Place, Places};

use strait_ca::{CertStore, SharedBundle};
use tokio::sync::watch;

use crate::config::GatewayConfig;
use crate::exports::Index;
use crate::metrics::Metrics;
use crate::tunnel::{Peer, Tap};

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
    /// Keyed by cluster and identity: the same SPIFFE ID in two clusters
    /// is two peers.
    peer_streams: Arc<Places<(String, SpiffeId)>>,
    cluster_streams: Arc<Places<String>>,
    peer_connections: Arc<Places<(String, SpiffeId)>>,
    cluster_connections: Arc<Places<String>>,
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
            peer_streams: Arc::default(),
            cluster_streams: Arc::default(),
            peer_connections: Arc::default(),
            cluster_connections: Arc::default(),
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

    /// Takes a tunnel place for `peer` and for its source cluster, or
    /// names the limit that is full.
    pub fn acquire(&self, peer: &Peer) -> Result<Permit, &'static str> {
        let l = &self.cfg.limits;
        let p = self
            .peer_streams
            .enter(
                &(peer.cluster.clone(), peer.id.clone()),
                l.max_streams_per_peer,
            )
            .ok_or("peer_stream_limit")?;
        let c = self
            .cluster_streams
            .enter(&peer.cluster, l.max_streams_per_cluster)
            .ok_or("stream_limit")?;
        Ok(Permit {
            _peer: p,
            _cluster: c,
        })
    }

    /// Takes a connection place for `peer` and for its source cluster, or
    /// names the limit that is full.
    pub fn connect(&self, peer: &Peer) -> Result<Permit, &'static str> {
        let l = &self.cfg.limits;
        let p = self
            .peer_connections
            .enter(
                &(peer.cluster.clone(), peer.id.clone()),
                l.max_connections_per_peer,
            )
            .ok_or("peer_connection_limit")?;
        let c = self
            .cluster_connections
            .enter(&peer.cluster, l.max_connections_per_cluster)
            .ok_or("cluster_connection_limit")?;
        Ok(Permit {
            _peer: p,
            _cluster: c,
        })
    }
}

/// A tunnel's or a connection's places (its peer's and its source
/// cluster's), given back on drop.
pub(crate) struct Permit {
    _peer: Place<(String, SpiffeId)>,
    _cluster: Place<String>,
}
