//! Table tests of the answer function over one fixture view.

use std::net::IpAddr;

use hickory_proto::rr::rdata::SOA;
use strait_api::ClusterName;

use super::*;
use crate::view::{
    ClusterEndpoints, DnsView, GlobalService, LocalityWeight, PortProtocol, ServicePort,
};

fn cluster(name: &str, locality: &str, endpoints: &[&str], gateways: &[&str]) -> ClusterEndpoints {
    ClusterEndpoints {
        cluster: ClusterName::new(name).unwrap(),
        locality: locality.parse().unwrap(),
        endpoints: endpoints.iter().map(|a| a.parse().unwrap()).collect(),
        gateways: gateways.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

/// `web.default`: east (local) has two v4 and one v6 endpoint; west and
/// central have one endpoint each behind a gateway; failover: west, central.
fn fixture() -> DnsView {
    let mut view = DnsView::new(ClusterName::new("east").unwrap());
    view.version = 42;
    view.services.push(GlobalService {
        name: "web".to_owned(),
        namespace: "default".to_owned(),
        vip: Some("127.77.0.1".parse().unwrap()),
        ports: vec![
            ServicePort {
                name: "http".to_owned(),
                port: 80,
                protocol: PortProtocol::Tcp,
            },
            ServicePort {
                name: "grpc".to_owned(),
                port: 9090,
                protocol: PortProtocol::Tcp,
            },
        ],
        clusters: vec![
            cluster(
                "central",
                "eu-central/z1",
                &["10.2.0.1:8080"],
                &["203.0.113.1:15443"],
            ),
            cluster(
                "east",
                "us-east/us-east-1a",
                &["10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080"],
                &["192.0.2.1:15443"],
            ),
            cluster(
                "west",
                "us-west/us-west-1a",
                &["10.1.0.1:8080"],
                &["198.51.100.1:15443"],
            ),
        ],
        failover: vec![
            ClusterName::new("west").unwrap(),
            ClusterName::new("central").unwrap(),
        ],
        weights: Vec::new(),
    });
    view
}

fn cluster_mut<'a>(view: &'a mut DnsView, name: &str) -> &'a mut ClusterEndpoints {
    view.services[0]
        .clusters
        .iter_mut()
        .find(|c| c.cluster.as_str() == name)
        .unwrap()
}

fn ask_with(
    view: &DnsView,
    name: &str,
    qtype: RecordType,
    client: ClientKind,
    pick: u16,
) -> Answer {
    ask_cfg(view, name, qtype, client, pick, &AnswerConfig::default())
}

fn ask_cfg(
    view: &DnsView,
    name: &str,
    qtype: RecordType,
    client: ClientKind,
    pick: u16,
    cfg: &AnswerConfig,
) -> Answer {
    let indexed = IndexedView::new(view.clone()).unwrap();
    let name = Name::from_ascii(name).unwrap();
    let q = Question {
        name: &name,
        qtype,
        client,
        pick,
    };
    answer(&indexed, &q, cfg)
}

fn ask(view: &DnsView, name: &str, qtype: RecordType) -> Answer {
    ask_with(view, name, qtype, ClientKind::Unmeshed, 0)
}

fn ips(a: &Answer) -> Vec<IpAddr> {
    a.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn ip_list(s: &[&str]) -> Vec<IpAddr> {
    s.iter().map(|a| a.parse().unwrap()).collect()
}

fn srvs(a: &Answer) -> Vec<(u16, u16, u16, String)> {
    a.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.priority, s.weight, s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect()
}

const WEB: &str = "web.default.svc.clusterset.local.";

fn assert_nodata(a: &Answer) {
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.authoritative);
    assert!(a.answers.is_empty(), "{:?}", a.answers);
    assert!(a.soa.is_some());
}

fn assert_nxdomain(a: &Answer) {
    assert_eq!(a.rcode, ResponseCode::NXDomain);
    assert!(a.authoritative);
    assert!(a.answers.is_empty());
    let soa = a.soa.as_ref().unwrap();
    assert_eq!(soa.name.to_ascii(), "clusterset.local.");
    assert_eq!(soa.ttl, DEFAULT_TTL);
}

#[test]
fn unmeshed_clients_get_local_healthy_endpoints_by_family() {
    let view = fixture();
    let a = ask(&view, WEB, RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.authoritative);
    assert_eq!(ips(&a), ip_list(&["10.0.0.1", "10.0.0.2"]));
    assert!(a.answers.iter().all(|r| r.ttl == DEFAULT_TTL));
    assert_eq!(
        ips(&ask(&view, WEB, RecordType::AAAA)),
        ip_list(&["fd00::1"])
    );
    let any = ask(&view, WEB, RecordType::ANY);
    assert_eq!(ips(&any), ip_list(&["10.0.0.1", "10.0.0.2", "fd00::1"]));
}

