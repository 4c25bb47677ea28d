//! Bounded cost per peer on the inbound port: one caller identity holding
//! `max_streams_per_peer` long-lived streams (TCP tunnels, each a CONNECT
//! stream on the pooled connection) gets its next one refused, while
//! another identity is served, and a stream given back is usable again.

use std::net::SocketAddr;
use std::time::Duration;

use strait_proxy::Proxy;
use strait_proxy::config::AppPort;
use strait_proxy::testing;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::support::*;

/// Reads the app's greeting through a VIP; `None` when the connection is
/// closed without one (refused), within 3 s.
async fn greeting(vip: SocketAddr) -> (TcpStream, Option<String>) {
    let mut s = TcpStream::connect(vip).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let text = (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned());
    (s, text)
}

#[tokio::test]
async fn one_caller_is_held_to_its_stream_limit_and_others_are_not() {
    let mesh = Mesh::new();
    let app = testing::tcp("127.0.0.1:0".parse().unwrap(), "db")
        .await
        .unwrap();
    let own = header(1)
        + &service(
            "db",
            "127.77.60.1",
            5432,
            "tcp",
            &[("127.0.0.1:9".parse().unwrap(), "us-east/a", "db")],
            "",
        );
    let mut cfg = mesh.config(
        "db",
        vec![AppPort {
            port: 5432,
            protocol: serde_yaml_ng::from_str("tcp").unwrap(),
            target: Some(app.addr),
            permissive_listen: None,
        }],
        Some("db.default"),
        false,
    );
    cfg.limits.max_streams_per_peer = 2;
    let server = Proxy::start_with(cfg, snap(&own)).await.unwrap();
    let client = |sa: &'static str, vip: &'static str| {
        let s = header(1)
            + &service(
                "db",
                vip,
                5432,
                "tcp",
                &[(server.inbound, "us-east/a", "db")],
                "",
            );
        let mesh = &mesh;
        async move { mesh.client(sa, &s).await }
    };
    let flood = client("client", "127.77.60.2").await;
    let other = client("other", "127.77.60.3").await;
    let (a, b): (SocketAddr, SocketAddr) = (
        "127.77.60.2:5432".parse().unwrap(),
        "127.77.60.3:5432".parse().unwrap(),
    );
    wait_listening(a).await;
    wait_listening(b).await;

    let (held1, g1) = greeting(a).await;
    let (_held2, g2) = greeting(a).await;
    assert_eq!((g1.as_deref(), g2.as_deref()), (Some("db\n"), Some("db\n")));
    let (_, third) = greeting(a).await;
    assert_eq!(third, None, "a third stream of the same caller was served");
    let (_held_b, gb) = greeting(b).await;
    assert_eq!(
        gb.as_deref(),
        Some("db\n"),
        "another identity is unaffected"
    );
    // Counted (the client sidecar may retry the refused stream).
    let m = server.metrics();
    let refused = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "strait_refused_total{direction=\"inbound\",reason=\"peer_stream_limit\"} ",
            )
        })
        .and_then(|v| v.parse::<u64>().ok());
    assert!(refused.is_some_and(|n| n >= 1), "{m}");
    // A stream given back is usable again.
    drop(held1);
    let mut again = None;
    for _ in 0..20 {
        let (s, g) = greeting(a).await;
        if g.is_some() {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "the freed stream was never usable again");
    drop((flood, other, server, app));
}

/// A wrong expected identity (the endpoint's sidecar presents another)
/// names both identities in the caller's 503, so the operator can act.
#[tokio::test]
async fn a_wrong_expected_identity_names_the_expected_and_the_presented_one() {
    let mesh = Mesh::new();
    let app = testing::http(
        "127.0.0.1:0".parse().unwrap(),
        "web",
        false,
        testing::Behaviour::default(),
    )
    .await
    .unwrap();
    let own = header(1)
        + &service(
            "web",
            "127.77.61.1",
            80,
            "http1",
            &[("127.0.0.1:9".parse().unwrap(), "us-east/a", "db")],
            "",
        );
    // The serving sidecar runs as `db`; the caller's snapshot expects `web`.
    let server = mesh.server("db", 80, "http1", app.addr, &own).await;
    let s = header(1)
        + &service(
            "web",
            "127.77.61.2",
            80,
            "http1",
            &[(server.inbound, "us-east/a", "web")],
            "",
        );
    let client = mesh.client("client", &s).await;
    let vip: SocketAddr = "127.77.61.2:80".parse().unwrap();
    wait_listening(vip).await;
    let (status, body) = http1(vip, get("/", "web")).await;
    assert_eq!(status, 503, "{body}");
    // In words, not rustls's debug form.
    let want = "peer is spiffe://strait.local/ns/default/sa/db, expected spiffe://strait.local/ns/default/sa/web";
    assert!(body.contains(want), "{body}");
    assert!(!body.contains("OtherError"), "{body}");
    drop((client, server, app));
}

/// An app cannot pass its answer off as the mesh's: a `strait-error` it
/// sets is removed by its sidecar (callers treat `app_unavailable` as a
/// request never processed and send it elsewhere).
#[tokio::test]
async fn an_app_cannot_forge_a_mesh_error() {
    use tokio::io::AsyncWriteExt;
    let mesh = Mesh::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\nstrait-error: app_unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy")
                    .await;
            });
        }
    });
    let own = header(1)
        + &service(
            "web",
            "127.77.62.1",
            80,
            "http1",
            &[("127.0.0.1:9".parse().unwrap(), "us-east/a", "web")],
            "",
        );
    let server = mesh.server("web", 80, "http1", app_addr, &own).await;
    let s = header(1)
        + &service(
            "web",
            "127.77.62.2",
            80,
            "http1",
            &[(server.inbound, "us-east/a", "web")],
            "",
        );
    let client = mesh.client("client", &s).await;
    let vip: SocketAddr = "127.77.62.2:80".parse().unwrap();
    wait_listening(vip).await;
    let mut tcp = TcpStream::connect(vip).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let head = out
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 503"), "{out}");
    assert!(!head.contains("strait-error: app_unavailable"), "{out}");
    assert!(
        out.ends_with("busy"),
        "the app's own answer reaches the caller: {out}"
    );
    drop((client, server));
}
