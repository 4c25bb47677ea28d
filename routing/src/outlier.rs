//! Passive outlier detection: eject endpoints that keep failing.
//!
//! Each endpoint counts consecutive failures (a 5xx answer or a failed
//! connect); a success resets the count. At the threshold the endpoint is
//! ejected for `base * 2^(n-1)` (the n-th ejection in a row), capped at
//! `max_ejection_time`; every `base` it then stays healthy forgets one past
//! ejection. No more than `max_ejection_percent` of the set is ejected at once
//! (but at least one endpoint may be, so a single bad endpoint always goes).
//! Time is a parameter: nothing here sleeps or reads a clock.

use foldhash::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use strait_api::snapshot::OutlierDetection;

/// What happened to one request or connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any answer that is not a 5xx (4xx is the caller's problem).
    Success,
    /// A 5xx answer, or a gRPC status the proxy maps to one.
    ServerError,
    /// Could not connect (refused, timed out, TLS or tunnel failure).
    ConnectFailure,
    /// The endpoint was not reached for a reason that is not its fault:
    /// the serving cluster's gateway refused the tunnel (not in its table
    /// yet, not exported or linked to the caller, draining) or is down.
    /// Counts neither for nor against the endpoint.
    NotReached,
}

impl Outcome {
    /// Classifies an HTTP status.
    pub fn from_status(status: u16) -> Self {
        if (500..600).contains(&status) {
            Self::ServerError
        } else {
            Self::Success
        }
    }

    fn is_failure(self) -> bool {
        !matches!(self, Self::Success)
    }
}

/// An ejection that just happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub address: SocketAddr,
    pub until: Instant,
    /// 1 for the first ejection in a row, 2 for the next, ...
    pub count: u32,
}

#[derive(Debug, Clone, Default)]
struct HostState {
    consecutive: u32,
    ejected_until: Option<Instant>,
    /// Ejections in a row, before forgetting.
    times: u32,
    returned_at: Option<Instant>,
}

/// Outlier state for one service's endpoint set.
#[derive(Debug, Clone)]
pub struct OutlierDetector {
    config: OutlierDetection,
    hosts: HashMap<SocketAddr, HostState>,
}

impl OutlierDetector {
    pub fn new(config: OutlierDetection) -> Self {
        Self {
            config,
            hosts: HashMap::default(),
        }
    }

    /// Aligns the tracked set with a new snapshot: keeps the state of
    /// endpoints that remain, forgets the others, starts new ones clean.
    pub fn sync(&mut self, addresses: impl IntoIterator<Item = SocketAddr>) {
        let mut next = HashMap::default();
        for a in addresses {
            let state = self.hosts.remove(&a).unwrap_or_default();
            next.insert(a, state);
        }
        self.hosts = next;
    }

    /// Forgets what was learned about one endpoint (its ejection and
    /// failure count): the controller has fresh evidence it is healthy.
    pub fn forgive(&mut self, address: &SocketAddr) {
        if let Some(h) = self.hosts.get_mut(address) {
            *h = HostState::default();
        }
    }

    /// Replaces the settings (a new snapshot), keeping the state.
    pub fn set_config(&mut self, config: OutlierDetection) {
        self.config = config;
    }

    pub fn is_ejected(&self, address: &SocketAddr, now: Instant) -> bool {
        self.hosts
            .get(address)
            .and_then(|h| h.ejected_until)
            .is_some_and(|until| until > now)
    }

    pub fn ejected_count(&self, now: Instant) -> usize {
        self.hosts
            .keys()
            .filter(|a| self.is_ejected(a, now))
            .count()
    }

    /// How many endpoints may be ejected at once.
    pub fn max_ejected(&self) -> usize {
        let pct = usize::from(self.config.max_ejection_percent.min(100));
        if pct == 0 {
            return 0;
        }
        (self.hosts.len() * pct / 100).max(1)
    }

    /// Records an outcome; returns the ejection it caused, if any. Outcomes
    /// for unknown or currently ejected endpoints are ignored.
    pub fn record(
        &mut self,
        address: SocketAddr,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Ejection> {
        if self.config.consecutive_failures == 0 || self.is_ejected(&address, now) {
            return None;
        }
        let room = self.ejected_count(now) < self.max_ejected();
        let (base, max) = (
            self.config.base_ejection_time,
            self.config.max_ejection_time,
        );
        let threshold = self.config.consecutive_failures;
        let host = self.hosts.get_mut(&address)?;
        if outcome == Outcome::NotReached {
            return None;
        }
        if !outcome.is_failure() {
            host.consecutive = 0;
            return None;
        }
        host.consecutive = host.consecutive.saturating_add(1);
        if host.consecutive < threshold || !room {
            // Over the cap the count keeps growing, so the endpoint goes as
            // soon as there is room again.
            return None;
        }
        let forgotten = match host.returned_at {
            Some(at) if !base.is_zero() => {
                let healthy_for = now.saturating_duration_since(at);
                u32::try_from(healthy_for.as_nanos() / base.as_nanos()).unwrap_or(u32::MAX)
            }
            _ => 0,
        };
        let count = host.times.saturating_sub(forgotten).saturating_add(1);
        let until = now + ejection_time(base, max, count);
        host.times = count;
        host.consecutive = 0;
        host.ejected_until = Some(until);
        host.returned_at = Some(until);
        Some(Ejection {
            address,
            until,
            count,
        })
    }

    /// Forgets ejections that have run out; returns the endpoints that came
    /// back. Optional: [`Self::is_ejected`] already honours expiry.
    pub fn refresh(&mut self, now: Instant) -> Vec<SocketAddr> {
        let mut back = Vec::new();
        for (a, h) in &mut self.hosts {
            if h.ejected_until.is_some_and(|until| until <= now) {
                h.ejected_until = None;
                back.push(*a);
            }
        }
        back.sort();
        back
    }
}

/// `base * 2^(count-1)`, capped at `max`.
pub fn ejection_time(base: Duration, max: Duration, count: u32) -> Duration {
    let factor = 1u32
        .checked_shl(count.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests;
