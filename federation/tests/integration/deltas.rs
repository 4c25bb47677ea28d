//! Config deltas over mTLS: resumption after a reconnect, NACK keeps the
//! last good state, scoped nodes, and what old full-snapshot clients get.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strait_agent::subscribe::Options;
use strait_api::proto::config::config_discovery_client::ConfigDiscoveryClient;
use strait_api::proto::config::{Delta, Node, Scope, SnapshotRequest, SnapshotResponse};
use strait_api::snapshot::{Health, Protocol, ServicePort, Snapshot};
use strait_ca::tls::ExpectedServer;
use strait_federation::push::Published;
use strait_federation::snapshot::{ImportedEndpoint, ImportedService, PeerView, merge};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::fixture::{Mesh, c, eventually, td};
use crate::push::{Setup, local_catalog, published, world};

fn delta_node(id: &str, scope: &[&str]) -> Node {
    Node {
        id: id.into(),
        cluster: "east".into(),
        locality: "us-east/a".into(),
        deltas: true,
        scope: (!scope.is_empty()).then(|| Scope {
            services: scope.iter().map(|s| (*s).to_owned()).collect(),
        }),
        ..Node::default()
    }
}

/// A raw delta stream: what the controller sends, message by message.
struct Raw {
    tx: mpsc::Sender<SnapshotRequest>,
    rx: Streaming<SnapshotResponse>,
}

/// A channel to east's controller as east's `web` workload.
fn web_channel(s: &Setup) -> tonic::transport::Channel {
    strait_federation::grpc::channel(
        s.addr,
        &s.mesh.certs("east", "default", "web"),
        &s.mesh.bundle(),
        ExpectedServer::Id(Mesh::controller_id("east")),
    )
    .unwrap()
}

impl Raw {
    async fn open(s: &Setup, node: Node, version: u64, epoch: &str) -> Result<Self, tonic::Status> {
        let chan = web_channel(s);
        let (tx, rx) = mpsc::channel(8);
        tx.send(SnapshotRequest {
            node: Some(node),
            version,
            epoch: epoch.into(),
            ..SnapshotRequest::default()
        })
        .await
        .unwrap();
        let rx = ConfigDiscoveryClient::new(chan)
            .stream_snapshots(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { tx, rx })
    }

    /// The next version's messages (partial ones joined), as (version, parts).
    async fn next(&mut self) -> (u64, Vec<Delta>) {
        let mut parts = Vec::new();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(3), self.rx.message())
                .await
                .expect("a message within 3s")
                .unwrap()
                .expect("the stream is open");
            assert!(m.snapshot_json.is_empty(), "a delta node gets no json");
            let d = m.delta.expect("a delta");
            let partial = d.partial;
            parts.push(d);
            if !partial {
                return (m.version, parts);
            }
        }
    }

    /// Nothing arrives for a while.
    async fn quiet(&mut self) {
        let r = tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await;
        assert!(r.is_err(), "expected nothing, got {r:?}");
    }

    async fn answer(&self, version: u64, error: &str) {
        self.tx
            .send(SnapshotRequest {
                version,
                error: error.into(),
                ..SnapshotRequest::default()
            })
            .await
            .unwrap();
    }
}

fn upserts(parts: &[Delta]) -> Vec<String> {
    parts
        .iter()
        .flat_map(|d| &d.upserts)
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect()
}

#[tokio::test]
async fn a_proxy_that_reconnects_gets_only_the_deltas_since_its_acked_version() {
    let s = Setup::new().await;
    let mut raw = Raw::open(&s, delta_node("web", &[]), 0, "").await.unwrap();
    let (v1, parts) = raw.next().await;
    assert_eq!(v1, 1);
    let first = &parts[0];
    assert!(
        first.full && first.full_reason == "first subscription",
        "{first:?}"
    );
    assert_eq!(upserts(&parts), ["default/web"]);
    let epoch = first.epoch.clone();
    raw.answer(v1, "").await;

    s.tx.send_replace(world(3, &[("web", 1001), ("api", 1002)]));
    let (v3, parts) = raw.next().await;
    assert_eq!(v3, 3);
    assert!(!parts[0].full && parts[0].base_version == 1);
    assert_eq!(upserts(&parts), ["default/api"], "only the new service");
    raw.answer(v3, "").await;
    eventually(2.0, "ack of 3", || {
        s.push
            .clients()
            .first()
            .is_some_and(|c| c.acked_version == 3)
    })
    .await;
    drop(raw);
    eventually(2.0, "session gone", || s.push.clients().is_empty()).await;

    // While it is away: web moves, api goes, db comes, in two versions.
    s.tx.send_replace(world(4, &[("web", 2001), ("api", 1002), ("db", 1003)]));
    let mut other = Raw::open(&s, delta_node("other", &[]), 0, "")
        .await
        .unwrap();
    let _ = other.next().await; // builds version 4's table
    s.tx.send_replace(world(5, &[("web", 2001), ("db", 1003), ("zz", 1004)]));

    let mut raw = Raw::open(&s, delta_node("web", &[]), v3, &epoch)
        .await
        .unwrap();
    let (v5, parts) = raw.next().await;
    assert_eq!(v5, 5);
    assert!(!parts[0].full, "resumed: {:?}", parts[0].full_reason);
    assert_eq!(parts[0].base_version, 3);
    assert_eq!(upserts(&parts), ["default/db", "default/web", "default/zz"]);
    assert_eq!(parts[0].removals, ["default/api"]);
    raw.answer(v5, "").await;
    drop(raw);

    // Up to date: nothing at all.
    let mut raw = Raw::open(&s, delta_node("web", &[]), v5, &epoch)
        .await
        .unwrap();
    raw.quiet().await;
    drop(raw);

    // Another controller run, or a version it never made: the full state,
    // and why.
    for (version, epoch, why) in [
        (v5, "0000000000000bad", "another controller run"),
        (2, epoch.as_str(), "never published"),
        (99, epoch.as_str(), "newer than"),
    ] {
        let mut raw = Raw::open(&s, delta_node("web", &[]), version, epoch)
            .await
            .unwrap();
        let (v, parts) = raw.next().await;
        assert_eq!(v, 5);
        assert!(
            parts[0].full && parts[0].full_reason.contains(why),
            "{:?}",
            parts[0]
        );
        assert_eq!(upserts(&parts).len(), 3);
    }
}

