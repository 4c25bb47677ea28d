//! Config push: the controller side of `strait.config.v1.ConfigDiscovery`.
//!
//! A proxy opens a stream and names its node (cluster, locality, and
//! whether it takes deltas). A node with `deltas` gets protobuf deltas
//! scoped to the services it may call ([`stream`]: resumable from the
//! version it holds, one in flight at a time, built from a table of
//! resources encoded once per version, [`table`], by pure planning,
//! [`plan`]). Any other node (gateways, old clients) gets the full JSON
//! snapshot for that node, then a new one each time the snapshot *for that
//! node* changes (never the same content twice). The proxy ACKs or NACKs
//! each version; a NACK is logged, counted
//! (`strait_config_pushes_total{result="nack"}`) and shown in status, and
//! the proxy keeps its previous state.
//!
//! Versions are the controller's world versions, which start from the wall
//! clock (milliseconds × 1000) when the controller starts, so a restarted
//! controller does not go back in version.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strait_api::delta::Scope;
use strait_api::proto::config::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use strait_api::proto::config::{
    DeregisterAck, EndpointHealthAck, EndpointHealthReport, Registration, SnapshotRequest,
    SnapshotResponse,
};
use strait_api::snapshot::LocalPlace;
use strait_api::{ClusterName, Locality};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::catalog::ServiceKey;
use crate::catalog::live::{LiveCatalog, admit};
use crate::health::{DEFAULT_PASSIVE_HOLD, HealthTable, report};
use crate::metrics::{Metrics, ReasonLabels};
use crate::snapshot::{MergedView, World, gateway_snapshot, snapshot_for};

pub mod plan;
pub mod stream;
pub mod table;

/// How long a proxy has to send its node after opening a stream.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A world and its merged view, published once per version.
#[derive(Debug)]
pub struct Published {
    pub world: World,
    pub view: MergedView,
}

/// A refused snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    pub version: u64,
    pub error: String,
}

/// One connected proxy, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub node_id: String,
    pub identity: String,
    pub locality: String,
    /// The last version sent, and the last one the proxy accepted.
    pub sent_version: u64,
    pub acked_version: u64,
    /// The last NACK, while no later version was accepted.
    pub last_nack: Option<Nack>,
}

#[derive(Debug)]
struct Inner {
    cluster: ClusterName,
    locality: Locality,
    world: watch::Receiver<Arc<Published>>,
    /// True once imported services are loaded after a start (see
    /// `Controller::start`); no snapshot is pushed before.
    warm: watch::Receiver<bool>,
    health: HealthTable,
    metrics: Arc<Metrics>,
    clients: Mutex<BTreeMap<u64, ProxyStatus>>,
    next_id: AtomicU64,
    /// Sidecars' own registrations, held by their sessions.
    live: Arc<LiveCatalog>,
    /// Health reports per reporter.
    reports: report::RateLimiter,
    /// This controller run, for delta resumption.
    epoch: String,
    /// The resources of the latest version, shared by delta sessions.
    tables: Mutex<table::Tables>,
    /// Delta sessions sending a full state now ([`stream::FULL_AT_ONCE`]).
    full_permits: Arc<Semaphore>,
}

/// The config push service; cheap to clone.
#[derive(Debug, Clone)]
pub struct PushService {
    inner: Arc<Inner>,
}

impl PushService {
    pub fn new(
        cluster: ClusterName,
        locality: Locality,
        world: watch::Receiver<Arc<Published>>,
        warm: watch::Receiver<bool>,
        health: HealthTable,
        metrics: Arc<Metrics>,
        live: Arc<LiveCatalog>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                cluster,
                locality,
                world,
                warm,
                health,
                metrics,
                clients: Mutex::default(),
                next_id: AtomicU64::new(1),
                live,
                reports: report::RateLimiter::default(),
                epoch: format!("{:016x}", rand::random::<u64>()),
                tables: Mutex::default(),
                full_permits: Arc::new(Semaphore::new(stream::FULL_AT_ONCE)),
            }),
        }
    }

    pub fn server(&self) -> ConfigDiscoveryServer<Self> {
        ConfigDiscoveryServer::new(self.clone())
    }

    /// Every connected proxy.
    pub fn clients(&self) -> Vec<ProxyStatus> {
        self.inner.lock().values().cloned().collect()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, ProxyStatus>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut ProxyStatus)) {
        if let Some(s) = self.lock().get_mut(&id) {
            f(s);
        }
    }

    /// The resource table of `published` (built once per version).
    fn table(&self, published: &Arc<Published>) -> Arc<table::Table> {
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(published)
    }

    fn session_ended(&self, id: u64) {
        self.lock().remove(&id);
        // A registration outlives its stream by the lease, unless the
        // sidecar deregistered (it then is gone already).
        self.live.session_ended(id);
        self.metrics.config_clients.dec();
    }
}

