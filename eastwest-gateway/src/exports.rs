//! What the gateway lets other clusters reach, and the pure decision for one
//! `CONNECT` authority against it.
//!
//! The export table is pushed at runtime (by the federation controller, or
//! a test). A `CONNECT` names either an endpoint `ip:port` (it must belong
//! to an exported service) or a service `name.namespace:port` (the gateway
//! picks a healthy endpoint; `port` must be one of the service's ports).
//! No I/O here: [`ExportTable::decide`] is a table test away from proof.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use strait_api::ClusterName;

use strait_api::snapshot::Health;

pub use strait_api::exports::{ExportError, ExportTable, ExportedEndpoint, ExportedService};

/// Why a `CONNECT` was refused. Each has a `strait-error` reason label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("{0:?} is neither ip:port nor name.namespace:port")]
    BadAuthority(String),
    #[error("{0} is this gateway itself")]
    SelfTarget(SocketAddr),
    #[error("{0} is not an endpoint of any exported service")]
    UnknownEndpoint(SocketAddr),
    #[error("service {0} is not exported by this cluster")]
    NotExported(String),
    #[error("service {service} exports no port {port}")]
    UnknownPort { service: String, port: u16 },
    #[error("service {0} has no healthy endpoint")]
    NoHealthyEndpoint(String),
    #[error("service {service} is not exported to cluster {cluster}")]
    NotExportedTo { service: String, cluster: String },
    #[error("cluster {0} is not linked with this cluster")]
    NotLinked(String),
}

impl Refusal {
    /// Short label for the `strait-error` header and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadAuthority(_) => "bad_authority",
            Self::SelfTarget(_) => "self_target",
            Self::UnknownEndpoint(_) => "unknown_endpoint",
            Self::NotExported(_) => "not_exported",
            Self::UnknownPort { .. } => "unknown_port",
            Self::NoHealthyEndpoint(_) => "no_healthy_endpoint",
            Self::NotExportedTo { .. } => "not_exported_to",
            Self::NotLinked(_) => "not_linked",
        }
    }

    /// The HTTP status answered: policy refusals are 403; an exported
    /// service with nothing healthy is 503 (the caller should fail over).
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::BadAuthority(_) => http::StatusCode::BAD_REQUEST,
            Self::NoHealthyEndpoint(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::FORBIDDEN,
        }
    }

    /// The destination service label for metrics (`unknown` when the
    /// authority names none we export).
    pub fn service_label(&self) -> String {
        match self {
            Self::NotExported(s) | Self::NoHealthyEndpoint(s) => s.clone(),
            Self::UnknownPort { service, .. } | Self::NotExportedTo { service, .. } => {
                service.clone()
            }
            _ => "unknown".to_owned(),
        }
    }
}

/// Where an allowed tunnel goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The sidecar inbound address to dial.
    pub target: SocketAddr,
    /// `name.namespace` of the exported service.
    pub service: String,
}

/// An [`ExportTable`] indexed for lookups, with the clusters linked now.
#[derive(Debug, Clone, Default)]
pub struct Index {
    table: ExportTable,
    by_endpoint: HashMap<SocketAddr, usize>,
    by_name: HashMap<(String, String), usize>,
    /// `None`: any cluster under the mesh root may call (a fixed table
    /// without a controller); `Some`: only these.
    linked: Option<HashSet<String>>,
}

impl From<ExportTable> for Index {
    fn from(table: ExportTable) -> Self {
        let mut by_endpoint = HashMap::new();
        let mut by_name = HashMap::new();
        for (i, s) in table.services.iter().enumerate() {
            by_name.insert((s.name.clone(), s.namespace.clone()), i);
            for e in &s.endpoints {
                by_endpoint.entry(e.address).or_insert(i);
            }
        }
        Self {
            table,
            by_endpoint,
            by_name,
            linked: None,
        }
    }
}

