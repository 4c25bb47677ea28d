//! `strait install kubernetes`: every object of one cluster's install,
//! built from typed k8s-openapi objects (never text templates).
//!
//! The roles' ConfigMaps hold configs those roles really parse (`strait
//! controller --config ... --check` and the others validate them in
//! tests); the container command lines are real `strait` invocations.
//! The roles' identities come from Secrets (`--ca-dir` issues them;
//! otherwise the operator creates them with `strait ca issue`); the CA
//! Deployment ([`ca`]) signs injected sidecars' certificates against their
//! ServiceAccount tokens.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use serde_json::Value;
use strait_api::{ClusterName, TrustDomain};

pub mod ca;
pub mod common;
pub mod coredns;
pub mod rbac;
pub mod roles;
pub mod secrets;
pub mod webhook;

pub use secrets::CaMaterial;
pub use webhook::WebhookTls;

/// Why the install could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("ca dir: {0}")]
    Ca(#[from] strait_ca::CaError),
    #[error("webhook certificate: {0}")]
    Certificate(String),
    #[error("cannot encode {0}: {1}")]
    Encode(String, String),
}

/// What one cluster's install is made of.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub cluster: ClusterName,
    pub trust_domain: TrustDomain,
    /// Where Strait's own objects go (default `strait-system`).
    pub namespace: String,
    pub image: String,
    /// Replicas elect a leader on a Lease; links live in `StraitLink`
    /// objects, so a new leader has them (docs/kubernetes.md).
    pub controller_replicas: i32,
    pub region: Option<String>,
    pub zone: Option<String>,
    /// The address peers dial for the controller (the peering
    /// LoadBalancer's, once it has one).
    pub controller_advertise: Option<SocketAddr>,
    /// The gateways' public addresses (the LoadBalancer's), for links.
    pub gateway_addresses: Vec<SocketAddr>,
    /// A fixed ClusterIP for the DNS Service (CoreDNS forwards to it).
    pub dns_ip: Option<IpAddr>,
    /// Intermediate CA, bundle and the roles' identities (`--ca-dir`).
    pub ca: Option<CaMaterial>,
    pub webhook_tls: WebhookTls,
}

impl InstallOptions {
    fn check(&self) -> Result<(), InstallError> {
        if !strait_api::label::is_dns_label(&self.namespace) {
            return Err(InstallError::Invalid {
                field: "namespace",
                reason: format!(
                    "{:?} is not a DNS label (lowercase letters, digits, '-', at most 63)",
                    self.namespace
                ),
            });
        }
        if self.image.trim().is_empty() || self.image.contains(char::is_whitespace) {
            return Err(InstallError::Invalid {
                field: "image",
                reason: format!("{:?} is not an image reference", self.image),
            });
        }
        if !(1..=5).contains(&self.controller_replicas) {
            return Err(InstallError::Invalid {
                field: "controller-replicas",
                reason: format!("{} is not between 1 and 5", self.controller_replicas),
            });
        }
        if let (Some(r), z) = (&self.region, &self.zone) {
            strait_api::Locality::new(r, z.as_deref().unwrap_or_default()).map_err(|e| {
                InstallError::Invalid {
                    field: "region/zone",
                    reason: e.to_string(),
                }
            })?;
        } else if self.zone.is_some() {
            return Err(InstallError::Invalid {
                field: "zone",
                reason: "a zone needs a region".into(),
            });
        }
        if let Some(ca) = &self.ca {
            if ca.trust_domain != self.trust_domain {
                return Err(InstallError::Invalid {
                    field: "trust-domain",
                    reason: format!(
                        "the CA dir is for {}, not {}",
                        ca.trust_domain, self.trust_domain
                    ),
                });
            }
        }
        Ok(())
    }
}

/// One object of the install.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub kind: String,
    pub name: String,
    pub value: Value,
}

impl Manifest {
    pub fn new<T: Serialize + k8s_openapi::Resource>(obj: &T) -> Result<Self, InstallError> {
        let mut value = serde_json::to_value(obj)
            .map_err(|e| InstallError::Encode(T::KIND.to_owned(), e.to_string()))?;
        // k8s-openapi's Serialize writes apiVersion and kind itself; make
        // sure (some objects built by other crates may lack them).
        if let Some(m) = value.as_object_mut() {
            m.entry("apiVersion")
                .or_insert_with(|| Value::String(T::API_VERSION.to_owned()));
            m.entry("kind")
                .or_insert_with(|| Value::String(T::KIND.to_owned()));
        }
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            kind: T::KIND.to_owned(),
            name,
            value,
        })
    }

    /// `NN-kind-name.yaml`, in apply order.
    pub fn file_name(&self, index: usize) -> String {
        format!("{index:02}-{}-{}.yaml", self.kind.to_lowercase(), self.name)
    }
}

/// Every object of the install, in an order `kubectl apply -f` can take
/// (namespace and CRDs first, the webhook configuration last).
pub fn manifests(opts: &InstallOptions) -> Result<Vec<Manifest>, InstallError> {
    opts.check()?;
    let ns = opts.namespace.as_str();
    let mut out = vec![Manifest::new(&roles::namespace(ns))?];
    for crd in crate::crds::all() {
        out.push(Manifest::new(&crd)?);
    }
    out.extend(rbac::objects(ns)?);
    if let Some(ca) = &opts.ca {
        out.extend(ca.secrets(ns)?);
    }
    out.extend(roles::controller(opts)?);
    out.extend(roles::gateway(opts)?);
    out.extend(roles::dns(opts)?);
    out.extend(ca::objects(opts)?);
    out.extend(webhook::objects(opts)?);
    Ok(out)
}

/// The objects as one multi-document YAML stream.
pub fn to_yaml(manifests: &[Manifest]) -> Result<String, crate::yaml::YamlError> {
    let values: Vec<Value> = manifests.iter().map(|m| m.value.clone()).collect();
    crate::yaml::write(&values)
}

#[cfg(test)]
mod tests;
