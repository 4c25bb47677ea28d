//! The Kubernetes catalog source (cargo feature `kubernetes`, on by
//! default): a [`CatalogSource`] that watches the cluster's API server with
//! `kube::runtime::watcher` and publishes a [`LocalCatalog`].
//!
//! It watches Services, EndpointSlices (`discovery.k8s.io/v1`), Pods, the
//! MCS `ServiceExport` (`multicluster.x-k8s.io/v1alpha1`) and Strait's CRDs
//! `GlobalService` and `TrafficPolicy` (`strait.io/v1alpha1`, see
//! [`crd::crd_yaml`]), in the configured namespaces (one watch per kind and
//! namespace; all namespaces when none are named), plus Nodes cluster-wide
//! as metadata only (their topology labels). Watches are scoped: Services
//! by the configured label selector, EndpointSlices by the
//! `kubernetes.io/service-name` label; Pods are cut down to their metadata,
//! service account and node before caching (containers, volumes and status
//! are never kept). Each resource has a reflector cache fed by a watcher
//! (list, then watch from the list's `resourceVersion`, bookmarks on;
//! resumed from the last seen version when a watch ends; re-listed on
//! `410 Gone`; retried with exponential backoff when the API server is
//! unreachable). After any change the pure [`map::build`] turns the caches
//! into a catalog, published only when it differs.
//!
//! Nothing is published until every resource has been listed once (or its
//! CRD answered 404 Not Found: a cluster without the MCS or Strait CRDs
//! simply exports nothing), so a restart never shows peers a half-empty
//! catalog; a re-list after `410 Gone` swaps a cache atomically.
//!
//! Conventions: endpoint address = pod IP : sidecar inbound port (15006,
//! the proxy's default, or the pod annotation `strait.io/inbound-port`);
//! identity = `spiffe://<td>/ns/<ns>/sa/<serviceAccountName>`; locality from
//! `topology.kubernetes.io/region|zone` (pod label or annotation, else the
//! node's label; the EndpointSlice `zone` wins for the zone); only ready
//! endpoints; port
//! protocol from `appProtocol` or the port name (see [`map`]); exported iff
//! a `ServiceExport` of the same name exists, to the peers its
//! `GlobalService` names (default all).
//!
//! What it is not: it writes nothing to the cluster (no status, no events),
//! and it is tested against a fake API server on loopback serving real
//! Kubernetes JSON (list, watch streams, bookmarks, `410 Gone`, outages;
//! `strait-k8s-fake`), not against a real cluster. [`leader`] is the
//! controller replicas' election on a Lease.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use strait_api::{ClusterName, Locality, TrustDomain};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::catalog::{CatalogSource, LocalCatalog};

pub mod crd;
pub mod leader;
pub mod links;
pub mod map;
mod watch_loop;

pub use ::kube::Client;
pub use crd::{GlobalService, ServiceExport, TrafficPolicy, crd_yaml};
pub use links::{KubeLinkBackend, StraitLink};
pub use map::Problem;

/// The sidecar's inbound (mTLS) port, the proxy's default.
pub const DEFAULT_INBOUND_PORT: u16 = 15006;

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    #[error("invalid api server url {url:?}: {source}")]
    Url {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("cannot build the kubernetes client: {0}")]
    Client(#[source] ::kube::Error),
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: ::kube::config::KubeconfigError,
    },
    #[error("in-cluster config (no kubeconfig given): {0}")]
    InCluster(#[source] ::kube::config::InClusterError),
}

/// Exponential backoff of a failing watch: `initial`, doubling, capped at
/// `max`; reset once a watch works again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// What the source needs; build with [`KubeSourceConfig::new`].
#[derive(Debug, Clone)]
pub struct KubeSourceConfig {
    /// This cluster (a service is never exported to itself).
    pub cluster: ClusterName,
    pub trust_domain: TrustDomain,
    /// The cluster's locality: its region is the default region of pods.
    pub locality: Locality,
    /// Watch these namespaces (one watch per kind and namespace); empty
    /// watches all.
    pub namespaces: Vec<String>,
    /// Only Services with these labels become catalog entries (a
    /// Kubernetes label selector, sent to the API server).
    pub label_selector: Option<String>,
    /// Read nodes' `topology.kubernetes.io/region|zone` labels (a
    /// metadata-only watch of Nodes; a 403 counts as no nodes).
    pub node_locality: bool,
    /// Sidecar inbound port of endpoints without the pod annotation.
    pub inbound_port: u16,
    /// Wait this long after a change before rebuilding (coalesces bursts).
    pub debounce: Duration,
    pub backoff: Backoff,
}

