//! Merging the local catalog and every peer's export into one view, one
//! service at a time, reusing the previous view's services whose inputs
//! did not change.
//!
//! A service's inputs are exactly what [`merge_one`] reads: the frame of
//! the world (cluster, trust domain, default locality, the linked peers in
//! order), the local registration and the health of its endpoints, the
//! local policy, and, per peer, its gateways, whether it is stale and what
//! it exports under that name. `Changes::same_inputs` compares those, cheaply
//! when a peer's view or the catalog is the same allocation as before, so
//! a rebuild after one peer's update builds only that peer's services and
//! the old and new views share the rest.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use strait_api::ClusterName;
use strait_api::snapshot::{Endpoint, Health, ServicePort};

use super::{Conflict, Merged, MergedView, World, assign_vips};
use crate::catalog::ServiceKey;

fn port_list(ports: &[ServicePort]) -> String {
    let mut v: Vec<String> = ports
        .iter()
        .map(|p| format!("{}/{:?}", p.port, p.protocol).to_lowercase())
        .collect();
    v.sort();
    v.join(",")
}

/// The same ports and protocols, in any order (ports are unique).
fn same_ports(a: &[ServicePort], b: &[ServicePort]) -> bool {
    a.len() == b.len() && a.iter().all(|p| b.contains(p))
}

/// Merges the local catalog and every peer's export.
pub fn merge(world: &World) -> MergedView {
    merge_from(world, None)
}

/// [`merge`], reusing from `prev` (an earlier world and the view merged
/// from it) every service whose inputs are the same in `world`.
pub fn merge_from(world: &World, prev: Option<(&World, &MergedView)>) -> MergedView {
    let prev = prev
        .filter(|(p, _)| same_frame(p, world))
        .map(|(pw, pv)| (Changes::between(pw, world), pv));
    let mut keys: BTreeSet<&ServiceKey> = world.catalog.services.keys().collect();
    for view in world.peers.values() {
        keys.extend(view.services.keys());
    }
    let mut out = MergedView::default();
    for key in keys {
        let reused = prev
            .as_ref()
            .and_then(|(changes, pv)| pv.services.get(key).filter(|_| changes.same_inputs(key)));
        match reused {
            Some(m) => {
                out.conflicts.extend(m.conflicts.iter().cloned());
                out.services.insert(key.clone(), m.clone());
            }
            None => {
                let (merged, conflicts) = merge_one(world, key);
                out.conflicts.extend(conflicts);
                if let Some(m) = merged {
                    out.services.insert(key.clone(), Arc::new(m));
                }
            }
        }
    }
    for (key, policy) in &world.catalog.policies {
        for c in &policy.failover {
            if *c != world.cluster && !world.peers.contains_key(c) {
                out.conflicts.push(Conflict {
                    service: key.to_string(),
                    cluster: c.clone(),
                    reason: format!(
                        "the failover order names cluster {c}, which is not linked; it is skipped"
                    ),
                });
            }
        }
    }
    assign_vips(world.vips, &mut out.services);
    out.conflicts.sort();
    out.conflicts.dedup();
    out
}

/// What every service depends on: when it differs, nothing is reused.
fn same_frame(a: &World, b: &World) -> bool {
    a.cluster == b.cluster
        && a.vips == b.vips
        && a.trust_domain == b.trust_domain
        && a.locality == b.locality
        && a.peers.keys().eq(b.peers.keys())
}

/// What changed from an earlier world `a` to `b` (with the same frame).
struct Changes<'w> {
    a: &'w World,
    b: &'w World,
    /// Services whose local endpoint health differs.
    health: HashSet<&'w ServiceKey>,
}

impl<'w> Changes<'w> {
    fn between(a: &'w World, b: &'w World) -> Self {
        let mut health = HashSet::new();
        if a.health != b.health {
            for (x, y) in [(a, b), (b, a)] {
                for (k, h) in &x.health {
                    if y.health.get(k) != Some(h) {
                        health.insert(&k.0);
                    }
                }
            }
        }
        Self { a, b, health }
    }

    /// Whether `key`'s inputs are the same in both worlds.
    fn same_inputs(&self, key: &ServiceKey) -> bool {
        let (a, b) = (self.a, self.b);
        let catalog = Arc::ptr_eq(&a.catalog, &b.catalog)
            || (a.catalog.services.get(key) == b.catalog.services.get(key)
                && a.catalog.policies.get(key).map(|p| &p.authorization)
                    == b.catalog.policies.get(key).map(|p| &p.authorization));
        catalog
            && !self.health.contains(key)
            && a.peers.values().zip(b.peers.values()).all(|(va, vb)| {
                Arc::ptr_eq(va, vb)
                    || (va.gateways == vb.gateways
                        && va.stale == vb.stale
                        && va.services.get(key) == vb.services.get(key))
            })
    }
}

