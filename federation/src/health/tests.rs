use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use strait_api::snapshot::{Health, Protocol, ServicePort};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::*;
use crate::catalog::{EndpointSpec, Export, Registration};

/// A tiny HTTP server answering every request with the status in `code`.
async fn http_server(code: Arc<AtomicU16>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let code = code.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp =
                    format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

fn fast(mut hc: HealthCheck) -> HealthCheck {
    hc.interval = Duration::from_millis(30);
    hc.timeout = Duration::from_millis(30);
    hc.healthy_threshold = 2;
    hc.unhealthy_threshold = 2;
    hc
}

fn catalog_with(addr: SocketAddr, hc: HealthCheck) -> Arc<LocalCatalog> {
    let reg = Registration {
        name: "web".into(),
        namespace: "default".into(),
        ports: vec![ServicePort {
            port: addr.port(),
            protocol: Protocol::Http1,
        }],
        endpoints: vec![EndpointSpec {
            address: addr,
            locality: None,
            identity: None,
            weight: 1,
        }],
        export: Export::None,
        health_check: Some(hc),
    };
    let mut cat = LocalCatalog::default();
    cat.services.insert(reg.key(), reg);
    Arc::new(cat)
}

async fn wait_for(table: &HealthTable, svc: &ServiceKey, addr: SocketAddr, want: Health) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while table.health(svc, addr) != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{svc} {addr} never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn http_checks_follow_the_status_code_with_thresholds() {
    let code = Arc::new(AtomicU16::new(200));
    let addr = http_server(code.clone()).await;
    let hc = fast(HealthCheck::http("/healthz"));
    assert_eq!(run_check(&hc, addr).await, Ok(()));
    let table = HealthTable::new();
    let (_tx, rx) = watch::channel(catalog_with(addr, hc));
    let _checker = Checker::start(table.clone(), rx, None);
    let svc = ServiceKey::new("default", "web");
    code.store(503, Ordering::SeqCst);
    wait_for(&table, &svc, addr, Health::Unhealthy).await;
    let detail = table.detail(&svc, addr);
    assert!(detail.active_error.unwrap().contains("503"));
    code.store(204, Ordering::SeqCst);
    wait_for(&table, &svc, addr, Health::Healthy).await;
}

#[tokio::test]
async fn tcp_checks_fail_when_nothing_listens() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hc = fast(HealthCheck::tcp());
    assert_eq!(run_check(&hc, addr).await, Ok(()));
    let table = HealthTable::new();
    let (_tx, rx) = watch::channel(catalog_with(addr, hc));
    let _checker = Checker::start(table.clone(), rx, None);
    let svc = ServiceKey::new("default", "web");
    drop(l);
    wait_for(&table, &svc, addr, Health::Unhealthy).await;
    let err = table.detail(&svc, addr).active_error.unwrap();
    assert!(err.contains("cannot connect"), "{err}");
}

fn reporter(sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://strait.local/ns/shop/sa/{sa}")).unwrap()
}

#[tokio::test]
async fn passive_reports_mark_down_until_they_expire_or_clear() {
    let table = HealthTable::with_quorum(1);
    let mut changes = table.subscribe();
    let svc = ServiceKey::new("default", "web");
    let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let a = reporter("a");
    table.report(&svc, addr, &a, false, Duration::from_millis(100));
    assert_eq!(table.health(&svc, addr), Health::Unhealthy);
    assert!(changes.has_changed().unwrap());
    changes.borrow_and_update();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(table.health(&svc, addr), Health::Healthy);
    // The sweep announces the expiry, so snapshots are rebuilt.
    assert!(!changes.has_changed().unwrap());
    table.sweep();
    assert!(changes.has_changed().unwrap());
    table.report(&svc, addr, &a, false, Duration::from_secs(60));
    table.report(&svc, addr, &a, true, Duration::ZERO);
    assert_eq!(table.health(&svc, addr), Health::Healthy);
}

#[test]
fn one_reporter_never_flips_an_endpoint_alone() {
    let table = HealthTable::new();
    let svc = ServiceKey::new("default", "web");
    let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let (a, b, c) = (reporter("a"), reporter("b"), reporter("c"));
    // The same reporter, however often, is one vote.
    for _ in 0..5 {
        table.report(&svc, addr, &a, false, Duration::from_secs(60));
    }
    assert_eq!(table.health(&svc, addr), Health::Healthy);
    // A second reporter makes the quorum; it holds as long as the
    // second-longest vote.
    table.report(&svc, addr, &b, false, Duration::from_secs(20));
    let d = table.detail(&svc, addr);
    assert_eq!(d.health, Health::Unhealthy);
    let left = d.reported_down_for_secs.unwrap();
    assert!((15..=20).contains(&left), "{left}");
    // A reporter withdraws only its own vote: c saying "healthy" changes
    // nothing; b withdrawing ends the quorum.
    table.report(&svc, addr, &c, true, Duration::ZERO);
    assert_eq!(table.health(&svc, addr), Health::Unhealthy);
    table.report(&svc, addr, &b, true, Duration::ZERO);
    assert_eq!(table.health(&svc, addr), Health::Healthy);
    // Votes for one endpoint never count for another.
    let other: SocketAddr = "10.0.0.2:80".parse().unwrap();
    table.report(&svc, other, &c, false, Duration::from_secs(60));
    assert_eq!(table.health(&svc, addr), Health::Healthy);
    assert_eq!(table.health(&svc, other), Health::Healthy);
}

#[tokio::test]
async fn a_passive_report_overrides_a_passing_active_check() {
    let code = Arc::new(AtomicU16::new(200));
    let addr = http_server(code).await;
    let hc = fast(HealthCheck::http("/"));
    let table = HealthTable::new();
    let svc = ServiceKey::new("default", "web");
    table.record(&svc, addr, &hc, Ok(()));
    table.report(&svc, addr, &reporter("a"), false, Duration::from_secs(60));
    table.report(&svc, addr, &reporter("b"), false, Duration::from_secs(60));
    let d = table.detail(&svc, addr);
    assert_eq!(d.health, Health::Unhealthy);
    assert!(d.reported_down_for_secs.unwrap() > 50);
}
