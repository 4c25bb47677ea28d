//! Prometheus metrics of the DNS server:
//! `strait_dns_queries_total{type,rcode}` and the
//! `strait_dns_answer_duration_seconds` histogram.
//!
//! Labels have bounded values: record types outside a fixed list count as
//! `other`, so random query types cannot blow up cardinality.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    r#type: &'static str,
    rcode: &'static str,
}

/// The DNS server's metric families. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct DnsMetrics {
    queries: Family<QueryLabels, Counter>,
    duration: Histogram,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        Self {
            queries: Family::default(),
            // 10 µs .. ~80 ms.
            duration: Histogram::new(exponential_buckets(0.000_01, 2.0, 14)),
        }
    }
}

impl DnsMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "strait_dns_queries",
            "DNS queries answered, by query type and response code",
            m.queries.clone(),
        );
        registry.register_with_unit(
            "strait_dns_answer_duration",
            "Time from a parsed query to its response being handed to the socket",
            Unit::Seconds,
            m.duration.clone(),
        );
        m
    }

    /// Counts one answered query.
    pub fn record(&self, qtype: Option<RecordType>, rcode: ResponseCode, elapsed: Duration) {
        let labels = QueryLabels {
            r#type: qtype.map_or("none", type_label),
            rcode: rcode_label(rcode),
        };
        self.queries.get_or_create(&labels).inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// Encodes `registry` in the Prometheus text format.
pub fn encode_metrics(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

fn type_label(t: RecordType) -> &'static str {
    match t {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::SRV => "SRV",
        RecordType::SOA => "SOA",
        RecordType::NS => "NS",
        RecordType::ANY => "ANY",
        RecordType::TXT => "TXT",
        RecordType::PTR => "PTR",
        RecordType::CNAME => "CNAME",
        RecordType::MX => "MX",
        RecordType::HTTPS => "HTTPS",
        RecordType::SVCB => "SVCB",
        RecordType::AXFR => "AXFR",
        RecordType::IXFR => "IXFR",
        _ => "other",
    }
}

fn rcode_label(r: ResponseCode) -> &'static str {
    match r {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_the_documented_names_and_bounded_labels() {
        let mut registry = Registry::default();
        let m = DnsMetrics::register(&mut registry);
        m.record(
            Some(RecordType::A),
            ResponseCode::NoError,
            Duration::from_micros(50),
        );
        m.record(
            Some(RecordType::Unknown(65000)),
            ResponseCode::NXDomain,
            Duration::ZERO,
        );
        let text = encode_metrics(&registry).unwrap();
        assert!(
            text.contains(r#"strait_dns_queries_total{type="A",rcode="NOERROR"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"type="other",rcode="NXDOMAIN""#), "{text}");
        assert!(
            text.contains("strait_dns_answer_duration_seconds_count 2"),
            "{text}"
        );
    }
}