/// One service from every source, and the conflicts found; `None` when no
/// cluster can serve it.
fn merge_one(world: &World, key: &ServiceKey) -> (Option<Merged>, Vec<Conflict>) {
    let mut conflicts = Vec::new();
    let mut merged: Option<Merged> = None;
    let mut owner: Option<&ClusterName> = None;
    if let Some(reg) = world.catalog.services.get(key) {
        // Exact capacities: the merged view is the controller's largest
        // structure, and grown vectors would waste up to half of it.
        let mut endpoints = Vec::with_capacity(reg.endpoints.len());
        endpoints.extend(reg.endpoints.iter().filter_map(|ep| {
            let health = if world.health.is_empty() {
                Health::default()
            } else {
                let h = world.health.get(&(key.clone(), ep.address));
                h.copied().unwrap_or_default()
            };
            Some(Endpoint {
                address: ep.address,
                cluster: world.cluster.clone(),
                locality: ep
                    .locality
                    .clone()
                    .unwrap_or_else(|| world.locality.clone()),
                health,
                weight: ep.weight,
                identity: reg.identity_of(ep, &world.trust_domain)?,
                gateways: Vec::new(),
            })
        }));
        owner = Some(&world.cluster);
        merged = Some(Merged {
            key: key.clone(),
            vip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ports: reg.ports.clone(),
            endpoints,
            clusters: BTreeSet::from([world.cluster.clone()]),
            authorization: Vec::new(),
            conflicts: Vec::new(),
        });
    }
    for (peer, view) in &world.peers {
        let Some(svc) = view.services.get(key) else {
            continue;
        };
        let conflict = |reason: String| Conflict {
            service: key.to_string(),
            cluster: peer.clone(),
            reason,
        };
        if view.gateways.is_empty() {
            let why =
                format!("cluster {peer} announced no gateway, so its endpoints cannot be reached");
            conflicts.push(conflict(why));
            continue;
        }
        let m = merged.get_or_insert_with(|| {
            owner = Some(peer);
            Merged {
                key: key.clone(),
                vip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                ports: svc.ports.clone(),
                endpoints: Vec::new(),
                clusters: BTreeSet::new(),
                authorization: Vec::new(),
                conflicts: Vec::new(),
            }
        });
        if !same_ports(&m.ports, &svc.ports) {
            let first = owner.map(ToString::to_string).unwrap_or_default();
            let why = format!(
                "ports differ: {first} serves {}, {peer} serves {}; {peer}'s endpoints are left out",
                port_list(&m.ports),
                port_list(&svc.ports)
            );
            conflicts.push(conflict(why));
            continue;
        }
        let mut seen: HashSet<SocketAddr> = m.endpoints.iter().map(|e| e.address).collect();
        m.endpoints.reserve_exact(svc.endpoints.len());
        for ep in &svc.endpoints {
            if !seen.insert(ep.address) {
                let why = format!(
                    "endpoint {} is also claimed by another cluster; left out",
                    ep.address
                );
                conflicts.push(conflict(why));
                continue;
            }
            m.endpoints.push(Endpoint {
                address: ep.address,
                cluster: peer.clone(),
                locality: ep.locality.clone(),
                health: if view.stale { Health::Stale } else { ep.health },
                weight: ep.weight,
                identity: ep.identity.clone(),
                gateways: view.gateways.clone(),
            });
        }
        m.clusters.insert(peer.clone());
    }
    if let (Some(m), Some(policy)) = (merged.as_mut(), world.catalog.policies.get(key)) {
        if !policy.authorization.is_empty() {
            let (authz, problem) = policy.authorization_for(&m.ports);
            m.authorization = authz;
            if let Some(e) = problem {
                conflicts.push(Conflict {
                    service: key.to_string(),
                    cluster: world.cluster.clone(),
                    reason: format!(
                        "{}: {:?} is invalid: {}; the service denies every caller until the policy is fixed",
                        e.field, e.value, e.reason
                    ),
                });
            }
        }
    }
    if let Some(m) = merged.as_mut() {
        m.conflicts.clone_from(&conflicts);
    }
    (merged, conflicts)
}
