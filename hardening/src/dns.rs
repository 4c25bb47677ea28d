//! DNS packet handling: raw bytes parsed as the server parses them
//! (hickory-proto), then decided by the pure [`strait_dns::answer`] over a
//! fixture view, and the response encoded as the server encodes it.
//!
//! Invariants: no packet panics; every record answers the exact name asked,
//! with a TTL no longer than configured; a response without answer records
//! (unknown name, NODATA, REFUSED, FORMERR, ...) is never larger than the
//! query plus one SOA record, so the server cannot amplify a spoofed query;
//! zone transfers are refused. (The live UDP/TCP server is exercised by the
//! `strait-dns` crate's own fuzz test over loopback.)

use std::net::SocketAddr;
use std::sync::OnceLock;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use strait_api::ClusterName;
use strait_dns::{
    AnswerConfig, ClientKind, ClusterEndpoints, DnsView, GlobalService, IndexedView, PortProtocol,
    Question, ServicePort, answer,
};

/// Largest UDP payload the server answers with (its default).
const MAX_UDP_PAYLOAD: u16 = strait_dns::server::DEFAULT_MAX_UDP_PAYLOAD;

struct Fixture {
    view: IndexedView,
    /// Size of the zone's SOA record alone in a message.
    soa_len: usize,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let view = IndexedView::new(view()).unwrap_or_else(|e| panic!("fixture view: {e}"));
        let cfg = AnswerConfig::default();
        let apex = view.zone().clone();
        let q = Question {
            name: &apex,
            qtype: RecordType::SOA,
            client: ClientKind::Unmeshed,
            pick: 0,
        };
        let soa = answer(&view, &q, &cfg).answers;
        let mut m = Message::response(0, OpCode::Query);
        m.answers = soa;
        let empty = Message::response(0, OpCode::Query);
        let soa_len = encoded_len(&m) - encoded_len(&empty);
        Fixture { view, soa_len }
    })
}

fn encoded_len(m: &Message) -> usize {
    m.to_vec()
        .map(|v| v.len())
        .unwrap_or_else(|e| panic!("cannot encode {m:?}: {e}"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn cluster(name: &str) -> ClusterName {
    ClusterName::new(name).unwrap_or_else(|e| panic!("{e}"))
}

/// `web.default` in east (2 endpoints) and west (behind a gateway);
/// `big.default` with 60 endpoints (answers bigger than 512 bytes).
pub fn view() -> DnsView {
    let mut view = DnsView::new(cluster("east"));
    let http = ServicePort {
        name: "http".into(),
        port: 80,
        protocol: PortProtocol::Tcp,
    };
    let place = |c: &str, loc: &str, eps: Vec<SocketAddr>, gw: Vec<SocketAddr>| ClusterEndpoints {
        cluster: cluster(c),
        locality: loc.parse().unwrap_or_else(|e| panic!("{loc}: {e}")),
        endpoints: eps,
        gateways: gw,
    };
    view.services.push(GlobalService {
        name: "web".into(),
        namespace: "default".into(),
        vip: Some("127.77.0.1".parse().unwrap_or_else(|e| panic!("{e}"))),
        ports: vec![http.clone()],
        clusters: vec![
            place(
                "east",
                "us-east/a",
                vec![addr("10.0.0.1:8080"), addr("[fd00::1]:8080")],
                vec![],
            ),
            place(
                "west",
                "us-west/a",
                vec![addr("10.1.0.1:8080")],
                vec![addr("198.51.100.1:15443")],
            ),
        ],
        failover: vec![cluster("west")],
        weights: Vec::new(),
    });
    let big = (1..=60u8)
        .map(|i| SocketAddr::from(([10, 9, 0, i], 8080)))
        .collect();
    view.services.push(GlobalService {
        name: "big".into(),
        namespace: "default".into(),
        vip: None,
        ports: vec![http],
        clusters: vec![place("east", "us-east/a", big, vec![])],
        failover: Vec::new(),
        weights: Vec::new(),
    });
    view
}

/// Parses `bytes` as a query and checks the decided response.
pub fn check(bytes: &[u8]) {
    let Ok(query) = Message::from_vec(bytes) else {
        return; // the server drops (or FORMERRs) what it cannot parse
    };
    if query.metadata.message_type != MessageType::Query {
        return;
    }
    let Ok(query_len) = query.to_vec().map(|v| v.len()) else {
        return; // not re-encodable: hickory-server cannot answer it either
    };
    let f = fixture();
    let cfg = AnswerConfig::default();
    let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
    resp.queries = query.queries.clone();
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    if let Some(req) = &query.edns {
        let mut e = Edns::new();
        e.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
        e.set_version(0);
        resp.set_edns(e);
    }
    let bad = query.edns.as_ref().is_some_and(|e| e.version() > 0)
        || query.metadata.op_code != OpCode::Query
        || query.queries.len() != 1;
    let q = query.queries.first().filter(|_| !bad);
    match q {
        Some(q) if q.query_class() == DNSClass::IN => {
            let kind = if query.metadata.id % 2 == 0 {
                ClientKind::Meshed
            } else {
                ClientKind::Unmeshed
            };
            let question = Question {
                name: q.name(),
                qtype: q.query_type(),
                client: kind,
                pick: query.metadata.id,
            };
            let a = answer(&f.view, &question, &cfg);
            if matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR) {
                assert_eq!(a.rcode, ResponseCode::Refused, "zone transfer answered");
            }
            for r in &a.answers {
                assert_eq!(&r.name, q.name(), "record for another name");
                assert!(r.ttl <= cfg.ttl, "ttl {} > {}", r.ttl, cfg.ttl);
            }
            assert!(
                a.answers.len() <= 64,
                "{} records for one question",
                a.answers.len()
            );
            resp.metadata.response_code = a.rcode;
            resp.metadata.authoritative = a.authoritative;
            resp.answers = a.answers;
            resp.authorities = a.soa.into_iter().collect();
        }
        _ => {
            resp.metadata.response_code = if q.is_some() {
                ResponseCode::Refused
            } else {
                ResponseCode::FormErr
            };
        }
    }
    let Ok(wire) = resp.to_vec() else {
        panic!("cannot encode the response to {query:?}");
    };
    if resp.answers.is_empty() {
        assert!(
            wire.len() <= query_len + f.soa_len,
            "amplified: {} byte response to a {query_len} byte query ({:?})",
            wire.len(),
            resp.metadata.response_code
        );
    }
}
