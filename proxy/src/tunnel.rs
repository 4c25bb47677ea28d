//! Cross-cluster hops through east-west gateways.
//!
//! What it is: the client side of gateway tunnels. Per gateway, one outer
//! mTLS HTTP/2 connection (the gateway may be any identity of the trust
//! domain), watched by a fast PING keepalive so a dead gateway is noticed
//! within about two seconds. Per (gateway, endpoint, identity), one
//! `CONNECT <endpoint ip:port>` stream on it, inside which runs the inner,
//! end-to-end mTLS session with the destination sidecar (which must present
//! the endpoint's identity) and an HTTP/2 connection that requests (and TCP
//! `CONNECT`s) multiplex over, like [`crate::transport::PeerPool`] does for
//! direct peers. When a gateway fails, the other replicas of the endpoint
//! are tried before the endpoint counts as failed, and the failed gateway is
//! tried last for a short while. An HTTP/1.1 upgrade gets a dedicated
//! `CONNECT` stream of its own (ALPN http/1.1 inside), not the pooled
//! session.
//!
//! What it is not: no routing decision (that is [`crate::route::hop`]) and
//! no trust in the gateway: it only ever sees the inner TLS records.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use strait_agent::trace::{self, TraceParent};
use strait_api::SpiffeId;
use strait_ca::pipe::{self, Coalesced};
use strait_ca::tls::{self, ExpectedServer};
use tokio::net::TcpStream;

use crate::h2client::Sender;
use crate::transport::{
    ALPN_H2, Body, ConnectError, Identity, PeerStream, check_alpn, drive, empty, handshake_h2,
};

/// PING interval and timeout on gateway connections: a dead gateway is
/// evicted within about their sum.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// How often a gateway that failed is probed (a TCP connect) until it
/// answers again; meanwhile endpoints behind only down gateways are skipped.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// How often a gateway connection asks the gateway whether it is
/// draining (an `OPTIONS` stream; HTTP/2 gives a client no other sign of a
/// GOAWAY while its tunnels stay open).
const DRAIN_CHECK: Duration = Duration::from_millis(250);

type OuterSlot = Arc<tokio::sync::Mutex<Option<Outer>>>;
type InnerSlot = Arc<tokio::sync::Mutex<Option<Inner>>>;
type InnerKey = (SocketAddr, SocketAddr, SpiffeId);
type InnerMap = Arc<Mutex<HashMap<InnerKey, InnerSlot>>>;

/// One outer connection to a gateway, and whether the gateway said it is
/// draining (then no new tunnel or request uses it; open ones finish).
#[derive(Clone)]
struct Outer {
    send: SendRequest<Body>,
    draining: Arc<AtomicBool>,
}

impl Outer {
    fn is_usable(&self) -> bool {
        !self.send.is_closed() && !self.draining.load(Ordering::Acquire)
    }
}

/// An inner session and the outer connection it rides on.
#[derive(Clone)]
struct Inner {
    send: Sender,
    outer: Outer,
}

impl Inner {
    fn is_live(&self) -> bool {
        !self.send.is_closed() && self.outer.is_usable()
    }
}

/// Pooled gateway connections and the tunnels inside them.
pub struct GatewayPool {
    identity: Identity,
    connect_timeout: Duration,
    outer: Mutex<HashMap<SocketAddr, OuterSlot>>,
    inner: InnerMap,
    down: Arc<Mutex<HashMap<SocketAddr, Instant>>>,
    outer_config: Mutex<Option<Arc<ClientConfig>>>,
}

