//! Queries with the `dig` command line (package dnsutils), as an operator
//! would run them. Missing `dig` fails the test: CI installs dnsutils.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Instant;

use crate::support::{self, BIG, BIG_ENDPOINTS, MESHED_SRC, WEB, WEST_GATEWAY};

/// Runs `dig @server -p port <args>` and returns its stdout.
async fn dig(server: SocketAddr, args: &[&str]) -> String {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=2", "+tries=1"])
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!("cannot run dig ({e}): install dnsutils (apt-get install -y dnsutils)")
        });
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn short_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| !l.is_empty()).collect()
}

#[tokio::test]
async fn dig_answers_a_aaaa_srv_nxdomain_refused() {
    let s = support::start().await;
    let addr = s.addr();
    assert_eq!(
        short_lines(&dig(addr, &["+short", WEB, "A"]).await),
        ["10.0.0.1", "10.0.0.2"]
    );
    assert_eq!(
        short_lines(&dig(addr, &["+short", WEB, "AAAA"]).await),
        ["fd00::1"]
    );
    let srv = dig(addr, &["+short", &format!("_http._tcp.{WEB}"), "SRV"]).await;
    assert_eq!(
        short_lines(&srv),
        [
            format!("0 1 8080 east.{WEB}"),
            format!("1 1 15443 west.{WEB}")
        ]
    );

    let nx = dig(addr, &["nope.default.svc.clusterset.local.", "A"]).await;
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(
        nx.contains("flags: qr aa rd;"),
        "authoritative, no recursion: {nx}"
    );
    assert!(nx.contains("AUTHORITY: 1"), "{nx}");
    assert!(
        nx.contains("IN\tSOA\tns.clusterset.local. hostmaster.clusterset.local."),
        "{nx}"
    );

    let refused = dig(addr, &["example.com.", "A"]).await;
    assert!(refused.contains("status: REFUSED"), "{refused}");
    assert!(refused.contains("ANSWER: 0, AUTHORITY: 0"), "{refused}");

    let ttl = dig(addr, &["+noall", "+answer", WEB, "A"]).await;
    let ttls: Vec<&str> = ttl
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(ttls, ["5", "5"], "ttl 5: {ttl}");
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn dig_from_a_meshed_source_gets_the_vip() {
    let s = support::start().await;
    let out = dig(s.addr(), &["-b", MESHED_SRC, "+short", WEB, "A"]).await;
    assert_eq!(short_lines(&out), ["127.77.0.1"]);
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn dig_sees_truncation_over_udp_and_the_full_answer_over_tcp() {
    let s = support::start().await;
    let addr = s.addr();
    let udp = dig(addr, &["+ignore", "+noedns", BIG, "A"]).await;
    assert!(udp.contains("flags: qr aa tc rd;"), "{udp}");
    let udp = dig(addr, &["+ignore", "+bufsize=1232", BIG, "A"]).await;
    assert!(udp.contains(" tc "), "{udp}");
    // dig retries over TCP on TC by itself.
    let retried = dig(addr, &["+short", BIG, "A"]).await;
    assert_eq!(short_lines(&retried).len(), usize::from(BIG_ENDPOINTS));
    let tcp = dig(addr, &["+tcp", "+short", BIG, "A"]).await;
    assert_eq!(short_lines(&tcp).len(), usize::from(BIG_ENDPOINTS));
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn dig_follows_failover_to_the_west_gateway_and_fails_back() {
    let s = support::start().await;
    let addr = s.addr();
    let healthy = support::fixture();
    assert_eq!(
        short_lines(&dig(addr, &["+short", WEB]).await),
        ["10.0.0.1", "10.0.0.2"]
    );

    // The controller pushes "east has no healthy endpoint for web".
    let pushed = Instant::now();
    s.view
        .update(support::with_east_endpoints(healthy.clone(), &[]))
        .unwrap();
    assert_eq!(
        short_lines(&dig(addr, &["+short", WEB]).await),
        [WEST_GATEWAY]
    );
    // Clients caching the old answer see the new one after the 5 s TTL.
    assert!(pushed.elapsed().as_secs() < 5);

    // One east endpoint comes back: fail back.
    s.view
        .update(support::with_east_endpoints(healthy, &["10.0.0.2:8080"]))
        .unwrap();
    assert_eq!(
        short_lines(&dig(addr, &["+short", WEB]).await),
        ["10.0.0.2"]
    );
    s.server.shutdown().await.unwrap();
}
