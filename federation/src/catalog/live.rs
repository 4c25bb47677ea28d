//! Workloads that register themselves. A sidecar whose config has a
//! `service:` section names its service in the node message of its
//! config-push stream; the controller adds the sidecar's inbound address as
//! an endpoint of that service for as long as the stream lives, and for
//! `lease` after it ends without a `Deregister` call (a crashed host's
//! endpoints expire with the lease; a sidecar stopped with SIGTERM calls
//! `Deregister` and its endpoint goes at once).
//!
//! Who may register what ([`admit`]): a sidecar registers only the service
//! its own identity serves, `spiffe://<td>/ns/<namespace>/sa/<name>`, the
//! identity callers expect of that service's endpoints by default; its
//! certificate must be of this cluster (checked before, by the push
//! service). File registrations (`strait service register`) keep working
//! beside live ones, for endpoints without a sidecar.
//!
//! [`LiveCatalog`] is a [`CatalogSource`] layered over the configured one:
//! its catalog is the base catalog with live endpoints merged in
//! ([`merge`]); with no live endpoint it is the base catalog itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strait_api::proto::config::Registration as Wire;
use strait_api::snapshot::{Protocol, ServicePort};
use strait_api::{ClusterName, Locality, SpiffeId, TrustDomain};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::{CatalogSource, EndpointSpec, Export, LocalCatalog, Registration, ServiceKey};

/// How long a registration outlives its stream when the sidecar left
/// without deregistering (crash, kill -9, host down).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// Why a sidecar's registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    #[error(
        "{identity} may not register service {service}: a sidecar registers only the service its own identity serves ({expected}); run it with that identity, or name its service in `service:`"
    )]
    NotItsService {
        identity: SpiffeId,
        service: ServiceKey,
        expected: SpiffeId,
    },
    #[error("registration of {service}: {reason}")]
    Invalid { service: String, reason: String },
    #[error(
        "{identity} may not join service {service}: its registered endpoints present {registered}, so callers would accept a sidecar that is not the service"
    )]
    OtherIdentity {
        identity: SpiffeId,
        service: ServiceKey,
        registered: SpiffeId,
    },
    #[error(
        "{0} holds {MAX_PER_IDENTITY} registered endpoints already; stop one (its lease ends 15 s after) before registering more"
    )]
    TooMany(SpiffeId),
}

/// Live endpoints one identity may hold at once (all replicas of a
/// service share its identity; endpoints only waiting for their lease to
/// end do not count).
pub const MAX_PER_IDENTITY: usize = 1024;

impl RegistrationError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotItsService { .. } | Self::OtherIdentity { .. } => "not_its_service",
            Self::Invalid { .. } => "invalid_registration",
            Self::TooMany(_) => "too_many_registrations",
        }
    }
}

/// One endpoint a sidecar registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEndpoint {
    pub key: ServiceKey,
    pub ports: Vec<ServicePort>,
    pub export: Export,
    pub endpoint: EndpointSpec,
}

