//! The sidecar's own configuration (where it listens, who it is, where its
//! app is, which controller it follows). Routing data comes from that
//! controller's config push, or a snapshot file, as a [`Snapshot`].
//!
//! Parsed from YAML with unknown fields refused, then validated into the
//! same struct; tests build a [`ProxyConfig`] directly.
//!
//! [`Snapshot`]: strait_api::snapshot::Snapshot

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use strait_api::TrustDomain;
use strait_api::snapshot::Protocol;

/// Why a proxy config was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("proxy config: {0}")]
    Parse(String),
    #[error("proxy config: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

pub use strait_ca::identity::IdentitySource;

/// One port of the local app that the mesh may reach.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppPort {
    /// The service port peers ask for.
    pub port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// Where the app listens (default 127.0.0.1:<port>).
    #[serde(default)]
    pub target: Option<SocketAddr>,
    /// A plaintext listener for clients outside the mesh (permissive mode).
    /// Without it, plaintext to the inbound port is refused.
    #[serde(default)]
    pub permissive_listen: Option<SocketAddr>,
}

fn default_protocol() -> Protocol {
    Protocol::Http1
}

impl AppPort {
    pub fn target(&self) -> SocketAddr {
        self.target
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], self.port)))
    }
}

/// Where the sidecar listens. Port 0 picks a free port (tests).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// mTLS from other sidecars and gateways.
    #[serde(default = "default_inbound")]
    pub inbound: SocketAddr,
    /// Explicit HTTP proxy for the app (`http_proxy=`), plaintext.
    #[serde(default = "default_outbound")]
    pub outbound: SocketAddr,
    /// `/metrics`, `/ready`, `/live`, `/config`.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Also listen on every service VIP:port of the snapshot.
    #[serde(default = "default_true")]
    pub bind_vips: bool,
}

fn default_inbound() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15006))
}
fn default_outbound() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15001))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}
fn default_true() -> bool {
    true
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            inbound: default_inbound(),
            outbound: default_outbound(),
            admin: default_admin(),
            bind_vips: true,
        }
    }
}

/// Protective limits; every one has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line + headers) in bytes.
    pub max_header_bytes: usize,
    /// Most headers in one request.
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Time a client has to send a complete request head (slowloris).
    #[serde(with = "strait_api::snapshot::duration_str")]
    pub header_read_timeout: Duration,
    /// Idle connections are closed after this.
    #[serde(with = "strait_api::snapshot::duration_str")]
    pub idle_timeout: Duration,
    /// How long to wait for the first bytes before treating a connection
    /// as opaque TCP.
    #[serde(with = "strait_api::snapshot::duration_str")]
    pub sniff_timeout: Duration,
    /// Time to establish a connection (TCP + TLS) to a peer.
    #[serde(with = "strait_api::snapshot::duration_str")]
    pub connect_timeout: Duration,
    /// Requests waiting for an endpoint beyond this are refused with 503
    /// (circuit breaking on pending requests).
    pub max_pending_requests: usize,
    /// Time a peer has, after the mTLS handshake on the inbound port, to
    /// send the HTTP/2 preface and its first request's headers; a
    /// connection that has not by then is closed.
    #[serde(with = "strait_api::snapshot::duration_str")]
    pub first_request_timeout: Duration,
    /// Open mTLS connections on the inbound port per peer identity (all
    /// replicas of a caller share one identity; an HTTP/1.1 upgrade
    /// connection counts until it is upgraded); more are closed right
    /// after the handshake. Each replica's sidecar holds about one pooled
    /// connection per endpoint, so raise it above the replica count of the
    /// largest calling service.
    pub max_connections_per_peer: usize,
    /// Open mTLS connections on the inbound port from all the peers of one
    /// source cluster (the cluster whose intermediate signed them); past
    /// it, new ones are closed after the handshake
    /// (`strait_refused_total{reason="cluster_connection_limit"}`).
    pub max_connections_per_cluster: usize,
    /// Requests (HTTP/2 streams, tunnels) open at once on the inbound port
    /// from one peer identity, over all its connections; past it, 503
    /// `peer_stream_limit`.
    pub max_streams_per_peer: usize,
    /// The same for all the peers of one source cluster (503
    /// `cluster_stream_limit`).
    pub max_streams_per_cluster: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_concurrent_streams: 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            sniff_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_secs(2),
            max_pending_requests: 10_000,
            first_request_timeout: Duration::from_secs(10),
            max_connections_per_peer: 1024,
            max_connections_per_cluster: 4096,
            max_streams_per_peer: 8192,
            max_streams_per_cluster: 32_768,
        }
    }
}

