//! App -> mesh for one HTTP request: pick an endpoint, send the request
//! over a pooled HTTP/2-over-mTLS connection, retry to another endpoint
//! when the policy and budget allow, and record the outcome for the
//! balancer and outlier detection.

use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Body as _;
use hyper::body::Incoming;
use strait_api::snapshot::{Service, Snapshot};

use crate::h2client::SendError;
use crate::headers::{self, error};
use crate::metrics::Direction;
use crate::observe::{self, CountRequest, Observed};
use crate::outlier::Outcome;
use crate::retry::{self, Failure, RetryDecision};
use crate::router::{Kind, Picked, ServiceHandle};
use crate::state::Shared;
use crate::transport::{Blame, Body, boxed, empty};
use strait_agent::trace::TraceParent;

/// Forwards `req` (already resolved to `service` and `port`) into the mesh.
/// `observed` (the access log is on or the span is sampled) gets the
/// outcome; the request already carries its span's context, `trace`.
pub(crate) async fn forward(
    shared: Arc<Shared>,
    snapshot: Arc<Snapshot>,
    service: &Service,
    port: u16,
    req: Request<Incoming>,
    observed: &mut Option<Box<Observed>>,
    trace: Option<TraceParent>,
) -> Response<Body> {
    let started = Instant::now();
    let svc = shared.router.handle(service);
    let svc_name = svc.key().clone();
    let Some(_slot) = shared.enter_pending() else {
        shared.metrics.refuse(Direction::outbound, "pending_limit");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests waiting for an upstream",
        );
    };
    let (mut parts, body) = req.into_parts();
    if let Some(why) = headers::smuggling(&parts.headers) {
        shared.metrics.refuse(Direction::outbound, "smuggling");
        return error(StatusCode::BAD_REQUEST, "bad_framing", why);
    }
    if let Err(why) = prepare(&mut parts, &svc, port) {
        return error(StatusCode::BAD_REQUEST, "bad_request", why);
    }
    // The request carries this sidecar's span's context; a tunnel it
    // opens replaces it with the gateway's span (see `attempt`).
    if let Some(o) = observed.as_mut() {
        o.service = Some(svc_name.clone());
        o.source_cluster = Some(snapshot.local.cluster.clone());
    }
    let route = service.route_for(&crate::path::for_routing(parts.uri.path()));
    let deadline = tokio::time::Instant::now() + route.timeout;
    let replayable = body.is_end_stream();
    let counter = observed
        .as_mut()
        .and_then(|o| o.req_bytes.counter(body.is_end_stream()));
    let mut body = Some(boxed(CountRequest::new(body, counter)));
    // The identity of the last endpoint tried (for the access log).
    let mut last_peer: Option<&strait_api::SpiffeId> = None;
    // Endpoints behind gateways that are down are not tried at all.
    let mut tried: Vec<usize> = behind_down_gateways(&shared, service);
    let mut retries = 0u32;
    // The serving clusters whose door failed, and how (the last one is
    // what the caller is told when nothing else can serve).
    let mut doors: Vec<(&strait_api::ClusterName, Blame)> = Vec::new();
    // The last endpoint failure's text, for the caller's message.
    let mut last_why: Option<String> = None;
    let (resp, dest_cluster) = loop {
        let picked = svc.pick(&snapshot, service, &tried, Kind::Request);
        // With every endpoint tried the plan may fall back to ones already
        // refused at their cluster's door: the last door's answer stands.
        let closed = picked
            .as_ref()
            .is_ok_and(|p| doors.iter().any(|(c, _)| **c == p.endpoint.cluster));
        let picked = match (picked, doors.last()) {
            (Ok(p), _) if !closed => p,
            (_, Some((cluster, blame))) => {
                break (door_error(&svc_name, cluster, blame), Some(*cluster));
            }
            // `closed` needs a door, so without one the pick failed.
            (other, None) => {
                let why = other.err().map(|e| e.to_string()).unwrap_or_default();
                break (
                    error(StatusCode::SERVICE_UNAVAILABLE, "no_endpoints", why),
                    None,
                );
            }
        };
        tried.push(picked.index);
        last_peer = Some(&picked.endpoint.identity);
        let try_started = Instant::now();
        let result = tokio::time::timeout_at(
            deadline,
            attempt(&shared, &picked, &parts, replayable, &mut body, trace),
        )
        .await;
        let failure = match result {
            Err(_) => {
                finish(&shared, &svc, &picked, Outcome::ServerError, None);
                break (
                    error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "timeout",
                        format!("{svc_name} did not answer within {:?}", route.timeout),
                    ),
                    Some(&picked.endpoint.cluster),
                );
            }
            Ok(Ok(resp)) => {
                let code = resp.status().as_u16();
                // The destination sidecar could not reach its app: the
                // request was never processed, like a connect failure.
                let unprocessed = code == 503
                    && resp
                        .headers()
                        .get(headers::ERROR_NAME)
                        .is_some_and(|v| v == "app_unavailable");
                let (outcome, failure) = if unprocessed {
                    (Outcome::ConnectFailure, Failure::ConnectFailure)
                } else {
                    (Outcome::from_status(code), Failure::Status(code))
                };
                finish(&shared, &svc, &picked, outcome, Some(try_started.elapsed()));
                if outcome == Outcome::Success || !replayable {
                    break (resp, Some(&picked.endpoint.cluster));
                }
                let at = &picked.endpoint.cluster;
                match decide(&shared, &svc, &route.retry, &parts, (failure, at), retries) {
                    RetryDecision::Retry => {
                        retries += 1;
                        continue;
                    }
                    _ => break (resp, Some(&picked.endpoint.cluster)),
                }
            }
            Ok(Err(TryError::Door(blame))) => {
                // Not the endpoint's fault, and the request was never
                // sent: no ejection, no retry budget; the rest of that
                // cluster sits behind the same door, so the next pick is
                // another cluster (at most one such hop per cluster).
                finish(&shared, &svc, &picked, Outcome::NotReached, None);
                let cluster = &picked.endpoint.cluster;
                tracing::debug!(service = %svc_name, %cluster, ?blame, "serving cluster's gateway failed; trying the next cluster");
                tried.extend(
                    service
                        .endpoints
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| e.cluster == *cluster)
                        .map(|(i, _)| i),
                );
                doors.push((cluster, blame));
                continue;
            }
            Ok(Err(TryError::Failed(failure, why))) => {
                finish(&shared, &svc, &picked, Outcome::ConnectFailure, None);
                if why.is_some() {
                    last_why = why;
                }
                failure
            }
        };
        let can_resend = replayable || body.is_some();
        let decision = if can_resend {
            let at = &picked.endpoint.cluster;
            decide(&shared, &svc, &route.retry, &parts, (failure, at), retries)
        } else {
            RetryDecision::NotRetryable
        };
        if decision == RetryDecision::Retry {
            retries += 1;
            continue;
        }
        break (
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_failure",
                format!(
                    "{svc_name}: {failure:?}{} (no retry: {})",
                    last_why
                        .as_deref()
                        .map(|w| format!(": {w}"))
                        .unwrap_or_default(),
                    decision.label()
                ),
            ),
            Some(&picked.endpoint.cluster),
        );
    };

    let code = resp.status().as_u16();
    svc.record_outbound(
        &shared.metrics,
        &snapshot.local.cluster,
        dest_cluster,
        code,
        started.elapsed(),
    );
    if let Some(o) = observed.as_mut() {
        o.destination_cluster = dest_cluster.cloned();
        o.peer = last_peer.cloned();
        o.retries = retries;
    }
    resp
}

