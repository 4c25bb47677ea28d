//! The verified peer of one inbound connection: the identity headers
//! every request states about it, and its request metrics (handles cached
//! per connection, so a request neither builds label strings nor hashes
//! them).

use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use strait_api::{ClusterName, SpiffeId};

use crate::headers;
use crate::metrics::{Direction, Metrics};
use crate::state::Shared;

/// The verified peer of one inbound connection, and what every request on
/// it states about that peer (computed once per connection).
pub(crate) struct Peer {
    pub(crate) id: SpiffeId,
    /// `x-forwarded-client-cert` for this peer.
    xfcc: Option<HeaderValue>,
    /// The peer's SPIFFE ID as a metric label.
    principal: String,
    /// The cluster whose intermediate signed the peer's certificate (the
    /// `source_cluster` label; none when its issuer names none).
    cluster: Option<ClusterName>,
    /// Metric handles of this connection's requests, so a request neither
    /// builds label strings nor hashes them.
    handles: Mutex<Vec<Handles>>,
}

/// Services whose metric handles one peer connection keeps.
const MAX_CACHED_SERVICES: usize = 8;

/// The request counters (by code) and the duration histogram of one
/// destination service.
struct Handles {
    service: String,
    cluster: ClusterName,
    requests: Vec<(u16, Counter)>,
    /// Made by the first request that has a duration.
    duration: Option<Histogram>,
}

impl Peer {
    pub(super) fn new(shared: &Shared, id: SpiffeId, cluster: Option<&ClusterName>) -> Self {
        Self {
            xfcc: xfcc(shared, &id),
            principal: id.to_string(),
            cluster: cluster.cloned(),
            id,
            handles: Mutex::new(Vec::new()),
        }
    }

    /// The cluster whose intermediate signed the peer, if one is named.
    pub(crate) fn cluster(&self) -> Option<&ClusterName> {
        self.cluster.as_ref()
    }

    /// The cluster whose intermediate signed the peer (empty: none named).
    pub(crate) fn source_cluster(&self) -> &str {
        self.cluster.as_ref().map_or("", ClusterName::as_str)
    }

    /// Removes every identity a client may have claimed and states the
    /// peer's verified one (`By=<this sidecar>;URI=<peer>`).
    pub(crate) fn stamp(&self, headers: &mut HeaderMap) {
        headers::strip_spoofable(headers);
        if let Some(v) = &self.xfcc {
            headers.insert(headers::XFCC_NAME, v.clone());
        }
    }

    /// Counts one request from this peer to `service` (in `cluster`) by
    /// response code, and observes its duration when it has one.
    pub(super) fn count(
        &self,
        metrics: &Metrics,
        service: &str,
        cluster: &ClusterName,
        code: u16,
        took: Option<Duration>,
    ) {
        let dir = Direction::inbound;
        let counter = |m: &Metrics| {
            m.request_counter(
                dir,
                self.source_cluster(),
                &self.principal,
                service,
                cluster.as_str(),
                code,
            )
        };
        let (counter, observe) = {
            let mut all = self.handles.lock().unwrap_or_else(|p| p.into_inner());
            let at = all
                .iter()
                .position(|h| h.service == service && h.cluster == *cluster);
            let at = match at {
                Some(i) => i,
                // The peer names the service: past a few, count without a
                // cache rather than let one connection grow it.
                None if all.len() >= MAX_CACHED_SERVICES => {
                    drop(all);
                    let observe = took.map(|t| {
                        let h = metrics.duration_histogram(
                            dir,
                            self.source_cluster(),
                            service,
                            cluster.as_str(),
                        );
                        (h, t)
                    });
                    return record(&counter(metrics), observe);
                }
                None => {
                    all.push(Handles {
                        service: service.to_owned(),
                        cluster: cluster.clone(),
                        requests: Vec::new(),
                        duration: None,
                    });
                    all.len() - 1
                }
            };
            let h = &mut all[at];
            let counter = match h.requests.iter().find(|(c, _)| *c == code) {
                Some((_, counter)) => counter.clone(),
                None => {
                    let counter = counter(metrics);
                    h.requests.push((code, counter.clone()));
                    counter
                }
            };
            // Only a request with a duration makes the histogram (a denied
            // one has none).
            let observe = took.map(|t| {
                let hist = h.duration.get_or_insert_with(|| {
                    metrics.duration_histogram(
                        dir,
                        self.source_cluster(),
                        service,
                        cluster.as_str(),
                    )
                });
                (hist.clone(), t)
            });
            (counter, observe)
        };
        record(&counter, observe);
    }
}

/// Counts a request and observes its duration, if it has one.
fn record(counter: &Counter, observe: Option<(Histogram, Duration)>) {
    counter.inc();
    if let Some((hist, took)) = observe {
        hist.observe(took.as_secs_f64());
    }
}

fn xfcc(shared: &Shared, source: &SpiffeId) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("By={};URI={source}", shared.own_id)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request is counted with the same labels whether its service's
    /// handles are cached or not, and one connection caches only a few.
    #[test]
    fn peer_counts_with_and_without_cached_handles() {
        let metrics = Metrics::new();
        let peer = Peer {
            id: "spiffe://strait.local/ns/a/sa/b".parse().unwrap(),
            xfcc: None,
            principal: "spiffe://strait.local/ns/a/sa/b".into(),
            cluster: ClusterName::new("west").ok(),
            handles: Mutex::new(Vec::new()),
        };
        let cluster = ClusterName::new("east").unwrap();
        for round in 0..2 {
            for i in 0..12 {
                let code = if round == 0 { 200 } else { 503 };
                let took = Some(Duration::from_millis(1));
                peer.count(&metrics, &format!("s{i}.ns"), &cluster, code, took);
            }
        }
        assert_eq!(peer.handles.lock().unwrap().len(), MAX_CACHED_SERVICES);
        // A denied request has no duration: no histogram for its service.
        let fresh = Peer {
            handles: Mutex::new(Vec::new()),
            ..peer
        };
        fresh.count(&metrics, "denied.ns", &cluster, 403, None);
        let text = metrics.encode();
        assert!(text.contains("destination_service=\"denied.ns\",destination_cluster=\"east\",response_code=\"403\"} 1"));
        assert!(!text.contains("strait_request_duration_seconds_count{direction=\"inbound\",source_cluster=\"west\",destination_service=\"denied.ns\",destination_cluster=\"east\"}"));
        for i in [0, 11] {
            for code in [200, 503] {
                let want = format!(
                    "strait_requests_total{{direction=\"inbound\",source_cluster=\"west\",source_principal=\"spiffe://strait.local/ns/a/sa/b\",destination_service=\"s{i}.ns\",destination_cluster=\"east\",response_code=\"{code}\"}} 1"
                );
                assert!(text.contains(&want), "missing {want}");
            }
            let count = format!(
                "strait_request_duration_seconds_count{{direction=\"inbound\",source_cluster=\"west\",destination_service=\"s{i}.ns\",destination_cluster=\"east\"}} 2"
            );
            assert!(text.contains(&count), "missing {count}");
        }
    }
}
