//! Configuration YAML: the proxy's config [`Snapshot`], the sidecar's
//! [`ProxyConfig`], the gateway's [`GatewayConfig`] and the federation
//! catalog files ([`Registration`], [`PolicySpec`]) as the directory store
//! loads them (serde, then `validate`).
//!
//! Invariants: no input panics or takes unbounded time (alias bombs, deep
//! nesting); a validation error names a non-empty field; an error message
//! stays within a constant of the input's size; what is accepted validates
//! again, and catalog entries and snapshots survive a write/read round trip.

use strait_api::snapshot::Snapshot;
use strait_api::{ClusterName, TrustDomain};
use strait_federation::catalog::{PolicySpec, Registration};
use strait_gateway::GatewayConfig;
use strait_proxy::ProxyConfig;

/// Which loader [`check`] feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    Snapshot,
    Proxy,
    Gateway,
    Registration,
    Policy,
}

impl Loader {
    pub const ALL: [Self; 5] = [
        Self::Snapshot,
        Self::Proxy,
        Self::Gateway,
        Self::Registration,
        Self::Policy,
    ];
}

/// Feeds `bytes` (as text) to every loader.
pub fn check(bytes: &[u8]) {
    let text = crate::text(bytes);
    for loader in Loader::ALL {
        check_one(loader, &text);
    }
}

/// Feeds `text` to one loader.
pub fn check_one(loader: Loader, text: &str) {
    match loader {
        Loader::Snapshot => snapshot(text),
        Loader::Proxy => proxy(text),
        Loader::Gateway => gateway(text),
        Loader::Registration => registration(text),
        Loader::Policy => policy(text),
    }
}

/// An error message may quote the input, but not amplify it.
fn bounded(text: &str, msg: &str) {
    assert!(!msg.is_empty(), "empty error for {text:?}");
    assert!(
        msg.len() <= 2 * text.len() + 1024,
        "error of {} bytes for {} bytes of input",
        msg.len(),
        text.len()
    );
}

fn snapshot(text: &str) {
    match Snapshot::from_yaml(text) {
        Ok(s) => {
            s.validate()
                .unwrap_or_else(|e| panic!("accepted, then invalid: {e}"));
            let again = serde_yaml_ng::to_string(&s).unwrap_or_else(|e| panic!("{e}"));
            let back = Snapshot::from_yaml(&again)
                .unwrap_or_else(|e| panic!("written snapshot does not load: {e}\n{again}"));
            assert_eq!(back, s, "snapshot changed in a round trip:\n{again}");
        }
        Err(e) => {
            if let Some(field) = e.field() {
                assert!(!field.is_empty(), "{e}");
            }
            bounded(text, &e.to_string());
        }
    }
}

fn proxy(text: &str) {
    match ProxyConfig::from_yaml(text) {
        Ok(c) => {
            c.validate()
                .unwrap_or_else(|e| panic!("accepted, then invalid: {e}"));
            assert!(c.limits.max_header_bytes >= 1024 && c.limits.max_headers >= 1);
        }
        Err(e) => {
            if let strait_proxy::config::ConfigError::Invalid { field, .. } = &e {
                assert!(!field.is_empty(), "{e}");
            }
            bounded(text, &e.to_string());
        }
    }
}

fn gateway(text: &str) {
    match GatewayConfig::from_yaml(text) {
        Ok(c) => {
            c.validate()
                .unwrap_or_else(|e| panic!("accepted, then invalid: {e}"));
        }
        Err(e) => {
            if let strait_gateway::config::ConfigError::Invalid { field, .. } = &e {
                assert!(!field.is_empty(), "{e}");
            }
            bounded(text, &e.to_string());
        }
    }
}

fn catalog_ids() -> (TrustDomain, ClusterName) {
    let td = TrustDomain::new("strait.local").unwrap_or_else(|e| panic!("{e}"));
    let local = ClusterName::new("east").unwrap_or_else(|e| panic!("{e}"));
    (td, local)
}

/// The directory store checks nesting before it parses (as here).
fn guarded(text: &str) -> bool {
    strait_api::yaml::check_nesting(text, strait_api::yaml::MAX_YAML_NESTING).is_ok()
}

