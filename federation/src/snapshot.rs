//! Building a proxy's snapshot: a pure function of the controller's
//! [`World`] (local catalog, endpoint health, what linked peers export, the
//! traffic policies) and the proxy's place.
//!
//! A global service merges the endpoints of every cluster that serves it:
//! the local registration (exported or not: local proxies always see local
//! services) and each linked peer's export. Remote endpoints carry their
//! cluster's gateways; endpoints of a peer whose lease ran out are `stale`.
//! When two clusters disagree on a service's ports or protocols, the
//! service keeps the first definition (local, then peers by name) and the
//! other cluster's endpoints are left out: a [`Conflict`] says so.
//!
//! Authorization comes from the local policy of a service: this cluster's
//! sidecars of the service enforce it. A policy that does not fit the
//! merged service's ports fails closed (every caller denied) with a
//! conflict naming the field.
//!
//! Routes (timeouts, retries) and the traffic policy come from the local
//! policy too, but apply wherever this cluster's proxies call the service:
//! the calling side enforces them, for local and imported services alike.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use strait_api::exports::{ExportTable, ExportedEndpoint, ExportedService};
use strait_api::snapshot::{
    AuthorizationPolicy, Endpoint, Health, LocalPlace, Service, ServicePort, Snapshot,
};
use strait_api::{ClusterName, Locality, SpiffeId, TrustDomain};

use crate::catalog::{LocalCatalog, ServiceKey};

mod merge;
#[cfg(test)]
mod tests;

pub use merge::{merge, merge_from};

/// A service as a peer exports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedService {
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<ImportedEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedEndpoint {
    pub address: SocketAddr,
    pub locality: Locality,
    pub identity: SpiffeId,
    /// Health as the exporting controller sees it.
    pub health: Health,
    pub weight: u32,
}

/// What one linked peer contributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerView {
    pub gateways: Vec<SocketAddr>,
    /// The lease ran out (fail-static keeps the services, marked stale).
    pub stale: bool,
    pub services: BTreeMap<ServiceKey, ImportedService>,
}

/// Everything snapshots are built from, at one version.
#[derive(Debug, Clone)]
pub struct World {
    pub version: u64,
    pub cluster: ClusterName,
    pub trust_domain: TrustDomain,
    /// Default locality of local endpoints.
    pub locality: Locality,
    pub catalog: Arc<LocalCatalog>,
    /// Merged health of local endpoints; absent means healthy.
    pub health: BTreeMap<(ServiceKey, SocketAddr), Health>,
    /// Every linked peer, with or without services.
    pub peers: BTreeMap<ClusterName, Arc<PeerView>>,
    /// Where service VIPs are drawn from.
    pub vips: VipRange,
}

/// The loopback /16 that a cluster's service VIPs are drawn from:
/// `127.77.0.0/16` by default. Clusters whose sidecars share one host (a
/// test mesh, `strait cluster up` on one machine) each take their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VipRange(u8);

impl Default for VipRange {
    fn default() -> Self {
        Self(77)
    }
}

impl VipRange {
    /// `127.<second>.0.0/16`; 0 (where 127.0.0.1 lives) is refused.
    pub fn new(second: u8) -> Result<Self, String> {
        if second == 0 {
            return Err("127.0.0.0/16 holds the host's own 127.0.0.1; pick another /16".into());
        }
        Ok(Self(second))
    }

    fn vip(self, third: u8, fourth: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.0, third, fourth))
    }
}

impl std::str::FromStr for VipRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a loopback /16 like 127.77.0.0/16");
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let [a, b, c, d] = ip.octets();
        if len != "16" || a != 127 || c != 0 || d != 0 {
            return Err(bad());
        }
        Self::new(b)
    }
}

impl TryFrom<String> for VipRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<VipRange> for String {
    fn from(r: VipRange) -> Self {
        r.to_string()
    }
}

impl std::fmt::Display for VipRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "127.{}.0.0/16", self.0)
    }
}

/// Two clusters disagree about a service, or a cluster's endpoints cannot
/// be used; the service is served without them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Conflict {
    pub service: String,
    pub cluster: ClusterName,
    pub reason: String,
}

/// A global service with the endpoints of every cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub key: ServiceKey,
    pub vip: IpAddr,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
    /// Clusters whose endpoints are included.
    pub clusters: BTreeSet<ClusterName>,
    /// What this cluster's sidecars of the service enforce.
    pub authorization: Vec<AuthorizationPolicy>,
    /// The conflicts found while merging this service.
    pub conflicts: Vec<Conflict>,
}

