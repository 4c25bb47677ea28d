//! The controller: wires catalog, health, config push, peering and sync,
//! and serves them on one mTLS gRPC port plus a plain admin HTTP port.
//!
//! [`Controller::start`] returns a [`Handle`] with the bound addresses and
//! the operations the CLI calls (register, export, policy, peering, unlink,
//! status). Dropping the handle stops every task and closes every
//! connection; starting again from the same state directory recovers the
//! catalog, policies and links.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use strait_api::snapshot::{Health, LocalPlace, Snapshot};
use strait_api::{ClusterName, Locality, SpiffeId, TrustDomain};
use strait_ca::{CertStore, SharedBundle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::Routes;

use crate::catalog::live::LiveCatalog;
use crate::catalog::store::DirectoryStore;
use crate::catalog::{CatalogError, CatalogSource, LocalCatalog};
use crate::grpc::GrpcServer;
use crate::health::{Checker, HealthTable};
use crate::metrics::Metrics;
use crate::peering::LinkStore;
use crate::push::{Published, PushService};
use crate::snapshot::{VipRange, World, snapshot_for};
use crate::sync::SyncConfig;
use crate::sync::export::ExportLog;
use crate::sync::import::Imports;
use crate::sync::server::FederationService;

mod admin;
pub mod admin_api;
mod handle;
mod status;
mod tasks;

pub use handle::{Handle, TokenOptions, Unlinked};
pub use status::{ClusterEndpoints, EndpointStatus, LinkStatus, ServiceStatus, Serving, Status};

/// Default gRPC port of a controller (proxies and peers).
pub const DEFAULT_GRPC_PORT: u16 = 8610;
/// Default admin HTTP port (`/metrics`, `/ready`, `/status`).
pub const DEFAULT_ADMIN_PORT: u16 = 8611;

/// Why the controller did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControllerError {
    #[error(
        "the controller certificate is for {got}; the controller of cluster {cluster} must present {expected}"
    )]
    WrongIdentity {
        cluster: ClusterName,
        got: String,
        expected: SpiffeId,
    },
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Peering(#[from] crate::peering::PeeringError),
    #[error(transparent)]
    Tls(#[from] strait_ca::tls::TlsError),
    #[error("cannot write the admin token {path}: {reason}")]
    AdminToken { path: PathBuf, reason: String },
}

/// Where the local catalog comes from.
#[derive(Debug, Clone, Default)]
pub enum Source {
    /// YAML files under `state_dir` (plain hosts), editable through the API.
    #[default]
    Directory,
    /// Another source (e.g. Kubernetes); the catalog API is then read-only.
    Custom(Arc<dyn CatalogSource>),
}

/// Everything a controller needs; build with [`ControllerConfig::new`] and
/// adjust the fields.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub cluster: ClusterName,
    /// Default locality of local endpoints and of proxies that name none.
    pub locality: Locality,
    pub state_dir: PathBuf,
    /// gRPC (config push for proxies, federation for peers), mTLS.
    pub listen: SocketAddr,
    /// Admin HTTP; `None` disables it.
    pub admin_listen: Option<SocketAddr>,
    /// The controller address put in peering tokens and link requests;
    /// defaults to the bound gRPC address.
    pub advertise: Option<SocketAddr>,
    /// This cluster's east-west gateways, announced to peers.
    pub gateways: Vec<SocketAddr>,
    /// The controller's certificate ([`controller_identity`]).
    pub certs: CertStore,
    pub bundle: SharedBundle,
    pub sync: SyncConfig,
    pub source: Source,
    /// Re-read the catalog directory this often (hand-edited files).
    pub rescan_interval: Option<Duration>,
    /// Where service VIPs are drawn from.
    pub vips: VipRange,
    /// Check endpoints whose registration names no `health_check:` by
    /// asking their sidecar ([`crate::catalog::HealthCheck::default_sidecar`]).
    /// On in `strait controller` (`default_health_check:`, default true);
    /// off here, so a library user (a test with made-up endpoint
    /// addresses) never dials endpoints it did not choose to check.
    pub default_health_check: bool,
    /// How long a self-registered sidecar's endpoint outlives its
    /// config-push stream when it left without deregistering
    /// ([`crate::catalog::live`]).
    pub registration_lease: Duration,
    /// Where links and pending peering secrets are kept; `None`: files
    /// under `state_dir` ([`crate::peering::DirectoryBackend`]).
    pub link_backend: Option<Arc<dyn crate::peering::LinkBackend>>,
}

