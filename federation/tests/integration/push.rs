//! Config push over mTLS: snapshots only on change, ACK/NACK, refusals,
//! and the last snapshot kept while the controller is down.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_agent::subscribe::Options;
use strait_api::ClusterName;
use strait_api::proto::config::config_discovery_client::ConfigDiscoveryClient;
use strait_api::proto::config::{Node, SnapshotRequest};
use strait_api::snapshot::{Health, Protocol, ServicePort};
use strait_ca::tls::ExpectedServer;
use strait_federation::catalog::{EndpointSpec, Export, LocalCatalog, Registration, ServiceKey};
use strait_federation::health::HealthTable;
use strait_federation::metrics::Metrics;
use strait_federation::push::{Published, PushService};
use strait_federation::snapshot::{PeerView, World, merge};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;

use crate::fixture::{Mesh, c, eventually, td};

pub(crate) fn world(version: u64, services: &[(&str, u16)]) -> Arc<Published> {
    published(
        version,
        local_catalog(services),
        BTreeMap::new(),
        BTreeMap::new(),
    )
}

/// East's own services, one local endpoint each on 127.0.0.1:`port`.
pub(crate) fn local_catalog(services: &[(&str, u16)]) -> LocalCatalog {
    let mut catalog = LocalCatalog::default();
    for (name, port) in services {
        let reg = Registration {
            name: (*name).into(),
            namespace: "default".into(),
            ports: vec![ServicePort {
                port: 80,
                protocol: Protocol::Http1,
            }],
            endpoints: vec![EndpointSpec {
                address: format!("127.0.0.1:{port}").parse().unwrap(),
                locality: None,
                identity: None,
                weight: 1,
            }],
            export: Export::None,
            health_check: None,
        };
        catalog.services.insert(reg.key(), reg);
    }
    catalog
}

/// East's published view of `catalog`, `health` and `peers`.
pub(crate) fn published(
    version: u64,
    catalog: LocalCatalog,
    health: BTreeMap<(ServiceKey, SocketAddr), Health>,
    peers: BTreeMap<ClusterName, Arc<PeerView>>,
) -> Arc<Published> {
    let world = World {
        version,
        cluster: c("east"),
        trust_domain: td(),
        locality: "us-east/a".parse().unwrap(),
        catalog: Arc::new(catalog),
        health,
        peers,
        vips: Default::default(),
    };
    let view = merge(&world);
    Arc::new(Published { world, view })
}

fn node(id: &str, cluster: &str) -> Node {
    Node {
        id: id.into(),
        cluster: cluster.into(),
        locality: "us-east/b".into(),
        ..Node::default()
    }
}

pub(crate) struct Setup {
    pub(crate) mesh: Mesh,
    pub(crate) tx: watch::Sender<Arc<Published>>,
    pub(crate) push: PushService,
    metrics: Arc<Metrics>,
    pub(crate) server: Option<strait_federation::grpc::GrpcServer>,
    pub(crate) addr: std::net::SocketAddr,
}

impl Setup {
    pub(crate) async fn new() -> Self {
        let mesh = Mesh::new(&["east"]);
        let (tx, rx) = watch::channel(world(1, &[("web", 1001)]));
        let metrics = Arc::new(Metrics::default());
        let push = PushService::new(
            c("east"),
            "us-east/a".parse().unwrap(),
            rx,
            watch::channel(true).1,
            HealthTable::new(),
            metrics.clone(),
            strait_federation::catalog::live::LiveCatalog::start(
                Arc::new(strait_federation::catalog::FixedCatalog::new(
                    Default::default(),
                )),
                std::time::Duration::from_secs(1),
            )
            .0,
        );
        let mut me = Self {
            mesh,
            tx,
            push,
            metrics,
            server: None,
            addr: "127.0.0.1:0".parse().unwrap(),
        };
        me.start().await;
        me
    }

    pub(crate) async fn start(&mut self) {
        let l = TcpListener::bind(self.addr).await.unwrap();
        let routes = Routes::new(self.push.server());
        let server = strait_federation::grpc::serve(
            l,
            &self.mesh.controller_certs("east"),
            &self.mesh.bundle(),
            routes,
        )
        .unwrap();
        self.addr = server.addr;
        self.server = Some(server);
    }

    fn subscribe(&self, id: &str, options: Options) -> strait_agent::subscribe::Subscription {
        strait_agent::subscribe::subscribe(
            self.addr,
            self.mesh.certs("east", "default", id),
            self.mesh.bundle(),
            ExpectedServer::Id(Mesh::controller_id("east")),
            node(id, "east"),
            options,
        )
    }