/// The rule: `caller` may register `reg` in `cluster` (trust domain `td`)
/// when it is the service's own identity and the registration is valid.
pub fn admit(
    reg: &Wire,
    caller: &SpiffeId,
    td: &TrustDomain,
    cluster: &ClusterName,
    locality: Option<Locality>,
) -> Result<LiveEndpoint, RegistrationError> {
    let service = format!("{}/{}", reg.namespace, reg.name);
    let invalid = |reason: String| RegistrationError::Invalid {
        service: service.clone(),
        reason,
    };
    let address: SocketAddr = reg
        .address
        .parse()
        .map_err(|_| invalid(format!("address {:?} is not ip:port", reg.address)))?;
    // An IPv4-mapped IPv6 address is judged as the IPv4 address it maps.
    let ip = match address.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    let unroutable = match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local() || v4.is_multicast() || v4.is_broadcast(),
        std::net::IpAddr::V6(v6) => v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if unroutable {
        return Err(invalid(format!(
            "address {address} is link-local, multicast or broadcast: give the address peers dial"
        )));
    }
    let mut ports = Vec::new();
    for p in &reg.ports {
        let port = u16::try_from(p.port)
            .map_err(|_| invalid(format!("port {} is out of range", p.port)))?;
        let protocol = Protocol::parse(&p.protocol).ok_or_else(|| {
            invalid(format!(
                "port {port}: protocol {:?} is not http1, http2, grpc or tcp",
                p.protocol
            ))
        })?;
        ports.push(ServicePort { port, protocol });
    }
    let export = parse_export(&reg.export).map_err(invalid)?;
    let key = ServiceKey::new(&reg.namespace, &reg.name);
    let as_registration = Registration {
        name: reg.name.clone(),
        namespace: reg.namespace.clone(),
        ports: ports.clone(),
        endpoints: vec![EndpointSpec {
            address,
            locality: locality.clone(),
            identity: None,
            weight: 1,
        }],
        export: export.clone(),
        health_check: None,
    };
    as_registration
        .validate(td, cluster)
        .map_err(|e| invalid(format!("{} {:?}: {}", e.field, e.value, e.reason)))?;
    let expected = td
        .workload_id(&reg.namespace, &reg.name)
        .map_err(|e| invalid(e.to_string()))?;
    if *caller != expected {
        return Err(RegistrationError::NotItsService {
            identity: caller.clone(),
            service: key,
            expected,
        });
    }
    Ok(LiveEndpoint {
        key,
        ports,
        export,
        endpoint: EndpointSpec {
            address,
            locality,
            identity: None,
            weight: 1,
        },
    })
}

