//! Per-service routing state (outlier detector, endpoint loads, balancer,
//! retry budget) around the pure decision in [`crate::route`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use foldhash::HashMap;
use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use strait_api::ClusterName;
use strait_api::snapshot::{Endpoint, Health, Service, Snapshot};

use crate::balance::{Balancer, EndpointLoad, EwmaConfig};
use crate::locality::{Plan, Reason};
use crate::metrics::{Direction, FailoverLabels, Metrics};
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
    /// `strait-dst` values (`name.ns:port`), one per port of the service.
    dst: Vec<(u16, HeaderValue)>,
    /// Metric handles of outbound requests, so a request neither builds
    /// label strings nor hashes them: (destination cluster, code, counter),
    /// all with the source cluster `requests_from`.
    requests: Vec<(Option<ClusterName>, u16, Counter)>,
    requests_from: Option<ClusterName>,
    /// Duration histograms by destination cluster (same source).
    durations: Vec<(Option<ClusterName>, Histogram)>,
    /// The last locality plan, reused while its inputs are unchanged.
    plan: Option<CachedPlan>,
    /// (from, to) of the failover the gauge shows as active now.
    failover: Option<(ClusterName, ClusterName)>,
}

/// A locality plan and what it was made from: the service of one snapshot
/// (cleared by every `sync`, which runs before a snapshot is installed) and
/// the candidates' ejection flags.
#[derive(Debug)]
struct CachedPlan {
    /// Address of the service's endpoint list (compared, never followed).
    endpoints: usize,
    version: u64,
    ejected: Vec<bool>,
    plan: Plan,
}

impl ServiceState {
    fn new(key: &str, service: &Service) -> Self {
        let mut outlier = OutlierDetector::new(service.outlier_detection.clone());
        outlier.sync(service.endpoints.iter().map(|e| e.address));
        let budget = service
            .routes
            .first()
            .map(|r| RetryBudget::new(&r.retry.budget))
            .unwrap_or_else(|| RetryBudget::new(&Default::default()));
        Self {
            outlier,
            loads: HashMap::default(),
            balancer: Balancer::new(service.traffic.load_balancer),
            budget,
            rng: SmallRng::from_os_rng(),
            reason: None,
            health: service
                .endpoints
                .iter()
                .map(|e| (e.address, e.health))
                .collect(),
            dst: dst_values(key, service),
            requests: Vec::new(),
            requests_from: None,
            durations: Vec::new(),
            plan: None,
            failover: None,
        }
    }

    /// Follows snapshot changes without losing what was learned.
    fn sync(&mut self, key: &str, service: &Service) {
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
        self.dst = dst_values(key, service);
        self.plan = None;
    }
}

/// The `strait-dst` header value of each port of the service `key`.
fn dst_values(key: &str, service: &Service) -> Vec<(u16, HeaderValue)> {
    service
        .ports
        .iter()
        .filter_map(|p| Some((p.port, dst_value(key, p.port)?)))
        .collect()
}

/// `name.ns:port`.
fn dst_value(key: &str, port: u16) -> Option<HeaderValue> {
    HeaderValue::try_from(format!("{key}:{port}")).ok()
}

/// A chosen endpoint of the snapshot the request holds.
#[derive(Debug, Clone)]
pub struct Picked<'a> {
    pub index: usize,
    pub endpoint: &'a Endpoint,
    pub hop: Hop,
}

/// What kind of traffic a pick is for (it decides the balancer cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Connection,
}

/// One service's state and its name, built once.
#[derive(Debug)]
struct Entry {
    /// `name.ns`, for labels and messages.
    key: Arc<str>,
    state: Mutex<ServiceState>,
    /// `strait_failover_active` (shared with the sidecar's metrics).
    failover: Family<FailoverLabels, Gauge>,
}

/// Routing state of every service, keyed by namespace, then name (looked
/// up once per request, without building a key).
#[derive(Debug, Default)]
pub struct Router {
    services: Mutex<HashMap<String, HashMap<String, Arc<Entry>>>>,
    ewma: EwmaConfig,
    failover: Family<FailoverLabels, Gauge>,
}

