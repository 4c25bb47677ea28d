//! The signing service's Prometheus metrics and its admin port
//! (`/metrics`, `/ready`, `/live`): certificates signed, requests refused
//! by reason (the `strait-reason` the caller also gets), and the expiry of
//! the issuing (intermediate) certificate.
//!
//! It is not a tracing or audit log: who got which certificate is logged
//! by [`crate::server`] at info.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Refusal reasons are `&'static str` from a fixed list (`csr_*`,
/// `token_*` (including `token_used`), `no_credentials`,
/// `client_cert_invalid`, `other_cluster`, `renewal_identity_mismatch`,
/// `reserved_identity`, `sign_failed`, `shutting_down`), so cardinality
/// is bounded.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Every metric family of one signing service. Clones share the counters.
#[derive(Debug, Clone)]
pub struct CaMetrics {
    registry: Arc<Registry>,
    /// Workload certificates signed.
    pub signings: Counter,
    /// Signing requests refused, by reason.
    pub refusals: Family<ReasonLabels, Counter>,
    /// The issuing certificate's `notAfter`, Unix seconds.
    pub issuer_expiry: Gauge,
}

impl Default for CaMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CaMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("strait_ca");
        let signings = Counter::default();
        registry.register(
            "signings",
            "Workload certificates signed (first issue and renewals)",
            signings.clone(),
        );
        let refusals = Family::default();
        registry.register(
            "refusals",
            "Signing requests refused, by reason (the strait-reason the caller gets)",
            refusals.clone(),
        );
        let issuer_expiry = Gauge::default();
        registry.register(
            "issuer_expiry_timestamp_seconds",
            "Expiry of the cluster's issuing (intermediate) certificate, Unix seconds",
            issuer_expiry.clone(),
        );
        Self {
            registry: Arc::new(registry),
            signings,
            refusals,
            issuer_expiry,
        }
    }

    /// Counts the outcome of one signing request: `None` when signed, the
    /// refusal reason otherwise.
    pub fn record(&self, refused: Option<&str>) {
        match refused {
            None => {
                self.signings.inc();
            }
            Some(reason) => {
                self.refusals
                    .get_or_create(&ReasonLabels {
                        reason: reason.to_owned(),
                    })
                    .inc();
            }
        }
    }

    /// Sets the issuing certificate's expiry.
    pub fn set_issuer_expiry(&self, not_after: time::OffsetDateTime) {
        self.issuer_expiry.set(not_after.unix_timestamp());
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The answer of the CA's admin port to one path: `/metrics`, `/live`, and
/// `/ready` (the signing service is bound before the admin port opens, so
/// it is ready whenever the port answers).
pub fn admin_answer(metrics: &CaMetrics, path: &str) -> (http::StatusCode, String) {
    use http::StatusCode;
    match path {
        "/metrics" => (StatusCode::OK, metrics.encode()),
        "/live" => (StatusCode::OK, "live\n".to_owned()),
        "/ready" => (StatusCode::OK, "ready\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "no such page: /metrics, /ready, /live\n".to_owned(),
        ),
    }
}

/// Serves the admin port on `listener` until the task is dropped.
pub async fn serve_admin(listener: TcpListener, metrics: CaMetrics) {
    crate::admin_http::serve(
        listener,
        move |req: http::Request<hyper::body::Incoming>| {
            let (code, body) = admin_answer(&metrics, req.uri().path());
            let mut resp = http::Response::new(body);
            *resp.status_mut() = code;
            if code == http::StatusCode::OK && req.uri().path() == "/metrics" {
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
            }
            async move { resp }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signings_refusals_and_expiry_are_exposed_with_their_reasons() {
        let m = CaMetrics::new();
        m.record(None);
        m.record(None);
        m.record(Some("token_expired"));
        m.set_issuer_expiry(time::OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap());
        let text = m.encode();
        assert!(text.contains("strait_ca_signings_total 2\n"), "{text}");
        assert!(
            text.contains("strait_ca_refusals_total{reason=\"token_expired\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("strait_ca_issuer_expiry_timestamp_seconds 1900000000\n"),
            "{text}"
        );
    }

    #[test]
    fn admin_paths_answer_and_unknown_paths_name_the_known_ones() {
        let m = CaMetrics::new();
        let table = [
            ("/metrics", 200, "strait_ca_signings_total"),
            ("/live", 200, "live"),
            ("/ready", 200, "ready"),
            ("/nope", 404, "/metrics, /ready, /live"),
        ];
        for (path, code, needle) in table {
            let (c, body) = admin_answer(&m, path);
            assert_eq!(c.as_u16(), code, "{path}");
            assert!(body.contains(needle), "{path}: {body}");
        }
    }
}
