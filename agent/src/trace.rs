//! W3C trace context and spans over OTLP, for the sidecar and the gateway.
//!
//! What it is: [`TraceParent`], a strict parser and writer of the W3C
//! `traceparent` header (malformed values are `None`: the caller starts a
//! new trace, never fails the request), and [`Tracer`], an OpenTelemetry
//! tracer that batches spans to an OTLP/gRPC collector ([`TracingConfig`]:
//! endpoint and sampling ratio). Sampling is parent-based: a caller's
//! sampled flag is honoured, traces that start here are sampled at the
//! configured ratio. The decision and the ids are this module's own
//! ([`samples`]): a span that is not sampled is two ids and never
//! touches the OpenTelemetry SDK, which only builds the sampled ones.
//!
//! What it is not: no `tracestate` handling (it travels unchanged, which
//! W3C allows a participant that adds no entry) and no tracing-subscriber
//! layer: spans are built explicitly around requests and tunnels, so a
//! role with tracing off pays nothing.

use std::fmt;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use serde::Deserialize;

pub use opentelemetry::trace::SpanKind;

/// The `traceparent` header's name.
/// A `HeaderName` (not a `&str`): inserting by name then needs no parsing.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// The W3C Trace Context Level 2 response header: the gateway names its
/// tunnel span to the client sidecar with it on the `CONNECT` answer.
pub const TRACERESPONSE: &str = "traceresponse";

/// A parsed `traceparent` (version 00 fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Lowercase hex digits as a number (at most 32 of them). Digits are
/// gathered in 64-bit halves: this runs on every request's
/// `traceparent`, and 128-bit shifts per digit cost more.
fn hex(bytes: &[u8]) -> Option<u128> {
    let half = |part: &[u8]| {
        part.iter()
            .try_fold(0u64, |acc, b| Some(acc << 4 | u64::from(hex_digit(*b)?)))
    };
    let split = bytes.len().saturating_sub(16);
    let (high, low) = bytes.split_at(split);
    Some(u128::from(half(high)?) << (4 * low.len()) | u128::from(half(low)?))
}

impl TraceParent {
    /// Parses a `traceparent` value as W3C Trace Context says: lowercase
    /// hex, version `ff` invalid, all-zero ids invalid; a version above 00
    /// may append fields after a `-`. `None` for anything else.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < 55 {
            return None;
        }
        let version = hex(&value[0..2])?;
        let exact = value.len() == 55;
        if version == 0xff || (version == 0 && !exact) || (!exact && value[55] != b'-') {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let trace_id = hex(&value[3..35])?;
        let parent_id = u64::try_from(hex(&value[36..52])?).ok()?;
        let flags = u8::try_from(hex(&value[53..55])?).ok()?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Whether the caller sampled this trace.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The header value (version 00) for this context. Marked sensitive,
    /// which HTTP/2 encodes as a literal never indexed: a value that
    /// changes on every request would only push the headers that repeat
    /// out of the HPACK table.
    pub fn header(&self) -> http::HeaderValue {
        let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
        put_hex(&mut v[3..35], self.trace_id);
        put_hex(&mut v[36..52], u128::from(self.parent_id));
        put_hex(&mut v[53..55], u128::from(self.flags));
        // Only hex digits and dashes: always a valid header value.
        let mut value = http::HeaderValue::from_bytes(&v)
            .unwrap_or_else(|_| http::HeaderValue::from_static("-"));
        value.set_sensitive(true);
        value
    }

    /// The trace id as 32 hex digits (for logs).
    pub fn trace_id(&self) -> TraceIdHex {
        let mut hex = [b'0'; 32];
        put_hex(&mut hex, self.trace_id);
        TraceIdHex(hex)
    }

    fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from(self.trace_id),
            SpanId::from(self.parent_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::NONE,
        )
    }
}

/// A trace id that prints as 32 lowercase hex digits, without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIdHex([u8; 32]);

