//! App -> mesh listeners: the explicit HTTP proxy port, and one listener per
//! service VIP:port of the snapshot (rebound as the snapshot changes);
//! connections captured for a service ([`crate::capture`]) join the VIP
//! path.
//! Each connection is sniffed: HTTP/1.1 and HTTP/2 get per-request routing
//! ([`crate::forward`]); anything else is opaque TCP, balanced per
//! connection and carried in an HTTP/2 `CONNECT` stream over mTLS. An
//! HTTP/1.1 request asking for an upgrade goes to [`crate::upgrade`]; an
//! HTTP/2 request carrying `Upgrade` or `Connection` is malformed (RFC 9113
//! 8.2.2) and the HTTP/2 layer resets its stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use strait_api::snapshot::{Protocol, Snapshot};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::h2stream::H2Stream;
use crate::headers::error;
use crate::metrics::{Direction, TcpLabels};
use crate::observe::Observed;
use crate::outlier::Outcome;
use crate::route::{self, Hop};
use crate::router::{Kind, service_key};
use crate::sniff::{self, Detected};
use crate::state::Shared;
use crate::transport::Body;
use strait_agent::trace::TraceParent;

/// What a listener was bound for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// The explicit proxy: the service comes from each request's host.
    Proxy,
    /// A service VIP:port.
    Vip(IpAddr, u16),
    /// The egress on this port, for clients without a sidecar
    /// ([`crate::egress`]): HTTP by the request's host, TCP by the one
    /// service with this port.
    Egress(u16),
}

/// Serves the explicit HTTP proxy port.
pub async fn serve_proxy(shared: Arc<Shared>, listener: TcpListener) {
    accept_loop(shared, listener, Target::Proxy, None).await;
}

/// Who may connect to a listener (the egress admits only its networks;
/// it counts and logs the others itself).
pub(crate) type Admit = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    target: Target,
    admit: Option<Admit>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "outbound accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        if admit.as_ref().is_some_and(|a| !a(peer)) {
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(connection(shared, tcp, target));
    }
}

/// The one service with `port` (the egress's TCP routing); an error when
/// none or several have it.
fn unique_port(snapshot: &strait_api::snapshot::Snapshot, port: u16) -> Result<IpAddr, String> {
    let mut with: Vec<_> = snapshot
        .services
        .iter()
        .filter(|s| s.port(port).is_some())
        .collect();
    match (with.pop(), with.is_empty()) {
        (Some(s), true) => Ok(s.vip),
        (None, _) => Err(format!("no service has port {port}")),
        (Some(_), false) => Err(format!(
            "several services have port {port}: plain TCP cannot tell them apart (HTTP can, by its Host header)"
        )),
    }
}

/// A connection for the service at `vip:port` that did not arrive on its
/// VIP listener (transparent capture, [`crate::capture`]): the VIP path.
pub(crate) async fn serve_vip(shared: Arc<Shared>, tcp: TcpStream, vip: IpAddr, port: u16) {
    connection(shared, tcp, Target::Vip(vip, port)).await;
}

async fn connection(shared: Arc<Shared>, tcp: TcpStream, target: Target) {
    let _ = tcp.set_nodelay(true);
    let declared = match target {
        Target::Vip(vip, port) => route::find_service(&shared.snapshot(), vip, port)
            .ok()
            .map(|(_, p)| p.protocol),
        Target::Egress(port) => {
            let snapshot = shared.snapshot();
            unique_port(&snapshot, port).ok().and_then(|vip| {
                route::find_service(&snapshot, vip, port)
                    .ok()
                    .map(|(_, p)| p.protocol)
            })
        }
        Target::Proxy => None,
    };
    let detected = if declared == Some(Protocol::Tcp) {
        Detected::Tcp
    } else {
        match sniff::detect(&tcp, shared.cfg.limits.sniff_timeout).await {
            Ok(d) => d,
            Err(_) => return,
        }
    };
    match (detected, target) {
        (Detected::Http1 | Detected::Http2, _) => serve_http(shared, tcp, target, detected).await,
        (Detected::Tls | Detected::Tcp, Target::Vip(vip, port)) => {
            tcp_tunnel(shared, tcp, vip, port).await;
        }
        (Detected::Tls | Detected::Tcp, Target::Egress(port)) => {
            match unique_port(&shared.snapshot(), port) {
                Ok(vip) => tcp_tunnel(shared, tcp, vip, port).await,
                Err(e) => {
                    tracing::info!(port, error = %e, "egress: TCP connection refused");
                    shared
                        .metrics
                        .refuse(Direction::outbound, "egress_port_ambiguous");
                }
            }
        }
        (_, Target::Proxy) => shared.metrics.refuse(Direction::outbound, "proxy_not_http"),
    }
}