/// A digest of a serialized snapshot's content, without its version, so a
/// session remembers 32 bytes instead of a copy of the whole snapshot (tens
/// of MiB in a large mesh). serde writes `version` first, so the digest
/// covers what follows the first comma; were it ever not first, every
/// version would differ and a change could still never be missed.
fn content_digest(json: &[u8]) -> ring::digest::Digest {
    let start = json.iter().position(|b| *b == b',').unwrap_or(0);
    ring::digest::digest(&ring::digest::SHA256, &json[start..])
}

/// What a subscriber asked to be, as the node's `role` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Proxies and DNS servers: every service.
    Proxy,
    /// The cluster's east-west gateways: the export table.
    Gateway,
}

async fn session(
    inner: Arc<Inner>,
    id: u64,
    place: LocalPlace,
    role: Role,
    mut inbound: Streaming<SnapshotRequest>,
    tx: mpsc::Sender<Result<SnapshotResponse, Status>>,
) {
    // A restarted controller must not push a snapshot without the services
    // it imports from peers (proxies would drop them until sync catches
    // up): wait until it is warm. The proxy keeps its last snapshot.
    let mut warm = inner.warm.clone();
    let _ = warm.wait_for(|w| *w).await;
    let mut world = inner.world.clone();
    world.mark_changed();
    let mut last: Option<ring::digest::Digest> = None;
    loop {
        tokio::select! {
            changed = world.changed() => {
                if changed.is_err() {
                    break;
                }
                let published = world.borrow_and_update().clone();
                let snap = match role {
                    Role::Proxy => snapshot_for(&published.world, &published.view, &place),
                    Role::Gateway => gateway_snapshot(&published.world, &place),
                };
                drop(published);
                let version = snap.version;
                let json = match serde_json::to_vec(&snap) {
                    Ok(j) => j,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot serialize snapshot");
                        continue;
                    }
                };
                drop(snap);
                let digest = content_digest(&json);
                if last.as_ref().map(AsRef::as_ref) == Some(digest.as_ref()) {
                    continue;
                }
                let msg = SnapshotResponse { version, snapshot_json: json, delta: None };
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
                inner.metrics.push("sent");
                inner.update(id, |s| s.sent_version = version);
                last = Some(digest);
            }
            msg = inbound.message() => {
                let Ok(Some(m)) = msg else { break };
                if m.version == 0 {
                    continue;
                }
                if m.error.is_empty() {
                    inner.metrics.push("ack");
                    inner.update(id, |s| {
                        s.acked_version = s.acked_version.max(m.version);
                        s.last_nack = None;
                    });
                } else {
                    inner.metrics.push("nack");
                    tracing::warn!(proxy = id, version = m.version, error = %m.error, "proxy refused snapshot; it keeps its previous one");
                    inner.update(id, |s| s.last_nack = Some(Nack { version: m.version, error: m.error.clone() }));
                }
            }
            () = tx.closed() => break,
        }
    }
    inner.session_ended(id);
}

/// What a node may receive: its declared scope plus its own registered
/// service (the policies its inbound side enforces), or every service.
/// Scopes and deltas go together; gateways take full snapshots.
fn node_scope(node: &strait_api::proto::config::Node, role: Role) -> Result<Scope, Status> {
    if node.deltas && role == Role::Gateway {
        return Err(Status::invalid_argument(
            "a gateway takes full snapshots (they carry the export table); leave node.deltas unset",
        ));
    }
    let declared = node.scope.as_ref().map_or(&[][..], |s| &s.services[..]);
    if !declared.is_empty() && !node.deltas {
        return Err(Status::invalid_argument(
            "node.scope needs node.deltas: full JSON snapshots carry every service",
        ));
    }
    let scope = Scope::parse(declared)
        .map_err(|e| Status::invalid_argument(format!("node {:?}: {e}", node.id)))?;
    Ok(match &node.registration {
        Some(r) => scope.with(&r.namespace, &r.name),
        None => scope,
    })
}

