//! Three clusters on loopback: linking, export/unexport, controller
//! restarts, partitions and lease semantics.

use std::time::Duration;

use strait_api::snapshot::Health;
use strait_federation::catalog::Export;
use strait_federation::controller::TokenOptions;
use strait_federation::peering::FailMode;

use crate::cluster::{TestCluster, clusters_of, endpoints, key};
use crate::fixture::{Mesh, Relay, c, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_share_exports_and_recover_state_after_a_restart() {
    let mesh = Mesh::new(&["east", "west", "central"]);
    let east = TestCluster::start(&mesh, "east", 1).await;
    let mut west = TestCluster::start(&mesh, "west", 2).await;
    let central = TestCluster::start(&mesh, "central", 3).await;
    east.link_to(&west).await;
    west.link_to(&central).await;
    assert_eq!(west.h().links().len(), 2);

    let (pe, pw, pc) = (
        east.proxy(&mesh, "e"),
        west.proxy(&mesh, "w"),
        central.proxy(&mesh, "c"),
    );
    east.serve("reviews", 1, 2, Export::All);
    central.serve("reviews", 3, 1, Export::All);
    west.serve("ratings", 2, 1, Export::All);

    eventually(2.0, "west proxy sees reviews from east and central", || {
        clusters_of(&pw.current(), "reviews") == ["central", "east"]
    })
    .await;
    assert_eq!(endpoints(&pw.current(), "reviews").len(), 3);
    eventually(
        2.0,
        "east and central proxies see ratings from west",
        || {
            clusters_of(&pe.current(), "ratings") == ["west"]
                && clusters_of(&pc.current(), "ratings") == ["west"]
        },
    )
    .await;
    // Not linked to each other: east never sees central's endpoints.
    assert_eq!(clusters_of(&pe.current(), "reviews"), ["east"]);
    let snap = pw.current().unwrap();
    snap.validate().unwrap();
    let svc = snap.service("default", "reviews").unwrap();
    let from_east = svc
        .endpoints
        .iter()
        .find(|e| e.cluster == c("east"))
        .unwrap();
    assert_eq!(from_east.gateways, vec![crate::cluster::gateway(1)]);

    east.h().unexport(&key("reviews")).unwrap();
    eventually(2.0, "east's reviews withdrawn from west", || {
        clusters_of(&pw.current(), "reviews") == ["central"]
    })
    .await;
    central.h().unexport(&key("reviews")).unwrap();
    eventually(2.0, "reviews gone from west", || {
        pw.current()
            .unwrap()
            .service("default", "reviews")
            .is_none()
    })
    .await;

    // West's controller stops: its proxy keeps the last snapshot; east's
    // copy of ratings goes stale after the lease but stays listed.
    west.stop().await;
    let kept = pw.current().unwrap().version;
    eventually(3.0, "east sees ratings stale", || {
        endpoints(&pe.current(), "ratings") == [("west".into(), Health::Stale)]
    })
    .await;
    assert_eq!(
        pw.current().unwrap().version,
        kept,
        "proxy keeps its last snapshot"
    );
    assert!(
        pw.current()
            .unwrap()
            .service("default", "ratings")
            .is_some()
    );

    west.restart().await;
    assert_eq!(west.h().links().len(), 2, "links recovered from disk");
    assert!(
        west.h().store().unwrap().get(&key("ratings")).is_some(),
        "registration recovered"
    );
    eventually(3.0, "east sees ratings healthy again, once", || {
        endpoints(&pe.current(), "ratings") == [("west".into(), Health::Healthy)]
    })
    .await;
    eventually(
        3.0,
        "west proxy reconnected to the restarted controller",
        || pw.current().unwrap().version > kept,
    )
    .await;
    let status = west.h().status();
    assert!(
        status
            .links
            .iter()
            .all(|l| l.sync.as_ref().is_some_and(|s| s.up)),
        "{:?}",
        status.links
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_makes_imports_stale_after_the_lease_and_healing_resumes_without_a_full_resend()
{
    let mesh = Mesh::new(&["east", "west"]);
    let east = TestCluster::start(&mesh, "east", 1).await;
    let west = TestCluster::start(&mesh, "west", 2).await;
    let relay = Relay::start(west.addr()).await;
    let token = west
        .h()
        .peering_token(TokenOptions {
            controller: Some(relay.addr),
            ..TokenOptions::default()
        })
        .unwrap();
    east.h()
        .establish(&token, FailMode::FailStatic)
        .await
        .unwrap();
    west.serve("reviews", 2, 1, Export::All);
    let pe = east.proxy(&mesh, "e");
    eventually(2.0, "imported", || {
        endpoints(&pe.current(), "reviews") == [("west".into(), Health::Healthy)]
    })
    .await;

    relay.partition().await;
    eventually(3.0, "stale after the lease", || {
        endpoints(&pe.current(), "reviews") == [("west".into(), Health::Stale)]
    })
    .await;
    let st = east.h().status();
    let sync = st.links[0].sync.clone().unwrap();
    assert!(sync.stale && !sync.up, "{sync:?}");
    assert!(sync.age_secs.unwrap() >= 0.6);
    // The peer changes while partitioned.
    west.serve("reviews", 2, 2, Export::All);
    relay.heal();
    eventually(3.0, "healed with both endpoints, no duplicates", || {
        endpoints(&pe.current(), "reviews")
            == [
                ("west".into(), Health::Healthy),
                ("west".into(), Health::Healthy),
            ]
    })
    .await;
    let sync = east.h().status().links[0].sync.clone().unwrap();
    assert_eq!(
        sync.full_resyncs, 1,
        "resumed from the acknowledged version: {sync:?}"
    );
    assert!(sync.delta_updates >= 1);

    // fail-closed withdraws instead.
    east.h()
        .set_fail_mode(&c("west"), FailMode::FailClosed)
        .unwrap();
    relay.partition().await;
    eventually(3.0, "withdrawn after the lease", || {
        pe.current()
            .unwrap()
            .service("default", "reviews")
            .is_none()
    })
    .await;
    relay.heal();
    eventually(3.0, "back after healing", || {
        endpoints(&pe.current(), "reviews").len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
}
