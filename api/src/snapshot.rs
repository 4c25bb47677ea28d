//! The versioned configuration snapshot a controller pushes to proxies.
//!
//! A snapshot is the whole world a proxy needs to decide where a request goes
//! and whether an inbound peer may talk to its workload: the local cluster and
//! locality, the services with their VIPs, ports and endpoints in every
//! cluster, routes (timeouts, retries), traffic policy (ordered failover plus
//! `distribute` weights), passive outlier detection and authorization
//! policies. Every field has a sensible default except the ones that identify
//! things. Parse with [`Snapshot::from_yaml`], which also runs
//! [`Snapshot::validate`]; errors name the field and the bad value.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterName, Locality, NameError};
use crate::identity::{IdentityError, SpiffeId, TrustDomain};

/// Why a snapshot was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("cannot parse snapshot yaml: {0}")]
    Parse(#[source] serde_yaml_ng::Error),
    #[error("{field}: duplicate {what} {value:?}")]
    Duplicate {
        field: String,
        what: &'static str,
        value: String,
    },
    #[error("{field}: cluster {value:?} is not known; known clusters: {known}")]
    UnknownCluster {
        field: String,
        value: String,
        known: String,
    },
    #[error("{field}: weights sum to {sum}; they must sum to 100")]
    WeightSum { field: String, sum: u64 },
    #[error("{field}: {value:?} is invalid: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
}

impl SnapshotError {
    fn invalid(
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// The field path the error is about (`services[1].vip`), if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Parse(_) => None,
            Self::Duplicate { field, .. }
            | Self::UnknownCluster { field, .. }
            | Self::WeightSum { field, .. }
            | Self::Invalid { field, .. } => Some(field),
        }
    }
}

/// Everything a proxy knows, at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Monotonic version; a proxy ignores a snapshot older than the one it has.
    pub version: u64,
    /// The cluster and locality of the proxy receiving the snapshot.
    pub local: LocalPlace,
    /// Remote clusters this one is linked to (the local one is implied).
    #[serde(default)]
    pub clusters: Vec<ClusterName>,
    #[serde(default)]
    pub services: Vec<Service>,
    /// Only in the snapshot of the cluster's east-west gateways: what they
    /// let linked clusters reach (`None` for proxies and DNS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exports: Option<crate::exports::ExportTable>,
}

/// Where the receiving proxy runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalPlace {
    pub cluster: ClusterName,
    #[serde(default)]
    pub locality: Locality,
}

/// A global service: `<name>.<namespace>.svc.clusterset.local`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Loopback address the local proxy listens on for this service (127.0.0.0/8).
    pub vip: IpAddr,
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Per path-prefix settings; the longest matching prefix wins.
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub traffic: TrafficPolicy,
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
    #[serde(default)]
    pub authorization: Vec<AuthorizationPolicy>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

impl Service {
    /// The route for an (already normalized) request path: longest prefix
    /// match, or the default route when none matches.
    pub fn route_for(&self, path: &str) -> Route {
        self.routes
            .iter()
            .filter(|r| path_has_prefix(path, &r.path_prefix))
            .max_by_key(|r| r.path_prefix.len())
            .cloned()
            .unwrap_or_default()
    }

    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// Segment-aware prefix match: `/admin` matches `/admin` and `/admin/x`, not
/// `/administrator`; a prefix ending in `/` matches anything under it.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http1,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    pub fn is_http(self) -> bool {
        !matches!(self, Self::Tcp)
    }
}

/// One instance of a service: the inbound address of its sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub cluster: ClusterName,
    #[serde(default)]
    pub locality: Locality,
    #[serde(default)]
    pub health: Health,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The SPIFFE ID the destination sidecar must present.
    pub identity: SpiffeId,
    /// East-west gateway(s) to reach this endpoint through; required for
    /// endpoints in another cluster, empty for local ones.
    #[serde(default)]
    pub gateways: Vec<SocketAddr>,
}

fn default_weight() -> u32 {
    1
}

/// Upper bound of an endpoint weight.
pub const MAX_ENDPOINT_WEIGHT: u32 = 1000;

/// Health as pushed by the controller (active checks, peer sync).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Healthy,
    Unhealthy,
    /// Imported from a peer that is currently unreachable.
    Stale,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    #[serde(default = "default_timeout", with = "duration_str")]
    pub timeout: Duration,
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn default_prefix() -> String {
    "/".to_owned()
}
fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

impl Default for Route {
    fn default() -> Self {
        Self {
            path_prefix: default_prefix(),
            timeout: default_timeout(),
            retry: RetryPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Retries after the first try (0 disables retries).
    pub attempts: u32,
    pub retry_on: Vec<RetryOn>,
    pub budget: RetryBudgetConfig,
}

/// Upper bound of [`RetryPolicy::attempts`].
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 2,
            // A reset after the request left is retried only for
            // idempotent methods (see `retry::decide`): a gateway or
            // sidecar that died mid-request then costs no failed GET.
            retry_on: vec![
                RetryOn::ConnectFailure,
                RetryOn::RefusedStream,
                RetryOn::Reset,
                RetryOn::GatewayError,
            ],
            budget: RetryBudgetConfig::default(),
        }
    }
}

/// Conditions that make a try retryable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The connection (or tunnel) could not be established: nothing was sent.
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM: the peer did not process the request.
    RefusedStream,
    /// The connection was reset after the request was sent.
    Reset,
    /// 502, 503 or 504.
    GatewayError,
    /// Any 5xx.
    #[serde(rename = "5xx")]
    ServerError,
}

/// Retries may add at most `percent`% of requests over `window`, plus a floor
/// of `min_per_second` retries per second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    pub percent: f64,
    pub min_per_second: u32,
    #[serde(with = "duration_str")]
    pub window: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            percent: 20.0,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrafficPolicy {
    /// Clusters to fail over to, in order, once the local cluster's tiers
    /// cannot take all traffic. Clusters not listed come last.
    pub failover: Vec<ClusterName>,
    /// Locality weights; the first rule whose `from` matches the caller wins.
    pub distribute: Vec<Distribute>,
    /// A tier with healthy share `h` takes `min(1, h * factor)` of traffic.
    pub overprovisioning_factor: f64,
    pub load_balancer: LoadBalancer,
}

