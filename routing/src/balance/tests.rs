use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use strait_api::snapshot::LoadBalancer;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Replays fixed draws, so a test can name exactly which pair P2C compares.
struct Scripted(Vec<usize>);

impl Random for Scripted {
    fn below(&mut self, n: usize) -> usize {
        self.0.remove(0) % n
    }
    fn unit(&mut self) -> f64 {
        0.0
    }
}

#[test]
fn p2c_handles_empty_and_single_groups() {
    let mut rng = StdRng::seed_from_u64(1);
    assert_eq!(p2c(&[], &mut rng, |_| 0.0), None);
    assert_eq!(p2c(&[7], &mut rng, |_| 0.0), Some(7));
}

#[test]
fn p2c_keeps_the_cheaper_of_two_distinct_draws() {
    let cost = |i: usize| [5.0, 1.0, 3.0][i];
    // The second draw is over the other candidates, so it skips the first.
    let cases = [
        (vec![0, 0], 1), // 0 vs 1
        (vec![0, 1], 2), // 0 vs 2
        (vec![2, 0], 2), // 2 vs 0
        (vec![1, 1], 1), // 1 vs 2
    ];
    for (draws, want) in cases {
        let mut rng = Scripted(draws.clone());
        assert_eq!(p2c(&[0, 1, 2], &mut rng, cost), Some(want), "{draws:?}");
    }
}

#[test]
fn p2c_keeps_the_first_draw_on_a_tie() {
    let mut rng = Scripted(vec![1, 0]);
    assert_eq!(p2c(&[10, 20], &mut rng, |_| 1.0), Some(20));
}

#[test]
fn p2c_prefers_the_faster_endpoint() {
    let now = Instant::now();
    let config = EwmaConfig::default();
    let mut loads: Vec<EndpointLoad> = (0..3).map(|_| EndpointLoad::new(now)).collect();
    for (load, rtt) in loads.iter_mut().zip([ms(5), ms(50), ms(50)]) {
        load.observe(rtt, now, &config);
    }
    let mut rng = StdRng::seed_from_u64(7);
    let mut hits = [0u32; 3];
    for _ in 0..3000 {
        let i = p2c(&[0, 1, 2], &mut rng, |i| {
            loads[i].request_cost(now, &config, 1)
        });
        hits[i.unwrap_or(99)] += 1;
    }
    // The fast one wins every pair it is in: two pairs out of three.
    assert!(hits[0] > 1800, "{hits:?}");
    assert!(hits[1] > 300 && hits[2] > 300, "{hits:?}");
}

#[test]
fn pending_requests_raise_cost() {
    let now = Instant::now();
    let config = EwmaConfig::default();
    let mut busy = EndpointLoad::new(now);
    busy.observe(ms(10), now, &config);
    let idle = busy.clone();
    for _ in 0..3 {
        busy.request_started();
    }
    assert_eq!(busy.pending(), 3);
    let ratio = busy.request_cost(now, &config, 1) / idle.request_cost(now, &config, 1);
    assert!((ratio - 4.0).abs() < 1e-9, "{ratio}");
    busy.request_finished(ms(10), now, &config);
    assert_eq!(busy.pending(), 2);
}

#[test]
fn weights_divide_cost() {
    let now = Instant::now();
    let config = EwmaConfig::default();
    let load = EndpointLoad::new(now);
    let light = load.request_cost(now, &config, 1);
    assert!((load.request_cost(now, &config, 4) - light / 4.0).abs() < 1e-6);
    assert_eq!(load.connection_cost(2), 0.5);
}

#[test]
fn ewma_takes_peaks_at_once_and_decays_toward_faster_observations() {
    let t0 = Instant::now();
    let config = EwmaConfig {
        decay: Duration::from_secs(10),
        default_rtt: ms(30),
    };
    let mut load = EndpointLoad::new(t0);
    assert_eq!(load.rtt_estimate(t0, &config), ms(30).as_nanos() as f64);
    load.observe(ms(10), t0, &config);
    load.observe(ms(100), t0, &config);
    assert_eq!(load.rtt_estimate(t0, &config), ms(100).as_nanos() as f64);
    // A fast answer right away barely moves the estimate...
    load.observe(ms(10), t0, &config);
    assert_eq!(load.rtt_estimate(t0, &config), ms(100).as_nanos() as f64);
    // ...but after one decay period it mostly counts.
    let t1 = t0 + Duration::from_secs(10);
    load.observe(ms(10), t1, &config);
    let est = load.rtt_estimate(t1, &config) / 1e6;
    let want = 100.0 * (-1.0f64).exp() + 10.0 * (1.0 - (-1.0f64).exp());
    assert!((est - want).abs() < 1e-6, "{est} vs {want}");
}

#[test]
fn idle_estimates_fade_so_slow_endpoints_get_probed_again() {
    let t0 = Instant::now();
    let config = EwmaConfig::default();
    let mut slow = EndpointLoad::new(t0);
    slow.observe(ms(500), t0, &config);
    let later = t0 + Duration::from_secs(60);
    assert!(slow.rtt_estimate(later, &config) < ms(2).as_nanos() as f64);
}

#[test]
fn connections_drive_tcp_picks() {
    let now = Instant::now();
    let mut loads = [EndpointLoad::new(now), EndpointLoad::new(now)];
    for _ in 0..5 {
        loads[0].connection_opened();
    }
    loads[0].connection_closed();
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..20 {
        assert_eq!(
            p2c(&[0, 1], &mut rng, |i| loads[i].connection_cost(1)),
            Some(1)
        );
    }
}

#[test]
fn round_robin_cycles_through_the_group() {
    let mut rr = RoundRobin::default();
    let picks: Vec<_> = (0..5).filter_map(|_| rr.pick(&[3, 4, 5])).collect();
    assert_eq!(picks, [3, 4, 5, 3, 4]);
    assert_eq!(rr.pick(&[]), None);
}

#[test]
fn balancer_uses_the_configured_strategy() {
    let mut rng = StdRng::seed_from_u64(9);
    let mut rr = Balancer::new(LoadBalancer::RoundRobin);
    assert_eq!(rr.strategy(), LoadBalancer::RoundRobin);
    let picks: Vec<_> = (0..4)
        .filter_map(|_| rr.pick(&[0, 1], &mut rng, |i| i as f64))
        .collect();
    assert_eq!(picks, [0, 1, 0, 1]);
    let mut p2c = Balancer::new(LoadBalancer::P2cEwma);
    for _ in 0..10 {
        assert_eq!(p2c.pick(&[0, 1], &mut rng, |i| i as f64), Some(0));
    }
}

#[test]
fn seeded_rng_is_deterministic() {
    let draws = |seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..8).map(|_| rng.below(100)).collect::<Vec<_>>()
    };
    assert_eq!(draws(42), draws(42));
    let mut rng = StdRng::seed_from_u64(1);
    assert!(
        (0..100)
            .map(|_| rng.unit())
            .all(|u| (0.0..1.0).contains(&u))
    );
}