impl ControllerConfig {
    pub fn new(
        cluster: ClusterName,
        state_dir: PathBuf,
        certs: CertStore,
        bundle: SharedBundle,
    ) -> Self {
        let local = std::net::Ipv4Addr::LOCALHOST;
        Self {
            cluster,
            locality: Locality::default(),
            state_dir,
            listen: SocketAddr::from((local, DEFAULT_GRPC_PORT)),
            admin_listen: Some(SocketAddr::from((local, DEFAULT_ADMIN_PORT))),
            advertise: None,
            gateways: Vec::new(),
            certs,
            bundle,
            sync: SyncConfig::default(),
            source: Source::Directory,
            rescan_interval: Some(Duration::from_secs(5)),
            vips: VipRange::default(),
            default_health_check: false,
            registration_lease: crate::catalog::live::DEFAULT_LEASE,
            link_backend: None,
        }
    }
}

/// State shared by the handle and the background tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cluster: ClusterName,
    pub td: TrustDomain,
    pub locality: Locality,
    pub certs: CertStore,
    pub bundle: SharedBundle,
    pub gateways: Vec<SocketAddr>,
    pub vips: VipRange,
    pub advertise: SocketAddr,
    pub sync: SyncConfig,
    pub store: Option<Arc<DirectoryStore>>,
    pub source: Arc<dyn CatalogSource>,
    pub links: Arc<LinkStore>,
    pub health: HealthTable,
    pub imports: Imports,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    pub world: watch::Sender<Arc<Published>>,
    pub exports: watch::Sender<Arc<ExportLog>>,
    pub push: PushService,
    /// Endpoints sidecars registered themselves (operators export and
    /// evict them through the admin API).
    pub live: Arc<LiveCatalog>,
}

/// Namespace for [`Controller::start`].
#[derive(Debug)]
pub struct Controller;

/// Versions start from the wall clock so a restarted controller never goes
/// back in version.
fn version_base() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    u64::try_from(ms).unwrap_or(0).saturating_mul(1000)
}

impl Shared {
    /// Builds the next world from the current inputs.
    pub(crate) fn build_world(&self, version: u64, catalog: Arc<LocalCatalog>) -> World {
        let mut health = BTreeMap::new();
        for (key, reg) in &catalog.services {
            for ep in &reg.endpoints {
                let h = self.health.health(key, ep.address);
                if h != Health::Healthy {
                    health.insert((key.clone(), ep.address), h);
                }
            }
        }
        World {
            version,
            cluster: self.cluster.clone(),
            trust_domain: self.td.clone(),
            locality: self.locality.clone(),
            catalog,
            health,
            peers: self.imports.views(&self.links.links()),
            vips: self.vips,
        }
    }

    pub(crate) fn snapshot(&self, locality: Option<Locality>) -> Snapshot {
        let p = self.world.borrow().clone();
        let place = LocalPlace {
            cluster: self.cluster.clone(),
            locality: locality.unwrap_or_else(|| self.locality.clone()),
        };
        snapshot_for(&p.world, &p.view, &place)
    }
}

