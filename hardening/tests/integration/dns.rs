//! DNS: mutated queries and random packets through the pure answer path;
//! no response without answers is bigger than the query plus one SOA.

use hickory_proto::op::{Edns, Message, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use proptest::prelude::*;
use strait_hardening::dns::check;

use crate::support::{bytes_or_mutated, config, overwritten};

fn query(id: u16, name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.op_code = OpCode::Query;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let names = [
        "web.default.svc.clusterset.local.",
        "west.web.default.svc.clusterset.local.",
        "big.default.svc.clusterset.local.",
        "_http._tcp.web.default.svc.clusterset.local.",
        "nope.default.svc.clusterset.local.",
        "clusterset.local.",
        "example.com.",
        "a.",
    ];
    for (i, name) in names.iter().enumerate() {
        for qtype in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::SRV,
            RecordType::ANY,
            RecordType::AXFR,
            RecordType::TXT,
        ] {
            out.push(query(i as u16, name, qtype, i % 2 == 0));
        }
    }
    out
}

const DICT: &[&[u8]] = &[
    b"\xc0\x0c",
    b"\xc0\x00",
    b"\x00\x00\x29\x10\x00",
    b"\x3f",
    b"\x00\xff",
    b"\x00\xfc",
];

proptest! {
    #![proptest_config(config(8192, 0xd45))]
    #[test]
    fn any_packet_is_answered_without_amplification(bytes in bytes_or_mutated(300, seeds(), DICT)) {
        check(&bytes);
    }

    #[test]
    fn overwritten_queries_are_answered_without_amplification(bytes in overwritten(seeds())) {
        check(&bytes);
    }
}

#[test]
fn every_seed_query_is_checked() {
    for q in seeds() {
        check(&q);
    }
    // A query with a long unknown name in the zone still gets only the SOA.
    let long = format!(
        "{}.svc.clusterset.local.",
        vec!["x".repeat(60); 3].join(".")
    );
    check(&query(7, &long, RecordType::A, false));
}
