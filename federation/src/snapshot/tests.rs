use std::collections::BTreeMap;
use std::sync::Arc;

use strait_api::snapshot::{
    AuthorizationPolicy, Health, LocalPlace, Protocol, RetryOn, Route, ServicePort,
};
use strait_api::{ClusterName, Locality, SpiffeId, TrustDomain};

use super::*;
use crate::catalog::{EndpointSpec, Export, LocalCatalog, PolicySpec, Registration, ServiceKey};

fn c(s: &str) -> ClusterName {
    ClusterName::new(s).unwrap()
}

fn http(port: u16) -> Vec<ServicePort> {
    vec![ServicePort {
        port,
        protocol: Protocol::Http1,
    }]
}

fn imported(addr: &str, ports: Vec<ServicePort>) -> ImportedService {
    ImportedService {
        ports,
        endpoints: vec![ImportedEndpoint {
            address: addr.parse().unwrap(),
            locality: "us-west/a".parse().unwrap(),
            identity: SpiffeId::parse("spiffe://strait.local/ns/default/sa/reviews").unwrap(),
            health: Health::Healthy,
            weight: 1,
        }],
    }
}

fn world() -> World {
    let reg = Registration {
        name: "reviews".into(),
        namespace: "default".into(),
        ports: http(80),
        endpoints: vec![EndpointSpec {
            address: "10.0.0.1:15006".parse().unwrap(),
            locality: None,
            identity: None,
            weight: 1,
        }],
        export: Export::All,
        health_check: None,
    };
    let mut catalog = LocalCatalog::default();
    catalog.services.insert(reg.key(), reg);
    let key = ServiceKey::new("default", "reviews");
    let west = PeerView {
        gateways: vec!["192.0.2.1:15443".parse().unwrap()],
        stale: false,
        services: BTreeMap::from([(key.clone(), imported("10.1.0.1:15006", http(80)))]),
    };
    World {
        version: 7,
        cluster: c("east"),
        trust_domain: TrustDomain::new("strait.local").unwrap(),
        locality: "us-east/a".parse().unwrap(),
        catalog: Arc::new(catalog),
        health: BTreeMap::new(),
        peers: BTreeMap::from([(c("west"), Arc::new(west))]),
        vips: VipRange::default(),
    }
}

fn place() -> LocalPlace {
    LocalPlace {
        cluster: c("east"),
        locality: "us-east/b".parse::<Locality>().unwrap(),
    }
}

#[test]
fn merges_local_and_remote_endpoints_with_gateways_into_a_valid_snapshot() {
    let (snap, conflicts) = build(&world(), &place());
    assert!(conflicts.is_empty(), "{conflicts:?}");
    snap.validate().unwrap();
    assert_eq!(snap.version, 7);
    assert_eq!(snap.clusters, vec![c("west")]);
    let svc = snap.service("default", "reviews").unwrap();
    assert_eq!(svc.endpoints.len(), 2);
    let local = &svc.endpoints[0];
    assert_eq!(local.cluster, c("east"));
    assert_eq!(local.locality.to_string(), "us-east/a");
    assert_eq!(
        local.identity.as_str(),
        "spiffe://strait.local/ns/default/sa/reviews"
    );
    assert!(local.gateways.is_empty());
    let remote = &svc.endpoints[1];
    assert_eq!(remote.cluster, c("west"));
    assert_eq!(remote.gateways, vec!["192.0.2.1:15443".parse().unwrap()]);
    assert_eq!(remote.health, Health::Healthy);
}

#[test]
fn local_health_and_stale_peers_show_in_endpoint_health() {
    let mut w = world();
    let key = ServiceKey::new("default", "reviews");
    w.health
        .insert((key, "10.0.0.1:15006".parse().unwrap()), Health::Unhealthy);
    let mut west = (*w.peers[&c("west")]).clone();
    west.stale = true;
    w.peers.insert(c("west"), Arc::new(west));
    let (snap, _) = build(&w, &place());
    let svc = snap.service("default", "reviews").unwrap();
    assert_eq!(svc.endpoints[0].health, Health::Unhealthy);
    assert_eq!(svc.endpoints[1].health, Health::Stale);
}