pub fn service_key(s: &Service) -> String {
    format!("{}.{}", s.name, s.namespace)
}

impl Router {
    /// A router that shows failovers in `gauge` (`strait_failover_active`).
    pub fn with_failover_gauge(gauge: Family<FailoverLabels, Gauge>) -> Self {
        Self {
            failover: gauge,
            ..Self::default()
        }
    }

    /// The routing state of `service`, for the calls of one request or
    /// connection.
    pub fn handle(&self, service: &Service) -> ServiceHandle {
        let mut map = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let ns = service.namespace.as_str();
        if let Some(entry) = map
            .get(ns)
            .and_then(|names| names.get(service.name.as_str()))
        {
            return ServiceHandle {
                entry: entry.clone(),
                ewma: self.ewma,
            };
        }
        let entry = map
            .entry(ns.to_owned())
            .or_default()
            .entry(service.name.as_str().to_owned())
            .or_insert_with(|| {
                let key = service_key(service);
                Arc::new(Entry {
                    state: Mutex::new(ServiceState::new(&key, service)),
                    key: key.into(),
                    failover: self.failover.clone(),
                })
            })
            .clone();
        ServiceHandle {
            entry,
            ewma: self.ewma,
        }
    }

    /// Re-syncs every known service with a new snapshot; forgets services
    /// that are gone.
    pub fn sync(&self, snapshot: &Snapshot) {
        let mut map = self.services.lock().unwrap_or_else(|p| p.into_inner());
        for (ns, names) in map.iter_mut() {
            names.retain(|name, entry| {
                let Some(s) = snapshot.service(ns, name) else {
                    entry.note_failover(&mut entry.lock(), None);
                    return false;
                };
                entry.lock().sync(&entry.key, s);
                true
            });
        }
        map.retain(|_, names| !names.is_empty());
    }

    /// Picks an endpoint, avoiding `tried`, and counts it as started.
    pub fn pick<'a>(
        &self,
        snapshot: &Snapshot,
        service: &'a Service,
        tried: &[usize],
        kind: Kind,
    ) -> Result<Picked<'a>, OutboundError> {
        self.handle(service).pick(snapshot, service, tried, kind)
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
        self.handle(service).finish(addr, kind, outcome, rtt)
    }

    /// Why traffic to `service` goes where it goes (after the last pick).
    pub fn reason(&self, service: &Service) -> Option<Reason> {
        self.handle(service).entry.lock().reason.clone()
    }
}

impl Entry {
    fn lock(&self) -> MutexGuard<'_, ServiceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the failover gauge to `now` ((from, to), or none): the old
    /// series drops to 0, the new one is 1.
    fn note_failover(&self, st: &mut ServiceState, now: Option<(ClusterName, ClusterName)>) {
        if st.failover == now {
            return;
        }
        let labels = |(from, to): &(ClusterName, ClusterName)| FailoverLabels {
            service: self.key.to_string(),
            from: from.to_string(),
            to: to.to_string(),
        };
        if let Some(old) = st.failover.take() {
            self.failover.get_or_create(&labels(&old)).set(0);
        }
        if let Some(new) = &now {
            self.failover.get_or_create(&labels(new)).set(1);
        }
        st.failover = now;
    }
}

/// The cluster traffic fails over (or spills) to, when the plan's reason
/// says the caller's cluster serves the service but not all of it.
pub fn failover_target(reason: &Reason) -> Option<&ClusterName> {
    match reason {
        Reason::FailedOverTo(to)
        | Reason::Spilling { to, .. }
        | Reason::DistributedWithFailover { to, .. } => Some(to),
        _ => None,
    }
}

/// One service's routing state, looked up once for a request.
#[derive(Debug, Clone)]
pub struct ServiceHandle {
    entry: Arc<Entry>,
    ewma: EwmaConfig,
}

impl ServiceHandle {
    /// `name.ns`.
    pub fn key(&self) -> &Arc<str> {
        &self.entry.key
    }