/// The whole sidecar configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    pub trust_domain: TrustDomain,
    pub identity: IdentitySource,
    #[serde(default)]
    pub listeners: Listeners,
    /// The app's ports reachable from the mesh.
    #[serde(default)]
    pub app: Vec<AppPort>,
    /// The service this workload serves, `name.namespace`; its
    /// authorization policies guard inbound traffic.
    #[serde(default)]
    pub local_service: Option<String>,
    /// A snapshot file, re-read when it changes (a bad file is refused and
    /// the last good snapshot stays).
    #[serde(default)]
    pub snapshot_file: Option<PathBuf>,
    /// The cluster's controller: the sidecar subscribes to its config push
    /// with its own certificate and keeps the last good snapshot while the
    /// controller is away. `cluster:` is required here.
    #[serde(default)]
    pub controller: Option<strait_agent::ControllerRef>,
    /// The services this workload calls (`name.namespace`, `*.namespace`):
    /// the controller then sends only those, plus `local_service`. Left
    /// out: every service. Needs `controller:`.
    #[serde(default)]
    pub scope: Option<strait_agent::ScopeConfig>,
    #[serde(default)]
    pub limits: Limits,
    /// One structured log line per request (target `strait::access`).
    #[serde(default)]
    pub access_log: bool,
    /// Spans over OTLP: `tracing: { otlp: http://host:4317, sampling: 0.01 }`
    /// (off when absent).
    #[serde(default)]
    pub tracing: Option<strait_agent::trace::TracingConfig>,
    /// Transparent capture: where redirected connections arrive, and what
    /// to do with unknown destinations ([`crate::capture`]).
    #[serde(default)]
    pub capture: crate::capture::CaptureConfig,
    /// This workload's service: the sidecar registers its inbound address
    /// as an endpoint with its controller while it runs (needs
    /// `controller:`; the ports are the `app:` ports).
    #[serde(default)]
    pub service: Option<ServiceSection>,
    /// Serve clients without a sidecar: plaintext listeners on this address
    /// for every service port ([`crate::egress`]).
    #[serde(default)]
    pub egress: Option<crate::egress::EgressConfig>,
}

/// `service:` of a sidecar that registers its own workload. Only the
/// service's own identity (`ns/<namespace>/sa/<name>`) may register it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// `none` (default), `all`, or `west,central`: which linked clusters
    /// may call it.
    #[serde(default)]
    pub export: String,
    /// The address peers dial (default: the inbound listener's, which must
    /// then be a concrete address).
    #[serde(default)]
    pub address: Option<SocketAddr>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

