//! Hand-made packets: error codes, response sizes, truncation, metrics.

use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use strait_dns::encode_metrics;

use crate::support::{self, BIG, BIG_ENDPOINTS, WEB};

#[tokio::test]
async fn malformed_bodies_get_formerr_and_short_packets_are_dropped() {
    let s = support::start().await;
    let addr = s.addr();
    // A valid header announcing one question, then garbage.
    let mut packet = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    packet.extend_from_slice(&[0xc0, 0xff, 0x3f, 0x01]);
    let (m, _) = support::udp_query(addr, &packet).await;
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

    // Two questions in one query.
    let mut two = Message::from_vec(&support::query(7, WEB, RecordType::A, None)).unwrap();
    let q = two.queries[0].clone();
    two.add_query(q);
    let (m, _) = support::udp_query(addr, &two.to_vec().unwrap()).await;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

    // Fewer than 12 bytes: no header, nothing to answer.
    let none = support::udp_exchange(addr, &[1, 2, 3], Duration::from_millis(300)).await;
    assert!(none.is_none());
    // A response sent to the server is never answered (no reflection loops).
    let mut resp = Message::from_vec(&support::query(8, WEB, RecordType::A, None)).unwrap();
    resp.metadata.message_type = hickory_proto::op::MessageType::Response;
    let none =
        support::udp_exchange(addr, &resp.to_vec().unwrap(), Duration::from_millis(300)).await;
    assert!(none.is_none());
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unsupported_opcodes_classes_and_edns_versions_are_rejected() {
    let s = support::start().await;
    let addr = s.addr();
    let mut notify = Message::from_vec(&support::query(1, WEB, RecordType::A, None)).unwrap();
    notify.metadata.op_code = hickory_proto::op::OpCode::Notify;
    let (m, _) = support::udp_query(addr, &notify.to_vec().unwrap()).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);

    let mut chaos = Message::from_vec(&support::query(2, WEB, RecordType::A, None)).unwrap();
    chaos.queries[0].set_query_class(DNSClass::CH);
    let (m, _) = support::udp_query(addr, &chaos.to_vec().unwrap()).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);

    let mut v1 = Message::from_vec(&support::query(3, WEB, RecordType::A, Some(1232))).unwrap();
    if let Some(e) = v1.edns.as_mut() {
        e.set_version(1);
    }
    let (m, _) = support::udp_query(addr, &v1.to_vec().unwrap()).await;
    // Extended rcode 16 is BADVERS in an OPT answer (hickory names it BADSIG too).
    assert_eq!(u16::from(m.metadata.response_code), 16);
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn negative_answers_are_no_larger_than_needed() {
    let s = support::start().await;
    let addr = s.addr();
    let q = support::query(9, "example.com.", RecordType::ANY, None);
    let (m, len) = support::udp_query(addr, &q).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.recursion_available);
    assert_eq!(len, q.len(), "refused echoes the question only");

    let q = support::query(
        10,
        "nope.default.svc.clusterset.local.",
        RecordType::ANY,
        None,
    );
    let (m, len) = support::udp_query(addr, &q).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty() && m.additionals.is_empty());
    assert_eq!(m.authorities.len(), 1);
    assert!(len < q.len() + 80, "one soa only: {len} bytes");
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn udp_answers_are_truncated_at_the_negotiated_size_and_tcp_is_complete() {
    let s = support::start().await;
    let addr = s.addr();
    let (m, len) = support::udp_query(addr, &support::query(11, BIG, RecordType::A, None)).await;
    assert!(m.metadata.truncation);
    assert!(len <= 512, "{len}");
    // The client offers 4096; the server caps at 1232.
    let (m, len) =
        support::udp_query(addr, &support::query(12, BIG, RecordType::A, Some(4096))).await;
    assert!(m.metadata.truncation);
    assert!(len <= 1232 && len > 512, "{len}");
    // Small answers are not truncated.
    let (m, _) = support::udp_query(addr, &support::query(13, WEB, RecordType::A, None)).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 2);
    let m = support::tcp_query(
        s.server.tcp_addr(),
        &support::query(14, BIG, RecordType::A, None),
    )
    .await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), usize::from(BIG_ENDPOINTS));
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn queries_are_counted_by_type_and_rcode() {
    let s = support::start().await;
    let addr = s.addr();
    support::udp_query(addr, &support::query(1, WEB, RecordType::A, None)).await;
    support::udp_query(addr, &support::query(2, WEB, RecordType::A, None)).await;
    support::udp_query(addr, &support::query(3, "x.com.", RecordType::SRV, None)).await;
    let text = encode_metrics(&s.registry).unwrap();
    assert!(
        text.contains(r#"strait_dns_queries_total{type="A",rcode="NOERROR"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"strait_dns_queries_total{type="SRV",rcode="REFUSED"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("strait_dns_answer_duration_seconds_count 3"),
        "{text}"
    );
    s.server.shutdown().await.unwrap();
}
