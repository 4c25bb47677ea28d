//! Destination authorities: `parse_dst` round trips, and the gateway's
//! `CONNECT` decision never targets anything it does not export.

use proptest::prelude::*;
use strait_gateway::exports::{ExportTable, ExportedEndpoint, ExportedService, Index};
use strait_hardening::dst::{check, check_canonical, check_with, fixture};
use strait_proxy::headers::parse_dst;

use crate::support::{bytes_or_mutated, config};

const LABEL: &str = "[a-z]([a-z0-9-]{0,14}[a-z0-9])?";
const DICT: &[&[u8]] = &[
    b":", b".", b"[::1]", b"+", b"0", b"%", b"15443", b"\0", b"65536",
];

fn seeds() -> Vec<Vec<u8>> {
    [
        "web.default:80",
        "db.data:5432",
        "10.0.0.1:8080",
        "[fd00::5]:5432",
        "0.0.0.0:15443",
        "10.0.0.2:8080",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

proptest! {
    #![proptest_config(config(2048, 0xd57))]
    #[test]
    fn valid_authorities_round_trip(name in LABEL, ns in LABEL, port in any::<u16>()) {
        let a = format!("{name}.{ns}:{port}");
        prop_assert_eq!(parse_dst(&a), Some((name.as_str(), ns.as_str(), port)));
        check_canonical(&a);
        // The gateway reads the same authority the same way.
        let index = Index::from(ExportTable {
            services: vec![ExportedService {
                name: name.clone(),
                namespace: ns.clone(),
                ports: vec![port.max(1)],
                to: Vec::new(),
                endpoints: vec![ExportedEndpoint { address: ([10, 0, 0, 9], 80).into(), health: strait_api::snapshot::Health::Healthy }],
            }],
        });
        let d = index.decide(&format!("{name}.{ns}:{}", port.max(1)), &[], |_| 0);
        prop_assert_eq!(d.map(|d| d.service), Ok(format!("{name}.{ns}")));
    }

    #[test]
    fn random_authorities_never_reach_an_unexported_target(
        a in "[a-z0-9.:\\[\\]+%-]{0,32}",
        bytes in bytes_or_mutated(40, seeds(), DICT),
    ) {
        let index = fixture();
        check_with(&index, &a);
        check(&bytes);
    }
}

#[test]
fn gateway_refuses_itself_unexported_and_unhealthy_targets() {
    let index = fixture();
    for a in [
        "0.0.0.0:15443",
        "127.0.0.1:15443",
        "10.0.0.3:8080",
        "admin.ops:80",
        "web.default:81",
    ] {
        assert!(
            index
                .decide(a, &["0.0.0.0:15443".parse().unwrap()], |_| 0)
                .is_err(),
            "{a}"
        );
    }
    // Only the healthy endpoint of web.default is ever picked.
    for i in 0..8 {
        let d = index.decide("web.default:80", &[], |_| i).unwrap();
        assert_eq!(d.target, "10.0.0.1:8080".parse().unwrap());
    }
}

#[test]
fn parse_dst_accepts_only_canonical_name_namespace_port() {
    // Each is accepted today; `web.default:+80` even passes the gateway.
    let accepted: Vec<&str> = [
        "web.default:+80",
        "web.default:080",
        "web.de:fault:80",
        "we b.default:80",
        "web.default :80",
    ]
    .into_iter()
    .filter(|a| std::panic::catch_unwind(|| check_canonical(a)).is_err())
    .collect();
    assert!(
        accepted.is_empty(),
        "accepted non-canonical authorities: {accepted:?}"
    );
}

#[test]
fn proxy_config_refuses_a_local_service_with_a_port() {
    let yaml = "trust_domain: strait.local\nidentity: { files: { chain: c, key: k, bundle: b } }\nlocal_service: \"web.shop:1\"\n";
    assert!(strait_proxy::ProxyConfig::from_yaml(yaml).is_err());
}
