use std::time::Duration;

use serde_json::json;

use super::*;

fn cfg() -> KubeSourceConfig {
    let mut c = KubeSourceConfig::new(
        ClusterName::new("east").unwrap(),
        strait_api::TrustDomain::new("strait.local").unwrap(),
    );
    c.locality = Locality::new("us-east", "us-east-1a").unwrap();
    c
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).unwrap())
}

fn service(name: &str, ports: serde_json::Value) -> Arc<Service> {
    obj(json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"ports": ports}}))
}

fn pod(
    name: &str,
    sa: &str,
    labels: serde_json::Value,
    annotations: serde_json::Value,
) -> Arc<Pod> {
    obj(json!({
        "metadata": {"name": name, "namespace": "default", "labels": labels, "annotations": annotations},
        "spec": {"serviceAccountName": sa, "containers": []},
    }))
}

fn slice(svc: &str, endpoints: serde_json::Value) -> Arc<EndpointSlice> {
    obj(json!({
        "metadata": {"name": format!("{svc}-abc"), "namespace": "default",
                     "labels": {SERVICE_NAME_LABEL: svc}},
        "addressType": "IPv4",
        "endpoints": endpoints,
    }))
}

fn ep(ip: &str, pod: &str, ready: Option<bool>, zone: Option<&str>) -> serde_json::Value {
    json!({
        "addresses": [ip],
        "conditions": {"ready": ready},
        "zone": zone,
        "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"},
    })
}

fn named<T: serde::de::DeserializeOwned>(name: &str, spec: serde_json::Value) -> Arc<T> {
    obj(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}))
}

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("default", name)
}

#[test]
fn protocols_come_from_app_protocol_then_port_name() {
    let cases = [
        (Some("http"), None, Protocol::Http1),
        (Some("kubernetes.io/h2c"), Some("tcp"), Protocol::Http2),
        (Some("grpc"), None, Protocol::Grpc),
        (None, Some("grpc-web"), Protocol::Grpc),
        (None, Some("http2-api"), Protocol::Http2),
        (None, Some("h2c"), Protocol::Http2),
        (None, Some("tcp-db"), Protocol::Tcp),
        (None, Some("https"), Protocol::Tcp),
        (Some("kubernetes.io/wss"), None, Protocol::Tcp),
        (None, Some("metrics"), Protocol::Http1),
        (None, None, Protocol::Http1),
    ];
    for (app, name, want) in cases {
        assert_eq!(protocol_of(app, name), want, "{app:?} {name:?}");
    }
}

