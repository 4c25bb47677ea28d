//! Where a service's traffic goes: locality tiers, spill, weights, fallbacks.
//!
//! Without `distribute`, endpoints fall into priority tiers: the caller's
//! zone, its region, the rest of its cluster, then other clusters in the
//! policy's failover order, then any other cluster (nearest region first).
//! A tier whose healthy share is `h` takes `min(1, h * factor)` of what is
//! left and spills the rest to the next tier (Envoy's priority load with an
//! overprovisioning factor, 1.4 by default), so traffic fails over gradually
//! and fails back as soon as health returns: the plan is recomputed from the
//! current health, there is no hidden state.
//!
//! With a matching `distribute` rule, the weights decide the shares among
//! localities; a weighted locality keeps `weight * min(1, h * factor)` and the
//! share it cannot carry goes through the failover tiers above (over the
//! endpoints outside the degraded localities). Weights and ordered failover
//! thus combine in one policy.
//!
//! Healthy means controller-healthy and not ejected. Stale endpoints (from an
//! unreachable peer) serve only when no healthy endpoint exists anywhere;
//! after them, ejected-but-healthy endpoints serve in "panic" mode.

use std::collections::BTreeMap;
use std::fmt;

use strait_api::snapshot::{Endpoint, Health, LocalityPattern, TrafficPolicy};
use strait_api::{ClusterName, Locality};

use crate::balance::Random;

mod distribute;

/// Shares below this are treated as zero.
const EPSILON: f64 = 1e-9;

/// Who is asking: the proxy's own place.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub cluster: &'a ClusterName,
    pub locality: &'a Locality,
}

/// An endpoint with its passive-health status.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub endpoint: &'a Endpoint,
    pub ejected: bool,
}

impl Candidate<'_> {
    /// Controller-healthy and not ejected by outlier detection.
    pub fn is_healthy(&self) -> bool {
        !self.ejected && self.endpoint.health == Health::Healthy
    }
}

/// Why a group of endpoints is preferred. Ordered by priority; `Weighted`
/// groups come from `distribute` and are not a priority.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    LocalZone,
    LocalRegion,
    LocalCluster,
    Failover { rank: usize, cluster: ClusterName },
    Other { distance: u8, cluster: ClusterName },
    Weighted(LocalityPattern),
}

impl Tier {
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            Self::LocalZone | Self::LocalRegion | Self::LocalCluster
        )
    }
}

/// Endpoints (indices into the candidate slice) that share one traffic share.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub tier: Tier,
    /// Fraction of traffic, in `(0, 1]`; a plan's shares sum to 1.
    pub share: f64,
    pub endpoints: Vec<usize>,
}

/// Why the plan looks the way it does (shown by `strait status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// All traffic stays in the caller's cluster.
    LocalHealthy,
    /// The local cluster is degraded; `percent`% goes to other clusters,
    /// mostly to `to`.
    Spilling {
        to: ClusterName,
        percent: u8,
    },
    /// The local cluster takes nothing; `to` takes the most.
    FailedOverTo(ClusterName),
    /// The caller's cluster has no endpoints of the service.
    RemoteOnly(ClusterName),
    /// A `distribute` rule decides the shares.
    Distributed {
        from: LocalityPattern,
    },
    /// A `distribute` rule applies, but some weighted localities lack healthy
    /// endpoints; their share fails over, mostly to `to`.
    DistributedWithFailover {
        from: LocalityPattern,
        to: ClusterName,
    },
    /// No healthy endpoint anywhere: stale endpoints serve.
    StaleOnly,
    /// No healthy or stale endpoint: ejected ones serve anyway.
    Panic,
    NoEndpoints,
}

