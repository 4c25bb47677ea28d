//! Traces across clusters, on real processes (issue 23 item 4): an
//! in-process OTLP/gRPC collector (the `TraceService` of
//! `opentelemetry-proto`, served by tonic) receives the spans of one
//! request that goes app → client sidecar (east) → west's east-west
//! gateway → west's sidecar → app, all real `strait proxy` and
//! `strait gateway` processes with `tracing:` in their configs (static
//! snapshot and export table, as `peer_limits.rs` does). The spans must
//! form one trace, each the child of the one before, continuing the
//! caller's `traceparent`; the app must receive the server span's context;
//! both sidecars' access-log lines (JSON) carry the trace id, byte counts,
//! peer and clusters. With sampling 0 and no caller context nothing is
//! exported, and the context still travels (unsampled) to the app. With
//! the access log off (no per-request record is kept for an unsampled
//! request), unsampled requests still carry fresh contexts and a caller's
//! sampled flag still makes the whole chain of spans.
//! Addresses: 127.182.1.0/24, 127.182.2.0/24 and 127.182.3.0/24.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use support::sidecars::{CLIENT_ID, ECHO_ID};
use support::*;

/// One received span: name, ids (hex), its resource's `service.name` and
/// its string and int attributes.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: Vec<(String, String)>,
}

impl Got {
    fn attr(&self, key: &str) -> &str {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Got>>>);

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(a.value.as_ref()))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                got.push(Got {
                    name: span.name,
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    attrs: span
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(a.value.as_ref())))
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves the collector on `addr` in a runtime of its own, until the
/// runtime is dropped with the returned guard.
fn collector(addr: &str) -> (Collector, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let c = Collector::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .expect("collector port");
    let svc = TraceServiceServer::new(c.clone());
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (c, rt)
}

/// An HTTP/1.1 app answering `west` to every request, remembering each
/// request's `traceparent` (or "" when it had none).
fn app(addr: &str) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind(addr).unwrap();
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut traceparent = String::new();
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {
                                let l = line.to_ascii_lowercase();
                                if let Some(v) = l.strip_prefix("traceparent:") {
                                    traceparent = v.trim().to_owned();
                                }
                            }
                        }
                    }
                    s.lock().unwrap().push(traceparent);
                    if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nwest")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    seen
}

/// West's echo behind its sidecar, west's gateway (fixed export table),
/// and east's client sidecar whose snapshot sends `echo` through that
/// gateway; every one traces to `otlp` at `sampling`, and the sidecars
/// write JSON access logs when `access_log`.
struct Mesh {
    _procs: Vec<Proc>,
    dir: tempfile::TempDir,
    client: SocketAddr,
    app_saw: Arc<Mutex<Vec<String>>>,
}

