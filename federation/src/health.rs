//! Endpoint health of the local catalog: active checks run by the
//! controller and passive reports sent by proxies, merged into one value.
//!
//! An endpoint is unhealthy when its active check has failed
//! `unhealthy_threshold` times in a row (and not yet passed
//! `healthy_threshold` times since), or when at least `quorum` distinct
//! workloads reported it down and their reports have not expired: one
//! reporter can never flip an endpoint alone. Who may report at all, and
//! how often, is decided before a report reaches the table
//! ([`report`]). Endpoints start healthy: a new endpoint serves until its
//! check proves otherwise.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strait_api::snapshot::Health;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use strait_api::SpiffeId;

use crate::catalog::{CheckKind, HealthCheck, LocalCatalog, ServiceKey};

mod check;
mod probe;
pub mod report;
#[cfg(test)]
mod tests;

pub use check::run_check;
pub use probe::SidecarProbe;

/// How long a passive report holds unless the caller says otherwise.
pub const DEFAULT_PASSIVE_HOLD: Duration = Duration::from_secs(30);
/// The longest a passive report may hold.
pub const MAX_PASSIVE_HOLD: Duration = Duration::from_secs(600);
/// Distinct reporters whose "down" must agree before an endpoint turns
/// unhealthy by reports alone.
pub const DEFAULT_REPORT_QUORUM: usize = 2;

type EndpointKey = (ServiceKey, SocketAddr);

#[derive(Debug, Default)]
struct Active {
    healthy: bool,
    successes: u32,
    failures: u32,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    active: HashMap<EndpointKey, Active>,
    /// Endpoints reported down: by whom, until when.
    passive: HashMap<EndpointKey, HashMap<SpiffeId, Instant>>,
}

impl State {
    /// Until when `key` stays down by reports: the moment fewer than
    /// `quorum` unexpired reports remain; `None` when it is not down now.
    fn reported_down_until(
        &self,
        key: &EndpointKey,
        quorum: usize,
        now: Instant,
    ) -> Option<Instant> {
        let mut until: Vec<Instant> = self
            .passive
            .get(key)?
            .values()
            .copied()
            .filter(|u| *u > now)
            .collect();
        until.sort_unstable_by(|a, b| b.cmp(a));
        until.get(quorum.max(1) - 1).copied()
    }
}

/// What status shows about one endpoint's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthDetail {
    pub health: Health,
    /// The last active check failure, while it counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_error: Option<String>,
    /// Seconds a passive "down" report still holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported_down_for_secs: Option<u64>,
}

/// Merged health of local endpoints; cheap to clone.
#[derive(Debug, Clone)]
pub struct HealthTable {
    state: Arc<Mutex<State>>,
    quorum: usize,
    /// Bumped on every change of any endpoint's merged health.
    changed: Arc<watch::Sender<u64>>,
}

impl Default for HealthTable {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthTable {
    pub fn new() -> Self {
        Self::with_quorum(DEFAULT_REPORT_QUORUM)
    }