#[test]
fn meshed_clients_get_the_vip_and_nodata_for_the_other_family() {
    let view = fixture();
    let a = ask_with(&view, WEB, RecordType::A, ClientKind::Meshed, 0);
    assert_eq!(ips(&a), ip_list(&["127.77.0.1"]));
    assert_nodata(&ask_with(
        &view,
        WEB,
        RecordType::AAAA,
        ClientKind::Meshed,
        0,
    ));
    // Without a VIP a meshed client is answered like any other.
    let mut no_vip = fixture();
    no_vip.services[0].vip = None;
    let a = ask_with(&no_vip, WEB, RecordType::A, ClientKind::Meshed, 0);
    assert_eq!(ips(&a), ip_list(&["10.0.0.1", "10.0.0.2"]));
}

#[test]
fn failover_moves_to_next_cluster_gateway_in_failover_order_and_back() {
    let mut view = fixture();
    let healthy = view.clone();
    cluster_mut(&mut view, "east").endpoints.clear();
    assert_eq!(
        ips(&ask(&view, WEB, RecordType::A)),
        ip_list(&["198.51.100.1"])
    );
    // The declared order wins over names.
    view.services[0].failover.reverse();
    assert_eq!(
        ips(&ask(&view, WEB, RecordType::A)),
        ip_list(&["203.0.113.1"])
    );
    // Unlisted clusters come last.
    view.services[0].failover.clear();
    cluster_mut(&mut view, "central").endpoints.clear();
    assert_eq!(
        ips(&ask(&view, WEB, RecordType::A)),
        ip_list(&["198.51.100.1"])
    );
    // A gateway of a cluster with no healthy endpoint is never answered.
    cluster_mut(&mut view, "west").endpoints.clear();
    assert_nodata(&ask(&view, WEB, RecordType::A));
    // Fail back when local health returns.
    assert_eq!(
        ips(&ask(&healthy, WEB, RecordType::A)),
        ip_list(&["10.0.0.1", "10.0.0.2"])
    );
}

#[test]
fn remote_clusters_without_gateways_are_reached_at_their_endpoints() {
    let mut view = fixture();
    cluster_mut(&mut view, "east").endpoints.clear();
    cluster_mut(&mut view, "west").gateways.clear();
    assert_eq!(ips(&ask(&view, WEB, RecordType::A)), ip_list(&["10.1.0.1"]));
}

#[test]
fn locality_weights_spread_first_answers_and_fail_over_when_weighted_clusters_are_down() {
    let mut view = fixture();
    view.services[0].weights = vec![
        LocalityWeight {
            pattern: "us-east/*".parse().unwrap(),
            weight: 80,
        },
        LocalityWeight {
            pattern: "us-west/*".parse().unwrap(),
            weight: 20,
        },
    ];
    let indexed = IndexedView::new(view.clone()).unwrap();
    let name = Name::from_ascii(WEB).unwrap();
    let mut east_first = 0u32;
    for pick in 0..=u16::MAX {
        let q = Question {
            name: &name,
            qtype: RecordType::A,
            client: ClientKind::Unmeshed,
            pick,
        };
        let a = answer(&indexed, &q, &AnswerConfig::default());
        let got = ips(&a);
        assert_eq!(got.len(), 3, "both weighted clusters are answered");
        if got[0] == "10.0.0.1".parse::<IpAddr>().unwrap() {
            east_first += 1;
        }
    }
    let share = f64::from(east_first) / 65536.0;
    assert!((share - 0.8).abs() < 0.01, "east first in {share}");

    // SRV carries the weights at priority 0; central is the fallback.
    let srv = srvs(&ask(&view, WEB, RecordType::SRV));
    assert!(srv.contains(&(
        0,
        80,
        8080,
        "east.web.default.svc.clusterset.local.".to_owned()
    )));
    assert!(srv.contains(&(
        0,
        20,
        15443,
        "west.web.default.svc.clusterset.local.".to_owned()
    )));
    assert!(srv.contains(&(
        1,
        1,
        15443,
        "central.web.default.svc.clusterset.local.".to_owned()
    )));

    cluster_mut(&mut view, "east").endpoints.clear();
    cluster_mut(&mut view, "west").endpoints.clear();
    assert_eq!(
        ips(&ask(&view, WEB, RecordType::A)),
        ip_list(&["203.0.113.1"])
    );
}