    pub(crate) fn pushes(&self, result: &'static str) -> u64 {
        use strait_federation::metrics::ResultLabels;
        self.metrics
            .config_pushes
            .get_or_create(&ResultLabels { result })
            .get()
    }
}

fn version(sub: &strait_agent::subscribe::Subscription) -> u64 {
    sub.current().map_or(0, |s| s.version)
}

#[tokio::test]
async fn pushes_snapshots_on_change_only_and_records_acks() {
    let s = Setup::new().await;
    let sub = s.subscribe("web", Options::default());
    eventually(2.0, "first snapshot", || version(&sub) == 1).await;
    let snap = sub.current().unwrap();
    assert_eq!(snap.local.locality.to_string(), "us-east/b");
    assert!(snap.service("default", "web").is_some());
    eventually(2.0, "ack recorded", || {
        s.push
            .clients()
            .first()
            .is_some_and(|c| c.acked_version == 1)
    })
    .await;
    let client = &s.push.clients()[0];
    assert_eq!(client.identity, "spiffe://strait.local/ns/default/sa/web");

    // Same content under a new version: nothing is sent.
    s.tx.send_replace(world(2, &[("web", 1001)]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(version(&sub), 1);
    assert_eq!(s.pushes("sent"), 1);

    s.tx.send_replace(world(3, &[("web", 1001), ("api", 1002)]));
    eventually(2.0, "second snapshot", || version(&sub) == 3).await;
    assert!(sub.current().unwrap().service("default", "api").is_some());
    eventually(2.0, "two acks", || s.pushes("ack") == 2).await;
}

#[tokio::test]
async fn a_nacked_snapshot_is_reported_and_the_proxy_keeps_the_old_one() {
    let s = Setup::new().await;
    let picky = Options {
        accept: Some(Arc::new(|snap: &strait_api::snapshot::Snapshot| match snap
            .service("default", "bad")
        {
            Some(_) => Err("service bad is not allowed here".to_owned()),
            None => Ok(()),
        })),
        ..Options::default()
    };
    let sub = s.subscribe("web", picky);
    eventually(2.0, "first snapshot", || version(&sub) == 1).await;
    s.tx.send_replace(world(5, &[("web", 1001), ("bad", 1003)]));
    eventually(2.0, "nack recorded", || {
        s.push
            .clients()
            .first()
            .and_then(|c| c.last_nack.clone())
            .is_some_and(|n| n.version == 5)
    })
    .await;
    let nack = s.push.clients()[0].last_nack.clone().unwrap();
    assert!(nack.error.contains("service bad is not allowed"));
    assert_eq!(s.pushes("nack"), 1);
    assert_eq!(version(&sub), 1);
    // The next good snapshot is accepted and clears the nack.
    s.tx.send_replace(world(6, &[("web", 1001), ("api", 1002)]));
    eventually(2.0, "recovered", || version(&sub) == 6).await;
    eventually(2.0, "nack cleared", || {
        s.push.clients()[0].last_nack.is_none()
    })
    .await;
}

#[tokio::test]
async fn a_node_of_another_cluster_is_refused_with_a_clear_message() {
    let s = Setup::new().await;
    let chan = strait_federation::grpc::channel(
        s.addr,
        &s.mesh.certs("east", "default", "web"),
        &s.mesh.bundle(),
        ExpectedServer::Id(Mesh::controller_id("east")),
    )
    .unwrap();
    let mut client = ConfigDiscoveryClient::new(chan);
    let hello = SnapshotRequest {
        node: Some(node("web", "west")),
        version: 0,
        error: String::new(),
        epoch: String::new(),
    };
    let err = client
        .stream_snapshots(tokio_stream::iter(vec![hello]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("runs in cluster \"west\", but this controller serves cluster east"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn proxies_keep_the_last_snapshot_while_the_controller_is_down_and_reconnect() {
    let mut s = Setup::new().await;
    let sub = s.subscribe(
        "web",
        Options {
            max_backoff: Duration::from_millis(300),
            ..Options::default()
        },
    );
    let connected = sub.connected();
    eventually(2.0, "first snapshot", || version(&sub) == 1).await;
    s.server = None;
    eventually(2.0, "disconnected", || !*connected.borrow()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(version(&sub), 1, "the last snapshot is kept");
    s.tx.send_replace(world(9, &[("web", 1001), ("api", 1002)]));
    s.start().await;
    eventually(3.0, "reconnected with the new snapshot", || {
        version(&sub) == 9
    })
    .await;
}