impl Default for TrafficPolicy {
    fn default() -> Self {
        Self {
            failover: Vec::new(),
            distribute: Vec::new(),
            overprovisioning_factor: 1.4,
            load_balancer: LoadBalancer::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency (per connection for TCP).
    #[default]
    P2cEwma,
    RoundRobin,
}

/// `from: us-east/*` -> `to: { "us-east/*": 80, "us-west/*": 20 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distribute {
    pub from: LocalityPattern,
    pub to: BTreeMap<LocalityPattern, u32>,
}

/// A locality with a trailing wildcard: `*`, `us-east/*`, `us-east/z1/*`, or
/// a full locality (`us-east` alone means the whole region).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LocalityPattern {
    /// Concrete leading parts (region, zone, subzone); the rest is a wildcard.
    parts: Vec<String>,
}

impl LocalityPattern {
    pub fn matches(&self, l: &Locality) -> bool {
        let have = [&l.region, &l.zone, &l.subzone];
        self.parts.iter().zip(have).all(|(p, h)| p == h)
    }

    /// How many parts are concrete: more specific patterns win overlaps.
    pub fn specificity(&self) -> usize {
        self.parts.len()
    }
}

impl FromStr for LocalityPattern {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let concrete = match s.strip_suffix('*') {
            Some("") => return Ok(Self { parts: Vec::new() }),
            Some(rest) => rest.strip_suffix('/').ok_or_else(|| NameError::BadChar {
                what: "locality pattern",
                value: s.to_owned(),
                bad: '*',
            })?,
            None => s,
        };
        let l: Locality = concrete.parse()?;
        let parts: Vec<String> = [l.region, l.zone, l.subzone]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            return Err(NameError::Empty { what: "region" });
        }
        Ok(Self { parts })
    }
}

impl TryFrom<String> for LocalityPattern {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<LocalityPattern> for String {
    fn from(p: LocalityPattern) -> Self {
        p.to_string()
    }
}

impl fmt::Display for LocalityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.parts.is_empty() {
            return f.write_str("*");
        }
        write!(f, "{}", self.parts.join("/"))?;
        if self.parts.len() < 3 {
            f.write_str("/*")?;
        }
        Ok(())
    }
}

/// Passive health: eject an endpoint after consecutive failures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetection {
    /// Consecutive 5xx or connect failures before ejection; 0 disables.
    pub consecutive_failures: u32,
    /// First ejection lasts this long; the n-th lasts `base * 2^(n-1)`.
    #[serde(with = "duration_str")]
    pub base_ejection_time: Duration,
    #[serde(with = "duration_str")]
    pub max_ejection_time: Duration,
    /// Never eject more than this share of the endpoint set (at least one).
    pub max_ejection_percent: u8,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 100,
        }
    }
}

/// Authorization for some ports of a service. Deny rules are checked first;
/// then, if any allow rule exists for the port, one must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationPolicy {
    pub name: String,
    /// Ports this applies to; empty means every port of the service.
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub deny: Vec<AuthzRule>,
    #[serde(default)]
    pub allow: Vec<AuthzRule>,
    /// How request paths on these ports are canonicalized and matched
    /// (opt-ins; the default refuses every ambiguous form). Policies that
    /// cover the same port must agree on it.
    #[serde(default, skip_serializing_if = "PathPolicy::is_default")]
    pub path: PathPolicy,
}

impl AuthorizationPolicy {
    pub fn applies_to(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }

    /// True when this policy and `other` cover at least one common port.
    pub fn overlaps(&self, other: &Self) -> bool {
        self.ports.is_empty()
            || other.ports.is_empty()
            || self.ports.iter().any(|p| other.ports.contains(p))
    }
}

/// Path handling of a service port, set in its authorization policies. The
/// destination sidecar canonicalizes every request path (dot segments,
/// merged slashes, percent-decoding of unreserved characters), decides on
/// the canonical path and forwards exactly that path; forms that cannot be
/// canonicalized unambiguously are refused unless an opt-in here says how
/// to treat them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathPolicy {
    /// `%2F`, `%5C` and a raw `\`.
    pub escaped_slashes: EscapedSlashes,
    /// `;` in a segment (`/a;jsessionid=1/b`).
    pub parameters: PathParameters,
    /// Rule paths match regardless of ASCII case (`/ADMIN` is `/admin`);
    /// the forwarded path keeps its case.
    pub case_insensitive: bool,
}

impl PathPolicy {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// What the destination sidecar does with `%2F`, `%5C` and a raw `\`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// Refuse the request with `400` (the default).
    #[default]
    Reject,
    /// Treat each as `/` (then merge and resolve dot segments).
    Decode,
    /// Keep them as data inside their segment, encoded (`%2F`, `%5C`): for
    /// apps whose path segments are opaque keys. Rules then see one
    /// segment where an app that decodes them sees several.
    Keep,
}

/// What the destination sidecar does with `;` inside a path segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathParameters {
    /// Refuse the request with `400` (the default): servlet containers
    /// drop `;...` from a segment, so `/x/..;/admin` is `/admin` to them.
    #[default]
    Reject,
    /// Keep `;` as an ordinary character of its segment.
    Keep,
}

/// A rule matches when every non-empty condition matches (empty = any).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzRule {
    pub from: Vec<PrincipalPattern>,
    /// Normalized path prefixes, matched segment by segment.
    pub paths: Vec<String>,
    /// Upper-case HTTP methods.
    pub methods: Vec<String>,
    /// Host names, compared case-insensitively without port.
    pub hosts: Vec<String>,
}

impl AuthzRule {
    /// True when the rule needs an HTTP request to be evaluated.
    pub fn has_http_conditions(&self) -> bool {
        !(self.paths.is_empty() && self.methods.is_empty() && self.hosts.is_empty())
    }
}