impl Controller {
    /// Opens the state directory, binds the ports and starts every task.
    pub async fn start(config: ControllerConfig) -> Result<Handle, ControllerError> {
        let td = config.bundle.get().trust_domain().clone();
        let expected = td.controller_id(&config.cluster);
        let got = config.certs.identity();
        if got.as_ref() != Some(&expected) {
            return Err(ControllerError::WrongIdentity {
                cluster: config.cluster.clone(),
                got: got.map_or_else(|| "nothing (no certificate)".to_owned(), |g| g.to_string()),
                expected,
            });
        }
        let (store, source): (Option<Arc<DirectoryStore>>, Arc<dyn CatalogSource>) =
            match &config.source {
                Source::Directory => {
                    let s = Arc::new(DirectoryStore::open(
                        &config.state_dir,
                        &td,
                        &config.cluster,
                    )?);
                    (Some(s.clone()), s)
                }
                Source::Custom(s) => (None, s.clone()),
            };
        // Sidecars that register themselves are layered over the source.
        let (live, live_task) = LiveCatalog::start_with_state(
            source,
            config.registration_lease,
            Some(config.state_dir.join("live-exports.json")),
        );
        let source: Arc<dyn CatalogSource> = live.clone();
        let links = Arc::new(match &config.link_backend {
            Some(b) => LinkStore::with_backend(b.clone())?,
            None => LinkStore::open(&config.state_dir)?,
        });
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ControllerError::Bind {
                    what: "grpc",
                    addr: config.listen,
                    source,
                })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ControllerError::Bind {
                what: "grpc",
                addr: config.listen,
                source,
            })?;
        let health = HealthTable::new();
        let metrics = Arc::new(Metrics::default());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let imports = Imports::new(td.clone());
        let epoch = format!("{:016x}", rand::random::<u64>());
        let (world_tx, world_rx) = watch::channel(Arc::new(Published {
            world: World {
                version: 0,
                cluster: config.cluster.clone(),
                trust_domain: td.clone(),
                locality: config.locality.clone(),
                catalog: Arc::default(),
                health: BTreeMap::new(),
                peers: BTreeMap::new(),
                vips: config.vips,
            },
            view: Default::default(),
        }));
        let (exports_tx, exports_rx) = watch::channel(Arc::new(ExportLog::new(epoch)));
        let (warm_tx, warm_rx) = watch::channel(false);
        let push = PushService::new(
            config.cluster.clone(),
            config.locality.clone(),
            world_rx,
            warm_rx,
            health.clone(),
            metrics.clone(),
            live.clone(),
        );
        let shared = Arc::new(Shared {
            cluster: config.cluster.clone(),
            td: td.clone(),
            locality: config.locality.clone(),
            certs: config.certs.clone(),
            bundle: config.bundle.clone(),
            gateways: config.gateways.clone(),
            vips: config.vips,
            advertise: config.advertise.unwrap_or(bound),
            sync: config.sync.clone(),
            store,
            source: source.clone(),
            links: links.clone(),
            health: health.clone(),
            imports,
            metrics,
            registry,
            world: world_tx,
            exports: exports_tx,
            push: push.clone(),
            live: live.clone(),
        });
        // The first world is built before anything is served.
        tasks::rebuild(&shared, version_base());
        let federation = FederationService::new(
            config.cluster.clone(),
            td,
            links,
            exports_rx,
            config.gateways.clone(),
            config.sync.heartbeat,
        );
        let routes = Routes::new(push.server()).add_service(federation.server());
        let grpc: GrpcServer = crate::grpc::serve(listener, &config.certs, &config.bundle, routes)?;
        let probe = crate::health::SidecarProbe {
            certs: config.certs.clone(),
            bundle: config.bundle.clone(),
            td: shared.td.clone(),
        };
        let probe = config.default_health_check.then_some(probe);
        let checker = Checker::start(health, source.watch(), probe);
        let mut background: Vec<JoinHandle<()>> = vec![
            live_task,
            tokio::spawn(tasks::rebuild_loop(shared.clone(), version_base())),
            tokio::spawn(tasks::importers(shared.clone())),
            tokio::spawn(tasks::leases(shared.clone())),
        ];
        background.push(tokio::spawn(tasks::warm_up(
            shared.clone(),
            warm_tx,
            config.sync.lease.min(std::time::Duration::from_secs(5)),
        )));
        if let (Some(store), Some(every)) = (&shared.store, config.rescan_interval) {
            background.push(tokio::spawn(tasks::rescan(store.clone(), every)));
        }
        let admin_addr = match config.admin_listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ControllerError::Bind {
                        what: "admin",
                        addr,
                        source,
                    })?;
                let a = l.local_addr().map_err(|source| ControllerError::Bind {
                    what: "admin",
                    addr,
                    source,
                })?;
                let token = admin_api::AdminToken::create(&config.state_dir)?;
                background.push(tokio::spawn(admin::serve(l, shared.clone(), token)));
                Some(a)
            }
            None => None,
        };
        tracing::info!(cluster = %config.cluster, grpc = %bound, admin = ?admin_addr, "controller started");
        Ok(Handle::new(
            shared, bound, admin_addr, grpc, checker, background,
        ))
    }
}
