//! The gateway's Prometheus metrics. Per-service figures come from the
//! `CONNECT` authority (what the tunnel was opened for), never from reading
//! the tunnel's payload, which is TLS the gateway cannot decrypt.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which way tunnel bytes flow.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    /// From the calling cluster towards the endpoint.
    to_endpoint,
    /// From the endpoint back to the calling cluster.
    from_endpoint,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabels {
    pub source_cluster: String,
    pub destination_service: String,
    /// The gateway's own cluster (where the tunnels lead).
    pub destination_cluster: String,
    /// `ok`, or the refusal / failure reason.
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    /// The calling cluster: cross-cluster bytes per link (the egress bill).
    pub source_cluster: String,
    pub destination_service: String,
    /// The gateway's own cluster: with `source_cluster`, one link.
    pub destination_cluster: String,
    pub direction: Direction,
}

/// One link: the calling cluster and this gateway's.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabels {
    pub source_cluster: String,
    pub destination_cluster: String,
}

fn setup_histogram() -> Histogram {
    // 50 us .. ~3 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// All metric families of one gateway.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The gateway's cluster, the `destination_cluster` of every tunnel.
    cluster: String,
    pub tunnels_active: Gauge,
    pub tunnels: Family<TunnelLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    /// Tunnel set-up time per link.
    pub setup_seconds: Family<LinkLabels, Histogram, fn() -> Histogram>,
    /// Client connections refused before any stream (TLS failures).
    pub connections_refused: Family<ReasonLabels, Counter>,
    pub connections_active: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::for_cluster("")
    }

    /// The metrics of a gateway of `cluster`.
    pub fn for_cluster(cluster: &str) -> Self {
        let mut registry = Registry::with_prefix("strait_gateway");
        let tunnels_active = Gauge::default();
        registry.register("tunnels_active", "Tunnels open now", tunnels_active.clone());
        let tunnels = Family::default();
        registry.register(
            "tunnels",
            "CONNECT requests, by source cluster, destination service and result",
            tunnels.clone(),
        );
        let bytes = Family::default();
        registry.register(
            "bytes",
            "Tunnel bytes by link (source and destination cluster), destination service and direction (to_endpoint, from_endpoint)",
            bytes.clone(),
        );
        let setup_seconds =
            Family::<LinkLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                setup_histogram,
            );
        registry.register(
            "tunnel_setup_seconds",
            "From CONNECT received to 200 sent (decision, limits, dial)",
            setup_seconds.clone(),
        );
        let connections_refused = Family::default();
        registry.register(
            "connections_refused",
            "Client connections refused before any stream, by reason",
            connections_refused.clone(),
        );
        let connections_active = Gauge::default();
        registry.register(
            "connections_active",
            "Client (outer mTLS) connections open now",
            connections_active.clone(),
        );
        Self {
            registry,
            cluster: cluster.to_owned(),
            tunnels_active,
            tunnels,
            bytes,
            setup_seconds,
            connections_refused,
            connections_active,
        }
    }

    pub fn tunnel(&self, source_cluster: &str, service: &str, result: &str) {
        self.tunnels
            .get_or_create(&TunnelLabels {
                source_cluster: source_cluster.to_owned(),
                destination_service: service.to_owned(),
                destination_cluster: self.cluster.clone(),
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn refuse_connection(&self, reason: &str) {
        self.connections_refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The byte counter of one calling cluster, service and direction
    /// (shared, cheap clone).
    pub fn bytes_counter(
        &self,
        source_cluster: &str,
        service: &str,
        direction: Direction,
    ) -> Counter {
        self.bytes
            .get_or_create(&BytesLabels {
                source_cluster: source_cluster.to_owned(),
                destination_service: service.to_owned(),
                destination_cluster: self.cluster.clone(),
                direction,
            })
            .clone()
    }

    /// Observes one tunnel's set-up time, per calling cluster (once per
    /// tunnel, not per request).
    pub fn setup(&self, source_cluster: &str, took: std::time::Duration) {
        self.setup_seconds
            .get_or_create(&LinkLabels {
                source_cluster: source_cluster.to_owned(),
                destination_cluster: self.cluster.clone(),
            })
            .observe(took.as_secs_f64());
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