/// A source identity pattern: an exact SPIFFE ID, `spiffe://td/ns/<ns>/*`,
/// `spiffe://td/*`, or `*` (any authenticated peer).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PrincipalPattern {
    Any,
    TrustDomain(TrustDomain),
    Namespace {
        trust_domain: TrustDomain,
        namespace: String,
    },
    Exact(SpiffeId),
}

impl PrincipalPattern {
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Any => true,
            Self::TrustDomain(td) => id.trust_domain_str() == td.as_str(),
            Self::Namespace {
                trust_domain,
                namespace,
            } => {
                id.trust_domain_str() == trust_domain.as_str()
                    && id
                        .path()
                        .strip_prefix("/ns/")
                        .and_then(|r| r.split('/').next())
                        == Some(namespace.as_str())
            }
            Self::Exact(e) => e == id,
        }
    }
}

impl FromStr for PrincipalPattern {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            return Ok(Self::Any);
        }
        let Some(base) = s.strip_suffix("/*") else {
            return SpiffeId::parse(s).map(Self::Exact);
        };
        let id = SpiffeId::parse(base)?;
        let path = id.path();
        if path.is_empty() {
            return Ok(Self::TrustDomain(id.trust_domain()));
        }
        match path.strip_prefix("/ns/") {
            Some(ns) if !ns.contains('/') => Ok(Self::Namespace {
                trust_domain: id.trust_domain(),
                namespace: ns.to_owned(),
            }),
            // Only the trust-domain and namespace wildcards exist.
            _ => Err(IdentityError::PathChar('*')),
        }
    }
}

impl TryFrom<String> for PrincipalPattern {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PrincipalPattern> for String {
    fn from(p: PrincipalPattern) -> Self {
        p.to_string()
    }
}

impl fmt::Display for PrincipalPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::TrustDomain(td) => write!(f, "spiffe://{td}/*"),
            Self::Namespace {
                trust_domain,
                namespace,
            } => write!(f, "spiffe://{trust_domain}/ns/{namespace}/*"),
            Self::Exact(id) => write!(f, "{id}"),
        }
    }
}

impl Snapshot {
    /// Parses YAML and validates the result.
    pub fn from_yaml(text: &str) -> Result<Self, SnapshotError> {
        let snap: Self = crate::yaml::from_str(text).map_err(|e| match e {
            crate::yaml::YamlError::TooDeep(reason) => {
                SnapshotError::invalid("<document>", "yaml", reason)
            }
            crate::yaml::YamlError::Parse(e) => SnapshotError::Parse(e),
        })?;
        snap.validate()?;
        Ok(snap)
    }

    /// Every cluster the snapshot may name: the local one and the linked ones.
    pub fn known_clusters(&self) -> BTreeSet<&ClusterName> {
        std::iter::once(&self.local.cluster)
            .chain(&self.clusters)
            .collect()
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// Checks what serde cannot: uniqueness, references, ranges and shapes.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let mut seen = HashSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            if !seen.insert(c) || *c == self.local.cluster {
                return Err(dup(format!("clusters[{i}]"), "cluster", c));
            }
        }
        let known = self.known_clusters();
        let mut names = HashSet::new();
        let mut vips = HashSet::new();
        for (i, svc) in self.services.iter().enumerate() {
            let f = format!("services[{i}]");
            check_label(&format!("{f}.name"), &svc.name)?;
            check_label(&format!("{f}.namespace"), &svc.namespace)?;
            if !names.insert((&svc.namespace, &svc.name)) {
                let v = format!("{}/{}", svc.namespace, svc.name);
                return Err(dup(format!("{f}.name"), "service", v));
            }
            check_vip(&format!("{f}.vip"), svc.vip)?;
            if !vips.insert(svc.vip) {
                return Err(dup(format!("{f}.vip"), "vip", svc.vip));
            }
            validate_service(&f, svc, &self.local.cluster, &known)?;
        }
        if let Some(t) = &self.exports {
            t.validate()
                .map_err(|e| SnapshotError::invalid("exports", "export table", e.to_string()))?;
        }
        Ok(())
    }
}

fn dup(field: String, what: &'static str, value: impl fmt::Display) -> SnapshotError {
    SnapshotError::Duplicate {
        field,
        what,
        value: value.to_string(),
    }
}

fn check_label(field: &str, v: &str) -> Result<(), SnapshotError> {
    if crate::label::is_service_label(v) {
        Ok(())
    } else {
        Err(SnapshotError::invalid(
            field,
            v,
            "must be a dns label: lower-case letters, digits and '-', starting with a letter",
        ))
    }
}

fn check_vip(field: &str, vip: IpAddr) -> Result<(), SnapshotError> {
    let reason = match vip {
        IpAddr::V6(_) => "must be an ipv4 loopback address (127.0.0.0/8)",
        IpAddr::V4(v4) if !v4.is_loopback() => "must be in 127.0.0.0/8",
        IpAddr::V4(v4) if v4 == Ipv4Addr::LOCALHOST => "127.0.0.1 is the host's own loopback",
        IpAddr::V4(v4) if matches!(v4.octets()[3], 0 | 255) => "must not end in .0 or .255",
        IpAddr::V4(_) => return Ok(()),
    };
    Err(SnapshotError::invalid(field, vip, reason))
}

fn check_cluster(
    field: String,
    c: &ClusterName,
    known: &BTreeSet<&ClusterName>,
) -> Result<(), SnapshotError> {
    if known.contains(c) {
        return Ok(());
    }
    let list: Vec<&str> = known.iter().map(|c| c.as_str()).collect();
    Err(SnapshotError::UnknownCluster {
        field,
        value: c.to_string(),
        known: list.join(", "),
    })
}