impl Reason {
    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::LocalHealthy => "local_healthy",
            Self::Spilling { .. } => "spilling",
            Self::FailedOverTo(_) => "failed_over",
            Self::RemoteOnly(_) => "remote_only",
            Self::Distributed { .. } => "distributed",
            Self::DistributedWithFailover { .. } => "distributed_with_failover",
            Self::StaleOnly => "stale_only",
            Self::Panic => "panic",
            Self::NoEndpoints => "no_endpoints",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LocalHealthy => f.write_str("local endpoints healthy"),
            Self::Spilling { to, percent } => {
                write!(f, "local cluster degraded, {percent}% spills to {to}")
            }
            Self::FailedOverTo(c) => write!(f, "failed over to {c}"),
            Self::RemoteOnly(c) => write!(f, "no local endpoints, served from {c}"),
            Self::Distributed { from } => write!(f, "distributed by weights for {from}"),
            Self::DistributedWithFailover { from, to } => {
                write!(f, "distributed by weights for {from}, failing over to {to}")
            }
            Self::StaleOnly => f.write_str("only stale endpoints left"),
            Self::Panic => f.write_str("every endpoint ejected, using them anyway"),
            Self::NoEndpoints => f.write_str("no usable endpoints"),
        }
    }
}

/// The decision: groups with their shares, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub groups: Vec<Group>,
    pub reason: Reason,
}

impl Plan {
    /// Draws a group according to the shares.
    pub fn pick_group<R: Random + ?Sized>(&self, rng: &mut R) -> Option<&Group> {
        let total: f64 = self.groups.iter().map(|g| g.share).sum();
        let mut x = rng.unit() * total;
        for g in &self.groups {
            if x < g.share {
                return Some(g);
            }
            x -= g.share;
        }
        self.groups.last()
    }

    /// Expected share of traffic per cluster, spreading each group's share
    /// over its endpoints by weight.
    pub fn cluster_shares(&self, candidates: &[Candidate<'_>]) -> BTreeMap<ClusterName, f64> {
        shares_by_cluster(&self.groups, candidates)
    }
}

/// Computes the plan for one service.
pub fn plan(caller: Caller<'_>, policy: &TrafficPolicy, candidates: &[Candidate<'_>]) -> Plan {
    if let Some(p) = distribute::plan(caller, policy, candidates) {
        return p;
    }
    let tiers = tiers(caller, policy, candidates, |_| true);
    let groups = spill(&tiers, candidates, policy.overprovisioning_factor);
    if groups.is_empty() {
        return fallback(&tiers, candidates);
    }
    let local_share: f64 = groups
        .iter()
        .filter(|g| g.tier.is_local())
        .map(|g| g.share)
        .sum();
    let has_local = candidates
        .iter()
        .any(|c| c.endpoint.cluster == *caller.cluster);
    let reason = match top_remote(&groups, candidates, caller.cluster) {
        None => Reason::LocalHealthy,
        Some(to) if !has_local => Reason::RemoteOnly(to),
        Some(to) if local_share <= EPSILON => Reason::FailedOverTo(to),
        Some(_) if local_share >= 1.0 - EPSILON => Reason::LocalHealthy,
        Some(to) => Reason::Spilling {
            to,
            percent: ((1.0 - local_share) * 100.0).round().clamp(1.0, 99.0) as u8,
        },
    };
    Plan { groups, reason }
}

fn tier_of(caller: Caller<'_>, policy: &TrafficPolicy, ep: &Endpoint) -> Tier {
    let proximity = caller.locality.proximity(&ep.locality);
    if ep.cluster == *caller.cluster {
        return match proximity {
            2.. => Tier::LocalZone,
            1 => Tier::LocalRegion,
            0 => Tier::LocalCluster,
        };
    }
    match policy.failover.iter().position(|c| *c == ep.cluster) {
        Some(rank) => Tier::Failover {
            rank,
            cluster: ep.cluster.clone(),
        },
        None => Tier::Other {
            distance: 3 - proximity.min(3),
            cluster: ep.cluster.clone(),
        },
    }
}

