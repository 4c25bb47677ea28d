//! What a cluster's east-west gateways let other clusters reach: the
//! export table the controller pushes to its gateways (in the gateway's
//! snapshot, [`crate::snapshot::Snapshot::exports`]) or an operator gives
//! a gateway as a fixed file.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::ClusterName;
use crate::snapshot::Health;

/// The services this cluster exports, with their endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportTable {
    #[serde(default)]
    pub services: Vec<ExportedService>,
}

/// One exported service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedService {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Service ports a `name.namespace:port` CONNECT may ask for.
    pub ports: Vec<u16>,
    /// Source clusters that may reach it (`export --to`); empty: every
    /// linked cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<ClusterName>,
    #[serde(default)]
    pub endpoints: Vec<ExportedEndpoint>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

impl ExportedService {
    /// `name.namespace`, the label per-service metrics carry.
    pub fn key(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

/// One endpoint: the inbound (mTLS) address of a workload's sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedEndpoint {
    pub address: SocketAddr,
    #[serde(default)]
    pub health: Health,
}

/// Why an export table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error("services[{index}]: {reason}")]
    Invalid { index: usize, reason: String },
}

impl ExportTable {
    /// Names are non-empty DNS-ish labels, each service has a port, and no
    /// service or endpoint is listed twice.
    pub fn validate(&self) -> Result<(), ExportError> {
        let mut names = std::collections::HashSet::new();
        let mut endpoints = HashMap::new();
        for (index, s) in self.services.iter().enumerate() {
            let bad = |reason: String| ExportError::Invalid { index, reason };
            for (what, v) in [("name", &s.name), ("namespace", &s.namespace)] {
                let ok = crate::label::is_dns_label(v);
                if !ok {
                    return Err(bad(format!(
                        "{what} {v:?} must be lowercase letters, digits or '-'"
                    )));
                }
            }
            if s.ports.is_empty() || s.ports.contains(&0) {
                return Err(bad("ports must be non-empty and non-zero".into()));
            }
            if !names.insert((s.name.as_str(), s.namespace.as_str())) {
                return Err(bad(format!("service {} is listed twice", s.key())));
            }
            for e in &s.endpoints {
                if let Some(other) = endpoints.insert(e.address, index) {
                    return Err(bad(format!(
                        "endpoint {} also belongs to services[{other}]",
                        e.address
                    )));
                }
            }
        }
        Ok(())
    }
}
