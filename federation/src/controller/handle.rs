//! What the CLI (and tests) call on a running controller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_api::proto::federation::EstablishRequest;
use strait_api::proto::federation::federation_client::FederationClient;
use strait_api::snapshot::Snapshot;
use strait_api::{ClusterName, Locality, SpiffeId};
use strait_ca::tls::ExpectedServer;
use tokio::task::JoinHandle;

use super::tasks::AbortOnDrop;
use super::{Shared, Status};
use crate::catalog::store::DirectoryStore;
use crate::catalog::{CatalogError, PolicySpec, Registration, ServiceKey};
use crate::grpc::GrpcServer;
use crate::health::Checker;
use crate::peering::{FailMode, Link, PeeringError, PeeringToken, new_secret, now_unix};

/// How a peering token is made.
#[derive(Debug, Clone)]
pub struct TokenOptions {
    /// How long the token can be used (once).
    pub ttl: Duration,
    /// The controller address to put in the token (e.g. a load balancer);
    /// defaults to the controller's advertised address.
    pub controller: Option<SocketAddr>,
}

impl Default for TokenOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(15 * 60),
            controller: None,
        }
    }
}

/// A running controller. Dropping it stops everything.
#[derive(Debug)]
pub struct Handle {
    shared: Arc<Shared>,
    grpc_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    _grpc: GrpcServer,
    _checker: Checker,
    _tasks: Vec<AbortOnDrop>,
}

impl Handle {
    pub(crate) fn new(
        shared: Arc<Shared>,
        grpc_addr: SocketAddr,
        admin_addr: Option<SocketAddr>,
        grpc: GrpcServer,
        checker: Checker,
        tasks: Vec<JoinHandle<()>>,
    ) -> Self {
        Self {
            shared,
            grpc_addr,
            admin_addr,
            _grpc: grpc,
            _checker: checker,
            _tasks: tasks.into_iter().map(AbortOnDrop::new).collect(),
        }
    }