#[tonic::async_trait]
impl ConfigDiscovery for PushService {
    type StreamSnapshotsStream = ReceiverStream<Result<SnapshotResponse, Status>>;

    async fn stream_snapshots(
        &self,
        request: Request<Streaming<SnapshotRequest>>,
    ) -> Result<Response<Self::StreamSnapshotsStream>, Status> {
        let caller = crate::grpc::caller(&request)?;
        crate::grpc::require_cluster(&caller, &self.inner.cluster, "subscribe to this controller")
            .inspect_err(|_| {
                self.inner
                    .metrics
                    .config_refusals
                    .get_or_create(&ReasonLabels {
                        reason: "other_cluster",
                    })
                    .inc();
            })?;
        let identity = caller.id;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no node message within 10s"))??
            .ok_or_else(|| Status::cancelled("stream closed before the node message"))?;
        let node = first
            .node
            .ok_or_else(|| Status::invalid_argument("the first message must carry the node"))?;
        if node.cluster != self.inner.cluster.as_str() {
            return Err(Status::failed_precondition(format!(
                "node {:?} says it runs in cluster {:?}, but this controller serves cluster {}",
                node.id, node.cluster, self.inner.cluster
            )));
        }
        let role = match node.role.as_str() {
            "" | "proxy" | "dns" => Role::Proxy,
            "gateway" => {
                let td = self.inner.world.borrow().world.trust_domain.clone();
                let gateway = td.gateway_id(&self.inner.cluster);
                if identity != gateway {
                    return Err(Status::permission_denied(format!(
                        "{identity} may not subscribe as a gateway of cluster {}: only {gateway} may",
                        self.inner.cluster
                    )));
                }
                Role::Gateway
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "node role {other:?} is unknown (proxy, gateway or dns)"
                )));
            }
        };
        let locality = if node.locality.is_empty() {
            self.inner.locality.clone()
        } else {
            node.locality.parse::<Locality>().map_err(|e| {
                Status::invalid_argument(format!(
                    "node locality {:?} is invalid: {e}",
                    node.locality
                ))
            })?
        };
        let registration = match (&node.registration, role) {
            (None, _) => None,
            (Some(reg), Role::Proxy) => {
                let td = self.inner.world.borrow().world.trust_domain.clone();
                let located = (!node.locality.is_empty()).then(|| locality.clone());
                let live =
                    admit(reg, &identity, &td, &self.inner.cluster, located).map_err(|e| {
                        crate::grpc::refuse(Code::PermissionDenied, e.label(), e.to_string())
                    })?;
                Some(live)
            }
            (Some(_), Role::Gateway) => {
                return Err(Status::invalid_argument(
                    "a gateway does not register a workload (node.registration is for sidecars)",
                ));
            }
        };
        let scope = node_scope(&node, role)?;
        let place = LocalPlace {
            cluster: self.inner.cluster.clone(),
            locality,
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(live) = registration {
            self.inner.live.register(id, &identity, live).map_err(|e| {
                crate::grpc::refuse(Code::PermissionDenied, e.label(), e.to_string())
            })?;
        }
        self.inner.lock().insert(
            id,
            ProxyStatus {
                node_id: node.id.clone(),
                identity: identity.to_string(),
                locality: place.locality.to_string(),
                sent_version: 0,
                acked_version: first.version,
                last_nack: None,
            },
        );
        self.inner.metrics.config_clients.inc();
        tracing::info!(node = %node.id, %identity, locality = %place.locality, "proxy subscribed to config");
        let (tx, rx) = mpsc::channel(4);
        if node.deltas {
            let held = plan::Held {
                epoch: first.epoch.clone(),
                version: first.version,
            };
            tokio::spawn(stream::delta_session(
                self.inner.clone(),
                id,
                place,
                scope,
                held,
                inbound,
                tx,
            ));
        } else {
            tokio::spawn(session(self.inner.clone(), id, place, role, inbound, tx));
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn deregister(
        &self,
        request: Request<Registration>,
    ) -> Result<Response<DeregisterAck>, Status> {
        let caller = crate::grpc::caller(&request)?;
        crate::grpc::require_cluster(&caller, &self.inner.cluster, "deregister a workload here")?;
        let r = request.into_inner();
        let address: SocketAddr = r.address.parse().map_err(|_| {
            Status::invalid_argument(format!("address {:?} is not ip:port", r.address))
        })?;
        let key = ServiceKey::new(&r.namespace, &r.name);
        if self.inner.live.deregister(&caller.id, &key, address) {
            Ok(Response::new(DeregisterAck {}))
        } else {
            Err(Status::not_found(format!(
                "{caller} registered no endpoint {address} of {key} here",
                caller = caller.id
            )))
        }
    }

    async fn report_endpoint_health(
        &self,
        request: Request<EndpointHealthReport>,
    ) -> Result<Response<EndpointHealthAck>, Status> {
        let caller = crate::grpc::caller(&request)?;
        let inner = &self.inner;
        crate::grpc::require_cluster(
            &caller,
            &inner.cluster,
            "report endpoint health to this controller",
        )
        .inspect_err(|_| inner.metrics.health_report("other_cluster"))?;
        let who = caller.id;
        let r = request.into_inner();
        let addr: SocketAddr = r.address.parse().map_err(|_| {
            Status::invalid_argument(format!("address {:?} is not ip:port", r.address))
        })?;
        let key = ServiceKey::new(&r.namespace, &r.service);
        let refused = |e: report::Refusal| {
            inner.metrics.health_report(e.label());
            let code = match e {
                report::Refusal::RateLimited(_) => Code::ResourceExhausted,
                _ => Code::PermissionDenied,
            };
            crate::grpc::refuse(code, e.label(), e.to_string())
        };
        report::is_workload(&who).map_err(refused)?;
        // Rate first: every later check reads the catalog.
        inner.reports.admit(&who, Instant::now()).map_err(refused)?;
        let authorization = {
            let published = inner.world.borrow();
            let known = published
                .world
                .catalog
                .services
                .get(&key)
                .is_some_and(|reg| reg.endpoints.iter().any(|e| e.address == addr));
            if !known {
                inner.metrics.health_report("unknown_endpoint");
                return Err(crate::grpc::refuse(
                    Code::NotFound,
                    "unknown_endpoint",
                    format!(
                        "{addr} is not an endpoint of service {key} in cluster {}; report endpoints of this cluster to its own controller",
                        inner.cluster
                    ),
                ));
            }
            published
                .view
                .services
                .get(&key)
                .map(|m| {
                    let ports: Vec<u16> = m.ports.iter().map(|p| p.port).collect();
                    (ports, m.authorization.clone())
                })
                .unwrap_or_default()
        };
        let (ports, authorization) = authorization;
        report::may_call(&who, &key.to_string(), &ports, &authorization).map_err(refused)?;
        let hold = match r.hold_seconds {
            0 => DEFAULT_PASSIVE_HOLD,
            s => Duration::from_secs(u64::from(s)),
        };
        tracing::debug!(reporter = %who, service = %key, endpoint = %addr, healthy = r.healthy, "health report");
        inner.metrics.health_report("accepted");
        inner.health.report(&key, addr, &who, r.healthy, hold);
        Ok(Response::new(EndpointHealthAck {}))
    }
}

#[cfg(test)]
mod tests {
    use strait_api::ClusterName;
    use strait_api::snapshot::Snapshot;

    use super::*;

    fn snap(version: u64, cluster: &str) -> Vec<u8> {
        let s = Snapshot {
            version,
            local: LocalPlace {
                cluster: ClusterName::new(cluster).unwrap(),
                locality: Locality::default(),
            },
            clusters: Vec::new(),
            services: Vec::new(),
            exports: None,
        };
        serde_json::to_vec(&s).unwrap()
    }

    #[test]
    fn the_content_digest_ignores_the_version_and_nothing_else() {
        let d = |v, c| content_digest(&snap(v, c)).as_ref().to_vec();
        assert_eq!(d(1, "east"), d(987_654_321, "east"));
        assert_ne!(d(1, "east"), d(1, "west"));
        assert!(snap(7, "east").starts_with(b"{\"version\":7,"));
    }
}
