//! The gateway's own configuration: who it is, where it listens, its
//! protective limits, and the controller it follows. What it exports comes
//! from that controller's config push (an [`crate::ExportTable`] in the
//! gateway's snapshot), or, without a controller, is given at start.
//!
//! Parsed from YAML with unknown fields refused, then validated; tests build
//! a [`GatewayConfig`] directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use strait_api::{ClusterName, TrustDomain};

/// Why a gateway config was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gateway config: {0}")]
    Parse(String),
    #[error("gateway config: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

pub use strait_ca::identity::IdentitySource;

/// Where the gateway listens. Port 0 picks a free port (tests).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// The public mTLS listener other clusters' sidecars dial.
    #[serde(default = "default_public")]
    pub public: SocketAddr,
    /// `/metrics`, `/ready`, `/live` (plain HTTP/1.1).
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
}

fn default_public() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15443))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15021))
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            public: default_public(),
            admin: default_admin(),
        }
    }
}

/// Protective limits; every one has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent tunnels one source cluster may hold open.
    pub max_streams_per_cluster: usize,
    /// Concurrent tunnels one peer identity may hold open.
    pub max_streams_per_peer: usize,
    /// Open mTLS connections of one peer identity; past it, new ones are
    /// closed after the handshake.
    pub max_connections_per_peer: usize,
    /// Open mTLS connections of all the peers of one source cluster.
    pub max_connections_per_cluster: usize,
    /// Time a connection has, after its handshake, to send the HTTP/2
    /// preface and its first request; then it is closed.
    #[serde(with = "strait_api::snapshot::duration_str")]
    pub first_request_timeout: Duration,
    /// Concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// A tunnel with no bytes either way for this long is closed.
    #[serde(with = "strait_api::snapshot::duration_str")]
    pub idle_timeout: Duration,
    /// Time a client has to finish the TLS handshake.
    #[serde(with = "strait_api::snapshot::duration_str")]
    pub handshake_timeout: Duration,
    /// Time to dial an endpoint's sidecar.
    #[serde(with = "strait_api::snapshot::duration_str")]
    pub connect_timeout: Duration,
    /// On shutdown, how long open tunnels may run before they are cut.
    #[serde(with = "strait_api::snapshot::duration_str")]
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_streams_per_cluster: 10_000,
            max_streams_per_peer: 2048,
            max_connections_per_peer: 1024,
            max_connections_per_cluster: 4096,
            first_request_timeout: Duration::from_secs(10),
            max_concurrent_streams: 1024,
            idle_timeout: Duration::from_secs(3600),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The cluster this gateway fronts (for logs and metrics).
    pub cluster: ClusterName,
    pub trust_domain: TrustDomain,
    pub identity: IdentitySource,
    #[serde(default)]
    pub listeners: Listeners,
    #[serde(default)]
    pub limits: Limits,
    /// The cluster's controller (its gRPC address): the gateway subscribes
    /// to its config push as the cluster's gateway and gets the export
    /// table and the linked peers from it.
    #[serde(default)]
    pub controller: Option<strait_agent::ControllerRef>,
    /// Spans over OTLP, one per tunnel: `tracing: { otlp: http://host:4317,
    /// sampling: 0.01 }` (off when absent).
    #[serde(default)]
    pub tracing: Option<strait_agent::trace::TracingConfig>,
}

impl GatewayConfig {
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self =
            strait_api::yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(t) = &self.tracing {
            t.validate()
                .map_err(|e| ConfigError::Parse(e.to_string()))?;
        }
        let l = &self.limits;
        for (field, v) in [
            ("limits.max_streams_per_cluster", l.max_streams_per_cluster),
            ("limits.max_streams_per_peer", l.max_streams_per_peer),
            (
                "limits.max_connections_per_peer",
                l.max_connections_per_peer,
            ),
            (
                "limits.max_connections_per_cluster",
                l.max_connections_per_cluster,
            ),
            (
                "limits.max_concurrent_streams",
                l.max_concurrent_streams as usize,
            ),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        for (field, d) in [
            ("limits.idle_timeout", l.idle_timeout),
            ("limits.handshake_timeout", l.handshake_timeout),
            ("limits.first_request_timeout", l.first_request_timeout),
            ("limits.connect_timeout", l.connect_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "must be positive"));
            }
        }
        let (p, a) = (self.listeners.public, self.listeners.admin);
        if p.port() != 0 && p == a {
            return Err(invalid(
                "listeners.admin",
                format!("{a} is also the public listener"),
            ));
        }
        if let Some(c) = &self.controller {
            c.cluster_or(Some(&self.cluster))
                .map_err(|e| invalid("controller.cluster", e))?;
        }
        if let IdentitySource::Ca { spiffe_id, .. } = &self.identity {
            if spiffe_id.trust_domain_str() != self.trust_domain.as_str() {
                return Err(invalid(
                    "identity.ca.spiffe_id",
                    format!("{spiffe_id} is outside trust domain {}", self.trust_domain),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
cluster: west
trust_domain: strait.local
identity:
  files: { chain: c.pem, key: k.pem, bundle: b.pem }
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = GatewayConfig::from_yaml(MINIMAL).unwrap();
        assert_eq!(c.listeners.public.port(), 15443);
        assert_eq!(c.listeners.admin.port(), 15021);
        assert_eq!(c.limits.max_streams_per_cluster, 10_000);
        assert_eq!(c.cluster.as_str(), "west");
    }

    #[test]
    fn refuses_unknown_fields_and_bad_values_naming_them() {
        let e = GatewayConfig::from_yaml(&format!("{MINIMAL}bogus: 1\n")).unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
        let zero = format!("{MINIMAL}limits: {{ max_streams_per_cluster: 0 }}\n");
        let e = GatewayConfig::from_yaml(&zero).unwrap_err();
        assert!(
            e.to_string().contains("limits.max_streams_per_cluster"),
            "{e}"
        );
        let idle = format!("{MINIMAL}limits: {{ idle_timeout: 0s }}\n");
        let e = GatewayConfig::from_yaml(&idle).unwrap_err();
        assert!(e.to_string().contains("limits.idle_timeout"), "{e}");
        let same =
            format!("{MINIMAL}listeners: {{ public: 127.0.0.1:9000, admin: 127.0.0.1:9000 }}\n");
        let e = GatewayConfig::from_yaml(&same).unwrap_err();
        assert!(e.to_string().contains("listeners.admin"), "{e}");
    }

    #[test]
    fn ca_identity_must_be_in_the_trust_domain() {
        let y = "cluster: west\ntrust_domain: strait.local\nidentity:\n  ca: { address: 127.0.0.1:8600, spiffe_id: spiffe://other.test/ns/x/sa/gw, token_file: t, bundle: b }\n";
        let e = GatewayConfig::from_yaml(y).unwrap_err();
        assert!(e.to_string().contains("identity.ca.spiffe_id"), "{e}");
    }
}