/// Candidates (those `keep` accepts) grouped by tier, in priority order.
fn tiers(
    caller: Caller<'_>,
    policy: &TrafficPolicy,
    candidates: &[Candidate<'_>],
    keep: impl Fn(usize) -> bool,
) -> Vec<(Tier, Vec<usize>)> {
    let mut map: BTreeMap<Tier, Vec<usize>> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate().filter(|(i, _)| keep(*i)) {
        map.entry(tier_of(caller, policy, c.endpoint))
            .or_default()
            .push(i);
    }
    map.into_iter().collect()
}

/// Healthy members and the healthy fraction of the members' total weight.
fn health(members: &[usize], candidates: &[Candidate<'_>]) -> (Vec<usize>, f64) {
    let weight = |i: &usize| {
        candidates
            .get(*i)
            .map_or(0.0, |c| f64::from(c.endpoint.weight))
    };
    let healthy: Vec<usize> = members
        .iter()
        .copied()
        .filter(|i| candidates.get(*i).is_some_and(Candidate::is_healthy))
        .collect();
    let total: f64 = members.iter().map(weight).sum();
    let fraction = if total > 0.0 {
        healthy.iter().map(weight).sum::<f64>() / total
    } else {
        0.0
    };
    (healthy, fraction)
}

/// Envoy's priority load: each tier takes `min(left, health / total)` where
/// `health = min(1, h * factor)` and `total = min(1, sum of health)`.
fn spill(tiers: &[(Tier, Vec<usize>)], candidates: &[Candidate<'_>], factor: f64) -> Vec<Group> {
    let healths: Vec<(Vec<usize>, f64)> = tiers
        .iter()
        .map(|(_, members)| {
            let (healthy, h) = health(members, candidates);
            (healthy, (h * factor).min(1.0))
        })
        .collect();
    let total = healths.iter().map(|(_, h)| h).sum::<f64>().min(1.0);
    if total <= EPSILON {
        return Vec::new();
    }
    let mut left = 1.0;
    let mut groups = Vec::new();
    for ((tier, _), (healthy, h)) in tiers.iter().zip(healths) {
        let share = (h / total).min(left);
        left -= share;
        if share > EPSILON {
            groups.push(Group {
                tier: tier.clone(),
                share,
                endpoints: healthy,
            });
        }
    }
    groups
}

/// The remote cluster with the largest share, if any remote one has a share.
fn top_remote(
    groups: &[Group],
    candidates: &[Candidate<'_>],
    local: &ClusterName,
) -> Option<ClusterName> {
    shares_by_cluster(groups, candidates)
        .into_iter()
        .filter(|(c, s)| c != local && *s > EPSILON)
        .max_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .map(|(c, _)| c)
}

/// Spreads each group's share over its endpoints by weight.
fn shares_by_cluster(groups: &[Group], candidates: &[Candidate<'_>]) -> BTreeMap<ClusterName, f64> {
    let mut out = BTreeMap::new();
    for g in groups {
        let eps = || g.endpoints.iter().filter_map(|i| candidates.get(*i));
        let total: f64 = eps().map(|c| f64::from(c.endpoint.weight)).sum();
        for c in eps() {
            let share = g.share * f64::from(c.endpoint.weight) / total.max(EPSILON);
            *out.entry(c.endpoint.cluster.clone()).or_insert(0.0) += share;
        }
    }
    out
}

/// Nothing healthy: the best tier with stale endpoints, else panic mode.
fn fallback(tiers: &[(Tier, Vec<usize>)], candidates: &[Candidate<'_>]) -> Plan {
    let find = |pred: &dyn Fn(&Candidate<'_>) -> bool| {
        tiers.iter().find_map(|(tier, members)| {
            let eps: Vec<usize> = members
                .iter()
                .copied()
                .filter(|i| candidates.get(*i).is_some_and(pred))
                .collect();
            (!eps.is_empty()).then(|| Group {
                tier: tier.clone(),
                share: 1.0,
                endpoints: eps,
            })
        })
    };
    let stale = |c: &Candidate<'_>| !c.ejected && c.endpoint.health == Health::Stale;
    let panic = |c: &Candidate<'_>| c.ejected && c.endpoint.health == Health::Healthy;
    if let Some(g) = find(&stale) {
        return Plan {
            groups: vec![g],
            reason: Reason::StaleOnly,
        };
    }
    if let Some(g) = find(&panic) {
        return Plan {
            groups: vec![g],
            reason: Reason::Panic,
        };
    }
    Plan {
        groups: Vec::new(),
        reason: Reason::NoEndpoints,
    }
}

#[cfg(test)]
mod tests;
