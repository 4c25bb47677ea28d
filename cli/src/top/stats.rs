//! The pure part of `strait top`: Prometheus text parsed into samples, and
//! two scrapes of the same targets turned into per-service and per-link
//! figures (success rate, requests/s, p50/p99, tunnel bytes/s). No I/O.

use std::collections::BTreeMap;

use serde::Serialize;

/// A sample's labels, in exposition order.
pub type Labels = Vec<(String, String)>;

/// A series of one target: its name and labels.
type Series<'a> = (&'a str, &'a [(String, String)]);

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Parses the Prometheus text (or OpenMetrics) exposition; comments and
/// blank lines are skipped. A malformed line is an error naming it.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|why| format!("line {}: {why}: {line:?}", i + 1))?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        (labels, rest) = parse_labels(body)?;
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| "value is not a number")?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The labels after `{`, and what follows the closing `}`.
fn parse_labels(body: &str) -> Result<(Labels, &str), &'static str> {
    let mut labels = Vec::new();
    let mut rest = body;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (key, after_eq) = rest.split_once('=').ok_or("label without '='")?;
        let quoted = after_eq.strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unclosed label value"),
                },
                Some((j, '"')) => break j,
                Some((_, c)) => value.push(c),
                None => return Err("unclosed label value"),
            }
        };
        labels.push((key.trim().to_owned(), value));
        rest = quoted[end + 1..].trim_start();
        if !rest.starts_with([',', '}']) {
            return Err("unclosed label set");
        }
    }
}

/// What one target's counters grew by between two scrapes (a counter that
/// went down was reset: its growth is its new value).
pub fn growth(before: &[Sample], after: &[Sample]) -> Vec<Sample> {
    let old: BTreeMap<Series<'_>, f64> = before
        .iter()
        .map(|s| ((s.name.as_str(), s.labels.as_slice()), s.value))
        .collect();
    after
        .iter()
        .map(|s| {
            let prev = old
                .get(&(s.name.as_str(), s.labels.as_slice()))
                .copied()
                .unwrap_or(0.0);
            let value = if s.value >= prev {
                s.value - prev
            } else {
                s.value
            };
            Sample { value, ..s.clone() }
        })
        .collect()
}

/// Traffic to one service from one cluster to another, as the callers'
/// sidecars saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceRow {
    pub service: String,
    pub source_cluster: String,
    pub destination_cluster: String,
    pub requests: f64,
    pub requests_per_second: f64,
    /// Share of answers that were not 5xx; none without requests.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Tunnels through a serving cluster's gateways, per calling cluster and
/// service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkRow {
    pub source_cluster: String,
    pub destination_cluster: String,
    pub service: String,
    pub tunnels_per_second: f64,
    pub refused_per_second: f64,
    /// Bytes towards the serving endpoints.
    pub bytes_in_per_second: f64,
    /// Bytes back to the calling cluster.
    pub bytes_out_per_second: f64,
}

type Key = (String, String, String);

/// Per-service and per-link figures from the summed growth of every
/// target over `seconds`.
pub fn figures(grown: &[Sample], seconds: f64) -> (Vec<ServiceRow>, Vec<LinkRow>) {
    let seconds = seconds.max(1e-9);
    let mut requests: BTreeMap<Key, (f64, f64)> = BTreeMap::new();
    let mut buckets: BTreeMap<Key, BTreeMap<OrdF64, f64>> = BTreeMap::new();
    let mut links: BTreeMap<Key, [f64; 4]> = BTreeMap::new();
    for s in grown {
        let outbound = s.label("direction") == "outbound";
        match s.name.as_str() {
            "strait_requests_total" if outbound => {
                let e = requests.entry(service_key(s)).or_default();
                e.0 += s.value;
                if s.label("response_code").starts_with('5') {
                    e.1 += s.value;
                }
            }
            "strait_request_duration_seconds_bucket" if outbound => {
                let Ok(le) = parse_le(s.label("le")) else {
                    continue;
                };
                *buckets
                    .entry(service_key(s))
                    .or_default()
                    .entry(OrdF64(le))
                    .or_default() += s.value;
            }
            "strait_gateway_tunnels_total" => {
                let e = links.entry(link_key(s)).or_default();
                if s.label("result") == "ok" {
                    e[0] += s.value;
                } else {
                    e[1] += s.value;
                }
            }
            "strait_gateway_bytes_total" => {
                let e = links.entry(link_key(s)).or_default();
                match s.label("direction") {
                    "to_endpoint" => e[2] += s.value,
                    _ => e[3] += s.value,
                }
            }
            _ => {}
        }
    }
    let services = requests
        .into_iter()
        .map(|(k, (total, failed))| {
            let b: Vec<(f64, f64)> = buckets
                .get(&k)
                .map(|m| m.iter().map(|(le, n)| (le.0, *n)).collect())
                .unwrap_or_default();
            let ms = |q| quantile(q, &b).map(|s| s * 1e3);
            ServiceRow {
                service: k.0,
                source_cluster: k.1,
                destination_cluster: k.2,
                requests: total,
                requests_per_second: total / seconds,
                success_rate: (total > 0.0).then(|| (total - failed) / total),
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
            }
        })
        .collect();
    let links = links
        .into_iter()
        .map(|(k, [ok, refused, bytes_in, bytes_out])| LinkRow {
            service: k.0,
            source_cluster: k.1,
            destination_cluster: k.2,
            tunnels_per_second: ok / seconds,
            refused_per_second: refused / seconds,
            bytes_in_per_second: bytes_in / seconds,
            bytes_out_per_second: bytes_out / seconds,
        })
        .collect();
    (services, links)
}

fn service_key(s: &Sample) -> Key {
    (
        s.label("destination_service").to_owned(),
        s.label("source_cluster").to_owned(),
        s.label("destination_cluster").to_owned(),
    )
}

fn link_key(s: &Sample) -> Key {
    service_key(s)
}

fn parse_le(le: &str) -> Result<f64, ()> {
    match le {
        "+Inf" => Ok(f64::INFINITY),
        v => v.parse().map_err(|_| ()),
    }
}

/// An f64 that sorts (bucket bounds are never NaN).
#[derive(Debug, Clone, Copy)]
struct OrdF64(f64);
impl PartialEq for OrdF64 {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The `q` quantile of cumulative buckets `(upper bound, count)` sorted by
/// bound, interpolated linearly inside the bucket as Prometheus'
/// `histogram_quantile` does; the last finite bound when it falls in
/// `+Inf`; none without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let inside = count - prev.1;
            if inside <= 0.0 {
                return Some(le);
            }
            return Some(prev.0 + (le - prev.0) * (rank - prev.1) / inside);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

#[cfg(test)]
mod tests;