fn registration(text: &str) {
    if !guarded(text) {
        return;
    }
    let (td, local) = catalog_ids();
    match serde_yaml_ng::from_str::<Registration>(text) {
        Ok(r) => match r.validate(&td, &local) {
            Ok(()) => {
                let again = serde_yaml_ng::to_string(&r).unwrap_or_else(|e| panic!("{e}"));
                let back: Registration = serde_yaml_ng::from_str(&again)
                    .unwrap_or_else(|e| panic!("written entry does not load: {e}\n{again}"));
                assert_eq!(back, r, "registration changed in a round trip:\n{again}");
                back.validate(&td, &local)
                    .unwrap_or_else(|e| panic!("round trip made it invalid: {e:?}"));
            }
            Err(e) => {
                assert!(!e.field.is_empty(), "{e:?}");
                bounded(text, &format!("{}: {:?} {}", e.field, e.value, e.reason));
            }
        },
        Err(e) => bounded(text, &e.to_string()),
    }
}

fn policy(text: &str) {
    if !guarded(text) {
        return;
    }
    match serde_yaml_ng::from_str::<PolicySpec>(text) {
        Ok(p) => match p.validate() {
            Ok(()) => {
                let again = serde_yaml_ng::to_string(&p).unwrap_or_else(|e| panic!("{e}"));
                let back: PolicySpec = serde_yaml_ng::from_str(&again)
                    .unwrap_or_else(|e| panic!("written policy does not load: {e}\n{again}"));
                assert_eq!(back, p, "policy changed in a round trip:\n{again}");
            }
            Err(e) => {
                assert!(!e.field.is_empty(), "{e:?}");
                bounded(text, &format!("{}: {:?} {}", e.field, e.value, e.reason));
            }
        },
        Err(e) => bounded(text, &e.to_string()),
    }
}

/// Well-formed seeds for mutation, one or more per loader.
pub const SEEDS: &[(Loader, &str)] = &[
    (Loader::Snapshot, SNAPSHOT),
    (Loader::Proxy, PROXY),
    (Loader::Proxy, PROXY_CA),
    (Loader::Gateway, GATEWAY),
    (Loader::Registration, REGISTRATION),
    (Loader::Policy, POLICY),
];

/// The api crate's fixture with every snapshot field set.
const SNAPSHOT: &str = include_str!("../../api/src/snapshot/testdata/full.yaml");

const PROXY: &str = r#"trust_domain: strait.local
identity:
  files: { chain: c.pem, key: k.pem, bundle: b.pem }
listeners: { inbound: 127.0.0.1:15006, outbound: 127.0.0.1:15001, admin: 127.0.0.1:15000, bind_vips: false }
app:
  - { port: 9080, protocol: http1, target: 127.0.0.1:9080 }
  - { port: 9090, protocol: grpc, permissive_listen: 127.0.0.1:19090 }
local_service: web.shop
limits: { max_header_bytes: 65536, max_headers: 100, header_read_timeout: 10s, sniff_timeout: 300ms }
access_log: true
"#;

const PROXY_CA: &str = r#"trust_domain: strait.local
identity:
  ca: { address: 127.0.0.1:15012, spiffe_id: spiffe://strait.local/ns/shop/sa/web, token_file: t, bundle: b.pem }
"#;

const GATEWAY: &str = r#"cluster: west
trust_domain: strait.local
identity:
  files: { chain: c.pem, key: k.pem, bundle: b.pem }
limits: { max_streams_per_cluster: 100, idle_timeout: 1h, handshake_timeout: 10s }
"#;

const REGISTRATION: &str = r#"name: reviews
namespace: shop
ports:
  - { port: 9080, protocol: http1 }
endpoints:
  - { address: 10.0.0.7:15006, locality: us-east/us-east-1b, weight: 2 }
  - { address: "[fd00::7]:15006", identity: spiffe://strait.local/ns/shop/sa/reviews }
export: { to: [west] }
health_check: { kind: http, path: /healthz, interval: 5s, timeout: 1s }
"#;

const POLICY: &str = r#"name: reviews
namespace: shop
failover: [west, central]
distribute:
  - from: us-east/*
    to: { "us-east/*": 80, "us-west/*": 20 }
overprovisioning_factor: 1.4
"#;
