//! The importer: one task per link subscribes to the peer's exports and
//! applies them to [`Imports`]; a lease keeper marks data stale (or
//! withdraws it) when a peer goes quiet.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use strait_api::backoff::Backoff;

use serde::{Deserialize, Serialize};
use strait_api::proto::federation::federation_client::FederationClient;
use strait_api::proto::federation::{SyncRequest, SyncUpdate};
use strait_api::{ClusterName, TrustDomain};
use strait_ca::tls::ExpectedServer;
use strait_ca::{CertStore, SharedBundle};
use tokio::sync::watch;

use super::{MAX_MESSAGE_BYTES, SyncConfig};
use crate::catalog::ServiceKey;
use crate::metrics::{Metrics, PeerLabels};
use crate::peering::{FailMode, Link};
use crate::snapshot::PeerView;

/// Why a sync stream ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    #[error("cannot reach the controller of {peer}: {reason}")]
    Unreachable { peer: ClusterName, reason: String },
    #[error("the controller of {peer} refused sync: {message}")]
    Refused { peer: ClusterName, message: String },
    #[error("the controller at {addr} says it is cluster {claimed}, but the link is to {peer}")]
    WrongCluster {
        peer: ClusterName,
        addr: SocketAddr,
        claimed: String,
    },
    #[error("peer {peer} sent {count} services; the limit is {limit}: its catalog is refused")]
    TooManyServices {
        peer: ClusterName,
        count: usize,
        limit: usize,
    },
    #[error(
        "peer {peer} sent {bytes} bytes of partial updates without completing a version; the limit is {limit} bytes (max_pending_bytes): its catalog is refused"
    )]
    TooManyPendingBytes {
        peer: ClusterName,
        bytes: usize,
        limit: usize,
    },
    #[error(
        "peer {peer} sent {count} endpoints for {service}; the limit is {limit}: its catalog is refused"
    )]
    TooManyEndpoints {
        peer: ClusterName,
        service: ServiceKey,
        count: usize,
        limit: usize,
    },
}

impl SyncError {
    /// Limits are not fixed by retrying soon.
    fn is_limit(&self) -> bool {
        matches!(
            self,
            Self::TooManyServices { .. }
                | Self::TooManyEndpoints { .. }
                | Self::TooManyPendingBytes { .. }
        )
    }
}

#[derive(Debug, Default)]
struct PeerState {
    /// Shared with the published world: replaced, never edited in place
    /// while a world holds it, so a rebuild copies no imported data.
    view: Arc<PeerView>,
    epoch: String,
    version: u64,
    last_contact: Option<Instant>,
    up: bool,
    error: Option<String>,
    refused: Vec<String>,
    full_resyncs: u64,
    deltas: u64,
}

/// What status shows about one peer's sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerSyncStatus {
    pub peer: ClusterName,
    pub up: bool,
    pub stale: bool,
    pub services: usize,
    pub version: u64,
    /// Seconds since the last message (the age of imported data).
    pub age_secs: Option<f64>,
    pub full_resyncs: u64,
    pub delta_updates: u64,
    pub last_error: Option<String>,
    /// Entries refused from this peer (foreign claims, invalid fields).
    pub refused: Vec<String>,
}

/// Everything imported from peers; cheap to clone.
#[derive(Debug, Clone)]
pub struct Imports {
    peers: Arc<Mutex<BTreeMap<ClusterName, PeerState>>>,
    changed: Arc<watch::Sender<u64>>,
    td: TrustDomain,
}