/// Rewrites the request for the hop between sidecars: HTTP/2, absolute
/// URI, no hop-by-hop or spoofable headers, `strait-dst` set.
fn prepare(parts: &mut Parts, svc: &ServiceHandle, port: u16) -> Result<(), &'static str> {
    let dst = svc.dst(port).ok_or("invalid service name")?;
    let authority = match parts.uri.authority() {
        Some(a) => a.clone(),
        None => {
            let host = headers::host_of(&parts.uri, &parts.headers);
            let host = host.map_or(dst.as_bytes(), str::as_bytes);
            Authority::from_maybe_shared(bytes::Bytes::copy_from_slice(host))
                .map_err(|_| "invalid request target")?
        }
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(authority);
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    parts.uri = Uri::from_parts(uri).map_err(|_| "invalid request target")?;
    parts.version = http::Version::HTTP_2;
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_spoofable(&mut parts.headers);
    parts.headers.remove(http::header::HOST);
    parts.headers.insert(headers::DST_NAME, dst);
    Ok(())
}

/// Why one try got no answer.
#[derive(Debug)]
enum TryError {
    /// Counted against the endpoint; retried as the route's policy says.
    /// With the error's text when there is one (a TLS refusal names the
    /// identity expected and the one presented).
    Failed(Failure, Option<String>),
    /// The serving cluster's gateway refused the tunnel or is down.
    Door(Blame),
}

/// Indices of `service`'s endpoints whose gateways are all down now (no
/// walk over the endpoints while no gateway is down).
fn behind_down_gateways(shared: &Shared, service: &Service) -> Vec<usize> {
    if !shared.pool.any_gateway_down() {
        return Vec::new();
    }
    service
        .endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| shared.pool.gateways_down(&e.gateways))
        .map(|(i, _)| i)
        .collect()
}