#[test]
fn ready_endpoints_become_sidecar_addresses_with_identity_and_locality() {
    let objects = Objects {
        services: vec![service(
            "reviews",
            json!([{"name": "http", "port": 9080}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
        )],
        slices: vec![slice(
            "reviews",
            json!([
                ep("10.0.0.1", "r1", Some(true), Some("us-east-1b")),
                ep("10.0.0.2", "r2", None, None),
                ep("10.0.0.3", "r3", Some(false), None),
                ep("10.0.0.4", "missing", Some(true), None),
            ]),
        )],
        pods: vec![
            pod("r1", "reviews-sa", json!({}), json!({})),
            pod(
                "r2",
                "",
                json!({ZONE_LABEL: "z9", REGION_LABEL: "us-west"}),
                json!({INBOUND_PORT_ANNOTATION: "16000"}),
            ),
            pod("r3", "reviews-sa", json!({}), json!({})),
        ],
        ..Objects::default()
    };
    let built = build(&objects, &cfg());
    assert!(built.problems.is_empty(), "{:?}", built.problems);
    let reg = &built.catalog.services[&key("reviews")];
    assert_eq!(
        reg.ports,
        [ServicePort {
            port: 9080,
            protocol: Protocol::Http1
        }]
    );
    assert_eq!(reg.export, Export::None);
    let got: Vec<_> = reg
        .endpoints
        .iter()
        .map(|e| {
            (
                e.address.to_string(),
                e.locality.as_ref().map(ToString::to_string),
                e.identity.as_ref().map(ToString::to_string),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "10.0.0.1:15006".to_owned(),
                Some("us-east/us-east-1b".to_owned()),
                Some("spiffe://strait.local/ns/default/sa/reviews-sa".to_owned()),
            ),
            (
                "10.0.0.2:16000".to_owned(),
                Some("us-west/z9".to_owned()),
                Some("spiffe://strait.local/ns/default/sa/default".to_owned()),
            ),
        ]
    );
}

#[test]
fn external_name_and_udp_only_services_are_left_out() {
    let objects = Objects {
        services: vec![
            obj(json!({"metadata": {"name": "ext", "namespace": "default"},
                       "spec": {"type": "ExternalName", "externalName": "example.com"}})),
            service("dns", json!([{"port": 53, "protocol": "UDP"}])),
        ],
        ..Objects::default()
    };
    let built = build(&objects, &cfg());
    assert!(built.catalog.services.is_empty());
    assert_eq!(built.problems.len(), 1);
    assert!(
        built.problems[0].reason.contains("no tcp port"),
        "{:?}",
        built.problems
    );
}

#[test]
fn service_export_exports_to_global_service_peers_without_the_local_cluster() {
    let objects = Objects {
        services: vec![
            service("a", json!([{"port": 80}])),
            service("b", json!([{"port": 80}])),
        ],
        exports: vec![named("a", json!({})), named("b", json!({}))],
        globals: vec![named(
            "b",
            json!({"exportTo": ["west", "east", "west"], "healthCheck": {"kind": "http", "path": "/healthz", "interval": "2s"}}),
        )],
        ..Objects::default()
    };
    let built = build(&objects, &cfg());
    assert_eq!(built.catalog.services[&key("a")].export, Export::All);
    let b = &built.catalog.services[&key("b")];
    assert_eq!(
        b.export,
        Export::To(vec![ClusterName::new("west").unwrap()])
    );
    let hc = b.health_check.as_ref().unwrap();
    assert_eq!(
        (hc.path.as_deref(), hc.interval),
        (Some("/healthz"), Duration::from_secs(2))
    );
    assert_eq!(built.problems.len(), 1, "{:?}", built.problems);
    assert!(built.problems[0].reason.contains("this cluster"));
}

#[test]
fn traffic_policies_map_to_policy_specs_and_bad_ones_are_reported() {
    let objects = Objects {
        policies: vec![
            named(
                "reviews",
                json!({"failover": ["west", "central"],
                       "distribute": [{"from": "us-east/*", "to": {"us-east/*": 80, "us-west/*": 20}}]}),
            ),
            named(
                "bad",
                json!({"distribute": [{"from": "*", "to": {"us-east/*": 50}}]}),
            ),
        ],
        ..Objects::default()
    };
    let built = build(&objects, &cfg());
    let p = &built.catalog.policies[&key("reviews")];
    assert_eq!(p.failover.len(), 2);
    assert_eq!(p.distribute[0].to.values().sum::<u32>(), 100);
    assert!(!built.catalog.policies.contains_key(&key("bad")));
    assert_eq!(built.problems.len(), 1);
    assert!(
        built.problems[0].reason.contains("sum to 100"),
        "{}",
        built.problems[0]
    );
}

#[test]
fn zone_without_any_region_is_reported_and_falls_back_to_the_default() {
    let mut c = cfg();
    c.locality = Locality::default();
    let objects = Objects {
        services: vec![service("a", json!([{"port": 80}]))],
        slices: vec![slice("a", json!([ep("10.0.0.1", "p", None, Some("z1"))]))],
        pods: vec![pod("p", "sa", json!({}), json!({}))],
        ..Objects::default()
    };
    let built = build(&objects, &c);
    let reg = &built.catalog.services[&key("a")];
    assert_eq!(reg.endpoints[0].locality, None);
    assert_eq!(built.problems.len(), 1);
}

#[test]
fn traffic_policy_authorization_maps_and_a_bad_one_fails_closed() {
    let objects = Objects {
        policies: vec![
            named(
                "reviews",
                json!({"authorization": [{"name": "no-guests", "ports": [9080],
                    "deny": [{"from": ["spiffe://strait.local/ns/guest/*"], "paths": ["/admin"]}],
                    "allow": [{"from": ["*"], "methods": ["get"]}],
                    "path": {"escapedSlashes": "keep", "caseInsensitive": true}}]}),
            ),
            named(
                "bad-path",
                json!({"authorization": [{"name": "a",
                    "path": {"parameters": "strip"}}]}),
            ),
            named(
                "bad",
                json!({"failover": ["west"], "authorization": [{"name": "a",
                    "deny": [{"from": ["spiffe://strait.local/ns/x/sa/*"]}]}]}),
            ),
        ],
        ..Objects::default()
    };
    let built = build(&objects, &cfg());
    let a = &built.catalog.policies[&key("reviews")].authorization[0];
    assert_eq!(a.name, "no-guests");
    assert_eq!(a.ports, [9080]);
    assert_eq!(
        a.deny[0].from[0].to_string(),
        "spiffe://strait.local/ns/guest/*"
    );
    // Lower-case methods are normalized, as the CLI does.
    assert_eq!(a.allow[0].methods, ["GET"]);
    assert_eq!(
        a.path,
        strait_api::snapshot::PathPolicy {
            escaped_slashes: strait_api::snapshot::EscapedSlashes::Keep,
            parameters: strait_api::snapshot::PathParameters::Reject,
            case_insensitive: true,
        }
    );
    // An unknown path mode fails closed like any bad rule.
    let bad_path = &built.catalog.policies[&key("bad-path")];
    assert_eq!(
        bad_path.authorization,
        [crate::catalog::policy::deny_all("strait-invalid-policy")]
    );
    // The bad one is reported and denies every caller instead of none.
    let bad = &built.catalog.policies[&key("bad")];
    assert_eq!(
        bad.authorization,
        [crate::catalog::policy::deny_all("strait-invalid-policy")]
    );
    assert!(bad.failover.is_empty());
    assert_eq!(built.problems.len(), 2, "{:?}", built.problems);
    let reasons: Vec<&str> = built.problems.iter().map(|p| p.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("authorization[0].deny[0].from[0]")
                && r.contains("denies every caller")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("authorization[0].path.parameters: \"strip\"")),
        "{reasons:?}"
    );
}

#[test]
fn traffic_policy_routes_map_and_a_bad_one_is_reported() {
    let objects = Objects {
        policies: vec![
            named(
                "reviews",
                json!({"routes": [{"pathPrefix": "/api", "timeout": "2s",
                    "retry": {"attempts": 3, "retryOn": ["5xx", "connect-failure"]}},
                    {"timeout": "500ms"}]}),
            ),
            named(
                "bad",
                json!({"routes": [{"retry": {"retryOn": ["sometimes"]}}]}),
            ),
            named("slow", json!({"routes": [{"timeout": "0s"}]})),
        ],
        ..Objects::default()
    };
    let built = build(&objects, &cfg());
    let routes = &built.catalog.policies[&key("reviews")].routes;
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0].path_prefix, "/api");
    assert_eq!(routes[0].timeout, Duration::from_secs(2));
    assert_eq!(routes[0].retry.attempts, 3);
    assert_eq!(
        routes[0].retry.retry_on,
        [
            strait_api::snapshot::RetryOn::ServerError,
            strait_api::snapshot::RetryOn::ConnectFailure
        ]
    );
    assert_eq!(routes[1].path_prefix, "/");
    assert_eq!(routes[1].timeout, Duration::from_millis(500));
    assert_eq!(
        routes[1].retry,
        strait_api::snapshot::RetryPolicy::default()
    );
    // Bad routes drop the policy (routes fail open to the defaults).
    assert!(!built.catalog.policies.contains_key(&key("bad")));
    assert!(!built.catalog.policies.contains_key(&key("slow")));
    let reasons: Vec<&str> = built.problems.iter().map(|p| p.reason.as_str()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains("routes[0].retry.retryOn[0]"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("routes[0].timeout"), "{reasons:?}");
}