#[test]
fn port_conflicts_are_reported_not_merged() {
    let mut w = world();
    let key = ServiceKey::new("default", "reviews");
    let central = PeerView {
        gateways: vec!["192.0.2.2:15443".parse().unwrap()],
        stale: false,
        services: BTreeMap::from([(
            key,
            imported(
                "10.2.0.1:15006",
                vec![ServicePort {
                    port: 80,
                    protocol: Protocol::Grpc,
                }],
            ),
        )]),
    };
    w.peers.insert(c("central"), Arc::new(central));
    let (snap, conflicts) = build(&w, &place());
    snap.validate().unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].cluster, c("central"));
    assert!(
        conflicts[0]
            .reason
            .contains("ports differ: east serves 80/http1, central serves 80/grpc"),
        "{}",
        conflicts[0].reason
    );
    let svc = snap.service("default", "reviews").unwrap();
    assert!(svc.endpoints.iter().all(|e| e.cluster != c("central")));
}

#[test]
fn a_peer_without_gateways_is_reported_and_left_out() {
    let mut w = world();
    let mut west = (*w.peers[&c("west")]).clone();
    west.gateways.clear();
    w.peers.insert(c("west"), Arc::new(west));
    let (snap, conflicts) = build(&w, &place());
    snap.validate().unwrap();
    assert_eq!(conflicts.len(), 1);
    assert!(conflicts[0].reason.contains("no gateway"));
    assert_eq!(
        snap.service("default", "reviews").unwrap().endpoints.len(),
        1
    );
}

#[test]
fn remote_only_services_appear_and_vips_are_stable_and_unique() {
    let mut w = world();
    let mut west = (*w.peers[&c("west")]).clone();
    for i in 0..300 {
        let key = ServiceKey::new("default", &format!("svc-{i}"));
        west.services.insert(
            key,
            imported(&format!("10.1.1.{}:{}", i % 250, 1000 + i), http(80)),
        );
    }
    w.peers.insert(c("west"), Arc::new(west));
    let (snap, _) = build(&w, &place());
    snap.validate().unwrap();
    assert_eq!(snap.services.len(), 301);
    let (again, _) = build(&w, &place());
    assert_eq!(snap, again);
}

#[test]
fn policies_keep_known_failover_clusters_and_report_the_others() {
    let mut w = world();
    let key = ServiceKey::new("default", "reviews");
    let mut p = PolicySpec::new(&key);
    p.failover = vec![c("central"), c("west")];
    let mut cat = (*w.catalog).clone();
    cat.policies.insert(key, p);
    w.catalog = Arc::new(cat);
    let (snap, conflicts) = build(&w, &place());
    snap.validate().unwrap();
    assert_eq!(
        snap.service("default", "reviews").unwrap().traffic.failover,
        vec![c("west")]
    );
    assert_eq!(conflicts.len(), 1);
    assert!(conflicts[0].reason.contains("not linked"));
}

fn with_policy(w: &mut World, edit: impl FnOnce(&mut PolicySpec)) {
    let key = ServiceKey::new("default", "reviews");
    let mut p = PolicySpec::new(&key);
    edit(&mut p);
    p.validate().unwrap();
    let mut cat = (*w.catalog).clone();
    cat.policies.insert(key, p);
    w.catalog = Arc::new(cat);
}

fn guest_admin_deny() -> AuthorizationPolicy {
    serde_yaml_ng::from_str(
        "name: no-guests\nports: [80]\n\
         deny: [{ from: [\"spiffe://strait.local/ns/guest/*\"], paths: [/admin] }]\n",
    )
    .unwrap()
}

