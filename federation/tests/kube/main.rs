//! The Kubernetes catalog source against a fake API server on loopback
//! (real Kubernetes JSON over plain HTTP; no real cluster): the initial
//! list, watch events, and the watch restarts a real API server causes
//! (bookmarks, streams that end, `410 Gone`, outages).

mod links;
mod objects;
mod restarts;
mod source;

use std::sync::Arc;
use std::time::Duration;

use strait_api::{ClusterName, Locality, TrustDomain};
use strait_federation::catalog::{CatalogSource, LocalCatalog, ServiceKey};
use strait_federation::kube::{Backoff, KubeSourceConfig, KubernetesSource, plain_client};

use strait_k8s_fake::FakeApi;

/// How long a test waits for the catalog to converge.
const PATIENCE: Duration = Duration::from_secs(15);

pub struct Harness {
    pub api: FakeApi,
    pub source: KubernetesSource,
}

pub fn config() -> KubeSourceConfig {
    let mut c = KubeSourceConfig::new(
        ClusterName::new("east").unwrap(),
        TrustDomain::new("strait.local").unwrap(),
    );
    c.locality = Locality::new("us-east", "us-east-1a").unwrap();
    c.debounce = Duration::from_millis(10);
    c.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(300),
    };
    c
}

impl Harness {
    /// Starts the source against `api` and waits for the first sync.
    pub async fn start(api: FakeApi) -> Self {
        let client = plain_client(&api.url()).unwrap();
        let source = KubernetesSource::start(client, config());
        tokio::time::timeout(PATIENCE, source.wait_synced())
            .await
            .expect("the source syncs");
        Self { api, source }
    }

    pub fn catalog(&self) -> Arc<LocalCatalog> {
        self.source.watch().borrow().clone()
    }

    /// Waits until the published catalog satisfies `pred`.
    pub async fn until(&self, what: &str, pred: impl Fn(&LocalCatalog) -> bool) {
        let mut rx = self.source.watch();
        let ok = tokio::time::timeout(PATIENCE, rx.wait_for(|c| pred(c))).await;
        assert!(
            matches!(ok, Ok(Ok(_))),
            "timed out waiting for: {what}\ncatalog: {:#?}\nproblems: {:?}",
            self.catalog(),
            self.source.problems()
        );
    }
}

pub fn key(name: &str) -> ServiceKey {
    ServiceKey::new(objects::NS, name)
}

/// `reviews` (two ready pods in two zones, exported to `west` only, with a
/// traffic policy) and `ratings` (one pod, not exported).
pub fn seed(api: &FakeApi) {
    use objects::*;
    api.apply(service(
        "reviews",
        &[("http", 9080, None), ("rpc", 9090, Some("grpc"))],
    ));
    api.apply(pod("reviews-1", "reviews", "10.1.0.1", None));
    api.apply(pod("reviews-2", "reviews", "10.1.0.2", Some("us-east-1b")));
    api.apply(slice(
        "reviews",
        9080,
        &[
            ("10.1.0.1", "reviews-1", true, Some("us-east-1a")),
            ("10.1.0.2", "reviews-2", true, None),
        ],
    ));
    api.apply(service_export("reviews"));
    api.apply(global_service("reviews", &["west"]));
    api.apply(traffic_policy(
        "reviews",
        &["west", "central"],
        serde_json::json!([{"from": "us-east/*", "to": {"us-east/*": 80, "us-west/*": 20}}]),
    ));
    api.apply(service("ratings", &[("tcp-db", 5432, None)]));
    api.apply(pod("ratings-1", "ratings", "10.1.0.9", None));
    api.apply(slice(
        "ratings",
        5432,
        &[("10.1.0.9", "ratings-1", true, None)],
    ));
}

/// Addresses of a service's endpoints in the catalog.
pub fn addresses(cat: &LocalCatalog, name: &str) -> Vec<String> {
    cat.services
        .get(&key(name))
        .map(|r| r.endpoints.iter().map(|e| e.address.to_string()).collect())
        .unwrap_or_default()
}
