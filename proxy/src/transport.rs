//! Connections between sidecars: mTLS (TLS 1.3, ALPN h2, SPIFFE identity
//! both ways) carrying HTTP/2, pooled per peer endpoint; and dedicated,
//! unpooled mTLS streams (ALPN http/1.1) for HTTP/1.1 upgrades.

use foldhash::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strait_agent::trace::TraceParent;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use strait_api::SpiffeId;
use strait_api::snapshot::Endpoint;
use strait_ca::pipe::{self, Coalesced};
use strait_ca::tls::{self, ExpectedServer};
use strait_ca::{CertStore, SharedBundle};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::h2client::{self, Sender, Settings};
use crate::route::Hop;
use crate::tunnel::GatewayPool;

/// Error type of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type the proxy moves around.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// ALPN of sidecar-to-sidecar connections.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of dedicated sidecar-to-sidecar connections that carry one HTTP/1.1
/// upgrade request (and then the upgraded bytes).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A byte stream to a peer sidecar after mTLS (direct, or inside a
/// gateway tunnel).
pub trait PeerIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PeerIo for T {}
/// A dedicated mTLS stream to a peer sidecar.
pub type PeerStream = Box<dyn PeerIo>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Wraps any body into [`Body`].
/// A body that holds `G` (a stream's places) until it is dropped, so a
/// request counts as open until its response has been sent in full.
#[derive(Debug)]
pub struct Held<B, G> {
    inner: B,
    _guard: G,
}

impl<B, G> Held<B, G> {
    pub fn new(inner: B, guard: G) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B: hyper::body::Body + Unpin, G: Unpin> hyper::body::Body for Held<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Why a peer connection could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("connect to {addr} timed out")]
    Timeout { addr: SocketAddr },
    #[error("connect to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("mTLS with {addr} failed: {}", tls::explain_io(.source))]
    Tls {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP/2 handshake with {addr} failed: {source}")]
    H2 {
        addr: SocketAddr,
        #[source]
        source: BoxError,
    },
    #[error("{addr} did not agree to ALPN {wanted}")]
    Alpn { addr: SocketAddr, wanted: String },
    #[error("tls config: {0}")]
    Config(#[from] tls::TlsError),
    #[error("gateway {gateway} refused CONNECT {target}: {status} {reason}")]
    Refused {
        gateway: SocketAddr,
        target: SocketAddr,
        status: u16,
        reason: String,
    },
}

/// Whose fault a failed connect was: outlier detection counts only the
/// endpoint's own failures, and a failure of the serving cluster's door
/// moves the request to the next cluster at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blame {
    /// The endpoint or its sidecar (refused, timed out, bad TLS, or the
    /// gateway could not dial it).
    Endpoint,
    /// The serving cluster's gateway refused the tunnel for a reason that
    /// is not the endpoint's: not in its table yet, not exported or linked
    /// to this cluster, draining, at its stream limit. `reason` is the
    /// gateway's `strait-error`.
    GatewayRefused { status: u16, reason: String },
    /// No gateway of the endpoint could be reached.
    GatewayDown,
}

impl ConnectError {
    /// Classifies a failed connect to an endpoint reached through
    /// `gateways` (empty for a direct hop).
    pub fn blame(&self, gateways: &[SocketAddr]) -> Blame {
        match self {
            Self::Refused { status, reason, .. } => match reason.as_str() {
                // The gateway tried the endpoint and could not reach it.
                "upstream_connect" | "no_healthy_endpoint" => Blame::Endpoint,
                _ => Blame::GatewayRefused {
                    status: *status,
                    reason: reason.clone(),
                },
            },
            Self::Timeout { addr }
            | Self::Io { addr, .. }
            | Self::Tls { addr, .. }
            | Self::H2 { addr, .. }
                if gateways.contains(addr) =>
            {
                Blame::GatewayDown
            }
            _ => Blame::Endpoint,
        }
    }
}

/// The local identity and trust, shared by listeners and the pool.
#[derive(Debug, Clone)]
pub struct Identity {
    pub certs: CertStore,
    pub bundle: SharedBundle,
}

