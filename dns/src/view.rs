//! What the DNS server answers from: a [`DnsView`] pushed by the federation
//! controller (or built by hand in tests), validated and indexed into an
//! [`IndexedView`], and swapped atomically through a [`ViewHandle`].
//!
//! The view holds only what DNS needs: which services exist, where their
//! healthy endpoints are, which gateway exposes them to other clusters, and
//! the failover order and locality weights of their traffic policy. Health is
//! decided elsewhere (active checks, peer sync); an endpoint listed here is
//! healthy.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use hickory_proto::rr::{Name, RData, Record, rdata::SOA};
use strait_api::snapshot::LocalityPattern;
use strait_api::{ClusterName, Locality};

/// The default global zone, as in Kubernetes Multi-Cluster Services.
pub const DEFAULT_ZONE: &str = "clusterset.local";

/// Why a view was rejected. The previous view stays in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    #[error("zone {zone:?} is not a valid dns name: {reason}")]
    Zone { zone: String, reason: String },
    #[error("{field} {value:?} is not a dns label (lower-case letters, digits and '-', 1-63)")]
    Label { field: String, value: String },
    #[error("service {0:?} is listed twice")]
    DuplicateService(String),
    #[error("service {service:?}: cluster {cluster} is listed twice")]
    DuplicateCluster { service: String, cluster: String },
}

/// Everything the DNS server knows, at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsView {
    /// Monotonic version; it is the SOA serial (modulo 2^32).
    pub version: u64,
    /// The zone served, without a trailing dot (default `clusterset.local`).
    pub zone: String,
    /// The cluster this server runs in: its endpoints are preferred.
    pub local_cluster: ClusterName,
    pub services: Vec<GlobalService>,
}

impl DnsView {
    /// An empty view of the default zone.
    pub fn new(local_cluster: ClusterName) -> Self {
        Self {
            version: 0,
            zone: DEFAULT_ZONE.to_owned(),
            local_cluster,
            services: Vec::new(),
        }
    }
}

/// A global service: `<name>.<namespace>.svc.<zone>`.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalService {
    pub name: String,
    pub namespace: String,
    /// Loopback address where the local sidecar listens for this service;
    /// meshed clients get this address.
    pub vip: Option<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Where the service runs, one entry per cluster.
    pub clusters: Vec<ClusterEndpoints>,
    /// Clusters to fail over to, in order, after the local one. Clusters not
    /// listed come after, by name.
    pub failover: Vec<ClusterName>,
    /// Locality weights for callers in the local cluster (the `to` side of
    /// the policy's `distribute` rule that matches the local locality).
    /// Empty: plain ordered failover.
    pub weights: Vec<LocalityWeight>,
}

/// A named service port, for SRV names `_<name>._<proto>.<svc>...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub protocol: PortProtocol,
}

/// The transport label of an SRV name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortProtocol {
    Tcp,
    Udp,
}

impl PortProtocol {
    /// The SRV label, `_tcp` or `_udp`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tcp => "_tcp",
            Self::Udp => "_udp",
        }
    }
}

/// A service's presence in one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterEndpoints {
    pub cluster: ClusterName,
    pub locality: Locality,
    /// Healthy endpoints only. Empty: the service is down in this cluster.
    pub endpoints: Vec<SocketAddr>,
    /// Where clients in other clusters reach the service. Empty means the
    /// endpoints are directly reachable (flat network).
    pub gateways: Vec<SocketAddr>,
}

/// `us-east/*` (or `us-east`, `us-east/us-east-1a`, `*`) gets `weight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityWeight {
    pub pattern: LocalityPattern,
    pub weight: u32,
}

/// The weight of `locality` under `weights`: the most specific matching
/// pattern wins; `None` when no pattern matches.
fn weight_of(weights: &[LocalityWeight], locality: &Locality) -> Option<u32> {
    weights
        .iter()
        .filter(|w| w.pattern.matches(locality))
        .max_by_key(|w| w.pattern.specificity())
        .map(|w| w.weight)
}

fn label(field: impl Into<String>, value: &str) -> Result<(), ViewError> {
    if strait_api::label::is_dns_label(value) {
        Ok(())
    } else {
        Err(ViewError::Label {
            field: field.into(),
            value: value.chars().take(80).collect(),
        })
    }
}

