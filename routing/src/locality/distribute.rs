//! `distribute` rules: weights decide the shares among localities; what a
//! degraded weighted locality cannot carry goes through the failover tiers.

use std::collections::BTreeMap;

use strait_api::snapshot::{LocalityPattern, TrafficPolicy};

use super::{
    Caller, Candidate, EPSILON, Group, Plan, Reason, Tier, health, spill, tiers, top_remote,
};

/// `distribute`: weights among localities, the shortfall through failover.
pub(super) fn plan(
    caller: Caller<'_>,
    policy: &TrafficPolicy,
    candidates: &[Candidate<'_>],
) -> Option<Plan> {
    let rule = policy
        .distribute
        .iter()
        .find(|d| d.from.matches(caller.locality))?;
    let mut members: BTreeMap<&LocalityPattern, Vec<usize>> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate() {
        let best = rule
            .to
            .keys()
            .filter(|p| p.matches(&c.endpoint.locality))
            .max_by_key(|p| p.specificity());
        if let Some(p) = best {
            members.entry(p).or_default().push(i);
        }
    }
    let factor = policy.overprovisioning_factor;
    let mut groups = Vec::new();
    let mut lost = 0.0;
    let mut degraded = vec![false; candidates.len()];
    for (pattern, weight) in &rule.to {
        let want = f64::from(*weight) / 100.0;
        let list = members.get(pattern).map_or(&[][..], Vec::as_slice);
        let (healthy, h) = health(list, candidates);
        let share = want * (h * factor).min(1.0);
        if share + EPSILON < want {
            lost += want - share;
            for i in list {
                degraded[*i] = true;
            }
        }
        if share > EPSILON {
            groups.push(Group {
                tier: Tier::Weighted((*pattern).clone()),
                share,
                endpoints: healthy,
            });
        }
    }
    let mut failover_to = None;
    if lost > EPSILON {
        let rest = tiers(caller, policy, candidates, |i| !degraded[i]);
        let spilled = spill(&rest, candidates, factor);
        failover_to = top_remote(&spilled, candidates, caller.cluster)
            .or_else(|| spilled.first().map(|_| caller.cluster.clone()));
        groups.extend(spilled.into_iter().map(|g| Group {
            share: g.share * lost,
            ..g
        }));
    }
    let total: f64 = groups.iter().map(|g| g.share).sum();
    if total <= EPSILON {
        return None;
    }
    for g in &mut groups {
        g.share /= total;
    }
    let from = rule.from.clone();
    let reason = match failover_to {
        Some(to) => Reason::DistributedWithFailover { from, to },
        None => Reason::Distributed { from },
    };
    Some(Plan { groups, reason })
}