impl Identity {
    pub fn id(&self) -> Option<SpiffeId> {
        self.certs.identity()
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Sender>>>;
/// A client TLS config per (expected peer identity, ALPN).
type ConfigKey = (SpiffeId, &'static [u8]);

/// HTTP/2-over-mTLS connections to peer sidecars, one per (endpoint,
/// expected identity), either direct or through an east-west gateway
/// ([`GatewayPool`]). Concurrent requests to a peer without a connection
/// wait for one connect instead of racing many.
pub struct PeerPool {
    identity: Identity,
    connect_timeout: Duration,
    slots: Mutex<HashMap<(SocketAddr, SpiffeId), Slot>>,
    configs: Mutex<HashMap<ConfigKey, Arc<ClientConfig>>>,
    gateways: GatewayPool,
}

impl std::fmt::Debug for PeerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerPool").finish_non_exhaustive()
    }
}

impl PeerPool {
    pub fn new(identity: Identity, connect_timeout: Duration) -> Self {
        Self {
            gateways: GatewayPool::new(identity.clone(), connect_timeout),
            identity,
            connect_timeout,
            slots: Mutex::new(HashMap::default()),
            configs: Mutex::new(HashMap::default()),
        }
    }

    /// A ready HTTP/2 sender to `endpoint`'s sidecar along `hop`: direct, or
    /// inside a tunnel through one of the endpoint's gateways (another
    /// replica when the chosen one fails). Returns the hop actually used,
    /// for [`PeerPool::evict_hop`].
    pub async fn get_hop(
        &self,
        endpoint: &Endpoint,
        hop: Hop,
    ) -> Result<(Sender, Hop), ConnectError> {
        let (send, hop, _) = self.get_hop_traced(endpoint, hop, None).await?;
        Ok((send, hop))
    }

    /// [`Self::get_hop`] for a traced request: a gateway tunnel it opens
    /// carries `trace`, and the gateway's tunnel span comes back (see
    /// [`GatewayPool::get`]).
    pub async fn get_hop_traced(
        &self,
        endpoint: &Endpoint,
        hop: Hop,
        trace: Option<TraceParent>,
    ) -> Result<(Sender, Hop, Option<TraceParent>), ConnectError> {
        match hop {
            Hop::Direct(addr) => Ok((self.get(addr, &endpoint.identity).await?, hop, None)),
            Hop::Gateway { gateway, target } => {
                let cfg = self.client_config(&endpoint.identity, ALPN_H2)?;
                // Boxed: tunnel set-up is a large future that the direct
                // path would otherwise carry in every request.
                let get = self.gateways.get(
                    &endpoint.gateways,
                    gateway,
                    target,
                    &endpoint.identity,
                    cfg,
                    trace,
                );
                let ((send, span), gateway) = Box::pin(get).await?;
                Ok((send, Hop::Gateway { gateway, target }, span))
            }
        }
    }

    /// Whether any gateway is down now.
    pub fn any_gateway_down(&self) -> bool {
        self.gateways.any_down()
    }

    /// Whether every gateway in `gateways` is down (see
    /// [`GatewayPool::all_down`]); false for a direct endpoint.
    pub fn gateways_down(&self, gateways: &[SocketAddr]) -> bool {
        self.gateways.all_down(gateways)
    }

    /// Forgets the connection (or tunnel) of `hop` after a failure.
    pub fn evict_hop(&self, hop: Hop, identity: &SpiffeId) {
        match hop {
            Hop::Direct(addr) => self.evict(addr, identity),
            Hop::Gateway { gateway, target } => self.gateways.evict(gateway, target, identity),
        }
    }

    /// A dedicated (unpooled) mTLS stream to `endpoint`'s sidecar along
    /// `hop` that negotiated `alpn`: the caller owns the connection (an
    /// HTTP/1.1 upgrade keeps it for the life of the upgraded bytes).
    /// Returns the hop actually used.
    pub async fn dedicated(
        &self,
        endpoint: &Endpoint,
        hop: Hop,
        alpn: &'static [u8],
    ) -> Result<(PeerStream, Hop), ConnectError> {
        let cfg = self.client_config(&endpoint.identity, alpn)?;
        match hop {
            Hop::Direct(addr) => {
                let tls = tokio::time::timeout(self.connect_timeout, tls_connect(addr, cfg))
                    .await
                    .map_err(|_| ConnectError::Timeout { addr })??;
                check_alpn(tls.get_ref().1.alpn_protocol(), alpn, addr)?;
                Ok((Box::new(tls), hop))
            }
            Hop::Gateway { gateway, target } => {
                let (stream, gateway) = self
                    .gateways
                    .dedicated(&endpoint.gateways, gateway, target, cfg, alpn)
                    .await?;
                Ok((stream, Hop::Gateway { gateway, target }))
            }
        }
    }

