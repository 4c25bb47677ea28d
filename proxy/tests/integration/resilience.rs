//! Retries, timeouts, outlier detection, locality preference, failover and
//! `distribute` weights, end to end through real sidecars.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use strait_proxy::testing::{self, Behaviour, Echo};

use crate::support::*;

async fn app(name: &str, b: Behaviour) -> Echo {
    testing::http("127.0.0.1:0".parse().unwrap(), name, false, b)
        .await
        .unwrap()
}

/// Counts which app answered each of `n` requests (by the first word).
async fn spread(vip: SocketAddr, n: usize) -> (HashMap<String, usize>, usize) {
    let mut conn = Conn::open(vip).await;
    let mut seen = HashMap::new();
    let mut failed = 0;
    for _ in 0..n {
        let (status, body) = conn.get("/", "web").await;
        if status == 200 {
            *seen
                .entry(body.split(' ').next().unwrap().to_owned())
                .or_default() += 1;
        } else {
            failed += 1;
        }
    }
    (seen, failed)
}

#[tokio::test]
async fn failed_requests_are_retried_on_another_endpoint() {
    let mesh = Mesh::new();
    let bad = app(
        "bad",
        Behaviour {
            failure_rate: 1.0,
            ..Default::default()
        },
    )
    .await;
    let good = app("good", Behaviour::default()).await;
    let s_bad = mesh.server("web", 80, "http1", bad.addr, &header(1)).await;
    let s_good = mesh.server("web", 80, "http1", good.addr, &header(1)).await;
    let extra = "    routes: [{ retry: { attempts: 2, retry_on: [5xx], budget: { percent: 100, min_per_second: 100 } } }]\n    outlier_detection: { consecutive_failures: 0 }\n";
    let s = header(1)
        + &service(
            "web",
            "127.77.10.1",
            80,
            "http1",
            &[
                (s_bad.inbound, "us-east/a", "web"),
                (s_good.inbound, "us-east/a", "web"),
            ],
            extra,
        );
    let client = mesh.client("client", &s).await;
    let vip = "127.77.10.1:80".parse().unwrap();
    wait_listening(vip).await;
    let (seen, failed) = spread(vip, 100).await;
    assert_eq!(
        failed, 0,
        "every failure must be retried elsewhere: {seen:?}"
    );
    assert_eq!(seen.get("good"), Some(&100));
    assert!(bad.served() > 0, "the failing endpoint was tried");
    assert!(
        client
            .metrics()
            .contains("strait_retries_total{source_cluster=\"east\",destination_service=\"web.default\",destination_cluster=\"east\",reason=\"retry\"}")
    );
}