/// The merged view of every service, and the conflicts found. Services
/// are shared between versions: a rebuild reuses every service whose
/// inputs did not change ([`merge_from`]).
#[derive(Debug, Clone, Default)]
pub struct MergedView {
    pub services: BTreeMap<ServiceKey, Arc<Merged>>,
    pub conflicts: Vec<Conflict>,
}

/// Stable VIPs in the world's [`VipRange`]: a hash of `namespace/name`, probing
/// forward on collision (in key order, so a VIP only moves when a
/// colliding service is added before it).
/// A reused service is copied only when its VIP moves.
fn assign_vips(range: VipRange, services: &mut BTreeMap<ServiceKey, Arc<Merged>>) {
    const SLOTS: u32 = 256 * 254;
    let mut used = HashSet::with_capacity(services.len());
    let mut name = String::new();
    for (key, m) in services.iter_mut() {
        name.clear();
        name.push_str(&key.namespace);
        name.push('/');
        name.push_str(&key.name);
        let mut slot = fnv1a(name.as_bytes()) % SLOTS;
        while !used.insert(slot) {
            slot = (slot + 1) % SLOTS;
        }
        // Third octet 0..=255, fourth 1..=254 (never .0 or .255).
        let (third, fourth) = (slot / 254, slot % 254 + 1);
        let vip = range.vip(third as u8, fourth as u8);
        if m.vip != vip {
            Arc::make_mut(m).vip = vip;
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The snapshot for a proxy at `place`, from a merged view.
pub fn snapshot_for(world: &World, view: &MergedView, place: &LocalPlace) -> Snapshot {
    let services = view
        .services
        .values()
        .map(|m| service_for(world, m))
        .collect();
    Snapshot {
        version: world.version,
        local: place.clone(),
        clusters: world.peers.keys().cloned().collect(),
        services,
        exports: None,
    }
}

/// One merged service as every proxy of the cluster sees it: its local
/// policy's routes, traffic (failover only to known clusters), outlier
/// detection and authorization.
pub fn service_for(world: &World, m: &Merged) -> Service {
    let known = |c: &ClusterName| *c == world.cluster || world.peers.contains_key(c);
    let policy = world.catalog.policies.get(&m.key);
    Service {
        name: m.key.name.clone(),
        namespace: m.key.namespace.clone(),
        vip: m.vip,
        ports: m.ports.clone(),
        endpoints: m.endpoints.clone(),
        routes: policy.map(|p| p.routes.clone()).unwrap_or_default(),
        traffic: policy.map(|p| p.to_traffic(&known)).unwrap_or_default(),
        outlier_detection: policy
            .and_then(|p| p.outlier_detection.clone())
            .unwrap_or_default(),
        authorization: m.authorization.clone(),
    }
}

/// The snapshot for this cluster's east-west gateways: no services, the
/// linked peers, and the export table (the local endpoints of every
/// exported service, with their health as this controller sees it, and the
/// peers an `export --to` limits it to).
pub fn gateway_snapshot(world: &World, place: &LocalPlace) -> Snapshot {
    Snapshot {
        version: world.version,
        local: place.clone(),
        clusters: world.peers.keys().cloned().collect(),
        services: Vec::new(),
        exports: Some(export_table(world)),
    }
}

/// What the gateways let linked peers reach.
pub fn export_table(world: &World) -> ExportTable {
    let services = world
        .catalog
        .services
        .iter()
        .filter(|(_, r)| r.export.is_exported())
        .map(|(key, r)| ExportedService {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            ports: r.ports.iter().map(|p| p.port).collect(),
            to: r.export.only_to(),
            endpoints: r
                .endpoints
                .iter()
                .map(|e| ExportedEndpoint {
                    address: e.address,
                    health: world
                        .health
                        .get(&(key.clone(), e.address))
                        .copied()
                        .unwrap_or_default(),
                })
                .collect(),
        })
        .collect();
    ExportTable { services }
}

/// [`merge`] then [`snapshot_for`].
pub fn build(world: &World, place: &LocalPlace) -> (Snapshot, Vec<Conflict>) {
    let view = merge(world);
    (snapshot_for(world, &view, place), view.conflicts)
}
