//! The local catalog: services registered in this cluster, whether and to
//! whom they are exported, and their traffic policies.
//!
//! [`Registration`] and [`PolicySpec`] are the YAML shapes (one file each);
//! [`Registration::validate`] and [`PolicySpec::validate`] check what serde
//! cannot, with errors naming the file, the field and the bad value.
//! [`CatalogSource`] is what the controller reads: the directory store
//! ([`store::DirectoryStore`]) implements it for plain hosts, a Kubernetes
//! watcher can implement it later.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strait_api::snapshot::{MAX_ENDPOINT_WEIGHT, ServicePort, duration_str};
use strait_api::{ClusterName, Locality, SpiffeId, TrustDomain};
use tokio::sync::watch;

pub mod live;
pub mod policy;
pub mod store;
#[cfg(test)]
mod tests;

pub use policy::PolicySpec;

/// Why a catalog entry was refused or could not be stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    #[error("{file}: cannot parse yaml: {source}")]
    Parse {
        file: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{file}: {field}: {value:?} is invalid: {reason}")]
    Invalid {
        file: PathBuf,
        field: String,
        value: String,
        reason: String,
    },
    #[error("{file}: service {key} is already defined in {other}")]
    Duplicate {
        file: PathBuf,
        key: ServiceKey,
        other: PathBuf,
    },
    #[error("service {0} is not registered")]
    NotFound(ServiceKey),
    #[error("no traffic policy is set for service {0}")]
    NoPolicy(ServiceKey),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write catalog file: {0}")]
    Write(#[source] strait_ca::CaError),
    #[error("the catalog source is read-only; change it where it comes from")]
    ReadOnly,
}

/// A field-level problem, before the file it belongs to is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub value: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    pub fn in_file(self, file: PathBuf) -> CatalogError {
        CatalogError::Invalid {
            file,
            field: self.field,
            value: self.value,
            reason: self.reason,
        }
    }
}

