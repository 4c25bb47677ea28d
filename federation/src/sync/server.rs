//! The controller side of `strait.federation.v1.Federation`: establishing
//! links from a token secret, and streaming exports to linked peers.
//!
//! Every call is authenticated by the caller's SPIFFE ID (mTLS). `Sync` is
//! refused unless a link exists for the claimed cluster *and* the caller
//! presents that link's identity; a stream ends as soon as its link is
//! removed (`strait unlink` revokes at once).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_api::proto::federation::federation_server::{Federation, FederationServer};
use strait_api::proto::federation::{
    EstablishRequest, EstablishResponse, SyncRequest, SyncUpdate, UnlinkRequest, UnlinkResponse,
};
use strait_api::{ClusterName, TrustDomain};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::export::{Delta, ExportLog};
use super::{CHUNK, MAX_MESSAGE_BYTES};
use crate::peering::{Link, LinkStore, PeeringError, now_unix};

use crate::grpc::refuse;

#[derive(Debug)]
struct Inner {
    cluster: ClusterName,
    td: TrustDomain,
    links: Arc<LinkStore>,
    log: watch::Receiver<Arc<ExportLog>>,
    gateways: Vec<SocketAddr>,
    heartbeat: Duration,
}

/// The federation service; cheap to clone.
#[derive(Debug, Clone)]
pub struct FederationService {
    inner: Arc<Inner>,
}

impl FederationService {
    pub fn new(
        cluster: ClusterName,
        td: TrustDomain,
        links: Arc<LinkStore>,
        log: watch::Receiver<Arc<ExportLog>>,
        gateways: Vec<SocketAddr>,
        heartbeat: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                cluster,
                td,
                links,
                log,
                gateways,
                heartbeat,
            }),
        }
    }

    pub fn server(&self) -> FederationServer<Self> {
        FederationServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Checks that `peer` (its identity and the cluster whose intermediate
    /// signed it) may sync, or unlink, as `cluster`.
    fn authorize(&self, cluster: &str, peer: &crate::grpc::PeerIdentity) -> Result<Link, Status> {
        let caller = &peer.id;
        let name = ClusterName::new(cluster).map_err(|e| {
            refuse(
                Code::InvalidArgument,
                "bad_cluster",
                format!("cluster name: {e}"),
            )
        })?;
        let Some(link) = self.inner.links.get(&name) else {
            return Err(refuse(
                Code::PermissionDenied,
                "not_linked",
                format!(
                    "cluster {name} is not linked with {} (never linked, or unlinked): establish a link first",
                    self.inner.cluster
                ),
            ));
        };
        if link.peer_identity != *caller {
            return Err(refuse(
                Code::PermissionDenied,
                "identity_mismatch",
                format!(
                    "caller {caller} claims to be cluster {name}, but the link to {name} expects {}",
                    link.peer_identity
                ),
            ));
        }
        // The identity alone is not enough: whoever holds another cluster's
        // intermediate could mint it. The certificate must be the peer's.
        crate::grpc::require_cluster(peer, &link.peer, &format!("act as cluster {}", link.peer))?;
        Ok(link)
    }

    fn messages(&self, d: Delta, epoch: &str) -> Vec<SyncUpdate> {
        let epoch = epoch.to_owned();
        let gateways: Vec<String> = self
            .inner
            .gateways
            .iter()
            .map(ToString::to_string)
            .collect();
        let base = SyncUpdate {
            epoch,
            version: d.version,
            reset: d.reset,
            upserts: Vec::new(),
            removals: d.removals.iter().map(ToString::to_string).collect(),
            gateways,
            partial: false,
            cluster: self.inner.cluster.to_string(),
        };
        let chunks: Vec<_> = d.upserts.chunks(CHUNK).collect();
        if chunks.len() <= 1 {
            let upserts = d.upserts.iter().map(|s| (**s).clone()).collect();
            return vec![SyncUpdate { upserts, ..base }];
        }
        let last = chunks.len() - 1;
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| SyncUpdate {
                upserts: c.iter().map(|s| (**s).clone()).collect(),
                partial: i < last,
                removals: if i == 0 {
                    base.removals.clone()
                } else {
                    Vec::new()
                },
                ..base.clone()
            })
            .collect()
    }
}