/// The answer when the last cluster tried failed at its door: the
/// gateway's own reason, so the caller sees why (`strait-error`).
fn door_error(service: &str, cluster: &strait_api::ClusterName, blame: &Blame) -> Response<Body> {
    match blame {
        Blame::GatewayRefused { status, reason } => error(
            StatusCode::SERVICE_UNAVAILABLE,
            gateway_reason(reason),
            format!(
                "{service}: the gateway of cluster {cluster} refused the tunnel ({status} {reason}) and no other cluster could serve"
            ),
        ),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway_unreachable",
            format!(
                "{service}: no gateway of cluster {cluster} is reachable and no other cluster could serve"
            ),
        ),
    }
}

/// The gateway's `strait-error` reasons a caller may see as they are;
/// anything else is reported as `gateway_refused`.
fn gateway_reason(reason: &str) -> &'static str {
    const KNOWN: [&str; 7] = [
        "unknown_endpoint",
        "not_exported",
        "not_exported_to",
        "not_linked",
        "draining",
        "stream_limit",
        "unknown_port",
    ];
    KNOWN
        .into_iter()
        .find(|k| *k == reason)
        .unwrap_or("gateway_refused")
}

/// One try. `Err` says why the request was not answered.
async fn attempt(
    shared: &Shared,
    picked: &Picked<'_>,
    parts: &Parts,
    replayable: bool,
    body: &mut Option<Body>,
    trace: Option<TraceParent>,
) -> Result<Response<Body>, TryError> {
    let identity = &picked.endpoint.identity;
    let target = picked.endpoint.address;
    let got = shared
        .pool
        .get_hop_traced(picked.endpoint, picked.hop, trace)
        .await;
    let (mut send, hop, tunnel_span) = match got {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(endpoint = %target, hop = ?picked.hop, error = %e, "connect failed");
            return Err(match e.blame(&picked.endpoint.gateways) {
                Blame::Endpoint => TryError::Failed(
                    Failure::ConnectFailure,
                    Some(format!(
                        "cannot connect to {target} (expecting {identity}): {e}"
                    )),
                ),
                door => TryError::Door(door),
            });
        }
    };
    let req_body = if replayable {
        empty()
    } else {
        body.take()
            .ok_or(TryError::Failed(Failure::ConnectFailure, None))?
    };
    let mut req = Request::from_parts(parts.clone(), req_body);
    *req.extensions_mut() = http::Extensions::new();
    // This request opened a traced tunnel: the gateway's span is its
    // parent on the far side.
    if let Some(t) = &tunnel_span {
        observe::propagate(req.headers_mut(), t);
    }
    match send.send(req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, body))
        }
        Err(SendError::NotSent {
            body: back, source, ..
        }) => {
            shared.pool.evict_hop(hop, identity);
            tracing::debug!(endpoint = %target, error = %source, "request not sent");
            // Never sent: the body is intact for another endpoint.
            if !replayable {
                *body = back;
            }
            Err(TryError::Failed(
                Failure::ConnectFailure,
                Some(format!("{target}: {source}")),
            ))
        }
        Err(SendError::Failed(err)) => {
            shared.pool.evict_hop(hop, identity);
            tracing::debug!(endpoint = %target, error = %err, "request failed in flight");
            Err(TryError::Failed(
                Failure::Reset,
                Some(format!("{target}: {err}")),
            ))
        }
    }
}

fn finish(
    shared: &Shared,
    svc: &ServiceHandle,
    picked: &Picked<'_>,
    outcome: Outcome,
    rtt: Option<std::time::Duration>,
) {
    let addr = picked.endpoint.address;
    if let Some(ej) = svc.finish(addr, Kind::Request, outcome, rtt) {
        tracing::warn!(service = %svc.key(), endpoint = %addr, ejection = ?ej, "endpoint ejected by outlier detection");
        let source = shared.snapshot().local.cluster.clone();
        let reason = format!("{outcome:?}").to_lowercase();
        let dest = picked.endpoint.cluster.as_str();
        shared
            .metrics
            .ejection(source.as_str(), svc.key(), dest, &reason);
    }
}

fn decide(
    shared: &Shared,
    svc: &ServiceHandle,
    policy: &strait_api::snapshot::RetryPolicy,
    parts: &Parts,
    (failure, failed_at): (Failure, &strait_api::ClusterName),
    retries: u32,
) -> RetryDecision {
    let d = svc.with_budget(|budget| {
        retry::decide(
            policy,
            &parts.method,
            failure,
            retries,
            budget,
            Instant::now(),
        )
    });
    let source = shared.snapshot().local.cluster.clone();
    let dest = failed_at.as_str();
    shared
        .metrics
        .retry(source.as_str(), svc.key(), dest, d.label());
    d
}
