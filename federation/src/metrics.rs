//! The controller's Prometheus metrics (`strait_` prefix).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Every metric the controller exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Global services in the merged view.
    pub catalog_services: Gauge,
    /// Endpoints of every cluster in the merged view.
    pub catalog_endpoints: Gauge,
    /// Seconds since the last update (or heartbeat) from each peer.
    pub peer_sync_lag_seconds: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    /// 1 while the sync stream from a peer is up.
    pub peer_up: Family<PeerLabels, Gauge>,
    /// Snapshots sent, ACKed and NACKed.
    pub config_pushes: Family<ResultLabels, Counter>,
    /// Connected config-push clients.
    pub config_clients: Gauge,
    /// Subscriptions refused, by reason (`other_cluster`, ...).
    pub config_refusals: Family<ReasonLabels, Counter>,
    /// Passive health reports, by result (`accepted` or the refusal).
    pub health_reports: Family<ResultLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("strait");
        r.register(
            "catalog_services",
            "Global services known to this controller",
            self.catalog_services.clone(),
        );
        r.register(
            "catalog_endpoints",
            "Endpoints (of every cluster) of the global services known to this controller",
            self.catalog_endpoints.clone(),
        );
        r.register(
            "peer_sync_lag_seconds",
            "Seconds since the last catalog sync message from a linked peer",
            self.peer_sync_lag_seconds.clone(),
        );
        r.register(
            "peer_up",
            "Whether the catalog sync stream from a linked peer is up",
            self.peer_up.clone(),
        );
        r.register(
            "config_pushes",
            "Config snapshots pushed to proxies, by result (sent, ack, nack)",
            self.config_pushes.clone(),
        );
        r.register(
            "config_clients",
            "Proxies and gateways connected for config push",
            self.config_clients.clone(),
        );
        r.register(
            "config_refusals",
            "Config-push subscriptions refused, by reason (other_cluster: the caller's certificate is of another cluster)",
            self.config_refusals.clone(),
        );
        r.register(
            "health_reports",
            "Passive endpoint health reports, by result (accepted, other_cluster, not_a_workload, unknown_endpoint, may_not_call, rate_limited)",
            self.health_reports.clone(),
        );
    }

    pub fn health_report(&self, result: &'static str) {
        self.health_reports
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn push(&self, result: &'static str) {
        self.config_pushes
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}