/// `namespace/name` of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// Parses `namespace/name`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| Self::new(ns, name))
    }

    /// The file name the directory store uses: `<namespace>.<name>.yaml`.
    pub fn file_name(&self) -> String {
        format!("{}.{}.yaml", self.namespace, self.name)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Who a service is exported to. Written `none`, `all` or `{to: [west]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ExportRepr", into = "ExportRepr")]
pub enum Export {
    /// Local only.
    #[default]
    None,
    /// Every linked peer.
    All,
    /// Only these peers.
    To(Vec<ClusterName>),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ExportRepr {
    Word(String),
    To { to: Vec<ClusterName> },
    Other(serde_json::Value),
}

impl TryFrom<ExportRepr> for Export {
    type Error = String;
    fn try_from(r: ExportRepr) -> Result<Self, Self::Error> {
        match r {
            ExportRepr::Word(w) if w == "none" => Ok(Self::None),
            ExportRepr::Word(w) if w == "all" => Ok(Self::All),
            ExportRepr::To { to } => Ok(Self::To(to)),
            ExportRepr::Word(w) => Err(format!(
                "export {w:?} is invalid: use `none`, `all` or `{{to: [cluster, ...]}}`"
            )),
            ExportRepr::Other(v) => Err(format!(
                "export {v} is invalid: use `none`, `all` or `{{to: [cluster, ...]}}`"
            )),
        }
    }
}

impl From<Export> for ExportRepr {
    fn from(e: Export) -> Self {
        match e {
            Export::None => Self::Word("none".into()),
            Export::All => Self::Word("all".into()),
            Export::To(to) => Self::To { to },
        }
    }
}

impl Export {
    pub fn includes(&self, peer: &ClusterName) -> bool {
        match self {
            Self::None => false,
            Self::All => true,
            Self::To(list) => list.contains(peer),
        }
    }

    pub fn is_exported(&self) -> bool {
        !matches!(self, Self::None)
    }

    /// The peers an export is limited to, as gateway export lists name
    /// them (empty: every linked peer, or not exported at all).
    pub fn only_to(&self) -> Vec<ClusterName> {
        match self {
            Self::To(list) => list.clone(),
            Self::None | Self::All => Vec::new(),
        }
    }
}

/// One service registration (one YAML file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub export: Export,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

/// One instance: the inbound address of its sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub address: SocketAddr,
    /// Defaults to the cluster's locality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
    /// Defaults to `spiffe://<trust-domain>/ns/<namespace>/sa/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<SpiffeId>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Active health checking of every endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// HTTP path (http checks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Check this port on the endpoint's IP instead of the endpoint's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "default_interval", with = "duration_str")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout", with = "duration_str")]
    pub timeout: Duration,
    /// Consecutive successes before an unhealthy endpoint is healthy again.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures before a healthy endpoint is unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// `GET path`, healthy on 2xx.
    Http,
    /// Healthy when a TCP connection opens.
    Tcp,
    /// Asks the endpoint's sidecar, over mTLS with the controller's
    /// identity, whether it can reach its app (`strait-probe: app`): sees a
    /// dead sidecar and a dead app alike. The default for endpoints whose
    /// registration names no check.
    Sidecar,
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

impl HealthCheck {
    /// The check of every endpoint whose registration has none: ask its
    /// sidecar each second; unhealthy after 2 failures (within about 2.5 s),
    /// healthy again after 1 success.
    pub fn default_sidecar() -> Self {
        Self {
            kind: CheckKind::Sidecar,
            path: None,
            port: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        }
    }

    pub fn http(path: &str) -> Self {
        Self {
            kind: CheckKind::Http,
            path: Some(path.to_owned()),
            port: None,
            interval: default_interval(),
            timeout: default_check_timeout(),
            healthy_threshold: default_healthy_threshold(),
            unhealthy_threshold: default_unhealthy_threshold(),
        }
    }

    pub fn tcp() -> Self {
        Self {
            kind: CheckKind::Tcp,
            path: None,
            ..Self::http("/")
        }
    }

    fn validate(&self) -> Result<(), FieldError> {
        let f = "health_check";
        match (self.kind, &self.path) {
            (CheckKind::Http, None) => {
                return Err(FieldError::new(
                    format!("{f}.path"),
                    "",
                    "an http check needs a path",
                ));
            }
            (CheckKind::Http, Some(p)) if !p.starts_with('/') => {
                return Err(FieldError::new(
                    format!("{f}.path"),
                    p,
                    "must start with '/'",
                ));
            }
            (CheckKind::Tcp, Some(p)) => {
                return Err(FieldError::new(
                    format!("{f}.path"),
                    p,
                    "a tcp check has no path",
                ));
            }
            _ => {}
        }
        if self.port == Some(0) {
            return Err(FieldError::new(format!("{f}.port"), 0, "must not be 0"));
        }
        if self.interval < Duration::from_millis(10) {
            let v = duration_str::format(self.interval);
            return Err(FieldError::new(
                format!("{f}.interval"),
                v,
                "must be at least 10ms",
            ));
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            let v = duration_str::format(self.timeout);
            let why = "must be positive and not longer than the interval";
            return Err(FieldError::new(format!("{f}.timeout"), v, why));
        }
        for (name, v) in [
            ("healthy_threshold", self.healthy_threshold),
            ("unhealthy_threshold", self.unhealthy_threshold),
        ] {
            if !(1..=100).contains(&v) {
                return Err(FieldError::new(
                    format!("{f}.{name}"),
                    v,
                    "must be between 1 and 100",
                ));
            }
        }
        Ok(())
    }
}

/// Checks a DNS label (service names, namespaces).
pub(crate) fn check_label(field: &str, v: &str) -> Result<(), FieldError> {
    if strait_api::label::is_service_label(v) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            v,
            strait_api::label::SERVICE_LABEL_RULE,
        ))
    }
}

impl Registration {
    pub fn key(&self) -> ServiceKey {
        ServiceKey::new(&self.namespace, &self.name)
    }

