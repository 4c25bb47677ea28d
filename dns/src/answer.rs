//! Answers as a pure function of the view and the question: no I/O, no
//! clock, no randomness (the caller passes `pick`, e.g. the query id, to
//! spread first answers by locality weight).
//!
//! Names under the zone (`<zone>` = `clusterset.local` by default):
//!
//! | name                                       | answers                          |
//! |--------------------------------------------|----------------------------------|
//! | `<svc>.<ns>.svc.<zone>`                    | A, AAAA, SRV (every port)        |
//! | `<cluster>.<svc>.<ns>.svc.<zone>`          | A, AAAA, SRV of that cluster     |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<zone>`   | SRV of that port                 |
//! | `<zone>`                                   | SOA                              |
//!
//! A meshed client asking for a service gets the service VIP, where its
//! sidecar listens. Any other client gets addresses of one *tier*: the local
//! cluster's healthy endpoints; when it has none, the gateway of the first
//! cluster in the failover order that has healthy endpoints (Consul
//! prepared-query semantics); fail-back is automatic once local endpoints
//! are healthy again. When the policy has locality weights, every healthy
//! weighted cluster is answered and the first one is chosen by weight.
//! SRV answers list every healthy cluster, the primary tier at priority 0
//! (with weights as SRV weights) and the fallbacks at higher priorities.
//!
//! Limitation: the view keeps one `ip:port` per endpoint and gateway, so an
//! unmeshed client's SRV records carry those ports; `_<port>._<proto>` names
//! check that the named port exists but answer the same ports for every
//! name. Meshed clients get the named service port on the VIP.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::view::{IndexedService, IndexedView};

/// Default TTL of answers, in seconds: short, so failover reaches clients fast.
pub const DEFAULT_TTL: u32 = 5;

/// Whether the client runs behind a Strait sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// Gets the service VIP on its local sidecar.
    Meshed,
    /// Gets endpoint or gateway addresses.
    Unmeshed,
}

/// Answer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerConfig {
    /// TTL of every record and of negative answers, in seconds.
    pub ttl: u32,
    /// The local egress (`strait proxy` with `egress:`): clients without a
    /// sidecar reach services served by other clusters through it, over
    /// plain TCP/HTTP on the service's ports. `None`: they get the serving
    /// cluster's gateway addresses, which speak only mTLS `CONNECT`.
    pub egress: Option<IpAddr>,
}

impl Default for AnswerConfig {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            egress: None,
        }
    }
}

/// One question.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    /// As asked (any case); records are owned by this exact name.
    pub name: &'a Name,
    pub qtype: RecordType,
    pub client: ClientKind,
    /// Any number spread evenly over queries (the query id): picks the
    /// first answered cluster when locality weights are set.
    pub pick: u16,
}

/// The decided response.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub rcode: ResponseCode,
    /// Set for names in the zone (AA bit).
    pub authoritative: bool,
    pub answers: Vec<Record>,
    /// The zone SOA for the authority section of negative answers.
    pub soa: Option<Record>,
}

impl Answer {
    fn refused() -> Self {
        Self {
            rcode: ResponseCode::Refused,
            authoritative: false,
            answers: Vec::new(),
            soa: None,
        }
    }

    fn negative(view: &IndexedView, rcode: ResponseCode, cfg: &AnswerConfig) -> Self {
        let soa = soa_record(view, view.zone.clone(), cfg);
        Self {
            rcode,
            authoritative: true,
            answers: Vec::new(),
            soa: Some(soa),
        }
    }

    fn records(view: &IndexedView, answers: Vec<Record>, cfg: &AnswerConfig) -> Self {
        if answers.is_empty() {
            return Self::negative(view, ResponseCode::NoError, cfg);
        }
        Self {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers,
            soa: None,
        }
    }
}

