//! The DNS view of a cluster, built from the snapshot its controller
//! pushes to DNS servers (the same one proxies get).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use strait_api::ClusterName;
use strait_api::snapshot::{Health, Protocol, Snapshot};

use crate::view::{
    ClusterEndpoints, DnsView, GlobalService, LocalityWeight, PortProtocol, ServicePort,
};

/// The view for `s`. Endpoint addresses in a snapshot are sidecar inbound
/// addresses (`ip:15006`); DNS answers the workload's own address,
/// `ip:<service port>` (one IP per workload, as a pod has). Only healthy
/// endpoints are listed; every cluster's gateways are kept, so a cluster
/// with no healthy endpoint still says where it would be reached.
pub fn view_of(s: &Snapshot) -> DnsView {
    let mut view = DnsView::new(s.local.cluster.clone());
    view.version = s.version;
    for svc in &s.services {
        let ports: Vec<ServicePort> = svc
            .ports
            .iter()
            .map(|p| ServicePort {
                name: match p.protocol {
                    Protocol::Http1 => "http",
                    Protocol::Http2 => "http2",
                    Protocol::Grpc => "grpc",
                    Protocol::Tcp => "tcp",
                }
                .to_owned(),
                port: p.port,
                protocol: PortProtocol::Tcp,
            })
            .collect();
        let port = ports.first().map_or(80, |p| p.port);
        let mut clusters: BTreeMap<ClusterName, ClusterEndpoints> = BTreeMap::new();
        for e in &svc.endpoints {
            let entry = clusters
                .entry(e.cluster.clone())
                .or_insert_with(|| ClusterEndpoints {
                    cluster: e.cluster.clone(),
                    locality: e.locality.clone(),
                    endpoints: Vec::new(),
                    gateways: Vec::new(),
                });
            if e.health == Health::Healthy {
                entry.endpoints.push(SocketAddr::new(e.address.ip(), port));
            }
            for g in &e.gateways {
                if !entry.gateways.contains(g) {
                    entry.gateways.push(*g);
                }
            }
        }
        let weights = svc
            .traffic
            .distribute
            .iter()
            .find(|d| d.from.matches(&s.local.locality))
            .map(|d| {
                d.to.iter()
                    .map(|(pattern, weight)| LocalityWeight {
                        pattern: pattern.clone(),
                        weight: *weight,
                    })
                    .collect()
            })
            .unwrap_or_default();
        view.services.push(GlobalService {
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
            vip: Some(svc.vip),
            ports,
            clusters: clusters.into_values().collect(),
            failover: svc.traffic.failover.clone(),
            weights,
        });
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_becomes_healthy_workload_addresses_with_gateways_and_weights() {
        let s = Snapshot::from_yaml(
            r#"
version: 9
local: { cluster: east, locality: us-east/a }
clusters: [west]
services:
  - name: web
    namespace: shop
    vip: 127.77.1.2
    ports: [{ port: 8080, protocol: http1 }, { port: 9090, protocol: grpc }]
    traffic:
      failover: [west]
      distribute:
        - from: us-east/*
          to: { us-east/*: 80, us-west/*: 20 }
    endpoints:
      - { address: 10.0.0.1:15006, cluster: east, locality: us-east/a, identity: spiffe://strait.local/ns/shop/sa/web }
      - { address: 10.0.0.2:15006, cluster: east, locality: us-east/a, health: unhealthy, identity: spiffe://strait.local/ns/shop/sa/web }
      - { address: 10.1.0.1:15006, cluster: west, locality: us-west/b, identity: spiffe://strait.local/ns/shop/sa/web, gateways: [10.1.0.100:15443] }
"#,
        )
        .unwrap();
        let v = view_of(&s);
        assert_eq!((v.version, v.local_cluster.as_str()), (9, "east"));
        let svc = &v.services[0];
        assert_eq!(svc.vip, Some("127.77.1.2".parse().unwrap()));
        let names: Vec<_> = svc
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port))
            .collect();
        assert_eq!(names, [("http", 8080), ("grpc", 9090)]);
        let east = &svc.clusters[0];
        assert_eq!(east.endpoints, ["10.0.0.1:8080".parse().unwrap()]);
        assert!(east.gateways.is_empty());
        let west = &svc.clusters[1];
        assert_eq!(west.endpoints, ["10.1.0.1:8080".parse().unwrap()]);
        assert_eq!(west.gateways, ["10.1.0.100:15443".parse().unwrap()]);
        assert_eq!(svc.failover, [ClusterName::new("west").unwrap()]);
        let w: Vec<_> = svc
            .weights
            .iter()
            .map(|w| (w.pattern.to_string(), w.weight))
            .collect();
        assert_eq!(w, [("us-east/*".into(), 80), ("us-west/*".into(), 20)]);
        crate::IndexedView::new(v).unwrap();
    }
}
