//! Mesh -> app: the mTLS listener. Every connection must present a
//! certificate that chains to the trust bundle; requests then pass the local
//! service's authorization policy and go to the app over plain HTTP/1.1,
//! h2c, or (for `CONNECT` streams) raw TCP. The app sees the peer's SPIFFE ID
//! in `x-forwarded-client-cert`, never a client-supplied one.
//!
//! Peers speak HTTP/2 (ALPN `h2`, pooled); a connection that negotiated
//! ALPN `http/1.1` carries one HTTP/1.1 upgrade request
//! ([`crate::upgrade`]) and nothing else. Each peer identity may hold
//! `limits.max_connections_per_peer` connections, each source cluster (the
//! cluster whose intermediate signed the peer's certificate)
//! `limits.max_connections_per_cluster`, and each connection must bring its
//! first request within `limits.first_request_timeout`
//! ([`strait_api::places`]).

mod peer;
mod probe;

pub(crate) use peer::Peer;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use strait_api::places::{FirstRequest, Place, Places, Stream};
use strait_api::snapshot::Protocol;
use strait_api::{ClusterName, SpiffeId};
use strait_ca::pipe;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::authz::{self, HttpRequest};
use crate::headers::{self, error};
use crate::metrics::{Direction, ReasonLabels, TcpLabels};
use crate::observe::{self, CountRequest, Observed, ReqBytes};
use crate::sniff::{self, Detected};
use crate::state::Shared;
use crate::transport::{ALPN_H2, ALPN_HTTP1, Body, Held, boxed};

/// Open connections per peer identity and per source cluster (`None`:
/// a certificate whose issuer names no cluster).
#[derive(Debug, Default)]
struct Open {
    /// Keyed by cluster and identity: the same SPIFFE ID in two clusters
    /// is two peers.
    peers: Arc<Places<(Option<ClusterName>, SpiffeId)>>,
    clusters: Arc<Places<Option<ClusterName>>>,
}

/// Accepts mesh connections until the task is dropped.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let cfg = match strait_ca::tls::server_config(
        &shared.identity.certs,
        &shared.identity.bundle,
        strait_ca::tls::ClientAuth::Required,
        &[ALPN_H2, ALPN_HTTP1],
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "inbound tls config");
            return;
        }
    };
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let open = Arc::new(Open::default());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "inbound accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let open = open.clone();
        tokio::spawn(async move {
            if let Err(reason) = connection(shared.clone(), acceptor, tcp, peer, open).await {
                shared.metrics.refuse(Direction::inbound, reason);
            }
        });
    }
}

