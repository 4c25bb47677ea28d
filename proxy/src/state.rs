//! What every connection handler of one sidecar shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use strait_api::snapshot::{Service, Snapshot};
use tokio::sync::watch;

use crate::app::{Http1Pool, Http2Conns};
use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::transport::{Identity, PeerPool};

/// Shared state of one running sidecar.
pub struct Shared {
    pub cfg: ProxyConfig,
    pub identity: Identity,
    /// This sidecar's SPIFFE ID (read once: rotation keeps the identity).
    pub own_id: String,
    pub metrics: Metrics,
    pub router: Router,
    pub pool: PeerPool,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// HTTP/1.1 to the local app (pooled keep-alive).
    pub app_http1: Arc<Http1Pool>,
    /// HTTP/2 prior knowledge (h2c) to the local app (gRPC).
    pub app_h2: Http2Conns,
    /// Requests waiting for an upstream (circuit breaking).
    pending: AtomicUsize,
    /// Span export, when the config has `tracing:`.
    pub tracer: Option<strait_agent::trace::Tracer>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(cfg: ProxyConfig, identity: Identity, snapshot: Snapshot) -> Self {
        let app_http1 = Http1Pool::new(cfg.limits.connect_timeout);
        let app_h2 = Http2Conns::new(cfg.limits.connect_timeout);
        let pool = PeerPool::new(identity.clone(), cfg.limits.connect_timeout);
        let metrics = Metrics::new();
        metrics
            .snapshot_version
            .set(i64::try_from(snapshot.version).unwrap_or(i64::MAX));
        let router = Router::with_failover_gauge(metrics.failover_active.clone());
        let own_id = identity.id().map(|i| i.to_string()).unwrap_or_default();
        Self {
            cfg,
            own_id,
            identity,
            metrics,
            router,
            pool,
            snapshot: watch::channel(Arc::new(snapshot)).0,
            app_http1,
            app_h2,
            pending: AtomicUsize::new(0),
            tracer: None,
        }
    }

    /// The snapshot in use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    /// Installs a new snapshot if it is valid; otherwise keeps the current
    /// one and says why.
    pub fn apply(&self, next: Snapshot) -> Result<(), strait_api::snapshot::SnapshotError> {
        if let Err(e) = next.validate() {
            self.metrics.snapshot_rejected.inc();
            tracing::warn!(version = next.version, error = %e, "refused config snapshot; keeping the last good one");
            return Err(e);
        }
        self.router.sync(&next);
        self.metrics
            .snapshot_version
            .set(i64::try_from(next.version).unwrap_or(i64::MAX));
        tracing::info!(
            version = next.version,
            services = next.services.len(),
            "config snapshot applied"
        );
        self.snapshot.send_replace(Arc::new(next));
        Ok(())
    }

    /// The local workload's service (whose policies guard inbound traffic).
    pub fn local_service<'a>(&self, snapshot: &'a Snapshot) -> Option<&'a Service> {
        let (name, ns) = self.cfg.local_service.as_deref()?.split_once('.')?;
        snapshot.service(ns, name)
    }

    /// Takes a pending-request slot, or `None` when the breaker is open.
    pub fn enter_pending(self: &Arc<Self>) -> Option<PendingGuard> {
        let n = self.pending.fetch_add(1, Ordering::AcqRel);
        if n >= self.cfg.limits.max_pending_requests {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(PendingGuard(self.clone()))
    }
}

/// Releases a pending-request slot when dropped.
pub struct PendingGuard(Arc<Shared>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}