#[test]
fn authorization_of_the_local_policy_is_carried_into_every_snapshot() {
    let mut w = world();
    let mut west = (*w.peers[&c("west")]).clone();
    west.services.insert(
        ServiceKey::new("default", "ratings"),
        imported("10.1.0.9:15006", http(80)),
    );
    w.peers.insert(c("west"), Arc::new(west));
    with_policy(&mut w, |p| p.authorization = vec![guest_admin_deny()]);
    let (snap, conflicts) = build(&w, &place());
    assert!(conflicts.is_empty(), "{conflicts:?}");
    snap.validate().unwrap();
    let svc = snap.service("default", "reviews").unwrap();
    assert_eq!(svc.authorization, vec![guest_admin_deny()]);
    // The sidecar's decision over this snapshot: guests are denied /admin.
    let guest = SpiffeId::parse("spiffe://strait.local/ns/guest/sa/x").unwrap();
    let req = |source, path| strait_routing::authz::Request {
        port: 80,
        source: Some(source),
        http: Some(strait_routing::authz::HttpRequest {
            method: "GET",
            path,
            host: None,
        }),
    };
    let denied = strait_routing::authz::evaluate(&svc.authorization, &req(&guest, "/admin"));
    assert!(!denied.allowed, "{denied:?}");
    let allowed = strait_routing::authz::evaluate(&svc.authorization, &req(&guest, "/"));
    assert!(allowed.allowed, "{allowed:?}");
    // A service without a policy has none.
    let other = snap.service("default", "ratings").unwrap();
    assert!(other.authorization.is_empty());
}

#[test]
fn routes_of_a_policy_reach_the_snapshot_for_local_and_imported_services() {
    let mut w = world();
    let mut west = (*w.peers[&c("west")]).clone();
    let ratings = ServiceKey::new("default", "ratings");
    west.services
        .insert(ratings.clone(), imported("10.1.0.9:15006", http(80)));
    w.peers.insert(c("west"), Arc::new(west));
    let api: Route = serde_yaml_ng::from_str(
        "path_prefix: /api
timeout: 2s
retry: { attempts: 3, retry_on: [5xx] }
",
    )
    .unwrap();
    with_policy(&mut w, |p| p.routes = vec![api.clone()]);
    // The imported-only service's policy lives in this cluster's catalog too.
    let mut cat = (*w.catalog).clone();
    let mut p = PolicySpec::new(&ratings);
    p.routes = vec![Route {
        timeout: std::time::Duration::from_millis(500),
        ..Route::default()
    }];
    cat.policies.insert(ratings, p);
    w.catalog = Arc::new(cat);

    let (snap, conflicts) = build(&w, &place());
    assert!(conflicts.is_empty(), "{conflicts:?}");
    snap.validate().unwrap();
    let reviews = snap.service("default", "reviews").unwrap();
    assert_eq!(reviews.routes, vec![api]);
    let r = reviews.route_for("/api/v1");
    assert_eq!(r.timeout, std::time::Duration::from_secs(2));
    assert_eq!(
        (r.retry.attempts, r.retry.retry_on.as_slice()),
        (3, &[RetryOn::ServerError][..])
    );
    assert_eq!(reviews.route_for("/other"), Route::default());
    let ratings = snap.service("default", "ratings").unwrap();
    assert_eq!(
        ratings.route_for("/").timeout,
        std::time::Duration::from_millis(500)
    );
    // Without a policy there are no routes: the sidecar's default applies.
    let (snap, _) = build(&world(), &place());
    assert!(
        snap.service("default", "reviews")
            .unwrap()
            .routes
            .is_empty()
    );
}

#[test]
fn an_authorization_that_does_not_fit_the_service_fails_closed_and_is_reported() {
    let mut w = world();
    with_policy(&mut w, |p| {
        let mut a = guest_admin_deny();
        a.ports = vec![8080];
        p.authorization = vec![a];
    });
    let (snap, conflicts) = build(&w, &place());
    snap.validate().unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].cluster, c("east"));
    assert!(
        conflicts[0].reason.contains("authorization[0].ports[0]")
            && conflicts[0].reason.contains("denies every caller"),
        "{}",
        conflicts[0].reason
    );
    let svc = snap.service("default", "reviews").unwrap();
    assert_eq!(
        svc.authorization,
        vec![crate::catalog::policy::deny_all("strait-invalid-policy")]
    );
}

/// `merge_from` the previous world must give exactly what a full merge
/// gives, whatever changed.
fn step(prev: &World, next: &World) -> MergedView {
    let old = merge(prev);
    let inc = merge_from(next, Some((prev, &old)));
    let full = merge(next);
    assert_eq!(inc.services, full.services, "services differ");
    assert_eq!(inc.conflicts, full.conflicts, "conflicts differ");
    inc
}

