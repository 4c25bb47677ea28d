//! Pure conversions between what the controller publishes and what the DNS
//! server and the gateways consume, plus the one-host VIP shift.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use strait_api::snapshot::{Health, Protocol, Snapshot};
use strait_api::{ClusterName, Locality};
use strait_dns::view::{
    ClusterEndpoints, DnsView, GlobalService, LocalityWeight, PortProtocol, ServicePort,
};

/// On one host every cluster shares the loopback, so each cluster's client
/// sidecar gets the controller's VIPs (127.77.a.b) moved to its own second
/// octet (127.<octet>.a.b).
pub fn shift_vip(ip: IpAddr, octet: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, _, c, d] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, octet, c, d))
        }
        v6 => v6,
    }
}

/// Applies [`shift_vip`] to every service of a snapshot.
pub fn shift_snapshot(mut s: Snapshot, octet: u8) -> Snapshot {
    for svc in &mut s.services {
        svc.vip = shift_vip(svc.vip, octet);
    }
    s
}

/// The DNS view of a cluster from its controller's snapshot. Endpoint
/// addresses are sidecar inbound addresses `ip:15006`; the workload's own
/// address is `ip:<service port>` (one IP per workload, as a pod has).
pub fn dns_view(s: &Snapshot, vip_octet: u8) -> DnsView {
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
                    _ => "tcp",
                }
                .to_owned(),
                port: p.port,
                protocol: PortProtocol::Tcp,
            })
            .collect();
        let port = ports.first().map(|p| p.port).unwrap_or(80);
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
                    .map(|(pat, w)| LocalityWeight {
                        pattern: pat.to_string(),
                        weight: *w,
                    })
                    .collect()
            })
            .unwrap_or_default();
        view.services.push(GlobalService {
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
            vip: Some(shift_vip(svc.vip, vip_octet)),
            ports,
            clusters: clusters.into_values().collect(),
            failover: svc.traffic.failover.clone(),
            weights,
        });
    }
    view
}

/// A locality for a cluster's zone.
pub fn locality(region: &str, zone: &str) -> Locality {
    Locality::new(region, zone).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vips_move_to_the_cluster_octet() {
        let ip: IpAddr = "127.77.3.4".parse().unwrap();
        assert_eq!(shift_vip(ip, 61), "127.61.3.4".parse::<IpAddr>().unwrap());
    }
}