impl Imports {
    pub fn new(td: TrustDomain) -> Self {
        Self {
            peers: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
            td,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<ClusterName, PeerState>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// The views of `links`' peers (empty views for peers not heard yet).
    pub fn views(
        &self,
        links: &BTreeMap<ClusterName, Link>,
    ) -> BTreeMap<ClusterName, Arc<PeerView>> {
        let g = self.lock();
        links
            .values()
            .map(|l| {
                let mut view = g.get(&l.peer).map(|s| s.view.clone()).unwrap_or_default();
                if view.gateways.is_empty() {
                    Arc::make_mut(&mut view).gateways = l.gateways.clone();
                }
                (l.peer.clone(), view)
            })
            .collect()
    }

    pub fn status(&self) -> Vec<PeerSyncStatus> {
        let now = Instant::now();
        self.lock()
            .iter()
            .map(|(peer, s)| PeerSyncStatus {
                peer: peer.clone(),
                up: s.up,
                stale: s.view.stale,
                services: s.view.services.len(),
                version: s.version,
                age_secs: s.last_contact.map(|t| now.duration_since(t).as_secs_f64()),
                full_resyncs: s.full_resyncs,
                delta_updates: s.deltas,
                last_error: s.error.clone(),
                refused: s.refused.clone(),
            })
            .collect()
    }

    /// Forgets a peer (unlinked).
    pub fn remove(&self, peer: &ClusterName) {
        if self.lock().remove(peer).is_some() {
            self.bump();
        }
    }

    fn resume_point(&self, peer: &ClusterName) -> (String, u64) {
        let g = self.lock();
        g.get(peer)
            .map(|s| (s.epoch.clone(), s.version))
            .unwrap_or_default()
    }

    fn set_down(&self, peer: &ClusterName, error: Option<String>) {
        let mut g = self.lock();
        let s = g.entry(peer.clone()).or_default();
        s.up = false;
        if error.is_some() {
            s.error = error;
        }
    }

    /// Applies one version (possibly several partial messages) from `peer`.
    pub fn apply(
        &self,
        peer: &ClusterName,
        batch: &[SyncUpdate],
        cfg: &SyncConfig,
    ) -> Result<(), SyncError> {
        let Some(last) = batch.last() else {
            return Ok(());
        };
        let reset = batch.first().is_some_and(|u| u.reset);
        let mut g = self.lock();
        let s = g.entry(peer.clone()).or_default();
        let mut services = if reset {
            BTreeMap::new()
        } else {
            s.view.services.clone()
        };
        let mut refused = Vec::new();
        let mut changes = 0usize;
        for u in batch {
            for r in &u.removals {
                if let Some(key) = ServiceKey::parse(r) {
                    changes += usize::from(services.remove(&key).is_some());
                }
            }
            for svc in &u.upserts {
                if svc.cluster != peer.as_str() {
                    refused.push(format!(
                        "{}/{}: {peer} claims endpoints of cluster {:?}; a peer may only export its own",
                        svc.namespace, svc.name, svc.cluster
                    ));
                    continue;
                }
                let (key, imported) = match super::convert::import_service(svc, &self.td) {
                    Ok(v) => v,
                    Err(e) => {
                        refused.push(e);
                        continue;
                    }
                };
                if imported.endpoints.len() > cfg.max_endpoints_per_service {
                    return Err(SyncError::TooManyEndpoints {
                        peer: peer.clone(),
                        service: key,
                        count: imported.endpoints.len(),
                        limit: cfg.max_endpoints_per_service,
                    });
                }
                changes += 1;
                services.insert(key, imported);
            }
        }
        if services.len() > cfg.max_services_per_peer {
            return Err(SyncError::TooManyServices {
                peer: peer.clone(),
                count: services.len(),
                limit: cfg.max_services_per_peer,
            });
        }
        for r in &refused {
            tracing::warn!(%peer, refused = %r, "refused imported entry");
        }
        let gateways: Vec<SocketAddr> = last
            .gateways
            .iter()
            .filter_map(|g| g.parse().ok())
            .collect();
        let was_stale = s.view.stale;
        let changed = services != s.view.services
            || was_stale
            || (!gateways.is_empty() && gateways != s.view.gateways);
        if reset {
            s.full_resyncs += 1;
        } else if changes > 0 {
            s.deltas += 1;
        }
        let gateways = if gateways.is_empty() {
            s.view.gateways.clone()
        } else {
            gateways
        };
        s.view = Arc::new(PeerView {
            gateways,
            stale: false,
            services,
        });
        s.epoch = last.epoch.clone();
        s.version = last.version;
        s.last_contact = Some(Instant::now());
        s.up = true;
        s.error = None;
        if !refused.is_empty() {
            s.refused = refused;
        } else if reset {
            s.refused.clear();
        }
        drop(g);
        if changed {
            self.bump();
        }
        Ok(())
    }

    /// Applies lease expiry per the links' fail modes and updates metrics.
    pub fn expire(&self, links: &BTreeMap<ClusterName, Link>, lease: Duration, metrics: &Metrics) {
        let now = Instant::now();
        let mut changed = false;
        {
            let mut g = self.lock();
            for (peer, s) in g.iter_mut() {
                let labels = PeerLabels {
                    peer: peer.to_string(),
                };
                let age = s.last_contact.map(|t| now.duration_since(t));
                if let Some(age) = age {
                    metrics
                        .peer_sync_lag_seconds
                        .get_or_create(&labels)
                        .set(age.as_secs_f64());
                }
                metrics.peer_up.get_or_create(&labels).set(i64::from(s.up));
                let lease = links.get(peer).map_or(lease, |l| l.lease(lease));
                let expired = age.is_none_or(|a| a > lease);
                if !expired || (s.view.services.is_empty() && !s.view.stale) {
                    continue;
                }
                match links.get(peer).map(|l| l.fail_mode).unwrap_or_default() {
                    FailMode::FailStatic if !s.view.stale => {
                        tracing::warn!(%peer, "lease expired; keeping its endpoints, marked stale");
                        Arc::make_mut(&mut s.view).stale = true;
                        changed = true;
                    }
                    FailMode::FailClosed if !s.view.services.is_empty() => {
                        tracing::warn!(%peer, "lease expired; withdrawing its endpoints (fail-closed)");
                        s.view = Arc::new(PeerView {
                            gateways: s.view.gateways.clone(),
                            stale: false,
                            services: BTreeMap::new(),
                        });
                        // The data is gone: the next sync must be a full resend.
                        s.epoch.clear();
                        s.version = 0;
                        changed = true;
                    }
                    _ => {}
                }
            }
        }
        if changed {
            self.bump();
        }
    }
}

/// Keeps importing from `link`'s peer until the task is aborted.
pub async fn run_importer(
    link: Link,
    local: ClusterName,
    certs: CertStore,
    bundle: SharedBundle,
    imports: Imports,
    cfg: SyncConfig,
) {
    let mut backoff = Backoff::new(cfg.min_backoff, cfg.max_backoff);
    loop {
        let res = stream_once(&link, &local, &certs, &bundle, &imports, &cfg).await;
        let peer = &link.peer;
        match res {
            Ok(()) => {
                imports.set_down(peer, None);
                backoff.reset();
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "catalog sync failed");
                if e.is_limit() {
                    backoff.to_max();
                }
                imports.set_down(peer, Some(e.to_string()));
            }
        }
        tokio::time::sleep(backoff.next_delay(rand::random())).await;
    }
}

async fn stream_once(
    link: &Link,
    local: &ClusterName,
    certs: &CertStore,
    bundle: &SharedBundle,
    imports: &Imports,
    cfg: &SyncConfig,
) -> Result<(), SyncError> {
    let peer = &link.peer;
    let unreachable = |reason: String| SyncError::Unreachable {
        peer: peer.clone(),
        reason,
    };
    let expected = ExpectedServer::Id(link.peer_identity.clone());
    let channel = crate::grpc::channel(link.controller, certs, bundle, expected)
        .map_err(|e| unreachable(e.to_string()))?;
    let mut client = FederationClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let (epoch, version) = imports.resume_point(peer);
    let req = SyncRequest {
        cluster: local.to_string(),
        epoch,
        resume_version: version,
    };
    let mut stream = client
        .sync(req)
        .await
        .map_err(|s| status_error(peer, &s))?
        .into_inner();
    let mut pending = Pending::default();
    let deadline = link.lease(cfg.lease).max(cfg.heartbeat * 3);
    loop {
        let msg = tokio::time::timeout(deadline, stream.message())
            .await
            .map_err(|_| unreachable(format!("no message for {}ms", deadline.as_millis())))?
            .map_err(|s| status_error(peer, &s))?;
        let Some(u) = msg else { return Ok(()) };
        if u.cluster != peer.as_str() {
            return Err(SyncError::WrongCluster {
                peer: peer.clone(),
                addr: link.controller,
                claimed: u.cluster,
            });
        }
        if let Some(batch) = pending.push(u, peer, cfg)? {
            imports.apply(peer, &batch, cfg)?;
        }
    }
}

fn status_error(peer: &ClusterName, s: &tonic::Status) -> SyncError {
    match s.code() {
        tonic::Code::PermissionDenied
        | tonic::Code::Unauthenticated
        | tonic::Code::InvalidArgument => SyncError::Refused {
            peer: peer.clone(),
            message: s.message().to_owned(),
        },
        _ => SyncError::Unreachable {
            peer: peer.clone(),
            reason: format!("{:?}: {}", s.code(), s.message()),
        },
    }
}

/// Partial updates of one version, bounded by service count and bytes.
#[derive(Debug, Default)]
struct Pending {
    updates: Vec<SyncUpdate>,
    services: usize,
    bytes: usize,
}

impl Pending {
    /// Buffers `u`; returns the whole version once its last part arrived.
    fn push(
        &mut self,
        u: SyncUpdate,
        peer: &ClusterName,
        cfg: &SyncConfig,
    ) -> Result<Option<Vec<SyncUpdate>>, SyncError> {
        self.services += u.upserts.len();
        self.bytes += prost::Message::encoded_len(&u);
        if self.services > cfg.max_services_per_peer {
            return Err(SyncError::TooManyServices {
                peer: peer.clone(),
                count: self.services,
                limit: cfg.max_services_per_peer,
            });
        }
        if self.bytes > cfg.max_pending_bytes {
            return Err(SyncError::TooManyPendingBytes {
                peer: peer.clone(),
                bytes: self.bytes,
                limit: cfg.max_pending_bytes,
            });
        }
        let partial = u.partial;
        self.updates.push(u);
        if partial {
            return Ok(None);
        }
        self.services = 0;
        self.bytes = 0;
        Ok(Some(std::mem::take(&mut self.updates)))
    }
}

#[cfg(test)]
mod tests {
    use strait_api::proto::federation::ExportedService;