#[test]
fn srv_lists_every_healthy_cluster_by_priority_and_meshed_ports_on_the_vip() {
    let view = fixture();
    let srv = srvs(&ask(&view, WEB, RecordType::SRV));
    assert_eq!(
        srv,
        vec![
            (
                0,
                1,
                8080,
                "east.web.default.svc.clusterset.local.".to_owned()
            ),
            (
                1,
                1,
                15443,
                "west.web.default.svc.clusterset.local.".to_owned()
            ),
            (
                2,
                1,
                15443,
                "central.web.default.svc.clusterset.local.".to_owned()
            ),
        ]
    );
    let meshed = ask_with(&view, WEB, RecordType::SRV, ClientKind::Meshed, 0);
    assert_eq!(
        srvs(&meshed),
        vec![(0, 1, 80, WEB.to_owned()), (0, 1, 9090, WEB.to_owned())]
    );
    let named = format!("_grpc._tcp.{WEB}");
    let meshed = ask_with(&view, &named, RecordType::SRV, ClientKind::Meshed, 0);
    assert_eq!(srvs(&meshed), vec![(0, 1, 9090, WEB.to_owned())]);
    assert_eq!(srvs(&ask(&view, &named, RecordType::SRV)).len(), 3);
    assert_nodata(&ask(&view, &named, RecordType::A));
    assert_nxdomain(&ask(&view, &format!("_grpc._udp.{WEB}"), RecordType::SRV));
    assert_nxdomain(&ask(&view, &format!("_ftp._tcp.{WEB}"), RecordType::SRV));
    assert_nodata(&ask(&view, &format!("_tcp.{WEB}"), RecordType::SRV));
    assert_nxdomain(&ask(&view, &format!("_udp.{WEB}"), RecordType::SRV));
}

#[test]
fn per_cluster_names_answer_that_cluster_only() {
    let mut view = fixture();
    let west = format!("west.{WEB}");
    let east = format!("east.{WEB}");
    assert_eq!(
        ips(&ask(&view, &west, RecordType::A)),
        ip_list(&["198.51.100.1"])
    );
    let meshed = ask_with(&view, &east, RecordType::A, ClientKind::Meshed, 0);
    assert_eq!(ips(&meshed), ip_list(&["10.0.0.1", "10.0.0.2"]));
    assert_eq!(
        srvs(&ask(&view, &west, RecordType::SRV)),
        vec![(0, 1, 15443, west.clone())]
    );
    assert_nxdomain(&ask(&view, &format!("north.{WEB}"), RecordType::A));
    cluster_mut(&mut view, "west").endpoints.clear();
    assert_nodata(&ask(&view, &west, RecordType::A));
}

#[test]
fn names_in_the_zone_without_data_are_nodata_and_unknown_ones_nxdomain() {
    let view = fixture();
    let cases: &[(&str, RecordType, Option<ResponseCode>)] = &[
        (WEB, RecordType::TXT, None),
        (WEB, RecordType::MX, None),
        ("svc.clusterset.local.", RecordType::A, None),
        ("default.svc.clusterset.local.", RecordType::A, None),
        ("clusterset.local.", RecordType::A, None),
        (
            "api.default.svc.clusterset.local.",
            RecordType::A,
            Some(ResponseCode::NXDomain),
        ),
        (
            "web.other.svc.clusterset.local.",
            RecordType::A,
            Some(ResponseCode::NXDomain),
        ),
        (
            "other.svc.clusterset.local.",
            RecordType::A,
            Some(ResponseCode::NXDomain),
        ),
        (
            "web.default.pod.clusterset.local.",
            RecordType::A,
            Some(ResponseCode::NXDomain),
        ),
        (
            "foo.clusterset.local.",
            RecordType::A,
            Some(ResponseCode::NXDomain),
        ),
        (
            "a.b.c.d.e.f.svc.clusterset.local.",
            RecordType::A,
            Some(ResponseCode::NXDomain),
        ),
        (
            "*.web.default.svc.clusterset.local.",
            RecordType::A,
            Some(ResponseCode::NXDomain),
        ),
        (
            "x.east.web.default.svc.clusterset.local.",
            RecordType::A,
            Some(ResponseCode::NXDomain),
        ),
    ];
    for (name, qtype, want) in cases {
        let a = ask(&view, name, *qtype);
        match want {
            None => assert_nodata(&a),
            Some(_) => assert_nxdomain(&a),
        }
    }
}

