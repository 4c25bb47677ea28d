use rand::SeedableRng;
use rand::rngs::StdRng;
use strait_api::snapshot::{Distribute, Endpoint, Health, TrafficPolicy};
use strait_api::{ClusterName, Locality, SpiffeId};

use super::*;

fn cluster(s: &str) -> ClusterName {
    ClusterName::new(s).unwrap()
}

/// `spec` is `cluster region/zone health`, e.g. `east us-east/a healthy`.
fn ep(n: usize, spec: &str) -> Endpoint {
    let parts: Vec<&str> = spec.split(' ').collect();
    Endpoint {
        address: format!("10.0.0.{n}:15006").parse().unwrap(),
        cluster: cluster(parts[0]),
        locality: parts[1].parse().unwrap(),
        health: match parts.get(2).copied().unwrap_or("healthy") {
            "healthy" => Health::Healthy,
            "unhealthy" => Health::Unhealthy,
            "stale" => Health::Stale,
            other => panic!("bad health {other}"),
        },
        weight: 1,
        identity: SpiffeId::parse("spiffe://strait.local/ns/shop/sa/web").unwrap(),
        gateways: Vec::new(),
    }
}

fn endpoints(specs: &[&str]) -> Vec<Endpoint> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| ep(i + 1, s))
        .collect()
}

/// Ejects the candidates whose index is listed.
fn candidates<'a>(eps: &'a [Endpoint], ejected: &[usize]) -> Vec<Candidate<'a>> {
    eps.iter()
        .enumerate()
        .map(|(i, endpoint)| Candidate {
            endpoint,
            ejected: ejected.contains(&i),
        })
        .collect()
}

fn policy(failover: &[&str]) -> TrafficPolicy {
    TrafficPolicy {
        failover: failover.iter().map(|c| cluster(c)).collect(),
        ..TrafficPolicy::default()
    }
}

fn east() -> (ClusterName, Locality) {
    (cluster("east"), "us-east/a".parse().unwrap())
}

fn run(eps: &[Endpoint], ejected: &[usize], policy: &TrafficPolicy) -> Plan {
    let (c, l) = east();
    let caller = Caller {
        cluster: &c,
        locality: &l,
    };
    plan(caller, policy, &candidates(eps, ejected))
}

fn shares(eps: &[Endpoint], plan: &Plan) -> Vec<(String, i64)> {
    plan.cluster_shares(&candidates(eps, &[]))
        .into_iter()
        .map(|(c, s)| (c.to_string(), (s * 100.0).round() as i64))
        .collect()
}

fn tiers_of(plan: &Plan) -> Vec<(Tier, i64)> {
    plan.groups
        .iter()
        .map(|g| (g.tier.clone(), (g.share * 100.0).round() as i64))
        .collect()
}

#[test]
fn healthy_local_zone_takes_all_traffic() {
    let eps = endpoints(&["east us-east/a", "east us-east/b", "west us-west/a"]);
    let p = run(&eps, &[], &policy(&["west"]));
    assert_eq!(p.reason, Reason::LocalHealthy);
    assert_eq!(tiers_of(&p), [(Tier::LocalZone, 100)]);
    assert_eq!(p.groups[0].endpoints, [0]);
}

#[test]
fn tiers_follow_zone_region_failover_order_then_nearest_rest() {
    let eps = endpoints(&[
        "north eu-west/a",
        "central us-east/b",
        "west us-west/a",
        "east us-west/a",
        "east us-east/b",
        "east us-east/a unhealthy",
        "south us-west/a",
    ]);
    let (c, l) = east();
    let caller = Caller {
        cluster: &c,
        locality: &l,
    };
    let t = tiers(caller, &policy(&["west"]), &candidates(&eps, &[]), |_| true);
    let order: Vec<Tier> = t.into_iter().map(|(tier, _)| tier).collect();
    assert_eq!(
        order,
        [
            Tier::LocalZone,
            Tier::LocalRegion,
            Tier::LocalCluster,
            Tier::Failover {
                rank: 0,
                cluster: cluster("west")
            },
            // Same region as the caller, so nearer than the others.
            Tier::Other {
                distance: 2,
                cluster: cluster("central")
            },
            Tier::Other {
                distance: 3,
                cluster: cluster("north")
            },
            Tier::Other {
                distance: 3,
                cluster: cluster("south")
            },
        ]
    );
}

#[test]
fn overprovisioning_keeps_a_mildly_degraded_tier_whole() {
    // healthy zone endpoints out of 5, with 1 healthy region endpoint behind
    // -> share kept by the zone tier (factor 1.4)
    let cases = [(5, 100), (4, 100), (3, 84), (2, 56), (1, 28), (0, 0)];
    for (healthy, zone_share) in cases {
        let mut specs = vec!["east us-east/b"];
        specs.extend((0..5).map(|i| {
            if i < healthy {
                "east us-east/a"
            } else {
                "east us-east/a unhealthy"
            }
        }));
        let eps = endpoints(&specs);
        let p = run(&eps, &[], &TrafficPolicy::default());
        let zone = p
            .groups
            .iter()
            .find(|g| g.tier == Tier::LocalZone)
            .map_or(0.0, |g| g.share);
        assert_eq!(
            (zone * 100.0).round() as i64,
            zone_share,
            "{healthy} healthy"
        );
        assert_eq!(p.reason, Reason::LocalHealthy, "region is still local");
    }
}

