use std::net::SocketAddr;
use std::time::Duration;

use strait_api::ClusterName;
use strait_api::snapshot::Snapshot;

use super::*;
use crate::metrics::Metrics;

fn snapshot(version: u64, endpoints: &str) -> Snapshot {
    let yaml = format!(
        r#"
version: {version}
local: {{ cluster: east, locality: us-east/a }}
clusters: [west]
services:
  - name: web
    namespace: shop
    vip: 127.77.0.10
    ports: [{{ port: 80 }}]
    traffic: {{ failover: [west] }}
    outlier_detection: {{ consecutive_failures: 1 }}
    endpoints:
{endpoints}
"#
    );
    Snapshot::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"))
}

const EAST: &str = r#"      - { address: "10.0.0.1:15006", cluster: east, locality: us-east/a, identity: "spiffe://strait.local/ns/shop/sa/web" }
      - { address: "10.0.0.2:15006", cluster: east, locality: us-east/a, identity: "spiffe://strait.local/ns/shop/sa/web" }
"#;

fn west(ip: &str) -> String {
    format!(
        r#"      - {{ address: "{ip}:15006", cluster: west, locality: us-west/a, identity: "spiffe://strait.local/ns/shop/sa/web", gateways: ["192.0.2.1:15443"] }}
"#
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The locality plan is kept between picks; it must still follow
/// ejections, recoveries and new snapshots.
#[test]
fn the_kept_plan_follows_ejections_and_snapshots() {
    let router = Router::default();
    let snap = snapshot(3, &format!("{EAST}{}", west("10.1.0.1")));
    let svc = &snap.services[0];
    let h = router.handle(svc);
    for _ in 0..4 {
        let p = h.pick(&snap, svc, &[], Kind::Request).unwrap();
        assert!(p.index < 2, "local first: {p:?}");
        h.finish(
            p.endpoint.address,
            Kind::Request,
            Outcome::Success,
            Some(Duration::from_millis(1)),
        );
    }
    for a in ["10.0.0.1:15006", "10.0.0.2:15006"] {
        h.finish(addr(a), Kind::Request, Outcome::ConnectFailure, None);
    }
    let p = h.pick(&snap, svc, &[], Kind::Request).unwrap();
    assert_eq!(p.endpoint.address, addr("10.1.0.1:15006"));
    let west_name = ClusterName::new("west").unwrap();
    assert_eq!(router.reason(svc), Some(Reason::FailedOverTo(west_name)));

    // The controller replaces the endpoints: the new snapshot's plan.
    let next = snapshot(3, &west("10.1.0.9"));
    router.sync(&next);
    let svc = &next.services[0];
    let p = router.pick(&next, svc, &[], Kind::Request).unwrap();
    assert_eq!(p.endpoint.address, addr("10.1.0.9:15006"));
    // A retry avoids the endpoint it tried, with the plan it keeps.
    let back = snapshot(4, &format!("{EAST}{}", west("10.1.0.1")));
    router.sync(&back);
    let svc = &back.services[0];
    let picks: Vec<usize> = (0..50)
        .map(|_| router.pick(&back, svc, &[0], Kind::Request).unwrap().index)
        .collect();
    assert!(!picks.contains(&0), "endpoint 0 was tried: {picks:?}");
    assert!(
        picks.contains(&1),
        "the other local endpoint serves: {picks:?}"
    );
}

#[test]
fn outbound_metrics_use_kept_handles_with_the_right_labels() {
    let router = Router::default();
    let metrics = Metrics::new();
    let snap = snapshot(1, EAST);
    let svc = &snap.services[0];
    let h = router.handle(svc);
    assert_eq!(h.key().as_ref(), "web.shop");
    assert_eq!(h.dst(80).unwrap(), "web.shop:80");
    assert_eq!(h.dst(81).unwrap(), "web.shop:81", "a port not synced yet");
    let east = ClusterName::new("east").unwrap();
    let west_name = ClusterName::new("west").unwrap();
    for (dest, code) in [
        (Some(&east), 200),
        (Some(&east), 200),
        (Some(&west_name), 503),
        (None, 503),
    ] {
        h.record_outbound(&metrics, &east, dest, code, Duration::from_millis(2));
    }
    let text = metrics.encode();
    let line = |dest: &str, code: u16| {
        format!(
            "strait_requests_total{{direction=\"outbound\",source_cluster=\"east\",source_principal=\"\",destination_service=\"web.shop\",destination_cluster=\"{dest}\",response_code=\"{code}\"}} "
        )
    };
    for (dest, code, n) in [("east", 200, 2), ("west", 503, 1), ("", 503, 1)] {
        let want = format!("{}{n}", line(dest, code));
        assert!(text.contains(&want), "missing {want} in\n{text}");
    }
    // Durations by source and destination cluster too: 2 + 1 + 1.
    for (dest, n) in [("east", 2), ("west", 1), ("", 1)] {
        let want = format!(
            "strait_request_duration_seconds_count{{direction=\"outbound\",source_cluster=\"east\",destination_service=\"web.shop\",destination_cluster=\"{dest}\"}} {n}"
        );
        assert!(text.contains(&want), "missing {want} in\n{text}");
    }
    // A request under another local cluster name (an older or newer
    // snapshot) is labelled with it, not with the cached one.
    let renamed = ClusterName::new("east2").unwrap();
    h.record_outbound(
        &metrics,
        &renamed,
        Some(&east),
        200,
        Duration::from_millis(2),
    );
    let text = metrics.encode();
    assert!(text.contains("source_cluster=\"east2\""), "{text}");
    assert!(text.contains(&format!("{}2", line("east", 200))), "{text}");
}

#[test]
fn failover_target_names_the_cluster_only_when_the_local_one_gives_traffic_away() {
    let west = ClusterName::new("west").unwrap();
    let from: strait_api::snapshot::LocalityPattern = "us-east/*".parse().unwrap();
    let table = [
        (Reason::FailedOverTo(west.clone()), Some(&west)),
        (
            Reason::Spilling {
                to: west.clone(),
                percent: 30,
            },
            Some(&west),
        ),
        (
            Reason::DistributedWithFailover {
                from: from.clone(),
                to: west.clone(),
            },
            Some(&west),
        ),
        (Reason::RemoteOnly(west.clone()), None),
        (Reason::LocalHealthy, None),
        (Reason::Distributed { from }, None),
        (Reason::StaleOnly, None),
        (Reason::Panic, None),
        (Reason::NoEndpoints, None),
    ];
    for (reason, want) in table {
        assert_eq!(failover_target(&reason), want, "{reason:?}");
    }
}

/// `strait_failover_active{service,from,to}` is 1 while the local
/// endpoints are ejected and traffic goes to west, and 0 once it is back.
#[test]
fn the_failover_gauge_follows_the_plan_and_falls_back_to_zero() {
    let metrics = Metrics::new();
    let router = Router::with_failover_gauge(metrics.failover_active.clone());
    let snap = snapshot(1, &format!("{EAST}{}", west("10.1.0.1")));
    let svc = &snap.services[0];
    let h = router.handle(svc);
    let gauge = "strait_failover_active{service=\"web.shop\",from=\"east\",to=\"west\"}";
    h.pick(&snap, svc, &[], Kind::Request).unwrap();
    assert!(!metrics.encode().contains(gauge), "{}", metrics.encode());
    for a in ["10.0.0.1:15006", "10.0.0.2:15006"] {
        h.finish(addr(a), Kind::Request, Outcome::ConnectFailure, None);
    }
    let p = h.pick(&snap, svc, &[], Kind::Request).unwrap();
    assert_eq!(p.endpoint.address, addr("10.1.0.1:15006"));
    let text = metrics.encode();
    assert!(text.contains(&format!("{gauge} 1\n")), "{text}");
    // A retry's plan (endpoint tried) does not move the gauge.
    h.pick(&snap, svc, &[2], Kind::Request).unwrap();
    assert!(metrics.encode().contains(&format!("{gauge} 1\n")));
    // A new snapshot without west: traffic stays home, the gauge drops
    // to 0 (the series stays, so an alert sees it end).
    let back = snapshot(2, EAST);
    router.sync(&back);
    let svc = &back.services[0];
    router.pick(&back, svc, &[], Kind::Request).unwrap();
    let text = metrics.encode();
    assert!(text.contains(&format!("{gauge} 0\n")), "{text}");
}