async fn connection(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    open: Arc<Open>,
) -> Result<(), &'static str> {
    let _ = tcp.set_nodelay(true);
    let limits = shared.cfg.limits.clone();
    match sniff::detect(&tcp, limits.sniff_timeout).await {
        Ok(Detected::Tls) => {}
        Ok(_) => {
            tracing::debug!(%peer, "plaintext on the mTLS port refused");
            return Err("plaintext");
        }
        Err(_) => return Err("early_eof"),
    }
    let accept = pipe::tls_accept(&acceptor, tcp);
    let tls = match tokio::time::timeout(limits.header_read_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "inbound mTLS handshake failed");
            return Err("tls_handshake");
        }
        Err(_) => return Err("tls_handshake_timeout"),
    };
    let certs = tls.get_ref().1.peer_certificates();
    let cluster = strait_ca::tls::peer_cluster(certs);
    let from = match strait_ca::tls::peer_identity(certs) {
        Ok(id) => Arc::new(Peer::new(&shared, id, cluster.as_ref())),
        Err(_) => return Err("no_peer_identity"),
    };
    // Dropped (the places given back) when the connection and its last
    // stream end.
    let key = (cluster.clone(), from.id.clone());
    let Some(slot) = open.peers.enter(&key, limits.max_connections_per_peer) else {
        tracing::info!(%peer, source = %from.id, max = limits.max_connections_per_peer, "peer connection limit reached");
        return Err("peer_connection_limit");
    };
    let Some(cluster_slot) = open
        .clusters
        .enter(&cluster, limits.max_connections_per_cluster)
    else {
        tracing::info!(%peer, source = %from.id, cluster = ?cluster, max = limits.max_connections_per_cluster, "source cluster connection limit reached");
        return Err("cluster_connection_limit");
    };
    let http1 = tls.get_ref().1.alpn_protocol() == Some(ALPN_HTTP1);
    let first = FirstRequest::default();
    let places = Arc::new((slot, cluster_slot));
    let svc = {
        let shared = shared.clone();
        let first = first.clone();
        service_fn(move |req| {
            first.seen();
            let shared = shared.clone();
            let from = from.clone();
            let streams = streams_of(&shared, &places);
            // Boxed: the request future is large, and hyper/tokio move the
            // per-stream future several times (spawn, completion).
            async move {
                let streams = match streams {
                    Ok(s) => OpenStreams(Arc::new(s)),
                    Err(refused) => {
                        let mut req = req;
                        let refused = match start_observing(&shared, &from, &mut req) {
                            Some(o) => o.finish(*refused),
                            None => *refused,
                        };
                        return Ok::<_, Infallible>(refused.map(|b| Held::new(b, None)));
                    }
                };
                // A tunnel outlives its (empty) response body: it takes
                // its own hold from the request.
                let mut req = req;
                req.extensions_mut().insert(streams.clone());
                // What the access log and the span need, taken only when
                // either is on.
                let observed = start_observing(&shared, &from, &mut req);
                let res = Box::pin(handle(shared, from.clone(), req, http1)).await;
                let res = match observed {
                    Some(o) => o.finish(res),
                    None => res,
                };
                // The places stay taken until the body ends (no second box:
                // hyper serves the held body as it is).
                Ok(res.map(|b| Held::new(b, Some(streams))))
            }
        })
    };
    if http1 {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_headers(limits.max_headers)
            .serve_connection(TokioIo::new(tls), svc)
            .with_upgrades();
        let mut conn = std::pin::pin!(conn);
        let result = tokio::select! {
            r = &mut conn => r,
            () = tokio::time::sleep(limits.first_request_timeout) => {
                if !first.was_seen() {
                    return Err("first_request_timeout");
                }
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "inbound http/1.1 connection ended");
        }
        return Ok(());
    }
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256))
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_frame_size(crate::transport::MAX_FRAME)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .keep_alive_timeout(std::time::Duration::from_secs(10));
    let conn = builder.serve_connection(TokioIo::new(tls), svc);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = &mut conn => r,
        () = tokio::time::sleep(limits.first_request_timeout) => {
            if !first.was_seen() {
                tracing::debug!(%peer, "no HTTP/2 preface and request within the deadline");
                return Err("first_request_timeout");
            }
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "inbound connection ended");
    }
    Ok(())
}

/// One request's streams (of its peer, of its source cluster), held by
/// its response body and by a tunnel's task until both end.
#[derive(Debug, Clone)]
pub(crate) struct OpenStreams(#[allow(dead_code)] Arc<(PeerStream, ClusterStream)>);

type PeerStream = Stream<(Option<ClusterName>, SpiffeId)>;
type ClusterStream = Stream<Option<ClusterName>>;

/// The places of one connection: its peer identity's and its source
/// cluster's.
type ConnPlaces = (
    Place<(Option<ClusterName>, SpiffeId)>,
    Place<Option<ClusterName>>,
);

/// Takes a stream of the connection's peer and of its source cluster for
/// one request (held until its response body ends), or the refusal.
fn streams_of(
    shared: &Shared,
    places: &ConnPlaces,
) -> Result<(PeerStream, ClusterStream), Box<Response<Body>>> {
    let l = &shared.cfg.limits;
    let refuse = |reason: &'static str, whose: &str| {
        shared.metrics.refuse(Direction::inbound, reason);
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            reason,
            format!("{whose} has too many requests open at this workload"),
        ))
    };
    let peer = places
        .0
        .stream(l.max_streams_per_peer)
        .ok_or_else(|| refuse("peer_stream_limit", "this caller"))?;
    let cluster = places
        .1
        .stream(l.max_streams_per_cluster)
        .ok_or_else(|| refuse("cluster_stream_limit", "the caller's cluster"))?;
    Ok((peer, cluster))
}

/// Starts observing an inbound request when the access log or tracing is
/// on: the server span's context goes to the app as `traceparent`; when
/// there is a record (the access log, or a sampled span), the caller and
/// clusters are noted on it and the request body's counter rides in the
/// request's extensions to [`forward_to_app`].
fn start_observing(
    shared: &Shared,
    peer: &Peer,
    req: &mut Request<Incoming>,
) -> Option<Box<Observed>> {
    let (observed, child) =
        Observed::start(shared, "inbound", req.method(), req.uri(), req.headers());
    if let Some(ctx) = &child {
        observe::propagate(req.headers_mut(), ctx);
    }
    let mut o = observed?;
    o.peer = Some(peer.id.clone());
    o.source_cluster = peer.cluster().cloned();
    o.destination_cluster = Some(shared.snapshot().local.cluster.clone());
    if let Some(dst) = req.headers().get(headers::DST_NAME) {
        let dst = dst.to_str().unwrap_or_default();
        o.service = Some(dst.rsplit_once(':').map_or(dst, |(s, _)| s).into());
    }
    if let Some(counter) = o
        .req_bytes
        .counter(hyper::body::Body::is_end_stream(req.body()))
    {
        req.extensions_mut().insert(counter);
    }
    Some(o)
}