#[tokio::test]
async fn a_nacked_delta_keeps_the_last_good_state_and_the_next_delta_builds_on_it() {
    let s = Setup::new().await;
    let picky = Options {
        accept: Some(Arc::new(|snap: &Snapshot| {
            match snap.service("default", "bad") {
                Some(_) => Err("service bad is not allowed here".to_owned()),
                None => Ok(()),
            }
        })),
        ..Options::default()
    };
    let sub = strait_agent::subscribe::subscribe(
        s.addr,
        s.mesh.certs("east", "default", "web"),
        s.mesh.bundle(),
        ExpectedServer::Id(Mesh::controller_id("east")),
        delta_node("web", &[]),
        picky,
    );
    let version = || sub.current().map_or(0, |s| s.version);
    eventually(2.0, "first state", || version() == 1).await;
    s.tx.send_replace(world(5, &[("web", 1001), ("bad", 1003)]));
    eventually(2.0, "nack recorded", || {
        s.push
            .clients()
            .first()
            .and_then(|c| c.last_nack.clone())
            .is_some_and(|n| n.version == 5 && n.error.contains("service bad is not allowed"))
    })
    .await;
    assert_eq!(version(), 1, "the last good state stays");
    assert!(sub.current().unwrap().service("default", "bad").is_none());
    assert_eq!(s.pushes("nack"), 1);
    // The next delta is planned from version 1 (what the proxy holds), so
    // it applies, and removes nothing the proxy does not have.
    s.tx.send_replace(world(6, &[("web", 1001), ("api", 1002)]));
    eventually(2.0, "recovered", || version() == 6).await;
    let snap = sub.current().unwrap();
    let names: Vec<&str> = snap.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "web"]);
    eventually(2.0, "nack cleared", || {
        s.push.clients()[0].last_nack.is_none()
    })
    .await;
}

/// East serves `web`, `secret`, and `db` (one local endpoint; west has
/// another, through its gateway).
fn failover_world(version: u64, local_db: Health) -> Arc<Published> {
    let catalog = local_catalog(&[("web", 1001), ("db", 1002), ("secret", 1003)]);
    let db = strait_federation::catalog::ServiceKey::new("default", "db");
    let mut health = BTreeMap::new();
    health.insert((db.clone(), "127.0.0.1:1002".parse().unwrap()), local_db);
    let mut west = PeerView {
        gateways: vec!["127.0.0.2:15443".parse().unwrap()],
        ..PeerView::default()
    };
    west.services.insert(
        db,
        ImportedService {
            ports: vec![ServicePort {
                port: 80,
                protocol: Protocol::Http1,
            }],
            endpoints: vec![ImportedEndpoint {
                address: "10.9.0.2:8443".parse().unwrap(),
                locality: "us-west/a".parse().unwrap(),
                identity: td().workload_id("default", "db").unwrap(),
                health: Health::Healthy,
                weight: 1,
            }],
        },
    );
    published(
        version,
        catalog,
        health,
        [(c("west"), Arc::new(west))].into_iter().collect(),
    )
}

fn db_shares(snap: &Snapshot) -> BTreeMap<String, f64> {
    let db = snap.service("default", "db").expect("db is in scope");
    let candidates: Vec<_> = db
        .endpoints
        .iter()
        .map(|endpoint| strait_routing::locality::Candidate {
            endpoint,
            ejected: false,
        })
        .collect();
    strait_routing::route::plan(snap, db, &candidates)
        .cluster_shares(&candidates)
        .into_iter()
        .map(|(c, s)| (c.to_string(), (s * 100.0).round()))
        .collect()
}

