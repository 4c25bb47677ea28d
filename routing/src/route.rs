//! The outbound decision: from the address an app dialed to the endpoint
//! to use and the hop that reaches it. This is the one function the I/O
//! layer calls per request (HTTP) or per connection (TCP); it ties the
//! locality plan, the balancer and the retry helper together.

use std::net::{IpAddr, SocketAddr};

use strait_api::ClusterName;
use strait_api::snapshot::{Endpoint, Service, ServicePort, Snapshot};

use crate::balance::{Balancer, Random};
use crate::locality::{self, Caller, Candidate, Plan, Reason};
use crate::outlier::OutlierDetector;
use crate::retry;

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboundError {
    #[error("no service listens on {vip}:{port}")]
    UnknownTarget { vip: IpAddr, port: u16 },
    #[error("service {service} has no usable endpoint")]
    NoEndpoints { service: String },
}

impl OutboundError {
    /// Who is at fault, for metrics: the caller dialed nothing we know, or
    /// the destination has nothing to serve with.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownTarget { .. } => "downstream",
            Self::NoEndpoints { .. } => "upstream",
        }
    }
}

/// How to reach the chosen endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Same cluster: mTLS straight to the endpoint's sidecar.
    Direct(SocketAddr),
    /// Another cluster: `CONNECT target` through the east-west gateway, with
    /// end-to-end mTLS to the endpoint's sidecar inside the tunnel.
    Gateway {
        gateway: SocketAddr,
        target: SocketAddr,
    },
}

/// The decision for one request or connection.
#[derive(Debug, Clone)]
pub struct Choice<'a> {
    /// Index into the service's endpoints (and the candidate slice).
    pub index: usize,
    pub endpoint: &'a Endpoint,
    pub hop: Hop,
    /// Why traffic currently goes where it goes.
    pub reason: Reason,
}

/// The service behind a VIP and port.
pub fn find_service(
    snapshot: &Snapshot,
    vip: IpAddr,
    port: u16,
) -> Result<(&Service, &ServicePort), OutboundError> {
    snapshot
        .services
        .iter()
        .filter(|s| s.vip == vip)
        .find_map(|s| s.port(port).map(|p| (s, p)))
        .ok_or(OutboundError::UnknownTarget { vip, port })
}

/// The service's endpoints with their ejection status at `now`.
pub fn candidates<'a>(
    service: &'a Service,
    outlier: &OutlierDetector,
    now: std::time::Instant,
) -> Vec<Candidate<'a>> {
    service
        .endpoints
        .iter()
        .map(|endpoint| Candidate {
            endpoint,
            ejected: outlier.is_ejected(&endpoint.address, now),
        })
        .collect()
}

/// Direct for local endpoints; otherwise one of the endpoint's gateways,
/// drawn at random (gateways are active-active).
pub fn hop<R: Random + ?Sized>(local: &ClusterName, endpoint: &Endpoint, rng: &mut R) -> Hop {
    if endpoint.cluster == *local || endpoint.gateways.is_empty() {
        return Hop::Direct(endpoint.address);
    }
    let gateway = endpoint.gateways[rng.below(endpoint.gateways.len())];
    Hop::Gateway {
        gateway,
        target: endpoint.address,
    }
}

/// The locality plan of `service` over `candidates`, for this sidecar.
pub fn plan(snapshot: &Snapshot, service: &Service, candidates: &[Candidate<'_>]) -> Plan {
    let caller = Caller {
        cluster: &snapshot.local.cluster,
        locality: &snapshot.local.locality,
    };
    locality::plan(caller, &service.traffic, candidates)
}

/// Chooses an endpoint of `service` by `plan` (see [`plan`]; it is a pure
/// function of the snapshot and the candidates' ejection flags, so callers
/// may keep it), avoiding the `tried` ones (retries). `cost` is the
/// balancer's cost of an endpoint index.
#[allow(clippy::too_many_arguments)]
pub fn choose<'a, R: Random + ?Sized>(
    plan: &Plan,
    snapshot: &Snapshot,
    service: &Service,
    candidates: &[Candidate<'a>],
    tried: &[usize],
    balancer: &mut Balancer,
    rng: &mut R,
    cost: impl Fn(usize) -> f64,
) -> Result<Choice<'a>, OutboundError> {
    let pick = |group: &[usize], rng: &mut R| balancer.pick(group, rng, &cost);
    let index = retry::pick_different(plan, tried, rng, pick);
    let no_endpoints = || OutboundError::NoEndpoints {
        service: format!("{}.{}", service.name, service.namespace),
    };
    let index = index.ok_or_else(no_endpoints)?;
    let endpoint = candidates.get(index).ok_or_else(no_endpoints)?.endpoint;
    Ok(Choice {
        index,
        endpoint,
        hop: hop(&snapshot.local.cluster, endpoint, rng),
        reason: plan.reason.clone(),
    })
}

#[cfg(test)]
mod tests;