fn edit_peer(w: &World, peer: &str, f: impl FnOnce(&mut PeerView)) -> World {
    let mut next = w.clone();
    let mut view = (*w.peers[&c(peer)]).clone();
    f(&mut view);
    next.peers.insert(c(peer), Arc::new(view));
    next.version += 1;
    next
}

fn edit_catalog(w: &World, f: impl FnOnce(&mut LocalCatalog)) -> World {
    let mut next = w.clone();
    let mut cat = (*w.catalog).clone();
    f(&mut cat);
    next.catalog = Arc::new(cat);
    next.version += 1;
    next
}

fn many_world() -> World {
    let mut w = world();
    let mut west = (*w.peers[&c("west")]).clone();
    for i in 0..50 {
        let key = ServiceKey::new("default", &format!("w-{i}"));
        west.services
            .insert(key, imported(&format!("10.1.2.{i}:15006"), http(80)));
    }
    w.peers.insert(c("west"), Arc::new(west));
    let mut central = PeerView {
        gateways: vec!["192.0.2.2:15443".parse().unwrap()],
        ..PeerView::default()
    };
    for i in 0..50 {
        let key = ServiceKey::new("default", &format!("c-{i}"));
        central
            .services
            .insert(key, imported(&format!("10.2.2.{i}:15006"), http(80)));
    }
    w.peers.insert(c("central"), Arc::new(central));
    w
}

#[test]
fn incremental_merge_equals_a_full_merge_after_every_kind_of_change() {
    let w0 = many_world();
    step(
        &World {
            peers: BTreeMap::new(),
            ..w0.clone()
        },
        &w0,
    );
    // A peer's service changes, appears, disappears; ports conflict.
    let w1 = edit_peer(&w0, "west", |v| {
        v.services.insert(
            ServiceKey::new("default", "w-3"),
            imported("10.1.9.9:15006", http(80)),
        );
        v.services.remove(&ServiceKey::new("default", "w-4"));
        v.services.insert(
            ServiceKey::new("default", "new"),
            imported("10.1.9.8:15006", http(80)),
        );
        v.services.insert(
            ServiceKey::new("default", "c-5"),
            imported("10.1.9.7:15006", http(81)),
        );
    });
    step(&w0, &w1);
    // A peer goes stale, loses its gateways, gets them back elsewhere.
    let w2 = edit_peer(&w1, "central", |v| v.stale = true);
    step(&w1, &w2);
    let w3 = edit_peer(&w2, "central", |v| v.gateways.clear());
    step(&w2, &w3);
    let w4 = edit_peer(&w3, "central", |v| {
        v.gateways = vec!["192.0.2.3:15443".parse().unwrap()];
    });
    step(&w3, &w4);
    // Local health, a new local service, a policy with authorization.
    let mut w5 = w4.clone();
    w5.health.insert(
        (
            ServiceKey::new("default", "reviews"),
            "10.0.0.1:15006".parse().unwrap(),
        ),
        Health::Unhealthy,
    );
    step(&w4, &w5);
    let w6 = edit_catalog(&w5, |cat| {
        let mut reg = cat.services[&ServiceKey::new("default", "reviews")].clone();
        reg.name = "w-7".into();
        reg.endpoints[0].address = "10.0.0.7:15006".parse().unwrap();
        cat.services.insert(reg.key(), reg);
        let key = ServiceKey::new("default", "reviews");
        let mut p = PolicySpec::new(&key);
        p.authorization = vec![guest_admin_deny()];
        cat.policies.insert(key, p);
    });
    step(&w5, &w6);
    let w7 = edit_catalog(&w6, |cat| {
        let key = ServiceKey::new("default", "reviews");
        cat.policies.get_mut(&key).unwrap().authorization[0].ports = vec![9];
    });
    let v7 = step(&w6, &w7);
    assert!(
        v7.conflicts
            .iter()
            .any(|c| c.reason.contains("denies every caller"))
    );
    // A new link changes the frame: everything is merged again.
    let mut w8 = w7.clone();
    w8.peers.insert(c("north"), Arc::new(PeerView::default()));
    step(&w7, &w8);
}

