//! One controller's own surfaces: the admin port, active and passive
//! health reaching proxies and peers, policies and status explanations.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use strait_api::proto::config::EndpointHealthReport;
use strait_api::proto::config::config_discovery_client::ConfigDiscoveryClient;
use strait_api::snapshot::{Health, Protocol, ServicePort};
use strait_ca::tls::ExpectedServer;
use strait_federation::catalog::policy::parse_distribute;
use strait_federation::catalog::{EndpointSpec, Export, HealthCheck, PolicySpec, Registration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cluster::{TestCluster, endpoints, key};
use crate::fixture::{Mesh, c, eventually};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

/// An HTTP server answering with the status in `code`.
async fn app(code: Arc<AtomicU16>) -> std::net::SocketAddr {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_serves_metrics_readiness_and_status() {
    let mesh = Mesh::new(&["east", "west"]);
    let east = TestCluster::start(&mesh, "east", 1).await;
    let west = TestCluster::start(&mesh, "west", 2).await;
    east.link_to(&west).await;
    west.serve("reviews", 2, 1, Export::All);
    let pe = east.proxy(&mesh, "e");
    eventually(2.0, "imported", || {
        !endpoints(&pe.current(), "reviews").is_empty()
    })
    .await;
    let admin = east.h().admin_addr().unwrap();
    assert_eq!(get(admin, "/ready").await.0, 200);
    assert_eq!(get(admin, "/nope").await.0, 404);
    eventually(2.0, "metrics", || {
        let m = east.h().metrics_text();
        m.contains("strait_peer_up{peer=\"west\"} 1")
            && m.contains("strait_config_pushes_total{result=\"ack\"}")
    })
    .await;
    let (code, body) = get(admin, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "strait_catalog_services 1",
        "strait_catalog_endpoints 1",
        "strait_peer_sync_lag_seconds{peer=\"west\"}",
        "strait_config_pushes_total{result=\"sent\"}",
    ] {
        assert!(body.contains(name), "{name} missing in\n{body}");
    }
    let (code, body) = get(admin, "/status").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("\"reason\": \"no local endpoints, served from west\""),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_and_passive_health_reach_proxies_peers_and_status() {
    let mesh = Mesh::new(&["east", "west"]);
    let east = TestCluster::start(&mesh, "east", 1).await;
    let west = TestCluster::start(&mesh, "west", 2).await;
    east.link_to(&west).await;
    let code = Arc::new(AtomicU16::new(200));
    let ep = app(code.clone()).await;
    let mut hc = HealthCheck::http("/healthz");
    hc.interval = Duration::from_millis(50);
    hc.timeout = Duration::from_millis(50);
    hc.unhealthy_threshold = 1;
    hc.healthy_threshold = 1;
    let reg = Registration {
        name: "reviews".into(),
        namespace: "default".into(),
        ports: vec![ServicePort {
            port: 80,
            protocol: Protocol::Http1,
        }],
        endpoints: vec![EndpointSpec {
            address: ep,
            locality: None,
            identity: None,
            weight: 1,
        }],
        export: Export::All,
        health_check: Some(hc),
    };
    east.h().register(reg).unwrap();
    west.serve("reviews", 2, 1, Export::All);
    let pe = east.proxy(&mesh, "e");
    let pw = west.proxy(&mesh, "w");
    eventually(2.0, "both see both", || {
        endpoints(&pe.current(), "reviews").len() == 2
            && endpoints(&pw.current(), "reviews").len() == 2
    })
    .await;
    let st = east.h().status();
    let svc = st.services.iter().find(|s| s.name == "reviews").unwrap();
    assert_eq!(svc.serving.cluster, Some(c("east")));
    assert_eq!(svc.serving.reason, "local endpoints healthy");

    code.store(503, Ordering::SeqCst);
    eventually(2.0, "active check failure reaches west", || {
        endpoints(&pw.current(), "reviews").contains(&("east".into(), Health::Unhealthy))
    })
    .await;
    let st = east.h().status();
    let svc = st.services.iter().find(|s| s.name == "reviews").unwrap();
    assert_eq!(svc.serving.cluster, Some(c("west")));
    assert_eq!(svc.serving.reason, "failed over to west");
    let detail = svc.clusters.iter().find(|c| c.local).unwrap().endpoints[0]
        .detail
        .clone()
        .unwrap();
    assert!(detail.active_error.unwrap().contains("503"));
    code.store(200, Ordering::SeqCst);
    eventually(2.0, "healthy again", || {
        endpoints(&pe.current(), "reviews")[0].1 == Health::Healthy
    })
    .await;

    // Proxies report west's endpoint down over gRPC. A workload of another
    // cluster (a certificate under the same root) is refused; one of west's
    // own workloads alone changes nothing; a second one makes the quorum.
    let report = |cluster: &str, sa: &str| {
        let chan = strait_federation::grpc::channel(
            west.addr(),
            &mesh.certs(cluster, "default", sa),
            &mesh.bundle(),
            ExpectedServer::Id(Mesh::controller_id("west")),
        )
        .unwrap();
        async move {
            let report = EndpointHealthReport {
                namespace: "default".into(),
                service: "reviews".into(),
                address: "10.2.0.1:15006".into(),
                healthy: false,
                hold_seconds: 30,
            };
            ConfigDiscoveryClient::new(chan)
                .report_endpoint_health(report)
                .await
        }
    };
    let reason = |r: Result<_, tonic::Status>| {
        let e = r.unwrap_err();
        let label = e
            .metadata()
            .get("strait-reason")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        (e.code(), label, e.message().to_owned())
    };
    let (code, label, msg) = reason(report("east", "w").await);
    assert_eq!(
        (code, label.as_str()),
        (tonic::Code::PermissionDenied, "other_cluster"),
        "{msg}"
    );
    assert!(
        msg.contains("cluster east") && msg.contains("cluster west"),
        "{msg}"
    );
    report("west", "w").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        endpoints(&pe.current(), "reviews").contains(&("west".into(), Health::Healthy)),
        "one reporter flipped the endpoint"
    );
    report("west", "w2").await.unwrap();
    eventually(2.0, "passive report reaches east", || {
        endpoints(&pe.current(), "reviews").contains(&("west".into(), Health::Unhealthy))
    })
    .await;
}

#[tokio::test]
async fn policies_reach_proxies_with_failover_and_weights_together() {
    let mesh = Mesh::new(&["east", "west"]);
    let east = TestCluster::start(&mesh, "east", 1).await;
    let west = TestCluster::start(&mesh, "west", 2).await;
    east.link_to(&west).await;
    east.serve("reviews", 1, 1, Export::All);
    let mut p = PolicySpec::new(&key("reviews"));
    p.failover = vec![c("west"), c("central")];
    p.distribute = parse_distribute("us-east/*->us-east/*=80,us-west/*=20").unwrap();
    east.h().set_policy(p).unwrap();
    let pe = east.proxy(&mesh, "e");
    eventually(2.0, "policy pushed", || {
        pe.current().and_then(|s| {
            s.service("default", "reviews")
                .map(|s| s.traffic.distribute.len())
        }) == Some(1)
    })
    .await;
    let snap = pe.current().unwrap();
    let traffic = &snap.service("default", "reviews").unwrap().traffic;
    assert_eq!(
        traffic.failover,
        vec![c("west")],
        "unlinked clusters are left out"
    );
    let st = east.h().status();
    assert!(
        st.conflicts
            .iter()
            .any(|c| c.reason.contains("central, which is not linked")),
        "{:?}",
        st.conflicts
    );
}

/// Every workload of the mesh holds a certificate under the same root: a
/// workload of east that claims to be a proxy of west (its node says
/// cluster west) is refused by west's controller, whatever its role, while
/// west's own workload is served.
#[tokio::test]
async fn a_workload_of_another_cluster_cannot_subscribe() {
    use strait_api::proto::config::{Node, SnapshotRequest};
    use tokio_stream::StreamExt;
    let mesh = Mesh::new(&["east", "west"]);
    let east = TestCluster::start(&mesh, "east", 1).await;
    let west = TestCluster::start(&mesh, "west", 2).await;
    east.link_to(&west).await;
    west.serve("reviews", 2, 1, Export::All);
    let subscribe = |cluster: &str, role: &str| {
        let chan = strait_federation::grpc::channel(
            west.addr(),
            &mesh.certs(cluster, "default", "spy"),
            &mesh.bundle(),
            ExpectedServer::Id(Mesh::controller_id("west")),
        )
        .unwrap();
        let first = SnapshotRequest {
            node: Some(Node {
                id: "spy".into(),
                cluster: "west".into(),
                role: role.into(),
                ..Node::default()
            }),
            ..SnapshotRequest::default()
        };
        async move {
            ConfigDiscoveryClient::new(chan)
                .stream_snapshots(tokio_stream::iter(vec![first]).chain(tokio_stream::pending()))
                .await
        }
    };
    for role in ["proxy", "dns", ""] {
        let e = subscribe("east", role).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert_eq!(
            e.metadata().get("strait-reason").unwrap().to_str().unwrap(),
            "other_cluster"
        );
        assert!(
            e.message().contains("certificate of cluster east")
                && e.message().contains("cluster west may subscribe"),
            "{}",
            e.message()
        );
    }
    let mut ok = subscribe("west", "proxy").await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), ok.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!first.snapshot_json.is_empty());
    let (_, metrics) = get(west.h().admin_addr().unwrap(), "/metrics").await;
    assert!(
        metrics.contains("strait_config_refusals_total{reason=\"other_cluster\"} 3"),
        "{metrics}"
    );
}
