//! The bench controller's world: `services` local services of `endpoints`
//! endpoints each, a linked cluster `west` that also serves the first ten,
//! and the three changes the bench makes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use strait_api::snapshot::{Health, LocalPlace, Protocol, ServicePort};
use strait_api::{ClusterName, TrustDomain};
use strait_federation::catalog::{EndpointSpec, Export, LocalCatalog, Registration, ServiceKey};
use strait_federation::push::Published;
use strait_federation::snapshot::{
    ImportedEndpoint, ImportedService, PeerView, World, merge, merge_from, snapshot_for,
};

pub struct Bench {
    catalog: Arc<LocalCatalog>,
    health: BTreeMap<(ServiceKey, SocketAddr), Health>,
    peers: BTreeMap<ClusterName, Arc<PeerView>>,
    version: u64,
    endpoints: usize,
    added: usize,
}

fn name(i: usize) -> String {
    format!("svc-{i:05}")
}

fn port() -> Vec<ServicePort> {
    vec![ServicePort {
        port: 80,
        protocol: Protocol::Http1,
    }]
}

fn registration(name: String, index: usize, endpoints: usize) -> Registration {
    Registration {
        name,
        namespace: "default".into(),
        ports: port(),
        endpoints: (0..endpoints)
            .map(|e| EndpointSpec {
                address: SocketAddr::from((
                    [10, (index >> 16) as u8, (index >> 8) as u8, index as u8],
                    20_000 + e as u16,
                )),
                locality: None,
                identity: None,
                weight: 1,
            })
            .collect(),
        export: Export::All,
        health_check: None,
    }
}

fn td() -> TrustDomain {
    TrustDomain::new("strait.local").expect("a valid trust domain")
}

fn cluster(s: &str) -> ClusterName {
    ClusterName::new(s).expect("a valid cluster name")
}

impl Bench {
    pub fn new(services: usize, endpoints: usize) -> Self {
        let mut catalog = LocalCatalog::default();
        for i in 0..services {
            let reg = registration(name(i), i, endpoints);
            catalog.services.insert(reg.key(), reg);
        }
        let mut west = PeerView {
            gateways: vec![SocketAddr::from(([10, 255, 0, 1], 15_443))],
            ..PeerView::default()
        };
        for i in 0..services.min(10) {
            west.services.insert(
                ServiceKey::new("default", &name(i)),
                ImportedService {
                    ports: port(),
                    endpoints: vec![ImportedEndpoint {
                        address: SocketAddr::from(([10, 254, 0, i as u8], 8443)),
                        locality: "us-west/a".parse().expect("a valid locality"),
                        identity: td()
                            .workload_id("default", &name(i))
                            .expect("a valid identity"),
                        health: Health::Healthy,
                        weight: 1,
                    }],
                },
            );
        }
        Self {
            catalog: Arc::new(catalog),
            health: BTreeMap::new(),
            peers: [(cluster("west"), Arc::new(west))].into_iter().collect(),
            version: 1_000,
            endpoints,
            added: 0,
        }
    }

    fn world(&self) -> World {
        World {
            version: self.version,
            cluster: cluster("east"),
            trust_domain: td(),
            locality: "us-east/a".parse().expect("a valid locality"),
            catalog: self.catalog.clone(),
            health: self.health.clone(),
            peers: self.peers.clone(),
            vips: Default::default(),
        }
    }

    pub fn publish(&self) -> Arc<Published> {
        let world = self.world();
        let view = merge(&world);
        Arc::new(Published { world, view })
    }

    /// The next version, reusing what did not change (as the controller).
    pub fn publish_from(&self, prev: &Published) -> Arc<Published> {
        let world = self.world();
        let view = merge_from(&world, Some((&prev.world, &prev.view)));
        Arc::new(Published { world, view })
    }

    /// The size of the full JSON snapshot an old client gets.
    pub fn json_len(&self, p: &Published) -> usize {
        let place = LocalPlace {
            cluster: cluster("east"),
            locality: "us-east/b".parse().expect("a valid locality"),
        };
        serde_json::to_vec(&snapshot_for(&p.world, &p.view, &place)).map_or(0, |j| j.len())
    }

    /// One endpoint of the first service moves to another port.
    pub fn move_endpoint(&mut self) {
        self.version += 1;
        let cat = Arc::make_mut(&mut self.catalog);
        if let Some(reg) = cat.services.values_mut().next() {
            if let Some(e) = reg.endpoints.first_mut() {
                e.address.set_port(e.address.port() + 1000);
            }
        }
    }

    pub fn add_service(&mut self) {
        self.version += 1;
        self.added += 1;
        let index = 0x00ff_0000 + self.added;
        let reg = registration(format!("new-{:05}", self.added), index, self.endpoints);
        Arc::make_mut(&mut self.catalog)
            .services
            .insert(reg.key(), reg);
    }

    /// Every local endpoint of the second service turns unhealthy: its
    /// traffic fails over to west.
    pub fn fail_over(&mut self) {
        self.version += 1;
        let key = ServiceKey::new("default", &name(1));
        if let Some(reg) = self.catalog.services.get(&key) {
            for e in &reg.endpoints {
                self.health
                    .insert((key.clone(), e.address), Health::Unhealthy);
            }
        }
    }
}
