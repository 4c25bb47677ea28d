//! One `CONNECT` stream: decide against the export table, apply the
//! per-source-cluster limit, dial the endpoint's sidecar, answer 200 and pipe
//! bytes both ways (with backpressure and an idle timeout) until either side
//! ends.
//!
//! The gateway never terminates the inner TLS: it moves opaque bytes. All it
//! knows about a tunnel is who opened it (the outer mTLS peer) and what for
//! (the `CONNECT` authority).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use strait_agent::trace::{self, Span, SpanKind};
use strait_api::SpiffeId;
use strait_ca::pipe::{self, End, Side};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::metrics::Direction;
use crate::shared::Shared;

/// The header carrying the reason the gateway refused a stream.
pub const ERROR_HEADER: &str = "strait-error";

/// Sees every chunk of tunnel bytes the gateway moves (tests only).
pub type Tap = Arc<dyn Fn(Direction, &[u8]) + Send + Sync>;

/// The authenticated outer peer of a connection.
#[derive(Debug)]
pub(crate) struct Peer {
    pub id: SpiffeId,
    /// From the peer's chain (its intermediate's OU).
    pub cluster: String,
    pub addr: SocketAddr,
}

type Body = Full<Bytes>;

fn refuse(status: StatusCode, reason: &'static str, message: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(message + "\n")));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(reason));
    r
}

/// The gateway's span name for a tunnel (`docs/observability.md`).
pub const SPAN_TUNNEL: &str = "strait.tunnel";

/// Answers one stream of a client connection.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    req: Request<Incoming>,
) -> Response<Body> {
    // A `CONNECT` is traced as a child of its `traceparent` (the client
    // sidecar's span) when tracing is on; the payload stays opaque.
    let mut span = match &shared.tracer {
        Some(t) if req.method() == Method::CONNECT => {
            let parent = trace::from_headers(req.headers());
            let mut span = t.span(SPAN_TUNNEL, SpanKind::Server, parent.as_ref());
            if span.is_recording() {
                let authority = req.uri().authority().map(|a| a.as_str().to_owned());
                span.set("strait.authority", authority.unwrap_or_default());
                span.set("strait.source_cluster", peer.cluster.clone());
                span.set("strait.destination_cluster", shared.cfg.cluster.to_string());
                span.set("strait.peer_identity", peer.id.to_string());
            }
            Some(span)
        }
        _ => None,
    };
    let resp = connect(shared, peer, req, &mut span).await;
    // The span covers the `CONNECT` (admission, limits, the dial) and ends
    // with its answer: the tunnel itself is pooled by the client sidecar
    // and carries later requests of other traces.
    if let Some(mut span) = span {
        if span.is_recording() {
            let status = resp.status().as_u16();
            span.set("http.response.status_code", i64::from(status));
            if status != 200 {
                let reason = resp
                    .headers()
                    .get(ERROR_HEADER)
                    .and_then(|v| v.to_str().ok());
                let reason = reason.unwrap_or_default().to_owned();
                span.set("strait.error", reason.clone());
                span.fail(reason);
            }
        }
        span.end();
    }
    resp
}

