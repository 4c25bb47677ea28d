//! What linked controllers refuse: unlinked or spoofed peers, other roots,
//! reused tokens, oversize catalogs and claims on other clusters' services.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_api::proto::federation::federation_client::FederationClient;
use strait_api::proto::federation::federation_server::Federation;
use strait_api::proto::federation::{
    Endpoint, EstablishRequest, EstablishResponse, ExportedService, Port, SyncRequest, SyncUpdate,
};
use strait_ca::tls::ExpectedServer;
use strait_federation::catalog::Export;
use strait_federation::controller::{Controller, ControllerConfig, ControllerError, TokenOptions};
use strait_federation::peering::{FailMode, PeeringError, PeeringToken};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::cluster::{TestCluster, clusters_of, key};
use crate::fixture::{Mesh, c, eventually, td};

async fn sync_as(mesh: &Mesh, who: &str, claim: &str, target: &TestCluster) -> Status {
    let chan = strait_federation::grpc::channel(
        target.addr(),
        &mesh.controller_certs(who),
        &mesh.bundle(),
        ExpectedServer::Id(Mesh::controller_id(&target.name)),
    )
    .unwrap();
    let req = SyncRequest {
        cluster: claim.into(),
        epoch: String::new(),
        resume_version: 0,
    };
    FederationClient::new(chan).sync(req).await.unwrap_err()
}

#[tokio::test]
async fn unlinked_and_spoofed_peers_are_refused_and_unlink_revokes_at_once() {
    let mesh = Mesh::new(&["east", "west", "central"]);
    let east = TestCluster::start(&mesh, "east", 1).await;
    let west = TestCluster::start(&mesh, "west", 2).await;
    east.link_to(&west).await;

    let err = sync_as(&mesh, "central", "central", &east).await;
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message()
            .contains("cluster central is not linked with east"),
        "{}",
        err.message()
    );

    // West's controller identity minted under central's intermediate (what
    // whoever holds central's CA key could do) is not west.
    let chan = strait_federation::grpc::channel(
        east.addr(),
        &mesh.certs("central", "strait-system", "controller-west"),
        &mesh.bundle(),
        ExpectedServer::Id(Mesh::controller_id("east")),
    )
    .unwrap();
    let req = SyncRequest {
        cluster: "west".into(),
        epoch: String::new(),
        resume_version: 0,
    };
    let err = FederationClient::new(chan).sync(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.metadata()
            .get("strait-reason")
            .unwrap()
            .to_str()
            .unwrap(),
        "other_cluster",
        "{err:?}"
    );

    let err = sync_as(&mesh, "central", "west", &east).await;
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let want = "caller spiffe://strait.local/ns/strait-system/sa/controller-central claims to be cluster west";
    assert!(err.message().contains(want), "{}", err.message());

    west.serve("ratings", 2, 1, Export::All);
    let pe = east.proxy(&mesh, "e");
    eventually(2.0, "imported", || {
        clusters_of(&pe.current(), "ratings") == ["west"]
    })
    .await;
    west.h().unlink(&c("east")).unwrap();
    // East's sync stream ends and its next calls are refused.
    eventually(2.0, "east sees the refusal", || {
        let st = east.h().status();
        st.links[0]
            .sync
            .as_ref()
            .and_then(|s| s.last_error.clone())
            .is_some_and(|e| e.contains("not linked") || e.contains("removed"))
    })
    .await;
    // East still has the link, so west's data is kept but goes stale.
    eventually(3.0, "stale", || {
        crate::cluster::endpoints(&pe.current(), "ratings")
            == [("west".into(), strait_api::snapshot::Health::Stale)]
    })
    .await;
    east.h().unlink(&c("west")).unwrap();
    eventually(2.0, "withdrawn after unlinking on this side", || {
        pe.current()
            .unwrap()
            .service("default", "ratings")
            .is_none()
    })
    .await;
    assert!(pe.current().unwrap().clusters.is_empty());
}