fn start(net: &str, otlp: &str, sampling: f64, access_log: bool) -> Mesh {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ip = |host: u8| format!("{net}.{host}");
    ca(d, &["east", "west"]);
    issue(d, "west", ECHO_ID, "echo");
    issue(
        d,
        "west",
        "spiffe://strait.local/ns/strait-system/sa/gateway-west",
        "gateway",
    );
    issue(d, "east", CLIENT_ID, "client");
    let app_saw = app(&format!("{}:18080", ip(5)));
    let tracing = format!("tracing: {{ otlp: \"http://{otlp}\", sampling: {sampling} }}\n");
    let echo = format!(
        "trust_domain: strait.local\n{}\
         listeners: {{ inbound: \"{a}:15006\", outbound: \"{a}:15001\", admin: \"{a}:15000\", bind_vips: false }}\n\
         local_service: echo.demo\naccess_log: {access_log}\n{tracing}\
         snapshot_file: echo/snapshot.yaml\n\
         app: [{{ port: 8080, protocol: http1, target: \"{a}:18080\" }}]\n",
        identity_files("echo"),
        a = ip(5)
    );
    std::fs::write(d.join("echo.yaml"), echo).unwrap();
    // West's sidecar knows its cluster from its snapshot (a controller's
    // push in a real cluster).
    std::fs::write(
        d.join("echo/snapshot.yaml"),
        "version: 1\nlocal: { cluster: west }\n",
    )
    .unwrap();
    let gateway = format!(
        "cluster: west\ntrust_domain: strait.local\n{}\
         listeners: {{ public: \"{a}:15443\", admin: \"{a}:15021\" }}\n{tracing}",
        identity_files("gateway"),
        a = ip(1)
    );
    std::fs::write(d.join("gateway.yaml"), gateway).unwrap();
    std::fs::write(
        d.join("exports.yaml"),
        format!(
            "services:\n  - {{ name: echo, namespace: demo, ports: [8080], endpoints: [{{ address: \"{}:15006\" }}] }}\n",
            ip(5)
        ),
    )
    .unwrap();
    let snapshot = format!(
        "version: 1\nlocal: {{ cluster: east }}\nclusters: [west]\nservices:\n\
         \x20 - name: echo\n    namespace: demo\n    vip: 127.99.0.5\n\
         \x20   ports: [{{ port: 8080, protocol: http1 }}]\n\
         \x20   endpoints: [{{ address: \"{e}:15006\", cluster: west, \
         identity: {ECHO_ID}, gateways: [\"{g}:15443\"] }}]\n",
        e = ip(5),
        g = ip(1)
    );
    std::fs::write(d.join("client/snapshot.yaml"), snapshot).unwrap();
    let client = format!(
        "trust_domain: strait.local\n{}\
         listeners: {{ inbound: \"{a}:15006\", outbound: \"{a}:15001\", admin: \"{a}:15000\", bind_vips: false }}\n\
         snapshot_file: client/snapshot.yaml\naccess_log: {access_log}\n{tracing}",
        identity_files("client"),
        a = ip(6)
    );
    std::fs::write(d.join("client.yaml"), client).unwrap();
    let json = ["--log-format", "json"];
    let procs = vec![
        spawn(
            d,
            &[&["proxy", "--config", "echo.yaml"][..], &json].concat(),
            "echo.log",
        ),
        spawn(
            d,
            &[
                &[
                    "gateway",
                    "--config",
                    "gateway.yaml",
                    "--exports",
                    "exports.yaml",
                ][..],
                &json,
            ]
            .concat(),
            "gateway.log",
        ),
        spawn(
            d,
            &[&["proxy", "--config", "client.yaml"][..], &json].concat(),
            "client.log",
        ),
    ];
    for a in [ip(5) + ":15006", ip(1) + ":15443", ip(6) + ":15001"] {
        wait_for(a.parse().unwrap());
    }
    Mesh {
        _procs: procs,
        client: format!("{}:15001", ip(6)).parse().unwrap(),
        dir: tmp,
        app_saw,
    }
}

