//! A controller per test cluster, with fast sync timings, restartable from
//! its state directory on the same port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use strait_agent::subscribe::{Options, Subscription};
use strait_api::proto::config::Node;
use strait_api::snapshot::{Health, Protocol, ServicePort, Snapshot};
use strait_ca::tls::ExpectedServer;
use strait_federation::catalog::{EndpointSpec, Export, Registration, ServiceKey};
use strait_federation::controller::{Controller, ControllerConfig, Handle, TokenOptions};
use strait_federation::peering::FailMode;
use strait_federation::sync::SyncConfig;

use crate::fixture::{Mesh, c};

pub struct TestCluster {
    pub name: String,
    pub config: ControllerConfig,
    pub handle: Option<Handle>,
}

pub fn fast_sync() -> SyncConfig {
    SyncConfig {
        heartbeat: Duration::from_millis(100),
        lease: Duration::from_millis(600),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(300),
        ..SyncConfig::default()
    }
}

/// Each cluster's region: `us-<name>`, zone `a`.
pub fn region(name: &str) -> String {
    format!("us-{name}/a")
}

/// A gateway address for a cluster (never dialled in these tests).
pub fn gateway(i: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, i], 15443))
}

impl TestCluster {
    pub async fn start(mesh: &Mesh, name: &str, gw: u8) -> Self {
        let state: PathBuf = mesh.dir.path().join("state").join(name);
        let mut config =
            ControllerConfig::new(c(name), state, mesh.controller_certs(name), mesh.bundle());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        config.locality = region(name).parse().unwrap();
        config.gateways = vec![gateway(gw)];
        config.sync = fast_sync();
        config.rescan_interval = None;
        let mut me = Self {
            name: name.into(),
            config,
            handle: None,
        };
        me.restart().await;
        me
    }

    /// Starts (again) from the state directory, on the port it had.
    pub async fn restart(&mut self) {
        let handle = Controller::start(self.config.clone()).await.unwrap();
        self.config.listen = handle.grpc_addr();
        self.handle = Some(handle);
    }

    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }

    pub fn h(&self) -> &Handle {
        self.handle.as_ref().expect("controller is running")
    }

    pub fn addr(&self) -> SocketAddr {
        self.config.listen
    }

    /// Links `self` to `other` the way `strait peering establish` does.
    pub async fn link_to(&self, other: &Self) {
        let token = other.h().peering_token(TokenOptions::default()).unwrap();
        self.h()
            .establish(&token, FailMode::FailStatic)
            .await
            .unwrap();
    }

    /// A proxy of this cluster subscribed to its controller.
    pub fn proxy(&self, mesh: &Mesh, id: &str) -> Subscription {
        strait_agent::subscribe::subscribe(
            self.addr(),
            mesh.certs(&self.name, "default", id),
            mesh.bundle(),
            ExpectedServer::Id(Mesh::controller_id(&self.name)),
            Node {
                id: id.into(),
                cluster: self.name.clone(),
                locality: region(&self.name),
                ..Node::default()
            },
            Options {
                max_backoff: Duration::from_millis(300),
                ..Options::default()
            },
        )
    }

    /// Registers `name` with `n` endpoints in 10.<octet>.0.x, exported to all.
    pub fn serve(&self, name: &str, octet: u8, n: u8, export: Export) {
        let reg = Registration {
            name: name.into(),
            namespace: "default".into(),
            ports: vec![ServicePort {
                port: 80,
                protocol: Protocol::Http1,
            }],
            endpoints: (1..=n)
                .map(|i| EndpointSpec {
                    address: SocketAddr::from(([10, octet, 0, i], 15006)),
                    locality: None,
                    identity: None,
                    weight: 1,
                })
                .collect(),
            export,
            health_check: None,
        };
        self.h().register(reg).unwrap();
    }
}

pub fn key(name: &str) -> ServiceKey {
    ServiceKey::new("default", name)
}

/// Endpoints of `svc` per cluster in a snapshot: (cluster, health) pairs.
pub fn endpoints(snap: &Option<std::sync::Arc<Snapshot>>, svc: &str) -> Vec<(String, Health)> {
    let Some(snap) = snap else { return Vec::new() };
    snap.service("default", svc)
        .map(|s| {
            s.endpoints
                .iter()
                .map(|e| (e.cluster.to_string(), e.health))
                .collect()
        })
        .unwrap_or_default()
}

pub fn clusters_of(snap: &Option<std::sync::Arc<Snapshot>>, svc: &str) -> Vec<String> {
    let mut v: Vec<String> = endpoints(snap, svc).into_iter().map(|(c, _)| c).collect();
    v.dedup();
    v
}
