//! HTTP/1.1 upgrades (WebSocket, and any `Connection: upgrade` protocol)
//! through the mesh.
//!
//! What it is: an upgrade request never goes on the pooled HTTP/2
//! connection (HTTP/2 has no `Upgrade`). The outbound sidecar opens a
//! dedicated mTLS connection with ALPN `http/1.1` to the chosen endpoint's
//! sidecar (in a `CONNECT` stream of its own through the gateway when the
//! endpoint is in another cluster) and sends the request there with
//! `Connection: upgrade` and `Upgrade` kept. The inbound sidecar authorizes
//! it like any request (peer identity, port, method, path), replaces the
//! identity headers, and sends it to the app on a new connection. When the
//! app answers `101 Switching Protocols`, both sidecars splice the bytes
//! both ways until each direction has ended (half-close is kept); any other
//! answer is an ordinary response. The route timeout covers connecting and
//! the handshake only, never the upgraded bytes.
//!
//! What it is not: no WebSocket framing is read, and HTTP/2 extended
//! `CONNECT` (RFC 8441) is not offered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use strait_api::ClusterName;
use strait_api::snapshot::{Protocol, Service, Snapshot};
use tokio::net::TcpStream;

use crate::config::AppPort;
use crate::headers::{self, error};
use crate::metrics::{Direction, TcpLabels, UpgradeLabels};
use crate::outlier::Outcome;
use crate::router::{Kind, service_key};
use crate::state::Shared;
use crate::transport::{ALPN_HTTP1, Body, boxed, empty};

/// Endpoints tried when the dedicated connection cannot be made (nothing
/// was sent yet, so another endpoint is safe).
const CONNECT_ATTEMPTS: usize = 3;

/// App -> mesh: forwards the upgrade request `req` (asking for `proto`,
/// already resolved to `service` and `port`) and, on `101`, splices the
/// app's connection with the dedicated peer connection.
pub(crate) async fn outbound(
    shared: Arc<Shared>,
    snapshot: Arc<Snapshot>,
    service: &Service,
    port: u16,
    req: Request<Incoming>,
    proto: HeaderValue,
    observed: &mut Option<Box<crate::observe::Observed>>,
) -> Response<Body> {
    let started = Instant::now();
    let svc_name = service_key(service);
    let (resp, dest_cluster) = handshake(&shared, &snapshot, service, port, req, &proto).await;
    let dest = dest_cluster.as_ref().map_or("", ClusterName::as_str);
    let code = resp.status().as_u16();
    shared.metrics.outbound_request(
        snapshot.local.cluster.as_str(),
        &svc_name,
        dest,
        code,
        started.elapsed(),
    );
    let on = TcpLabels::new(
        Direction::outbound,
        snapshot.local.cluster.as_str(),
        &svc_name,
        dest,
    );
    count(&shared, &on, &proto, &resp);
    if let Some(o) = observed.as_mut() {
        o.service = Some(svc_name.into());
        o.source_cluster = Some(snapshot.local.cluster.clone());
        o.destination_cluster = dest_cluster;
    }
    resp
}