/// A validated view with lookup tables and the names answers need.
#[derive(Debug)]
pub struct IndexedView {
    pub(crate) view: DnsView,
    pub(crate) zone: Name,
    pub(crate) soa: Record,
    pub(crate) services: HashMap<(String, String), IndexedService>,
    pub(crate) namespaces: HashSet<String>,
}

/// One service with its answer-ready order and names.
#[derive(Debug)]
pub(crate) struct IndexedService {
    pub(crate) service: GlobalService,
    /// `<svc>.<ns>.svc.<zone>.`
    pub(crate) fqdn: Name,
    /// Per entry of `service.clusters`: `<cluster>.<svc>.<ns>.svc.<zone>.`
    pub(crate) cluster_fqdns: Vec<Name>,
    /// Indexes into `service.clusters`: local first, then failover order,
    /// then the rest by name.
    pub(crate) preference: Vec<usize>,
    /// Per entry of `service.clusters`: its locality weight (0 when weights
    /// are set and none matches). `None` when the service has no weights.
    pub(crate) weights: Option<Vec<u32>>,
    /// Per entry of `service.clusters`: whether it is the local cluster.
    pub(crate) local: Vec<bool>,
}

impl IndexedService {
    pub(crate) fn has_protocol(&self, label: &str) -> bool {
        self.service
            .ports
            .iter()
            .any(|p| p.protocol.label() == label)
    }
}

/// SOA timers: refresh, retry and expire (seconds). Nobody transfers this
/// zone; the values only need to be sane.
const SOA_REFRESH: i32 = 60;
const SOA_RETRY: i32 = 10;
const SOA_EXPIRE: i32 = 3600;

impl IndexedView {
    /// Validates `view` and builds the lookup tables. The SOA TTL and
    /// negative-caching TTL are set per answer from
    /// [`crate::AnswerConfig::ttl`].
    pub fn new(view: DnsView) -> Result<Self, ViewError> {
        let ttl = crate::answer::DEFAULT_TTL;
        let zone_err = |reason: String| ViewError::Zone {
            zone: view.zone.clone(),
            reason,
        };
        let zone = Name::from_ascii(format!("{}.", view.zone.trim_end_matches('.')))
            .map_err(|e| zone_err(e.to_string()))?
            .to_lowercase();
        if zone.is_root() {
            return Err(zone_err("the root zone cannot be served".to_owned()));
        }
        let host = |l: &str| {
            Name::from_labels([l])
                .and_then(|n| n.append_domain(&zone))
                .map_err(|e| zone_err(e.to_string()))
        };
        let soa = Record::from_rdata(
            zone.clone(),
            ttl,
            RData::SOA(SOA::new(
                host("ns")?,
                host("hostmaster")?,
                (view.version & u64::from(u32::MAX)) as u32,
                SOA_REFRESH,
                SOA_RETRY,
                SOA_EXPIRE,
                ttl,
            )),
        );

        let mut services = HashMap::with_capacity(view.services.len());
        let mut namespaces = HashSet::new();
        for svc in &view.services {
            let indexed = index_service(svc, &view.local_cluster, &zone)?;
            let key = (svc.namespace.clone(), svc.name.clone());
            if services.insert(key, indexed).is_some() {
                return Err(ViewError::DuplicateService(format!(
                    "{}.{}",
                    svc.name, svc.namespace
                )));
            }
            namespaces.insert(svc.namespace.clone());
        }
        Ok(Self {
            view,
            zone,
            soa,
            services,
            namespaces,
        })
    }

    /// The view this index was built from.
    pub fn view(&self) -> &DnsView {
        &self.view
    }

    /// The zone apex, lower case, fully qualified.
    pub fn zone(&self) -> &Name {
        &self.zone
    }
}