    /// A table where `quorum` distinct reporters turn an endpoint down
    /// (at least 1).
    pub fn with_quorum(quorum: usize) -> Self {
        Self {
            quorum: quorum.max(1),
            state: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    /// Announces changes of merged health.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn health(&self, svc: &ServiceKey, addr: SocketAddr) -> Health {
        self.detail(svc, addr).health
    }

    pub fn detail(&self, svc: &ServiceKey, addr: SocketAddr) -> HealthDetail {
        let key = (svc.clone(), addr);
        let g = self.lock();
        let active = g.active.get(&key);
        let active_down = active.is_some_and(|a| !a.healthy);
        let now = Instant::now();
        let passive = g.reported_down_until(&key, self.quorum, now);
        HealthDetail {
            health: if active_down || passive.is_some() {
                Health::Unhealthy
            } else {
                Health::Healthy
            },
            active_error: active
                .filter(|a| !a.healthy)
                .and_then(|a| a.last_error.clone()),
            reported_down_for_secs: passive.map(|u| u.saturating_duration_since(now).as_secs()),
        }
    }

    /// A passive report by `reporter`. `healthy = false` counts its vote
    /// "down" for `hold`; `healthy = true` withdraws its own earlier vote
    /// (never another reporter's).
    pub fn report(
        &self,
        svc: &ServiceKey,
        addr: SocketAddr,
        reporter: &SpiffeId,
        healthy: bool,
        hold: Duration,
    ) {
        let key = (svc.clone(), addr);
        let before = self.health(svc, addr);
        {
            let mut g = self.lock();
            if healthy {
                if let Some(votes) = g.passive.get_mut(&key) {
                    votes.remove(reporter);
                    if votes.is_empty() {
                        g.passive.remove(&key);
                    }
                }
            } else {
                let hold = hold.min(MAX_PASSIVE_HOLD);
                g.passive
                    .entry(key)
                    .or_default()
                    .insert(reporter.clone(), Instant::now() + hold);
            }
        }
        tracing::info!(service = %svc, endpoint = %addr, %reporter, healthy, "passive health report");
        if self.health(svc, addr) != before {
            self.bump();
        }
    }

    /// Drops expired passive reports and announces the change (the
    /// controller calls this periodically; health values never depend on
    /// it, only the change notification does).
    pub fn sweep(&self) {
        let now = Instant::now();
        let expired = {
            let mut g = self.lock();
            let before: usize = g.passive.values().map(HashMap::len).sum();
            g.passive.retain(|_, votes| {
                votes.retain(|_, until| *until > now);
                !votes.is_empty()
            });
            before != g.passive.values().map(HashMap::len).sum::<usize>()
        };
        if expired {
            self.bump();
        }
    }

    /// Records one active check result, applying the thresholds.
    pub fn record(
        &self,
        svc: &ServiceKey,
        addr: SocketAddr,
        hc: &HealthCheck,
        result: Result<(), String>,
    ) {
        let before = self.health(svc, addr);
        {
            let mut g = self.lock();
            let a = g
                .active
                .entry((svc.clone(), addr))
                .or_insert_with(|| Active {
                    healthy: true,
                    ..Active::default()
                });
            match result {
                Ok(()) => {
                    a.failures = 0;
                    a.successes = a.successes.saturating_add(1);
                    if !a.healthy && a.successes >= hc.healthy_threshold {
                        a.healthy = true;
                        a.last_error = None;
                    }
                }
                Err(e) => {
                    tracing::debug!(service = %svc, endpoint = %addr, error = %e, "health check failed");
                    a.successes = 0;
                    a.failures = a.failures.saturating_add(1);
                    a.last_error = Some(e);
                    if a.healthy && a.failures >= hc.unhealthy_threshold {
                        a.healthy = false;
                    }
                }
            }
        }
        let after = self.health(svc, addr);
        if after != before {
            tracing::info!(service = %svc, endpoint = %addr, health = ?after, "endpoint health changed");
            self.bump();
        }
    }

    /// Forgets active state of endpoints no longer checked.
    fn retain_active(&self, keep: &dyn Fn(&EndpointKey) -> bool) {
        let removed = {
            let mut g = self.lock();
            let before = g.active.len();
            g.active.retain(|k, _| keep(k));
            before != g.active.len()
        };
        if removed {
            self.bump();
        }
    }
}

/// Runs the active checks of a catalog: one task per checked endpoint,
/// reconciled on every catalog change. Dropping it stops every check.
#[derive(Debug)]
pub struct Checker {
    task: JoinHandle<()>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Checker {
    /// Checks every endpoint of `catalog`: with its registration's check,
    /// or, when it names none, by asking the endpoint's sidecar
    /// ([`HealthCheck::default_sidecar`]) with `probe`'s identity.
    pub fn start(
        table: HealthTable,
        mut catalog: watch::Receiver<Arc<LocalCatalog>>,
        probe: Option<SidecarProbe>,
    ) -> Self {
        let task = tokio::spawn(async move {
            let mut running: HashMap<EndpointKey, (Check, AbortOnDrop)> = HashMap::new();
            loop {
                let cat = catalog.borrow_and_update().clone();
                let mut wanted: HashMap<EndpointKey, Check> = HashMap::new();
                for (key, reg) in &cat.services {
                    let hc = match (&reg.health_check, &probe) {
                        (Some(hc), _) => hc.clone(),
                        (None, Some(_)) => HealthCheck::default_sidecar(),
                        (None, None) => continue,
                    };
                    for ep in &reg.endpoints {
                        let identity = ep.identity.clone().or_else(|| {
                            probe
                                .as_ref()
                                .and_then(|p| p.td.workload_id(&key.namespace, &key.name).ok())
                        });
                        let check = Check {
                            hc: hc.clone(),
                            identity,
                        };
                        wanted.insert((key.clone(), ep.address), check);
                    }
                }
                running.retain(|k, (c, _)| wanted.get(k) == Some(c));
                table.retain_active(&|k| wanted.contains_key(k));
                for (k, c) in wanted {
                    if running.contains_key(&k) {
                        continue;
                    }
                    let task = tokio::spawn(check_loop(
                        table.clone(),
                        k.clone(),
                        c.clone(),
                        probe.clone(),
                    ));
                    running.insert(k, (c, AbortOnDrop(task)));
                }
                if catalog.changed().await.is_err() {
                    break;
                }
            }
        });
        Self { task }
    }
}

/// A task aborted when dropped (so aborting the checker stops every check).
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One endpoint's check: what to run, and the identity its sidecar must
/// present (for sidecar checks).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Check {
    hc: HealthCheck,
    identity: Option<SpiffeId>,
}

async fn check_loop(
    table: HealthTable,
    (svc, addr): EndpointKey,
    check: Check,
    probe: Option<SidecarProbe>,
) {
    let hc = &check.hc;
    let target = SocketAddr::new(addr.ip(), hc.port.unwrap_or(addr.port()));
    let mut tick = tokio::time::interval(hc.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = match (hc.kind, &probe, &check.identity) {
            (CheckKind::Sidecar, Some(p), Some(id)) => p.check(hc, target, id).await,
            (CheckKind::Sidecar, _, _) => Err(format!(
                "cannot ask the sidecar at {target}: no controller identity or endpoint identity"
            )),
            _ => run_check(hc, target).await,
        };
        table.record(&svc, addr, hc, result);
    }
}
