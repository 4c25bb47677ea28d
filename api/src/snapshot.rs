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

    /// The wire and config name: `http1`, `http2`, `grpc`, `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Grpc => "grpc",
            Self::Tcp => "tcp",
        }
    }

    /// The protocol named `s` ([`Self::as_str`]'s names), if any.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Http1, Self::Http2, Self::Grpc, Self::Tcp]
            .into_iter()
            .find(|p| p.as_str() == s)
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

mod validate;
pub use validate::{validate_authorization, validate_outlier, validate_routes};

pub mod duration_str;

#[cfg(test)]
mod tests;