fn validate_service(
    f: &str,
    svc: &Service,
    local: &ClusterName,
    known: &BTreeSet<&ClusterName>,
) -> Result<(), SnapshotError> {
    if svc.ports.is_empty() {
        return Err(SnapshotError::invalid(
            format!("{f}.ports"),
            "[]",
            "needs at least one port",
        ));
    }
    let mut ports = HashSet::new();
    for (j, p) in svc.ports.iter().enumerate() {
        if p.port == 0 {
            return Err(SnapshotError::invalid(
                format!("{f}.ports[{j}].port"),
                0,
                "must not be 0",
            ));
        }
        if !ports.insert(p.port) {
            return Err(dup(format!("{f}.ports[{j}].port"), "port", p.port));
        }
    }
    let mut addrs = HashSet::new();
    for (j, ep) in svc.endpoints.iter().enumerate() {
        let ef = format!("{f}.endpoints[{j}]");
        if !addrs.insert(ep.address) {
            return Err(dup(format!("{ef}.address"), "endpoint", ep.address));
        }
        check_cluster(format!("{ef}.cluster"), &ep.cluster, known)?;
        if ep.weight == 0 || ep.weight > MAX_ENDPOINT_WEIGHT {
            let why = format!("must be between 1 and {MAX_ENDPOINT_WEIGHT}");
            return Err(SnapshotError::invalid(
                format!("{ef}.weight"),
                ep.weight,
                why,
            ));
        }
        if ep.cluster != *local && ep.gateways.is_empty() {
            let why = "an endpoint in another cluster needs at least one gateway";
            return Err(SnapshotError::invalid(format!("{ef}.gateways"), "[]", why));
        }
        if ep.cluster == *local && !ep.gateways.is_empty() {
            let why = "a local endpoint is reached directly, without a gateway";
            let v = format!("{:?}", ep.gateways);
            return Err(SnapshotError::invalid(format!("{ef}.gateways"), v, why));
        }
    }
    validate_routes(&format!("{f}.routes"), &svc.routes)?;
    validate_traffic(&format!("{f}.traffic"), &svc.traffic, known)?;
    validate_outlier(&format!("{f}.outlier_detection"), &svc.outlier_detection)?;
    validate_authorization(
        &format!("{f}.authorization"),
        &svc.authorization,
        Some(&svc.ports),
    )
}

/// Checks a service's routes: normalized, unique path prefixes, positive
/// timeouts, retry attempts and budgets in range. `field` prefixes the
/// field paths of errors (`routes` gives `routes[0].timeout`).
pub fn validate_routes(field: &str, routes: &[Route]) -> Result<(), SnapshotError> {
    let mut prefixes = HashSet::new();
    for (j, r) in routes.iter().enumerate() {
        let rf = format!("{field}[{j}]");
        check_path(&format!("{rf}.path_prefix"), &r.path_prefix)?;
        if !prefixes.insert(&r.path_prefix) {
            return Err(dup(
                format!("{rf}.path_prefix"),
                "route prefix",
                &r.path_prefix,
            ));
        }
        if r.timeout.is_zero() {
            return Err(SnapshotError::invalid(
                format!("{rf}.timeout"),
                "0s",
                "must be positive",
            ));
        }
        validate_retry(&format!("{rf}.retry"), &r.retry)?;
    }
    Ok(())
}

/// Checks a service's authorization policies: unique names, normalized
/// paths, upper-case methods and host names; with the service's `ports`,
/// also that every policy names ports of the service and that paths,
/// methods and hosts are only used on HTTP ports. A controller checks a
/// policy with `ports: None` before it knows the service, and again with
/// the ports when it builds a snapshot. `field` prefixes the field paths
/// of errors (`authorization` gives `authorization[0].deny[1].paths[0]`).
pub fn validate_authorization(
    field: &str,
    policies: &[AuthorizationPolicy],
    ports: Option<&[ServicePort]>,
) -> Result<(), SnapshotError> {
    let mut pnames = HashSet::new();
    for (j, p) in policies.iter().enumerate() {
        let pf = format!("{field}[{j}]");
        if !pnames.insert(&p.name) {
            return Err(dup(format!("{pf}.name"), "policy", &p.name));
        }
        validate_policy(&pf, p, ports)?;
        let earlier = policies[..j]
            .iter()
            .find(|q| q.overlaps(p) && q.path != p.path);
        if let Some(q) = earlier {
            let why = format!(
                "policies covering the same port must agree on `path`, and {:?} differs",
                q.name
            );
            return Err(SnapshotError::invalid(format!("{pf}.path"), &p.name, why));
        }
    }
    Ok(())
}

fn validate_retry(f: &str, r: &RetryPolicy) -> Result<(), SnapshotError> {
    if r.attempts > MAX_RETRY_ATTEMPTS {
        let why = format!("at most {MAX_RETRY_ATTEMPTS}");
        return Err(SnapshotError::invalid(
            format!("{f}.attempts"),
            r.attempts,
            why,
        ));
    }
    let b = &r.budget;
    if !(b.percent.is_finite() && (0.0..=100.0).contains(&b.percent)) {
        let why = "must be between 0 and 100";
        return Err(SnapshotError::invalid(
            format!("{f}.budget.percent"),
            b.percent,
            why,
        ));
    }
    if b.window < Duration::from_secs(1) || b.window > Duration::from_secs(600) {
        let why = "must be between 1s and 10m";
        let v = duration_str::format(b.window);
        return Err(SnapshotError::invalid(format!("{f}.budget.window"), v, why));
    }
    Ok(())
}