impl KubeSourceConfig {
    pub fn new(cluster: ClusterName, trust_domain: TrustDomain) -> Self {
        Self {
            cluster,
            trust_domain,
            locality: Locality::default(),
            namespaces: Vec::new(),
            label_selector: None,
            node_locality: true,
            inbound_port: DEFAULT_INBOUND_PORT,
            debounce: Duration::from_millis(50),
            backoff: Backoff::default(),
        }
    }
}

/// A client for an API server at `url` with no credentials (a local proxy
/// such as `kubectl proxy`, or a test server). In a pod, use
/// `kube::Client::try_default()` instead.
pub fn plain_client(url: &str) -> Result<::kube::Client, KubeError> {
    let uri: http::Uri = url.parse().map_err(|source| KubeError::Url {
        url: url.to_owned(),
        source,
    })?;
    ::kube::Client::try_from(::kube::Config::new(uri)).map_err(KubeError::Client)
}

/// A client from a kubeconfig file (its current context), or, with none,
/// from the pod's service account (`KUBERNETES_SERVICE_HOST` and
/// `/var/run/secrets/kubernetes.io/serviceaccount/`).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<::kube::Client, KubeError> {
    use ::kube::config::{KubeConfigOptions, Kubeconfig};
    let config = match kubeconfig {
        Some(path) => {
            let bad = |source| KubeError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(bad)?;
            ::kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(bad)?
        }
        None => ::kube::Config::incluster().map_err(KubeError::InCluster)?,
    };
    ::kube::Client::try_from(config).map_err(KubeError::Client)
}

/// Reads and parses a kubeconfig file (for a config check; [`client`]
/// reads it again when it connects).
pub fn check_kubeconfig(path: &std::path::Path) -> Result<(), KubeError> {
    ::kube::config::Kubeconfig::read_from(path)
        .map(drop)
        .map_err(|source| KubeError::Kubeconfig {
            path: path.to_owned(),
            source,
        })
}

/// State the watch tasks share with the handle.
#[derive(Debug)]
pub(crate) struct Published {
    pub catalog: watch::Sender<Arc<LocalCatalog>>,
    pub synced: watch::Sender<bool>,
    pub problems: Mutex<Vec<Problem>>,
}

/// The Kubernetes [`CatalogSource`]. Dropping it stops the watches.
///
/// ```no_run
/// # async fn f(cfg: strait_federation::controller::ControllerConfig) {
/// use std::sync::Arc;
/// use strait_federation::controller::Source;
/// use strait_federation::kube::{KubeSourceConfig, KubernetesSource};
/// let client = kube::Client::try_default().await.unwrap();
/// let td = cfg.bundle.get().trust_domain().clone();
/// let mut kcfg = KubeSourceConfig::new(cfg.cluster.clone(), td);
/// kcfg.locality = cfg.locality.clone();
/// let source = KubernetesSource::start(client, kcfg);
/// source.wait_synced().await;
/// let mut cfg = cfg;
/// cfg.source = Source::Custom(Arc::new(source));
/// # }
/// ```
pub struct KubernetesSource {
    shared: Arc<Published>,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for KubernetesSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesSource")
            .field("synced", &*self.shared.synced.borrow())
            .field("services", &self.shared.catalog.borrow().services.len())
            .finish_non_exhaustive()
    }
}

impl KubernetesSource {
    /// Starts the watches on the current tokio runtime. The catalog stays
    /// empty until every resource has been listed ([`Self::wait_synced`]).
    pub fn start(client: ::kube::Client, config: KubeSourceConfig) -> Self {
        let shared = Arc::new(Published {
            catalog: watch::channel(Arc::new(LocalCatalog::default())).0,
            synced: watch::channel(false).0,
            problems: Mutex::new(Vec::new()),
        });
        let tasks = watch_loop::spawn(client, config, shared.clone());
        Self { shared, tasks }
    }

    /// Whether every resource has been listed at least once.
    pub fn is_synced(&self) -> bool {
        *self.shared.synced.borrow()
    }

    /// Resolves once every resource has been listed at least once.
    pub async fn wait_synced(&self) {
        let mut rx = self.shared.synced.subscribe();
        // The sender lives in `self`, so this only ends when synced.
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Objects left out of the last catalog, and why.
    pub fn problems(&self) -> Vec<Problem> {
        self.shared
            .problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl CatalogSource for KubernetesSource {
    fn watch(&self) -> watch::Receiver<Arc<LocalCatalog>> {
        self.shared.catalog.subscribe()
    }
}

impl Drop for KubernetesSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