/// One request from a peer; `http1` when it came on an ALPN `http/1.1`
/// connection, which may only carry an upgrade.
async fn handle(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    mut req: Request<Incoming>,
    http1: bool,
) -> Response<Body> {
    let started = Instant::now();
    let source = &peer.id;
    if probe::is_controller(source)
        && req
            .headers()
            .get(probe::PROBE_HEADER)
            .is_some_and(|v| v == "app")
    {
        return probe::probe_app(&shared).await;
    }
    let upgrade = headers::upgrade_of(req.version(), req.headers());
    if http1 && upgrade.is_none() {
        shared.metrics.refuse(Direction::inbound, "upgrade_only");
        return error(
            StatusCode::BAD_REQUEST,
            "upgrade_only",
            "HTTP/1.1 between sidecars carries only upgrade requests",
        );
    }
    // The service is `name.ns`, a slice of the destination.
    let dst = destination(&req);
    let Some((service, port)) = dst
        .as_ref()
        .and_then(|(v, port)| Some((v.to_str().ok()?.rsplit_once(':')?.0, *port)))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "no_destination",
            "missing strait-dst",
        );
    };
    let Some(app) = shared.cfg.app_port(port).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_port",
            format!("this workload serves no port {port}"),
        );
    };
    let snapshot = shared.snapshot();
    // Labels of the rare paths (refusals, upgrades), built only there.
    let on = || {
        let local = snapshot.local.cluster.as_str();
        TcpLabels::new(Direction::inbound, peer.source_cluster(), service, local)
    };
    let policies = shared
        .local_service(&snapshot)
        .map(|s| s.authorization.as_slice())
        .unwrap_or(&[]);
    let is_connect = req.method() == Method::CONNECT;
    let authorized = authz::authorize(
        policies,
        &authz::Request {
            port,
            source: Some(source),
            http: (!is_connect).then(|| HttpRequest {
                method: req.method().as_str(),
                path: req.uri().path(),
                host: headers::host_of(req.uri(), req.headers()),
            }),
        },
    );
    let (decision, canonical) = match authorized {
        Ok(a) => (a.decision, a.path),
        Err(e) => {
            shared.metrics.refuse(Direction::inbound, "bad_path");
            tracing::info!(source = %source, service = %service, path = %req.uri().path(), reason = e.reason(), "path refused");
            let msg = format!("{service}: the request path cannot be canonicalized: {e}");
            let resp = error(StatusCode::BAD_REQUEST, e.reason(), msg);
            if let Some(proto) = &upgrade {
                crate::upgrade::count(&shared, &on(), proto, &resp);
            }
            return resp;
        }
    };
    let local = &snapshot.local.cluster;
    if !decision.allowed {
        shared
            .metrics
            .denied
            .get_or_create(&ReasonLabels {
                direction: Direction::inbound,
                reason: decision.reason.label().to_owned(),
            })
            .inc();
        peer.count(&shared.metrics, service, local, 403, None);
        tracing::info!(source = %source, service = %service, path = %req.uri().path(), reason = decision.reason.label(), "denied by policy");
        let resp = error(
            StatusCode::FORBIDDEN,
            "denied",
            format!("{source} may not call {service} on port {port}"),
        );
        if let Some(proto) = &upgrade {
            crate::upgrade::count(&shared, &on(), proto, &resp);
        }
        return resp;
    }
    // The app receives exactly the path that was decided on.
    if let Some(path) = canonical.filter(|p| p != req.uri().path()) {
        let Some(uri) = with_path(req.uri(), &path) else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_uri",
                "request target is invalid",
            );
        };
        *req.uri_mut() = uri;
    }
    if is_connect {
        // Boxed, like the other rare paths: the request future stays small.
        return Box::pin(tunnel_to_app(shared, req, app.target(), on())).await;
    }
    let resp = match &upgrade {
        Some(proto) => {
            let (s, svc) = (shared.clone(), service.to_owned());
            let up = crate::upgrade::inbound(s, &peer, req, &app, svc, proto.clone());
            let resp = Box::pin(up).await;
            crate::upgrade::count(&shared, &on(), proto, &resp);
            resp
        }
        None => forward_to_app(&shared, &peer, req, &app).await,
    };
    let code = resp.status().as_u16();
    peer.count(
        &shared.metrics,
        service,
        local,
        code,
        Some(started.elapsed()),
    );
    resp
}