    /// The `strait-dst` value for `port` (`name.ns:port`).
    pub fn dst(&self, port: u16) -> Option<HeaderValue> {
        let st = self.entry.lock();
        match st.dst.iter().find(|(p, _)| *p == port) {
            Some((_, v)) => Some(v.clone()),
            // A port of another snapshot than the one synced last.
            None => dst_value(&self.entry.key, port),
        }
    }

    /// Picks an endpoint of `service`, avoiding `tried`, and counts it as
    /// started.
    pub fn pick<'a>(
        &self,
        snapshot: &Snapshot,
        service: &'a Service,
        tried: &[usize],
        kind: Kind,
    ) -> Result<Picked<'a>, OutboundError> {
        let mut st = self.entry.lock();
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
        let fresh = |c: &CachedPlan| {
            c.endpoints == service.endpoints.as_ptr() as usize
                && c.version == snapshot.version
                && c.ejected.len() == candidates.len()
                && c.ejected
                    .iter()
                    .zip(&candidates)
                    .all(|(e, c)| *e == c.ejected)
        };
        if !st.plan.as_ref().is_some_and(fresh) {
            st.plan = None;
        }
        // Only a first attempt's plan tells where traffic goes (a retry's
        // plan marks the endpoints it tried as down).
        let rebuilt = st.plan.is_none() && tried.is_empty();
        let cached = st.plan.get_or_insert_with(|| CachedPlan {
            endpoints: service.endpoints.as_ptr() as usize,
            version: snapshot.version,
            ejected: candidates.iter().map(|c| c.ejected).collect(),
            plan: route::plan(snapshot, service, &candidates),
        });
        let choice = route::choose(
            &cached.plan,
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
            endpoint: choice.endpoint,
            hop: choice.hop,
        };
        st.reason = Some(choice.reason);
        if rebuilt {
            let to = st
                .plan
                .as_ref()
                .and_then(|c| failover_target(&c.plan.reason));
            let now = to.map(|to| (snapshot.local.cluster.clone(), to.clone()));
            self.entry.note_failover(st, now);
        }
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
        addr: SocketAddr,
        kind: Kind,
        outcome: Outcome,
        rtt: Option<Duration>,
    ) -> Option<Ejection> {
        let mut st = self.entry.lock();
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

    /// Runs `f` on the service's retry budget.
    pub fn with_budget<T>(&self, f: impl FnOnce(&mut RetryBudget) -> T) -> T {
        f(&mut self.entry.lock().budget)
    }

    /// Counts one finished app -> mesh request (by destination cluster and
    /// code) and observes its duration, through handles kept per service.
    pub fn record_outbound(
        &self,
        metrics: &Metrics,
        source: &ClusterName,
        destination: Option<&ClusterName>,
        code: u16,
        took: Duration,
    ) {
        let mut st = self.entry.lock();
        // A request of an older snapshot may finish after a sync: its
        // source label must not stay in the cache.
        if st.requests_from.as_ref() != Some(source) {
            st.requests.clear();
            st.durations.clear();
            st.requests_from = Some(source.clone());
        }
        let counter = match st
            .requests
            .iter()
            .find(|(c, k, _)| *k == code && c.as_ref() == destination)
        {
            Some((_, _, counter)) => counter.clone(),
            None => {
                let dest = destination.map_or("", ClusterName::as_str);
                let counter = metrics.request_counter(
                    Direction::outbound,
                    source.as_str(),
                    "",
                    &self.entry.key,
                    dest,
                    code,
                );
                st.requests
                    .push((destination.cloned(), code, counter.clone()));
                counter
            }
        };
        let duration = match st.durations.iter().find(|(c, _)| c.as_ref() == destination) {
            Some((_, h)) => h.clone(),
            None => {
                let dest = destination.map_or("", ClusterName::as_str);
                let h = metrics.duration_histogram(
                    Direction::outbound,
                    source.as_str(),
                    &self.entry.key,
                    dest,
                );
                st.durations.push((destination.cloned(), h.clone()));
                h
            }
        };
        drop(st);
        counter.inc();
        duration.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests;
