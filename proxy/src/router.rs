//! Per-service routing state (outlier detector, endpoint loads, balancer,
//! retry budget) around the pure decision in [`crate::route`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use strait_api::snapshot::{Endpoint, Health, Service, Snapshot};

use crate::balance::{Balancer, EndpointLoad, EwmaConfig};
use crate::locality::Reason;
use crate::outlier::{Ejection, Outcome, OutlierDetector};
use crate::retry::RetryBudget;
use crate::route::{self, Hop, OutboundError};

/// The mutable state of one service.
#[derive(Debug)]
struct ServiceState {
    outlier: OutlierDetector,
    loads: HashMap<SocketAddr, EndpointLoad>,
    balancer: Balancer,
    budget: RetryBudget,
    rng: SmallRng,
    /// The last routing reason, for status.
    reason: Option<Reason>,
    /// Health of each endpoint in the last snapshot.
    health: HashMap<SocketAddr, Health>,
}

impl ServiceState {
    fn new(service: &Service) -> Self {
        let mut outlier = OutlierDetector::new(service.outlier_detection.clone());
        outlier.sync(service.endpoints.iter().map(|e| e.address));
        let budget = service
            .routes
            .first()
            .map(|r| RetryBudget::new(&r.retry.budget))
            .unwrap_or_else(|| RetryBudget::new(&Default::default()));
        Self {
            outlier,
            loads: HashMap::new(),
            balancer: Balancer::new(service.traffic.load_balancer),
            budget,
            rng: SmallRng::from_os_rng(),
            reason: None,
            health: service
                .endpoints
                .iter()
                .map(|e| (e.address, e.health))
                .collect(),
        }
    }

    /// Follows snapshot changes without losing what was learned.
    fn sync(&mut self, service: &Service) {
        self.outlier.set_config(service.outlier_detection.clone());
        self.outlier
            .sync(service.endpoints.iter().map(|e| e.address));
        // An endpoint the controller saw recover is not kept out by a
        // passive ejection from before (fail-back follows health).
        for e in &service.endpoints {
            let before = self.health.insert(e.address, e.health);
            if e.health == Health::Healthy && before.is_some_and(|b| b != Health::Healthy) {
                self.outlier.forgive(&e.address);
            }
        }
        self.health
            .retain(|a, _| service.endpoints.iter().any(|e| e.address == *a));
        self.loads
            .retain(|a, _| service.endpoints.iter().any(|e| e.address == *a));
        if self.balancer.strategy() != service.traffic.load_balancer {
            self.balancer = Balancer::new(service.traffic.load_balancer);
        }
    }
}

/// A chosen endpoint, detached from the snapshot borrow.
#[derive(Debug, Clone)]
pub struct Picked {
    pub index: usize,
    pub endpoint: Endpoint,
    pub hop: Hop,
}

/// What kind of traffic a pick is for (it decides the balancer cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Connection,
}

type StateCell = Arc<Mutex<ServiceState>>;

/// Routing state of every service, keyed by namespace, then name (looked
/// up twice per request, without building a key).
#[derive(Debug, Default)]
pub struct Router {
    services: Mutex<HashMap<String, HashMap<String, StateCell>>>,
    ewma: EwmaConfig,
}

pub fn service_key(s: &Service) -> String {
    format!("{}.{}", s.name, s.namespace)
}

impl Router {
    fn state(&self, service: &Service) -> StateCell {
        let mut map = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let ns = service.namespace.as_str();
        if let Some(st) = map
            .get(ns)
            .and_then(|names| names.get(service.name.as_str()))
        {
            return st.clone();
        }
        map.entry(ns.to_owned())
            .or_default()
            .entry(service.name.as_str().to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(ServiceState::new(service))))
            .clone()
    }

    /// Re-syncs every known service with a new snapshot; forgets services
    /// that are gone.
    pub fn sync(&self, snapshot: &Snapshot) {
        let mut map = self.services.lock().unwrap_or_else(|p| p.into_inner());
        for (ns, names) in map.iter_mut() {
            names.retain(|name, st| {
                let Some(s) = snapshot.service(ns, name) else {
                    return false;
                };
                st.lock().unwrap_or_else(|p| p.into_inner()).sync(s);
                true
            });
        }
        map.retain(|_, names| !names.is_empty());
    }

    /// Picks an endpoint, avoiding `tried`, and counts it as started.
    pub fn pick(
        &self,
        snapshot: &Snapshot,
        service: &Service,
        tried: &[usize],
        kind: Kind,
    ) -> Result<Picked, OutboundError> {
        let state = self.state(service);
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let st = &mut *st;
        let mut candidates = route::candidates(service, &st.outlier, now);
        // Endpoints this request already tried count as down for its retry,
        // so the locality plan itself moves on to the next tier.
        for &i in tried {
            if let Some(c) = candidates.get_mut(i) {
                c.ejected = true;
            }
        }
        let ewma = self.ewma;
        let loads = &st.loads;
        let cost = |i: usize| {
            let e = &service.endpoints[i];
            match loads.get(&e.address) {
                Some(l) if kind == Kind::Request => l.request_cost(now, &ewma, e.weight),
                Some(l) => l.connection_cost(e.weight),
                None => 0.0,
            }
        };
        let choice = route::choose(
            snapshot,
            service,
            &candidates,
            tried,
            &mut st.balancer,
            &mut st.rng,
            cost,
        )?;
        let picked = Picked {
            index: choice.index,
            endpoint: choice.endpoint.clone(),
            hop: choice.hop,
        };
        st.reason = Some(choice.reason);
        let load = st
            .loads
            .entry(picked.endpoint.address)
            .or_insert_with(|| EndpointLoad::new(now));
        match kind {
            Kind::Request => load.request_started(),
            Kind::Connection => load.connection_opened(),
        }
        if tried.is_empty() {
            st.budget.record_request(now);
        }
        Ok(picked)
    }

    /// Records how a request or connection attempt ended. Returns an
    /// ejection it caused.
    pub fn finish(
        &self,
        service: &Service,
        addr: SocketAddr,
        kind: Kind,
        outcome: Outcome,
        rtt: Option<Duration>,
    ) -> Option<Ejection> {
        let state = self.state(service);
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let ewma = self.ewma;
        if let Some(load) = st.loads.get_mut(&addr) {
            match (kind, rtt) {
                (Kind::Request, Some(rtt)) => load.request_finished(rtt, now, &ewma),
                (Kind::Request, None) => load.request_finished(Duration::ZERO, now, &ewma),
                (Kind::Connection, _) => load.connection_closed(),
            }
        }
        st.outlier.record(addr, outcome, now)
    }

    /// Runs `f` on a service's retry budget.
    pub fn with_budget<T>(&self, service: &Service, f: impl FnOnce(&mut RetryBudget) -> T) -> T {
        let state = self.state(service);
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut st.budget)
    }

    /// Why traffic to `service` goes where it goes (after the last pick).
    pub fn reason(&self, service: &Service) -> Option<Reason> {
        let state = self.state(service);
        let st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.reason.clone()
    }
}