/// `none` (or empty), `all`, or `a,b,c`.
pub fn parse_export(s: &str) -> Result<Export, String> {
    match s.trim() {
        "" | "none" => Ok(Export::None),
        "all" => Ok(Export::All),
        list => list
            .split(',')
            .map(|c| {
                ClusterName::new(c.trim())
                    .map_err(|e| format!("export: bad cluster name {c:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Export::To),
    }
}

/// The base catalog with `live` endpoints merged in. A live endpoint of a
/// service the base registers joins that registration (its ports and
/// export are the base's; an address the base lists already is not added
/// twice); otherwise the live endpoints of one service make a registration
/// of their own, with the ports of the first (by address) and its export,
/// unless an operator set one for the service (`exports`). A live endpoint
/// never joins a configured registration whose endpoints name another
/// identity than its sidecar's (whichever came first).
pub fn merge<'a>(
    base: &LocalCatalog,
    live: impl IntoIterator<Item = (&'a LiveEndpoint, &'a SpiffeId)>,
    exports: &BTreeMap<ServiceKey, Export>,
) -> LocalCatalog {
    let mut out = base.clone();
    for (l, identity) in live {
        let foreign = base.services.get(&l.key).is_some_and(|reg| {
            reg.endpoints
                .iter()
                .any(|e| e.identity.as_ref().is_some_and(|id| id != identity))
        });
        if foreign {
            continue;
        }
        let reg = out
            .services
            .entry(l.key.clone())
            .or_insert_with(|| Registration {
                name: l.key.name.clone(),
                namespace: l.key.namespace.clone(),
                ports: l.ports.clone(),
                endpoints: Vec::new(),
                export: exports.get(&l.key).unwrap_or(&l.export).clone(),
                health_check: None,
            });
        if !reg
            .endpoints
            .iter()
            .any(|e| e.address == l.endpoint.address)
        {
            reg.endpoints.push(l.endpoint.clone());
        }
    }
    out
}

/// A registered endpoint as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveStatus {
    pub service: String,
    pub address: SocketAddr,
    pub identity: String,
    /// Seconds until it expires; `None` while its sidecar's stream is up.
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug)]
struct Entry {
    live: LiveEndpoint,
    identity: SpiffeId,
    /// The push session holding it, while that stream lives.
    session: Option<u64>,
    expires: Option<Instant>,
}

type Entries = BTreeMap<(ServiceKey, SocketAddr), Entry>;

/// The configured catalog source with live registrations layered on.
#[derive(Debug)]
pub struct LiveCatalog {
    base: Arc<dyn CatalogSource>,
    lease: Duration,
    entries: Mutex<Entries>,
    /// Exports an operator set for services only sidecars register, kept
    /// in `state` across restarts.
    exports: Mutex<BTreeMap<ServiceKey, Export>>,
    state: Option<std::path::PathBuf>,
    changed: Notify,
    tx: watch::Sender<Arc<LocalCatalog>>,
}

impl LiveCatalog {
    /// Layers over `base`; the returned task keeps the merged catalog
    /// current (base changes, registrations, expiries) until aborted.
    pub fn start(base: Arc<dyn CatalogSource>, lease: Duration) -> (Arc<Self>, JoinHandle<()>) {
        Self::start_with_state(base, lease, None)
    }

    /// [`Self::start`], keeping operator-set exports in the JSON file
    /// `state` (read at start; an unreadable file is logged and ignored).
    pub fn start_with_state(
        base: Arc<dyn CatalogSource>,
        lease: Duration,
        state: Option<std::path::PathBuf>,
    ) -> (Arc<Self>, JoinHandle<()>) {
        let first = base.watch().borrow().clone();
        let exports = state
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| {
                serde_json::from_slice::<Vec<(ServiceKey, Export)>>(&b)
                    .inspect_err(|e| tracing::warn!(error = %e, "ignoring unreadable live exports"))
                    .ok()
            })
            .map(|v| v.into_iter().collect())
            .unwrap_or_default();
        let me = Arc::new(Self {
            base,
            lease,
            exports: Mutex::new(exports),
            state,
            entries: Mutex::default(),
            changed: Notify::new(),
            tx: watch::channel(first).0,
        });
        let task = tokio::spawn(me.clone().run());
        (me, task)
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds (or renews) `live`, held by push session `session`. Refused
    /// when the configured catalog registers that service with endpoints of
    /// another identity, or when `identity` holds [`MAX_PER_IDENTITY`]
    /// endpoints already.
    pub fn register(
        &self,
        session: u64,
        identity: &SpiffeId,
        live: LiveEndpoint,
    ) -> Result<(), RegistrationError> {
        let k = (live.key.clone(), live.endpoint.address);
        let base = self.base.watch().borrow().clone();
        if let Some(reg) = base.services.get(&live.key) {
            let other = reg
                .endpoints
                .iter()
                .filter_map(|e| e.identity.as_ref())
                .find(|id| *id != identity);
            if let Some(registered) = other {
                return Err(RegistrationError::OtherIdentity {
                    identity: identity.clone(),
                    service: live.key.clone(),
                    registered: registered.clone(),
                });
            }
        }
        let mut g = self.lock();
        let held = g
            .iter()
            .filter(|(key, e)| e.identity == *identity && **key != k && e.session.is_some())
            .count();
        if held >= MAX_PER_IDENTITY {
            return Err(RegistrationError::TooMany(identity.clone()));
        }
        tracing::info!(service = %live.key, endpoint = %live.endpoint.address, %identity, "workload registered");
        g.insert(
            k,
            Entry {
                live,
                identity: identity.clone(),
                session: Some(session),
                expires: None,
            },
        );
        drop(g);
        self.changed.notify_one();
        Ok(())
    }

    /// The stream of `session` ended: its endpoints expire after the lease.
    pub fn session_ended(&self, session: u64) {
        let until = Instant::now() + self.lease;
        let mut g = self.lock();
        for e in g.values_mut().filter(|e| e.session == Some(session)) {
            e.session = None;
            e.expires = Some(until);
        }
        drop(g);
        self.changed.notify_one();
    }

    /// Removes `address` of `key` at once when `identity` registered it.
    pub fn deregister(&self, identity: &SpiffeId, key: &ServiceKey, address: SocketAddr) -> bool {
        let removed = {
            let mut g = self.lock();
            let k = (key.clone(), address);
            let mine = g.get(&k).is_some_and(|e| e.identity == *identity);
            mine && g.remove(&k).is_some()
        };
        if removed {
            tracing::info!(service = %key, endpoint = %address, "workload deregistered");
            self.changed.notify_one();
        }
        removed
    }

    /// Whether sidecars registered `key` (and no file does), or an
    /// operator set its export (it may have no live endpoint right now).
    pub fn serves_only_live(&self, key: &ServiceKey) -> bool {
        !self.base.watch().borrow().services.contains_key(key)
            && (self.lock().keys().any(|(k, _)| k == key)
                || self
                    .exports
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(key))
    }

    /// An operator's export for a service only sidecars register: it wins
    /// over what the sidecars' `service.export` says, and is kept across
    /// restarts.
    pub fn set_export(&self, key: &ServiceKey, export: Export) -> std::io::Result<()> {
        // Held across the write: concurrent changes reach the file in the
        // order they reach memory, and a failed write changes neither.
        let mut g = self.exports.lock().unwrap_or_else(|p| p.into_inner());
        let before = g.insert(key.clone(), export);
        if let Some(path) = &self.state {
            let all: Vec<_> = g.iter().map(|(k, e)| (k.clone(), e.clone())).collect();
            let json = serde_json::to_vec_pretty(&all).unwrap_or_default();
            if let Err(e) = strait_ca::store::write_atomic(path, &json, 0o600) {
                match before {
                    Some(b) => g.insert(key.clone(), b),
                    None => g.remove(key),
                };
                return Err(std::io::Error::other(e.to_string()));
            }
        }
        drop(g);
        self.changed.notify_one();
        Ok(())
    }

    /// Removes every live endpoint of `key` (an operator's eviction; a
    /// sidecar that still runs registers again when its stream reconnects:
    /// stop it with `strait sidecar rm`). How many were removed.
    pub fn evict(&self, key: &ServiceKey) -> usize {
        let n = {
            let mut g = self.lock();
            let before = g.len();
            g.retain(|(k, _), _| k != key);
            before - g.len()
        };
        if n > 0 {
            tracing::info!(service = %key, endpoints = n, "live endpoints evicted by an operator");
            self.changed.notify_one();
        }
        n
    }

    /// Every live endpoint.
    pub fn status(&self) -> Vec<LiveStatus> {
        let now = Instant::now();
        self.lock()
            .values()
            .map(|e| LiveStatus {
                service: e.live.key.to_string(),
                address: e.live.endpoint.address,
                identity: e.identity.to_string(),
                expires_in_secs: e
                    .expires
                    .map(|t| t.saturating_duration_since(now).as_secs()),
            })
            .collect()
    }

    /// Drops expired entries; the next expiry, if any.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut g = self.lock();
        g.retain(|(key, addr), e| {
            let keep = e.expires.is_none_or(|t| t > now);
            if !keep {
                tracing::info!(service = %key, endpoint = %addr, "registration lease ended; endpoint removed");
            }
            keep
        });
        g.values().filter_map(|e| e.expires).min()
    }

    fn publish(&self) {
        let base = self.base.watch().borrow().clone();
        let merged = {
            let g = self.lock();
            if g.is_empty() {
                base
            } else {
                let exports = self.exports.lock().unwrap_or_else(|p| p.into_inner());
                let live = g.values().map(|e| (&e.live, &e.identity));
                Arc::new(merge(&base, live, &exports))
            }
        };
        self.tx.send_if_modified(|cur| {
            let same = Arc::ptr_eq(cur, &merged) || **cur == *merged;
            if !same {
                *cur = merged;
            }
            !same
        });
    }

    async fn run(self: Arc<Self>) {
        let mut base = self.base.watch();
        loop {
            let next = self.expire(Instant::now());
            self.publish();
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = base.changed() => if r.is_err() { return },
                () = self.changed.notified() => {}
                () = sleep => {}
            }
        }
    }
}

impl CatalogSource for LiveCatalog {
    fn watch(&self) -> watch::Receiver<Arc<LocalCatalog>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests;