    fn client_config(
        &self,
        expected: &SpiffeId,
        alpn: &'static [u8],
    ) -> Result<Arc<ClientConfig>, ConnectError> {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (expected.clone(), alpn);
        if let Some(c) = configs.get(&key) {
            return Ok(c.clone());
        }
        let mut cfg = tls::client_config(
            &self.identity.certs,
            &self.identity.bundle,
            ExpectedServer::Id(expected.clone()),
            &[alpn],
        )?;
        cfg.resumption = rustls::client::Resumption::in_memory_sessions(64);
        let cfg = Arc::new(cfg);
        configs.insert(key, cfg.clone());
        Ok(cfg)
    }

    /// A ready HTTP/2 sender to the sidecar at `addr`, which must present
    /// `identity`.
    pub async fn get(&self, addr: SocketAddr, identity: &SpiffeId) -> Result<Sender, ConnectError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry((addr, identity.clone())).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(send) = guard.as_ref() {
            if !send.is_closed() {
                return Ok(send.clone());
            }
        }
        // Boxed: connecting is rare and its future is large.
        let send = Box::pin(self.connect(addr, identity)).await?;
        *guard = Some(send.clone());
        Ok(send)
    }

    /// Forgets a connection that failed, so the next request reconnects.
    pub fn evict(&self, addr: SocketAddr, identity: &SpiffeId) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.remove(&(addr, identity.clone()));
    }

    async fn connect(&self, addr: SocketAddr, identity: &SpiffeId) -> Result<Sender, ConnectError> {
        let cfg = self.client_config(identity, ALPN_H2)?;
        let timeout = self.connect_timeout;
        let fut = async {
            let tls = tls_connect(addr, cfg).await?;
            handshake_h2(tls, addr).await
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ConnectError::Timeout { addr })?
    }
}

/// TCP and mTLS to the sidecar at `addr` (no timeout of its own).
async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
) -> Result<TlsStream<Coalesced<TcpStream>>, ConnectError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| ConnectError::Io { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("sidecar.strait.invalid").map_err(|e| ConnectError::Tls {
        addr,
        source: std::io::Error::other(e.to_string()),
    })?;
    pipe::tls_connect(cfg.into(), name, tcp)
        .await
        .map_err(|source| ConnectError::Tls { addr, source })
}

/// Fails unless the peer selected `wanted` (a peer without the protocol
/// may also end the handshake itself with `no_application_protocol`).
pub(crate) fn check_alpn(
    got: Option<&[u8]>,
    wanted: &[u8],
    addr: SocketAddr,
) -> Result<(), ConnectError> {
    if got == Some(wanted) {
        return Ok(());
    }
    Err(ConnectError::Alpn {
        addr,
        wanted: String::from_utf8_lossy(wanted).into_owned(),
    })
}

/// The largest HTTP/2 frame a sidecar accepts from a peer sidecar (it is
/// what the peer may send). A bulk stream (TCP, upgrades, large bodies) then
/// carries one frame header per 64 KiB instead of per 16 KiB; with 16 KiB
/// frames each frame plus its header overflowed a TLS record by 9 bytes.
pub(crate) const MAX_FRAME: u32 = 1 << 16;

/// Settings of sidecar-to-sidecar HTTP/2 connections.
const PEER_H2: Settings = Settings {
    stream_window: 1 << 20,
    conn_window: 4 << 20,
    max_frame: MAX_FRAME,
    keep_alive: Some((Duration::from_secs(10), Duration::from_secs(5))),
};

/// The HTTP/2 client handshake with a peer sidecar over any byte stream (a
/// TLS connection, or a TLS session inside a gateway tunnel); the
/// connection task is spawned.
pub async fn handshake_h2<T>(io: T, addr: SocketAddr) -> Result<Sender, ConnectError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    h2client::handshake(io, PEER_H2, "peer connection", addr)
        .await
        .map_err(|source| ConnectError::H2 {
            addr,
            source: source.into(),
        })
}

/// Runs a client connection's task until the connection ends; `what`
/// names it in the debug line that says why it ended.
pub(crate) fn drive<F, E>(conn: F, what: &'static str, addr: SocketAddr)
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "{what} closed");
        }
    });
}
