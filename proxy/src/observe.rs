//! Per-request observation: the access-log line ([`crate::access`])
//! and the request's span, both written when the response body ends.
//!
//! What it is: [`Observed`], made for a request only when the access log
//! or tracing is on (otherwise nothing here runs and nothing is
//! allocated), and two body wrappers that count the body bytes the proxy
//! moves: [`CountRequest`] on the request body, [`Finish`] on the response
//! body, which emits the line and ends the span when the body ends or is
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

use crate::state::Shared;
use crate::transport::{Body, boxed};
use crate::{access, headers};

/// Request body bytes, shared by the request body's counter and the
/// request's [`Observed`].
#[derive(Debug, Clone, Default)]
pub(crate) struct ReqBytes(Arc<AtomicU64>);

/// What one request's access-log line and span need.
#[derive(Debug)]
pub(crate) struct Observed {
    log: bool,
    started: Instant,
    direction: &'static str,
    method: Method,
    authority: String,
    path: String,
    pub(crate) service: String,
    pub(crate) source_cluster: String,
    pub(crate) destination_cluster: String,
    pub(crate) peer: String,
    pub(crate) retries: u32,
    status: u16,
    error: Option<HeaderValue>,
    trace: Option<TraceParent>,
    span: Option<Span>,
    pub(crate) req_bytes: ReqBytes,
    resp_bytes: u64,
}

impl Observed {
    /// Starts observing a request with these headers, when the access log
    /// or tracing is on; `kind` is the span's (client: outbound, server:
    /// inbound). The span continues the request's `traceparent` (a
    /// malformed one starts a new trace).
    pub(crate) fn start(
        shared: &Shared,
        direction: &'static str,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Option<Box<Self>> {
        let log = shared.cfg.access_log && access::enabled();
        if !log && shared.tracer.is_none() {
            return None;
        }
        let incoming = trace::from_headers(headers);
        let span = shared.tracer.as_ref().map(|t| {
            let (name, kind) = match direction {
                "outbound" => (SPAN_OUTBOUND, SpanKind::Client),
                _ => (SPAN_INBOUND, SpanKind::Server),
            };
            t.span(name, kind, incoming.as_ref())
        });
        let trace = span.as_ref().map(Span::context).or(incoming);
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| headers::host_of(uri, headers))
            .unwrap_or_default()
            .to_owned();
        Some(Box::new(Self {
            log,
            started: Instant::now(),
            direction,
            method: method.clone(),
            authority,
            path: uri.path().to_owned(),
            service: String::new(),
            source_cluster: String::new(),
            destination_cluster: String::new(),
            peer: String::new(),
            retries: 0,
            status: 0,
            error: None,
            trace,
            span,
            req_bytes: ReqBytes::default(),
            resp_bytes: 0,
        }))
    }

    /// The context to send on (this sidecar's span as the parent), when
    /// this sidecar traces.
    pub(crate) fn child(&self) -> Option<TraceParent> {
        self.span.as_ref().map(Span::context)
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

    fn emit(&mut self) {
        let request_bytes = self.req_bytes.0.load(Ordering::Relaxed);
        let error = self
            .error
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let Some(mut span) = self.span.take() {
            if span.is_recording() {
                span.set("http.request.method", self.method.to_string());
                span.set("server.address", self.authority.clone());
                span.set("url.path", self.path.clone());
                span.set("http.response.status_code", i64::from(self.status));
                span.set("strait.service", self.service.clone());
                span.set("strait.source_cluster", self.source_cluster.clone());
                span.set(
                    "strait.destination_cluster",
                    self.destination_cluster.clone(),
                );
                span.set("strait.peer_identity", self.peer.clone());
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
                .str("authority", &self.authority)
                .str("path", &self.path)
                .num("status", u64::from(self.status))
                .millis("duration_ms", self.started.elapsed())
                .num("request_bytes", request_bytes)
                .num("response_bytes", self.resp_bytes)
                .num("retries", u64::from(self.retries))
                .str("service", &self.service)
                .token("peer", &self.peer)
                .str("source_cluster", &self.source_cluster)
                .str("destination_cluster", &self.destination_cluster)
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
/// when there is no counter: the access log and tracing are off).
pub(crate) struct CountRequest<B> {
    inner: B,
    bytes: Option<ReqBytes>,
}

impl<B> CountRequest<B> {
    pub(crate) fn new(inner: B, bytes: Option<ReqBytes>) -> Self {
        Self { inner, bytes }
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
        if let (Poll::Ready(Some(Ok(frame))), Some(n)) = (&polled, &self.bytes) {
            if let Some(data) = frame.data_ref() {
                n.0.fetch_add(data.len() as u64, Ordering::Relaxed);
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