impl std::fmt::Debug for GatewayPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayPool").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GatewayPool {
    pub fn new(identity: Identity, connect_timeout: Duration) -> Self {
        Self {
            identity,
            connect_timeout,
            outer: Mutex::new(HashMap::new()),
            inner: Arc::default(),
            down: Arc::default(),
            outer_config: Mutex::new(None),
        }
    }

    /// A ready HTTP/2 sender to the sidecar at `target` (which must present
    /// `identity`) through `preferred` or, if it fails, another of
    /// `replicas`. Returns the gateway that carried it.
    ///
    /// `trace`, when the request is traced, goes on a `CONNECT` this call
    /// opens as its `traceparent`; the gateway's tunnel span (its
    /// `traceresponse`) comes back with the sender then, to be the parent
    /// of the request that opened the tunnel.
    pub async fn get(
        &self,
        replicas: &[SocketAddr],
        preferred: SocketAddr,
        target: SocketAddr,
        identity: &SpiffeId,
        inner_config: Arc<ClientConfig>,
        trace: Option<TraceParent>,
    ) -> Result<((Sender, Option<TraceParent>), SocketAddr), ConnectError> {
        self.each_replica(replicas, preferred, target, |gateway| {
            self.get_via(gateway, target, identity, inner_config.clone(), trace)
        })
        .await
    }

    /// A dedicated inner mTLS stream (ALPN `alpn`) to the sidecar at
    /// `target` in a `CONNECT` stream of its own, through `preferred` or
    /// another of `replicas`. The outer gateway connection is the pooled
    /// one. Returns the gateway that carried it.
    pub async fn dedicated(
        &self,
        replicas: &[SocketAddr],
        preferred: SocketAddr,
        target: SocketAddr,
        inner_config: Arc<ClientConfig>,
        alpn: &'static [u8],
    ) -> Result<(PeerStream, SocketAddr), ConnectError> {
        self.each_replica(replicas, preferred, target, |gateway| {
            self.dedicated_via(gateway, target, inner_config.clone(), alpn)
        })
        .await
    }

    /// Runs `attempt` on `preferred`, then on the other replicas, until one
    /// succeeds; failed gateways are remembered as down for a while.
    async fn each_replica<T, F, Fut>(
        &self,
        replicas: &[SocketAddr],
        preferred: SocketAddr,
        target: SocketAddr,
        mut attempt: F,
    ) -> Result<(T, SocketAddr), ConnectError>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: std::future::Future<Output = Result<T, ConnectError>>,
    {
        let order = self.order(replicas, preferred);
        let mut last = None;
        for gateway in order {
            match attempt(gateway).await {
                Ok(t) => {
                    lock(&self.down).remove(&gateway);
                    return Ok((t, gateway));
                }
                Err(e) => {
                    tracing::debug!(%gateway, endpoint = %target, error = %e, "gateway tunnel failed");
                    // The gateway answered, or the destination sidecar (not the
                    // gateway) refused the protocol: the gateway is fine.
                    if !matches!(e, ConnectError::Refused { .. } | ConnectError::Alpn { .. }) {
                        self.mark_down(gateway);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ConnectError::Timeout { addr: preferred }))
    }

    /// `preferred` first, then the other replicas; gateways that are down
    /// go last.
    fn order(&self, replicas: &[SocketAddr], preferred: SocketAddr) -> Vec<SocketAddr> {
        let mut order = vec![preferred];
        order.extend(replicas.iter().copied().filter(|g| *g != preferred));
        let down = lock(&self.down);
        // Stable: healthy replicas keep their order, down ones move back.
        order.sort_by_key(|g| down.contains_key(g));
        order
    }

    /// Whether every one of `gateways` failed and has not answered a probe
    /// since (false for an empty list).
    pub fn all_down(&self, gateways: &[SocketAddr]) -> bool {
        if gateways.is_empty() {
            return false;
        }
        let down = lock(&self.down);
        gateways.iter().all(|g| down.contains_key(g))
    }

    /// Whether any gateway is down now (one lock, before walking endpoints
    /// with [`Self::all_down`]).
    pub fn any_down(&self) -> bool {
        !lock(&self.down).is_empty()
    }

    /// Remembers `gateway` as down and probes it until it takes a TCP
    /// connection again (a restarted gateway is used within a probe
    /// interval, not after a fixed timer).
    fn mark_down(&self, gateway: SocketAddr) {
        if lock(&self.down).insert(gateway, Instant::now()).is_some() {
            return;
        }
        tracing::info!(%gateway, "gateway unreachable; probing it until it answers");
        let (down, timeout) = (self.down.clone(), self.connect_timeout);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                if !lock(&down).contains_key(&gateway) {
                    return;
                }
                let probe = tokio::time::timeout(timeout, TcpStream::connect(gateway)).await;
                if matches!(probe, Ok(Ok(_))) {
                    lock(&down).remove(&gateway);
                    tracing::info!(%gateway, "gateway reachable again");
                    return;
                }
            }
        });
    }

    /// Forgets the tunnel to `target` through `gateway`, so the next
    /// request builds a new one.
    pub fn evict(&self, gateway: SocketAddr, target: SocketAddr, identity: &SpiffeId) {
        lock(&self.inner).remove(&(gateway, target, identity.clone()));
    }

    async fn get_via(
        &self,
        gateway: SocketAddr,
        target: SocketAddr,
        identity: &SpiffeId,
        inner_config: Arc<ClientConfig>,
        trace: Option<TraceParent>,
    ) -> Result<(Sender, Option<TraceParent>), ConnectError> {
        let slot = lock(&self.inner)
            .entry((gateway, target, identity.clone()))
            .or_default()
            .clone();
        let mut guard = slot.lock().await;
        if let Some(inner) = guard.as_ref() {
            if inner.is_live() {
                return Ok((inner.send.clone(), None));
            }
        }
        let outer = self.outer(gateway).await?;
        let inner = tokio::time::timeout(
            self.connect_timeout,
            self.open_tunnel(outer.send.clone(), gateway, target, inner_config, trace),
        )
        .await
        .map_err(|_| ConnectError::Timeout { addr: target })?;
        let (send, span) = match inner {
            Ok(s) => s,
            Err(e) => {
                if !outer.is_usable() {
                    lock(&self.outer).remove(&gateway);
                }
                return Err(e);
            }
        };
        *guard = Some(Inner {
            send: send.clone(),
            outer,
        });
        Ok((send, span))
    }

    async fn dedicated_via(
        &self,
        gateway: SocketAddr,
        target: SocketAddr,
        inner_config: Arc<ClientConfig>,
        alpn: &'static [u8],
    ) -> Result<PeerStream, ConnectError> {
        let outer = self.outer(gateway).await?;
        let opened = tokio::time::timeout(
            self.connect_timeout,
            open_inner_tls(outer.send.clone(), gateway, target, inner_config, None),
        )
        .await
        .map_err(|_| ConnectError::Timeout { addr: target })
        .and_then(|r| r);
        match opened {
            Ok((tls, _)) => {
                check_alpn(tls.get_ref().1.alpn_protocol(), alpn, target)?;
                Ok(Box::new(tls))
            }
            Err(e) => {
                if !outer.is_usable() {
                    lock(&self.outer).remove(&gateway);
                }
                Err(e)
            }
        }
    }

    /// `CONNECT target` on the gateway connection, then mTLS and HTTP/2
    /// with the destination sidecar inside the stream.
    async fn open_tunnel(
        &self,
        outer: SendRequest<Body>,
        gateway: SocketAddr,
        target: SocketAddr,
        inner_config: Arc<ClientConfig>,
        trace: Option<TraceParent>,
    ) -> Result<(Sender, Option<TraceParent>), ConnectError> {
        let (tls, span) = open_inner_tls(outer, gateway, target, inner_config, trace).await?;
        Ok((handshake_h2(tls, target).await?, span))
    }

    /// The pooled outer connection to `gateway`, connecting if needed.
    async fn outer(&self, gateway: SocketAddr) -> Result<Outer, ConnectError> {
        let slot = lock(&self.outer).entry(gateway).or_default().clone();
        let mut guard = slot.lock().await;
        if let Some(outer) = guard.as_ref() {
            if outer.is_usable() {
                return Ok(outer.clone());
            }
        }
        *guard = None;
        let send = tokio::time::timeout(self.connect_timeout, self.connect_outer(gateway))
            .await
            .map_err(|_| ConnectError::Timeout { addr: gateway })??;
        let outer = Outer {
            send,
            draining: Arc::default(),
        };
        watch_drain(outer.clone(), gateway, self.inner.clone());
        *guard = Some(outer.clone());
        Ok(outer)
    }

    fn outer_config(&self) -> Result<Arc<ClientConfig>, ConnectError> {
        let mut g = lock(&self.outer_config);
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let mut cfg = tls::client_config(
            &self.identity.certs,
            &self.identity.bundle,
            ExpectedServer::AnyInTrustDomain,
            &[ALPN_H2],
        )?;
        cfg.resumption = rustls::client::Resumption::in_memory_sessions(16);
        let cfg = Arc::new(cfg);
        *g = Some(cfg.clone());
        Ok(cfg)
    }

    async fn connect_outer(&self, gateway: SocketAddr) -> Result<SendRequest<Body>, ConnectError> {
        let cfg = self.outer_config()?;
        let tcp = TcpStream::connect(gateway)
            .await
            .map_err(|source| ConnectError::Io {
                addr: gateway,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let name =
            ServerName::try_from("gateway.strait.invalid").map_err(|e| ConnectError::Tls {
                addr: gateway,
                source: std::io::Error::other(e.to_string()),
            })?;
        let tls = pipe::tls_connect(cfg.into(), name, tcp)
            .await
            .map_err(|source| ConnectError::Tls {
                addr: gateway,
                source,
            })?;
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .max_frame_size(1 << 16)
            .max_send_buf_size(1 << 20)
            .keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| ConnectError::H2 {
                addr: gateway,
                source: source.into(),
            })?;
        drive(conn, "gateway connection", gateway);
        tracing::debug!(%gateway, "gateway connection open");
        Ok(send)
    }
}

