use std::net::SocketAddr;

use strait_api::snapshot::Snapshot;
use tokio::net::{TcpListener, TcpStream};

use super::*;

const SNAPSHOT: &str = r#"
version: 1
local: { cluster: east }
services:
  - name: web
    namespace: shop
    vip: 127.77.0.10
    ports: [{ port: 80, protocol: http1 }, { port: 9090, protocol: grpc }]
    endpoints:
      - { address: "10.0.0.1:15006", cluster: east, identity: "spiffe://strait.local/ns/shop/sa/web" }
  - name: db
    namespace: shop
    vip: 127.77.0.11
    ports: [{ port: 5432, protocol: tcp }]
    endpoints:
      - { address: "10.0.0.2:15006", cluster: east, identity: "spiffe://strait.local/ns/shop/sa/db" }
      - { address: "[fd00::2]:15006", cluster: east, identity: "spiffe://strait.local/ns/shop/sa/db" }
"#;

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn svc(vip: &str, port: u16) -> Destination {
    Destination::Service {
        vip: vip.parse().unwrap(),
        port,
    }
}

#[test]
fn original_destinations_map_to_services_or_the_unknown_policy() {
    let snap = Snapshot::from_yaml(SNAPSHOT).unwrap();
    let listener = a("127.0.0.1:15002");
    let local = a("127.0.0.1:15002");
    use Unknown::{Passthrough, Refuse};
    let cases = [
        (
            "vip and port",
            "127.77.0.10:80",
            Passthrough,
            svc("127.77.0.10", 80),
        ),
        (
            "vip, second port",
            "127.77.0.10:9090",
            Refuse,
            svc("127.77.0.10", 9090),
        ),
        (
            "vip as ipv4-mapped ipv6 (dual-stack listener)",
            "[::ffff:127.77.0.11]:5432",
            Refuse,
            svc("127.77.0.11", 5432),
        ),
        (
            "endpoint ip with a service port",
            "10.0.0.1:9090",
            Refuse,
            svc("127.77.0.10", 9090),
        ),
        (
            "endpoint ip with another port",
            "10.0.0.1:8080",
            Refuse,
            Destination::Refuse("capture_unknown_destination"),
        ),
        (
            "exact endpoint address, one-port service",
            "10.0.0.2:15006",
            Refuse,
            svc("127.77.0.11", 5432),
        ),
        (
            "exact endpoint address, two-port service: ambiguous",
            "10.0.0.1:15006",
            Refuse,
            Destination::Refuse("capture_unknown_destination"),
        ),
        (
            "ipv6 endpoint",
            "[fd00::2]:5432",
            Refuse,
            svc("127.77.0.11", 5432),
        ),
        (
            "vip with a port it does not serve",
            "127.77.0.10:81",
            Passthrough,
            Destination::Passthrough(a("127.77.0.10:81")),
        ),
        (
            "unknown, passthrough",
            "192.0.2.7:443",
            Passthrough,
            Destination::Passthrough(a("192.0.2.7:443")),
        ),
        (
            "unknown ipv6, passthrough",
            "[2001:db8::7]:443",
            Passthrough,
            Destination::Passthrough(a("[2001:db8::7]:443")),
        ),
        (
            "unknown, refuse",
            "192.0.2.7:443",
            Refuse,
            Destination::Refuse("capture_unknown_destination"),
        ),
        (
            "not redirected: itself",
            "127.0.0.1:15002",
            Passthrough,
            Destination::Refuse("capture_loop"),
        ),
        (
            "capture port on another loopback",
            "127.9.9.9:15002",
            Passthrough,
            Destination::Refuse("capture_loop"),
        ),
        (
            "capture port on ::1",
            "[::1]:15002",
            Passthrough,
            Destination::Refuse("capture_loop"),
        ),
        (
            "capture port elsewhere is fine",
            "192.0.2.7:15002",
            Passthrough,
            Destination::Passthrough(a("192.0.2.7:15002")),
        ),
    ];
    for (name, original, policy, want) in cases {
        let got = classify(&snap, a(original), listener, local, policy);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn a_connection_straight_to_a_pod_address_capture_port_is_a_loop() {
    // Bound on all addresses, reached at the pod's own address without a
    // redirect: its original destination is its local address.
    let snap = Snapshot::from_yaml(SNAPSHOT).unwrap();
    let got = classify(
        &snap,
        a("10.0.0.9:15002"),
        a("0.0.0.0:15002"),
        a("10.0.0.9:15002"),
        Unknown::Passthrough,
    );
    assert_eq!(got, Destination::Refuse("capture_loop"));
}

#[test]
fn config_takes_a_listener_and_a_policy_and_names_bad_values() {
    let base = "trust_domain: strait.local\nidentity: { files: { chain: c, key: k, bundle: b } }\n";
    let c = crate::ProxyConfig::from_yaml(base).unwrap();
    assert_eq!(c.capture.outbound, None);
    assert_eq!(c.capture.unknown, Unknown::Passthrough);
    let c = crate::ProxyConfig::from_yaml(&format!(
        "{base}capture: {{ outbound: 127.0.0.1:15002, unknown: refuse }}\n"
    ))
    .unwrap();
    assert_eq!(c.capture.outbound, Some(a("127.0.0.1:15002")));
    assert_eq!(c.capture.unknown, Unknown::Refuse);
    let e = crate::ProxyConfig::from_yaml(&format!("{base}capture: {{ unknown: drop }}\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown variant `drop`") && e.contains("passthrough"),
        "{e}"
    );
    let e = crate::ProxyConfig::from_yaml(&format!("{base}capture: {{ port: 1 }}\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `port`"), "{e}");
}

#[tokio::test]
async fn a_connection_nothing_redirected_is_refused_as_a_loop() {
    // Without a redirect the kernel reports the connection's own local
    // address (or no original destination at all when conntrack does not
    // track it): either way it must not be forwarded anywhere.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bound = l.local_addr().unwrap();
    let _client = TcpStream::connect(bound).await.unwrap();
    let (tcp, _) = l.accept().await.unwrap();
    let snap = Snapshot::from_yaml(SNAPSHOT).unwrap();
    match original_dst(&tcp) {
        Ok(orig) => {
            assert_eq!(orig, bound);
            let local = tcp.local_addr().unwrap();
            assert_eq!(
                classify(&snap, orig, bound, local, Unknown::Passthrough),
                Destination::Refuse("capture_loop")
            );
        }
        Err(e) => assert!(
            matches!(e.kind(), std::io::ErrorKind::NotFound),
            "unexpected error {e}"
        ),
    }
}

#[test]
fn the_capture_config_of_operations_md_parses() {
    let doc = include_str!("../../../docs/operations.md");
    let start = doc
        .find("# sidecar.yaml, run as uid 1337\n")
        .expect("operations.md shows a capture config");
    let block = &doc[start..];
    let block = &block[..block.find("```").unwrap()];
    let text = format!(
        "trust_domain: strait.local\nidentity: {{ files: {{ chain: c, key: k, bundle: b }} }}\n{block}"
    );
    let c = crate::ProxyConfig::from_yaml(&text).unwrap();
    assert_eq!(c.capture.outbound, Some(a("127.0.0.1:15002")));
    assert_eq!(c.listeners.inbound, a("0.0.0.0:15006"));
}