fn node(name: &str, labels: serde_json::Value) -> Arc<PartialObjectMeta<Node>> {
    obj(
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": {"name": name, "labels": labels}}),
    )
}

#[test]
fn locality_comes_from_pod_then_slice_then_node_labels() {
    // (pod labels, slice zone, endpoint nodeName, pod nodeName, want)
    let west = json!({REGION_LABEL: "us-west", ZONE_LABEL: "us-west-2c"});
    let table = [
        // Only the node knows: both from the node (via the endpoint's nodeName).
        (
            json!({}),
            None,
            Some("n-west"),
            None,
            Some("us-west/us-west-2c"),
        ),
        // The pod's nodeName when the endpoint names none.
        (
            json!({}),
            None,
            None,
            Some("n-west"),
            Some("us-west/us-west-2c"),
        ),
        // The slice's zone wins over the node's zone; the region stays the node's.
        (
            json!({}),
            Some("us-west-2a"),
            Some("n-west"),
            None,
            Some("us-west/us-west-2a"),
        ),
        // Pod labels win over the node.
        (
            west.clone(),
            None,
            Some("n-east"),
            None,
            Some("us-west/us-west-2c"),
        ),
        // A node with only a zone: the cluster's region.
        (
            json!({}),
            None,
            Some("n-zone"),
            None,
            Some("us-east/us-east-1c"),
        ),
        // An unknown or unlabelled node: the cluster's default.
        (json!({}), None, Some("n-gone"), None, None),
        (json!({}), None, Some("n-bare"), None, None),
    ];
    for (labels, zone, ep_node, pod_node, want) in table {
        let mut e = ep("10.0.0.1", "p", None, zone);
        e["nodeName"] = json!(ep_node);
        let mut p = pod("p", "sa", labels.clone(), json!({}));
        Arc::make_mut(&mut p).spec.as_mut().unwrap().node_name = pod_node.map(str::to_owned);
        let objects = Objects {
            services: vec![service("a", json!([{"port": 80}]))],
            slices: vec![slice("a", json!([e]))],
            pods: vec![p],
            nodes: vec![
                node(
                    "n-west",
                    json!({REGION_LABEL: "us-west", ZONE_LABEL: "us-west-2c"}),
                ),
                node(
                    "n-east",
                    json!({REGION_LABEL: "us-east", ZONE_LABEL: "us-east-1b"}),
                ),
                node("n-zone", json!({ZONE_LABEL: "us-east-1c"})),
                node("n-bare", json!({"kubernetes.io/hostname": "n-bare"})),
            ],
            ..Objects::default()
        };
        let built = build(&objects, &cfg());
        assert!(built.problems.is_empty(), "{:?}", built.problems);
        let got = built.catalog.services[&key("a")].endpoints[0]
            .locality
            .as_ref()
            .map(ToString::to_string);
        assert_eq!(
            got.as_deref(),
            want,
            "{labels} {zone:?} {ep_node:?} {pod_node:?}"
        );
    }
}
