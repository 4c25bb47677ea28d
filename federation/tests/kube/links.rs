//! Links in Kubernetes objects (`KubeLinkBackend`) against the fake API
//! server: the link store's rules hold on this backend as on files, a
//! store opened later (a new leader) loads what an earlier one wrote, and
//! a write racing another store's fails with a conflict instead of
//! overwriting it.

use std::sync::Arc;
use std::time::Duration;

use strait_api::{ClusterName, TrustDomain};
use strait_federation::kube::plain_client;
use strait_federation::kube::{KubeLinkBackend, StraitLink};
use strait_federation::peering::{FailMode, Link, LinkStore, PeeringError, new_secret};
use strait_k8s_fake::FakeApi;

const NS: &str = "strait-system";

fn c(s: &str) -> ClusterName {
    ClusterName::new(s).unwrap()
}

fn link(peer: &str) -> Link {
    Link {
        peer: c(peer),
        peer_identity: TrustDomain::new("strait.local")
            .unwrap()
            .controller_id(&c(peer)),
        controller: "127.0.0.1:9000".parse().unwrap(),
        gateways: vec!["127.0.0.1:15443".parse().unwrap()],
        fail_mode: FailMode::FailStatic,
        lease_secs: None,
        established_unix: 1_765_000_000,
    }
}

fn store(api: &FakeApi) -> LinkStore {
    let client = plain_client(&api.url()).unwrap();
    LinkStore::with_backend(Arc::new(KubeLinkBackend::new(client, NS).unwrap())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_and_secrets_live_in_kubernetes_objects_and_a_new_store_loads_them() {
    let api = FakeApi::start().await;
    let a = store(&api);
    assert!(a.links().is_empty());
    assert!(a.describe().contains("kubernetes namespace strait-system"));
    a.insert(link("west")).unwrap();
    a.insert(link("central")).unwrap();
    a.update(&c("west"), |l| {
        l.fail_mode = FailMode::FailClosed;
        l.lease_secs = Some(45);
    })
    .unwrap();
    let e = a
        .update(&c("west"), |l| l.lease_secs = Some(0))
        .unwrap_err();
    assert!(e.to_string().contains("between 1s and 24h"), "{e}");
    a.remove(&c("central")).unwrap();
    let obj = api
        .get("strait.io/straitlinks", NS, "west")
        .expect("a StraitLink named after the peer");
    assert_eq!(obj["spec"]["failMode"], "fail-closed");
    assert_eq!(obj["spec"]["leaseSeconds"], 45);
    assert_eq!(obj["status"]["conditions"][0]["type"], "Stored");
    assert!(api.get("strait.io/straitlinks", NS, "central").is_none());
    // A token secret: only its hash is in the Secret; one-time.
    let s = new_secret();
    a.add_secret(&s, Duration::from_secs(60)).unwrap();
    let used = new_secret();
    a.add_secret(&used, Duration::from_secs(60)).unwrap();
    a.consume_secret(&used).unwrap();
    let secret = api.get("/secrets", NS, "strait-peering").unwrap();
    assert!(!secret.to_string().contains(&s), "{secret}");
    drop(a);

    // The next leader's store.
    let b = store(&api);
    let got = b.get(&c("west")).unwrap();
    assert_eq!(got.fail_mode, FailMode::FailClosed);
    assert_eq!(got.lease_secs, Some(45));
    assert_eq!(got.gateways, link("west").gateways);
    assert_eq!(b.links().len(), 1);
    assert_eq!(b.pending_secrets(), 1);
    assert!(matches!(
        b.consume_secret(&used),
        Err(PeeringError::BadSecret)
    ));
    b.consume_secret(&s).unwrap();
    assert!(matches!(b.consume_secret(&s), Err(PeeringError::BadSecret)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_writing_at_once_conflict_instead_of_overwriting() {
    let api = FakeApi::start().await;
    let old = store(&api);
    old.add_secret(&new_secret(), Duration::from_secs(60))
        .unwrap();
    let new = store(&api);
    new.add_secret(&new_secret(), Duration::from_secs(60))
        .unwrap();
    // The old leader's view of the Secret is stale now.
    let e = old
        .add_secret(&new_secret(), Duration::from_secs(60))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conflict") && e.contains("strait-peering"),
        "{e}"
    );
    assert_eq!(store(&api).pending_secrets(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_link_object_is_refused_naming_it() {
    let api = FakeApi::start().await;
    let mut obj = serde_json::to_value(StraitLink::new(
        "west",
        strait_federation::kube::links::StraitLinkSpec::from_link(&link("west")),
    ))
    .unwrap();
    obj["metadata"]["namespace"] = NS.into();
    obj["spec"]["controller"] = "nowhere".into();
    api.apply(obj);
    let client = plain_client(&api.url()).unwrap();
    let e = LinkStore::with_backend(Arc::new(KubeLinkBackend::new(client, NS).unwrap()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("StraitLink west") && e.contains("spec.controller \"nowhere\""),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_an_error_not_a_hang() {
    let api = FakeApi::start().await;
    let a = store(&api);
    api.set_down(true);
    let started = std::time::Instant::now();
    let e = a.insert(link("west")).unwrap_err().to_string();
    assert!(e.contains("kubernetes namespace strait-system"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(15), "{e}");
    assert!(a.links().is_empty(), "not published when not stored");
}

#[test]
fn a_current_thread_runtime_is_refused_with_a_reason() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = plain_client("http://127.0.0.1:1").unwrap();
        let e = KubeLinkBackend::new(client, NS).unwrap_err().to_string();
        assert!(e.contains("multi-thread"), "{e}");
    });
}
