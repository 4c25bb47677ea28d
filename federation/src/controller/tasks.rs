//! The controller's background tasks: rebuilding the world, running one
//! importer per link, lease expiry and directory rescans.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strait_api::ClusterName;
use strait_api::snapshot::Health;
use tokio::task::JoinHandle;

use super::Shared;
use crate::catalog::ServiceKey;
use crate::catalog::store::DirectoryStore;
use crate::peering::Link;
use crate::push::Published;
use crate::snapshot::merge_from;
use crate::sync::import::run_importer;

/// A task that is aborted when this is dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

impl AbortOnDrop {
    pub(crate) fn new(task: JoinHandle<()>) -> Self {
        Self(Some(task))
    }

    /// Aborts the task and waits until it is gone.
    pub(crate) async fn stop(mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Builds and publishes the world at `version`, and brings the export log
/// up to date.
pub(crate) fn rebuild(shared: &Shared, version: u64) {
    let catalog = shared.source.watch().borrow().clone();
    let world = shared.build_world(version, catalog.clone());
    // Services whose inputs did not change are shared with the last view.
    let prev = shared.world.borrow().clone();
    let view = merge_from(&world, Some((&prev.world, &prev.view)));
    // Exports are a function of the catalog and local health alone.
    let exports_changed =
        !Arc::ptr_eq(&prev.world.catalog, &catalog) || prev.world.health != world.health;
    drop(prev);
    shared
        .metrics
        .catalog_services
        .set(i64::try_from(view.services.len()).unwrap_or(i64::MAX));
    let endpoints: usize = view.services.values().map(|m| m.endpoints.len()).sum();
    shared
        .metrics
        .catalog_endpoints
        .set(i64::try_from(endpoints).unwrap_or(i64::MAX));
    for c in &view.conflicts {
        tracing::debug!(service = %c.service, cluster = %c.cluster, reason = %c.reason, "catalog conflict");
    }
    if exports_changed {
        // The health this world was built with, so that exports change
        // exactly when the world's health does.
        let health = |k: &ServiceKey, a| {
            if world.health.is_empty() {
                return Health::Healthy;
            }
            world
                .health
                .get(&(k.clone(), a))
                .copied()
                .unwrap_or_default()
        };
        shared.exports.send_if_modified(|log| {
            Arc::make_mut(log).update(
                &shared.cluster,
                &shared.td,
                &shared.locality,
                &catalog,
                &health,
            )
        });
    }
    shared
        .world
        .send_replace(Arc::new(Published { world, view }));
}

/// Shortest and longest wait between a change and the rebuild it causes.
const MIN_SETTLE: Duration = Duration::from_millis(10);
const MAX_SETTLE: Duration = Duration::from_millis(250);

/// Rebuilds on every change of catalog, health, imports or links,
/// coalescing bursts: after a rebuild that took `t`, the next one waits at
/// least `t` (10 ms to 250 ms), so a large mesh syncing many peers at once
/// spends at most about half a core on rebuilds and the rest on sync.
/// Rebuilds run on the blocking pool, off the async workers.
pub(crate) async fn rebuild_loop(shared: Arc<Shared>, base: u64) {
    let mut catalog = shared.source.watch();
    let mut health = shared.health.subscribe();
    let mut imports = shared.imports.subscribe();
    let mut links = shared.links.watch();
    let mut version = base;
    let mut settle = MIN_SETTLE;
    loop {
        let ok = tokio::select! {
            r = catalog.changed() => r.is_ok(),
            r = health.changed() => r.is_ok(),
            r = imports.changed() => r.is_ok(),
            r = links.changed() => r.is_ok(),
        };
        if !ok {
            return;
        }
        tokio::time::sleep(settle).await;
        catalog.mark_unchanged();
        health.mark_unchanged();
        imports.mark_unchanged();
        links.mark_unchanged();
        version += 1;
        let started = std::time::Instant::now();
        let s = shared.clone();
        if tokio::task::spawn_blocking(move || rebuild(&s, version))
            .await
            .is_err()
        {
            return;
        }
        settle = started.elapsed().clamp(MIN_SETTLE, MAX_SETTLE);
    }
}

/// One importer per link, restarted when the peer's address or identity
/// changes; a removed link's imports are dropped.
pub(crate) async fn importers(shared: Arc<Shared>) {
    let mut links = shared.links.watch();
    let mut running: BTreeMap<ClusterName, (Link, AbortOnDrop)> = BTreeMap::new();
    loop {
        let current = links.borrow_and_update().clone();
        running.retain(|peer, (link, _)| {
            let keep = current.get(peer).is_some_and(|l| {
                l.controller == link.controller && l.peer_identity == link.peer_identity
            });
            if current.get(peer).is_none() {
                shared.imports.remove(peer);
                let labels = crate::metrics::PeerLabels {
                    peer: peer.to_string(),
                };
                shared.metrics.peer_up.remove(&labels);
                shared.metrics.peer_sync_lag_seconds.remove(&labels);
            }
            keep
        });
        for (peer, link) in current.iter() {
            if running.contains_key(peer) {
                continue;
            }
            let task = tokio::spawn(run_importer(
                link.clone(),
                shared.cluster.clone(),
                shared.certs.clone(),
                shared.bundle.clone(),
                shared.imports.clone(),
                shared.sync.clone(),
            ));
            running.insert(peer.clone(), (link.clone(), AbortOnDrop::new(task)));
        }
        if links.changed().await.is_err() {
            return;
        }
    }
}

/// Applies lease expiry, refreshes the sync metrics and sweeps expired
/// passive health reports.
pub(crate) async fn leases(shared: Arc<Shared>) {
    let every = (shared.sync.lease / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let links = shared.links.links();
        shared
            .imports
            .expire(&links, shared.sync.lease, &shared.metrics);
    }
}

/// Re-reads hand-edited catalog files; warns once per new problem.
pub(crate) async fn rescan(store: Arc<DirectoryStore>, every: Duration) {
    let mut last: Vec<String> = Vec::new();
    loop {
        tokio::time::sleep(every).await;
        let errors: Vec<String> = store.rescan().iter().map(ToString::to_string).collect();
        for e in errors.iter().filter(|e| !last.contains(e)) {
            tracing::warn!(error = %e, "catalog file refused; its last good version stays in use");
        }
        last = errors;
    }
}

/// Marks the controller warm once every linked peer has delivered its first
/// full catalog (or after `limit`), so a restarted controller never pushes
/// proxies a snapshot that lacks the services it imports.
pub(crate) async fn warm_up(
    shared: Arc<Shared>,
    warm: tokio::sync::watch::Sender<bool>,
    limit: std::time::Duration,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let links = shared.links.links();
        let synced = shared.imports.status();
        let all = links
            .keys()
            .all(|peer| synced.iter().any(|s| &s.peer == peer && s.full_resyncs > 0));
        if all {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                waited = ?limit,
                "not every linked peer synced in time; pushing config without their services for now"
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    warm.send_replace(true);
}
