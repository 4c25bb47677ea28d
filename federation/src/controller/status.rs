//! `strait status`: links, global services with their endpoints per
//! cluster, and which cluster serves this one now, and why.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use strait_api::ClusterName;
use strait_api::snapshot::{Endpoint, Health};
use strait_routing::locality::{self, Caller, Candidate};

use super::Shared;
use crate::catalog::Export;
use crate::health::HealthDetail;
use crate::peering::FailMode;
use crate::push::ProxyStatus;
use crate::snapshot::Conflict;
use crate::sync::import::PeerSyncStatus;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub cluster: ClusterName,
    pub version: u64,
    pub links: Vec<LinkStatus>,
    pub services: Vec<ServiceStatus>,
    pub conflicts: Vec<Conflict>,
    pub proxies: Vec<ProxyStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkStatus {
    pub peer: ClusterName,
    pub identity: String,
    pub controller: SocketAddr,
    pub gateways: Vec<SocketAddr>,
    pub fail_mode: FailMode,
    /// The lease of the peer's data, in seconds (this link's, or the
    /// controller's default).
    #[serde(default)]
    pub lease_secs: u64,
    /// Sync state; `None` before the first attempt.
    pub sync: Option<PeerSyncStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub namespace: String,
    pub name: String,
    pub vip: IpAddr,
    pub ports: Vec<String>,
    /// How the local registration is exported (`None`: not registered here).
    pub export: Option<Export>,
    pub clusters: Vec<ClusterEndpoints>,
    pub serving: Serving,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterEndpoints {
    pub cluster: ClusterName,
    pub local: bool,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub address: SocketAddr,
    pub locality: String,
    pub health: Health,
    /// Active-check and passive-report detail (local endpoints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<HealthDetail>,
}

/// Which cluster takes this cluster's traffic for a service now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Serving {
    /// The cluster with the largest share (`None`: nothing can serve).
    pub cluster: Option<ClusterName>,
    /// Why, in words (`local endpoints healthy`, `failed over to west`).
    pub reason: String,
    /// A stable label of the reason, as in proxy metrics.
    pub reason_label: String,
    /// Expected share of traffic per cluster.
    pub shares: BTreeMap<ClusterName, f64>,
}

fn serving(
    shared: &Shared,
    traffic: &strait_api::snapshot::TrafficPolicy,
    endpoints: &[Endpoint],
) -> Serving {
    let candidates: Vec<Candidate<'_>> = endpoints
        .iter()
        .map(|endpoint| Candidate {
            endpoint,
            ejected: false,
        })
        .collect();
    let caller = Caller {
        cluster: &shared.cluster,
        locality: &shared.locality,
    };
    let plan = locality::plan(caller, traffic, &candidates);
    let shares = plan.cluster_shares(&candidates);
    let top = shares
        .iter()
        .filter(|(_, s)| **s > 0.0)
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(c, _)| c.clone());
    Serving {
        cluster: top,
        reason: plan.reason.to_string(),
        reason_label: plan.reason.label().to_owned(),
        shares,
    }
}

pub(crate) fn status(shared: &Shared) -> Status {
    let published = shared.world.borrow().clone();
    let snap = shared.snapshot(None);
    let sync: BTreeMap<ClusterName, PeerSyncStatus> = shared
        .imports
        .status()
        .into_iter()
        .map(|s| (s.peer.clone(), s))
        .collect();
    let links = shared
        .links
        .links()
        .values()
        .map(|l| LinkStatus {
            peer: l.peer.clone(),
            identity: l.peer_identity.to_string(),
            controller: l.controller,
            gateways: l.gateways.clone(),
            fail_mode: l.fail_mode,
            lease_secs: l.lease(shared.sync.lease).as_secs(),
            sync: sync.get(&l.peer).cloned(),
        })
        .collect();
    let services = snap
        .services
        .iter()
        .map(|svc| {
            let key = crate::catalog::ServiceKey::new(&svc.namespace, &svc.name);
            let mut clusters: BTreeMap<ClusterName, Vec<EndpointStatus>> = BTreeMap::new();
            for ep in &svc.endpoints {
                let local = ep.cluster == shared.cluster;
                clusters
                    .entry(ep.cluster.clone())
                    .or_default()
                    .push(EndpointStatus {
                        address: ep.address,
                        locality: ep.locality.to_string(),
                        health: ep.health,
                        detail: local.then(|| shared.health.detail(&key, ep.address)),
                    });
            }
            ServiceStatus {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
                vip: svc.vip,
                ports: svc
                    .ports
                    .iter()
                    .map(|p| format!("{}/{:?}", p.port, p.protocol).to_lowercase())
                    .collect(),
                export: published
                    .world
                    .catalog
                    .services
                    .get(&key)
                    .map(|r| r.export.clone()),
                clusters: clusters
                    .into_iter()
                    .map(|(cluster, endpoints)| ClusterEndpoints {
                        local: cluster == shared.cluster,
                        cluster,
                        endpoints,
                    })
                    .collect(),
                serving: serving(shared, &svc.traffic, &svc.endpoints),
            }
        })
        .collect();
    Status {
        cluster: shared.cluster.clone(),
        version: published.world.version,
        links,
        services,
        conflicts: published.view.conflicts.clone(),
        proxies: shared.push.clients(),
    }
}
