//! Queries through hickory-resolver, configured to talk only to the server
//! under test (no system resolv.conf, no hosts file).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::{Resolver, TokioResolver};

use crate::support::{self, BIG, BIG_ENDPOINTS, WEB, WEST_GATEWAY};

fn resolver(server: SocketAddr) -> TokioResolver {
    let mut udp = ConnectionConfig::udp();
    udp.port = server.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = server.port();
    let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
    let config = ResolverConfig::from_parts(None, Vec::new(), vec![ns]);
    let mut opts = ResolverOpts::default();
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    opts.edns0 = false;
    Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .unwrap()
}

fn ips(lookup: &hickory_resolver::lookup::Lookup) -> Vec<IpAddr> {
    lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn response_code(e: &NetError) -> Option<ResponseCode> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(n)) => Some(n.response_code),
        NetError::Dns(DnsError::ResponseCode(code)) => Some(*code),
        _ => None,
    }
}

#[tokio::test]
async fn resolver_gets_a_aaaa_and_srv() {
    let s = support::start().await;
    let r = resolver(s.addr());
    let a = r.lookup(WEB, RecordType::A).await.unwrap();
    assert_eq!(
        ips(&a),
        vec![IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2])]
    );
    assert!(a.answers().iter().all(|r| r.ttl <= 5));
    let aaaa = r.lookup(WEB, RecordType::AAAA).await.unwrap();
    assert_eq!(ips(&aaaa), vec!["fd00::1".parse::<IpAddr>().unwrap()]);
    let srv = r.srv_lookup(format!("_http._tcp.{WEB}")).await.unwrap();
    let got: Vec<(u16, u16, String)> = srv
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.priority, s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 8080, format!("east.{WEB}")),
            (1, 15443, format!("west.{WEB}")),
        ]
    );
    let west = r
        .lookup(format!("west.{WEB}"), RecordType::A)
        .await
        .unwrap();
    assert_eq!(ips(&west), vec![WEST_GATEWAY.parse::<IpAddr>().unwrap()]);
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn resolver_sees_nxdomain_with_soa_and_refused_outside_the_zone() {
    let s = support::start().await;
    let r = resolver(s.addr());
    let err = r
        .lookup("nope.default.svc.clusterset.local.", RecordType::A)
        .await
        .unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");
    let NetError::Dns(DnsError::NoRecordsFound(no)) = &err else {
        panic!("{err:?}");
    };
    assert!(no.soa.is_some(), "nxdomain carries the zone soa");
    let err = r.lookup(WEB, RecordType::TXT).await.unwrap_err();
    assert_eq!(
        response_code(&err),
        Some(ResponseCode::NoError),
        "nodata: {err:?}"
    );
    let err = r.lookup("example.com.", RecordType::A).await.unwrap_err();
    assert_eq!(response_code(&err), Some(ResponseCode::Refused), "{err:?}");
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn resolver_falls_back_to_tcp_for_truncated_answers() {
    let s = support::start().await;
    let r = resolver(s.addr());
    let big = r.lookup(BIG, RecordType::A).await.unwrap();
    assert_eq!(ips(&big).len(), usize::from(BIG_ENDPOINTS));
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn resolver_follows_failover_and_fail_back() {
    let s = support::start().await;
    let r = resolver(s.addr());
    let healthy = support::fixture();
    s.view
        .update(support::with_east_endpoints(healthy.clone(), &[]))
        .unwrap();
    let a = r.lookup(WEB, RecordType::A).await.unwrap();
    assert_eq!(ips(&a), vec![WEST_GATEWAY.parse::<IpAddr>().unwrap()]);
    s.view.update(healthy).unwrap();
    r.clear_cache();
    let a = r.lookup(WEB, RecordType::A).await.unwrap();
    assert_eq!(ips(&a)[0], IpAddr::from([10, 0, 0, 1]));
    s.server.shutdown().await.unwrap();
}