    /// Where proxies and peers connect (mTLS gRPC).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The admin HTTP port, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn cluster(&self) -> &ClusterName {
        &self.shared.cluster
    }

    /// The identity this controller presents.
    pub fn identity(&self) -> SpiffeId {
        self.shared.td.controller_id(&self.shared.cluster)
    }

    /// The directory store, unless the catalog comes from elsewhere.
    pub fn store(&self) -> Result<&DirectoryStore, CatalogError> {
        self.shared.store.as_deref().ok_or(CatalogError::ReadOnly)
    }

    pub fn register(&self, reg: Registration) -> Result<(), CatalogError> {
        self.store()?.register(reg)
    }

    pub fn deregister(&self, key: &ServiceKey) -> Result<(), CatalogError> {
        self.store()?.deregister(key)
    }

    /// Exports to every linked peer (`to` empty) or only to those named.
    pub fn export(&self, key: &ServiceKey, to: Vec<ClusterName>) -> Result<(), CatalogError> {
        self.store()?.export(key, to)
    }

    pub fn unexport(&self, key: &ServiceKey) -> Result<(), CatalogError> {
        self.store()?.unexport(key)
    }

    pub fn set_policy(&self, policy: PolicySpec) -> Result<(), CatalogError> {
        self.store()?.set_policy(policy)
    }

    pub fn remove_policy(&self, key: &ServiceKey) -> Result<(), CatalogError> {
        self.store()?.remove_policy(key)
    }

    /// A passive health report by `reporter`, taken as it is (what the
    /// gRPC service records once it has checked the reporter; see
    /// [`crate::health::report`]).
    pub fn report_endpoint(
        &self,
        key: &ServiceKey,
        addr: SocketAddr,
        reporter: &strait_api::SpiffeId,
        healthy: bool,
        hold: Duration,
    ) {
        self.shared
            .health
            .report(key, addr, reporter, healthy, hold);
    }

    /// A one-time peering token for another cluster to `establish` with.
    pub fn peering_token(&self, opts: TokenOptions) -> Result<String, PeeringError> {
        peering_token(&self.shared, opts)
    }

    /// Links with the cluster that issued `token`: checks it, calls that
    /// controller once over mTLS, and stores the link on both sides.
    pub async fn establish(&self, token: &str, fail_mode: FailMode) -> Result<Link, PeeringError> {
        establish(&self.shared, token, fail_mode, None).await
    }

    /// [`Self::establish`] with this side's lease for the peer's data.
    pub async fn establish_with(
        &self,
        token: &str,
        fail_mode: FailMode,
        lease: Option<Duration>,
    ) -> Result<Link, PeeringError> {
        establish(&self.shared, token, fail_mode, lease).await
    }

    /// Revokes an unused peering token (see [`LinkStore::revoke_secret`]).
    ///
    /// [`LinkStore::revoke_secret`]: crate::peering::LinkStore::revoke_secret
    pub fn revoke_token(&self, token: &str) -> Result<bool, PeeringError> {
        revoke_token(&self.shared, token)
    }

    /// Removes the link on this side only: the peer's sync calls are
    /// refused from now on and its imported services are dropped.
    pub fn unlink(&self, peer: &ClusterName) -> Result<Link, PeeringError> {
        self.shared.links.remove(peer)
    }

    /// Removes the link here, then tells the peer to remove its side
    /// ([`unlink_both`]).
    pub async fn unlink_both(&self, peer: &ClusterName) -> Result<Unlinked, PeeringError> {
        unlink_both(&self.shared, peer).await
    }

    pub fn set_fail_mode(&self, peer: &ClusterName, mode: FailMode) -> Result<(), PeeringError> {
        self.shared.links.set_fail_mode(peer, mode)
    }

    pub fn links(&self) -> Vec<Link> {
        self.shared.links.links().values().cloned().collect()
    }

    /// The snapshot a proxy at `locality` (default: the cluster's) gets now.
    pub fn snapshot(&self, locality: Option<Locality>) -> Snapshot {
        self.shared.snapshot(locality)
    }

    pub fn status(&self) -> Status {
        super::status::status(&self.shared)
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics_text(&self) -> String {
        super::admin::encode_metrics(&self.shared)
    }

    /// Stops the controller and waits until its ports are closed (dropping
    /// the handle stops it too, without waiting).
    pub async fn shutdown(self) {
        let Self {
            _grpc,
            _tasks,
            _checker,
            ..
        } = self;
        _grpc.stop().await;
        for t in _tasks {
            t.stop().await;
        }
        drop(_checker);
    }
}

/// A one-time peering token for another cluster to `establish` with.
pub(crate) fn peering_token(shared: &Shared, opts: TokenOptions) -> Result<String, PeeringError> {
    let secret = new_secret();
    let expires_unix = shared.links.add_secret(&secret, opts.ttl)?;
    let bundle = shared.bundle.get();
    let token = PeeringToken {
        cluster: shared.cluster.clone(),
        trust_domain: shared.td.clone(),
        bundle_pem: strait_ca::pem::encode_certs(bundle.roots()),
        controller: opts.controller.unwrap_or(shared.advertise),
        gateways: shared.gateways.clone(),
        server_identity: shared.td.controller_id(&shared.cluster),
        secret,
        expires_unix,
    };
    tracing::info!(cluster = %shared.cluster, expires_unix, "issued peering token");
    Ok(token.encode())
}