async fn serve_http(shared: Arc<Shared>, tcp: TcpStream, target: Target, detected: Detected) {
    let limits = shared.cfg.limits.clone();
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        // Boxed: the request future is large, and hyper/tokio move the
        // per-stream future several times (spawn, completion).
        async move { Ok::<_, Infallible>(Box::pin(request(shared, target, req)).await) }
    });
    let io = TokioIo::new(tcp);
    let result = if detected == Detected::Http2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(Some(50))
            .max_local_error_reset_streams(Some(256))
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_headers(limits.max_headers)
            .serve_connection(io, svc)
            .with_upgrades()
            .await
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "outbound connection ended");
    }
}

async fn request(
    shared: Arc<Shared>,
    target: Target,
    mut req: Request<Incoming>,
) -> Response<Body> {
    // Only with the access log or tracing on (nothing is allocated
    // otherwise): the client span's context goes on with the request.
    let (mut observed, trace) =
        Observed::start(&shared, "outbound", req.method(), req.uri(), req.headers());
    if let Some(ctx) = &trace {
        crate::observe::propagate(req.headers_mut(), ctx);
    }
    let resp = resolve_and_send(shared, target, req, &mut observed, trace).await;
    match observed {
        Some(o) => o.finish(resp),
        None => resp,
    }
}

async fn resolve_and_send(
    shared: Arc<Shared>,
    target: Target,
    req: Request<Incoming>,
    observed: &mut Option<Box<Observed>>,
    trace: Option<TraceParent>,
) -> Response<Body> {
    let snapshot = shared.snapshot();
    let resolved = match target {
        Target::Vip(vip, port) => route::find_service(&snapshot, vip, port)
            .map(|(s, p)| (s, p.port))
            .map_err(|e| e.to_string()),
        Target::Proxy => resolve_host(&snapshot, &req, None),
        // A request naming the egress by address (no service name) goes
        // to the one service with this port; a name must resolve itself.
        Target::Egress(port) => resolve_host(&snapshot, &req, Some(port)).or_else(|e| {
            let by_address = crate::headers::host_of(req.uri(), req.headers()).is_some_and(|h| {
                let addr = match h.strip_prefix('[') {
                    Some(v6) => v6.split(']').next().unwrap_or(v6),
                    None => h.rsplit_once(':').map_or(h, |(a, _)| a),
                };
                addr.parse::<IpAddr>().is_ok()
            });
            if !by_address {
                return Err(e);
            }
            let vip = unique_port(&snapshot, port).map_err(|u| format!("{e}; {u}"))?;
            route::find_service(&snapshot, vip, port)
                .map(|(s, p)| (s, p.port))
                .map_err(|r| r.to_string())
        }),
    };
    let (service, port) = match resolved {
        Ok(x) => x,
        Err(msg) => return error(StatusCode::NOT_FOUND, "unknown_service", msg),
    };
    if req.method() == Method::CONNECT {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "connect_unsupported",
            "use the service VIP for TCP",
        );
    }
    if let Some(proto) = crate::headers::upgrade_of(req.version(), req.headers()) {
        // Boxed (like every rare path of a request): the request future
        // stays small, and it is built and moved once per request.
        let up = crate::upgrade::outbound(
            shared.clone(),
            snapshot.clone(),
            service,
            port,
            req,
            proto,
            observed,
        );
        return Box::pin(up).await;
    }
    crate::forward::forward(
        shared.clone(),
        snapshot.clone(),
        service,
        port,
        req,
        observed,
        trace,
    )
    .await
}

/// Finds the service an explicit-proxy request names in its authority:
/// `svc.ns`, `svc.ns.svc.cluster.local`, `svc.ns.svc.clusterset.local`, or a
/// VIP, with an optional port (default: the service's only port, else 80).
/// The service a request's host names; `default_port` when the host has
/// no port (the egress: the port the client connected to).
fn resolve_host<'a>(
    snapshot: &'a Snapshot,
    req: &Request<Incoming>,
    default_port: Option<u16>,
) -> Result<(&'a strait_api::snapshot::Service, u16), String> {
    let host = crate::headers::host_of(req.uri(), req.headers()).ok_or("request names no host")?;
    let (name_part, port) = match host.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            Some(
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in {host:?}"))?,
            ),
        ),
        _ => (host, None),
    };
    let name_part = name_part.to_ascii_lowercase();
    let port = port.or(default_port);
    if let Ok(ip) = name_part.trim_matches(['[', ']']).parse::<IpAddr>() {
        let port = port.unwrap_or(80);
        return route::find_service(snapshot, ip, port)
            .map(|(s, p)| (s, p.port))
            .map_err(|e| e.to_string());
    }
    let base = ["svc.clusterset.local", "svc.cluster.local", "svc"]
        .iter()
        .find_map(|suffix| name_part.strip_suffix(&format!(".{suffix}")))
        .unwrap_or(&name_part);
    let (name, ns) = base
        .split_once('.')
        .ok_or_else(|| format!("{host:?} is not a mesh service name (want name.namespace)"))?;
    let service = snapshot
        .service(ns, name)
        .ok_or_else(|| format!("no service {name}.{ns} in the mesh"))?;
    let port = match (port, service.ports.as_slice()) {
        (Some(p), _) => p,
        (None, [only]) => only.port,
        (None, _) => 80,
    };
    service
        .port(port)
        .map(|p| (service, p.port))
        .ok_or_else(|| format!("service {name}.{ns} has no port {port}"))
}