#[test]
fn failover_moves_to_next_cluster_in_order_when_local_tier_is_ejected() {
    let eps = endpoints(&[
        "east us-east/a",
        "east us-east/b",
        "west us-west/a",
        "central us-central/a",
    ]);
    let pol = policy(&["central", "west"]);
    let p = run(&eps, &[0, 1], &pol);
    assert_eq!(p.reason, Reason::FailedOverTo(cluster("central")));
    assert_eq!(
        tiers_of(&p),
        [(
            Tier::Failover {
                rank: 0,
                cluster: cluster("central")
            },
            100
        )]
    );
    // With central down too, west is next.
    let p = run(&eps, &[0, 1, 3], &pol);
    assert_eq!(p.reason, Reason::FailedOverTo(cluster("west")));
    assert_eq!(shares(&eps, &p), [("west".to_owned(), 100)]);
}

#[test]
fn fails_back_when_the_local_tier_recovers() {
    let eps = endpoints(&["east us-east/a", "east us-east/a", "west us-west/a"]);
    let pol = policy(&["west"]);
    let timeline: [(&[usize], Reason); 4] = [
        (&[], Reason::LocalHealthy),
        (&[0, 1], Reason::FailedOverTo(cluster("west"))),
        (
            &[0],
            Reason::Spilling {
                to: cluster("west"),
                percent: 30,
            },
        ),
        (&[], Reason::LocalHealthy),
    ];
    for (ejected, want) in timeline {
        assert_eq!(run(&eps, ejected, &pol).reason, want, "ejected {ejected:?}");
    }
}

#[test]
fn spill_splits_between_local_and_next_cluster() {
    let eps = endpoints(&[
        "east us-east/a",
        "east us-east/a unhealthy",
        "east us-east/a unhealthy",
        "east us-east/a unhealthy",
        "west us-west/a",
    ]);
    let p = run(&eps, &[], &policy(&["west"]));
    assert_eq!(
        p.reason,
        Reason::Spilling {
            to: cluster("west"),
            percent: 65
        }
    );
    assert_eq!(
        shares(&eps, &p),
        [("east".to_owned(), 35), ("west".to_owned(), 65)]
    );
}

#[test]
fn remote_only_service_is_served_from_the_remote_cluster() {
    let eps = endpoints(&["west us-west/a", "central us-central/a"]);
    let p = run(&eps, &[], &policy(&["central"]));
    assert_eq!(p.reason, Reason::RemoteOnly(cluster("central")));
}

#[test]
fn stale_endpoints_serve_only_when_nothing_healthy_exists() {
    let eps = endpoints(&[
        "east us-east/a unhealthy",
        "west us-west/a stale",
        "central us-central/a",
    ]);
    let p = run(&eps, &[], &policy(&["west", "central"]));
    assert_eq!(p.reason, Reason::FailedOverTo(cluster("central")));
    let p = run(&eps, &[2], &policy(&["west", "central"]));
    assert_eq!(p.reason, Reason::StaleOnly);
    assert_eq!(p.groups[0].endpoints, [1]);
}

#[test]
fn stale_endpoints_count_as_unhealthy_in_the_tier_share() {
    let eps = endpoints(&["east us-east/a", "east us-east/a stale", "west us-west/a"]);
    let p = run(&eps, &[], &policy(&["west"]));
    assert_eq!(
        p.reason,
        Reason::Spilling {
            to: cluster("west"),
            percent: 30
        }
    );
    assert_eq!(p.groups[0].endpoints, [0]);
}

#[test]
fn panic_mode_uses_ejected_endpoints_when_nothing_else_is_left() {
    let eps = endpoints(&["east us-east/a", "west us-west/a unhealthy"]);
    let p = run(&eps, &[0], &policy(&[]));
    assert_eq!(p.reason, Reason::Panic);
    assert_eq!(p.groups[0].endpoints, [0]);
}

#[test]
fn no_endpoints_when_all_are_unhealthy_or_absent() {
    for eps in [endpoints(&[]), endpoints(&["east us-east/a unhealthy"])] {
        let p = run(&eps, &[], &policy(&[]));
        assert_eq!(p.reason, Reason::NoEndpoints);
        assert!(p.groups.is_empty());
        assert!(p.pick_group(&mut StdRng::seed_from_u64(1)).is_none());
    }
}

fn distribute(from: &str, to: &[(&str, u32)]) -> Distribute {
    Distribute {
        from: from.parse().unwrap(),
        to: to.iter().map(|(p, w)| (p.parse().unwrap(), *w)).collect(),
    }
}

fn weighted_policy(failover: &[&str]) -> TrafficPolicy {
    TrafficPolicy {
        distribute: vec![
            distribute("us-west/*", &[("us-west/*", 100)]),
            distribute("us-east/*", &[("us-east/*", 80), ("us-west/*", 20)]),
        ],
        ..policy(failover)
    }
}

