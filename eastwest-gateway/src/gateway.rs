//! Starting and stopping a gateway: the public mTLS listener, the admin
//! listener, following the controller for the export table and linked
//! peers, and graceful drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use strait_agent::{Role, Subscription, Target};
use strait_api::places::FirstRequest;
use strait_api::snapshot::Snapshot;
use strait_ca::pipe;
use strait_ca::{CertStore, SharedBundle};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::config::GatewayConfig;
use crate::exports::{ExportError, ExportTable, Index};
use crate::shared::Shared;
use crate::tunnel::{self, Peer, Tap};

/// ALPN of the public listener.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("identity: {0}")]
    Identity(String),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("export table: {0}")]
    Exports(#[from] ExportError),
    #[error("tls: {0}")]
    Tls(#[from] strait_ca::tls::TlsError),
    #[error("controller: {0}")]
    Controller(String),
    #[error("{0}")]
    Tracing(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Entry point: `Gateway::start(config, exports)`.
#[derive(Debug)]
pub struct Gateway;

impl Gateway {
    /// Validates `cfg`, loads the identity, binds both listeners and
    /// starts serving. The returned handle holds the bound addresses.
    pub async fn start(cfg: GatewayConfig, exports: ExportTable) -> Result<Handle, StartError> {
        start(cfg, exports, None).await
    }

    /// Like [`Gateway::start`], with a tap that sees every byte the
    /// gateway moves through a tunnel (tests prove it is only TLS).
    #[cfg(any(test, feature = "testing"))]
    pub async fn start_tapped(
        cfg: GatewayConfig,
        exports: ExportTable,
        tap: Tap,
    ) -> Result<Handle, StartError> {
        start(cfg, exports, Some(tap)).await
    }
}

async fn start(
    cfg: GatewayConfig,
    exports: ExportTable,
    tap: Option<Tap>,
) -> Result<Handle, StartError> {
    cfg.validate()?;
    exports.validate()?;
    let mut tasks = Vec::new();
    let (certs, bundle) = crate::identity::load(&cfg, &mut tasks).await?;
    let acceptor = acceptor(&certs, &bundle)?;
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let public = bind(cfg.listeners.public).await?;
    let admin = bind(cfg.listeners.admin).await?;
    let listener = public.local_addr().unwrap_or(cfg.listeners.public);
    let admin_addr = admin.local_addr().unwrap_or(cfg.listeners.admin);
    let tracer = match &cfg.tracing {
        Some(t) => {
            let attrs = vec![("strait.cluster", cfg.cluster.to_string())];
            let tracer = strait_agent::trace::Tracer::start(t, "strait-gateway", attrs)
                .map_err(|e| StartError::Tracing(e.to_string()))?;
            Some(tracer)
        }
        None => None,
    };
    let mut shared = Shared::new(
        cfg,
        certs,
        bundle,
        vec![listener, admin_addr],
        Index::from(exports),
        tap,
    );
    shared.tracer = tracer;
    let shared = Arc::new(shared);
    let following = follow_controller(&shared, listener)?;
    tasks.push(tokio::spawn(crate::admin::serve(shared.clone(), admin)));
    let accept = tokio::spawn(accept_loop(shared.clone(), public, acceptor));
    tracing::info!(cluster = %shared.cfg.cluster, %listener, admin = %admin_addr, "east-west gateway started");
    Ok(Handle {
        listener,
        admin: admin_addr,
        shared,
        accept: Some(accept),
        tasks,
        following,
    })
}

/// Subscribes to the cluster's controller as its gateway, when the config
/// names one: each snapshot's export table and linked peers become the
/// admission index.
fn follow_controller(
    shared: &Arc<Shared>,
    listener: SocketAddr,
) -> Result<Option<Subscription>, StartError> {
    let cfg = &shared.cfg;
    let Some(c) = &cfg.controller else {
        return Ok(None);
    };
    let cluster = c
        .cluster_or(Some(&cfg.cluster))
        .map_err(StartError::Controller)?;
    let target = Target {
        address: c.address,
        cluster,
        trust_domain: cfg.trust_domain.clone(),
        role: Role::Gateway,
        node_id: format!("gateway {listener}"),
        locality: c.locality.clone(),
        registration: None,
        scope: Vec::new(),
    };
    let (certs, bundle) = (shared.certs.clone(), shared.bundle.clone());
    Ok(Some(strait_agent::follow_owner(
        &target,
        certs,
        bundle,
        shared,
        apply_snapshot,
    )))
}

/// Installs the admission index a controller's snapshot for this gateway
/// asks for (`strait_agent::follow` has validated the snapshot, export
/// table included).
fn apply_snapshot(shared: &Shared, snap: &Snapshot) -> Result<(), String> {
    let table = snap.exports.clone().ok_or_else(|| {
        "the snapshot carries no export table (the controller did not take this subscriber for its gateway)".to_owned()
    })?;
    let index = Index::from(table).with_linked(&snap.clusters);
    let (services, linked) = (index.table().services.len(), snap.clusters.len());
    shared.set_exports(index);
    tracing::info!(
        version = snap.version,
        services,
        linked,
        "export table from the controller applied"
    );
    Ok(())
}

fn acceptor(certs: &CertStore, bundle: &SharedBundle) -> Result<TlsAcceptor, StartError> {
    let cfg = strait_ca::tls::server_config(
        certs,
        bundle,
        strait_ca::tls::ClientAuth::Required,
        &[ALPN_H2],
    )?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// A running gateway. Dropping it stops everything at once, like a killed
/// process; [`Handle::shutdown`] drains first.
pub struct Handle {
    /// The public mTLS listener.
    pub listener: SocketAddr,
    /// The admin listener (`/metrics`, `/ready`, `/live`, `/trust`).
    pub admin: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    /// The config-push subscription, when following a controller.
    following: Option<Subscription>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("listener", &self.listener)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// Replaces the export table. New tunnels follow it at once; open
    /// tunnels are not cut. A bad table is refused and the current stays.
    pub fn apply(&self, table: ExportTable) -> Result<(), ExportError> {
        table.validate()?;
        let services = table.services.len();
        self.shared.set_exports(Index::from(table));
        tracing::info!(services, "export table applied");
        Ok(())
    }

    /// Whether the config-push stream to the controller is up (`None`
    /// without a controller).
    pub fn following(&self) -> Option<bool> {
        self.following.as_ref().map(|s| *s.connected().borrow())
    }

    /// The export table in use.
    pub fn exports(&self) -> ExportTable {
        self.shared.exports().table().clone()
    }

    /// Whether a caller of `cluster` is admitted (linked now, or any
    /// cluster with a fixed table).
    pub fn admits_cluster(&self, cluster: &str) -> bool {
        self.shared.exports().admits(cluster)
    }

    /// Prometheus text of this gateway's metrics.
    pub fn metrics(&self) -> String {
        self.shared.metrics.encode()
    }

    /// The roots the gateway trusts and the root its certificate chains to
    /// now (`/trust` on the admin port).
    pub fn trust(&self) -> strait_ca::trust::TrustReport {
        strait_ca::trust::TrustReport::of(&self.shared.certs, &self.shared.bundle)
    }

    /// Tunnels open now.
    pub fn tunnels_active(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }

    /// Graceful drain: stop accepting connections, ask clients to open no
    /// new streams (HTTP/2 GOAWAY), let open tunnels finish up to the
    /// configured `drain_timeout`, then cut what remains.
    pub async fn shutdown(mut self) {
        self.following = None;
        self.shared.draining.send_replace(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Stops at once: every listener, connection and tunnel (a crash).
    pub fn kill(mut self) {
        self.abort_all();
    }

    fn abort_all(&mut self) {
        self.following = None;
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.abort_all();
    }
}

/// Accepts until drain; then waits for the connections (up to the drain
/// timeout) and aborts the rest. Aborting this task aborts them all.
async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, acceptor: TlsAcceptor) {
    let mut conns = JoinSet::new();
    let drain = until_draining(shared.draining.subscribe());
    tokio::pin!(drain);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    conns.spawn(connection(shared.clone(), acceptor.clone(), tcp, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "gateway accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = &mut drain => break,
        }
    }
    drop(listener);
    let open = conns.len();
    tracing::info!(
        connections = open,
        tunnels = shared.active.load(Ordering::Acquire),
        "draining"
    );
    let deadline = shared.cfg.limits.drain_timeout;
    let all_done = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(deadline, all_done).await.is_err() {
        tracing::warn!(
            tunnels = shared.active.load(Ordering::Acquire),
            "drain deadline passed; cutting the remaining tunnels"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

async fn connection(shared: Arc<Shared>, acceptor: TlsAcceptor, tcp: TcpStream, addr: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let limits = shared.cfg.limits.clone();
    let accept = pipe::tls_accept(&acceptor, tcp);
    let tls = match tokio::time::timeout(limits.handshake_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(peer = %addr, error = %e, "gateway mTLS handshake failed");
            shared.metrics.refuse_connection("tls_handshake");
            return;
        }
        Err(_) => {
            shared.metrics.refuse_connection("handshake_timeout");
            return;
        }
    };
    let certs = tls.get_ref().1.peer_certificates();
    let id = match strait_ca::tls::peer_identity(certs) {
        Ok(id) => id,
        Err(e) => {
            shared.metrics.refuse_connection(e.reason());
            return;
        }
    };
    let peer = Arc::new(Peer {
        cluster: crate::identity::source_cluster(certs),
        id,
        addr,
    });
    tracing::debug!(peer = %peer.id, cluster = %peer.cluster, %addr, "gateway connection");
    // Held (the places given back when this function returns).
    let _places = match shared.connect(&peer) {
        Ok(p) => p,
        Err(limit) => {
            tracing::info!(peer = %peer.id, cluster = %peer.cluster, %addr, limit, "connection limit reached");
            shared.metrics.refuse_connection(limit);
            return;
        }
    };
    shared.metrics.connections_active.inc();
    let first = FirstRequest::default();
    let svc = hyper::service::service_fn({
        let (shared, peer, first) = (shared.clone(), peer.clone(), first.clone());
        move |req| {
            first.seen();
            let (shared, peer) = (shared.clone(), peer.clone());
            async move { Ok::<_, std::convert::Infallible>(tunnel::handle(shared, peer, req).await) }
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256))
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 16)
        .max_send_buf_size(1 << 20)
        .keep_alive_interval(Some(std::time::Duration::from_secs(10)))
        .keep_alive_timeout(std::time::Duration::from_secs(10));
    let conn = builder.serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    let first_deadline = async {
        tokio::time::sleep(limits.first_request_timeout).await;
        if first.was_seen() {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = first_deadline => {
            tracing::debug!(peer = %peer.id, %addr, "no HTTP/2 preface and request within the deadline");
            shared.metrics.refuse_connection("first_request_timeout");
            shared.metrics.connections_active.dec();
            return;
        }
        () = until_draining(shared.draining.subscribe()) => {
            // GOAWAY: no new streams; open tunnels run to their end.
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer.id, error = %e, "gateway connection ended");
    }
    shared.metrics.connections_active.dec();
}

async fn until_draining(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}
