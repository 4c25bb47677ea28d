//! Links between controllers: peering tokens and the durable link store.
//!
//! A peering token (base64url of JSON) carries what the receiving side needs
//! to trust and reach the issuing controller once: its trust bundle, its
//! controller and gateway addresses, the SPIFFE ID its controller presents
//! and a one-time, expiring secret (only the SHA-256 is kept by the issuer).
//! After `Establish` consumed the secret, both sides hold a [`Link`] and
//! speak only mTLS with their controller identities.
//!
//! The [`LinkStore`] keeps both in memory and writes every change through
//! to a [`LinkBackend`] before it takes effect. On plain hosts that is
//! [`DirectoryBackend`]:
//!
//! ```text
//! STATE/links/<peer>.json        one link per peer (atomic writes)
//! STATE/peering-secrets.json     pending token secrets (hashes, 0600)
//! ```
//!
//! In Kubernetes mode it is `kube::links::KubeLinkBackend` (`StraitLink`
//! objects and one Secret in the controller's namespace), so a replica
//! that becomes leader loads the links the previous leader made.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use strait_api::{ClusterName, SpiffeId, TrustDomain};
use strait_ca::TrustBundle;
use tokio::sync::watch;

mod backend;
#[cfg(test)]
mod tests;

pub use backend::{DirectoryBackend, LinkBackend, Stored};

/// Why linking failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeeringError {
    #[error("peering token is malformed: {0}")]
    BadToken(String),
    #[error("peering token of cluster {cluster} expired {ago_secs}s ago; ask for a new one")]
    TokenExpired { cluster: ClusterName, ago_secs: u64 },
    #[error("cannot link cluster {0} with itself")]
    SelfLink(ClusterName),
    #[error(
        "cluster {peer} is in trust domain {theirs}, this cluster in {ours}: only clusters of one mesh can be linked"
    )]
    DifferentTrustDomain {
        peer: ClusterName,
        theirs: TrustDomain,
        ours: TrustDomain,
    },
    #[error(
        "cluster {peer} trusts a different root CA than this cluster (no root in common): only clusters under one mesh root can be linked; issue both intermediates from the same `strait ca init` root"
    )]
    DifferentRoot { peer: ClusterName },
    #[error("cannot reach the controller of {peer} at {addr}: {reason}")]
    Unreachable {
        peer: ClusterName,
        addr: SocketAddr,
        reason: String,
    },
    #[error("the controller of {peer} refused the link: {message}")]
    Refused { peer: ClusterName, message: String },
    #[error("cluster {0} is not linked")]
    NotLinked(ClusterName),
    #[error(
        "a lease of {0}s is out of range: it must be between 1s and 24h (and longer than three of the peer's heartbeats, 15s by default)"
    )]
    BadLease(u64),
    #[error("peering secret is unknown, expired or already used; ask for a new token")]
    BadSecret,
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write link state: {0}")]
    Write(#[source] strait_ca::CaError),
    #[error("link store {store}: {reason}")]
    Store { store: String, reason: String },
}

/// What happens to a peer's imported endpoints when its lease runs out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailMode {
    /// Keep the last known endpoints, marked stale (used only when nothing
    /// better exists).
    #[default]
    FailStatic,
    /// Withdraw them.
    FailClosed,
}

/// A durable link to one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub peer: ClusterName,
    /// The identity the peer's controller must present, both ways.
    pub peer_identity: SpiffeId,
    pub controller: SocketAddr,
    pub gateways: Vec<SocketAddr>,
    #[serde(default)]
    pub fail_mode: FailMode,
    /// How long this peer's imported data stays fresh without a message
    /// (heartbeats renew it); `None`: the controller's `sync.lease`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<u64>,
    pub established_unix: u64,
}

/// The shortest and longest lease a link may set.
pub const LEASE_RANGE_SECS: (u64, u64) = (1, 86_400);

impl Link {
    /// This link's lease, or `default` when it sets none.
    pub fn lease(&self, default: Duration) -> Duration {
        self.lease_secs.map_or(default, Duration::from_secs)
    }
}

/// Checks a lease a link is to be given.
pub fn check_lease(secs: u64) -> Result<(), PeeringError> {
    let (lo, hi) = LEASE_RANGE_SECS;
    if (lo..=hi).contains(&secs) {
        Ok(())
    } else {
        Err(PeeringError::BadLease(secs))
    }
}

