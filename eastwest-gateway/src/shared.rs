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
    /// Span export, when the config has `tracing:`.
    pub tracer: Option<strait_agent::trace::Tracer>,
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
        let metrics = Metrics::for_cluster(cfg.cluster.as_str());
        Self {
            cfg,
            certs,
            bundle,
            metrics,
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
            tracer: None,
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
        Permit::take(
            peer,
            (
                &self.peer_streams,
                l.max_streams_per_peer,
                "peer_stream_limit",
            ),
            (
                &self.cluster_streams,
                l.max_streams_per_cluster,
                "stream_limit",
            ),
        )
    }

    /// Takes a connection place for `peer` and for its source cluster, or
    /// names the limit that is full.
    pub fn connect(&self, peer: &Peer) -> Result<Permit, &'static str> {
        let l = &self.cfg.limits;
        Permit::take(
            peer,
            (
                &self.peer_connections,
                l.max_connections_per_peer,
                "peer_connection_limit",
            ),
            (
                &self.cluster_connections,
                l.max_connections_per_cluster,
                "cluster_connection_limit",
            ),
        )
    }
}

/// A tunnel's or a connection's places (its peer's and its source
/// cluster's), given back on drop.
pub(crate) struct Permit {
    _peer: Place<(String, SpiffeId)>,
    _cluster: Place<String>,
}

/// One kind of places, its bound, and the refusal when it is full.
type Bounded<'a, K> = (&'a Arc<Places<K>>, usize, &'static str);

impl Permit {
    /// A place of `peer` (its cluster and identity) and of its cluster.
    fn take(
        peer: &Peer,
        (peers, peer_max, peer_full): Bounded<'_, (String, SpiffeId)>,
        (clusters, cluster_max, cluster_full): Bounded<'_, String>,
    ) -> Result<Self, &'static str> {
        let p = peers
            .enter(&(peer.cluster.clone(), peer.id.clone()), peer_max)
            .ok_or(peer_full)?;
        let c = clusters
            .enter(&peer.cluster, cluster_max)
            .ok_or(cluster_full)?;
        Ok(Self {
            _peer: p,
            _cluster: c,
        })
    }
}
