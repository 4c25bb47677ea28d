//! A running server over a fixture view, and raw-packet helpers.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use prometheus_client::registry::Registry;
use strait_api::ClusterName;
use strait_dns::{
    ClusterEndpoints, DnsConfig, DnsMetrics, DnsServer, DnsView, GlobalService, PortProtocol,
    ServicePort, ViewHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub const WEB: &str = "web.default.svc.clusterset.local.";
pub const BIG: &str = "big.default.svc.clusterset.local.";
pub const WEST_GATEWAY: &str = "198.51.100.1";
/// Clients from this address count as meshed.
pub const MESHED_SRC: &str = "127.0.0.2";
pub const BIG_ENDPOINTS: u8 = 100;

fn cluster(
    name: &str,
    locality: &str,
    endpoints: Vec<SocketAddr>,
    gw: &[&str],
) -> ClusterEndpoints {
    ClusterEndpoints {
        cluster: ClusterName::new(name).unwrap(),
        locality: locality.parse().unwrap(),
        endpoints,
        gateways: gw.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// East is local. `web.default`: two v4 and one v6 endpoint in east, one in
/// west behind gateway 198.51.100.1:15443, VIP 127.77.0.1, port http/80.
/// `big.default`: 100 endpoints in east (answers exceed 512 and 1232 bytes).
pub fn fixture() -> DnsView {
    let mut view = DnsView::new(ClusterName::new("east").unwrap());
    let http = ServicePort {
        name: "http".to_owned(),
        port: 80,
        protocol: PortProtocol::Tcp,
    };
    view.services.push(GlobalService {
        name: "web".to_owned(),
        namespace: "default".to_owned(),
        vip: Some("127.77.0.1".parse().unwrap()),
        ports: vec![http.clone()],
        clusters: vec![
            cluster(
                "east",
                "us-east/us-east-1a",
                addrs(&["10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080"]),
                &["192.0.2.1:15443"],
            ),
            cluster(
                "west",
                "us-west/us-west-1a",
                addrs(&["10.1.0.1:8080"]),
                &["198.51.100.1:15443"],
            ),
        ],
        failover: vec![ClusterName::new("west").unwrap()],
        weights: Vec::new(),
    });
    let big = (1..=BIG_ENDPOINTS)
        .map(|i| SocketAddr::from(([10, 9, 0, i], 8080)))
        .collect();
    view.services.push(GlobalService {
        name: "big".to_owned(),
        namespace: "default".to_owned(),
        vip: None,
        ports: vec![http],
        clusters: vec![cluster("east", "us-east/us-east-1a", big, &[])],
        failover: Vec::new(),
        weights: Vec::new(),
    });
    view
}

/// Sets east's endpoints of `web` (empty: east is down for it).
pub fn with_east_endpoints(mut view: DnsView, endpoints: &[&str]) -> DnsView {
    view.services[0].clusters[0].endpoints = addrs(endpoints);
    view.version += 1;
    view
}

pub struct Running {
    pub server: DnsServer,
    pub view: ViewHandle,
    pub registry: Registry,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.server.udp_addr()
    }
}

pub async fn start() -> Running {
    let mut config = DnsConfig::new("127.0.0.1:0".parse().unwrap());
    config.meshed_clients = vec![format!("{MESHED_SRC}/32").parse().unwrap()];
    let view = ViewHandle::new(fixture()).unwrap();
    let mut registry = Registry::default();
    let metrics = DnsMetrics::register(&mut registry);
    let server = strait_dns::run(config, view.clone(), metrics)
        .await
        .unwrap();
    assert_eq!(server.udp_addr().port(), server.tcp_addr().port());
    Running {
        server,
        view,
        registry,
    }
}

/// A query message for `name`/`qtype`; with `edns`, advertises that size.
pub fn query(id: u16, name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// Sends `packet` over UDP and returns the raw response, or `None` when none
/// arrives within `wait`.
pub async fn udp_exchange(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(wait, sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

pub async fn udp_query(server: SocketAddr, packet: &[u8]) -> (Message, usize) {
    let raw = udp_exchange(server, packet, Duration::from_secs(2))
        .await
        .expect("no udp response");
    (Message::from_vec(&raw).unwrap(), raw.len())
}

pub async fn tcp_query(server: SocketAddr, packet: &[u8]) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    let len = u16::try_from(packet.len()).unwrap().to_be_bytes();
    s.write_all(&len).await.unwrap();
    s.write_all(packet).await.unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}
