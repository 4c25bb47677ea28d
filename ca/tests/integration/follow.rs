//! A running CA service follows a root rotation of its directory, and a
//! workload that gets its certificate there follows the service: new roots
//! adopted, a new certificate under the new intermediate, no restart.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use strait_ca::client::CaClient;
use strait_ca::manager::{CertManager, GrpcSigner, RenewPolicy};
use strait_ca::rotation::{Rotation, Stage};
use strait_ca::server::{self, CaService};
use strait_ca::token::TokenStore;
use strait_ca::{CertStore, SharedBundle, follow};

use crate::fixture::{fixture, id};

const WEB: &str = "spiffe://strait.local/ns/default/sa/web";

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn issuer_of(store: &CertStore) -> Option<CertificateDer<'static>> {
    store.current().and_then(|ck| ck.cert.get(1).cloned())
}

#[tokio::test]
async fn a_rotation_reaches_the_service_and_its_workloads_without_restarts() {
    let fx = fixture();
    let ca = fx.ca.clone();
    let authority = ca.intermediate(&fx.cluster).unwrap();
    let first_issuer = authority.cert().clone();
    let bundle = SharedBundle::new(ca.bundle().unwrap());
    let tokens =
        Arc::new(TokenStore::open(&ca.cluster_dir(&fx.cluster).join("tokens.json")).unwrap());
    let service = CaService::new(
        authority,
        bundle.clone(),
        tokens.clone(),
        Duration::from_secs(3600),
    );
    let (own, own_until) = follow::server_cert(&ca.intermediate(&fx.cluster).unwrap()).unwrap();
    let follower = tokio::spawn(follow::follow(
        service.clone(),
        ca.clone(),
        fx.cluster.clone(),
        own.clone(),
        own_until,
        Duration::from_millis(50),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bound = server::serve(service.clone(), listener, own.clone()).unwrap();

    // A workload with its own bundle (what it read at start), asking the
    // CA every 100 ms.
    let wl_bundle = SharedBundle::new(ca.bundle().unwrap());
    let token = tokens
        .create("default", "web", Duration::from_secs(60))
        .unwrap();
    let signer = Arc::new(GrpcSigner::new(bound.addr, wl_bundle.clone(), token, None));
    let policy = RenewPolicy {
        check_every: Some(Duration::from_millis(100)),
        ..RenewPolicy::default()
    };
    let mgr = Arc::new(CertManager::new(id(WEB), signer, policy).with_bundle(wl_bundle.clone()));
    mgr.renew_once().await.unwrap();
    let store = mgr.store();
    assert_eq!(issuer_of(&store), Some(first_issuer.clone()));
    let renewing = tokio::spawn(mgr.clone().run());

    let rotation = Rotation::new(ca.clone());
    // add: the service trusts and hands out both roots; so does the workload.
    rotation.run(Stage::Add, &[]).unwrap();
    until("the workload trusts both roots", async || {
        (wl_bundle.get().roots().len() == 2).then_some(())
    })
    .await;
    assert_eq!(bundle.get().roots().len(), 2);
    let mut client = CaClient::connect(bound.addr, &wl_bundle, &store)
        .await
        .unwrap();
    let answer = client.trust().await.unwrap();
    assert_eq!(answer.roots.len(), 2);
    assert_eq!(answer.issuer, Some(first_issuer.clone()));
    rotation.confirm(Stage::Add).unwrap();

    // reissue: a new intermediate; the service signs with it and presents
    // a certificate under it; the workload renews at once under it.
    rotation.run(Stage::Reissue, &[]).unwrap();
    let new_issuer = until("the service signs with the new intermediate", async || {
        let now = service.issuer_cert();
        (now != first_issuer).then_some(now)
    })
    .await;
    assert_eq!(
        issuer_of(&own),
        Some(new_issuer.clone()),
        "own certificate re-issued"
    );
    until(
        "the workload renews under the new intermediate",
        async || (issuer_of(&store).as_ref() == Some(&new_issuer)).then_some(()),
    )
    .await;
    rotation.confirm(Stage::Reissue).unwrap();

    // drop: only the new root, everywhere; renewals keep working.
    rotation.run(Stage::Drop, &[]).unwrap();
    until("the workload trusts only the new root", async || {
        (wl_bundle.get().roots().len() == 1).then_some(())
    })
    .await;
    assert_eq!(wl_bundle.get().roots(), bundle.get().roots());
    let renewals = mgr.status().borrow().renewals;
    mgr.renew_once().await.unwrap();
    assert_eq!(mgr.status().borrow().renewals, renewals + 1);

    // A bundle.pem without the root of the CA's own certificate would cut
    // every workload off: refused, the service and workload keep theirs.
    let (stranger, _) =
        strait_ca::Authority::new_root(&crate::fixture::td(), Duration::from_secs(86400)).unwrap();
    let kept = bundle.get().roots().to_vec();
    std::fs::write(
        ca.bundle_path(),
        strait_ca::pem::encode_certs([stranger.cert()]),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(bundle.get().roots(), kept.as_slice());
    assert_eq!(wl_bundle.get().roots(), kept.as_slice());

    // An intermediate that names another cluster is refused: the service
    // keeps signing with the one it has.
    let west = strait_api::ClusterName::new("west").unwrap();
    ca.new_intermediate(&west, Duration::from_secs(86400))
        .unwrap();
    let (dir_e, dir_w) = (ca.cluster_dir(&fx.cluster), ca.cluster_dir(&west));
    for f in ["intermediate.key", "intermediate.pem"] {
        std::fs::copy(dir_w.join(f), dir_e.join(f)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(service.issuer_cert(), new_issuer);
    follower.abort();
    renewing.abort();
}
