//! Catalog contents after the initial list and after watch events.

use strait_api::snapshot::{Protocol, ServicePort};
use strait_api::{ClusterName, Locality, SpiffeId};
use strait_federation::catalog::{EndpointSpec, Export, Registration};

use crate::objects::*;
use crate::{Harness, addresses, key, seed};
use strait_k8s_fake::FakeApi;

fn reviews_endpoint(ip: &str, zone: &str) -> EndpointSpec {
    EndpointSpec {
        address: format!("{ip}:15006").parse().unwrap(),
        locality: Some(Locality::new("us-east", zone).unwrap()),
        identity: Some(SpiffeId::parse("spiffe://strait.local/ns/default/sa/reviews").unwrap()),
        weight: 1,
    }
}

#[tokio::test]
async fn initial_list_builds_registrations_exports_and_policies() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::start(api).await;
    let cat = h.catalog();
    assert_eq!(
        cat.services[&key("reviews")],
        Registration {
            name: "reviews".into(),
            namespace: "default".into(),
            ports: vec![
                ServicePort {
                    port: 9080,
                    protocol: Protocol::Http1
                },
                ServicePort {
                    port: 9090,
                    protocol: Protocol::Grpc
                },
            ],
            endpoints: vec![
                reviews_endpoint("10.1.0.1", "us-east-1a"),
                reviews_endpoint("10.1.0.2", "us-east-1b"),
            ],
            export: Export::To(vec![ClusterName::new("west").unwrap()]),
            health_check: None,
        }
    );
    let ratings = &cat.services[&key("ratings")];
    assert_eq!(ratings.export, Export::None);
    assert_eq!(ratings.ports[0].protocol, Protocol::Tcp);
    assert_eq!(
        ratings.endpoints[0]
            .identity
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("spiffe://strait.local/ns/default/sa/ratings")
    );
    assert_eq!(
        ratings.endpoints[0].locality, None,
        "no zone: cluster default"
    );
    let policy = &cat.policies[&key("reviews")];
    let failover: Vec<_> = policy.failover.iter().map(ClusterName::as_str).collect();
    assert_eq!(failover, ["west", "central"]);
    assert_eq!(policy.distribute.len(), 1);
    assert!(h.source.problems().is_empty(), "{:?}", h.source.problems());
    assert_eq!(h.api.lists("/services"), 1);
}

#[tokio::test]
async fn a_new_pod_and_endpoint_join_once_both_are_seen() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::start(api).await;
    // The slice names a pod the source has not seen: left out for now.
    h.api.apply(slice(
        "reviews",
        9080,
        &[
            ("10.1.0.1", "reviews-1", true, Some("us-east-1a")),
            ("10.1.0.2", "reviews-2", true, None),
            ("10.1.0.3", "reviews-3", true, Some("us-east-1c")),
        ],
    ));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(addresses(&h.catalog(), "reviews").len(), 2);
    h.api.apply(pod("reviews-3", "reviews", "10.1.0.3", None));
    h.until("the third endpoint", |c| addresses(c, "reviews").len() == 3)
        .await;
    let cat = h.catalog();
    assert_eq!(
        cat.services[&key("reviews")].endpoints[2],
        reviews_endpoint("10.1.0.3", "us-east-1c")
    );
}

#[tokio::test]
async fn an_endpoint_that_turns_not_ready_leaves_the_catalog() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::start(api).await;
    h.api.apply(slice(
        "reviews",
        9080,
        &[
            ("10.1.0.1", "reviews-1", false, Some("us-east-1a")),
            ("10.1.0.2", "reviews-2", true, None),
        ],
    ));
    h.until("only the ready endpoint", |c| {
        addresses(c, "reviews") == ["10.1.0.2:15006"]
    })
    .await;
}

#[tokio::test]
async fn deleting_the_service_export_unexports_the_service() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::start(api).await;
    h.api.delete(&service_export("reviews"));
    h.until("reviews is local only", |c| {
        c.services[&key("reviews")].export == Export::None
    })
    .await;
    // Exporting `ratings` (no GlobalService) sends it to every peer.
    h.api.apply(service_export("ratings"));
    h.until("ratings is exported to all", |c| {
        c.services[&key("ratings")].export == Export::All
    })
    .await;
    h.api.delete(&service("ratings", &[]));
    h.until("ratings is gone", |c| {
        !c.services.contains_key(&key("ratings"))
    })
    .await;
}

#[tokio::test]
async fn a_traffic_policy_change_is_published_and_a_bad_one_is_refused() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::start(api).await;
    let names = |c: &strait_federation::catalog::LocalCatalog| -> Vec<String> {
        c.policies
            .get(&key("reviews"))
            .map(|p| p.failover.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    };
    h.api.apply(traffic_policy(
        "reviews",
        &["central", "west"],
        serde_json::json!([]),
    ));
    h.until("failover order swapped", |c| {
        names(c) == ["central", "west"]
    })
    .await;
    h.api.apply(traffic_policy(
        "reviews",
        &["west"],
        serde_json::json!([{"from": "*", "to": {"us-east/*": 70}}]),
    ));
    h.until("the bad policy is dropped", |c| {
        !c.policies.contains_key(&key("reviews"))
    })
    .await;
    let problems = h.source.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].to_string().contains("sum to 100"),
        "{}",
        problems[0]
    );
    h.api
        .delete(&traffic_policy("reviews", &[], serde_json::json!([])));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(h.source.problems().is_empty());
}

#[tokio::test]
async fn missing_crds_leave_services_unexported_but_synced() {
    let api = FakeApi::start().await;
    seed(&api);
    api.set_missing("multicluster.x-k8s.io/serviceexports");
    api.set_missing("strait.io/globalservices");
    api.set_missing("strait.io/trafficpolicies");
    let h = Harness::start(api).await;
    let cat = h.catalog();
    assert_eq!(cat.services.len(), 2);
    assert!(cat.services.values().all(|r| r.export == Export::None));
    assert!(cat.policies.is_empty());
}