/// `uri` with its path replaced by `path` (scheme, authority and query
/// kept).
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut b = Uri::builder();
    if let Some(s) = uri.scheme() {
        b = b.scheme(s.clone());
    }
    if let Some(a) = uri.authority() {
        b = b.authority(a.clone());
    }
    b.path_and_query(pq).build().ok()
}

/// What a request names as its destination, `name.ns:port`, and the port:
/// its `strait-dst`, or else the authority of a `CONNECT` (a TCP stream).
fn destination(req: &Request<Incoming>) -> Option<(HeaderValue, u16)> {
    let port = |v: &HeaderValue| Some(headers::parse_dst(v.to_str().ok()?)?.2);
    if let Some(v) = req.headers().get(headers::DST_NAME) {
        if let Some(p) = port(v) {
            return Some((v.clone(), p));
        }
    }
    if req.method() != Method::CONNECT {
        return None;
    }
    let v = HeaderValue::from_str(req.uri().authority()?.as_str()).ok()?;
    let p = port(&v)?;
    Some((v, p))
}

async fn forward_to_app(
    shared: &Shared,
    peer: &Peer,
    req: Request<Incoming>,
    app: &crate::config::AppPort,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let target = app.target();
    headers::strip_hop_by_hop(&mut parts.headers);
    peer.stamp(&mut parts.headers);
    let sent = match app.protocol {
        Protocol::Http2 | Protocol::Grpc => {
            // The peer sent an absolute URI (`http://<authority><path>`);
            // it goes on as it is, so the app sees the authority the
            // caller used, as `Host` on the HTTP/1.1 path.
            if parts.uri.scheme().is_none() || parts.uri.authority().is_none() {
                let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let Ok(uri) = format!("http://{target}{pq}").parse::<Uri>() else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_uri",
                        "request target is invalid",
                    );
                };
                parts.uri = uri;
            }
            parts.version = http::Version::HTTP_2;
            let counted = CountRequest::new(body, parts.extensions.get::<ReqBytes>().cloned());
            let req = Request::from_parts(parts, boxed(headers::StripTrailers::new(counted)));
            shared
                .app_h2
                .send(target, req)
                .await
                .map_err(|e| e.to_string())
        }
        _ => {
            // Origin form on the wire; the authority becomes `Host`.
            let authority = parts.uri.authority().cloned();
            let pq = parts.uri.path_and_query().cloned();
            parts.uri = pq.map_or_else(|| Uri::from_static("/"), Uri::from);
            parts.version = http::Version::HTTP_11;
            if let Some(a) = authority {
                if !parts.headers.contains_key(http::header::HOST) {
                    if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                        parts.headers.insert(http::header::HOST, v);
                    }
                }
            }
            let counted = CountRequest::new(body, parts.extensions.get::<ReqBytes>().cloned());
            let req = Request::from_parts(parts, boxed(headers::StripTrailers::new(counted)));
            shared
                .app_http1
                .send(target, req)
                .await
                .map_err(|e| e.to_string())
        }
    };
    match sent {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            // Only the mesh says why it failed: an app cannot make callers
            // take its answer for a mesh refusal (e.g. `app_unavailable`,
            // which callers retry elsewhere as never processed).
            parts.headers.remove(headers::ERROR_NAME);
            Response::from_parts(parts, body)
        }
        Err(e) => {
            tracing::debug!(app = %target, error = %e, "app request failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "app_unavailable",
                format!("the local app at {target} did not answer"),
            )
        }
    }
}

async fn tunnel_to_app(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    target: SocketAddr,
    labels: TcpLabels,
) -> Response<Body> {
    // Connect first, so a dead app is a 503 rather than an accepted stream
    // that closes at once.
    let Ok(Ok(mut app)) = tokio::time::timeout(
        shared.cfg.limits.connect_timeout,
        TcpStream::connect(target),
    )
    .await
    else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "app_unavailable",
            format!("the local app at {target} refused the connection"),
        );
    };
    let _ = app.set_nodelay(true);
    shared.metrics.tcp_connections.get_or_create(&labels).inc();
    let held = req.extensions().get::<OpenStreams>().cloned();
    tokio::spawn(async move {
        let _held = held;
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "inbound CONNECT upgrade failed");
                return;
            }
        };
        let mut up = TokioIo::new(upgraded);
        let (to_app, from_app) =
            crate::copy::bidirectional(&mut up, &mut app, shared.cfg.limits.idle_timeout).await;
        shared
            .metrics
            .tcp_bytes_sent
            .get_or_create(&labels)
            .inc_by(to_app);
        shared
            .metrics
            .tcp_bytes_received
            .get_or_create(&labels)
            .inc_by(from_app);
    });
    Response::new(crate::transport::empty())
}