/// The token `strait peering token` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeeringToken {
    pub cluster: ClusterName,
    pub trust_domain: TrustDomain,
    pub bundle_pem: String,
    pub controller: SocketAddr,
    pub gateways: Vec<SocketAddr>,
    pub server_identity: SpiffeId,
    pub secret: String,
    pub expires_unix: u64,
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl PeeringToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    pub fn decode(token: &str) -> Result<Self, PeeringError> {
        let raw = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|e| PeeringError::BadToken(format!("not base64url: {e}")))?;
        serde_json::from_slice(&raw).map_err(|e| PeeringError::BadToken(e.to_string()))
    }

    /// Checks expiry, the cluster name and the trust bundle against ours.
    pub fn check(&self, ours: &ClusterName, bundle: &TrustBundle) -> Result<(), PeeringError> {
        let now = now_unix();
        if self.expires_unix <= now {
            return Err(PeeringError::TokenExpired {
                cluster: self.cluster.clone(),
                ago_secs: now - self.expires_unix,
            });
        }
        if self.cluster == *ours {
            return Err(PeeringError::SelfLink(self.cluster.clone()));
        }
        if self.trust_domain != *bundle.trust_domain() {
            return Err(PeeringError::DifferentTrustDomain {
                peer: self.cluster.clone(),
                theirs: self.trust_domain.clone(),
                ours: bundle.trust_domain().clone(),
            });
        }
        let theirs = TrustBundle::from_pem(self.trust_domain.clone(), &self.bundle_pem)
            .map_err(|e| PeeringError::BadToken(format!("trust bundle: {e}")))?;
        let shared = theirs.roots().iter().any(|r| bundle.roots().contains(r));
        if !shared {
            return Err(PeeringError::DifferentRoot {
                peer: self.cluster.clone(),
            });
        }
        Ok(())
    }
}

/// A fresh random secret (256 bits, base64url).
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hash(secret: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Pending token secrets: SHA-256 (hex) of each unused secret -> its
/// expiry (unix seconds). Only hashes are ever stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSecrets {
    pub pending: BTreeMap<String, u64>,
}

/// Links and pending token secrets, kept in memory and written through to
/// a [`LinkBackend`]: files under the state directory
/// ([`DirectoryBackend`]) or Kubernetes objects (`kube::links`).
#[derive(Debug)]
pub struct LinkStore {
    backend: Arc<dyn LinkBackend>,
    secrets: Mutex<PendingSecrets>,
    tx: watch::Sender<Arc<BTreeMap<ClusterName, Link>>>,
    write: Mutex<()>,
}

impl LinkStore {
    /// The store on files under `state_dir` (see the module docs).
    pub fn open(state_dir: &Path) -> Result<Self, PeeringError> {
        Self::with_backend(Arc::new(DirectoryBackend::new(state_dir)))
    }

    /// The store on `backend`, loaded from it now.
    pub fn with_backend(backend: Arc<dyn LinkBackend>) -> Result<Self, PeeringError> {
        let Stored { links, secrets } = backend.load()?;
        tracing::info!(links = links.len(), store = %backend.describe(), "link store opened");
        Ok(Self {
            backend,
            secrets: Mutex::new(secrets),
            tx: watch::channel(Arc::new(links)).0,
            write: Mutex::new(()),
        })
    }

