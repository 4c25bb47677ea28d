//! Starting a sidecar: identity, snapshot source (its controller's config
//! push, or a file), listeners. Returns a handle with the addresses
//! actually bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use strait_agent::{Role, Subscription, Target};
use strait_api::proto::config::{RegisteredPort, Registration};
use strait_api::snapshot::{LocalPlace, Snapshot, SnapshotError};
use strait_ca::identity::IdentityError;
use strait_ca::{CertStore, SharedBundle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::ProxyConfig;
use crate::state::Shared;
use crate::transport::Identity;

/// Why a sidecar could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("identity: {0}")]
    Identity(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("controller: {0}")]
    Controller(String),
    #[error("{0}")]
    Tracing(String),
}

fn read(path: &Path) -> Result<String, StartError> {
    std::fs::read_to_string(path).map_err(|e| StartError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A running sidecar.
pub struct Proxy {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    /// The transparent capture listener, when the config asks for one.
    pub capture_outbound: Option<SocketAddr>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    /// The config-push subscription, when following a controller.
    following: Option<Subscription>,
    /// The controller and registration, when the sidecar registered its
    /// workload (`service:`), to deregister on a clean shutdown.
    registered: Option<Target>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("inbound", &self.inbound)
            .field("outbound", &self.outbound)
            .field("admin", &self.admin)
            .field("capture_outbound", &self.capture_outbound)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Starts a sidecar as its config says: routing from its controller
    /// (empty until the first snapshot arrives) or from its snapshot file.
    pub async fn start(cfg: ProxyConfig) -> Result<Self, StartError> {
        let cluster = match &cfg.controller {
            Some(c) => c.cluster_or(None).map_err(StartError::Controller)?,
            None => strait_api::ClusterName::new("local")
                .map_err(|e| StartError::Controller(e.to_string()))?,
        };
        let empty = Snapshot {
            version: 0,
            local: LocalPlace {
                cluster,
                locality: Default::default(),
            },
            clusters: Vec::new(),
            services: Vec::new(),
            exports: None,
        };
        Self::start_with(cfg, empty).await
    }

    /// Starts a sidecar with `snapshot` as its first routing data (the
    /// config's snapshot file wins when one is set).
    pub async fn start_with(mut cfg: ProxyConfig, snapshot: Snapshot) -> Result<Self, StartError> {
        if let Some(s) = &cfg.service {
            cfg.local_service.get_or_insert_with(|| s.local_service());
        }
        let mut tasks = Vec::new();
        let identity = load_identity(&cfg, &mut tasks).await?;
        let snapshot = match &cfg.snapshot_file {
            Some(p) => Snapshot::from_yaml(&read(p)?).map_err(|e| StartError::File {
                path: p.clone(),
                reason: e.to_string(),
            })?,
            None => {
                snapshot.validate()?;
                snapshot
            }
        };
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let inbound = bind(cfg.listeners.inbound).await?;
        let outbound = bind(cfg.listeners.outbound).await?;
        let admin = bind(cfg.listeners.admin).await?;
        let capture = match cfg.capture.outbound {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let capture_addr = capture
            .as_ref()
            .zip(cfg.capture.outbound)
            .map(|(l, a)| local(l, a));
        let addrs = (
            local(&inbound, cfg.listeners.inbound),
            local(&outbound, cfg.listeners.outbound),
            local(&admin, cfg.listeners.admin),
        );
        let tracer = match &cfg.tracing {
            Some(t) => {
                let own = identity.id().map(|i| i.to_string()).unwrap_or_default();
                let attrs = vec![
                    ("strait.cluster", snapshot.local.cluster.to_string()),
                    ("strait.identity", own),
                ];
                let tracer = strait_agent::trace::Tracer::start(t, "strait-sidecar", attrs)
                    .map_err(|e| StartError::Tracing(e.to_string()))?;
                Some(tracer)
            }
            None => None,
        };
        let mut shared = Shared::new(cfg, identity, snapshot);
        shared.tracer = tracer;
        let shared = Arc::new(shared);
        tasks.push(tokio::spawn(crate::inbound::serve(shared.clone(), inbound)));
        tasks.push(tokio::spawn(crate::outbound::serve_proxy(
            shared.clone(),
            outbound,
        )));
        tasks.push(tokio::spawn(crate::admin::serve(shared.clone(), admin)));
        if let Some(l) = capture {
            tasks.push(tokio::spawn(crate::capture::serve(shared.clone(), l)));
        }
        if shared.cfg.listeners.bind_vips {
            tasks.push(tokio::spawn(crate::outbound::manage_vips(shared.clone())));
        }
        if let Some(e) = shared.cfg.egress.clone() {
            tasks.push(tokio::spawn(crate::egress::manage(shared.clone(), e)));
        }
        if let Some(path) = shared.cfg.snapshot_file.clone() {
            tasks.push(tokio::spawn(watch_snapshot(shared.clone(), path)));
        }
        let target = controller_target(&shared.cfg, addrs.0)?;
        let following = target.as_ref().map(|t| follow_controller(&shared, t));
        let registered = target.filter(|t| t.registration.is_some());
        tracing::info!(inbound = %addrs.0, outbound = %addrs.1, admin = %addrs.2, "sidecar started");
        Ok(Self {
            inbound: addrs.0,
            outbound: addrs.1,
            admin: addrs.2,
            capture_outbound: capture_addr,
            shared,
            tasks,
            following,
            registered,
        })
    }

    /// Whether the config-push stream to the controller is up (`None`
    /// without a controller).
    pub fn following(&self) -> Option<bool> {
        self.following.as_ref().map(|s| *s.connected().borrow())
    }

    /// Installs a new snapshot (refused if invalid: the current one stays).
    pub fn apply(&self, snapshot: Snapshot) -> Result<(), SnapshotError> {
        self.shared.apply(snapshot)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// How many roots the sidecar trusts now (2 during a root rotation).
    pub fn trusted_roots(&self) -> usize {
        self.shared.identity.bundle.get().roots().len()
    }

    /// The roots the sidecar trusts and the root its certificate chains
    /// to now (`/trust` on the admin port).
    pub fn trust(&self) -> strait_ca::trust::TrustReport {
        let id = &self.shared.identity;
        strait_ca::trust::TrustReport::of(&id.certs, &id.bundle)
    }

    /// The leaf certificate the sidecar presents now.
    pub fn certificate(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        let ck = self.shared.identity.certs.current()?;
        ck.end_entity_cert().ok().map(|c| c.clone().into_owned())
    }

    /// The sidecar's live certificate store and trust bundle (rotations
    /// show through), e.g. to subscribe to its controller with them.
    pub fn identity(&self) -> (CertStore, SharedBundle) {
        let id = &self.shared.identity;
        (id.certs.clone(), id.bundle.clone())
    }

    /// A function that installs snapshots into this sidecar, for a task
    /// that feeds it (e.g. from the controller's config push).
    pub fn applier(
        &self,
    ) -> impl Fn(Snapshot) -> Result<(), SnapshotError> + Send + Sync + 'static {
        let shared = self.shared.clone();
        move |s| shared.apply(s)
    }

    /// Prometheus text of this sidecar's metrics.
    pub fn metrics(&self) -> String {
        self.shared.metrics.encode()
    }

    /// Why traffic to `namespace/name` goes where it goes now.
    pub fn route_reason(&self, namespace: &str, name: &str) -> Option<String> {
        let snap = self.shared.snapshot();
        let svc = snap.service(namespace, name)?;
        self.shared.router.reason(svc).map(|r| r.to_string())
    }

    /// Deregisters the workload this sidecar registered (`service:`), so
    /// callers stop choosing it at once rather than at the lease's end.
    /// Call it before [`Self::shutdown`] on a clean stop; without
    /// `service:` it does nothing.
    pub async fn leave(&self) -> Result<(), String> {
        match &self.registered {
            Some(t) => {
                strait_agent::deregister(
                    t,
                    &self.shared.identity.certs,
                    &self.shared.identity.bundle,
                )
                .await
            }
            None => Ok(()),
        }
    }

    /// Stops every listener and background task.
    pub fn shutdown(mut self) {
        self.following = None;
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The controller this sidecar follows, as a proxy, with its workload's
/// registration when the config has `service:` (its address: the
/// configured one, or the inbound listener's).
fn controller_target(cfg: &ProxyConfig, inbound: SocketAddr) -> Result<Option<Target>, StartError> {
    let Some(c) = &cfg.controller else {
        return Ok(None);
    };
    let registration = match &cfg.service {
        None => None,
        Some(s) => {
            let address = s.address.unwrap_or(inbound);
            if address.ip().is_unspecified() {
                return Err(StartError::Controller(format!(
                    "service: the inbound listener is {inbound}, which peers cannot dial; set service.address to the address they reach this sidecar on"
                )));
            }
            Some(Registration {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                ports: cfg
                    .app
                    .iter()
                    .map(|p| RegisteredPort {
                        port: u32::from(p.port),
                        protocol: p.protocol.as_str().to_owned(),
                    })
                    .collect(),
                address: address.to_string(),
                export: s.export.clone(),
            })
        }
    };
    let mut scope = Vec::new();
    if let Some(sc) = &cfg.scope {
        if sc.services.is_empty() {
            return Err(StartError::Controller(
                "scope.services is empty: list the services this workload calls, or leave scope out to receive every service".into(),
            ));
        }
        scope.clone_from(&sc.services);
        // The sidecar's own service guards its inbound side.
        if let Some(own) = &cfg.local_service {
            let own: strait_api::delta::ScopePattern = own
                .parse()
                .map_err(|e| StartError::Controller(format!("local_service {own:?}: {e}")))?;
            if !scope.contains(&own) {
                scope.push(own);
            }
        }
    }
    Ok(Some(Target {
        address: c.address,
        cluster: c.cluster_or(None).map_err(StartError::Controller)?,
        trust_domain: cfg.trust_domain.clone(),
        role: Role::Proxy,
        node_id: match &cfg.local_service {
            Some(s) => format!("{s} {inbound}"),
            None => format!("sidecar {inbound}"),
        },
        locality: c.locality.clone(),
        registration,
        scope,
    }))
}

/// Subscribes to `target`, as a proxy: every pushed snapshot is installed
/// before it is ACKed (a refused one is NACKed with the reason and the
/// current one stays).
fn follow_controller(shared: &Arc<Shared>, target: &Target) -> Subscription {
    let (certs, bundle) = (
        shared.identity.certs.clone(),
        shared.identity.bundle.clone(),
    );
    let apply = |s: &Shared, snap: &Snapshot| s.apply(snap.clone()).map_err(|e| e.to_string());
    strait_agent::follow_owner(target, certs, bundle, shared, apply)
}

fn local(l: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    l.local_addr().unwrap_or(fallback)
}

async fn load_identity(
    cfg: &ProxyConfig,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<Identity, StartError> {
    let (certs, bundle, task) =
        cfg.identity
            .start(&cfg.trust_domain)
            .await
            .map_err(|e| match e {
                IdentityError::Read { path, reason } => StartError::File { path, reason },
                e => StartError::Identity(e.to_string()),
            })?;
    tasks.push(task);
    Ok(Identity { certs, bundle })
}

/// Re-reads the snapshot file when it changes; a bad file is refused and
/// the last good snapshot stays.
async fn watch_snapshot(shared: Arc<Shared>, path: PathBuf) {
    let mut seen = mtime(&path);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = mtime(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let parsed = read(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| Snapshot::from_yaml(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(s) => {
                let _ = shared.apply(s);
            }
            Err(e) => {
                shared.metrics.snapshot_rejected.inc();
                tracing::warn!(file = %path.display(), error = %e, "refused snapshot file; keeping the last good snapshot");
            }
        }
    }
}
