//! Tunnels through one gateway: bytes both ways, by endpoint or by service
//! name, metrics from the authority, idle timeout, runtime export changes,
//! per-cluster limits and graceful drain.

use std::time::{Duration, Instant};

use strait_gateway::{Gateway, Limits};
use tokio::io::AsyncWriteExt;

use crate::support::*;

#[tokio::test]
async fn connect_pipes_bytes_to_an_exported_endpoint_and_counts_them_per_service() {
    let pki = Pki::new(TD);
    let ep = echo("127.0.30.1").await;
    let gw = Gateway::start(
        pki.gateway("west", "127.0.30.10", Limits::default()),
        exports("reviews", 9080, &[ep]),
    )
    .await
    .unwrap();
    let mut send = h2(gw.listener, pki.client("east", Some("web")))
        .await
        .unwrap();

    // By endpoint address, and by service name (the gateway picks).
    for authority in [ep.to_string(), "reviews.default:9080".to_owned()] {
        let a = connect(&mut send, &authority).await.unwrap();
        assert_eq!((a.status, a.reason.as_str()), (200, ""), "{authority}");
        let mut s = a.stream.unwrap();
        assert_eq!(
            roundtrip(&mut s, b"hello through the gateway").await,
            b"hello through the gateway"
        );
        let big = vec![7u8; 1 << 20];
        assert_eq!(roundtrip(&mut s, &big).await, big);
    }
    // Many streams multiplex over the one connection.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut send = send.clone();
        let authority = ep.to_string();
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&mut send, &authority)
                .await
                .unwrap()
                .stream
                .unwrap();
            let msg = format!("stream {i}");
            assert_eq!(roundtrip(&mut s, msg.as_bytes()).await, msg.as_bytes());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let m = gw.metrics();
    let ok = r#"strait_gateway_tunnels_total{source_cluster="east",destination_service="reviews.default",destination_cluster="west",result="ok"}"#;
    assert_eq!(metric(&m, ok), 22.0, "{m}");
    let to = r#"strait_gateway_bytes_total{source_cluster="east",destination_service="reviews.default",destination_cluster="west",direction="to_endpoint"}"#;
    let from = r#"strait_gateway_bytes_total{source_cluster="east",destination_service="reviews.default",destination_cluster="west",direction="from_endpoint"}"#;
    assert!(metric(&m, to) >= 2.0 * (1 << 20) as f64, "{m}");
    assert!(metric(&m, from) >= 2.0 * (1 << 20) as f64, "{m}");
    assert_eq!(
        metric(
            &m,
            r#"strait_gateway_tunnel_setup_seconds_count{source_cluster="east",destination_cluster="west"}"#
        ),
        22.0,
        "{m}"
    );
    assert!(m.contains("strait_gateway_tunnels_active"), "{m}");

    // The admin port serves the same text, and readiness.
    let admin = reqwest_like(gw.admin, "/metrics").await;
    assert!(admin.contains(ok), "{admin}");
    assert_eq!(reqwest_like(gw.admin, "/ready").await, "ready\n");
}