fn index_service(
    svc: &GlobalService,
    local: &ClusterName,
    zone: &Name,
) -> Result<IndexedService, ViewError> {
    let id = format!("{}.{}", svc.name, svc.namespace);
    label(format!("service {id:?} name"), &svc.name)?;
    label(format!("service {id:?} namespace"), &svc.namespace)?;
    for p in &svc.ports {
        label(format!("service {id:?} port name"), &p.name)?;
    }
    let name_err = |e: hickory_proto::ProtoError| ViewError::Zone {
        zone: zone.to_ascii(),
        reason: e.to_string(),
    };
    let fqdn = Name::from_labels([svc.name.as_str(), svc.namespace.as_str(), "svc"])
        .and_then(|n| n.append_domain(zone))
        .map_err(name_err)?;
    let mut seen = HashSet::new();
    let mut cluster_fqdns = Vec::with_capacity(svc.clusters.len());
    for c in &svc.clusters {
        if !seen.insert(&c.cluster) {
            return Err(ViewError::DuplicateCluster {
                service: id,
                cluster: c.cluster.to_string(),
            });
        }
        let name = fqdn.prepend_label(c.cluster.as_str()).map_err(name_err)?;
        cluster_fqdns.push(name);
    }

    let rank = |i: usize| {
        let c = &svc.clusters[i].cluster;
        if c == local {
            (0, 0, c)
        } else if let Some(pos) = svc.failover.iter().position(|f| f == c) {
            (1, pos, c)
        } else {
            (2, 0, c)
        }
    };
    let mut preference: Vec<usize> = (0..svc.clusters.len()).collect();
    preference.sort_by(|a, b| rank(*a).cmp(&rank(*b)));
    let weights = (!svc.weights.is_empty()).then(|| {
        svc.clusters
            .iter()
            .map(|c| weight_of(&svc.weights, &c.locality).unwrap_or(0))
            .collect()
    });
    let local = svc.clusters.iter().map(|c| &c.cluster == local).collect();
    Ok(IndexedService {
        service: svc.clone(),
        fqdn,
        cluster_fqdns,
        preference,
        weights,
        local,
    })
}

/// Shared, atomically swappable current view. Cloning shares the same slot.
#[derive(Debug, Clone)]
pub struct ViewHandle {
    slot: Arc<RwLock<Arc<IndexedView>>>,
}

impl ViewHandle {
    /// Starts with `view`.
    pub fn new(view: DnsView) -> Result<Self, ViewError> {
        Ok(Self {
            slot: Arc::new(RwLock::new(Arc::new(IndexedView::new(view)?))),
        })
    }

    /// Replaces the view. On error the previous view stays in force.
    pub fn update(&self, view: DnsView) -> Result<(), ViewError> {
        let indexed = Arc::new(IndexedView::new(view)?);
        let mut slot = self.slot.write().unwrap_or_else(|e| e.into_inner());
        *slot = indexed;
        Ok(())
    }

    /// The view in force now.
    pub fn current(&self) -> Arc<IndexedView> {
        self.slot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Locality {
        s.parse().unwrap()
    }

    fn w(pattern: &str, weight: u32) -> LocalityWeight {
        LocalityWeight {
            pattern: pattern.parse().unwrap(),
            weight,
        }
    }

    #[test]
    fn most_specific_weight_pattern_wins() {
        let weights = [w("*", 1), w("us-east/*", 80), w("us-east/z1", 5)];
        assert_eq!(weight_of(&weights, &loc("us-east/z1")), Some(5));
        assert_eq!(weight_of(&weights, &loc("us-east/z2")), Some(80));
        assert_eq!(weight_of(&weights, &loc("eu-west/z1")), Some(1));
        assert_eq!(weight_of(&weights[1..], &loc("eu-west/z1")), None);
    }

    #[test]
    fn bad_views_are_rejected_and_the_old_one_stays() {
        let east = ClusterName::new("east").unwrap();
        let handle = ViewHandle::new(DnsView::new(east.clone())).unwrap();
        let mut bad = DnsView::new(east);
        bad.services.push(GlobalService {
            name: "Web".to_owned(),
            namespace: "default".to_owned(),
            vip: None,
            ports: Vec::new(),
            clusters: Vec::new(),
            failover: Vec::new(),
            weights: Vec::new(),
        });
        let err = handle.update(bad.clone()).unwrap_err();
        assert!(matches!(err, ViewError::Label { .. }), "{err}");
        assert!(handle.current().view().services.is_empty());
        bad.services[0].name = "web".to_owned();
        bad.services.push(bad.services[0].clone());
        let err = handle.update(bad).unwrap_err();
        assert_eq!(err, ViewError::DuplicateService("web.default".to_owned()));
    }
}