/// Connects, sends the request and answers the app; returns the response
/// and the destination cluster (empty when no endpoint was reached).
async fn handshake(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    service: &Service,
    port: u16,
    mut req: Request<Incoming>,
    proto: &HeaderValue,
) -> (Response<Body>, Option<ClusterName>) {
    let svc_name = service_key(service);
    let Some(_slot) = shared.enter_pending() else {
        shared.metrics.refuse(Direction::outbound, "pending_limit");
        let msg = "too many requests waiting for an upstream";
        return (
            error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", msg),
            None,
        );
    };
    let app_side = hyper::upgrade::on(&mut req);
    let (mut parts, body) = req.into_parts();
    if let Some(why) = headers::smuggling(&parts.headers) {
        shared.metrics.refuse(Direction::outbound, "smuggling");
        return (error(StatusCode::BAD_REQUEST, "bad_framing", why), None);
    }
    if let Err(why) = prepare(&mut parts, &svc_name, port, proto) {
        return (error(StatusCode::BAD_REQUEST, "bad_request", why), None);
    }
    let route = service.route_for(&crate::path::for_routing(parts.uri.path()));
    let deadline = tokio::time::Instant::now() + route.timeout;
    let timed_out = || {
        let msg = format!(
            "{svc_name} did not answer the upgrade within {:?}",
            route.timeout
        );
        error(StatusCode::GATEWAY_TIMEOUT, "timeout", msg)
    };
    let mut body = Some(boxed(body));
    let mut tried = Vec::new();
    for _ in 0..CONNECT_ATTEMPTS {
        let picked = match shared
            .router
            .pick(snapshot, service, &tried, Kind::Connection)
        {
            Ok(p) => p,
            Err(e) => {
                let resp = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_endpoints",
                    e.to_string(),
                );
                return (resp, None);
            }
        };
        tried.push(picked.index);
        let cluster = Some(picked.endpoint.cluster.clone());
        let addr = picked.endpoint.address;
        let dedicated = shared
            .pool
            .dedicated(picked.endpoint, picked.hop, ALPN_HTTP1);
        let stream = match tokio::time::timeout_at(deadline, dedicated).await {
            Ok(Ok((stream, _))) => stream,
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %addr, hop = ?picked.hop, error = %e, "upgrade connect failed");
                finish(shared, service, addr, Outcome::ConnectFailure);
                continue;
            }
            Err(_) => {
                finish(shared, service, addr, Outcome::ConnectFailure);
                return (timed_out(), cluster);
            }
        };
        let mut up = Request::from_parts(parts, body.take().unwrap_or_else(empty));
        *up.extensions_mut() = http::Extensions::new();
        let resp = match tokio::time::timeout_at(deadline, send(TokioIo::new(stream), up)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %addr, error = %e, "upgrade request failed");
                finish(shared, service, addr, Outcome::ConnectFailure);
                let msg = format!("{svc_name}: the upgrade request failed: {e}");
                let resp = error(StatusCode::SERVICE_UNAVAILABLE, "upstream_failure", msg);
                return (resp, cluster);
            }
            Err(_) => {
                finish(shared, service, addr, Outcome::ServerError);
                return (timed_out(), cluster);
            }
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let outcome = Outcome::from_status(resp.status().as_u16());
            finish(shared, service, addr, outcome);
            return (ordinary(resp), cluster);
        }
        let labels = TcpLabels::new(
            Direction::outbound,
            snapshot.local.cluster.as_str(),
            &svc_name,
            picked.endpoint.cluster.as_str(),
        );
        let (shared_c, service_c) = (shared.clone(), service.clone());
        let done = move || finish(&shared_c, &service_c, addr, Outcome::Success);
        let resp = switch(shared.clone(), resp, app_side, proto, labels, done);
        return (resp, cluster);
    }
    let msg = format!("{svc_name}: no endpoint accepted a connection for the upgrade");
    let resp = error(StatusCode::SERVICE_UNAVAILABLE, "upstream_failure", msg);
    (resp, None)
}

/// The request as sent between sidecars: HTTP/1.1 origin form with `Host`,
/// no spoofable or other hop-by-hop headers, `strait-dst` set, and
/// `Connection: upgrade` plus `Upgrade` kept.
fn prepare(
    parts: &mut Parts,
    svc_name: &str,
    port: u16,
    proto: &HeaderValue,
) -> Result<(), &'static str> {
    let authority = headers::host_of(&parts.uri, &parts.headers)
        .map_or_else(|| format!("{svc_name}:{port}"), str::to_owned);
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = pq.parse::<Uri>().map_err(|_| "invalid request target")?;
    parts.version = http::Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_spoofable(&mut parts.headers);
    let host = HeaderValue::from_str(&authority).map_err(|_| "invalid host")?;
    parts.headers.insert(header::HOST, host);
    let dst =
        HeaderValue::from_str(&format!("{svc_name}:{port}")).map_err(|_| "invalid service name")?;
    parts.headers.insert(headers::DST_NAME, dst);
    headers::set_upgrade(&mut parts.headers, proto.clone());
    Ok(())
}

/// Mesh -> app: sends the authorized upgrade request to the app on a new
/// connection, with the peer's identity in `x-forwarded-client-cert`, and,
/// on `101`, splices the peer's connection with the app's.
pub(crate) async fn inbound(
    shared: Arc<Shared>,
    peer: &crate::inbound::Peer,
    mut req: Request<Incoming>,
    app: &AppPort,
    service: String,
    proto: HeaderValue,
) -> Response<Body> {
    if matches!(app.protocol, Protocol::Http2 | Protocol::Grpc) {
        let msg = format!(
            "port {} of this workload speaks HTTP/2, which has no Upgrade",
            app.port
        );
        return error(StatusCode::NOT_IMPLEMENTED, "upgrade_unsupported", msg);
    }
    // The request's stream places, held until the upgraded bytes end.
    let held = req
        .extensions()
        .get::<crate::inbound::OpenStreams>()
        .cloned();
    let peer_side = hyper::upgrade::on(&mut req);
    let (mut parts, body) = req.into_parts();
    let target = app.target();
    let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let Ok(uri) = pq.parse::<Uri>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_uri",
            "request target is invalid",
        );
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers);
    peer.stamp(&mut parts.headers);
    if !parts.headers.contains_key(header::HOST) {
        let host = authority.unwrap_or_else(|| target.to_string());
        if let Ok(v) = HeaderValue::from_str(&host) {
            parts.headers.insert(header::HOST, v);
        }
    }
    headers::set_upgrade(&mut parts.headers, proto.clone());
    let mut up = Request::from_parts(parts, boxed(headers::StripTrailers::new(body)));
    *up.extensions_mut() = http::Extensions::new();
    // The caller's route timeout bounds the handshake too; this bound only
    // keeps a silent app from holding the request after the caller left.
    let limit = shared
        .local_service(&shared.snapshot())
        .map_or_else(
            || strait_api::snapshot::Route::default().timeout,
            |s| s.route_for(up.uri().path()).timeout,
        )
        .max(Duration::from_secs(1));
    let exchange = async {
        let tcp = tokio::time::timeout(
            shared.cfg.limits.connect_timeout,
            TcpStream::connect(target),
        )
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        send(TokioIo::new(tcp), up).await.map_err(|e| e.to_string())
    };
    let resp = match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            tracing::debug!(app = %target, error = %e, "app upgrade request failed");
            let msg = format!("the local app at {target} did not answer");
            return error(StatusCode::SERVICE_UNAVAILABLE, "app_unavailable", msg);
        }
        Err(_) => {
            let msg = format!("the local app at {target} did not answer within {limit:?}");
            return error(StatusCode::GATEWAY_TIMEOUT, "timeout", msg);
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return ordinary(resp);
    }
    let local = shared.snapshot().local.cluster.clone();
    let labels = TcpLabels::new(
        Direction::inbound,
        peer.source_cluster(),
        &service,
        local.as_str(),
    );
    switch(shared, resp, peer_side, &proto, labels, move || drop(held))
}