async fn stream(
    me: FederationService,
    peer: ClusterName,
    identity: strait_api::SpiffeId,
    req: SyncRequest,
    tx: mpsc::Sender<Result<SyncUpdate, Status>>,
) {
    let mut log = me.inner.log.clone();
    let mut links = me.inner.links.watch();
    let (mut epoch, mut at) = (req.epoch, req.resume_version);
    let mut first = true;
    let mut beat = tokio::time::interval(me.inner.heartbeat);
    beat.tick().await;
    loop {
        let current = log.borrow_and_update().clone();
        let delta = current.delta(&peer, &epoch, at);
        if first || !delta.is_empty() {
            tracing::debug!(%peer, reset = delta.reset, upserts = delta.upserts.len(), removals = delta.removals.len(), version = delta.version, "sync update");
            for m in me.messages(delta, current.epoch()) {
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
            epoch = current.epoch().to_owned();
            at = current.version();
            first = false;
            beat.reset();
        }
        tokio::select! {
            changed = log.changed() => if changed.is_err() { return },
            _ = links.changed() => {
                let still = links.borrow_and_update().get(&peer).is_some_and(|l| l.peer_identity == identity);
                if !still {
                    tracing::info!(%peer, "link removed; ending its sync stream");
                    let msg = format!("the link from {} to {peer} was removed", me.inner.cluster);
                    let _ = tx.send(Err(refuse(Code::PermissionDenied, "unlinked", msg))).await;
                    return;
                }
            }
            _ = beat.tick() => {
                let hb = SyncUpdate {
                    epoch: epoch.clone(),
                    version: at,
                    cluster: me.inner.cluster.to_string(),
                    gateways: me.inner.gateways.iter().map(ToString::to_string).collect(),
                    ..SyncUpdate::default()
                };
                if tx.send(Ok(hb)).await.is_err() {
                    return;
                }
            }
            () = tx.closed() => return,
        }
    }
}

#[tonic::async_trait]
impl Federation for FederationService {
    type SyncStream = ReceiverStream<Result<SyncUpdate, Status>>;

    async fn establish(
        &self,
        request: Request<EstablishRequest>,
    ) -> Result<Response<EstablishResponse>, Status> {
        let from = crate::grpc::caller(&request)?;
        let caller = from.id.clone();
        let r = request.into_inner();
        let peer = ClusterName::new(&r.cluster).map_err(|e| {
            refuse(
                Code::InvalidArgument,
                "bad_cluster",
                format!("cluster name: {e}"),
            )
        })?;
        if peer == self.inner.cluster {
            return Err(refuse(
                Code::InvalidArgument,
                "self_link",
                format!("cannot link cluster {peer} with itself"),
            ));
        }
        let expected = self.inner.td.controller_id(&peer);
        if caller != expected {
            return Err(refuse(
                Code::PermissionDenied,
                "identity_mismatch",
                format!(
                    "caller {caller} cannot link as cluster {peer}: its controller must present {expected}"
                ),
            ));
        }
        crate::grpc::require_cluster(&from, &peer, &format!("link as cluster {peer}"))?;
        let controller: SocketAddr = r.controller_address.parse().map_err(|_| {
            refuse(
                Code::InvalidArgument,
                "bad_address",
                format!(
                    "controller address {:?} is not ip:port",
                    r.controller_address
                ),
            )
        })?;
        let mut gateways = Vec::new();
        for g in &r.gateways {
            gateways.push(g.parse::<SocketAddr>().map_err(|_| {
                refuse(
                    Code::InvalidArgument,
                    "bad_address",
                    format!("gateway address {g:?} is not ip:port"),
                )
            })?);
        }
        self.inner
            .links
            .consume_secret(&r.secret)
            .map_err(|e| match e {
                PeeringError::BadSecret => {
                    refuse(Code::Unauthenticated, "bad_secret", e.to_string())
                }
                other => refuse(Code::Internal, "store", other.to_string()),
            })?;
        // A relink keeps the settings this side chose for the peer (read
        // and written under the store's lock).
        self.inner
            .links
            .upsert(&peer, |old| Link {
                peer: peer.clone(),
                peer_identity: caller,
                controller,
                gateways,
                fail_mode: old.map(|l| l.fail_mode).unwrap_or_default(),
                lease_secs: old.and_then(|l| l.lease_secs),
                established_unix: now_unix(),
            })
            .map_err(|e| refuse(Code::Internal, "store", e.to_string()))?;
        tracing::info!(%peer, "link established by peer");
        Ok(Response::new(EstablishResponse {
            cluster: self.inner.cluster.to_string(),
        }))
    }

    async fn unlink(
        &self,
        request: Request<UnlinkRequest>,
    ) -> Result<Response<UnlinkResponse>, Status> {
        let caller = crate::grpc::caller(&request)?;
        let r = request.into_inner();
        let link = self.authorize(&r.cluster, &caller)?;
        self.inner
            .links
            .remove(&link.peer)
            .map_err(|e| refuse(Code::Internal, "store", e.to_string()))?;
        tracing::info!(peer = %link.peer, "link removed by the peer");
        Ok(Response::new(UnlinkResponse {}))
    }

    async fn sync(
        &self,
        request: Request<SyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let peer = crate::grpc::caller(&request)?;
        let req = request.into_inner();
        let link = self.authorize(&req.cluster, &peer).inspect_err(|s| {
            tracing::warn!(caller = %peer.id, cluster = %req.cluster, message = s.message(), "refused sync");
        })?;
        let caller = peer.id;
        tracing::info!(peer = %link.peer, epoch = %req.epoch, resume = req.resume_version, "peer subscribed to exports");
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(stream(self.clone(), link.peer, caller, req, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
