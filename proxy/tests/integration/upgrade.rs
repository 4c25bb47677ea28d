//! HTTP/1.1 upgrades (WebSocket-shaped and a custom protocol) through a
//! sidecar pair, directly and through an east-west gateway: the 101
//! handshake, bytes both ways with half-close, authorization, declined
//! upgrades, route timeouts, and HTTP/2 requests that carry `Upgrade`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use strait_proxy::Proxy;
use strait_proxy::config::IdentitySource;
use strait_proxy::testing::{self, Echo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const CLIENT: &str = "spiffe://strait.local/ns/default/sa/client";
const XFCC_CLIENT: &str =
    "By=spiffe://strait.local/ns/default/sa/web;URI=spiffe://strait.local/ns/default/sa/client";
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// Deny `/admin`, allow only the `client` workload.
const POLICY: &str = "    authorization:\n      - name: web\n        deny:\n          - { paths: [/admin] }\n        allow:\n          - { from: [\"spiffe://strait.local/ns/default/sa/client\"] }\n";

/// An upgrade-echo app behind a server sidecar, and a client sidecar with
/// the service on `vip:8080` (`extra` goes into the service entry of both
/// snapshots, so policies apply).
struct Pair {
    mesh: Mesh,
    app: Echo,
    server: Proxy,
    client: Proxy,
    vip: SocketAddr,
}

async fn pair(octet: u8, extra: &str) -> Pair {
    let mesh = Mesh::new();
    let app = testing::upgrade_echo("127.0.0.1:0".parse().unwrap(), "web-1")
        .await
        .unwrap();
    let vip: SocketAddr = format!("127.77.{octet}.1:8080").parse().unwrap();
    let ip = vip.ip().to_string();
    let nowhere = "127.0.0.1:9".parse().unwrap();
    let own = header(1)
        + &service(
            "web",
            &ip,
            8080,
            "http1",
            &[(nowhere, "us-east/a", "web")],
            extra,
        );
    let server = mesh.server("web", 8080, "http1", app.addr, &own).await;
    let eps = [(server.inbound, "us-east/a", "web")];
    let s = header(1) + &service("web", &ip, 8080, "http1", &eps, extra);
    let client = mesh.client("client", &s).await;
    wait_listening(vip).await;
    Pair {
        mesh,
        app,
        server,
        client,
        vip,
    }
}

/// An HTTP/1.1 client connection that may upgrade.
async fn open<T>(io: T) -> SendRequest<Empty<Bytes>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    send
}

fn upgrade_req(path: &str, proto: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(path)
        .header("host", "web.default.svc.clusterset.local:8080")
        .header("connection", "keep-alive, Upgrade")
        .header("upgrade", proto)
        .header("sec-websocket-key", WS_KEY)
        .header("sec-websocket-version", "13")
        // A claim the destination app must never see.
        .header(
            "x-forwarded-client-cert",
            "URI=spiffe://strait.local/ns/kube-system/sa/admin",
        )
        .body(Empty::new())
        .unwrap()
}

async fn send(
    conn: &mut SendRequest<Empty<Bytes>>,
    req: http::Request<Empty<Bytes>>,
) -> http::Response<Incoming> {
    conn.ready().await.unwrap();
    conn.send_request(req).await.unwrap()
}

