//! Random and mutated packets over UDP: the server answers or drops each,
//! never panics, never answers with more than it may, and keeps answering
//! a well-formed query sent concurrently.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;

use crate::support::{self, BIG, WEB};

const PACKETS: usize = 6000;

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, name) in [
        WEB,
        BIG,
        "_http._tcp.web.default.svc.clusterset.local.",
        "example.com.",
        "clusterset.local.",
    ]
    .iter()
    .enumerate()
    {
        for qtype in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::SRV,
            RecordType::ANY,
        ] {
            out.push(support::query(i as u16, name, qtype, None));
            out.push(support::query(i as u16, name, qtype, Some(4096)));
        }
    }
    out
}

fn mutate(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.random_bool(0.25) {
        let len = rng.random_range(0..700);
        return (0..len).map(|_| rng.random()).collect();
    }
    let mut p = seeds[rng.random_range(0..seeds.len())].clone();
    for _ in 0..rng.random_range(1..6) {
        match rng.random_range(0..5) {
            0 if !p.is_empty() => {
                let i = rng.random_range(0..p.len());
                p[i] = rng.random();
            }
            1 if !p.is_empty() => {
                let i = rng.random_range(0..p.len());
                p[i] ^= 1 << rng.random_range(0..8);
            }
            2 => p.truncate(rng.random_range(0..=p.len())),
            3 => {
                let extra = rng.random_range(1..64);
                p.extend((0..extra).map(|_| rng.random::<u8>()));
            }
            _ if p.len() >= 12 => {
                // Lie about section counts or point compression into the header.
                let i = rng.random_range(4..12);
                p[i] = rng.random();
            }
            _ => {}
        }
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_packets_never_break_the_server() {
    let s = support::start().await;
    let addr = s.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let good = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let query = support::query(0x5555, WEB, RecordType::A, None);
            let mut answered = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let raw = support::udp_exchange(addr, &query, Duration::from_secs(2))
                    .await
                    .expect("a good query went unanswered during the fuzz run");
                let m = Message::from_vec(&raw).unwrap();
                assert_eq!(m.metadata.response_code, ResponseCode::NoError);
                assert_eq!(m.answers.len(), 2);
                answered += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answered
        })
    };

    let mut rng = StdRng::seed_from_u64(0x57a1_7d25);
    let seeds = seeds();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (mut answered, mut largest) = (0usize, 0usize);
    for i in 0..PACKETS {
        let p = mutate(&mut rng, &seeds);
        sock.send_to(&p, addr).await.unwrap();
        if i % 32 == 31 {
            // Let the server catch up, so the socket buffer never overflows.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        while let Ok((n, _)) = sock.try_recv_from(&mut buf) {
            answered += 1;
            largest = largest.max(n);
            // Every answer is a parseable DNS message.
            assert!(Message::from_vec(&buf[..n]).is_ok(), "unparseable response");
        }
    }
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await
    {
        answered += 1;
        largest = largest.max(n);
    }
    stop.store(true, Ordering::Relaxed);
    let good_answers = good.await.expect("good-query task panicked");
    eprintln!(
        "fuzz: {answered} of {PACKETS} answered, largest {largest} bytes, \
         {good_answers} concurrent good queries answered"
    );

    assert!(
        answered > PACKETS / 4,
        "only {answered} of {PACKETS} answered"
    );
    assert!(largest <= 1232, "udp response of {largest} bytes");
    assert!(good_answers > 0);
    // Still healthy afterwards, over both transports.
    let (m, _) = support::udp_query(addr, &support::query(1, WEB, RecordType::A, None)).await;
    assert_eq!(m.answers.len(), 2);
    let m = support::tcp_query(
        s.server.tcp_addr(),
        &support::query(2, WEB, RecordType::A, None),
    )
    .await;
    assert_eq!(m.answers.len(), 2);
    s.server.shutdown().await.unwrap();
}
