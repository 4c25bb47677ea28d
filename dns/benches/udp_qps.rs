//! Queries per second over UDP on loopback: Strait's server against a
//! hickory-server serving a static in-memory zone with the same records,
//! both behind the same hickory `Server` loop, in one run. Prints the ratio
//! (target: Strait >= 0.8 of the static zone).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use strait_api::ClusterName;
use strait_dns::{
    ClusterEndpoints, DnsConfig, DnsMetrics, DnsView, GlobalService, PortProtocol, ServicePort,
    ViewHandle,
};
use tokio::net::UdpSocket;

const NAME: &str = "web.default.svc.clusterset.local.";
const ENDPOINTS: [[u8; 4]; 3] = [[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3]];
/// Queries in flight at once (one socket each).
const CONCURRENCY: u64 = 32;

/// (queries, time) measured per server, across criterion's samples.
static TOTALS: Mutex<[(u64, Duration); 2]> = Mutex::new([(0, Duration::ZERO); 2]);

fn view() -> DnsView {
    let mut view = DnsView::new(ClusterName::new("east").unwrap());
    view.services.push(GlobalService {
        name: "web".to_owned(),
        namespace: "default".to_owned(),
        vip: Some("127.77.0.1".parse().unwrap()),
        ports: vec![ServicePort {
            name: "http".to_owned(),
            port: 80,
            protocol: PortProtocol::Tcp,
        }],
        clusters: vec![
            ClusterEndpoints {
                cluster: ClusterName::new("east").unwrap(),
                locality: "us-east/us-east-1a".parse().unwrap(),
                endpoints: ENDPOINTS
                    .iter()
                    .map(|ip| SocketAddr::from((*ip, 8080)))
                    .collect(),
                gateways: vec!["192.0.2.1:15443".parse().unwrap()],
            },
            ClusterEndpoints {
                cluster: ClusterName::new("west").unwrap(),
                locality: "us-west/us-west-1a".parse().unwrap(),
                endpoints: vec!["10.1.0.1:8080".parse().unwrap()],
                gateways: vec!["198.51.100.1:15443".parse().unwrap()],
            },
        ],
        failover: vec![ClusterName::new("west").unwrap()],
        weights: Vec::new(),
    });
    view
}

/// The same answer as a static zone: SOA plus the three A records.
fn static_zone() -> Catalog {
    let origin = Name::from_str("clusterset.local.").unwrap();
    let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let soa = SOA::new(
        Name::from_str("ns.clusterset.local.").unwrap(),
        Name::from_str("hostmaster.clusterset.local.").unwrap(),
        1,
        60,
        10,
        3600,
        5,
    );
    zone.upsert_mut(Record::from_rdata(origin.clone(), 5, RData::SOA(soa)), 1);
    for ip in ENDPOINTS {
        let a = Record::from_rdata(
            Name::from_str(NAME).unwrap(),
            5,
            RData::A(A::from(std::net::Ipv4Addr::from(ip))),
        );
        zone.upsert_mut(a, 1);
    }
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
    catalog
}

async fn start_static() -> (SocketAddr, Server<Catalog>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let mut server = Server::new(static_zone());
    server.register_socket(sock);
    (addr, server)
}

fn query(id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_str(NAME).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

async fn check(addr: SocketAddr) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&query(1), addr).await.unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).await.unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), ENDPOINTS.len(), "{addr}: {m:?}");
}

/// Sends `total` queries with CONCURRENCY in flight; returns the time taken.
async fn load(addr: SocketAddr, total: u64) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..CONCURRENCY {
        let n = total / CONCURRENCY + u64::from(k < total % CONCURRENCY);
        if n == 0 {
            continue;
        }
        tasks.push(tokio::spawn(async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            sock.connect(addr).await.unwrap();
            let packet = query(k as u16);
            let mut buf = [0u8; 1500];
            for _ in 0..n {
                loop {
                    sock.send(&packet).await.unwrap();
                    let got =
                        tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await;
                    if matches!(got, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (strait, mut reference) = rt.block_on(async {
        let config = DnsConfig::new("127.0.0.1:0".parse().unwrap());
        let handle = ViewHandle::new(view()).unwrap();
        let strait = strait_dns::run(config, handle, DnsMetrics::default())
            .await
            .unwrap();
        let reference = start_static().await;
        check(strait.udp_addr()).await;
        check(reference.0).await;
        (strait, reference)
    });
    let targets = [("strait", strait.udp_addr()), ("static_zone", reference.0)];

    let mut group = c.benchmark_group("dns_udp");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for (i, (name, addr)) in targets.iter().enumerate() {
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let took = rt.block_on(load(*addr, iters));
                let mut totals = TOTALS.lock().unwrap();
                totals[i].0 += iters;
                totals[i].1 += took;
                took
            })
        });
    }
    group.finish();

    let totals = *TOTALS.lock().unwrap();
    let qps = |(n, d): (u64, Duration)| n as f64 / d.as_secs_f64().max(f64::EPSILON);
    let (s, r) = (qps(totals[0]), qps(totals[1]));
    eprintln!(
        "dns_udp: strait {s:.0} q/s, static zone {r:.0} q/s, ratio {:.2} (target >= 0.80)",
        s / r.max(f64::EPSILON)
    );
    rt.block_on(async {
        strait.shutdown().await.unwrap();
        reference.1.shutdown_gracefully().await.unwrap();
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
