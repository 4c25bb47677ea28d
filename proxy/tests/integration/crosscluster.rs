//! Across clusters: app (east) -> east sidecar ==mTLS h2 CONNECT==> west
//! gateway --inner mTLS--> west sidecar -> app, with real gateways from
//! `strait-gateway`. Each cluster has its own intermediate under one root
//! and its own loopback range (east 127.0.40.x, west 127.0.41-43.x, central
//! 127.0.44.x).

mod world;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use strait_gateway::Gateway;
use strait_gateway::tunnel::Tap;
use strait_proxy::testing::{self, pb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Conn, TD, http1, wait_listening};
use world::*;

#[tokio::test]
async fn http1_grpc_and_tcp_cross_from_east_to_a_service_that_exists_only_in_west() {
    let w = World::new();
    let web = http_app("127.0.41.1", "reviews-west").await;
    let grpc = testing::grpc("127.0.41.2:0".parse().unwrap(), "grpc-west")
        .await
        .unwrap();
    let tcp = testing::tcp("127.0.41.3:0".parse().unwrap(), "tcp-west")
        .await
        .unwrap();
    let hidden = http_app("127.0.41.4", "hidden").await;
    let s_web = w
        .sidecar(
            "west",
            "127.0.41.11",
            "reviews",
            Some((9080, "http1", web.addr)),
            "",
        )
        .await;
    let s_grpc = w
        .sidecar(
            "west",
            "127.0.41.12",
            "echo",
            Some((50051, "grpc", grpc.addr)),
            "",
        )
        .await;
    let s_tcp = w
        .sidecar(
            "west",
            "127.0.41.13",
            "db",
            Some((5432, "tcp", tcp.addr)),
            "",
        )
        .await;
    let s_hidden = w
        .sidecar(
            "west",
            "127.0.41.14",
            "hidden",
            Some((80, "http1", hidden.addr)),
            "",
        )
        .await;
    let gw = w
        .gateway(
            "west",
            "127.0.41.100",
            exports(&[
                ("reviews", 9080, &[s_web.inbound]),
                ("echo", 50051, &[s_grpc.inbound]),
                ("db", 5432, &[s_tcp.inbound]),
            ]),
        )
        .await;
    let g = [gw.listener];
    let east = east_snapshot(&[
        (
            "reviews",
            "127.77.40.1",
            9080,
            "http1",
            &[(s_web.inbound, "west", "reviews", &g)],
            "",
        ),
        (
            "echo",
            "127.77.40.2",
            50051,
            "grpc",
            &[(s_grpc.inbound, "west", "echo", &g)],
            "",
        ),
        (
            "db",
            "127.77.40.3",
            5432,
            "tcp",
            &[(s_tcp.inbound, "west", "db", &g)],
            "",
        ),
        (
            "hidden",
            "127.77.40.4",
            80,
            "http1",
            &[(s_hidden.inbound, "west", "hidden", &g)],
            "",
        ),
    ]);
    let client = w
        .sidecar("east", "127.0.40.1", "frontend", None, &east)
        .await;
    let vip: SocketAddr = "127.77.40.1:9080".parse().unwrap();
    wait_listening(vip).await;

    // HTTP/1.1: the west app sees the east workload's own identity.
    let started = Instant::now();
    let mut conn = Conn::open(vip).await;
    let (status, body) = conn.get("/hello", "reviews").await;
    let first = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body.lines().next().unwrap(),
        format!("reviews-west GET /hello peer=By=spiffe://{TD}/ns/default/sa/reviews;URI={CLIENT}")
    );
    let started = Instant::now();
    for _ in 0..50 {
        assert_eq!(conn.get("/again", "reviews").await.0, 200);
    }
    let warm = started.elapsed() / 50;
    eprintln!(
        "cross-cluster HTTP/1.1: first request (new gateway connection + tunnel) {first:?}, then {warm:?} per request"
    );
    let post = http::Request::post("/upload")
        .header("host", "reviews")
        .body(Full::new(Bytes::from(vec![b'x'; 200_000])))
        .unwrap();
    let (status, body) = http1(vip, post).await;
    assert_eq!(status, 200);
    assert!(body.ends_with(&"x".repeat(200_000)));
    // All of it rode one tunnel (pooled inner session over one connection).
    assert_eq!(tunnels_ok(&gw, "reviews.default"), 1.0, "{}", gw.metrics());

    // gRPC unary and server streaming.
    wait_listening("127.77.40.2:50051".parse().unwrap()).await;
    let mut c = pb::echo_client::EchoClient::connect("http://127.77.40.2:50051")
        .await
        .unwrap();
    let r = c
        .unary(pb::EchoRequest {
            message: "hi".into(),
            count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            r.server.as_str(),
            r.peer.ends_with(&format!("URI={CLIENT}"))
        ),
        ("grpc-west", true),
        "{r:?}"
    );
    let mut stream = c
        .stream(pb::EchoRequest {
            message: "s".into(),
            count: 100,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        seqs.push(item.seq);
    }
    assert_eq!(seqs, (0..100).collect::<Vec<_>>());

    // Raw TCP: a CONNECT stream inside the inner session inside the tunnel.
    let mut t = TcpStream::connect("127.77.40.3:5432").await.unwrap();
    let mut greeting = [0u8; 9];
    t.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"tcp-west\n");
    let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut wr) = t.into_split();
    let p = payload.clone();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        wr.write_all(&p).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "cross-cluster TCP echo: 2 MB each way in {secs:.3}s ({:.0} Mbit/s each way, debug build)",
        16.0 / secs
    );
    assert!(back == payload, "bytes arrive intact and in order");

    // A west service the gateway does not export is unreachable.
    let (status, body) = http1(
        "127.77.40.4:80".parse().unwrap(),
        crate::support::get("/", "hidden"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(hidden.served(), 0);
    let m = gw.metrics();
    assert!(
        metric(
            &m,
            r#"strait_gateway_tunnels_total{source_cluster="east",destination_service="unknown",destination_cluster="west",result="unknown_endpoint"}"#
        ) >= 1.0,
        "{m}"
    );
    for svc in ["reviews.default", "echo.default", "db.default"] {
        assert!(tunnels_ok(&gw, svc) >= 1.0, "{svc}: {m}");
        let bytes = format!(
            r#"strait_gateway_bytes_total{{source_cluster="east",destination_service="{svc}",destination_cluster="west",direction="to_endpoint"}}"#
        );
        assert!(metric(&m, &bytes) > 0.0, "{bytes}: {m}");
    }
    drop(client);
}

#[tokio::test]
async fn the_gateway_moves_only_tls_records_it_cannot_read() {
    const MARKER: &str = "PLAINTEXT-MARKER-7f3a9c";
    let w = World::new();
    let web = http_app("127.0.42.1", "web-west").await;
    let tcp = testing::tcp("127.0.42.2:0".parse().unwrap(), "tcp-west")
        .await
        .unwrap();
    let s_web = w
        .sidecar(
            "west",
            "127.0.42.11",
            "web",
            Some((80, "http1", web.addr)),
            "",
        )
        .await;
    let s_tcp = w
        .sidecar(
            "west",
            "127.0.42.12",
            "db",
            Some((5432, "tcp", tcp.addr)),
            "",
        )
        .await;
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let tap: Tap = {
        let seen = seen.clone();
        Arc::new(move |_dir, bytes: &[u8]| seen.lock().unwrap().extend_from_slice(bytes))
    };
    let gw = Gateway::start_tapped(
        w.gateway_config("west", "127.0.42.100"),
        exports(&[
            ("web", 80, &[s_web.inbound]),
            ("db", 5432, &[s_tcp.inbound]),
        ]),
        tap,
    )
    .await
    .unwrap();
    let g = [gw.listener];
    let east = east_snapshot(&[
        (
            "web",
            "127.77.42.1",
            80,
            "http1",
            &[(s_web.inbound, "west", "web", &g)],
            "",
        ),
        (
            "db",
            "127.77.42.2",
            5432,
            "tcp",
            &[(s_tcp.inbound, "west", "db", &g)],
            "",
        ),
    ]);
    let _client = w
        .sidecar("east", "127.0.40.2", "frontend", None, &east)
        .await;
    wait_listening("127.77.42.1:80".parse().unwrap()).await;

    let req = http::Request::post(format!("/{MARKER}"))
        .header("host", "web")
        .header("x-secret", MARKER)
        .body(Full::new(Bytes::from(MARKER.repeat(100))))
        .unwrap();
    let (status, body) = http1("127.77.42.1:80".parse().unwrap(), req).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(MARKER), "the app got the plaintext: {body}");
    let mut t = TcpStream::connect("127.77.42.2:5432").await.unwrap();
    let mut greeting = [0u8; 9];
    t.read_exact(&mut greeting).await.unwrap();
    t.write_all(MARKER.as_bytes()).await.unwrap();
    let mut back = vec![0u8; MARKER.len()];
    t.read_exact(&mut back).await.unwrap();
    assert_eq!(back, MARKER.as_bytes());

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() > 2 * MARKER.len() * 100,
        "the tap saw the tunnel bytes ({} bytes)",
        seen.len()
    );
    let plain = seen
        .windows(8)
        .any(|w| MARKER.as_bytes().windows(8).any(|m| m == w));
    assert!(
        !plain,
        "no 8-byte piece of the marker crossed the gateway in clear"
    );
    for needle in [b"PLAINTEXT".as_slice(), b"x-secret", b"POST /", b"tcp-west"] {
        assert!(
            !seen.windows(needle.len()).any(|w| w == needle),
            "{:?} seen",
            String::from_utf8_lossy(needle)
        );
    }
    // Every tunnel starts with a TLS 1.3 ClientHello record (0x16 0x03).
    assert_eq!(&seen[..2], &[0x16, 0x03]);
}