async fn connect(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    req: Request<Incoming>,
    span: &mut Option<Span>,
) -> Response<Body> {
    let started = Instant::now();
    let cluster = peer.cluster.as_str();
    // A client's question on its connection: still serving, or draining?
    // (HTTP/2 gives it no other sign of a GOAWAY while its tunnels stay
    // open, and it must stop opening new ones here.)
    if req.method() == Method::OPTIONS {
        return if shared.is_draining() {
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "gateway is draining".into(),
            )
        } else {
            Response::new(Full::new(Bytes::new()))
        };
    }
    if req.method() != Method::CONNECT {
        shared.metrics.tunnel(cluster, "unknown", "not_connect");
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "not_connect",
            "this gateway serves CONNECT only".into(),
        );
    }
    if shared.is_draining() {
        shared.metrics.tunnel(cluster, "unknown", "draining");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "gateway is draining".into(),
        );
    }
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let decision = shared
        .exports()
        .admit(cluster, &authority, &shared.own, |n| {
            rand::random_range(0..n)
        });
    let decision = match decision {
        Ok(d) => d,
        Err(refusal) => {
            shared
                .metrics
                .tunnel(cluster, &refusal.service_label(), refusal.reason());
            tracing::info!(peer = %peer.id, peer_addr = %peer.addr, source_cluster = cluster, %authority,
                reason = refusal.reason(), "CONNECT refused");
            return refuse(refusal.status(), refusal.reason(), refusal.to_string());
        }
    };
    let service = decision.service;
    let permit = match shared.acquire(&peer) {
        Ok(p) => p,
        Err(limit) => {
            shared.metrics.tunnel(cluster, &service, limit);
            tracing::info!(peer = %peer.id, source_cluster = cluster, %service, limit, "tunnel limit reached");
            let whose = if limit == "stream_limit" {
                format!("cluster {cluster}")
            } else {
                peer.id.to_string()
            };
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                limit,
                format!("{whose} has too many open tunnels"),
            );
        }
    };
    let target = decision.target;
    let dial = tokio::time::timeout(
        shared.cfg.limits.connect_timeout,
        TcpStream::connect(target),
    )
    .await;
    let Ok(Ok(upstream)) = dial else {
        shared.metrics.tunnel(cluster, &service, "upstream_connect");
        tracing::debug!(%target, %service, "endpoint unreachable");
        return refuse(
            StatusCode::BAD_GATEWAY,
            "upstream_connect",
            format!("endpoint {target} of {service} is unreachable"),
        );
    };
    let _ = upstream.set_nodelay(true);
    shared.metrics.tunnel(cluster, &service, "ok");
    shared.metrics.setup(cluster, started.elapsed());
    shared.active.fetch_add(1, Ordering::AcqRel);
    shared.metrics.tunnels_active.inc();
    tracing::debug!(peer = %peer.id, source_cluster = cluster, %service, %target, "tunnel open");
    let guard = ActiveGuard(shared.clone());
    // Admitted: the client sidecar learns the span's context
    // (`traceresponse`) to parent the request that opened the tunnel on it.
    let mut resp = Response::new(Full::new(Bytes::new()));
    if let Some(s) = span.as_mut() {
        resp.headers_mut()
            .insert(trace::TRACERESPONSE, s.context().header());
        s.set("strait.service", service.clone());
    }
    tokio::spawn(async move {
        let _guard = guard;
        let _permit = permit;
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT upgrade failed");
                return;
            }
        };
        let cluster = peer.cluster.as_str();
        tokio::select! {
            () = pipe(&shared, TokioIo::new(upgraded), upstream, cluster, &service) => {}
            () = revoked(&shared, cluster, &service) => {
                shared.metrics.tunnel(cluster, &service, "revoked");
                tracing::info!(peer = %peer.id, source_cluster = cluster, %service,
                    "tunnel closed: the caller's cluster is no longer linked or the service no longer exported to it");
            }
        }
    });
    resp
}

/// Resolves when a new admission index no longer admits `cluster` to
/// `service` (unlink, un-export, `export --to` without it).
async fn revoked(shared: &Shared, cluster: &str, service: &str) {
    let mut generation = shared.generation.subscribe();
    while generation.changed().await.is_ok() {
        if !shared.exports().still_admits(cluster, service) {
            return;
        }
    }
    std::future::pending().await
}

/// Counts a tunnel as active until dropped.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.tunnels_active.dec();
    }
}

/// Moves bytes both ways until both sides end, an error, or the idle
/// timeout; counts them per direction and shows them to the tap.
async fn pipe<A, B>(shared: &Shared, mut client: A, mut upstream: B, cluster: &str, service: &str)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let to_endpoint = shared
        .metrics
        .bytes_counter(cluster, service, Direction::to_endpoint);
    let from_endpoint = shared
        .metrics
        .bytes_counter(cluster, service, Direction::from_endpoint);
    let tap = shared.tap.as_ref();
    let idle = shared.cfg.limits.idle_timeout;
    let pumped = pipe::bidirectional(&mut client, &mut upstream, idle, |side, chunk| {
        let (direction, counter) = match side {
            Side::A => (Direction::to_endpoint, &to_endpoint),
            Side::B => (Direction::from_endpoint, &from_endpoint),
        };
        counter.inc_by(chunk.len() as u64);
        if let Some(tap) = tap {
            tap(direction, chunk);
        }
    })
    .await;
    match pumped.end {
        End::Done => {}
        End::Idle => tracing::debug!(%service, ?idle, "tunnel idle; closed"),
        End::Error(e) => tracing::debug!(%service, error = %e, "tunnel ended with an error"),
    }
}
