//! A catalog from a custom source (the seam a Kubernetes watcher will
//! use), large enough that a full resend is split into chunks.

use std::sync::Arc;
use std::time::Instant;

use strait_api::snapshot::{Protocol, ServicePort};
use strait_federation::catalog::{EndpointSpec, Export, FixedCatalog, LocalCatalog, Registration};
use strait_federation::controller::Source;

use crate::cluster::TestCluster;
use crate::fixture::{Mesh, eventually};

fn catalog(services: u16, endpoints: u8) -> LocalCatalog {
    let mut cat = LocalCatalog::default();
    for i in 0..services {
        let reg = Registration {
            name: format!("svc-{i}"),
            namespace: "default".into(),
            ports: vec![ServicePort {
                port: 80,
                protocol: Protocol::Http1,
            }],
            endpoints: (0..endpoints)
                .map(|e| EndpointSpec {
                    address: std::net::SocketAddr::from((
                        [10, 2, (i / 250) as u8, (i % 250) as u8 + 1],
                        20000 + u16::from(e),
                    )),
                    locality: None,
                    identity: None,
                    weight: 1,
                })
                .collect(),
            export: Export::All,
            health_check: None,
        };
        cat.services.insert(reg.key(), reg);
    }
    cat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_services_from_a_custom_source_sync_in_chunks() {
    let mesh = Mesh::new(&["east", "west"]);
    let east = TestCluster::start(&mesh, "east", 1).await;
    let mut west = TestCluster::start(&mesh, "west", 2).await;
    west.stop().await;
    let source = Arc::new(FixedCatalog::new(LocalCatalog::default()));
    west.config.source = Source::Custom(source.clone());
    west.restart().await;
    assert!(
        west.h().store().is_err(),
        "a custom source is read-only through the handle"
    );
    east.link_to(&west).await;
    let started = Instant::now();
    source.set(catalog(1000, 10));
    eventually(10.0, "all imported", || {
        east.h().snapshot(None).services.len() == 1000
    })
    .await;
    let took = started.elapsed();
    let snap = east.h().snapshot(None);
    snap.validate().unwrap();
    assert_eq!(
        snap.services
            .iter()
            .map(|s| s.endpoints.len())
            .sum::<usize>(),
        10_000
    );
    let sync = east.h().status().links[0].sync.clone().unwrap();
    assert!(sync.full_resyncs + sync.delta_updates >= 1);
    eprintln!("1000 services x 10 endpoints converged in {took:?}");
    // One more service is a small delta.
    source.set(catalog(1001, 10));
    eventually(5.0, "delta", || {
        east.h().snapshot(None).services.len() == 1001
    })
    .await;
}
