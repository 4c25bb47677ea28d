use std::net::SocketAddr;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use strait_api::ClusterName;
use strait_api::snapshot::{LoadBalancer, OutlierDetection, Snapshot};

use super::*;
use crate::outlier::Outcome;

const SNAPSHOT: &str = r#"
version: 3
local: { cluster: east, locality: us-east/a }
clusters: [west]
services:
  - name: web
    namespace: shop
    vip: 127.77.0.10
    ports: [{ port: 80 }]
    traffic: { failover: [west] }
    outlier_detection: { consecutive_failures: 1 }
    endpoints:
      - { address: "10.0.0.1:15006", cluster: east, locality: us-east/a, identity: "spiffe://strait.local/ns/shop/sa/web" }
      - { address: "10.0.0.2:15006", cluster: east, locality: us-east/a, identity: "spiffe://strait.local/ns/shop/sa/web" }
      - address: "10.1.0.1:15006"
        cluster: west
        locality: us-west/a
        identity: "spiffe://strait.local/ns/shop/sa/web"
        gateways: ["192.0.2.1:15443", "192.0.2.2:15443"]
"#;

fn snapshot() -> Snapshot {
    Snapshot::from_yaml(SNAPSHOT).unwrap_or_else(|e| panic!("{e}"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// [`choose`] with a freshly made plan and a flat cost.
fn choose_in<'a>(
    snap: &Snapshot,
    svc: &Service,
    cands: &[Candidate<'a>],
    tried: &[usize],
    balancer: &mut Balancer,
    rng: &mut StdRng,
) -> Result<Choice<'a>, OutboundError> {
    choose(
        &plan(snap, svc, cands),
        snap,
        svc,
        cands,
        tried,
        balancer,
        rng,
        |_| 1.0,
    )
}

#[test]
fn finds_the_service_behind_a_vip_and_port() {
    let snap = snapshot();
    let (svc, port) = find_service(&snap, "127.77.0.10".parse().unwrap(), 80).unwrap();
    assert_eq!((svc.name.as_str(), port.port), ("web", 80));
    for (vip, port) in [("127.77.0.10", 81), ("127.77.0.11", 80)] {
        let err = find_service(&snap, vip.parse().unwrap(), port).unwrap_err();
        assert_eq!(err.reason(), "downstream");
        assert_eq!(
            err.to_string(),
            format!("no service listens on {vip}:{port}")
        );
    }
}

#[test]
fn local_endpoints_are_direct_and_remote_ones_go_through_a_gateway() {
    let snap = snapshot();
    let eps = &snap.services[0].endpoints;
    let mut rng = StdRng::seed_from_u64(1);
    assert_eq!(
        hop(&snap.local.cluster, &eps[0], &mut rng),
        Hop::Direct(addr("10.0.0.1:15006"))
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        match hop(&snap.local.cluster, &eps[2], &mut rng) {
            Hop::Gateway { gateway, target } => {
                assert_eq!(target, addr("10.1.0.1:15006"));
                seen.insert(gateway);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen.len(), 2, "both gateways are used");
}

#[test]
fn choose_stays_local_then_fails_over_through_the_gateway() {
    let snap = snapshot();
    let svc = &snap.services[0];
    let mut outlier = OutlierDetector::new(svc.outlier_detection.clone());
    outlier.sync(svc.endpoints.iter().map(|e| e.address));
    let mut balancer = Balancer::new(LoadBalancer::P2cEwma);
    let mut rng = StdRng::seed_from_u64(9);
    let t = Instant::now();

    let cands = candidates(svc, &outlier, t);
    let c = choose_in(&snap, svc, &cands, &[], &mut balancer, &mut rng).unwrap();
    assert_eq!(c.reason, Reason::LocalHealthy);
    assert!(matches!(c.hop, Hop::Direct(_)));

    for a in ["10.0.0.1:15006", "10.0.0.2:15006"] {
        outlier.record(addr(a), Outcome::ConnectFailure, t);
    }
    let cands = candidates(svc, &outlier, t);
    let c = choose_in(&snap, svc, &cands, &[], &mut balancer, &mut rng).unwrap();
    assert_eq!(
        c.reason,
        Reason::FailedOverTo(ClusterName::new("west").unwrap())
    );
    assert_eq!(c.index, 2);
    assert!(matches!(c.hop, Hop::Gateway { .. }));
}

#[test]
fn retries_choose_another_endpoint() {
    let snap = snapshot();
    let svc = &snap.services[0];
    let outlier = OutlierDetector::new(OutlierDetection::default());
    let cands = candidates(svc, &outlier, Instant::now());
    let mut balancer = Balancer::new(LoadBalancer::RoundRobin);
    let mut rng = StdRng::seed_from_u64(2);
    for tried in [[0], [1]] {
        let c = choose_in(&snap, svc, &cands, &tried, &mut balancer, &mut rng).unwrap();
        assert_ne!(c.index, tried[0]);
    }
}

#[test]
fn no_usable_endpoint_is_an_upstream_error() {
    let mut snap = snapshot();
    snap.services[0].endpoints.clear();
    let svc = &snap.services[0];
    let outlier = OutlierDetector::new(OutlierDetection::default());
    let cands = candidates(svc, &outlier, Instant::now());
    let mut balancer = Balancer::new(LoadBalancer::P2cEwma);
    let mut rng = StdRng::seed_from_u64(2);
    let err = choose_in(&snap, svc, &cands, &[], &mut balancer, &mut rng).unwrap_err();
    assert_eq!(err.reason(), "upstream");
    assert_eq!(err.to_string(), "service web.shop has no usable endpoint");
}