#[tokio::test]
async fn killing_one_of_two_gateway_replicas_mid_load_fails_at_most_the_in_flight_requests() {
    let w = World::new();
    let (a1, a2) = (
        http_app("127.0.43.1", "west-1").await,
        http_app("127.0.43.2", "west-2").await,
    );
    let s1 = w
        .sidecar(
            "west",
            "127.0.43.11",
            "web",
            Some((80, "http1", a1.addr)),
            "",
        )
        .await;
    let s2 = w
        .sidecar(
            "west",
            "127.0.43.12",
            "web",
            Some((80, "http1", a2.addr)),
            "",
        )
        .await;
    let table = exports(&[("web", 80, &[s1.inbound, s2.inbound])]);
    let gw1 = w.gateway("west", "127.0.43.100", table.clone()).await;
    let gw2 = w.gateway("west", "127.0.43.101", table).await;
    let g = [gw1.listener, gw2.listener];
    let east = east_snapshot(&[(
        "web",
        "127.77.43.1",
        80,
        "http1",
        &[
            (s1.inbound, "west", "web", &g),
            (s2.inbound, "west", "web", &g),
        ],
        "",
    )]);
    let _client = w
        .sidecar("east", "127.0.40.3", "frontend", None, &east)
        .await;
    let vip = "127.77.43.1:80".parse().unwrap();
    wait_listening(vip).await;

    const WORKERS: usize = 8;
    let stop = Arc::new(AtomicUsize::new(0));
    let running = tokio::spawn(load(vip, WORKERS, stop.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (before1, before2) = (
        tunnels_ok(&gw1, "web.default"),
        tunnels_ok(&gw2, "web.default"),
    );
    assert!(
        before1 >= 1.0 && before2 >= 1.0,
        "both replicas carry traffic: {before1} {before2}"
    );
    gw1.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let served_by_gw2 = tunnels_ok(&gw2, "web.default");
    stop.store(1, Ordering::Relaxed);
    let (seen, failed) = running.await.unwrap();
    let total: usize = seen.values().sum();
    eprintln!(
        "replica kill: {total} served, {failed} failed, gw2 tunnels {before2} -> {served_by_gw2}, {:?} after kill",
        killed.elapsed()
    );
    assert!(
        failed <= WORKERS,
        "at most the in-flight requests fail: {failed} of {total}"
    );
    assert!(total > 200, "{seen:?}");
    assert!(
        seen.len() == 2,
        "both endpoints keep serving through the surviving gateway: {seen:?}"
    );
    // After the kill, everything runs through the survivor.
    let mut conn = Conn::open(vip).await;
    for _ in 0..50 {
        assert_eq!(conn.get("/", "web").await.0, 200);
    }
}

#[tokio::test]
async fn with_its_only_gateway_dead_west_fails_over_to_central() {
    let w = World::new();
    let (west, central) = (
        http_app("127.0.41.201", "west").await,
        http_app("127.0.44.1", "central").await,
    );
    let s_west = w
        .sidecar(
            "west",
            "127.0.41.211",
            "web",
            Some((80, "http1", west.addr)),
            "",
        )
        .await;
    let s_central = w
        .sidecar(
            "central",
            "127.0.44.11",
            "web",
            Some((80, "http1", central.addr)),
            "",
        )
        .await;
    let gw_west = w
        .gateway(
            "west",
            "127.0.41.250",
            exports(&[("web", 80, &[s_west.inbound])]),
        )
        .await;
    let gw_central = w
        .gateway(
            "central",
            "127.0.44.100",
            exports(&[("web", 80, &[s_central.inbound])]),
        )
        .await;
    let extra = "    routes: [{ retry: { attempts: 2, retry_on: [connect-failure, reset, 5xx] } }]\n    outlier_detection: { consecutive_failures: 2, base_ejection_time: 30s }\n    traffic: { failover: [west, central] }\n";
    let east = east_snapshot(&[(
        "web",
        "127.77.44.1",
        80,
        "http1",
        &[
            (s_west.inbound, "west", "web", &[gw_west.listener]),
            (s_central.inbound, "central", "web", &[gw_central.listener]),
        ],
        extra,
    )]);
    let client = w
        .sidecar("east", "127.0.40.4", "frontend", None, &east)
        .await;
    let vip = "127.77.44.1:80".parse().unwrap();
    wait_listening(vip).await;

    let stop = Arc::new(AtomicUsize::new(0));
    let (seen, failed) = {
        let s = stop.clone();
        let t = tokio::spawn(load(vip, 4, s));
        tokio::time::sleep(Duration::from_millis(400)).await;
        stop.store(1, Ordering::Relaxed);
        t.await.unwrap()
    };
    assert_eq!(
        (failed, seen.keys().collect::<Vec<_>>()),
        (0, vec![&"west".to_owned()])
    );

    stop.store(0, Ordering::Relaxed);
    let running = tokio::spawn(load(vip, 4, stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw_west.kill();
    let killed = Instant::now();
    // Time until a request is served by central.
    let mut conn = Conn::open(vip).await;
    let failover = loop {
        let (status, body) = conn.get("/", "web").await;
        if status == 200 && body.starts_with("central ") {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "no failover: {status} {body}"
        );
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(1, Ordering::Relaxed);
    let (seen, failed) = running.await.unwrap();
    eprintln!("gateway loss: failover to central after {failover:?}; {seen:?}, {failed} failed");
    assert!(
        failed <= 4,
        "at most the in-flight requests fail: {failed} {seen:?}"
    );
    assert!(seen.get("central").copied().unwrap_or(0) > 50, "{seen:?}");
    let (seen, failed) = load_n(vip, 100).await;
    assert_eq!((failed, seen), (0, 100), "all traffic now goes to central");
    let reason = client.route_reason("default", "web").unwrap();
    assert!(
        reason.contains("central"),
        "status explains the failover: {reason}"
    );
}
