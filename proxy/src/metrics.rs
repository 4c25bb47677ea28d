//! The sidecar's Prometheus metrics (text format on the admin port).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Which way traffic flows through this sidecar.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    /// app -> mesh
    outbound,
    /// mesh -> app
    inbound,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub source_cluster: String,
    pub source_principal: String,
    pub destination_service: String,
    pub destination_cluster: String,
    pub response_code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub direction: Direction,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_cluster: String,
}

/// Opaque TCP and upgraded connections. `source_cluster` is the caller's
/// cluster (inbound: the cluster that signed the peer's certificate),
/// `destination_cluster` the serving endpoint's (empty for passthrough
/// connections to addresses outside the mesh).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: Direction,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_cluster: String,
}

impl TcpLabels {
    pub fn new(direction: Direction, source: &str, service: &str, destination: &str) -> Self {
        Self {
            direction,
            source_cluster: source.to_owned(),
            destination_service: service.to_owned(),
            destination_cluster: destination.to_owned(),
        }
    }
}

/// HTTP/1.1 upgrades: `protocol` is `websocket`, `h2c` or `other`;
/// `result` is `switched` (101), `declined` (the app answered otherwise),
/// or the `strait-error` reason when Strait answered (`denied`, `timeout`...).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpgradeLabels {
    pub direction: Direction,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_cluster: String,
    pub protocol: String,
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub direction: Direction,
    pub reason: String,
}

/// Retries and ejections: the caller's cluster, the service, the cluster
/// of the endpoint that failed, and the decision or outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceReason {
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_cluster: String,
    pub reason: String,
}

/// `strait_failover_active{service, from, to}`: 1 while this sidecar's
/// traffic to `service` leaves its own cluster `from` (wholly or in part)
/// for `to` although `from` serves the service; 0 once it came back.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    pub service: String,
    pub from: String,
    pub to: String,
}

fn latency_histogram() -> Histogram {
    // 0.1 ms .. ~13 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 18,
    ))
}

