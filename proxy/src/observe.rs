//! Per-request observation: the access-log line ([`crate::access`])
//! and the request's span, both written when the response body ends.
//!
//! What it is: [`Observed`], made for a request only when the access log
//! is on or its span is sampled (otherwise nothing is allocated; with
//! tracing on, an unsampled request only carries its context on), and
//! two body wrappers that count the body bytes the proxy moves:
//! [`CountRequest`] on the request body, [`Finish`] on the response body,
//! which emits the line and ends the span when the body ends or is
//! dropped. The trace id in the line comes from the request's
//! `traceparent` (or the span this sidecar started), whether or not spans
//! are exported.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use strait_agent::trace::{self, Span, SpanKind, TraceParent};

use strait_api::{ClusterName, SpiffeId};

use crate::state::Shared;
use crate::transport::{Body, boxed};
use crate::{access, headers};

/// Request body bytes, shared by the request body's counter and the
/// request's [`Observed`]; made only for a request that has a body (one
/// without counts zero and allocates nothing).
#[derive(Debug, Clone, Default)]
pub(crate) struct ReqBytes(Option<Arc<AtomicU64>>);

impl ReqBytes {
    /// The counter for a request body, `None` when the body is already
    /// ended (nothing to count).
    pub(crate) fn counter(&mut self, body_ended: bool) -> Option<Self> {
        if body_ended {
            return None;
        }
        Some(Self(Some(self.0.get_or_insert_with(Arc::default).clone())))
    }

    fn get(&self) -> u64 {
        self.0.as_ref().map_or(0, |n| n.load(Ordering::Relaxed))
    }