/// Decides the response to `q`.
pub fn answer(view: &IndexedView, q: &Question<'_>, cfg: &AnswerConfig) -> Answer {
    let Some(rel) = relative_labels(q.name, &view.zone) else {
        return Answer::refused();
    };
    if matches!(q.qtype, RecordType::AXFR | RecordType::IXFR) {
        // No zone transfers: the zone is computed per client.
        return Answer::refused();
    }
    let nx = || Answer::negative(view, ResponseCode::NXDomain, cfg);
    let nodata = || Answer::negative(view, ResponseCode::NoError, cfg);
    let is = |l: &[u8], s: &str| l.eq_ignore_ascii_case(s.as_bytes());
    let lower = |l: &[u8]| String::from_utf8_lossy(l).to_ascii_lowercase();
    let service = |name: &[u8], ns: &[u8]| view.services.get(&(lower(ns), lower(name)));

    match rel.as_slice() {
        [] => match q.qtype {
            RecordType::SOA | RecordType::ANY => {
                let soa = soa_record(view, q.name.clone(), cfg);
                Answer::records(view, vec![soa], cfg)
            }
            _ => nodata(),
        },
        [s] if is(s, "svc") => nodata(),
        [ns, s] if is(s, "svc") => {
            if view.namespaces.contains(&lower(ns)) {
                nodata()
            } else {
                nx()
            }
        }
        [name, ns, s] if is(s, "svc") => match service(name, ns) {
            Some(svc) => Answer::records(view, service_records(svc, q, cfg), cfg),
            None => nx(),
        },
        [first, name, ns, s] if is(s, "svc") => {
            let Some(svc) = service(name, ns) else {
                return nx();
            };
            if first.starts_with(b"_") {
                // `_tcp.<svc>...`: an empty non-terminal above the SRV names.
                return if svc.has_protocol(&lower(first)) {
                    nodata()
                } else {
                    nx()
                };
            }
            let cluster = svc
                .service
                .clusters
                .iter()
                .position(|c| is(first, c.cluster.as_str()));
            match cluster {
                Some(i) => Answer::records(view, cluster_records(svc, i, q, cfg), cfg),
                None => nx(),
            }
        }
        [port, proto, name, ns, s] if is(s, "svc") => {
            let Some(svc) = service(name, ns) else {
                return nx();
            };
            let found = svc.service.ports.iter().find(|p| {
                port.len() > 1
                    && port[0] == b'_'
                    && is(&port[1..], &p.name)
                    && is(proto, p.protocol.label())
            });
            match found {
                Some(p) if matches!(q.qtype, RecordType::SRV | RecordType::ANY) => {
                    let records = srv_records(svc, q, cfg, Some(p.port));
                    Answer::records(view, records, cfg)
                }
                Some(_) => nodata(),
                None => nx(),
            }
        }
        _ => nx(),
    }
}

/// The zone SOA owned by `owner`, with the configured TTL as record TTL and
/// negative-caching TTL (RFC 2308).
fn soa_record(view: &IndexedView, owner: Name, cfg: &AnswerConfig) -> Record {
    let mut soa = view.soa.clone();
    soa.name = owner;
    soa.ttl = cfg.ttl;
    if let RData::SOA(data) = &mut soa.data {
        data.minimum = cfg.ttl;
    }
    soa
}

/// The labels of `name` left of `zone`, or `None` when `name` is outside it.
fn relative_labels<'n>(name: &'n Name, zone: &Name) -> Option<Vec<&'n [u8]>> {
    // Count labels by iterating: `num_labels` does not count a leading `*`.
    let mut labels: Vec<&[u8]> = name.iter().collect();
    let n = labels.len();
    let z = zone.iter().len();
    if n < z {
        return None;
    }
    let in_zone = labels[n - z..]
        .iter()
        .zip(zone.iter())
        .all(|(a, b)| a.eq_ignore_ascii_case(b));
    if !in_zone {
        return None;
    }
    labels.truncate(n - z);
    Some(labels)
}

fn wants(qtype: RecordType, ip: IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

fn address_record(owner: &Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner.clone(), ttl, data)
}

/// Records for `<svc>.<ns>.svc.<zone>`.
fn service_records(svc: &IndexedService, q: &Question<'_>, cfg: &AnswerConfig) -> Vec<Record> {
    let ttl = cfg.ttl;
    let vip = match q.client {
        ClientKind::Meshed => svc.service.vip,
        ClientKind::Unmeshed => None,
    };
    match (q.qtype, vip) {
        (RecordType::SRV, _) => srv_records(svc, q, cfg, None),
        (_, Some(vip)) if wants(q.qtype, vip) => vec![address_record(q.name, ttl, vip)],
        (_, Some(_)) => Vec::new(),
        (RecordType::A | RecordType::AAAA | RecordType::ANY, None) => {
            let clusters = primary_clusters(svc, q.pick);
            let addrs: Vec<SocketAddr> = clusters
                .iter()
                .flat_map(|i| reach(svc, *i, cfg.egress))
                .collect();
            address_records(addrs.iter(), q, ttl)
        }
        _ => Vec::new(),
    }
}

/// Records for `<cluster>.<svc>.<ns>.svc.<zone>`: that cluster only, for
/// every client kind, nothing when it has no healthy endpoint.
fn cluster_records(
    svc: &IndexedService,
    i: usize,
    q: &Question<'_>,
    cfg: &AnswerConfig,
) -> Vec<Record> {
    let ttl = cfg.ttl;
    if !healthy(svc, i) {
        return Vec::new();
    }
    match q.qtype {
        RecordType::SRV => srv_for_cluster(svc, i, 0, 1, q.name, cfg, &mut Vec::new()),
        _ => address_records(reach(svc, i, cfg.egress).iter(), q, ttl),
    }
}