fn validate_traffic(
    f: &str,
    t: &TrafficPolicy,
    known: &BTreeSet<&ClusterName>,
) -> Result<(), SnapshotError> {
    let mut seen = HashSet::new();
    for (i, c) in t.failover.iter().enumerate() {
        check_cluster(format!("{f}.failover[{i}]"), c, known)?;
        if !seen.insert(c) {
            return Err(dup(format!("{f}.failover[{i}]"), "cluster", c));
        }
    }
    let factor = t.overprovisioning_factor;
    if !(factor.is_finite() && (1.0..=10.0).contains(&factor)) {
        let why = "must be between 1.0 and 10.0";
        return Err(SnapshotError::invalid(
            format!("{f}.overprovisioning_factor"),
            factor,
            why,
        ));
    }
    let mut froms = HashSet::new();
    for (i, d) in t.distribute.iter().enumerate() {
        let df = format!("{f}.distribute[{i}]");
        if !froms.insert(&d.from) {
            return Err(dup(format!("{df}.from"), "pattern", &d.from));
        }
        if d.to.is_empty() {
            return Err(SnapshotError::invalid(
                format!("{df}.to"),
                "{}",
                "needs at least one locality",
            ));
        }
        let sum: u64 = d.to.values().map(|w| u64::from(*w)).sum();
        if sum != 100 {
            return Err(SnapshotError::WeightSum {
                field: format!("{df}.to"),
                sum,
            });
        }
    }
    Ok(())
}

/// Ranges of an outlier-detection setting (a snapshot's, or a policy's).
pub fn validate_outlier(f: &str, o: &OutlierDetection) -> Result<(), SnapshotError> {
    if o.max_ejection_percent > 100 {
        let why = "must be between 0 and 100";
        let field = format!("{f}.max_ejection_percent");
        return Err(SnapshotError::invalid(field, o.max_ejection_percent, why));
    }
    if o.base_ejection_time.is_zero() {
        let field = format!("{f}.base_ejection_time");
        return Err(SnapshotError::invalid(field, "0s", "must be positive"));
    }
    if o.max_ejection_time < o.base_ejection_time {
        let v = duration_str::format(o.max_ejection_time);
        let why = "must not be shorter than base_ejection_time";
        return Err(SnapshotError::invalid(
            format!("{f}.max_ejection_time"),
            v,
            why,
        ));
    }
    Ok(())
}

fn validate_policy(
    f: &str,
    p: &AuthorizationPolicy,
    ports: Option<&[ServicePort]>,
) -> Result<(), SnapshotError> {
    let find = |port: u16| ports.and_then(|all| all.iter().find(|sp| sp.port == port));
    for (k, port) in p.ports.iter().enumerate() {
        if *port == 0 {
            return Err(SnapshotError::invalid(
                format!("{f}.ports[{k}]"),
                0,
                "must not be 0",
            ));
        }
        if ports.is_some() && find(*port).is_none() {
            let why = "not a port of this service";
            return Err(SnapshotError::invalid(format!("{f}.ports[{k}]"), port, why));
        }
    }
    // Without the service's ports, HTTP conditions cannot be judged yet.
    let all_tcp = match ports {
        None => false,
        Some(all) if p.ports.is_empty() => all.iter().all(|sp| !sp.protocol.is_http()),
        Some(_) => p
            .ports
            .iter()
            .all(|port| find(*port).is_some_and(|sp| !sp.protocol.is_http())),
    };
    let deny = p.deny.iter().enumerate().map(|(k, r)| ("deny", k, r));
    let allow = p.allow.iter().enumerate().map(|(k, r)| ("allow", k, r));
    for (kind, idx, rule) in deny.chain(allow) {
        let rf = format!("{f}.{kind}[{idx}]");
        if all_tcp && rule.has_http_conditions() {
            let why = "paths, methods and hosts need an http port";
            return Err(SnapshotError::invalid(rf, "tcp", why));
        }
        for (m, path) in rule.paths.iter().enumerate() {
            check_path(&format!("{rf}.paths[{m}]"), path)?;
        }
        for (m, method) in rule.methods.iter().enumerate() {
            let ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
            if !ok {
                let why = "must be an upper-case http method";
                return Err(SnapshotError::invalid(
                    format!("{rf}.methods[{m}]"),
                    method,
                    why,
                ));
            }
        }
        for (m, host) in rule.hosts.iter().enumerate() {
            let ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'*'));
            if !ok {
                let why = "must be a host name";
                return Err(SnapshotError::invalid(
                    format!("{rf}.hosts[{m}]"),
                    host,
                    why,
                ));
            }
        }
    }
    Ok(())
}

/// A configured path must already be in normalized form, so that it can be
/// compared with normalized request paths.
fn check_path(field: &str, p: &str) -> Result<(), SnapshotError> {
    let why = if !p.starts_with('/') {
        "must start with '/'"
    } else if p.contains("//") {
        "must not contain '//'"
    } else if p.split('/').any(|s| s == "." || s == "..") {
        "must not contain '.' or '..' segments"
    } else if p
        .bytes()
        .any(|b| matches!(b, b'%' | b'\\' | b'?' | b'#') || !b.is_ascii_graphic())
    {
        "must be a plain path without '%', '\\', '?', '#' or spaces"
    } else {
        return Ok(());
    };
    Err(SnapshotError::invalid(field, p, why))
}