    use super::*;

    fn part(names: &[&str], partial: bool) -> SyncUpdate {
        SyncUpdate {
            cluster: "west".into(),
            version: 3,
            partial,
            upserts: names
                .iter()
                .map(|n| ExportedService {
                    name: (*n).into(),
                    namespace: "default".into(),
                    cluster: "west".into(),
                    ..ExportedService::default()
                })
                .collect(),
            ..SyncUpdate::default()
        }
    }

    #[test]
    fn partial_updates_are_held_until_the_version_is_complete() {
        let peer = ClusterName::new("west").unwrap();
        let cfg = SyncConfig::default();
        let mut p = Pending::default();
        assert!(
            p.push(part(&["a", "b"], true), &peer, &cfg)
                .unwrap()
                .is_none()
        );
        let batch = p.push(part(&["c"], false), &peer, &cfg).unwrap().unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!((p.services, p.bytes, p.updates.len()), (0, 0, 0));
    }

    #[test]
    fn partial_updates_are_bounded_by_bytes_naming_the_limit() {
        let peer = ClusterName::new("west").unwrap();
        let one = prost::Message::encoded_len(&part(&["svc-0"], true));
        let cfg = SyncConfig {
            max_pending_bytes: one * 3,
            ..SyncConfig::default()
        };
        let mut p = Pending::default();
        for _ in 0..3 {
            assert!(
                p.push(part(&["svc-0"], true), &peer, &cfg)
                    .unwrap()
                    .is_none()
            );
        }
        let e = p.push(part(&["svc-0"], true), &peer, &cfg).unwrap_err();
        assert!(
            matches!(e, SyncError::TooManyPendingBytes { bytes, limit, .. } if bytes == one * 4 && limit == one * 3)
        );
        assert!(e.is_limit(), "a limit backs off to the longest wait");
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "the limit is {} bytes (max_pending_bytes)",
                one * 3
            )),
            "{text}"
        );
        // Completed versions do not add up.
        let mut p = Pending::default();
        for _ in 0..10 {
            assert!(
                p.push(part(&["svc-0"], false), &peer, &cfg)
                    .unwrap()
                    .is_some()
            );
        }
    }

    #[test]
    fn partial_updates_are_bounded_by_service_count() {
        let peer = ClusterName::new("west").unwrap();
        let cfg = SyncConfig {
            max_services_per_peer: 2,
            ..SyncConfig::default()
        };
        let mut p = Pending::default();
        p.push(part(&["a", "b"], true), &peer, &cfg).unwrap();
        let e = p.push(part(&["c"], true), &peer, &cfg).unwrap_err();
        assert!(
            matches!(
                e,
                SyncError::TooManyServices {
                    count: 3,
                    limit: 2,
                    ..
                }
            ),
            "{e}"
        );
    }
}
