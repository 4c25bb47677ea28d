//! Choosing one endpoint inside a group of equally preferred ones.
//!
//! HTTP requests use power of two choices over a peak-EWMA latency estimate
//! multiplied by the number of requests in flight (Linkerd's balancer): two
//! random candidates are drawn and the cheaper one wins, so a slow or busy
//! endpoint gets less traffic without a global view. TCP connections use the
//! same two choices over open connections (least connections). Round robin is
//! available for those who want it. Costs are divided by endpoint weights.

use std::time::{Duration, Instant};

use strait_api::snapshot::LoadBalancer;

/// The randomness a decision needs; implemented for every [`rand::RngCore`]
/// so tests pass a seeded `StdRng`.
pub trait Random {
    /// A uniform integer in `0..n`; `n` is at least 1.
    fn below(&mut self, n: usize) -> usize;
    /// A uniform float in `[0, 1)`.
    fn unit(&mut self) -> f64;
}

impl<R: rand::RngCore> Random for R {
    fn below(&mut self, n: usize) -> usize {
        rand::Rng::random_range(self, 0..n.max(1))
    }

    fn unit(&mut self) -> f64 {
        rand::Rng::random::<f64>(self)
    }
}

/// Tuning of the latency estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EwmaConfig {
    /// How fast old observations fade (Linkerd uses 10 s).
    pub decay: Duration,
    /// Assumed latency of an endpoint with no observation yet.
    pub default_rtt: Duration,
}

impl Default for EwmaConfig {
    fn default() -> Self {
        Self {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
        }
    }
}

/// Load bookkeeping for one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointLoad {
    rtt_ns: Option<f64>,
    updated: Instant,
    pending: u32,
    connections: u32,
}

impl EndpointLoad {
    pub fn new(now: Instant) -> Self {
        Self {
            rtt_ns: None,
            updated: now,
            pending: 0,
            connections: 0,
        }
    }

    /// A request was sent.
    pub fn request_started(&mut self) {
        self.pending = self.pending.saturating_add(1);
    }

    /// A request finished after `rtt`.
    pub fn request_finished(&mut self, rtt: Duration, now: Instant, config: &EwmaConfig) {
        self.pending = self.pending.saturating_sub(1);
        self.observe(rtt, now, config);
    }

    pub fn connection_opened(&mut self) {
        self.connections = self.connections.saturating_add(1);
    }

    pub fn connection_closed(&mut self) {
        self.connections = self.connections.saturating_sub(1);
    }

    pub fn pending(&self) -> u32 {
        self.pending
    }

    /// Peak EWMA: a slower observation replaces the estimate at once; a
    /// faster one is blended in with weight `1 - exp(-elapsed / decay)`.
    pub fn observe(&mut self, rtt: Duration, now: Instant, config: &EwmaConfig) {
        let rtt = rtt.as_nanos() as f64;
        let next = match self.rtt_ns {
            Some(cur) if rtt <= cur => {
                let w = decay_weight(now.saturating_duration_since(self.updated), config.decay);
                cur * w + rtt * (1.0 - w)
            }
            _ => rtt,
        };
        self.rtt_ns = Some(next);
        self.updated = now;
    }

    /// The latency estimate at `now`, fading toward zero while idle so that
    /// an endpoint that was slow long ago gets probed again.
    pub fn rtt_estimate(&self, now: Instant, config: &EwmaConfig) -> f64 {
        match self.rtt_ns {
            None => config.default_rtt.as_nanos() as f64,
            Some(ns) => {
                ns * decay_weight(now.saturating_duration_since(self.updated), config.decay)
            }
        }
    }

    /// Cost of sending one more request: estimate x (in flight + 1) / weight.
    pub fn request_cost(&self, now: Instant, config: &EwmaConfig, weight: u32) -> f64 {
        self.rtt_estimate(now, config) * (f64::from(self.pending) + 1.0) / f64::from(weight.max(1))
    }

    /// Cost of opening one more TCP connection: (open + 1) / weight.
    pub fn connection_cost(&self, weight: u32) -> f64 {
        (f64::from(self.connections) + 1.0) / f64::from(weight.max(1))
    }
}

fn decay_weight(elapsed: Duration, decay: Duration) -> f64 {
    if decay.is_zero() {
        return 0.0;
    }
    (-elapsed.as_secs_f64() / decay.as_secs_f64()).exp()
}

/// Power of two choices: draw two distinct candidates, keep the cheaper one
/// (the first drawn on a tie). Returns an element of `group`.
pub fn p2c<R: Random + ?Sized>(
    group: &[usize],
    rng: &mut R,
    cost: impl Fn(usize) -> f64,
) -> Option<usize> {
    match group {
        [] => None,
        [only] => Some(*only),
        _ => {
            let i = rng.below(group.len());
            let mut j = rng.below(group.len() - 1);
            if j >= i {
                j += 1;
            }
            let (a, b) = (group[i], group[j]);
            Some(if cost(b) < cost(a) { b } else { a })
        }
    }
}

/// Round robin over whatever group it is given.
#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    pub fn pick(&mut self, group: &[usize]) -> Option<usize> {
        if group.is_empty() {
            return None;
        }
        let chosen = group[self.next % group.len()];
        self.next = self.next.wrapping_add(1);
        Some(chosen)
    }
}

/// A service's balancer: the configured strategy plus its state.
#[derive(Debug, Clone)]
pub struct Balancer {
    strategy: LoadBalancer,
    round_robin: RoundRobin,
}

impl Balancer {
    pub fn new(strategy: LoadBalancer) -> Self {
        Self {
            strategy,
            round_robin: RoundRobin::default(),
        }
    }

    pub fn strategy(&self) -> LoadBalancer {
        self.strategy
    }

    /// Picks from `group`; `cost` is [`EndpointLoad::request_cost`] for HTTP
    /// requests and [`EndpointLoad::connection_cost`] for TCP connections.
    pub fn pick<R: Random + ?Sized>(
        &mut self,
        group: &[usize],
        rng: &mut R,
        cost: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        match self.strategy {
            LoadBalancer::RoundRobin => self.round_robin.pick(group),
            LoadBalancer::P2cEwma => p2c(group, rng, cost),
        }
    }
}

#[cfg(test)]
mod tests;