/// All metric families of one sidecar.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
    pub tcp_connections: Family<TcpLabels, Counter>,
    pub tcp_bytes_sent: Family<TcpLabels, Counter>,
    pub tcp_bytes_received: Family<TcpLabels, Counter>,
    /// HTTP/1.1 upgrade requests by outcome.
    pub upgrades: Family<UpgradeLabels, Counter>,
    /// Bytes spliced on upgraded connections, towards the destination app.
    pub upgrade_bytes_sent: Family<TcpLabels, Counter>,
    /// Bytes spliced on upgraded connections, from the destination app.
    pub upgrade_bytes_received: Family<TcpLabels, Counter>,
    /// Authorization denials by reason.
    pub denied: Family<ReasonLabels, Counter>,
    /// Refused connections and requests (bad input, limits, TLS failures).
    pub refused: Family<ReasonLabels, Counter>,
    pub retries: Family<ServiceReason, Counter>,
    pub ejections: Family<ServiceReason, Counter>,
    /// Services whose traffic fails over to another cluster now.
    pub failover_active: Family<FailoverLabels, Gauge>,
    pub snapshot_version: Gauge,
    pub snapshot_rejected: Counter,
    pub cert_expiry_seconds: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The request counter with these labels: a handle a caller may keep,
    /// so later requests neither build label strings nor hash them.
    pub fn request_counter(
        &self,
        direction: Direction,
        source_cluster: &str,
        source_principal: &str,
        destination_service: &str,
        destination_cluster: &str,
        code: u16,
    ) -> Counter {
        self.requests
            .get_or_create(&RequestLabels {
                direction,
                source_cluster: source_cluster.to_owned(),
                source_principal: source_principal.to_owned(),
                destination_service: destination_service.to_owned(),
                destination_cluster: destination_cluster.to_owned(),
                response_code: code,
            })
            .clone()
    }

    /// The request duration histogram of a direction and service (a handle
    /// a caller may keep).
    pub fn duration_histogram(
        &self,
        direction: Direction,
        source_cluster: &str,
        service: &str,
        destination_cluster: &str,
    ) -> Histogram {
        self.request_duration
            .get_or_create(&DurationLabels {
                direction,
                source_cluster: source_cluster.to_owned(),
                destination_service: service.to_owned(),
                destination_cluster: destination_cluster.to_owned(),
            })
            .clone()
    }

    /// One finished app -> mesh request: counted by destination and
    /// response code, and its duration observed.
    pub fn outbound_request(
        &self,
        source_cluster: &str,
        service: &str,
        destination_cluster: &str,
        code: u16,
        took: std::time::Duration,
    ) {
        let dir = Direction::outbound;
        self.request_counter(dir, source_cluster, "", service, destination_cluster, code)
            .inc();
        self.duration_histogram(dir, source_cluster, service, destination_cluster)
            .observe(took.as_secs_f64());
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("strait");
        let requests = Family::default();
        registry.register(
            "requests",
            "HTTP requests handled, by direction, peer and response code",
            requests.clone(),
        );
        let request_duration =
            Family::<DurationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "request_duration_seconds",
            "HTTP request latency as seen by this sidecar",
            request_duration.clone(),
        );
        let tcp_connections = Family::default();
        registry.register(
            "tcp_connections",
            "Opaque TCP connections proxied",
            tcp_connections.clone(),
        );
        let tcp_bytes_sent = Family::default();
        registry.register(
            "tcp_sent_bytes",
            "Bytes sent to the destination on TCP connections",
            tcp_bytes_sent.clone(),
        );
        let tcp_bytes_received = Family::default();
        registry.register(
            "tcp_received_bytes",
            "Bytes received from the destination on TCP connections",
            tcp_bytes_received.clone(),
        );
        let upgrades = Family::default();
        registry.register(
            "upgrades",
            "HTTP/1.1 upgrade requests (WebSocket and others), by protocol and result",
            upgrades.clone(),
        );
        let upgrade_bytes_sent = Family::default();
        registry.register(
            "upgrade_sent_bytes",
            "Bytes sent to the destination on upgraded connections",
            upgrade_bytes_sent.clone(),
        );
        let upgrade_bytes_received = Family::default();
        registry.register(
            "upgrade_received_bytes",
            "Bytes received from the destination on upgraded connections",
            upgrade_bytes_received.clone(),
        );
        let denied = Family::default();
        registry.register(
            "authz_denied",
            "Requests and connections denied by authorization policy",
            denied.clone(),
        );
        let refused = Family::default();
        registry.register(
            "refused",
            "Connections and requests refused for bad input, limits or TLS failures",
            refused.clone(),
        );
        let retries = Family::default();
        registry.register("retries", "Retries by decision", retries.clone());
        let ejections = Family::default();
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection",
            ejections.clone(),
        );
        let failover_active = Family::default();
        registry.register(
            "failover_active",
            "1 while traffic to a service fails over (or spills) from this cluster to another",
            failover_active.clone(),
        );
        let snapshot_version = Gauge::default();
        registry.register(
            "snapshot_version",
            "Version of the config snapshot in use",
            snapshot_version.clone(),
        );
        let snapshot_rejected = Counter::default();
        registry.register(
            "snapshot_rejected",
            "Config snapshots refused as invalid (the last good one stays)",
            snapshot_rejected.clone(),
        );
        let cert_expiry_seconds = Gauge::default();
        registry.register(
            "cert_expiry_timestamp_seconds",
            "Expiry of the workload certificate, Unix seconds",
            cert_expiry_seconds.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            tcp_connections,
            tcp_bytes_sent,
            tcp_bytes_received,
            upgrades,
            upgrade_bytes_sent,
            upgrade_bytes_received,
            denied,
            refused,
            retries,
            ejections,
            failover_active,
            snapshot_version,
            snapshot_rejected,
            cert_expiry_seconds,
        }
    }

    pub fn refuse(&self, direction: Direction, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                direction,
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts one retry decision (failures only: never on a request's
    /// success path).
    pub fn retry(&self, source: &str, service: &str, destination: &str, decision: &str) {
        self.retries
            .get_or_create(&ServiceReason {
                source_cluster: source.to_owned(),
                destination_service: service.to_owned(),
                destination_cluster: destination.to_owned(),
                reason: decision.to_owned(),
            })
            .inc();
    }

    /// Counts one endpoint ejection.
    pub fn ejection(&self, source: &str, service: &str, destination: &str, outcome: &str) {
        self.ejections
            .get_or_create(&ServiceReason {
                source_cluster: source.to_owned(),
                destination_service: service.to_owned(),
                destination_cluster: destination.to_owned(),
                reason: outcome.to_owned(),
            })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