/// Links with the cluster that issued `token`: checks it, calls that
/// controller once over mTLS, and stores the link on both sides.
pub(crate) async fn establish(
    shared: &Shared,
    token: &str,
    fail_mode: FailMode,
    lease: Option<Duration>,
) -> Result<Link, PeeringError> {
    let lease_secs = lease.map(|l| l.as_secs());
    if let Some(secs) = lease_secs {
        crate::peering::check_lease(secs)?;
    }
    let t = PeeringToken::decode(token)?;
    t.check(&shared.cluster, &shared.bundle.get())?;
    let peer = t.cluster.clone();
    let unreachable = |reason: String| PeeringError::Unreachable {
        peer: peer.clone(),
        addr: t.controller,
        reason,
    };
    let expected = ExpectedServer::Id(t.server_identity.clone());
    let channel = crate::grpc::channel(t.controller, &shared.certs, &shared.bundle, expected)
        .map_err(|e| unreachable(e.to_string()))?;
    let req = EstablishRequest {
        secret: t.secret.clone(),
        cluster: shared.cluster.to_string(),
        controller_address: shared.advertise.to_string(),
        gateways: shared.gateways.iter().map(ToString::to_string).collect(),
    };
    let mut client = FederationClient::new(channel);
    let call = client.establish(req);
    let resp = tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .map_err(|_| unreachable("no answer within 15s".into()))?
        .map_err(|s| match s.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown => unreachable(s.message().to_owned()),
            _ => PeeringError::Refused {
                peer: peer.clone(),
                message: s.message().to_owned(),
            },
        })?
        .into_inner();
    if resp.cluster != peer.as_str() {
        return Err(PeeringError::Refused {
            peer: peer.clone(),
            message: format!("the controller answered as cluster {:?}", resp.cluster),
        });
    }
    let link = Link {
        peer: peer.clone(),
        peer_identity: t.server_identity,
        controller: t.controller,
        gateways: t.gateways,
        fail_mode,
        lease_secs,
        established_unix: now_unix(),
    };
    shared.links.insert(link.clone())?;
    tracing::info!(%peer, "link established");
    Ok(link)
}

/// Revokes the secret of a token this controller issued; a token of
/// another cluster is refused (it was never ours to revoke).
pub(crate) fn revoke_token(shared: &Shared, token: &str) -> Result<bool, PeeringError> {
    let t = PeeringToken::decode(token)?;
    if t.cluster != shared.cluster {
        return Err(PeeringError::BadToken(format!(
            "this token was issued by cluster {}, not {}: revoke it there",
            t.cluster, shared.cluster
        )));
    }
    shared.links.revoke_secret(&t.secret)
}

/// What `unlink` did: the link removed here, and whether the peer removed
/// its side too.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Unlinked {
    pub link: Link,
    /// `None`: the peer removed its link as well. `Some`: why it could not
    /// be told (its gateways then admit this cluster until an operator
    /// unlinks there too).
    pub peer_error: Option<String>,
}

/// Removes the link to `peer` here (at once: its sync is refused from now
/// on), then calls the peer's controller so it removes its side: an unlink
/// on either side ends the link on both, and the peer's gateways stop
/// admitting this cluster.
pub(crate) async fn unlink_both(
    shared: &Shared,
    peer: &ClusterName,
) -> Result<Unlinked, PeeringError> {
    let link = shared.links.remove(peer)?;
    let peer_error = notify_unlink(shared, &link).await.err();
    if let Some(e) = &peer_error {
        tracing::warn!(%peer, error = %e, "unlinked here, but the peer could not be told; unlink there too");
    }
    Ok(Unlinked { link, peer_error })
}

async fn notify_unlink(shared: &Shared, link: &Link) -> Result<(), String> {
    let expected = ExpectedServer::Id(link.peer_identity.clone());
    let channel = crate::grpc::channel(link.controller, &shared.certs, &shared.bundle, expected)
        .map_err(|e| e.to_string())?;
    let req = strait_api::proto::federation::UnlinkRequest {
        cluster: shared.cluster.to_string(),
    };
    let mut client = FederationClient::new(channel);
    match tokio::time::timeout(Duration::from_secs(5), client.unlink(req)).await {
        Err(_) => Err(format!("{} did not answer within 5s", link.controller)),
        Ok(Err(s))
            if s.metadata()
                .get("strait-reason")
                .is_some_and(|r| r == "not_linked") =>
        {
            // It holds no link to us any more: nothing left to remove.
            tracing::debug!(peer = %link.peer, message = s.message(), "peer had no link left");
            Ok(())
        }
        Ok(Err(s)) => Err(format!("{}: {}", link.controller, s.message())),
        Ok(Ok(_)) => Ok(()),
    }
}