#[tokio::test]
async fn a_scoped_proxy_never_receives_services_outside_its_scope_and_fails_over_within_it() {
    let s = Setup::new().await;
    s.tx.send_replace(failover_world(10, Health::Healthy));
    // The raw view: every message, removals included, names db only.
    let mut raw = Raw::open(&s, delta_node("web", &["db.default"]), 0, "")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let (v, parts) = raw.next().await;
    seen.extend(parts.iter().flat_map(|d| upserts(std::slice::from_ref(d))));
    raw.answer(v, "").await;
    // And a real subscriber with the same scope.
    let sub = strait_agent::subscribe::subscribe(
        s.addr,
        s.mesh.certs("east", "default", "web"),
        s.mesh.bundle(),
        ExpectedServer::Id(Mesh::controller_id("east")),
        delta_node("web", &["db.default"]),
        Options::default(),
    );
    eventually(2.0, "scoped state", || {
        sub.current().is_some_and(|s| s.version == 10)
    })
    .await;
    let snap = sub.current().unwrap();
    let names: Vec<&str> = snap.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["db"], "only what the scope names");
    assert_eq!(
        db_shares(&snap),
        [("east".to_owned(), 100.0)].into_iter().collect()
    );

    // secret changes, then goes: the scoped node hears nothing of it.
    let mut w = failover_world(11, Health::Healthy).world.clone();
    w.catalog = Arc::new({
        let mut cat = (*w.catalog).clone();
        cat.services
            .remove(&strait_federation::catalog::ServiceKey::new(
                "default", "secret",
            ));
        cat
    });
    let view = merge(&w);
    s.tx.send_replace(Arc::new(Published { world: w, view }));
    raw.quiet().await;

    // db's local endpoint fails: the delta carries db only, and the proxy
    // fails over to west within its scope.
    s.tx.send_replace(failover_world(12, Health::Unhealthy));
    let (v, parts) = raw.next().await;
    assert_eq!(v, 12);
    assert!(!parts[0].full && parts[0].base_version == 10);
    seen.extend(upserts(&parts));
    seen.extend(parts.iter().flat_map(|d| d.removals.iter().cloned()));
    raw.answer(v, "").await;
    assert!(seen.iter().all(|n| n == "default/db"), "{seen:?}");
    eventually(2.0, "failover state", || {
        sub.current().is_some_and(|s| s.version == 12)
    })
    .await;
    let snap = sub.current().unwrap();
    assert_eq!(snap.services.len(), 1);
    assert_eq!(
        db_shares(&snap),
        [("west".to_owned(), 100.0)].into_iter().collect()
    );
}

#[tokio::test]
async fn old_full_snapshot_clients_are_served_and_bad_delta_requests_refused_clearly() {
    let s = Setup::new().await;
    // An old client (no `deltas`): a full JSON snapshot, as before.
    let old = Node {
        id: "old".into(),
        cluster: "east".into(),
        ..Node::default()
    };
    let chan = web_channel(&s);
    let hello = |node| SnapshotRequest {
        node: Some(node),
        ..SnapshotRequest::default()
    };
    let mut client = ConfigDiscoveryClient::new(chan);
    // The request side stays open (a closed one ends the session).
    let mut rx = client
        .stream_snapshots(tokio_stream::StreamExt::chain(
            tokio_stream::iter(vec![hello(old.clone())]),
            tokio_stream::pending(),
        ))
        .await
        .unwrap()
        .into_inner();
    let m = rx.message().await.unwrap().unwrap();
    assert!(m.delta.is_none());
    let snap: Snapshot = serde_json::from_slice(&m.snapshot_json).unwrap();
    assert_eq!(snap.version, 1);
    // Scope without deltas, a bad scope, a gateway asking for deltas.
    let scoped_old = Node {
        scope: Some(Scope {
            services: vec!["db.default".into()],
        }),
        ..old.clone()
    };
    let bad_scope = delta_node("web", &["db"]);
    let gateway = Node {
        role: "gateway".into(),
        deltas: true,
        ..old
    };
    let gateway_chan = strait_federation::grpc::channel(
        s.addr,
        &s.mesh.certs("east", "strait-system", "gateway-east"),
        &s.mesh.bundle(),
        ExpectedServer::Id(Mesh::controller_id("east")),
    )
    .unwrap();
    let mut as_gateway = ConfigDiscoveryClient::new(gateway_chan);
    let mut again = client.clone();
    for (client, node, text) in [
        (&mut client, scoped_old, "node.scope needs node.deltas"),
        (&mut again, bad_scope, "scope.services"),
        (&mut as_gateway, gateway, "a gateway takes full snapshots"),
    ] {
        let e = client
            .stream_snapshots(tokio_stream::iter(vec![hello(node)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(text), "{}", e.message());
    }
}