    /// Checks names, ports, endpoints, export list and health check.
    /// `local` is this cluster (a service is not exported to itself).
    pub fn validate(&self, td: &TrustDomain, local: &ClusterName) -> Result<(), FieldError> {
        check_label("name", &self.name)?;
        check_label("namespace", &self.namespace)?;
        if self.ports.is_empty() {
            return Err(FieldError::new("ports", "[]", "needs at least one port"));
        }
        let mut ports = HashSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if p.port == 0 {
                return Err(FieldError::new(
                    format!("ports[{i}].port"),
                    0,
                    "must not be 0",
                ));
            }
            if !ports.insert(p.port) {
                return Err(FieldError::new(
                    format!("ports[{i}].port"),
                    p.port,
                    "duplicate port",
                ));
            }
        }
        let mut addrs = HashSet::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            let f = format!("endpoints[{i}]");
            if !addrs.insert(ep.address) {
                let why = "duplicate endpoint address";
                return Err(FieldError::new(format!("{f}.address"), ep.address, why));
            }
            if ep.address.port() == 0 || ep.address.ip().is_unspecified() {
                let why = "needs a concrete ip and a non-zero port";
                return Err(FieldError::new(format!("{f}.address"), ep.address, why));
            }
            if ep.weight == 0 || ep.weight > MAX_ENDPOINT_WEIGHT {
                let why = format!("must be between 1 and {MAX_ENDPOINT_WEIGHT}");
                return Err(FieldError::new(format!("{f}.weight"), ep.weight, why));
            }
            if let Some(id) = &ep.identity {
                if id.trust_domain_str() != td.as_str() {
                    let why = format!("must be in trust domain {td}");
                    return Err(FieldError::new(format!("{f}.identity"), id, why));
                }
            }
        }
        if let Export::To(list) = &self.export {
            if list.is_empty() {
                let why = "name at least one peer, or use `all`";
                return Err(FieldError::new("export.to", "[]", why));
            }
            let mut seen = HashSet::new();
            for (i, c) in list.iter().enumerate() {
                if c == local {
                    let why = "a service is not exported to its own cluster";
                    return Err(FieldError::new(format!("export.to[{i}]"), c, why));
                }
                if !seen.insert(c) {
                    return Err(FieldError::new(
                        format!("export.to[{i}]"),
                        c,
                        "duplicate peer",
                    ));
                }
            }
        }
        if let Some(hc) = &self.health_check {
            hc.validate()?;
        }
        Ok(())
    }

    /// The identity of an endpoint, with the conventional default.
    pub fn identity_of(&self, ep: &EndpointSpec, td: &TrustDomain) -> Option<SpiffeId> {
        match &ep.identity {
            Some(id) => Some(id.clone()),
            None => td.workload_id(&self.namespace, &self.name).ok(),
        }
    }
}

/// Everything a catalog source knows, at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalCatalog {
    pub services: BTreeMap<ServiceKey, Registration>,
    pub policies: BTreeMap<ServiceKey, PolicySpec>,
}

/// Where the controller reads the local catalog from. The directory store
/// is one; a Kubernetes watcher (Services, EndpointSlices, ServiceExport)
/// is another. A source publishes a new [`LocalCatalog`] on every change.
pub trait CatalogSource: Send + Sync + fmt::Debug + 'static {
    /// The current catalog; changes are announced on the receiver.
    fn watch(&self) -> watch::Receiver<Arc<LocalCatalog>>;
}

/// A catalog set in code (benchmarks, tests, embedders): what
/// [`FixedCatalog::set`] last set.
#[derive(Debug)]
pub struct FixedCatalog(watch::Sender<Arc<LocalCatalog>>);

impl FixedCatalog {
    pub fn new(catalog: LocalCatalog) -> Self {
        Self(watch::channel(Arc::new(catalog)).0)
    }

    /// Replaces the catalog; watchers see the change.
    pub fn set(&self, catalog: LocalCatalog) {
        self.0.send_replace(Arc::new(catalog));
    }
}

impl CatalogSource for FixedCatalog {
    fn watch(&self) -> watch::Receiver<Arc<LocalCatalog>> {
        self.0.subscribe()
    }
}
