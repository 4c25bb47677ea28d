//! Starting and stopping a gateway: the public mTLS listener, the admin
//! listener, the export table, and graceful drain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use strait_ca::pipe;
use strait_ca::{CertStore, SharedBundle};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::config::GatewayConfig;
use crate::exports::{ExportError, ExportTable, Index};
use crate::metrics::Metrics;
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
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What every connection of one gateway shares.
pub(crate) struct Shared {
    pub cfg: GatewayConfig,
    pub certs: CertStore,
    pub bundle: SharedBundle,
    pub metrics: Metrics,
    /// The gateway's own addresses: never a tunnel target.
    pub own: Vec<SocketAddr>,
    exports: RwLock<Arc<Index>>,
    streams: Mutex<HashMap<String, usize>>,
    pub active: AtomicUsize,
    pub draining: watch::Sender<bool>,
    pub tap: Option<Tap>,
}

impl Shared {
    pub fn exports(&self) -> Arc<Index> {
        self.exports
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
    let shared = Arc::new(Shared {
        cfg,
        certs,
        bundle,
        metrics: Metrics::new(),
        own: vec![listener, admin_addr],
        exports: RwLock::new(Arc::new(Index::from(exports))),
        streams: Mutex::new(HashMap::new()),
        active: AtomicUsize::new(0),
        draining: watch::channel(false).0,
        tap,
    });
    tasks.push(tokio::spawn(crate::admin::serve(shared.clone(), admin)));
    let accept = tokio::spawn(accept_loop(shared.clone(), public, acceptor));
    tracing::info!(cluster = %shared.cfg.cluster, %listener, admin = %admin_addr, "east-west gateway started");
    Ok(Handle {
        listener,
        admin: admin_addr,
        shared,
        accept: Some(accept),
        tasks,
    })
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
        *self
            .shared
            .exports
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(Index::from(table));
        tracing::info!(services, "export table applied");
        Ok(())
    }

    /// The export table in use.
    pub fn exports(&self) -> ExportTable {
        self.shared.exports().table().clone()
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
    shared.metrics.connections_active.inc();
    let svc = hyper::service::service_fn({
        let (shared, peer) = (shared.clone(), peer.clone());
        move |req| {
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
    let result = tokio::select! {
        r = conn.as_mut() => r,
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
