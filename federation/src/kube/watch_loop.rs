//! The I/O half of the Kubernetes source: one reflector per resource kind
//! (`kube::runtime::watcher` with backoff, feeding a `reflector::Store`),
//! and one builder task that rebuilds the catalog when any store changes.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff as KubeBackoff;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::crd::{GlobalService, ServiceExport, TrafficPolicy};
use super::map::{self, Objects};
use super::{Backoff, KubeSourceConfig, Published};

/// A doubling backoff for [`WatchStreamExt::backoff`].
#[derive(Debug)]
struct Doubling(strait_api::backoff::Backoff);

impl Doubling {
    fn new(cfg: Backoff) -> Self {
        Self(strait_api::backoff::Backoff::new(cfg.initial, cfg.max))
    }
}

impl Iterator for Doubling {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(self.0.next_delay(rand::random()))
    }
}

impl KubeBackoff for Doubling {
    fn reset(&mut self) {
        self.0.reset();
    }
}

/// One reflector's cache and whether it has been listed once.
struct Cache<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    settled: Arc<AtomicBool>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Cache<K> {
    fn state(&self) -> Vec<Arc<K>> {
        self.store.state()
    }
}

/// Starts one reflector task; returns its cache.
fn reflect<K>(
    client: &Client,
    cfg: &KubeSourceConfig,
    kind: &'static str,
    changed: Arc<Notify>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Cache<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = match &cfg.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (store, writer) = reflector::store();
    let settled = Arc::new(AtomicBool::new(false));
    let flag = settled.clone();
    let backoff = Doubling::new(cfg.backoff);
    tasks.push(tokio::spawn(async move {
        let stream = kube::runtime::watcher(api, watcher::Config::default())
            .backoff(backoff)
            .reflect(writer);
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(Event::Init) => tracing::debug!(resource = kind, "listing"),
                Ok(Event::InitApply(_)) => {}
                Ok(Event::InitDone) => {
                    tracing::debug!(resource = kind, "listed");
                    flag.store(true, Ordering::Release);
                    changed.notify_one();
                }
                Ok(Event::Apply(_) | Event::Delete(_)) => changed.notify_one(),
                Err(e) => {
                    if is_not_found(&e) && !flag.swap(true, Ordering::AcqRel) {
                        tracing::warn!(resource = kind, "resource not served (crd not installed?); treating it as empty");
                        changed.notify_one();
                    } else {
                        tracing::warn!(resource = kind, error = %e, "watch failed; retrying with backoff");
                    }
                }
            }
        }
    }));
    Cache { store, settled }
}

fn is_not_found(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404)
}

struct Caches {
    services: Cache<Service>,
    slices: Cache<EndpointSlice>,
    pods: Cache<Pod>,
    exports: Cache<ServiceExport>,
    globals: Cache<GlobalService>,
    policies: Cache<TrafficPolicy>,
}

impl Caches {
    fn settled(&self) -> bool {
        [
            &self.services.settled,
            &self.slices.settled,
            &self.pods.settled,
            &self.exports.settled,
            &self.globals.settled,
            &self.policies.settled,
        ]
        .iter()
        .all(|s| s.load(Ordering::Acquire))
    }

    fn objects(&self) -> Objects {
        Objects {
            services: self.services.state(),
            slices: self.slices.state(),
            pods: self.pods.state(),
            exports: self.exports.state(),
            globals: self.globals.state(),
            policies: self.policies.state(),
        }
    }
}

/// Starts every reflector and the builder.
pub(super) fn spawn(
    client: Client,
    cfg: KubeSourceConfig,
    out: Arc<Published>,
) -> Vec<JoinHandle<()>> {
    let changed = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    let c = &changed;
    let caches = Caches {
        services: reflect(&client, &cfg, "services", c.clone(), &mut tasks),
        slices: reflect(&client, &cfg, "endpointslices", c.clone(), &mut tasks),
        pods: reflect(&client, &cfg, "pods", c.clone(), &mut tasks),
        exports: reflect(&client, &cfg, "serviceexports", c.clone(), &mut tasks),
        globals: reflect(&client, &cfg, "globalservices", c.clone(), &mut tasks),
        policies: reflect(&client, &cfg, "trafficpolicies", c.clone(), &mut tasks),
    };
    tasks.push(tokio::spawn(build_loop(caches, cfg, changed, out)));
    tasks
}

async fn build_loop(
    caches: Caches,
    cfg: KubeSourceConfig,
    changed: Arc<Notify>,
    out: Arc<Published>,
) {
    loop {
        changed.notified().await;
        if !caches.settled() {
            continue;
        }
        tokio::time::sleep(cfg.debounce).await;
        let built = map::build(&caches.objects(), &cfg);
        for p in &built.problems {
            tracing::debug!(problem = %p, "left out of the catalog");
        }
        *out.problems.lock().unwrap_or_else(PoisonError::into_inner) = built.problems;
        let catalog = built.catalog;
        let changed_catalog = out.catalog.send_if_modified(|cur| {
            if **cur == catalog {
                false
            } else {
                *cur = Arc::new(catalog);
                true
            }
        });
        if changed_catalog {
            let n = out.catalog.borrow().services.len();
            tracing::info!(services = n, "kubernetes catalog updated");
        }
        out.synced.send_if_modified(|s| !std::mem::replace(s, true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Doubling::new(Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
        });
        let ms: Vec<u128> = (0..5)
            .filter_map(|_| b.next())
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(100)));
    }
}