#[test]
fn names_outside_the_zone_and_transfers_are_refused_without_records() {
    let view = fixture();
    for name in [
        "example.com.",
        ".",
        "local.",
        "clusterset.local.evil.example.",
        "web.default.svc.cluster.local.",
    ] {
        let a = ask(&view, name, RecordType::A);
        assert_eq!(a.rcode, ResponseCode::Refused, "{name}");
        assert!(!a.authoritative);
        assert!(a.answers.is_empty() && a.soa.is_none(), "{name}");
    }
    let a = ask(&view, "clusterset.local.", RecordType::AXFR);
    assert_eq!(a.rcode, ResponseCode::Refused);
}

#[test]
fn names_match_case_insensitively_and_records_keep_the_asked_case() {
    let view = fixture();
    let asked = "WEB.Default.SVC.ClusterSet.Local.";
    let a = ask(&view, asked, RecordType::A);
    assert_eq!(ips(&a).len(), 2);
    assert_eq!(a.answers[0].name.to_ascii(), asked);
    assert_eq!(
        ips(&ask(
            &view,
            "East.WEB.default.svc.clusterset.local.",
            RecordType::A
        ))
        .len(),
        2
    );
}

#[test]
fn apex_soa_carries_the_view_version_and_the_configured_ttl() {
    let view = fixture();
    let indexed = IndexedView::new(view).unwrap();
    let name = Name::from_ascii("clusterset.local.").unwrap();
    let q = Question {
        name: &name,
        qtype: RecordType::SOA,
        client: ClientKind::Unmeshed,
        pick: 0,
    };
    let a = answer(
        &indexed,
        &q,
        &AnswerConfig {
            ttl: 30,
            egress: None,
        },
    );
    let RData::SOA(soa) = &a.answers[0].data else {
        panic!("not a soa: {a:?}");
    };
    let soa: &SOA = soa;
    assert_eq!(soa.serial, 42);
    assert_eq!(soa.minimum, 30);
    assert_eq!(a.answers[0].ttl, 30);
    let web = Name::from_ascii(WEB).unwrap();
    let q = Question {
        name: &web,
        qtype: RecordType::A,
        ..q
    };
    assert!(
        answer(
            &indexed,
            &q,
            &AnswerConfig {
                ttl: 30,
                egress: None
            }
        )
        .answers
        .iter()
        .all(|r| r.ttl == 30)
    );
}

#[test]
fn a_custom_zone_is_served_instead_of_the_default() {
    let mut view = fixture();
    view.zone = "mesh.example".to_owned();
    let a = ask(&view, "web.default.svc.mesh.example.", RecordType::A);
    assert_eq!(ips(&a).len(), 2);
    assert_eq!(ask(&view, WEB, RecordType::A).rcode, ResponseCode::Refused);
}

/// With a local egress, a client without a sidecar gets the egress for a
/// service served elsewhere (plain TCP/HTTP on the service's ports), its
/// own cluster's endpoints while they are healthy, and meshed clients
/// keep the VIP.
#[test]
fn with_an_egress_unmeshed_clients_get_a_local_address_for_remote_services() {
    let egress: IpAddr = "192.0.2.9".parse().unwrap();
    let cfg = AnswerConfig {
        egress: Some(egress),
        ..AnswerConfig::default()
    };
    let ask = |view: &DnsView, name: &str, qtype: RecordType, client: ClientKind| {
        ask_cfg(view, name, qtype, client, 0, &cfg)
    };
    let svc = "web.default.svc.clusterset.local.";
    let mut view = fixture();
    // Local endpoints healthy: answered directly, egress or not.
    let a = ask(&view, svc, RecordType::A, ClientKind::Unmeshed);
    assert_eq!(ips(&a), ip_list(&["10.0.0.1", "10.0.0.2"]));
    // East has nothing healthy: west serves, through the egress.
    cluster_mut(&mut view, "east").endpoints.clear();
    let a = ask(&view, svc, RecordType::A, ClientKind::Unmeshed);
    assert_eq!(ips(&a), vec![egress]);
    let a = ask(
        &view,
        "west.web.default.svc.clusterset.local.",
        RecordType::A,
        ClientKind::Unmeshed,
    );
    assert_eq!(ips(&a), vec![egress]);
    // SRV: the service's own ports on the egress (not the gateway's 15443).
    let ports: Vec<u16> = srvs(&ask(&view, svc, RecordType::SRV, ClientKind::Unmeshed))
        .iter()
        .map(|s| s.2)
        .collect();
    assert!(
        ports.contains(&80) && ports.contains(&9090) && !ports.contains(&15443),
        "{ports:?}"
    );
    // Meshed clients keep the VIP.
    let a = ask(&view, svc, RecordType::A, ClientKind::Meshed);
    assert_eq!(ips(&a), ip_list(&["127.77.0.1"]));
}