    fn add(&self, n: u64) {
        if let Some(c) = &self.0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// What one request's access-log line and span need.
#[derive(Debug)]
pub(crate) struct Observed {
    log: bool,
    started: Instant,
    direction: &'static str,
    method: Method,
    /// The request's URI and `Host` (shared, not copied): the line's
    /// authority and path.
    uri: http::Uri,
    host: Option<HeaderValue>,
    pub(crate) service: Option<Arc<str>>,
    pub(crate) source_cluster: Option<ClusterName>,
    pub(crate) destination_cluster: Option<ClusterName>,
    pub(crate) peer: Option<SpiffeId>,
    pub(crate) retries: u32,
    status: u16,
    error: Option<HeaderValue>,
    trace: Option<TraceParent>,
    span: Option<Span>,
    pub(crate) req_bytes: ReqBytes,
    resp_bytes: u64,
}

impl Observed {
    /// Starts observing a request with these headers: the record, made
    /// only when the access log is on or the span is sampled, and the
    /// context to send on, when this sidecar traces (an unsampled span is
    /// only that context). `direction` names the span's kind (client:
    /// outbound, server: inbound). The span continues the request's
    /// `traceparent` (a malformed one starts a new trace).
    pub(crate) fn start(
        shared: &Shared,
        direction: &'static str,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> (Option<Box<Self>>, Option<TraceParent>) {
        let log = shared.cfg.access_log && access::enabled();
        if !log && shared.tracer.is_none() {
            return (None, None);
        }
        let incoming = trace::from_headers(headers);
        let span = shared.tracer.as_ref().map(|t| {
            let (name, kind) = match direction {
                "outbound" => (SPAN_OUTBOUND, SpanKind::Client),
                _ => (SPAN_INBOUND, SpanKind::Server),
            };
            t.span(name, kind, incoming.as_ref())
        });
        let child = span.as_ref().map(Span::context);
        if !log && !span.as_ref().is_some_and(Span::is_recording) {
            return (None, child);
        }
        let observed = Box::new(Self {
            log,
            started: Instant::now(),
            direction,
            method: method.clone(),
            uri: uri.clone(),
            host: match uri.authority() {
                Some(_) => None,
                None => headers.get(http::header::HOST).cloned(),
            },
            service: None,
            source_cluster: None,
            destination_cluster: None,
            peer: None,
            retries: 0,
            status: 0,
            error: None,
            trace: child.or(incoming),
            span,
            req_bytes: ReqBytes::default(),
            resp_bytes: 0,
        });
        (Some(observed), child)
    }

    /// Notes the answer and wraps its body, which emits the line and ends
    /// the span when it ends.
    pub(crate) fn finish(mut self: Box<Self>, resp: http::Response<Body>) -> http::Response<Body> {
        self.status = resp.status().as_u16();
        self.error = resp.headers().get(headers::ERROR_NAME).cloned();
        resp.map(|body| {
            boxed(Finish {
                inner: body,
                observed: Some(self),
            })
        })
    }

    /// The request's authority: the URI's, else its `Host`.
    fn authority(&self) -> &str {
        headers::authority_of(&self.uri, self.host.as_ref()).unwrap_or_default()
    }

    fn emit(&mut self) {
        let request_bytes = self.req_bytes.get();
        let error = self
            .error
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let service = self.service.as_deref().unwrap_or_default();
        let source = self.source_cluster.as_ref().map_or("", ClusterName::as_str);
        let destination = self
            .destination_cluster
            .as_ref()
            .map_or("", ClusterName::as_str);
        let peer = self.peer.as_ref().map_or("", SpiffeId::as_str);
        if let Some(mut span) = self.span.take() {
            if span.is_recording() {
                span.set("http.request.method", self.method.to_string());
                span.set("server.address", self.authority().to_owned());
                span.set("url.path", self.uri.path().to_owned());
                span.set("http.response.status_code", i64::from(self.status));
                span.set("strait.service", service.to_owned());
                span.set("strait.source_cluster", source.to_owned());
                span.set("strait.destination_cluster", destination.to_owned());
                span.set("strait.peer_identity", peer.to_owned());
                span.set("strait.request_bytes", request_bytes as i64);
                span.set("strait.response_bytes", self.resp_bytes as i64);
                if !error.is_empty() {
                    span.set("strait.error", error.to_owned());
                }
                if self.status >= 500 || !error.is_empty() {
                    span.fail(error.to_owned());
                }
            }
            span.end();
        }
        if self.log {
            let mut line = access::Line::new();
            line.str("direction", self.direction)
                .token("method", self.method.as_str())
                .str("authority", self.authority())
                .str("path", self.uri.path())
                .num("status", u64::from(self.status))
                .millis("duration_ms", self.started.elapsed())
                .num("request_bytes", request_bytes)
                .num("response_bytes", self.resp_bytes)
                .num("retries", u64::from(self.retries))
                .str("service", service)
                .token("peer", peer)
                .str("source_cluster", source)
                .str("destination_cluster", destination)
                .str("strait_error", error);
            if let Some(t) = self.trace {
                line.token("trace_id", t.trace_id().as_str());
            }
            line.write();
        }
    }
}

/// Span names (documented in `docs/observability.md`).
pub const SPAN_OUTBOUND: &str = "strait.outbound";
pub const SPAN_INBOUND: &str = "strait.inbound";

/// Puts `ctx` on a request's headers as its `traceparent`.
pub(crate) fn propagate(headers: &mut HeaderMap, ctx: &TraceParent) {
    headers.insert(trace::TRACEPARENT, ctx.header());
}

/// A response body that counts its bytes and, when it ends or is
/// dropped, emits its request's line and ends its span.
struct Finish {
    inner: Body,
    observed: Option<Box<Observed>>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(mut o) = self.observed.take() {
            o.emit();
        }
    }
}

impl HttpBody for Finish {
    type Data = Bytes;
    type Error = crate::transport::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(o)) = (frame.data_ref(), self.observed.as_mut()) {
                    o.resp_bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(mut o) = self.observed.take() {
                    o.emit();
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that counts its data bytes into [`ReqBytes`] (nothing
/// when there is no counter: nothing observes the request, or it has no
/// body).
pub(crate) struct CountRequest<B> {
    inner: B,
    /// Empty (counts nothing) when there is no counter.
    bytes: ReqBytes,
}

impl<B> CountRequest<B> {
    pub(crate) fn new(inner: B, bytes: Option<ReqBytes>) -> Self {
        Self {
            inner,
            bytes: bytes.unwrap_or_default(),
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for CountRequest<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes.add(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