impl ServiceSection {
    /// `name.namespace`, the form of `local_service`.
    pub fn local_service(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

impl ProxyConfig {
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
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.app.iter().enumerate() {
            if p.port == 0 {
                return Err(invalid(format!("app[{i}].port"), "must not be 0"));
            }
            if !seen.insert(p.port) {
                return Err(invalid(
                    format!("app[{i}].port"),
                    format!("port {} is listed twice", p.port),
                ));
            }
        }
        if let Some(s) = &self.local_service {
            if s.contains(':') || crate::headers::parse_dst(&format!("{s}:1")).is_none() {
                return Err(invalid(
                    "local_service",
                    format!("{s:?} is not of the form name.namespace"),
                ));
            }
        }
        if let Some(s) = &self.service {
            if self.controller.is_none() {
                return Err(invalid(
                    "service",
                    "registers the workload with its controller: set controller: too",
                ));
            }
            if self.app.is_empty() {
                return Err(invalid(
                    "service",
                    "has no ports: list the app's ports under app:",
                ));
            }
            if !strait_api::label::is_service_label(&s.name)
                || !strait_api::label::is_service_label(&s.namespace)
            {
                return Err(invalid(
                    "service",
                    format!(
                        "name {:?} and namespace {:?} must be DNS labels",
                        s.name, s.namespace
                    ),
                ));
            }
            if let Some(own) = &self.local_service {
                if *own != s.local_service() {
                    return Err(invalid(
                        "local_service",
                        format!(
                            "{own:?} differs from service: {} (leave local_service out)",
                            s.local_service()
                        ),
                    ));
                }
            }
            if s.address
                .is_some_and(|a| a.ip().is_unspecified() || a.port() == 0)
            {
                return Err(invalid(
                    "service.address",
                    "must be a concrete ip:port that peers can dial",
                ));
            }
        }
        if let Some(c) = &self.controller {
            c.cluster_or(None)
                .map_err(|e| invalid("controller.cluster", e))?;
            if self.snapshot_file.is_some() {
                return Err(invalid(
                    "controller",
                    "controller: and snapshot_file: are two sources of routing; keep one",
                ));
            }
        }
        let l = &self.limits;
        if l.max_header_bytes < 1024 {
            return Err(invalid(
                "limits.max_header_bytes",
                format!("{} is below the 1024-byte minimum", l.max_header_bytes),
            ));
        }
        if l.max_headers == 0 || l.max_concurrent_streams == 0 {
            return Err(invalid(
                "limits",
                "max_headers and max_concurrent_streams must be at least 1",
            ));
        }
        if l.sniff_timeout.is_zero()
            || l.header_read_timeout.is_zero()
            || l.first_request_timeout.is_zero()
        {
            return Err(invalid(
                "limits",
                "sniff_timeout, header_read_timeout and first_request_timeout must be positive",
            ));
        }
        for (field, v) in [
            (
                "limits.max_connections_per_peer",
                l.max_connections_per_peer,
            ),
            (
                "limits.max_connections_per_cluster",
                l.max_connections_per_cluster,
            ),
            ("limits.max_streams_per_peer", l.max_streams_per_peer),
            ("limits.max_streams_per_cluster", l.max_streams_per_cluster),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        Ok(())
    }

    pub fn app_port(&self, port: u16) -> Option<&AppPort> {
        self.app.iter().find(|p| p.port == port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
trust_domain: strait.local
identity:
  files: { chain: c.pem, key: k.pem, bundle: b.pem }
app:
  - port: 9080
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = ProxyConfig::from_yaml(MINIMAL).unwrap();
        assert_eq!(c.listeners.inbound.port(), 15006);
        assert_eq!(c.app[0].protocol, Protocol::Http1);
        assert_eq!(c.app[0].target(), "127.0.0.1:9080".parse().unwrap());
        assert_eq!(c.limits.max_headers, 100);
        assert!(!c.access_log);
    }

    #[test]
    fn refuses_unknown_fields_and_bad_values_naming_them() {
        let e = ProxyConfig::from_yaml(&format!("{MINIMAL}bogus: 1\n")).unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
        let dup = format!("{MINIMAL}  - port: 9080\n");
        let e = ProxyConfig::from_yaml(&dup).unwrap_err();
        assert!(
            e.to_string()
                .contains("app[1].port: port 9080 is listed twice"),
            "{e}"
        );
        let small = format!("{MINIMAL}limits: {{ max_header_bytes: 10 }}\n");
        let e = ProxyConfig::from_yaml(&small).unwrap_err();
        assert!(e.to_string().contains("limits.max_header_bytes"), "{e}");
        let e = ProxyConfig::from_yaml("trust_domain: Bad!\n").unwrap_err();
        assert!(e.to_string().contains("trust domain"), "{e}");
    }

    #[test]
    fn identity_is_files_or_ca_but_not_both() {
        let ca = "trust_domain: strait.local\nidentity:\n  ca: { address: 127.0.0.1:8600, spiffe_id: spiffe://strait.local/ns/a/sa/b, token_file: t, bundle: b.pem }\n";
        let c = ProxyConfig::from_yaml(ca).unwrap();
        assert!(matches!(c.identity, IdentitySource::Ca { .. }));
        let both = "trust_domain: strait.local\nidentity:\n  files: { chain: c, key: k, bundle: b }\n  ca: { address: 127.0.0.1:8600, spiffe_id: spiffe://strait.local/ns/a/sa/b, token_file: t, bundle: b.pem }\n";
        let e = ProxyConfig::from_yaml(both).unwrap_err();
        assert!(
            e.to_string().contains("exactly one of `files:` or `ca:`"),
            "{e}"
        );
        let bad_id = ca.replace("spiffe://strait.local/ns/a/sa/b", "spiffe://x//y");
        assert!(
            ProxyConfig::from_yaml(&bad_id)
                .unwrap_err()
                .to_string()
                .contains("segment")
        );
    }
}
