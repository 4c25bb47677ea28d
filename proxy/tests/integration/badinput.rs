//! Bad input and hostile peers: each case gets its documented outcome while
//! a concurrent good client keeps succeeding.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::ServerName;
use strait_api::{ClusterName, TrustDomain};
use strait_proxy::Proxy;
use strait_proxy::testing::{self, Behaviour};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A client sidecar and a server sidecar for `web`, with a deny-/admin and
/// allow-only-`client` policy.
struct Pair {
    mesh: Mesh,
    _app: testing::Echo,
    server: Proxy,
    client: Proxy,
    vip: SocketAddr,
}

const POLICY: &str = "    authorization:\n      - name: web\n        deny:\n          - { paths: [/admin] }\n        allow:\n          - { from: [\"spiffe://strait.local/ns/default/sa/client\"] }\n";

async fn pair(octet: u8) -> Pair {
    let mesh = Mesh::new();
    let app = testing::http(
        "127.0.0.1:0".parse().unwrap(),
        "web",
        false,
        Behaviour::default(),
    )
    .await
    .unwrap();
    let vip: SocketAddr = format!("127.77.{octet}.1:80").parse().unwrap();
    // The server needs its own service (with the policy) in its snapshot.
    let own = header(1)
        + &service(
            "web",
            &vip.ip().to_string(),
            80,
            "http1",
            &[("127.0.0.1:9".parse().unwrap(), "us-east/a", "web")],
            POLICY,
        );
    let server = mesh.server("web", 80, "http1", app.addr, &own).await;
    let s = header(1)
        + &service(
            "web",
            &vip.ip().to_string(),
            80,
            "http1",
            &[(server.inbound, "us-east/a", "web")],
            POLICY,
        );
    let client = mesh.client("client", &s).await;
    wait_listening(vip).await;
    Pair {
        mesh,
        _app: app,
        server,
        client,
        vip,
    }
}

/// Runs a good client against `vip` until `stop`; returns (ok, failed).
fn good_client(vip: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let ok = AtomicU64::new(0);
        let bad = AtomicU64::new(0);
        let mut conn = Conn::open(vip).await;
        while !stop.load(Ordering::Relaxed) {
            let (status, _) = conn.get("/good", "web").await;
            if status == 200 {
                ok.fetch_add(1, Ordering::Relaxed);
            } else {
                bad.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (ok.into_inner(), bad.into_inner())
    })
}

async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn smuggling_and_oversized_heads_are_refused_while_good_traffic_flows() {
    let p = pair(20).await;
    let stop = Arc::new(AtomicBool::new(false));
    let good = good_client(p.vip, stop.clone());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "double CL",
            b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"
                .to_vec(),
            "HTTP/1.1 400",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: web\r\nX-A: a\r\n  folded\r\nConnection: close\r\n\r\n"
                .to_vec(),
            "HTTP/1.1 400",
        ),
        (
            "huge header",
            [
                b"GET / HTTP/1.1\r\nHost: web\r\nX-Big: ".to_vec(),
                vec![b'a'; 100 * 1024],
                b"\r\n\r\n".to_vec(),
            ]
            .concat(),
            "HTTP/1.1 431",
        ),
        (
            "header count",
            [
                b"GET / HTTP/1.1\r\nHost: web\r\n".to_vec(),
                (0..200)
                    .flat_map(|i| format!("X-{i}: v\r\n").into_bytes())
                    .collect(),
                b"\r\n".to_vec(),
            ]
            .concat(),
            "HTTP/1.1 431",
        ),
    ];
    for (name, bytes, want) in cases {
        let got = raw(p.vip, &bytes).await;
        assert!(
            got.starts_with(want),
            "{name}: expected {want}, got {:?}",
            got.lines().next()
        );
    }
    // CL+TE (RFC 9112 6.3): Transfer-Encoding wins, Content-Length is
    // dropped and the connection is closed after the response, so a request
    // hidden in the "body" is never run as a second request.
    let smuggle = b"POST /front HTTP/1.1\r\nHost: web\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n";
    let got = raw(p.vip, smuggle).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(
        got.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response: {got}"
    );
    assert!(
        got.contains("web POST /front") && !got.contains("/smuggled"),
        "{got}"
    );
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = good.await.unwrap();
    assert!(
        ok > 0 && failed == 0,
        "good client: {ok} ok, {failed} failed"
    );
}

#[tokio::test]
async fn slowloris_is_cut_off_and_does_not_block_others() {
    let p = pair(21).await;
    let mut slow = TcpStream::connect(p.vip).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n")
        .await
        .unwrap();
    // Others are served while the slow client dawdles.
    let (status, _) = http1(p.vip, get("/", "web")).await;
    assert_eq!(status, 200);
    // The slow client is closed after the header-read timeout (10 s default
    // would be slow for a test; the inbound port checks the same through TLS).
    let mut plain = TcpStream::connect(p.server.inbound).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(3), plain.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "plaintext on the mTLS port gets nothing back");
    assert!(p.server.metrics().contains("reason=\"plaintext\""));
    drop(slow);
}