impl TraceIdHex {
    pub fn as_str(&self) -> &str {
        // Only hex digits (see `put_hex`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes the low `out.len()` hex digits of `value` into `out`, lowercase
/// and zero-padded (what `traceparent` and the logs use).
fn put_hex(out: &mut [u8], value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // From the last digit back, in 64-bit halves (see `hex`).
    let (mut low, mut high) = (value as u64, (value >> 64) as u64);
    for (i, digit) in out.iter_mut().rev().enumerate() {
        let v = if i < 16 { &mut low } else { &mut high };
        *digit = DIGITS[(*v & 0xf) as usize];
        *v >>= 4;
    }
}

/// The `traceparent` of `headers`, if present and well formed.
pub fn from_headers(headers: &http::HeaderMap) -> Option<TraceParent> {
    headers
        .get(TRACEPARENT)
        .and_then(|v| TraceParent::parse(v.as_bytes()))
}

/// The `tracing:` block of a sidecar or gateway config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/gRPC collector, `http://host:port` (plaintext; put the
    /// collector on loopback or a node-local agent).
    pub otlp: String,
    /// Share of new traces (started here, not continued) that are sampled,
    /// 0.0 to 1.0. Default 1.0.
    #[serde(default = "one")]
    pub sampling: f64,
}

fn one() -> f64 {
    1.0
}

/// Why tracing cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    #[error("tracing.otlp: {value:?} is not an http://host:port collector address: {why}")]
    Endpoint { value: String, why: String },
    #[error("tracing.sampling: {0} is not a ratio between 0.0 and 1.0")]
    Sampling(f64),
    #[error("tracing: the OTLP exporter cannot start: {0}")]
    Exporter(String),
}

impl TracingConfig {
    /// Checks the endpoint and the ratio.
    pub fn validate(&self) -> Result<(), TraceError> {
        if !(0.0..=1.0).contains(&self.sampling) {
            return Err(TraceError::Sampling(self.sampling));
        }
        let bad = |why: &str| TraceError::Endpoint {
            value: self.otlp.clone(),
            why: why.to_owned(),
        };
        let uri: http::Uri = self.otlp.parse().map_err(|_| bad("not a URI"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("the scheme must be http"));
        }
        if uri.port_u16().is_none() {
            return Err(bad("a port is needed (4317 for OTLP/gRPC)"));
        }
        Ok(())
    }
}

/// A tracer that batches spans to an OTLP collector. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tracer {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    /// New traces are sampled when their id is below this ([`bound`]).
    bound: u64,
}

/// The sampling bound for `ratio` (0.0 to 1.0): what [`samples`] compares
/// a trace id's low 63 bits with. The rule is OpenTelemetry's
/// `TraceIdRatioBased`, so every participant using it agrees on a trace.
fn bound(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else {
        // 2^63 as f64 is exact; the product is below it.
        (ratio.max(0.0) * (1u64 << 63) as f64) as u64
    }
}

/// Whether a trace that starts here with `trace_id` is sampled under
/// `bound`: its low 64 bits, shifted right once, are below the bound.
pub fn samples(bound: u64, trace_id: u128) -> bool {
    ((trace_id as u64) >> 1) < bound
}

/// A random id that is not zero (zero ids are invalid in W3C).
fn nonzero<T: Default + PartialEq>(mut draw: impl FnMut() -> T) -> T {
    loop {
        let id = draw();
        if id != T::default() {
            return id;
        }
    }
}

/// How long spans wait in the batch before they are sent.
const EXPORT_EVERY: Duration = Duration::from_millis(500);

impl Tracer {
    /// Starts the exporter (call inside a Tokio runtime; the connection to
    /// the collector is made lazily). `service` is the resource's
    /// `service.name`; `attributes` go on the resource too (cluster,
    /// identity).
    pub fn start(
        cfg: &TracingConfig,
        service: &'static str,
        attributes: Vec<(&'static str, String)>,
    ) -> Result<Self, TraceError> {
        cfg.validate()?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.otlp.clone())
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| TraceError::Exporter(e.to_string()))?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(EXPORT_EVERY)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let resource = Resource::builder_empty()
            .with_attributes(
                std::iter::once(KeyValue::new("service.name", service))
                    .chain(attributes.into_iter().map(|(k, v)| KeyValue::new(k, v))),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            // Sampling is decided in `span`; the SDK only sees sampled spans.
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("strait");
        Ok(Self {
            tracer,
            provider,
            bound: bound(cfg.sampling),
        })
    }