/// Asks the gateway every [`DRAIN_CHECK`] whether it drains (`OPTIONS`:
/// 200, or 503 `draining`; a refused stream after its GOAWAY says the
/// same). Once it does, the connection takes no new tunnel, and its tunnels
/// leave the pool: requests in flight on them finish, new ones go
/// elsewhere, and the tunnels close when their last request is done, so
/// the gateway can exit long before its drain deadline.
fn watch_drain(outer: Outer, gateway: SocketAddr, inner: InnerMap) {
    tokio::spawn(async move {
        let mut send = outer.send.clone();
        loop {
            tokio::time::sleep(DRAIN_CHECK).await;
            if send.is_closed() {
                break;
            }
            let req = Request::builder()
                .method(Method::OPTIONS)
                .uri(format!("http://{gateway}/"))
                .body(empty());
            let Ok(req) = req else { break };
            let draining = match send.ready().await {
                Err(_) => true,
                Ok(()) => match send.send_request(req).await {
                    Ok(resp) => resp.status() == StatusCode::SERVICE_UNAVAILABLE,
                    Err(_) => true,
                },
            };
            if draining {
                tracing::info!(%gateway, "gateway is draining; new tunnels go elsewhere");
                break;
            }
        }
        // Draining or gone: nothing new on this connection, and its
        // tunnels leave the pool, so each closes after its last request.
        outer.draining.store(true, Ordering::Release);
        lock(&inner).retain(|(g, _, _), slot| {
            *g != gateway
                || slot.try_lock().is_ok_and(|s| {
                    s.as_ref()
                        .is_some_and(|i| !Arc::ptr_eq(&i.outer.draining, &outer.draining))
                })
        });
    });
}