#[tokio::test]
async fn unauthorized_identity_gets_403_and_deny_paths_cannot_be_bypassed() {
    let p = pair(22).await;
    for path in [
        "/admin",
        "/admin/x",
        "//admin",
        "/a/../admin",
        "/a/%2e%2e/admin",
        "/ADMIN/../admin",
    ] {
        let (status, body) = http1(p.vip, get(path, "web")).await;
        assert!(status == 403 || status == 400, "{path}: {status} {body}");
    }
    let (status, _) = http1(p.vip, get("/%2Fadmin", "web")).await;
    assert!(status == 403 || status == 400, "encoded slash: {status}");
    assert_eq!(http1(p.vip, get("/ok", "web")).await.0, 200);

    // Another workload (sa "intruder") is not allowed by the policy.
    let s = header(1)
        + &service(
            "web",
            "127.77.23.1",
            80,
            "http1",
            &[(p.server.inbound, "us-east/a", "web")],
            "",
        );
    let _intruder = p.mesh.client("intruder", &s).await;
    let vip2 = "127.77.23.1:80".parse().unwrap();
    wait_listening(vip2).await;
    let (status, body) = http1(vip2, get("/ok", "web")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("intruder may not call web.default"), "{body}");
    let m = p.server.metrics();
    assert!(
        m.contains("strait_authz_denied_total{direction=\"inbound\",reason=\"no_allow_match\"}"),
        "{m}"
    );
    let _ = &p.client;
}

#[tokio::test]
async fn certificates_from_another_trust_domain_or_root_are_refused() {
    let p = pair(24).await;
    // A workload of another mesh (other root, other trust domain).
    let tmp = tempfile::tempdir().unwrap();
    let evil_td = TrustDomain::new("evil.local").unwrap();
    let evil = strait_ca::CaDir::init(&tmp.path().join("ca"), &evil_td, Duration::from_secs(3600))
        .unwrap();
    let c = ClusterName::new("x").unwrap();
    evil.new_intermediate(&c, Duration::from_secs(3600))
        .unwrap();
    let files = evil
        .issue(
            &c,
            &strait_api::SpiffeId::parse("spiffe://evil.local/ns/default/sa/client").unwrap(),
            Duration::from_secs(600),
            &tmp.path().join("w"),
        )
        .unwrap();
    let certs = strait_ca::CertStore::from_pem(
        &std::fs::read_to_string(files.chain).unwrap(),
        &std::fs::read_to_string(files.key).unwrap(),
    )
    .unwrap();
    // It trusts our bundle, so only the server's check can stop it.
    let bundle = strait_ca::SharedBundle::new(p.mesh.ca.bundle().unwrap());
    let cfg = strait_ca::tls::client_config(
        &certs,
        &bundle,
        strait_ca::tls::ExpectedServer::AnyInTrustDomain,
        &[b"h2"],
    )
    .unwrap();
    let tcp = TcpStream::connect(p.server.inbound).await.unwrap();
    let r = async {
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("x").unwrap(), tcp)
            .await?;
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await?;
        if n == 0 {
            Err(std::io::Error::other("closed"))
        } else {
            Ok(())
        }
    }
    .await;
    assert!(r.is_err(), "a foreign certificate must not get a session");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(p.server.metrics().contains("reason=\"tls_handshake\""));
    // Good traffic is unaffected.
    assert_eq!(http1(p.vip, get("/", "web")).await.0, 200);
}

/// A minimal HPACK block for `GET http://web/` (all static-table indexes
/// plus a literal authority).
fn get_headers() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84]; // :method GET, :scheme http, :path /
    b.extend_from_slice(&[0x41, 0x03]); // :authority, literal, 3 bytes
    b.extend_from_slice(b"web");
    b
}

#[tokio::test]
async fn http2_rapid_reset_is_cut_off_while_good_traffic_flows() {
    let p = pair(25).await;
    let stop = Arc::new(AtomicBool::new(false));
    let good = good_client(p.vip, stop.clone());
    let mut s = TcpStream::connect(p.vip).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    // First one well-formed request, answered: the frames below are valid.
    out.extend(frame(0x1, 0x5, 1, &get_headers()));
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !got
        .windows(9)
        .any(|w| w[3] == 0x1 && w[5..9] == 1u32.to_be_bytes())
    {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the server closed before answering a valid request");
        got.extend_from_slice(&buf[..n]);
    }
    // Then open and immediately reset thousands of streams (CVE-2023-44487).
    let mut sent = 0u32;
    let mut closed = false;
    for i in 1..5_000u32 {
        let id = 1 + 2 * i;
        let mut burst = frame(0x1, 0x5, id, &get_headers()); // HEADERS, END_STREAM|END_HEADERS
        burst.extend(frame(0x3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
        if s.write_all(&burst).await.is_err() {
            closed = true;
            break;
        }
        sent += 1;
    }
    // The server answers with GOAWAY and closes the connection.
    let mut saw_goaway = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !closed && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed = true,
            Ok(Ok(n)) => {
                saw_goaway |= buf[..n]
                    .windows(4)
                    .any(|w| w[3] == 0x7 && w[0] == 0 && w[1] == 0)
            }
            Err(_) => {}
        }
    }
    eprintln!("rapid reset: {sent} streams sent, goaway seen: {saw_goaway}, closed: {closed}");
    assert!(
        closed,
        "the server must end the attacker's connection (sent {sent} reset streams)"
    );
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = good.await.unwrap();
    assert!(
        ok > 0 && failed == 0,
        "good client: {ok} ok, {failed} failed"
    );
}