    /// A span named `name`, child of `parent` (a remote context) or the
    /// root of a new trace. Parent-based sampling: a caller's sampled flag
    /// decides; a new trace is sampled at the configured ratio. Unsampled
    /// spans record nothing and cost two random ids, but still carry the
    /// ids to send on.
    pub fn span(&self, name: &'static str, kind: SpanKind, parent: Option<&TraceParent>) -> Span {
        let trace_id = parent.map_or_else(|| nonzero(rand::random::<u128>), |p| p.trace_id);
        let sampled = parent.map_or_else(|| samples(self.bound, trace_id), TraceParent::sampled);
        let ctx = TraceParent {
            trace_id,
            parent_id: nonzero(rand::random::<u64>),
            flags: u8::from(sampled),
        };
        let inner = sampled.then(|| {
            let cx = match parent {
                Some(p) => Context::new().with_remote_span_context(p.span_context()),
                None => Context::new(),
            };
            self.tracer
                .span_builder(name)
                .with_kind(kind)
                .with_trace_id(TraceId::from(ctx.trace_id))
                .with_span_id(SpanId::from(ctx.parent_id))
                .start_with_context(&self.tracer, &cx)
        });
        Span { ctx, inner }
    }

    /// Sends the spans still in the batch (on shutdown).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

/// A span in progress; it ends (and is queued for export when sampled)
/// when [`Span::end`] is called or it is dropped. Unsampled, it is only
/// its context.
#[derive(Debug)]
pub struct Span {
    ctx: TraceParent,
    inner: Option<opentelemetry_sdk::trace::Span>,
}

impl Span {
    /// The context to send on: this span as the parent.
    pub fn context(&self) -> TraceParent {
        self.ctx
    }

    /// Whether the span records (sampled): attributes are only worth
    /// building then.
    pub fn is_recording(&self) -> bool {
        self.inner.is_some()
    }

    /// Sets an attribute (nothing when not sampled).
    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(inner) = &mut self.inner {
            inner.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed with `why` (nothing when not sampled).
    pub fn fail(&mut self, why: impl Into<std::borrow::Cow<'static, str>>) {
        if let Some(inner) = &mut self.inner {
            inner.set_status(Status::error(why));
        }
    }

    /// Ends the span now.
    pub fn end(self) {
        if let Some(mut inner) = self.inner {
            inner.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_parsing_accepts_only_well_formed_values() {
        let ok = Some(TraceParent {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            parent_id: 0x00f067aa0ba902b7,
            flags: 1,
        });
        let cases: &[(&str, Option<TraceParent>)] = &[
            (GOOD, ok),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                ok.map(|t| TraceParent { flags: 0, ..t }),
            ),
            // A later version may append fields after a dash.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what",
                ok,
            ),
            ("", None),
            ("garbage", None),
            // Version 00 has exactly 55 characters.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                None,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                None,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            ),
            // Uppercase hex is not allowed.
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                None,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-\u{e9}",
                None,
            ),
        ];
        for (value, want) in cases {
            assert_eq!(TraceParent::parse(value.as_bytes()), *want, "{value:?}");
        }
    }