#[tokio::test]
async fn a_cluster_under_another_root_is_refused_with_a_clear_message() {
    let mesh = Mesh::new(&["east"]);
    let rogue_mesh = Mesh::new(&["rogue"]);
    let east = TestCluster::start(&mesh, "east", 1).await;
    let rogue = TestCluster::start(&rogue_mesh, "rogue", 9).await;
    let token = rogue.h().peering_token(TokenOptions::default()).unwrap();
    let err = east
        .h()
        .establish(&token, FailMode::FailStatic)
        .await
        .unwrap_err();
    assert!(matches!(err, PeeringError::DifferentRoot { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("cluster rogue trusts a different root CA"),
        "{err}"
    );
    assert!(east.h().links().is_empty());
}

#[tokio::test]
async fn a_token_works_once() {
    let mesh = Mesh::new(&["east", "west", "central"]);
    let east = TestCluster::start(&mesh, "east", 1).await;
    let west = TestCluster::start(&mesh, "west", 2).await;
    let central = TestCluster::start(&mesh, "central", 3).await;
    let token = west.h().peering_token(TokenOptions::default()).unwrap();
    east.h()
        .establish(&token, FailMode::FailStatic)
        .await
        .unwrap();
    let err = central
        .h()
        .establish(&token, FailMode::FailStatic)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("peering secret is unknown, expired or already used"),
        "{err}"
    );
    assert_eq!(west.h().links().len(), 1);
}

#[tokio::test]
async fn a_peer_sending_more_than_the_limit_is_refused() {
    let mesh = Mesh::new(&["east", "west"]);
    let mut east = TestCluster::start(&mesh, "east", 1).await;
    east.stop().await;
    east.config.sync.max_services_per_peer = 3;
    east.restart().await;
    let west = TestCluster::start(&mesh, "west", 2).await;
    east.link_to(&west).await;
    for i in 0..5 {
        west.serve(&format!("svc-{i}"), 2, 1, Export::All);
    }
    eventually(3.0, "limit error", || {
        east.h().status().links[0]
            .sync
            .as_ref()
            .and_then(|s| s.last_error.clone())
            .is_some_and(|e| e.contains("the limit is 3"))
    })
    .await;
    let err = east.h().status().links[0]
        .sync
        .clone()
        .unwrap()
        .last_error
        .unwrap();
    assert!(
        err.contains("peer west sent") && err.contains("its catalog is refused"),
        "{err}"
    );
    assert!(east.h().snapshot(None).services.len() <= 3);
}

/// A fake controller that calls itself west but exports central's service.
#[derive(Clone)]
struct Liar;

#[tonic::async_trait]
impl Federation for Liar {
    type SyncStream = tokio_stream::Iter<std::vec::IntoIter<Result<SyncUpdate, Status>>>;

    async fn establish(
        &self,
        _: Request<EstablishRequest>,
    ) -> Result<Response<EstablishResponse>, Status> {
        Ok(Response::new(EstablishResponse {
            cluster: "west".into(),
        }))
    }

    async fn unlink(
        &self,
        _: Request<strait_api::proto::federation::UnlinkRequest>,
    ) -> Result<Response<strait_api::proto::federation::UnlinkResponse>, Status> {
        Err(Status::unimplemented("a liar never unlinks"))
    }

    async fn sync(&self, _: Request<SyncRequest>) -> Result<Response<Self::SyncStream>, Status> {
        let svc = |name: &str, cluster: &str| ExportedService {
            namespace: "default".into(),
            name: name.into(),
            ports: vec![Port {
                port: 80,
                protocol: "http1".into(),
            }],
            endpoints: vec![Endpoint {
                address: "10.9.0.1:15006".into(),
                locality: "us-west/a".into(),
                identity: "spiffe://strait.local/ns/default/sa/x".into(),
                health: "healthy".into(),
                weight: 1,
            }],
            cluster: cluster.into(),
        };
        let update = SyncUpdate {
            epoch: "liar".into(),
            version: 1,
            reset: true,
            upserts: vec![svc("own", "west"), svc("stolen", "central")],
            gateways: vec!["192.0.2.2:15443".into()],
            cluster: "west".into(),
            ..SyncUpdate::default()
        };
        Ok(Response::new(tokio_stream::iter(vec![Ok(update)])))
    }
}

#[tokio::test]
async fn services_a_peer_claims_for_another_cluster_are_refused() {
    let mesh = Mesh::new(&["east", "west"]);
    let east = TestCluster::start(&mesh, "east", 1).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let routes =
        Routes::new(strait_api::proto::federation::federation_server::FederationServer::new(Liar));
    let liar =
        strait_federation::grpc::serve(l, &mesh.controller_certs("west"), &mesh.bundle(), routes)
            .unwrap();
    let token = PeeringToken {
        cluster: c("west"),
        trust_domain: td(),
        bundle_pem: std::fs::read_to_string(mesh.ca.bundle_path()).unwrap(),
        controller: liar.addr,
        gateways: vec!["192.0.2.2:15443".parse::<SocketAddr>().unwrap()],
        server_identity: Mesh::controller_id("west"),
        secret: "anything".into(),
        expires_unix: strait_federation::peering::PeeringToken::decode(
            &east.h().peering_token(TokenOptions::default()).unwrap(),
        )
        .unwrap()
        .expires_unix,
    };
    east.h()
        .establish(&token.encode(), FailMode::FailStatic)
        .await
        .unwrap();
    eventually(2.0, "own service imported", || {
        east.h().snapshot(None).service("default", "own").is_some()
    })
    .await;
    assert!(
        east.h()
            .snapshot(None)
            .service("default", "stolen")
            .is_none()
    );
    let sync = east.h().status().links[0].sync.clone().unwrap();
    assert_eq!(sync.refused.len(), 1, "{sync:?}");
    assert!(
        sync.refused[0].contains("west claims endpoints of cluster \"central\""),
        "{}",
        sync.refused[0]
    );
    let _ = key("own");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn a_controller_with_the_wrong_certificate_does_not_start() {
    let mesh = Mesh::new(&["east"]);
    let dir = mesh.dir.path().join("state-x");
    let mut cfg = ControllerConfig::new(
        c("east"),
        dir,
        mesh.certs("east", "default", "web"),
        mesh.bundle(),
    );
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin_listen = None;
    let err = Controller::start(cfg).await.unwrap_err();
    assert!(matches!(err, ControllerError::WrongIdentity { .. }));
    assert!(
        err.to_string()
            .contains("must present spiffe://strait.local/ns/strait-system/sa/controller-east"),
        "{err}"
    );
    let _ = Arc::new(());
}