/// Opaque TCP: pick an endpoint per connection and carry the bytes in a
/// `CONNECT name.ns:port` stream to its sidecar.
async fn tcp_tunnel(shared: Arc<Shared>, mut tcp: TcpStream, vip: IpAddr, port: u16) {
    let snapshot = shared.snapshot();
    let Ok((service, _)) = route::find_service(&snapshot, vip, port) else {
        shared
            .metrics
            .refuse(Direction::outbound, "unknown_service");
        return;
    };
    let svc_name = service_key(service);
    let mut tried = Vec::new();
    // Connect failures go to another endpoint (nothing was sent yet).
    for _ in 0..3 {
        let Ok(picked) = shared
            .router
            .pick(&snapshot, service, &tried, Kind::Connection)
        else {
            break;
        };
        tried.push(picked.index);
        let addr = picked.endpoint.address;
        let mut tunnel =
            match open_connect(&shared, picked.endpoint, picked.hop, &svc_name, port).await {
                Ok(u) => u,
                Err(reason) => {
                    tracing::debug!(endpoint = %addr, reason, "tcp tunnel setup failed");
                    shared.router.finish(
                        service,
                        addr,
                        Kind::Connection,
                        Outcome::ConnectFailure,
                        None,
                    );
                    continue;
                }
            };
        let labels = TcpLabels::new(
            Direction::outbound,
            snapshot.local.cluster.as_str(),
            &svc_name,
            picked.endpoint.cluster.as_str(),
        );
        shared.metrics.tcp_connections.get_or_create(&labels).inc();
        let (sent, received) =
            crate::copy::bidirectional(&mut tcp, &mut tunnel, shared.cfg.limits.idle_timeout).await;
        shared
            .metrics
            .tcp_bytes_sent
            .get_or_create(&labels)
            .inc_by(sent);
        shared
            .metrics
            .tcp_bytes_received
            .get_or_create(&labels)
            .inc_by(received);
        shared
            .router
            .finish(service, addr, Kind::Connection, Outcome::Success, None);
        return;
    }
    shared.metrics.refuse(Direction::outbound, "no_endpoints");
}

/// `CONNECT name.ns:port` to the endpoint's sidecar, over the pooled
/// connection of `hop` (direct, or a tunnel through a gateway).
async fn open_connect(
    shared: &Shared,
    endpoint: &strait_api::snapshot::Endpoint,
    hop: Hop,
    svc_name: &str,
    port: u16,
) -> Result<H2Stream, &'static str> {
    let (mut send, hop) = shared
        .pool
        .get_hop(endpoint, hop)
        .await
        .map_err(|_| "connect")?;
    let uri = format!("{svc_name}:{port}")
        .parse::<http::Uri>()
        .map_err(|_| "bad_request")?;
    match send.connect(uri).await {
        Ok(Some(stream)) => Ok(stream),
        Ok(None) => Err("refused"),
        Err(_) => {
            shared.pool.evict_hop(hop, &endpoint.identity);
            Err("send")
        }
    }
}

/// Keeps one listener per service VIP:port of the current snapshot.
pub async fn manage_vips(shared: Arc<Shared>) {
    let vips = |snapshot: &Snapshot| -> Vec<SocketAddr> {
        snapshot
            .services
            .iter()
            .flat_map(|s| s.ports.iter().map(move |p| SocketAddr::new(s.vip, p.port)))
            .collect()
    };
    keep_listening(
        shared,
        "service VIP",
        vips,
        |a| Target::Vip(a.ip(), a.port()),
        None,
    )
    .await;
}

/// Keeps one listener on every address `wanted` names for the current
/// snapshot, serving each as `target_of` says (admitting whom `admit`
/// does), and closes those no longer wanted; until aborted.
pub(crate) async fn keep_listening(
    shared: Arc<Shared>,
    what: &'static str,
    wanted: impl Fn(&Snapshot) -> Vec<SocketAddr>,
    target_of: impl Fn(SocketAddr) -> Target,
    admit: Option<Admit>,
) {
    let mut rx = shared.subscribe();
    let mut bound: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
    loop {
        let snapshot = rx.borrow_and_update().clone();
        let want = wanted(&snapshot);
        bound.retain(|addr, task| {
            let keep = want.contains(addr);
            if !keep {
                task.abort();
            }
            keep
        });
        for addr in want {
            if bound.contains_key(&addr) {
                continue;
            }
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::debug!(%addr, "listening ({what})");
                    let t = tokio::spawn(accept_loop(
                        shared.clone(),
                        l,
                        target_of(addr),
                        admit.clone(),
                    ));
                    bound.insert(addr, t);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "cannot listen ({what})"),
            }
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
    for (_, t) in bound {
        t.abort();
    }
}