    #[test]
    fn traceparent_writes_back_what_it_read() {
        let t = TraceParent::parse(GOOD.as_bytes()).expect("valid");
        assert_eq!(t.header(), GOOD);
        assert!(t.header().is_sensitive(), "never indexed by HPACK");
        let edges = TraceParent {
            trace_id: u128::MAX,
            parent_id: 1,
            flags: 0,
        };
        assert_eq!(
            edges.header(),
            "00-ffffffffffffffffffffffffffffffff-0000000000000001-00"
        );
        assert_eq!(t.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(t.sampled());
    }

    #[test]
    fn config_names_the_bad_field() {
        let cfg = |otlp: &str, sampling| TracingConfig {
            otlp: otlp.into(),
            sampling,
        };
        assert!(cfg("http://127.0.0.1:4317", 0.01).validate().is_ok());
        let e = cfg("http://127.0.0.1:4317", 1.5).validate().unwrap_err();
        assert!(e.to_string().contains("tracing.sampling: 1.5"), "{e}");
        let e = cfg("https://c:4317", 1.0).validate().unwrap_err();
        assert!(e.to_string().contains("tracing.otlp"), "{e}");
        let e = cfg("http://c", 1.0).validate().unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
        let e = cfg("not a uri", 1.0).validate().unwrap_err();
        assert!(e.to_string().contains("not a URI"), "{e}");
    }

    #[test]
    fn new_traces_are_sampled_below_the_ratios_bound() {
        const HALF: u128 = 1 << 63;
        // (ratio, trace id, sampled)
        let table: &[(f64, u128, bool)] = &[
            (0.0, 1, false),
            (0.0, 0, false),
            (1.0, u128::MAX, true),
            (1.0, 1, true),
            (0.5, HALF - 1, true),
            (0.5, HALF, false),
            // Only the low 64 bits count.
            (0.5, (u128::MAX << 64) | (HALF - 1), true),
            (0.01, 1, true),
            (0.01, HALF, false),
            // Out of range ratios are refused by `validate`; clamped here.
            (-1.0, 1, false),
            (2.0, u128::MAX, true),
        ];
        for &(ratio, id, want) in table {
            assert_eq!(samples(bound(ratio), id), want, "ratio {ratio}, id {id:x}");
        }
    }

    #[test]
    fn sampling_agrees_with_opentelemetrys_ratio_sampler() {
        use opentelemetry_sdk::trace::ShouldSample;
        for ratio in [0.0, 0.01, 0.3, 0.5, 0.99, 1.0] {
            let sdk = Sampler::TraceIdRatioBased(ratio);
            for _ in 0..2000 {
                let id = rand::random::<u128>();
                let theirs = sdk
                    .should_sample(None, TraceId::from(id), "s", &SpanKind::Client, &[], &[])
                    .decision
                    == opentelemetry::trace::SamplingDecision::RecordAndSample;
                assert_eq!(
                    samples(bound(ratio), id),
                    theirs,
                    "ratio {ratio}, id {id:x}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_span_continues_the_callers_trace_or_starts_one() {
        let tracer = Tracer::start(
            &TracingConfig {
                otlp: "http://127.182.0.1:9".into(),
                sampling: 0.0,
            },
            "test",
            Vec::new(),
        )
        .expect("starts");
        let parent = TraceParent::parse(GOOD.as_bytes()).expect("valid");
        let span = tracer.span("s", SpanKind::Client, Some(&parent));
        let cx = span.context();
        assert_eq!(cx.trace_id, parent.trace_id);
        assert_ne!(cx.parent_id, parent.parent_id);
        // The caller sampled it: honoured although the ratio is 0.
        assert!(cx.sampled() && span.is_recording());
        span.end();
        let root = tracer.span("s", SpanKind::Client, None);
        assert!(!root.context().sampled() && !root.is_recording());
        assert_ne!(root.context().trace_id, 0);
        root.end();
        // An unsampled caller: not recorded, the trace goes on unsampled
        // under a new span id.
        let unsampled = TraceParent { flags: 0, ..parent };
        let span = tracer.span("s", SpanKind::Server, Some(&unsampled));
        let cx = span.context();
        assert!(!span.is_recording() && !cx.sampled());
        assert_eq!(cx.trace_id, parent.trace_id);
        assert_ne!(cx.parent_id, parent.parent_id);
        assert_ne!(cx.parent_id, 0);
    }

    #[tokio::test]
    async fn a_sampled_root_span_carries_the_ids_it_sends_on() {
        let tracer = Tracer::start(
            &TracingConfig {
                otlp: "http://127.182.0.1:9".into(),
                sampling: 1.0,
            },
            "test",
            Vec::new(),
        )
        .expect("starts");
        let span = tracer.span("s", SpanKind::Client, None);
        assert!(span.is_recording() && span.context().sampled());
        let sdk = span.inner.as_ref().expect("sampled").span_context();
        let cx = span.context();
        assert_eq!(u128::from_be_bytes(sdk.trace_id().to_bytes()), cx.trace_id);
        assert_eq!(u64::from_be_bytes(sdk.span_id().to_bytes()), cx.parent_id);
        assert!(sdk.is_sampled());
        span.end();
    }
}