    /// Where links are kept, for logs and status.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    pub fn watch(&self) -> watch::Receiver<Arc<BTreeMap<ClusterName, Link>>> {
        self.tx.subscribe()
    }

    pub fn links(&self) -> Arc<BTreeMap<ClusterName, Link>> {
        self.tx.borrow().clone()
    }

    pub fn get(&self, peer: &ClusterName) -> Option<Link> {
        self.tx.borrow().get(peer).cloned()
    }

    fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or replaces the link to `link.peer`.
    pub fn insert(&self, link: Link) -> Result<(), PeeringError> {
        let _g = self.write_lock();
        self.store(&link)
    }

    /// Writes `link` and publishes it; the caller holds the write lock.
    fn store(&self, link: &Link) -> Result<(), PeeringError> {
        let link = link.clone();
        self.backend.put_link(&link)?;
        tracing::info!(peer = %link.peer, identity = %link.peer_identity, "link stored");
        self.tx.send_modify(|m| {
            Arc::make_mut(m).insert(link.peer.clone(), link);
        });
        Ok(())
    }

    /// Removes the link; the peer is refused from now on.
    pub fn remove(&self, peer: &ClusterName) -> Result<Link, PeeringError> {
        let _g = self.write_lock();
        let link = self
            .get(peer)
            .ok_or_else(|| PeeringError::NotLinked(peer.clone()))?;
        self.backend.delete_link(peer)?;
        tracing::info!(%peer, "link removed");
        self.tx.send_modify(|m| {
            Arc::make_mut(m).remove(peer);
        });
        Ok(link)
    }

    pub fn set_fail_mode(&self, peer: &ClusterName, mode: FailMode) -> Result<(), PeeringError> {
        self.update(peer, |l| l.fail_mode = mode).map(drop)
    }

    /// Changes the stored link to `peer` with `f` and returns it, under
    /// the write lock (an unlink or relink in between cannot be undone by
    /// writing back a stale copy).
    pub fn update(
        &self,
        peer: &ClusterName,
        f: impl FnOnce(&mut Link),
    ) -> Result<Link, PeeringError> {
        let _g = self.write_lock();
        let mut link = self
            .get(peer)
            .ok_or_else(|| PeeringError::NotLinked(peer.clone()))?;
        f(&mut link);
        if let Some(secs) = link.lease_secs {
            check_lease(secs)?;
        }
        self.store(&link)?;
        Ok(link)
    }

    /// Writes the link to `peer` that `f` makes from the stored one (if
    /// any), under the write lock.
    pub fn upsert(
        &self,
        peer: &ClusterName,
        f: impl FnOnce(Option<&Link>) -> Link,
    ) -> Result<Link, PeeringError> {
        let _g = self.write_lock();
        let link = f(self.get(peer).as_ref());
        self.store(&link)?;
        Ok(link)
    }

    /// Revokes an unused token's secret: a peer presenting it is refused
    /// from now on. False when it was never issued here, already used,
    /// expired or revoked.
    pub fn revoke_secret(&self, secret: &str) -> Result<bool, PeeringError> {
        let _g = self.write_lock();
        let mut s = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_unix();
        let found = s.pending.remove(&hash(secret)).is_some_and(|exp| exp > now);
        s.pending.retain(|_, exp| *exp > now);
        self.save_secrets(&s)?;
        Ok(found)
    }

    /// Revokes every unused token; returns how many were still valid.
    pub fn revoke_all_secrets(&self) -> Result<usize, PeeringError> {
        let _g = self.write_lock();
        let mut s = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_unix();
        let valid = s.pending.values().filter(|exp| **exp > now).count();
        s.pending.clear();
        self.save_secrets(&s)?;
        Ok(valid)
    }

    /// How many issued tokens are still unused and unexpired.
    pub fn pending_secrets(&self) -> usize {
        let now = now_unix();
        let s = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        s.pending.values().filter(|exp| **exp > now).count()
    }

    fn save_secrets(&self, s: &PendingSecrets) -> Result<(), PeeringError> {
        self.backend.put_secrets(s)
    }

    /// Remembers a new token secret (its hash) until `ttl` passes.
    pub fn add_secret(&self, secret: &str, ttl: Duration) -> Result<u64, PeeringError> {
        let _g = self.write_lock();
        let mut s = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_unix();
        s.pending.retain(|_, exp| *exp > now);
        let expires = now + ttl.as_secs().max(1);
        s.pending.insert(hash(secret), expires);
        self.save_secrets(&s)?;
        Ok(expires)
    }

    /// Consumes a secret: valid once, before it expires.
    pub fn consume_secret(&self, secret: &str) -> Result<(), PeeringError> {
        let _g = self.write_lock();
        let mut s = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_unix();
        let found = s.pending.remove(&hash(secret));
        s.pending.retain(|_, exp| *exp > now);
        self.save_secrets(&s)?;
        match found {
            Some(exp) if exp > now => Ok(()),
            _ => Err(PeeringError::BadSecret),
        }
    }
}