#[tokio::test]
async fn http2_continuation_flood_is_refused_while_good_traffic_flows() {
    let p = pair(26).await;
    let stop = Arc::new(AtomicBool::new(false));
    let good = good_client(p.vip, stop.clone());
    let mut s = TcpStream::connect(p.vip).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    // HEADERS without END_HEADERS, then endless CONTINUATION frames.
    out.extend(frame(0x1, 0x1, 1, &get_headers()));
    s.write_all(&out).await.unwrap();
    // Literal header with a new name, 4 KiB value, repeated: 4 MiB in all.
    let mut block = vec![0x00, 0x01, b'x', 0x7f, 0x81, 0x1f]; // name "x", value length 4096 (7-bit prefix int)
    block.extend(std::iter::repeat_n(b'a', 4096));
    let mut ended = false;
    for _ in 0..1_000 {
        if s.write_all(&frame(0x9, 0, 1, &block)).await.is_err() {
            ended = true;
            break;
        }
    }
    if !ended {
        let mut buf = vec![0u8; 4096];
        let r = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await;
        ended = r.unwrap_or(false);
    }
    assert!(
        ended,
        "a header block beyond the limit must end the connection"
    );
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = good.await.unwrap();
    assert!(
        ok > 0 && failed == 0,
        "good client: {ok} ok, {failed} failed"
    );
}

/// HPACK bomb: one 4 KB header enters the dynamic table, then a single
/// 16 KB HEADERS frame refers to it by a one-byte index thousands of times
/// (about 40 MB once decoded). The decoded list passes the header limit, so
/// the stream is answered 431 (or reset) without the app ever seeing it, the
/// connection's memory stays bounded by the 4 KB table, and good traffic
/// keeps flowing.
#[tokio::test]
async fn hpack_bomb_is_refused_with_431_while_good_traffic_flows() {
    let p = pair(27).await;
    let stop = Arc::new(AtomicBool::new(false));
    let good = good_client(p.vip, stop.clone());
    let mut s = TcpStream::connect(p.vip).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let mut block = get_headers();
    // Literal with incremental indexing, new name "x-bomb", 4000-byte value.
    block.extend_from_slice(&[0x40, 0x06]);
    block.extend_from_slice(b"x-bomb");
    block.extend_from_slice(&[0x7f, 0x81, 0x1e]); // 127 + 3873 = 4000 (7-bit prefix int)
    block.extend(std::iter::repeat_n(b'b', 4000));
    // Indexed field 62 (the newest dynamic entry), one byte per 4 KB header.
    block.extend(std::iter::repeat_n(0xbe, 16_384 - block.len()));
    let sent = block.len();
    out.extend(frame(0x1, 0x5, 1, &block));
    s.write_all(&out).await.unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let outcome = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break "closed",
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break "silent",
        }
        match stream_one_answer(&got) {
            Some(answer) => break answer,
            None => continue,
        }
    };
    eprintln!(
        "hpack bomb ({sent} bytes sent): {outcome} after {:?}",
        started.elapsed()
    );
    assert!(
        matches!(outcome, "431" | "reset" | "closed") || outcome.starts_with("goaway"),
        "a header list decoding past the limit must be refused, got {outcome}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusal took too long"
    );
    // The stream never reached the app: nothing was forwarded for it.
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = good.await.unwrap();
    assert!(
        ok > 0 && failed == 0,
        "good client: {ok} ok, {failed} failed"
    );
    assert_eq!(
        p._app.served(),
        ok,
        "the app served exactly the good requests: the bomb never reached it"
    );
}

/// What the peer said about stream 1 in `bytes` (a run of HTTP/2 frames):
/// `431`/`200`/`other` for a response HEADERS, `reset`, or `goaway`.
fn stream_one_answer(bytes: &[u8]) -> Option<&'static str> {
    for (kind, stream, payload) in frames(bytes) {
        match (kind, stream) {
            (0x1, 1) if payload.windows(3).any(|w| w == b"431") => return Some("431"),
            // HPACK static index 8 is `:status 200`.
            (0x1, 1) if payload.first() == Some(&0x88) => return Some("200"),
            (0x1, 1) => return Some("other"),
            (0x3, 1) => return Some("reset"),
            // GOAWAY: last stream id (4), then the error code (4).
            // (h2 answers a header list past the limit with ENHANCE_YOUR_CALM.)
            (0x7, 0) if payload.get(4..8) == Some(&[0, 0, 0, 11]) => {
                return Some("goaway ENHANCE_YOUR_CALM");
            }
            (0x7, 0) => return Some("goaway"),
            _ => {}
        }
    }
    None
}