#[test]
fn an_update_from_one_peer_rebuilds_only_the_services_it_touches() {
    let w0 = many_world();
    let v0 = merge(&w0);
    let w1 = edit_peer(&w0, "central", |v| {
        v.services.insert(
            ServiceKey::new("default", "c-1"),
            imported("10.2.9.1:15006", http(80)),
        );
    });
    let v1 = merge_from(&w1, Some((&w0, &v0)));
    let shared = |name: &str| {
        let k = ServiceKey::new("default", name);
        Arc::ptr_eq(&v0.services[&k], &v1.services[&k])
    };
    assert!(!shared("c-1"), "the changed service is merged again");
    assert!(shared("c-2") && shared("w-1") && shared("reviews"));
    let rebuilt = v1
        .services
        .iter()
        .filter(|(k, m)| !Arc::ptr_eq(m, &v0.services[*k]))
        .count();
    assert_eq!(rebuilt, 1);
}

#[test]
fn the_gateway_snapshot_carries_the_export_table_and_the_links_only() {
    let mut w = world();
    let key = ServiceKey::new("default", "reviews");
    w.health.insert(
        (key.clone(), "10.0.0.1:15006".parse().unwrap()),
        Health::Unhealthy,
    );
    let mut cat = (*w.catalog).clone();
    let mut hidden = cat.services[&key].clone();
    hidden.name = "hidden".into();
    hidden.export = Export::None;
    hidden.endpoints[0].address = "10.0.0.2:15006".parse().unwrap();
    cat.services.insert(hidden.key(), hidden);
    let only_west = cat.services.get_mut(&key).unwrap();
    only_west.export = Export::To(vec![c("west")]);
    w.catalog = Arc::new(cat);
    let snap = gateway_snapshot(&w, &place());
    snap.validate().unwrap();
    assert!(snap.services.is_empty(), "a gateway gets no services");
    assert_eq!(snap.clusters, vec![c("west")]);
    let table = snap.exports.unwrap();
    assert_eq!(table.services.len(), 1, "{table:?}");
    let s = &table.services[0];
    assert_eq!(
        (s.name.as_str(), s.ports.as_slice()),
        ("reviews", &[80][..])
    );
    assert_eq!(s.to, vec![c("west")]);
    assert_eq!(s.endpoints[0].health, Health::Unhealthy);
    // Proxies never see the export table.
    assert_eq!(build(&w, &place()).0.exports, None);
}

#[test]
fn a_policy_sets_the_outlier_detection_of_its_service() {
    let mut w = world();
    let key = ServiceKey::new("default", "reviews");
    let mut policy = PolicySpec::new(&key);
    let od = strait_api::snapshot::OutlierDetection {
        consecutive_failures: 2,
        base_ejection_time: std::time::Duration::from_secs(3),
        max_ejection_time: std::time::Duration::from_secs(20),
        max_ejection_percent: 50,
    };
    policy.outlier_detection = Some(od.clone());
    policy.validate().unwrap();
    let mut cat = (*w.catalog).clone();
    cat.policies.insert(key, policy.clone());
    w.catalog = Arc::new(cat);
    let (snap, _) = build(&w, &place());
    assert_eq!(
        snap.service("default", "reviews")
            .unwrap()
            .outlier_detection,
        od
    );
    // Out of range: refused, naming the field.
    policy.outlier_detection = Some(strait_api::snapshot::OutlierDetection {
        max_ejection_percent: 101,
        ..od
    });
    let e = policy.validate().unwrap_err();
    assert_eq!(e.field, "outlier_detection.max_ejection_percent", "{e:?}");
}

#[test]
fn vip_ranges_parse_only_loopback_slash_16s() {
    assert_eq!(
        "127.78.0.0/16".parse::<VipRange>().unwrap().to_string(),
        "127.78.0.0/16"
    );
    for bad in [
        "127.0.0.0/16",
        "10.1.0.0/16",
        "127.78.0.0/24",
        "127.78.1.0/16",
        "x",
    ] {
        assert!(bad.parse::<VipRange>().is_err(), "{bad}");
    }
    let mut w = world();
    w.vips = "127.78.0.0/16".parse().unwrap();
    let (snap, _) = build(&w, &place());
    let vip = snap.service("default", "reviews").unwrap().vip.to_string();
    assert!(vip.starts_with("127.78."), "{vip}");
}