/// One request on a new HTTP/1.1 client connection that may upgrade.
async fn send<T>(io: T, req: Request<Body>) -> Result<Response<Incoming>, hyper::Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection ended");
        }
    });
    sender.send_request(req).await
}

/// A non-101 answer: an ordinary response.
fn ordinary(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, boxed(body))
}

/// Answers `101` to the near side and splices it with the far side's
/// upgraded connection once both are switched; `done` runs when both
/// directions have ended.
fn switch(
    shared: Arc<Shared>,
    mut resp: Response<Incoming>,
    near: OnUpgrade,
    proto: &HeaderValue,
    labels: TcpLabels,
    done: impl FnOnce() + Send + 'static,
) -> Response<Body> {
    let far = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    let proto = parts
        .headers
        .get(header::UPGRADE)
        .cloned()
        .unwrap_or_else(|| proto.clone());
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::set_upgrade(&mut parts.headers, proto);
    tokio::spawn(async move {
        match tokio::join!(near, far) {
            (Ok(near), Ok(far)) => {
                let (mut near, mut far) = (TokioIo::new(near), TokioIo::new(far));
                let (sent, received) =
                    crate::copy::bidirectional(&mut near, &mut far, shared.cfg.limits.idle_timeout)
                        .await;
                let m = &shared.metrics;
                m.upgrade_bytes_sent.get_or_create(&labels).inc_by(sent);
                m.upgrade_bytes_received
                    .get_or_create(&labels)
                    .inc_by(received);
            }
            (near, far) => {
                tracing::debug!(near = ?near.err(), far = ?far.err(), "upgrade did not complete");
            }
        }
        done();
    });
    Response::from_parts(parts, empty())
}

fn finish(shared: &Shared, service: &Service, addr: SocketAddr, outcome: Outcome) {
    let ejected = shared
        .router
        .finish(service, addr, Kind::Connection, outcome, None);
    if let Some(ej) = ejected {
        tracing::warn!(service = %service_key(service), endpoint = %addr, ejection = ?ej, "endpoint ejected by outlier detection");
        let dest = service.endpoints.iter().find(|e| e.address == addr);
        let dest = dest.map_or("", |e| e.cluster.as_str());
        let source = shared.snapshot().local.cluster.clone();
        let reason = format!("{outcome:?}").to_lowercase();
        let m = &shared.metrics;
        m.ejection(source.as_str(), &service_key(service), dest, &reason);
    }
}

/// Counts one upgrade request `on` (direction, clusters, service) by
/// protocol and result.
pub(crate) fn count(shared: &Shared, on: &TcpLabels, proto: &HeaderValue, resp: &Response<Body>) {
    let labels = UpgradeLabels {
        direction: on.direction,
        source_cluster: on.source_cluster.clone(),
        destination_service: on.destination_service.clone(),
        destination_cluster: on.destination_cluster.clone(),
        protocol: headers::upgrade_label(proto).to_owned(),
        result: result_label(resp).to_owned(),
    };
    shared.metrics.upgrades.get_or_create(&labels).inc();
}

/// `switched`, `declined` (the app answered otherwise), or Strait's own
/// error reason (only known reasons become labels).
fn result_label(resp: &Response<Body>) -> &'static str {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return "switched";
    }
    let Some(reason) = resp.headers().get(headers::ERROR_NAME) else {
        return "declined";
    };
    const KNOWN: &[&str] = &[
        "denied",
        "timeout",
        "overloaded",
        "no_endpoints",
        "upstream_failure",
        "app_unavailable",
        "upgrade_unsupported",
        "bad_framing",
        "bad_request",
        "unknown_port",
    ];
    KNOWN
        .iter()
        .find(|k| reason.as_bytes() == k.as_bytes())
        .copied()
        .unwrap_or("error")
}
