//! The I/O half of the Kubernetes source: one reflector per resource kind
//! (`kube::runtime::watcher` with backoff, feeding a `reflector::Store`),
//! and one builder task that rebuilds the catalog when any store changes.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
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

/// One resource kind's caches (one per watched namespace) and whether
/// each has been listed once.
struct Cache<K: Resource<DynamicType = ()> + 'static> {
    parts: Vec<(Store<K>, Arc<AtomicBool>)>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Cache<K> {
    fn state(&self) -> Vec<Arc<K>> {
        self.parts.iter().flat_map(|(s, _)| s.state()).collect()
    }

    fn settled(&self) -> bool {
        self.parts.iter().all(|(_, s)| s.load(Ordering::Acquire))
    }
}

/// How one kind is watched.
struct Watch<K> {
    kind: &'static str,
    config: watcher::Config,
    /// Applied to every object before it is cached (drop what the
    /// catalog never reads).
    prune: fn(&mut K),
    /// Refused by RBAC (403) counts as "none", as a missing CRD (404) does.
    optional: bool,
}

impl<K> Watch<K> {
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            config: watcher::Config::default(),
            prune: |_| {},
            optional: false,
        }
    }
}

/// Starts one reflector task per watched namespace (one for all when the
/// config names none); returns their caches.
fn reflect<K>(
    client: &Client,
    cfg: &KubeSourceConfig,
    w: Watch<K>,
    changed: &Arc<Notify>,
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
    let apis: Vec<Api<K>> = if cfg.namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        cfg.namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let mut parts = Vec::new();
    for api in apis {
        let (store, writer) = reflector::store();
        let settled = Arc::new(AtomicBool::new(false));
        let stream = kube::runtime::watcher(api, w.config.clone())
            .modify(w.prune)
            .backoff(Doubling::new(cfg.backoff))
            .reflect(writer);
        tasks.push(tokio::spawn(drive(
            stream,
            w.kind,
            w.optional,
            settled.clone(),
            changed.clone(),
        )));
        parts.push((store, settled));
    }
    Cache { parts }
}

/// Nodes, metadata only (their labels), cluster-wide.
fn reflect_nodes(
    client: &Client,
    cfg: &KubeSourceConfig,
    changed: &Arc<Notify>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Cache<PartialObjectMeta<Node>> {
    let (store, writer) = reflector::store();
    let settled = Arc::new(AtomicBool::new(false));
    if cfg.node_locality {
        // `Api<PartialObjectMeta<_>>` asks for metadata only.
        let api: Api<PartialObjectMeta<Node>> = Api::all(client.clone());
        let stream = kube::runtime::watcher(api, watcher::Config::default())
            .modify(|n: &mut PartialObjectMeta<Node>| n.metadata.managed_fields = None)
            .backoff(Doubling::new(cfg.backoff))
            .reflect(writer);
        tasks.push(tokio::spawn(drive(
            stream,
            "nodes",
            true,
            settled.clone(),
            changed.clone(),
        )));
    } else {
        settled.store(true, Ordering::Release);
    }
    Cache {
        parts: vec![(store, settled)],
    }
}

/// Runs one reflector stream: marks it settled once listed (or absent)
/// and wakes the builder on every change.
async fn drive<K, S>(
    stream: S,
    kind: &'static str,
    optional: bool,
    flag: Arc<AtomicBool>,
    changed: Arc<Notify>,
) where
    S: futures_util::Stream<Item = Result<Event<K>, watcher::Error>>,
{
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
                if is_absent(&e, optional) && !flag.swap(true, Ordering::AcqRel) {
                    tracing::warn!(resource = kind, error = %e, "resource not served (crd not installed?) or not allowed; treating it as empty");
                    changed.notify_one();
                } else {
                    tracing::warn!(resource = kind, error = %e, "watch failed; retrying with backoff");
                }
            }
        }
    }
}

/// 404 on the first list (a CRD not installed); also 403 when the kind is
/// optional (nodes without the RBAC rule).
fn is_absent(e: &watcher::Error, optional: bool) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s))
        if s.code == 404 || (optional && s.code == 403))
}

/// What the catalog reads of a pod: its metadata (labels, annotations),
/// service account and node. The rest (containers, volumes, status) is
/// dropped before caching.
fn prune_pod(p: &mut Pod) {
    p.metadata.managed_fields = None;
    p.status = None;
    if let Some(spec) = p.spec.take() {
        p.spec = Some(PodSpec {
            service_account_name: spec.service_account_name,
            node_name: spec.node_name,
            ..PodSpec::default()
        });
    }
}

struct Caches {
    services: Cache<Service>,
    slices: Cache<EndpointSlice>,
    pods: Cache<Pod>,
    exports: Cache<ServiceExport>,
    globals: Cache<GlobalService>,
    policies: Cache<TrafficPolicy>,
    nodes: Cache<PartialObjectMeta<Node>>,
}

impl Caches {
    fn settled(&self) -> bool {
        self.services.settled()
            && self.slices.settled()
            && self.pods.settled()
            && self.exports.settled()
            && self.globals.settled()
            && self.policies.settled()
            && self.nodes.settled()
    }

    fn objects(&self) -> Objects {
        Objects {
            services: self.services.state(),
            slices: self.slices.state(),
            pods: self.pods.state(),
            exports: self.exports.state(),
            globals: self.globals.state(),
            policies: self.policies.state(),
            nodes: self.nodes.state(),
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
    let t = &mut tasks;
    let mut services = Watch::new("services");
    if let Some(sel) = &cfg.label_selector {
        services.config = services.config.labels(sel);
    }
    let mut slices = Watch::new("endpointslices");
    // Only slices that belong to a Service (the catalog reads no others).
    slices.config = slices.config.labels(map::SERVICE_NAME_LABEL);
    let mut pods = Watch::new("pods");
    pods.prune = prune_pod;
    let caches = Caches {
        services: reflect(&client, &cfg, services, c, t),
        slices: reflect(&client, &cfg, slices, c, t),
        pods: reflect(&client, &cfg, pods, c, t),
        exports: reflect(&client, &cfg, Watch::new("serviceexports"), c, t),
        globals: reflect(&client, &cfg, Watch::new("globalservices"), c, t),
        policies: reflect(&client, &cfg, Watch::new("trafficpolicies"), c, t),
        nodes: reflect_nodes(&client, &cfg, c, t),
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
        // Each delay is the step with jitter: within [3/4, 5/4] of it.
        for step in [100u128, 200, 400, 500, 500] {
            let d = b.next().unwrap().as_millis();
            assert!((step * 3 / 4..=step * 5 / 4).contains(&d), "{d} for {step}");
        }
        b.reset();
        let d = b.next().unwrap().as_millis();
        assert!((75..=125).contains(&d), "{d} after reset");
    }
}
