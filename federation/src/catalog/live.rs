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

/// Live endpoints one identity may hold at once.
pub const MAX_PER_IDENTITY: usize = 16;

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
    let ip = address.ip();
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
/// of their own, with the ports and export of the first (by address).
pub fn merge<'a>(
    base: &LocalCatalog,
    live: impl IntoIterator<Item = &'a LiveEndpoint>,
) -> LocalCatalog {
    let mut out = base.clone();
    for l in live {
        let reg = out
            .services
            .entry(l.key.clone())
            .or_insert_with(|| Registration {
                name: l.key.name.clone(),
                namespace: l.key.namespace.clone(),
                ports: l.ports.clone(),
                endpoints: Vec::new(),
                export: l.export.clone(),
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
    changed: Notify,
    tx: watch::Sender<Arc<LocalCatalog>>,
}

impl LiveCatalog {
    /// Layers over `base`; the returned task keeps the merged catalog
    /// current (base changes, registrations, expiries) until aborted.
    pub fn start(base: Arc<dyn CatalogSource>, lease: Duration) -> (Arc<Self>, JoinHandle<()>) {
        let first = base.watch().borrow().clone();
        let me = Arc::new(Self {
            base,
            lease,
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
            .filter(|(key, e)| e.identity == *identity && **key != k)
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
                Arc::new(merge(&base, g.values().map(|e| &e.live)))
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
mod tests {
    use strait_api::proto::config::RegisteredPort;

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("strait.local").unwrap()
    }

    fn east() -> ClusterName {
        ClusterName::new("east").unwrap()
    }

    fn wire(name: &str, ns: &str, addr: &str, export: &str, ports: &[(u32, &str)]) -> Wire {
        Wire {
            name: name.into(),
            namespace: ns.into(),
            ports: ports
                .iter()
                .map(|(port, protocol)| RegisteredPort {
                    port: *port,
                    protocol: (*protocol).into(),
                })
                .collect(),
            address: addr.into(),
            export: export.into(),
        }
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://strait.local/{s}")).unwrap()
    }

    #[test]
    fn who_may_register_what_as_a_table() {
        let ok = [(8080, "http1")];
        let cases: Vec<(Wire, &str, Option<&str>)> = vec![
            (
                wire("reviews", "shop", "10.0.0.5:15006", "", &ok),
                "ns/shop/sa/reviews",
                None,
            ),
            (
                wire("reviews", "shop", "10.0.0.5:15006", "all", &ok),
                "ns/shop/sa/reviews",
                None,
            ),
            (
                wire("reviews", "shop", "10.0.0.5:15006", "west,central", &ok),
                "ns/shop/sa/reviews",
                None,
            ),
            // Another identity, even of the same namespace, may not.
            (
                wire("reviews", "shop", "10.0.0.5:15006", "", &ok),
                "ns/shop/sa/ratings",
                Some("not_its_service"),
            ),
            (
                wire("reviews", "shop", "10.0.0.5:15006", "", &ok),
                "ns/other/sa/reviews",
                Some("not_its_service"),
            ),
            (
                wire("reviews", "shop", "10.0.0.5:15006", "", &ok),
                "ns/strait-system/sa/gateway-east",
                Some("not_its_service"),
            ),
            // Bad registrations name what is wrong.
            (
                wire("reviews", "shop", "0.0.0.0:15006", "", &ok),
                "ns/shop/sa/reviews",
                Some("invalid_registration"),
            ),
            (
                wire("reviews", "shop", "10.0.0.5", "", &ok),
                "ns/shop/sa/reviews",
                Some("invalid_registration"),
            ),
            (
                wire("reviews", "shop", "10.0.0.5:15006", "", &[]),
                "ns/shop/sa/reviews",
                Some("invalid_registration"),
            ),
            (
                wire("reviews", "shop", "10.0.0.5:15006", "", &[(8080, "ftp")]),
                "ns/shop/sa/reviews",
                Some("invalid_registration"),
            ),
            (
                wire("reviews", "shop", "10.0.0.5:15006", "", &[(70000, "tcp")]),
                "ns/shop/sa/reviews",
                Some("invalid_registration"),
            ),
            (
                wire("reviews", "shop", "10.0.0.5:15006", "east", &ok),
                "ns/shop/sa/reviews",
                Some("invalid_registration"),
            ),
            (
                wire("Reviews!", "shop", "10.0.0.5:15006", "", &ok),
                "ns/shop/sa/reviews",
                Some("invalid_registration"),
            ),
        ];
        for (w, who, want) in cases {
            let got = admit(&w, &id(who), &td(), &east(), None);
            assert_eq!(
                got.as_ref().err().map(RegistrationError::label),
                want,
                "{w:?} by {who}: {got:?}"
            );
        }
        let e = admit(
            &wire("reviews", "shop", "0.0.0.0:15006", "", &ok),
            &id("ns/shop/sa/reviews"),
            &td(),
            &east(),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("endpoints[0].address"), "{e}");
        let e = admit(
            &wire("reviews", "shop", "10.0.0.5:15006", "", &ok),
            &id("ns/shop/sa/ratings"),
            &td(),
            &east(),
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("spiffe://strait.local/ns/shop/sa/reviews"),
            "{e}"
        );
    }

    #[test]
    fn live_endpoints_join_file_registrations_or_make_their_own() {
        let mut base = LocalCatalog::default();
        let file = Registration {
            name: "reviews".into(),
            namespace: "shop".into(),
            ports: vec![ServicePort {
                port: 9080,
                protocol: Protocol::Http1,
            }],
            endpoints: vec![EndpointSpec {
                address: "10.0.0.1:15006".parse().unwrap(),
                locality: None,
                identity: None,
                weight: 1,
            }],
            export: Export::All,
            health_check: None,
        };
        base.services.insert(file.key(), file);
        let live = |name: &str, addr: &str| {
            admit(
                &wire(name, "shop", addr, "", &[(8080, "http2")]),
                &id(&format!("ns/shop/sa/{name}")),
                &td(),
                &east(),
                None,
            )
            .unwrap()
        };
        let a = live("reviews", "10.0.0.2:15006");
        let dup = live("reviews", "10.0.0.1:15006");
        let b = live("ratings", "10.0.0.3:15006");
        let out = merge(&base, [&a, &dup, &b]);
        let reviews = &out.services[&ServiceKey::new("shop", "reviews")];
        // The file's ports and export stay; the address is not doubled.
        assert_eq!(reviews.ports[0].port, 9080);
        assert_eq!(reviews.export, Export::All);
        let addrs: Vec<String> = reviews
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(addrs, ["10.0.0.1:15006", "10.0.0.2:15006"]);
        let ratings = &out.services[&ServiceKey::new("shop", "ratings")];
        assert_eq!(
            (ratings.ports[0].port, ratings.export.clone()),
            (8080, Export::None)
        );
        assert_eq!(merge(&base, []), base);
    }

    #[tokio::test]
    async fn endpoints_live_with_their_stream_and_expire_with_the_lease() {
        let base: Arc<dyn CatalogSource> =
            Arc::new(crate::catalog::FixedCatalog::new(LocalCatalog::default()));
        let (live, task) = LiveCatalog::start(base, Duration::from_millis(200));
        let mut rx = live.watch();
        let who = id("ns/shop/sa/reviews");
        let ep = admit(
            &wire("reviews", "shop", "10.0.0.2:15006", "", &[(80, "http1")]),
            &who,
            &td(),
            &east(),
            None,
        )
        .unwrap();
        let has = |rx: &watch::Receiver<Arc<LocalCatalog>>| !rx.borrow().services.is_empty();
        live.register(1, &who, ep.clone()).unwrap();
        rx.wait_for(|c| !c.services.is_empty()).await.unwrap();
        // The stream ends: kept for the lease, then gone.
        live.session_ended(1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(has(&rx), "removed before the lease ended");
        assert_eq!(live.status()[0].expires_in_secs, Some(0));
        tokio::time::timeout(
            Duration::from_secs(2),
            rx.wait_for(|c| c.services.is_empty()),
        )
        .await
        .expect("expired")
        .unwrap();
        // Deregistration is at once, and only by the identity that registered.
        live.register(2, &who, ep.clone()).unwrap();
        rx.wait_for(|c| !c.services.is_empty()).await.unwrap();
        let key = ServiceKey::new("shop", "reviews");
        assert!(!live.deregister(&id("ns/shop/sa/ratings"), &key, ep.endpoint.address));
        assert!(live.deregister(&who, &key, ep.endpoint.address));
        rx.wait_for(|c| c.services.is_empty()).await.unwrap();
        task.abort();
    }

    #[tokio::test]
    async fn registrations_are_bounded_and_never_join_another_identity_s_service() {
        let mut base = LocalCatalog::default();
        let db = Registration {
            name: "db".into(),
            namespace: "shop".into(),
            ports: vec![ServicePort {
                port: 5432,
                protocol: Protocol::Tcp,
            }],
            endpoints: vec![EndpointSpec {
                address: "10.0.0.1:15006".parse().unwrap(),
                locality: None,
                identity: Some(id("ns/shop/sa/postgres")),
                weight: 1,
            }],
            export: Export::None,
            health_check: None,
        };
        base.services.insert(db.key(), db);
        let base: Arc<dyn CatalogSource> = Arc::new(crate::catalog::FixedCatalog::new(base));
        let (live, task) = LiveCatalog::start(base, Duration::from_secs(15));
        // A workload named like the service, but not its registered identity.
        let who = id("ns/shop/sa/db");
        let ep = admit(
            &wire("db", "shop", "10.0.0.9:15006", "", &[(5432, "tcp")]),
            &who,
            &td(),
            &east(),
            None,
        )
        .unwrap();
        let e = live.register(1, &who, ep).unwrap_err();
        assert_eq!(e.label(), "not_its_service");
        assert!(
            e.to_string()
                .contains("spiffe://strait.local/ns/shop/sa/postgres"),
            "{e}"
        );
        // One identity holds at most MAX_PER_IDENTITY endpoints.
        let web = id("ns/shop/sa/web");
        for i in 0..MAX_PER_IDENTITY {
            let ep = admit(
                &wire(
                    "web",
                    "shop",
                    &format!("10.0.1.{}:15006", i + 1),
                    "",
                    &[(80, "http1")],
                ),
                &web,
                &td(),
                &east(),
                None,
            )
            .unwrap();
            live.register(1, &web, ep).unwrap();
        }
        let ep = admit(
            &wire("web", "shop", "10.0.2.1:15006", "", &[(80, "http1")]),
            &web,
            &td(),
            &east(),
            None,
        )
        .unwrap();
        assert_eq!(
            live.register(1, &web, ep.clone()).unwrap_err().label(),
            "too_many_registrations"
        );
        // Renewing one it holds is no new endpoint.
        let again = admit(
            &wire("web", "shop", "10.0.1.1:15006", "", &[(80, "http1")]),
            &web,
            &td(),
            &east(),
            None,
        )
        .unwrap();
        live.register(2, &web, again).unwrap();
        // Link-local and multicast addresses are refused outright.
        for bad in ["169.254.169.254:80", "224.0.0.1:80", "[fe80::1]:80"] {
            let e = admit(
                &wire("web", "shop", bad, "", &[(80, "http1")]),
                &web,
                &td(),
                &east(),
                None,
            )
            .unwrap_err();
            assert_eq!(e.label(), "invalid_registration", "{bad}");
        }
        task.abort();
    }
}