/// A/AAAA records for `addrs`, in order, without repeated addresses.
fn address_records<'a>(
    addrs: impl Iterator<Item = &'a SocketAddr>,
    q: &Question<'_>,
    ttl: u32,
) -> Vec<Record> {
    let mut seen: Vec<IpAddr> = Vec::new();
    let mut out = Vec::new();
    for ip in addrs.map(SocketAddr::ip) {
        if wants(q.qtype, ip) && !seen.contains(&ip) {
            seen.push(ip);
            out.push(address_record(q.name, ttl, ip));
        }
    }
    out
}

fn healthy(svc: &IndexedService, i: usize) -> bool {
    svc.service
        .clusters
        .get(i)
        .is_some_and(|c| !c.endpoints.is_empty())
}

/// How a client in the local cluster reaches cluster `i`: local endpoints
/// directly; remote ones through the local egress on the service's ports
/// when the server names one (plain TCP/HTTP, carried over mTLS by the
/// egress), else through their gateways when they have any.
fn reach(svc: &IndexedService, i: usize, egress: Option<IpAddr>) -> Vec<SocketAddr> {
    let Some(c) = svc.service.clusters.get(i) else {
        return Vec::new();
    };
    let local = svc.local.get(i).copied().unwrap_or(false);
    match egress {
        Some(ip) if !local => svc
            .service
            .ports
            .iter()
            .map(|p| SocketAddr::new(ip, p.port))
            .collect(),
        _ if local || c.gateways.is_empty() => c.endpoints.clone(),
        _ => c.gateways.clone(),
    }
}

/// The clusters an A/AAAA answer comes from, first one first: with weights,
/// every healthy weighted cluster, the first chosen by weight with `pick`;
/// otherwise the most preferred healthy cluster alone.
pub(crate) fn primary_clusters(svc: &IndexedService, pick: u16) -> Vec<usize> {
    let ordered = svc.preference.iter().copied().filter(|i| healthy(svc, *i));
    if let Some(weights) = &svc.weights {
        let weight = |i: usize| u64::from(weights.get(i).copied().unwrap_or(0));
        let mut weighted: Vec<usize> = ordered.clone().filter(|i| weight(*i) > 0).collect();
        let total: u64 = weighted.iter().map(|i| weight(*i)).sum();
        if total > 0 {
            // Scale pick (0..2^16) onto 0..total, then walk the weights.
            let mut r = (u64::from(pick) * total) >> 16;
            let mut first = 0;
            for (pos, i) in weighted.iter().enumerate() {
                if r < weight(*i) {
                    first = pos;
                    break;
                }
                r -= weight(*i);
            }
            let chosen = weighted.remove(first);
            weighted.insert(0, chosen);
            return weighted;
        }
    }
    ordered.take(1).collect()
}

/// SRV records: the primary clusters at priority 0 (weighted by locality
/// weight), then every other healthy cluster at priorities 1, 2, ...
/// Meshed clients with a VIP get one record per service port on the VIP.
/// `only_port` restricts to one named service port.
fn srv_records(
    svc: &IndexedService,
    q: &Question<'_>,
    cfg: &AnswerConfig,
    only_port: Option<u16>,
) -> Vec<Record> {
    let ttl = cfg.ttl;
    if q.client == ClientKind::Meshed && svc.service.vip.is_some() {
        return svc
            .service
            .ports
            .iter()
            .filter(|p| only_port.is_none_or(|only| p.port == only))
            .map(|p| {
                let srv = SRV::new(0, 1, p.port, svc.fqdn.clone());
                Record::from_rdata(q.name.clone(), ttl, RData::SRV(srv))
            })
            .collect();
    }
    let primary = primary_clusters(svc, q.pick);
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for i in &primary {
        let weight = svc
            .weights
            .as_ref()
            .and_then(|w| w.get(*i).copied())
            .map_or(1, |w| u16::try_from(w).unwrap_or(u16::MAX));
        out.extend(srv_for_cluster(svc, *i, 0, weight, q.name, cfg, &mut seen));
    }
    let rest = svc
        .preference
        .iter()
        .filter(|i| healthy(svc, **i) && !primary.contains(i));
    for (priority, i) in (1u16..).zip(rest) {
        out.extend(srv_for_cluster(
            svc, *i, priority, 1, q.name, cfg, &mut seen,
        ));
    }
    out
}

/// One SRV record per distinct port cluster `i` is reached on, targeting
/// the per-cluster name.
fn srv_for_cluster(
    svc: &IndexedService,
    i: usize,
    priority: u16,
    weight: u16,
    owner: &Name,
    cfg: &AnswerConfig,
    seen: &mut Vec<(usize, u16)>,
) -> Vec<Record> {
    let ttl = cfg.ttl;
    let Some(target) = svc.cluster_fqdns.get(i) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for port in reach(svc, i, cfg.egress).iter().map(SocketAddr::port) {
        if !seen.contains(&(i, port)) {
            seen.push((i, port));
            let srv = SRV::new(priority, weight, port, target.clone());
            out.push(Record::from_rdata(owner.clone(), ttl, RData::SRV(srv)));
        }
    }
    out
}

#[cfg(test)]
mod tests;