impl Index {
    /// Admits only callers of these clusters (the links the controller
    /// pushed with the table).
    #[must_use]
    pub fn with_linked<'a>(mut self, linked: impl IntoIterator<Item = &'a ClusterName>) -> Self {
        self.linked = Some(linked.into_iter().map(|c| c.to_string()).collect());
        self
    }

    pub fn table(&self) -> &ExportTable {
        &self.table
    }

    /// The clusters admitted, when limited.
    pub fn linked(&self) -> Option<&HashSet<String>> {
        self.linked.as_ref()
    }

    /// The whole decision for a `CONNECT` from `source_cluster`: the
    /// cluster must be linked (checked first, so an unlinked caller learns
    /// nothing of the exports), the authority must name an exported
    /// endpoint or service, and the export must include the caller.
    pub fn admit(
        &self,
        source_cluster: &str,
        authority: &str,
        own: &[SocketAddr],
        pick: impl FnOnce(usize) -> usize,
    ) -> Result<Decision, Refusal> {
        if !self.admits(source_cluster) {
            return Err(Refusal::NotLinked(source_cluster.to_owned()));
        }
        let d = self.decide(authority, own, pick)?;
        self.check_source(&d, source_cluster)?;
        Ok(d)
    }

    /// Whether an open tunnel from `source_cluster` to `service`
    /// (`name.namespace`) would still be admitted: the caller is linked and
    /// the service is still exported to it.
    pub fn still_admits(&self, source_cluster: &str, service: &str) -> bool {
        self.admits(source_cluster)
            && self
                .service(service)
                .is_some_and(|s| exported_to(s, source_cluster))
    }

    /// Whether callers of `cluster` may open tunnels at all: linked now,
    /// or any cluster with a fixed table.
    pub fn admits(&self, cluster: &str) -> bool {
        self.linked.as_ref().is_none_or(|l| l.contains(cluster))
    }

    /// Refuses `source_cluster` when the decided service is exported only
    /// to other clusters (`strait export --to`).
    pub fn check_source(&self, d: &Decision, source_cluster: &str) -> Result<(), Refusal> {
        match self.service(&d.service) {
            Some(s) if !exported_to(s, source_cluster) => Err(Refusal::NotExportedTo {
                service: d.service.clone(),
                cluster: source_cluster.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// The exported service `name.namespace`.
    fn service(&self, key: &str) -> Option<&ExportedService> {
        let (n, ns) = key.split_once('.')?;
        let i = self.by_name.get(&(n.to_owned(), ns.to_owned()))?;
        self.table.services.get(*i)
    }

    /// Decides a `CONNECT` to `authority`. `own` are the gateway's own
    /// addresses (never a target); `pick` chooses among `n` healthy
    /// endpoints (randomness from the caller).
    pub fn decide(
        &self,
        authority: &str,
        own: &[SocketAddr],
        pick: impl FnOnce(usize) -> usize,
    ) -> Result<Decision, Refusal> {
        let bad = || Refusal::BadAuthority(authority.to_owned());
        if let Ok(addr) = authority.parse::<SocketAddr>() {
            if own.iter().any(|o| is_same(*o, addr)) {
                return Err(Refusal::SelfTarget(addr));
            }
            let i = self
                .by_endpoint
                .get(&addr)
                .ok_or(Refusal::UnknownEndpoint(addr))?;
            return Ok(Decision {
                target: addr,
                service: self.table.services[*i].key(),
            });
        }
        let (name, ns, port) = strait_api::parse_service_authority(authority).ok_or_else(bad)?;
        let service = format!("{name}.{ns}");
        let svc = self
            .by_name
            .get(&(name.to_owned(), ns.to_owned()))
            .map(|i| &self.table.services[*i])
            .ok_or_else(|| Refusal::NotExported(service.clone()))?;
        if !svc.ports.contains(&port) {
            return Err(Refusal::UnknownPort { service, port });
        }
        let healthy: Vec<SocketAddr> = svc
            .endpoints
            .iter()
            .filter(|e| e.health == Health::Healthy)
            .map(|e| e.address)
            .filter(|a| !own.iter().any(|o| is_same(*o, *a)))
            .collect();
        if healthy.is_empty() {
            return Err(Refusal::NoHealthyEndpoint(service));
        }
        let target = healthy[pick(healthy.len()).min(healthy.len() - 1)];
        Ok(Decision { target, service })
    }
}

/// Whether `s` is exported to `cluster` (an empty `to` is every linked
/// cluster).
fn exported_to(s: &ExportedService, cluster: &str) -> bool {
    s.to.is_empty() || s.to.iter().any(|c| c.as_str() == cluster)
}

/// `own` may be a wildcard bind (0.0.0.0:15443): then any address on the
/// same port counts as the gateway itself.
fn is_same(own: SocketAddr, addr: SocketAddr) -> bool {
    own.port() == addr.port() && (own.ip().is_unspecified() || own.ip() == addr.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Index {
        let t: ExportTable = serde_yaml_ng::from_str(
            r#"
services:
  - name: reviews
    namespace: shop
    ports: [9080]
    endpoints:
      - { address: "127.0.20.1:15006" }
      - { address: "127.0.20.2:15006", health: unhealthy }
  - name: ratings
    ports: [80, 81]
    endpoints: []
"#,
        )
        .unwrap();
        Index::from(t)
    }

    const OWN: &[SocketAddr] = &[];

    #[test]
    fn a_service_exported_to_some_clusters_refuses_the_others() {
        let t: ExportTable = serde_yaml_ng::from_str(
            r#"
services:
  - { name: reviews, namespace: shop, ports: [9080], to: [west],
      endpoints: [{ address: "127.0.20.1:15006" }] }
  - { name: ratings, ports: [80], endpoints: [{ address: "127.0.20.3:15006" }] }
"#,
        )
        .unwrap();
        let t = Index::from(t);
        for authority in ["reviews.shop:9080", "127.0.20.1:15006"] {
            let d = t.decide(authority, OWN, |_| 0).unwrap();
            assert_eq!(t.check_source(&d, "west"), Ok(()));
            let e = t.check_source(&d, "central").unwrap_err();
            assert_eq!(e.reason(), "not_exported_to");
            assert_eq!(e.status(), http::StatusCode::FORBIDDEN);
            assert_eq!(e.service_label(), "reviews.shop");
        }
        // Exported to all: any linked cluster may call.
        let d = t.decide("ratings.default:80", OWN, |_| 0).unwrap();
        assert_eq!(t.check_source(&d, "central"), Ok(()));
    }

    #[test]
    fn endpoint_authority_must_be_in_the_table() {
        let t = table();
        let d = t.decide("127.0.20.1:15006", OWN, |_| 0).unwrap();
        assert_eq!(d.service, "reviews.shop");
        assert_eq!(d.target, "127.0.20.1:15006".parse().unwrap());
        // An unhealthy endpoint is still an exported one: the caller chose it.
        assert!(t.decide("127.0.20.2:15006", OWN, |_| 0).is_ok());
        let e = t.decide("127.0.20.9:15006", OWN, |_| 0).unwrap_err();
        assert_eq!(e.reason(), "unknown_endpoint");
        assert_eq!(e.status(), http::StatusCode::FORBIDDEN);
    }

    #[test]
    fn service_authority_picks_a_healthy_endpoint_on_an_exported_port() {
        let t = table();
        for i in 0..4 {
            let d = t.decide("reviews.shop:9080", OWN, |_| i).unwrap();
            assert_eq!(d.target, "127.0.20.1:15006".parse().unwrap());
        }
        let cases = [
            ("reviews.shop:80", "unknown_port"),
            ("details.shop:9080", "not_exported"),
            ("ratings.default:80", "no_healthy_endpoint"),
            ("reviews:9080", "bad_authority"),
            ("a.b.c:80", "bad_authority"),
            ("reviews.shop", "bad_authority"),
            ("reviews.shop:x", "bad_authority"),
        ];
        for (authority, reason) in cases {
            let e = t.decide(authority, OWN, |_| 0).unwrap_err();
            assert_eq!(e.reason(), reason, "{authority}: {e}");
        }
    }

    #[test]
    fn the_gateway_itself_is_never_a_target() {
        let mut raw = table().table().clone();
        raw.services[0].endpoints.push(ExportedEndpoint {
            address: "127.0.20.3:15443".parse().unwrap(),
            health: Health::Healthy,
        });
        let t = Index::from(raw);
        let own = [
            "0.0.0.0:15443".parse().unwrap(),
            "127.0.0.1:15021".parse().unwrap(),
        ];
        for a in ["127.0.20.3:15443", "127.0.0.1:15021"] {
            assert_eq!(
                t.decide(a, &own, |_| 0).unwrap_err().reason(),
                "self_target"
            );
        }
        // By service name the gateway's own address is skipped.
        for i in 0..2 {
            let d = t.decide("reviews.shop:9080", &own, |_| i).unwrap();
            assert_eq!(d.target, "127.0.20.1:15006".parse().unwrap());
        }
    }

    #[test]
    fn validation_names_the_bad_service() {
        let mut t = table().table().clone();
        assert_eq!(t.validate(), Ok(()));
        t.services[1].endpoints = t.services[0].endpoints.clone();
        let e = t.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("services[1]: endpoint 127.0.20.1:15006"),
            "{e}"
        );
        t.services[1] = t.services[0].clone();
        t.services[1].endpoints.clear();
        let e = t.validate().unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        t.services[1].name = "Bad_Name".into();
        let e = t.validate().unwrap_err().to_string();
        assert!(e.contains("name \"Bad_Name\""), "{e}");
    }

    #[test]
    fn table_refuses_unknown_fields() {
        let e =
            serde_yaml_ng::from_str::<ExportTable>("services: [{ name: a, ports: [1], vip: x }]")
                .unwrap_err();
        assert!(e.to_string().contains("unknown field `vip`"), "{e}");
    }

    #[test]
    fn only_linked_clusters_are_admitted_and_open_tunnels_follow_the_table() {
        let c = |s: &str| ClusterName::new(s).unwrap();
        let t: ExportTable = serde_yaml_ng::from_str(
            r#"
services:
  - { name: reviews, namespace: shop, ports: [9080], to: [west],
      endpoints: [{ address: "127.0.20.1:15006" }] }
  - { name: ratings, ports: [80], endpoints: [{ address: "127.0.20.3:15006" }] }
"#,
        )
        .unwrap();
        // Without links (a fixed table) every cluster may call.
        let open = Index::from(t.clone());
        assert!(
            open.admit("north", "ratings.default:80", OWN, |_| 0)
                .is_ok()
        );
        let linked = [c("west"), c("central")];
        let idx = Index::from(t).with_linked(&linked);
        let cases = [
            ("west", "reviews.shop:9080", Ok("reviews.shop")),
            ("west", "127.0.20.1:15006", Ok("reviews.shop")),
            ("central", "ratings.default:80", Ok("ratings.default")),
            ("central", "reviews.shop:9080", Err("not_exported_to")),
            ("north", "ratings.default:80", Err("not_linked")),
            // An unlinked caller learns nothing: not_linked, not not_exported.
            ("north", "details.shop:9080", Err("not_linked")),
            ("west", "details.shop:9080", Err("not_exported")),
        ];
        for (from, authority, want) in cases {
            let got = idx
                .admit(from, authority, OWN, |_| 0)
                .map(|d| d.service)
                .map_err(|r| r.reason());
            assert_eq!(got, want.map(str::to_owned), "{from} -> {authority}");
        }
        assert!(idx.still_admits("west", "reviews.shop"));
        assert!(!idx.still_admits("central", "reviews.shop"));
        assert!(!idx.still_admits("north", "ratings.default"));
        assert!(!idx.still_admits("west", "gone.default"));
        let unlinked = Index::from(idx.table().clone()).with_linked(&[c("central")]);
        assert!(!unlinked.still_admits("west", "reviews.shop"));
        assert!(unlinked.still_admits("central", "ratings.default"));
    }
}