/// Durations written as `250ms`, `15s`, `5m` or `1h`.
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// The one duration grammar of configs and command lines: a whole
    /// number with `ms`, `s`, `m`, `h` or `d` (`250ms`, `15s`, `24h`, `7d`).
    pub fn parse(s: &str) -> Option<Duration> {
        let split = s.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = s.split_at(split);
        let n: u64 = n.parse().ok()?;
        let ms = match unit {
            "ms" => n,
            "s" => n.checked_mul(1_000)?,
            "m" => n.checked_mul(60_000)?,
            "h" => n.checked_mul(3_600_000)?,
            "d" => n.checked_mul(86_400_000)?,
            _ => return None,
        };
        Some(Duration::from_millis(ms))
    }

    pub fn format(d: Duration) -> String {
        let ms = d.as_millis();
        if ms % 1000 != 0 {
            format!("{ms}ms")
        } else {
            format!("{}s", ms / 1000)
        }
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?}: use a number with ms, s, m, h or d, e.g. 250ms or 15s"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version: 7
local: { cluster: east, locality: us-east/us-east-1a }
clusters: [west, central]
services:
  - name: web
    namespace: shop
    vip: 127.77.0.10
    ports:
      - { port: 80, protocol: http1 }
      - { port: 9090, protocol: grpc }
    endpoints:
      - address: 10.0.0.1:15006
        cluster: east
        locality: us-east/us-east-1a
        identity: spiffe://strait.local/ns/shop/sa/web
      - address: 10.1.0.1:15006
        cluster: west
        locality: us-west/us-west-1a
        health: stale
        weight: 3
        identity: spiffe://strait.local/ns/shop/sa/web
        gateways: [192.0.2.10:15443]
    routes:
      - path_prefix: /api
        timeout: 250ms
        retry: { attempts: 3, retry_on: [connect-failure, 5xx], budget: { percent: 10, min_per_second: 5, window: 30s } }
    traffic:
      failover: [west, central]
      distribute:
        - from: us-east/*
          to: { "us-east/*": 80, "us-west/*": 20 }
      overprovisioning_factor: 1.5
    outlier_detection: { consecutive_failures: 3, base_ejection_time: 10s, max_ejection_percent: 50 }
    authorization:
      - name: admin
        ports: [80]
        deny:
          - { paths: [/admin], from: ["spiffe://strait.local/ns/guest/*"] }
        allow:
          - { from: ["spiffe://strait.local/*"], methods: [GET] }
        path: { escaped_slashes: decode, parameters: keep, case_insensitive: true }
"#;

    fn good() -> Snapshot {
        Snapshot::from_yaml(GOOD).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Applies `edit` to the good snapshot and returns the validation error.
    fn invalid(edit: impl FnOnce(&mut Snapshot)) -> SnapshotError {
        let mut s = good();
        edit(&mut s);
        s.validate().expect_err("edited snapshot should be invalid")
    }

    fn yaml_err(yaml: &str) -> String {
        Snapshot::from_yaml(yaml)
            .expect_err("should not parse")
            .to_string()
    }

    #[test]
    fn parses_a_full_snapshot_with_its_values() {
        let s = good();
        assert_eq!(s.version, 7);
        assert_eq!(s.local.locality.zone, "us-east-1a");
        let web = s.service("shop", "web").unwrap();
        assert_eq!(web.port(9090).unwrap().protocol, Protocol::Grpc);
        assert_eq!(web.endpoints[1].health, Health::Stale);
        assert_eq!(web.endpoints[1].weight, 3);
        assert_eq!(web.routes[0].timeout, Duration::from_millis(250));
        assert_eq!(
            web.routes[0].retry.retry_on,
            [RetryOn::ConnectFailure, RetryOn::ServerError]
        );
        assert_eq!(web.routes[0].retry.budget.window, Duration::from_secs(30));
        assert_eq!(web.traffic.distribute[0].to.len(), 2);
        assert_eq!(web.outlier_detection.consecutive_failures, 3);
        assert_eq!(
            web.outlier_detection.max_ejection_time,
            Duration::from_secs(300)
        );
        assert!(matches!(
            web.authorization[0].deny[0].from[0],
            PrincipalPattern::Namespace { .. }
        ));
        assert_eq!(
            web.authorization[0].path,
            PathPolicy {
                escaped_slashes: EscapedSlashes::Decode,
                parameters: PathParameters::Keep,
                case_insensitive: true,
            }
        );
    }

    #[test]
    fn fills_defaults_for_a_minimal_snapshot() {
        let s = Snapshot::from_yaml(
            "version: 1\nlocal: { cluster: east }\nservices:\n  - { name: db, vip: 127.77.0.2, ports: [{ port: 5432, protocol: tcp }] }\n",
        )
        .unwrap();
        let db = &s.services[0];
        assert_eq!(db.namespace, "default");
        assert!(db.endpoints.is_empty());
        assert_eq!(db.traffic.overprovisioning_factor, 1.4);
        assert_eq!(db.traffic.load_balancer, LoadBalancer::P2cEwma);
        let r = db.route_for("/x");
        assert_eq!(r.timeout, Duration::from_secs(15));
        assert_eq!(r.retry.attempts, 2);
        assert_eq!(r.retry.budget.percent, 20.0);
        assert_eq!(db.outlier_detection, OutlierDetection::default());
    }

    #[test]
    fn round_trips_through_yaml() {
        let s = good();
        let text = serde_yaml_ng::to_string(&s).unwrap();
        assert_eq!(Snapshot::from_yaml(&text).unwrap(), s);
    }

    #[test]
    fn rejects_unknown_fields_naming_them() {
        let e = yaml_err("version: 1\nlocal: { cluster: east }\nextra: 1\n");
        assert!(e.contains("unknown field `extra`"), "{e}");
        let e = yaml_err(&GOOD.replace("weight: 3", "weight: 3\n        wieght: 3"));
        assert!(e.contains("wieght"), "{e}");
    }

    #[test]
    fn rejects_negative_weights_at_parse_naming_the_path() {
        let e = yaml_err(&GOOD.replace("\"us-west/*\": 20", "\"us-west/*\": -20"));
        assert!(e.contains("services[0].traffic.distribute[0].to"), "{e}");
        assert!(e.contains("-20"), "{e}");
        let e = yaml_err(&GOOD.replace("weight: 3", "weight: -3"));
        assert!(e.contains("endpoints[1].weight") && e.contains("-3"), "{e}");
    }

    #[test]
    fn rejects_bad_scalars_at_parse() {
        for (from, to, needle) in [
            ("protocol: grpc", "protocol: quic", "quic"),
            ("health: stale", "health: sick", "sick"),
            ("timeout: 250ms", "timeout: 250", "invalid duration"),
            ("timeout: 250ms", "timeout: 2 s", "invalid duration"),
            ("vip: 127.77.0.10", "vip: nope", "vip"),
            ("cluster: west\n", "cluster: West\n", "West"),
            ("/ns/guest/*", "/ns/guest/sa/*", "'*'"),
            (
                "\"us-west/*\": 20",
                "\"us-west/*/x\": 20",
                "distribute[0].to",
            ),
        ] {
            assert!(GOOD.contains(from), "{from}");
            let e = yaml_err(&GOOD.replacen(from, to, 1));
            assert!(e.contains(needle), "{to}: {e}");
        }
    }

    #[test]
    fn validation_errors_name_the_field_and_value() {
        type Edit = fn(&mut Snapshot);
        let cases: &[(&str, Edit, &str)] = &[
            (
                "duplicate service",
                |s| s.services.push(s.services[0].clone()),
                "services[1].name: duplicate service \"shop/web\"",
            ),
            (
                "duplicate vip",
                |s| {
                    let mut other = s.services[0].clone();
                    other.name = "api".into();
                    s.services.push(other);
                },
                "services[1].vip: duplicate vip \"127.77.0.10\"",
            ),
            (
                "bad service name",
                |s| s.services[0].name = "Web".into(),
                "services[0].name: \"Web\" is invalid: must be a dns label",
            ),
            (
                "vip off loopback",
                |s| s.services[0].vip = "10.0.0.1".parse().unwrap(),
                "services[0].vip: \"10.0.0.1\" is invalid: must be in 127.0.0.0/8",
            ),
            (
                "vip is localhost",
                |s| s.services[0].vip = "127.0.0.1".parse().unwrap(),
                "host's own loopback",
            ),
            (
                "vip is ipv6",
                |s| s.services[0].vip = "::1".parse().unwrap(),
                "ipv4 loopback",
            ),
            (
                "vip is broadcast",
                |s| s.services[0].vip = "127.77.0.255".parse().unwrap(),
                ".255",
            ),
            (
                "no ports",
                |s| s.services[0].ports.clear(),
                "services[0].ports",
            ),
            (
                "port zero",
                |s| s.services[0].ports[0].port = 0,
                "ports[0].port",
            ),
            (
                "duplicate port",
                |s| s.services[0].ports[1].port = 80,
                "services[0].ports[1].port: duplicate port \"80\"",
            ),
            (
                "duplicate endpoint",
                |s| {
                    let ep = s.services[0].endpoints[0].clone();
                    s.services[0].endpoints.push(ep);
                },
                "endpoints[2].address: duplicate endpoint \"10.0.0.1:15006\"",
            ),
            (
                "unknown endpoint cluster",
                |s| s.services[0].endpoints[1].cluster = ClusterName::new("north").unwrap(),
                "services[0].endpoints[1].cluster: cluster \"north\" is not known; known clusters: central, east, west",
            ),
            (
                "weight zero",
                |s| s.services[0].endpoints[0].weight = 0,
                "endpoints[0].weight: \"0\" is invalid",
            ),
            (
                "weight too big",
                |s| s.services[0].endpoints[0].weight = 5000,
                "between 1 and 1000",
            ),
            (
                "remote without gateway",
                |s| s.services[0].endpoints[1].gateways.clear(),
                "endpoints[1].gateways",
            ),
            (
                "local with gateway",
                |s| {
                    s.services[0].endpoints[0]
                        .gateways
                        .push("192.0.2.1:1".parse().unwrap())
                },
                "endpoints[0].gateways",
            ),
            (
                "unknown failover cluster",
                |s| {
                    s.services[0]
                        .traffic
                        .failover
                        .push(ClusterName::new("north").unwrap())
                },
                "traffic.failover[2]: cluster \"north\" is not known",
            ),
            (
                "duplicate failover cluster",
                |s| {
                    s.services[0]
                        .traffic
                        .failover
                        .push(ClusterName::new("west").unwrap())
                },
                "traffic.failover[2]: duplicate cluster \"west\"",
            ),
            (
                "weights not summing",
                |s| {
                    s.services[0].traffic.distribute[0]
                        .to
                        .insert("us-central/*".parse().unwrap(), 5);
                },
                "traffic.distribute[0].to: weights sum to 105; they must sum to 100",
            ),
            (
                "empty distribute",
                |s| s.services[0].traffic.distribute[0].to.clear(),
                "distribute[0].to",
            ),
            (
                "duplicate from",
                |s| {
                    let d = s.services[0].traffic.distribute[0].clone();
                    s.services[0].traffic.distribute.push(d);
                },
                "distribute[1].from: duplicate pattern \"us-east/*\"",
            ),
            (
                "factor below one",
                |s| s.services[0].traffic.overprovisioning_factor = 0.5,
                "overprovisioning_factor: \"0.5\"",
            ),
            (
                "factor nan",
                |s| s.services[0].traffic.overprovisioning_factor = f64::NAN,
                "overprovisioning_factor",
            ),
            (
                "too many attempts",
                |s| s.services[0].routes[0].retry.attempts = 11,
                "routes[0].retry.attempts: \"11\"",
            ),
            (
                "budget over 100",
                |s| s.services[0].routes[0].retry.budget.percent = 150.0,
                "retry.budget.percent: \"150\"",
            ),
            (
                "zero timeout",
                |s| s.services[0].routes[0].timeout = Duration::ZERO,
                "routes[0].timeout",
            ),
            (
                "route prefix not normalized",
                |s| s.services[0].routes[0].path_prefix = "/a/../b".into(),
                "path_prefix: \"/a/../b\"",
            ),
            (
                "duplicate route",
                |s| {
                    let r = s.services[0].routes[0].clone();
                    s.services[0].routes.push(r);
                },
                "routes[1].path_prefix: duplicate route prefix",
            ),
            (
                "ejection percent",
                |s| s.services[0].outlier_detection.max_ejection_percent = 101,
                "max_ejection_percent",
            ),
            (
                "max below base",
                |s| s.services[0].outlier_detection.max_ejection_time = Duration::from_secs(1),
                "max_ejection_time: \"1s\"",
            ),
            (
                "duplicate linked cluster",
                |s| s.clusters.push(ClusterName::new("east").unwrap()),
                "clusters[2]: duplicate cluster \"east\"",
            ),
            (
                "policy port unknown",
                |s| s.services[0].authorization[0].ports = vec![81],
                "authorization[0].ports[0]: \"81\"",
            ),
            (
                "policy path not normalized",
                |s| s.services[0].authorization[0].deny[0].paths = vec!["//admin".into()],
                "authorization[0].deny[0].paths[0]: \"//admin\"",
            ),
            (
                "policy path encoded",
                |s| s.services[0].authorization[0].deny[0].paths = vec!["/%61dmin".into()],
                "deny[0].paths[0]",
            ),
            (
                "policy method lower",
                |s| s.services[0].authorization[0].allow[0].methods = vec!["get".into()],
                "allow[0].methods[0]: \"get\"",
            ),
            (
                "duplicate policy",
                |s| {
                    let p = s.services[0].authorization[0].clone();
                    s.services[0].authorization.push(p);
                },
                "authorization[1].name: duplicate policy \"admin\"",
            ),
            (
                "http rule on tcp port",
                |s| s.services[0].ports[0].protocol = Protocol::Tcp,
                "authorization[0].deny[0]: \"tcp\"",
            ),
            (
                "policies on one port disagree on path handling",
                |s| {
                    let mut p = s.services[0].authorization[0].clone();
                    p.name = "keep-slashes".into();
                    p.ports = Vec::new();
                    p.path.escaped_slashes = EscapedSlashes::Keep;
                    s.services[0].authorization.push(p);
                },
                "authorization[1].path: \"keep-slashes\"",
            ),
        ];
        for (name, edit, needle) in cases {
            let e = invalid(*edit).to_string();
            assert!(e.contains(needle), "{name}: {e}");
        }
    }

    #[test]
    fn errors_expose_the_field() {
        let e = invalid(|s| s.services[0].endpoints[0].weight = 0);
        assert_eq!(e.field(), Some("services[0].endpoints[0].weight"));
    }

    #[test]
    fn authorization_is_checked_alone_and_against_the_service_ports() {
        let svc = good().services[0].clone();
        let mut p = svc.authorization.clone();
        p[0].ports = vec![81];
        // Without the service, a port cannot be judged; with it, it is.
        validate_authorization("authorization", &p, None).unwrap();
        let e = validate_authorization("authorization", &p, Some(&svc.ports)).unwrap_err();
        assert_eq!(e.field(), Some("authorization[0].ports[0]"));
        p[0].ports = vec![0];
        let e = validate_authorization("authorization", &p, None).unwrap_err();
        assert_eq!(e.field(), Some("authorization[0].ports[0]"));
        p[0].ports.clear();
        p[0].deny[0].paths = vec!["/a/../b".into()];
        let e = validate_authorization("authorization", &p, None).unwrap_err();
        assert_eq!(e.field(), Some("authorization[0].deny[0].paths[0]"));
        assert!(e.to_string().contains("\"/a/../b\""), "{e}");
    }

    #[test]
    fn principal_patterns_match_exact_namespace_and_trust_domain() {
        let id = SpiffeId::parse("spiffe://strait.local/ns/shop/sa/web").unwrap();
        let cases = [
            ("*", true),
            ("spiffe://strait.local/*", true),
            ("spiffe://other.local/*", false),
            ("spiffe://strait.local/ns/shop/*", true),
            ("spiffe://strait.local/ns/sho/*", false),
            ("spiffe://other.local/ns/shop/*", false),
            ("spiffe://strait.local/ns/shop/sa/web", true),
            ("spiffe://strait.local/ns/shop/sa/api", false),
        ];
        for (pattern, want) in cases {
            let p: PrincipalPattern = pattern.parse().unwrap();
            assert_eq!(p.matches(&id), want, "{pattern}");
            assert_eq!(p.to_string(), pattern);
        }
        for bad in [
            "spiffe://td/ns/a/sa/*",
            "spiffe://td/x/*",
            "spiffe://td/ns/*",
            "td/*",
        ] {
            assert!(bad.parse::<PrincipalPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn locality_patterns_match_with_trailing_wildcards() {
        let l: Locality = "us-east/us-east-1a".parse().unwrap();
        for (pattern, want, shown) in [
            ("*", true, "*"),
            ("us-east/*", true, "us-east/*"),
            ("us-east", true, "us-east/*"),
            ("us-east/us-east-1a/*", true, "us-east/us-east-1a/*"),
            ("us-east/us-east-1b", false, "us-east/us-east-1b/*"),
            ("us-west/*", false, "us-west/*"),
            ("us-east/us-east-1a/s1", false, "us-east/us-east-1a/s1"),
        ] {
            let p: LocalityPattern = pattern.parse().unwrap();
            assert_eq!(p.matches(&l), want, "{pattern}");
            assert_eq!(p.to_string(), shown);
        }
        for bad in ["", "/*", "us-east*", "us-east/*/x", "US/*", "a/b/c/d"] {
            assert!(bad.parse::<LocalityPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn route_for_takes_the_longest_segment_prefix() {
        let mut svc = good().services.remove(0);
        svc.routes.push(Route {
            path_prefix: "/api/v2".into(),
            timeout: Duration::from_secs(1),
            ..Route::default()
        });
        assert_eq!(svc.route_for("/api/v2/x").timeout, Duration::from_secs(1));
        assert_eq!(svc.route_for("/api/v1").timeout, Duration::from_millis(250));
        assert_eq!(svc.route_for("/apix").timeout, Duration::from_secs(15));
        assert!(path_has_prefix("/a/b", "/"));
        assert!(path_has_prefix("/a/", "/a/"));
        assert!(!path_has_prefix("/a", "/a/"));
    }

    #[test]
    fn durations_parse_and_print() {
        for (s, ms) in [
            ("250ms", 250),
            ("15s", 15_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
        ] {
            assert_eq!(
                duration_str::parse(s),
                Some(Duration::from_millis(ms)),
                "{s}"
            );
        }
        for bad in ["", "s", "10", "1.5s", "-1s", "10 s", "1w", "1D"] {
            assert_eq!(duration_str::parse(bad), None, "{bad}");
        }
        assert_eq!(duration_str::format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration_str::format(Duration::from_secs(30)), "30s");
    }
}