#[tokio::test]
async fn a_slow_endpoint_hits_the_route_timeout() {
    let mesh = Mesh::new();
    let slow = app(
        "slow",
        Behaviour {
            latency: Duration::from_secs(3),
            ..Default::default()
        },
    )
    .await;
    let srv = mesh.server("web", 80, "http1", slow.addr, &header(1)).await;
    let extra = "    routes: [{ timeout: 200ms }]\n";
    let s = header(1)
        + &service(
            "web",
            "127.77.11.1",
            80,
            "http1",
            &[(srv.inbound, "us-east/a", "web")],
            extra,
        );
    let _client = mesh.client("client", &s).await;
    let vip = "127.77.11.1:80".parse().unwrap();
    wait_listening(vip).await;
    let t = Instant::now();
    let (status, body) = http1(vip, get("/", "web")).await;
    assert_eq!(status, 504, "{body}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert!(body.contains("did not answer within 200ms"), "{body}");
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint_and_lets_it_back() {
    let mesh = Mesh::new();
    let bad = app(
        "bad",
        Behaviour {
            failure_rate: 1.0,
            ..Default::default()
        },
    )
    .await;
    let good = app("good", Behaviour::default()).await;
    let bad_addr = bad.addr;
    let s_bad = mesh.server("web", 80, "http1", bad.addr, &header(1)).await;
    let s_good = mesh.server("web", 80, "http1", good.addr, &header(1)).await;
    let extra = "    routes: [{ retry: { attempts: 0 } }]\n    outlier_detection: { consecutive_failures: 3, base_ejection_time: 1s, max_ejection_percent: 50 }\n    traffic: { load_balancer: round-robin }\n";
    let s = header(1)
        + &service(
            "web",
            "127.77.12.1",
            80,
            "http1",
            &[
                (s_bad.inbound, "us-east/a", "web"),
                (s_good.inbound, "us-east/a", "web"),
            ],
            extra,
        );
    let client = mesh.client("client", &s).await;
    let vip = "127.77.12.1:80".parse().unwrap();
    wait_listening(vip).await;
    let (seen, failed) = spread(vip, 60).await;
    assert_eq!(
        failed, 3,
        "only the failures before ejection reach the caller: {seen:?}"
    );
    assert_eq!(bad.served(), 3);
    assert!(client.metrics().contains("strait_outlier_ejections_total"));
    // The endpoint recovers; after the ejection time it gets traffic again.
    drop(bad);
    let healed = loop {
        match testing::http(bad_addr, "healed", false, Behaviour::default()).await {
            Ok(e) => break e,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (seen, failed) = spread(vip, 20).await;
    assert_eq!(failed, 0, "{seen:?}");
    assert!(
        healed.served() > 0,
        "the recovered endpoint is used again: {seen:?}"
    );
}

#[tokio::test]
async fn traffic_prefers_the_local_zone_and_fails_over_when_it_dies() {
    let mesh = Mesh::new();
    let local = app("local", Behaviour::default()).await;
    let region = app("region", Behaviour::default()).await;
    let remote = app("remote", Behaviour::default()).await;
    let s_local = mesh
        .server("web", 80, "http1", local.addr, &header(1))
        .await;
    let s_region = mesh
        .server("web", 80, "http1", region.addr, &header(1))
        .await;
    let s_remote = mesh
        .server("web", 80, "http1", remote.addr, &header(1))
        .await;
    let extra = "    routes: [{ retry: { attempts: 2, retry_on: [connect-failure, 5xx] } }]\n    outlier_detection: { consecutive_failures: 2, base_ejection_time: 30s }\n    traffic: { failover: [west] }\n";
    let eps = [
        (s_local.inbound, "us-east/a", "web"),
        (s_region.inbound, "us-east/b", "web"),
        (s_remote.inbound, "us-west/a", "web"),
    ];
    let gw = mesh.gateway("web", 80, &[s_remote.inbound]).await;
    let s = header(1) + &service_via(gw.listener, "web", "127.77.13.1", 80, "http1", &eps, extra);
    let client = mesh.client("client", &s).await;
    let vip = "127.77.13.1:80".parse().unwrap();
    wait_listening(vip).await;
    let (seen, failed) = spread(vip, 50).await;
    assert_eq!((failed, seen.get("local")), (0, Some(&50)), "{seen:?}");

    // The local zone dies: the same region takes over, with no failed request.
    drop(local);
    let (seen, failed) = spread(vip, 50).await;
    assert_eq!(failed, 0, "{seen:?}");
    assert!(seen.get("region").copied().unwrap_or(0) >= 49, "{seen:?}");
    // Then the region dies too: the next cluster in failover order.
    drop(region);
    let (seen, failed) = spread(vip, 50).await;
    assert_eq!(failed, 0, "{seen:?}");
    assert!(seen.get("remote").copied().unwrap_or(0) >= 49, "{seen:?}");
    let reason = client.route_reason("default", "web").unwrap();
    assert!(
        reason.contains("west"),
        "status explains the failover: {reason}"
    );
}

#[tokio::test]
async fn distribute_weights_split_traffic_80_20_within_5_percent() {
    let mesh = Mesh::new();
    let east = app("east", Behaviour::default()).await;
    let west = app("west", Behaviour::default()).await;
    let s_east = mesh.server("web", 80, "http1", east.addr, &header(1)).await;
    let s_west = mesh.server("web", 80, "http1", west.addr, &header(1)).await;
    let extra = "    traffic:\n      distribute:\n        - from: us-east/*\n          to: { \"us-east/*\": 80, \"us-west/*\": 20 }\n";
    let eps = [
        (s_east.inbound, "us-east/a", "web"),
        (s_west.inbound, "us-west/a", "web"),
    ];
    let gw = mesh.gateway("web", 80, &[s_west.inbound]).await;
    let s = header(1) + &service_via(gw.listener, "web", "127.77.14.1", 80, "http1", &eps, extra);
    let _client = mesh.client("client", &s).await;
    let vip = "127.77.14.1:80".parse().unwrap();
    wait_listening(vip).await;
    let (seen, failed) = spread(vip, 2000).await;
    assert_eq!(failed, 0);
    let east_share = *seen.get("east").unwrap_or(&0) as f64 / 2000.0;
    assert!(
        (0.75..=0.85).contains(&east_share),
        "east got {east_share:.3} of traffic: {seen:?}"
    );
}
