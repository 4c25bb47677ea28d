//! Catalog sync: hostile peers (foreign claims, limit breakers, a million
//! entries), mutated and random protobuf, and peering tokens.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use prost::Message as _;
use strait_api::TrustDomain;
use strait_api::proto::federation::{Endpoint, ExportedService, Port, SyncUpdate};
use strait_federation::sync::SyncConfig;
use strait_federation::sync::import::Imports;
use strait_hardening::sync::{PEER, check, check_batch, check_peering_token, limits, link};

use crate::support::{bytes_or_mutated, config, mutated, within};

fn service(ns: &str, name: &str, cluster: &str, endpoints: usize) -> ExportedService {
    ExportedService {
        namespace: ns.into(),
        name: name.into(),
        ports: vec![Port {
            port: 80,
            protocol: "http1".into(),
        }],
        endpoints: (0..endpoints)
            .map(|i| Endpoint {
                address: format!("10.1.{}.{}:15006", i / 250, i % 250 + 1),
                locality: "us-west/us-west-1a".into(),
                identity: format!("spiffe://strait.local/ns/{ns}/sa/{name}"),
                health: "healthy".into(),
                weight: 1,
            })
            .collect(),
        cluster: cluster.into(),
    }
}

fn update(version: u64, upserts: Vec<ExportedService>) -> SyncUpdate {
    SyncUpdate {
        epoch: "e1".into(),
        version,
        reset: true,
        upserts,
        removals: vec!["shop/gone".into()],
        gateways: vec!["192.0.2.7:15443".into()],
        partial: false,
        cluster: PEER.into(),
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut foreign = service("shop", "pay", "east", 1);
    foreign.endpoints[0].identity = "spiffe://evil.local/ns/shop/sa/pay".into();
    [
        update(1, vec![service("shop", "web", PEER, 2)]),
        update(2, vec![service("shop", "web", PEER, 1), foreign]),
        update(
            3,
            (0..9)
                .map(|i| service("shop", &format!("s{i}"), PEER, 1))
                .collect(),
        ),
        update(4, vec![service("Shop", "w_b", PEER, 9)]),
    ]
    .iter()
    .map(|u| u.encode_to_vec())
    .collect()
}

const DICT: &[&[u8]] = &[
    b"\x22\x00",
    b"\xff\xff\xff\xff\x0f",
    b"\x2a\x05west!",
    b"\x12\x04east",
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
];

proptest! {
    #![proptest_config(config(4000, 0x5ec))]
    #[test]
    fn mutated_and_random_sync_messages_import_only_what_the_peer_owns(
        bytes in bytes_or_mutated(512, seeds(), DICT),
    ) {
        check(&bytes);
    }
}

#[test]
fn a_peer_cannot_import_another_clusters_services() {
    let foreign = service("shop", "pay", "east", 1);
    let mine = service("shop", "web", PEER, 1);
    check_batch(&[update(1, vec![foreign.clone(), mine])]);
    let imports = Imports::new(TrustDomain::new("strait.local").unwrap());
    let l = link();
    imports
        .apply(&l.peer, &[update(1, vec![foreign])], &limits())
        .unwrap();
    let views = imports.views(&BTreeMap::from([(l.peer.clone(), l.clone())]));
    assert!(views[&l.peer].services.is_empty());
    assert_eq!(imports.status()[0].refused.len(), 1);
}

#[test]
fn limit_breakers_are_refused_whole() {
    check_batch(&[update(
        1,
        (0..9)
            .map(|i| service("shop", &format!("s{i}"), PEER, 1))
            .collect(),
    )]);
    check_batch(&[update(1, vec![service("shop", "web", PEER, 9)])]);
}

#[test]
fn a_million_entries_are_refused_in_bounded_time() {
    let mut u = update(
        1,
        (0..5_001)
            .map(|i| service("shop", &format!("s{i}"), PEER, 0))
            .collect(),
    );
    u.removals = (0..1_000_000).map(|i| format!("shop/r{i}")).collect();
    let bytes = u.encode_to_vec();
    assert!(bytes.len() < strait_federation::sync::MAX_MESSAGE_BYTES);
    let imports = Imports::new(TrustDomain::new("strait.local").unwrap());
    let cfg = SyncConfig::default();
    let err = within(Duration::from_secs(20), "a million-entry update", || {
        let u = SyncUpdate::decode(bytes.as_slice()).unwrap();
        imports.apply(&link().peer, &[u], &cfg)
    });
    assert!(err.unwrap_err().to_string().contains("5001 services"));
    assert_eq!(imports.status()[0].services, 0);
}

proptest! {
    #![proptest_config(config(1024, 0x70e))]
    #[test]
    fn peering_tokens_never_panic(bytes in bytes_or_mutated(256, token_seeds(), &[b"=", b"A", b"_", b"-"])) {
        check_peering_token(&bytes);
    }

    #[test]
    fn mutated_token_json_never_panics(json in mutated(token_json(), &[b"\"", b"{", b"}", b":", b"0", b"-1", b"null"])) {
        use base64_like::encode;
        check_peering_token(encode(&json).as_bytes());
    }
}

fn token_json() -> Vec<Vec<u8>> {
    let j = r#"{"cluster":"west","trust_domain":"strait.local","bundle_pem":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n","controller":"127.0.0.1:15010","gateways":["127.0.0.1:15443"],"server_identity":"spiffe://strait.local/ns/strait/sa/controller","secret":"s3cr3t","expires_unix":18446744073709551615}"#;
    vec![j.as_bytes().to_vec()]
}

fn token_seeds() -> Vec<Vec<u8>> {
    token_json()
        .iter()
        .map(|j| base64_like::encode(j).into_bytes())
        .collect()
}

/// Base64url without padding (the token encoding), so mutated JSON gets
/// past the outer decoding.
mod base64_like {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn encode(b: &[u8]) -> String {
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = c
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, x)| n | u32::from(*x) << (16 - 8 * i));
            for i in 0..=c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}