#[tokio::test]
async fn idle_tunnels_are_closed() {
    let pki = Pki::new(TD);
    let ep = echo("127.0.30.2").await;
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let gw = Gateway::start(
        pki.gateway("west", "127.0.30.11", limits),
        exports("db", 5432, &[ep]),
    )
    .await
    .unwrap();
    let mut send = h2(gw.listener, pki.client("east", Some("web")))
        .await
        .unwrap();
    let mut s = connect(&mut send, &ep.to_string())
        .await
        .unwrap()
        .stream
        .unwrap();
    // Traffic keeps it open past the timeout...
    for _ in 0..5 {
        assert_eq!(roundtrip(&mut s, b"ping").await, b"ping");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(gw.tunnels_active(), 1);
    // ...silence closes it.
    let started = Instant::now();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await
    .expect("the idle tunnel is closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(started.elapsed() >= Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(gw.tunnels_active(), 0);
}

#[tokio::test]
async fn export_table_changes_apply_to_new_tunnels_only() {
    let pki = Pki::new(TD);
    let (a, b) = (echo("127.0.30.3").await, echo("127.0.30.4").await);
    let gw = Gateway::start(
        pki.gateway("west", "127.0.30.12", Limits::default()),
        exports("web", 80, &[a]),
    )
    .await
    .unwrap();
    let mut send = h2(gw.listener, pki.client("east", Some("web")))
        .await
        .unwrap();
    let mut open = connect(&mut send, &a.to_string())
        .await
        .unwrap()
        .stream
        .unwrap();
    assert_eq!(
        connect(&mut send, &b.to_string()).await.unwrap().status,
        403
    );

    gw.apply(exports("web", 80, &[b])).unwrap();
    assert_eq!(
        connect(&mut send, &b.to_string()).await.unwrap().status,
        200
    );
    let gone = connect(&mut send, &a.to_string()).await.unwrap();
    assert_eq!(
        (gone.status, gone.reason.as_str()),
        (403, "unknown_endpoint")
    );
    // The tunnel opened before the change still works.
    assert_eq!(roundtrip(&mut open, b"still here").await, b"still here");
    // A bad table is refused and the current one stays.
    let mut bad = exports("web", 80, &[b]);
    bad.services.push(bad.services[0].clone());
    assert!(
        gw.apply(bad)
            .unwrap_err()
            .to_string()
            .contains("listed twice")
    );
    assert_eq!(gw.exports(), exports("web", 80, &[b]));
}

#[tokio::test]
async fn each_source_cluster_has_its_own_stream_limit() {
    let pki = Pki::new(TD);
    let ep = echo("127.0.30.5").await;
    let limits = Limits {
        max_streams_per_cluster: 2,
        ..Limits::default()
    };
    let gw = Gateway::start(
        pki.gateway("west", "127.0.30.13", limits),
        exports("web", 80, &[ep]),
    )
    .await
    .unwrap();
    let mut east = h2(gw.listener, pki.client("east", Some("a")))
        .await
        .unwrap();
    let mut east2 = h2(gw.listener, pki.client("east", Some("b")))
        .await
        .unwrap();
    let mut central = h2(gw.listener, pki.client("central", Some("a")))
        .await
        .unwrap();
    let t = ep.to_string();
    let s1 = connect(&mut east, &t).await.unwrap().stream.unwrap();
    let _s2 = connect(&mut east2, &t).await.unwrap().stream.unwrap();
    // The limit is per cluster, across connections.
    let third = connect(&mut east, &t).await.unwrap();
    assert_eq!((third.status, third.reason.as_str()), (429, "stream_limit"));
    assert_eq!(connect(&mut central, &t).await.unwrap().status, 200);
    // A closed tunnel frees its slot.
    drop(s1);
    let mut ok = false;
    for _ in 0..50 {
        if connect(&mut east, &t).await.unwrap().status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "slot released");
    let m = gw.metrics();
    let limited = r#"strait_gateway_tunnels_total{source_cluster="east",destination_service="web.default",destination_cluster="west",result="stream_limit"}"#;
    assert!(metric(&m, limited) >= 1.0, "{m}");
    assert!(m.contains(r#"source_cluster="central""#), "{m}");
}

#[tokio::test]
async fn each_peer_identity_has_its_own_stream_limit() {
    let pki = Pki::new(TD);
    let ep = echo("127.0.30.8").await;
    let limits = Limits {
        max_streams_per_peer: 1,
        ..Limits::default()
    };
    let gw = Gateway::start(
        pki.gateway("west", "127.0.30.16", limits),
        exports("web", 80, &[ep]),
    )
    .await
    .unwrap();
    let mut a1 = h2(gw.listener, pki.client("east", Some("a")))
        .await
        .unwrap();
    let mut a2 = h2(gw.listener, pki.client("east", Some("a")))
        .await
        .unwrap();
    let mut b = h2(gw.listener, pki.client("east", Some("b")))
        .await
        .unwrap();
    let t = ep.to_string();
    let _s1 = connect(&mut a1, &t).await.unwrap().stream.unwrap();
    // Per identity across connections; another identity of the same
    // cluster is unaffected.
    let second = connect(&mut a2, &t).await.unwrap();
    assert_eq!(
        (second.status, second.reason.as_str()),
        (429, "peer_stream_limit")
    );
    assert_eq!(connect(&mut b, &t).await.unwrap().status, 200);
    let m = gw.metrics();
    let limited = r#"strait_gateway_tunnels_total{source_cluster="east",destination_service="web.default",destination_cluster="west",result="peer_stream_limit"}"#;
    assert!(metric(&m, limited) >= 1.0, "{m}");
}

#[tokio::test]
async fn shutdown_drains_open_tunnels_and_refuses_new_connections() {
    let pki = Pki::new(TD);
    let ep = echo("127.0.30.6").await;
    let limits = Limits {
        drain_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let gw = Gateway::start(
        pki.gateway("west", "127.0.30.14", limits),
        exports("web", 80, &[ep]),
    )
    .await
    .unwrap();
    let listener = gw.listener;
    let mut send = h2(listener, pki.client("east", Some("web"))).await.unwrap();
    let mut s = connect(&mut send, &ep.to_string())
        .await
        .unwrap()
        .stream
        .unwrap();
    let drain = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // No new connections; the open tunnel still carries bytes.
    assert!(h2(listener, pki.client("east", Some("web"))).await.is_err());
    assert_eq!(roundtrip(&mut s, b"finishing up").await, b"finishing up");
    assert!(!drain.is_finished(), "drain waits for the open tunnel");
    // The tunnel ends: the drain completes well before its deadline.
    s.shutdown().await.unwrap();
    drop(s);
    tokio::time::timeout(Duration::from_secs(3), drain)
        .await
        .expect("drain finished when the last tunnel closed")
        .unwrap();
}

#[tokio::test]
async fn drain_cuts_tunnels_still_open_at_the_deadline() {
    let pki = Pki::new(TD);
    let ep = echo("127.0.30.7").await;
    let limits = Limits {
        drain_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let gw = Gateway::start(
        pki.gateway("west", "127.0.30.15", limits),
        exports("web", 80, &[ep]),
    )
    .await
    .unwrap();
    let mut send = h2(gw.listener, pki.client("east", Some("web")))
        .await
        .unwrap();
    let mut s = connect(&mut send, &ep.to_string())
        .await
        .unwrap()
        .stream
        .unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), gw.shutdown())
        .await
        .expect("drain ends at its deadline");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let mut buf = [0u8; 4];
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await;
    assert!(matches!(r, Ok(Ok(0) | Err(_))), "tunnel was cut: {r:?}");
}