/// One `GET http://echo.demo:8080/hello` through the client sidecar's
/// explicit proxy port, with `traceparent` when given; the status and body.
fn get(proxy: SocketAddr, traceparent: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let tp = traceparent
        .map(|t| format!("traceparent: {t}\r\ntracestate: vendor=opaque\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET http://echo.demo:8080/hello HTTP/1.1\r\nhost: echo.demo:8080\r\n{tp}connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// The JSON access-log lines (target `strait::access`) of `log`.
fn access_lines(dir: &Path, log: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(log))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "strait::access")
        .map(|v| v["fields"].clone())
        .collect()
}

/// The one span named `name` among `got`.
fn one_span(got: &[Got], name: &str) -> Got {
    let v: Vec<_> = got.iter().filter(|s| s.name == name).collect();
    assert_eq!(v.len(), 1, "one {name} span expected: {got:#?}");
    v[0].clone()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[test]
fn one_cross_cluster_request_is_one_trace_client_then_gateway_then_server() {
    let otlp = "127.182.1.100:4317";
    let (spans, _rt) = collector(otlp);
    let mesh = start("127.182.1", otlp, 1.0, true);
    let caller = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (status, body) = get(mesh.client, Some(&caller));
    assert_eq!((status, body.as_str()), (200, "west"), "the request failed");

    let all = || spans.0.lock().unwrap().clone();
    let ok = holds_within(10, || all().len() >= 3);
    let got = all();
    assert!(ok, "three spans expected, the collector has: {got:#?}");
    let by_name = |n: &str| one_span(&got, n);
    let client = by_name("strait.outbound");
    let tunnel = by_name("strait.tunnel");
    let server = by_name("strait.inbound");
    for s in [&client, &tunnel, &server] {
        assert_eq!(s.trace_id, TRACE, "one trace: {got:#?}");
    }
    assert_eq!(
        client.parent, CALLER_SPAN,
        "the caller's span is the parent"
    );
    assert_eq!(tunnel.parent, client.span_id, "gateway under client");
    assert_eq!(server.parent, tunnel.span_id, "server under gateway");
    assert_eq!(client.service, "strait-sidecar");
    assert_eq!(tunnel.service, "strait-gateway");
    assert_eq!(server.service, "strait-sidecar");
    assert_eq!(client.attr("strait.source_cluster"), "east");
    assert_eq!(client.attr("strait.destination_cluster"), "west");
    assert_eq!(client.attr("strait.peer_identity"), ECHO_ID);
    assert_eq!(client.attr("http.response.status_code"), "200");
    assert_eq!(client.attr("strait.service"), "echo.demo");
    assert_eq!(tunnel.attr("strait.source_cluster"), "east");
    assert_eq!(tunnel.attr("strait.peer_identity"), CLIENT_ID);
    assert_eq!(tunnel.attr("strait.service"), "echo.demo");
    assert_eq!(server.attr("strait.source_cluster"), "east");
    assert_eq!(server.attr("strait.destination_cluster"), "west");
    assert_eq!(server.attr("strait.peer_identity"), CLIENT_ID);
    assert_eq!(server.attr("url.path"), "/hello");
    assert_eq!(server.attr("strait.response_bytes"), "4");

    // The app got the server span as its parent, in the same trace.
    let saw = mesh.app_saw.lock().unwrap().clone();
    assert_eq!(
        saw,
        vec![format!("00-{TRACE}-{}-01", server.span_id)],
        "the app's traceparent"
    );

    // Both sidecars logged the request with its trace id.
    let d = mesh.dir.path();
    let line = |log: &str| {
        let ok = holds_within(5, || !access_lines(d, log).is_empty());
        let lines = access_lines(d, log);
        assert!(ok && lines.len() == 1, "{log}: one access line: {lines:?}");
        lines[0].clone()
    };
    let out = line("client.log");
    assert_eq!(out["direction"], "outbound");
    assert_eq!(out["trace_id"], TRACE);
    assert_eq!(out["method"], "GET");
    assert_eq!(out["authority"], "echo.demo:8080");
    assert_eq!(out["path"], "/hello");
    assert_eq!(out["status"], 200);
    assert_eq!(out["response_bytes"], 4);
    assert_eq!(out["request_bytes"], 0);
    assert_eq!(out["peer"], ECHO_ID);
    assert_eq!(out["source_cluster"], "east");
    assert_eq!(out["destination_cluster"], "west");
    assert_eq!(out["strait_error"], "");
    assert!(
        out["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
        "{out}"
    );
    let inb = line("echo.log");
    assert_eq!(inb["direction"], "inbound");
    assert_eq!(inb["trace_id"], TRACE);
    assert_eq!(inb["peer"], CLIENT_ID);
    assert_eq!(inb["source_cluster"], "east");
    assert_eq!(inb["destination_cluster"], "west");
    assert_eq!(inb["service"], "echo.demo");
    assert_eq!(inb["response_bytes"], 4);
}

#[test]
fn sampling_zero_exports_nothing_but_the_context_still_travels() {
    let otlp = "127.182.2.100:4317";
    let (spans, _rt) = collector(otlp);
    let mesh = start("127.182.2", otlp, 0.0, true);
    for _ in 0..5 {
        let (status, _) = get(mesh.client, None);
        assert_eq!(status, 200);
    }
    // Spans leave in batches every 500 ms: wait well past that.
    pause(2500);
    let got = spans.0.lock().unwrap().clone();
    assert!(got.is_empty(), "sampling 0 exported spans: {got:#?}");
    // Each request still carried a fresh, unsampled context to the app,
    // and both sidecars logged its trace id.
    let saw = mesh.app_saw.lock().unwrap().clone();
    assert_eq!(saw.len(), 5, "{saw:?}");
    let d = mesh.dir.path();
    holds_within(5, || access_lines(d, "echo.log").len() == 5);
    let inbound: Vec<_> = access_lines(d, "echo.log")
        .iter()
        .map(|l| l["trace_id"].as_str().unwrap_or("").to_owned())
        .collect();
    let outbound: Vec<_> = access_lines(d, "client.log")
        .iter()
        .map(|l| l["trace_id"].as_str().unwrap_or("").to_owned())
        .collect();
    for (i, tp) in saw.iter().enumerate() {
        let t = strait_agent::trace::TraceParent::parse(tp.as_bytes())
            .unwrap_or_else(|| panic!("the app got no valid traceparent: {tp:?}"));
        assert!(!t.sampled(), "{tp}");
        let id = t.trace_id().to_string();
        assert!(inbound.contains(&id), "{id} not in {inbound:?}");
        assert!(outbound.contains(&id), "{id} not in {outbound:?}");
        assert!(!saw[..i].contains(tp), "a trace id was reused: {saw:?}");
    }
}

#[test]
fn without_the_access_log_unsampled_requests_carry_context_and_a_sampled_caller_is_traced() {
    let otlp = "127.182.3.100:4317";
    let (spans, _rt) = collector(otlp);
    let mesh = start("127.182.3", otlp, 0.0, false);
    // A caller that sampled its trace: every hop records its span (first,
    // so it opens the tunnel and the gateway makes one too).
    let caller = format!("00-{TRACE}-{CALLER_SPAN}-01");
    assert_eq!(get(mesh.client, Some(&caller)).0, 200);
    for _ in 0..5 {
        assert_eq!(get(mesh.client, None).0, 200);
    }
    let all = || spans.0.lock().unwrap().clone();
    let ok = holds_within(10, || all().len() >= 3);
    // Past a batch interval, so spans of the unsampled requests would show.
    pause(1500);
    let got = all();
    assert!(ok && got.len() == 3, "three spans expected: {got:#?}");
    let by_name = |n: &str| one_span(&got, n);
    let (client, tunnel, server) = (
        by_name("strait.outbound"),
        by_name("strait.tunnel"),
        by_name("strait.inbound"),
    );
    assert!(got.iter().all(|s| s.trace_id == TRACE), "{got:#?}");
    assert_eq!(client.parent, CALLER_SPAN);
    assert_eq!(tunnel.parent, client.span_id);
    assert_eq!(server.parent, tunnel.span_id);
    // Attributes come from the record a sampled request gets.
    assert_eq!(server.attr("strait.peer_identity"), CLIENT_ID);
    assert_eq!(client.attr("strait.destination_cluster"), "west");

    let saw = mesh.app_saw.lock().unwrap().clone();
    assert_eq!(saw.len(), 6, "{saw:?}");
    assert_eq!(saw[0], format!("00-{TRACE}-{}-01", server.span_id));
    for tp in &saw[1..] {
        let t = strait_agent::trace::TraceParent::parse(tp.as_bytes())
            .unwrap_or_else(|| panic!("the app got no valid traceparent: {tp:?}"));
        assert!(!t.sampled(), "{tp}");
    }
    let ids: std::collections::HashSet<_> = saw[1..].iter().collect();
    assert_eq!(ids.len(), 5, "each request its own context: {saw:?}");
    // No access lines with the access log off.
    let d = mesh.dir.path();
    assert!(access_lines(d, "client.log").is_empty());
    assert!(access_lines(d, "echo.log").is_empty());
}