/// `CONNECT target` on the gateway connection, then the inner mTLS session
/// with the destination sidecar inside the stream. With `trace`, the
/// `CONNECT` carries it as `traceparent`, and the gateway's
/// `traceresponse` (its tunnel span) is returned.
async fn open_inner_tls(
    mut outer: SendRequest<Body>,
    gateway: SocketAddr,
    target: SocketAddr,
    inner_config: Arc<ClientConfig>,
    trace: Option<TraceParent>,
) -> Result<
    (
        tokio_rustls::client::TlsStream<Coalesced<TokioIo<hyper::upgrade::Upgraded>>>,
        Option<TraceParent>,
    ),
    ConnectError,
> {
    let io_err = |e: String| ConnectError::Io {
        addr: gateway,
        source: std::io::Error::other(e),
    };
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .body(empty())
        .map_err(|e| io_err(e.to_string()))?;
    if let Some(t) = &trace {
        req.headers_mut().insert(trace::TRACEPARENT, t.header());
    }
    let resp = outer
        .send_request(req)
        .await
        .map_err(|source| ConnectError::H2 {
            addr: gateway,
            source: source.into(),
        })?;
    if resp.status() != StatusCode::OK {
        let reason = resp
            .headers()
            .get(crate::headers::ERROR)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        return Err(ConnectError::Refused {
            gateway,
            target,
            status: resp.status().as_u16(),
            reason,
        });
    }
    // The gateway's span, when it traced the tunnel (a gateway without
    // tracing sends none; the inner request then keeps the client span).
    let span = trace.and_then(|_| {
        let v = resp.headers().get(trace::TRACERESPONSE)?;
        TraceParent::parse(v.as_bytes())
    });
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| io_err(e.to_string()))?;
    let name = ServerName::try_from("sidecar.strait.invalid").map_err(|e| io_err(e.to_string()))?;
    let tls = pipe::tls_connect(inner_config.into(), name, TokioIo::new(upgraded))
        .await
        .map_err(|source| ConnectError::Tls {
            addr: target,
            source,
        })?;
    Ok((tls, span))
}