fn head(resp: &http::Response<Incoming>, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn text(resp: http::Response<Incoming>) -> String {
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Upgrades a new connection to `addr` and returns the switched stream.
async fn switched(addr: SocketAddr, path: &str, proto: &str) -> TokioIo<Upgraded> {
    let mut conn = open(TcpStream::connect(addr).await.unwrap()).await;
    let resp = send(&mut conn, upgrade_req(path, proto)).await;
    assert_eq!(resp.status(), 101, "{}", text(resp).await);
    TokioIo::new(hyper::upgrade::on(resp).await.unwrap())
}

/// Writes `n` bytes and reads the same bytes back.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, n: usize, seed: u8) {
    let out: Vec<u8> = (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    s.write_all(&out).await.unwrap();
    let mut back = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echo within 5 s")
        .unwrap();
    assert!(back == out, "{n} bytes came back intact");
}

/// Ends our side; the app answers `<name> bye` and closes its side.
async fn half_close<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, name: &str) {
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the app closes after our end")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), format!("{name} bye\n"));
}

fn metric(text: &str, line: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits up to 2 s for a metric to reach `want`.
async fn eventually_metric(proxy: &Proxy, line: &str, want: f64) {
    for _ in 0..200 {
        if metric(&proxy.metrics(), line) >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{line} never reached {want}:\n{}", proxy.metrics());
}

fn upgrades(direction: &str, protocol: &str, result: &str) -> String {
    format!(
        "strait_upgrades_total{{direction=\"{direction}\",source_cluster=\"east\",destination_service=\"web.default\",destination_cluster=\"east\",protocol=\"{protocol}\",result=\"{result}\"}}"
    )
}

#[tokio::test]
async fn websocket_upgrade_crosses_the_pair_and_bytes_flow_both_ways_until_half_close() {
    let p = pair(60, "").await;
    let mut conn = open(TcpStream::connect(p.vip).await.unwrap()).await;
    let resp = send(&mut conn, upgrade_req("/chat", "websocket")).await;
    assert_eq!(resp.status(), 101);
    assert_eq!(head(&resp, "upgrade"), "websocket");
    assert_eq!(head(&resp, "connection").to_ascii_lowercase(), "upgrade");
    assert_eq!(head(&resp, "x-echo-server"), "web-1");
    // The app saw the caller's mesh identity (not the claimed one) and the
    // WebSocket handshake headers intact.
    assert_eq!(head(&resp, "x-echo-peer"), XFCC_CLIENT);
    assert_eq!(head(&resp, "x-echo-key"), WS_KEY);
    let mut ws = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    for (i, n) in [1, 7, 1024, 65_536, 300_000].into_iter().enumerate() {
        round_trip(&mut ws, n, i as u8).await;
    }
    half_close(&mut ws, "web-1").await;
    assert_eq!(p.app.served(), 1);

    let sent = 1 + 7 + 1024 + 65_536 + 300_000;
    for (proxy, dir) in [(&p.client, "outbound"), (&p.server, "inbound")] {
        assert_eq!(
            metric(&proxy.metrics(), &upgrades(dir, "websocket", "switched")),
            1.0
        );
        let labels = format!(
            "{{direction=\"{dir}\",source_cluster=\"east\",destination_service=\"web.default\",destination_cluster=\"east\"}}"
        );
        eventually_metric(
            proxy,
            &format!("strait_upgrade_sent_bytes_total{labels}"),
            sent as f64,
        )
        .await;
        eventually_metric(
            proxy,
            &format!("strait_upgrade_received_bytes_total{labels}"),
            (sent + "web-1 bye\n".len()) as f64,
        )
        .await;
    }
    let requests = "strait_requests_total{direction=\"inbound\",source_cluster=\"east\",source_principal=\"spiffe://strait.local/ns/default/sa/client\",destination_service=\"web.default\",destination_cluster=\"east\",response_code=\"101\"}";
    assert_eq!(
        metric(&p.server.metrics(), requests),
        1.0,
        "{}",
        p.server.metrics()
    );

    // Through the explicit proxy port, with an absolute-form target.
    let mut s = switched(
        p.client.outbound,
        "http://web.default:8080/chat",
        "websocket",
    )
    .await;
    round_trip(&mut s, 5000, 42).await;
    half_close(&mut s, "web-1").await;

    // Several upgraded connections at once, each with its own bytes.
    let mut tasks = Vec::new();
    for i in 0..4u8 {
        let vip = p.vip;
        tasks.push(tokio::spawn(async move {
            let mut s = switched(vip, "/chat", "strait-echo").await;
            for round in 0..5 {
                round_trip(&mut s, 4096, i * 10 + round).await;
            }
            half_close(&mut s, "web-1").await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        metric(
            &p.client.metrics(),
            &upgrades("outbound", "other", "switched")
        ),
        4.0
    );
}

#[tokio::test]
async fn an_upgrade_denied_by_policy_gets_403_and_never_switches() {
    let p = pair(61, POLICY).await;
    let mut conn = open(TcpStream::connect(p.vip).await.unwrap()).await;
    let resp = send(&mut conn, upgrade_req("/admin/socket", "websocket")).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(head(&resp, "strait-error"), "denied");
    assert!(resp.headers().get("upgrade").is_none());
    assert!(text(resp).await.contains("client may not call web.default"));
    // The connection stayed plain HTTP: the next upgrade (allowed) works.
    let resp = send(&mut conn, upgrade_req("/chat", "websocket")).await;
    assert_eq!(resp.status(), 101);
    let mut s = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    round_trip(&mut s, 100, 1).await;

    // Another workload is not allowed at all.
    let ip = "127.77.62.1";
    let eps = [(p.server.inbound, "us-east/a", "web")];
    let s = header(1) + &service("web", ip, 8080, "http1", &eps, "");
    let _intruder = p.mesh.client("intruder", &s).await;
    let vip2 = format!("{ip}:8080").parse().unwrap();
    wait_listening(vip2).await;
    let mut conn = open(TcpStream::connect(vip2).await.unwrap()).await;
    let resp = send(&mut conn, upgrade_req("/chat", "websocket")).await;
    assert_eq!(resp.status(), 403);
    assert!(
        text(resp)
            .await
            .contains("intruder may not call web.default")
    );

    assert_eq!(
        p.app.served(),
        1,
        "only the allowed upgrade reached the app"
    );
    let m = p.server.metrics();
    assert_eq!(
        metric(&m, &upgrades("inbound", "websocket", "denied")),
        2.0,
        "{m}"
    );
    let m = p.client.metrics();
    assert_eq!(
        metric(&m, &upgrades("outbound", "websocket", "denied")),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_declined_upgrade_is_an_ordinary_response_and_the_connection_stays_usable() {
    let p = pair(63, "").await;
    let mut conn = open(TcpStream::connect(p.vip).await.unwrap()).await;
    let resp = send(&mut conn, upgrade_req("/decline", "strait-echo")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("upgrade").is_none());
    assert_eq!(
        text(resp).await,
        format!("web-1 GET /decline peer={XFCC_CLIENT} upgrade=strait-echo\n")
    );
    // Same connection: a plain request, then an upgrade that is accepted.
    let plain = http::Request::get("/next")
        .header("host", "web")
        .body(Empty::new())
        .unwrap();
    let resp = send(&mut conn, plain).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        text(resp).await,
        format!("web-1 GET /next peer={XFCC_CLIENT} upgrade=-\n")
    );
    let resp = send(&mut conn, upgrade_req("/chat", "strait-echo")).await;
    assert_eq!(resp.status(), 101);
    let mut s = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    round_trip(&mut s, 10, 3).await;
    half_close(&mut s, "web-1").await;
    let m = p.client.metrics();
    assert_eq!(
        metric(&m, &upgrades("outbound", "other", "declined")),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, &upgrades("outbound", "other", "switched")),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn the_route_timeout_bounds_the_handshake_but_not_the_upgraded_connection() {
    let p = pair(64, "    routes: [{ timeout: 300ms }]\n").await;
    let mut s = switched(p.vip, "/chat", "strait-echo").await;
    round_trip(&mut s, 10, 1).await;
    // Idle for several route timeouts, then busy again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    round_trip(&mut s, 10, 2).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    round_trip(&mut s, 50_000, 3).await;
    half_close(&mut s, "web-1").await;

    // An app that takes longer than the timeout to answer the handshake.
    let mut conn = open(TcpStream::connect(p.vip).await.unwrap()).await;
    let started = std::time::Instant::now();
    let resp = send(&mut conn, upgrade_req("/slow", "strait-echo")).await;
    assert_eq!(resp.status(), 504);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let m = p.client.metrics();
    assert_eq!(
        metric(&m, &upgrades("outbound", "other", "timeout")),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn an_upgrade_crosses_to_another_cluster_through_the_gateway() {
    let mesh = Mesh::new();
    let app = testing::upgrade_echo("127.0.0.1:0".parse().unwrap(), "west-1")
        .await
        .unwrap();
    let server = mesh
        .server("web", 8080, "http1", app.addr, &header(1))
        .await;
    let gw = mesh.gateway("web", 8080, &[server.inbound]).await;
    let eps = [(server.inbound, "us-west/a", "web")];
    let s = header(1) + &service_via(gw.listener, "web", "127.77.65.1", 8080, "http1", &eps, "");
    let _client = mesh.client("client", &s).await;
    let vip: SocketAddr = "127.77.65.1:8080".parse().unwrap();
    wait_listening(vip).await;

    let tunnels = "strait_gateway_tunnels_total{source_cluster=\"east\",destination_service=\"web.default\",destination_cluster=\"west\",result=\"ok\"}";
    let mut conn = open(TcpStream::connect(vip).await.unwrap()).await;
    let resp = send(&mut conn, upgrade_req("/chat", "websocket")).await;
    assert_eq!(resp.status(), 101, "{}", text(resp).await);
    assert_eq!(head(&resp, "x-echo-peer"), XFCC_CLIENT);
    let mut s = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    for i in 0..5 {
        round_trip(&mut s, 20_000, i).await;
    }
    // The upgrade rode a tunnel of its own.
    assert_eq!(metric(&gw.metrics(), tunnels), 1.0, "{}", gw.metrics());
    // Plain requests still use the pooled session (a second tunnel).
    assert_eq!(http1(vip, get("/plain", "web")).await.0, 200);
    assert_eq!(metric(&gw.metrics(), tunnels), 2.0, "{}", gw.metrics());
    half_close(&mut s, "west-1").await;
}

#[tokio::test]
async fn an_endpoint_that_refuses_the_connection_is_skipped_for_the_next() {
    let mesh = Mesh::new();
    let app = testing::upgrade_echo("127.0.0.1:0".parse().unwrap(), "web-b")
        .await
        .unwrap();
    let server = mesh
        .server("web", 8080, "http1", app.addr, &header(1))
        .await;
    // The local zone's only endpoint refuses connections.
    let dead = "127.0.0.1:9".parse().unwrap();
    let eps = [
        (dead, "us-east/a", "web"),
        (server.inbound, "us-east/b", "web"),
    ];
    let s = header(1) + &service("web", "127.77.68.1", 8080, "http1", &eps, "");
    let _client = mesh.client("client", &s).await;
    let vip: SocketAddr = "127.77.68.1:8080".parse().unwrap();
    wait_listening(vip).await;
    for i in 0..3 {
        let mut s = switched(vip, "/chat", "strait-echo").await;
        round_trip(&mut s, 100, i).await;
        half_close(&mut s, "web-b").await;
    }
}

#[tokio::test]
async fn http2_requests_carrying_upgrade_are_reset_as_malformed() {
    let p = pair(66, "").await;
    let mut s = TcpStream::connect(p.vip).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    // :method GET, :scheme http, :path /, :authority web, then literal
    // `upgrade: websocket` (RFC 9113 8.2.2: connection-specific).
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 0x03];
    block.extend_from_slice(b"web");
    block.extend_from_slice(&[0x00, 0x07]);
    block.extend_from_slice(b"upgrade");
    block.push(0x09);
    block.extend_from_slice(b"websocket");
    out.extend(frame(0x1, 0x5, 1, &block)); // HEADERS, END_STREAM|END_HEADERS
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answer = loop {
        if let Some(a) = stream_one(&got) {
            break a;
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!("no answer for stream 1: {other:?}"),
        }
    };
    assert_eq!(answer, (0x3, 1), "RST_STREAM with PROTOCOL_ERROR");
    assert_eq!(p.app.served(), 0);
    // Good requests still pass.
    assert_eq!(http1(p.vip, get("/ok", "web")).await.0, 200);
}

/// The first frame about stream 1 in `bytes`: (type, RST_STREAM code or 0).
fn stream_one(bytes: &[u8]) -> Option<(u8, u32)> {
    frames(bytes)
        .find(|(kind, stream, _)| *stream == 1 || *kind == 0x7)
        .map(|(kind, _, payload)| {
            let code = payload
                .get(..4)
                .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
            (kind, if kind == 0x3 { code } else { 0 })
        })
}

#[tokio::test]
async fn the_inbound_http11_port_takes_only_upgrades_and_names_the_verified_peer() {
    let p = pair(67, POLICY).await;
    let IdentitySource::Files { chain, key, .. } = p.mesh.identity("client") else {
        unreachable!("identity() issues files")
    };
    let certs = strait_ca::CertStore::from_pem(
        &std::fs::read_to_string(chain).unwrap(),
        &std::fs::read_to_string(key).unwrap(),
    )
    .unwrap();
    let bundle = strait_ca::SharedBundle::new(p.mesh.ca.bundle().unwrap());
    let cfg = strait_ca::tls::client_config(
        &certs,
        &bundle,
        strait_ca::tls::ExpectedServer::Id(id("web")),
        &[b"http/1.1"],
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let dial = || async {
        let tcp = TcpStream::connect(p.server.inbound).await.unwrap();
        let tls = connector
            .connect(ServerName::try_from("x").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        open(tls).await
    };
    // A plain request is refused: this port is for upgrades.
    let mut conn = dial().await;
    let plain = http::Request::get("/x")
        .header("host", "web")
        .header("strait-dst", "web.default:8080")
        .body(Empty::new())
        .unwrap();
    let resp = send(&mut conn, plain).await;
    assert_eq!(
        (resp.status().as_u16(), head(&resp, "strait-error")),
        (400, "upgrade_only".into())
    );
    // An upgrade from the verified workload switches; the app sees the TLS
    // identity, not the header the request carried.
    let mut conn = dial().await;
    let mut req = upgrade_req("/chat", "strait-echo");
    req.headers_mut()
        .insert("strait-dst", "web.default:8080".parse().unwrap());
    let resp = send(&mut conn, req).await;
    assert_eq!(resp.status(), 101);
    assert_eq!(
        head(&resp, "x-echo-peer"),
        format!("By=spiffe://strait.local/ns/default/sa/web;URI={CLIENT}")
    );
    let mut s = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    round_trip(&mut s, 1000, 9).await;
    half_close(&mut s, "web-1").await;
    // Path authorization holds on this port too.
    let mut conn = dial().await;
    let mut req = upgrade_req("/admin", "strait-echo");
    req.headers_mut()
        .insert("strait-dst", "web.default:8080".parse().unwrap());
    assert_eq!(send(&mut conn, req).await.status(), 403);
    assert_eq!(p.app.served(), 1);
}
