//! The cluster's egress for clients without a sidecar. A `strait proxy`
//! with `egress:` (run by `strait cluster up` with the cluster's gateway
//! identity) listens in plain text on `egress.address`, on every port of
//! every service it knows, and carries each connection like a client
//! sidecar would: HTTP by the request's `Host` (`curl
//! http://echo.demo.svc.clusterset.local:8080/` after `strait dns` answered
//! the egress address), TCP to the one service with that port. The serving
//! cluster's gateway and sidecar see the egress's identity as the caller's.
//!
//! Who may use it ([`EgressConfig::allow`]): only clients whose source
//! address is in the allowed networks (default: the egress address's own
//! network); others are closed at once and counted
//! (`strait_refused_total{reason="egress_not_allowed"}`). Anyone who can
//! reach it speaks with the egress's identity: docs/security.md says what
//! that means.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::metrics::Direction;
use crate::outbound::{Admit, Target, keep_listening};
use crate::state::Shared;
use ipnet::IpNet;
use serde::Deserialize;

/// `egress:` of a sidecar config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// The address to listen on: the one `strait dns --egress` answers.
    pub address: IpAddr,
    /// Client networks that may use it [default: the address's own
    /// network: 127.0.0.0/8 for loopback, else its /24 (IPv4) or /64].
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// More ports never listened on, whatever a service declares; Strait's
    /// own (8610, 8611, 8620, 8653, 8654, 15000, 15001, 15006, 15021,
    /// 15100, 15101, 15106, 15443) and the sidecar's own listeners never
    /// are, whatever this says.
    #[serde(default)]
    pub exclude_ports: Vec<u16>,
}

fn default_exclude() -> Vec<u16> {
    vec![
        8610, 8611, 8620, 8653, 8654, 15000, 15001, 15006, 15021, 15100, 15101, 15106, 15443,
    ]
}

/// The ports the egress listens on for `snapshot`: every port of a
/// service with an endpoint in another cluster (local services need no
/// egress), except `exclude`.
pub fn ports(snapshot: &strait_api::snapshot::Snapshot, exclude: &[u16]) -> Vec<u16> {
    let local = &snapshot.local.cluster;
    let mut out: Vec<u16> = snapshot
        .services
        .iter()
        .filter(|s| s.endpoints.iter().any(|e| e.cluster != *local))
        .flat_map(|s| s.ports.iter().map(|p| p.port))
        .filter(|p| !exclude.contains(p))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

impl EgressConfig {
    /// The networks allowed, with the default applied.
    pub fn allowed(&self) -> Vec<IpNet> {
        if !self.allow.is_empty() {
            return self.allow.clone();
        }
        let prefix = match self.address {
            IpAddr::V4(a) if a.is_loopback() => 8,
            IpAddr::V4(_) => 24,
            IpAddr::V6(a) if a.is_loopback() => 128,
            IpAddr::V6(_) => 64,
        };
        IpNet::new(self.address, prefix)
            .map(|n| vec![n.trunc()])
            .unwrap_or_default()
    }
}

/// Whether a client at `peer` may use the egress.
pub fn admits(allowed: &[IpNet], peer: IpAddr) -> bool {
    allowed.iter().any(|n| n.contains(&peer))
}

/// Keeps one listener per service port on the egress address, following
/// the snapshot, until aborted.
pub async fn manage(shared: Arc<Shared>, cfg: EgressConfig) {
    let allowed = cfg.allowed();
    let own = &shared.cfg.listeners;
    let mut exclude = default_exclude();
    exclude.extend(&cfg.exclude_ports);
    exclude.extend([own.inbound.port(), own.outbound.port(), own.admin.port()]);
    let refused = shared.clone();
    let admit: Admit = Arc::new(move |peer: SocketAddr| {
        let ok = admits(&allowed, peer.ip());
        if !ok {
            tracing::info!(%peer, "egress: client outside the allowed networks refused");
            refused
                .metrics
                .refuse(Direction::outbound, "egress_not_allowed");
        }
        ok
    });
    let address = cfg.address;
    let wanted = move |snapshot: &strait_api::snapshot::Snapshot| -> Vec<SocketAddr> {
        ports(snapshot, &exclude)
            .into_iter()
            .map(|p| SocketAddr::new(address, p))
            .collect()
    };
    keep_listening(
        shared,
        "egress",
        wanted,
        |a| Target::Egress(a.port()),
        Some(admit),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(address: &str, allow: &[&str]) -> EgressConfig {
        EgressConfig {
            address: address.parse().unwrap(),
            allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
            exclude_ports: Vec::new(),
        }
    }

    #[test]
    fn only_ports_of_services_served_elsewhere_and_never_strait_s_own() {
        let snap = strait_api::snapshot::Snapshot::from_yaml(
            "version: 1\nlocal: { cluster: east }\nclusters: [west]\nservices:\n\
             \x20 - { name: remote, namespace: d, vip: 127.77.0.1, ports: [{ port: 8080, protocol: http1 }, { port: 8610, protocol: tcp }],\n\
             \x20     endpoints: [{ address: \"10.1.0.1:15006\", cluster: west, identity: \"spiffe://strait.local/ns/d/sa/remote\", gateways: [\"10.1.0.9:15443\"] }] }\n\
             \x20 - { name: local, namespace: d, vip: 127.77.0.2, ports: [{ port: 9090, protocol: http1 }],\n\
             \x20     endpoints: [{ address: \"10.0.0.1:15006\", cluster: east, identity: \"spiffe://strait.local/ns/d/sa/local\" }] }\n",
        )
        .unwrap();
        assert_eq!(ports(&snap, &default_exclude()), vec![8080]);
    }

    #[test]
    fn who_may_use_the_egress_as_a_table() {
        let cases = [
            // (egress, allow, client, admitted)
            ("127.0.0.2", &[][..], "127.0.0.1", true),
            ("127.0.0.2", &[], "10.0.0.1", false),
            ("10.1.2.3", &[], "10.1.2.200", true),
            ("10.1.2.3", &[], "10.1.3.1", false),
            ("10.1.2.3", &["10.0.0.0/8"], "10.9.9.9", true),
            ("10.1.2.3", &["10.0.0.0/8"], "192.168.1.1", false),
            ("fd00::1", &[], "fd00::99", true),
            ("fd00::1", &[], "fd01::1", false),
        ];
        for (egress, allow, client, want) in cases {
            let c = cfg(egress, allow);
            assert_eq!(
                admits(&c.allowed(), client.parse().unwrap()),
                want,
                "{egress} {allow:?} {client}"
            );
        }
    }
}