fn weighted_set() -> Vec<Endpoint> {
    endpoints(&[
        "east us-east/a",
        "east us-east/b",
        "west us-west/a",
        "west us-west/b",
        "central us-central/a",
    ])
}

#[test]
fn distribute_80_20_holds_within_five_percent_over_2000_picks() {
    let eps = weighted_set();
    let p = run(&eps, &[], &weighted_policy(&[]));
    assert_eq!(
        p.reason,
        Reason::Distributed {
            from: "us-east/*".parse().unwrap()
        }
    );
    let mut rng = StdRng::seed_from_u64(2024);
    let mut east = 0;
    for _ in 0..2000 {
        let g = p.pick_group(&mut rng).unwrap();
        let i = g.endpoints[rng.below(g.endpoints.len())];
        if eps[i].cluster.as_str() == "east" {
            east += 1;
        }
    }
    let share = f64::from(east) / 2000.0;
    assert!((share - 0.8).abs() < 0.05, "east share {share}");
}

#[test]
fn distribute_shortfall_fails_over_in_declared_order() {
    let eps = weighted_set();
    let pol = weighted_policy(&["central", "west"]);
    // us-east has no healthy endpoint: its 80% goes to central (first in
    // the failover order), while us-west keeps its 20%.
    let p = run(&eps, &[0, 1], &pol);
    assert_eq!(
        p.reason,
        Reason::DistributedWithFailover {
            from: "us-east/*".parse().unwrap(),
            to: cluster("central")
        }
    );
    assert_eq!(
        shares(&eps, &p),
        [("central".to_owned(), 80), ("west".to_owned(), 20)]
    );
    // Central down too: everything goes to west.
    let p = run(&eps, &[0, 1, 4], &pol);
    assert_eq!(shares(&eps, &p), [("west".to_owned(), 100)]);
    // us-west down: its 20% fails over to the nearest healthy tier, local.
    let p = run(&eps, &[2, 3], &pol);
    assert_eq!(shares(&eps, &p), [("east".to_owned(), 100)]);
    // Recovery restores the weights.
    let p = run(&eps, &[], &pol);
    assert_eq!(
        shares(&eps, &p),
        [("east".to_owned(), 80), ("west".to_owned(), 20)]
    );
}

#[test]
fn distribute_partially_degraded_locality_keeps_its_overprovisioned_share() {
    let eps = weighted_set();
    // One of two us-east endpoints: 80% x min(1, 0.5 x 1.4) = 56%; the other
    // 24% fails over outside us-east (west is nearest by default order).
    let p = run(&eps, &[0], &weighted_policy(&["west"]));
    assert_eq!(
        shares(&eps, &p),
        [("east".to_owned(), 56), ("west".to_owned(), 44)]
    );
}

#[test]
fn distribute_rule_applies_only_to_matching_callers() {
    let eps = weighted_set();
    let pol = TrafficPolicy {
        distribute: vec![distribute("us-west/*", &[("us-central/*", 100)])],
        ..policy(&[])
    };
    assert_eq!(run(&eps, &[], &pol).reason, Reason::LocalHealthy);
}

#[test]
fn distribute_with_nothing_healthy_falls_back_to_stale() {
    let eps = endpoints(&["east us-east/a unhealthy", "west us-west/a stale"]);
    let p = run(&eps, &[], &weighted_policy(&[]));
    assert_eq!(p.reason, Reason::StaleOnly);
}

#[test]
fn more_specific_distribute_patterns_win_overlaps() {
    let eps = endpoints(&["east us-east/a", "east us-east/b"]);
    let pol = TrafficPolicy {
        distribute: vec![distribute("*", &[("us-east/*", 10), ("us-east/b", 90)])],
        ..policy(&[])
    };
    let p = run(&eps, &[], &pol);
    let a = p
        .groups
        .iter()
        .find(|g| g.endpoints == [0])
        .map(|g| g.share);
    let b = p
        .groups
        .iter()
        .find(|g| g.endpoints == [1])
        .map(|g| g.share);
    assert_eq!(
        (
            a.map(|s| (s * 100.0).round()),
            b.map(|s| (s * 100.0).round())
        ),
        (Some(10.0), Some(90.0))
    );
}

#[test]
fn reasons_have_labels_and_explanations() {
    let cases = [
        (
            Reason::LocalHealthy,
            "local_healthy",
            "local endpoints healthy",
        ),
        (
            Reason::FailedOverTo(cluster("west")),
            "failed_over",
            "failed over to west",
        ),
        (
            Reason::Spilling {
                to: cluster("west"),
                percent: 30,
            },
            "spilling",
            "30% spills to west",
        ),
        (
            Reason::RemoteOnly(cluster("west")),
            "remote_only",
            "served from west",
        ),
        (Reason::StaleOnly, "stale_only", "stale"),
        (Reason::Panic, "panic", "ejected"),
        (Reason::NoEndpoints, "no_endpoints", "no usable"),
    ];
    for (reason, label, text) in cases {
        assert_eq!(reason.label(), label);
        assert!(reason.to_string().contains(text), "{reason}");
    }
}
